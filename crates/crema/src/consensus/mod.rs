//! Consensus: the replicated command, the state machine it is applied to, Raft log storage and
//! the group loop that owns each Raft group's `RawNode`.
//!
//! Pure parts (`command`, `state_machine`, `storage`, `pending`) are tested without a network;
//! only `group` runs a task and talks to the transport.

pub(crate) mod admit;
pub mod apply;
pub mod command;
pub(crate) mod group;
#[cfg(feature = "rocksdb")]
mod log_mark;
mod logger;
pub mod long_double;
mod nesting;
#[cfg(feature = "rocksdb")]
mod node_db;
pub(crate) mod pending;
mod persist;
pub mod recovery;
#[cfg(feature = "rocksdb")]
pub mod rocks_storage;
#[cfg(feature = "rocksdb")]
mod rocks_writer;
pub mod sessions;
pub mod state_machine;
pub mod storage;
#[cfg(test)]
pub(crate) mod storage_suite;
pub mod transaction;
pub mod versions;

use serde::{Deserialize, Serialize};

pub use admit::WarnThrottle;
pub use apply::{ApplyError, ApplyOutput};
pub use recovery::RecoveryState;

use crate::types::{NodeId, ShardId};

/// Where a write was applied: its log index and what applying it produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The Raft log index of the entry.
    pub index: u64,
    /// What applying it produced.
    pub output: ApplyOutput,
}

/// A node's role in a Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower = 0,
    /// Campaigning in a pre-vote round.
    PreCandidate = 1,
    /// Campaigning.
    Candidate = 2,
    /// The leader.
    Leader = 3,
}

impl From<raft::StateRole> for Role {
    fn from(role: raft::StateRole) -> Self {
        match role {
            raft::StateRole::Follower => Role::Follower,
            raft::StateRole::PreCandidate => Role::PreCandidate,
            raft::StateRole::Candidate => Role::Candidate,
            raft::StateRole::Leader => Role::Leader,
        }
    }
}

/// A snapshot of one Raft group's state on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    /// The group.
    pub shard: ShardId,
    /// This node.
    pub node_id: NodeId,
    /// This node's role.
    pub role: Role,
    /// The current term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader_id: Option<NodeId>,
    /// The highest committed index known here.
    pub commit_index: u64,
    /// The highest index applied here.
    pub applied_index: u64,
    /// The first index still in the log (older ones are compacted).
    pub first_index: u64,
    /// The last index in the log.
    pub last_index: u64,
    /// What the entries this node keeps in memory weigh, in bytes (see
    /// `RaftConfig::max_log_bytes`).
    pub log_bytes: u64,
    /// Voting members.
    pub voters: Vec<NodeId>,
    /// Non-voting members.
    pub learners: Vec<NodeId>,
    /// Where this node stands in its recovery after a restart without its Raft state (memory
    /// storage): it neither votes nor campaigns until `Done` (see `consensus::recovery`).
    pub recovery: RecoveryState,
    /// Proposals of this node awaiting commit.
    pub pending_proposals: usize,
    /// On the leader: each other member and the highest log index known to be on it (empty on
    /// a follower).
    pub replica_progress: Vec<(NodeId, u64)>,
    /// On the leader: the index of the group's latest configuration change, or of the last
    /// entry when this leader took over if that is later (0 on a follower). A member whose
    /// progress reaches it holds the configuration the leader counts it in.
    pub conf_index: u64,
    /// True while the group hibernates on this node: idle, it ticks no clock (see
    /// [`crate::RaftConfig::hibernate`]).
    pub hibernating: bool,
}
