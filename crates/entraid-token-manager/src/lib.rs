//! Keeps an Entra ID access token fresh for as long as a program runs.
//!
//! Two layers:
//!
//! - [`TokenStateMachine`], a sans-IO core: it is given the time and the identity
//!   provider's answers, and says when to request a token, when one is renewed, when to
//!   report an error. It never reads a clock, spawns, sleeps or does I/O, so it runs on
//!   any runtime and its tests drive a fake clock.
//! - Drivers that run it: [`TokenManager`] on tokio (feature `tokio`, on by default) and
//!   [`blocking::TokenManager`] on std threads. Each starts with `start(provider, config)`,
//!   or with `builder(provider)` for the rest (a state machine of the caller's, and for
//!   the tokio driver a runtime handle or a runtime of its own).
//!
//! # Refresh rule
//! A token of lifetime `L` (its own `expires_at − received_at`) received at `t` is
//! refreshed at `t + min(ratio·L, L − lower_refresh_bound)` when `L > lower_refresh_bound`,
//! else at `t + ratio·L` (see [`TokenManagerConfig::refresh_delay`]). One addition to
//! the shared design: the delay is never less than `ratio·lower_refresh_bound` when
//! `L > lower_refresh_bound`, so a token just longer than the bound is not refreshed
//! almost at once (and its successor, and so on).
//!
//! The refresh then comes at a point drawn uniformly in `[(1 − refresh_jitter)·d, d]`
//! after receipt, `d` being the delay above ([`TokenManagerConfig::refresh_delay_band`];
//! default `refresh_jitter` 0.1): never later than the rule, so never later than the
//! lower bound allows. Processes that received their tokens together, or share one (pods
//! on a node get IMDS's cached managed-identity token, with its expiry), otherwise
//! refresh together round after round; the fleet simulation (`cargo xtask simulate`)
//! measured IMDS 429s from exactly that, and none with the band.
//!
//! # Retry rule
//! A failed or timed-out request is retried after
//! `min(max_delay, initial_delay · multiplier^(n−1))`, scaled by a random jitter factor,
//! and never sooner than the error's `retry_after` (itself capped at
//! `max(max_delay, 5 min)`, and never past the point where the current token would have
//! less left than its refresh margin). After `max_attempts` consecutive
//! failures the error is reported and every later wait is `max_delay`: the manager never
//! stops by itself. A success resets the count; a non-retryable error is reported at once.
//!
//! # Logging
//! `tracing` events: token renewed (`info`, with username and lifetime, never the
//! secret), request failed (`warn` when reported, `debug` while retrying silently), token
//! expired (`warn`), manager stopped (`info`).
//!
//! # Feature flags
//!
#![doc = document_features::document_features!()]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

// The crates.io page's code blocks are compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}

pub mod blocking;
mod catch_panic;
mod config;
mod connection;
mod error;
mod jitter;

mod snapshot;
mod spread;
mod state_machine;
mod status;
#[cfg(feature = "tokio")]
mod tokio_driver;

pub use config::{ConfigError, DEFAULT_REFRESH_JITTER, IsRetryable, RetryPolicy, TokenManagerConfig};
pub use connection::{
    Availability, CloseReason, ConnectReason, ConnectionId, ConnectionOutput, ConnectionPolicy, ConnectionPolicyError,
    ConnectionStateMachine, Endpoint, EndpointError, Generation, MAX_POLICY_DURATION, MaintenanceNotice, Renewal,
};
pub use error::{StartError, TokenManagerError};

pub use spread::RenewalSpread;
pub use state_machine::{
    Output, RETRY_AFTER_CAP, RefreshFailure, RequestId, TokenStateMachine, WALL_CLOCK_CHECK_INTERVAL,
};
pub use status::{RefreshOutcome, TokenStatus};
#[cfg(feature = "tokio")]
pub use tokio_driver::{TokenManager, TokenManagerBuilder, TokenStream};
