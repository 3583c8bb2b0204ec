//! The public error type of crema's API, [`enum@Error`], and its result alias.
//!
//! Each variant's doc says whether the cluster's state may have changed and whether retrying can
//! help; callers use [`Error::is_retryable`] and [`Error::leader_hint`] instead of matching on
//! message text. Failure domains keep their own enums (`ConfigError`, `CommandError`,
//! `TransportError`) and are carried here as sources.

use std::time::Duration;

use thiserror::Error;

use crate::config::ConfigError;
use crate::consensus::command::CommandError;
use crate::transport::TransportError;
use crate::types::NodeId;

/// Result of crema's public operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a crema operation can fail with.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is invalid; nothing was started.
    #[error(transparent)]
    Config(#[from] ConfigError),

    /// The command was refused before it was proposed (empty key, size limit, TTL range); nothing
    /// changed and the same command will fail again.
    #[error("invalid command: {0}")]
    InvalidCommand(#[from] CommandError),

    /// This node is not the leader and could not forward (no known leader, or forwarding is off).
    /// Nothing changed; retry on `leader_hint` (when known) or after an election.
    #[error("not the leader (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The leader this node knows of, if any.
        leader_hint: Option<NodeId>,
    },

    /// The proposal was dropped because leadership moved before it committed. Nothing changed;
    /// a retry is safe.
    #[error("proposal dropped: leadership changed before it committed")]
    ProposalDropped,

    /// No answer within the deadline. The write may or may not have been applied: the outcome is
    /// unknown, so a retry of a non-idempotent write may apply it twice.
    #[error("timed out after {0:?}; the outcome is unknown")]
    Timeout(Duration),

    /// Talking to a peer failed (a forwarded request lost its connection). The outcome is unknown.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),

    /// The node is shutting down or has stopped; nothing new is accepted.
    #[error("the node is shut down")]
    Shutdown,

    /// A membership change that cannot be right was refused (node id 0, an id or address
    /// already in use, removing a node that is not a member, an address where no crema node of
    /// that id answers the peer handshake). Nothing changed; the message says why.
    #[error("membership change refused: {0}")]
    Membership(String),

    /// A membership change asked while another is not yet applied (or before a new leader
    /// applied its log): Raft makes one at a time. Nothing changed; the same change may be
    /// made shortly (the membership API asks again by itself until its timeout).
    #[error("membership change not made yet: {0}")]
    ChangePending(String),

    /// A Raft-level refusal. Nothing changed.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),

    /// An I/O failure at start-up (binding the peer port).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),

    /// Durable storage cannot be opened or recovered at start-up (the message says what and
    /// where). Nothing was changed on disk.
    #[error("storage: {0}")]
    Storage(String),
}

impl Error {
    /// The leader this node believes in, for `NotLeader`.
    pub fn leader_hint(&self) -> Option<NodeId> {
        match self {
            Error::NotLeader { leader_hint } => *leader_hint,
            _ => None,
        }
    }

    /// Whether the same request may succeed later (after an election, a reconnect, a timeout).
    /// Note: for `Timeout` and `Transport` the first attempt may have been applied.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::ProposalDropped
                | Error::Timeout(_)
                | Error::Transport(_)
                | Error::ChangePending(_)
                | Error::Raft(raft::Error::ProposalDropped)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_classify_variants() {
        let e = Error::NotLeader { leader_hint: Some(3) };
        assert_eq!(e.leader_hint(), Some(3));
        assert!(e.is_retryable());
        assert!(Error::ProposalDropped.is_retryable());
        assert!(!Error::Shutdown.is_retryable());
        assert!(!Error::InvalidCommand(CommandError::EmptyKey).is_retryable());
        assert_eq!(Error::ProposalDropped.leader_hint(), None);
    }
}
