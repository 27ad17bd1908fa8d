//! `cargo xtask demo`: the emulator, then the demo's load (the quickstart's connection
//! under traffic, with a status line) against it, live.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A token lifetime in the emulator's syntax (`1500ms`, `20s`, `2m`, `1h`); the emulator
/// checks its range. Read here too, so the demo times its runs by the same value.
fn lifetime(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 1500ms, 20s, 2m or 1h");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let n: u64 = text[..split].parse().map_err(|_| bad())?;
    match &text[split..] {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        "h" => Ok(Duration::from_secs(n.saturating_mul(3600))),
        _ => Err(bad()),
    }
}

/// `60`, `60s`, `2m` → seconds.
fn seconds(text: &str) -> Result<u64, String> {
    let bad = || format!("{text:?} is not a duration like 60s or 2m");
    if let Some(m) = text.strip_suffix('m') {
        return m.parse::<u64>().map(|m| m * 60).map_err(|_| bad());
    }
    text.trim_end_matches('s').parse().map_err(|_| bad())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn ensure_redis_server() -> Result<(), String> {
    let present = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if present {
        return Ok(());
    }
    if !is_root() {
        return Err("redis-server is not installed; run: sudo apt-get install -y redis-server".to_owned());
    }
    println!("==> installing redis-server (apt-get)");
    let update = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .map_err(|e| e.to_string())?;
    let install = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", "redis-server"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .map_err(|e| e.to_string())?;
    if update.success() && install.success() {
        Ok(())
    } else {
        Err("apt-get install redis-server failed; install it and run the demo again".to_owned())
    }
}

/// `cargo xtask demo`'s flags.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// How long the load runs: 60, 60s or 2m.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = seconds)]
    duration: u64,
    /// How long the emulator's tokens live, in its own syntax: 1500ms, 20s, 2m, 1h.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = lifetime)]
    token_lifetime: Duration,
    /// The emulator in cluster mode with N nodes (3 without a number), and the cluster example.
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "3")]
    cluster: Option<usize>,
}

impl DemoArgs {
    /// The short demo `cargo xtask test` runs: 10 s on 4 s tokens.
    pub(crate) fn short() -> DemoArgs {
        DemoArgs {
            duration: 10,
            token_lifetime: Duration::from_secs(4),
            cluster: None,
        }
    }
}

pub(crate) fn run(args: DemoArgs) -> Result<ExitCode, String> {
    let DemoArgs {
        duration,
        token_lifetime: lifetime,
        cluster,
    } = args;
    ensure_redis_server()?;
    let root = crate::repository_root();
    let target = crate::target_dir();
    println!("==> building the emulator and the examples");
    let cargo = crate::cargo_bin();
    let built = Command::new(&cargo)
        .current_dir(&root)
        .args([
            "build",
            "--quiet",
            "-p",
            "entraid-emulator",
            "--bin",
            "entraid-emulator",
            "-p",
            "redis-entraid-examples",
            "--example",
            "demo_load",
            "--example",
            "supervised",
            "--example",
            "sync_connection",
            "--example",
            "cluster",
        ])
        .status()
        .map_err(|e| e.to_string())?;
    if !built.success() {
        return Err("the build failed".to_owned());
    }

    let demo_dir = target.join("demo");
    std::fs::create_dir_all(&demo_dir).map_err(|e| e.to_string())?;
    let env_file = demo_dir.join("emulator.env");
    let lifetime_ms = lifetime.as_millis();
    let mut emulator_args = vec!["--token-lifetime".to_owned(), format!("{lifetime_ms}ms")];
    let lifetime = format!("{:.1} s", lifetime.as_secs_f64());
    match cluster {
        Some(nodes) => {
            println!("==> starting entraid-emulator --cluster {nodes} (tokens live {lifetime})");
            emulator_args.extend(["--cluster".to_owned(), nodes.to_string()]);
        }
        None => println!("==> starting entraid-emulator (tokens live {lifetime})"),
    }
    let mut emulator = Command::new(target.join("debug").join("entraid-emulator"))
        .args(&emulator_args)
        .arg("--env-file")
        .arg(&env_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(demo_dir.join("emulator.log")).map_err(|e| e.to_string())?,
        ))
        .spawn()
        .map_err(|e| format!("cannot start the emulator: {e}"))?;
    let stdout = emulator.stdout.take().ok_or("no emulator stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut env = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line == "READY" {
                let _ = tx.send(Ok(env));
                return;
            }
            if let Some((key, value)) = line.split_once('=') {
                env.push((key.to_owned(), value.to_owned()));
            }
        }
        let _ = tx.send(Err(
            "the emulator exited before READY; see target/demo/emulator.log".to_owned()
        ));
    });
    let env = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(env)) => env,
        Ok(Err(message)) => {
            let _ = emulator.kill();
            return Err(message);
        }
        Err(_) => {
            let _ = emulator.kill();
            return Err("the emulator did not print READY within 60 s".to_owned());
        }
    };
    for (key, value) in &env {
        let shown = if key.contains("SECRET") || key.contains("HEADER") {
            "<hidden>"
        } else {
            value.as_str()
        };
        println!("    {key}={shown}");
    }
    let mut outcome = if cluster.is_some() {
        println!(
            "==> running examples/cluster for {duration} s through every node's gateway (emulator log: target/demo/emulator.log)"
        );
        run_example(&target, "cluster", duration, &env)
    } else {
        println!(
            "==> running examples/demo_load for {duration} s through TLS (emulator log: target/demo/emulator.log)"
        );
        let mut outcome = run_example(&target, "demo_load", duration, &env);
        // The connection types that own re-authentication, each under load through at
        // least one rotation: a renewal comes at 70 % of a token's life at the latest and
        // reaches a connection within a tenth of what the old token had left, so three
        // quarters of a lifetime and 3 s of room cover it.
        let rotation = u64::try_from(lifetime_ms * 3 / 4).unwrap_or(u64::MAX).div_ceil(1000) + 3;
        let each = duration.min(12).max(rotation);
        for example in ["supervised", "sync_connection"] {
            if outcome.is_ok() {
                println!("==> running examples/{example} for {each} s (tokens live {lifetime}: at least one rotation)");
                let before = emulator_stat(&env, "reauthentications").unwrap_or(0);
                outcome = run_example(&target, example, each, &env).and_then(|()| {
                    let done = emulator_stat(&env, "reauthentications")
                        .unwrap_or(0)
                        .saturating_sub(before);
                    if done == 0 {
                        return Err(format!(
                            "examples/{example} ran {each} s on {lifetime} tokens and was never re-authenticated"
                        ));
                    }
                    println!("==> examples/{example}: {done} re-authentication(s) in {each} s, no command failed");
                    Ok(())
                });
            }
        }
        outcome
    };
    if outcome.is_ok() {
        outcome = match emulator_stat(&env, "cut_connections") {
            Some(0) => Ok(()),
            Some(cut) => Err(format!("the emulator cut {cut} connection(s)")),
            None => Err("cannot read the emulator's /stats".to_owned()),
        };
    }
    // A graceful stop: SIGTERM, as Ctrl-C would.
    let _ = Command::new("kill").arg(emulator.id().to_string()).status();
    let _ = emulator.wait();
    let status = outcome;
    match status {
        Ok(()) => {
            println!("==> demo passed: no command failed and no connection was cut");
            Ok(ExitCode::SUCCESS)
        }
        Err(why) => {
            println!("==> demo FAILED: {why}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Runs one example with the emulator's environment and `--duration`.
fn run_example(target: &Path, name: &str, duration: u64, env: &[(String, String)]) -> Result<(), String> {
    // The emulator's CA is trusted the standard way, through SSL_CERT_FILE: the library
    // knows nothing of the emulator.
    let ca_file = env
        .iter()
        .find(|(k, _)| k == "ENTRAID_EMULATOR_CA_FILE")
        .map(|(_, v)| v.as_str());
    let status = Command::new(target.join("debug").join("examples").join(name))
        .args(["--duration", &duration.to_string()])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .envs(ca_file.map(|path| ("SSL_CERT_FILE", path)))
        .status()
        .map_err(|e| format!("cannot run examples/{name}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("examples/{name} failed ({status})"))
    }
}

/// One counter from the emulator's admin endpoint (`GET /stats`, plain HTTP on loopback):
/// the total, not a cluster node's (the `"nodes"` array is left out).
fn emulator_stat(env: &[(String, String)], name: &str) -> Option<u64> {
    use std::io::{Read, Write};
    let url = env.iter().find(|(k, _)| k == "ENTRAID_EMULATOR_ADMIN_URL")?.1.clone();
    let address = url.strip_prefix("http://")?.trim_end_matches('/').to_owned();
    let mut stream = std::net::TcpStream::connect(address).ok()?;
    stream
        .write_all(b"GET /stats HTTP/1.0\r\nHost: emulator\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    if let Some(start) = response.find("\"nodes\":[") {
        let end = start + response[start..].find(']')?;
        response.replace_range(start..=end, "");
    }
    let key = format!("\"{name}\":");
    let rest = &response[response.find(&key)? + key.len()..];
    rest.trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lifetime_reads_as_the_emulator_reads_it() {
        assert_eq!(lifetime("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(lifetime("20s"), Ok(Duration::from_secs(20)));
        assert_eq!(lifetime("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(lifetime("1h"), Ok(Duration::from_secs(3600)));
        assert!(lifetime("20").is_err() && lifetime("s").is_err());
    }
}
