//! [`CacheStorage`]: the node-local cache on Moka that the state machine applies into and that
//! local reads are served from.
//!
//! Expiry is absolute: each entry carries a unix-ms time written into its command by the
//! proposing node. A read checks that time against this node's clock. Apply never does: it judges
//! with the *log time* (the largest command stamp applied so far, see `state_machine`), and
//! expired entries are reclaimed only once the log time has passed their expiry
//! ([`CacheStorage::purge_expired`], run by a background sweeper). So an entry that a
//! conditional command applied late (a follower catching up) must still see is never gone too
//! early, and every node decides INCR, SET NX, ... alike. Moka's own per-entry expiry is not used
//! for that reason: it runs on this node's clock.
//!
//! Eviction is decided once, by the leader, and carried out through the log, so every node holds
//! the same keys at the same applied index and a conditional command (INCR, APPEND, SET NX)
//! finds the same state everywhere. The Moka cache holding the entries is unbounded; a bounded
//! cache has a second Moka cache beside it, the policy, holding only keys and weights. It
//! runs while this node leads: applied writes go into it, local reads train it (one hit in
//! [`POLICY_READ_SAMPLE`], to keep the read path cheap), and the keys its TinyLFU policy drops
//! are collected as victims. The leader's evictor (`cache::evict`) proposes them as one
//! `CacheCommand::Evict`, which every node applies like a delete. A node that becomes leader
//! fills its policy from the entries it holds. The bound is therefore soft: writes that commit
//! between a victim's choice and its eviction's commit go over it for that long. Moka is used
//! for the policy, not written by hand: its TinyLFU admission is what the seed promises.
//!
//! The entries themselves live in a lock-free hash map (papaya) unless a time-to-idle is set.
//! Eviction is the policy's job, not the entry store's, so the store needs none of Moka's
//! per-access bookkeeping (its read and write buffers, access-order queues and housekeeping),
//! which took about 40% of the server's CPU on a read-heavy run and a quarter of apply's
//! (profiled in docs/performance.md). With a time-to-idle the entries stay in a Moka cache: its
//! access-order tracking is what expires idle entries.
//!
//! Time-to-idle stays a local decision (a key idle on one node may be read on another): with it,
//! conditional commands can be decided differently on different nodes. Do not combine the two;
//! the README's consistency section says the same.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::Notify;

use super::capture::CaptureState;
use super::keyspace::AskerCheck;

mod entries;
mod policy;
#[cfg(test)]
mod tests;

use entries::{weight_of, Entries, Replaced};
use policy::{sampled, Policy};

/// Bytes counted per entry on top of its key and value when capacity is set in bytes.
pub const ENTRY_OVERHEAD_BYTES: u64 = 64;

/// One local hit in this many is recorded in the eviction policy (on the leader).
pub const POLICY_READ_SAMPLE: u32 = 16;

/// The hasher of the entry map and of the policy: foldhash (hashbrown's default) instead of
/// std's SipHash, which is slower on short keys. Its random seed per map keeps keys chosen by a
/// client from colliding on purpose (what foldhash calls minimal DoS resistance).
type Hasher = foldhash::fast::RandomState;

/// The current unix time in milliseconds (this node's clock).
pub fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// A stored value and its absolute expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredValue {
    /// The value.
    pub value: Bytes,
    /// Absolute expiry in unix ms, if any.
    pub expires_at_ms: Option<u64>,
}

impl StoredValue {
    fn is_live_at(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_none_or(|at| at > now_ms)
    }
}

/// Hit and miss counts of local reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads that found a live entry.
    pub hits: u64,
    /// Reads that found nothing (absent, expired or evicted).
    pub misses: u64,
    /// Entries removed by replicated evictions (the same on every node at the same index).
    pub evictions: u64,
}

impl CacheStats {
    /// `hits / (hits + misses)`, or 0 before any read.
    pub fn hit_rate(&self) -> f64 {
        let total = self.hits + self.misses;
        if total == 0 {
            0.0
        } else {
            self.hits as f64 / total as f64
        }
    }
}

/// How the local cache is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageLimits {
    /// Maximum entries (used when `max_memory_bytes` is none).
    pub max_capacity: u64,
    /// Maximum bytes of keys + values + per-entry overhead.
    pub max_memory_bytes: Option<u64>,
    /// Local time-to-idle.
    pub time_to_idle: Option<Duration>,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
    /// The log time of the state applied into this cache (see the module docs).
    log_time_ms: AtomicU64,
    /// Some entry may carry an expiry: set by every insert with one, cleared by a sweep that
    /// finds none. The sweeper skips the scan of the whole cache while it is clear.
    may_expire: AtomicBool,
}

/// The local cache. Cloning is cheap and shares the same entries.
#[derive(Clone)]
pub struct CacheStorage {
    cache: Arc<Entries>,
    counters: Arc<Counters>,
    capture: Arc<CaptureState>,
    /// The eviction policy, when the cache is bounded.
    policy: Option<Arc<Policy>>,
    /// Held for writing while a write of several keys applies, for reading while several keys
    /// are read (see [`Self::many_keys_read`]).
    many_keys: Arc<std::sync::RwLock<()>>,
}

impl std::fmt::Debug for CacheStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStorage").field("entries", &self.cache.len()).finish()
    }
}

impl CacheStorage {
    /// A cache bounded by `limits` (through its eviction policy: see the module docs). A
    /// `max_capacity` of `u64::MAX` with no memory bound means unbounded: no policy at all.
    pub fn new(limits: StorageLimits) -> Self {
        let bounded = limits.max_memory_bytes.is_some() || limits.max_capacity < u64::MAX;
        Self {
            cache: Arc::new(Entries::new(&limits)),
            counters: Arc::default(),
            capture: Arc::default(),
            policy: bounded.then(|| Arc::new(Policy::new(&limits))),
            many_keys: Arc::default(),
        }
    }

    /// Held while a write of several keys applies (MSET, a DEL of several keys, a transaction,
    /// FLUSHALL: [`CacheCommand::writes_many_keys`](crate::CacheCommand::writes_many_keys)).
    pub fn many_keys_write(&self) -> std::sync::RwLockWriteGuard<'_, ()> {
        self.many_keys.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Held while several keys are read (MGET): the read sees all of a write of several keys
    /// or none of it, as in Redis, where both run on its one thread. Found from outside: MGET
    /// of two keys that every MSET or `MULTI`/`EXEC` wrote together answered one old value and
    /// one new, a few times in ten thousand.
    pub fn many_keys_read(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.many_keys.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    // ----- eviction policy (see the module docs) -----

    /// What wakes the evictor when the policy has chosen victims; none for an unbounded cache.
    pub fn eviction_wake(&self) -> Option<Arc<Notify>> {
        self.policy.as_ref().map(|p| p.wake.clone())
    }

    /// Starts keeping the eviction policy (this node now leads): fills it with every entry held,
    /// then lets the policy choose victims among them. Walks the whole cache: call it off the
    /// thread that applies writes. Answers the entries it holds.
    pub fn activate_policy(&self) -> u64 {
        let Some(policy) = &self.policy else { return 0 };
        if policy.active.swap(true, Ordering::SeqCst) {
            return policy.keys.entry_count();
        }
        self.cache.for_each(|key, value| {
            policy.insert(key, weight_of(key, &value.value), Replaced::Nothing);
            // A delete applied since the walk read this key must not leave it in the policy: it
            // removes from the cache first, so checking after the insert closes the race.
            if !self.cache.contains_key(key) {
                policy.keys.invalidate(key.as_ref());
            }
            true
        });
        policy.keys.run_pending_tasks();
        policy.keys.entry_count()
    }

    /// Stops keeping the eviction policy (this node no longer leads) and forgets its victims.
    pub fn deactivate_policy(&self) {
        if let Some(policy) = &self.policy {
            policy.active.store(false, Ordering::Release);
            policy.keys.invalidate_all();
            policy.victims.lock().expect("victims poisoned").clear();
        }
    }

    /// Lets the policy do its pending work (choosing victims when it is over its bound).
    pub fn run_policy_tasks(&self) {
        if let Some(policy) = self.policy.as_ref().filter(|p| p.is_active()) {
            policy.keys.run_pending_tasks();
        }
    }

    /// Takes up to `max` of the keys the policy chose to evict, and no more than `max_bytes` of
    /// them (at least one): they are proposed as one Raft entry, which must fit in a peer
    /// frame whatever the keys' sizes.
    pub fn take_victims(&self, max: usize, max_bytes: usize) -> Vec<Bytes> {
        let Some(policy) = &self.policy else { return Vec::new() };
        let mut victims = policy.victims.lock().expect("victims poisoned");
        let (mut count, mut bytes) = (0, 0);
        for key in victims.iter().rev() {
            if count == max || (count > 0 && bytes + key.len() > max_bytes) {
                break;
            }
            count += 1;
            bytes += key.len();
        }
        let keep = victims.len() - count;
        victims.split_off(keep)
    }

    /// Gives back victims whose eviction could not be proposed, to try again.
    pub fn return_victims(&self, keys: Vec<Bytes>) {
        if let Some(policy) = self.policy.as_ref().filter(|p| p.is_active()) {
            policy.victims.lock().expect("victims poisoned").extend(keys);
        }
    }

    /// Removes `key` by a replicated eviction; true when an entry was there.
    pub fn evict(&self, key: &[u8], at_ms: u64) -> bool {
        let removed = self.remove_at(key, at_ms);
        if removed {
            self.counters.evictions.fetch_add(1, Ordering::Relaxed);
        }
        removed
    }

    /// Before `key` changes: if a capture runs, remember the value it had.
    fn before_change(&self, key: &[u8]) {
        if self.capture.is_active() {
            self.capture.record(key, || self.cache.get(key));
        }
    }

    /// Starts a copy-on-write capture of the cache as it is now (see `cache::capture`); false
    /// when one is already running.
    pub fn begin_capture(&self) -> bool {
        self.capture.begin()
    }

    /// Completes the capture started by [`Self::begin_capture`]: every entry as it was at that
    /// instant and live at `at_ms`, or none if a `clear` aborted it. Walks the whole cache:
    /// call it off the thread that applies writes.
    pub fn finish_capture(&self, at_ms: u64) -> Option<Vec<(Bytes, StoredValue)>> {
        let walked = self.cache.collect(|_| true);
        let before = self.capture.finish()?;
        // Keys changed since the capture began take their recorded value (or are dropped if
        // they did not exist then); the rest are as walked.
        let mut entries: Vec<(Bytes, StoredValue)> =
            walked.into_iter().filter(|(k, _)| !before.contains_key(k)).collect();
        entries.extend(before.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
        entries.retain(|(_, v)| v.is_live_at(at_ms));
        Some(entries)
    }

    /// The live value of `key`, counting a hit or a miss.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        let found = self.cache.get(key).and_then(|stored| {
            // Read the clock only for entries that can expire: most reads skip it.
            match stored.expires_at_ms {
                Some(at) if at <= unix_now_ms() => None,
                _ => Some(stored.value),
            }
        });
        let counter = if found.is_some() { &self.counters.hits } else { &self.counters.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(policy) = &self.policy {
            if found.is_some() && policy.is_active() && sampled() {
                policy.keys.get(key);
            }
        }
        found
    }

    /// The live value and expiry of `key`, without touching the statistics.
    pub fn get_entry(&self, key: &[u8]) -> Option<StoredValue> {
        let now = unix_now_ms();
        self.cache.get(key).filter(|v| v.is_live_at(now))
    }

    /// Whether `key` has a live entry (no statistics).
    pub fn contains(&self, key: &[u8]) -> bool {
        self.get_entry(key).is_some()
    }

    /// Inserts or replaces `key`.
    pub fn insert(&self, key: Bytes, value: Bytes, expires_at_ms: Option<u64>) {
        self.before_change(&key);
        if expires_at_ms.is_some() {
            self.counters.may_expire.store(true, Ordering::Release);
        }
        let bytes = weight_of(&key, &value);
        let replaced = self.cache.insert(key.clone(), StoredValue { value, expires_at_ms });
        // Looked at after the insert: a policy activated meanwhile (it is marked active before
        // it walks the entries) either sees this write here or finds the key in its walk. Looked
        // at before, a write racing the activation was in neither, and its key never became a
        // victim (found in CI: a node bounded to 10 entries kept 11 for good).
        if let Some(policy) = self.policy.as_ref().filter(|p| p.is_active()) {
            policy.insert(&key, bytes, replaced);
        }
    }

    /// Removes `key`; true when a live entry was there.
    pub fn remove(&self, key: &[u8]) -> bool {
        self.remove_at(key, unix_now_ms())
    }

    /// The entry of `key` live at log time `at_ms` (apply's view: no statistics, no local clock).
    pub fn entry_at(&self, key: &[u8], at_ms: u64) -> Option<StoredValue> {
        self.cache.get(key).filter(|v| v.is_live_at(at_ms))
    }

    /// Removes `key`; true when an entry live at log time `at_ms` was there.
    pub fn remove_at(&self, key: &[u8], at_ms: u64) -> bool {
        self.before_change(key);
        let removed = self.cache.remove(key);
        if let Some(policy) = &self.policy {
            policy.remove(key);
        }
        removed.is_some_and(|v| v.is_live_at(at_ms))
    }

    /// The log time of the applied state (unix ms).
    pub fn log_time_ms(&self) -> u64 {
        self.counters.log_time_ms.load(Ordering::Acquire)
    }

    /// Advances the log time; it never goes back.
    pub fn advance_log_time(&self, at_ms: u64) {
        self.counters.log_time_ms.fetch_max(at_ms, Ordering::AcqRel);
    }

    /// Whether any entry may have an expiry (false: a sweep would find nothing).
    pub fn may_expire(&self) -> bool {
        self.counters.may_expire.load(Ordering::Acquire)
    }

    /// Reclaims every entry that expired at or before the log time; answers how many. Each
    /// removal re-checks the entry atomically, so a value written meanwhile is kept.
    pub fn purge_expired(&self) -> usize {
        // Cleared before the scan: an insert with an expiry during it sets the flag again.
        if !self.counters.may_expire.swap(false, Ordering::AcqRel) {
            return 0;
        }
        let log_time = self.log_time_ms();
        let mut expiring = false;
        let mut expired = Vec::new();
        self.cache.for_each(|key, value| {
            expiring |= value.expires_at_ms.is_some();
            if !value.is_live_at(log_time) {
                expired.push(key.clone());
            }
            true
        });
        if expiring {
            self.counters.may_expire.store(true, Ordering::Release);
        }
        let mut purged = 0;
        for key in expired {
            self.before_change(&key);
            if self.cache.remove_if_expired(&key, log_time) {
                if let Some(policy) = &self.policy {
                    policy.remove(&key);
                }
                purged += 1;
            }
        }
        purged
    }

    /// Calls `f` with every key live on this node's clock, in no particular order, until it
    /// answers false.
    pub fn for_each_live_key(&self, mut f: impl FnMut(&Bytes, &StoredValue) -> bool) {
        let now = unix_now_ms();
        let mut asked = AskerCheck::default();
        self.cache.for_each(|key, value| asked.still_wanted() && (!value.is_live_at(now) || f(key, value)));
    }

    /// Removes every entry.
    pub fn clear(&self) {
        self.capture.abort();
        self.cache.clear();
        if let Some(policy) = self.policy.as_ref().filter(|p| p.is_active()) {
            policy.keys.invalidate_all();
            policy.victims.lock().expect("victims poisoned").clear();
        }
    }

    /// Entries live on this node's clock (counts them: O(entries)).
    pub fn live_count(&self) -> u64 {
        let now = unix_now_ms();
        let mut live = 0;
        let mut asked = AskerCheck::default();
        self.cache.for_each(|_, v| {
            live += u64::from(v.is_live_at(now));
            asked.still_wanted()
        });
        live
    }

    /// Entries held (expired ones not yet reclaimed included), after Moka's pending work is done.
    pub fn entry_count(&self) -> u64 {
        self.cache.len()
    }

    /// The weighted size: bytes when sized by memory, else entries.
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Hit and miss counts so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
            evictions: self.counters.evictions.load(Ordering::Relaxed),
        }
    }

    /// Every entry live at `now_ms` (log time for snapshots), in no particular order.
    pub fn live_entries(&self, now_ms: u64) -> Vec<(Bytes, StoredValue)> {
        self.cache.collect(|v| v.is_live_at(now_ms))
    }
}
