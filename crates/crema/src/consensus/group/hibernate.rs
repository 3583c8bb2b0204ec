//! Hibernation: a group with nothing to do stops ticking, so a node hosting hundreds of shard
//! replicas costs next to nothing while idle (TiKV's hibernate regions, simplified).
//!
//! A leader hibernates after an election timeout of ticks in which it had nothing to do: no
//! write or read waiting, nothing unapplied or unpersisted, no membership change or leader
//! transfer under way, and every member matched its whole log. It tells every member with an
//! `Envelope::Hibernate` carrying its term and commit index, and stops ticking: no more
//! heartbeats. A follower that receives the notice from its leader, in its term, with the same
//! log (committed, applied and last index all equal the leader's commit), stops ticking too,
//! so it does not campaign; one that does not match keeps ticking, and its campaign (a
//! message) wakes everyone, which is always safe, only slower.
//!
//! Anything wakes a group: a Raft message (except, on a leader, a late heartbeat answer), a
//! peer's handshake, a request of a client. Raft's safety never rests on the clock, so a group
//! that does not tick cannot break it; what the clock gives is liveness, and that is kept by
//! the node, not the group: every node pings every peer (`Envelope::Ping`, from the
//! transport) a few times per election timeout, and a node-level watcher (`cache`) wakes every
//! hibernating group with a member it has not heard from within an election timeout. A
//! follower woken because its leader's node went silent counts that silence as the election
//! time it did not tick, so a shard whose leader died elects a new one about as fast as if it
//! had never slept.
//!
//! A hibernating replica holds its leader's lease (its election clock stands still), so it
//! refuses the pre-votes of a replica that did not hibernate; the refused pre-vote still wakes
//! it and, through the leader, the group.

use std::sync::atomic::Ordering;

use raft::StateRole;
use tracing::debug;

use super::Group;
use crate::consensus::storage::LogStore;
use crate::transport::envelope::Envelope;
use crate::types::NodeId;

impl<S: LogStore> Group<S> {
    /// On each tick of an awake leader: counts the ticks it had nothing to do, and hibernates
    /// after an election timeout of them.
    pub(super) fn consider_hibernating(&mut self) {
        if !self.settings.raft.hibernate || self.hibernating {
            return;
        }
        if self.raw.raft.state != StateRole::Leader || !self.settled_as_leader() {
            self.quiet_ticks = 0;
            return;
        }
        self.quiet_ticks += 1;
        // Not on a tick that sends heartbeats: their answers would wake this leader, and a
        // heartbeat arriving after the notice would wake the follower.
        if self.quiet_ticks < self.settings.raft.election_tick || self.raw.has_ready() {
            return;
        }
        self.publish_progress();
        let raft = &self.raw.raft;
        let (term, commit) = (raft.term, raft.raft_log.committed);
        let frame = Envelope::Hibernate { shard: self.shared.shard, term, commit }.to_frame();
        let me = self.settings.node_id;
        for id in raft.prs().iter().map(|(id, _)| *id).filter(|id| *id != me) {
            // A notice lost leaves that member ticking: it campaigns and wakes the group.
            let _ = self.transport.send_urgent(id, frame.clone());
        }
        debug!(shard = self.shared.shard, term, commit, "idle: the leader hibernates");
        self.enter_hibernation();
    }

    /// Whether this leader has nothing to do (see the module header).
    fn settled_as_leader(&self) -> bool {
        let raft = &self.raw.raft;
        let log = &raft.raft_log;
        let last = log.last_index();
        let me = self.settings.node_id;
        self.recovery.is_none()
            && !self.shared.persist_failing()
            && self.proposals.len() == 0
            && self.gathered.is_empty()
            && self.reads.gathered_len() == 0
            && self.reads.in_flight() == 0
            && self.persist_jobs.is_empty()
            && self.unpersisted.is_empty()
            && self.checkpoint_job.is_none()
            && log.committed == last
            && log.applied == last
            && raft.lead_transferee.is_none()
            && !raft.has_pending_conf()
            && raft.pending_read_count() == 0
            && raft
                .prs()
                .iter()
                .all(|(id, pr)| *id == me || (pr.matched == last && pr.committed_index == last))
    }

    /// A leader's notice that it hibernates: this replica follows when it has the same log.
    pub(super) fn on_hibernate_notice(&mut self, from: NodeId, term: u64, commit: u64) {
        if !self.settings.raft.hibernate || self.hibernating {
            return;
        }
        let raft = &self.raw.raft;
        let log = &raft.raft_log;
        let same_log = log.committed == commit && log.last_index() == commit && log.applied == commit;
        let settled = raft.state == StateRole::Follower
            && raft.leader_id == from
            && raft.term == term
            && same_log
            && self.recovery.is_none()
            && self.persist_jobs.is_empty()
            && self.unpersisted.is_empty()
            && self.reads.gathered_len() == 0
            && self.reads.in_flight() == 0
            && !self.raw.has_ready();
        if settled {
            debug!(shard = self.shared.shard, leader = from, term, "idle: the follower hibernates");
            self.enter_hibernation();
        } else {
            debug!(
                shard = self.shared.shard,
                leader = from,
                term,
                commit,
                our_commit = log.committed,
                "hibernation notice not followed: this replica is not settled"
            );
        }
    }

    fn enter_hibernation(&mut self) {
        self.hibernating = true;
        self.quiet_ticks = 0;
        self.shared.hibernating.store(true, Ordering::Release);
    }

    /// Leaves hibernation; nothing when awake. `leader_silent`: the leader's node is no longer
    /// heard from, so a follower counts the silence as all but one tick of its election
    /// timeout (it campaigns within one more randomized timeout, as if it had ticked).
    pub(super) fn wake(&mut self, leader_silent: bool) {
        if !self.hibernating {
            return;
        }
        self.hibernating = false;
        self.shared.hibernating.store(false, Ordering::Release);
        if leader_silent && self.raw.raft.state == StateRole::Follower {
            let almost = self.settings.raft.election_tick.saturating_sub(1);
            let raft = &mut self.raw.raft;
            raft.election_elapsed = raft.election_elapsed.max(almost);
        }
        debug!(shard = self.shared.shard, leader_silent, "the group wakes");
    }
}
