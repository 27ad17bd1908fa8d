//! A real `redis-server` per test, and an identity provider whose tokens the server
//! enforces: each token becomes a password of the ACL user named by its `oid`, and is
//! removed again when it expires, so stale credentials are refused.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use entraid_identity::{IdentityError, IdentityProvider, Token};
use entraid_test_support::token_with_lifetime;

pub use entraid_test_support::RedisServer;

/// Three cluster-enabled servers sharing the 16384 slots.
pub struct Cluster {
    pub nodes: Vec<RedisServer>,
}

impl Cluster {
    pub fn start() -> Cluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "5000",
                    "--enable-debug-command",
                    "yes",
                ])
            })
            .collect();
        let ranges = [(0, 5460), (5461, 10922), (10923, 16383)];
        for (node, (first, last)) in nodes.iter().zip(ranges) {
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .query(&mut node.admin())
                .unwrap();
        }
        for node in &nodes[1..] {
            let _: () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(nodes[0].port)
                .query(&mut node.admin())
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = nodes.iter().all(|n| {
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut n.admin()).unwrap();
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
            });
            if ok {
                return Cluster { nodes };
            }
            assert!(Instant::now() < deadline, "the cluster did not form");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }
}

/// Issues JWT-shaped tokens for one `oid` and makes every listed server accept each one
/// only while it is valid.
#[derive(Clone)]
pub struct AclProvider {
    inner: Arc<AclInner>,
}

struct AclInner {
    oid: String,
    lifetime: Duration,
    ports: Vec<u16>,
    calls: AtomicU64,
    failing: AtomicBool,
    unregistered: AtomicBool,
}

impl AclProvider {
    pub fn new(oid: &str, lifetime: Duration, ports: Vec<u16>) -> AclProvider {
        AclProvider {
            inner: Arc::new(AclInner {
                oid: oid.to_owned(),
                lifetime,
                ports,
                calls: AtomicU64::new(0),
                failing: AtomicBool::new(false),
                unregistered: AtomicBool::new(false),
            }),
        }
    }

    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Ordering::SeqCst)
    }

    /// Issues tokens the servers do not know (their `AUTH` is refused), as a cache whose
    /// access policy was removed would; or, with `false`, known ones again.
    pub fn set_unregistered(&self, unregistered: bool) {
        self.inner.unregistered.store(unregistered, Ordering::SeqCst);
    }

    /// Makes the identity provider fail (transiently) or recover.
    pub fn set_failing(&self, failing: bool) {
        self.inner.failing.store(failing, Ordering::SeqCst);
    }
}

fn acl(port: u16, args: &[&str]) {
    let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("ACL").arg("SETUSER").arg(args).query(&mut c).unwrap();
}

#[async_trait::async_trait]
impl IdentityProvider for AclProvider {
    async fn request_token(&self) -> Result<Token, IdentityError> {
        let n = self.inner.calls.fetch_add(1, Ordering::SeqCst);
        if self.inner.failing.load(Ordering::SeqCst) {
            return Err(IdentityError::transient("test identity provider is down"));
        }
        let token = token_with_lifetime(&self.inner.oid, self.inner.lifetime, n);
        if self.inner.unregistered.load(Ordering::SeqCst) {
            return Ok(token);
        }
        let (oid, secret, ports) = (
            self.inner.oid.clone(),
            token.secret().to_owned(),
            self.inner.ports.clone(),
        );
        let grant = (oid.clone(), secret.clone(), ports.clone());
        tokio::task::spawn_blocking(move || {
            let (oid, secret, ports) = grant;
            for port in ports {
                acl(port, &[&oid, "on", &format!(">{secret}"), "~*", "&*", "+@all"]);
            }
        })
        .await
        .unwrap();
        let lifetime = self.inner.lifetime;
        tokio::spawn(async move {
            tokio::time::sleep(lifetime).await;
            let _ = tokio::task::spawn_blocking(move || {
                for port in ports {
                    acl(port, &[&oid, &format!("<{secret}")]);
                }
            })
            .await;
        });
        Ok(token)
    }
}

/// 64 tasks doing SET/GET for `duration`: (ok, failed, first errors).
pub async fn hammer<C>(connection: C, tasks: usize, duration: Duration) -> (u64, u64, Vec<String>)
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    let report = entraid_test_support::set_get_load(connection, tasks, duration).await;
    (report.ok, report.failed, report.first_errors)
}
