//! `cargo xtask bench`: builds the comparison benchmark (its own workspace, release) and
//! runs it with the open-file limit raised, writing `target/bench/report.{md,json}`.
//!
//! `--quick` is a smoke run for CI: it fails only when the benchmark itself breaks, never
//! on a goal missed. `--only FIGURE` runs one figure (fanout, probe, memory, throughput,
//! auths, stall, idp, handoff). The handoff figure is the examples crate's
//! `handoff_bench` (through the emulator), added to the same report. On a machine with two cores or more and `taskset`, the benchmark
//! (the client) runs on core 0 and its redis-server on the others, so the two do not
//! take each other's time slices.

use std::process::{Command, ExitCode};

/// `cargo xtask bench`'s flags.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// A smoke run: fails only when the benchmark itself breaks.
    #[arg(long)]
    quick: bool,
    /// Run one figure: fanout, probe, memory, throughput, auths, stall, idp or handoff.
    #[arg(long, value_name = "FIGURE")]
    only: Option<String>,
}

pub(crate) fn run(args: BenchArgs) -> Result<ExitCode, String> {
    let BenchArgs { quick, only } = args;
    if only.as_deref() == Some("handoff") {
        let out = crate::target_dir().join("bench");
        std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
        handoff(&crate::repository_root(), &out, quick)?;
        return Ok(ExitCode::SUCCESS);
    }
    let root = crate::repository_root();
    let target = crate::target_dir();
    // One persistent target directory for the benchmark's own workspace.
    let bench_target = target.join("bench-build");
    let cargo = crate::cargo_bin();
    // The smoke run needs every figure to run, not to be fast: a cheaper profile.
    let profile = if quick { "smoke" } else { "release" };
    println!("==> building benches/compare ({profile})");
    let built = Command::new(&cargo)
        .current_dir(root.join("benches/compare"))
        .env("CARGO_TARGET_DIR", &bench_target)
        .args(["build", "--profile", profile, "--quiet"])
        .status()
        .map_err(|e| e.to_string())?;
    if !built.success() {
        return Err("building the benchmark failed".to_owned());
    }
    let binary = bench_target.join(profile).join("redis-entraid-bench");
    let out = target.join("bench");
    println!("==> running{}", if quick { " (quick)" } else { " (several minutes)" });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = cores >= 2
        && Command::new("taskset")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success());
    // 10 000 connections need about 20 000 descriptors (both ends live here).
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("ulimit -Sn \"$(ulimit -Hn)\" 2>/dev/null; exec \"$0\" \"$@\"");
    if pin {
        println!("==> client pinned to core 0, redis-server to cores 1-{}", cores - 1);
        command
            .args(["taskset", "-c", "0"])
            .env("BENCH_SERVER_CPUS", format!("1-{}", cores - 1));
    }
    command.env("BENCH_MACHINE_CORES", cores.to_string());
    command.arg(&binary).arg("--out").arg(&out).current_dir(&root);
    if quick {
        command.arg("--quick");
    }
    if let Some(figure) = &only {
        command.args(["--only", figure]);
    }
    let status = command.status().map_err(|e| format!("cannot run the benchmark: {e}"))?;
    if !status.success() {
        return Ok(ExitCode::FAILURE);
    }
    if only.as_deref().is_none_or(|figure| figure == "handoff") {
        handoff(&root, &out, quick)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The handoff figure: the examples crate's `handoff_bench` (it needs the emulator, which
/// the comparison's own workspace does not build), appended to the report.
fn handoff(root: &std::path::Path, out: &std::path::Path, quick: bool) -> Result<(), String> {
    println!("==> figure: handoff (MOVING) through the emulator");
    // The smoke run uses the debug build `cargo xtask test` makes of every example (the
    // same command: nothing to build again after it); the figure, a release build.
    let (build, profile): (&[&str], &str) = if quick {
        (
            &["build", "--quiet", "--workspace", "--examples", "--all-features"],
            "debug",
        )
    } else {
        (
            &[
                "build",
                "--quiet",
                "--release",
                "-p",
                "redis-entraid-examples",
                "--example",
                "handoff_bench",
            ],
            "release",
        )
    };
    let built = Command::new(crate::cargo_bin())
        .current_dir(root)
        .args(build)
        .status()
        .map_err(|e| format!("cannot build the handoff figure: {e}"))?;
    if !built.success() {
        return Err("building the handoff figure failed".to_owned());
    }
    let binary = crate::target_dir().join(profile).join("examples").join("handoff_bench");
    let mut command = Command::new(binary);
    command.current_dir(root).arg("--out").arg(out);
    if quick {
        command.arg("--quick");
    }
    let status = command
        .status()
        .map_err(|e| format!("cannot run the handoff figure: {e}"))?;
    if !status.success() {
        return Err("the handoff figure failed".to_owned());
    }
    let figure = std::fs::read_to_string(out.join("handoff.md")).map_err(|e| format!("no handoff.md: {e}"))?;
    let report = out.join("report.md");
    let mut text = std::fs::read_to_string(&report).unwrap_or_default();
    text.push('\n');
    text.push_str(&figure);
    std::fs::write(&report, text).map_err(|e| format!("cannot add the handoff figure to the report: {e}"))
}
