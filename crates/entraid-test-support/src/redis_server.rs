//! A real `redis-server` for tests and benchmarks: 127.0.0.1, a free port, no
//! persistence, its own working directory; killed (and the directory removed) when
//! dropped. The one launcher the adapter's tests and the benchmark share.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server`, or a handle to one started elsewhere ([`attach`](Self::attach)).
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: Option<PathBuf>,
}

/// A port nobody listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RedisServer {
    /// Starts one with `extra` arguments (`--enable-debug-command yes`…), panicking with
    /// what to install if it cannot: for tests.
    pub fn start(extra: &[&str]) -> RedisServer {
        RedisServer::start_with(&[], extra).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `prefix… redis-server …extra` (a prefix such as `taskset -c 1` pins it to a
    /// core) and waits up to 10 s for its `PONG`.
    pub fn start_with(prefix: &[&str], extra: &[&str]) -> Result<RedisServer, String> {
        let port = free_port().map_err(|e| format!("no free port on 127.0.0.1: {e}"))?;
        let dir = std::env::temp_dir().join(format!("entraid-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg("redis-server");
                command
            }
            None => Command::new("redis-server"),
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
            ])
            .arg("--dir")
            .arg(&dir)
            // Room for the many-connection tests; `extra` may raise it (later wins).
            .args(["--maxclients", "4000"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server: {e}; install it (apt-get install -y redis-server)"))?;
        let server = RedisServer {
            child: Some(child),
            port,
            dir: Some(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = server.try_admin()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(format!("redis-server did not answer on port {port} within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A handle to a server another process started (nothing is stopped on drop).
    pub fn attach(port: u16) -> RedisServer {
        RedisServer {
            child: None,
            port,
            dir: None,
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A plain connection as the default user (no password), for setup and inspection.
    pub fn try_admin(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection()
    }

    /// [`try_admin`](Self::try_admin), panicking: for tests.
    pub fn admin(&self) -> redis::Connection {
        self.try_admin()
            .unwrap_or_else(|e| panic!("redis-server on port {}: {e}", self.port))
    }

    fn commandstats(&self) -> redis::RedisResult<String> {
        redis::cmd("INFO").arg("commandstats").query(&mut self.try_admin()?)
    }

    /// How many `AUTH` commands the server has run (`INFO commandstats`).
    pub fn auth_calls(&self) -> redis::RedisResult<u64> {
        Ok(self
            .commandstats()?
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_auth:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    /// How many `AUTH`/`HELLO` calls failed (`failed_calls`, Redis 7).
    pub fn failed_auth_calls(&self) -> redis::RedisResult<u64> {
        Ok(self
            .commandstats()?
            .lines()
            .filter(|line| line.starts_with("cmdstat_auth:") || line.starts_with("cmdstat_hello:"))
            .filter_map(|line| line.split("failed_calls=").nth(1))
            .filter_map(|rest| rest.split(',').next())
            .filter_map(|n| n.parse::<u64>().ok())
            .sum())
    }

    /// `redis_version` from `INFO server`, or `unknown`.
    pub fn version(&self) -> String {
        let info: String = self
            .try_admin()
            .and_then(|mut c| redis::cmd("INFO").arg("server").query(&mut c))
            .unwrap_or_default();
        info.lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
