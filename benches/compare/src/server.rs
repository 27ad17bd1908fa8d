//! The redis-server both providers talk to: the workspace's one launcher
//! (`entraid_test_support::RedisServer`), with room for 20 000 clients, `DEBUG SLEEP`
//! allowed, and an ACL user named by the oid with `nopass` (so both are measured on client
//! cost, not on token checks).

pub(crate) use entraid_test_support::RedisServer as Server;

use crate::AnyError;
use crate::fake::OID;

/// Starts the benchmark's server; `cargo xtask bench` pins it to cores of its own
/// (`BENCH_SERVER_CPUS`) when the machine has them.
pub(crate) fn start() -> Result<Server, AnyError> {
    let cpus = std::env::var("BENCH_SERVER_CPUS").ok();
    let prefix: Vec<&str> = match &cpus {
        Some(cpus) => vec!["taskset", "-c", cpus],
        None => Vec::new(),
    };
    // Figure 8 stalls the server with DEBUG SLEEP.
    let server = Server::start_with(&prefix, &["--maxclients", "20000", "--enable-debug-command", "yes"])?;
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", OID, "on", "nopass", "~*", "&*", "+@all"][..])
        .query(&mut server.try_admin()?)?;
    Ok(server)
}
