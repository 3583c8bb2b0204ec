//! Multi-Raft: the key space split into shards, each shard its own Raft group.
//!
//! Routing is pure, with no I/O, so every node and every client library computes the same
//! answer: a key's Redis Cluster hash slot ([`key_slot`], `slot`) and the shard whose slot range
//! holds it ([`ShardRouter`], [`ShardRange`]). With [`MultiRaftCacheConfig`] enabled, a
//! [`crate::DistributedCache`] runs one group per shard it holds and routes each call by key
//! (see `crate::cache`); [`placement`] says which nodes hold which shard (the [`ShardMap`],
//! agreed through the meta shard, and the planner that moves replicas); [`ShardInfo`] and
//! [`ShardState`] are what a node reports of each shard, and [`MultiRaftCoordinator`] is the
//! seed's control-plane API over them.

mod config;
pub(crate) mod coordinator;
pub mod map_store;
pub mod placement;
mod router;
mod shard;
mod slot;

pub use config::MultiRaftCacheConfig;
pub use coordinator::{MultiRaftBuilder, MultiRaftCoordinator, MultiRaftStats, ShardConfig};
pub use map_store::{PlacementChange, ShardMapStore};
pub use placement::{Move, PlacementPolicy, ShardMap, ShardPlacement};
pub use router::{ShardRouter, MAX_SHARDS};
pub use shard::{Shard, ShardInfo, ShardState};
pub use slot::{hash_tag, key_slot, shard_for_slot, ShardRange, SLOTS};
