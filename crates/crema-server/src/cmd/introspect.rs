//! OBJECT and MEMORY: how a key's value is stored and what it costs, as far as crema knows.
//!
//! `OBJECT ENCODING` answers Redis's names for a string (`int`, `embstr`, `raw`) from the value,
//! as Redis would store it; crema keeps every value as bytes. `OBJECT REFCOUNT` is 1 (values are
//! not shared). `OBJECT IDLETIME` and `OBJECT FREQ` are refused: the eviction policy keeps no
//! per-key clock or counter to read. `MEMORY USAGE` is the weight the memory limit counts for
//! the entry (key, value and a fixed overhead per entry), not an allocator's figure.

use bytes::Bytes;

use super::{parse_int, Call, CmdError, Kind};
use crate::resp::Reply;

/// Redis stores strings of at most this many bytes in one allocation with their header.
const EMBSTR_MAX: usize = 44;

pub(super) async fn run(kind: Kind, call: &mut Call<'_>) -> Result<Reply, CmdError> {
    let sub = call.option(1);
    let argc = call.args.len();
    let name = if kind == Kind::Object { "OBJECT" } else { "MEMORY" };
    match (kind, sub.as_str(), argc) {
        (_, "HELP", 2) => Ok(help(kind)),
        (Kind::Object, "ENCODING" | "REFCOUNT" | "IDLETIME" | "FREQ", 3) => {
            let Some(value) = value_of(call).await? else { return Ok(Reply::Null) };
            match sub.as_str() {
                "ENCODING" => Ok(Reply::bulk(encoding(&value))),
                "REFCOUNT" => Ok(Reply::Integer(1)),
                "IDLETIME" => Err(CmdError::Invalid(
                    "idle time is not tracked: the eviction policy (TinyLFU) keeps no per-key clock".into(),
                )),
                _ => Err(CmdError::Invalid(
                    "access frequency is not tracked per key: the eviction policy (TinyLFU) keeps a shared sketch"
                        .into(),
                )),
            }
        }
        (Kind::Memory, "USAGE", 3 | 5) => {
            if argc == 5 {
                if call.option(3) != "SAMPLES" {
                    return Err(CmdError::Syntax);
                }
                // Values are single strings: there is nothing to sample.
                if parse_int(call.arg(4))? < 0 {
                    return Err(CmdError::Syntax);
                }
            }
            let key_len = call.arg(2).len() as u64;
            let usage = value_of(call)
                .await?
                .map(|value| key_len + value.len() as u64 + crema::cache::storage::ENTRY_OVERHEAD_BYTES);
            Ok(usage.map_or(Reply::Null, |bytes| Reply::Integer(bytes as i64)))
        }
        _ if known(kind, &sub) => {
            Err(CmdError::Arity(format!("{}|{}", name.to_ascii_lowercase(), sub.to_ascii_lowercase())))
        }
        _ => Err(CmdError::Invalid(format!(
            "unknown subcommand '{}'. Try {name} HELP.",
            String::from_utf8_lossy(call.arg(1))
        ))),
    }
}

fn known(kind: Kind, sub: &str) -> bool {
    match kind {
        Kind::Object => matches!(sub, "ENCODING" | "REFCOUNT" | "IDLETIME" | "FREQ" | "HELP"),
        _ => matches!(sub, "USAGE" | "HELP"),
    }
}

/// The value of the key in argument 2, read as GET reads it.
async fn value_of(call: &mut Call<'_>) -> Result<Option<Bytes>, CmdError> {
    let view = call.read_view(2..3).await?;
    Ok(view.get(call.arg(2)))
}

/// Redis's encoding of a string value: `int` when it is the canonical text of a 64-bit
/// integer, else `embstr` up to 44 bytes, else `raw`.
fn encoding(value: &[u8]) -> &'static str {
    let canonical_int = value.len() <= 20
        && std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .is_some_and(|n| n.to_string().as_bytes() == value);
    if canonical_int {
        "int"
    } else if value.len() <= EMBSTR_MAX {
        "embstr"
    } else {
        "raw"
    }
}

fn help(kind: Kind) -> Reply {
    let lines: &[&str] = if kind == Kind::Object {
        &[
            "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "ENCODING <key>",
            "    Return the kind of internal representation used in order to store the value",
            "    associated with a <key> (int, embstr or raw, as Redis would store it).",
            "REFCOUNT <key>",
            "    Return the number of references of the value associated with the specified",
            "    <key> (always 1: values are not shared).",
            "IDLETIME <key>, FREQ <key>",
            "    Refused: the eviction policy keeps no per-key clock or counter.",
            "HELP",
            "    Print this help.",
        ]
    } else {
        &[
            "MEMORY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "USAGE <key> [SAMPLES <count>]",
            "    Return the bytes the memory limit counts for the key: its key, its value and a",
            "    fixed overhead per entry.",
            "HELP",
            "    Print this help.",
        ]
    };
    Reply::Array(lines.iter().map(|l| Reply::Simple(l)).collect())
}

#[cfg(test)]
mod tests {
    use super::encoding;

    #[test]
    fn encodings_are_redis_names() {
        assert_eq!(encoding(b"12345"), "int");
        assert_eq!(encoding(b"-9223372036854775808"), "int");
        assert_eq!(encoding(b"9223372036854775808"), "embstr", "past i64");
        assert_eq!(encoding(b"007"), "embstr", "not the canonical text");
        assert_eq!(encoding(b"+1"), "embstr");
        assert_eq!(encoding(b""), "embstr");
        assert_eq!(encoding(&[b'x'; 44]), "embstr");
        assert_eq!(encoding(&[b'x'; 45]), "raw");
    }
}
