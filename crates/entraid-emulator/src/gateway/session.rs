//! The gateway's policy for one client connection, as Azure Managed Redis applies it,
//! without sockets: what a command may do before `AUTH`, how `AUTH` and `HELLO … AUTH`
//! are checked and rewritten for the upstream, when the connection's token expires, and
//! the modes that change that (RESP2 subscribed mode, `MULTI`/`EXEC`/`DISCARD`, the
//! maintenance opt-in).

use std::collections::HashSet;
use std::time::{Duration, UNIX_EPOCH};

use tokio::time::Instant;

use crate::access_token;
use crate::resp::encode_command;
use crate::stats::GatewayStats;
use crate::token_service::TokenService;

pub(super) const NOAUTH: &[u8] = b"-NOAUTH Authentication required.\r\n";
const HELLO_NOAUTH: &[u8] = b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n";
const INVALID_USER: &[u8] = b"entraid-emulator-no-such-user";

/// What one client connection has proven.
pub(super) struct Session {
    pub(super) id: u64,
    pub(super) authenticated: bool,
    /// When the token that authenticated this connection expires.
    pub(super) expires_at: Option<Instant>,
    /// When the `drop_after_auth` fault closes it.
    pub(super) drop_at: Option<Instant>,
    /// Inside `MULTI`: an `AUTH` is queued, and moves the deadline only at `EXEC`.
    in_multi: bool,
    /// The deadline an `AUTH` queued in the transaction sets at `EXEC`.
    queued_expiry: Option<Instant>,
    /// The connection speaks RESP3 (after a successful `HELLO 3`).
    resp3: bool,
    /// Channels, patterns and shard channels it is subscribed to, by kind.
    subscriptions: HashSet<(SubscriptionKind, Vec<u8>)>,
    /// It asked for maintenance notifications (`CLIENT MAINT_NOTIFICATIONS ON`).
    maintenance: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SubscriptionKind {
    Channel,
    Pattern,
    Shard,
}

pub(super) enum Route {
    Forward(Vec<u8>),
    Reply(&'static [u8]),
    ReplyAndClose(&'static [u8]),
}

impl Session {
    /// A connection that has proven nothing yet.
    pub(super) fn new(id: u64) -> Session {
        Session {
            id,
            authenticated: false,
            expires_at: None,
            drop_at: None,
            in_multi: false,
            queued_expiry: None,
            resp3: false,
            subscriptions: HashSet::new(),
            maintenance: false,
        }
    }

    /// Where a client's command goes, and what it changes of the session.
    pub(super) fn route(&mut self, mut args: Vec<Vec<u8>>, service: &TokenService, stats: &GatewayStats) -> Route {
        let name = args[0].to_ascii_uppercase();
        match name.as_slice() {
            b"AUTH" if self.authenticated && self.cannot_authenticate() => {
                self.refuse_in_subscribed_mode(stats);
                Route::Forward(encode_command(&upstream_auth(true)))
            }
            b"AUTH" => {
                let (user, token) = match args.len() {
                    2 => ("default".to_owned(), args[1].clone()),
                    3 => (String::from_utf8_lossy(&args[1]).into_owned(), args[2].clone()),
                    _ => return Route::Forward(encode_command(&args)),
                };
                let valid = self.check(&user, &token, service, stats);
                Route::Forward(encode_command(&upstream_auth(valid)))
            }
            b"HELLO" => {
                let auth_at = args.iter().position(|a| a.eq_ignore_ascii_case(b"AUTH"));
                match auth_at {
                    Some(i) if args.len() > i + 2 && self.authenticated && self.cannot_authenticate() => {
                        self.refuse_in_subscribed_mode(stats);
                        let auth = upstream_auth(true);
                        args[i + 1] = auth[1].clone();
                        args[i + 2] = auth[2].clone();
                        Route::Forward(encode_command(&args))
                    }
                    Some(i) if args.len() > i + 2 => {
                        let user = String::from_utf8_lossy(&args[i + 1]).into_owned();
                        let valid = self.check(&user, &args[i + 2].clone(), service, stats);
                        if valid {
                            self.resp3 = args.get(1).is_some_and(|v| v.as_slice() == b"3");
                        }
                        let auth = upstream_auth(valid);
                        args[i + 1] = auth[1].clone();
                        args[i + 2] = auth[2].clone();
                        Route::Forward(encode_command(&args))
                    }
                    _ if !self.authenticated => Route::Reply(HELLO_NOAUTH),
                    _ => {
                        match args.get(1).map(Vec::as_slice) {
                            Some(b"3") => self.resp3 = true,
                            Some(b"2") => self.resp3 = false,
                            _ => {}
                        }
                        Route::Forward(encode_command(&args))
                    }
                }
            }
            b"QUIT" if !self.authenticated => Route::ReplyAndClose(b"+OK\r\n"),
            _ if !self.authenticated => Route::Reply(NOAUTH),
            b"CLIENT"
                if args
                    .get(1)
                    .is_some_and(|a| a.eq_ignore_ascii_case(b"MAINT_NOTIFICATIONS")) =>
            {
                if service.faults.reject_maint_notifications() {
                    // The upstream is open-source Redis: it refuses the subcommand itself.
                    return Route::Forward(encode_command(&args));
                }
                // The gateway sends the notifications; the upstream answers `+OK` in
                // its place, so replies stay in order.
                self.maintenance = args.get(2).is_some_and(|a| a.eq_ignore_ascii_case(b"ON"));
                if self.maintenance {
                    stats.bump(|s| &s.maintenance_opt_ins);
                }
                Route::Forward(encode_command(&[b"CLIENT".to_vec(), b"REPLY".to_vec(), b"ON".to_vec()]))
            }
            _ => {
                self.track(&name, &args);
                self.follow_transaction(&name);
                Route::Forward(encode_command(&args))
            }
        }
    }

    /// Whether maintenance notifications go to this connection: asked for, on RESP3.
    pub(super) fn listens_for_maintenance(&self) -> bool {
        self.authenticated && self.maintenance && self.resp3
    }

    /// Follows `MULTI`/`EXEC`/`DISCARD`, as the server runs them: an `AUTH` queued in a
    /// transaction takes effect at `EXEC`, and not at all after `DISCARD`.
    fn follow_transaction(&mut self, name: &[u8]) {
        match name {
            b"MULTI" => self.in_multi = true,
            b"EXEC" => {
                self.in_multi = false;
                if let Some(at) = self.queued_expiry.take() {
                    self.expires_at = Some(at);
                }
            }
            b"DISCARD" | b"RESET" => {
                self.in_multi = false;
                self.queued_expiry = None;
            }
            _ => {}
        }
    }

    /// Validates a token; on success the connection is authenticated until its expiry.
    fn check(&mut self, user: &str, token: &[u8], service: &TokenService, stats: &GatewayStats) -> bool {
        if self.authenticated && service.faults.take_reauth_failure() {
            stats.bump(|s| &s.auth_failures);
            tracing::info!(connection = self.id, user, "re-authentication refused (injected fault)");
            return false;
        }
        let token = String::from_utf8_lossy(token);
        match access_token::validate(&service.signer, &service.principals, user, &token) {
            Ok(exp) => {
                // The connection lives until the instant `exp` names.
                let left = (UNIX_EPOCH + Duration::from_secs(exp))
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                let at = Instant::now() + left;
                if self.authenticated && self.in_multi {
                    // Queued by the server: in force only if the transaction runs.
                    self.queued_expiry = Some(at);
                } else {
                    self.expires_at = Some(at);
                }
                if self.authenticated {
                    stats.bump(|s| &s.reauthentications);
                    tracing::info!(
                        connection = self.id,
                        user,
                        expires_in_s = left.as_secs(),
                        "re-authenticated"
                    );
                } else {
                    stats.bump(|s| &s.authentications);
                    if service.faults.drop_after_auth() {
                        self.drop_at = Some(Instant::now() + Duration::from_millis(100));
                    }
                    tracing::info!(
                        connection = self.id,
                        user,
                        expires_in_s = left.as_secs(),
                        "authenticated"
                    );
                }
                self.authenticated = true;
                true
            }
            Err(why) => {
                stats.bump(|s| &s.auth_failures);
                tracing::info!(connection = self.id, user, %why, "AUTH refused");
                false
            }
        }
    }

    /// In RESP2 subscribed mode the server refuses `AUTH`, as Redis does.
    fn cannot_authenticate(&self) -> bool {
        !self.resp3 && !self.subscriptions.is_empty()
    }

    /// Follows the subscribed mode from the commands, which the server runs in order.
    fn track(&mut self, name: &[u8], args: &[Vec<u8>]) {
        let (kind, subscribe) = match name {
            b"SUBSCRIBE" => (SubscriptionKind::Channel, true),
            b"PSUBSCRIBE" => (SubscriptionKind::Pattern, true),
            b"SSUBSCRIBE" => (SubscriptionKind::Shard, true),
            b"UNSUBSCRIBE" => (SubscriptionKind::Channel, false),
            b"PUNSUBSCRIBE" => (SubscriptionKind::Pattern, false),
            b"SUNSUBSCRIBE" => (SubscriptionKind::Shard, false),
            b"RESET" => {
                self.subscriptions.clear();
                self.resp3 = false;
                return;
            }
            _ => return,
        };
        let names = &args[1..];
        if subscribe {
            self.subscriptions.extend(names.iter().map(|n| (kind, n.clone())));
        } else if names.is_empty() {
            self.subscriptions.retain(|(k, _)| *k != kind);
        } else {
            for n in names {
                self.subscriptions.remove(&(kind, n.clone()));
            }
        }
    }

    /// `AUTH` on a RESP2 subscribed connection: the caller passes it on without the token
    /// so the server answers with its own error, in order; the expiry does not move.
    fn refuse_in_subscribed_mode(&self, stats: &GatewayStats) {
        stats.bump(|s| &s.auth_failures);
        tracing::info!(
            connection = self.id,
            "AUTH refused: a RESP2 connection in subscribed mode cannot re-authenticate"
        );
    }
}

/// The `AUTH` sent upstream: the default user (no password) accepts any password; a user
/// that does not exist is refused with the server's own `WRONGPASS`.
fn upstream_auth(valid: bool) -> Vec<Vec<u8>> {
    if valid {
        vec![b"AUTH".to_vec(), b"default".to_vec(), b"entraid-emulator".to_vec()]
    } else {
        vec![b"AUTH".to_vec(), INVALID_USER.to_vec(), b"x".to_vec()]
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::stats::Stats;

    fn service() -> Arc<TokenService> {
        crate::token_service::tests::service()
    }

    fn stats(service: &TokenService) -> GatewayStats {
        GatewayStats {
            total: service.stats.clone(),
            node: Arc::new(Stats::default()),
        }
    }

    fn args(words: &[&[u8]]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.to_vec()).collect()
    }

    /// A valid token for the default service principal: (`oid`, token).
    fn token(service: &TokenService) -> (Vec<u8>, Vec<u8>) {
        let principal = &service.principals.service_principals[0];
        let token = service.issue(&principal.object_id, &principal.client_id).unwrap().token;
        (principal.object_id.clone().into_bytes(), token.into_bytes())
    }

    fn forwarded(route: Route) -> Vec<u8> {
        match route {
            Route::Forward(bytes) => bytes,
            Route::Reply(bytes) | Route::ReplyAndClose(bytes) => {
                panic!("answered {:?}", String::from_utf8_lossy(bytes))
            }
        }
    }

    #[tokio::test]
    async fn before_auth_only_auth_hello_auth_and_quit_are_taken() {
        let service = service();
        let stats = stats(&service);
        let mut session = Session::new(1);
        assert!(matches!(
            session.route(args(&[b"GET", b"k"]), &service, &stats),
            Route::Reply(NOAUTH)
        ));
        assert!(matches!(
            session.route(args(&[b"HELLO", b"3"]), &service, &stats),
            Route::Reply(HELLO_NOAUTH)
        ));
        assert!(matches!(
            session.route(args(&[b"quit"]), &service, &stats),
            Route::ReplyAndClose(b"+OK\r\n")
        ));
        // A bad token is passed on as a user the server does not know, so it answers
        // `WRONGPASS` in order.
        let bad = forwarded(session.route(args(&[b"AUTH", b"someone", b"not-a-jwt"]), &service, &stats));
        assert_eq!(bad, encode_command(&upstream_auth(false)));
        assert!(!session.authenticated);
        let (oid, token) = token(&service);
        let good = forwarded(session.route(vec![b"AUTH".to_vec(), oid, token], &service, &stats));
        assert_eq!(good, encode_command(&upstream_auth(true)));
        assert!(session.authenticated && session.expires_at.is_some());
    }

    #[tokio::test]
    async fn hello_3_auth_authenticates_and_switches_to_resp3() {
        let service = service();
        let stats = stats(&service);
        let mut session = Session::new(1);
        let (oid, token) = token(&service);
        let hello = vec![b"HELLO".to_vec(), b"3".to_vec(), b"AUTH".to_vec(), oid, token];
        let sent = forwarded(session.route(hello, &service, &stats));
        assert!(session.authenticated && session.resp3);
        let auth = upstream_auth(true);
        assert_eq!(
            sent,
            encode_command(&[
                b"HELLO".to_vec(),
                b"3".to_vec(),
                b"AUTH".to_vec(),
                auth[1].clone(),
                auth[2].clone()
            ])
        );
    }

    #[tokio::test]
    async fn a_resp2_subscriber_cannot_re_authenticate_and_keeps_its_expiry() {
        let service = service();
        let stats = stats(&service);
        let mut session = Session::new(1);
        let (oid, token) = token(&service);
        forwarded(session.route(vec![b"AUTH".to_vec(), oid.clone(), token.clone()], &service, &stats));
        let expiry = session.expires_at;
        forwarded(session.route(args(&[b"SUBSCRIBE", b"a", b"b"]), &service, &stats));
        assert!(session.cannot_authenticate());
        // Passed on without the token (the server refuses AUTH in this mode itself).
        let sent = forwarded(session.route(vec![b"AUTH".to_vec(), oid.clone(), token.clone()], &service, &stats));
        assert_eq!(sent, encode_command(&upstream_auth(true)));
        assert_eq!(session.expires_at, expiry);
        // Leaving subscribed mode (all channels at once) makes AUTH work again.
        forwarded(session.route(args(&[b"UNSUBSCRIBE"]), &service, &stats));
        assert!(!session.cannot_authenticate());
        forwarded(session.route(args(&[b"PSUBSCRIBE", b"p*"]), &service, &stats));
        forwarded(session.route(args(&[b"RESET"]), &service, &stats));
        assert!(!session.cannot_authenticate());
    }

    #[tokio::test]
    async fn an_auth_queued_in_a_transaction_moves_the_expiry_only_at_exec() {
        let service = service();
        let stats = stats(&service);
        let mut session = Session::new(1);
        let (oid, token) = token(&service);
        forwarded(session.route(vec![b"AUTH".to_vec(), oid.clone(), token.clone()], &service, &stats));
        let first = session.expires_at;
        // Discarded: the queued AUTH never runs.
        forwarded(session.route(args(&[b"MULTI"]), &service, &stats));
        std::thread::sleep(std::time::Duration::from_millis(5));
        forwarded(session.route(vec![b"AUTH".to_vec(), oid.clone(), token.clone()], &service, &stats));
        forwarded(session.route(args(&[b"DISCARD"]), &service, &stats));
        assert_eq!(session.expires_at, first);
        // Run: in force at EXEC.
        forwarded(session.route(args(&[b"MULTI"]), &service, &stats));
        forwarded(session.route(vec![b"AUTH".to_vec(), oid, token], &service, &stats));
        assert_eq!(session.expires_at, first, "queued, not yet in force");
        forwarded(session.route(args(&[b"EXEC"]), &service, &stats));
        assert!(session.expires_at.is_some());
    }

    #[tokio::test]
    async fn maintenance_notifications_are_the_gateways_and_need_resp3() {
        let service = service();
        let stats = stats(&service);
        let mut session = Session::new(1);
        let (oid, token) = token(&service);
        forwarded(session.route(vec![b"AUTH".to_vec(), oid, token], &service, &stats));
        let sent = forwarded(session.route(args(&[b"CLIENT", b"MAINT_NOTIFICATIONS", b"ON"]), &service, &stats));
        // The upstream answers `+OK` in the gateway's place, keeping replies in order.
        assert_eq!(sent, encode_command(&args(&[b"CLIENT", b"REPLY", b"ON"])));
        assert!(!session.listens_for_maintenance(), "pushes need RESP3");
        forwarded(session.route(args(&[b"HELLO", b"3"]), &service, &stats));
        assert!(session.listens_for_maintenance());
    }
}
