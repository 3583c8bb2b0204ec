//! Multi-Raft: the key space split into shards, each shard its own Raft group.
//!
//! Built so far: routing, pure functions with no I/O, so every node and every client library
//! computes the same answer: a key's Redis Cluster hash slot ([`key_slot`], `slot`) and the
//! shard whose slot range holds it ([`ShardRouter`], [`ShardRange`]), and what a node reports
//! about its shard replicas ([`ShardInfo`], [`ShardState`]). The coordinator that runs
//! one group per shard, leader hints and shard migration are not built yet: a
//! [`crate::DistributedCache`] runs the single group [`crate::types::DEFAULT_SHARD`].

mod router;
mod shard;
mod slot;

pub use router::{ShardRouter, MAX_SHARDS};
pub use shard::{ShardInfo, ShardState};
pub use slot::{hash_tag, key_slot, shard_for_slot, ShardRange, SLOTS};
