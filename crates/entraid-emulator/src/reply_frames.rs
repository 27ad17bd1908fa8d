//! Where whole RESP2/RESP3 frames end in what the server sends, so the gateway can slip
//! its own pushes (maintenance notifications) between two replies and never into one.

/// Nesting deeper than this is not followed: the gateway then stops injecting on that
/// connection and copies bytes as they come.
const MAX_DEPTH: usize = 32;

/// What the bytes are, as far as frames go.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Frames {
    /// The first `n` bytes are whole frames; the rest is the start of the next one.
    Whole(usize),
    /// Not RESP the scanner follows: copy everything from here on.
    Unreadable,
}

/// The length of the longest prefix of `bytes` made of whole frames.
pub(crate) fn whole_frames(bytes: &[u8]) -> Frames {
    let mut at = 0;
    loop {
        match frame_end(bytes, at, 0) {
            Ok(Some(end)) => at = end,
            Ok(None) => return Frames::Whole(at),
            Err(()) => return Frames::Unreadable,
        }
    }
}

/// Where the line starting at `at` ends (after its CRLF), if it is all there.
fn line_end(bytes: &[u8], at: usize) -> Option<usize> {
    bytes
        .get(at..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| at + i + 2)
}

/// Where the frame starting at `at` ends: `Ok(None)` if it is not all there yet.
fn frame_end(bytes: &[u8], at: usize, depth: usize) -> Result<Option<usize>, ()> {
    if depth > MAX_DEPTH {
        return Err(());
    }
    let Some(&kind) = bytes.get(at) else {
        return Ok(None);
    };
    let Some(header_end) = line_end(bytes, at) else {
        return Ok(None);
    };
    let header = &bytes[at + 1..header_end - 2];
    let length = || -> Result<i64, ()> {
        std::str::from_utf8(header)
            .ok()
            .and_then(|text| text.parse::<i64>().ok())
            .ok_or(())
    };
    match kind {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(Some(header_end)),
        b'$' | b'!' | b'=' => {
            let n = length()?;
            if n < 0 {
                return Ok(Some(header_end));
            }
            let end = header_end + usize::try_from(n).map_err(|_| ())? + 2;
            Ok((bytes.len() >= end).then_some(end))
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = length()?;
            if n < 0 {
                return Ok(Some(header_end));
            }
            let count = usize::try_from(n).map_err(|_| ())?;
            let count = if matches!(kind, b'%' | b'|') { count * 2 } else { count };
            let mut end = header_end;
            for _ in 0..count {
                match frame_end(bytes, end, depth + 1)? {
                    Some(next) => end = next,
                    None => return Ok(None),
                }
            }
            if kind == b'|' {
                // Attributes come before the reply they describe: one unit with it.
                return frame_end(bytes, end, depth + 1);
            }
            Ok(Some(end))
        }
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_frames_are_found_and_partial_ones_kept() {
        let replies =
            b"+OK\r\n$5\r\nhello\r\n*2\r\n:1\r\n%1\r\n+k\r\n_\r\n>3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$1\r\nx\r\n";
        assert_eq!(whole_frames(replies), Frames::Whole(replies.len()));
        // Cut anywhere: the prefix is the frames before the cut.
        for cut in 0..replies.len() {
            let Frames::Whole(n) = whole_frames(&replies[..cut]) else {
                panic!("readable");
            };
            assert!(n <= cut);
            assert!(matches!(n, 0 | 5 | 16 | 35), "cut {cut}: {n}");
        }
        assert_eq!(whole_frames(b"$-1\r\n*-1\r\n"), Frames::Whole(10));
        assert_eq!(whole_frames(b"|1\r\n+a\r\n+b\r\n+reply\r\n"), Frames::Whole(20));
        assert_eq!(whole_frames(b"?what\r\n"), Frames::Unreadable);
    }
}
