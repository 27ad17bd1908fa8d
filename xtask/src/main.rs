//! The project's own commands, run as `cargo xtask <command>`.
//!
//! - `cargo xtask test`: everything CI runs, in order, stopping at the first failure.
//! - `cargo xtask demo`: the local Entra ID + Redis emulator and the examples under load against it.
//! - `cargo xtask simulate`: a fleet of 10 000 token managers against IMDS and Entra models.

mod bench;
mod demo;
mod simulate;
#[cfg(test)]
mod tidy;

use std::process::{Command, ExitCode};
use std::time::Instant;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  test    formatting, lints, layering, every test (doc tests included), a quick fleet
          simulation, every example, and a 10-second demo
  demo    [--duration 60s] [--token-lifetime 20s] [--cluster [N]]
          start the local Entra ID + Redis emulator and run examples/demo_load against it
          through TLS, with a status line each second; exit 0 only if nothing failed;
          --cluster: the emulator in cluster mode (N nodes, 3 by default) and examples/cluster
  bench   [--quick]
          redis-entraid vs redis-rs entra-id, side by side, with the machine's floors;
          writes target/bench/report.md and report.json (--quick: a smoke run)
  simulate [--quick] [--only SCENARIO] [--processes N] [--nodes M] [--seed S] ...
          10 000 token state machines on 500 nodes against IMDS and Entra models, on a
          virtual clock: deploy wave, steady day, outages, a slow endpoint; writes
          target/simulate/report.md, report.json and a PNG per scenario; fails when a
          required goal is missed (--quick: 400 processes, target/simulate/quick)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => run_steps(&test_steps()),
        Some("bench") => match bench::run(&args[1..]) {
            Ok(code) => code,
            Err(message) => {
                eprintln!("cargo xtask bench: {message}");
                ExitCode::FAILURE
            }
        },
        Some("simulate") => match simulate::run(&args[1..]) {
            Ok(code) => code,
            Err(message) => {
                eprintln!("cargo xtask simulate: {message}");
                ExitCode::FAILURE
            }
        },
        Some("demo") => match demo::run(&args[1..]) {
            Ok(code) => code,
            Err(message) => {
                eprintln!("cargo xtask demo: {message}");
                ExitCode::FAILURE
            }
        },
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("unknown command {other:?}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// One step of a command: what it is called and how to run it.
struct Step {
    name: &'static str,
    run: Box<dyn Fn() -> Result<(), String>>,
}

fn cargo(args: &'static [&'static str]) -> Box<dyn Fn() -> Result<(), String>> {
    Box::new(move || {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        // The end-to-end suites hold a thousand connections, both ends in one process:
        // about 3 000 descriptors, above a 1 024 default soft limit.
        let status = Command::new("sh")
            .arg("-c")
            .arg("ulimit -Sn \"$(ulimit -Hn)\" 2>/dev/null; exec \"$0\" \"$@\"")
            .arg(cargo)
            .args(args)
            .status()
            .map_err(|e| format!("could not run cargo: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`cargo {}` failed ({status})", args.join(" ")))
        }
    })
}

fn test_steps() -> Vec<Step> {
    vec![
        Step {
            name: "format",
            run: cargo(&["fmt", "--all", "--", "--check"]),
        },
        Step {
            name: "layering",
            run: Box::new(check_layering),
        },
        Step {
            name: "clippy",
            run: cargo(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--all-features",
                "--quiet",
                "--",
                "-D",
                "warnings",
            ]),
        },
        Step {
            name: "tests",
            run: cargo(&["test", "--workspace", "--all-features", "--quiet"]),
        },
        Step {
            name: "simulate",
            run: Box::new(|| {
                let args = ["--quick".to_owned()];
                match simulate::run(&args) {
                    Ok(code) if code == ExitCode::SUCCESS => Ok(()),
                    Ok(_) => {
                        Err("the quick fleet simulation missed a goal (target/simulate/quick/report.md)".to_owned())
                    }
                    Err(message) => Err(message),
                }
            }),
        },
        Step {
            name: "examples",
            run: cargo(&["build", "--workspace", "--examples", "--all-features", "--quiet"]),
        },
        Step {
            name: "demo",
            run: Box::new(|| {
                let args = ["--duration", "10", "--token-lifetime", "4s"].map(String::from);
                match demo::run(&args) {
                    Ok(code) if code == ExitCode::SUCCESS => Ok(()),
                    Ok(_) => Err("the short demo (10 s, 4 s tokens) failed".to_owned()),
                    Err(message) => Err(message),
                }
            }),
        },
    ]
}

/// What each crate must not depend on, whatever features are on.
const LAYERING: [(&str, &[&str], &[&str]); 6] = [
    (
        // Azure identities know nothing of Redis or of refreshing.
        "entraid-azure",
        &["tree", "-p", "entraid-azure", "-e", "normal,build", "--all-features"],
        &["redis ", "redis-entraid ", "entraid-token-manager "],
    ),
    (
        // The token manager works with any identity: Azure is one implementation.
        "entraid-token-manager",
        &[
            "tree",
            "-p",
            "entraid-token-manager",
            "-e",
            "normal,build",
            "--all-features",
        ],
        &["entraid-azure ", "azure_core ", "azure_identity ", "redis "],
    ),
    (
        // The doctor speaks RESP itself so each failure is named for its step.
        "entraid-cli",
        &["tree", "-p", "entraid-cli", "-e", "normal,build", "--all-features"],
        &["redis ", "redis-entraid "],
    ),
    (
        "entraid-identity",
        &["tree", "-p", "entraid-identity", "-e", "normal,build", "--all-features"],
        &["tokio ", "reqwest ", "hyper ", "azure_core ", "redis "],
    ),
    (
        "entraid-token-manager --no-default-features",
        &[
            "tree",
            "-p",
            "entraid-token-manager",
            "--no-default-features",
            "-e",
            "normal,build",
        ],
        &["tokio ", "reqwest ", "hyper ", "azure_core ", "redis "],
    ),
    (
        "redis-entraid --no-default-features",
        &[
            "tree",
            "-p",
            "redis-entraid",
            "--no-default-features",
            "-e",
            "normal,build",
        ],
        &["azure_identity ", "azure_core ", "reqwest "],
    ),
];

/// The layers stay apart: checked on the resolved dependency trees.
fn check_layering() -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    for (what, args, forbidden) in LAYERING {
        let output = Command::new(&cargo)
            .args(args)
            .output()
            .map_err(|e| format!("could not run cargo tree: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "cargo tree for {what} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let tree = String::from_utf8_lossy(&output.stdout);
        for name in forbidden {
            if tree.lines().any(|line| line.contains(name)) {
                return Err(format!("{what} depends on {}, which its layer must not", name.trim()));
            }
        }
    }
    Ok(())
}

fn run_steps(steps: &[Step]) -> ExitCode {
    let started = Instant::now();
    let mut summary = Vec::new();
    for step in steps {
        println!("==> {}", step.name);
        let step_started = Instant::now();
        let result = (step.run)();
        let took = step_started.elapsed().as_secs_f64();
        match result {
            Ok(()) => summary.push(format!("  ok      {:<10} {took:>6.1} s", step.name)),
            Err(message) => {
                summary.push(format!("  FAILED  {:<10} {took:>6.1} s  {message}", step.name));
                print_summary(&summary, started);
                return ExitCode::FAILURE;
            }
        }
    }
    print_summary(&summary, started);
    ExitCode::SUCCESS
}

fn print_summary(lines: &[String], started: Instant) {
    println!("\nxtask summary:");
    for line in lines {
        println!("{line}");
    }
    println!("  total {:.1} s", started.elapsed().as_secs_f64());
}
