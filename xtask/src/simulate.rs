//! `cargo xtask simulate [--quick]`: the fleet simulation (`benches/fleet`), 10 000 real
//! token state machines on 500 nodes against models of IMDS and Entra, on a virtual
//! clock. Writes `target/simulate/report.{md,json}` and a PNG per scenario
//! (`--quick`: 400 processes on 20 nodes, into `target/simulate/quick`, for
//! `cargo xtask test`). Fails when a required goal is missed.
//!
//! A debug build is enough: the full run takes about 20 s on one core.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

pub(crate) fn run(args: &[String]) -> Result<ExitCode, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let quick = args.iter().any(|a| a == "--quick");
    let out = if quick {
        target.join("simulate").join("quick")
    } else {
        target.join("simulate")
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["run", "--quiet", "-p", "entraid-fleet-sim", "--bin", "simulate", "--"])
        .args(args)
        .arg("--out")
        .arg(&out)
        .status()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
