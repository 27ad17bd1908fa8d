//! The report's data model, one struct per figure: serialized once to `report.json`, and
//! written as Markdown tables from the same structs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::stats::Summary;
use crate::supervised::Kind;

/// Everything one run measured; a figure left out by `--only` is `None` and absent from the
/// JSON.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) machine: Machine,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fanout: Option<Vec<Fanout>>,
    /// Keyed by the variant's label; a map, so the rows come out in the same order in both
    /// forms of the report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) probe: Option<BTreeMap<String, Probe>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) memory: Option<Memory>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) throughput: Option<Throughput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) auths_per_connection: Option<AuthsPerConnection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) stall: Option<Stall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) idp_calls: Option<IdpCalls>,
}

/// Where the run happened.
#[derive(Debug, Serialize)]
pub(crate) struct Machine {
    /// The machine's, not the benchmark process's (xtask pins the client to one core).
    pub(crate) cores: usize,
    pub(crate) redis_server: String,
    pub(crate) quick: bool,
    pub(crate) pairs: usize,
    /// The cores redis-server is pinned to, if it is.
    pub(crate) server_cpus: Option<String>,
}

/// Figures 1 and 7: one rotation reaching N live connections, milliseconds from the token's
/// release to the server's N-th AUTH.
#[derive(Debug, Serialize)]
pub(crate) struct Fanout {
    pub(crate) n: usize,
    pub(crate) a_ms: Summary,
    pub(crate) b_ms: Summary,
    #[serde(flatten)]
    pub(crate) floors: Floors,
    pub(crate) a_cpu_us_per_conn: Summary,
    pub(crate) b_cpu_us_per_conn: Summary,
    /// A's time over B's, one per A/B pair.
    pub(crate) a_over_b_per_pair: Vec<f64>,
    /// The most identity-provider calls one refresh took.
    pub(crate) a_idp_calls_per_refresh: Option<u64>,
    pub(crate) b_idp_calls_per_refresh: Option<u64>,
}

/// The floors measured in the same run as a fan-out row, milliseconds.
#[derive(Debug, Serialize)]
pub(crate) struct Floors {
    /// F1: the benchmark's own AUTHs on static-password connections.
    pub(crate) f1_ms: Summary,
    /// F2: raw sockets, one task each.
    pub(crate) f2_ms: Summary,
}

/// Figure 2: probe SET+GET latency, quiet and around a rotation, for one variant.
#[derive(Debug, Serialize)]
pub(crate) struct Probe {
    pub(crate) quiet_ms: Summary,
    pub(crate) rotation_ms: Summary,
    pub(crate) p99_ratio: f64,
}

/// Figure 3: memory per connection, two measures.
#[derive(Debug, Serialize)]
pub(crate) struct Memory {
    /// RSS growth.
    pub(crate) rss: MemoryRow,
    /// Bytes allocated and still held (glibc's mallinfo2, main arena).
    pub(crate) allocated: MemoryRow,
}

/// One measure of figure 3, bytes per connection, for each variant.
#[derive(Debug, Serialize)]
pub(crate) struct MemoryRow {
    pub(crate) a: Summary,
    pub(crate) b: Summary,
    #[serde(rename = "static")]
    pub(crate) static_password: Summary,
    pub(crate) noop: Summary,
    /// A's median less the no-op provider's.
    pub(crate) a_minus_noop: f64,
    pub(crate) a_manager: Summary,
    pub(crate) a_redis_manager: Summary,
}

/// Figure 4: one connection, 64 tasks. A variant the run did not measure (the quick run
/// has no no-op round) is `None`.
#[derive(Debug, Serialize)]
pub(crate) struct Throughput {
    #[serde(rename = "static", skip_serializing_if = "Option::is_none")]
    pub(crate) static_password: Option<ThroughputRow>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) noop: Option<ThroughputRow>,
    #[serde(rename = "A", skip_serializing_if = "Option::is_none")]
    pub(crate) a: Option<ThroughputRow>,
    /// `redis_entraid::aio::ConnectionManager` with A.
    #[serde(rename = "A-manager", skip_serializing_if = "Option::is_none")]
    pub(crate) manager: Option<ThroughputRow>,
    /// redis's `ConnectionManager` with A.
    #[serde(rename = "redis-manager", skip_serializing_if = "Option::is_none")]
    pub(crate) redis_manager: Option<ThroughputRow>,
    /// A's ops/s over the static password's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ratio: Option<f64>,
    /// Our manager's ops/s over redis's manager's (the supervised hot path's cost).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) manager_ratio: Option<f64>,
}

/// Figure 4 for one variant, over its runs.
#[derive(Debug, Serialize)]
pub(crate) struct ThroughputRow {
    /// The mean over the runs.
    pub(crate) ops_per_s: f64,
    /// The run with the worse p99.
    pub(crate) latency_ms: Summary,
    pub(crate) failed: u64,
    pub(crate) rotations: u64,
    pub(crate) runs: usize,
}

/// Figure 5: AUTH commands the server runs per new connection.
#[derive(Debug, Serialize)]
pub(crate) struct AuthsPerConnection {
    /// A with redis's own connections.
    #[serde(rename = "A")]
    pub(crate) a: f64,
    /// A with `redis_entraid::aio::ConnectionManager`.
    #[serde(rename = "A_manager")]
    pub(crate) a_manager: f64,
    #[serde(rename = "B")]
    pub(crate) b: f64,
}

/// Figure 8: a server stall during a rotation, for each kind of connection.
#[derive(Debug, Serialize)]
pub(crate) struct Stall {
    #[serde(rename = "A-manager")]
    pub(crate) a_manager: StallRow,
    #[serde(rename = "A-redis")]
    pub(crate) a_redis: StallRow,
    #[serde(rename = "B-redis")]
    pub(crate) b_redis: StallRow,
}

impl Stall {
    fn rows(&self) -> [(Kind, &StallRow); 3] {
        [
            (Kind::AManager, &self.a_manager),
            (Kind::ARedis, &self.a_redis),
            (Kind::BRedis, &self.b_redis),
        ]
    }
}

/// Figure 8 for one kind of connection.
#[derive(Debug, Serialize)]
pub(crate) struct StallRow {
    pub(crate) n: usize,
    pub(crate) failed_during_stall: u64,
    pub(crate) failed_after_stall: u64,
    /// Connections that re-authenticated at the rotation after the stall.
    pub(crate) still_reauthenticating: u64,
    /// The others: Azure would cut them at their token's expiry.
    pub(crate) would_be_cut: u64,
}

/// Figure 6: identity-provider calls in a window, for 60-second and 1-hour tokens.
#[derive(Debug, Serialize)]
pub(crate) struct IdpCalls {
    #[serde(rename = "A_60s")]
    pub(crate) a_60s: u64,
    #[serde(rename = "B_60s")]
    pub(crate) b_60s: u64,
    #[serde(rename = "A_3600s")]
    pub(crate) a_3600s: u64,
    #[serde(rename = "B_3600s")]
    pub(crate) b_3600s: u64,
    pub(crate) window_s: u64,
}

/// `median (min–max)`, one decimal.
fn range(s: &Summary) -> String {
    format!("{:.1} ({:.1}–{:.1})", s.median, s.min, s.max)
}

/// A count that may be missing.
fn count(n: Option<u64>) -> String {
    n.map_or_else(|| "n/a".to_owned(), |n| n.to_string())
}

const NOT_RUN: &str = "\nNot measured in this run.\n";

impl Report {
    /// The report as Markdown tables.
    pub(crate) fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = format!(
            "# redis-entraid (A) vs redis-rs `entra-id` (B)\n\nMachine: {} cores, redis-server {}{}; {} A/B pair(s) per figure{}.\n\n",
            m.cores,
            m.redis_server,
            match &m.server_cpus {
                Some(cpus) => format!(" (pinned to cores {cpus}, the client to core 0)"),
                None => String::new(),
            },
            m.pairs,
            if m.quick {
                " (quick run: smoke test, not for conclusions)"
            } else {
                ""
            }
        );
        self.fanout_markdown(&mut out);
        self.probe_markdown(&mut out);
        self.memory_markdown(&mut out);
        self.throughput_markdown(&mut out);
        self.auths_markdown(&mut out);
        self.stall_markdown(&mut out);
        self.idp_markdown(&mut out);
        out.push_str("\n## 7. Identity-provider calls per refresh: see the last column of figure 1.\n");
        out
    }

    fn fanout_markdown(&self, out: &mut String) {
        out.push_str("## 1. Re-auth fan-out (spread off): token → `cmdstat_auth` +N, ms, median (min–max)\n");
        let Some(fanout) = &self.fanout else {
            out.push_str(NOT_RUN);
            return;
        };
        out.push_str("\n| N | A | B | F1 (bench's own AUTHs) | F2 (raw sockets) | A/B per pair | A CPU µs/conn | B CPU µs/conn | IdP calls per refresh A / B |\n|---|---|---|---|---|---|---|---|---|\n");
        for row in fanout {
            let ratios: Vec<String> = row.a_over_b_per_pair.iter().map(|r| format!("{r:.2}")).collect();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |",
                row.n,
                range(&row.a_ms),
                range(&row.b_ms),
                range(&row.floors.f1_ms),
                range(&row.floors.f2_ms),
                ratios.join(", "),
                range(&row.a_cpu_us_per_conn),
                range(&row.b_cpu_us_per_conn),
                count(row.a_idp_calls_per_refresh),
                count(row.b_idp_calls_per_refresh)
            );
        }
    }

    fn probe_markdown(&self, out: &mut String) {
        out.push_str(
            "\n## 2. Probe SET+GET latency (ms) with N idle connections: quiet 2 s vs the 2 s around a rotation\n",
        );
        let Some(probe) = &self.probe else {
            out.push_str(NOT_RUN);
            return;
        };
        out.push_str("\n| variant | quiet p50 | quiet p99 | rotation p50 | rotation p99 | rotation max | p99 ratio |\n|---|---|---|---|---|---|---|\n");
        for (label, row) in probe {
            let _ = writeln!(
                out,
                "| {label} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} |",
                row.quiet_ms.p50,
                row.quiet_ms.p99,
                row.rotation_ms.p50,
                row.rotation_ms.p99,
                row.rotation_ms.max,
                row.p99_ratio
            );
        }
    }

    fn memory_markdown(&self, out: &mut String) {
        out.push_str("\n## 3. Memory per connection (bytes, median), each variant in a fresh process\n");
        let Some(memory) = &self.memory else {
            out.push_str(NOT_RUN);
            return;
        };
        out.push_str("\n| measure | A | B | static password | no-op provider | A − no-op | A-manager | redis `ConnectionManager` + A |\n|---|---|---|---|---|---|---|---|\n");
        for (label, row) in [
            ("RSS growth", &memory.rss),
            ("allocated and held (mallinfo2)", &memory.allocated),
        ] {
            let _ = writeln!(
                out,
                "| {label} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                row.a.median,
                row.b.median,
                row.static_password.median,
                row.noop.median,
                row.a_minus_noop,
                row.a_manager.median,
                row.a_redis_manager.median
            );
        }
    }

    fn throughput_markdown(&self, out: &mut String) {
        out.push_str("\n## 4. One connection, 64 tasks, rotation every 2 s (A), mean of alternating runs\n");
        let Some(t) = &self.throughput else {
            out.push_str(NOT_RUN);
            return;
        };
        out.push_str("\n| | ops/s | p50 ms | p99 ms | max ms | failed |\n|---|---|---|---|---|---|\n");
        for (label, row) in [
            ("static", &t.static_password),
            ("noop", &t.noop),
            ("A", &t.a),
            ("A-manager (`redis_entraid::aio::ConnectionManager`)", &t.manager),
            ("redis `ConnectionManager` + A", &t.redis_manager),
        ] {
            let _ = match row {
                Some(row) => writeln!(
                    out,
                    "| {label} | {:.0} | {:.3} | {:.3} | {:.3} | {} |",
                    row.ops_per_s, row.latency_ms.p50, row.latency_ms.p99, row.latency_ms.max, row.failed
                ),
                None => writeln!(out, "| {label} | n/a | n/a | n/a | n/a | n/a |"),
            };
        }
        let _ = writeln!(
            out,
            "\nA/static ops ratio: {}; rotations during A's runs: {}; A-manager/redis `ConnectionManager` ops ratio: {}",
            t.ratio.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.3}")),
            count(t.a.as_ref().map(|a| a.rotations)),
            t.manager_ratio.map_or_else(|| "n/a".to_owned(), |r| format!("{r:.3}")),
        );
    }

    fn auths_markdown(&self, out: &mut String) {
        out.push_str("\n## 5. AUTHs per new connection\n");
        let Some(a) = &self.auths_per_connection else {
            out.push_str(NOT_RUN);
            return;
        };
        // `{:?}` keeps the decimal point of whole numbers, as the JSON has it ("2.0").
        let _ = writeln!(
            out,
            "\n| A (redis's connections) | A-manager (`redis_entraid::aio::ConnectionManager`) | B |\n|---|---|---|\n| {:?} | {:?} | {:?} |",
            a.a, a.a_manager, a.b
        );
    }

    fn stall_markdown(&self, out: &mut String) {
        out.push_str("\n## 8. Server stall (1.5 s `DEBUG SLEEP`) during a rotation, spread off\n");
        let Some(stall) = &self.stall else {
            out.push_str(NOT_RUN);
            return;
        };
        out.push_str("\n| connection | N | failed during the stall | failed after it | still re-authenticating at the next rotation | would be cut by Azure |\n|---|---|---|---|---|---|\n");
        for (kind, row) in stall.rows() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                kind.name(),
                row.n,
                row.failed_during_stall,
                row.failed_after_stall,
                row.still_reauthenticating,
                row.would_be_cut
            );
        }
    }

    fn idp_markdown(&self, out: &mut String) {
        let Some(i) = &self.idp_calls else {
            out.push_str("\n## 6. Identity-provider calls\n");
            out.push_str(NOT_RUN);
            return;
        };
        let _ = writeln!(
            out,
            "\n## 6. Identity-provider calls in {} s\n\n| tokens | A | B |\n|---|---|---|\n| 60 s | {} | {} |\n| 1 h | {} | {} |",
            i.window_s, i.a_60s, i.b_60s, i.a_3600s, i.b_3600s
        );
    }
}
