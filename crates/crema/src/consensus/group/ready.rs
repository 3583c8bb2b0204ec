//! The Ready half of the group loop (see `group`): raft-rs's Ready handled in its order, the
//! messages sent (snapshots in pieces, off the loop), and what the loop publishes of its role.
//! Persisting the Ready's changes is in `group/persisting.rs`, applying what it commits in
//! `group/apply.rs`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protobuf::Message as PbMessage;
use raft::eraftpb::{Entry, Message, MessageType};
use raft::StateRole;
use tracing::{debug, info, warn};

use super::{Group, SNAPSHOT_CHUNK_BYTES};
use crate::config::MAX_FRAME_BYTES;
use crate::consensus::pending::PeerRead;
use crate::consensus::storage::LogStore;
use crate::consensus::Role;
use crate::transport::envelope::Envelope;
use crate::types::NodeId;

/// How long a snapshot's sending task waits for room for one piece before it gives up (the
/// leader then sends a new snapshot later).
const SNAPSHOT_PIECE_PATIENCE: Duration = Duration::from_secs(30);

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
        if !ready.snapshot().is_empty() && !self.install_snapshot(ready.snapshot()) {
            return;
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

    pub(super) fn publish_soft_state(&mut self, leader: NodeId, role: StateRole) {
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

    pub(super) fn send(&mut self, msgs: Vec<Message>) {
        self.publish_progress();
        self.shared.messages_sent.fetch_add(msgs.len() as u64, Ordering::Relaxed);
        for msg in msgs {
            let to = msg.to;
            let msg_type = msg.get_msg_type();
            if msg_type == MessageType::MsgSnapshot {
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
            // Appends keep their order in the ordinary lane; the rest (heartbeats, votes,
            // answers) is small and goes ahead of them (see `Transport::send_urgent`).
            let sent = match msg_type {
                MessageType::MsgAppend => self.transport.send(to, frame),
                _ => self.transport.send_urgent(to, frame),
            };
            if let Err(e) = sent {
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
}
