//! Copy-on-write capture of the cache at one instant, for checkpoints of large caches without
//! holding up writes.
//!
//! Starting a capture only raises a flag. From then on, every change made through
//! [`super::storage::CacheStorage`] first records the entry's value as it was (once per key: the
//! first record is the value at the capture instant). The capture then walks the live cache at
//! leisure, on another thread, and patches every recorded key back to its recorded value: the
//! result is the cache exactly as it was when the capture started. A `clear` during a capture
//! aborts it (it would have to record everything); the next checkpoint tries again. Entries that
//! Moka evicts meanwhile are missing from the capture, as they are from the cache: eviction is
//! local to each node in any case.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

use super::storage::StoredValue;

#[derive(Default)]
struct Undo {
    before: HashMap<Bytes, Option<StoredValue>>,
    aborted: bool,
}

/// The capture state shared by every clone of a `CacheStorage`.
#[derive(Default)]
pub(crate) struct CaptureState {
    active: AtomicBool,
    undo: Mutex<Option<Undo>>,
}

impl std::fmt::Debug for CaptureState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureState").field("active", &self.active.load(Ordering::Relaxed)).finish()
    }
}

impl CaptureState {
    /// Whether a capture is running (one relaxed-cost load on every change otherwise).
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Starts a capture; false when one is already running.
    pub fn begin(&self) -> bool {
        let mut undo = self.undo.lock().expect("capture state poisoned");
        if undo.is_some() {
            return false;
        }
        *undo = Some(Undo::default());
        self.active.store(true, Ordering::Release);
        true
    }

    /// Called before `key` changes: remembers its value at the capture instant.
    pub fn record(&self, key: &[u8], current: impl FnOnce() -> Option<StoredValue>) {
        let mut undo = self.undo.lock().expect("capture state poisoned");
        if let Some(undo) = undo.as_mut() {
            if !undo.before.contains_key(key) {
                undo.before.insert(Bytes::copy_from_slice(key), current());
            }
        }
    }

    /// Abandons the running capture (everything is about to change).
    pub fn abort(&self) {
        if let Some(undo) = self.undo.lock().expect("capture state poisoned").as_mut() {
            undo.aborted = true;
        }
    }

    /// Ends the capture: the recorded values, or none if it was aborted.
    pub fn finish(&self) -> Option<HashMap<Bytes, Option<StoredValue>>> {
        let mut undo = self.undo.lock().expect("capture state poisoned");
        self.active.store(false, Ordering::Release);
        undo.take().filter(|u| !u.aborted).map(|u| u.before)
    }
}
