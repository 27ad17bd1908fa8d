//! Async connection types that own their re-authentication, so the server never has to
//! cut one of them. Mirrors `redis::aio`.

mod connection_manager;
mod delivery;
mod pubsub;
mod subscriptions;
mod supervision;
mod supervisor;

pub use crate::supervision::ConnectionStats;
pub use connection_manager::{ConnectionManager, ConnectionManagerConfig};
pub use pubsub::{PubSub, PubSubConfig, PubSubSink, PubSubStats, PubSubStream};
