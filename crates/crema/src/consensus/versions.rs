//! [`KeyVersions`]: the log index at which each key last changed, as `WATCH` needs it, kept per
//! hash bucket so that its cost is fixed.
//!
//! A transaction that watched keys (Redis `WATCH` ... `EXEC`) is decided in apply, on every
//! node alike: it runs only if none of its keys changed after the index at which the client
//! looked at them. Recording the last change of every key exactly would cost a map insert per
//! write and a tombstone per delete (a key watched while absent, created and deleted again must
//! still count as changed). Instead each key hashes (xxh3, the same on every node and build) to
//! one of [`VERSION_BUCKETS`] buckets, and a bucket holds the index of the last change of any of
//! its keys. "Changed since index A" is then `bucket > A`: never a missed change (a bucket only
//! grows), sometimes a false one, when another key of the same bucket changed meanwhile (with
//! 65,536 buckets, about one transaction in 650 per hundred writes made elsewhere between its
//! WATCH and its EXEC); the EXEC then answers as for a real conflict and Redis clients retry.
//!
//! What counts as a change is decided in apply (`consensus::apply`): every write of a value,
//! a delete or eviction that removed a live entry. Not recorded, because the check in
//! `consensus::transaction` sees them without a record: expiry (the watched key's liveness is
//! compared at the transaction's log time) and `Clear` (a key live when watched is then gone; a
//! key absent when watched is still absent unless written again, which is recorded). Local
//! purges of expired entries are never recorded: they happen at different times on each node.
//!
//! The buckets are part of the replicated state: snapshots carry them (`state_machine`). A
//! snapshot of the first format has none; restoring one sets a *floor* (its index) below which
//! every key counts as changed. Only the group task writes; the atomics let the snapshot source
//! and the checkpoint capture read from the same task without a lock.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

/// Buckets of [`KeyVersions`]: 512 KiB of counters per group.
pub const VERSION_BUCKETS: usize = 1 << 16;

/// The last change index per bucket of keys (see the module docs).
#[derive(Debug)]
pub struct KeyVersions {
    buckets: Box<[AtomicU64]>,
    /// Every key counts as changed at this index at least (a restored first-format snapshot).
    floor: AtomicU64,
}

/// [`KeyVersions`] as a snapshot carries it: the floor and every bucket that is not zero.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionsData {
    floor: u64,
    changed: Vec<(u32, u64)>,
}

impl VersionsData {
    /// Checks that every bucket number is in range.
    ///
    /// # Errors
    /// The first one out of range (corrupt data).
    pub fn check(&self) -> Result<(), String> {
        match self.changed.iter().find(|(i, _)| *i as usize >= VERSION_BUCKETS) {
            Some((bad, _)) => Err(format!("version bucket {bad} out of range")),
            None => Ok(()),
        }
    }
}

impl Default for KeyVersions {
    fn default() -> Self {
        Self { buckets: (0..VERSION_BUCKETS).map(|_| AtomicU64::new(0)).collect(), floor: AtomicU64::new(0) }
    }
}

fn bucket_of(key: &[u8]) -> usize {
    (xxh3_64(key) as usize) & (VERSION_BUCKETS - 1)
}

impl KeyVersions {
    /// Records that `key` changed at log index `index`.
    pub fn touch(&self, key: &[u8], index: u64) {
        self.buckets[bucket_of(key)].store(index, Ordering::Relaxed);
    }

    /// The latest index at which `key` may have changed (0: never).
    pub fn last_change(&self, key: &[u8]) -> u64 {
        self.buckets[bucket_of(key)].load(Ordering::Relaxed).max(self.floor.load(Ordering::Relaxed))
    }

    /// A copy for a snapshot.
    pub fn data(&self) -> VersionsData {
        let changed = self
            .buckets
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                let index = b.load(Ordering::Relaxed);
                (index != 0).then_some((i as u32, index))
            })
            .collect();
        VersionsData { floor: self.floor.load(Ordering::Relaxed), changed }
    }

    /// Replaces the whole record with `data`.
    ///
    /// # Errors
    /// As [`VersionsData::check`]; the record is then unchanged.
    pub fn restore(&self, data: &VersionsData) -> Result<(), String> {
        data.check()?;
        self.forget(data.floor);
        for (i, index) in &data.changed {
            self.buckets[*i as usize].store(*index, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Forgets every change and counts every key as changed at `floor` (restoring state that
    /// came without a record).
    pub fn forget(&self, floor: u64) {
        for bucket in self.buckets.iter() {
            bucket.store(0, Ordering::Relaxed);
        }
        self.floor.store(floor, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_touch_is_seen_for_its_key_and_survives_a_round_trip() {
        let v = KeyVersions::default();
        assert_eq!(v.last_change(b"a"), 0);
        v.touch(b"a", 7);
        v.touch(b"a", 9);
        assert_eq!(v.last_change(b"a"), 9);
        let other = (0..1000u32).map(|i| i.to_string()).find(|k| bucket_of(k.as_bytes()) != bucket_of(b"a"));
        assert_eq!(v.last_change(other.unwrap().as_bytes()), 0, "another bucket is untouched");

        let data = v.data();
        assert_eq!(data.changed.len(), 1);
        let copy = KeyVersions::default();
        copy.touch(b"zzz", 3);
        copy.restore(&data).unwrap();
        assert_eq!(copy.data(), data);
        assert_eq!(copy.last_change(b"zzz"), 0, "restore replaces the whole record");
    }

    #[test]
    fn the_floor_counts_every_key_as_changed_and_bad_buckets_are_refused() {
        let v = KeyVersions::default();
        v.touch(b"a", 3);
        v.forget(10);
        assert_eq!(v.last_change(b"a"), 10);
        assert_eq!(v.last_change(b"never"), 10);
        v.touch(b"a", 12);
        assert_eq!(v.last_change(b"a"), 12);
        let bad = VersionsData { floor: 0, changed: vec![(VERSION_BUCKETS as u32, 1)] };
        assert!(v.restore(&bad).is_err());
        assert_eq!(v.last_change(b"a"), 12, "a refused restore changes nothing");
    }

    /// The bucket of a key is part of the replicated state: it must never depend on the build.
    #[test]
    fn buckets_are_stable() {
        assert_eq!(bucket_of(b"counter"), (xxh3_64(b"counter") & 0xffff) as usize);
        assert_eq!(xxh3_64(b""), 0x2d06_8005_38d3_94c2);
    }
}
