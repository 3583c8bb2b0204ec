//! Identifiers shared by every module.
//!
//! `NodeId` and `ShardId` are plain integers, as the seed API spells them (`CacheConfig::new(1, ..)`,
//! `with_seed_nodes(vec![(2, addr)])`, "ShardId is just u32"): a newtype would make those integer
//! literals fail to infer, breaking the Quick Start every user copies first.

/// A node's id in the cluster (Raft's peer id). Never 0: raft-rs reserves 0 for "none".
pub type NodeId = u64;

/// A shard (Raft group) id. Single-Raft mode uses shard 0 only.
pub type ShardId = u32;

/// The shard used in single-Raft mode.
pub const DEFAULT_SHARD: ShardId = 0;
