//! Configuration from `AZURE_*` environment variables, by the Azure SDK conventions.

use std::path::PathBuf;
use std::sync::Arc;

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

        let provider = if let Some(secret) = get(env, "AZURE_CLIENT_SECRET") {
            AzureIdentityProvider::client_secret(&tenant()?, &client()?, &secret)?
        } else if let Some(path) = get(env, "AZURE_CLIENT_CERTIFICATE_PATH") {
            let (tenant, client) = (tenant()?, client()?);
            let bytes = std::fs::read(&path).map_err(|e| AzureConfigError::UnreadableFile {
                what: "client certificate (AZURE_CLIENT_CERTIFICATE_PATH)",
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let password = get(env, "AZURE_CLIENT_CERTIFICATE_PASSWORD");
            AzureIdentityProvider::client_certificate(&tenant, &client, bytes, password.as_deref())?
        } else if let Some(file) = get(env, "AZURE_FEDERATED_TOKEN_FILE") {
            AzureIdentityProvider::workload_identity(&tenant()?, &client()?, PathBuf::from(file))?
        } else {
            let id = match get(env, "AZURE_CLIENT_ID") {
                Some(client_id) => ManagedIdentityId::ClientId(client_id),
                None => ManagedIdentityId::SystemAssigned,
            };
            AzureIdentityProvider::managed_identity(id)?
        };
        match get(env, "AZURE_AUTHORITY_HOST") {
            Some(host) => provider.with_authority_host(&host),
            None => Ok(provider),
        }
    }

    /// Also trusts this CA (PEM) for HTTPS to the identity endpoints: for a local
    /// emulator, or a TLS-inspecting proxy. Only ever on the caller's explicit request. Replaces the HTTP transport of the
    /// client options; set other client options first.
    pub fn with_root_certificate_pem(self, pem: &str) -> Result<Self, AzureConfigError> {
        let bad = |e: reqwest::Error| AzureConfigError::Certificate {
            problem: format!("the CA certificate is not usable PEM: {e}"),
        };
        let certificate = reqwest::Certificate::from_pem(pem.as_bytes()).map_err(bad)?;
        let client = reqwest::Client::builder()
            .add_root_certificate(certificate)
            .connect_timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(bad)?;
        let mut options = self.client_options().clone();
        options.transport = Some(azure_core::http::Transport::new(Arc::new(client)));
        Ok(self.with_client_options(options))
    }

    /// Sends Entra requests to this authority instead of the public cloud's (a sovereign
    /// cloud, or a local emulator). It must be an `https://` URL.
    pub fn with_authority_host(mut self, authority_host: &str) -> Result<Self, AzureConfigError> {
        let host = authority_host.trim().trim_end_matches('/');
        if !host.starts_with("https://") || host.len() <= "https://".len() {
            return Err(AzureConfigError::Azure(format!(
                "authority host {host:?} is not an https:// URL (e.g. https://login.microsoftonline.com); \
                 Entra ID clients refuse plain http"
            )));
        }
        self.authority_host = Some(Arc::from(host));
        Ok(self)
    }
}
