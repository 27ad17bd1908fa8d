//! From a run to the report: the per-scenario numbers, the goals, report.md and report.json.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::fleet::{FleetConfig, OutageOutcome, Run, recovery_bound};
use crate::metrics::p99;
use crate::scenario::Scenario;

/// One scenario's line of the table.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Scenario name.
    pub name: &'static str,
    /// What it shows.
    pub what: String,
    /// The identity the fleet used.
    pub identity: &'static str,
    /// Hours counted.
    pub measured_hours: f64,
    /// Requests to IMDS, all nodes.
    pub imds_requests: u64,
    /// 429s from IMDS.
    pub imds_throttled: u64,
    /// 429s from IMDS after the first measured minute.
    pub imds_throttled_after_first_minute: u64,
    /// Busiest second on any one node.
    pub imds_node_peak: u32,
    /// 99th percentile over busy node-seconds.
    pub imds_node_p99: u32,
    /// Busiest second, all nodes together.
    pub imds_fleet_peak: u32,
    /// Requests to Entra (processes' and IMDS renewals).
    pub entra_requests: u64,
    /// 429s from Entra.
    pub entra_throttled: u64,
    /// Busiest second at Entra.
    pub entra_peak: u32,
    /// 99th percentile of Entra's per-second counts.
    pub entra_p99: u32,
    /// Token requests per process per hour.
    pub requests_per_process_hour: f64,
    /// Longest time any process held no valid token (after its first).
    pub longest_invalid: Duration,
    /// Processes that were ever without a valid token.
    pub processes_ever_invalid: usize,
    /// The outage's outcome.
    pub outage: Option<OutageOutcome>,
}

impl Summary {
    /// Condenses a run.
    pub fn new(fleet: &FleetConfig, scenario: &Scenario, run: &Run) -> Summary {
        let r = &run.recorder;
        let measured = scenario.run_for.saturating_sub(scenario.measure_from);
        let measured_hours = measured.as_secs_f64() / 3600.0;
        let sum = |v: &[u32]| v.iter().map(|n| u64::from(*n)).sum::<u64>();
        Summary {
            name: scenario.name,
            what: scenario.what.clone(),
            identity: scenario.identity.label(),
            measured_hours,
            imds_requests: sum(&r.imds.requests),
            imds_throttled: sum(&r.imds.throttled),
            imds_throttled_after_first_minute: sum(r.imds.throttled.get(60..).unwrap_or_default()),
            imds_node_peak: r.imds_nodes.peak(),
            imds_node_p99: r.imds_nodes.p99(),
            imds_fleet_peak: r.imds.requests.iter().copied().max().unwrap_or(0),
            entra_requests: sum(&r.entra.requests),
            entra_throttled: sum(&r.entra.throttled),
            entra_peak: r.entra.requests.iter().copied().max().unwrap_or(0),
            entra_p99: p99(&r.entra.requests),
            requests_per_process_hour: r.process_requests as f64 / (fleet.processes.max(1) as f64 * measured_hours),
            longest_invalid: r.longest_invalid(),
            processes_ever_invalid: r.processes_ever_invalid(),
            outage: run.outage.clone(),
        }
    }
}

/// A goal of the issue, checked on a summary.
#[derive(Debug, Clone)]
pub struct Goal {
    /// Which scenario.
    pub scenario: &'static str,
    /// What must hold.
    pub what: String,
    /// Whether it held.
    pub met: bool,
    /// Whether a miss fails the run (a goal the model shows cannot be met is reported,
    /// with the reason, but does not fail it).
    pub required: bool,
    /// The numbers behind it.
    pub detail: String,
}

/// The goals for these summaries.
pub fn goals(fleet: &FleetConfig, summaries: &[Summary]) -> Vec<Goal> {
    let bound = recovery_bound(&fleet.manager);
    let mut goals = Vec::new();
    for s in summaries {
        if matches!(s.name, "deploy-wave" | "steady-day") {
            goals.push(Goal {
                scenario: s.name,
                what: "0 IMDS 429s after the first minute".to_owned(),
                met: s.imds_throttled_after_first_minute == 0,
                required: true,
                detail: format!("{} 429s after the first minute", s.imds_throttled_after_first_minute),
            });
        }
        if let Some(o) = &s.outage {
            goals.push(Goal {
                scenario: s.name,
                what:
                    "no process whose token outlives the outage (plus the recovery bound) is ever without a valid token"
                        .to_owned(),
                met: o.covered_invalid == 0,
                required: true,
                detail: format!("{} of {} such processes were", o.covered_invalid, o.covered),
            });
            goals.push(Goal {
                scenario: s.name,
                what: format!(
                    "every process valid again within max_delay·(1 + jitter) + one request timeout + 1 s = {} s of the end",
                    bound.as_secs_f64()
                ),
                met: o.recovery.is_some_and(|r| r <= bound),
                required: true,
                detail: match o.recovery {
                    Some(r) => format!("{} failing at the end, all valid after {:.1} s", o.failing_at_end, r.as_secs_f64()),
                    None => format!("{} failing at the end, some never recovered", o.failing_at_end),
                },
            });
        }
        if s.name == "entra-outage-30m" {
            let ratio = fleet.manager.expiration_refresh_ratio;
            goals.push(Goal {
                scenario: s.name,
                what: "no process ever without a valid token".to_owned(),
                met: s.processes_ever_invalid == 0,
                required: false,
                detail: format!(
                    "{} processes were, for at most {:.0} s: a process due to refresh when the outage starts has \
                     only (1 − {ratio})·L = {:.0}–{:.0} min of its 60–90 min token left, less than 30 min; \
                     no refresh jitter changes that, only a ratio of at most 0.5",
                    s.processes_ever_invalid,
                    s.longest_invalid.as_secs_f64(),
                    (1.0 - ratio) * 60.0,
                    (1.0 - ratio) * 90.0
                ),
            });
        }
    }
    goals
}

fn secs(d: Duration) -> String {
    format!("{:.0} s", d.as_secs_f64())
}

/// The Markdown table, one row per scenario.
pub fn table(summaries: &[Summary]) -> String {
    let mut out = String::from(
        "| scenario | identity | IMDS req/s per node: peak / p99 | IMDS all nodes: peak req/s | IMDS 429s (after 1st min) \
         | Entra req/s: peak / p99 | Entra 429s | req per process per hour | longest without a valid token \
         | processes ever without | recovery after the outage |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for s in summaries {
        let recovery = match &s.outage {
            None => "–".to_owned(),
            Some(o) => match o.recovery {
                Some(r) => format!("{:.1} s ({} failing at the end)", r.as_secs_f64(), o.failing_at_end),
                None => format!("never ({} failing at the end)", o.failing_at_end),
            },
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} / {} | {} | {} ({}) | {} / {} | {} | {:.2} | {} | {} | {} |",
            s.name,
            s.identity,
            s.imds_node_peak,
            s.imds_node_p99,
            s.imds_fleet_peak,
            s.imds_throttled,
            s.imds_throttled_after_first_minute,
            s.entra_peak,
            s.entra_p99,
            s.entra_throttled,
            s.requests_per_process_hour,
            secs(s.longest_invalid),
            s.processes_ever_invalid,
            recovery
        );
    }
    out
}

/// The whole report.md.
pub fn markdown(
    fleet: &FleetConfig,
    scenarios: &[Scenario],
    summaries: &[Summary],
    goals: &[Goal],
    charts: &[(String, u32, u32)],
) -> String {
    let m = &fleet.manager;
    let mut out = format!(
        "# Fleet simulation\n\n{} processes on {} nodes (seed {}), the real `TokenStateMachine` each, on one \
         virtual clock. Token manager: refresh ratio {}, lower bound {} s, refresh jitter {}, request timeout {} s, \
         retries {} × from {} ms to {} s (jitter {}). IMDS per node: {} req/s, {} concurrent, 429 beyond; its cache \
         renews {} s before expiry. Entra: {} req/s tenant-wide, 429 with Retry-After 60 s beyond; service-principal \
         tokens 60–90 min.\n\n",
        fleet.processes,
        fleet.nodes,
        fleet.seed,
        m.expiration_refresh_ratio,
        m.lower_refresh_bound.as_secs(),
        m.refresh_jitter,
        m.token_request_timeout.as_secs(),
        m.retry.max_attempts,
        m.retry.initial_delay.as_millis(),
        m.retry.max_delay.as_secs(),
        m.retry.jitter,
        fleet.imds.rate_per_second,
        fleet.imds.max_concurrent,
        fleet.imds.renew_before.as_secs(),
        fleet.entra_rate_per_second,
    );
    out.push_str("## Scenarios\n\n");
    for s in scenarios {
        let _ = writeln!(
            out,
            "- `{}` ({}): {}; measured over {:.0} h.",
            s.name,
            s.identity.label(),
            s.what,
            s.run_for.saturating_sub(s.measure_from).as_secs_f64() / 3600.0
        );
    }
    out.push_str(
        "\n## Results\n\nPer node: over busy node-seconds (a second with at least one request on that node). \
         Entra's p99 is over every measured second. Requests per process per hour count the processes' own \
         requests (IMDS renewals from Entra are in Entra's columns). Without a valid token: after the process's \
         first token.\n\n",
    );
    out.push_str(&table(summaries));
    out.push_str("\n## Goals\n\n| scenario | goal | met | numbers |\n| --- | --- | --- | --- |\n");
    for g in goals {
        let met = match (g.met, g.required) {
            (true, _) => "yes",
            (false, true) => "**NO**",
            (false, false) => "no (not reachable, see numbers)",
        };
        let _ = writeln!(out, "| {} | {} | {} | {} |", g.scenario, g.what, met, g.detail);
    }
    out.push_str("\n## Charts\n\n");
    let _ = writeln!(out, "{}.\n", crate::chart::LEGEND);
    for (name, imds_top, entra_top) in charts {
        let _ = writeln!(
            out,
            "- `{name}.png`: IMDS panel top = {imds_top} req/s, Entra panel top = {entra_top} req/s (grey lines at quarters)."
        );
    }
    out
}

/// The whole report.json.
pub fn json(fleet: &FleetConfig, summaries: &[Summary], goals: &[Goal]) -> Value {
    let scenarios: Vec<Value> = summaries
        .iter()
        .map(|s| {
            json!({
                "name": s.name,
                "what": s.what,
                "identity": s.identity,
                "measured_hours": s.measured_hours,
                "imds": {
                    "requests": s.imds_requests,
                    "throttled": s.imds_throttled,
                    "throttled_after_first_minute": s.imds_throttled_after_first_minute,
                    "node_peak_per_s": s.imds_node_peak,
                    "node_p99_per_s": s.imds_node_p99,
                    "fleet_peak_per_s": s.imds_fleet_peak,
                },
                "entra": {
                    "requests": s.entra_requests,
                    "throttled": s.entra_throttled,
                    "peak_per_s": s.entra_peak,
                    "p99_per_s": s.entra_p99,
                },
                "requests_per_process_hour": s.requests_per_process_hour,
                "longest_without_valid_token_s": s.longest_invalid.as_secs_f64(),
                "processes_ever_without_valid_token": s.processes_ever_invalid,
                "outage": s.outage.as_ref().map(|o| json!({
                    "what": o.what,
                    "start_s": o.outage.start.as_secs_f64(),
                    "length_s": o.outage.length().as_secs_f64(),
                    "covered_processes": o.covered,
                    "covered_without_valid_token": o.covered_invalid,
                    "failing_at_end": o.failing_at_end,
                    "recovery_s": o.recovery.map(|r| r.as_secs_f64()),
                })),
            })
        })
        .collect();
    let goals: Vec<Value> = goals
        .iter()
        .map(|g| json!({"scenario": g.scenario, "goal": g.what, "met": g.met, "required": g.required, "detail": g.detail}))
        .collect();
    json!({
        "processes": fleet.processes,
        "nodes": fleet.nodes,
        "seed": fleet.seed,
        "refresh_ratio": fleet.manager.expiration_refresh_ratio,
        "refresh_jitter": fleet.manager.refresh_jitter,
        "entra_rate_per_second": fleet.entra_rate_per_second,
        "scenarios": scenarios,
        "goals": goals,
    })
}
