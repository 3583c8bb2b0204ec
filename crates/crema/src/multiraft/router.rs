//! Key → shard routing through Redis Cluster's hash slots (see `slot`): `CRC16(key) mod 16384`
//! (only the `{hash tag}` when there is one), each shard owning a contiguous slot range.
//!
//! This replaces the seed's `xxhash64(key) % num_shards` on purpose, keeping its names
//! (`shard_for_key`, `ShardRange`): cluster-aware Redis clients compute the same slots and route
//! by themselves, hash tags let related keys share a shard (and a transaction), and a shard can
//! later be split by range. The assignment is part of the cluster's contract: every node and
//! every client computes the same shard for the same key, across versions; the shard count is
//! fixed when a cluster is created.

use crate::config::ConfigError;
use crate::multiraft::slot::{key_slot, shard_for_slot, ShardRange, SLOTS};
use crate::types::ShardId;

/// The most shards a cluster may have: one per slot.
pub const MAX_SHARDS: u32 = SLOTS as u32;

/// Routes keys to shards.
///
/// ```
/// use crema::multiraft::ShardRouter;
///
/// let router = ShardRouter::new(16).unwrap();
/// let shard = router.shard_for_key(b"user:123");
/// assert!(shard < 16);
/// // A hash tag keeps related keys in one shard.
/// assert_eq!(router.shard_for_key(b"{user:1}:name"), router.shard_for_key(b"{user:1}:email"));
/// assert!(router.range(shard).contains(router.slot_for_key(b"user:123")));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardRouter {
    num_shards: u32,
}

impl ShardRouter {
    /// A router over `num_shards` shards (1 to [`MAX_SHARDS`]).
    ///
    /// # Errors
    /// `num_shards` is 0 or above [`MAX_SHARDS`].
    pub fn new(num_shards: u32) -> Result<Self, ConfigError> {
        if num_shards == 0 || num_shards > MAX_SHARDS {
            return Err(ConfigError::Invalid(format!(
                "num_shards must be between 1 and {MAX_SHARDS}, got {num_shards}"
            )));
        }
        Ok(Self { num_shards })
    }

    /// The number of shards.
    pub fn num_shards(&self) -> u32 {
        self.num_shards
    }

    /// The hash slot of `key` (Redis Cluster's `CLUSTER KEYSLOT`).
    #[inline]
    pub fn slot_for_key(&self, key: &[u8]) -> u16 {
        key_slot(key)
    }

    /// The shard that owns `key`.
    #[inline]
    pub fn shard_for_key(&self, key: &[u8]) -> ShardId {
        shard_for_slot(key_slot(key), self.num_shards)
    }

    /// The shard that owns `slot`.
    #[inline]
    pub fn shard_for_slot(&self, slot: u16) -> ShardId {
        shard_for_slot(slot, self.num_shards)
    }

    /// The slots `shard` owns.
    pub fn range(&self, shard: ShardId) -> ShardRange {
        ShardRange { shard_id: shard, total_shards: self.num_shards }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn shard_counts_out_of_range_are_refused_with_the_range() {
        for bad in [0, MAX_SHARDS + 1, u32::MAX] {
            let err = ShardRouter::new(bad).unwrap_err().to_string();
            assert!(err.contains("between 1 and 16384"), "{err}");
        }
        assert_eq!(ShardRouter::new(1).unwrap().num_shards(), 1);
        assert_eq!(ShardRouter::new(MAX_SHARDS).unwrap().num_shards(), MAX_SHARDS);
    }

    #[test]
    fn one_shard_takes_every_key() {
        let router = ShardRouter::new(1).unwrap();
        for i in 0..1000u32 {
            assert_eq!(router.shard_for_key(&i.to_be_bytes()), 0);
        }
    }

    #[test]
    fn keys_spread_evenly_over_the_shards() {
        // 100,000 keys shaped like the benchmarks' over 16 shards: each shard within 5% of the
        // mean (6,250).
        let router = ShardRouter::new(16).unwrap();
        let mut counts = [0u32; 16];
        for i in 0..100_000u64 {
            counts[router.shard_for_key(format!("k{i:015}").as_bytes()) as usize] += 1;
        }
        for (shard, &n) in counts.iter().enumerate() {
            assert!((5_937..=6_563).contains(&n), "shard {shard} got {n} keys: {counts:?}");
        }
    }

    proptest! {
        #[test]
        fn a_key_maps_to_the_shard_whose_range_holds_its_slot(key in proptest::collection::vec(any::<u8>(), 0..64), n in 1..=MAX_SHARDS) {
            let router = ShardRouter::new(n).unwrap();
            let shard = router.shard_for_key(&key);
            prop_assert!(shard < n);
            prop_assert!(router.range(shard).contains(key_slot(&key)));
        }
    }
}
