//! A fleet of token managers, simulated: N processes on M nodes, each running the real
//! [`TokenStateMachine`](entraid_token_manager::TokenStateMachine), against models of
//! the identity endpoints they share, on one virtual clock.
//!
//! Because the state machine is sans-IO, a simulated day of 10 000 processes takes
//! seconds and replays exactly for a seed. The models:
//!
//! - [`imds`]: one IMDS per node, 20 requests/s and 5 concurrent, 429 with `Retry-After`
//!   beyond, managed-identity tokens of about 24 h from its cache;
//! - [`entra`]: Entra's token endpoint, a tenant-wide rate, 429 with `Retry-After: 60`
//!   beyond, service-principal tokens of 60–90 min, outages, slow answers.
//!
//! [`scenario`] lists what the fleet is put through, [`fleet`] runs it, [`metrics`]
//! counts, [`report`] and [`chart`] write `report.md`, `report.json` and one PNG per
//! scenario. The `simulate` binary (`cargo xtask simulate`) ties them together.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod chart;
pub mod endpoint;
pub mod entra;
pub mod fleet;
pub mod imds;
pub mod metrics;
pub mod rate_limit;
pub mod report;
pub mod rng;
pub mod scenario;
