//! The sans-IO core: decides when to request, refresh, retry and report, given the time.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use entraid_identity::{ErrorOrigin, IdentityError, Token};

use crate::config::{ConfigError, TokenManagerConfig};
use crate::jitter::Jitter;
use crate::status::{RefreshOutcome, TokenStatus};

/// Identifies one token request, so that a late or superseded response is recognised
/// and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request #{}", self.0)
    }
}

/// A failed request that is reported to the application, with what happens next.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RefreshFailure {
    /// The last error.
    pub error: IdentityError,
    /// Consecutive failed attempts, this one included.
    pub attempts: u32,
    /// Whether the retry policy considers the error retryable (with backoff).
    pub retryable: bool,
    /// When the next attempt is made. The manager never stops trying by itself.
    pub next_attempt_at: Instant,
}

impl fmt::Display for RefreshFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "token request failed {} time(s) in a row: {}",
            self.attempts, self.error
        )
    }
}

/// What the state machine asks its driver to do. Drain with
/// [`TokenStateMachine::poll_output`] until [`Output::Timeout`] (or
/// [`Output::NotStarted`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Output {
    /// Ask the identity provider for a token now, and report the result with
    /// [`TokenStateMachine::handle_response`] under this id.
    RequestToken(RequestId),
    /// A new token to hand to every connection.
    TokenRenewed(Token),
    /// Token requests are failing; the failure is worth telling the application.
    Error(RefreshFailure),
    /// The current token's expiry passed with no replacement.
    TokenExpired,
    /// Nothing more to do until this instant: call
    /// [`TokenStateMachine::handle_timeout`] then (or when a response arrives earlier).
    Timeout(Instant),
    /// Not started: nothing will happen until [`TokenStateMachine::start`]. A started
    /// machine always has a deadline, so it never answers this again.
    NotStarted,
}

#[derive(Debug)]
struct InFlight {
    id: RequestId,
    deadline: Instant,
}

#[derive(Debug)]
struct Current {
    token: Token,
    expires_at: Instant,
}

/// Longest span the machine schedules ahead, so absurd lifetimes or `Retry-After`
/// values cannot overflow `Instant`.
const MAX_SCHEDULE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The longest a `retry_after` may postpone an attempt, unless `max_delay` is longer: a
/// throttled endpoint asking for a day's pause must not leave every connection to expire.
pub const RETRY_AFTER_CAP: Duration = Duration::from_secs(5 * 60);

/// Once a driver feeds the wall clock, the machine asks to be woken at least this often
/// to compare it with the monotonic clock, which stands still while the machine is
/// suspended: after a resume, an expired token is noticed within this interval.
pub const WALL_CLOCK_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// A gap between the wall clock and the monotonic clock smaller than this is noise (the
/// two are read at slightly different moments), not a suspend.
const WALL_CLOCK_TOLERANCE: Duration = Duration::from_secs(1);

/// Keeps one token fresh, without reading a clock, spawning, sleeping or doing I/O.
///
/// The caller (a *driver*) owns time and the identity provider. The state machine only
/// decides, from the instants it is given, what must happen next:
///
/// ```text
/// sm.start(now)
/// loop {
///     loop {
///         match sm.poll_output() {
///             Output::RequestToken(id) => begin provider.request_token(), remembering id
///             Output::TokenRenewed(token) => hand token to every connection
///             Output::Error(failure)  => report it (connections, logs)
///             Output::TokenExpired    => report it
///             Output::Timeout(at)     => { deadline = at; break }
///             Output::NotStarted      => return
///         }
///     }
///     wait until `deadline` or until the request finishes, whichever is first:
///         finished  => sm.handle_response(now, id, result)
///         deadline  => sm.handle_wall_clock(now, SystemTime::now())  // or handle_timeout(now)
/// }
/// ```
///
/// A driver that feeds the wall clock ([`handle_wall_clock`](Self::handle_wall_clock))
/// survives suspend and resume: the monotonic clock stops while a machine sleeps, so a
/// schedule kept on it alone would hand out an expired token after a resume and refresh
/// late by the time slept.
///
/// Rules it implements (see the crate docs for the full statement):
///
/// - A token of lifetime `L` is refreshed at a point drawn uniformly in
///   `TokenManagerConfig::refresh_delay_band(L)` after it arrived: up to `refresh_jitter`
///   earlier than `refresh_delay(L)`, never later. `L` is the token's own `expires_at - received_at`, so a skewed local
///   clock does not move the schedule. A token with `L == 0` counts as a failure.
/// - A failed or timed-out request is retried after the policy's backoff, jittered, and
///   never sooner than the error's `retry_after`. After `max_attempts` consecutive
///   failures (or at once for a non-retryable error) it emits [`Output::Error`] and keeps
///   trying every `max_delay`: it never stops by itself.
/// - At most one request is in flight. A response after its request's timeout, or for a
///   superseded request, is ignored.
/// - A `retry_after` never postpones an attempt by more than `max(max_delay, 5 min)`
///   ([`RETRY_AFTER_CAP`]), nor past the point where the current token would have less
///   left than the refresh rule leaves it.
/// - A response carrying the current token's secret again is not announced.
/// - `handle_timeout` may be called early or spuriously; time never goes backwards (an
///   earlier `now` than one seen before is taken as the later one).
///
/// ```
/// use entraid_identity::Token;
/// use entraid_token_manager::{Output, TokenManagerConfig, TokenStateMachine};
/// use std::time::{Duration, Instant, SystemTime};
///
/// let mut sm = TokenStateMachine::new(TokenManagerConfig::default())?;
/// let t0 = Instant::now(); // a test would use any fixed instant
/// sm.start(t0);
/// let Output::RequestToken(id) = sm.poll_output() else { unreachable!() };
///
/// let issued = SystemTime::now();
/// let token = Token::new("secret", "oid", issued + Duration::from_secs(3600), issued);
/// sm.handle_response(t0, id, Ok(token));
/// assert!(matches!(sm.poll_output(), Output::TokenRenewed(_)));
/// // A one-hour token is refreshed after 70 % of its life, or up to 10 % before that
/// // (the default refresh jitter), so that processes started together spread out.
/// let Output::Timeout(at) = sm.poll_output() else { unreachable!() };
/// assert!(at - t0 <= Duration::from_secs(42 * 60) && at - t0 >= Duration::from_secs(37 * 60));
/// # Ok::<(), entraid_token_manager::ConfigError>(())
/// ```
#[derive(Debug)]
pub struct TokenStateMachine {
    config: TokenManagerConfig,
    jitter: Jitter,
    /// The latest instant seen; `None` until started.
    now: Option<Instant>,
    current: Option<Current>,
    in_flight: Option<InFlight>,
    /// When the next request is due, while none is in flight.
    next_request_at: Option<Instant>,
    consecutive_failures: u32,
    next_request_id: u64,
    outputs: VecDeque<Output>,
    /// When the driver last fed the wall clock; `None` if it never does.
    wall_clock_checked_at: Option<Instant>,
    /// How the latest request ended, for [`status`](Self::status).
    last_outcome: Option<RefreshOutcome>,
    /// Requests that succeeded and failed since start, for [`status`](Self::status).
    successful_requests: u64,
    failed_requests: u64,
}

impl TokenStateMachine {
    /// A state machine with this configuration, validated. Jitter is seeded per process.
    pub fn new(config: TokenManagerConfig) -> Result<TokenStateMachine, ConfigError> {
        Self::with_jitter(config, Jitter::from_process_randomness())
    }

    /// Like [`new`](Self::new), with a fixed jitter seed: for tests and simulations that
    /// must replay exactly.
    pub fn with_seed(config: TokenManagerConfig, seed: u64) -> Result<TokenStateMachine, ConfigError> {
        Self::with_jitter(config, Jitter::from_seed(seed))
    }

    fn with_jitter(config: TokenManagerConfig, jitter: Jitter) -> Result<TokenStateMachine, ConfigError> {
        config.validate()?;
        Ok(TokenStateMachine {
            config,
            jitter,
            now: None,
            current: None,
            in_flight: None,
            next_request_at: None,
            consecutive_failures: 0,
            next_request_id: 0,
            outputs: VecDeque::new(),
            wall_clock_checked_at: None,
            last_outcome: None,
            successful_requests: 0,
            failed_requests: 0,
        })
    }

    /// Begins: the first token is requested at once. Calling it again does nothing.
    pub fn start(&mut self, now: Instant) {
        if self.now.is_some() {
            return;
        }
        self.now = Some(now);
        self.next_request_at = Some(now);
        self.process(now);
    }

    /// The result of request `id`. Late responses (after the request timed out) and
    /// responses to superseded requests are ignored.
    pub fn handle_response(&mut self, now: Instant, id: RequestId, result: Result<Token, IdentityError>) {
        let Some(now) = self.observe(now) else {
            tracing::debug!(%id, "response before start ignored");
            return;
        };
        // A response that arrives at or after its deadline lost the race with the timeout.
        self.expire_overdue_request(now);
        match &self.in_flight {
            Some(in_flight) if in_flight.id == id => {
                self.in_flight = None;
                match result {
                    Ok(token) => self.on_token(now, token),
                    Err(error) => self.on_failure(now, error),
                }
            }
            _ => tracing::debug!(%id, "late or superseded token response ignored"),
        }
        self.process(now);
    }

    /// Time has passed: acts on whatever is due. Early or repeated calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(now) = self.observe(now) {
            self.process(now);
        }
    }

    /// Time has passed, and this is the wall clock now: like
    /// [`handle_timeout`](Self::handle_timeout), and also compares the current token's
    /// wall-clock expiry (`Token::expires_at`) with the monotonic schedule.
    ///
    /// When the wall clock says the token has less left than the monotonic clock does
    /// (the machine was suspended, or the clock was set forward), every deadline moves
    /// earlier by the difference: a token expired by the wall clock is dropped and a new
    /// one requested at once, one within its refresh margin is refreshed at once. The
    /// wall clock never postpones anything, so a clock set backwards changes nothing.
    /// After the first call the machine asks to be woken at least every
    /// [`WALL_CLOCK_CHECK_INTERVAL`].
    pub fn handle_wall_clock(&mut self, now: Instant, wall: SystemTime) {
        let Some(now) = self.observe(now) else {
            return;
        };
        self.wall_clock_checked_at = Some(now);
        if let Some(current) = &mut self.current {
            let left_by_wall = current
                .token
                .expires_at()
                .duration_since(wall)
                .unwrap_or(Duration::ZERO);
            let left_by_monotonic = current.expires_at.saturating_duration_since(now);
            if let Some(lost) = left_by_monotonic
                .checked_sub(left_by_wall)
                .filter(|lost| *lost >= WALL_CLOCK_TOLERANCE)
            {
                tracing::warn!(
                    ?lost,
                    token_left = ?left_by_wall,
                    "the wall clock ran ahead of the monotonic clock (suspend and resume, or a clock set \
                     forward): the token's schedule moves earlier"
                );
                current.expires_at = later(now, left_by_wall);
                if let Some(at) = &mut self.next_request_at {
                    *at = at.checked_sub(lost).unwrap_or(now).max(now);
                }
            }
        }
        self.process(now);
    }

    /// The next thing to do. Call after [`start`](Self::start) and every `handle_*`,
    /// until it returns [`Output::Timeout`] or [`Output::NotStarted`].
    pub fn poll_output(&mut self) -> Output {
        if let Some(output) = self.outputs.pop_front() {
            return output;
        }
        match self.next_deadline() {
            Some(at) => Output::Timeout(at),
            None => Output::NotStarted,
        }
    }

    /// The token connections should use now: `None` before the first one arrives and
    /// after it expired with no replacement.
    pub fn current_token(&self) -> Option<&Token> {
        self.current.as_ref().map(|c| &c.token)
    }

    /// The request the machine is waiting for, if any. A driver drops its pending request
    /// when this no longer names it (the request timed out).
    pub fn in_flight_request(&self) -> Option<RequestId> {
        self.in_flight.as_ref().map(|f| f.id)
    }

    /// Failed attempts since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// When the current token expires, on the driver's clock.
    pub fn current_token_expires_at(&self) -> Option<Instant> {
        self.current.as_ref().map(|c| c.expires_at)
    }

    /// Health at a glance: the current token's username and expiry (never its secret),
    /// how the latest request ended, failures in a row, and when the next attempt is due.
    /// `running` is left `true`: only a driver knows when it stopped.
    pub fn status(&self) -> TokenStatus {
        let token = self.current.as_ref().map(|c| &c.token);
        TokenStatus {
            username: token.map(|t| t.username().to_owned()),
            expires_at: token.map(|t| t.expires_at()),
            received_at: token.map(|t| t.received_at()),
            last_outcome: self.last_outcome.clone(),
            consecutive_failures: self.consecutive_failures,
            successful_requests: self.successful_requests,
            failed_requests: self.failed_requests,
            request_in_flight: self.in_flight.is_some(),
            next_attempt_at: self.in_flight.as_ref().map(|f| f.deadline).or(self.next_request_at),
            running: true,
        }
    }

    /// Records `now`, never letting time go backwards. `None` before start.
    fn observe(&mut self, now: Instant) -> Option<Instant> {
        let latest = self.now?.max(now);
        self.now = Some(latest);
        Some(latest)
    }

    /// Everything due at `now`, in order: request timeout, next request, token expiry.
    /// Afterwards every pending deadline lies after `now`.
    fn process(&mut self, now: Instant) {
        // A driver that woke for the wall-clock check but did not feed the wall clock
        // skips this check rather than being woken for it again at once.
        if let Some(at) = self
            .wall_clock_checked_at
            .as_mut()
            .filter(|at| later(**at, WALL_CLOCK_CHECK_INTERVAL) <= now)
        {
            *at = now;
        }
        self.expire_overdue_request(now);
        if self.in_flight.is_none() && self.next_request_at.is_some_and(|at| now >= at) {
            self.issue_request(now);
        }
        if self.current.as_ref().is_some_and(|c| now >= c.expires_at) {
            self.current = None;
            tracing::warn!(
                "Entra ID token expired with no replacement; connections will be refused until a new one arrives"
            );
            self.outputs.push_back(Output::TokenExpired);
        }
    }

    fn expire_overdue_request(&mut self, now: Instant) {
        if let Some(in_flight) = self.in_flight.take_if(|f| now >= f.deadline) {
            let timeout = self.config.token_request_timeout;
            tracing::debug!(id = %in_flight.id, ?timeout, "token request timed out");
            let error = IdentityError::transient(format!(
                "the identity provider did not answer within token_request_timeout ({timeout:?}); \
                 check the network path to Entra ID, or raise the timeout"
            ))
            .with_origin(ErrorOrigin::Timeout);
            self.on_failure(now, error);
        }
    }

    fn issue_request(&mut self, now: Instant) {
        let id = RequestId(self.next_request_id);
        self.next_request_id += 1;
        self.next_request_at = None;
        self.in_flight = Some(InFlight {
            id,
            deadline: later(now, self.config.token_request_timeout),
        });
        tracing::debug!(%id, "requesting a token");
        self.outputs.push_back(Output::RequestToken(id));
    }

    fn on_token(&mut self, now: Instant, token: Token) {
        let lifetime = token.lifetime();
        if lifetime.is_zero() {
            let error = IdentityError::transient(
                "the identity provider returned a token that is already expired (lifetime 0); \
                 check that the provider sets expires_at after received_at",
            )
            .with_origin(ErrorOrigin::ExpiredToken);
            return self.on_failure(now, error);
        }
        self.consecutive_failures = 0;
        self.last_outcome = Some(RefreshOutcome::Renewed { at: now });
        self.successful_requests += 1;
        // The refresh jitter is drawn only when it is on, so configurations without it
        // replay the retry jitter exactly as before.
        let refresh_in = if self.config.refresh_jitter > 0.0 {
            self.config.jittered_refresh_delay(lifetime, self.jitter.unit())
        } else {
            self.config.refresh_delay(lifetime)
        };
        self.next_request_at = Some(later(now, refresh_in));
        let expires_at = later(now, lifetime);
        match &mut self.current {
            Some(current) if current.token.same_secret(&token) => {
                tracing::debug!(
                    ?refresh_in,
                    "identity provider returned the current token again; not announced"
                );
                current.expires_at = expires_at;
            }
            _ => {
                tracing::info!(
                    username = token.username(),
                    expires_in = ?lifetime,
                    ?refresh_in,
                    "Entra ID token renewed"
                );
                self.current = Some(Current {
                    token: token.clone(),
                    expires_at,
                });
                self.outputs.push_back(Output::TokenRenewed(token));
            }
        }
    }

    fn on_failure(&mut self, now: Instant, error: IdentityError) {
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_outcome = Some(RefreshOutcome::Failed {
            at: now,
            error: error.clone(),
        });
        self.failed_requests += 1;
        let attempts = self.consecutive_failures;
        let policy = &self.config.retry;
        let retryable = policy.is_retryable.check(&error);
        let exhausted = !retryable || attempts >= policy.max_attempts;
        let base = if exhausted {
            policy.max_delay
        } else {
            policy.backoff(attempts)
        };
        let mut delay = scale(base, self.jitter.factor(policy.jitter));
        if let Some(after) = error.retry_after() {
            delay = delay.max(self.retry_after_bound(now, after));
        }
        let next_attempt_at = later(now, delay);
        self.next_request_at = Some(next_attempt_at);
        if exhausted {
            tracing::warn!(attempts, retryable, next_attempt_in = ?delay, %error, "Entra ID token request failed");
            self.outputs.push_back(Output::Error(RefreshFailure {
                error,
                attempts,
                retryable,
                next_attempt_at,
            }));
        } else {
            tracing::debug!(attempts, next_attempt_in = ?delay, %error, "token request failed; retrying");
        }
    }

    /// How long a `retry_after` may postpone the next attempt: at most
    /// `max(max_delay, RETRY_AFTER_CAP)`, and never past the point where the current token
    /// would have less left than the refresh rule leaves it (the lower refresh bound, for
    /// tokens longer than it).
    fn retry_after_bound(&self, now: Instant, after: Duration) -> Duration {
        let mut bound = after.min(self.config.retry.max_delay.max(RETRY_AFTER_CAP));
        if let Some(current) = &self.current {
            let lifetime = current.token.lifetime();
            let margin = self
                .config
                .lower_refresh_bound
                .min(lifetime.saturating_sub(self.config.refresh_delay(lifetime)));
            let latest = current.expires_at.checked_sub(margin).unwrap_or(now);
            bound = bound.min(latest.saturating_duration_since(now));
        }
        bound
    }

    fn next_deadline(&self) -> Option<Instant> {
        let request = match &self.in_flight {
            Some(in_flight) => Some(in_flight.deadline),
            None => self.next_request_at,
        };
        let expiry = self.current.as_ref().map(|c| c.expires_at);
        let wall_check = self
            .wall_clock_checked_at
            .map(|at| later(at, WALL_CLOCK_CHECK_INTERVAL));
        [request, expiry, wall_check].into_iter().flatten().min()
    }
}

/// What a driver's builder was given to make its state machine from.
#[derive(Debug)]
pub(crate) enum MachineSource {
    /// A configuration, validated when the driver starts.
    Config(TokenManagerConfig),
    /// A machine the caller built (boxed: it is much larger than a configuration).
    StateMachine(Box<TokenStateMachine>),
}

impl Default for MachineSource {
    fn default() -> Self {
        MachineSource::Config(TokenManagerConfig::default())
    }
}

impl MachineSource {
    pub(crate) fn build(self) -> Result<TokenStateMachine, ConfigError> {
        match self {
            MachineSource::Config(config) => TokenStateMachine::new(config),
            MachineSource::StateMachine(machine) => Ok(*machine),
        }
    }
}

fn later(now: Instant, after: Duration) -> Instant {
    now.checked_add(after.min(MAX_SCHEDULE))
        .or_else(|| now.checked_add(Duration::from_secs(3600)))
        .unwrap_or(now)
}

/// `duration · factor`, saturating instead of panicking when the product does not fit
/// (a `max_delay` near `Duration::MAX` is a valid configuration).
fn scale(duration: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(duration.as_secs_f64() * factor).unwrap_or(MAX_SCHEDULE)
}
