//! [`Transaction`]: Redis `MULTI` ... `EXEC`, with its `WATCH`es, as one replicated command.
//!
//! The server queues a client's commands between `MULTI` and `EXEC` and proposes them, at
//! `EXEC`, as one `CacheCommand::Transaction`: one Raft entry, so the steps are applied together
//! with nothing in between, on every node, in the client's order. Nothing is proposed before
//! `EXEC`, so a transaction that is discarded or never finished leaves no trace.
//!
//! Reads inside a transaction are steps too ([`TxStep::Read`]): they must see the state as the
//! steps before them left it, which only apply knows. Two shapes cover every read the server
//! has: the values of keys (`GET`, `MGET`, `GETRANGE`) and what the keys hold without their
//! values (`STRLEN`, `EXISTS`, `TYPE`, the `TTL` family: lengths and expiries, at the log time).
//! The server turns these into each command's reply with the same code it uses outside a
//! transaction. Keeping reads out of [`CacheCommand`] means a read is never a log entry of its
//! own.
//!
//! `WATCH` is decided here, deterministically: each [`WatchedKey`] carries the applied index at
//! which the client looked at it (after a read barrier) and whether it was live then. The
//! transaction is skipped (output `Exec(None)`, nothing applied) when the key may have changed
//! since: its bucket in [`KeyVersions`](super::versions::KeyVersions) moved past that index (a
//! write, a delete, an eviction: see `consensus::versions`), or its liveness at the
//! transaction's log time differs (it expired, was cleared, or is live where it was not).
//!
//! Size: a transaction is one entry, so it must fit where the largest single write fits. Its
//! encoding may be at most `max_key_bytes + max_value_bytes` ([`CommandError::TransactionTooLarge`]
//! otherwise, refused before propose), and its reply at most `max_reply_bytes`, chosen by the
//! proposer: a step whose output would pass it answers [`ApplyError::ReplyTooLarge`] instead
//! (a write is still applied). Both keep the entry and the answer to a forwarded `EXEC` within
//! one peer frame.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::cache::keyspace::ReadEntries;
use crate::cache::storage::StoredValue;
use crate::consensus::apply::{apply_command, ApplyError, ApplyOutput, Target};
use crate::consensus::command::{validate_key, CacheCommand, CommandError, CommandLimits};

/// The commands of one `MULTI` ... `EXEC` and the keys it watched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transaction {
    /// Keys that must not have changed since they were watched, else nothing is applied.
    pub watches: Vec<WatchedKey>,
    /// The steps, applied in order.
    pub steps: Vec<TxStep>,
    /// Most bytes of values the reply may carry (see the module docs).
    pub max_reply_bytes: u64,
}

/// A key watched by `WATCH`, and what the client saw of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchedKey {
    /// The key.
    pub key: Bytes,
    /// The applied index of the node when it looked at the key (after a read barrier).
    pub seen_index: u64,
    /// Whether the key was live then.
    pub live: bool,
}

/// One command of a transaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum TxStep {
    /// A write: any command but `Batch`, `Transaction` and `Evict`.
    Write(CacheCommand),
    /// A read, evaluated in apply.
    Read(ReadCommand),
}

/// A read evaluated against the state (in a transaction: at its place in the log).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadCommand {
    /// The values of `keys`. Output: `Values`.
    Values {
        /// The keys (at least one).
        keys: Vec<Bytes>,
    },
    /// The length and expiry of each of `keys`, without the values. Output: `Meta`.
    Meta {
        /// The keys (at least one).
        keys: Vec<Bytes>,
    },
}

/// What a key holds, without its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyMeta {
    /// The value's length in bytes.
    pub len: u64,
    /// Its absolute expiry (unix ms), if any.
    pub expires_at_ms: Option<u64>,
}

impl KeyMeta {
    /// The meta of a stored entry.
    pub fn of(entry: &StoredValue) -> Self {
        Self { len: entry.value.len() as u64, expires_at_ms: entry.expires_at_ms }
    }
}

/// Bytes counted for each output in a reply besides its values (tags, lengths, integers).
const OUTPUT_OVERHEAD_BYTES: u64 = 16;

impl ReadCommand {
    /// The keys read.
    pub fn keys(&self) -> &[Bytes] {
        match self {
            ReadCommand::Values { keys } | ReadCommand::Meta { keys } => keys,
        }
    }

    /// Checks that there is at least one key and each is valid under `limits`.
    ///
    /// # Errors
    /// `NoKeys`, `EmptyKey`, `KeyTooLarge`.
    pub fn validate(&self, limits: &CommandLimits) -> Result<(), CommandError> {
        if self.keys().is_empty() {
            return Err(CommandError::NoKeys);
        }
        self.keys().iter().try_for_each(|k| validate_key(k, limits))
    }

    /// Reads `storage` as it is, judging expiry at `at_ms` (the log time in apply; the
    /// server's clock for a read outside a transaction). No hit or miss is counted.
    pub fn read(&self, storage: &impl ReadEntries, at_ms: u64) -> ApplyOutput {
        match self {
            ReadCommand::Values { keys } => ApplyOutput::Values(
                keys.iter().map(|k| storage.entry_at(k, at_ms).map(|e| e.value)).collect(),
            ),
            ReadCommand::Meta { keys } => ApplyOutput::Meta {
                at_ms,
                keys: keys.iter().map(|k| storage.entry_at(k, at_ms).as_ref().map(KeyMeta::of)).collect(),
            },
        }
    }
}

impl Transaction {
    /// Checks every key and value against `limits`, that no step is a batch, a transaction or
    /// an eviction, and the encoded size (see the module docs).
    pub(crate) fn validate(&self, limits: &CommandLimits) -> Result<(), CommandError> {
        // As `max_len` in SETRANGE: the proposer's limit travels in the command.
        let most_reply = (limits.max_key_bytes + limits.max_value_bytes) as u64;
        if self.max_reply_bytes > most_reply {
            return Err(CommandError::TransactionTooLarge {
                len: self.max_reply_bytes as usize,
                max: most_reply as usize,
            });
        }
        for watched in &self.watches {
            validate_key(&watched.key, limits)?;
        }
        for step in &self.steps {
            match step {
                TxStep::Write(
                    CacheCommand::Batch(_)
                    | CacheCommand::Transaction(_)
                    | CacheCommand::Evict { .. }
                    | CacheCommand::Acl(_)
                    | CacheCommand::Placement(_),
                ) => {
                    return Err(CommandError::BadTransaction);
                }
                TxStep::Write(command) => command.validate(limits)?,
                TxStep::Read(read) => read.validate(limits)?,
            }
        }
        let len =
            postcard::serialize_with_flavor::<_, _, usize>(self, postcard::ser_flavors::Size::default())
                .map_err(|e| CommandError::Decode(e.to_string()))?;
        let max = limits.max_key_bytes + limits.max_value_bytes;
        if len > max {
            return Err(CommandError::TransactionTooLarge { len, max });
        }
        Ok(())
    }

    /// Applies the transaction to `x`, or nothing when a watched key changed.
    pub(crate) fn apply(&self, x: &Target<'_>) -> ApplyOutput {
        if self.watches.iter().any(|w| changed(x, w)) {
            return ApplyOutput::Exec(None);
        }
        let mut reply_bytes = 0u64;
        let outputs = self
            .steps
            .iter()
            .map(|step| {
                let out = match step {
                    TxStep::Write(command) => apply_command(x, command),
                    TxStep::Read(read) => read.read(x.storage, x.t),
                };
                let bytes = output_bytes(&out);
                if reply_bytes + bytes > self.max_reply_bytes {
                    reply_bytes += OUTPUT_OVERHEAD_BYTES;
                    ApplyOutput::Failed(ApplyError::ReplyTooLarge)
                } else {
                    reply_bytes += bytes;
                    out
                }
            })
            .collect();
        ApplyOutput::Exec(Some(outputs))
    }

    /// A size hint for the encoding.
    pub(crate) fn encoded_len_hint(&self) -> usize {
        let watches: usize = self.watches.iter().map(|w| w.key.len() + 16).sum();
        let steps: usize = self
            .steps
            .iter()
            .map(|s| match s {
                TxStep::Write(c) => c.encoded_len_hint() + 1,
                TxStep::Read(r) => r.keys().iter().map(|k| k.len() + 5).sum::<usize>() + 4,
            })
            .sum();
        watches + steps + 16
    }
}

/// Whether `watched` may have changed since the client looked at it (see the module docs).
fn changed(x: &Target<'_>, watched: &WatchedKey) -> bool {
    x.versions.last_change(&watched.key) > watched.seen_index
        || x.entry(&watched.key).is_some() != watched.live
}

/// Bytes `out` adds to a reply.
fn output_bytes(out: &ApplyOutput) -> u64 {
    let value = |v: &Option<Bytes>| v.as_ref().map_or(0, |v| v.len() as u64) + OUTPUT_OVERHEAD_BYTES;
    match out {
        ApplyOutput::Value(v) | ApplyOutput::Written { old: v, .. } => value(v),
        ApplyOutput::Values(values) => values.iter().map(value).sum::<u64>() + OUTPUT_OVERHEAD_BYTES,
        ApplyOutput::Meta { keys, .. } => (keys.len() as u64 + 1) * 2 * OUTPUT_OVERHEAD_BYTES,
        _ => OUTPUT_OVERHEAD_BYTES,
    }
}

#[cfg(test)]
#[path = "transaction_tests.rs"]
mod tests;
