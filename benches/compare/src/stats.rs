//! Medians and percentiles, this process's CPU time and memory.

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
