//! The redis-server both providers talk to: 127.0.0.1, a free port, room for 20 000
//! clients, an ACL user named by the oid with `nopass` (so both are measured on client
//! cost, not on token checks).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::AnyError;
use crate::fake::OID;

pub(crate) struct Server {
    child: Option<Child>,
    pub(crate) port: u16,
}

impl Server {
    pub(crate) fn start() -> Result<Server, AnyError> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        // `cargo xtask bench` pins the server to cores of its own when the machine has them.
        let mut command = match std::env::var("BENCH_SERVER_CPUS") {
            Ok(cpus) => {
                let mut taskset = Command::new("taskset");
                taskset.args(["-c", &cpus, "redis-server"]);
                taskset
            }
            Err(_) => Command::new("redis-server"),
        };
        let child = command
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                "20000",
                // Figure 8 stalls the server with DEBUG SLEEP.
                "--enable-debug-command",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server on PATH: {e}"))?;
        let server = Server {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.connection().is_err() {
            if Instant::now() > deadline {
                return Err("redis-server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _: () = redis::cmd("ACL")
            .arg(&["SETUSER", OID, "on", "nopass", "~*", "&*", "+@all"][..])
            .query(&mut server.connection()?)?;
        Ok(server)
    }

    /// A handle to a server started elsewhere (no process to stop).
    pub(crate) fn attach(port: u16) -> Server {
        Server { child: None, port }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection()
    }

    /// A connection of the default user, for administration (`DEBUG SLEEP`).
    pub(crate) fn admin(&self) -> redis::RedisResult<redis::Connection> {
        self.connection()
    }

    pub(crate) fn auth_calls(&self) -> Result<u64, AnyError> {
        let info: String = redis::cmd("INFO").arg("commandstats").query(&mut self.connection()?)?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_auth:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    pub(crate) fn version(&self) -> String {
        let info: String = self
            .connection()
            .and_then(|mut c| redis::cmd("INFO").arg("server").query(&mut c))
            .unwrap_or_default();
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
