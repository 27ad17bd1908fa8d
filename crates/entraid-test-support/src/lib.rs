//! Test doubles shared by the workspace's tests: a fake clock, a scriptable identity
//! provider and JWT-shaped tokens. Not published; never used by library code.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "certificates")]
mod certificate;
mod clock;
mod jwt;
mod provider;

#[cfg(feature = "certificates")]
pub use certificate::{TestCertificate, test_certificate};
pub use clock::FakeClock;
pub use jwt::{jwt, token_with_lifetime};
pub use provider::{ScriptedProvider, Step};
