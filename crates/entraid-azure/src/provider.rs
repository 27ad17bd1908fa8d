//! [`AzureIdentityProvider`]: one Azure identity, one fresh Entra ID token per request.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
#[cfg(feature = "certificate")]
use azure_core::credentials::SecretBytes;
use azure_core::credentials::{AccessToken, Secret, TokenCredential};
use azure_core::http::{ClientOptions, RetryOptions};
use azure_identity::{
    ClientAssertionCredentialOptions, ClientSecretCredential, ClientSecretCredentialOptions, DeveloperToolsCredential,
    DeveloperToolsCredentialOptions, Executor, ManagedIdentityCredential, ManagedIdentityCredentialOptions,
    UserAssignedId, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
#[cfg(feature = "certificate")]
use azure_identity::{ClientCertificateCredential, ClientCertificateCredentialOptions};
#[cfg(feature = "certificate")]
use base64::Engine as _;
use entraid_identity::{ErrorOrigin, IdentityError, IdentityProvider, REDIS_SCOPE, Token};

use crate::attempt::{Outcome, SingleAttempt};
use crate::classify::{Context, Endpoint, classify};
use crate::{AzureConfigError, validate};

/// Which managed identity to use.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManagedIdentityId {
    /// The identity Azure assigned to this resource itself.
    SystemAssigned,
    /// A user-assigned identity, by its client (application) id.
    ClientId(String),
    /// A user-assigned identity, by its object (principal) id.
    ObjectId(String),
    /// A user-assigned identity, by its Azure resource id. Not supported by App Service.
    ResourceId(String),
}

impl ManagedIdentityId {
    fn to_azure(&self) -> Option<UserAssignedId> {
        match self {
            ManagedIdentityId::SystemAssigned => None,
            ManagedIdentityId::ClientId(id) => Some(UserAssignedId::ClientId(id.clone())),
            ManagedIdentityId::ObjectId(id) => Some(UserAssignedId::ObjectId(id.clone())),
            ManagedIdentityId::ResourceId(id) => Some(UserAssignedId::ResourceId(id.clone())),
        }
    }

    fn from_azure(id: Option<&UserAssignedId>) -> ManagedIdentityId {
        match id {
            None => ManagedIdentityId::SystemAssigned,
            Some(UserAssignedId::ClientId(id)) => ManagedIdentityId::ClientId(id.clone()),
            Some(UserAssignedId::ObjectId(id)) => ManagedIdentityId::ObjectId(id.clone()),
            Some(UserAssignedId::ResourceId(id)) => ManagedIdentityId::ResourceId(id.clone()),
            // UserAssignedId is non-exhaustive; a future variant cannot be mapped here.
            Some(_) => ManagedIdentityId::SystemAssigned,
        }
    }

    fn describe(&self) -> String {
        match self {
            ManagedIdentityId::SystemAssigned => "the system-assigned managed identity".to_owned(),
            ManagedIdentityId::ClientId(id) => format!("the user-assigned managed identity with client id {id}"),
            ManagedIdentityId::ObjectId(id) => format!("the user-assigned managed identity with object id {id}"),
            ManagedIdentityId::ResourceId(id) => format!("the user-assigned managed identity {id}"),
        }
    }
}

#[derive(Clone)]
enum Source {
    ClientSecret {
        tenant_id: String,
        client_id: String,
        secret: Secret,
    },
    #[cfg(feature = "certificate")]
    ClientCertificate {
        tenant_id: String,
        client_id: String,
        pkcs12: SecretBytes,
        password: Option<Secret>,
    },
    ManagedIdentity(ManagedIdentityId),
    WorkloadIdentity {
        tenant_id: String,
        client_id: String,
        token_file: PathBuf,
    },
    DeveloperTools {
        executor: Option<Arc<dyn Executor>>,
    },
    Credential(Arc<dyn TokenCredential>),
}

/// An Azure identity that hands out fresh Entra ID tokens for Redis.
///
/// Cheap to clone. `Debug` names the principal, never its secret or certificate.
#[derive(Clone)]
pub struct AzureIdentityProvider {
    source: Source,
    scopes: Arc<[String]>,
    client_options: ClientOptions,
    /// Replaces the public cloud's authority unless the client options name a cloud.
    pub(crate) authority_host: Option<Arc<str>>,
}

impl AzureIdentityProvider {
    fn new(source: Source) -> AzureIdentityProvider {
        AzureIdentityProvider {
            source,
            scopes: Arc::from(vec![REDIS_SCOPE.to_owned()]),
            client_options: ClientOptions::default(),
            authority_host: None,
        }
    }

    /// A service principal that signs in with a client secret.
    pub fn client_secret(tenant_id: &str, client_id: &str, client_secret: &str) -> Result<Self, AzureConfigError> {
        let tenant_id = validate::tenant_id(tenant_id)?;
        let client_id = validate::client_id(client_id)?;
        if client_secret.trim().is_empty() {
            return Err(AzureConfigError::Empty {
                what: "client secret",
                hint: "create one under the app registration's 'Certificates & secrets' and pass its Value",
            });
        }
        let provider = Self::new(Source::ClientSecret {
            tenant_id,
            client_id,
            secret: Secret::new(client_secret.to_owned()),
        });
        provider.check_builds()?;
        Ok(provider)
    }

    /// A service principal that signs in with a certificate: the PKCS12 (`.pfx`) bytes,
    /// holding the certificate and its RSA private key, and the password if it has one.
    ///
    /// Needs the `certificate` feature: `azure_identity` reads PKCS12 with OpenSSL.
    #[cfg(feature = "certificate")]
    #[cfg_attr(docsrs, doc(cfg(feature = "certificate")))]
    pub fn client_certificate(
        tenant_id: &str,
        client_id: &str,
        pkcs12: impl Into<Vec<u8>>,
        password: Option<&str>,
    ) -> Result<Self, AzureConfigError> {
        let tenant_id = validate::tenant_id(tenant_id)?;
        let client_id = validate::client_id(client_id)?;
        let pkcs12 = pkcs12.into();
        if pkcs12.is_empty() {
            return Err(AzureConfigError::Empty {
                what: "client certificate",
                hint: "pass the PKCS12 (.pfx) file's bytes",
            });
        }
        let provider = Self::new(Source::ClientCertificate {
            tenant_id,
            client_id,
            pkcs12: SecretBytes::new(pkcs12),
            password: password.map(|p| Secret::new(p.to_owned())),
        });
        provider.check_builds()?;
        Ok(provider)
    }

    /// Like [`client_certificate`](Self::client_certificate), with the PKCS12 bytes encoded
    /// as base64 (the form the redis.io examples use).
    #[cfg(feature = "certificate")]
    #[cfg_attr(docsrs, doc(cfg(feature = "certificate")))]
    pub fn client_certificate_base64(
        tenant_id: &str,
        client_id: &str,
        base64_pkcs12: &str,
        password: Option<&str>,
    ) -> Result<Self, AzureConfigError> {
        let compact: String = base64_pkcs12.chars().filter(|c| !c.is_whitespace()).collect();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .map_err(|e| AzureConfigError::CertificateBase64 { reason: e.to_string() })?;
        Self::client_certificate(tenant_id, client_id, bytes, password)
    }

    /// A managed identity: system-assigned, or user-assigned by client, object or resource id.
    /// The endpoint (IMDS, App Service, Container Apps) is found from the environment.
    pub fn managed_identity(id: ManagedIdentityId) -> Result<Self, AzureConfigError> {
        let id = match id {
            ManagedIdentityId::SystemAssigned => ManagedIdentityId::SystemAssigned,
            ManagedIdentityId::ClientId(v) => ManagedIdentityId::ClientId(validate::not_blank(
                &v,
                "managed identity client id",
                "find it on the identity's overview page",
            )?),
            ManagedIdentityId::ObjectId(v) => ManagedIdentityId::ObjectId(validate::not_blank(
                &v,
                "managed identity object id",
                "find it as 'Object (principal) ID' on the identity's overview page",
            )?),
            ManagedIdentityId::ResourceId(v) => ManagedIdentityId::ResourceId(validate::not_blank(
                &v,
                "managed identity resource id",
                "it looks like /subscriptions/…/resourceGroups/…/providers/Microsoft.ManagedIdentity/userAssignedIdentities/NAME",
            )?),
        };
        let provider = Self::new(Source::ManagedIdentity(id));
        provider.check_builds()?;
        Ok(provider)
    }

    /// A managed identity configured by `azure_identity`'s own options type (as on the
    /// redis.io page); its `client_options` are kept.
    pub fn managed_identity_with_options(options: ManagedIdentityCredentialOptions) -> Result<Self, AzureConfigError> {
        let id = ManagedIdentityId::from_azure(options.user_assigned_id.as_ref());
        Ok(Self::managed_identity(id)?.with_client_options(options.client_options))
    }

    /// Workload identity (AKS): exchanges the federated token in `token_file` (normally
    /// `AZURE_FEDERATED_TOKEN_FILE`), re-read at each request, for an Entra token.
    pub fn workload_identity(
        tenant_id: &str,
        client_id: &str,
        token_file: impl Into<PathBuf>,
    ) -> Result<Self, AzureConfigError> {
        let tenant_id = validate::tenant_id(tenant_id)?;
        let client_id = validate::client_id(client_id)?;
        let token_file = token_file.into();
        if let Err(e) = std::fs::metadata(&token_file) {
            return Err(AzureConfigError::UnreadableFile {
                what: "federated token file",
                path: token_file.display().to_string(),
                reason: e.to_string(),
            });
        }
        let provider = Self::new(Source::WorkloadIdentity {
            tenant_id,
            client_id,
            token_file,
        });
        provider.check_builds()?;
        Ok(provider)
    }

    /// The Azure CLI (`az login`), then the Azure Developer CLI (`azd auth login`): for
    /// development machines. These tools cache tokens themselves.
    pub fn developer_tools() -> Result<Self, AzureConfigError> {
        let provider = Self::new(Source::DeveloperTools { executor: None });
        provider.check_builds()?;
        Ok(provider)
    }

    /// Like [`developer_tools`](Self::developer_tools), running the tools through `executor`.
    pub fn developer_tools_with_executor(executor: Arc<dyn Executor>) -> Result<Self, AzureConfigError> {
        let provider = Self::new(Source::DeveloperTools {
            executor: Some(executor),
        });
        provider.check_builds()?;
        Ok(provider)
    }

    /// Any `azure_core` credential. Note that a credential from `azure_identity` caches its
    /// token until 5 minutes before expiry, so refreshes earlier than that get the same
    /// token back (the token manager then does not announce it again); prefer the
    /// constructors above, which avoid that cache.
    pub fn from_credential(credential: Arc<dyn TokenCredential>) -> Self {
        Self::new(Source::Credential(credential))
    }

    /// Requests tokens for these scopes instead of `https://redis.azure.com/.default`.
    /// Managed identities take exactly one.
    pub fn with_scopes(mut self, scopes: Vec<String>) -> Result<Self, AzureConfigError> {
        let scopes = validate::scopes(scopes)?;
        if matches!(self.source, Source::ManagedIdentity(_)) && scopes.len() != 1 {
            return Err(AzureConfigError::InvalidScopes(
                "a managed identity takes exactly one scope",
            ));
        }
        self.scopes = Arc::from(scopes);
        Ok(self)
    }

    /// HTTP options for the requests (transport, cloud, logging). Retry options are
    /// ignored: the token manager owns retries. A cloud set here wins over
    /// [`with_authority_host`](Self::with_authority_host).
    pub fn with_client_options(mut self, client_options: ClientOptions) -> Self {
        self.client_options = client_options;
        self
    }

    /// The HTTP options in force.
    pub fn client_options(&self) -> &ClientOptions {
        &self.client_options
    }

    /// The scopes tokens are requested for.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// Who this provider signs in as, for messages: never a secret.
    pub fn principal(&self) -> String {
        match &self.source {
            Source::ClientSecret { client_id, .. } => format!("service principal {client_id} (client secret)"),
            #[cfg(feature = "certificate")]
            Source::ClientCertificate { client_id, .. } => format!("service principal {client_id} (certificate)"),
            Source::ManagedIdentity(id) => id.describe(),
            Source::WorkloadIdentity { client_id, .. } => format!("workload identity {client_id}"),
            Source::DeveloperTools { .. } => "the developer tools' signed-in account (az, azd)".to_owned(),
            // Never the credential's `Debug`: a user's type may derive it over its secret.
            Source::Credential(_) => "the TokenCredential passed to from_credential".to_owned(),
        }
    }

    /// Builds once at construction, so bad input fails there and not at the first request.
    fn check_builds(&self) -> Result<(), AzureConfigError> {
        self.build(self.client_options.clone())
            .map(drop)
            .map_err(|e| config_error(&self.source, &e))
    }

    /// A fresh credential: no cache shared with earlier requests.
    // `..Default::default()` keeps this building if azure_identity adds option fields.
    #[allow(clippy::needless_update)]
    fn build(&self, mut client_options: ClientOptions) -> azure_core::Result<Arc<dyn TokenCredential>> {
        if let (Some(host), None) = (&self.authority_host, &client_options.cloud) {
            let mut custom = CustomConfiguration::default();
            custom.authority_host = host.to_string();
            client_options.cloud = Some(Arc::new(CloudConfiguration::from(custom)));
        }
        Ok(match &self.source {
            Source::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => ClientSecretCredential::new(
                tenant_id,
                client_id.clone(),
                secret.clone(),
                Some(ClientSecretCredentialOptions { client_options }),
            )?,
            #[cfg(feature = "certificate")]
            Source::ClientCertificate {
                tenant_id,
                client_id,
                pkcs12,
                password,
            } => ClientCertificateCredential::new(
                tenant_id.clone(),
                client_id.clone(),
                pkcs12.clone(),
                Some(ClientCertificateCredentialOptions {
                    client_options,
                    password: password.clone(),
                    ..Default::default()
                }),
            )?,
            Source::ManagedIdentity(id) => ManagedIdentityCredential::new(Some(ManagedIdentityCredentialOptions {
                user_assigned_id: id.to_azure(),
                client_options,
                ..Default::default()
            }))?,
            Source::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
                credential_options: ClientAssertionCredentialOptions { client_options },
                client_id: Some(client_id.clone()),
                tenant_id: Some(tenant_id.clone()),
                token_file_path: Some(token_file.clone()),
                ..Default::default()
            }))?,
            Source::DeveloperTools { executor } => {
                DeveloperToolsCredential::new(Some(DeveloperToolsCredentialOptions {
                    executor: executor.clone(),
                    ..Default::default()
                }))?
            }
            Source::Credential(credential) => credential.clone(),
        })
    }

    fn endpoint(&self) -> Endpoint {
        match self.source {
            Source::ClientSecret { .. } | Source::WorkloadIdentity { .. } => Endpoint::Entra,
            #[cfg(feature = "certificate")]
            Source::ClientCertificate { .. } => Endpoint::Entra,
            Source::ManagedIdentity(_) => Endpoint::ManagedIdentity,
            Source::DeveloperTools { .. } | Source::Credential(_) => Endpoint::Other,
        }
    }

    fn to_token(
        &self,
        access: AccessToken,
        outcome: Option<Outcome>,
        received_at: SystemTime,
    ) -> Result<Token, IdentityError> {
        let secret = access.token.secret().to_owned();
        let claims = Token::from_jwt(secret, received_at).map_err(|e| {
            IdentityError::permanent(format!(
                "the token issued to {} cannot be used for Redis: {e}",
                self.principal()
            ))
            .with_origin(ErrorOrigin::InvalidToken)
        })?;
        // Prefer the response's own `expires_in`: it does not depend on clocks agreeing.
        let expires_at = match outcome {
            Some(Outcome::Success {
                expires_in: Some(expires_in),
            }) => received_at
                .checked_add(expires_in)
                .unwrap_or_else(|| SystemTime::from(access.expires_on)),
            _ => SystemTime::from(access.expires_on),
        };
        Ok(Token::new(claims.secret(), claims.username(), expires_at, received_at))
    }
}

#[async_trait::async_trait]
impl IdentityProvider for AzureIdentityProvider {
    async fn request_token(&self) -> Result<Token, IdentityError> {
        let attempt = SingleAttempt::new();
        let mut client_options = self.client_options.clone();
        client_options.retry = RetryOptions::none();
        client_options.per_try_policies.push(attempt.clone());
        let principal = self.principal();
        let credential = self.build(client_options).map_err(|e| {
            IdentityError::permanent(format!("cannot build the credential for {principal}: {e}"))
                .with_origin(ErrorOrigin::Credential)
        })?;
        let scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        let result = credential.get_token(&scopes, None).await;
        let received_at = SystemTime::now();
        match result {
            Ok(access) => self.to_token(access, attempt.outcome(), received_at),
            Err(error) => {
                let ctx = Context {
                    endpoint: self.endpoint(),
                    principal: &principal,
                };
                Err(classify(attempt.outcome(), &error, &ctx))
            }
        }
    }
}

impl fmt::Debug for AzureIdentityProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureIdentityProvider")
            .field("principal", &self.principal())
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

/// Maps `azure_identity`'s construction errors to typed ones.
fn config_error(source: &Source, error: &azure_core::Error) -> AzureConfigError {
    let text = error.to_string();
    #[cfg(not(feature = "certificate"))]
    let _ = source;
    #[cfg(feature = "certificate")]
    if matches!(source, Source::ClientCertificate { .. }) {
        let problem = if text.contains("deserializing PKCS12") {
            "it is not a PKCS12 (.pfx/.p12) file; export the certificate with its private key as PKCS12".to_owned()
        } else if text.contains("PKCS12 parsing failed") {
            "the password is wrong (or the file is damaged); pass the password the .pfx was exported with, or None"
                .to_owned()
        } else if text.contains("no private key") {
            "it holds no private key; export the certificate together with its private key".to_owned()
        } else if text.contains("only RSA") {
            "its private key is not RSA; Entra ID certificate credentials need an RSA key".to_owned()
        } else if text.contains("no certificate") {
            "it holds no certificate".to_owned()
        } else {
            text
        };
        return AzureConfigError::Certificate { problem };
    }
    AzureConfigError::Azure(text)
}
