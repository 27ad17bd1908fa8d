//! Configuration from `AZURE_*` environment variables, by the Azure SDK conventions.

use std::path::PathBuf;

use crate::{AzureConfigError, AzureIdentityProvider, ManagedIdentityId};

/// Reads one environment variable; `None` when unset. Empty values count as unset.
pub trait EnvLookup {
    /// The variable's value.
    fn var(&self, name: &str) -> Option<String>;
}

impl<F: Fn(&str) -> Option<String>> EnvLookup for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// The process environment.
struct ProcessEnv;

impl EnvLookup for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

fn get(env: &dyn EnvLookup, name: &str) -> Option<String> {
    env.var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

fn require(env: &dyn EnvLookup, name: &'static str, hint: &'static str) -> Result<String, AzureConfigError> {
    get(env, name).ok_or(AzureConfigError::MissingEnv { name, hint })
}

/// The client id of a user-assigned managed identity, from `AZURE_CLIENT_ID`.
pub fn user_assigned_client_id_from_env(env: &dyn EnvLookup) -> Result<String, AzureConfigError> {
    require(
        env,
        "AZURE_CLIENT_ID",
        "set it to the user-assigned managed identity's client id (or use the system-assigned identity)",
    )
}

/// The environment variables that choose or steer an identity, in the order people
/// look for them.
pub const IDENTITY_VARIABLES: &[&str] = &[
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "IMDS_ENDPOINT",
    "SSL_CERT_FILE",
];

/// Which kind of identity the environment selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvIdentityKind {
    /// A service principal with a client secret.
    ClientSecret,
    /// A service principal with a certificate.
    ClientCertificate,
    /// A Kubernetes workload identity (federated token file).
    WorkloadIdentity,
    /// A user-assigned managed identity, by client id.
    UserAssignedManagedIdentity,
    /// The host's system-assigned managed identity.
    SystemAssignedManagedIdentity,
}

impl EnvIdentityKind {
    /// A person's name for it.
    pub fn describe(self) -> &'static str {
        match self {
            EnvIdentityKind::ClientSecret => "service principal with a client secret",
            EnvIdentityKind::ClientCertificate => "service principal with a certificate",
            EnvIdentityKind::WorkloadIdentity => "workload identity (federated token)",
            EnvIdentityKind::UserAssignedManagedIdentity => "user-assigned managed identity",
            EnvIdentityKind::SystemAssignedManagedIdentity => "system-assigned managed identity",
        }
    }
}

/// What [`AzureIdentityProvider::from_env`] chooses and why, for diagnosis: variable
/// names only, never their values.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EnvSelection {
    /// The identity chosen.
    pub kind: EnvIdentityKind,
    /// Which of [`IDENTITY_VARIABLES`] are set (non-empty).
    pub variables_set: Vec<&'static str>,
    /// Why this identity, in one sentence.
    pub reason: &'static str,
}

impl EnvSelection {
    /// The choice the process environment makes.
    pub fn from_env() -> EnvSelection {
        EnvSelection::from_env_with(&ProcessEnv)
    }

    /// The choice these variables make; the same rule as
    /// [`AzureIdentityProvider::from_env_with`], which uses it.
    pub fn from_env_with(env: &dyn EnvLookup) -> EnvSelection {
        let set = |name: &str| get(env, name).is_some();
        let (kind, reason) = if set("AZURE_CLIENT_SECRET") {
            (EnvIdentityKind::ClientSecret, "AZURE_CLIENT_SECRET is set")
        } else if set("AZURE_CLIENT_CERTIFICATE_PATH") {
            (
                EnvIdentityKind::ClientCertificate,
                "AZURE_CLIENT_CERTIFICATE_PATH is set and AZURE_CLIENT_SECRET is not",
            )
        } else if set("AZURE_FEDERATED_TOKEN_FILE") {
            (
                EnvIdentityKind::WorkloadIdentity,
                "AZURE_FEDERATED_TOKEN_FILE is set and no client secret or certificate is",
            )
        } else if set("AZURE_CLIENT_ID") {
            (
                EnvIdentityKind::UserAssignedManagedIdentity,
                "AZURE_CLIENT_ID is set without a secret, certificate or federated token file",
            )
        } else {
            (
                EnvIdentityKind::SystemAssignedManagedIdentity,
                "no service principal, workload identity or AZURE_CLIENT_ID is configured",
            )
        };
        EnvSelection {
            kind,
            variables_set: IDENTITY_VARIABLES.iter().copied().filter(|name| set(name)).collect(),
            reason,
        }
    }
}

impl AzureIdentityProvider {
    /// Chooses the identity from the process environment; see [`from_env_with`](Self::from_env_with).
    pub fn from_env() -> Result<Self, AzureConfigError> {
        Self::from_env_with(&ProcessEnv)
    }

    /// Chooses the identity from environment variables, as the Azure SDKs do:
    ///
    /// 1. `AZURE_TENANT_ID` + `AZURE_CLIENT_ID` + `AZURE_CLIENT_SECRET`: service principal
    ///    with a secret;
    /// 2. else `AZURE_CLIENT_CERTIFICATE_PATH` (PKCS12; `AZURE_CLIENT_CERTIFICATE_PASSWORD`
    ///    if it has one) with `AZURE_TENANT_ID` + `AZURE_CLIENT_ID`: with a certificate;
    /// 3. else `AZURE_FEDERATED_TOKEN_FILE` with `AZURE_TENANT_ID` + `AZURE_CLIENT_ID`:
    ///    workload identity;
    /// 4. else a managed identity: user-assigned when `AZURE_CLIENT_ID` is set, else
    ///    system-assigned.
    ///
    /// `AZURE_AUTHORITY_HOST` replaces `https://login.microsoftonline.com`.
    ///
    /// TLS trust is the platform's: nothing here widens it. To trust a private CA (a
    /// local emulator, a TLS-inspecting proxy), set `SSL_CERT_FILE` to its PEM file, the
    /// standard variable the default HTTPS transport honours on Linux (it then trusts
    /// that file instead of the system store), or call
    /// [`with_root_certificate_pem`](Self::with_root_certificate_pem) in code.
    pub fn from_env_with(env: &dyn EnvLookup) -> Result<Self, AzureConfigError> {
        const TENANT_HINT: &str = "the directory (tenant) id of the service principal";
        const CLIENT_HINT: &str = "the application (client) id of the service principal";
        let tenant = || require(env, "AZURE_TENANT_ID", TENANT_HINT);
        let client = || require(env, "AZURE_CLIENT_ID", CLIENT_HINT);

        let provider = match EnvSelection::from_env_with(env).kind {
            EnvIdentityKind::ClientSecret => {
                let secret = get(env, "AZURE_CLIENT_SECRET").unwrap_or_default();
                AzureIdentityProvider::client_secret(&tenant()?, &client()?, &secret)?
            }
            #[cfg(not(feature = "certificate"))]
            EnvIdentityKind::ClientCertificate => {
                return Err(AzureConfigError::FeatureDisabled {
                    what: "a service principal with a certificate (AZURE_CLIENT_CERTIFICATE_PATH is set)",
                    feature: "certificate",
                    krate: "entraid-azure (or redis-entraid)",
                });
            }
            #[cfg(feature = "certificate")]
            EnvIdentityKind::ClientCertificate => {
                let path = get(env, "AZURE_CLIENT_CERTIFICATE_PATH").unwrap_or_default();
                let (tenant, client) = (tenant()?, client()?);
                let bytes = std::fs::read(&path).map_err(|e| AzureConfigError::UnreadableFile {
                    what: "client certificate (AZURE_CLIENT_CERTIFICATE_PATH)",
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                let password = get(env, "AZURE_CLIENT_CERTIFICATE_PASSWORD");
                AzureIdentityProvider::client_certificate(&tenant, &client, bytes, password.as_deref())?
            }
            EnvIdentityKind::WorkloadIdentity => {
                let file = get(env, "AZURE_FEDERATED_TOKEN_FILE").unwrap_or_default();
                AzureIdentityProvider::workload_identity(&tenant()?, &client()?, PathBuf::from(file))?
            }
            EnvIdentityKind::UserAssignedManagedIdentity => AzureIdentityProvider::managed_identity(
                ManagedIdentityId::ClientId(get(env, "AZURE_CLIENT_ID").unwrap_or_default()),
            )?,
            EnvIdentityKind::SystemAssignedManagedIdentity => {
                AzureIdentityProvider::managed_identity(ManagedIdentityId::SystemAssigned)?
            }
        };
        match get(env, "AZURE_AUTHORITY_HOST") {
            Some(host) => provider.with_authority_host(&host),
            None => Ok(provider),
        }
    }
}
