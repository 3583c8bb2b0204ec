//! Where a shard's entries live: a lock-free hash map (papaya), or a Moka cache when a
//! time-to-idle is set (see the module docs of `cache::storage`), and how an entry is weighed.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use moka::ops::compute::Op;
use moka::sync::Cache;

use super::{Hasher, StorageLimits, StoredValue, ENTRY_OVERHEAD_BYTES};

pub(super) fn weight_of(key: &[u8], value: &[u8]) -> u32 {
    weight_of_lens(key.len(), value.len())
}

pub(super) fn weight_of_lens(key_bytes: usize, value_bytes: usize) -> u32 {
    (key_bytes as u64 + value_bytes as u64 + ENTRY_OVERHEAD_BYTES).min(u32::MAX as u64) as u32
}

/// What an insert into the entries replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Replaced {
    /// A new key.
    Nothing,
    /// An entry of this weight (`weight_of` its key and value).
    Entry { weight: u32 },
    /// Not known (Moka's insert does not tell).
    Unknown,
}

/// Where the entries live: see the module docs.
pub(super) enum Entries {
    /// No time-to-idle: a lock-free map, plus the total weight when sized by memory.
    Map { map: papaya::HashMap<Bytes, StoredValue, Hasher>, weight: Option<AtomicU64> },
    /// With a time-to-idle: Moka, whose access-order tracking expires idle entries.
    Moka(Cache<Bytes, StoredValue>),
}

impl Entries {
    pub(super) fn new(limits: &StorageLimits) -> Self {
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

    pub(super) fn get(&self, key: &[u8]) -> Option<StoredValue> {
        match self {
            Self::Map { map, .. } => map.pin().get(key).cloned(),
            Self::Moka(cache) => cache.get(key),
        }
    }

    pub(super) fn contains_key(&self, key: &[u8]) -> bool {
        match self {
            Self::Map { map, .. } => map.pin().contains_key(key),
            Self::Moka(cache) => cache.contains_key(key),
        }
    }

    /// Inserts `value`; answers what it replaced (for the eviction policy).
    pub(super) fn insert(&self, key: Bytes, value: StoredValue) -> Replaced {
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

    pub(super) fn remove(&self, key: &[u8]) -> Option<StoredValue> {
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
    pub(super) fn remove_if_expired(&self, key: &Bytes, at_ms: u64) -> bool {
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
    pub(super) fn for_each(&self, mut f: impl FnMut(&Bytes, &StoredValue) -> bool) {
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
    pub(super) fn collect(&self, mut keep: impl FnMut(&StoredValue) -> bool) -> Vec<(Bytes, StoredValue)> {
        let mut out = Vec::new();
        self.for_each(|k, v| {
            if keep(v) {
                out.push((k.clone(), v.clone()));
            }
            true
        });
        out
    }

    pub(super) fn clear(&self) {
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

    pub(super) fn len(&self) -> u64 {
        match self {
            Self::Map { map, .. } => map.len() as u64,
            Self::Moka(cache) => {
                cache.run_pending_tasks();
                cache.entry_count()
            }
        }
    }

    pub(super) fn weighted_size(&self) -> u64 {
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
