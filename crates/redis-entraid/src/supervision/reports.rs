//! What commands and readers found out about connections, for the supervisor: reported
//! from any task, taken by the supervisor's loop.

use std::collections::VecDeque;

use entraid_token_manager::{ConnectionId, MaintenanceNotice};

use super::mailbox::Mailbox;

/// What a report says of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    /// It dropped (an I/O error, a disconnection, its reader ended).
    Lost,
    /// A command on it got no reply in time.
    TimedOut,
    /// The server pushed a maintenance notification on it.
    Maintenance(MaintenanceNotice),
}

/// The reports not yet taken; the same report twice counts once.
#[derive(Default)]
pub(crate) struct Reports(Mailbox<(ConnectionId, Report)>);

impl Reports {
    pub(crate) fn report(&self, id: ConnectionId, report: Report) {
        self.0.post_unless((id, report), |a, b| a == b);
    }

    /// The reports not yet taken, once there is one; cancel-safe.
    pub(crate) fn next(&self) -> impl Future<Output = VecDeque<(ConnectionId, Report)>> + '_ {
        self.0.take()
    }
}
