//! # crema: a strongly consistent distributed cache
//!
//! Writes are linearizable through Raft (tikv's raft-rs); every node serves reads from its local
//! cache (a lock-free map; Moka decides evictions and time-to-idle), and any read can be made
//! linearizable with Raft's Read-Index.
//!
//! ```text
//!  put/delete ─► validate ─► leader? ─yes─► group mailbox ─► RawNode ─► Ready ─► apply ─► cache
//!                              │ no                                         │
//!                              └─► forward to leader (peer TCP) ◄───────────┘ (replicated)
//!  get ─────────────────────────────────────────────────────────────────────────► cache (local)
//!  consistent_get ─► read index (leader confirms with a quorum) ─► wait applied ─► cache
//! ```
//!
//! Each Raft group is owned by one task that handles a Ready in raft-rs's order:
//! 1. send messages;
//! 2. install a snapshot;
//! 3. record read states;
//! 4. apply committed entries;
//! 5. persist entries and hard state;
//! 6. send persisted messages;
//! 7. advance (and handle the light ready the same way).
//!
//! Apply is deterministic: time enters a command only as an absolute expiry.
//!
//! ```no_run
//! use crema::{CacheConfig, DistributedCache};
//! use std::time::Duration;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let config = CacheConfig::new(1, "127.0.0.1:9000".parse()?)
//!         .with_max_capacity(100_000)
//!         .with_default_ttl(Duration::from_secs(3600));
//!     let cache = DistributedCache::new(config).await?;
//!     cache.put("user:123", "Alice").await?;
//!     if let Some(value) = cache.consistent_get(b"user:123").await? {
//!         println!("Consistent read: {:?}", value);
//!     }
//!     cache.shutdown().await;
//!     Ok(())
//! }
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod acl;
#[cfg(feature = "bench-internals")]
pub mod bench_support;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod consensus;
pub mod discovery;
pub mod error;
#[cfg(feature = "fault-injection")]
pub mod faults;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod glob;
pub mod metrics;
pub mod multiraft;
pub mod private_files;
pub(crate) mod transport;
pub mod types;

pub use cache::keyspace::{Keyspace, ReadEntries};
pub use cache::storage::unix_now_ms;
pub use cache::storage::{CacheStats, CacheStorage};
pub use cache::{ClusterStatus, DistributedCache, EachAnswer, MigrationFigures, NodeEnd, RaftFigures};
pub use checkpoint::{CheckpointConfig, CheckpointManager, CheckpointStore};
pub use config::{CacheConfig, ConfigError, RaftConfig, RaftStorageType, MAX_COMMAND_BYTES};
pub use consensus::apply::{format_f64, parse_f64, parse_i64, MOST_COPIED_PER_BATCH, MOST_COPIED_PER_ENTRY};
pub use consensus::command::{CacheCommand, CommandError, ExpireCondition, ExpiryUpdate, SetCondition};
pub use consensus::long_double::{LongDouble, ParseLongDoubleError};
pub use consensus::state_machine::CacheStateMachine;
pub use consensus::storage::MemStorage;
pub use consensus::transaction::{KeyMeta, ReadCommand, Transaction, TxStep, WatchedKey};
pub use consensus::{ApplyError, ApplyOutput, GroupStatus, RecoveryState, Role};
pub use discovery::{
    ClusterDiscovery, DiscoveredNode, DiscoveryContext, DiscoveryError, DiscoveryEvent, MemberlistConfig,
    MemberlistDiscovery, NoOpClusterDiscovery, NodeHealth, PeerManagementConfig, ShardLeaderHint,
    StaticClusterDiscovery,
};
pub use error::{Error, Result};
pub use multiraft::{
    key_slot, MultiRaftBuilder, MultiRaftCacheConfig, MultiRaftCoordinator, MultiRaftStats, Shard,
    ShardConfig, ShardInfo, ShardRange, ShardRouter, ShardState,
};
pub use transport::auth::ClusterSecret;
pub use transport::tls::{PeerTls, NODE_URI_PREFIX};
pub use transport::TransportError;
pub use types::{NodeId, ShardId};

#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
