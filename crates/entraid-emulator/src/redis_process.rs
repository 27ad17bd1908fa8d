//! The redis-server the gateway fronts, when the emulator starts its own.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use crate::EmulatorError;
use crate::private_dir::PrivateDir;

/// A redis-server on 127.0.0.1, no persistence, stopped when dropped.
pub(crate) struct RedisProcess {
    child: Child,
    pub(crate) port: u16,
    /// Its working directory: private, like the CA's, removed with it.
    _dir: PrivateDir,
}

impl RedisProcess {
    pub(crate) async fn start(binary: &str, extra_args: &[String]) -> Result<RedisProcess, EmulatorError> {
        let port = crate::free_port()?;
        let dir = PrivateDir::create("entraid-emulator-redis")
            .map_err(|e| EmulatorError::Redis(format!("cannot create its temporary directory: {e}")))?;
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(dir.path())
            .args(extra_args)
            .stdout(Stdio::null())
            // Only fatal errors go there (its log goes to stdout): read if it exits early.
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                EmulatorError::Redis(format!(
                    "cannot start {binary:?}: {e}; install it (apt-get install -y redis-server) or pass --redis-server PATH or --upstream HOST:PORT"
                ))
            })?;
        let mut process = RedisProcess { child, port, _dir: dir };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if ping(port).await {
                return Ok(process);
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                let mut said = String::new();
                if let Some(mut stderr) = process.child.stderr.take() {
                    let _ = stderr.read_to_string(&mut said).await;
                }
                return Err(EmulatorError::Redis(format!(
                    "{binary} exited at start ({status}): {}",
                    said.trim()
                )));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(EmulatorError::Redis(format!(
                    "redis-server did not answer on port {port} within 10 s"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills it and waits for it; its directory goes when `self` does.
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn ping(port: u16) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf).await.is_ok() && &buf == b"+PONG\r\n"
}
