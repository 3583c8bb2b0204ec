//! The replicated command, [`CacheCommand`]: its validation before propose and its byte codec.
//!
//! Pure code: no clock, no I/O. Time enters a command only as data written by the proposing node:
//! absolute expiries in unix milliseconds, and the proposer's clock reading carried beside every
//! command in a [`StampedCommand`]. Apply judges "expired" with that stamp (see
//! `state_machine`), so every node applies the same bytes to the same state with the same result.
//!
//! Conditional and read-modify-write commands (`Set` with a condition, `IncrBy`, `Append`,
//! `PutMany` with `only_if_none_exist`, ...) are decided in apply, never by a read on the
//! proposing node, so two clients racing on the same key cannot lose an update.
//!
//! The encoding is one format-version byte followed by postcard: version 3 for a command made
//! on the leader, version 4 for one forwarded by a follower, which also carries its write
//! session (`consensus::sessions`). Versions 1 and 2 are the same without the bound on what a
//! transaction's APPENDs and SETRANGEs copy ([`StampedCommand::bounded_copies`]): earlier builds
//! wrote them, and they still decode and apply as those builds applied them. A version this build
//! does not know is a decode error (a committed entry that does not decode is applied as a
//! counted no-op).

use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::acl::AclChange;
use crate::config::MAX_TTL;
use crate::consensus::long_double::LongDouble;
use crate::consensus::sessions::SessionStamp;
use crate::consensus::transaction::Transaction;
use crate::multiraft::map_store::PlacementChange;

/// Version byte leading an encoded command without a write session.
pub const COMMAND_FORMAT_VERSION: u8 = 1;

/// Version byte leading an encoded command that carries a write session.
pub const COMMAND_FORMAT_SESSION: u8 = 2;

/// Version bytes of the formats above whose transactions copy at most
/// [`crate::MOST_COPIED_PER_ENTRY`] in their APPENDs and SETRANGEs (see
/// [`StampedCommand::bounded_copies`]): what this build writes. Entries an earlier build wrote
/// keep the meaning they had when it applied them, so a log replayed after an upgrade changes
/// nothing it decided.
pub const COMMAND_FORMAT_BOUNDED: u8 = 3;

/// [`COMMAND_FORMAT_BOUNDED`] with a write session.
pub const COMMAND_FORMAT_BOUNDED_SESSION: u8 = 4;

/// A change to the cache, replicated through the Raft log and applied on every node.
///
/// Every variant that names a key requires it non-empty; values are bounded by
/// [`CommandLimits`]. "Live" below means present and not expired at the command's stamp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CacheCommand {
    /// Insert or replace `key`. `expires_at_ms` is an absolute unix time in milliseconds.
    /// Output: `Done`.
    Put {
        /// The key (never empty).
        key: Bytes,
        /// The value.
        value: Bytes,
        /// Absolute expiry (unix ms), or none for no expiry.
        expires_at_ms: Option<u64>,
    },
    /// Remove `key` if present. Output: `Removed(live entry was removed)`.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Remove every entry. Output: `Done`.
    Clear,
    /// Redis `SET` with its options. Output: `Written { written, old }`, `old` being the value
    /// live before the command (only filled when `return_old`).
    Set {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
        /// The expiry to leave on the key when written (`Keep` is `KEEPTTL`).
        expiry: ExpiryUpdate,
        /// Write only if absent (`NX`), only if present (`XX`), or always.
        condition: SetCondition,
        /// Report the previous value (`GET`).
        return_old: bool,
    },
    /// Remove several keys. Output: `Int(live entries removed)`.
    DeleteMany {
        /// The keys (duplicates count once).
        keys: Vec<Bytes>,
    },
    /// Write several keys, clearing their expiry (`MSET`); with `only_if_none_exist`, nothing
    /// is written if any key is live (`MSETNX`). Output: `Int(1)` if written, `Int(0)` if not.
    PutMany {
        /// Key/value pairs, written in order (a repeated key ends with its last value).
        pairs: Vec<(Bytes, Bytes)>,
        /// Write only if no key is live.
        only_if_none_exist: bool,
    },
    /// Add `delta` to the integer stored at `key` (absent counts as 0); the expiry is kept.
    /// Output: `Int(new value)`, or `Failed(NotInteger | Overflow)`.
    IncrBy {
        /// The key.
        key: Bytes,
        /// The increment (may be negative).
        delta: i64,
    },
    /// Add `delta` to the number stored at `key` (absent counts as 0) in `f64`; the expiry is
    /// kept. Output: `Value(Some(new value as text))`, or `Failed(NotFloat | NanOrInfinity)`.
    /// Logs written before [`CacheCommand::IncrByLongDouble`] hold it; servers now send that.
    IncrByFloat {
        /// The key.
        key: Bytes,
        /// The increment (finite).
        delta: f64,
    },
    /// Append `value` to the value at `key` (absent counts as empty); the expiry is kept.
    /// Output: `Int(new length)`, or `Failed(TooLarge)` past `max_len`.
    Append {
        /// The key.
        key: Bytes,
        /// The bytes to append.
        value: Bytes,
        /// Largest value allowed, written by the proposer so every node decides alike.
        max_len: u64,
    },
    /// Overwrite the value at `key` from `offset` on, zero-padding as needed; the expiry is kept.
    /// An empty `value` changes nothing. Output: `Int(new length)`, or `Failed(TooLarge)`.
    SetRange {
        /// The key.
        key: Bytes,
        /// Where to write.
        offset: u64,
        /// The bytes to write.
        value: Bytes,
        /// Largest value allowed.
        max_len: u64,
    },
    /// Remove `key` and report its value. Output: `Value(old)`.
    GetDel {
        /// The key.
        key: Bytes,
    },
    /// Report the value of `key` and change its expiry (`GETEX`). Output: `Value(value)`.
    GetEx {
        /// The key.
        key: Bytes,
        /// The new expiry: `Keep` changes nothing, `Persist` removes it.
        expiry: ExpiryUpdate,
    },
    /// Set the absolute expiry of a live `key` when `condition` holds; an expiry not after the
    /// command's stamp removes the key. Output: `Int(1)` if changed, `Int(0)` if not.
    Expire {
        /// The key.
        key: Bytes,
        /// The new absolute expiry (unix ms).
        expires_at_ms: u64,
        /// `NX`, `XX`, `GT`, `LT` or always.
        condition: ExpireCondition,
    },
    /// Remove the expiry of `key`. Output: `Int(1)` if it had one, else `Int(0)`.
    Persist {
        /// The key.
        key: Bytes,
    },
    /// Several commands in one log entry, applied in order with nothing in between; each is
    /// answered on its own (one that does not fit its value does not stop the others). The
    /// server sends a client's pipelined writes this way: one proposal instead of many, in the
    /// client's order. Output: `Batch(outputs)`.
    Batch(#[serde(deserialize_with = "super::nesting::nested")] Vec<CacheCommand>),
    /// Remove keys the leader's eviction policy chose (see `cache::storage`): proposed by the
    /// leader itself, applied on every node like a delete, so all hold the same keys.
    /// Output: `Int(entries removed)`.
    Evict {
        /// The keys.
        keys: Vec<Bytes>,
    },
    /// A Redis transaction (`MULTI` ... `EXEC`): its steps applied in order with nothing in
    /// between, reads included, unless a watched key changed (see `consensus::transaction`).
    /// Output: `Exec(Some(outputs))`, or `Exec(None)` when nothing was applied.
    Transaction(#[serde(deserialize_with = "super::nesting::nested")] Transaction),
    /// Redis's `INCRBYFLOAT`: add `delta` to the number stored at `key` (absent counts as 0)
    /// as C's `long double` does, with Redis's text for the result (see
    /// `consensus::long_double`); the expiry is kept. Output: `Value(Some(new value as text))`,
    /// or `Failed(NotFloat | NanOrInfinity)`.
    IncrByLongDouble {
        /// The key.
        key: Bytes,
        /// The increment.
        delta: LongDouble,
    },
    /// A change to the group's ACL users (see [`crate::acl`]); never inside a batch or a
    /// transaction. Output: as [`AclChange`] says.
    Acl(AclChange),
    /// A change of the shard map, in the meta shard only (see
    /// [`crate::multiraft::placement`]); never inside a batch or a transaction. Output: as
    /// [`PlacementChange`] says.
    Placement(PlacementChange),
    /// Copy the value and expiry of `from` to `to` (`COPY`); with `remove_source`, move them
    /// (`RENAME`, `RENAMENX`). A live `to` is overwritten only with `replace`. Both keys are in
    /// one shard. Output: `Int(1)` if copied or moved, `Int(0)` if not (`to` live without
    /// `replace`, or `from` absent for a copy); a move of an absent `from` is
    /// `Failed(NoSuchKey)`, as Redis answers RENAME. A move of a key onto itself changes
    /// nothing and answers as if done.
    Copy {
        /// The source key.
        from: Bytes,
        /// The destination key.
        to: Bytes,
        /// Overwrite a live `to`.
        replace: bool,
        /// Remove `from` (a rename).
        remove_source: bool,
    },
}

/// What a write does to a key's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpiryUpdate {
    /// Leave it as it is (`KEEPTTL`; for `GetEx`, no change).
    Keep,
    /// No expiry.
    Persist,
    /// Expire at this absolute unix time in milliseconds.
    At(u64),
}

/// When a `Set` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetCondition {
    /// Always.
    Always,
    /// Only when the key is not live (`NX`).
    IfAbsent,
    /// Only when the key is live (`XX`).
    IfPresent,
}

/// When an `Expire` applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpireCondition {
    /// Always.
    Always,
    /// Only when the key has no expiry (`NX`).
    IfNone,
    /// Only when the key has an expiry (`XX`).
    IfSome,
    /// Only when the new expiry is later than the current one; no expiry counts as infinite (`GT`).
    IfLater,
    /// Only when the new expiry is earlier than the current one (`LT`).
    IfEarlier,
    /// Only when the key has an expiry and the new one is earlier (`XX LT`).
    IfSomeEarlier,
}

/// A command with the proposer's clock reading (unix ms): the unit written to the Raft log.
#[derive(Debug, Clone, PartialEq)]
pub struct StampedCommand {
    /// The proposing node's clock when the command was made.
    pub now_ms: u64,
    /// The command.
    pub command: CacheCommand,
    /// The write session of a forwarded write: every copy of it is applied once.
    pub session: Option<SessionStamp>,
    /// Whether a transaction in it copies at most [`crate::MOST_COPIED_PER_ENTRY`] of stored
    /// values in its APPENDs and SETRANGEs: true for every command this build makes, false for
    /// entries an earlier build wrote (formats 1 and 2), which apply as they did.
    pub bounded_copies: bool,
}

/// Size limits a command is validated against before it is proposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandLimits {
    /// Largest key, bytes.
    pub max_key_bytes: usize,
    /// Largest value, bytes.
    pub max_value_bytes: usize,
}

/// Why a command was refused before propose, or could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandError {
    /// Keys must not be empty.
    #[error("key must not be empty")]
    EmptyKey,
    /// The key is over `max_key_bytes`.
    #[error("key is {len} bytes, the limit is {max}")]
    KeyTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is over `max_value_bytes`.
    #[error("value is {len} bytes, the limit is {max}")]
    ValueTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A TTL of zero or above ten years.
    #[error("ttl {0:?} is out of range (1 ms to 10 years)")]
    TtlOutOfRange(Duration),
    /// A multi-key command with no keys.
    #[error("no keys given")]
    NoKeys,
    /// A batch that is empty or holds another batch.
    #[error("a batch must hold at least one command and no batch")]
    BadBatch,
    /// A transaction holding a batch, a transaction or an eviction.
    #[error("a transaction cannot hold a batch, a transaction or an eviction")]
    BadTransaction,
    /// A transaction whose encoding is over the limit (see `consensus::transaction`).
    #[error("transaction is {len} bytes, the limit is {max} (max-key-bytes + max-value-bytes)")]
    TransactionTooLarge {
        /// Its encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A float increment that is NaN or infinite.
    #[error("increment is not a finite number")]
    NotFinite,
    /// An ACL change over the limits of [`crate::acl`].
    #[error("too many ACL rules or users, or a rule too long")]
    AclTooLarge,
    /// A shard map change that names no members, unsorted ones or too many.
    #[error("invalid shard placement")]
    BadPlacement,
    /// The bytes are not a command of a version this build knows.
    #[error("cannot decode command: {0}")]
    Decode(String),
    /// A write that must be atomic across its keys, on keys of several shards (Redis
    /// Cluster's `CROSSSLOT`; a `{hash tag}` puts related keys in one shard).
    #[error("keys in request don't hash to the same slot")]
    CrossSlot,
    /// A command of several keys (MSET, DEL, a pipeline's batch) whose encoding is over
    /// [`crate::config::MAX_COMMAND_BYTES`]: it could not travel to the followers.
    #[error("command is {len} bytes, the limit is {max}: send its keys in several commands")]
    CommandTooLarge {
        /// Its encoded length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl CacheCommand {
    /// Whether applying it may change several keys: such a write is applied whole before a
    /// read of several keys looks (see [`crate::cache::storage::CacheStorage::many_keys_read`]).
    pub fn writes_many_keys(&self) -> bool {
        match self {
            CacheCommand::Clear | CacheCommand::Batch(_) | CacheCommand::Transaction(_) => true,
            CacheCommand::DeleteMany { keys } | CacheCommand::Evict { keys } => keys.len() > 1,
            CacheCommand::PutMany { pairs, .. } => pairs.len() > 1,
            CacheCommand::Copy { .. } => true,
            _ => false,
        }
    }

    /// A put without expiry.
    pub fn put(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        CacheCommand::Put { key: key.into(), value: value.into(), expires_at_ms: None }
    }

    /// A delete.
    pub fn delete(key: impl Into<Bytes>) -> Self {
        CacheCommand::Delete { key: key.into() }
    }

    /// Checks keys and values against `limits`, and that a command of several keys fits in
    /// one Raft entry ([`crate::config::MAX_COMMAND_BYTES`]; one key and one value within
    /// their limits always do).
    pub fn validate(&self, limits: &CommandLimits) -> Result<(), CommandError> {
        self.validate_parts(limits)?;
        if matches!(
            self,
            CacheCommand::PutMany { .. }
                | CacheCommand::DeleteMany { .. }
                | CacheCommand::Evict { .. }
                | CacheCommand::Batch(_)
        ) && self.encoded_len_hint() > crate::config::MAX_COMMAND_BYTES / 2
        {
            // Counted exactly only when it may matter.
            let len =
                postcard::serialize_with_flavor::<_, _, usize>(self, postcard::ser_flavors::Size::default())
                    .map_err(|e| CommandError::Decode(e.to_string()))?;
            if len > crate::config::MAX_COMMAND_BYTES {
                return Err(CommandError::CommandTooLarge { len, max: crate::config::MAX_COMMAND_BYTES });
            }
        }
        Ok(())
    }

    fn validate_parts(&self, limits: &CommandLimits) -> Result<(), CommandError> {
        use CacheCommand::*;
        match self {
            Put { key, value, .. } | Set { key, value, .. } => {
                validate_key(key, limits)?;
                validate_value(value, limits)
            }
            // The limit a value may grow to travels in the command (every node decides alike),
            // so it is checked too: found in review, a peer's forwarded SETRANGE naming a limit
            // of 2^64 and an offset of 2^40 would have every replica allocate it in apply.
            Append { key, value, max_len } | SetRange { key, value, max_len, .. } => {
                validate_key(key, limits)?;
                validate_value(value, limits)?;
                if *max_len > limits.max_value_bytes as u64 {
                    return Err(CommandError::ValueTooLarge {
                        len: *max_len as usize,
                        max: limits.max_value_bytes,
                    });
                }
                Ok(())
            }
            Delete { key } | IncrBy { key, .. } | GetDel { key } | GetEx { key, .. } => {
                validate_key(key, limits)
            }
            IncrByLongDouble { key, .. } => validate_key(key, limits),
            Expire { key, .. } | Persist { key } => validate_key(key, limits),
            Copy { from, to, .. } => {
                validate_key(from, limits)?;
                validate_key(to, limits)
            }
            IncrByFloat { key, delta } => {
                validate_key(key, limits)?;
                if delta.is_finite() {
                    Ok(())
                } else {
                    Err(CommandError::NotFinite)
                }
            }
            DeleteMany { keys } | Evict { keys } => {
                if keys.is_empty() {
                    return Err(CommandError::NoKeys);
                }
                keys.iter().try_for_each(|k| validate_key(k, limits))
            }
            PutMany { pairs, .. } => {
                if pairs.is_empty() {
                    return Err(CommandError::NoKeys);
                }
                pairs.iter().try_for_each(|(k, v)| {
                    validate_key(k, limits)?;
                    validate_value(v, limits)
                })
            }
            Clear => Ok(()),
            Acl(change) if change.within_limits() => Ok(()),
            Acl(_) => Err(CommandError::AclTooLarge),
            Placement(change) if change.within_limits() => Ok(()),
            Placement(_) => Err(CommandError::BadPlacement),
            Batch(commands) => {
                if commands.is_empty()
                    || commands.iter().any(|c| matches!(c, Batch(_) | Transaction(_) | Acl(_) | Placement(_)))
                {
                    return Err(CommandError::BadBatch);
                }
                commands.iter().try_for_each(|c| c.validate(limits))
            }
            Transaction(transaction) => transaction.validate(limits),
        }
    }

    /// A size hint for the encoding.
    pub(crate) fn encoded_len_hint(&self) -> usize {
        use CacheCommand::*;
        match self {
            Put { key, value, .. } | Set { key, value, .. } => key.len() + value.len() + 24,
            Append { key, value, .. } | SetRange { key, value, .. } => key.len() + value.len() + 24,
            DeleteMany { keys } | Evict { keys } => keys.iter().map(|k| k.len() + 5).sum::<usize>() + 8,
            PutMany { pairs, .. } => pairs.iter().map(|(k, v)| k.len() + v.len() + 10).sum::<usize>() + 8,
            Delete { key } | IncrBy { key, .. } | IncrByFloat { key, .. } | GetDel { key } => key.len() + 16,
            IncrByLongDouble { key, .. } => key.len() + 24,
            GetEx { key, .. } | Expire { key, .. } | Persist { key } => key.len() + 24,
            Copy { from, to, .. } => from.len() + to.len() + 8,
            Clear => 2,
            Acl(change) => change.encoded_len_hint(),
            Placement(change) => change.encoded_len_hint(),
            Batch(commands) => commands.iter().map(CacheCommand::encoded_len_hint).sum::<usize>() + 4,
            Transaction(transaction) => transaction.encoded_len_hint(),
        }
    }
}

impl StampedCommand {
    /// Stamps `command` with `now_ms`.
    pub fn new(now_ms: u64, command: CacheCommand) -> Self {
        Self { now_ms, command, session: None, bounded_copies: true }
    }

    /// Encodes the command: version byte + postcard (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.command.encoded_len_hint() + 40);
        let encoded = match (&self.session, self.bounded_copies) {
            (None, bounded) => {
                out.push(if bounded { COMMAND_FORMAT_BOUNDED } else { COMMAND_FORMAT_VERSION });
                postcard::to_extend(&(self.now_ms, &self.command), out)
            }
            (Some(session), bounded) => {
                out.push(if bounded { COMMAND_FORMAT_BOUNDED_SESSION } else { COMMAND_FORMAT_SESSION });
                postcard::to_extend(&(self.now_ms, &self.command, session), out)
            }
        };
        encoded.expect("encoding into a Vec cannot fail")
    }

    /// Decodes bytes produced by [`Self::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CommandError> {
        let decode_error = |e: postcard::Error| CommandError::Decode(e.to_string());
        match bytes.split_first() {
            Some((&v @ (COMMAND_FORMAT_VERSION | COMMAND_FORMAT_BOUNDED), rest)) => {
                let (now_ms, command) = postcard::from_bytes(rest).map_err(decode_error)?;
                Ok(Self { now_ms, command, session: None, bounded_copies: v == COMMAND_FORMAT_BOUNDED })
            }
            Some((&v @ (COMMAND_FORMAT_SESSION | COMMAND_FORMAT_BOUNDED_SESSION), rest)) => {
                let (now_ms, command, session) = postcard::from_bytes(rest).map_err(decode_error)?;
                let bounded_copies = v == COMMAND_FORMAT_BOUNDED_SESSION;
                Ok(Self { now_ms, command, session: Some(session), bounded_copies })
            }
            Some((v, _)) => Err(CommandError::Decode(format!("unknown format version {v}"))),
            None => Err(CommandError::Decode("empty command".into())),
        }
    }
}

pub(crate) fn validate_key(key: &[u8], limits: &CommandLimits) -> Result<(), CommandError> {
    if key.is_empty() {
        return Err(CommandError::EmptyKey);
    }
    if key.len() > limits.max_key_bytes {
        return Err(CommandError::KeyTooLarge { len: key.len(), max: limits.max_key_bytes });
    }
    Ok(())
}

fn validate_value(value: &[u8], limits: &CommandLimits) -> Result<(), CommandError> {
    if value.len() > limits.max_value_bytes {
        return Err(CommandError::ValueTooLarge { len: value.len(), max: limits.max_value_bytes });
    }
    Ok(())
}

/// The absolute expiry (unix ms) of an entry written at `now_ms` with `ttl`.
pub fn expiry_from_ttl(now_ms: u64, ttl: Duration) -> Result<u64, CommandError> {
    if ttl.is_zero() || ttl > MAX_TTL {
        return Err(CommandError::TtlOutOfRange(ttl));
    }
    // Round up so a 1.5 ms TTL does not become 1 ms.
    let ttl_ms = ttl.as_nanos().div_ceil(1_000_000) as u64;
    Ok(now_ms.saturating_add(ttl_ms))
}

#[cfg(test)]
#[path = "command_tests.rs"]
pub(crate) mod tests;
