//! What a node reports about the shards it holds a replica of ([`ShardInfo`], with its
//! lifecycle [`ShardState`]), in the seed's names. Pure: built from a group's status and its
//! cache's figures.

use serde::{Deserialize, Serialize};

use crate::consensus::GroupStatus;
use crate::multiraft::slot::ShardRange;
use crate::types::{NodeId, ShardId};

/// Where a shard replica is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardState {
    /// Starting up: no leader known yet, or recovering after a restart without its Raft state.
    Initializing,
    /// Serving requests.
    Active,
    /// Moving to or from another node (rebalancing).
    Transferring,
    /// Being taken off this node.
    Removing,
    /// Shut down.
    Stopped,
}

/// One shard replica as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    /// The shard.
    pub shard_id: ShardId,
    /// Its state on this node.
    pub state: ShardState,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// Voting members.
    pub members: Vec<NodeId>,
    /// Non-voting members (catching up).
    pub learners: Vec<NodeId>,
    /// Live entries in this replica (approximate).
    pub entry_count: u64,
    /// Weighted size of this replica's cache: bytes when the cache is sized by memory, else
    /// entries.
    pub size_bytes: u64,
    /// The current term.
    pub term: u64,
    /// The highest committed index known here.
    pub commit_index: u64,
    /// The highest index applied here.
    pub applied_index: u64,
    /// True while the replica hibernates: idle, its group ticks no clock until a message or a
    /// request wakes it (see [`crate::RaftConfig::hibernate`]).
    pub hibernating: bool,
    /// The hash slots the shard owns.
    pub first_slot: u16,
    /// The last of them.
    pub last_slot: u16,
}

impl ShardState {
    /// The state of a replica: `stopped` when the node has ended, else initializing while it
    /// recovers or knows no leader, else active.
    pub(crate) fn of(stopped: bool, recovering: bool, leader: Option<NodeId>) -> Self {
        match () {
            _ if stopped => ShardState::Stopped,
            _ if recovering || leader.is_none() => ShardState::Initializing,
            _ => ShardState::Active,
        }
    }
}

impl ShardInfo {
    /// The report of the replica whose group is in `status`, with its cache's figures, when
    /// `total_shards` shards split the slots; `stopped` when the node has ended.
    pub fn from_status(
        status: &GroupStatus,
        entry_count: u64,
        size_bytes: u64,
        total_shards: u32,
        stopped: bool,
    ) -> Self {
        let state = ShardState::of(stopped, status.recovery.is_recovering(), status.leader_id);
        let range = ShardRange { shard_id: status.shard, total_shards };
        Self {
            shard_id: status.shard,
            state,
            leader: status.leader_id,
            members: status.voters.clone(),
            learners: status.learners.clone(),
            entry_count,
            size_bytes,
            term: status.term,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            hibernating: status.hibernating,
            first_slot: range.first_slot(),
            last_slot: range.last_slot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::{RecoveryState, Role};

    fn status(leader: Option<NodeId>, recovery: RecoveryState) -> GroupStatus {
        GroupStatus {
            shard: 0,
            node_id: 1,
            role: Role::Follower,
            term: 3,
            leader_id: leader,
            commit_index: 10,
            applied_index: 9,
            first_index: 1,
            last_index: 10,
            log_bytes: 0,
            voters: vec![1, 2, 3],
            learners: vec![4],
            recovery,
            pending_proposals: 0,
            replica_progress: Vec::new(),
            conf_index: 0,
            hibernating: false,
        }
    }

    #[test]
    fn the_state_follows_the_group() {
        let active = ShardInfo::from_status(&status(Some(2), RecoveryState::Done), 5, 50, 1, false);
        assert_eq!(active.state, ShardState::Active);
        assert_eq!((active.first_slot, active.last_slot), (0, 16383));
        assert_eq!((active.members.len(), active.learners.clone()), (3, vec![4]));
        let starting = ShardInfo::from_status(&status(None, RecoveryState::Done), 0, 0, 1, false);
        assert_eq!(starting.state, ShardState::Initializing);
        let recovering = RecoveryState::WaitingForPeers { heard: vec![], needed: 1 };
        assert_eq!(
            ShardInfo::from_status(&status(Some(2), recovering), 0, 0, 1, false).state,
            ShardState::Initializing
        );
        assert_eq!(
            ShardInfo::from_status(&status(Some(2), RecoveryState::Done), 0, 0, 1, true).state,
            ShardState::Stopped
        );
    }
}

/// One shard replica on this node, the seed's `Shard`: a partition of the key space (its
/// [`ShardRange`] of hash slots) with its own Raft group and its own local cache. A handle got
/// from [`crate::MultiRaftCoordinator::shard`] or [`crate::MultiRaftCoordinator::local_shards`]:
/// it reads the replica when asked, and once the replica leaves this node (moved away, or the
/// node shut down) it says [`Shard::is_stopped`] and answers from what it last held.
#[derive(Clone)]
pub struct Shard {
    replica: crate::cache::shard::Shard,
    total_shards: u32,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("shard_id", &self.replica.id)
            .field("leader", &self.leader())
            .field("entries", &self.entry_count())
            .finish()
    }
}

impl Shard {
    pub(crate) fn new(replica: crate::cache::shard::Shard, total_shards: u32) -> Self {
        Self { replica, total_shards }
    }

    /// The shard.
    pub fn shard_id(&self) -> ShardId {
        self.replica.id
    }

    /// The hash slots it owns.
    pub fn range(&self) -> ShardRange {
        ShardRange { shard_id: self.replica.id, total_shards: self.total_shards }
    }

    /// True when `key` belongs to this shard (its hash slot is in [`Self::range`]).
    pub fn owns(&self, key: &[u8]) -> bool {
        self.range().contains(crate::multiraft::key_slot(key))
    }

    /// The leader of its Raft group as this replica knows it.
    pub fn leader(&self) -> Option<NodeId> {
        self.replica.group.shared.leader_id()
    }

    /// True while this node leads the shard's group.
    pub fn is_leader(&self) -> bool {
        self.replica.group.shared.is_leader()
    }

    /// The voters of its Raft group.
    pub fn members(&self) -> Vec<NodeId> {
        self.replica.group.shared.voters()
    }

    /// Entries held in this replica's local cache.
    pub fn entry_count(&self) -> u64 {
        self.replica.storage.entry_count()
    }

    /// The value of `key` in this replica's local cache: what [`crate::DistributedCache::get`]
    /// reads (may lag the leader on a follower). None for a key of another shard.
    pub fn get(&self, key: &[u8]) -> Option<bytes::Bytes> {
        if !self.owns(key) {
            return None;
        }
        self.replica.storage.get(key)
    }

    /// True when the replica is no longer served on this node.
    pub fn is_stopped(&self) -> bool {
        self.replica.stop.is_cancelled()
    }
}
