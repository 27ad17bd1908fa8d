//! Just enough RESP to read client commands: arrays of bulk strings, and inline commands.
//!
//! [`CommandReader`] reads them incrementally, with Redis's limits: a command arriving in
//! many small reads is scanned once (a parse cursor, not a re-parse of the whole buffer
//! at every read), bulk strings are copied out as they arrive, and every length is
//! checked from its `*`/`$` line, before the bytes it announces are read. So one
//! connection holds at most one partial line (64 KiB) plus one command within the limits
//! below. After a [`ProtocolError`] the caller replies with it and closes the connection,
//! as Redis does.

/// Redis's limits for a client that has not authenticated (`processMultibulkBuffer`):
/// at most 10 arguments, each at most 16 KiB.
pub(crate) const UNAUTHENTICATED_MAX_ARGS: usize = 10;
/// See [`UNAUTHENTICATED_MAX_ARGS`].
pub(crate) const UNAUTHENTICATED_MAX_BULK: usize = 16 * 1024;
/// The longest inline command and the longest `*`/`$` line: Redis's
/// `PROTO_INLINE_MAX_SIZE`.
pub(crate) const MAX_LINE: usize = 64 * 1024;
/// The largest bulk string, and the largest command (its bytes on the wire), from an
/// authenticated client: 64 MiB. Redis allows a 512 MiB bulk (`proto-max-bulk-len`) in a
/// 1 GiB query buffer; an emulator on a developer's machine or CI does not need values
/// that large, and with this bound one client cannot make it hold more than about
/// 64 MiB (plus its copy on the way upstream).
pub(crate) const MAX_COMMAND: usize = 64 * 1024 * 1024;
/// Redis's default `proto-max-bulk-len` (512 MiB): beyond it Redis answers "invalid bulk
/// length" even before `AUTH`, so the emulator checks it first too, to answer as Redis does.
const REDIS_MAX_BULK: usize = 512 * 1024 * 1024;
/// The most arguments one authenticated command may have: Redis's limit before 6.0
/// (1024 × 1024). Each costs a `Vec` header (24 bytes) however short it is, so this bounds
/// that overhead to 24 MiB.
pub(crate) const MAX_ARGS: usize = 1024 * 1024;

/// Why a client's input is not RESP, in Redis's words (`-ERR` + this is the reply).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProtocolError {
    /// More than [`UNAUTHENTICATED_MAX_ARGS`] arguments before `AUTH`.
    #[error("Protocol error: unauthenticated multibulk length")]
    UnauthenticatedMultibulkLength,
    /// A bulk string longer than [`UNAUTHENTICATED_MAX_BULK`] before `AUTH`.
    #[error("Protocol error: unauthenticated bulk length")]
    UnauthenticatedBulkLength,
    /// `*` not followed by a number, or more than [`MAX_ARGS`].
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// `$` not followed by a number, a negative one, or more than [`MAX_COMMAND`] (for an
    /// unauthenticated client: more than Redis's 512 MiB).
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// An array element that is not a bulk string (the byte found, for the reply).
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0).escape_default())]
    ExpectedDollar(u8),
    /// A `*` line longer than [`MAX_LINE`].
    #[error("Protocol error: too big mbulk count string")]
    TooBigMultibulkCount,
    /// A `$` line longer than [`MAX_LINE`].
    #[error("Protocol error: too big bulk count string")]
    TooBigBulkCount,
    /// An inline command longer than [`MAX_LINE`].
    #[error("Protocol error: too big inline request")]
    TooBigInline,
    /// A bulk string whose announced length is not followed by CRLF.
    #[error("Protocol error: bulk string not followed by CRLF")]
    MissingCrlf,
    /// A command whose bytes add up to more than [`MAX_COMMAND`]; Redis closes such a
    /// client without a reply (its query buffer limit), the emulator says why.
    #[error("Protocol error: command larger than the emulator's limit of 64 MiB")]
    CommandTooBig,
}

impl ProtocolError {
    /// The error reply, byte for byte as Redis sends it (`addReplyErrorFormat`: the
    /// offending byte as it came, CR and LF made spaces).
    pub(crate) fn reply(&self) -> Vec<u8> {
        match self {
            ProtocolError::ExpectedDollar(byte) => {
                let byte = if matches!(byte, b'\r' | b'\n') { b' ' } else { *byte };
                let mut reply = b"-ERR Protocol error: expected '$', got '".to_vec();
                reply.push(byte);
                reply.extend_from_slice(b"'\r\n");
                reply
            }
            other => format!("-ERR {other}\r\n").into_bytes(),
        }
    }
}

/// The array being read.
#[derive(Debug)]
struct Multibulk {
    /// Arguments still to come.
    remaining: usize,
    args: Vec<Vec<u8>>,
    /// The bulk string being read, once its `$` line is in: its length and its bytes so far.
    bulk: Option<(usize, Vec<u8>)>,
    /// Bytes of this command so far, on the wire.
    size: usize,
}

/// Reads commands from a stream of bytes, one at a time, without re-reading any.
#[derive(Debug, Default)]
pub(crate) struct CommandReader {
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`.
    pos: usize,
    /// Bytes of `buf` up to here have been searched for a line end, so a line arriving
    /// a byte at a time is scanned once.
    scanned: usize,
    multibulk: Option<Multibulk>,
}

/// A number in a `*` or `$` line (Redis's `string2ll`: digits, an optional `-`).
fn number(bytes: &[u8]) -> Option<i64> {
    if bytes.first() == Some(&b'+') {
        return None;
    }
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

impl CommandReader {
    /// Adds bytes read from the client.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 {
            // Drop what has been read: at most one partial line is left to move.
            self.buf.drain(..self.pos);
            self.scanned = self.scanned.saturating_sub(self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held for commands not complete yet (the partial line or bulk string and
    /// the arguments read so far).
    #[cfg(test)]
    pub(crate) fn buffered(&self) -> usize {
        let args = self.multibulk.as_ref().map_or(0, |m| {
            m.args.iter().map(Vec::len).sum::<usize>() + m.bulk.as_ref().map_or(0, |(_, b)| b.len())
        });
        self.buf.len() - self.pos + args
    }

    /// The next line (without its CRLF, or LF as Redis also takes for inline commands)
    /// and the bytes it takes; `None` until it is complete.
    fn line(&mut self, too_long: ProtocolError) -> Result<Option<(Vec<u8>, usize)>, ProtocolError> {
        let from = self.scanned.max(self.pos);
        match self.buf[from..].iter().position(|b| *b == b'\n') {
            Some(i) => {
                let end = from + i;
                let mut text = &self.buf[self.pos..end];
                if text.last() == Some(&b'\r') {
                    text = &text[..text.len() - 1];
                }
                if text.len() > MAX_LINE {
                    return Err(too_long);
                }
                let used = end + 1 - self.pos;
                let text = text.to_vec();
                self.pos = end + 1;
                self.scanned = self.pos;
                Ok(Some((text, used)))
            }
            None => {
                self.scanned = self.buf.len();
                if self.buf.len() - self.pos > MAX_LINE {
                    return Err(too_long);
                }
                Ok(None)
            }
        }
    }

    /// The next complete command, or `None` until more bytes come. An empty array or an
    /// empty line is skipped, as Redis does. `authenticated` picks the limits: a client
    /// that has not authenticated gets Redis's much smaller ones.
    pub(crate) fn next_command(&mut self, authenticated: bool) -> Result<Option<Vec<Vec<u8>>>, ProtocolError> {
        loop {
            let Some(multibulk) = self.multibulk.as_mut() else {
                let Some(&first) = self.buf.get(self.pos) else {
                    return Ok(None);
                };
                if first != b'*' {
                    let Some((text, _)) = self.line(ProtocolError::TooBigInline)? else {
                        return Ok(None);
                    };
                    let words: Vec<Vec<u8>> = text
                        .split(|b| *b == b' ')
                        .filter(|w| !w.is_empty())
                        .map(<[u8]>::to_vec)
                        .collect();
                    if words.is_empty() {
                        continue;
                    }
                    return Ok(Some(words));
                }
                let Some((text, used)) = self.line(ProtocolError::TooBigMultibulkCount)? else {
                    return Ok(None);
                };
                let count = number(&text[1..])
                    .filter(|n| *n <= i64::from(i32::MAX))
                    .ok_or(ProtocolError::InvalidMultibulkLength)?;
                if count <= 0 {
                    continue;
                }
                let count = count as usize;
                if !authenticated && count > UNAUTHENTICATED_MAX_ARGS {
                    return Err(ProtocolError::UnauthenticatedMultibulkLength);
                }
                if count > MAX_ARGS {
                    return Err(ProtocolError::InvalidMultibulkLength);
                }
                self.multibulk = Some(Multibulk {
                    remaining: count,
                    // Not `count`: the client has not sent those arguments yet.
                    args: Vec::with_capacity(count.min(16)),
                    bulk: None,
                    size: used,
                });
                continue;
            };
            if multibulk.remaining == 0 {
                let args = self.multibulk.take().map(|m| m.args).unwrap_or_default();
                return Ok(Some(args));
            }
            match multibulk.bulk.as_mut() {
                None => {
                    let Some(&first) = self.buf.get(self.pos) else {
                        return Ok(None);
                    };
                    if first != b'$' {
                        return Err(ProtocolError::ExpectedDollar(first));
                    }
                    let Some((text, used)) = self.line(ProtocolError::TooBigBulkCount)? else {
                        return Ok(None);
                    };
                    // In Redis's order: its own bound, then the unauthenticated one; then
                    // the emulator's smaller bound.
                    let len = number(&text[1..])
                        .and_then(|n| usize::try_from(n).ok())
                        .filter(|n| *n <= REDIS_MAX_BULK)
                        .ok_or(ProtocolError::InvalidBulkLength)?;
                    if !authenticated && len > UNAUTHENTICATED_MAX_BULK {
                        return Err(ProtocolError::UnauthenticatedBulkLength);
                    }
                    if len > MAX_COMMAND {
                        return Err(ProtocolError::InvalidBulkLength);
                    }
                    // `line` moved the cursor: `self.multibulk` is still there.
                    let Some(multibulk) = self.multibulk.as_mut() else {
                        return Ok(None);
                    };
                    multibulk.size = multibulk.size.saturating_add(used + len + 2);
                    if multibulk.size > MAX_COMMAND {
                        return Err(ProtocolError::CommandTooBig);
                    }
                    // Grown as the bytes come, not reserved from the announced length.
                    multibulk.bulk = Some((len, Vec::with_capacity(len.min(16 * 1024))));
                }
                Some((len, data)) => {
                    let available = &self.buf[self.pos..];
                    let take = available.len().min(*len - data.len());
                    data.extend_from_slice(&available[..take]);
                    self.pos += take;
                    if data.len() < *len {
                        return Ok(None);
                    }
                    let Some(crlf) = self.buf.get(self.pos..self.pos + 2) else {
                        return Ok(None);
                    };
                    if crlf != b"\r\n" {
                        return Err(ProtocolError::MissingCrlf);
                    }
                    self.pos += 2;
                    self.scanned = self.scanned.max(self.pos);
                    if let Some((_, data)) = multibulk.bulk.take() {
                        multibulk.args.push(data);
                    }
                    multibulk.remaining -= 1;
                }
            }
        }
    }
}

/// Encodes a command as a RESP array of bulk strings.
pub(crate) fn encode_command(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Every command in `input`, fed in one piece.
    fn parse_all(input: &[u8], authenticated: bool) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut reader = CommandReader::default();
        reader.feed(input);
        let mut commands = Vec::new();
        while let Some(command) = reader.next_command(authenticated)? {
            commands.push(command);
        }
        Ok(commands)
    }

    fn args(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn parses_arrays_pipelines_and_inline_commands() {
        let input =
            b"*2\r\n$4\r\nAUTH\r\n$3\r\nabc\r\n*1\r\n$4\r\nPING\r\nPING  hello\r\n*0\r\n*-1\r\n\r\n*1\r\n$0\r\n\r\n";
        assert_eq!(
            parse_all(input, false).unwrap(),
            vec![
                args(&["AUTH", "abc"]),
                args(&["PING"]),
                args(&["PING", "hello"]),
                args(&[""])
            ]
        );
        assert_eq!(
            encode_command(&[b"GET".to_vec(), b"k".to_vec()]),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        );
    }

    #[test]
    fn waits_for_more_and_refuses_garbage_in_redis_words() {
        let input = b"*2\r\n$4\r\nAUTH\r\n$3\r\nabc\r\n";
        for cut in 1..input.len() {
            let mut reader = CommandReader::default();
            reader.feed(&input[..cut]);
            assert_eq!(reader.next_command(false), Ok(None), "cut at {cut}");
            reader.feed(&input[cut..]);
            assert_eq!(reader.next_command(false), Ok(Some(args(&["AUTH", "abc"]))));
        }
        let error = |input: &[u8]| parse_all(input, true).unwrap_err();
        assert_eq!(error(b"*x\r\n"), ProtocolError::InvalidMultibulkLength);
        assert_eq!(error(b"*1\r\n+OK\r\n"), ProtocolError::ExpectedDollar(b'+'));
        assert_eq!(
            ProtocolError::ExpectedDollar(b'+').reply(),
            b"-ERR Protocol error: expected '$', got '+'\r\n"
        );
        assert_eq!(
            ProtocolError::ExpectedDollar(b'\n').reply(),
            b"-ERR Protocol error: expected '$', got ' '\r\n"
        );
        assert_eq!(error(b"*1\r\n$-1\r\n"), ProtocolError::InvalidBulkLength);
        assert_eq!(error(b"*1\r\n$2\r\nabXY"), ProtocolError::MissingCrlf);
        assert_eq!(error(&[b'A'; MAX_LINE + 1]), ProtocolError::TooBigInline);
        let mut long = b"*".to_vec();
        long.extend_from_slice(&[b'1'; MAX_LINE + 1]);
        assert_eq!(error(&long), ProtocolError::TooBigMultibulkCount);
        let mut long = b"*1\r\n$".to_vec();
        long.extend_from_slice(&[b'1'; MAX_LINE + 1]);
        assert_eq!(error(&long), ProtocolError::TooBigBulkCount);
    }

    #[test]
    fn unauthenticated_clients_get_redis_limits_from_the_length_lines() {
        assert_eq!(
            parse_all(b"*11\r\n", false).unwrap_err(),
            ProtocolError::UnauthenticatedMultibulkLength
        );
        assert_eq!(
            ProtocolError::UnauthenticatedMultibulkLength.reply(),
            b"-ERR Protocol error: unauthenticated multibulk length\r\n"
        );
        // Refused from the `$` line: none of the 100 MB has to arrive.
        assert_eq!(
            parse_all(b"*2\r\n$4\r\nAUTH\r\n$104857600\r\n", false).unwrap_err(),
            ProtocolError::UnauthenticatedBulkLength
        );
        assert_eq!(
            ProtocolError::UnauthenticatedBulkLength.reply(),
            b"-ERR Protocol error: unauthenticated bulk length\r\n"
        );
        // Redis checks the general limit first.
        assert_eq!(
            parse_all(b"*1\r\n$-5\r\n", false).unwrap_err(),
            ProtocolError::InvalidBulkLength
        );
        // The limits are inclusive, and do not apply once authenticated.
        let mut ten = b"*10\r\n".to_vec();
        for _ in 0..10 {
            ten.extend_from_slice(b"$16384\r\n");
            ten.extend_from_slice(&[b'x'; 16384]);
            ten.extend_from_slice(b"\r\n");
        }
        assert_eq!(parse_all(&ten, false).unwrap().len(), 1);
        assert_eq!(parse_all(b"*11\r\n", true).unwrap(), Vec::<Vec<Vec<u8>>>::new());
        assert_eq!(
            parse_all(b"*1\r\n$16385\r\n", true).unwrap(),
            Vec::<Vec<Vec<u8>>>::new()
        );
    }

    #[test]
    fn authenticated_clients_are_bounded_too() {
        let over = format!("*1\r\n${}\r\n", MAX_COMMAND + 1);
        assert_eq!(
            parse_all(over.as_bytes(), true).unwrap_err(),
            ProtocolError::InvalidBulkLength
        );
        let half = MAX_COMMAND / 2;
        let two_halves = format!("*2\r\n${half}\r\n");
        let mut reader = CommandReader::default();
        reader.feed(two_halves.as_bytes());
        assert_eq!(reader.next_command(true), Ok(None));
        reader.feed(&vec![b'x'; half]);
        reader.feed(format!("\r\n${half}\r\n").as_bytes());
        assert_eq!(reader.next_command(true), Err(ProtocolError::CommandTooBig));
        assert_eq!(
            parse_all(format!("*{}\r\n", MAX_ARGS + 1).as_bytes(), true).unwrap_err(),
            ProtocolError::InvalidMultibulkLength
        );
    }

    /// A large command arriving a byte at a time: the bytes are scanned once, and the
    /// buffer holds no more than the partial line.
    #[test]
    fn a_command_a_byte_at_a_time_is_read_without_rereading() {
        let value = vec![b'v'; 1024 * 1024];
        let command = encode_command(&[b"SET".to_vec(), b"k".to_vec(), value.clone()]);
        let mut reader = CommandReader::default();
        let started = std::time::Instant::now();
        let mut most_buffered_beyond_args = 0;
        for (i, byte) in command.iter().enumerate() {
            reader.feed(std::slice::from_ref(byte));
            let parsed = reader.next_command(true).unwrap();
            most_buffered_beyond_args = most_buffered_beyond_args.max(reader.buf.len() - reader.pos);
            if i + 1 < command.len() {
                assert_eq!(parsed, None);
            } else {
                assert_eq!(parsed, Some(vec![b"SET".to_vec(), b"k".to_vec(), value.clone()]));
            }
        }
        // A re-parse at every byte would copy ~0.5 TB here: it would not finish.
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        assert!(most_buffered_beyond_args <= 16, "{most_buffered_beyond_args}");
        assert_eq!(reader.buffered(), 0);
    }

    fn commands() -> impl Strategy<Value = Vec<Vec<Vec<u8>>>> {
        let arg = proptest::collection::vec(any::<u8>(), 0..40);
        proptest::collection::vec(proptest::collection::vec(arg, 1..6), 1..6)
    }

    proptest! {
        /// Random bytes, cut anywhere: no panic, and never more buffered than one line
        /// plus what one read brought.
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), cuts in proptest::collection::vec(0usize..2048, 0..8), authenticated: bool) {
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c < bytes.len()).collect();
            cuts.sort_unstable();
            cuts.push(bytes.len());
            let mut reader = CommandReader::default();
            let mut from = 0;
            'feed: for cut in cuts {
                reader.feed(&bytes[from..cut]);
                from = cut;
                loop {
                    match reader.next_command(authenticated) {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => {
                            prop_assert!(e.reply().starts_with(b"-ERR Protocol error: "));
                            prop_assert!(e.reply().ends_with(b"\r\n"));
                            break 'feed;
                        }
                    }
                }
                prop_assert!(reader.buffered() <= MAX_LINE + 2048);
            }
        }

        /// Whatever the cuts between reads, the commands come out as they went in.
        #[test]
        fn encoded_commands_come_back_whatever_the_reads(commands in commands(), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10)) {
            let wire: Vec<u8> = commands.iter().flat_map(|c| encode_command(c)).collect();
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            cuts.sort_unstable();
            cuts.push(wire.len());
            let mut reader = CommandReader::default();
            let mut got = Vec::new();
            let mut from = 0;
            for cut in cuts {
                reader.feed(&wire[from..cut]);
                from = cut;
                while let Some(command) = reader.next_command(false).unwrap() {
                    got.push(command);
                }
            }
            prop_assert_eq!(got, commands);
            prop_assert_eq!(reader.buffered(), 0);
        }
    }
}
