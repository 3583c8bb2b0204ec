//! The node's side of placement (see `crate::multiraft::placement`): the meta shard's leader
//! agrees the cluster's first shard map, the one every seed node computed at start from the
//! same seed list and replica factor, so that every node, and every node that joins later,
//! reads which nodes hold each shard from the meta shard.
//!
//! Moving replicas (the planner's moves, carried out by each shard's leader) builds on this.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::consensus::command::{CacheCommand, StampedCommand};
use crate::consensus::group::GroupHandle;
use crate::multiraft::{PlacementChange, ShardMap, ShardMapStore};

/// How often the meta shard's leader looks at the map.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// While the map is empty and this node leads the meta shard, proposes `initial` (looked at
/// when the meta shard's leader changes, and every `LOOK_EVERY`). Runs until the node stops.
pub(super) async fn agree_first_map(
    meta: GroupHandle,
    map: Arc<ShardMapStore>,
    initial: ShardMap,
    cancel: CancellationToken,
) {
    let change = CacheCommand::Placement(PlacementChange::Init(initial));
    loop {
        if map.map().is_empty() && meta.shared.is_leader() {
            let stamped = StampedCommand::new(crate::cache::storage::unix_now_ms(), change.clone());
            match meta.propose(Bytes::from(stamped.encode())).await {
                Ok(_) => info!(shards = map.map().shards().len(), "the first shard map is agreed"),
                Err(e) => debug!(error = %e, "the first shard map was not agreed yet"),
            }
        }
        // Looked at again as soon as this node becomes the leader: the map is agreed right
        // after the first election, before anything else is written.
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = meta.shared.leader_changed() => {}
            _ = tokio::time::sleep(LOOK_EVERY) => {}
        }
    }
}
