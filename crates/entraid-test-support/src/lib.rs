//! Test doubles shared by the workspace's tests: a fake clock, a scriptable identity
//! provider, JWT-shaped tokens and a real redis-server launcher. Not published; never used by library code.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "certificates")]
mod certificate;
mod clock;
mod jwt;
#[cfg(feature = "redis")]
mod load;
mod provider;
#[cfg(feature = "redis-server")]
mod redis_server;

#[cfg(feature = "certificates")]
pub use certificate::{TestCertificate, test_certificate};
pub use clock::FakeClock;
pub use jwt::{jwt, token_with_lifetime};
#[cfg(feature = "redis")]
pub use load::{LoadReport, set_get_load};
pub use provider::{ScriptedProvider, Step};
#[cfg(feature = "redis-server")]
pub use redis_server::{RedisServer, free_port};
