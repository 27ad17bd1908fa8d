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
//!   service (from Rust: [`Emulator::set_faults`] with a [`Faults`] change); `GET /stats`.
//! - **Cluster mode** ([`EmulatorConfig::cluster_nodes`], `--cluster N`): N redis-server
//!   nodes in cluster mode, one gateway each, every node announcing its gateway's address,
//!   as Azure Managed Redis's OSS cluster policy exposes every shard on its own endpoint.
//!   See [`Node`].
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
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

// The crates.io page's code blocks are compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}

mod access_token;
mod admin;
mod cluster;
mod faults;
mod gateway;
mod http;
mod jwt;
mod pki;
mod principals;
mod private_dir;
mod redis_process;
mod reply_frames;
mod resp;
mod serve;
mod stats;
mod token_service;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use faults::{Faults, FaultsError, Maintenance};
pub use pki::Pki;
pub use principals::{ManagedIdentity, Principals, ServicePrincipal};
pub use stats::Stats;

use crate::stats::GatewayStats;

use crate::faults::FaultState;
use crate::jwt::SigningKey;
use crate::private_dir::PrivateDir;
use crate::redis_process::RedisProcess;
use crate::serve::Shutdown;
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

/// How to start the emulator: [`EmulatorConfig::new`] (the defaults), then a setter
/// per setting, each returning the configuration.
///
/// ```
/// use std::time::Duration;
/// use entraid_emulator::EmulatorConfig;
///
/// let config = EmulatorConfig::new()
///     .token_lifetime(Duration::from_secs(5))
///     .redis_args(["--enable-debug-command", "yes"]);
/// # let _ = config;
/// ```
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// Lifetime of issued tokens (1 s to 24 h). Default 60 s.
    token_lifetime: Duration,
    /// Port of the token service; `None` picks a free one.
    token_port: Option<u16>,
    /// Port of the Redis gateway; `None` picks a free one.
    redis_port: Option<u16>,
    /// The redis-server to front.
    upstream: Upstream,
    /// Who may sign in; `None` generates a tenant, a service principal and a
    /// system-assigned managed identity.
    principals: Option<Principals>,
    /// Where to write the CA certificate; `None` writes it to `ca.pem` in a private
    /// directory (mode 0700, a random name) in the temporary directory, removed at stop.
    ca_file: Option<PathBuf>,
    /// Extra arguments for the redis-server it starts (with [`Upstream::Start`]), for
    /// example `["--enable-debug-command", "yes"]` so a test can stall the server with
    /// `DEBUG SLEEP`.
    redis_args: Vec<String>,
    /// How long a client of the gateway or the token service may take over its TLS
    /// handshake before it is disconnected. Default 10 s.
    handshake_timeout: Duration,
    /// How long a gateway connection may stay unauthenticated (from the end of its
    /// handshake to a successful `AUTH`) before it is closed. Redis has no such limit;
    /// an emulator facing arbitrary clients needs one, or silent or trickling clients hold
    /// their sockets and buffers forever. Default 30 s.
    auth_timeout: Duration,
    /// Cluster mode: start this many redis-server nodes (3 to 64) in cluster mode, all
    /// 16 384 slots assigned, each behind a gateway of its own that enforces tokens as the
    /// single gateway does; each node announces its gateway's address, so whatever names a
    /// node (`CLUSTER SLOTS`, `CLUSTER SHARDS`, `CLUSTER NODES`, `-MOVED`, `-ASK`) names a
    /// gateway. With [`redis_port`](Self::redis_port) `P`, the gateways listen on `P`,
    /// `P + 1`, …. Needs [`Upstream::Start`] and Redis 7.0 or later. `None` (the default):
    /// one gateway in front of one redis-server.
    cluster_nodes: Option<usize>,
}

impl EmulatorConfig {
    /// The defaults: 60-second tokens, free ports, a redis-server started from `PATH`,
    /// generated principals, one gateway.
    pub fn new() -> EmulatorConfig {
        EmulatorConfig::default()
    }

    /// Lifetime of issued tokens (1 s to 24 h; checked at start). Default 60 s.
    pub fn token_lifetime(mut self, lifetime: Duration) -> EmulatorConfig {
        self.token_lifetime = lifetime;
        self
    }

    /// Port of the token service; `None` (the default) picks a free one.
    pub fn token_port(mut self, port: Option<u16>) -> EmulatorConfig {
        self.token_port = port;
        self
    }

    /// Port of the Redis gateway (the first one in cluster mode); `None` (the default)
    /// picks a free one.
    pub fn redis_port(mut self, port: Option<u16>) -> EmulatorConfig {
        self.redis_port = port;
        self
    }

    /// The redis-server to front. Default: start `redis-server` from `PATH`.
    pub fn upstream(mut self, upstream: Upstream) -> EmulatorConfig {
        self.upstream = upstream;
        self
    }

    /// Who may sign in; `None` (the default) generates a tenant, a service principal and
    /// a system-assigned managed identity.
    pub fn principals(mut self, principals: Option<Principals>) -> EmulatorConfig {
        self.principals = principals;
        self
    }

    /// Where to write the CA certificate; `None` (the default) writes it to `ca.pem` in a
    /// private directory, removed at stop.
    pub fn ca_file(mut self, path: Option<PathBuf>) -> EmulatorConfig {
        self.ca_file = path;
        self
    }

    /// Extra arguments for the redis-server it starts, for example
    /// `["--enable-debug-command", "yes"]` so a test can stall the server with
    /// `DEBUG SLEEP`.
    pub fn redis_args<I, A>(mut self, args: I) -> EmulatorConfig
    where
        I: IntoIterator<Item = A>,
        A: Into<String>,
    {
        self.redis_args = args.into_iter().map(Into::into).collect();
        self
    }

    /// How long a client may take over its TLS handshake. Default 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> EmulatorConfig {
        self.handshake_timeout = timeout;
        self
    }

    /// How long a gateway connection may stay unauthenticated. Default 30 s.
    pub fn auth_timeout(mut self, timeout: Duration) -> EmulatorConfig {
        self.auth_timeout = timeout;
        self
    }

    /// Cluster mode with this many nodes (3 to 64; checked at start); `None` (the
    /// default): one gateway in front of one redis-server.
    pub fn cluster_nodes(mut self, nodes: Option<usize>) -> EmulatorConfig {
        self.cluster_nodes = nodes;
        self
    }
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
            handshake_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(30),
            cluster_nodes: None,
        }
    }
}

/// One gateway and the Redis behind it: the only one, or one node of a cluster.
#[derive(Debug, Clone)]
pub struct Node {
    gateway_port: u16,
    upstream: String,
    id: Option<String>,
    stats: Arc<Stats>,
}

impl Node {
    /// The port of its TLS gateway on 127.0.0.1: where clients connect.
    pub fn gateway_port(&self) -> u16 {
        self.gateway_port
    }

    /// `127.0.0.1:<port>`: the gateway's address, as the cluster announces it.
    pub fn gateway_address(&self) -> String {
        format!("127.0.0.1:{}", self.gateway_port)
    }

    /// The redis-server's own address (`HOST:PORT`, plain TCP, no password): what nodes
    /// use to reach each other, e.g. as the target of `MIGRATE`. Clients use the gateway.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Its cluster node id (`CLUSTER MYID`); `None` outside cluster mode.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// What its gateway counted: connections, authentications, re-authentications, auth
    /// failures, cut connections (the token counters stay zero: tokens are the service's).
    pub fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// A running emulator. Dropping it stops the listeners and its redis-servers.
pub struct Emulator {
    service: Arc<TokenService>,
    /// The second gateway (single node): its port and its own counters.
    handoff: Option<(u16, Arc<Stats>)>,
    token_port: u16,
    nodes: Vec<Node>,
    cluster: bool,
    admin_port: u16,
    ca_file: PathBuf,
    /// The directory holding `ca_file`, unless the caller chose where it goes.
    ca_dir: Option<PrivateDir>,
    pki: Pki,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Tells the listeners and every connection to stop (dropping it does too).
    stop: tokio::sync::watch::Sender<bool>,
    redis: Vec<RedisProcess>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("token_port", &self.token_port)
            .field(
                "gateway_ports",
                &self.nodes.iter().map(Node::gateway_port).collect::<Vec<_>>(),
            )
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

impl EmulatorConfig {
    /// How many nodes (gateways and redis-servers) this configuration starts, once its
    /// values are checked.
    fn node_count(&self) -> Result<usize, EmulatorError> {
        let lifetime = self.token_lifetime;
        if lifetime < Duration::from_secs(1) || lifetime > Duration::from_secs(24 * 3600) {
            return Err(EmulatorError::Usage(format!(
                "token lifetime {lifetime:?} is outside 1 s to 24 h"
            )));
        }
        let count = match self.cluster_nodes {
            None => 1,
            Some(n) if !(cluster::MIN_NODES..=cluster::MAX_NODES).contains(&n) => {
                return Err(EmulatorError::Usage(format!(
                    "--cluster {n}: a cluster has {} to {} nodes",
                    cluster::MIN_NODES,
                    cluster::MAX_NODES
                )));
            }
            Some(n) => n,
        };
        if self.cluster_nodes.is_some() && matches!(self.upstream, Upstream::Existing(_)) {
            return Err(EmulatorError::Usage(
                "--cluster starts its own redis-servers: it cannot front --upstream".to_owned(),
            ));
        }
        Ok(count)
    }
}

/// Every listener the emulator serves, bound before anything starts.
struct Listeners {
    token: tokio::net::TcpListener,
    admin: tokio::net::TcpListener,
    /// One per node, in slot order.
    gateways: Vec<tokio::net::TcpListener>,
    /// The second gateway a `MOVING` names, in front of the same server (single node).
    handoff: Option<tokio::net::TcpListener>,
}

/// The listeners' ports.
struct Ports {
    token: u16,
    admin: u16,
    gateways: Vec<u16>,
    handoff: Option<u16>,
}

impl Listeners {
    async fn bind(config: &EmulatorConfig, count: usize) -> Result<Listeners, EmulatorError> {
        let token = bind(config.token_port).await?;
        let mut gateways = Vec::with_capacity(count);
        for i in 0..count {
            let port = match config.redis_port {
                Some(first) => Some(u16::try_from(usize::from(first) + i).map_err(|_| {
                    EmulatorError::Usage(format!("--redis-port {first}: {count} gateways do not fit below 65536"))
                })?),
                None => None,
            };
            gateways.push(bind(port).await?);
        }
        let handoff = match config.cluster_nodes {
            None => Some(bind(None).await?),
            Some(_) => None,
        };
        let admin = bind(None).await?;
        Ok(Listeners {
            token,
            admin,
            gateways,
            handoff,
        })
    }

    fn ports(&self) -> Result<Ports, EmulatorError> {
        Ok(Ports {
            token: local_port(&self.token)?,
            admin: local_port(&self.admin)?,
            gateways: self.gateways.iter().map(local_port).collect::<Result<_, _>>()?,
            handoff: self.handoff.as_ref().map(local_port).transpose()?,
        })
    }

    /// Serves each listener on a task of its own: the token service, the admin endpoint,
    /// one gateway per node, and the handoff gateway in front of the first node's server
    /// with counters of its own.
    fn serve(
        self,
        config: &EmulatorConfig,
        tls: &tokio_rustls::TlsAcceptor,
        service: &Arc<TokenService>,
        nodes: &[Node],
        handoff_stats: &Arc<Stats>,
        shutdown: &Shutdown,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let timeouts = gateway::Timeouts {
            handshake: config.handshake_timeout,
            auth: config.auth_timeout,
        };
        let mut tasks = vec![
            tokio::spawn(token_service::serve(
                self.token,
                tls.clone(),
                service.clone(),
                config.handshake_timeout,
                shutdown.clone(),
            )),
            tokio::spawn(admin::serve(self.admin, service.clone(), shutdown.clone())),
        ];
        let handoff = self
            .handoff
            .zip(nodes.first())
            .map(|(listener, node)| (listener, node, handoff_stats.clone()));
        let gateways = self
            .gateways
            .into_iter()
            .zip(nodes)
            .map(|(listener, node)| (listener, node, node.stats.clone()))
            .chain(handoff);
        for (listener, node, node_stats) in gateways {
            let stats = GatewayStats {
                total: service.stats.clone(),
                node: node_stats,
            };
            tasks.push(tokio::spawn(gateway::serve(
                listener,
                tls.clone(),
                node.upstream.clone(),
                service.clone(),
                stats,
                timeouts,
                shutdown.clone(),
            )));
        }
        tasks
    }
}

/// The redis-servers behind the gateways: started (one, or a cluster's nodes) or given.
struct Upstreams {
    processes: Vec<RedisProcess>,
    /// Each node's address, in slot order.
    addresses: Vec<String>,
    /// Cluster mode: each node's ports, to form the cluster with.
    members: Vec<cluster::Member>,
}

impl Upstreams {
    async fn start(config: &EmulatorConfig, gateway_ports: &[u16]) -> Result<Upstreams, EmulatorError> {
        let mut upstreams = Upstreams {
            processes: Vec::new(),
            addresses: Vec::new(),
            members: Vec::new(),
        };
        match (&config.upstream, config.cluster_nodes.is_some()) {
            (Upstream::Start(binary), false) => {
                let process = RedisProcess::start(binary, &config.redis_args).await?;
                upstreams.addresses.push(format!("127.0.0.1:{}", process.port));
                upstreams.processes.push(process);
            }
            (Upstream::Start(binary), true) => {
                for &gateway_port in gateway_ports {
                    let bus_port = free_port()?;
                    let mut args = cluster::node_args(gateway_port, bus_port);
                    args.extend(config.redis_args.iter().cloned());
                    let process = RedisProcess::start(binary, &args).await.map_err(|e| {
                        EmulatorError::Redis(format!("{e} (cluster mode needs redis-server 7.0 or later)"))
                    })?;
                    upstreams.members.push(cluster::Member {
                        upstream_port: process.port,
                        gateway_port,
                        bus_port,
                    });
                    upstreams.addresses.push(format!("127.0.0.1:{}", process.port));
                    upstreams.processes.push(process);
                }
            }
            (Upstream::Existing(address), _) => upstreams.addresses.push(address.clone()),
        }
        Ok(upstreams)
    }
}

/// Writes the CA certificate to `path`, or to `ca.pem` in a private directory of its own
/// (returned, so it is removed at stop).
fn write_ca(path: Option<&std::path::Path>, pem: &str) -> Result<(PathBuf, Option<PrivateDir>), EmulatorError> {
    if let Some(path) = path {
        std::fs::write(path, pem).map_err(|e| EmulatorError::Write {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        return Ok((path.to_path_buf(), None));
    }
    let dir = PrivateDir::create("entraid-emulator").map_err(|e| EmulatorError::Write {
        path: std::env::temp_dir().join("entraid-emulator-*").display().to_string(),
        reason: e.to_string(),
    })?;
    let path = dir
        .write_new("ca.pem", pem.as_bytes())
        .map_err(|e| EmulatorError::Write {
            path: dir.path().join("ca.pem").display().to_string(),
            reason: e.to_string(),
        })?;
    Ok((path, Some(dir)))
}

impl Emulator {
    /// Starts the token service, the gateway (one per node in cluster mode), the admin
    /// endpoint and (unless given an upstream) the redis-server(s). Returns when all of
    /// them accept connections; in cluster mode, once the cluster says `cluster_state:ok`
    /// through every gateway, each naming every node by its gateway's address.
    pub async fn start(config: EmulatorConfig) -> Result<Emulator, EmulatorError> {
        let count = config.node_count()?;
        let pki = Pki::generate()?;
        let tls = tokio_rustls::TlsAcceptor::from(pki.rustls_server_config()?);
        let listeners = Listeners::bind(&config, count).await?;
        let ports = listeners.ports()?;
        let upstreams = Upstreams::start(&config, &ports.gateways).await?;
        let ids = if upstreams.members.is_empty() {
            Vec::new()
        } else {
            cluster::form(&upstreams.members).await?
        };
        let (ca_file, ca_dir) = write_ca(config.ca_file.as_deref(), &pki.ca_pem)?;
        let nodes: Vec<Node> = ports
            .gateways
            .iter()
            .zip(&upstreams.addresses)
            .enumerate()
            .map(|(i, (&gateway_port, upstream))| Node {
                gateway_port,
                upstream: upstream.clone(),
                id: ids.get(i).cloned(),
                stats: Arc::new(Stats::default()),
            })
            .collect();
        let cluster = config.cluster_nodes.is_some();
        let service = Arc::new(TokenService {
            principals: config.principals.clone().unwrap_or_else(Principals::generate),
            signer: SigningKey::generate()?,
            token_lifetime: config.token_lifetime,
            faults: FaultState::default(),
            identity_header: principals::random_secret(),
            authority: format!("https://127.0.0.1:{}", ports.token),
            handoff_endpoint: ports.handoff.map(|port| format!("127.0.0.1:{port}")),
            stats: Arc::new(Stats::default()),
            nodes: if cluster {
                nodes.iter().map(|n| (n.gateway_address(), n.stats.clone())).collect()
            } else {
                Vec::new()
            },
        });
        let (stop, shutdown) = Shutdown::new();
        let handoff_stats = Arc::new(Stats::default());
        let tasks = listeners.serve(&config, &tls, &service, &nodes, &handoff_stats, &shutdown);
        let emulator = Emulator {
            handoff: ports.handoff.map(|port| (port, handoff_stats)),
            service,
            token_port: ports.token,
            nodes,
            cluster,
            admin_port: ports.admin,
            ca_file,
            ca_dir,
            pki,
            tasks,
            stop,
            redis: upstreams.processes,
        };
        if cluster {
            emulator.check_cluster(&upstreams.members, &ids).await?;
        }
        Ok(emulator)
    }

    /// Checks the cluster through every gateway, with a token of its own, then sets the
    /// counters back to zero: those connections were the emulator's, not a client's.
    async fn check_cluster(&self, members: &[cluster::Member], ids: &[String]) -> Result<(), EmulatorError> {
        const OID: &str = access_token::READINESS_OID;
        let token = self.service.issue(OID, OID)?.token;
        let tls = self.pki.rustls_client_config()?;
        for &member in members {
            cluster::check_gateway(member, members, ids, tls.clone(), OID, &token).await?;
        }
        // Every check got its QUIT's reply: its gateway counts nothing more for it.
        self.service.stats.reset();
        for node in &self.nodes {
            node.stats.reset();
        }
        Ok(())
    }

    /// The environment a client needs, in the order the CLI prints it. In cluster mode
    /// `REDIS_PORT` is the first node's gateway and `REDIS_CLUSTER_NODES` lists every
    /// gateway (`127.0.0.1:<port>,…`).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        let p = &self.service.principals;
        let sp = p.service_principals.first();
        let mut env = vec![
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
            ("REDIS_PORT", self.redis_port().to_string()),
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
        ];
        if self.cluster {
            let nodes: Vec<String> = self.nodes.iter().map(Node::gateway_address).collect();
            let at = env
                .iter()
                .position(|(k, _)| *k == "REDIS_PORT")
                .map_or(env.len(), |i| i + 1);
            env.insert(at, ("REDIS_CLUSTER_NODES", nodes.join(",")));
        }
        env
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

    /// The second gateway's port, in front of the same server: the endpoint a
    /// `MOVING` names ([`Faults::maintenance`]). Single-node mode only.
    pub fn handoff_port(&self) -> Option<u16> {
        self.handoff.as_ref().map(|(port, _)| *port)
    }

    /// The second gateway's own counters (its connections count in [`stats`](Self::stats) too).
    pub fn handoff_stats(&self) -> Option<&Stats> {
        self.handoff.as_ref().map(|(_, stats)| &**stats)
    }

    /// The gateway's port on 127.0.0.1 (in cluster mode, the first node's).
    pub fn redis_port(&self) -> u16 {
        self.nodes.first().map(Node::gateway_port).unwrap_or_default()
    }

    /// Every gateway and what is behind it: one, or one per cluster node in slot order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Whether it runs a cluster ([`EmulatorConfig::cluster_nodes`]).
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The admin endpoint, `http://127.0.0.1:<port>`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    /// What has happened so far, in total over every gateway (per gateway:
    /// [`Node::stats`]).
    pub fn stats(&self) -> &Stats {
        &self.service.stats
    }

    /// Changes the injected faults (as the admin endpoint's `POST /faults` does): the
    /// settings `faults` gives replace the current ones, the others stay. A refused change
    /// changes nothing.
    ///
    /// ```no_run
    /// # async fn run(emulator: &entraid_emulator::Emulator) -> Result<(), entraid_emulator::FaultsError> {
    /// use entraid_emulator::Faults;
    /// emulator.set_faults(Faults::new().fail_next(3).status(503))?;
    /// emulator.set_faults(Faults::reset())?;
    /// # Ok(()) }
    /// ```
    pub fn set_faults(&self, faults: Faults) -> Result<(), FaultsError> {
        self.service.faults.apply(&faults).map(drop)
    }

    /// Stops every listener and closes every connection (each gets a few seconds to say
    /// goodbye), then the redis-servers it started; removes the CA file it wrote.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for mut task in self.tasks.drain(..) {
            // Each listener returns once its connections are closed (or aborted).
            if tokio::time::timeout(Duration::from_secs(5), &mut task).await.is_err() {
                task.abort();
            }
        }
        for redis in self.redis.drain(..) {
            redis.stop().await;
        }
        match self.ca_dir.take() {
            Some(dir) => drop(dir),
            None => {
                let _ = std::fs::remove_file(&self.ca_file);
            }
        }
    }
}

impl Drop for Emulator {
    /// Without `stop()`: the listeners are aborted, which aborts their connections; the
    /// private directory goes with `ca_dir`.
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}
