//! Encoding replies in RESP2 or RESP3 (chosen per connection by `HELLO`).
//!
//! A [`Reply`] is the shape a command answers; [`Reply::encode`] writes it for the connection's
//! protocol version. RESP3-only shapes degrade the way Redis does for RESP2 clients: a map
//! becomes a flat array, null becomes the null bulk string, booleans become 1/0, doubles become
//! bulk strings.

use bytes::Bytes;
#[cfg(test)]
use bytes::BytesMut;

use super::output::ReplySink;

/// The protocol version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// RESP2, the default.
    #[default]
    Resp2,
    /// RESP3, after `HELLO 3`.
    Resp3,
}

/// A reply to one command.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `+OK`-style status.
    Simple(&'static str),
    /// An error line: the text starts with its code (`ERR`, `WRONGTYPE`, `NOTLEADER`, ...).
    Error(String),
    /// An integer.
    Integer(i64),
    /// A binary-safe string.
    Bulk(Bytes),
    /// No value (`$-1` in RESP2, `_` in RESP3).
    Null,
    /// No array (`*-1` in RESP2, `_` in RESP3): `EXEC` when a watched key changed.
    NullArray,
    /// An array.
    Array(Vec<Reply>),
    /// A map (RESP3); a flat key-value array in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// A boolean (RESP3); 1 or 0 in RESP2.
    Boolean(bool),
    /// A double (RESP3); a bulk string in RESP2.
    Double(f64),
    /// Text for people (INFO, CLIENT LIST, CLUSTER NODES): a verbatim string of format `txt`
    /// in RESP3, a bulk string in RESP2, as Redis sends them.
    Verbatim(Bytes),
}

impl Reply {
    /// `+OK`.
    pub const OK: Reply = Reply::Simple("OK");

    /// An `-ERR <msg>` error.
    pub fn err(msg: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {msg}"))
    }

    /// The text of an error reply; `None` for any other reply.
    pub fn error_text(&self) -> Option<&str> {
        match self {
            Reply::Error(text) => Some(text),
            _ => None,
        }
    }

    /// A bulk string from anything byte-like.
    pub fn bulk(b: impl Into<Bytes>) -> Reply {
        Reply::Bulk(b.into())
    }

    /// This reply in the order it is written, an array's or a map's header apart from its
    /// elements (depth first): a large reply can then be written piece by piece.
    pub fn pieces(&self) -> Pieces<'_> {
        Pieces { stack: vec![Box::new(std::iter::once(self))] }
    }

    /// Whether this is an array or a map (more than one [`Piece`]).
    pub fn is_aggregate(&self) -> bool {
        matches!(self, Reply::Array(_) | Reply::Map(_))
    }

    /// The elements of an array or map (a map's keys and values in turn); `None` for the others.
    fn elements(&self) -> Option<Box<dyn Iterator<Item = &Reply> + Send + '_>> {
        match self {
            Reply::Array(items) => Some(Box::new(items.iter())),
            Reply::Map(pairs) => Some(Box::new(pairs.iter().flat_map(|(k, v)| [k, v]))),
            _ => None,
        }
    }

    /// Appends the header of an array or map, encoded for `protocol`: what [`Self::encode`]
    /// writes before the elements. Nothing for the other replies.
    fn encode_head(&self, protocol: Protocol, out: &mut impl ReplySink) {
        match self {
            Reply::Array(items) => line(out, b'*', itoa(items.len() as i64).as_bytes()),
            Reply::Map(pairs) if protocol == Protocol::Resp3 => {
                line(out, b'%', itoa(pairs.len() as i64).as_bytes())
            }
            Reply::Map(pairs) => line(out, b'*', itoa(2 * pairs.len() as i64).as_bytes()),
            _ => {}
        }
    }

    /// Appends this reply, encoded for `protocol`, to `out` (a `BytesMut`, or a connection's
    /// [`super::output::Output`], which keeps large values by reference).
    pub fn encode(&self, protocol: Protocol, out: &mut impl ReplySink) {
        let resp3 = protocol == Protocol::Resp3;
        match self {
            Reply::Simple(s) => line(out, b'+', s.as_bytes()),
            Reply::Error(e) => {
                // An error line cannot hold CR or LF; replace them rather than break the framing.
                let clean: Vec<u8> =
                    e.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }).collect();
                line(out, b'-', &clean);
            }
            Reply::Integer(i) => line(out, b':', itoa(*i).as_bytes()),
            Reply::Bulk(b) => bulk_value(out, b),
            Reply::Null if resp3 => out.put(b"_\r\n"),
            Reply::Null => out.put(b"$-1\r\n"),
            Reply::NullArray if resp3 => out.put(b"_\r\n"),
            Reply::NullArray => out.put(b"*-1\r\n"),
            Reply::Array(items) => {
                self.encode_head(protocol, out);
                for item in items {
                    item.encode(protocol, out);
                }
            }
            Reply::Map(pairs) => {
                self.encode_head(protocol, out);
                for (k, v) in pairs {
                    k.encode(protocol, out);
                    v.encode(protocol, out);
                }
            }
            Reply::Boolean(b) if resp3 => out.put(if *b { b"#t\r\n" } else { b"#f\r\n" }),
            Reply::Boolean(b) => line(out, b':', if *b { b"1" } else { b"0" }),
            Reply::Double(d) if resp3 => line(out, b',', format_double(*d).as_bytes()),
            Reply::Double(d) => bulk(out, format_double(*d).as_bytes()),
            Reply::Verbatim(text) if resp3 => {
                line(out, b'=', itoa(text.len() as i64 + 4).as_bytes());
                out.put(b"txt:");
                out.put_value(text);
                out.put(b"\r\n");
            }
            Reply::Verbatim(text) => bulk_value(out, text),
        }
    }
}

/// One piece of a reply, as [`Reply::pieces`] gives them.
#[derive(Debug, Clone, Copy)]
pub enum Piece<'a> {
    /// The header of an array or a map; its elements are the next pieces.
    Head(&'a Reply),
    /// A reply that is neither, whole.
    Whole(&'a Reply),
}

impl Piece<'_> {
    /// Appends this piece, encoded for `protocol`, to `out`.
    pub fn encode(&self, protocol: Protocol, out: &mut impl ReplySink) {
        match self {
            Piece::Head(reply) => reply.encode_head(protocol, out),
            Piece::Whole(reply) => reply.encode(protocol, out),
        }
    }
}

/// The pieces of a reply, depth first (see [`Reply::pieces`]).
pub struct Pieces<'a> {
    stack: Vec<Box<dyn Iterator<Item = &'a Reply> + Send + 'a>>,
}

impl<'a> Iterator for Pieces<'a> {
    type Item = Piece<'a>;

    fn next(&mut self) -> Option<Piece<'a>> {
        loop {
            let top = self.stack.last_mut()?;
            let Some(item) = top.next() else {
                self.stack.pop();
                continue;
            };
            return Some(match item.elements() {
                Some(elements) => {
                    self.stack.push(elements);
                    Piece::Head(item)
                }
                None => Piece::Whole(item),
            });
        }
    }
}

fn line(out: &mut impl ReplySink, kind: u8, body: &[u8]) {
    out.put(&[kind]);
    out.put(body);
    out.put(b"\r\n");
}

fn bulk(out: &mut impl ReplySink, body: &[u8]) {
    line(out, b'$', itoa(body.len() as i64).as_bytes());
    out.put(body);
    out.put(b"\r\n");
}

fn bulk_value(out: &mut impl ReplySink, body: &Bytes) {
    line(out, b'$', itoa(body.len() as i64).as_bytes());
    out.put_value(body);
    out.put(b"\r\n");
}

fn itoa(i: i64) -> ItoaText {
    ItoaText(itoa::Buffer::new(), i)
}

/// A decimal rendering on the stack (no allocation per reply).
struct ItoaText(itoa::Buffer, i64);

impl ItoaText {
    fn as_bytes(&mut self) -> &[u8] {
        self.0.format(self.1).as_bytes()
    }
}

/// Formats a double as Redis does: `inf`, `-inf`, `nan`, else the shortest round-trip form.
pub fn format_double(d: f64) -> String {
    if d.is_nan() {
        "nan".into()
    } else if d.is_infinite() {
        if d > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        }
    } else {
        format!("{d}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(r: &Reply, p: Protocol) -> String {
        let mut out = BytesMut::new();
        r.encode(p, &mut out);
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn resp2_shapes() {
        use Protocol::Resp2 as P;
        assert_eq!(enc(&Reply::OK, P), "+OK\r\n");
        assert_eq!(enc(&Reply::err("boom"), P), "-ERR boom\r\n");
        assert_eq!(enc(&Reply::Integer(-3), P), ":-3\r\n");
        assert_eq!(enc(&Reply::bulk("hi"), P), "$2\r\nhi\r\n");
        assert_eq!(enc(&Reply::Null, P), "$-1\r\n");
        assert_eq!(enc(&Reply::NullArray, P), "*-1\r\n");
        assert_eq!(enc(&Reply::Array(vec![Reply::Integer(1), Reply::Null]), P), "*2\r\n:1\r\n$-1\r\n");
        assert_eq!(
            enc(&Reply::Map(vec![(Reply::bulk("a"), Reply::Integer(1))]), P),
            "*2\r\n$1\r\na\r\n:1\r\n"
        );
        assert_eq!(enc(&Reply::Boolean(true), P), ":1\r\n");
        assert_eq!(enc(&Reply::Double(1.5), P), "$3\r\n1.5\r\n");
    }

    #[test]
    fn resp3_shapes() {
        use Protocol::Resp3 as P;
        assert_eq!(enc(&Reply::Null, P), "_\r\n");
        assert_eq!(enc(&Reply::NullArray, P), "_\r\n");
        assert_eq!(
            enc(&Reply::Map(vec![(Reply::bulk("a"), Reply::Integer(1))]), P),
            "%1\r\n$1\r\na\r\n:1\r\n"
        );
        assert_eq!(enc(&Reply::Boolean(false), P), "#f\r\n");
        assert_eq!(enc(&Reply::Double(f64::INFINITY), P), ",inf\r\n");
        assert_eq!(enc(&Reply::Verbatim("a\r\nb".into()), P), "=8\r\ntxt:a\r\nb\r\n");
        assert_eq!(enc(&Reply::Verbatim("a".into()), Protocol::Resp2), "$1\r\na\r\n");
    }

    #[test]
    fn error_text_cannot_break_framing() {
        assert_eq!(enc(&Reply::Error("ERR a\r\nb".into()), Protocol::Resp2), "-ERR a  b\r\n");
    }

    use proptest::prelude::*;
    use redis::Value;

    fn any_reply() -> impl Strategy<Value = Reply> {
        let leaf = prop_oneof![
            prop::sample::select(vec!["OK", "PONG", "string", "none"]).prop_map(Reply::Simple),
            any::<i64>().prop_map(Reply::Integer),
            prop::collection::vec(any::<u8>(), 0..32).prop_map(|b| Reply::Bulk(b.into())),
            Just(Reply::Null),
            any::<bool>().prop_map(Reply::Boolean),
            (-1e12f64..1e12).prop_map(Reply::Double),
            "[ -~\r\n]{0,40}".prop_map(|t| Reply::Verbatim(t.into())),
        ];
        leaf.prop_recursive(3, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Reply::Array),
                prop::collection::vec((inner.clone(), inner), 0..3).prop_map(Reply::Map),
            ]
        })
    }

    /// What a Redis client must read for `reply`: written from the protocol's rules, not from
    /// the encoder.
    fn as_client_sees(reply: &Reply, protocol: Protocol) -> Value {
        let resp3 = protocol == Protocol::Resp3;
        match reply {
            Reply::Simple("OK") => Value::Okay,
            Reply::Simple(s) => Value::SimpleString((*s).to_owned()),
            Reply::Integer(i) => Value::Int(*i),
            Reply::Bulk(b) => Value::BulkString(b.to_vec()),
            Reply::Null | Reply::NullArray => Value::Nil,
            Reply::Array(items) => Value::Array(items.iter().map(|r| as_client_sees(r, protocol)).collect()),
            Reply::Map(pairs) if resp3 => Value::Map(
                pairs
                    .iter()
                    .map(|(k, v)| (as_client_sees(k, protocol), as_client_sees(v, protocol)))
                    .collect(),
            ),
            Reply::Map(pairs) => Value::Array(
                pairs
                    .iter()
                    .flat_map(|(k, v)| [as_client_sees(k, protocol), as_client_sees(v, protocol)])
                    .collect(),
            ),
            Reply::Boolean(b) if resp3 => Value::Boolean(*b),
            Reply::Boolean(b) => Value::Int(*b as i64),
            Reply::Double(d) if resp3 => Value::Double(*d),
            Reply::Double(d) => Value::BulkString(format_double(*d).into_bytes()),
            Reply::Verbatim(text) if resp3 => Value::VerbatimString {
                format: redis::VerbatimFormat::Text,
                text: String::from_utf8(text.to_vec()).expect("generated as text"),
            },
            Reply::Verbatim(text) => Value::BulkString(text.to_vec()),
            Reply::Error(_) => unreachable!("not generated"),
        }
    }

    proptest! {
        /// Every reply, encoded in either protocol, reads back through the `redis` crate's own
        /// parser as the value the protocol defines.
        #[test]
        fn a_real_client_parser_reads_what_we_encode(reply in any_reply(), resp3 in any::<bool>()) {
            let protocol = if resp3 { Protocol::Resp3 } else { Protocol::Resp2 };
            let mut out = BytesMut::new();
            reply.encode(protocol, &mut out);
            let parsed = redis::parse_redis_value(&out).expect("the redis crate parses our reply");
            prop_assert_eq!(parsed, as_client_sees(&reply, protocol));
        }
    }

    proptest! {
        /// Written piece by piece (heads, then elements, depth first), a reply is the bytes
        /// it is written whole.
        #[test]
        fn pieces_make_the_whole(reply in any_reply(), resp3 in any::<bool>()) {
            let protocol = if resp3 { Protocol::Resp3 } else { Protocol::Resp2 };
            let mut whole = BytesMut::new();
            reply.encode(protocol, &mut whole);
            let mut pieces = BytesMut::new();
            for piece in reply.pieces() {
                piece.encode(protocol, &mut pieces);
            }
            prop_assert_eq!(pieces, whole);
        }
    }

    #[test]
    fn errors_reach_a_client_as_server_errors_with_their_code() {
        let mut out = BytesMut::new();
        Reply::Error("NOTLEADER 127.0.0.1:6381".into()).encode(Protocol::Resp2, &mut out);
        let parsed = redis::parse_redis_value(&out).unwrap();
        let Value::ServerError(e) = parsed else { panic!("{parsed:?}") };
        assert_eq!((e.code(), e.details()), ("NOTLEADER", Some("127.0.0.1:6381")));
    }
}
