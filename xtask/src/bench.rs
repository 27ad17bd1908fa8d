//! `cargo xtask bench`: builds the comparison benchmark (its own workspace, release) and
//! runs it with the open-file limit raised, writing `target/bench/report.{md,json}`.
//!
//! `--quick` is a smoke run for CI: it fails only when the benchmark itself breaks, never
//! on a goal missed. `--only FIGURE` runs one figure (fanout, probe, memory, throughput,
//! auths, stall, idp). On a machine with two cores or more and `taskset`, the benchmark
//! (the client) runs on core 0 and its redis-server on the others, so the two do not
//! take each other's time slices.

use std::path::Path;
use std::process::{Command, ExitCode};

pub(crate) fn run(args: &[String]) -> Result<ExitCode, String> {
    let mut quick = false;
    let mut only = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => only = Some(it.next().ok_or("--only needs a figure name")?.clone()),
            other => return Err(format!("unknown argument {other:?}; use --quick and/or --only FIGURE")),
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    // One persistent target directory for the benchmark's own workspace.
    let bench_target = target.join("bench-build");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    println!("==> building benches/compare (release)");
    let built = Command::new(&cargo)
        .current_dir(root.join("benches/compare"))
        .env("CARGO_TARGET_DIR", &bench_target)
        .args(["build", "--release", "--quiet"])
        .status()
        .map_err(|e| e.to_string())?;
    if !built.success() {
        return Err("building the benchmark failed".to_owned());
    }
    let binary = bench_target.join("release").join("redis-entraid-bench");
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
    if let Some(figure) = only {
        command.args(["--only", &figure]);
    }
    let status = command.status().map_err(|e| format!("cannot run the benchmark: {e}"))?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
