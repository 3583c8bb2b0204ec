//! Membership changes, checked before they are proposed: a change that cannot be right is
//! refused with a message saying why, and nothing is proposed. Node id 0 (Raft's "none"), an
//! id that is already a voter, an address another member has, removing a node that is not a
//! member (or the last voter), and an address where no crema node of that id answers the peer
//! handshake (`Transport::probe`) are refused. The checks run on the leader, against the
//! configuration it holds. A change asked while another is not yet applied is refused by the
//! group loop (raft-rs would take it as an empty entry and answer it as made: see
//! `consensus::group::propose`) and asked again here until it is made or the timeout ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use raft::eraftpb::{ConfChange, ConfChangeType};

use super::DistributedCache;
use crate::consensus::group::GroupHandle;
use crate::error::{Error, Result};
use crate::transport::Transport;
use crate::types::NodeId;

impl DistributedCache {
    pub(super) async fn change_membership(
        &self,
        kind: ConfChangeType,
        id: NodeId,
        addr: Option<SocketAddr>,
    ) -> Result<()> {
        self.check_running()?;
        if kind == ConfChangeType::RemoveNode && self.shards.num_shards() > 1 {
            return self.remove_from_sharded(id).await;
        }
        self.membership().change(kind, id, addr).await
    }

    /// Removes node `id` from a sharded cluster: once it holds no replica in the shard map
    /// (moved away by `move_shard`), it leaves the meta shard it follows, and stops. Found from
    /// outside: this was refused always, also after every shard had been moved off the node.
    async fn remove_from_sharded(&self, id: NodeId) -> Result<()> {
        let map = self.shard_map();
        let held = map.shards_of(id);
        if !held.is_empty() {
            let example = held[0];
            return Err(Error::Membership(format!(
                "node {id} still holds replicas of shards {held:?}: move each away first (crema cluster \
                 move-shard --shard {example} --from {id} --to N), then remove it"
            )));
        }
        if let Some(moving) =
            map.shards().iter().find(|s| s.state == crate::multiraft::ShardState::Transferring)
        {
            return Err(Error::Membership(format!(
                "shard {} is moving: remove node {id} once every move has ended",
                moving.shard_id
            )));
        }
        self.membership().change_in(&self.meta().group, ConfChangeType::RemoveNode, id, None).await
    }

    /// What membership changes need of this node (also held by the discovery policy task).
    pub(super) fn membership(&self) -> Membership {
        Membership {
            node_id: self.config.node_id,
            meta: self.meta().group.clone(),
            transport: self.transport.clone(),
            shards: self.shards.num_shards() as usize,
            timeout: self.config.request_timeout,
        }
    }
}

/// How soon a membership change refused for another one not yet applied is asked again.
const PENDING_RETRY: Duration = Duration::from_millis(10);

/// Proposes checked membership changes through the meta shard's group.
#[derive(Clone)]
pub(super) struct Membership {
    pub node_id: NodeId,
    pub meta: GroupHandle,
    pub transport: Arc<Transport>,
    pub shards: usize,
    pub timeout: Duration,
}

impl Membership {
    /// Proposes `kind` of node `id` (at `addr`) once the checks pass (see the module header).
    pub async fn change(&self, kind: ConfChangeType, id: NodeId, addr: Option<SocketAddr>) -> Result<()> {
        if self.shards > 1 {
            // A node added by hand follows the meta shard (a learner), as discovery's policy
            // adds one: placement gives it replicas (`crema cluster rebalance`, or the planner
            // with `--auto-add-voters`). Found from outside: a node started with `--join`
            // without that policy could not be added at all. Each shard's own members change
            // only through placement; a node leaves once it holds no replica
            // (`DistributedCache::remove_from_sharded`).
            return match kind {
                // Checked as an addition: found from outside, a node that already was a voter
                // of the meta shard was taken for placement's demotion, unchecked, and an
                // operator's `add-node` with a mistyped id demoted it (and pointed its link at
                // the wrong address).
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    self.propose_in(&self.meta, ConfChangeType::AddLearnerNode, id, addr, false).await
                }
                _ => Err(Error::Membership(
                    "with several shards, a node's replicas change through placement (crema cluster \
                     move-shard, rebalance)"
                        .into(),
                )),
            };
        }
        self.change_in(&self.meta, kind, id, addr).await
    }

    /// Proposes `kind` of node `id` (at `addr`) in `group` once the checks pass against that
    /// group: how placement changes the members of any shard (see `cache::placement`).
    /// Demoting a voter to a learner (`AddLearnerNode` on a voter) is proposed unchecked.
    pub async fn change_in(
        &self,
        group: &GroupHandle,
        kind: ConfChangeType,
        id: NodeId,
        addr: Option<SocketAddr>,
    ) -> Result<()> {
        self.propose_in(group, kind, id, addr, true).await
    }

    /// [`Self::change_in`]; a demotion goes unchecked only when `demotions` says it may.
    async fn propose_in(
        &self,
        group: &GroupHandle,
        kind: ConfChangeType,
        id: NodeId,
        addr: Option<SocketAddr>,
        demotions: bool,
    ) -> Result<()> {
        let timeout = self.timeout;
        let mut pending = None;
        let checked_and_proposed = async {
            // One change at a time: one asked while another is not yet applied is checked and
            // asked again (the other is applied within a round trip, unless the group lost
            // its quorum, which the timeout ends).
            loop {
                let demotion = demotions
                    && kind == ConfChangeType::AddLearnerNode
                    && group.shared.voters().contains(&id);
                if !demotion {
                    self.check_membership_change(group, kind, id, addr).await?;
                }
                let change = ConfChange {
                    change_type: kind,
                    node_id: id,
                    context: addr.map(|a| a.to_string().into_bytes().into()).unwrap_or_default(),
                    ..Default::default()
                };
                pending = None;
                match group.conf_change(change).await {
                    Err(Error::ChangePending(why)) => {
                        pending = Some(why);
                        tokio::time::sleep(PENDING_RETRY).await;
                    }
                    answer => return answer,
                }
            }
        };
        let answer = tokio::time::timeout(timeout, checked_and_proposed).await;
        match answer {
            Ok(answer) => answer.map(|_| ()),
            // Refused for another change until the end: nothing was proposed.
            Err(_) => Err(pending.map_or(Error::Timeout(timeout), Error::ChangePending)),
        }
    }

    fn peer_addr(&self, id: NodeId) -> Option<SocketAddr> {
        if id == self.node_id {
            return Some(self.transport.local_addr());
        }
        self.transport.peer_addr(id)
    }

    async fn check_membership_change(
        &self,
        group: &GroupHandle,
        kind: ConfChangeType,
        id: NodeId,
        addr: Option<SocketAddr>,
    ) -> Result<()> {
        let refuse = |why: String| Err(Error::Membership(why));
        if id == 0 {
            return refuse("node id 0 is not valid (ids start at 1)".into());
        }
        if !group.shared.is_leader() {
            return Err(Error::NotLeader { leader_hint: group.shared.leader_id() });
        }
        let status = group.status().await?;
        let (voter, learner) = (status.voters.contains(&id), status.learners.contains(&id));
        let addr = match (kind, addr) {
            (ConfChangeType::RemoveNode, _) => {
                if !voter && !learner {
                    return refuse(format!(
                        "node {id} is not a member (voters {:?}, learners {:?})",
                        status.voters, status.learners
                    ));
                }
                if status.voters == [id] {
                    return refuse(format!("node {id} is the last voter"));
                }
                return Ok(());
            }
            (_, Some(addr)) => addr,
            (_, None) => return refuse(format!("node {id} needs an address")),
        };
        let known = self.peer_addr(id);
        if voter {
            let at = known.map(|a| format!(" at {a}")).unwrap_or_default();
            return refuse(format!("node {id} is already a voter{at}; remove it first to move it"));
        }
        if learner && kind == ConfChangeType::AddLearnerNode {
            return refuse(format!("node {id} is already a learner"));
        }
        if learner && known.is_some_and(|a| a != addr) {
            let known = known.expect("checked");
            return refuse(format!(
                "node {id} is a learner at {known}, not {addr}; remove it first to move it"
            ));
        }
        let members = status.voters.iter().chain(&status.learners).filter(|m| **m != id);
        if let Some(other) = members.copied().find(|m| self.peer_addr(*m) == Some(addr)) {
            return refuse(format!("{addr} is node {other}'s address"));
        }
        match self.transport.probe(addr).await {
            Ok(answered) if answered == id => Ok(()),
            Ok(answered) => refuse(format!("the crema node at {addr} is node {answered}, not node {id}")),
            Err(e) => refuse(format!(
                "nothing at {addr} answered crema's peer handshake ({e}); start the node (with --join) first"
            )),
        }
    }
}

/// The membership API.
impl DistributedCache {
    /// The voting members.
    ///
    /// # Errors
    /// `Shutdown` once stopped.
    pub async fn voters(&self) -> Result<Vec<NodeId>> {
        Ok(self.meta().group.status().await?.voters)
    }

    /// Adds node `id` (reachable at `addr`) as a voter, or promotes the learner `id`. Must be
    /// called on the leader. The new node should be started with [`CacheConfig::with_join`](crate::CacheConfig::with_join);
    /// it must answer the peer handshake at `addr` as node `id` before anything is proposed.
    ///
    /// # Errors
    /// `NotLeader` on a follower; `Membership` for id 0, an id already a voter (or a learner
    /// at another address), an address another member has, or an address where node `id`
    /// does not answer; `ChangePending` when another change was still not applied at the
    /// timeout. Nothing changes on error.
    pub async fn add_peer(&self, id: NodeId, addr: SocketAddr) -> Result<()> {
        self.change_membership(ConfChangeType::AddNode, id, Some(addr)).await
    }

    /// Adds node `id` as a learner (receives the log, does not vote).
    ///
    /// # Errors
    /// As [`Self::add_peer`].
    pub async fn add_learner(&self, id: NodeId, addr: SocketAddr) -> Result<()> {
        self.change_membership(ConfChangeType::AddLearnerNode, id, Some(addr)).await
    }

    /// Removes node `id` from the group. The removed node stops by itself once it applies its
    /// removal ([`NodeEnd::Removed`](super::NodeEnd::Removed)).
    ///
    /// # Errors
    /// `NotLeader` on a follower; `Membership` when `id` is not a member or is the last voter;
    /// `ChangePending` as for [`Self::add_peer`]. Nothing changes on error.
    pub async fn remove_peer(&self, id: NodeId) -> Result<()> {
        self.change_membership(ConfChangeType::RemoveNode, id, None).await
    }

    /// Makes this node the only voter of a new cluster, keeping its state: etcd's
    /// `--force-new-cluster`, the way out when a majority of the voters is lost for good and
    /// the group can elect no leader. Without consensus, every other member is removed from
    /// this node's configuration; it then leads alone. Writes the lost members held and this
    /// node did not are gone. Restart the others empty with [`CacheConfig::with_join`](crate::CacheConfig::with_join) and add
    /// them back with [`Self::add_peer`]. Answers the members removed.
    ///
    /// # Errors
    /// This node is not a voter; shutdown.
    pub async fn force_new_cluster(&self) -> Result<Vec<NodeId>> {
        self.check_running()?;
        for shard in self.shards.held().iter().skip(1) {
            shard.group.force_new_cluster().await?;
        }
        self.meta().group.force_new_cluster().await
    }
}
