//! `entraid-emulator`: a local Entra ID token service and Azure Managed Redis gateway.
//!
//! ```text
//! entraid-emulator [--token-lifetime 60s] [--env-file PATH] [--redis-server PATH | --upstream HOST:PORT]
//!                  [--token-port N] [--redis-port N] [--principals FILE] [--cluster N]
//! ```
//! Prints `KEY=value` lines (and writes them to `--env-file`), then `READY`. Ctrl-C or
//! SIGTERM stops everything. Exit codes: 0 after a stop, 1 when it cannot start, 2 for a
//! usage error (`--help` prints every flag).
//!
//! `--cluster N` (3 to 64): N redis-server nodes in cluster mode, one TLS gateway each
//! (on `--redis-port`, `+1`, … when given); `REDIS_CLUSTER_NODES` lists the gateways, and
//! `READY` comes once the cluster is `cluster_state:ok` through every one of them.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use entraid_emulator::{Emulator, EmulatorConfig, EmulatorError, Principals, Upstream};

/// A local Entra ID token service and Azure Managed Redis TLS gateway, for development,
/// demos and tests without Azure. Everything listens on 127.0.0.1. Prints the environment
/// a client needs as KEY=value lines, then READY; Ctrl-C or SIGTERM stops everything.
#[derive(Debug, Parser)]
#[command(name = "entraid-emulator", version)]
struct Cli {
    /// Lifetime of issued tokens: a number with ms, s, m or h, from 1s to 24h.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = token_lifetime)]
    token_lifetime: Duration,
    /// Also write the KEY=value lines to this file.
    #[arg(long, value_name = "PATH")]
    env_file: Option<PathBuf>,
    /// The redis-server binary to start [default: redis-server, found on PATH].
    #[arg(long, value_name = "PATH")]
    redis_server: Option<String>,
    /// Front a running Redis at HOST:PORT instead of starting one. Its default user must
    /// accept any password: the gateway does the authentication.
    #[arg(long, value_name = "HOST:PORT", conflicts_with = "redis_server")]
    upstream: Option<String>,
    /// Port of the token service [default: a free one].
    #[arg(long, value_name = "N")]
    token_port: Option<u16>,
    /// Port of the Redis gateway (in cluster mode the first one's; the others follow)
    /// [default: a free one].
    #[arg(long, value_name = "N")]
    redis_port: Option<u16>,
    /// Who may sign in, from a JSON file (tenant_id, service_principals,
    /// managed_identities) [default: a generated tenant, service principal and
    /// system-assigned managed identity].
    #[arg(long, value_name = "FILE", value_parser = principals_file)]
    principals: Option<Principals>,
    /// Cluster mode: N redis-server nodes (3 to 64, Redis 7.0 or later), one TLS gateway
    /// each.
    #[arg(long, value_name = "N", value_parser = cluster_nodes)]
    cluster: Option<usize>,
}

impl Cli {
    fn config(self) -> EmulatorConfig {
        let upstream = match (self.upstream, self.redis_server) {
            (Some(address), _) => Upstream::Existing(address),
            (None, binary) => Upstream::Start(binary.unwrap_or_else(|| "redis-server".to_owned())),
        };
        EmulatorConfig::new()
            .token_lifetime(self.token_lifetime)
            .token_port(self.token_port)
            .redis_port(self.redis_port)
            .upstream(upstream)
            .principals(self.principals)
            .cluster_nodes(self.cluster)
    }
}

/// Why a `--token-lifetime` was refused.
#[derive(Debug, thiserror::Error)]
enum LifetimeError {
    #[error("use a number with ms, s, m or h, e.g. 60s")]
    Format,
    #[error("must be between 1s and 24h")]
    Range,
}

/// `500ms`, `20s`, `5m`, `1h`: between 1 s and 24 h.
fn token_lifetime(text: &str) -> Result<Duration, LifetimeError> {
    let bad = || LifetimeError::Format;
    let (number, unit) = text
        .trim()
        .split_at(text.trim().find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let duration = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(bad()),
    };
    if duration < Duration::from_secs(1) || duration > Duration::from_secs(24 * 3600) {
        return Err(LifetimeError::Range);
    }
    Ok(duration)
}

/// Why `--cluster` was refused (the library checks the upper bound).
#[derive(Debug, thiserror::Error)]
enum ClusterError {
    #[error("give a number of nodes, 3 or more")]
    NotANumber,
    #[error("a Redis cluster needs at least 3 nodes")]
    TooFew,
}

/// A number of cluster nodes, at least 3.
fn cluster_nodes(text: &str) -> Result<usize, ClusterError> {
    let n = text.parse::<usize>().map_err(|_| ClusterError::NotANumber)?;
    if n < 3 {
        return Err(ClusterError::TooFew);
    }
    Ok(n)
}

/// Reads and checks a principals file.
fn principals_file(path: &str) -> Result<Principals, EmulatorError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| EmulatorError::Principals(format!("cannot read {path}: {e}")))?;
    Principals::from_json(&text)
}

#[tokio::main]
async fn main() -> ExitCode {
    // Help, version and usage errors exit here (0, 0 and 2).
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let env_file = cli.env_file.clone();
    let emulator = match Emulator::start(cli.config()).await {
        Ok(emulator) => emulator,
        // Flags that parse but do not fit together (`--cluster 65`, `--redis-port` too
        // high for the cluster's gateways): a usage error too.
        Err(e @ EmulatorError::Usage(_)) => {
            eprintln!("entraid-emulator: {e}\n\nFor more information, try '--help'.");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("entraid-emulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    let lines: String = emulator.env().iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    if let Some(path) = &env_file
        && let Err(e) = std::fs::write(path, &lines)
    {
        eprintln!("entraid-emulator: cannot write {}: {e}", path.display());
        emulator.stop().await;
        return ExitCode::FAILURE;
    }
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{lines}READY");
    let _ = stdout.flush();
    drop(stdout);

    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(e) => {
            eprintln!("entraid-emulator: cannot listen for SIGTERM: {e}");
            emulator.stop().await;
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("stopping");
    emulator.stop().await;
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("entraid-emulator").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(token_lifetime("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(token_lifetime("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(token_lifetime("1500ms").unwrap(), Duration::from_millis(1500));
        assert_eq!(token_lifetime("24h").unwrap(), Duration::from_secs(86400));
        for bad in ["", "s", "10", "10x", "500ms", "25h", "-1s"] {
            assert!(token_lifetime(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn arguments() {
        let parsed = parse(&[
            "--token-lifetime",
            "20s",
            "--redis-port",
            "7000",
            "--upstream",
            "127.0.0.1:6379",
        ])
        .unwrap();
        assert_eq!(parsed.env_file, None);
        // The configuration is private to the library: compared whole, by its `Debug`.
        let same = |a: EmulatorConfig, b: EmulatorConfig| format!("{a:?}") == format!("{b:?}");
        let expected = EmulatorConfig::new()
            .token_lifetime(Duration::from_secs(20))
            .redis_port(Some(7000))
            .upstream(Upstream::Existing("127.0.0.1:6379".to_owned()));
        assert!(same(parsed.config(), expected));
        let both = parse(&["--upstream", "a:1", "--redis-server", "x"]).unwrap_err();
        assert_eq!(both.kind(), clap::error::ErrorKind::ArgumentConflict);
        assert_eq!(
            parse(&["--bogus"]).unwrap_err().kind(),
            clap::error::ErrorKind::UnknownArgument
        );
        let cluster = |n: &str| parse(&["--cluster", n]).map(|cli| cli.config());
        assert!(same(
            cluster("3").unwrap(),
            EmulatorConfig::new().cluster_nodes(Some(3))
        ));
        assert!(same(
            cluster("6").unwrap(),
            EmulatorConfig::new().cluster_nodes(Some(6))
        ));
        for bad in ["2", "0", "x", "-3"] {
            assert!(cluster(bad).is_err(), "{bad}");
        }
        let defaults = parse(&[]).unwrap().config();
        assert!(same(defaults.clone(), EmulatorConfig::new()));
        assert!(format!("{defaults:?}").contains("token_lifetime: 60s"), "{defaults:?}");
        assert!(same(
            parse(&["--redis-server", "/opt/redis-server"]).unwrap().config(),
            EmulatorConfig::new().upstream(Upstream::Start("/opt/redis-server".to_owned()))
        ));
        assert!(parse(&["--token-port", "x"]).is_err());
        assert!(parse(&["--token-lifetime", "25h"]).is_err());
        assert!(parse(&["--principals", "/nonexistent/principals.json"]).is_err());
    }
}
