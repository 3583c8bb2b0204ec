//! Stepping a peer's Raft message (see `group`): the checks it passes first (`admit`: against
//! the log, from a member or a leader the shard map or this replica's catching up vouches
//! for), the votes a replica without state or still recovering does not grant, and a
//! follower's read-index request, which a leader holds for its next read round (and a
//! follower drops: it is no one's to pass on).

use std::time::Instant;

use raft::eraftpb::{Message, MessageType};
use raft::StateRole;
use tracing::debug;

use super::Group;
use crate::consensus::admit::{self, Admitted, Reject};
use crate::consensus::pending::PeerRead;
use crate::consensus::recovery::Recovery;
use crate::consensus::storage::LogStore;

impl<S: LogStore> Group<S> {
    pub(super) fn step(&mut self, mut msg: Message) {
        if self.unlisted(msg.from) {
            return self.note_rejected(&msg, Reject::NotAMember);
        }
        if self.settings.fresh
            && self.removal_floor.is_none()
            && msg.get_msg_type() == MessageType::MsgAppend
            && self.raw.raft.raft_log.match_term(msg.index, msg.log_term)
        {
            self.removal_floor = Some(msg.commit);
            self.catch_up_leader = Some((msg.from, msg.term));
        }
        if self.recovery.as_ref().is_some_and(Recovery::waiting) {
            // Phase 1 of a recovery: nothing this node would answer can be trusted yet.
            return;
        }
        let vouched = self.shared.map_names(msg.from) || self.catching_up_from(&msg);
        match admit::check_against_log(&self.raw.raft, &mut msg, vouched) {
            Ok(Admitted::AsIs) => {}
            // Routine after a restart (the leader has not yet heard that this incarnation
            // holds less): found from outside, a WARN on every ordinary restart read like a
            // lost log. A log that lost synced writes is refused at open (`log_mark`).
            Ok(Admitted::CommitLowered) => {
                debug!(
                    shard = self.shared.shard,
                    from = msg.from,
                    "heartbeat commit past this node's log lowered"
                )
            }
            Err(reason) => {
                if reason == Reject::ConflictsWithCommitted && msg.term >= self.raw.raft.term {
                    self.note_diverged(&msg);
                }
                return self.note_rejected(&msg, reason);
            }
        }
        let vote = matches!(msg.get_msg_type(), MessageType::MsgRequestVote | MessageType::MsgRequestPreVote);
        if vote && self.settings.votes_only_with_state && self.raw.raft.raft_log.last_index() == 0 {
            debug!(
                shard = self.shared.shard,
                from = msg.from,
                "empty, and not known to be new: vote request ignored"
            );
            return;
        }
        if vote && self.recovery.as_ref().is_some_and(|r| !r.may_vote_for(msg.log_term, msg.index)) {
            debug!(
                shard = self.shared.shard,
                from = msg.from,
                "recovering: vote request for a log behind the floor ignored"
            );
            return;
        }
        if msg.get_msg_type() == MessageType::MsgReadIndex {
            if self.hold_peer_read(&mut msg) {
                return;
            }
            if self.raw.raft.state != StateRole::Leader {
                // Sent here by a peer that took this node for the leader: raft-rs would pass
                // it on to the leader under that peer's name, which the leader refuses from
                // this node's connection (found from outside: "sender is not the connection's
                // peer" warnings after a former leader came back). The peer asks again once
                // it hears the leader.
                debug!(
                    shard = self.shared.shard,
                    from = msg.from,
                    "a peer's read-index request reached a follower"
                );
                return;
            }
        }
        if msg.get_msg_type() == MessageType::MsgSnapshot && !self.room_for_snapshot(&msg) {
            return;
        }
        if let Err(e) = self.raw.step(msg) {
            debug!(shard = self.shared.shard, error = %e, "raft refused a message");
        }
    }

    /// Whether the snapshot `msg` carries fits this node's disk as a checkpoint, which it must
    /// be written as once installed (after a restart the node starts from it: the log before
    /// it is gone). One that does not is refused before raft-rs takes it, and the leader sends
    /// one again later. Found from outside: a follower on a small disk installed a 150 MB
    /// snapshot, could not write it, exited, and fetched it again at each restart.
    fn room_for_snapshot(&mut self, msg: &Message) -> bool {
        let Some(checkpoints) = self.checkpoints.as_ref() else { return true };
        let Err(why) = checkpoints.room_for(msg.get_snapshot().data.len() as u64) else { return true };
        self.shared.snapshots_refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(count) = self.reject_warnings.note(Instant::now()) {
            tracing::warn!(
                shard = self.shared.shard,
                from = msg.from,
                index = msg.get_snapshot().get_metadata().index,
                count,
                "a snapshot from the leader refused, to be sent again: {why}"
            );
        }
        false
    }

    /// Whether `from` is not among the members this replica was started with while its
    /// configuration is still empty: a member started again empty (`recovery_voters` given:
    /// see `cache::replica`), which learns its configuration from the log it is sent. With an
    /// empty configuration `admit` takes anyone's messages (a node waiting to be added cannot
    /// know who adds it), but this one knows its group's members. Found from outside: a
    /// stranger flooding the peer port of a memory node as it restarted was taken for its
    /// leader within 2 ms, its entries committed, its term pushed on the whole cluster.
    fn unlisted(&self, from: crate::types::NodeId) -> bool {
        !self.settings.recovery_voters.is_empty()
            && self.raw.raft.prs().conf().voters().ids().iter().next().is_none()
            && !self.shared.map_names(from)
    }

    /// Whether `msg` comes from the leader that is catching this fresh replica up, while the
    /// replica replays the group's history below the commit index that leader first sent it.
    /// The replayed log counts the members of its time, and the leader may have joined the
    /// group later; the shard map does not name it either when it is the node the shard moves
    /// away from. Found from outside: a shard moved from node A to node B, whose leadership
    /// went to B, and then back to A: A's fresh replica replayed the first members (A's old
    /// replica among them, B not), refused B's appends from then on as a non-member's, and
    /// the move never settled (the shard unwritable for clients of B for minutes). By the
    /// time the replica has applied that commit index, its log counts the leader (a leader is
    /// a member of its configuration there, or it has stopped leading).
    fn catching_up_from(&self, msg: &Message) -> bool {
        match (self.catch_up_leader, self.removal_floor) {
            (Some((leader, term)), Some(floor)) => {
                msg.from == leader && msg.term >= term && self.raw.raft.raft_log.applied < floor
            }
            _ => false,
        }
    }

    /// As leader, holds a follower's read-index request for this node's next read round
    /// instead of letting raft-rs start a heartbeat round for it alone (see `ReadBatches`).
    /// False for anything else (raft-rs handles it).
    fn hold_peer_read(&mut self, msg: &mut Message) -> bool {
        let from = msg.from;
        if self.raw.raft.state != StateRole::Leader
            || from == raft::INVALID_ID
            || from == self.settings.node_id
            || msg.entries.len() != 1
        {
            return false;
        }
        let ctx = std::mem::take(&mut msg.entries[0].data);
        self.reads.push_peer(Instant::now(), PeerRead { from, term: self.raw.raft.term, ctx });
        true
    }
}
