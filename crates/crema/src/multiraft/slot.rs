//! Keys to Redis Cluster's hash slots: `CRC16(key) mod 16384`, where only the part between the
//! first `{` and the next `}` is hashed when that part is not empty (a *hash tag*, so related keys
//! such as `{user:1}:name` and `{user:1}:email` share a slot). This is Redis Cluster's exact
//! rule (its `keyHashSlot`), so a cluster-aware Redis client computes the same slot as crema.
//!
//! Shards own contiguous slot ranges ([`ShardRange`]): with N shards, shard `i` owns the slots
//! from `ceil(i * 16384 / N)` up to the next shard's first, so a slot's shard is
//! `slot * N / 16384`. The CRC is the `crc` crate's CRC-16/XMODEM, the variant Redis uses.

use crc::{Crc, Table, CRC_16_XMODEM};

use crate::types::ShardId;

/// The number of hash slots, as in Redis Cluster.
pub const SLOTS: u16 = 16384;

/// Slice-by-16 tables (8 KiB): 64-byte keys hash about three times faster than with the
/// one-byte table (`docs/performance.md`, "Shard routing").
const CRC16: Crc<u16, Table<16>> = Crc::<u16, Table<16>>::new(&CRC_16_XMODEM);

/// The part of `key` that is hashed: the hash tag when there is a non-empty one.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&c| c == b'{') {
        if let Some(len) = key[open + 1..].iter().position(|&c| c == b'}') {
            if len > 0 {
                return &key[open + 1..open + 1 + len];
            }
        }
    }
    key
}

/// The hash slot of `key` (`CLUSTER KEYSLOT`).
#[inline]
pub fn key_slot(key: &[u8]) -> u16 {
    CRC16.checksum(hash_tag(key)) & (SLOTS - 1)
}

/// The slots a shard owns: a contiguous range, `first..=last`.
///
/// ```
/// use crema::multiraft::{key_slot, ShardRange};
///
/// let range = ShardRange { shard_id: 0, total_shards: 16 };
/// assert_eq!((range.first_slot(), range.last_slot()), (0, 1023));
/// assert!(range.contains(key_slot(b"a")) == (key_slot(b"a") < 1024));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardRange {
    /// The shard.
    pub shard_id: ShardId,
    /// How many shards split the slots.
    pub total_shards: u32,
}

impl ShardRange {
    /// The first slot of the shard.
    pub fn first_slot(&self) -> u16 {
        first_slot(self.shard_id, self.total_shards)
    }

    /// The last slot of the shard.
    pub fn last_slot(&self) -> u16 {
        first_slot(self.shard_id + 1, self.total_shards) - 1
    }

    /// Whether the shard owns `slot`.
    pub fn contains(&self, slot: u16) -> bool {
        (self.first_slot()..=self.last_slot()).contains(&slot)
    }
}

/// `ceil(shard * SLOTS / total)`: the first slot of `shard` (SLOTS for `shard == total`).
fn first_slot(shard: u32, total: u32) -> u16 {
    ((u64::from(shard) * u64::from(SLOTS)).div_ceil(u64::from(total))) as u16
}

/// The shard owning `slot` when `total` shards split the slots.
#[inline]
pub fn shard_for_slot(slot: u16, total: u32) -> ShardId {
    (u64::from(slot) * u64::from(total) / u64::from(SLOTS)) as ShardId
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn slots_are_redis_clusters() {
        // CRC-16/XMODEM's check value, which Redis's crc16.c tests too.
        assert_eq!(CRC16.checksum(b"123456789"), 0x31C3);
        // From Redis's documentation of CLUSTER KEYSLOT and of hash tags.
        assert_eq!(key_slot(b"somekey"), 11058);
        assert_eq!(key_slot(b"foo{hash_tag}"), 2515);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b""), 0);
    }

    #[test]
    fn hash_tags_follow_redis_rules() {
        assert_eq!(hash_tag(b"{user1000}.following"), b"user1000");
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"{user1000}.followers"));
        // The first { and the first } after it; an empty tag hashes the whole key.
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"no-close{tag"), b"no-close{tag");
        assert_eq!(hash_tag(b"}{a}"), b"a");
    }

    #[test]
    fn ranges_tile_the_slots() {
        for total in [1u32, 2, 3, 7, 16, 1000, 16384] {
            let mut next = 0u32;
            for shard in 0..total {
                let range = ShardRange { shard_id: shard, total_shards: total };
                assert_eq!(u32::from(range.first_slot()), next, "{total} shards, shard {shard}");
                assert!(range.last_slot() >= range.first_slot());
                next = u32::from(range.last_slot()) + 1;
            }
            assert_eq!(next, u32::from(SLOTS));
        }
        let sixteen = ShardRange { shard_id: 15, total_shards: 16 };
        assert_eq!((sixteen.first_slot(), sixteen.last_slot()), (15360, 16383));
    }

    proptest! {
        #[test]
        fn a_slot_belongs_to_the_range_of_its_shard(slot in 0..SLOTS, total in 1u32..=16384) {
            let shard = shard_for_slot(slot, total);
            prop_assert!(shard < total);
            let range = ShardRange { shard_id: shard, total_shards: total };
            prop_assert!(range.contains(slot));
        }
    }
}
