//! Medians and percentiles, this process's CPU time and memory, and the Markdown report.

use serde_json::Value;

/// Median, min, max and the 50th/99th percentiles of a set of samples.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub(crate) struct Summary {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) count: usize,
}

impl Summary {
    pub(crate) fn of(samples: impl Iterator<Item = f64>) -> Summary {
        let mut v: Vec<f64> = samples.filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Summary::default();
        }
        v.sort_by(f64::total_cmp);
        let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        Summary {
            median: at(0.5),
            min: v[0],
            max: v[v.len() - 1],
            p50: at(0.5),
            p99: at(0.99),
            count: v.len(),
        }
    }
}

/// CPU time of every thread of this process, in nanoseconds (`/proc/self/task/*/schedstat`).
pub(crate) fn client_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .sum()
}

/// Resident set size of this process, in bytes.
pub(crate) fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")
                    .map(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
        })
        .flatten()
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut v = v;
    for p in path {
        v = &v[*p];
    }
    v.as_f64().unwrap_or(f64::NAN)
}

fn range(v: &Value, key: &str) -> String {
    format!(
        "{:.1} ({:.1}–{:.1})",
        f(v, &[key, "median"]),
        f(v, &[key, "min"]),
        f(v, &[key, "max"])
    )
}

/// The report as Markdown tables.
pub(crate) fn markdown(report: &Value) -> String {
    let m = &report["machine"];
    let mut out = format!(
        "# redis-entraid (A) vs redis-rs `entra-id` (B)\n\nMachine: {} cores, redis-server {}{}; {} A/B pair(s) per figure{}.\n\n",
        m["cores"],
        m["redis_server"].as_str().unwrap_or("?"),
        match m["server_cpus"].as_str() {
            Some(cpus) => format!(" (pinned to cores {cpus}, the client to core 0)"),
            None => String::new(),
        },
        m["pairs"],
        if m["quick"].as_bool() == Some(true) {
            " (quick run: smoke test, not for conclusions)"
        } else {
            ""
        }
    );
    out.push_str("## 1. Re-auth fan-out (spread off): token → `cmdstat_auth` +N, ms, median (min–max)\n\n| N | A | B | F1 (bench's own AUTHs) | F2 (raw sockets) | A/B per pair | A CPU µs/conn | B CPU µs/conn | IdP calls per refresh A / B |\n|---|---|---|---|---|---|---|---|---|\n");
    for row in report["fanout"].as_array().into_iter().flatten() {
        let ratios: Vec<String> = row["a_over_b_per_pair"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| format!("{:.2}", r.as_f64().unwrap_or(f64::NAN)))
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} / {} |\n",
            row["n"],
            range(row, "a_ms"),
            range(row, "b_ms"),
            range(row, "f1_ms"),
            range(row, "f2_ms"),
            ratios.join(", "),
            range(row, "a_cpu_us_per_conn"),
            range(row, "b_cpu_us_per_conn"),
            row["a_idp_calls_per_refresh"],
            row["b_idp_calls_per_refresh"]
        ));
    }
    out.push_str("\n## 2. Probe SET+GET latency (ms) with N idle connections: quiet 2 s vs the 2 s around a rotation\n\n| variant | quiet p50 | quiet p99 | rotation p50 | rotation p99 | rotation max | p99 ratio |\n|---|---|---|---|---|---|---|\n");
    if let Some(probe) = report["probe"].as_object() {
        for (label, v) in probe {
            out.push_str(&format!(
                "| {label} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} |\n",
                f(v, &["quiet_ms", "p50"]),
                f(v, &["quiet_ms", "p99"]),
                f(v, &["rotation_ms", "p50"]),
                f(v, &["rotation_ms", "p99"]),
                f(v, &["rotation_ms", "max"]),
                f(v, &["p99_ratio"])
            ));
        }
    }
    let mem = &report["memory"];
    out.push_str("\n## 3. Memory per connection (bytes, median), each variant in a fresh process\n\n| measure | A | B | static password | no-op provider | A − no-op | A-manager | redis `ConnectionManager` + A |\n|---|---|---|---|---|---|---|---|\n");
    for (label, key) in [("RSS growth", "rss"), ("allocated and held (mallinfo2)", "allocated")] {
        let m = &mem[key];
        out.push_str(&format!(
            "| {label} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
            f(m, &["a", "median"]),
            f(m, &["b", "median"]),
            f(m, &["static", "median"]),
            f(m, &["noop", "median"]),
            f(m, &["a_minus_noop"]),
            f(m, &["a_manager", "median"]),
            f(m, &["a_redis_manager", "median"])
        ));
    }
    let t = &report["throughput"];
    out.push_str("\n## 4. One connection, 64 tasks, rotation every 2 s (A), mean of alternating runs\n\n| | ops/s | p50 ms | p99 ms | max ms | failed |\n|---|---|---|---|---|---|\n");
    for label in ["static", "noop", "A"] {
        if t[label].is_null() {
            continue;
        }
        out.push_str(&format!(
            "| {label} | {:.0} | {:.3} | {:.3} | {:.3} | {} |\n",
            f(t, &[label, "ops_per_s"]),
            f(t, &[label, "latency_ms", "p50"]),
            f(t, &[label, "latency_ms", "p99"]),
            f(t, &[label, "latency_ms", "max"]),
            t[label]["failed"]
        ));
    }
    out.push_str(&format!(
        "\nA/static ops ratio: {:.3}; rotations during A's runs: {}\n",
        f(t, &["ratio"]),
        t["A"]["rotations"]
    ));
    let a = &report["auths_per_connection"];
    out.push_str(&format!(
        "\n## 5. AUTHs per new connection\n\n| A (redis's connections) | A-manager (`redis_entraid::aio::ConnectionManager`) | B |\n|---|---|---|\n| {} | {} | {} |\n",
        a["A"], a["A_manager"], a["B"]
    ));
    out.push_str("\n## 8. Server stall (1.5 s `DEBUG SLEEP`) during a rotation, spread off\n\n| connection | N | failed during the stall | failed after it | still re-authenticating at the next rotation | would be cut by Azure |\n|---|---|---|---|---|---|\n");
    for name in ["A-manager", "A-redis", "B-redis"] {
        let row = &report["stall"][name];
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} |\n",
            row["n"],
            row["failed_during_stall"],
            row["failed_after_stall"],
            row["still_reauthenticating"],
            row["would_be_cut"]
        ));
    }
    let i = &report["idp_calls"];
    out.push_str(&format!(
        "\n## 6. Identity-provider calls in {} s\n\n| tokens | A | B |\n|---|---|---|\n| 60 s | {} | {} |\n| 1 h | {} | {} |\n",
        i["window_s"], i["A_60s"], i["B_60s"], i["A_3600s"], i["B_3600s"]
    ));
    out.push_str("\n## 7. Identity-provider calls per refresh: see the last column of figure 1.\n");
    out
}
