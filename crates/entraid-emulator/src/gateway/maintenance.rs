//! The maintenance notifications a gateway connection announces (the `maintenance`
//! fault): their pushes, framed as the server frames them, and when the server closes a
//! moved connection or announces a migration's end.

use std::time::Duration;

use tokio::time::Instant;

use crate::faults::Maintenance;

/// What one connection has announced and what follows from it.
#[derive(Debug, Default)]
pub(super) struct Announcements {
    /// When a `MOVING` window ends: the server closes the connection, told or not.
    moved_at: Option<Instant>,
    /// When a migration's end is announced, with its sequence number.
    migrated: Option<(Instant, u64)>,
}

impl Announcements {
    /// Maintenance `seq` starts at `now`: the push that announces it (a move names
    /// `handoff_endpoint` when it has one).
    pub(super) fn start(
        &mut self,
        now: Instant,
        seq: u64,
        maintenance: Maintenance,
        handoff_endpoint: Option<&str>,
    ) -> Vec<u8> {
        match maintenance {
            Maintenance::Moving { time, endpoint } => {
                self.moved_at = Some(now + time);
                moving_push(seq, time, handoff_endpoint.filter(|_| endpoint))
            }
            Maintenance::Migrating { time } => {
                self.migrated = Some((now + time, seq + 1));
                migrating_push(seq, time)
            }
        }
    }

    /// When the server closes the moved connection.
    pub(super) fn moved_at(&self) -> Option<Instant> {
        self.moved_at
    }

    /// When the migration's end is announced.
    pub(super) fn migrated_at(&self) -> Option<Instant> {
        self.migrated.map(|(at, _)| at)
    }

    /// The migration's end, now due: its push.
    pub(super) fn take_migrated(&mut self) -> Option<Vec<u8>> {
        self.migrated.take().map(|(_, seq)| migrated_push(seq))
    }
}

/// `MOVING <seq> <time> <endpoint>`, the endpoint `_` (null) when there is none.
fn moving_push(seq: u64, time: Duration, endpoint: Option<&str>) -> Vec<u8> {
    let endpoint = match endpoint {
        Some(e) => format!("${}\r\n{e}\r\n", e.len()),
        None => "_\r\n".to_owned(),
    };
    format!(">4\r\n$6\r\nMOVING\r\n:{seq}\r\n:{}\r\n{endpoint}", time.as_secs()).into_bytes()
}

/// `MIGRATING <seq> <time> <shards>` (one shard, `1`).
fn migrating_push(seq: u64, time: Duration) -> Vec<u8> {
    format!(">4\r\n$9\r\nMIGRATING\r\n:{seq}\r\n:{}\r\n$1\r\n1\r\n", time.as_secs()).into_bytes()
}

/// `MIGRATED <seq> <shards>`.
fn migrated_push(seq: u64) -> Vec<u8> {
    format!(">3\r\n$8\r\nMIGRATED\r\n:{seq}\r\n$1\r\n1\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushes_are_framed_as_the_server_frames_them() {
        assert_eq!(
            moving_push(3, Duration::from_secs(15), Some("127.0.0.1:7000")),
            b">4\r\n$6\r\nMOVING\r\n:3\r\n:15\r\n$14\r\n127.0.0.1:7000\r\n".to_vec()
        );
        assert_eq!(
            moving_push(3, Duration::from_secs(15), None),
            b">4\r\n$6\r\nMOVING\r\n:3\r\n:15\r\n_\r\n".to_vec()
        );
        assert_eq!(
            migrating_push(4, Duration::from_secs(2)),
            b">4\r\n$9\r\nMIGRATING\r\n:4\r\n:2\r\n$1\r\n1\r\n".to_vec()
        );
        assert_eq!(migrated_push(5), b">3\r\n$8\r\nMIGRATED\r\n:5\r\n$1\r\n1\r\n".to_vec());
    }

    #[test]
    fn a_move_closes_at_its_time_and_a_migration_ends_numbered_after_its_start() {
        let now = Instant::now();
        let mut a = Announcements::default();
        let push = a.start(
            now,
            7,
            Maintenance::Moving {
                time: Duration::from_secs(10),
                endpoint: false,
            },
            Some("h:1"),
        );
        assert!(push.ends_with(b"_\r\n"), "no endpoint unless the fault names one");
        assert_eq!(a.moved_at(), Some(now + Duration::from_secs(10)));
        a.start(
            now,
            8,
            Maintenance::Migrating {
                time: Duration::from_secs(2),
            },
            None,
        );
        assert_eq!(a.migrated_at(), Some(now + Duration::from_secs(2)));
        assert_eq!(a.take_migrated(), Some(migrated_push(9)));
        assert_eq!(a.migrated_at(), None);
    }
}
