//! Multi-Raft: the key space split into shards, each shard its own Raft group.
//!
//! Routing is pure, with no I/O, so every node and every client library computes the same
//! answer: a key's Redis Cluster hash slot ([`key_slot`], `slot`) and the shard whose slot range
//! holds it ([`ShardRouter`], [`ShardRange`]). With [`MultiRaftCacheConfig`] enabled, a
//! [`crate::DistributedCache`] runs one group per shard, every node holding a replica of every
//! shard, and routes each call by key (see `crate::cache`); [`ShardInfo`] and [`ShardState`] are
//! what it reports of each replica, and [`MultiRaftCoordinator`] is the seed's control-plane API
//! over them. Not built yet: placement of shards on a subset of the nodes, moving replicas,
//! leader hints by gossip.

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
pub use shard::{ShardInfo, ShardState};
pub use slot::{hash_tag, key_slot, shard_for_slot, ShardRange, SLOTS};
