//! [`CacheStorage`]: the node-local cache on Moka that the state machine applies into and that
//! local reads are served from.
//!
//! Expiry is absolute: each entry carries the unix-ms time written into its command by the
//! proposing node, so it expires at the same moment on every node however late the node applied
//! it. A read checks that time against this node's clock; Moka's per-entry expiry is set to the
//! same moment only so that memory is reclaimed. Eviction (TinyLFU, entries or bytes) and
//! time-to-idle are local decisions: they can turn a hit into a miss, never into a wrong value.
//!
//! For conditional commands (INCR, SET NX, ...), which read state during apply: Moka may drop an
//! expired or evicted entry on one node and not on another, so such a command must decide
//! "expired" with the proposer's time carried in the command, never with Moka's view or this
//! node's clock, and must define what a locally evicted key means, or replicas diverge.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use moka::sync::Cache;
use moka::Expiry;

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

struct AbsoluteExpiry;

impl AbsoluteExpiry {
    fn remaining(value: &StoredValue) -> Option<Duration> {
        let at = value.expires_at_ms?;
        Some(Duration::from_millis(at.saturating_sub(unix_now_ms())))
    }
}

impl Expiry<Bytes, StoredValue> for AbsoluteExpiry {
    fn expire_after_create(&self, _: &Bytes, value: &StoredValue, _: Instant) -> Option<Duration> {
        Self::remaining(value)
    }

    fn expire_after_update(
        &self,
        _: &Bytes,
        value: &StoredValue,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Self::remaining(value)
    }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
}

/// The local cache. Cloning is cheap and shares the same entries.
#[derive(Clone)]
pub struct CacheStorage {
    cache: Cache<Bytes, StoredValue>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for CacheStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheStorage").field("entries", &self.cache.entry_count()).finish()
    }
}

impl CacheStorage {
    /// A cache bounded by `limits`.
    pub fn new(limits: StorageLimits) -> Self {
        let mut builder = Cache::builder().expire_after(AbsoluteExpiry);
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
        Self { cache: builder.build(), counters: Arc::default() }
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
        self.cache.insert(key, StoredValue { value, expires_at_ms });
    }

    /// Removes `key`; true when a live entry was there.
    pub fn remove(&self, key: &[u8]) -> bool {
        let now = unix_now_ms();
        self.cache.remove(key).is_some_and(|v| v.is_live_at(now))
    }

    /// Removes every entry.
    pub fn clear(&self) {
        self.cache.invalidate_all();
        self.cache.run_pending_tasks();
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

    /// Every entry live at `now_ms`, in no particular order.
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
