//! Where identity requests go and whom they trust: the authority host (a sovereign cloud,
//! a local emulator) and an extra root CA. Only ever on the caller's explicit request.

use std::sync::Arc;

use crate::{AzureConfigError, AzureIdentityProvider};

impl AzureIdentityProvider {
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
