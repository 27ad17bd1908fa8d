//! `entraid`: run it where your app runs to see why Entra ID authentication to Azure
//! Managed Redis works or does not.
//!
//! - [`doctor`]: which identity the environment selects and why, a token and its claims
//!   (never the token), the audience and this machine's clock, then TCP, TLS, `AUTH` and
//!   `PING` against the cache; each failed check names its cause and its fix.
//! - [`token`]: one token's claims, or (asked for explicitly) the token itself.
//!
//! The binary is a thin `clap` front end over these; they are a library so the checks
//! can be tested one by one.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod checks;
mod claims;
pub mod doctor;
mod probe;
mod render;
mod time_text;
pub mod token;

pub use checks::{Check, Report, Status};
pub use claims::ClaimsSummary;
