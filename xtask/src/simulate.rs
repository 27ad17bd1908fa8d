//! `cargo xtask simulate [--quick]`: the fleet simulation (`benches/fleet`), 10 000 real
//! token state machines on 500 nodes against models of IMDS and Entra, on a virtual
//! clock. Writes `target/simulate/report.{md,json}` and a PNG per scenario
//! (`--quick`: 400 processes on 20 nodes, into `target/simulate/quick`, for
//! `cargo xtask test`). Fails when a required goal is missed.
//!
//! A debug build is enough: the full run takes about 20 s on one core.

use std::process::{Command, ExitCode};

/// `cargo xtask simulate`'s flags: handed to the simulation as they are (its own `--help`
/// lists them), `--quick` also choosing the output folder.
#[derive(Debug, clap::Args)]
pub(crate) struct SimulateArgs {
    /// The simulation's flags: --quick, --only SCENARIO, --processes N, --nodes M, --seed S, ...
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "FLAGS")]
    args: Vec<String>,
}

impl SimulateArgs {
    /// The quick run `cargo xtask test` makes.
    pub(crate) fn quick() -> SimulateArgs {
        SimulateArgs {
            args: vec!["--quick".to_owned()],
        }
    }
}

pub(crate) fn run(SimulateArgs { args }: SimulateArgs) -> Result<ExitCode, String> {
    let root = crate::repository_root();
    let target = crate::target_dir();
    let quick = args.iter().any(|a| a == "--quick");
    let out = if quick {
        target.join("simulate").join("quick")
    } else {
        target.join("simulate")
    };
    let cargo = crate::cargo_bin();
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["run", "--quiet", "-p", "entraid-fleet-sim", "--bin", "simulate", "--"])
        .args(&args)
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
