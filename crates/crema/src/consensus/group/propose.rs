//! Proposing: the writes gathered over a pass go out in batches of bounded bytes (at most
//! `UNCOMMITTED_BATCHES` uncommitted at once), membership changes are tracked like writes, and a
//! leader with nothing more on its way tells its followers the commit (`Envelope::Commit`).

use std::sync::atomic::Ordering;

use raft::eraftpb::{ConfChange, Entry, EntryType, Message, MessageType};
use raft::StateRole;

use super::{Group, BATCH_MESSAGES, GATHER_LIMIT, UNCOMMITTED_BATCHES};
use crate::consensus::pending::ProposalReply;
use crate::consensus::recovery::Recovery;
use crate::consensus::storage::LogStore;
use crate::error::Error;
use crate::transport::envelope::Envelope;
use crate::types::NodeId;

use crate::transport::ROOM_BYTES;

impl<S: LogStore> Group<S> {
    /// Whether the writes gathered so far go out now: always unless this node leads with
    /// `UNCOMMITTED_BATCHES` batches of its term uncommitted (then they wait for the oldest to
    /// commit, which wakes the loop with an append response), and up to `GATHER_LIMIT` writes.
    /// raft-rs runs with `skip_bcast_commit` (as TiKV does): a commit does not send every
    /// follower an empty append to tell it; the next batch's append carries the commit index.
    /// Under load that was half the messages of every batch, and with many shards the messages
    /// are what a write costs. Once a leader has nothing more on its way (no batch uncommitted,
    /// no writes waiting), it tells the followers the commit it has not told yet, here at the
    /// end of the pass, so idle followers and reads or forwarded writes waiting on them do not
    /// wait for a heartbeat: a follower that holds every entry gets an `Envelope::Commit`
    /// notice, which it answers with nothing (an empty append drew an answer: with many shards
    /// a quarter of all messages were these); one that misses entries gets an append. The
    /// leader learns that its followers know the commit from their next heartbeat answers,
    /// which is what hibernation waits for.
    pub(super) fn tell_commit_when_idle(&mut self) {
        if self.halted || self.removed {
            return;
        }
        let raft = &self.raw.raft;
        let (term, committed) = (raft.term, raft.raft_log.committed);
        if raft.state != StateRole::Leader || !self.gathered.is_empty() {
            return;
        }
        if self.in_flight.iter().any(|&(t, last)| t == term && last > committed) {
            return;
        }
        if self.commit_told.0 != term {
            self.commit_told = (term, std::collections::HashMap::new());
        }
        let (me, last) = (self.settings.node_id, raft.raft_log.last_index());
        let mut notices = Vec::new();
        let mut lagging = Vec::new();
        for (id, pr) in raft.prs().iter().filter(|(id, _)| **id != me) {
            // As a heartbeat's: no further than what the follower is known to hold.
            let commit = pr.matched.min(committed);
            let told = self.commit_told.1.get(id).copied().unwrap_or(0).max(pr.committed_index);
            if commit > told {
                notices.push((*id, commit));
            } else if pr.matched < committed && pr.next_idx <= last {
                // It misses committed entries not sent yet (an append answered meanwhile
                // tells the rest at a later pass): an append carries them and the commit.
                lagging.push(*id);
            }
        }
        if !notices.is_empty() {
            // Published before anyone hears of it (see `publish_progress`).
            self.publish_progress();
        }
        for (id, commit) in &notices {
            let notice = Envelope::Commit { shard: self.shared.shard, term, commit: *commit };
            let _ = self.transport.send_urgent(*id, notice.to_frame());
            self.commit_told.1.insert(*id, *commit);
        }
        self.shared.messages_sent.fetch_add(notices.len() as u64, Ordering::Relaxed);
        for id in lagging {
            self.raw.raft.send_append(id);
        }
        if self.raw.has_ready() {
            self.on_ready();
        }
    }

    /// A leader's commit notice (see `Envelope::Commit`): taken as a heartbeat's commit index
    /// is, from the leader of this replica's term only, and not at all when it lies past this
    /// replica's log.
    pub(super) fn on_commit_notice(&mut self, from: NodeId, term: u64, commit: u64) {
        if self.recovery.as_ref().is_some_and(Recovery::waiting) {
            return;
        }
        let raft = &mut self.raw.raft;
        if raft.state != StateRole::Follower || raft.term != term || raft.leader_id != from {
            return;
        }
        // Past the log, the leader's view of this replica is stale (it restarted, and the
        // leader has not heard yet): nothing of it is taken, as a heartbeat's would be lowered.
        if commit > raft.raft_log.last_index() {
            return;
        }
        if commit > raft.raft_log.committed {
            raft.raft_log.commit_to(commit);
            self.wake(false);
        }
    }

    pub(super) fn may_propose(&mut self) -> bool {
        let (term, committed) = (self.raw.raft.term, self.raw.raft.raft_log.committed);
        self.in_flight.retain(|&(t, last)| t == term && last > committed);
        self.raw.raft.state != StateRole::Leader
            || ((self.in_flight.len() < UNCOMMITTED_BATCHES || self.gathered.len() >= GATHER_LIMIT)
                && self.links_have_room())
    }

    /// Whether the peer links to a quorum of voters (this node counts) have fewer than
    /// `ROOM_BYTES` queued: the node's links are shared by all its groups and by
    /// forwarded requests, and a full queue drops what comes next (an append lost makes the
    /// follower refuse the ones after it, which were sent for nothing, and be probed again).
    /// Found from outside: 20 clients writing 8 MB values through one node of 8 shards had
    /// 451 raft messages dropped in 20 s. Writes wait in `gathered` meanwhile; the loop
    /// looks again at the next tick or message. Not during a joint change (it is short).
    fn links_have_room(&self) -> bool {
        if self.shared.joint.load(Ordering::Acquire) {
            return true;
        }
        let me = self.settings.node_id;
        let voters = self.raw.raft.prs().conf().voters().ids();
        let roomy = voters
            .iter()
            .filter(|id| *id == me || self.transport.queued_bytes(*id).is_none_or(|b| b < ROOM_BYTES))
            .count();
        roomy >= raft::majority(voters.len())
    }

    /// Proposes the gathered writes while `may_propose` lets it, a batch at a time (see
    /// `propose_batch`): what is left waits for the oldest batch to commit.
    pub(super) fn propose_admitted(&mut self) {
        while !self.gathered.is_empty() && self.may_propose() {
            self.propose_batch();
        }
    }

    /// Proposes every write gathered so far, in batches, whatever is in flight: what comes
    /// next (a membership change, a forced new cluster) must come after them in the log.
    pub(super) fn propose_gathered(&mut self) {
        while !self.gathered.is_empty() {
            self.propose_batch();
        }
    }

    /// Proposes the oldest gathered writes as one `MsgPropose` carrying all their entries:
    /// raft-rs then appends them together and sends each follower one append for the lot
    /// (split at `max_size_per_msg`), where proposing them one by one sent one append (and
    /// drew one response) per write. A batch holds writes of at most `batch_bytes` (one write
    /// at least): found from outside, 20 clients writing 8 MB values made batches of 160 MB,
    /// two in flight, which overflowed the peer queues (appends dropped, followers probed
    /// again) and left followers behind the compacted log (snapshots of the whole cache, one
    /// after the other, and elections). Bounded, a leader has at most `UNCOMMITTED_BATCHES`
    /// of them (or as many writes) on their way, and the rest wait for a commit.
    ///
    /// A write whose caller stopped waiting while it was held here is left out of the log
    /// (`ProposalReply::given_up`): its caller was answered `TIMEOUT`, which allows either
    /// outcome. Found from outside: under 20 clients writing 8 MB values, writes whose
    /// callers had timed out were proposed and applied one by one after the load ended, and
    /// fresh writes to the shard waited seconds behind them.
    fn propose_batch(&mut self) {
        let now = std::time::Instant::now();
        let limit = self.batch_bytes();
        let (mut bytes, mut live, mut take) = (0u64, 0usize, 0usize);
        for (command, reply) in &self.gathered {
            take += 1;
            if reply.given_up(now) {
                continue;
            }
            let len = command.len() as u64;
            if live > 0 && bytes + len > limit {
                take -= 1;
                break;
            }
            bytes += len;
            live += 1;
        }
        let mut gathered = Vec::with_capacity(live);
        let mut given_up = 0;
        for (command, reply) in self.gathered.drain(..take) {
            if reply.given_up(now) {
                reply.send(Err(Error::ProposalDropped));
                given_up += 1;
            } else {
                gathered.push((command, reply));
            }
        }
        self.shared.writes_given_up.fetch_add(given_up, Ordering::Relaxed);
        if gathered.is_empty() {
            return;
        }
        if self.raw.raft.state != StateRole::Leader {
            let err = self.not_leader();
            for (_, reply) in gathered {
                reply.send(Err(Error::NotLeader { leader_hint: err.leader_hint() }));
            }
            return;
        }
        let count = gathered.len() as u64;
        let mut replies = Vec::with_capacity(gathered.len());
        let mut entries = Vec::with_capacity(gathered.len());
        for (command, reply) in gathered {
            entries.push(Entry { data: command.to_vec().into(), ..Default::default() });
            replies.push(reply);
        }
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgPropose);
        msg.from = self.raw.raft.id;
        msg.set_entries(entries.into());
        let before = self.raw.raft.raft_log.last_index();
        let result = self.raw.raft.step(msg);
        let (last, term) = (self.raw.raft.raft_log.last_index(), self.raw.raft.term);
        match result {
            // Appended in order at before + 1 ..= before + count.
            Ok(()) if last == before + count => {
                self.shared.proposal_batches.fetch_add(1, Ordering::Relaxed);
                self.shared.proposed_entries.fetch_add(count, Ordering::Relaxed);
                self.in_flight.push_back((term, last));
                for (index, reply) in (before + 1..).zip(replies) {
                    self.proposals.push(index, term, reply);
                }
            }
            // Nothing was appended (a leadership transfer, or no progress for this node).
            result => {
                debug_assert_eq!(last, before, "a proposal was partly appended");
                let mut first = result.err().filter(|e| *e != raft::Error::ProposalDropped).map(Error::Raft);
                for reply in replies {
                    reply.send(Err(first.take().unwrap_or(Error::ProposalDropped)));
                }
            }
        }
    }

    /// The most bytes of writes one batch holds: `BATCH_MESSAGES` appends' worth.
    fn batch_bytes(&self) -> u64 {
        self.settings.raft.max_size_per_msg.saturating_mul(BATCH_MESSAGES)
    }

    /// Proposes a membership change, answered once it is applied. raft-rs takes a change it
    /// will not make (another is proposed and not yet applied, which a new leader assumes of
    /// its whole log) as an empty entry and answers `Ok`: that entry's apply would answer the
    /// change as made. Such a change is refused here instead, saying why, and nothing is
    /// proposed. Found from outside: a shard's new leader "removed" a replica that way 15 ms
    /// after its election; the replica was told it was retired and stopped while the group
    /// still counted it, and the shard, with one other voter paused, took no write for 5.7 s.
    pub(super) fn propose_conf_change(&mut self, change: ConfChange, reply: ProposalReply) {
        if self.raw.raft.state != StateRole::Leader {
            reply.send(Err(self.not_leader()));
            return;
        }
        let raft = &self.raw.raft;
        if raft.has_pending_conf() {
            reply.send(Err(Error::ChangePending(format!(
                "a membership change of shard {} is under way, or its leader has not applied its log yet \
                 (up to entry {}, applied {}): try again once it is applied",
                self.shared.shard, raft.pending_conf_index, raft.raft_log.applied
            ))));
            return;
        }
        let before = raft.raft_log.last_index();
        let result = self.raw.propose_conf_change(Vec::new(), change);
        let log = &self.raw.raft.raft_log;
        let appended = log.last_index() > before;
        if result.is_ok()
            && appended
            && log.unstable_entries().last().is_none_or(|e| e.get_entry_type() != EntryType::EntryConfChange)
        {
            // Refused by raft-rs for a reason not checked above: the empty entry it appended
            // in its place changes nothing, and the change is answered as not made.
            reply.send(Err(Error::Membership(format!(
                "shard {}: Raft refused the membership change (its configuration is joint or a change is pending)",
                self.shared.shard
            ))));
            return;
        }
        self.track(before, result, reply);
    }

    pub(super) fn track(&mut self, before: u64, result: raft::Result<()>, reply: ProposalReply) {
        let index = self.raw.raft.raft_log.last_index();
        match result {
            Ok(()) if index > before => self.proposals.push(index, self.raw.raft.term, reply),
            Ok(()) | Err(raft::Error::ProposalDropped) => {
                reply.send(Err(Error::ProposalDropped));
            }
            Err(e) => {
                reply.send(Err(Error::Raft(e)));
            }
        }
    }
}
