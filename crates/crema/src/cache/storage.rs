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
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::ops::compute::Op;
use moka::sync::Cache;
use tokio::sync::Notify;

use super::capture::CaptureState;

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

fn weight_of(key: &[u8], value: &[u8]) -> u32 {
    weight_of_lens(key.len(), value.len())
}

fn weight_of_lens(key_bytes: usize, value_bytes: usize) -> u32 {
    (key_bytes as u64 + value_bytes as u64 + ENTRY_OVERHEAD_BYTES).min(u32::MAX as u64) as u32
}

/// What an insert into the entries replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replaced {
    /// A new key.
    Nothing,
    /// An entry of this weight (`weight_of` its key and value).
    Entry { weight: u32 },
    /// Not known (Moka's insert does not tell).
    Unknown,
}

/// Where the entries live: see the module docs.
enum Entries {
    /// No time-to-idle: a lock-free map, plus the total weight when sized by memory.
    Map { map: papaya::HashMap<Bytes, StoredValue, Hasher>, weight: Option<AtomicU64> },
    /// With a time-to-idle: Moka, whose access-order tracking expires idle entries.
    Moka(Cache<Bytes, StoredValue>),
}

impl Entries {
    fn new(limits: &StorageLimits) -> Self {
        match limits.time_to_idle {
            None => Self::Map {
                map: papaya::HashMap::with_hasher(Hasher::default()),
                weight: limits.max_memory_bytes.map(|_| AtomicU64::new(0)),
            },
            Some(tti) => {
                let mut builder = Cache::builder().time_to_idle(tti);
                if limits.max_memory_bytes.is_some() {
                    builder = builder.weigher(|k: &Bytes, v: &StoredValue| weight_of(k, &v.value));
                }
                Self::Moka(builder.build())
            }
        }
    }

    fn get(&self, key: &[u8]) -> Option<StoredValue> {
        match self {
            Self::Map { map, .. } => map.pin().get(key).cloned(),
            Self::Moka(cache) => cache.get(key),
        }
    }

    fn contains_key(&self, key: &[u8]) -> bool {
        match self {
            Self::Map { map, .. } => map.pin().contains_key(key),
            Self::Moka(cache) => cache.contains_key(key),
        }
    }

    /// Inserts `value`; answers what it replaced (for the eviction policy).
    fn insert(&self, key: Bytes, value: StoredValue) -> Replaced {
        match self {
            Self::Map { map, weight: None } => {
                let key_bytes = key.len();
                match map.pin().insert(key, value) {
                    Some(old) => Replaced::Entry { weight: weight_of_lens(key_bytes, old.value.len()) },
                    None => Replaced::Nothing,
                }
            }
            Self::Map { map, weight: Some(total) } => {
                let added = u64::from(weight_of(&key, &value.value));
                let guard = map.guard();
                let old = map.insert(key.clone(), value, &guard).map(|old| weight_of(&key, &old.value));
                total.fetch_add(added, Ordering::Relaxed);
                match old {
                    Some(old) => {
                        total.fetch_sub(u64::from(old), Ordering::Relaxed);
                        Replaced::Entry { weight: old }
                    }
                    None => Replaced::Nothing,
                }
            }
            Self::Moka(cache) => {
                cache.insert(key, value);
                Replaced::Unknown
            }
        }
    }

    fn remove(&self, key: &[u8]) -> Option<StoredValue> {
        match self {
            Self::Map { map, weight } => {
                let guard = map.guard();
                let old = map.remove(key, &guard)?;
                if let Some(total) = weight {
                    total.fetch_sub(u64::from(weight_of(key, &old.value)), Ordering::Relaxed);
                }
                Some(old.clone())
            }
            Self::Moka(cache) => cache.remove(key),
        }
    }

    /// Removes `key` if its entry is (still) not live at `at_ms`: the check and the removal
    /// are one step, so a value written meanwhile is kept. True when it removed one.
    fn remove_if_expired(&self, key: &Bytes, at_ms: u64) -> bool {
        match self {
            Self::Map { map, weight } => {
                let guard = map.guard();
                match map.remove_if(key.as_ref(), |_, v| !v.is_live_at(at_ms), &guard) {
                    Ok(Some((_, old))) => {
                        if let Some(total) = weight {
                            total.fetch_sub(u64::from(weight_of(key, &old.value)), Ordering::Relaxed);
                        }
                        true
                    }
                    Ok(None) | Err(_) => false,
                }
            }
            Self::Moka(cache) => {
                let result = cache.entry_by_ref(key).and_compute_with(|entry| match entry {
                    Some(e) if !e.value().is_live_at(at_ms) => Op::Remove,
                    _ => Op::Nop,
                });
                matches!(result, moka::ops::compute::CompResult::Removed(_))
            }
        }
    }

    /// Calls `f` with every entry, in no particular order, until it answers false.
    fn for_each(&self, mut f: impl FnMut(&Bytes, &StoredValue) -> bool) {
        match self {
            Self::Map { map, .. } => {
                for (key, value) in map.pin().iter() {
                    if !f(key, value) {
                        break;
                    }
                }
            }
            Self::Moka(cache) => {
                for (key, value) in cache.iter() {
                    if !f(&key, &value) {
                        break;
                    }
                }
            }
        }
    }

    /// Every entry for which `keep` holds, copied out.
    fn collect(&self, mut keep: impl FnMut(&StoredValue) -> bool) -> Vec<(Bytes, StoredValue)> {
        let mut out = Vec::new();
        self.for_each(|k, v| {
            if keep(v) {
                out.push((k.clone(), v.clone()));
            }
            true
        });
        out
    }

    fn clear(&self) {
        match self {
            Self::Map { map, weight } => {
                map.pin().clear();
                if let Some(total) = weight {
                    total.store(0, Ordering::Relaxed);
                }
            }
            Self::Moka(cache) => {
                cache.invalidate_all();
                cache.run_pending_tasks();
            }
        }
    }

    fn len(&self) -> u64 {
        match self {
            Self::Map { map, .. } => map.len() as u64,
            Self::Moka(cache) => {
                cache.run_pending_tasks();
                cache.entry_count()
            }
        }
    }

    fn weighted_size(&self) -> u64 {
        match self {
            Self::Map { weight: Some(total), .. } => total.load(Ordering::Relaxed),
            Self::Map { map, weight: None } => map.len() as u64,
            Self::Moka(cache) => {
                cache.run_pending_tasks();
                cache.weighted_size()
            }
        }
    }
}

/// The eviction policy of a bounded cache: keys and weights in a bounded Moka cache whose
/// TinyLFU choices become victims for the leader to evict through the log (see the module docs).
struct Policy {
    keys: Cache<Bytes, u32, Hasher>,
    /// Whether this node keeps the policy up to date (it leads).
    active: AtomicBool,
    victims: Arc<Mutex<Vec<Bytes>>>,
    wake: Arc<Notify>,
    /// Weigh entries by bytes (else each counts 1).
    by_memory: bool,
}

impl Policy {
    fn new(limits: &StorageLimits) -> Self {
        let victims: Arc<Mutex<Vec<Bytes>>> = Arc::default();
        let wake = Arc::new(Notify::new());
        let (listener_victims, listener_wake) = (victims.clone(), wake.clone());
        let builder = Cache::<Bytes, u32>::builder()
            .eviction_listener(move |key: Arc<Bytes>, _, cause| {
                if cause == RemovalCause::Size {
                    listener_victims.lock().expect("victims poisoned").push((*key).clone());
                    listener_wake.notify_one();
                }
            })
            .weigher(|_: &Bytes, weight: &u32| *weight);
        let (keys, by_memory) = match limits.max_memory_bytes {
            Some(bytes) => (builder.max_capacity(bytes).build_with_hasher(Hasher::default()), true),
            None => (builder.max_capacity(limits.max_capacity).build_with_hasher(Hasher::default()), false),
        };
        Self { keys, active: AtomicBool::new(false), victims, wake, by_memory }
    }

    fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Records a write of `key` (of `bytes`, as `weight_of` counts them) that replaced
    /// `replaced` in the entries.
    fn insert(&self, key: &Bytes, bytes: u32, replaced: Replaced) {
        if !self.is_active() {
            return;
        }
        let weight = if self.by_memory { bytes } else { 1 };
        let old_weight = |bytes: u32| if self.by_memory { bytes } else { 1 };
        match replaced {
            // An overwrite of the same weight is an access to the policy, not a new entry: it
            // is recorded like a local hit, one in POLICY_READ_SAMPLE, by a read (an insert
            // costs far more; both were most of apply's time under a write load, profiled in
            // docs/performance.md). A key the policy lost meanwhile (a victim being evicted)
            // is put back when the read misses.
            Replaced::Entry { weight: old } if old_weight(old) == weight => {
                if sampled() && self.keys.get(key).is_none() {
                    self.keys.insert(key.clone(), weight);
                }
            }
            Replaced::Entry { .. } | Replaced::Nothing => self.keys.insert(key.clone(), weight),
            // `contains_key` first, because a read that misses would count towards a new
            // key's frequency as well.
            Replaced::Unknown => {
                let same = self.keys.contains_key(key) && self.keys.get(key) == Some(weight);
                if !same {
                    self.keys.insert(key.clone(), weight);
                }
            }
        }
    }

    fn remove(&self, key: &[u8]) {
        if self.is_active() {
            self.keys.invalidate(key);
        }
    }
}

/// True for one call in [`POLICY_READ_SAMPLE`], at random: a counter would sample the same
/// keys over and over when reads come in a fixed rotation.
fn sampled() -> bool {
    rand::random::<u32>().is_multiple_of(POLICY_READ_SAMPLE)
}

/// The local cache. Cloning is cheap and shares the same entries.
#[derive(Clone)]
pub struct CacheStorage {
    cache: Arc<Entries>,
    counters: Arc<Counters>,
    capture: Arc<CaptureState>,
    /// The eviction policy, when the cache is bounded.
    policy: Option<Arc<Policy>>,
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
        }
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
        if policy.active.swap(true, Ordering::AcqRel) {
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

    /// Takes up to `max` of the keys the policy chose to evict.
    pub fn take_victims(&self, max: usize) -> Vec<Bytes> {
        let Some(policy) = &self.policy else { return Vec::new() };
        let mut victims = policy.victims.lock().expect("victims poisoned");
        let keep = victims.len().saturating_sub(max);
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
        let policy = self.policy.as_ref().filter(|p| p.is_active());
        let for_policy = policy.map(|_| (key.clone(), weight_of(&key, &value)));
        let replaced = self.cache.insert(key, StoredValue { value, expires_at_ms });
        if let (Some(policy), Some((key, bytes))) = (policy, for_policy) {
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
        self.cache.for_each(|key, value| !value.is_live_at(now) || f(key, value));
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
        self.cache.for_each(|_, v| {
            live += u64::from(v.is_live_at(now));
            true
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

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(max_capacity: u64) -> CacheStorage {
        CacheStorage::new(StorageLimits { max_capacity, max_memory_bytes: None, time_to_idle: None })
    }

    #[test]
    fn get_counts_hits_and_misses() {
        let s = storage(100);
        s.insert(Bytes::from("a"), Bytes::from("1"), None);
        assert_eq!(s.get(b"a"), Some(Bytes::from("1")));
        assert_eq!(s.get(b"b"), None);
        assert_eq!(s.stats(), CacheStats { hits: 1, misses: 1, evictions: 0 });
        assert_eq!(s.stats().hit_rate(), 0.5);
    }

    #[test]
    fn an_entry_past_its_absolute_expiry_is_a_miss() {
        let s = storage(100);
        let now = unix_now_ms();
        s.insert(Bytes::from("old"), Bytes::from("v"), Some(now - 1));
        s.insert(Bytes::from("new"), Bytes::from("v"), Some(now + 60_000));
        assert_eq!(s.get(b"old"), None);
        assert!(!s.contains(b"old"));
        assert!(!s.remove(b"old"), "removing an expired entry removes nothing live");
        assert_eq!(s.get(b"new"), Some(Bytes::from("v")));
        assert_eq!(s.live_entries(now).len(), 1);
    }

    #[test]
    fn purge_reclaims_only_what_the_log_time_has_passed() {
        let s = storage(100);
        s.insert(Bytes::from("a"), Bytes::from("1"), Some(1_000));
        s.insert(Bytes::from("b"), Bytes::from("2"), Some(2_000));
        s.insert(Bytes::from("c"), Bytes::from("3"), None);
        // The wall clock is far past both expiries, but the applied state is at log time 1500.
        s.advance_log_time(1_500);
        s.advance_log_time(1_200);
        assert_eq!(s.log_time_ms(), 1_500, "log time never goes back");
        assert_eq!(s.purge_expired(), 1);
        assert!(s.entry_at(b"a", 1_500).is_none());
        assert_eq!(s.entry_at(b"b", 1_500).unwrap().value, Bytes::from("2"));
        assert!(s.entry_at(b"b", 2_000).is_none(), "expired at its own expiry instant");
        assert_eq!(s.entry_count(), 2);
        // "b" still carries an expiry: the next sweep scans and reclaims it.
        s.advance_log_time(2_500);
        assert_eq!(s.purge_expired(), 1);
        assert_eq!(s.purge_expired(), 0, "nothing left that expires: the scan is skipped");
        // An expiring entry written after a skipped sweep is reclaimed by the next one.
        s.insert(Bytes::from("d"), Bytes::from("4"), Some(2_600));
        s.advance_log_time(3_000);
        assert_eq!(s.purge_expired(), 1);
        assert_eq!(s.entry_count(), 1);
    }

    #[test]
    fn a_capture_sees_the_cache_as_it_was_when_it_began() {
        let s = storage(1000);
        for (k, v) in [("same", "1"), ("changed", "1"), ("deleted", "1"), ("expiring", "1")] {
            s.insert(Bytes::from(k), Bytes::from(v), None);
        }
        assert!(s.begin_capture());
        assert!(!s.begin_capture(), "one capture at a time");
        s.insert(Bytes::from("changed"), Bytes::from("2"), None);
        s.insert(Bytes::from("changed"), Bytes::from("3"), None);
        s.remove_at(b"deleted", 0);
        s.insert(Bytes::from("new"), Bytes::from("1"), None);
        s.insert(Bytes::from("expiring"), Bytes::from("1"), Some(5));
        let mut captured = s.finish_capture(10).unwrap();
        captured.sort_by(|a, b| a.0.cmp(&b.0));
        let keys: Vec<(&[u8], &[u8])> =
            captured.iter().map(|(k, v)| (k.as_ref(), v.value.as_ref())).collect();
        assert_eq!(
            keys,
            vec![(&b"changed"[..], &b"1"[..]), (b"deleted", b"1"), (b"expiring", b"1"), (b"same", b"1")]
        );
        assert_eq!(s.get_entry(b"changed").unwrap().value, Bytes::from("3"), "the cache itself moved on");
        assert!(s.begin_capture());
        s.clear();
        assert_eq!(s.finish_capture(10), None, "a clear aborts the capture");
    }

    /// Evicts what the policy chose, as applying the leader's `Evict` does; answers how many.
    fn evict_victims(s: &CacheStorage) -> usize {
        s.run_policy_tasks();
        let victims = s.take_victims(usize::MAX);
        victims.iter().filter(|k| s.evict(k, 0)).count()
    }

    #[test]
    fn a_follower_never_evicts_on_its_own() {
        let s = storage(50);
        for i in 0..500u32 {
            s.insert(Bytes::from(i.to_be_bytes().to_vec()), Bytes::from("v"), None);
        }
        assert_eq!(evict_victims(&s), 0, "an inactive policy chooses nothing");
        assert_eq!(s.entry_count(), 500, "only the log evicts");
    }

    #[test]
    fn the_leaders_policy_brings_the_cache_to_its_bound_in_entries() {
        let s = storage(50);
        assert_eq!(s.activate_policy(), 0);
        for i in 0..500u32 {
            s.insert(Bytes::from(i.to_be_bytes().to_vec()), Bytes::from("v"), None);
        }
        let evicted = evict_victims(&s);
        assert!(s.entry_count() <= 50, "{} entries", s.entry_count());
        assert_eq!(s.entry_count() as usize + evicted, 500, "every entry is kept or evicted");
        assert_eq!(s.stats().evictions as usize, evicted);
    }

    #[test]
    fn the_leaders_policy_bounds_bytes_by_weight() {
        let s = by_memory(10_000);
        s.activate_policy();
        for i in 0..100u32 {
            s.insert(Bytes::from(i.to_be_bytes().to_vec()), Bytes::from(vec![0u8; 1000]), None);
        }
        evict_victims(&s);
        assert!(s.weighted_size() <= 10_000, "{} bytes", s.weighted_size());
        assert!(s.entry_count() <= 10);
    }

    #[test]
    fn an_overwrite_that_grows_a_value_counts_its_new_weight() {
        let s = by_memory(10_000);
        s.activate_policy();
        for i in 0..50u32 {
            s.insert(Bytes::from(i.to_be_bytes().to_vec()), Bytes::from(vec![0u8; 10]), None);
        }
        assert_eq!(evict_victims(&s), 0, "50 small entries fit");
        for i in 0..50u32 {
            s.insert(Bytes::from(i.to_be_bytes().to_vec()), Bytes::from(vec![0u8; 1000]), None);
        }
        evict_victims(&s);
        assert!(s.weighted_size() <= 10_000, "{} bytes after the values grew", s.weighted_size());
    }

    #[test]
    fn keys_overwritten_often_survive_new_keys_read_a_few_times() {
        let s = storage(100);
        s.activate_policy();
        for i in 0..100u32 {
            s.insert(Bytes::from(format!("old{i}")), Bytes::from("v"), None);
        }
        // 400 new keys come, each read a few times (more than the other old keys ever were),
        // while the first ten old keys are overwritten all the while with values of the same
        // size: those overwrites, not reads, are what keeps them.
        for i in 0..400u32 {
            for round in 0..4u32 {
                for hot in 0..10u32 {
                    s.insert(Bytes::from(format!("old{hot}")), Bytes::from(format!("{round}")), None);
                }
            }
            let key = format!("new{i}");
            s.insert(Bytes::from(key.clone()), Bytes::from("v"), None);
            for _ in 0..4 * POLICY_READ_SAMPLE {
                s.get(key.as_bytes());
            }
            if i % 50 == 0 {
                evict_victims(&s);
            }
        }
        evict_victims(&s);
        assert!(s.entry_count() <= 100, "{} entries", s.entry_count());
        for i in 0..10u32 {
            assert!(s.contains(format!("old{i}").as_bytes()), "often written key old{i} was evicted");
        }
    }

    #[test]
    fn a_new_leader_fills_its_policy_from_the_cache_and_frequent_reads_survive() {
        let s = storage(100);
        for i in 0..100u32 {
            s.insert(Bytes::from(format!("old{i}")), Bytes::from("v"), None);
        }
        assert_eq!(s.activate_policy(), 100, "the policy starts with every entry held");
        // The first ten keys are read often; then 400 new keys are written once each.
        // Each is read 20 * POLICY_READ_SAMPLE times, so that some of its reads train the
        // policy (the chance that one of the ten is never sampled is about 1e-8).
        for _ in 0..20 * POLICY_READ_SAMPLE {
            for i in 0..10u32 {
                assert!(s.get(format!("old{i}").as_bytes()).is_some());
            }
        }
        for i in 0..400u32 {
            s.insert(Bytes::from(format!("new{i}")), Bytes::from("v"), None);
            if i % 50 == 0 {
                evict_victims(&s);
            }
        }
        evict_victims(&s);
        assert!(s.entry_count() <= 100, "{} entries", s.entry_count());
        for i in 0..10u32 {
            assert!(s.contains(format!("old{i}").as_bytes()), "hot key old{i} was evicted");
        }
        s.deactivate_policy();
        s.insert(Bytes::from("after"), Bytes::from("v"), None);
        assert!(s.take_victims(usize::MAX).is_empty(), "a deposed leader keeps no victims");
    }

    #[test]
    fn an_unbounded_cache_has_no_policy() {
        let s = storage(u64::MAX);
        assert!(s.eviction_wake().is_none());
        assert_eq!(s.activate_policy(), 0);
    }

    /// A cache bounded to `bytes` of keys, values and overhead, with no time-to-idle.
    fn by_memory(bytes: u64) -> CacheStorage {
        CacheStorage::new(StorageLimits {
            max_capacity: u64::MAX,
            max_memory_bytes: Some(bytes),
            time_to_idle: None,
        })
    }

    /// Both entry stores: the map (no time-to-idle) and Moka (with one).
    fn by_memory_both_ways() -> [CacheStorage; 2] {
        [None, Some(Duration::from_secs(3600))].map(|time_to_idle| {
            CacheStorage::new(StorageLimits {
                max_capacity: u64::MAX,
                max_memory_bytes: Some(1 << 30),
                time_to_idle,
            })
        })
    }

    #[test]
    fn the_weighted_size_follows_overwrites_removes_purges_and_clear() {
        let w = |k: &str, v: &str| k.len() as u64 + v.len() as u64 + ENTRY_OVERHEAD_BYTES;
        for s in by_memory_both_ways() {
            s.insert(Bytes::from("a"), Bytes::from("12345"), None);
            s.insert(Bytes::from("b"), Bytes::from("x"), Some(1_000));
            assert_eq!(s.weighted_size(), w("a", "12345") + w("b", "x"));
            s.insert(Bytes::from("a"), Bytes::from("1"), None);
            assert_eq!(s.weighted_size(), w("a", "1") + w("b", "x"));
            assert!(s.remove_at(b"a", 0));
            assert_eq!(s.weighted_size(), w("b", "x"));
            s.advance_log_time(1_000);
            assert_eq!(s.purge_expired(), 1);
            assert_eq!((s.weighted_size(), s.entry_count()), (0, 0));
            s.insert(Bytes::from("c"), Bytes::from("v"), None);
            s.clear();
            assert_eq!((s.weighted_size(), s.entry_count()), (0, 0));
        }
    }

    #[test]
    fn a_purge_keeps_a_value_rewritten_without_expiry() {
        for s in by_memory_both_ways() {
            s.insert(Bytes::from("k"), Bytes::from("old"), Some(1_000));
            s.advance_log_time(2_000);
            s.insert(Bytes::from("k"), Bytes::from("new"), None);
            assert_eq!(s.purge_expired(), 0);
            assert_eq!(s.get(b"k"), Some(Bytes::from("new")));
        }
    }

    #[test]
    fn clear_and_remove() {
        let s = storage(100);
        s.insert(Bytes::from("a"), Bytes::from("1"), None);
        s.insert(Bytes::from("b"), Bytes::from("2"), None);
        assert!(s.remove(b"a"));
        assert!(!s.remove(b"a"));
        s.clear();
        assert_eq!(s.entry_count(), 0);
    }
}
