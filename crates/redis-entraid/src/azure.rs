//! The constructors of the redis.io page, on `entraid-azure` (feature `azure`).

#[cfg(feature = "certificate")]
use std::fmt;
use std::sync::Arc;

use entraid_azure::azure_core::credentials::TokenCredential;
#[cfg(feature = "certificate")]
use entraid_azure::azure_identity::ClientCertificateCredentialOptions;
use entraid_azure::azure_identity::{ClientSecretCredentialOptions, ManagedIdentityCredentialOptions};
use entraid_azure::{AzureConfigError, AzureIdentityProvider, ManagedIdentityId};
use redis::{ErrorKind, RedisError, RedisResult};

use crate::EntraIdCredentialsProvider;

/// A client certificate as the redis.io page passes it: the PKCS12 (`.pfx`) file's bytes
/// encoded as base64, and its password if it has one.
///
/// Needs the `certificate` feature, which links OpenSSL (`azure_identity` reads PKCS12
/// with it).
#[cfg(feature = "certificate")]
#[cfg_attr(docsrs, doc(cfg(feature = "certificate")))]
#[derive(Clone, Default)]
pub struct ClientCertificate {
    /// The PKCS12 bytes, base64-encoded.
    pub base64_pkcs12: String,
    /// The PKCS12 password, if any.
    pub password: Option<String>,
}

#[cfg(feature = "certificate")]
impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field(
                "base64_pkcs12",
                &format_args!("<{} characters>", self.base64_pkcs12.len()),
            )
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn config_error(error: AzureConfigError) -> RedisError {
    RedisError::from((
        ErrorKind::InvalidClientConfig,
        "invalid Entra ID configuration",
        error.to_string(),
    ))
}

/// A user-assigned identity's client id from `AZURE_CLIENT_ID`, or an error naming it.
fn client_id_from_process_env() -> RedisResult<String> {
    let process_env = |name: &str| std::env::var(name).ok();
    entraid_azure::user_assigned_client_id_from_env(&process_env).map_err(config_error)
}

fn from_azure(provider: Result<AzureIdentityProvider, AzureConfigError>) -> RedisResult<EntraIdCredentialsProvider> {
    provider
        .map(EntraIdCredentialsProvider::new_with_identity_provider)
        .map_err(config_error)
}

impl EntraIdCredentialsProvider {
    /// A service principal with a client secret, for `https://redis.azure.com/.default`.
    pub fn new_client_secret(tenant_id: String, client_id: String, client_secret: String) -> RedisResult<Self> {
        from_azure(AzureIdentityProvider::client_secret(
            &tenant_id,
            &client_id,
            &client_secret,
        ))
    }

    /// A service principal with a client secret, for these scopes and HTTP options.
    pub fn new_client_secret_with_scopes(
        tenant_id: String,
        client_id: String,
        client_secret: String,
        scopes: Vec<String>,
        options: Option<ClientSecretCredentialOptions>,
    ) -> RedisResult<Self> {
        from_azure(
            AzureIdentityProvider::client_secret(&tenant_id, &client_id, &client_secret)
                .and_then(|p| p.with_scopes(scopes))
                .map(|p| match options {
                    Some(options) => p.with_client_options(options.client_options),
                    None => p,
                }),
        )
    }

    /// A service principal with a certificate (feature `certificate`).
    #[cfg(feature = "certificate")]
    #[cfg_attr(docsrs, doc(cfg(feature = "certificate")))]
    pub fn new_client_certificate(
        tenant_id: String,
        client_id: String,
        certificate: ClientCertificate,
    ) -> RedisResult<Self> {
        Self::new_client_certificate_with_scopes(
            tenant_id,
            client_id,
            certificate,
            vec![entraid_azure::REDIS_SCOPE.to_owned()],
            None,
        )
    }

    /// A service principal with a certificate, for these scopes and HTTP options. The
    /// certificate's own password wins over one in `options`.
    #[cfg(feature = "certificate")]
    #[cfg_attr(docsrs, doc(cfg(feature = "certificate")))]
    pub fn new_client_certificate_with_scopes(
        tenant_id: String,
        client_id: String,
        certificate: ClientCertificate,
        scopes: Vec<String>,
        options: Option<ClientCertificateCredentialOptions>,
    ) -> RedisResult<Self> {
        let (client_options, options_password) = match options {
            Some(options) => (
                Some(options.client_options),
                options.password.map(|p| p.secret().to_owned()),
            ),
            None => (None, None),
        };
        let password = certificate.password.or(options_password);
        from_azure(
            AzureIdentityProvider::client_certificate_base64(
                &tenant_id,
                &client_id,
                &certificate.base64_pkcs12,
                password.as_deref(),
            )
            .and_then(|p| p.with_scopes(scopes))
            .map(|p| match client_options {
                Some(options) => p.with_client_options(options),
                None => p,
            }),
        )
    }

    /// The resource's system-assigned managed identity.
    pub fn new_system_assigned_managed_identity() -> RedisResult<Self> {
        from_azure(AzureIdentityProvider::managed_identity(
            ManagedIdentityId::SystemAssigned,
        ))
    }

    /// The system-assigned managed identity, for this scope and HTTP options. Options that
    /// name a user-assigned identity are refused: use
    /// [`new_user_assigned_managed_identity_with_scopes`](Self::new_user_assigned_managed_identity_with_scopes).
    pub fn new_system_assigned_managed_identity_with_scopes(
        scopes: Vec<String>,
        options: Option<ManagedIdentityCredentialOptions>,
    ) -> RedisResult<Self> {
        let options = options.unwrap_or_default();
        if options.user_assigned_id.is_some() {
            return Err(RedisError::from((
                ErrorKind::InvalidClientConfig,
                "invalid Entra ID configuration",
                "the options name a user-assigned identity; call new_user_assigned_managed_identity_with_scopes instead".to_owned(),
            )));
        }
        from_azure(AzureIdentityProvider::managed_identity_with_options(options).and_then(|p| p.with_scopes(scopes)))
    }

    /// A user-assigned managed identity whose client id is in `AZURE_CLIENT_ID`. Fails,
    /// naming the variable, when it is unset (redis-rs silently falls back to the
    /// system-assigned identity here).
    pub fn new_user_assigned_managed_identity() -> RedisResult<Self> {
        from_azure(AzureIdentityProvider::managed_identity(ManagedIdentityId::ClientId(
            client_id_from_process_env()?,
        )))
    }

    /// A user-assigned managed identity named by `options.user_assigned_id` (or, when that
    /// is `None`, by `AZURE_CLIENT_ID`), for this scope.
    pub fn new_user_assigned_managed_identity_with_scopes(
        scopes: Vec<String>,
        options: Option<ManagedIdentityCredentialOptions>,
    ) -> RedisResult<Self> {
        let mut options = options.unwrap_or_default();
        if options.user_assigned_id.is_none() {
            options.user_assigned_id = Some(entraid_azure::azure_identity::UserAssignedId::ClientId(
                client_id_from_process_env()?,
            ));
        }
        from_azure(AzureIdentityProvider::managed_identity_with_options(options).and_then(|p| p.with_scopes(scopes)))
    }

    /// The signed-in account of the Azure CLI or Azure Developer CLI (development machines).
    pub fn new_developer_tools() -> RedisResult<Self> {
        from_azure(AzureIdentityProvider::developer_tools())
    }

    /// Any `azure_core` 1.x credential, for these scopes.
    pub fn new_with_credential(credential: Arc<dyn TokenCredential>, scopes: Vec<String>) -> RedisResult<Self> {
        from_azure(AzureIdentityProvider::from_credential(credential).with_scopes(scopes))
    }

    /// Whatever the `AZURE_*` environment variables describe (see
    /// [`AzureIdentityProvider::from_env_with`]).
    pub fn new_from_env() -> RedisResult<Self> {
        from_azure(AzureIdentityProvider::from_env())
    }
}
