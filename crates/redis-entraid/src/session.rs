//! What a user's command does to the connection it runs on, seen by the connection types
//! that swap connections under the user: transactions and `WATCH` (which must not
//! straddle a swap or a renewal `AUTH`), session state that is carried to every new
//! connection (client name, `READONLY`, `CLIENT NO-EVICT`/`NO-TOUCH`), and commands
//! refused up front because a swap would silently undo them.
//!
//! | command | on a swap | why |
//! |---|---|---|
//! | `CLIENT SETNAME`, `READONLY`/`READWRITE`, `CLIENT NO-EVICT`, `CLIENT NO-TOUCH` | replayed on every new connection before it takes a command | cheap to repeat, and the user expects them to hold |
//! | `SELECT` | refused | the next connection would go back to the URL's database: put the database in the URL |
//! | `CLIENT TRACKING` | refused | invalidations would stop at the next swap and a client-side cache would serve stale data |
//! | `AUTH`, `HELLO`, `RESET` | refused | the connection authenticates itself with Entra ID tokens |
//! | `SUBSCRIBE` and the like sent as commands | refused | use `aio::PubSub` or `ConnectionManager::subscribe`, which carry subscriptions |
//! | `MULTI` … `EXEC`, `WATCH` (sync `Connection`) | no `AUTH` and no swap inside; past the replace margin the transaction fails with an error, and a `WATCH` lost in a swap fails its `MULTI` | a transaction never straddles two connections |
//! | `MULTI`, `WATCH` sent alone on `aio::ConnectionManager` | refused; `redis::pipe().atomic()` works | a multiplexed connection is shared: a transaction must be one pipeline |

use std::time::Duration;

use redis::{ErrorKind, RedisError, Value};

/// What a command does to its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Nothing a swap could lose.
    Plain,
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    /// Session state to replay on every new connection once the server accepted it.
    Setting(Setting),
    /// Refused up front: what it is, and what to do instead.
    Refused(&'static str, &'static str),
}

/// Session state carried to every new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Setting {
    ClientName,
    ReadOnly,
    ReadWrite,
    NoEvict,
    NoTouch,
}

/// The effect of a command named `name`, with its first argument `sub` (a subcommand).
pub(crate) fn effect(name: &[u8], sub: Option<&[u8]>) -> Effect {
    let is = |a: &[u8], b: &str| a.eq_ignore_ascii_case(b.as_bytes());
    let sub = sub.unwrap_or_default();
    match name {
        n if is(n, "MULTI") => Effect::Multi,
        n if is(n, "EXEC") => Effect::Exec,
        n if is(n, "DISCARD") => Effect::Discard,
        n if is(n, "WATCH") => Effect::Watch,
        n if is(n, "UNWATCH") => Effect::Unwatch,
        n if is(n, "READONLY") => Effect::Setting(Setting::ReadOnly),
        n if is(n, "READWRITE") => Effect::Setting(Setting::ReadWrite),
        n if is(n, "SELECT") => Effect::Refused(
            "SELECT is refused on a connection that re-authenticates by swapping connections: \
             the next connection would silently use the URL's database again",
            "put the database in the URL (rediss://host:port/5)",
        ),
        n if is(n, "AUTH") || is(n, "HELLO") || is(n, "RESET") => Effect::Refused(
            "AUTH, HELLO and RESET are refused: the connection authenticates itself with Entra ID tokens",
            "set the protocol in the URL (?protocol=resp3); the token is the provider's",
        ),
        n if is(n, "SUBSCRIBE")
            || is(n, "PSUBSCRIBE")
            || is(n, "SSUBSCRIBE")
            || is(n, "UNSUBSCRIBE")
            || is(n, "PUNSUBSCRIBE")
            || is(n, "SUNSUBSCRIBE") =>
        {
            Effect::Refused(
                "subscriptions sent as commands would be lost at the next connection swap",
                "use redis_entraid::aio::PubSub, or ConnectionManager::subscribe on RESP3",
            )
        }
        n if is(n, "CLIENT") && is(sub, "SETNAME") => Effect::Setting(Setting::ClientName),
        n if is(n, "CLIENT") && is(sub, "NO-EVICT") => Effect::Setting(Setting::NoEvict),
        n if is(n, "CLIENT") && is(sub, "NO-TOUCH") => Effect::Setting(Setting::NoTouch),
        n if is(n, "CLIENT") && (is(sub, "TRACKING") || is(sub, "REPLY")) => Effect::Refused(
            "CLIENT TRACKING and CLIENT REPLY are refused: they would stop at the next connection \
             swap (a client-side cache would then serve stale data)",
            "not supported on connections that re-authenticate by swapping",
        ),
        _ => Effect::Plain,
    }
}

/// How long a blocking command (`BLPOP` and the like, `XREAD`/`XREADGROUP … BLOCK`,
/// `WAIT`, `WAITAOF`) may hold its connection's replies: `Some(None)` for ever (a timeout
/// of 0), `Some(Some(time))` for its timeout, `None` if it does not block.
pub(crate) fn blocking_time<'a>(mut args: impl Iterator<Item = &'a [u8]>) -> Option<Option<Duration>> {
    let is = |a: &[u8], b: &str| a.eq_ignore_ascii_case(b.as_bytes());
    let name = args.next()?;
    let seconds = |arg: Option<&[u8]>| {
        let text = std::str::from_utf8(arg?).ok()?;
        let seconds: f64 = text.parse().ok()?;
        let time = Duration::try_from_secs_f64(seconds).ok()?;
        Some((!time.is_zero()).then_some(time))
    };
    let millis = |arg: Option<&[u8]>| {
        let ms: u64 = std::str::from_utf8(arg?).ok()?.parse().ok()?;
        Some((ms != 0).then(|| Duration::from_millis(ms)))
    };
    let rest: Vec<&[u8]> = match name {
        n if [
            "BLPOP",
            "BRPOP",
            "BZPOPMIN",
            "BZPOPMAX",
            "BLMOVE",
            "BRPOPLPUSH",
            "BLMPOP",
            "BZMPOP",
            "XREAD",
            "XREADGROUP",
            "WAIT",
            "WAITAOF",
        ]
        .iter()
        .any(|b| is(n, b)) =>
        {
            args.collect()
        }
        _ => return None,
    };
    match name {
        n if is(n, "BLMPOP") || is(n, "BZMPOP") => seconds(rest.first().copied()),
        n if is(n, "XREAD") || is(n, "XREADGROUP") => {
            let at = rest.iter().position(|a| is(a, "BLOCK"))?;
            millis(rest.get(at + 1).copied())
        }
        n if is(n, "WAIT") => millis(rest.get(1).copied()),
        n if is(n, "WAITAOF") => millis(rest.get(2).copied()),
        _ => seconds(rest.last().copied()),
    }
}

/// Which of a pipeline's `commands` the server accepted, from its `replies`: in a plain
/// pipeline each command has its reply; in a transaction (`MULTI` … `EXEC`, the commands
/// between them counted) the one reply is `EXEC`'s array, a reply per queued command. The
/// redis crate answers `Ok` with a `Value::ServerError` inside for a command the server
/// refused, so a setting is recorded only where its own reply is no error; a command
/// without a reply of the expected shape (an aborted transaction) is not accepted.
pub(crate) fn accepted(replies: &[Value], commands: usize, transaction: bool) -> Vec<bool> {
    let ok = |reply: &Value| !matches!(reply, Value::ServerError(_));
    if !transaction {
        return (0..commands).map(|i| replies.get(i).is_some_and(ok)).collect();
    }
    match replies {
        [Value::Array(replies)] if replies.len() == commands => replies.iter().map(ok).collect(),
        _ => vec![false; commands],
    }
}

/// The error a refused command gets.
pub(crate) fn refused(what: &'static str, instead: &'static str) -> RedisError {
    RedisError::from((ErrorKind::Client, what, instead.to_owned()))
}

/// The session state a user set, replayed on every new connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SessionState {
    client_name: Option<Vec<u8>>,
    read_only: bool,
    no_evict: Option<Vec<u8>>,
    no_touch: Option<Vec<u8>>,
}

impl SessionState {
    /// Records `setting`, whose command (accepted by the server) had arguments `args`
    /// after its name.
    pub(crate) fn record(&mut self, setting: Setting, args: &[&[u8]]) {
        let last = args.last().map(|a| a.to_vec());
        match setting {
            Setting::ClientName => self.client_name = args.get(1).map(|a| a.to_vec()),
            Setting::ReadOnly => self.read_only = true,
            Setting::ReadWrite => self.read_only = false,
            Setting::NoEvict => self.no_evict = last,
            Setting::NoTouch => self.no_touch = last,
        }
    }

    /// The commands that set this state on a new connection, each with the setting it
    /// carries.
    pub(crate) fn replay(&self) -> Vec<(Setting, redis::Cmd)> {
        let mut commands = Vec::new();
        if let Some(name) = &self.client_name {
            let command = redis::cmd("CLIENT").arg("SETNAME").arg(name.as_slice()).to_owned();
            commands.push((Setting::ClientName, command));
        }
        if self.read_only {
            commands.push((Setting::ReadOnly, redis::cmd("READONLY")));
        }
        if let Some(on) = &self.no_evict {
            let command = redis::cmd("CLIENT").arg("NO-EVICT").arg(on.as_slice()).to_owned();
            commands.push((Setting::NoEvict, command));
        }
        if let Some(on) = &self.no_touch {
            let command = redis::cmd("CLIENT").arg("NO-TOUCH").arg(on.as_slice()).to_owned();
            commands.push((Setting::NoTouch, command));
        }
        commands
    }

    /// Drops `setting`: the server refused it on a new connection, and every later
    /// connection would fail the same way.
    pub(crate) fn forget(&mut self, setting: Setting) {
        match setting {
            Setting::ClientName => self.client_name = None,
            Setting::ReadOnly | Setting::ReadWrite => self.read_only = false,
            Setting::NoEvict => self.no_evict = None,
            Setting::NoTouch => self.no_touch = None,
        }
    }
}

/// A setting's replay on a new connection failed with `error`: `Ok` if the server refused
/// it (an error reply, the connection fine), so the caller leaves it out, logged, and one
/// refused setting never fails every later connection; `Err` (no answer) fails the
/// connection.
pub(crate) fn refused_on_replay(setting: Setting, error: RedisError) -> Result<(), RedisError> {
    if !crate::commands::is_refusal(&error) {
        return Err(error);
    }
    tracing::warn!(?setting, %error, "the server refused a setting on a new connection; it is dropped");
    Ok(())
}

/// The commands in `packed` (RESP arrays of bulk strings, as the redis crate writes
/// them), each as its arguments; `None` if it is not in that shape.
pub(crate) fn commands(packed: &[u8]) -> Option<Vec<Vec<&[u8]>>> {
    let mut rest = packed;
    let mut commands = Vec::new();
    while !rest.is_empty() {
        let (count, after) = header(rest, b'*')?;
        rest = after;
        let mut args = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            let (len, after) = header(rest, b'$')?;
            args.push(after.get(..len)?);
            rest = after.get(len.checked_add(2)?..)?;
        }
        commands.push(args);
    }
    Some(commands)
}

/// `<prefix><number>\r\n` at the start of `bytes`: the number and what follows.
fn header(bytes: &[u8], prefix: u8) -> Option<(usize, &[u8])> {
    if *bytes.first()? != prefix {
        return None;
    }
    let end = bytes.windows(2).position(|w| w == b"\r\n")?;
    let number = std::str::from_utf8(bytes.get(1..end)?).ok()?.parse().ok()?;
    Some((number, bytes.get(end + 2..)?))
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn blocking_commands_are_known_with_how_long_they_may_block() {
        let time = |words: &[&str]| blocking_time(words.iter().map(|w| w.as_bytes()));
        let s = Duration::from_secs;
        assert_eq!(time(&["BLPOP", "a", "b", "5"]), Some(Some(s(5))));
        assert_eq!(time(&["brpop", "a", "0.5"]), Some(Some(Duration::from_millis(500))));
        assert_eq!(time(&["BLPOP", "a", "0"]), Some(None), "0 blocks for ever");
        assert_eq!(time(&["BLMOVE", "a", "b", "LEFT", "RIGHT", "2"]), Some(Some(s(2))));
        assert_eq!(time(&["BLMPOP", "3", "1", "a", "LEFT"]), Some(Some(s(3))));
        assert_eq!(
            time(&["XREAD", "COUNT", "1", "BLOCK", "1500", "STREAMS", "s", "$"]),
            Some(Some(Duration::from_millis(1500)))
        );
        assert_eq!(
            time(&["XREAD", "STREAMS", "s", "0"]),
            None,
            "no BLOCK: answered at once"
        );
        assert_eq!(time(&["WAIT", "1", "100"]), Some(Some(Duration::from_millis(100))));
        assert_eq!(time(&["WAITAOF", "1", "0", "0"]), Some(None));
        assert_eq!(time(&["GET", "k"]), None);
        assert_eq!(time(&["BLPOP", "a", "soon"]), None, "the server refuses it at once");
        assert_eq!(
            time(&["BLPOP", "a", "1e15"]),
            Some(Some(Duration::from_secs(1_000_000_000_000_000)))
        );
        assert_eq!(time(&["BLPOP", "a", "1e300"]), None, "no Duration holds it");
        assert_eq!(
            time(&["WAIT", "1", &u64::MAX.to_string()]),
            Some(Some(Duration::from_millis(u64::MAX)))
        );
    }

    #[test]
    fn only_the_commands_the_server_accepted_in_a_pipeline_count() {
        let refused = redis::parse_redis_value(b"-ERR Client names cannot contain spaces\r\n").unwrap();
        assert!(matches!(refused, Value::ServerError(_)));
        let pong = Value::SimpleString("PONG".to_owned());
        // A plain pipeline: a reply per command (a missing one is not accepted).
        assert_eq!(
            accepted(&[refused.clone(), pong.clone()], 3, false),
            vec![false, true, false]
        );
        // A transaction: EXEC's array, a reply per queued command.
        let exec = Value::Array(vec![Value::Okay, refused.clone()]);
        assert_eq!(accepted(&[exec], 2, true), vec![true, false]);
        // Aborted (WATCH): nothing ran.
        assert_eq!(accepted(&[Value::Nil], 2, true), vec![false, false]);
        assert_eq!(accepted(&[refused], 1, true), vec![false]);
    }

    fn packed(cmd: &redis::Cmd) -> Vec<u8> {
        cmd.get_packed_command()
    }

    #[test]
    fn commands_are_read_back_from_what_the_redis_crate_writes() {
        let mut bytes = packed(redis::cmd("SET").arg("k").arg("v\r\n$3"));
        bytes.extend(packed(redis::cmd("CLIENT").arg("SETNAME").arg("app")));
        let commands = commands(&bytes).unwrap();
        assert_eq!(commands.len(), 2);
        assert_eq!(commands[0], vec![&b"SET"[..], b"k", b"v\r\n$3"]);
        assert_eq!(
            effect(commands[1][0], commands[1].get(1).copied()),
            Effect::Setting(Setting::ClientName)
        );
        assert!(super::commands(b"*2\r\n$3\r\nGET\r\n").is_none(), "truncated");
        assert!(super::commands(b"PING\r\n").is_none(), "inline");
    }

    #[test]
    fn each_command_has_the_effect_the_table_says() {
        assert_eq!(effect(b"multi", None), Effect::Multi);
        assert_eq!(effect(b"EXEC", None), Effect::Exec);
        assert_eq!(effect(b"GET", Some(b"k")), Effect::Plain);
        assert_eq!(effect(b"CLIENT", Some(b"no-evict")), Effect::Setting(Setting::NoEvict));
        assert_eq!(effect(b"CLIENT", Some(b"LIST")), Effect::Plain);
        for (name, sub) in [
            (&b"SELECT"[..], Some(&b"5"[..])),
            (b"CLIENT", Some(b"TRACKING")),
            (b"AUTH", None),
            (b"SUBSCRIBE", Some(b"c")),
        ] {
            assert!(matches!(effect(name, sub), Effect::Refused(..)), "{name:?}");
        }
        let Effect::Refused(_, instead) = effect(b"SELECT", Some(b"5")) else {
            unreachable!()
        };
        assert!(instead.contains("URL"));
    }

    #[test]
    fn settings_are_replayed_as_last_set() {
        let mut state = SessionState::default();
        state.record(Setting::ClientName, &[b"SETNAME", b"app"]);
        state.record(Setting::ReadOnly, &[]);
        state.record(Setting::ReadWrite, &[]);
        state.record(Setting::NoTouch, &[b"NO-TOUCH", b"on"]);
        let replay: Vec<Vec<u8>> = state.replay().iter().map(|(_, c)| c.get_packed_command()).collect();
        assert_eq!(
            replay,
            vec![
                packed(redis::cmd("CLIENT").arg("SETNAME").arg("app")),
                packed(redis::cmd("CLIENT").arg("NO-TOUCH").arg("on")),
            ]
        );
    }
}
