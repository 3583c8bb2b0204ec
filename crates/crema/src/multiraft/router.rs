//! Key → shard routing: `xxhash64(key, seed 0) % num_shards`, as the Crema README specifies.
//!
//! The assignment is part of the cluster's contract: every node, and any client that routes
//! by itself, must compute the same shard for the same key, across versions. The hash is the
//! standard XXH64 from `xxhash-rust` (checked against the reference test vectors below), and
//! the shard count is fixed when a cluster is created.

use crate::config::ConfigError;
use crate::types::ShardId;

/// The most shards a cluster may have. Each shard is a Raft group with its own task, log and
/// heartbeats on every replica; past a few dozen groups per node, their ticks and heartbeats
/// cost more than the parallelism they buy on the machines crema targets.
pub const MAX_SHARDS: u32 = 64;

/// Routes keys to shards.
///
/// ```
/// use crema::multiraft::ShardRouter;
///
/// let router = ShardRouter::new(16).unwrap();
/// let shard = router.shard_for_key(b"user:123");
/// assert!(shard < 16);
/// assert_eq!(shard, router.shard_for_key(b"user:123"));
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

    /// The shard that owns `key`.
    #[inline]
    pub fn shard_for_key(&self, key: &[u8]) -> ShardId {
        (key_hash(key) % u64::from(self.num_shards)) as ShardId
    }
}

/// XXH64 of `key` with seed 0.
#[inline]
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh64::xxh64(key, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_hash_is_standard_xxh64_with_seed_zero() {
        // Reference vectors of XXH64 (xxHash's own test suite and its documentation).
        assert_eq!(key_hash(b""), 0xEF46_DB37_51D8_E999);
        assert_eq!(key_hash(b"a"), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(key_hash(b"abc"), 0x44BC_2CF5_AD77_0999);
    }

    #[test]
    fn shard_counts_out_of_range_are_refused_with_the_range() {
        for bad in [0, MAX_SHARDS + 1, u32::MAX] {
            let err = ShardRouter::new(bad).unwrap_err().to_string();
            assert!(err.contains("between 1 and 64"), "{err}");
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
        // mean (6,250; a fair hash has a standard deviation of about 77 here).
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
        fn a_key_maps_to_its_hash_modulo_the_shard_count(key in proptest::collection::vec(any::<u8>(), 0..64), n in 1..=MAX_SHARDS) {
            let router = ShardRouter::new(n).unwrap();
            let shard = router.shard_for_key(&key);
            prop_assert!(shard < n);
            prop_assert_eq!(u64::from(shard), key_hash(&key) % u64::from(n));
        }
    }
}
