//! The situations the fleet is put through: when processes start, which identity they
//! use, what fails and when.

use std::time::Duration;

use crate::endpoint::Outage;
use crate::entra::Latency;

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Which endpoint a process asks for its tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// Managed identity: its node's IMDS, which renews its cache from Entra.
    ManagedIdentity,
    /// Service principal: Entra's token endpoint directly.
    ServicePrincipal,
}

impl Identity {
    /// A short name for tables.
    pub fn label(self) -> &'static str {
        match self {
            Identity::ManagedIdentity => "managed identity (IMDS)",
            Identity::ServicePrincipal => "service principal (Entra)",
        }
    }
}

/// When the processes start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Starts {
    /// Uniformly within this window from 0: a deploy.
    Wave(Duration),
    /// Uniformly over this span from 0: a fleet that has been running, measured after it.
    Spread(Duration),
}

/// One scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Its name in reports and file names.
    pub name: &'static str,
    /// What it shows, one line.
    pub what: String,
    /// Which identity every process uses.
    pub identity: Identity,
    /// When processes start.
    pub starts: Starts,
    /// Virtual time simulated.
    pub run_for: Duration,
    /// Counting starts here (after the warm-up).
    pub measure_from: Duration,
    /// Entra's token endpoint answers nothing during this span.
    pub entra_outage: Option<Outage>,
    /// The first node's IMDS answers nothing during this span.
    pub imds_outage: Option<Outage>,
    /// How long Entra takes to answer.
    pub entra_latency: Latency,
}

impl Scenario {
    /// The outage this scenario is about, if any, and what went down.
    pub fn outage(&self) -> Option<(&'static str, Outage)> {
        match (self.entra_outage, self.imds_outage) {
            (Some(o), _) => Some(("Entra", o)),
            (None, Some(o)) => Some(("IMDS of one node", o)),
            (None, None) => None,
        }
    }
}

/// The scenarios; `wave` is how long the deploy wave takes to start every pod.
pub fn all(wave: Duration) -> Vec<Scenario> {
    let outage = |start: Duration, length: Duration| {
        Some(Outage {
            start,
            end: start + length,
        })
    };
    // A service-principal fleet started over 90 min is in its steady state after 2 h.
    let sp_fleet = |name, what: String| Scenario {
        name,
        what,
        identity: Identity::ServicePrincipal,
        starts: Starts::Spread(90 * MIN),
        run_for: 8 * HOUR,
        measure_from: 2 * HOUR,
        entra_outage: None,
        imds_outage: None,
        entra_latency: Latency::healthy(),
    };
    vec![
        Scenario {
            name: "deploy-wave",
            what: format!(
                "every pod starts within {} s, then 48 h: the IMDS cache's 24 h tokens and its renewal",
                wave.as_secs()
            ),
            identity: Identity::ManagedIdentity,
            starts: Starts::Wave(wave),
            run_for: 48 * HOUR,
            measure_from: Duration::ZERO,
            entra_outage: None,
            imds_outage: None,
            entra_latency: Latency::healthy(),
        },
        Scenario {
            name: "steady-day",
            what: "pods started at random over a day, measured over the next day".to_owned(),
            identity: Identity::ManagedIdentity,
            starts: Starts::Spread(24 * HOUR),
            run_for: 48 * HOUR,
            measure_from: 24 * HOUR,
            entra_outage: None,
            imds_outage: None,
            entra_latency: Latency::healthy(),
        },
        Scenario {
            entra_outage: outage(3 * HOUR, 30 * MIN),
            ..sp_fleet(
                "entra-outage-30m",
                "Entra answers nothing for 30 min (requests hang until their timeout)".to_owned(),
            )
        },
        Scenario {
            entra_outage: outage(3 * HOUR, 2 * HOUR),
            ..sp_fleet(
                "entra-outage-2h",
                "Entra answers nothing for 2 h, longer than any token".to_owned(),
            )
        },
        Scenario {
            name: "imds-outage-node",
            what: format!(
                "one node's IMDS answers nothing from 16 h to 18 h after a {} s deploy wave, when its pods \
                 are due for their first refresh (at 70 % of 24 h)",
                wave.as_secs()
            ),
            identity: Identity::ManagedIdentity,
            starts: Starts::Wave(wave),
            run_for: 24 * HOUR,
            measure_from: Duration::ZERO,
            entra_outage: None,
            imds_outage: outage(16 * HOUR, 2 * HOUR),
            entra_latency: Latency::healthy(),
        },
        Scenario {
            entra_latency: Latency::slow(),
            ..sp_fleet(
                "slow-entra",
                "Entra answers slowly: median 500 ms, p99 5 s, tail cut at 30 s".to_owned(),
            )
        },
    ]
}
