//! Operator moves (`crema cluster move-shard` and `crema cluster rebalance`): proposed through
//! the meta shard as `PlacementChange::Move`, like the planner's own (see `cache::placement`),
//! and carried out the same way by each shard's leader.

use std::collections::BTreeSet;

use super::DistributedCache;
use crate::consensus::command::CacheCommand;
use crate::consensus::ApplyOutput;
use crate::discovery::NodeHealth;
use crate::error::{Error, Result};
use crate::multiraft::placement::{plan, Move, PlacementPolicy};
use crate::multiraft::{PlacementChange, ShardState};
use crate::types::{NodeId, ShardId};

/// Shards a rebalance starts moving at once.
const REBALANCE_MOVES: usize = 2;

impl DistributedCache {
    /// Starts moving shard `shard`'s voting replica from node `from` to node `to`: `to` is added
    /// as a learner, catches up from a snapshot, is promoted, and then `from` is removed (see
    /// [`crate::multiraft::placement`]); writes and reads go on meanwhile. Answers once the move
    /// is agreed; [`Self::shard_map`] shows the shard `Transferring` until it is done.
    ///
    /// # Errors
    /// `Membership` when the shard is not in the map or already moving, `from` holds no
    /// replica of it, `to` already does or does not follow the meta shard yet, or the map
    /// changed meanwhile; the errors of a write otherwise.
    pub async fn move_shard(&self, shard: ShardId, from: NodeId, to: NodeId) -> Result<()> {
        self.check_running()?;
        let refuse = |why: String| Err(Error::Membership(why));
        let map = self.shard_map.map();
        let Some(placement) = map.shard(shard) else {
            return refuse(format!(
                "shard {shard} is not in the shard map (one shard, or no map agreed yet)"
            ));
        };
        if placement.state != ShardState::Active {
            return refuse(format!("shard {shard} is moving already; wait until it settles"));
        }
        if !placement.members.contains(&from) {
            return refuse(format!(
                "node {from} holds no replica of shard {shard} (members {:?})",
                placement.members
            ));
        }
        if placement.members.contains(&to) {
            return refuse(format!("node {to} already holds shard {shard}"));
        }
        if !self.meta_followers().contains(&to) {
            return refuse(format!(
                "node {to} does not follow the meta shard: start it with discovery and let the \
                 policy (auto_add_voters) add it first"
            ));
        }
        // Found from outside: a move to a dead node was agreed and stayed under way for as long
        // as the node was down (for good, if it never came back), holding one of the two moves
        // the planner runs at once.
        let window = 2 * self.config.raft.election_timeout();
        let down = self.discovered_nodes().iter().any(|n| n.node_id == to && n.health == NodeHealth::Down);
        if down || (to != self.config.node_id && self.dispatcher.heard_within(&[to], window) == 0) {
            return refuse(format!(
                "node {to} does not answer (declared down, or not heard from within {window:?}): a move to it \
                 could not complete"
            ));
        }
        let planned = Move { shard_id: shard, add: Some(to), remove: Some(from) };
        if self.propose_move(&planned, placement.epoch).await? {
            Ok(())
        } else {
            refuse(format!("the placement of shard {shard} changed meanwhile; look again and retry"))
        }
    }

    /// Starts the moves the planner picks now (at most two shards moving at once), whatever
    /// the discovery policy: the replicas of nodes declared down are replaced, and replicas
    /// move from the most loaded nodes to the least loaded ones until they differ by at most
    /// one. Answers the moves started (none when the placement is balanced).
    ///
    /// # Errors
    /// The errors of a write.
    pub async fn rebalance(&self) -> Result<Vec<Move>> {
        self.check_running()?;
        let map = self.shard_map.map();
        map.check_replica_factor(self.config.replica_factor).map_err(Error::Membership)?;
        let heard = self.dispatcher.heard_peers(2 * self.config.raft.election_timeout());
        let live = super::placement::live_followers(
            self.config.node_id,
            &self.meta().group,
            &self.discovered_nodes(),
            &heard,
        );
        let policy = PlacementPolicy {
            replica_factor: self.config.replica_factor,
            replace_dead: true,
            max_moves: REBALANCE_MOVES,
        };
        let mut started = Vec::new();
        for planned in plan(&map, &live, &policy) {
            let Some(placement) = map.shard(planned.shard_id) else { continue };
            if self.propose_move(&planned, placement.epoch).await? {
                started.push(planned);
            }
        }
        Ok(started)
    }

    /// The nodes that follow the meta shard (its voters and learners as this node knows them).
    fn meta_followers(&self) -> BTreeSet<NodeId> {
        let shared = &self.meta().group.shared;
        shared.voters().into_iter().chain(shared.learners()).collect()
    }

    /// Proposes `planned` against `epoch`; whether the map took it.
    async fn propose_move(&self, planned: &Move, epoch: u64) -> Result<bool> {
        let members = match self.shard_map.placement(planned.shard_id) {
            Some(p) => planned.apply_to(&p.members),
            None => return Ok(false),
        };
        let change = PlacementChange::Move { shard_id: planned.shard_id, epoch, members };
        Ok(self.execute(CacheCommand::Placement(change)).await? == ApplyOutput::Int(1))
    }
}
