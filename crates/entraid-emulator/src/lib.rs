//! A local Entra ID token service and Azure Managed Redis gateway: develop, demo and test
//! Entra-authenticated Redis without Azure. Everything binds to 127.0.0.1.
//!
//! - **Token service** (HTTPS, a CA made at start): `POST /{tenant}/oauth2/v2.0/token`
//!   (client credentials with a secret or a certificate assertion), managed identity in
//!   the App Service shape (`IDENTITY_ENDPOINT` + `X-IDENTITY-HEADER`) and the IMDS shape,
//!   the OpenID configuration and JWKS. Tokens are RS256 JWTs for `https://redis.azure.com`
//!   with the principal's `oid`. Errors have Entra's shapes and codes.
//! - **Gateway** (TLS): in front of a real redis-server, accepts `AUTH <oid> <token>` for
//!   valid tokens only and closes a connection when its token expires, as AMR does.
//! - **Admin** (plain HTTP, loopback): `POST /faults` to fail, slow down or stop the token
//!   service; `GET /stats`.
//!
//! ```no_run
//! # async fn run() -> Result<(), entraid_emulator::EmulatorError> {
//! let emulator = entraid_emulator::Emulator::start(entraid_emulator::EmulatorConfig::default()).await?;
//! for (key, value) in emulator.env() {
//!     println!("{key}={value}");
//! }
//! emulator.stop().await;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod faults;
mod gateway;
mod jwt;
mod pki;
mod principals;
mod redis_process;
mod resp;
mod stats;
mod token_service;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use pki::Pki;
pub use principals::{ManagedIdentity, Principals, ServicePrincipal};
pub use stats::Stats;

use crate::faults::FaultState;
use crate::jwt::SigningKey;
use crate::redis_process::RedisProcess;
use crate::token_service::TokenService;

/// Why the emulator could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EmulatorError {
    /// Making keys or certificates failed.
    #[error("crypto: {0}")]
    Crypto(String),
    /// A listener could not be bound.
    #[error("cannot listen on 127.0.0.1: {0}")]
    Bind(String),
    /// The redis-server could not be started or reached.
    #[error("{0}")]
    Redis(String),
    /// The principals file is wrong.
    #[error("principals file: {0}")]
    Principals(String),
    /// A file could not be written.
    #[error("cannot write {path}: {reason}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// A command-line argument is wrong.
    #[error("{0}")]
    Usage(String),
}

/// Where Redis comes from.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// Start this redis-server binary (found on `PATH` by name).
    Start(String),
    /// Use a running server at `HOST:PORT`. Its default user must accept any password (no
    /// `requirepass`): the gateway does the authentication.
    Existing(String),
}

/// How to start the emulator.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Lifetime of issued tokens (1 s to 24 h). Default 60 s.
    pub token_lifetime: Duration,
    /// Port of the token service; `None` picks a free one.
    pub token_port: Option<u16>,
    /// Port of the Redis gateway; `None` picks a free one.
    pub redis_port: Option<u16>,
    /// The redis-server to front.
    pub upstream: Upstream,
    /// Who may sign in; `None` generates a tenant, a service principal and a
    /// system-assigned managed identity.
    pub principals: Option<Principals>,
    /// Where to write the CA certificate; `None` writes it to the temporary directory.
    pub ca_file: Option<PathBuf>,
    /// Extra arguments for the redis-server it starts (with [`Upstream::Start`]), for
    /// example `["--enable-debug-command", "yes"]` so a test can stall the server with
    /// `DEBUG SLEEP`.
    pub redis_args: Vec<String>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            token_lifetime: Duration::from_secs(60),
            token_port: None,
            redis_port: None,
            upstream: Upstream::Start("redis-server".to_owned()),
            principals: None,
            ca_file: None,
            redis_args: Vec::new(),
        }
    }
}

/// A running emulator. Dropping it stops the listeners and its redis-server.
pub struct Emulator {
    service: Arc<TokenService>,
    token_port: u16,
    redis_port: u16,
    admin_port: u16,
    ca_file: PathBuf,
    pki: Pki,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    redis: Option<RedisProcess>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("token_port", &self.token_port)
            .field("redis_port", &self.redis_port)
            .field("admin_port", &self.admin_port)
            .finish_non_exhaustive()
    }
}

pub(crate) fn free_port() -> Result<u16, EmulatorError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| EmulatorError::Bind(e.to_string()))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| EmulatorError::Bind(e.to_string()))
}

async fn bind(port: Option<u16>) -> Result<tokio::net::TcpListener, EmulatorError> {
    tokio::net::TcpListener::bind(("127.0.0.1", port.unwrap_or(0)))
        .await
        .map_err(|e| EmulatorError::Bind(format!("port {}: {e}", port.unwrap_or(0))))
}

fn local_port(listener: &tokio::net::TcpListener) -> Result<u16, EmulatorError> {
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| EmulatorError::Bind(e.to_string()))
}

impl Emulator {
    /// Starts the token service, the gateway, the admin endpoint and (unless given an
    /// upstream) a redis-server. Returns when all of them accept connections.
    pub async fn start(config: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        let lifetime = config.token_lifetime;
        if lifetime < Duration::from_secs(1) || lifetime > Duration::from_secs(24 * 3600) {
            return Err(EmulatorError::Usage(format!(
                "token lifetime {lifetime:?} is outside 1 s to 24 h"
            )));
        }
        let pki = Pki::generate()?;
        let tls = tokio_rustls::TlsAcceptor::from(pki.rustls_server_config()?);
        let token_listener = bind(config.token_port).await?;
        let redis_listener = bind(config.redis_port).await?;
        let admin_listener = bind(None).await?;
        let (token_port, redis_port, admin_port) = (
            local_port(&token_listener)?,
            local_port(&redis_listener)?,
            local_port(&admin_listener)?,
        );

        let (redis, upstream) = match &config.upstream {
            Upstream::Start(binary) => {
                let process = RedisProcess::start(binary, &config.redis_args).await?;
                let address = format!("127.0.0.1:{}", process.port);
                (Some(process), address)
            }
            Upstream::Existing(address) => (None, address.clone()),
        };

        let ca_file = config.ca_file.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!("entraid-emulator-ca-{}-{token_port}.pem", std::process::id()))
        });
        std::fs::write(&ca_file, &pki.ca_pem).map_err(|e| EmulatorError::Write {
            path: ca_file.display().to_string(),
            reason: e.to_string(),
        })?;

        let service = Arc::new(TokenService {
            principals: config.principals.clone().unwrap_or_else(Principals::generate),
            signer: SigningKey::generate()?,
            token_lifetime: lifetime,
            faults: FaultState::default(),
            identity_header: principals::random_secret(),
            authority: format!("https://127.0.0.1:{token_port}"),
            stats: Arc::new(Stats::default()),
        });

        let tasks = vec![
            tokio::spawn(serve_https(token_listener, tls.clone(), service.clone())),
            tokio::spawn(serve_admin(admin_listener, service.clone())),
            tokio::spawn(gateway::serve(redis_listener, tls, upstream, service.clone())),
        ];
        Ok(Emulator {
            service,
            token_port,
            redis_port,
            admin_port,
            ca_file,
            pki,
            tasks,
            redis,
        })
    }

    /// The environment a client needs, in the order the CLI prints it.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let p = &self.service.principals;
        let sp = p.service_principals.first();
        vec![
            ("AZURE_AUTHORITY_HOST", self.service.authority.clone()),
            ("AZURE_TENANT_ID", p.tenant_id.clone()),
            ("AZURE_CLIENT_ID", sp.map(|s| s.client_id.clone()).unwrap_or_default()),
            (
                "AZURE_CLIENT_SECRET",
                sp.and_then(|s| s.secret.clone()).unwrap_or_default(),
            ),
            ("IDENTITY_ENDPOINT", format!("{}/msi/token", self.service.authority)),
            ("IDENTITY_HEADER", self.service.identity_header.clone()),
            ("REDIS_HOST", "127.0.0.1".to_owned()),
            ("REDIS_PORT", self.redis_port.to_string()),
            ("REDIS_OBJECT_ID", sp.map(|s| s.object_id.clone()).unwrap_or_default()),
            (
                "ENTRAID_EMULATOR_MI_OBJECT_ID",
                p.system_assigned_object_id().to_owned(),
            ),
            ("ENTRAID_EMULATOR_CA_FILE", self.ca_file.display().to_string()),
            (
                "ENTRAID_EMULATOR_ADMIN_URL",
                format!("http://127.0.0.1:{}", self.admin_port),
            ),
        ]
    }

    /// The CA certificate (PEM) clients must trust.
    pub fn ca_pem(&self) -> &str {
        &self.pki.ca_pem
    }

    /// The principals the token service accepts.
    pub fn principals(&self) -> &Principals {
        &self.service.principals
    }

    /// `https://127.0.0.1:<port>`: the authority host for Entra clients.
    pub fn authority_host(&self) -> &str {
        &self.service.authority
    }

    /// The gateway's port on 127.0.0.1.
    pub fn redis_port(&self) -> u16 {
        self.redis_port
    }

    /// The admin endpoint, `http://127.0.0.1:<port>`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// What has happened so far.
    pub fn stats(&self) -> &Stats {
        &self.service.stats
    }

    /// Sets faults as the admin endpoint does (`{"fail_next": 3, "status": 500}` …).
    pub fn set_faults(&self, faults: &serde_json::Value) -> Result<(), String> {
        self.service.faults.apply(faults).map(drop)
    }

    /// Stops every listener and the redis-server it started.
    pub async fn stop(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Some(redis) = self.redis.take() {
            redis.stop().await;
        }
        let _ = std::fs::remove_file(&self.ca_file);
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn serve_https(listener: tokio::net::TcpListener, tls: tokio_rustls::TlsAcceptor, service: Arc<TokenService>) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let tls = tls.clone();
        let service = service.clone();
        tokio::spawn(async move {
            let Ok(stream) = tls.accept(socket).await else { return };
            let handler = hyper::service::service_fn(move |request| service.clone().handle(request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), handler)
                .await;
        });
    }
}

async fn serve_admin(listener: tokio::net::TcpListener, service: Arc<TokenService>) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let service = service.clone();
        tokio::spawn(async move {
            let handler = hyper::service::service_fn(move |request| token_service::admin(service.clone(), request));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(socket), handler)
                .await;
        });
    }
}
