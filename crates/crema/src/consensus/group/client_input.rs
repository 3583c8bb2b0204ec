//! What the group loop does with client input (see `group`): writes gathered for the next
//! proposal, membership changes and leader transfers, reads for the next read-index round, and
//! the status this group reports.

use std::time::Instant;

use raft::StateRole;
use tracing::info;

use super::{ClientMsg, Group};
use crate::consensus::storage::LogStore;
use crate::consensus::{GroupStatus, Role};
use crate::error::Error;
use crate::types::NodeId;

impl<S: LogStore> Group<S> {
    pub(super) fn on_client(&mut self, msg: ClientMsg) {
        if !matches!(msg, ClientMsg::Status { .. }) {
            self.wake(false);
        }
        match msg {
            ClientMsg::Propose { command, reply } => self.gathered.push((command, reply)),
            ClientMsg::ConfChange { change, reply } => {
                // In the order they arrived: the writes taken before it go first.
                self.propose_gathered();
                self.propose_conf_change(change, reply);
            }
            ClientMsg::ReadIndex { reply } => self.reads.push(Instant::now(), reply),
            ClientMsg::Status { reply } => {
                let _ = reply.send(self.status());
            }
            ClientMsg::ForceNewCluster { reply } => {
                self.propose_gathered();
                let _ = reply.send(self.force_new_cluster());
            }
            ClientMsg::LearnMembers { voters, learners } => self.learn_members(voters, learners),
            ClientMsg::TransferLeader { to, reply } => {
                let answer = if self.raw.raft.state != StateRole::Leader {
                    Err(self.not_leader())
                } else if to == self.settings.node_id || !self.raw.raft.prs().conf().voters().contains(to) {
                    Err(Error::Membership(format!(
                        "node {to} is not another voter of shard {}",
                        self.shared.shard
                    )))
                } else if self.raw.raft.has_pending_conf() {
                    // The change may remove or demote `to`: a leadership handed over now
                    // could land on a node that is no voter once it applies the change.
                    Err(Error::Membership(format!(
                        "a membership change of shard {} is under way: transfer its leadership once it is applied",
                        self.shared.shard
                    )))
                } else {
                    self.raw.transfer_leader(to);
                    Ok(())
                };
                let _ = reply.send(answer);
            }
            #[cfg(feature = "fault-injection")]
            ClientMsg::Panic => {
                panic!("fault injection: the group loop of shard {} panics", self.shared.shard)
            }
        }
    }

    /// A leader its group no longer counts as a voter (demoted or removed by a change it
    /// applied) hands the leadership to the voter with the longest log. raft-rs leaves such a
    /// leader in place: it goes on replicating without a vote, and a Read-Index round it
    /// counted itself in would not be a voters' quorum.
    pub(super) fn hand_over_if_no_voter(&mut self) {
        let raft = &self.raw.raft;
        let me = self.settings.node_id;
        if raft.state != StateRole::Leader
            || raft.prs().conf().voters().contains(me)
            || raft.lead_transferee.is_some()
            || raft.has_pending_conf()
        {
            return;
        }
        let voters = raft.prs().conf().voters();
        let best = raft
            .prs()
            .iter()
            .filter(|(id, _)| voters.contains(**id))
            .max_by_key(|(id, pr)| (pr.matched, **id));
        if let Some((&to, _)) = best {
            info!(
                shard = self.shared.shard,
                to, "this leader is no voter of its group any more: it hands over"
            );
            self.raw.transfer_leader(to);
        }
    }

    pub(super) fn not_leader(&self) -> Error {
        Error::NotLeader { leader_hint: Some(self.raw.raft.leader_id).filter(|id| *id != 0) }
    }

    pub(super) fn status(&self) -> GroupStatus {
        let raft = &self.raw.raft;
        let conf = raft.prs().conf();
        let mut voters: Vec<NodeId> = conf.voters().ids().iter().collect();
        voters.sort_unstable();
        let mut learners: Vec<NodeId> = conf.learners().iter().copied().collect();
        learners.sort_unstable();
        let replica_progress = if raft.state == StateRole::Leader {
            let me = self.settings.node_id;
            raft.prs().iter().filter(|(id, _)| **id != me).map(|(id, pr)| (*id, pr.matched)).collect()
        } else {
            Vec::new()
        };
        GroupStatus {
            shard: self.shared.shard,
            node_id: self.settings.node_id,
            role: Role::from(raft.state),
            term: raft.term,
            leader_id: Some(raft.leader_id).filter(|id| *id != 0),
            commit_index: raft.raft_log.committed,
            applied_index: self.sm.applied_index(),
            first_index: raft.raft_log.first_index(),
            last_index: raft.raft_log.last_index(),
            log_bytes: raft.raft_log.store.retained_bytes(),
            voters,
            learners,
            recovery: self.recovery_state(),
            pending_proposals: self.proposals.len(),
            replica_progress,
            conf_index: if raft.state == StateRole::Leader { raft.pending_conf_index } else { 0 },
            hibernating: self.hibernating,
        }
    }
}
