//! `simulate`: runs every scenario on the fleet and writes `report.md`, `report.json` and
//! one PNG per scenario. Exits 1 when a required goal is missed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use entraid_fleet_sim::fleet::{FleetConfig, simulate};
use entraid_fleet_sim::imds::ImdsConfig;
use entraid_fleet_sim::report::{self, Summary};
use entraid_fleet_sim::{chart, scenario};
use entraid_token_manager::TokenManagerConfig;

const USAGE: &str = "usage: simulate [--quick] [--processes N] [--nodes M] [--seed S] [--wave-window SECS]
                [--entra-rate PER_S] [--refresh-ratio R] [--refresh-jitter J] [--out DIR] [--only NAME]
  --quick    400 processes on 20 nodes (the same 20 per node), for `cargo xtask test`
  defaults   10 000 processes on 500 nodes, seed 1, a 30 s wave, Entra 500 req/s, out target/simulate";

/// The command line.
struct Options {
    fleet: FleetConfig,
    wave: Duration,
    out: PathBuf,
    only: Option<String>,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut fleet = FleetConfig {
        processes: 10_000,
        nodes: 500,
        seed: 1,
        manager: TokenManagerConfig::default(),
        entra_rate_per_second: 500,
        imds: ImdsConfig::default(),
    };
    let mut wave = Duration::from_secs(30);
    let mut out = PathBuf::from("target/simulate");
    let mut only = None;
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: &String| v.parse::<f64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--quick" => {
                fleet.processes = 400;
                fleet.nodes = 20;
            }
            "--processes" => fleet.processes = number(value()?)? as usize,
            "--nodes" => fleet.nodes = (number(value()?)? as usize).max(1),
            "--seed" => fleet.seed = number(value()?)? as u64,
            "--wave-window" => {
                wave = Duration::try_from_secs_f64(number(value()?)?).map_err(|e| format!("{flag}: {e}"))?;
            }
            "--entra-rate" => fleet.entra_rate_per_second = number(value()?)? as usize,
            "--refresh-ratio" => fleet.manager.expiration_refresh_ratio = number(value()?)?,
            "--refresh-jitter" => fleet.manager.refresh_jitter = number(value()?)?,
            "--out" => out = PathBuf::from(value()?),
            "--only" => only = Some(value()?.clone()),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(Options { fleet, wave, out, only })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse(&args) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("simulate: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Runs, writes the report; `Ok(false)` when a required goal was missed.
fn run(options: &Options) -> Result<bool, String> {
    let fleet = &options.fleet;
    std::fs::create_dir_all(&options.out).map_err(|e| format!("{}: {e}", options.out.display()))?;
    let started = Instant::now();
    let scenarios: Vec<_> = scenario::all(options.wave)
        .into_iter()
        .filter(|s| options.only.as_deref().is_none_or(|only| only == s.name))
        .collect();
    let mut summaries = Vec::new();
    let mut charts = Vec::new();
    for s in &scenarios {
        let scenario_started = Instant::now();
        let run = simulate(fleet, s).map_err(|e| e.to_string())?;
        let summary = Summary::new(fleet, s, &run);
        let png = options.out.join(format!("{}.png", s.name));
        let (imds_top, entra_top) = chart::write(&png, &run.recorder.imds, &run.recorder.entra)?;
        charts.push((s.name.to_owned(), imds_top, entra_top));
        println!(
            "{:<18} {:>6.1} s  IMDS 429s {:>6} (after 1st min {:>6})  Entra peak {:>5}/s 429s {:>6}  longest invalid {:>6.0} s",
            s.name,
            scenario_started.elapsed().as_secs_f64(),
            summary.imds_throttled,
            summary.imds_throttled_after_first_minute,
            summary.entra_peak,
            summary.entra_throttled,
            summary.longest_invalid.as_secs_f64()
        );
        summaries.push(summary);
    }
    let goals = report::goals(fleet, &summaries);
    let markdown = report::markdown(fleet, &scenarios, &summaries, &goals, &charts);
    let json = report::json(fleet, &summaries, &goals);
    let write = |name: &str, text: String| {
        let path = options.out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write("report.md", markdown)?;
    write(
        "report.json",
        serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?,
    )?;
    println!("\n{}", report::table(&summaries));
    let mut all_met = true;
    for g in &goals {
        let mark = match (g.met, g.required) {
            (true, _) => "ok  ",
            (false, true) => "FAIL",
            (false, false) => "miss",
        };
        println!("{mark} {:<18} {}: {}", g.scenario, g.what, g.detail);
        all_met &= g.met || !g.required;
    }
    println!(
        "\n{} processes on {} nodes, {} scenarios in {:.1} s; wrote {}/report.md, report.json and one PNG per scenario",
        fleet.processes,
        fleet.nodes,
        scenarios.len(),
        started.elapsed().as_secs_f64(),
        options.out.display()
    );
    Ok(all_met)
}
