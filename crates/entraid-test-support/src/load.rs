//! Steady SET/GET traffic on a connection, counting what failed.

use std::time::Duration;

/// What a load run did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Commands that succeeded.
    pub ok: u64,
    /// Commands that failed.
    pub failed: u64,
    /// The first few error messages, for the assertion message.
    pub first_errors: Vec<String>,
    /// When the last command failed (tokio's clock).
    pub last_failure_at: Option<tokio::time::Instant>,
}

/// `tasks` tasks doing SET then GET on their own keys, back to back, for `duration`.
#[allow(clippy::unwrap_used)]
pub async fn set_get_load<C>(connection: C, tasks: usize, duration: Duration) -> LoadReport
where
    C: redis::aio::ConnectionLike + Clone + Send + 'static,
{
    let deadline = tokio::time::Instant::now() + duration;
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let mut connection = connection.clone();
            tokio::spawn(async move {
                let mut report = LoadReport::default();
                let mut i = 0u64;
                while tokio::time::Instant::now() < deadline {
                    i += 1;
                    let key = format!("load:{task}:{}", i % 97);
                    let set: redis::RedisResult<()> =
                        redis::cmd("SET").arg(&key).arg(i).query_async(&mut connection).await;
                    let get: redis::RedisResult<u64> = redis::cmd("GET").arg(&key).query_async(&mut connection).await;
                    let mut any_failed = false;
                    for result in [set.map(drop), get.map(drop)] {
                        match result {
                            Ok(()) => report.ok += 1,
                            Err(e) => {
                                any_failed = true;
                                report.failed += 1;
                                report.last_failure_at = Some(tokio::time::Instant::now());
                                if report.first_errors.len() < 3 {
                                    report.first_errors.push(e.to_string());
                                }
                            }
                        }
                    }
                    // A command that fails at once (a dead connection) returns without
                    // waiting on anything: without a yield, eight such loops would hold
                    // both worker threads and starve the tasks that recover (a client's
                    // reconnect, another client's token renewal).
                    if any_failed {
                        tokio::task::yield_now().await;
                    }
                }
                report
            })
        })
        .collect();
    let mut total = LoadReport::default();
    for handle in handles {
        let report = handle.await.unwrap();
        total.ok += report.ok;
        total.failed += report.failed;
        total.first_errors.extend(report.first_errors);
        total.last_failure_at = total.last_failure_at.max(report.last_failure_at);
    }
    total
}
