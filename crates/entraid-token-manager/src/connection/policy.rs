//! The machine's timing rules: [`ConnectionPolicy`] as users set it, validated, and
//! [`CompactPolicy`], the copy in whole milliseconds kept beside every connection.

use std::time::Duration;

/// Timing rules of a [`ConnectionStateMachine`](super::ConnectionStateMachine).
///
/// Margins scale down for short tokens: each is at most a tenth (replace) or a fortieth
/// (close) of the token's lifetime, so a token of a few seconds still leaves room for
/// the renewal, which the token manager sends at least 30 % of a lifetime before expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionPolicy {
    /// Renewals reach each connection after a random delay in `[0, reauth_spread)`, and
    /// never more than a tenth of the time the token in force has left. Default 5 s.
    pub reauth_spread: Duration,
    /// How long one re-authentication `AUTH` may take before it counts as failed.
    /// Default 5 s (a server stall of a few seconds is survived by waiting).
    pub auth_timeout: Duration,
    /// First wait after a failed `AUTH`; doubles per failure up to `auth_retry_max`.
    /// Default 200 ms.
    pub auth_retry_initial: Duration,
    /// Longest wait between two `AUTH` attempts. Default 5 s.
    pub auth_retry_max: Duration,
    /// When the token in force has this little left and no `AUTH` with a newer token has
    /// succeeded, a new connection is opened with the newest token and takes over
    /// (make-before-break). Capped at a tenth of the token's lifetime. Default 30 s.
    /// The old connection is closed at a quarter of this margin before its token
    /// expires, so the server never has to cut it.
    pub replace_margin: Duration,
    /// How long opening a connection (TCP, TLS, `HELLO`/`AUTH`) may take. Default 5 s.
    pub connect_timeout: Duration,
    /// First wait after a failed connection attempt; doubles per failure up to
    /// `reconnect_max`. Default 100 ms.
    pub reconnect_initial: Duration,
    /// Longest wait between two connection attempts. Default 10 s.
    pub reconnect_max: Duration,
    /// A connection lost sooner than this after it opened counts as a failed attempt, so
    /// a server that drops every connection at once meets the reconnect backoff instead
    /// of a tight loop of TLS handshakes and `AUTH`s. Default 1 s.
    pub stable_after: Duration,
    /// How long a health `PING` may wait, once a command on the connection got no reply
    /// in time; unanswered, the connection is taken for a silent path (a node gone
    /// behind a load balancer, a failover that left no reset) and replaced
    /// make-before-break. Default 2 s: longer than a server stall worth waiting out.
    pub probe_timeout: Duration,
    /// The response timeout commands get while the server announces maintenance
    /// (`MIGRATING`, `FAILING_OVER`, `MOVING`), until it announces the end (or, if it
    /// never does, three times the announced time). `None`: timeouts are never relaxed.
    /// Default 10 s, as the other Redis clients.
    pub relaxed_timeout: Option<Duration>,
}

impl Default for ConnectionPolicy {
    fn default() -> Self {
        ConnectionPolicy {
            reauth_spread: Duration::from_secs(5),
            auth_timeout: Duration::from_secs(5),
            auth_retry_initial: Duration::from_millis(200),
            auth_retry_max: Duration::from_secs(5),
            replace_margin: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            reconnect_initial: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(10),
            stable_after: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(2),
            relaxed_timeout: Some(Duration::from_secs(10)),
        }
    }
}

/// The longest duration a [`ConnectionPolicy`] takes: a day. Every timing rule is
/// about tokens that live at most about a day (managed identity); a longer value (such as
/// `Duration::MAX` meant as "no limit") is refused rather than overflowing an instant.
pub const MAX_POLICY_DURATION: Duration = Duration::from_secs(24 * 3600);

/// A [`ConnectionPolicy`] value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionPolicyError {
    /// A timeout of zero would fail every attempt.
    #[error("connection policy: {0} must be greater than zero")]
    Zero(&'static str),
    /// A duration longer than [`MAX_POLICY_DURATION`].
    #[error("connection policy: {name} ({value:?}) is longer than a day; give at most {max:?}", max = MAX_POLICY_DURATION)]
    TooLong {
        /// The setting's name.
        name: &'static str,
        /// Its value.
        value: Duration,
    },
    /// A retry range whose maximum is below its start.
    #[error("connection policy: {max} ({max_value:?}) is below {initial} ({initial_value:?}); raise the maximum")]
    MaxBelowInitial {
        /// The maximum's name.
        max: &'static str,
        /// Its value.
        max_value: Duration,
        /// The initial delay's name.
        initial: &'static str,
        /// Its value.
        initial_value: Duration,
    },
}

impl ConnectionPolicy {
    /// Checks every value; the machine refuses a policy that fails this.
    pub fn validate(&self) -> Result<(), ConnectionPolicyError> {
        for (name, value) in [
            ("reauth_spread", self.reauth_spread),
            ("auth_timeout", self.auth_timeout),
            ("auth_retry_initial", self.auth_retry_initial),
            ("auth_retry_max", self.auth_retry_max),
            ("replace_margin", self.replace_margin),
            ("connect_timeout", self.connect_timeout),
            ("reconnect_initial", self.reconnect_initial),
            ("reconnect_max", self.reconnect_max),
            ("stable_after", self.stable_after),
            ("probe_timeout", self.probe_timeout),
            ("relaxed_timeout", self.relaxed_timeout.unwrap_or_default()),
        ] {
            if value > MAX_POLICY_DURATION {
                return Err(ConnectionPolicyError::TooLong { name, value });
            }
        }
        for (name, value) in [
            ("probe_timeout", self.probe_timeout),
            ("auth_timeout", self.auth_timeout),
            ("auth_retry_initial", self.auth_retry_initial),
            ("connect_timeout", self.connect_timeout),
            ("reconnect_initial", self.reconnect_initial),
            (
                "relaxed_timeout (None turns relaxing off)",
                self.relaxed_timeout.unwrap_or(Duration::MAX),
            ),
        ] {
            if value.is_zero() {
                return Err(ConnectionPolicyError::Zero(name));
            }
        }
        for (max, max_value, initial, initial_value) in [
            (
                "auth_retry_max",
                self.auth_retry_max,
                "auth_retry_initial",
                self.auth_retry_initial,
            ),
            (
                "reconnect_max",
                self.reconnect_max,
                "reconnect_initial",
                self.reconnect_initial,
            ),
        ] {
            if max_value < initial_value {
                return Err(ConnectionPolicyError::MaxBelowInitial {
                    max,
                    max_value,
                    initial,
                    initial_value,
                });
            }
        }
        Ok(())
    }
}

/// A validated [`ConnectionPolicy`] in whole milliseconds (rounded up), kept beside
/// every connection: a fourth of the size. Every value is at most a day
/// ([`MAX_POLICY_DURATION`]), so it fits in 32 bits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CompactPolicy {
    reauth_spread: u32,
    auth_timeout: u32,
    auth_retry_initial: u32,
    auth_retry_max: u32,
    replace_margin: u32,
    connect_timeout: u32,
    reconnect_initial: u32,
    reconnect_max: u32,
    stable_after: u32,
    probe_timeout: u32,
    /// Zero: never relaxed.
    relaxed_timeout: u32,
}

fn millis_up(duration: Duration) -> u32 {
    u32::try_from(duration.as_nanos().div_ceil(1_000_000)).unwrap_or(u32::MAX)
}

impl CompactPolicy {
    pub(crate) fn new(policy: &ConnectionPolicy) -> CompactPolicy {
        CompactPolicy {
            reauth_spread: millis_up(policy.reauth_spread),
            auth_timeout: millis_up(policy.auth_timeout),
            auth_retry_initial: millis_up(policy.auth_retry_initial),
            auth_retry_max: millis_up(policy.auth_retry_max),
            replace_margin: millis_up(policy.replace_margin),
            connect_timeout: millis_up(policy.connect_timeout),
            reconnect_initial: millis_up(policy.reconnect_initial),
            reconnect_max: millis_up(policy.reconnect_max),
            stable_after: millis_up(policy.stable_after),
            probe_timeout: millis_up(policy.probe_timeout),
            relaxed_timeout: policy.relaxed_timeout.map_or(0, millis_up),
        }
    }

    pub(crate) fn relaxed_timeout(&self) -> Option<Duration> {
        (self.relaxed_timeout != 0).then(|| Duration::from_millis(u64::from(self.relaxed_timeout)))
    }
}

macro_rules! durations {
    ($($name:ident),*) => {
        impl CompactPolicy {
            $(pub(crate) fn $name(&self) -> Duration {
                Duration::from_millis(u64::from(self.$name))
            })*
        }
    };
}

durations!(
    reauth_spread,
    auth_timeout,
    auth_retry_initial,
    auth_retry_max,
    replace_margin,
    connect_timeout,
    reconnect_initial,
    reconnect_max,
    stable_after,
    probe_timeout
);
