//! Why a provider could not be built from what it was given.

/// A bad input when building an [`AzureIdentityProvider`](crate::AzureIdentityProvider).
///
/// No variant carries a secret, a certificate or a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AzureConfigError {
    /// A required value is empty or blank.
    #[error("{what} is empty; {hint}")]
    Empty {
        /// Which value.
        what: &'static str,
        /// Where to find the right value.
        hint: &'static str,
    },
    /// The tenant id has characters a tenant id cannot have. The value itself is not
    /// kept: a secret pasted into the wrong slot must not end up in logs.
    #[error(
        "the tenant id ({length} characters, not shown in case a secret was pasted there) is not valid: \
         use the directory (tenant) id, a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47, or a \
         verified domain name (letters, digits, '.', '-')"
    )]
    InvalidTenantId {
        /// How many characters the refused value had.
        length: usize,
    },
    /// No scopes, or a blank one.
    #[error("{0}; use the default scope https://redis.azure.com/.default unless you know you need another")]
    InvalidScopes(&'static str),
    /// The certificate text is not base64.
    #[error(
        "the client certificate is not valid base64 ({reason}); pass the PKCS12 (.pfx) file's bytes encoded as base64, e.g. `base64 -w0 cert.pfx`"
    )]
    CertificateBase64 {
        /// What the decoder said.
        reason: String,
    },
    /// The certificate could not be used.
    #[error("the client certificate cannot be used: {problem}")]
    Certificate {
        /// What is wrong with it, and what to do.
        problem: String,
    },
    /// A file could not be read.
    #[error("cannot read the {what} at {path}: {reason}")]
    UnreadableFile {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: String,
        /// The operating system's reason.
        reason: String,
    },
    /// A required environment variable is not set.
    #[error("environment variable {name} is not set: {hint}")]
    MissingEnv {
        /// The variable.
        name: &'static str,
        /// Why it is needed.
        hint: &'static str,
    },
    /// The identity needs a cargo feature this build does not have.
    #[error(
        "{what} needs the `{feature}` feature, which this build of {krate} does not have: \
         add `features = [\"{feature}\"]` to the {krate} dependency in Cargo.toml"
    )]
    FeatureDisabled {
        /// What was asked for.
        what: &'static str,
        /// The feature that brings it.
        feature: &'static str,
        /// The crate whose feature it is.
        krate: &'static str,
    },
    /// `azure_identity` refused the configuration.
    #[error("{0}")]
    Azure(String),
}
