//! Re-authentication of the connection in use: the token it holds, the renewal `AUTH`
//! (after the spread, retried with backoff), and the transaction that holds it back.

use std::time::{Duration, Instant};

use super::output::{ConnectionId, ConnectionOutput, Generation, Renewal};
use super::policy::CompactPolicy;
use super::probe::Probe;
use super::reconnect::backoff;
use crate::jitter::Jitter;

/// A token as the machine knows it: its generation, expiry and margins.
#[derive(Debug, Clone, Copy)]
pub(super) struct TokenInfo {
    pub(super) generation: Generation,
    pub(super) expires_at: Instant,
    pub(super) replace_margin: Duration,
}

impl TokenInfo {
    /// Past this, a connection still on this token is replaced by one on a newer token.
    pub(super) fn replace_at(&self) -> Instant {
        self.expires_at
            .checked_sub(self.replace_margin)
            .unwrap_or(self.expires_at)
    }

    /// Past this, a connection on this token is closed, and the token is not used to
    /// open one.
    pub(super) fn close_at(&self) -> Instant {
        self.expires_at
            .checked_sub(self.replace_margin / 4)
            .unwrap_or(self.expires_at)
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Auth {
    /// The connection holds the newest token (or nothing newer can be sent).
    UpToDate,
    /// Send the newest token at this instant (spread delay or retry backoff).
    Due(Instant),
    /// An `AUTH` is waiting for its reply.
    InFlight { token: TokenInfo, deadline: Instant },
}

/// The connection in use.
#[derive(Debug)]
pub(super) struct Active {
    pub(super) id: ConnectionId,
    /// When it was opened: a connection lost soon after counts as a failed attempt.
    pub(super) opened_at: Instant,
    pub(super) in_force: TokenInfo,
    pub(super) auth: Auth,
    pub(super) auth_failures: u32,
    /// Inside the user's transaction or `WATCH`: no `AUTH`, no takeover, until the
    /// replace margin.
    pub(super) pinned: bool,
    pub(super) probe: Probe,
}

impl Active {
    /// Opened at `now` with `token`; `newer`: a newer token came meanwhile, sent at once.
    pub(super) fn new(id: ConnectionId, now: Instant, token: TokenInfo, newer: bool) -> Active {
        Active {
            id,
            opened_at: now,
            in_force: token,
            auth: if newer { Auth::Due(now) } else { Auth::UpToDate },
            auth_failures: 0,
            pinned: false,
            probe: Probe::default(),
        }
    }

    /// A new token arrived: it is sent after `spread` unless an `AUTH` is already due or
    /// in flight (that one sends the newest when it goes).
    pub(super) fn renewal_arrived(&mut self, now: Instant, spread: Duration) {
        if let Auth::UpToDate = self.auth {
            self.auth = Auth::Due(now + spread);
        }
    }

    /// How long the token in force has left.
    pub(super) fn left(&self, now: Instant) -> Duration {
        self.in_force.expires_at.saturating_duration_since(now)
    }

    /// A failed or timed-out `AUTH`: the next waits the retry backoff.
    fn auth_failed(&mut self, now: Instant, policy: &CompactPolicy, jitter: &mut Jitter) {
        self.auth_failures = self.auth_failures.saturating_add(1);
        let wait = backoff(
            jitter,
            policy.auth_retry_initial(),
            policy.auth_retry_max(),
            self.auth_failures,
        );
        self.auth = Auth::Due(now + wait);
    }

    /// The reply to an `AUTH` with `generation`'s token (`latest` the newest token). A
    /// late success still counts: the server holds that token.
    pub(super) fn auth_result(
        &mut self,
        now: Instant,
        generation: Generation,
        accepted: bool,
        latest: Option<TokenInfo>,
        policy: &CompactPolicy,
        jitter: &mut Jitter,
    ) {
        let in_flight = match self.auth {
            Auth::InFlight { token, .. } if token.generation == generation => Some(token),
            _ => None,
        };
        if accepted {
            let accepted_token = in_flight.or_else(|| latest.filter(|t| t.generation == generation));
            if let Some(token) = accepted_token
                && token.generation > self.in_force.generation
            {
                self.in_force = token;
            }
            if in_flight.is_some() {
                self.auth_failures = 0;
                self.auth = Auth::UpToDate;
            }
            let newer = latest.is_some_and(|t| t.generation > self.in_force.generation);
            if newer && matches!(self.auth, Auth::UpToDate) {
                self.auth = Auth::Due(now);
            }
        } else if in_flight.is_some() {
            self.auth_failed(now, policy, jitter);
        }
    }

    /// What the renewal asks for at `now`, given the newest usable token: an `AUTH` to
    /// send, or (`true`) a renewal due that [`Renewal::Replace`] takes by a new
    /// connection.
    pub(super) fn step(
        &mut self,
        now: Instant,
        latest: Option<TokenInfo>,
        renewal: Renewal,
        policy: &CompactPolicy,
        jitter: &mut Jitter,
    ) -> (Option<ConnectionOutput>, bool) {
        if let Auth::InFlight { deadline, .. } = self.auth
            && deadline <= now
        {
            self.auth_failed(now, policy, jitter);
        }
        let newer = latest.filter(|t| t.generation > self.in_force.generation);
        // A renewal waits for the end of the user's transaction, but not past the replace
        // margin: then it goes on, and the driver fails the transaction.
        let held = self.pinned && now < self.in_force.replace_at();
        let due = matches!(self.auth, Auth::Due(at) if at <= now);
        // A renewal taken by replacement stays due until a connection with it is up.
        let renew_by_replacing = renewal == Renewal::Replace && newer.is_some() && !held && due;
        if !due || renew_by_replacing || held {
            return (None, renew_by_replacing);
        }
        let Some(token) = newer else {
            self.auth = Auth::UpToDate;
            return (None, false);
        };
        let timeout = policy
            .auth_timeout()
            .min(self.in_force.close_at().saturating_duration_since(now));
        self.auth = Auth::InFlight {
            token,
            deadline: now + timeout,
        };
        let send = ConnectionOutput::SendAuth {
            id: self.id,
            generation: token.generation,
            timeout,
        };
        (Some(send), false)
    }

    /// When the renewal acts next: its `AUTH` is due, or the one in flight times out.
    pub(super) fn auth_deadline(&self) -> Option<Instant> {
        match self.auth {
            Auth::Due(at) | Auth::InFlight { deadline: at, .. } => Some(at),
            Auth::UpToDate => None,
        }
    }
}
