//! The eviction policy of a bounded cache: keys and weights in a bounded Moka cache whose
//! TinyLFU choices become victims for the leader to evict through the log (see the module docs
//! of `cache::storage`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use tokio::sync::Notify;

use super::entries::Replaced;
use super::{Hasher, StorageLimits, POLICY_READ_SAMPLE};

/// The eviction policy of a bounded cache: keys and weights in a bounded Moka cache whose
/// TinyLFU choices become victims for the leader to evict through the log (see the module docs).
pub(super) struct Policy {
    pub(super) keys: Cache<Bytes, u32, Hasher>,
    /// Whether this node keeps the policy up to date (it leads).
    pub(super) active: AtomicBool,
    pub(super) victims: Arc<Mutex<Vec<Bytes>>>,
    pub(super) wake: Arc<Notify>,
    /// Weigh entries by bytes (else each counts 1).
    pub(super) by_memory: bool,
}

impl Policy {
    pub(super) fn new(limits: &StorageLimits) -> Self {
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

    pub(super) fn is_active(&self) -> bool {
        // Sequentially consistent with `activate_policy`'s swap (see `CacheStorage::insert`).
        self.active.load(Ordering::SeqCst)
    }

    /// Records a write of `key` (of `bytes`, as `weight_of` counts them) that replaced
    /// `replaced` in the entries.
    pub(super) fn insert(&self, key: &Bytes, bytes: u32, replaced: Replaced) {
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

    pub(super) fn remove(&self, key: &[u8]) {
        if self.is_active() {
            self.keys.invalidate(key);
        }
    }
}

/// True for one call in [`POLICY_READ_SAMPLE`], at random: a counter would sample the same
/// keys over and over when reads come in a fixed rotation.
pub(super) fn sampled() -> bool {
    rand::random::<u32>().is_multiple_of(POLICY_READ_SAMPLE)
}
