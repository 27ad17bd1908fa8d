//! The discrete-event simulation: N real `TokenStateMachine`s on M nodes, one virtual
//! clock, a heap of events keyed by virtual time.
//!
//! A machine's `RequestToken` goes to its endpoint model, which decides the answer and
//! when it arrives; the answer is delivered with `handle_response` at that instant, and
//! the machine's announced `Timeout` with `handle_timeout`. The wall clock is never fed:
//! on a virtual clock it never disagrees with the monotonic one.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use entraid_identity::{IdentityError, Token};
use entraid_token_manager::{ConfigError, Output, RequestId, TokenManagerConfig, TokenStateMachine};

use crate::endpoint::{Answer, Outage, Reply};
use crate::entra::{EntraConfig, EntraModel, Requester};
use crate::imds::{ImdsConfig, ImdsDecision, ImdsNode};
use crate::metrics::Recorder;
use crate::rng::SimRng;
use crate::scenario::{Identity, Scenario, Starts};

/// The fleet and the knobs shared by every scenario.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Processes (pods), each with its own token manager.
    pub processes: usize,
    /// Nodes; process `i` runs on node `i % nodes` and shares that node's IMDS.
    pub nodes: usize,
    /// Seeds every machine's jitter and every model's draws.
    pub seed: u64,
    /// Every process's token-manager configuration.
    pub manager: TokenManagerConfig,
    /// Entra's tenant-wide rate.
    pub entra_rate_per_second: usize,
    /// Every node's IMDS.
    pub imds: ImdsConfig,
}

/// What an outage did to the fleet.
#[derive(Debug, Clone)]
pub struct OutageOutcome {
    /// What went down.
    pub what: &'static str,
    /// When and for how long.
    pub outage: Outage,
    /// Processes whose token at the outage's start outlived its end by the recovery
    /// bound: none of them may ever be without a valid token.
    pub covered: usize,
    /// Covered processes that were nevertheless without a valid token at some point.
    pub covered_invalid: usize,
    /// Processes that were failing or without a token when the outage ended.
    pub failing_at_end: usize,
    /// From the end of the outage until every one of them had a new token; `None` if
    /// some never did within the run.
    pub recovery: Option<Duration>,
}

/// One scenario's run.
#[derive(Debug)]
pub struct Run {
    /// Everything counted.
    pub recorder: Recorder,
    /// What the scenario's outage did, if it has one.
    pub outage: Option<OutageOutcome>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Start(usize),
    Timer(usize),
    Response {
        process: usize,
        request: RequestId,
        reply: Reply,
        /// The IMDS node whose slot this answer frees.
        imds_node: Option<usize>,
    },
    FetchDone(usize),
    OutageStarts,
    OutageEnds,
}

struct Process {
    machine: TokenStateMachine,
    node: usize,
    timer: Option<Duration>,
}

/// The whole simulation state of one run.
struct Simulation<'a> {
    scenario: &'a Scenario,
    base: Instant,
    wall_base: SystemTime,
    events: BinaryHeap<Reverse<(Duration, u64, Event)>>,
    sequence: u64,
    processes: Vec<Process>,
    imds: Vec<ImdsNode<(usize, RequestId)>>,
    entra: EntraModel,
    recorder: Recorder,
    recovery_bound: Duration,
    covered: Vec<bool>,
    failing_at_end: Vec<bool>,
    renewed_after_end: Vec<Option<Duration>>,
}

/// How long after an outage every process must hold a valid token again: the longest
/// retry wait (`max_delay` stretched by its jitter), plus one request timeout for the
/// request that was hanging when the outage ended, plus the slowest healthy answer (1 s).
pub fn recovery_bound(manager: &TokenManagerConfig) -> Duration {
    manager.retry.max_delay.mul_f64(1.0 + manager.retry.jitter) + manager.token_request_timeout + Duration::from_secs(1)
}

/// Runs one scenario on the fleet.
pub fn simulate(fleet: &FleetConfig, scenario: &Scenario) -> Result<Run, ConfigError> {
    let mut rng = SimRng::new(fleet.seed);
    let nodes = fleet.nodes.max(1);
    let processes = (0..fleet.processes)
        .map(|i| {
            let seed = SimRng::derive(fleet.seed, i as u64);
            TokenStateMachine::with_seed(fleet.manager.clone(), seed).map(|machine| Process {
                machine,
                node: i % nodes,
                timer: None,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let imds = (0..nodes)
        .map(|n| {
            let outage = scenario.imds_outage.filter(|_| n == 0);
            ImdsNode::new(fleet.imds.clone(), outage, SimRng::derive(fleet.seed ^ 0x1d5, n as u64))
        })
        .collect();
    let entra = EntraModel::new(
        EntraConfig {
            rate_per_second: fleet.entra_rate_per_second,
            latency: scenario.entra_latency,
            outage: scenario.entra_outage,
            ..EntraConfig::default()
        },
        SimRng::derive(fleet.seed, 0xe47a),
    );
    let mut sim = Simulation {
        scenario,
        base: Instant::now(),
        wall_base: UNIX_EPOCH + Duration::from_secs(1_900_000_000),
        events: BinaryHeap::new(),
        sequence: 0,
        processes,
        imds,
        entra,
        recorder: Recorder::new(fleet.processes, nodes, scenario.measure_from, scenario.run_for),
        recovery_bound: recovery_bound(&fleet.manager),
        covered: vec![false; fleet.processes],
        failing_at_end: vec![false; fleet.processes],
        renewed_after_end: vec![None; fleet.processes],
    };
    for process in 0..fleet.processes {
        let span = match scenario.starts {
            Starts::Wave(span) | Starts::Spread(span) => span,
        };
        let at = Duration::from_secs_f64(rng.between(0.0, span.as_secs_f64()));
        sim.schedule(at, Event::Start(process));
    }
    if let Some((_, outage)) = scenario.outage() {
        sim.schedule(outage.start, Event::OutageStarts);
        sim.schedule(outage.end, Event::OutageEnds);
    }
    sim.run();
    Ok(sim.finish())
}

impl Simulation<'_> {
    fn schedule(&mut self, at: Duration, event: Event) {
        self.sequence += 1;
        self.events.push(Reverse((at, self.sequence, event)));
    }

    fn instant(&self, at: Duration) -> Instant {
        self.base + at
    }

    fn run(&mut self) {
        while let Some(Reverse((now, _, event))) = self.events.pop() {
            if now > self.scenario.run_for {
                break;
            }
            match event {
                Event::Start(p) => {
                    let at = self.instant(now);
                    self.processes[p].machine.start(at);
                    self.drain(p, now);
                }
                Event::Timer(p) => {
                    if self.processes[p].timer == Some(now) {
                        self.processes[p].timer = None;
                        let at = self.instant(now);
                        self.processes[p].machine.handle_timeout(at);
                        self.drain(p, now);
                    }
                }
                Event::Response {
                    process,
                    request,
                    reply,
                    imds_node,
                } => {
                    if let Some(node) = imds_node {
                        self.imds[node].finished();
                    }
                    let result = self.result(now, reply);
                    let at = self.instant(now);
                    self.processes[process].machine.handle_response(at, request, result);
                    self.note_recovery(process, now);
                    self.drain(process, now);
                }
                Event::FetchDone(node) => {
                    let (reply, waiting) = self.imds[node].fetch_done();
                    for (process, request) in waiting {
                        let at = now + Duration::from_millis(1);
                        let imds_node = Some(node);
                        self.schedule(
                            at,
                            Event::Response {
                                process,
                                request,
                                reply,
                                imds_node,
                            },
                        );
                    }
                }
                Event::OutageStarts => self.outage_starts(),
                Event::OutageEnds => self.outage_ends(),
            }
        }
    }

    /// The answer as the identity provider would return it.
    fn result(&self, now: Duration, reply: Reply) -> Result<Token, IdentityError> {
        match reply {
            Reply::Token { secret, expires_at } => Ok(Token::new(
                format!("token-{secret}"),
                "oid",
                self.wall_base + expires_at,
                self.wall_base + now,
            )),
            Reply::Throttled { retry_after } => Err(IdentityError::transient("429 Too Many Requests")
                .with_code("429")
                .with_retry_after(retry_after)),
            Reply::Failed => Err(IdentityError::transient("500 Internal Server Error")),
        }
    }

    /// A process failing when the outage ended has recovered once a request succeeded:
    /// IMDS may answer with the token the process already holds, which the machine
    /// accepts without announcing it again.
    fn note_recovery(&mut self, p: usize, now: Duration) {
        let machine = &self.processes[p].machine;
        if self.failing_at_end[p]
            && self.renewed_after_end[p].is_none()
            && machine.consecutive_failures() == 0
            && machine.current_token().is_some()
        {
            self.renewed_after_end[p] = Some(now);
        }
    }

    /// Carries out a machine's outputs until it names its next deadline.
    fn drain(&mut self, p: usize, now: Duration) {
        loop {
            match self.processes[p].machine.poll_output() {
                Output::RequestToken(id) => self.send(p, id, now),
                Output::TokenRenewed(_) => self.recorder.token_renewed(p, now),
                Output::TokenExpired => self.recorder.token_expired(p, now),
                Output::Timeout(at) => {
                    let at = at.saturating_duration_since(self.base);
                    if self.processes[p].timer != Some(at) {
                        self.processes[p].timer = Some(at);
                        self.schedule(at, Event::Timer(p));
                    }
                    return;
                }
                Output::NotStarted => return,
                // Errors are the application's to log; the schedule already says it all.
                _ => {}
            }
        }
    }

    fn send(&mut self, p: usize, request: RequestId, now: Duration) {
        self.recorder.process_request(now);
        match self.scenario.identity {
            Identity::ServicePrincipal => {
                let answer = self.entra.request(now, Requester::ServicePrincipal);
                self.entra_answer(now, answer);
                if let Answer::At(at, reply) = answer {
                    let imds_node = None;
                    self.schedule(
                        at,
                        Event::Response {
                            process: p,
                            request,
                            reply,
                            imds_node,
                        },
                    );
                }
            }
            Identity::ManagedIdentity => {
                let node = self.processes[p].node;
                let (decision, fetch) = self.imds[node].request(now, (p, request), &mut self.entra);
                let throttled = matches!(decision, ImdsDecision::Throttled { .. });
                self.recorder.imds_request(now, node, throttled);
                if let Some(fetch) = fetch {
                    self.entra_answer(now, fetch.entra);
                    self.schedule(fetch.done_at, Event::FetchDone(node));
                }
                let (at, reply, imds_node) = match decision {
                    ImdsDecision::Throttled { at, retry_after } => (at, Reply::Throttled { retry_after }, None),
                    ImdsDecision::Served { at, reply } => (at, reply, Some(node)),
                    ImdsDecision::Waiting | ImdsDecision::Silent => return,
                };
                self.schedule(
                    at,
                    Event::Response {
                        process: p,
                        request,
                        reply,
                        imds_node,
                    },
                );
            }
        }
    }

    fn entra_answer(&mut self, now: Duration, answer: Answer) {
        let throttled = matches!(answer, Answer::At(_, Reply::Throttled { .. }));
        self.recorder.entra_request(now, throttled);
    }

    fn outage_starts(&mut self) {
        let Some((_, outage)) = self.scenario.outage() else {
            return;
        };
        let must_last_until = self.instant(outage.end + self.recovery_bound);
        let only_node = self.scenario.imds_outage.is_some().then_some(0);
        for (p, process) in self.processes.iter().enumerate() {
            let affected = only_node.is_none_or(|n| process.node == n);
            self.covered[p] = affected
                && process
                    .machine
                    .current_token_expires_at()
                    .is_some_and(|at| at > must_last_until);
        }
    }

    fn outage_ends(&mut self) {
        for (p, process) in self.processes.iter().enumerate() {
            self.failing_at_end[p] =
                process.machine.consecutive_failures() > 0 || process.machine.current_token().is_none();
        }
    }

    fn finish(mut self) -> Run {
        self.recorder.finish();
        let outage = self.scenario.outage().map(|(what, outage)| {
            let covered_invalid = (0..self.processes.len())
                .filter(|p| self.covered[*p] && self.recorder.was_invalid(*p))
                .count();
            let failing: Vec<usize> = (0..self.processes.len()).filter(|p| self.failing_at_end[*p]).collect();
            let recovery = failing.iter().try_fold(Duration::ZERO, |latest, p| {
                self.renewed_after_end[*p].map(|at| latest.max(at.saturating_sub(outage.end)))
            });
            OutageOutcome {
                what,
                outage,
                covered: self.covered.iter().filter(|c| **c).count(),
                covered_invalid,
                failing_at_end: failing.len(),
                recovery,
            }
        });
        Run {
            recorder: self.recorder,
            outage,
        }
    }
}
