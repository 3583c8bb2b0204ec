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
//! The encoding is one format-version byte followed by postcard: version 1 for a command made
//! on the leader, version 2 for one forwarded by a follower, which also carries its write
//! session (`consensus::sessions`). A version this build does not know is a decode error (a
//! committed entry that does not decode is applied as a counted no-op).

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
    Batch(Vec<CacheCommand>),
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
    Transaction(Transaction),
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
}

impl CacheCommand {
    /// A put without expiry.
    pub fn put(key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        CacheCommand::Put { key: key.into(), value: value.into(), expires_at_ms: None }
    }

    /// A delete.
    pub fn delete(key: impl Into<Bytes>) -> Self {
        CacheCommand::Delete { key: key.into() }
    }

    /// Checks keys and values against `limits`.
    pub fn validate(&self, limits: &CommandLimits) -> Result<(), CommandError> {
        use CacheCommand::*;
        match self {
            Put { key, value, .. } | Set { key, value, .. } => {
                validate_key(key, limits)?;
                validate_value(value, limits)
            }
            Append { key, value, .. } | SetRange { key, value, .. } => {
                validate_key(key, limits)?;
                validate_value(value, limits)
            }
            Delete { key } | IncrBy { key, .. } | GetDel { key } | GetEx { key, .. } => {
                validate_key(key, limits)
            }
            IncrByLongDouble { key, .. } => validate_key(key, limits),
            Expire { key, .. } | Persist { key } => validate_key(key, limits),
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
        Self { now_ms, command, session: None }
    }

    /// Encodes the command: version byte + postcard (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.command.encoded_len_hint() + 40);
        let encoded = match &self.session {
            None => {
                out.push(COMMAND_FORMAT_VERSION);
                postcard::to_extend(&(self.now_ms, &self.command), out)
            }
            Some(session) => {
                out.push(COMMAND_FORMAT_SESSION);
                postcard::to_extend(&(self.now_ms, &self.command, session), out)
            }
        };
        encoded.expect("encoding into a Vec cannot fail")
    }

    /// Decodes bytes produced by [`Self::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, CommandError> {
        let decode_error = |e: postcard::Error| CommandError::Decode(e.to_string());
        match bytes.split_first() {
            Some((&COMMAND_FORMAT_VERSION, rest)) => {
                let (now_ms, command) = postcard::from_bytes(rest).map_err(decode_error)?;
                Ok(Self { now_ms, command, session: None })
            }
            Some((&COMMAND_FORMAT_SESSION, rest)) => {
                let (now_ms, command, session) = postcard::from_bytes(rest).map_err(decode_error)?;
                Ok(Self { now_ms, command, session: Some(session) })
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
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: CommandLimits = CommandLimits { max_key_bytes: 8, max_value_bytes: 16 };

    #[test]
    fn validation_refuses_bad_commands() {
        assert_eq!(CacheCommand::put("", "v").validate(&LIMITS), Err(CommandError::EmptyKey));
        assert_eq!(
            CacheCommand::put("123456789", "v").validate(&LIMITS),
            Err(CommandError::KeyTooLarge { len: 9, max: 8 })
        );
        assert_eq!(
            CacheCommand::put("k", vec![0u8; 17]).validate(&LIMITS),
            Err(CommandError::ValueTooLarge { len: 17, max: 16 })
        );
        assert_eq!(CacheCommand::delete("").validate(&LIMITS), Err(CommandError::EmptyKey));
        CacheCommand::put("k", vec![0u8; 16]).validate(&LIMITS).unwrap();
        CacheCommand::Clear.validate(&LIMITS).unwrap();
    }

    #[test]
    fn multi_key_and_float_commands_are_validated() {
        assert_eq!(CacheCommand::DeleteMany { keys: vec![] }.validate(&LIMITS), Err(CommandError::NoKeys));
        let pairs = vec![(Bytes::from("a"), Bytes::from("1")), (Bytes::from(""), Bytes::from("2"))];
        let mset = CacheCommand::PutMany { pairs, only_if_none_exist: false };
        assert_eq!(mset.validate(&LIMITS), Err(CommandError::EmptyKey));
        let nan = CacheCommand::IncrByFloat { key: "k".into(), delta: f64::NAN };
        assert_eq!(nan.validate(&LIMITS), Err(CommandError::NotFinite));
        let append = CacheCommand::Append { key: "k".into(), value: vec![0u8; 17].into(), max_len: 100 };
        assert_eq!(append.validate(&LIMITS), Err(CommandError::ValueTooLarge { len: 17, max: 16 }));
        assert_eq!(CacheCommand::Batch(vec![]).validate(&LIMITS), Err(CommandError::BadBatch));
        let nested = CacheCommand::Batch(vec![CacheCommand::Batch(vec![CacheCommand::Clear])]);
        assert_eq!(nested.validate(&LIMITS), Err(CommandError::BadBatch));
        let bad_inside = CacheCommand::Batch(vec![CacheCommand::Clear, CacheCommand::delete("")]);
        assert_eq!(bad_inside.validate(&LIMITS), Err(CommandError::EmptyKey));
    }

    #[test]
    fn ttl_range_is_checked() {
        assert!(expiry_from_ttl(1_000, Duration::ZERO).is_err());
        assert!(expiry_from_ttl(1_000, MAX_TTL + Duration::from_millis(1)).is_err());
        assert_eq!(expiry_from_ttl(1_000, Duration::from_micros(1_500)).unwrap(), 1_002);
        assert_eq!(expiry_from_ttl(1_000, Duration::from_secs(1)).unwrap(), 2_000);
    }

    #[test]
    fn decode_refuses_unknown_versions_and_garbage() {
        let mut bytes = StampedCommand::new(5, CacheCommand::Clear).encode();
        bytes[0] = 9;
        assert!(StampedCommand::decode(&bytes).unwrap_err().to_string().contains("version 9"));
        assert!(StampedCommand::decode(&[]).is_err());
        assert!(StampedCommand::decode(&[COMMAND_FORMAT_VERSION, 0xff, 0xff]).is_err());
    }

    pub(crate) fn any_command() -> impl Strategy<Value = CacheCommand> {
        let bytes = || proptest::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from);
        let expiry = prop_oneof![
            Just(ExpiryUpdate::Keep),
            Just(ExpiryUpdate::Persist),
            any::<u64>().prop_map(ExpiryUpdate::At)
        ];
        let cond = prop_oneof![
            Just(SetCondition::Always),
            Just(SetCondition::IfAbsent),
            Just(SetCondition::IfPresent)
        ];
        prop_oneof![
            (bytes(), bytes(), any::<Option<u64>>())
                .prop_map(|(key, value, expires_at_ms)| CacheCommand::Put { key, value, expires_at_ms }),
            bytes().prop_map(|key| CacheCommand::Delete { key }),
            Just(CacheCommand::Clear),
            (bytes(), bytes(), expiry, cond, any::<bool>()).prop_map(
                |(key, value, expiry, condition, return_old)| {
                    CacheCommand::Set { key, value, expiry, condition, return_old }
                }
            ),
            (bytes(), any::<i64>()).prop_map(|(key, delta)| CacheCommand::IncrBy { key, delta }),
            (bytes(), -1e9f64..1e9).prop_map(|(key, delta)| CacheCommand::IncrByFloat { key, delta }),
            (bytes(), -(1i64 << 60)..(1i64 << 60)).prop_map(|(key, delta)| {
                let delta = LongDouble::parse(delta.to_string().as_bytes()).expect("an integer parses");
                CacheCommand::IncrByLongDouble { key, delta }
            }),
            proptest::collection::vec((bytes(), bytes()), 0..4)
                .prop_map(|pairs| CacheCommand::PutMany { pairs, only_if_none_exist: true }),
            (bytes(), any::<u64>(), bytes()).prop_map(|(key, offset, value)| CacheCommand::SetRange {
                key,
                offset,
                value,
                max_len: 1 << 20
            }),
            proptest::collection::vec(bytes(), 0..4).prop_map(|keys| CacheCommand::Evict { keys }),
            any_transaction(),
            any_acl_change(),
            any_placement_change(),
        ]
    }

    fn any_placement_change() -> impl Strategy<Value = CacheCommand> {
        use crate::multiraft::{PlacementChange, ShardMap};
        let nodes =
            proptest::collection::btree_set(1u64..20, 1..6).prop_map(|n| n.into_iter().collect::<Vec<_>>());
        prop_oneof![
            (1u32..20, nodes.clone())
                .prop_map(|(shards, nodes)| PlacementChange::Init(ShardMap::initial(shards, &nodes, 3))),
            (any::<u32>(), any::<u64>(), nodes)
                .prop_map(|(shard_id, epoch, members)| PlacementChange::Move { shard_id, epoch, members }),
            (any::<u32>(), any::<u64>())
                .prop_map(|(shard_id, epoch)| PlacementChange::Settle { shard_id, epoch }),
        ]
        .prop_map(CacheCommand::Placement)
    }

    fn any_acl_change() -> impl Strategy<Value = CacheCommand> {
        let name = prop_oneof![Just("a".to_owned()), Just("b".to_owned())];
        let rule = prop_oneof![
            Just("on"),
            Just("off"),
            Just(">pw"),
            Just("<pw"),
            Just("+get"),
            Just("-@all"),
            Just("~k:*"),
            Just("reset")
        ];
        prop_oneof![
            (name.clone(), proptest::collection::vec(rule, 0..4)).prop_map(|(name, rules)| {
                let rules: Vec<Bytes> =
                    rules.into_iter().map(|r: &'static str| Bytes::from_static(r.as_bytes())).collect();
                CacheCommand::Acl(AclChange::set_user(&name, &rules).expect("valid rules"))
            }),
            proptest::collection::vec(name, 0..3)
                .prop_map(|names| CacheCommand::Acl(AclChange::DelUsers { names })),
        ]
    }

    fn any_transaction() -> impl Strategy<Value = CacheCommand> {
        use crate::consensus::transaction::{ReadCommand, TxStep, WatchedKey};
        let bytes = || proptest::collection::vec(any::<u8>(), 0..16).prop_map(Bytes::from);
        let watch = (bytes(), any::<u64>(), any::<bool>()).prop_map(|(key, seen_index, live)| WatchedKey {
            key,
            seen_index,
            live,
        });
        let step = prop_oneof![
            proptest::collection::vec(bytes(), 1..3)
                .prop_map(|keys| TxStep::Read(ReadCommand::Values { keys })),
            proptest::collection::vec(bytes(), 1..3)
                .prop_map(|keys| TxStep::Read(ReadCommand::Meta { keys })),
            (bytes(), any::<i64>())
                .prop_map(|(key, delta)| TxStep::Write(CacheCommand::IncrBy { key, delta })),
            Just(TxStep::Write(CacheCommand::Clear)),
        ];
        (proptest::collection::vec(watch, 0..3), proptest::collection::vec(step, 0..4), any::<u64>())
            .prop_map(|(watches, steps, max_reply_bytes)| {
                CacheCommand::Transaction(Transaction { watches, steps, max_reply_bytes })
            })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(
            now_ms in any::<u64>(),
            cmd in any_command(),
            session in proptest::option::of(any::<(u64, u64, u64, u64)>()),
        ) {
            let mut stamped = StampedCommand::new(now_ms, cmd);
            stamped.session = session.map(|(origin, incarnation, seq, oldest_pending)| {
                SessionStamp { origin, incarnation, seq, oldest_pending, abandoned: vec![seq / 3] }
            });
            let bytes = stamped.encode();
            prop_assert_eq!(bytes[0], if stamped.session.is_some() { 2 } else { 1 });
            prop_assert_eq!(StampedCommand::decode(&bytes).unwrap(), stamped);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = StampedCommand::decode(&bytes);
        }
    }
}
