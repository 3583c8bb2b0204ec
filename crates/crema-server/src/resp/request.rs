//! Parsing client requests: RESP arrays of bulk strings (what every client library and
//! `redis-cli` send) and inline commands (what a human types over telnet).
//!
//! [`parse_request`] looks at the bytes received so far and answers a whole request and how many
//! bytes it used, `Ok(None)` when more bytes are needed, or an error. Every length is checked
//! against [`RequestLimits`] before anything is buffered for it, so a client announcing a huge
//! bulk string is refused at once instead of making the server wait for (and hold) its bytes.
//! Written by hand: the RESP crates on crates.io parse replies (client side) or allocate per
//! frame without limits; this parser is the hot path of every command.

use bytes::{Bytes, BytesMut};
use thiserror::Error;

/// Limits on what one request may announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Largest bulk string (a key or value), bytes. Redis's default is 512 MiB.
    pub max_bulk_bytes: usize,
    /// Most arguments in one request.
    pub max_args: usize,
    /// Longest inline command line, bytes (Redis: 64 KiB).
    pub max_inline_bytes: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self { max_bulk_bytes: 16 * 1024 * 1024, max_args: 1024 * 1024, max_inline_bytes: 64 * 1024 }
    }
}

/// Why a request cannot be parsed. The connection answers `-ERR Protocol error: ...` and closes:
/// after a framing error the byte stream cannot be trusted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Malformed bytes (the message says what was expected).
    #[error("Protocol error: {0}")]
    Protocol(String),
    /// A length over a limit.
    #[error("Protocol error: {what} {len} is over the limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

fn protocol(msg: impl Into<String>) -> RequestError {
    RequestError::Protocol(msg.into())
}

/// Finds `\r\n` at or after `from`; answers the index of `\r`.
fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?.windows(2).position(|w| w == b"\r\n").map(|p| from + p)
}

/// Parses a decimal length line starting at `at` (after the type byte); answers (value, next).
fn parse_len(buf: &[u8], at: usize, max_digits_ok: usize) -> Result<Option<(i64, usize)>, RequestError> {
    let Some(end) = find_crlf(buf, at) else {
        if buf.len().saturating_sub(at) > max_digits_ok {
            return Err(protocol("length line too long"));
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[at..end]).map_err(|_| protocol("invalid length"))?;
    let value = strict_i64(text).ok_or_else(|| protocol(format!("invalid length '{text}'")))?;
    Ok(Some((value, end + 2)))
}

/// `text` as Redis reads a length (`string2ll`): `0`, or an optional `-` and digits without a
/// leading zero, in range. Rust's `parse` also takes `+4`, `-0` and `007`, which Redis refuses
/// (found from outside: `$+4` was read as 4).
fn strict_i64(text: &str) -> Option<i64> {
    if text == "0" {
        return Some(0);
    }
    let digits = text.strip_prefix('-').unwrap_or(text);
    let first = *digits.as_bytes().first()?;
    if !(b'1'..=b'9').contains(&first) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Where an argument is: a range of the input (array requests) or its own bytes (inline
/// requests, which may unescape).
enum Span {
    At(usize, usize),
    Owned(Bytes),
}

/// Parses one request from the front of `buf`: its arguments (copied) and the bytes it used.
///
/// # Errors
/// [`RequestError`] for malformed input or a length over `limits`.
pub fn parse_request(
    buf: &[u8],
    limits: &RequestLimits,
) -> Result<Option<(Vec<Bytes>, usize)>, RequestError> {
    let Some((spans, used)) = parse_spans(buf, limits)? else { return Ok(None) };
    let args = spans
        .into_iter()
        .map(|s| match s {
            Span::At(start, end) => Bytes::copy_from_slice(&buf[start..end]),
            Span::Owned(b) => b,
        })
        .collect();
    Ok(Some((args, used)))
}

/// Like [`parse_request`], but takes the request off the front of `buf` and answers arguments
/// that share its memory instead of copies (the server's hot path).
///
/// # Errors
/// As [`parse_request`]; `buf` is then unchanged.
pub fn take_request(buf: &mut BytesMut, limits: &RequestLimits) -> Result<Option<Vec<Bytes>>, RequestError> {
    take_request_resuming(buf, limits, &mut Progress::default())
}

/// An argument kept past its request (a queued transaction's, a watched key, a client name)
/// in an allocation of its own. Every argument is a slice of the connection's input buffer,
/// and one kept slice keeps the whole buffer: found in review, a transaction queued one
/// command per round trip held a fresh 16 KiB buffer per 3-byte key (about 2.5 GiB of a node's
/// memory per connection within the queue's limit, which counts the arguments alone).
pub fn detached(arg: &Bytes) -> Bytes {
    Bytes::copy_from_slice(arg)
}

/// How far an array request that has not fully arrived was parsed: the next call goes on from
/// there instead of parsing it again from its start. Found in review: a request of a million
/// small arguments sent slowly was parsed again from its start on every 16 KiB read, a
/// quadratic cost a client could make last minutes.
#[derive(Default)]
pub struct Progress {
    /// The arguments announced, the bytes parsed (header and whole arguments) and the spans of
    /// the arguments parsed; `None`: nothing parsed yet.
    array: Option<(usize, usize, Vec<Span>)>,
}

impl Progress {
    /// Bytes of memory the parsed part of the unfinished request holds besides the input.
    pub fn held_bytes(&self) -> usize {
        self.array.as_ref().map_or(0, |(_, _, spans)| spans.capacity() * std::mem::size_of::<Span>())
    }
}

/// [`take_request`] going on from `progress`, which it updates (the same `buf` must be given,
/// grown only at its end, until a request is taken or an error answered).
///
/// # Errors
/// As [`parse_request`].
pub fn take_request_resuming(
    buf: &mut BytesMut,
    limits: &RequestLimits,
    progress: &mut Progress,
) -> Result<Option<Vec<Bytes>>, RequestError> {
    let parsed = match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_array(buf, limits, progress),
        Some(_) => parse_inline(buf, limits),
    };
    if !matches!(parsed, Ok(None)) {
        progress.array = None;
    }
    let Some((spans, used)) = parsed? else { return Ok(None) };
    let frame = buf.split_to(used).freeze();
    Ok(Some(
        spans
            .into_iter()
            .map(|s| match s {
                Span::At(start, end) => frame.slice(start..end),
                Span::Owned(b) => b,
            })
            .collect(),
    ))
}

fn parse_spans(buf: &[u8], limits: &RequestLimits) -> Result<Option<(Vec<Span>, usize)>, RequestError> {
    match buf.first() {
        None => Ok(None),
        Some(b'*') => parse_array(buf, limits, &mut Progress::default()),
        Some(_) => parse_inline(buf, limits),
    }
}

fn parse_array(
    buf: &[u8],
    limits: &RequestLimits,
    progress: &mut Progress,
) -> Result<Option<(Vec<Span>, usize)>, RequestError> {
    let (count, mut at, mut args) = match progress.array.take() {
        Some(parsed) => parsed,
        None => {
            let Some((count, at)) = parse_len(buf, 1, 20)? else { return Ok(None) };
            if count <= 0 {
                // `*0` and `*-1` are valid RESP but carry no command: skip them like Redis does.
                return Ok(Some((Vec::new(), at)));
            }
            let count = count as usize;
            if count > limits.max_args {
                return Err(RequestError::TooLarge {
                    what: "multibulk length",
                    len: count,
                    max: limits.max_args,
                });
            }
            // Pre-size modestly: a client may announce many arguments and never send them.
            (count, at, Vec::with_capacity(count.min(64)))
        }
    };
    while args.len() < count {
        match buf.get(at) {
            None => {
                progress.array = Some((count, at, args));
                return Ok(None);
            }
            Some(b'$') => {}
            Some(&other) => {
                return Err(protocol(format!("expected '$', got '{}'", char::from(other).escape_default())))
            }
        }
        let Some((len, start)) = parse_len(buf, at + 1, 20)? else {
            progress.array = Some((count, at, args));
            return Ok(None);
        };
        if len < 0 {
            return Err(protocol("invalid bulk length"));
        }
        let len = len as usize;
        if len > limits.max_bulk_bytes {
            return Err(RequestError::TooLarge { what: "bulk length", len, max: limits.max_bulk_bytes });
        }
        let end = start + len;
        if buf.len() < end + 2 {
            progress.array = Some((count, at, args));
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(protocol("bulk string not terminated by CRLF"));
        }
        args.push(Span::At(start, end));
        at = end + 2;
    }
    Ok(Some((args, at)))
}

fn parse_inline(buf: &[u8], limits: &RequestLimits) -> Result<Option<(Vec<Span>, usize)>, RequestError> {
    let newline = buf.iter().position(|b| *b == b'\n');
    let Some(nl) = newline else {
        if buf.len() > limits.max_inline_bytes {
            return Err(RequestError::TooLarge {
                what: "inline request",
                len: buf.len(),
                max: limits.max_inline_bytes,
            });
        }
        return Ok(None);
    };
    if nl > limits.max_inline_bytes {
        return Err(RequestError::TooLarge { what: "inline request", len: nl, max: limits.max_inline_bytes });
    }
    let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
    let args = split_inline(line)?.into_iter().map(Span::Owned).collect();
    Ok(Some((args, nl + 1)))
}

/// Splits an inline line into arguments as Redis does (`sdssplitargs`): spaces separate
/// them; a double quote opens a quoted part anywhere in an argument, with `\n`, `\r`, `\t`,
/// `\b`, `\a` and `\xHH` escapes; a single quote opens one where only `\'` is an escape; a
/// closing quote must end the argument. A quote left open, or one followed by more of the
/// argument, is a protocol error ("unbalanced quotes", as Redis answers both).
fn split_inline(line: &[u8]) -> Result<Vec<Bytes>, RequestError> {
    // Redis splits a C string: a NUL byte ends the line (inside quotes, unbalanced).
    let line = line.iter().position(|c| *c == 0).map_or(line, |nul| &line[..nul]);
    let unbalanced = || protocol("unbalanced quotes in request");
    let ends_argument = |at: usize| line.get(at).is_none_or(|c| c.is_ascii_whitespace() || *c == 0x0b);
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while line.get(i).is_some_and(|c| c.is_ascii_whitespace() || *c == 0x0b) {
            i += 1;
        }
        if i == line.len() {
            return Ok(args);
        }
        let mut arg = BytesMut::new();
        let mut quote = None;
        loop {
            match quote {
                Some(q) => match line.get(i).copied() {
                    None => return Err(unbalanced()),
                    Some(b'\\')
                        if q == b'"'
                            && line.get(i + 1) == Some(&b'x')
                            && hex_byte(line.get(i + 2..i + 4)).is_some() =>
                    {
                        arg.extend_from_slice(&[hex_byte(line.get(i + 2..i + 4)).expect("checked")]);
                        i += 4;
                    }
                    Some(b'\\') if q == b'"' && i + 1 < line.len() => {
                        arg.extend_from_slice(&[unescape(line[i + 1])]);
                        i += 2;
                    }
                    Some(b'\\') if q == b'\'' && line.get(i + 1) == Some(&b'\'') => {
                        arg.extend_from_slice(b"'");
                        i += 2;
                    }
                    Some(c) if c == q => {
                        if !ends_argument(i + 1) {
                            return Err(unbalanced());
                        }
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        arg.extend_from_slice(&[c]);
                        i += 1;
                    }
                },
                None => match line.get(i).copied() {
                    None | Some(b' ' | b'\n' | b'\r' | b'\t') => break,
                    Some(q @ (b'"' | b'\'')) => {
                        quote = Some(q);
                        i += 1;
                    }
                    Some(c) => {
                        arg.extend_from_slice(&[c]);
                        i += 1;
                    }
                },
            }
        }
        args.push(arg.freeze());
    }
}

/// The byte two hex digits spell.
fn hex_byte(digits: Option<&[u8]>) -> Option<u8> {
    let digits = std::str::from_utf8(digits?).ok()?;
    u8::from_str_radix(digits, 16).ok().filter(|_| digits.bytes().all(|c| c.is_ascii_hexdigit()))
}

fn unescape(c: u8) -> u8 {
    match c {
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        b'b' => 0x08,
        b'a' => 0x07,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(buf: &[u8]) -> Result<Option<(Vec<Bytes>, usize)>, RequestError> {
        parse_request(buf, &RequestLimits::default())
    }

    fn encode(args: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend(format!("${}\r\n", a.len()).into_bytes());
            out.extend(a);
            out.extend(b"\r\n");
        }
        out
    }

    #[test]
    fn arrays_of_bulk_strings() {
        let wire = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n*1\r\n$4\r\nPING\r\n";
        let (args, used) = parse(wire).unwrap().unwrap();
        assert_eq!(args, vec![Bytes::from("SET"), Bytes::from("k"), Bytes::new()]);
        let (args, rest) = parse(&wire[used..]).unwrap().unwrap();
        assert_eq!(args, vec![Bytes::from("PING")]);
        assert_eq!(used + rest, wire.len());
    }

    #[test]
    fn every_prefix_is_incomplete() {
        let wire = encode(&[b"SET".to_vec(), b"key".to_vec(), b"value".to_vec()]);
        for cut in 0..wire.len() {
            assert_eq!(parse(&wire[..cut]).unwrap(), None, "prefix of {cut} bytes");
        }
    }

    #[test]
    fn inline_commands_with_quotes() {
        let (args, used) = parse(b"set \"a b\" 'c d' e\r\n").unwrap().unwrap();
        assert_eq!(args, vec![Bytes::from("set"), Bytes::from("a b"), Bytes::from("c d"), Bytes::from("e")]);
        assert_eq!(used, 19);
        let (args, _) = parse(b"ECHO \"x\\ny\"\n").unwrap().unwrap();
        assert_eq!(args[1], Bytes::from("x\ny"));
        assert!(parse(b"set \"unterminated\r\n").is_err());
        assert_eq!(parse(b"PING").unwrap(), None, "no newline yet");
    }

    /// Redis's own splitting (`sdssplitargs`), found different from outside: hex and bell
    /// escapes, a quoted part inside an argument, an escaped single quote.
    #[test]
    fn inline_commands_split_as_redis_splits_them() {
        let split = |line: &[u8]| {
            let mut line = line.to_vec();
            line.extend(b"\r\n");
            parse(&line).map(|parsed| parsed.expect("a whole line").0)
        };
        let second = |line: &[u8]| split(line).unwrap()[1].to_vec();
        assert_eq!(second(br#"ECHO "\x41\x7a\xZZ\b\a\0""#), b"AzxZZ\x08\x070".to_vec());
        assert_eq!(second(br#"ECHO a"b c""#), b"ab c".to_vec());
        assert_eq!(second(br"ECHO 'a\'b'"), b"a'b".to_vec());
        assert_eq!(second(br"ECHO 'a\nb'"), br"a\nb".to_vec());
        assert_eq!(second(b"ECHO x\x0b"), b"x\x0b".to_vec(), "a vertical tab ends no argument");
        // A NUL byte ends the line (found in review: it looped for ever before the line's end).
        assert_eq!(split(b"PING\0 x").unwrap(), vec![Bytes::from("PING")]);
        assert_eq!(split(b"\0").unwrap(), Vec::<Bytes>::new());
        assert!(split(b"ECHO \"a\0b\"").is_err());
        for unbalanced in
            [&br#"ECHO "a"b"#[..], br#"ECHO a"b c"d"#, br"ECHO 'a'b", br#"ECHO "a"#, br"ECHO 'a"]
        {
            assert!(split(unbalanced).is_err(), "{}", String::from_utf8_lossy(unbalanced));
        }
    }

    #[test]
    fn limits_are_enforced_before_buffering() {
        let limits = RequestLimits { max_bulk_bytes: 10, max_args: 2, max_inline_bytes: 8 };
        assert!(matches!(
            parse_request(b"*1\r\n$11\r\n", &limits),
            Err(RequestError::TooLarge { what: "bulk length", len: 11, max: 10 })
        ));
        assert!(matches!(parse_request(b"*3\r\n", &limits), Err(RequestError::TooLarge { len: 3, .. })));
        assert!(matches!(parse_request(b"PING PING PING", &limits), Err(RequestError::TooLarge { .. })));
    }

    #[test]
    fn malformed_input_is_a_protocol_error() {
        // Lengths as Redis reads them: no sign but a minus, no leading zero, no space.
        let lengths = [
            &b"*1\r\n$+4\r\nPING\r\n"[..],
            b"*1\r\n$-0\r\n\r\n",
            b"*1\r\n$04\r\nPING\r\n",
            b"*1\r\n$ 4\r\nPING\r\n",
            b"*+1\r\n$4\r\nPING\r\n",
            b"*01\r\n$4\r\nPING\r\n",
            b"*-0\r\n",
        ];
        let others =
            [&b"*x\r\n"[..], b"*1\r\n:1\r\n", b"*1\r\n$-1\r\n", b"*1\r\n$1\r\nab\r\n", b"*1\r\n$z\r\n"];
        for bad in lengths.into_iter().chain(others) {
            assert!(
                matches!(parse(bad), Err(RequestError::Protocol(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest! {
        #[test]
        fn encoded_requests_round_trip(args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6)) {
            let wire = encode(&args);
            let (got, used) = parse(&wire).unwrap().unwrap();
            prop_assert_eq!(used, wire.len());
            prop_assert_eq!(got.iter().map(|b| b.to_vec()).collect::<Vec<_>>(), args);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn taking_agrees_with_parsing(args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..6), tail in prop::collection::vec(any::<u8>(), 0..20)) {
            let mut wire = encode(&args);
            let request_len = wire.len();
            wire.extend(&tail);
            let parsed = parse(&wire).unwrap().unwrap();
            let mut buf = BytesMut::from(&wire[..]);
            let taken = take_request(&mut buf, &RequestLimits::default()).unwrap().unwrap();
            prop_assert_eq!(taken, parsed.0);
            prop_assert_eq!(&buf[..], &wire[request_len..], "exactly the request was taken");
        }

        /// Fed in pieces, as reads deliver it, a request parsed on from where the last piece
        /// left it is the request parsed whole, and so is the one after it.
        #[test]
        fn resuming_agrees_with_parsing_whole(
            args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..30),
            cuts in prop::collection::vec(1usize..64, 1..40),
        ) {
            let mut wire = encode(&args);
            wire.extend(encode(&[b"PING".to_vec()]));
            let (mut buf, mut progress, mut taken) = (BytesMut::new(), Progress::default(), Vec::new());
            let mut fed = 0;
            for cut in cuts.iter().cycle() {
                if taken.len() == 2 {
                    break;
                }
                let next = (fed + cut).min(wire.len());
                buf.extend_from_slice(&wire[fed..next]);
                fed = next;
                while let Some(request) = take_request_resuming(&mut buf, &RequestLimits::default(), &mut progress).unwrap() {
                    taken.push(request);
                }
            }
            let whole: Vec<Bytes> = args.into_iter().map(Bytes::from).collect();
            prop_assert_eq!(&taken[0], &whole);
            prop_assert_eq!(&taken[1], &vec![Bytes::from("PING")]);
        }
    }
}
