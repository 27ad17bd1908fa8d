//! The subscribing half of one physical connection, RESP2 or RESP3: the I/O of a
//! subscription change, of a reconciliation, and of the `PING` that drains it.

use std::time::Duration;

use redis::RedisResult;
use redis::aio::MultiplexedConnection;

use super::{Change, Subscriptions};
use crate::aio::supervision::within;
use crate::commands::is_refusal;

/// The subscribing half of one physical connection.
#[derive(Clone)]
pub(crate) enum Subscriber {
    Resp2(redis::aio::PubSubSink),
    Resp3(MultiplexedConnection),
}

impl Subscriber {
    pub(crate) async fn change(&mut self, change: Change, names: Vec<Vec<u8>>, timeout: Duration) -> RedisResult<()> {
        let sent = async {
            match (self, change) {
                (Subscriber::Resp2(sink), Change::Subscribe) => sink.subscribe(names).await,
                (Subscriber::Resp2(sink), Change::Unsubscribe) => sink.unsubscribe(names).await,
                (Subscriber::Resp2(sink), Change::PSubscribe) => sink.psubscribe(names).await,
                (Subscriber::Resp2(sink), Change::PUnsubscribe) => sink.punsubscribe(names).await,
                (Subscriber::Resp3(c), Change::Subscribe) => c.subscribe(names).await,
                (Subscriber::Resp3(c), Change::Unsubscribe) => c.unsubscribe(names).await,
                (Subscriber::Resp3(c), Change::PSubscribe) => c.psubscribe(names).await,
                (Subscriber::Resp3(c), Change::PUnsubscribe) => c.punsubscribe(names).await,
            }
        };
        within(timeout, "a subscription change", sent).await
    }

    /// Turns this connection's subscriptions from `from` into `to`. A subscription the
    /// server refuses (an ACL `NOPERM` on one channel) is left out with a log line
    /// instead of failing the connection, so one refused channel never breaks every
    /// later connection; returns those left out. A lost connection or a timeout fails it.
    pub(crate) async fn reconcile(
        &mut self,
        from: &Subscriptions,
        to: &Subscriptions,
        timeout: Duration,
    ) -> RedisResult<Subscriptions> {
        let mut refused = Subscriptions::default();
        for (change, names) in from.changes_to(to) {
            let Err(error) = self.change(change, names.clone(), timeout).await else {
                continue;
            };
            if !is_refusal(&error) {
                return Err(error);
            }
            // One by one, to keep every name the server accepts.
            for name in names {
                match self.change(change, vec![name.clone()], timeout).await {
                    Ok(()) => {}
                    Err(error) if is_refusal(&error) => {
                        tracing::warn!(
                            name = %String::from_utf8_lossy(&name),
                            %error,
                            "the server refused a subscription; it is dropped from the record"
                        );
                        if matches!(change, Change::Subscribe | Change::PSubscribe) {
                            refused.apply(change, &[name]);
                        }
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(refused)
    }

    /// Answered after every message the server sent before it.
    pub(crate) async fn ping(&mut self, timeout: Duration) -> RedisResult<()> {
        let pinged = async {
            match self {
                Subscriber::Resp2(sink) => sink.ping::<redis::Value>().await.map(drop),
                Subscriber::Resp3(c) => crate::commands::health_ping().query_async::<()>(c).await,
            }
        };
        within(timeout, "PING", pinged).await
    }
}
