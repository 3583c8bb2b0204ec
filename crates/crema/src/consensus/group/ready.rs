//! The Ready half of the group loop (see `group`): sending messages, persisting, installing
//! snapshots, applying committed entries and membership changes, compacting the log and
//! starting checkpoints. Split from `group.rs` to keep each file to one concern.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protobuf::Message as PbMessage;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::StateRole;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use super::{blocking, Group, PersistJob, SNAPSHOT_CHUNK_BYTES};

/// How long a snapshot's sending task waits for room for one piece before it gives up (the
/// leader then sends a new snapshot later).
const SNAPSHOT_PIECE_PATIENCE: Duration = Duration::from_secs(30);
use crate::config::MAX_FRAME_BYTES;
use crate::consensus::command::StampedCommand;
use crate::consensus::pending::PeerRead;
use crate::consensus::persist::{write_until_done, WriteTicket};
use crate::consensus::state_machine::{ApplyOutput, SnapshotCapture};
use crate::consensus::storage::LogStore;
use crate::consensus::{Applied, Role};
use crate::error::{Error, Result};
use crate::transport::envelope::Envelope;
use crate::types::{NodeId, DEFAULT_SHARD};

impl<S: LogStore> Group<S> {
    pub(super) fn on_ready(&mut self) {
        self.publish_progress();
        if !self.persist_jobs.is_empty() && self.raw.snap().is_some_and(|s| !s.is_empty()) {
            // A snapshot replaces the log: what was written before it lands first.
            if !self.settle_persist() {
                return;
            }
        }
        let mut ready = self.raw.ready();
        if let Some(ss) = ready.ss() {
            self.publish_soft_state(ss.leader_id, ss.raft_state);
        }
        if !ready.messages().is_empty() {
            self.send(ready.take_messages());
        }
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot());
        }
        for rs in ready.take_read_states() {
            if let Some(ctx) = self.reads.ctx_of(&rs.request_ctx) {
                let peers = self.reads.complete(ctx, rs.index);
                self.answer_peer_reads(peers, rs.index);
            }
        }
        self.apply(ready.take_committed_entries());
        if self.removed {
            self.leave();
            return;
        }
        let store = self.raw.mut_store();
        if !ready.entries().is_empty() {
            store.append(ready.entries()).unwrap_or_else(|e| panic!("appending to the raft log failed: {e}"));
        }
        if let Some(hs) = ready.hs() {
            self.shared.term.store(hs.term, Ordering::Release);
            store
                .set_hard_state(hs.clone())
                .unwrap_or_else(|e| panic!("persisting the hard state failed: {e}"));
        }
        // Off the loop: the write goes to a blocking thread (or joins the next one) and this
        // Ready is advanced unpersisted; its persisted messages wait for the write.
        if self.persist_async && ready.snapshot().is_empty() && self.write_off_loop() {
            let number = ready.number();
            let held = ready.take_persisted_messages();
            self.raw.advance_append_async(ready);
            self.unpersisted.push_back((number, held));
            if self.persist_jobs.is_empty() || self.raw.store().pipelines_writes() {
                self.start_persist();
            }
            self.raw.advance_apply();
            self.shared.commit.store(self.raw.raft.raft_log.committed, Ordering::Release);
            self.compact_log();
            return;
        }
        // One write for everything this Ready (and the lazy commit and compaction changes of
        // the previous one) made, synced when it holds entries, a term or vote: concurrent
        // proposals share the fsync. Nothing of this Ready is acknowledged or sent as persisted
        // before it returns; while the disk refuses (full), the group waits here.
        if !self.persist() {
            return;
        }
        if !ready.persisted_messages().is_empty() {
            self.send(ready.take_persisted_messages());
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw
                .mut_store()
                .set_commit(commit)
                .unwrap_or_else(|e| panic!("persisting commit failed: {e}"));
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries());
        if self.removed {
            self.leave();
            return;
        }
        self.raw.advance_apply();
        self.shared.commit.store(self.raw.raft.raft_log.committed, Ordering::Release);
        self.compact_log();
    }

    /// This node was removed: keep what was applied, stop the loop, and let nobody take it
    /// for a leader any more. Proposals it still holds may yet commit through the new leader,
    /// so they are answered `Shutdown` (outcome unknown), not as dropped.
    fn leave(&mut self) {
        let _ = self.persist_all();
        self.halted = true;
        self.shared.removed.store(true, Ordering::Release);
        self.publish_soft_state(raft::INVALID_ID, StateRole::Follower);
    }

    /// Answers followers' read-index requests held for a round that read `index`, as raft-rs
    /// answers them itself (`MsgReadIndexResp` with the commit index, in this leader's term),
    /// while this node still leads in the term it took them in.
    fn answer_peer_reads(&mut self, peers: Vec<PeerRead>, index: u64) {
        let (term, leading) = (self.raw.raft.term, self.raw.raft.state == StateRole::Leader);
        let answers: Vec<Message> = peers
            .into_iter()
            .filter(|p| leading && p.term == term)
            .map(|p| {
                let mut msg = Message::default();
                msg.set_msg_type(MessageType::MsgReadIndexResp);
                msg.from = self.settings.node_id;
                msg.to = p.from;
                msg.term = term;
                msg.index = index;
                msg.set_entries(vec![Entry { data: p.ctx, ..Default::default() }].into());
                msg
            })
            .collect();
        if !answers.is_empty() {
            self.send(answers);
        }
    }

    fn publish_soft_state(&mut self, leader: NodeId, role: StateRole) {
        // The term first: a reader that sees the new role must not pair it with an old term.
        self.publish_progress();
        let previous = self.shared.leader.swap(leader, Ordering::AcqRel);
        self.shared.role.store(Role::from(role) as u8, Ordering::Release);
        if previous != leader {
            // The read-index requests in flight went to the old leader (or were held by this
            // node as leader): raft-rs drops them, so they are sent again to the new one.
            self.reads.requeue_rounds();
            self.shared.leader_changes.fetch_add(1, Ordering::Relaxed);
            if leader == 0 {
                *self.shared.leaderless_since.lock().expect("leaderless poisoned") = Instant::now();
            }
            self.shared.leader_changed.notify_waiters();
            info!(shard = self.shared.shard, leader, term = self.raw.raft.term, ?role, "leader changed");
        }
    }

    /// Publishes the term, the commit index and the read term (see `GroupShared::read_term`)
    /// as raft-rs holds them now. Called before anything leaves the loop (messages, answers to
    /// writes): a peer that vouches for a term must not have sent anything of a later one, and
    /// a leader's published commit index must cover every write anyone was told is committed
    /// (see `cache::read_rounds`).
    pub(super) fn publish_progress(&self) {
        let raft = &self.raw.raft;
        let committed = raft.raft_log.committed;
        self.shared.term.store(raft.term, Ordering::Release);
        self.shared.commit.store(committed, Ordering::Release);
        let ready = raft.state == StateRole::Leader
            && raft.raft_log.term(committed).is_ok_and(|t| t == raft.term)
            && !self.shared.joint.load(Ordering::Acquire);
        self.shared.read_term.store(if ready { raft.term } else { 0 }, Ordering::Release);
    }

    fn send(&mut self, msgs: Vec<Message>) {
        self.publish_progress();
        self.shared.messages_sent.fetch_add(msgs.len() as u64, Ordering::Relaxed);
        for msg in msgs {
            let to = msg.to;
            let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            if is_snapshot {
                self.send_snapshot(msg);
                continue;
            }
            let bytes = msg.write_to_bytes().expect("encoding a raft message cannot fail");
            let frame = Envelope::Raft { shard: self.shared.shard, message: bytes.into() }.to_frame();
            if frame.len() > MAX_FRAME_BYTES {
                // Appends are bounded by max_size_per_msg (at most half a frame) and snapshots go
                // in pieces: this would be a bug, and the peer would refuse the frame.
                warn!(
                    shard = self.shared.shard,
                    to,
                    bytes = frame.len(),
                    "message over the frame limit not sent"
                );
                continue;
            }
            if let Err(e) = self.transport.send(to, frame) {
                debug!(shard = self.shared.shard, to, error = %e, "raft message dropped");
                self.raw.report_unreachable(to);
            }
        }
    }

    /// Sends a snapshot message in pieces of at most `SNAPSHOT_CHUNK_BYTES` (a large cache's
    /// snapshot is far over one frame), from a task, through the peer's bulk lane: a piece
    /// goes out only when nothing else waits for that peer, so one large snapshot does not
    /// hold up other groups' heartbeats and appends, and the task waits for room instead of
    /// queueing the whole snapshot at once. Once every piece is handed over (or one could not
    /// be) the task tells this loop, which tells raft-rs (until then raft-rs sends the
    /// follower nothing else): the follower answers once it has installed it, and if a piece
    /// was lost on the way the leader notices that the follower is still behind and sends a
    /// new snapshot.
    fn send_snapshot(&mut self, mut msg: Message) {
        let to = msg.to;
        let data = std::mem::take(&mut msg.mut_snapshot().data);
        let header = Bytes::from(msg.write_to_bytes().expect("encoding a raft message cannot fail"));
        self.snapshot_transfers += 1;
        let transfer = self.snapshot_transfers;
        let (shard, index) = (self.shared.shard, msg.get_snapshot().get_metadata().index);
        let (transport, reports) = (self.transport.clone(), self.reports.clone());
        tokio::spawn(async move {
            let total_len = data.len() as u64;
            let mut offset = 0usize;
            let ok = loop {
                let end = (offset + SNAPSHOT_CHUNK_BYTES).min(data.len());
                let chunk = Envelope::SnapshotChunk {
                    shard,
                    transfer,
                    header: (offset == 0).then(|| header.clone()),
                    total_len,
                    offset: offset as u64,
                    data: data.slice(offset..end),
                };
                let sent =
                    tokio::time::timeout(SNAPSHOT_PIECE_PATIENCE, transport.send_bulk(to, chunk.to_frame()));
                match sent.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        debug!(shard, to, error = %e, "snapshot piece not sent");
                        break false;
                    }
                    Err(_) => {
                        warn!(
                            shard,
                            to, offset, "snapshot piece not taken within {SNAPSHOT_PIECE_PATIENCE:?}"
                        );
                        break false;
                    }
                }
                offset = end;
                if offset >= data.len() {
                    break true;
                }
            };
            if ok {
                info!(shard, to, bytes = total_len, index, "snapshot sent");
            }
            let _ = reports.send(super::PeerInput::SnapshotSent { to, ok }).await;
        });
    }

    /// Writes the store's pending changes in the loop, durably where Raft needs them durable
    /// (see `LogStore::flush`), retrying as `write_until_done` does. Answers false if the node
    /// is stopping meanwhile (the group then halts).
    fn persist(&mut self) -> bool {
        self.persist_with(false)
    }

    /// As `persist`, after the write in flight, and everything written so far is made durable,
    /// the commit index included (`LogStore::sync`): before a checkpoint, and when the node
    /// leaves the group.
    pub(super) fn persist_all(&mut self) -> bool {
        self.settle_persist() && self.persist_with(true)
    }

    fn persist_with(&mut self, all: bool) -> bool {
        if self.writes_lost {
            return false;
        }
        if !all && !self.raw.store().has_unflushed() {
            return true;
        }
        if !all && self.persist_async && !self.raw.store().flush_syncs() {
            // Changes Raft does not need durable (a commit index, a compaction) wait in the
            // store for the next synced write, or for `persist_all`: written alone they cost a
            // database write per Ready of every group.
            return true;
        }
        let delay = self.disk_delay();
        let store = self.raw.mut_store();
        let written = write_until_done(
            &self.shared,
            &self.cancel,
            || {
                // Only a write that waits for the disk moves off the runtime worker: handing the
                // worker over costs a thread wake-up, more than an unsynced write takes.
                match (all, store.flush_syncs()) {
                    (true, _) => blocking(|| store.sync()),
                    (false, true) => blocking(|| {
                        std::thread::sleep(delay);
                        store.flush()
                    }),
                    (false, false) => store.flush(),
                }
            },
            |pause| blocking(|| std::thread::sleep(pause)),
        );
        if !written {
            self.halted = true;
            self.writes_lost = true;
        }
        written
    }

    /// The extra time a synced log write takes here: a slowed disk in fault-injection tests
    /// (`Faults::slow_disk`), else none.
    fn disk_delay(&self) -> Duration {
        #[cfg(feature = "fault-injection")]
        if let Some(faults) = &self.settings.faults {
            return faults.disk_delay(self.settings.node_id);
        }
        Duration::ZERO
    }

    /// Whether this Ready's changes go to a write off the loop: always while one is in flight
    /// (they land after it), and when they need an fsync. Changes that need none wait in the
    /// store for the next write (see `persist_with`).
    fn write_off_loop(&mut self) -> bool {
        !self.persist_jobs.is_empty() || self.raw.store().flush_syncs()
    }

    /// Hands what the store holds for the Readies in `unpersisted` not yet handed over to one
    /// write off the loop. With nothing to write (their changes needed no disk), they are
    /// persisted now, or, behind writes still in flight, once those land.
    fn start_persist(&mut self) {
        let Some(&(number, _)) = self.unpersisted.back() else { return };
        if self.persist_jobs.back().is_some_and(|job| job.number >= number) {
            return;
        }
        let (tx, done) = oneshot::channel();
        match self.raw.mut_store().take_write() {
            Some(write) => {
                let ticket =
                    WriteTicket::new(self.shared.clone(), self.cancel.clone(), self.disk_delay(), tx);
                write.start(ticket);
            }
            None if self.persist_jobs.is_empty() => return self.persisted_through(number),
            None => {
                let _ = tx.send(true);
            }
        }
        self.persist_jobs.push_back(PersistJob { number, done });
    }

    /// The oldest write in flight landed (`written`) or was given up as the node stops.
    pub(super) fn on_persisted(&mut self, number: u64, written: bool) {
        self.persist_jobs.pop_front();
        if !written {
            self.lose_writes();
            return;
        }
        self.persisted_through(number);
        // Readies advanced while it ran: their changes go next.
        self.start_persist();
    }

    /// A write was given up (the node stops while the disk refuses it): the group halts, waits
    /// for the writes it handed over after it (given up too; until they are answered they hold
    /// the database) and writes nothing more.
    fn lose_writes(&mut self) {
        self.halted = true;
        self.writes_lost = true;
        for job in std::mem::take(&mut self.persist_jobs) {
            let _ = blocking(|| job.done.blocking_recv());
        }
    }

    /// Tells raft-rs that the Readies up to `number` are durable and sends what they held.
    fn persisted_through(&mut self, number: u64) {
        self.raw.on_persist_ready(number);
        let mut held = Vec::new();
        while self.unpersisted.front().is_some_and(|(n, _)| *n <= number) {
            let (_, msgs) = self.unpersisted.pop_front().expect("checked above");
            held.extend(msgs);
        }
        if !held.is_empty() {
            self.send(held);
        }
    }

    /// Waits for the write in flight, then writes in the loop what later Readies left in the
    /// store: afterwards everything raft-rs was handed is durable and announced. False if the
    /// node stops meanwhile (the group then halts).
    pub(super) fn settle_persist(&mut self) -> bool {
        if self.writes_lost {
            return false;
        }
        while let Some(job) = self.persist_jobs.pop_front() {
            let written = blocking(|| job.done.blocking_recv()).unwrap_or(false);
            if !written {
                self.lose_writes();
                return false;
            }
            self.persisted_through(job.number);
        }
        if let Some(&(last, _)) = self.unpersisted.back() {
            if !self.persist() {
                return false;
            }
            self.persisted_through(last);
        }
        true
    }

    pub(super) fn publish_voters(&self) {
        let joint = !self.raw.raft.prs().conf().to_conf_state().voters_outgoing.is_empty();
        self.shared.joint.store(joint, Ordering::Release);
        let voters = self.raw.raft.prs().conf().voters().ids();
        let alone = voters.len() == 1 && voters.contains(self.settings.node_id);
        self.shared.sole_voter.store(alone, Ordering::Release);
        let mut sorted: Vec<NodeId> = voters.iter().collect();
        sorted.sort_unstable();
        *self.shared.voters.write().expect("voters poisoned") = sorted;
        let mut learners: Vec<NodeId> = self.raw.raft.prs().conf().learners().iter().copied().collect();
        learners.sort_unstable();
        *self.shared.learners.write().expect("learners poisoned") = learners;
    }

    fn install_snapshot(&mut self, snapshot: &Snapshot) {
        let meta = snapshot.get_metadata();
        let started = Instant::now();
        let count = self.sm.restore(meta.index, &snapshot.data).unwrap_or_else(|e| {
            panic!("snapshot at index {} from the leader cannot be restored: {e}", meta.index)
        });
        self.raw
            .mut_store()
            .apply_snapshot(snapshot)
            .unwrap_or_else(|e| panic!("installing snapshot metadata failed: {e}"));
        let members: Vec<_> =
            self.sm.members().lock().expect("members poisoned").clone().into_iter().collect();
        for (id, addr) in members {
            self.transport.add_peer(id, Some(addr));
        }
        self.shared.applied.send_replace(meta.index);
        self.shared.snapshots_installed.fetch_add(1, Ordering::Relaxed);
        info!(shard = self.shared.shard, index = meta.index, entries = count, elapsed = ?started.elapsed(), "installed snapshot");
        if let Some(checkpoints) = self.checkpoints.as_mut() {
            // Durable at once: after a restart the node starts from this state, not from a log it
            // no longer has.
            if let Err(e) = checkpoints.take(meta.index, meta.term, meta.get_conf_state(), &snapshot.data) {
                panic!("shard {} cannot write the received snapshot as a checkpoint: {e}", self.shared.shard);
            }
        }
        self.publish_voters();
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        let last_term = entries.last().map_or(0, |e| e.term);
        // Published before any proposal is answered: a client that saw its write applied
        // never reads an older commit index from this node (its figures, its read rounds).
        self.publish_progress();
        if let Some(checkpoints) = self.checkpoints.as_mut() {
            checkpoints.note_applied(entries.iter().map(|e| e.data.len() as u64).sum());
        }
        for entry in entries {
            let (index, term) = (entry.index, entry.term);
            let result = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    self.sm.advance_to(index);
                    Ok(ApplyOutput::Done)
                }
                EntryType::EntryNormal => match StampedCommand::decode(&entry.data) {
                    Ok(command) => Ok(self.sm.apply(index, &command)),
                    Err(e) => {
                        self.reject_entry(index, &e.to_string());
                        Err(Error::InvalidCommand(e))
                    }
                },
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => self.apply_conf_change(&entry),
            };
            if let Some(reply) = self.proposals.settle(index, term) {
                reply.send(result.map(|output| Applied { index, output }));
            }
        }
        let applied = self.sm.applied_index();
        self.raw.mut_store().set_applied(applied);
        self.shared.applied_term.store(last_term, Ordering::Release);
        self.shared.applied.send_replace(applied);
    }

    /// A committed entry that does not decode (garbage, or a command version this build does
    /// not know) is applied as a no-op: every node decides alike, the group goes on, and the
    /// operator sees it in the log and in `crema_apply_rejected_total`.
    fn reject_entry(&mut self, index: u64, error: &str) {
        self.sm.advance_to(index);
        self.shared.apply_rejected.fetch_add(1, Ordering::Relaxed);
        error!(
            shard = self.shared.shard,
            index, error, "committed entry cannot be decoded: applied as a no-op"
        );
    }

    fn apply_conf_change(&mut self, entry: &Entry) -> Result<ApplyOutput> {
        self.sm.advance_to(entry.index);
        // What each follower holds, before a removal drops its progress (see `tell_removed`).
        let matched: Vec<(NodeId, u64)> = if self.raw.raft.state == StateRole::Leader {
            self.raw.raft.prs().iter().map(|(id, pr)| (*id, pr.matched)).collect()
        } else {
            Vec::new()
        };
        let decoded = if entry.get_entry_type() == EntryType::EntryConfChange {
            ConfChange::parse_from_bytes(&entry.data)
                .map(|cc| (self.raw.apply_conf_change(&cc), vec![(cc.change_type, cc.node_id, cc.context)]))
        } else {
            ConfChangeV2::parse_from_bytes(&entry.data).map(|cc| {
                let changes =
                    cc.changes.iter().map(|c| (c.change_type, c.node_id, cc.context.clone())).collect();
                (self.raw.apply_conf_change(&cc), changes)
            })
        };
        let (applied, changes) = match decoded {
            Ok(decoded) => decoded,
            Err(e) => {
                self.reject_entry(entry.index, &e.to_string());
                return Err(Error::Raft(raft::Error::ConfChangeError(format!(
                    "undecodable conf change: {e}"
                ))));
            }
        };
        let cs = match applied {
            Ok(cs) => cs,
            Err(e) => {
                // Deterministic: every node refuses the same change at the same index.
                warn!(shard = self.shared.shard, index = entry.index, error = %e, "conf change refused");
                return Err(Error::Raft(e));
            }
        };
        for (kind, id, context) in changes {
            if kind == ConfChangeType::RemoveNode {
                self.tell_removed(id, entry.index, &matched);
            }
            self.apply_membership(kind, id, &context, entry.index);
        }
        self.raw
            .mut_store()
            .set_conf_state(cs)
            .unwrap_or_else(|e| panic!("persisting conf state failed: {e}"));
        self.publish_voters();
        Ok(ApplyOutput::Done)
    }

    /// The leader no longer replicates to a node it removed, so that node might never learn
    /// that its removal committed. If it holds the removal entry, one heartbeat committing it
    /// (at this term, from this leader, as raft-rs would send) makes it apply it and stop.
    fn tell_removed(&mut self, id: NodeId, index: u64, matched: &[(NodeId, u64)]) {
        let holds_it = matched.iter().any(|(m, at)| *m == id && *at >= index);
        if id == self.settings.node_id || !holds_it {
            return;
        }
        let mut heartbeat = Message::default();
        heartbeat.set_msg_type(MessageType::MsgHeartbeat);
        heartbeat.from = self.settings.node_id;
        heartbeat.to = id;
        heartbeat.term = self.raw.raft.term;
        heartbeat.commit = index;
        self.send(vec![heartbeat]);
    }

    fn apply_membership(&mut self, kind: ConfChangeType, id: NodeId, context: &[u8], index: u64) {
        match kind {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                let addr = std::str::from_utf8(context).ok().and_then(|s| s.parse().ok());
                if let Some(addr) = addr {
                    self.sm.members().lock().expect("members poisoned").insert(id, addr);
                }
                self.transport.add_peer(id, addr);
                info!(shard = self.shared.shard, node = id, ?addr, ?kind, "member added");
            }
            ConfChangeType::RemoveNode => {
                self.sm.members().lock().expect("members poisoned").remove(&id);
                let replayed = self.settings.fresh && self.removal_floor.is_none_or(|floor| index < floor);
                if id == self.settings.node_id && replayed {
                    // An earlier replica of this node was removed; this one was added since.
                    info!(
                        shard = self.shared.shard,
                        index, "the removal of an earlier replica of this node, replayed"
                    );
                } else if id == self.settings.node_id {
                    self.removed = true;
                    if self.shared.shard == DEFAULT_SHARD {
                        warn!(
                            shard = self.shared.shard,
                            "this node was removed from the group: its Raft group stops (restart it empty to add it again)"
                        );
                    } else {
                        // The node and its other shards go on; the node retires the replica
                        // (`cache::replica`), which drops its data once no read can be using
                        // it: a read that passed its barrier here still reads a whole state.
                        warn!(
                            shard = self.shared.shard,
                            "this replica was removed from its shard: its group stops"
                        );
                    }
                } else if self.shared.shard != DEFAULT_SHARD {
                    // Peer links follow the node's membership (shard 0's), not one shard's.
                    info!(shard = self.shared.shard, node = id, "member removed");
                } else {
                    // After a moment, so that what was just sent to it (`tell_removed`) leaves.
                    // Not if it was added back meanwhile.
                    let (transport, grace) = (self.transport.clone(), self.settings.raft.election_timeout());
                    let members = self.sm.members().clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(grace).await;
                        if !members.lock().expect("members poisoned").contains_key(&id) {
                            transport.remove_peer(id);
                        }
                    });
                    info!(shard = self.shared.shard, node = id, "member removed");
                }
            }
        }
    }

    /// Keeps at most `max_log_entries` applied entries; compacts in steps of a quarter of that.
    fn compact_log(&mut self) {
        let keep = self.settings.raft.max_log_entries;
        let applied = self.sm.applied_index();
        let mut limit = applied + 1 - keep.min(applied);
        if self.checkpoints.is_some() {
            self.checkpoint_if_due(applied);
            let checkpoints = self.checkpoints.as_ref().expect("checked above");
            limit = limit.min(checkpoints.compact_limit());
        }
        let first = self.raw.raft.raft_log.first_index();
        if applied + 1 >= first + keep + keep / 4 && limit > first {
            let store = self.raw.mut_store();
            store.compact(limit).unwrap_or_else(|e| panic!("compacting the log failed: {e}"));
        }
    }

    /// Takes a checkpoint of the state at `applied` when one is due: the state is captured here
    /// (one pass over the cache), then compressed, written and fsynced on a blocking thread so
    /// writes go on meanwhile. A failed write (disk full) is logged and tried again at the next
    /// due point; the log is not compacted past the older checkpoints until one succeeds.
    fn checkpoint_if_due(&mut self, applied: u64) {
        let shard = self.shared.shard;
        let Some(checkpoints) = self.checkpoints.as_mut() else { return };
        if let Some(job) = self.checkpoint_job.as_mut() {
            match job.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => return,
                Ok(Ok((index, bytes))) => {
                    self.shared.checkpoints_written.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = checkpoints.completed(index, bytes) {
                        warn!(shard, error = %e, "listing checkpoints failed");
                    }
                }
                Ok(Err(e)) => warn!(shard, error = %e, "checkpoint failed; will retry"),
                Err(oneshot::error::TryRecvError::Closed) => warn!(shard, "checkpoint job lost"),
            }
            self.checkpoint_job = None;
        }
        if !checkpoints.due(applied) {
            return;
        }
        // The commit index must be durable at least up to the checkpoint before it exists.
        if !self.persist_all() {
            return;
        }
        let Some(checkpoints) = self.checkpoints.as_mut() else { return };
        let term = self.raw.raft.raft_log.term(applied).unwrap_or(0);
        let conf = self.raw.raft.prs().conf().to_conf_state();
        // Copy-on-write: only a flag is set here; the walk over the cache runs with the job.
        let Some(finish) = self.sm.capture_later() else { return };
        let job = checkpoints.job(applied, term, conf, move || {
            finish()
                .map(SnapshotCapture::encode)
                .ok_or_else(|| std::io::Error::other("a clear aborted the capture"))
        });
        checkpoints.started(applied);
        let (tx, rx) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let _ = tx.send(job().map(|bytes| (applied, bytes)));
        });
        self.checkpoint_job = Some(rx);
    }
}
