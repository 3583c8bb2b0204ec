//! Multi-Raft: the key space split into shards, each shard its own Raft group.
//!
//! Built so far: the [`ShardRouter`] (which shard owns a key), a pure function with no I/O, so
//! every node and every client library computes the same answer. The coordinator that runs one
//! group per shard, leader hints and shard migration are not built yet: a [`crate::DistributedCache`]
//! runs the single group [`crate::types::DEFAULT_SHARD`].

mod router;

pub use router::{ShardRouter, MAX_SHARDS};
