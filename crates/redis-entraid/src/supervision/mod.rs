//! Supervision shared by every connection type: the sans-IO [`SupervisionCore`] and what
//! it shares with handles and executors. The async executor is
//! [`aio::supervisor`](crate::aio); the sync one is [`Connection`](crate::Connection).

mod core;
mod counters;
mod id_map;
mod mailbox;
mod reports;

pub(crate) use self::core::{Gone, Io, OpenRequest, SupervisionCore};
pub use self::counters::ConnectionStats;
pub(crate) use self::counters::{Counters, Shared};
pub(crate) use self::id_map::IdMap;
pub(crate) use self::mailbox::Mailbox;
pub(crate) use self::reports::Report;
