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
//! Eviction (TinyLFU, entries or bytes) and time-to-idle are local decisions: they turn a hit
//! into a miss on one node, never into a wrong value, but a read-modify-write command (INCR,
//! APPEND, SET NX) applied to a key that one node evicted and another kept gives different
//! results on the two nodes. Size the cache so that keys used that way are not evicted; the
//! README's consistency section says the same.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use moka::ops::compute::Op;
use moka::sync::Cache;

use super::capture::CaptureState;

/// Bytes counted per entry on top of its key and value when capacity is set in bytes.
pub const ENTRY_OVERHEAD_BYTES: u64 = 64;

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
    /// The log time of the state applied into this cache (see the module docs).
    log_time_ms: AtomicU64,
}

/// The local cache. Cloning is cheap and shares the same entries.
#[derive(Clone)]
pub struct CacheStorage {
    cache: Cache<Bytes, StoredValue>,
    counters: Arc<Counters>,
    capture: Arc<CaptureState>,
}

impl std::fmt::Debug for CacheStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStorage").field("entries", &self.cache.entry_count()).finish()
    }
}

impl CacheStorage {
    /// A cache bounded by `limits`.
    pub fn new(limits: StorageLimits) -> Self {
        let mut builder = Cache::builder();
        builder = match limits.max_memory_bytes {
            Some(bytes) => builder.max_capacity(bytes).weigher(|k: &Bytes, v: &StoredValue| {
                let weight = k.len() as u64 + v.value.len() as u64 + ENTRY_OVERHEAD_BYTES;
                weight.min(u32::MAX as u64) as u32
            }),
            None => builder.max_capacity(limits.max_capacity),
        };
        if let Some(tti) = limits.time_to_idle {
            builder = builder.time_to_idle(tti);
        }
        Self { cache: builder.build(), counters: Arc::default(), capture: Arc::default() }
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
        let walked: Vec<(Bytes, StoredValue)> = self.cache.iter().map(|(k, v)| ((*k).clone(), v)).collect();
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
        self.cache.insert(key, StoredValue { value, expires_at_ms });
    }

    /// Removes `key`; true when a live entry was there.
    pub fn remove(&self, key: &[u8]) -> bool {
        self.before_change(key);
        let now = unix_now_ms();
        self.cache.remove(key).is_some_and(|v| v.is_live_at(now))
    }

    /// The entry of `key` live at log time `at_ms` (apply's view: no statistics, no local clock).
    pub fn entry_at(&self, key: &[u8], at_ms: u64) -> Option<StoredValue> {
        self.cache.get(key).filter(|v| v.is_live_at(at_ms))
    }

    /// Removes `key`; true when an entry live at log time `at_ms` was there.
    pub fn remove_at(&self, key: &[u8], at_ms: u64) -> bool {
        self.before_change(key);
        self.cache.remove(key).is_some_and(|v| v.is_live_at(at_ms))
    }

    /// The log time of the applied state (unix ms).
    pub fn log_time_ms(&self) -> u64 {
        self.counters.log_time_ms.load(Ordering::Acquire)
    }

    /// Advances the log time; it never goes back.
    pub fn advance_log_time(&self, at_ms: u64) {
        self.counters.log_time_ms.fetch_max(at_ms, Ordering::AcqRel);
    }

    /// Reclaims every entry that expired at or before the log time; answers how many. Each
    /// removal re-checks the entry atomically, so a value written meanwhile is kept.
    pub fn purge_expired(&self) -> usize {
        let log_time = self.log_time_ms();
        let expired: Vec<Arc<Bytes>> =
            self.cache.iter().filter(|(_, v)| !v.is_live_at(log_time)).map(|(k, _)| k).collect();
        let mut purged = 0;
        for key in expired {
            self.before_change(&key);
            let result = self.cache.entry_by_ref(key.as_ref()).and_compute_with(|entry| match entry {
                Some(e) if !e.value().is_live_at(log_time) => Op::Remove,
                _ => Op::Nop,
            });
            if matches!(result, moka::ops::compute::CompResult::Removed(_)) {
                purged += 1;
            }
        }
        purged
    }

    /// Calls `f` with every key live on this node's clock, in no particular order, until it
    /// answers false.
    pub fn for_each_live_key(&self, mut f: impl FnMut(&Bytes, &StoredValue) -> bool) {
        let now = unix_now_ms();
        for (key, value) in self.cache.iter() {
            if value.is_live_at(now) && !f(&key, &value) {
                break;
            }
        }
    }

    /// Removes every entry.
    pub fn clear(&self) {
        self.capture.abort();
        self.cache.invalidate_all();
        self.cache.run_pending_tasks();
    }

    /// Entries live on this node's clock (counts them: O(entries)).
    pub fn live_count(&self) -> u64 {
        let now = unix_now_ms();
        self.cache.iter().filter(|(_, v)| v.is_live_at(now)).count() as u64
    }

    /// Entries held (expired ones not yet reclaimed included), after Moka's pending work is done.
    pub fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// The weighted size: bytes when sized by memory, else entries.
    pub fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    /// Hit and miss counts so far.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.counters.hits.load(Ordering::Relaxed),
            misses: self.counters.misses.load(Ordering::Relaxed),
        }
    }

    /// Every entry live at `now_ms` (log time for snapshots), in no particular order.
    pub fn live_entries(&self, now_ms: u64) -> Vec<(Bytes, StoredValue)> {
        self.cache.iter().filter(|(_, v)| v.is_live_at(now_ms)).map(|(k, v)| ((*k).clone(), v)).collect()
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
        assert_eq!(s.stats(), CacheStats { hits: 1, misses: 1 });
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

    #[test]
    fn capacity_in_entries_evicts() {
        let s = storage(50);
        for i in 0..500u32 {
            s.insert(Bytes::from(i.to_be_bytes().to_vec()), Bytes::from("v"), None);
        }
        assert!(s.entry_count() <= 50, "{} entries", s.entry_count());
    }

    #[test]
    fn capacity_in_bytes_evicts_by_weight() {
        let s = CacheStorage::new(StorageLimits {
            max_capacity: u64::MAX,
            max_memory_bytes: Some(10_000),
            time_to_idle: None,
        });
        for i in 0..100u32 {
            s.insert(Bytes::from(i.to_be_bytes().to_vec()), Bytes::from(vec![0u8; 1000]), None);
        }
        assert!(s.weighted_size() <= 10_000, "{} bytes", s.weighted_size());
        assert!(s.entry_count() <= 10);
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
