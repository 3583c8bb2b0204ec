//! The meta shard leader's part of placement (see the parent module): settling moves whose
//! groups have their planned members, planning new ones, and keeping every live node a
//! follower of the meta shard.

use raft::eraftpb::ConfChangeType;
use tracing::{debug, info};

use super::{live_followers, Placement, MAX_MOVES, MIGRATIONS_KEPT, UNSEEN_GRACE};
use crate::cache::split::META_SHARD;
use crate::discovery::NodeHealth;
use crate::multiraft::placement::{plan, PlacementPolicy};
use crate::multiraft::{PlacementChange, ShardMap, ShardState};
use crate::types::NodeId;

impl Placement {
    /// Settles every move whose group has its planned members (meta shard's leader).
    pub(super) async fn settle(&self, map: &ShardMap) {
        for placement in map.shards().iter().filter(|p| p.state == ShardState::Transferring) {
            let shard = placement.shard_id;
            // A move this node did not plan (an operator's, or one planned before it led the
            // meta shard) is timed and counted from when it first sees it: found from outside,
            // operators' moves were settled and never started or timed.
            {
                let mut started = self.started.lock().expect("moves poisoned");
                if let std::collections::hash_map::Entry::Vacant(e) = started.entry(shard) {
                    e.insert(std::time::Instant::now());
                    self.migrations.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            let Some((voters, learners)) = self.members_of(shard, false).await else { continue };
            let done = voters == placement.members && (shard == META_SHARD || learners.is_empty());
            if done && self.propose(PlacementChange::Settle { shard_id: shard, epoch: placement.epoch }).await
            {
                let began = self.started.lock().expect("moves poisoned").remove(&shard);
                let took = began.map(|t| t.elapsed());
                info!(shard, members = ?placement.members, ?took, "placement: the shard's move is done");
                self.migrations.settled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Some(took) = took {
                    let mut durations = self.migrations.durations.lock().expect("migrations poisoned");
                    if durations.len() >= MIGRATIONS_KEPT {
                        durations.remove(0);
                    }
                    durations.push(took.as_secs_f64());
                }
            }
        }
    }

    /// Proposes the moves the planner picks (meta shard's leader; see the module docs).
    pub(super) async fn plan(&self, map: &ShardMap) {
        let policy = self.policy();
        if !policy.auto_add_voters {
            return;
        }
        let Some(discovery) = &self.discovery else { return };
        if let Err(why) = map.check_replica_factor(self.replica_factor) {
            if let Some(count) = self.replicas.replica_warnings.note(std::time::Instant::now()) {
                tracing::warn!(refused_since_last_warning = count, "placement plans nothing: {why}");
            }
            return;
        }
        let window = 2 * self.replicas.config.raft.election_timeout();
        let heard = self.replicas.dispatcher.heard_peers(window);
        let nodes = discovery.nodes();
        let live = live_followers(self.node_id, &self.meta, &nodes, &heard);
        if self.began.elapsed() < UNSEEN_GRACE {
            let known = |n: &NodeId| live.contains(n) || nodes.iter().any(|d| d.node_id == *n);
            let unseen: Vec<NodeId> = map.loads().into_keys().filter(|n| !known(n)).collect();
            if !unseen.is_empty() {
                debug!(?unseen, "placement: nodes of the map not seen yet; no moves planned before they are");
                return;
            }
        }
        let placement_policy = PlacementPolicy {
            replica_factor: self.replica_factor,
            replace_dead: policy.auto_remove_voters,
            max_moves: MAX_MOVES,
        };
        for planned in plan(map, &live, &placement_policy) {
            let Some(placement) = map.shard(planned.shard_id) else { continue };
            let members = planned.apply_to(&placement.members);
            let change =
                PlacementChange::Move { shard_id: planned.shard_id, epoch: placement.epoch, members };
            if self.propose(change).await {
                info!(shard = planned.shard_id, add = ?planned.add, remove = ?planned.remove, "placement: a move starts");
                self.started
                    .lock()
                    .expect("moves poisoned")
                    .insert(planned.shard_id, std::time::Instant::now());
                self.migrations.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Adds live nodes that do not follow the meta shard to it as learners, and removes down
    /// learners that hold nothing (meta shard's leader, as the policy allows).
    pub(super) async fn tend_meta_followers(&self, map: &ShardMap) {
        let policy = self.policy();
        let Some(discovery) = &self.discovery else { return };
        let (voters, learners) = (self.meta.shared.voters(), self.meta.shared.learners());
        let follows = |id: NodeId| voters.contains(&id) || learners.contains(&id);
        let nodes = discovery.nodes();
        if policy.auto_add_voters {
            let newcomer =
                nodes.iter().find(|n| n.node_id != 0 && n.health == NodeHealth::Alive && !follows(n.node_id));
            if let Some(n) = newcomer {
                let added = self.membership.change_in(
                    &self.meta,
                    ConfChangeType::AddLearnerNode,
                    n.node_id,
                    Some(n.raft_addr),
                );
                match added.await {
                    Ok(()) => info!(node = n.node_id, "placement: a new node follows the meta shard"),
                    Err(e) => {
                        debug!(node = n.node_id, error = %e, "a new node was not added to the meta shard")
                    }
                }
                return;
            }
        }
        if policy.auto_remove_voters {
            let holds_nothing = |id: NodeId| map.shards_of(id).is_empty();
            let gone = learners.iter().copied().find(|l| {
                holds_nothing(*l) && nodes.iter().any(|n| n.node_id == *l && n.health == NodeHealth::Down)
            });
            if let Some(id) = gone {
                match self.membership.change_in(&self.meta, ConfChangeType::RemoveNode, id, None).await {
                    Ok(()) => {
                        info!(node = id, "placement: a down node that held nothing left the meta shard")
                    }
                    Err(e) => {
                        debug!(node = id, error = %e, "a down node was not removed from the meta shard")
                    }
                }
            }
        }
    }
}
