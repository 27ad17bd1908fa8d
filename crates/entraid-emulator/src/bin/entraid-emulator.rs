//! `entraid-emulator`: a local Entra ID token service and Azure Managed Redis gateway.
//!
//! ```text
//! entraid-emulator [--token-lifetime 60s] [--env-file PATH] [--redis-server PATH | --upstream HOST:PORT]
//!                  [--token-port N] [--redis-port N] [--principals FILE] [--cluster N]
//! ```
//! Prints `KEY=value` lines (and writes them to `--env-file`), then `READY`. Ctrl-C or
//! SIGTERM stops everything.
//!
//! `--cluster N` (3 to 64): N redis-server nodes in cluster mode, one TLS gateway each
//! (on `--redis-port`, `+1`, … when given); `REDIS_CLUSTER_NODES` lists the gateways, and
//! `READY` comes once the cluster is `cluster_state:ok` through every one of them.

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use entraid_emulator::{Emulator, EmulatorConfig, EmulatorError, Principals, Upstream};

const USAGE: &str = "usage: entraid-emulator [--token-lifetime 60s] [--env-file PATH] \
[--redis-server PATH | --upstream HOST:PORT] [--token-port N] [--redis-port N] [--principals FILE] [--cluster N]";

/// `500ms`, `20s`, `5m`, `1h`: between 1 s and 24 h.
fn parse_duration(text: &str) -> Result<Duration, EmulatorError> {
    let bad = || {
        EmulatorError::Usage(format!(
            "--token-lifetime {text:?}: use a number with ms, s, m or h, e.g. 60s"
        ))
    };
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
        return Err(EmulatorError::Usage(format!(
            "--token-lifetime {text}: must be between 1s and 24h"
        )));
    }
    Ok(duration)
}

struct Args {
    config: EmulatorConfig,
    env_file: Option<std::path::PathBuf>,
}

fn parse_args(args: &[String]) -> Result<Args, EmulatorError> {
    let mut config = EmulatorConfig::default();
    let mut env_file = None;
    let mut it = args.iter();
    let mut redis_server = None;
    let mut upstream = None;
    while let Some(flag) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| EmulatorError::Usage(format!("{name} needs a value\n{USAGE}")))
        };
        let port = |v: String, name: &str| {
            v.parse::<u16>()
                .map_err(|_| EmulatorError::Usage(format!("{name} {v:?} is not a port number")))
        };
        match flag.as_str() {
            "--token-lifetime" => config.token_lifetime = parse_duration(&value("--token-lifetime")?)?,
            "--env-file" => env_file = Some(value("--env-file")?.into()),
            "--redis-server" => redis_server = Some(value("--redis-server")?),
            "--upstream" => upstream = Some(value("--upstream")?),
            "--token-port" => config.token_port = Some(port(value("--token-port")?, "--token-port")?),
            "--redis-port" => config.redis_port = Some(port(value("--redis-port")?, "--redis-port")?),
            "--principals" => {
                let path = value("--principals")?;
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| EmulatorError::Principals(format!("cannot read {path}: {e}")))?;
                config.principals = Some(Principals::from_json(&text)?);
            }
            "--cluster" => {
                let v = value("--cluster")?;
                let n = v
                    .parse::<usize>()
                    .map_err(|_| EmulatorError::Usage(format!("--cluster {v:?}: a number of nodes, 3 or more")))?;
                if n < 3 {
                    return Err(EmulatorError::Usage(format!(
                        "--cluster {n}: a Redis cluster needs at least 3 nodes"
                    )));
                }
                config.cluster_nodes = Some(n);
            }
            "-h" | "--help" => return Err(EmulatorError::Usage(USAGE.to_owned())),
            other => return Err(EmulatorError::Usage(format!("unknown argument {other:?}\n{USAGE}"))),
        }
    }
    config.upstream = match (redis_server, upstream) {
        (Some(_), Some(_)) => {
            return Err(EmulatorError::Usage(
                "give --redis-server or --upstream, not both".to_owned(),
            ));
        }
        (Some(path), None) => Upstream::Start(path),
        (None, Some(address)) => Upstream::Existing(address),
        (None, None) => Upstream::Start("redis-server".to_owned()),
    };
    Ok(Args { config, env_file })
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&args) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let emulator = match Emulator::start(args.config).await {
        Ok(emulator) => emulator,
        Err(e) => {
            eprintln!("entraid-emulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    let lines: String = emulator.env().iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    if let Some(path) = &args.env_file
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
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1500ms").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        for bad in ["", "s", "10", "10x", "500ms", "25h", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn arguments() {
        let args: Vec<String> = [
            "--token-lifetime",
            "20s",
            "--redis-port",
            "7000",
            "--upstream",
            "127.0.0.1:6379",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let parsed = parse_args(&args).unwrap();
        assert_eq!(parsed.config.token_lifetime, Duration::from_secs(20));
        assert_eq!(parsed.config.redis_port, Some(7000));
        assert!(matches!(parsed.config.upstream, Upstream::Existing(ref a) if a == "127.0.0.1:6379"));
        let both: Vec<String> = ["--upstream", "a:1", "--redis-server", "x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(parse_args(&both).is_err());
        assert!(parse_args(&["--bogus".to_string()]).is_err());
        let cluster = |n: &str| parse_args(&["--cluster".to_string(), n.to_string()]);
        assert_eq!(cluster("3").unwrap().config.cluster_nodes, Some(3));
        assert_eq!(cluster("6").unwrap().config.cluster_nodes, Some(6));
        for bad in ["2", "0", "x", "-3"] {
            assert!(cluster(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_args(&[]).unwrap().config.cluster_nodes, None);
        assert!(parse_args(&["--token-port".to_string(), "x".to_string()]).is_err());
    }
}
