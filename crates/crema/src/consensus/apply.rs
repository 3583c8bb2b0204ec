//! What each [`CacheCommand`] does to the cache: the deterministic heart of the state machine.
//!
//! Pure with respect to time: every decision about expiry uses `t`, the log time the state machine
//! passes in (never this node's clock), and every result is a function of the command and the
//! entries it touches. Integer and float parsing follow Redis (`INCR` accepts only the canonical
//! decimal form of an `i64`), so clients see the answers they expect.
//!
//! Every change goes through a `Target`, which records it in the [`KeyVersions`] that `WATCH`
//! is decided with (one hash and one store per key written: see `consensus::versions`).
//! Transactions (`CacheCommand::Transaction`) are applied in `consensus::transaction`.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cache::storage::{CacheStorage, StoredValue};
use crate::consensus::command::{CacheCommand, ExpireCondition, ExpiryUpdate, SetCondition};
use crate::consensus::long_double::{LongDouble, ParseLongDoubleError};
use crate::consensus::transaction::KeyMeta;
use crate::consensus::versions::KeyVersions;

/// Most bytes of stored values the APPENDs and SETRANGEs of one transaction copy: one that would
/// take it past this is refused ([`ApplyError::CopyBudget`]), the first always runs. Each copies
/// its whole value, and a transaction applies in one go on every replica: found in review,
/// 148,000 `APPEND big ""` in one transaction on an 8 MiB value (the queue's 8.5 MB hold them)
/// would have copied 1.2 TB, stalling its shard on every replica for minutes. Decided from the
/// applied state alone, the same on every replica, and only for entries of this build's format
/// (see [`crate::consensus::command::COMMAND_FORMAT_BOUNDED`]). A pipeline's writes proposed
/// together are bounded more loosely ([`MOST_COPIED_PER_BATCH`]).
pub const MOST_COPIED_PER_ENTRY: u64 = 64 << 20;

/// The same for the writes of a pipeline proposed together (a `Batch`), which `crema-server`
/// proposes in runs that copy at most a sixteenth of this by an estimate; this bound is what
/// holds when the estimate is wrong (a value written by another client meanwhile, or by a
/// write the estimate does not follow). Found in review: `COPY big t` and 511 `APPEND t x`
/// pipelined after it made one entry that copied 4 GiB on every replica.
pub const MOST_COPIED_PER_BATCH: u64 = 256 << 20;

/// Where a command is applied: the cache, the record of changes, the entry's log index and the
/// log time `t` every expiry is judged at.
pub(crate) struct Target<'a> {
    /// The cache applied into.
    pub storage: &'a CacheStorage,
    /// Where changes are recorded.
    pub versions: &'a KeyVersions,
    /// The log index of the entry being applied.
    pub index: u64,
    /// The log time of the entry (unix ms).
    pub t: u64,
    /// Bytes of values the entry's APPENDs and SETRANGEs copied so far, and the most they may
    /// (none: no bound).
    copies: std::cell::Cell<(u64, Option<u64>)>,
}

impl<'a> Target<'a> {
    /// Where the entry at `index`, of log time `t`, applies, with no bound on its copies.
    pub fn new(storage: &'a CacheStorage, versions: &'a KeyVersions, index: u64, t: u64) -> Self {
        Self { storage, versions, index, t, copies: std::cell::Cell::new((0, None)) }
    }

    /// The same, its APPENDs and SETRANGEs copying at most `most` bytes of stored values
    /// (see [`MOST_COPIED_PER_ENTRY`]).
    pub fn with_copy_bound(self, most: u64) -> Self {
        self.copies.set((0, Some(most)));
        self
    }

    /// Whether a copy of `bytes` may run (the first always may); if so, it is counted. Once
    /// one is refused, every later one of the entry is too, however small.
    fn may_copy(&self, bytes: usize) -> bool {
        let (copied, most) = self.copies.get();
        let after = copied.saturating_add(bytes as u64);
        if copied > 0 && most.is_some_and(|most| after > most) {
            self.copies.set((u64::MAX, most));
            return false;
        }
        self.copies.set((after, most));
        true
    }

    /// The entry of `key` live at `t`.
    pub fn entry(&self, key: &[u8]) -> Option<StoredValue> {
        self.storage.entry_at(key, self.t)
    }

    fn insert(&self, key: &Bytes, value: Bytes, expires_at_ms: Option<u64>) {
        self.versions.touch(key, self.index);
        self.storage.insert(key.clone(), value, expires_at_ms);
    }

    /// Removes `key`; a change only when a live entry was removed.
    fn remove(&self, key: &[u8]) -> bool {
        let removed = self.storage.remove_at(key, self.t);
        if removed {
            self.versions.touch(key, self.index);
        }
        removed
    }

    fn evict(&self, key: &[u8]) -> bool {
        let removed = self.storage.evict(key, self.t);
        if removed {
            self.versions.touch(key, self.index);
        }
        removed
    }
}

/// What applying a command produced, handed back to whoever proposed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyOutput {
    /// The command was applied (put, clear) or skipped as already applied.
    Done,
    /// A delete: whether a live entry was removed.
    Removed(bool),
    /// A count or a new integer value.
    Int(i64),
    /// A value read by the command (`GETDEL`, `GETEX`, the result of `INCRBYFLOAT`).
    Value(Option<Bytes>),
    /// A `Set`: whether it wrote, and the value live before it (when asked for).
    Written {
        /// Whether the condition held and the value was written.
        written: bool,
        /// The previous value, when `return_old` was set.
        old: Option<Bytes>,
    },
    /// The command changed nothing because the stored value does not fit it.
    Failed(ApplyError),
    /// The outputs of a batch's commands, in order.
    Batch(#[serde(deserialize_with = "super::nesting::nested")] Vec<ApplyOutput>),
    /// Values read in a transaction (`GET`, `MGET`): one per key, none where absent.
    Values(Vec<Option<Bytes>>),
    /// Lengths and expiries read in a transaction (`STRLEN`, `EXISTS`, `TTL`, ...): one per key,
    /// none where absent, judged at log time `at_ms`.
    Meta {
        /// The log time the keys were read at (unix ms).
        at_ms: u64,
        /// What each key holds.
        keys: Vec<Option<KeyMeta>>,
    },
    /// A transaction: the output of each of its steps in order, or none when a watched key had
    /// changed (then nothing was applied).
    Exec(#[serde(deserialize_with = "super::nesting::nested")] Option<Vec<ApplyOutput>>),
}

/// Why a committed command changed nothing. Decided alike on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error, Serialize, Deserialize)]
pub enum ApplyError {
    /// The stored value is not the decimal form of a 64-bit integer.
    #[error("value is not an integer or out of range")]
    NotInteger,
    /// The result would not fit in a 64-bit integer.
    #[error("increment or decrement would overflow")]
    Overflow,
    /// The stored value is not a number.
    #[error("value is not a valid float")]
    NotFloat,
    /// The result would be NaN or infinite.
    #[error("increment would produce NaN or Infinity")]
    NanOrInfinity,
    /// The result would be longer than the value limit.
    #[error("string exceeds maximum allowed size")]
    TooLarge,
    /// The values a transaction read would make its reply larger than it may be (see
    /// `consensus::transaction`); the reads themselves changed nothing.
    #[error("the transaction's reply would exceed its size limit")]
    ReplyTooLarge,
    /// A copy of a forwarded write that arrived after its sender stopped waiting for it (see
    /// `consensus::sessions`): it was not applied again, and its first output is gone.
    #[error("the write's session expired: it may or may not have been applied")]
    SessionExpired,
    /// An ACL change whose rules do not parse, or one inside a batch or a transaction: the
    /// users are unchanged (the proposer checks first, so only a hand-made entry holds one).
    #[error("the ACL change could not be applied")]
    AclRule,
    /// The key to rename is not live (Redis's `ERR no such key`).
    #[error("no such key")]
    NoSuchKey,
    /// An APPEND or SETRANGE that would take its entry's copies of stored values past
    /// [`MOST_COPIED_PER_ENTRY`] (a transaction) or [`MOST_COPIED_PER_BATCH`] (a pipeline's
    /// writes proposed together), or one after such: it was not applied.
    #[error(
        "not applied: with the APPENDs and SETRANGEs before it in its transaction (or pipeline), it would copy more \
         of stored values than one may ({} MiB; {} MiB in a pipeline), each copying its whole value: send it on its own",
        MOST_COPIED_PER_ENTRY >> 20,
        MOST_COPIED_PER_BATCH >> 20
    )]
    CopyBudget,
}

/// Applies `command` to `x`.
pub(crate) fn apply_command(x: &Target<'_>, command: &CacheCommand) -> ApplyOutput {
    use CacheCommand::*;
    match command {
        Put { key, value, expires_at_ms } => {
            write(x, key, value.clone(), *expires_at_ms);
            ApplyOutput::Done
        }
        Delete { key } => ApplyOutput::Removed(x.remove(key)),
        Clear => {
            x.storage.clear();
            ApplyOutput::Done
        }
        Set { key, value, expiry, condition, return_old } => {
            set(x, key, value, *expiry, *condition, *return_old)
        }
        DeleteMany { keys } => ApplyOutput::Int(keys.iter().filter(|k| x.remove(k)).count() as i64),
        PutMany { pairs, only_if_none_exist } => {
            if *only_if_none_exist && pairs.iter().any(|(k, _)| x.entry(k).is_some()) {
                return ApplyOutput::Int(0);
            }
            for (key, value) in pairs {
                x.insert(key, value.clone(), None);
            }
            ApplyOutput::Int(1)
        }
        IncrBy { key, delta } => incr_by(x, key, *delta),
        IncrByFloat { key, delta } => incr_by_float(x, key, *delta),
        IncrByLongDouble { key, delta } => incr_by_long_double(x, key, *delta),
        Append { key, value, max_len } => append(x, key, value, *max_len),
        SetRange { key, offset, value, max_len } => set_range(x, key, *offset, value, *max_len),
        GetDel { key } => {
            let old = x.entry(key).map(|e| e.value);
            x.remove(key);
            ApplyOutput::Value(old)
        }
        GetEx { key, expiry } => get_ex(x, key, *expiry),
        Expire { key, expires_at_ms, condition } => expire(x, key, *expires_at_ms, *condition),
        Evict { keys } => ApplyOutput::Int(keys.iter().filter(|k| x.evict(k)).count() as i64),
        Batch(commands) => ApplyOutput::Batch(commands.iter().map(|c| apply_command(x, c)).collect()),
        Transaction(transaction) => transaction.apply(x),
        // The state machine applies a change on its own; here only inside a batch.
        Acl(_) => ApplyOutput::Failed(ApplyError::AclRule),
        Placement(_) => ApplyOutput::Int(0),
        Copy { from, to, replace, remove_source } => copy(x, from, to, *replace, *remove_source),
        Persist { key } => match x.entry(key) {
            Some(StoredValue { value, expires_at_ms: Some(_) }) => {
                x.insert(key, value, None);
                ApplyOutput::Int(1)
            }
            _ => ApplyOutput::Int(0),
        },
    }
}

/// COPY, RENAME and RENAMENX (see [`CacheCommand::Copy`]).
fn copy(x: &Target<'_>, from: &Bytes, to: &Bytes, replace: bool, remove_source: bool) -> ApplyOutput {
    let Some(StoredValue { value, expires_at_ms }) = x.entry(from) else {
        return if remove_source { ApplyOutput::Failed(ApplyError::NoSuchKey) } else { ApplyOutput::Int(0) };
    };
    if from == to {
        // RENAME of a key onto itself changes nothing (Redis answers OK; RENAMENX 0, since
        // the destination exists). The server refuses COPY onto itself before proposing.
        return ApplyOutput::Int(i64::from(replace));
    }
    if !replace && x.entry(to).is_some() {
        return ApplyOutput::Int(0);
    }
    x.insert(to, value, expires_at_ms);
    if remove_source {
        x.remove(from);
    }
    ApplyOutput::Int(1)
}

/// Writes `key`, or removes it when the expiry is already past at `t` (Redis answers a SET with
/// a past EXAT with OK and leaves no key).
fn write(x: &Target<'_>, key: &Bytes, value: Bytes, expires_at_ms: Option<u64>) {
    match expires_at_ms {
        Some(at) if at <= x.t => {
            x.remove(key);
        }
        _ => x.insert(key, value, expires_at_ms),
    }
}

fn set(
    x: &Target<'_>,
    key: &Bytes,
    value: &Bytes,
    expiry: ExpiryUpdate,
    condition: SetCondition,
    return_old: bool,
) -> ApplyOutput {
    // A plain SET (no condition, no GET, a new expiry or none) does not depend on the entry it
    // replaces: skip the lookup.
    let needs_current = condition != SetCondition::Always || return_old || expiry == ExpiryUpdate::Keep;
    let current = if needs_current { x.entry(key) } else { None };
    let allowed = match condition {
        SetCondition::Always => true,
        SetCondition::IfAbsent => current.is_none(),
        SetCondition::IfPresent => current.is_some(),
    };
    let old_expiry = current.as_ref().and_then(|c| c.expires_at_ms);
    let old = if return_old { current.map(|c| c.value) } else { None };
    if allowed {
        let expires_at_ms = match expiry {
            ExpiryUpdate::Keep => old_expiry,
            ExpiryUpdate::Persist => None,
            ExpiryUpdate::At(at) => Some(at),
        };
        write(x, key, value.clone(), expires_at_ms);
    }
    ApplyOutput::Written { written: allowed, old }
}

/// Parses a value the way Redis's `string2ll` does: only the canonical decimal form of an i64.
pub fn parse_i64(bytes: &[u8]) -> Option<i64> {
    // No canonical i64 is longer ("-9223372036854775808"): refused before anything reads the
    // rest. Found in review: INCR on an 8 MiB value validated all of it as UTF-8 on every
    // replica, and a transaction of 150,000 of them would have stalled its shard for minutes.
    if bytes.len() > 20 {
        return None;
    }
    let text = std::str::from_utf8(bytes).ok()?;
    let n: i64 = text.parse().ok()?;
    // Rejects "+1", "01", "-0", " 1": Redis stores integers canonically and so do we.
    (n.to_string() == text).then_some(n)
}

/// Parses a value as a float the way Redis's `INCRBYFLOAT` accepts it (no spaces, not NaN).
pub fn parse_f64(bytes: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(bytes).ok()?;
    if text.is_empty() || text.starts_with(char::is_whitespace) || text.ends_with(char::is_whitespace) {
        return None;
    }
    text.parse::<f64>().ok().filter(|f| !f.is_nan())
}

/// Formats a float as Redis does for INCRBYFLOAT: no exponent, no trailing zeros.
pub fn format_f64(value: f64) -> String {
    // Rust's Display is the shortest text that reads back as the same f64, never in exponent form.
    value.to_string()
}

/// The number stored at `key` (`zero` when absent) and its expiry, or `not_a_number` when the
/// stored value does not parse.
fn current_number<N>(
    x: &Target<'_>,
    key: &Bytes,
    zero: N,
    parse: impl Fn(&[u8]) -> Option<N>,
    not_a_number: ApplyError,
) -> Result<(N, Option<u64>), ApplyOutput> {
    match x.entry(key) {
        None => Ok((zero, None)),
        Some(entry) => match parse(&entry.value) {
            Some(n) => Ok((n, entry.expires_at_ms)),
            None => Err(ApplyOutput::Failed(not_a_number)),
        },
    }
}

fn incr_by(x: &Target<'_>, key: &Bytes, delta: i64) -> ApplyOutput {
    let (old, expires_at_ms) = match current_number(x, key, 0, parse_i64, ApplyError::NotInteger) {
        Ok(found) => found,
        Err(failed) => return failed,
    };
    let Some(new) = old.checked_add(delta) else {
        return ApplyOutput::Failed(ApplyError::Overflow);
    };
    x.insert(key, Bytes::from(new.to_string()), expires_at_ms);
    ApplyOutput::Int(new)
}

fn incr_by_float(x: &Target<'_>, key: &Bytes, delta: f64) -> ApplyOutput {
    let (old, expires_at_ms) = match current_number(x, key, 0.0, parse_f64, ApplyError::NotFloat) {
        Ok(found) => found,
        Err(failed) => return failed,
    };
    let new = old + delta;
    if !new.is_finite() {
        return ApplyOutput::Failed(ApplyError::NanOrInfinity);
    }
    let text = Bytes::from(format_f64(new));
    x.insert(key, text.clone(), expires_at_ms);
    ApplyOutput::Value(Some(text))
}

fn incr_by_long_double(x: &Target<'_>, key: &Bytes, delta: LongDouble) -> ApplyOutput {
    let parse = |bytes: &[u8]| match LongDouble::parse(bytes) {
        Ok(value) => Some(Ok(value)),
        Err(ParseLongDoubleError::Infinite) => Some(Err(ApplyError::NanOrInfinity)),
        Err(ParseLongDoubleError::Invalid) => None,
    };
    let (old, expires_at_ms) = match current_number(x, key, Ok(LongDouble::ZERO), parse, ApplyError::NotFloat)
    {
        Ok(found) => found,
        Err(failed) => return failed,
    };
    let Some(new) = old.ok().and_then(|old| old.checked_add(delta)) else {
        return ApplyOutput::Failed(ApplyError::NanOrInfinity);
    };
    let text = Bytes::from(new.to_redis_string());
    x.insert(key, text.clone(), expires_at_ms);
    ApplyOutput::Value(Some(text))
}

/// The largest value an APPEND or SETRANGE may make, whatever limit its entry names: a
/// proposer's limit is at most its `max_value_bytes`, itself under this, so honest entries are
/// decided as they say; an entry a hostile leader wrote cannot make every replica allocate
/// terabytes in apply (apply is infallible, and an allocation that fails aborts).
const MOST_VALUE_BYTES: u64 = crate::config::MAX_COMMAND_BYTES as u64;

fn append(x: &Target<'_>, key: &Bytes, value: &Bytes, max_len: u64) -> ApplyOutput {
    let max_len = max_len.min(MOST_VALUE_BYTES);
    let current = x.entry(key);
    let (old, expires_at_ms) = match current {
        None => (Bytes::new(), None),
        Some(entry) => (entry.value, entry.expires_at_ms),
    };
    let len = old.len() + value.len();
    if len as u64 > max_len {
        return ApplyOutput::Failed(ApplyError::TooLarge);
    }
    if !x.may_copy(len) {
        return ApplyOutput::Failed(ApplyError::CopyBudget);
    }
    let mut joined = BytesMut::with_capacity(len);
    joined.extend_from_slice(&old);
    joined.extend_from_slice(value);
    x.insert(key, joined.freeze(), expires_at_ms);
    ApplyOutput::Int(len as i64)
}

fn set_range(x: &Target<'_>, key: &Bytes, offset: u64, value: &Bytes, max_len: u64) -> ApplyOutput {
    let max_len = max_len.min(MOST_VALUE_BYTES);
    let current = x.entry(key);
    let old_len = current.as_ref().map_or(0, |c| c.value.len());
    if value.is_empty() {
        return ApplyOutput::Int(old_len as i64);
    }
    let end = offset.saturating_add(value.len() as u64);
    if end > max_len {
        return ApplyOutput::Failed(ApplyError::TooLarge);
    }
    let (old, expires_at_ms) = match current {
        None => (Bytes::new(), None),
        Some(entry) => (entry.value, entry.expires_at_ms),
    };
    let (offset, end) = (offset as usize, end as usize);
    if !x.may_copy(old.len().max(end)) {
        return ApplyOutput::Failed(ApplyError::CopyBudget);
    }
    let mut out = BytesMut::from(old.as_ref());
    if out.len() < end {
        out.resize(end, 0);
    }
    out[offset..end].copy_from_slice(value);
    let len = out.len();
    x.insert(key, out.freeze(), expires_at_ms);
    ApplyOutput::Int(len as i64)
}

fn get_ex(x: &Target<'_>, key: &Bytes, expiry: ExpiryUpdate) -> ApplyOutput {
    let Some(entry) = x.entry(key) else {
        return ApplyOutput::Value(None);
    };
    match expiry {
        // Only a key with an expiry changes (and counts as changed for WATCH, as in Redis).
        ExpiryUpdate::Persist if entry.expires_at_ms.is_some() => x.insert(key, entry.value.clone(), None),
        ExpiryUpdate::Keep | ExpiryUpdate::Persist => {}
        ExpiryUpdate::At(at) => write(x, key, entry.value.clone(), Some(at)),
    }
    ApplyOutput::Value(Some(entry.value))
}

fn expire(x: &Target<'_>, key: &Bytes, at: u64, condition: ExpireCondition) -> ApplyOutput {
    let Some(entry) = x.entry(key) else {
        return ApplyOutput::Int(0);
    };
    let allowed = match (condition, entry.expires_at_ms) {
        (ExpireCondition::Always, _) => true,
        (ExpireCondition::IfNone, current) => current.is_none(),
        (ExpireCondition::IfSome, current) => current.is_some(),
        // No expiry is an infinite TTL: never "later than" it, always "earlier".
        (ExpireCondition::IfLater, current) => current.is_some_and(|c| at > c),
        (ExpireCondition::IfEarlier, current) => current.is_none_or(|c| at < c),
        (ExpireCondition::IfSomeEarlier, current) => current.is_some_and(|c| at < c),
    };
    if !allowed {
        return ApplyOutput::Int(0);
    }
    write(x, key, entry.value, Some(at));
    ApplyOutput::Int(1)
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
