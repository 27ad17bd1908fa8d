//! The project's own commands, run as `cargo xtask <command>`.
//!
//! - `cargo xtask test`: everything CI runs, in order, stopping at the first failure.
//! - `cargo xtask demo`: the local Entra ID + Redis emulator and the examples under load against it.
//! - `cargo xtask simulate`: a fleet of 10 000 token managers against IMDS and Entra models.

mod bench;
mod demo;
mod release;
mod simulate;
#[cfg(test)]
mod tidy;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// The workspace's root: the parent of this crate's folder.
pub(crate) fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Cargo's target directory: `CARGO_TARGET_DIR`, or `target/` at the root.
pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repository_root().join("target"))
}

/// The cargo that runs us (`CARGO`), or the one on `PATH`.
pub(crate) fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

/// The project's own commands.
#[derive(Debug, clap::Parser)]
#[command(name = "cargo xtask", about = "The project's own commands", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, clap::Subcommand)]
enum Task {
    /// Everything CI runs, stopping at the first failure: formatting, layering, the lock
    /// against rust-version, lints, docs (warnings denied), the facade's features one by
    /// one, every test (doc tests included), every published crate built from its package,
    /// the README's example in a fresh project without OpenSSL, a quick fleet simulation,
    /// every example, a 10-second demo.
    Test {
        /// Run only these steps (by name, as the summary prints them), in their order.
        #[arg(long, value_name = "STEP", value_delimiter = ',')]
        only: Vec<String>,
    },
    /// The local Entra ID + Redis emulator and examples/demo_load against it through TLS,
    /// with a status line each second, then the supervised and sync examples through a
    /// rotation; exit 0 only if nothing failed and nothing was cut.
    Demo(demo::DemoArgs),
    /// redis-entraid vs redis-rs entra-id side by side, with the machine's floors; writes
    /// target/bench/report.md and report.json.
    Bench(bench::BenchArgs),
    /// 10 000 token state machines on 500 nodes against IMDS and Entra models, on a
    /// virtual clock; writes target/simulate/report.md, report.json and a PNG per
    /// scenario; fails when a required goal is missed.
    Simulate(simulate::SimulateArgs),
}

fn main() -> ExitCode {
    let cli = <Cli as clap::Parser>::parse();
    let (name, result) = match cli.command {
        Task::Test { only } => {
            let steps = test_steps();
            if let Some(unknown) = only
                .iter()
                .find(|name| !steps.iter().any(|step| step.name == name.as_str()))
            {
                let names: Vec<&str> = steps.iter().map(|step| step.name).collect();
                eprintln!(
                    "cargo xtask test: no step {unknown:?}; the steps are {}",
                    names.join(", ")
                );
                return ExitCode::from(2);
            }
            let chosen: Vec<Step> = steps
                .into_iter()
                .filter(|step| only.is_empty() || only.iter().any(|name| name == step.name))
                .collect();
            return run_steps(&chosen);
        }
        Task::Demo(args) => ("demo", demo::run(args)),
        Task::Bench(args) => ("bench", bench::run(args)),
        Task::Simulate(args) => ("simulate", simulate::run(args)),
    };
    result.unwrap_or_else(|message| {
        eprintln!("cargo xtask {name}: {message}");
        ExitCode::FAILURE
    })
}

/// One step of a command: what it is called and how to run it.
struct Step {
    name: &'static str,
    run: Box<dyn Fn() -> Result<(), String>>,
}

fn cargo(args: &'static [&'static str]) -> Box<dyn Fn() -> Result<(), String>> {
    Box::new(move || {
        let cargo = crate::cargo_bin();
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
            name: "msrv",
            run: Box::new(release::msrv),
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
            name: "docs",
            run: Box::new(release::docs),
        },
        Step {
            name: "features",
            run: Box::new(release::features),
        },
        Step {
            name: "tests",
            run: cargo(&["test", "--workspace", "--all-features", "--quiet"]),
        },
        Step {
            name: "package",
            run: Box::new(release::package),
        },
        Step {
            name: "fresh",
            run: Box::new(release::fresh_project),
        },
        Step {
            name: "simulate",
            run: Box::new(|| match simulate::run(simulate::SimulateArgs::quick()) {
                Ok(code) if code == ExitCode::SUCCESS => Ok(()),
                Ok(_) => Err("the quick fleet simulation missed a goal (target/simulate/quick/report.md)".to_owned()),
                Err(message) => Err(message),
            }),
        },
        Step {
            name: "examples",
            run: cargo(&["build", "--workspace", "--examples", "--all-features", "--quiet"]),
        },
        Step {
            name: "demo",
            run: Box::new(|| match demo::run(demo::DemoArgs::short()) {
                Ok(code) if code == ExitCode::SUCCESS => Ok(()),
                Ok(_) => Err("the short demo (10 s, 4 s tokens) failed".to_owned()),
                Err(message) => Err(message),
            }),
        },
    ]
}

/// One layering rule: a package, built with these feature flags, must not depend on any
/// of `forbidden` (normal and build edges).
struct Layer {
    package: &'static str,
    features: &'static [&'static str],
    forbidden: &'static [&'static str],
}

/// What each crate must not depend on.
const LAYERING: &[Layer] = &[
    // The default build links no OpenSSL: `cargo add redis-entraid` builds where no
    // OpenSSL headers are installed (the certificate credential is feature `certificate`).
    Layer {
        package: "redis-entraid",
        features: &[],
        forbidden: &["openssl-sys", "openssl", "native-tls"],
    },
    // Azure identities know nothing of Redis or of refreshing.
    Layer {
        package: "entraid-azure",
        features: &["--all-features"],
        forbidden: &["redis", "redis-entraid", "entraid-token-manager"],
    },
    // The token manager works with any identity: Azure is one implementation.
    Layer {
        package: "entraid-token-manager",
        features: &["--all-features"],
        forbidden: &["entraid-azure", "azure_core", "azure_identity", "redis"],
    },
    // The doctor speaks RESP itself so each failure is named for its step.
    Layer {
        package: "entraid-cli",
        features: &["--all-features"],
        forbidden: &["redis", "redis-entraid"],
    },
    Layer {
        package: "entraid-identity",
        features: &["--all-features"],
        forbidden: &["tokio", "reqwest", "hyper", "azure_core", "redis"],
    },
    Layer {
        package: "entraid-token-manager",
        features: &["--no-default-features"],
        forbidden: &["tokio", "reqwest", "hyper", "azure_core", "redis"],
    },
    Layer {
        package: "redis-entraid",
        features: &["--no-default-features"],
        forbidden: &["azure_identity", "azure_core", "reqwest"],
    },
];

/// The layers stay apart: checked on each package's own resolved tree, by exact crate
/// name (`cargo metadata` would unify features across the workspace and hide a layer's
/// own tree).
fn check_layering() -> Result<(), String> {
    for layer in LAYERING {
        let mut args = vec!["-p", layer.package];
        args.extend(layer.features);
        let crates = release::tree_crates(&repository_root(), &args)?;
        if let Some(name) = layer.forbidden.iter().find(|name| crates.iter().any(|c| c == *name)) {
            return Err(format!(
                "{} {} depends on {name}, which its layer must not",
                layer.package,
                layer.features.join(" ")
            ));
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
