//! What the simulation counts: requests and 429s per second, busy seconds per node,
//! and how long each process held no valid token.

use std::time::Duration;

/// Requests and 429s at one endpoint (all IMDS nodes together, or Entra), per second of
/// the measured span.
#[derive(Debug, Clone, Default)]
pub struct PerSecond {
    /// Requests arriving in each second.
    pub requests: Vec<u32>,
    /// 429 answers to the requests arriving in each second.
    pub throttled: Vec<u32>,
}

impl PerSecond {
    fn with_seconds(seconds: usize) -> PerSecond {
        PerSecond {
            requests: vec![0; seconds],
            throttled: vec![0; seconds],
        }
    }

    fn add(&mut self, second: usize, throttled: bool) {
        if let Some(n) = self.requests.get_mut(second) {
            *n += 1;
        }
        if throttled && let Some(n) = self.throttled.get_mut(second) {
            *n += 1;
        }
    }
}

/// The 99th percentile of per-second counts (nearest rank).
pub fn p99(counts: &[u32]) -> u32 {
    let mut sorted = counts.to_vec();
    sorted.sort_unstable();
    nearest_rank(&sorted, 0.99)
}

fn nearest_rank(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Requests per second on each node, kept as a histogram of busy seconds (seconds with
/// at least one request), so 500 nodes × 2 days need no per-second array.
#[derive(Debug, Clone)]
pub struct NodeSeconds {
    current: Vec<(u64, u32)>,
    histogram: Vec<u64>,
}

impl NodeSeconds {
    fn new(nodes: usize) -> NodeSeconds {
        NodeSeconds {
            current: vec![(u64::MAX, 0); nodes],
            histogram: Vec::new(),
        }
    }

    fn add(&mut self, node: usize, second: u64) {
        let Some((at, count)) = self.current.get_mut(node) else {
            return;
        };
        if *at != second {
            let finished = std::mem::replace(count, 0);
            bump(&mut self.histogram, finished);
            *at = second;
        }
        *count += 1;
    }

    fn flush(&mut self) {
        for (_, count) in std::mem::take(&mut self.current) {
            bump(&mut self.histogram, count);
        }
    }

    /// The busiest second of any node.
    pub fn peak(&self) -> u32 {
        self.histogram.len().saturating_sub(1) as u32
    }

    /// The 99th percentile over busy node-seconds.
    pub fn p99(&self) -> u32 {
        let total: u64 = self.histogram.iter().skip(1).sum();
        if total == 0 {
            return 0;
        }
        let rank = (0.99 * total as f64).ceil() as u64;
        let mut seen = 0;
        for (count, n) in self.histogram.iter().enumerate().skip(1) {
            seen += n;
            if seen >= rank {
                return count as u32;
            }
        }
        self.peak()
    }
}

fn bump(histogram: &mut Vec<u64>, count: u32) {
    if count == 0 {
        return;
    }
    let index = count as usize;
    if histogram.len() <= index {
        histogram.resize(index + 1, 0);
    }
    histogram[index] += 1;
}

/// A process's time without a valid token, after it first had one.
#[derive(Debug, Clone, Copy, Default)]
struct Invalid {
    since: Option<Duration>,
    total: Duration,
    longest: Duration,
}

/// Everything counted in one run, over `[measure_from, run_for)`.
#[derive(Debug, Clone)]
pub struct Recorder {
    measure_from: Duration,
    run_for: Duration,
    /// All IMDS nodes together.
    pub imds: PerSecond,
    /// Entra's token endpoint (processes' requests and IMDS cache renewals).
    pub entra: PerSecond,
    /// IMDS per node.
    pub imds_nodes: NodeSeconds,
    /// Token requests made by the processes.
    pub process_requests: u64,
    invalid: Vec<Invalid>,
}

impl Recorder {
    /// Counts from `measure_from` to `run_for`.
    pub fn new(processes: usize, nodes: usize, measure_from: Duration, run_for: Duration) -> Recorder {
        let seconds = run_for.saturating_sub(measure_from).as_secs() as usize + 1;
        Recorder {
            measure_from,
            run_for,
            imds: PerSecond::with_seconds(seconds),
            entra: PerSecond::with_seconds(seconds),
            imds_nodes: NodeSeconds::new(nodes),
            process_requests: 0,
            invalid: vec![Invalid::default(); processes],
        }
    }

    fn second(&self, now: Duration) -> Option<usize> {
        (now >= self.measure_from).then(|| (now - self.measure_from).as_secs() as usize)
    }

    /// A process asked for a token.
    pub fn process_request(&mut self, now: Duration) {
        if now >= self.measure_from {
            self.process_requests += 1;
        }
    }

    /// A request reached a node's IMDS.
    pub fn imds_request(&mut self, now: Duration, node: usize, throttled: bool) {
        if let Some(second) = self.second(now) {
            self.imds.add(second, throttled);
            self.imds_nodes.add(node, second as u64);
        }
    }

    /// A request reached Entra.
    pub fn entra_request(&mut self, now: Duration, throttled: bool) {
        if let Some(second) = self.second(now) {
            self.entra.add(second, throttled);
        }
    }

    /// The process's token expired with no replacement.
    pub fn token_expired(&mut self, process: usize, now: Duration) {
        if let Some(p) = self.invalid.get_mut(process) {
            p.since.get_or_insert(now);
        }
    }

    /// The process has a valid token again.
    pub fn token_renewed(&mut self, process: usize, now: Duration) {
        let measure_from = self.measure_from;
        if let Some(p) = self.invalid.get_mut(process)
            && let Some(since) = p.since.take()
        {
            close(p, since.max(measure_from), now);
        }
    }

    /// Ends open periods at the end of the run.
    pub fn finish(&mut self) {
        let (measure_from, end) = (self.measure_from, self.run_for);
        for p in &mut self.invalid {
            if let Some(since) = p.since.take() {
                close(p, since.max(measure_from), end);
            }
        }
        self.imds_nodes.flush();
    }

    /// The longest time any process held no valid token.
    pub fn longest_invalid(&self) -> Duration {
        self.invalid.iter().map(|p| p.longest).max().unwrap_or_default()
    }

    /// How many processes were ever without a valid token.
    pub fn processes_ever_invalid(&self) -> usize {
        self.invalid.iter().filter(|p| !p.total.is_zero()).count()
    }

    /// Whether this process was ever without a valid token.
    pub fn was_invalid(&self, process: usize) -> bool {
        self.invalid.get(process).is_some_and(|p| !p.total.is_zero())
    }
}

fn close(p: &mut Invalid, since: Duration, now: Duration) {
    let length = now.saturating_sub(since);
    p.total += length;
    p.longest = p.longest.max(length);
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn p99_is_the_nearest_rank() {
        let counts: Vec<u32> = (1..=100).collect();
        assert_eq!(p99(&counts), 99);
        assert_eq!(p99(&[]), 0);
        assert_eq!(p99(&[7]), 7);
    }

    #[test]
    fn node_seconds_count_busy_seconds_per_node() {
        let mut r = Recorder::new(1, 2, Duration::ZERO, 10 * SEC);
        for _ in 0..3 {
            r.imds_request(SEC, 0, false);
        }
        r.imds_request(SEC, 1, true);
        r.imds_request(2 * SEC, 0, false);
        r.finish();
        assert_eq!(r.imds_nodes.peak(), 3);
        // Busy node-seconds: 3, 1, 1.
        assert_eq!(r.imds_nodes.p99(), 3);
        assert_eq!(r.imds.requests[1], 4);
        assert_eq!(r.imds.throttled[1], 1);
    }

    #[test]
    fn invalid_time_is_counted_within_the_measured_span_only() {
        let mut r = Recorder::new(2, 1, 10 * SEC, 100 * SEC);
        r.token_expired(0, 5 * SEC);
        r.token_renewed(0, 12 * SEC);
        r.token_expired(1, 90 * SEC);
        r.finish();
        assert_eq!(r.longest_invalid(), 10 * SEC);
        assert_eq!(r.processes_ever_invalid(), 2);
        assert!(r.was_invalid(0));
    }
}
