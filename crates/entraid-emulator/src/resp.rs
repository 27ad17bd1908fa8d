//! Just enough RESP to read client commands: arrays of bulk strings, and inline commands.

/// The longest bulk string a client may send (Redis's own default limit).
const MAX_BULK: usize = 512 * 1024 * 1024;
/// The most arguments one command may have.
const MAX_ARGS: usize = 1024 * 1024;

/// A parse result: a command and how many bytes it took, more input needed, or garbage.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    Command(Vec<Vec<u8>>, usize),
    Incomplete,
    Invalid(&'static str),
}

fn line(buf: &[u8], from: usize) -> Option<(&[u8], usize)> {
    let end = buf[from..].windows(2).position(|w| w == b"\r\n")? + from;
    Some((&buf[from..end], end + 2))
}

fn number(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Parses one command from the start of `buf`.
pub(crate) fn parse_command(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::Incomplete;
    }
    if buf[0] != b'*' {
        // Inline command: one line of space-separated words.
        let Some((text, next)) = line(buf, 0) else {
            return if buf.len() > 64 * 1024 {
                Parsed::Invalid("inline command too long")
            } else {
                Parsed::Incomplete
            };
        };
        let words = text
            .split(|b| *b == b' ')
            .filter(|w| !w.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        return Parsed::Command(words, next);
    }
    let Some((count, mut at)) = line(buf, 1) else {
        return Parsed::Incomplete;
    };
    let Some(count) = number(count) else {
        return Parsed::Invalid("invalid multibulk length");
    };
    if count < 0 || count as usize > MAX_ARGS {
        return Parsed::Invalid("invalid multibulk length");
    }
    let mut args = Vec::with_capacity(count as usize);
    for _ in 0..count {
        if at >= buf.len() {
            return Parsed::Incomplete;
        }
        if buf[at] != b'$' {
            return Parsed::Invalid("expected '$'");
        }
        let Some((len, start)) = line(buf, at + 1) else {
            return Parsed::Incomplete;
        };
        let Some(len) = number(len) else {
            return Parsed::Invalid("invalid bulk length");
        };
        if len < 0 || len as usize > MAX_BULK {
            return Parsed::Invalid("invalid bulk length");
        }
        let end = start + len as usize;
        if buf.len() < end + 2 {
            return Parsed::Incomplete;
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Parsed::Invalid("bulk string not followed by CRLF");
        }
        args.push(buf[start..end].to_vec());
        at = end + 2;
    }
    Parsed::Command(args, at)
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
    use super::*;

    #[test]
    fn parses_arrays_pipelines_and_inline_commands() {
        let input = b"*2\r\n$4\r\nAUTH\r\n$3\r\nabc\r\n*1\r\n$4\r\nPING\r\n";
        let Parsed::Command(args, used) = parse_command(input) else {
            panic!()
        };
        assert_eq!(args, vec![b"AUTH".to_vec(), b"abc".to_vec()]);
        assert_eq!(
            parse_command(&input[used..]),
            Parsed::Command(vec![b"PING".to_vec()], input.len() - used)
        );
        assert_eq!(
            parse_command(b"PING  hello\r\n"),
            Parsed::Command(vec![b"PING".to_vec(), b"hello".to_vec()], 13)
        );
        assert_eq!(
            encode_command(&[b"GET".to_vec(), b"k".to_vec()]),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        );
    }

    #[test]
    fn waits_for_more_and_refuses_garbage() {
        for cut in 1..20 {
            let input = b"*2\r\n$4\r\nAUTH\r\n$3\r\nabc\r\n";
            assert_eq!(parse_command(&input[..cut]), Parsed::Incomplete, "cut at {cut}");
        }
        assert!(matches!(parse_command(b"*x\r\n"), Parsed::Invalid(_)));
        assert!(matches!(parse_command(b"*1\r\n+OK\r\n"), Parsed::Invalid(_)));
        assert!(matches!(parse_command(b"*1\r\n$-5\r\n"), Parsed::Invalid(_)));
        assert!(matches!(parse_command(b"*1\r\n$2\r\nabXY"), Parsed::Invalid(_)));
    }
}
