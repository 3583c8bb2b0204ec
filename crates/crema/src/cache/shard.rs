//! One shard replica on this node: its Raft group and its local cache, each its own (see
//! `cache::keyspace`).

use crate::cache::storage::CacheStorage;
use crate::consensus::group::GroupHandle;
use crate::types::ShardId;
use tokio_util::sync::CancellationToken;

/// A shard replica: the group that orders its writes and the cache they are applied to.
#[derive(Clone)]
pub(crate) struct Shard {
    /// The shard.
    pub id: ShardId,
    /// Its Raft group on this node.
    pub group: GroupHandle,
    /// Its local cache (the group's state machine applies into it).
    pub storage: CacheStorage,
    /// Stops this replica's group and tasks (a child of the node's token).
    pub stop: CancellationToken,
}
