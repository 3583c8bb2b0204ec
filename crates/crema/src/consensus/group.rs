//! The Raft group loop: one task owns a group's `RawNode`, fed by bounded mailboxes.
//!
//! Each pass takes what is queued (peer messages first, then client requests), proposes every
//! write it found, starts one read-index round for every read it found, and then handles one
//! Ready, so concurrent requests share one Ready and one log append. The Ready is handled in
//! raft-rs's order:
//!
//! 1. send `messages` (the leader sends appends before persisting, in parallel with its disk);
//! 2. install a snapshot, if any, into the store and the state machine;
//! 3. note read states (reads proceed once their index is applied);
//! 4. apply committed entries;
//! 5. append `entries` and persist the hard state;
//! 6. send `persisted_messages` (votes and append responses only after persisting);
//! 7. `advance`, then the light ready the same way (commit index, messages, committed entries).
//!
//! With a store that syncs to disk (RocksDB) on a multi-threaded runtime, steps 5-7 do not wait
//! for the fsync: the Ready's changes go off the loop as one write (`LogStore::take_write`;
//! with RocksDB to the node's log writer, which batches every group's writes), the Ready is
//! advanced without them counting as persisted (`advance_append_async`), and the loop goes on
//! stepping messages, proposing and applying. Readies handled meanwhile add their changes to
//! the store's next write; their persisted messages wait with them. When a write lands,
//! `on_persist_ready` tells raft-rs, which may then commit (the leader's own entries count),
//! and the held messages go out. Writes land in order: one runs at a time, or, with a store
//! whose writes go through one queue (RocksDB's node log writer, `LogStore::pipelines_writes`),
//! each Ready's write is handed over at once, so it can share the writer's next batch instead
//! of waiting for this group's previous write to land. raft-rs applies nothing this node has
//! not persisted (its committed entries stop at the persisted index). A snapshot, a checkpoint,
//! leaving the group and stopping first wait for the write in flight. Under load this overlaps
//! each node's fsync with its network and apply work, where the synchronous loop did nothing
//! while it synced.
//!
//! Apply answers each proposal by its `(index, term)`; a proposal whose entry was overwritten by
//! another leader's answers `ProposalDropped`.
//!
//! This file holds the loop and its pass. Beside it: `group/spawn.rs` starts a group,
//! `group/handle.rs` holds the mailboxes and the handle, `group/shared.rs` what the loop
//! publishes, `group/propose.rs` the batching of proposals and the commit notices,
//! `group/ready.rs` the Ready (steps 1-7) with `group/persisting.rs` (step 5, in or off the
//! loop) and `group/apply.rs` (steps 2 and 4), `group/hibernate.rs` idle groups, and
//! `group/client_input.rs` client requests, `group/step.rs` stepping a peer's message (the
//! checks it passes first), `group/peer_input.rs` handshakes and this node's recovery after a
//! restart without its Raft state.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use raft::eraftpb::{Message, MessageType};
use raft::{RawNode, StateRole};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::admit::WarnThrottle;
use super::pending::{ProposalReply, Proposals, ReadBatches};
use super::recovery::Recovery;
use super::state_machine::CacheStateMachine;
use super::storage::LogStore;
use super::Role;
use crate::checkpoint::CheckpointManager;
use crate::error::Error;
use crate::transport::Transport;
use crate::types::NodeId;

mod apply;
mod client_input;
mod handle;
mod hibernate;
mod peer_input;
mod persisting;
mod propose;
mod ready;
mod shared;
mod spawn;
mod step;

use handle::answer_shutdown;
pub(crate) use handle::{ClientMsg, GroupHandle, PeerInput};
pub(crate) use shared::GroupShared;
pub(crate) use spawn::{spawn_group, GroupSettings};

/// Requests handled per mailbox per pass, so ticks and Readies are never starved.
const DRAIN_LIMIT: usize = 4096;

/// Proposal batches a leader keeps uncommitted at once. Writes that arrive while this many are
/// in flight wait in `gathered` and go out as one larger batch when the oldest commits: under
/// load each follower gets fewer, larger appends (and answers fewer), which is where a 3-node
/// write load spent its time; an idle leader proposes at once. Measured in docs/performance.md.
const UNCOMMITTED_BATCHES: usize = 2;

/// Read-index rounds a node keeps in flight at once. Linearizable reads asked while one is
/// out wait in the loop and go together in the next round when it is answered: under load each
/// round (a request to the leader, its heartbeat to a quorum, the answers) serves many reads
/// instead of the two or three that reached the loop in one pass. An idle node starts a round
/// at once. A round lost with a leader change, or unanswered past the retry interval, frees its
/// place. Measured in docs/performance.md.
const READ_ROUNDS_IN_FLIGHT: usize = 1;

/// Writes gathered past this many are proposed even with `UNCOMMITTED_BATCHES` in flight.
const GATHER_LIMIT: usize = 4096;

/// A proposal batch holds writes of at most this many appends' worth (`max_size_per_msg`
/// each; 4 MiB by default), or one write when that is larger (see `propose_batch`).
const BATCH_MESSAGES: u64 = 4;

/// A log write running off the loop (see the module header).
pub(super) struct PersistJob {
    /// The number of the last Ready whose changes it holds.
    number: u64,
    /// True once written; false if the node stopped while the disk refused the write.
    done: oneshot::Receiver<bool>,
}

/// Resolves when the oldest write in flight lands (never when none is): `(its Ready number,
/// written)`.
async fn persisted(jobs: &mut std::collections::VecDeque<PersistJob>) -> (u64, bool) {
    match jobs.front_mut() {
        Some(job) => (job.number, (&mut job.done).await.unwrap_or(false)),
        None => std::future::pending().await,
    }
}

/// Snapshot data per peer frame: well under the 16 MiB frame limit, small enough that other
/// traffic to the peer is not held up for long behind one piece.
pub(crate) const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// Runs `f`, which may block on the disk (a synced write), without holding up the other tasks of
/// this runtime worker: on a multi-threaded runtime they move to another thread meanwhile.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

struct Group<S: LogStore> {
    raw: RawNode<S>,
    sm: CacheStateMachine,
    shared: Arc<GroupShared>,
    transport: Arc<Transport>,
    proposals: Proposals,
    /// Writes taken from the mailbox this pass, proposed together at its end.
    gathered: Vec<(Bytes, ProposalReply)>,
    /// `(term, last index)` of the batches this leader proposed that are not yet committed.
    in_flight: std::collections::VecDeque<(u64, u64)>,
    reads: ReadBatches,
    client_rx: mpsc::Receiver<ClientMsg>,
    raft_rx: mpsc::Receiver<PeerInput>,
    settings: GroupSettings,
    /// While this node recovers from a restart without its Raft state (see `recovery`).
    recovery: Option<Recovery>,
    /// When the loop started (a recovery stuck for long is reported once).
    started: Instant,
    warned_stuck: bool,
    /// Paces the warnings about dropped peer messages.
    reject_warnings: WarnThrottle,
    /// The sole voter campaigns once it has applied everything committed.
    campaign_when_applied: bool,
    checkpoints: Option<CheckpointManager>,
    /// A checkpoint being written on a blocking thread: answers its index and payload bytes.
    checkpoint_job: Option<oneshot::Receiver<std::io::Result<(u64, u64)>>>,
    /// Snapshot transfers started (numbers each transfer).
    snapshot_transfers: u64,
    /// Stops the loop (a copy of the node's token).
    cancel: CancellationToken,
    /// Set when the group gave up persisting while stopping: the loop ends.
    halted: bool,
    /// This node applied its own removal from the group: the loop stops (raft-rs keeps a
    /// removed leader leading, and it then fails on its own missing progress).
    removed: bool,
    /// Synced writes run off the loop (see the module header).
    persist_async: bool,
    /// A write to the store was given up as the node stopped while the disk refused it: from
    /// then on nothing more is written.
    writes_lost: bool,
    /// The term, and the commit index this leader told each follower by itself in it (see
    /// `tell_commit_when_idle`).
    commit_told: (u64, std::collections::HashMap<NodeId, u64>),
    /// The writes in flight, oldest first: at most one, unless the store pipelines its writes
    /// (`LogStore::pipelines_writes`).
    persist_jobs: std::collections::VecDeque<PersistJob>,
    /// Readies advanced before their changes were durable, oldest first: their numbers and the
    /// messages to send once they are. Not empty exactly while a write is in flight.
    unpersisted: std::collections::VecDeque<(u64, Vec<Message>)>,
    /// The group ticks no clock (see `hibernate`).
    hibernating: bool,
    /// Ticks in a row this leader had nothing to do (see `hibernate`).
    quiet_ticks: usize,
    /// This loop's own peer mailbox: where a snapshot's sending task reports.
    reports: mpsc::Sender<PeerInput>,
    /// A fresh replica (`GroupSettings::fresh`): the leader's commit index in the first append
    /// it received that fits its log. The leader added this replica at or below it, so a
    /// removal of this node below it removed an earlier replica (raft ids are node ids) and is
    /// replayed, not obeyed. An append that does not fit was meant for an earlier replica
    /// (found from outside: one queued for a node removed while it was down reached its fresh
    /// successor first, whose floor was then the removal's own index, and the successor, added
    /// again, obeyed the old removal and exited).
    removal_floor: Option<u64>,
    /// A fresh replica: the leader that sent that first append, and its term. Until the
    /// replica has applied up to `removal_floor`, this leader is heard although the replayed
    /// log does not count it yet (see `catching_up_from`).
    catch_up_leader: Option<(NodeId, u64)>,
}

impl<S: LogStore> Group<S> {
    async fn run(mut self, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(self.settings.raft.tick_interval());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let shared = self.shared.clone();
        loop {
            #[cfg(feature = "fault-injection")]
            if let Some(faults) = self.settings.faults.clone() {
                if faults.is_paused(self.settings.node_id) {
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = faults.wait_while_paused(self.settings.node_id) => {}
                    }
                }
            }
            let hibernating = self.hibernating;
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                (number, written) = persisted(&mut self.persist_jobs) => self.on_persisted(number, written),
                Some(input) = self.raft_rx.recv() => self.on_peer(input),
                Some(msg) = self.client_rx.recv() => self.on_client(msg),
                _ = ticker.tick(), if !hibernating => self.tick(),
                _ = shared.wake.notified(), if hibernating => {
                    self.wake(shared.wake_urgent.swap(false, Ordering::AcqRel));
                }
            }
            if hibernating && !self.hibernating {
                // The clock starts again from now.
                ticker.reset();
            }
            self.pass();
            if self.halted {
                break;
            }
        }
        self.drain_before_exit(&mut ticker).await;
        self.shared.ended.store(true, Ordering::Release);
    }

    /// The rest of a loop pass: drain the mailboxes, start a read round, handle the Ready.
    fn pass(&mut self) {
        for _ in 0..DRAIN_LIMIT {
            match self.raft_rx.try_recv() {
                Ok(input) => self.on_peer(input),
                Err(_) => break,
            }
        }
        for _ in 0..DRAIN_LIMIT {
            match self.client_rx.try_recv() {
                Ok(msg) => self.on_client(msg),
                Err(_) => break,
            }
        }
        self.propose_admitted();
        self.start_read_round();
        if self.raw.has_ready() {
            self.on_ready();
        }
        // Persisting this node's own entries can commit a batch (its followers answered
        // first), and a Ready can answer the read round in flight: writes and reads held for
        // them go now, not at the next wake-up.
        let mut more = false;
        if !self.gathered.is_empty() && self.may_propose() {
            self.propose_admitted();
            more = true;
        }
        more |= self.start_read_round();
        if more && self.raw.has_ready() {
            self.on_ready();
        }
        self.tell_commit_when_idle();
        self.publish_log_position();
        self.shared.held_writes.store(self.gathered.len(), Ordering::Relaxed);
        self.shared.held_reads.store(self.reads.gathered_len(), Ordering::Relaxed);
        if self.campaign_when_applied && self.raw.raft.raft_log.applied >= self.raw.raft.raft_log.committed {
            self.campaign_when_applied = false;
            if let Err(e) = self.raw.campaign() {
                warn!(shard = self.shared.shard, error = %e, "the sole voter could not campaign");
            }
            if self.raw.has_ready() {
                self.on_ready();
            }
        }
    }

    /// Graceful stop: refuse new requests, give in-flight proposals a short grace to commit, then
    /// answer whatever is left with `Shutdown`.
    async fn drain_before_exit(&mut self, ticker: &mut tokio::time::Interval) {
        // From here every Ready is persisted in the loop, after what is in flight lands.
        if !self.removed {
            self.settle_persist();
        }
        self.persist_async = false;
        self.client_rx.close();
        while let Ok(msg) = self.client_rx.try_recv() {
            if self.removed {
                // No Raft calls on a removed node: answer without proposing anything.
                match msg {
                    ClientMsg::Status { reply } => {
                        let _ = reply.send(self.status());
                    }
                    other => answer_shutdown(other),
                }
            } else {
                self.on_client(msg);
            }
        }
        if !self.removed {
            self.propose_gathered();
        }
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_grace;
        while !self.removed && self.proposals.len() > 0 && self.raw.raft.state == StateRole::Leader {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                Some(input) = self.raft_rx.recv() => self.on_peer(input),
                _ = ticker.tick() => self.tick(),
            }
            self.pass();
        }
        if self.writes_lost {
            // A write was given up: nothing written after it may land (the log would have a
            // gap, or a commit index past its end).
        } else if let Err(e) = self.raw.mut_store().sync() {
            warn!(shard = self.shared.shard, error = %e, "final raft log flush failed");
        }
        if let Some(job) = self.checkpoint_job.take() {
            // Let a checkpoint being written finish rather than leave a temp file behind.
            let _ = job.await;
        }
        self.proposals.fail_all(|| Error::Shutdown);
        self.reads.fail_all(|| Error::Shutdown);
        self.shared.role.store(Role::Follower as u8, Ordering::Release);
        self.shared.leader.store(0, Ordering::Release);
    }

    fn on_peer(&mut self, input: PeerInput) {
        match input {
            PeerInput::Message(msg) => {
                // A hibernating leader's late heartbeat answer, of its term, changes nothing.
                let late_answer = self.raw.raft.state == StateRole::Leader
                    && msg.get_msg_type() == MessageType::MsgHeartbeatResponse
                    && msg.term == self.raw.raft.term;
                if !late_answer {
                    self.wake(false);
                }
                self.step(msg);
            }
            PeerInput::Hello { peer, restarted, position } => {
                self.wake(false);
                self.on_hello(peer, restarted, position);
            }
            PeerInput::Hibernate { from, term, commit } => self.on_hibernate_notice(from, term, commit),
            PeerInput::Commit { from, term, commit } => self.on_commit_notice(from, term, commit),
            PeerInput::SnapshotSent { to, ok } => {
                if !ok {
                    self.raw.report_unreachable(to);
                    // It never arrived: no reason to wait before the next.
                    self.raw.mut_store().forget_snapshot_pace(to);
                }
                let status = if ok { raft::SnapshotStatus::Finish } else { raft::SnapshotStatus::Failure };
                self.raw.report_snapshot(to, status);
            }
        }
    }

    fn tick(&mut self) {
        // While recovering a follower must not campaign (that is a vote for itself): do not tick.
        // A leader that cannot persist its log (disk full) cannot commit or apply anything:
        // it stops heartbeating, as the loop did when it waited on the disk, so the followers
        // elect a leader that can.
        let role = self.raw.raft.state;
        if self.recovery.is_some() {
            self.warn_if_stuck();
        }
        let held_back = (role == StateRole::Follower && self.recovery.is_some())
            || (role == StateRole::Leader && self.shared.persist_failing());
        if !held_back {
            self.raw.tick();
        } else if role == StateRole::Follower {
            // Not raft-rs's tick (it would campaign) but its election clock, which a message
            // of the leader sets back to zero: a leader not heard from for an election timeout
            // loses its lease, so a candidate's (pre-)vote is considered again. Found from
            // outside: two of three memory nodes restarted at once took a heartbeat the old
            // leader had queued before it stepped down for a live leader, refused the
            // survivor's pre-votes as inside that leader's lease for good, and nobody led.
            let raft = &mut self.raw.raft;
            raft.election_elapsed = (raft.election_elapsed + 1).min(2 * raft.election_timeout() + 1);
        }
        self.hand_over_if_no_voter();
        self.consider_hibernating();
        self.forget_a_silent_leader();
        let leader = self.shared.leader_id();
        let timeout = self.settings.read_timeout;
        let retry_after = self.settings.raft.election_timeout() / 2;
        self.reads.expire(Instant::now(), retry_after, timeout, || match leader {
            None => Error::NotLeader { leader_hint: None },
            Some(_) => Error::Timeout(timeout),
        });
    }

    /// A learner never campaigns (nor does a recovering voter), so raft-rs goes on naming the
    /// last leader it heard of: one not heard from for two election timeouts is not named here
    /// (found from outside: a node that only followed the meta shard named a leader that had
    /// lost its quorum, and answered ready). Named again once it is heard from.
    fn forget_a_silent_leader(&mut self) {
        let raft = &self.raw.raft;
        if (raft.promotable() && self.recovery.is_none()) || raft.state == StateRole::Leader {
            return;
        }
        let silent = raft.election_elapsed > 2 * self.settings.raft.election_tick;
        let named = if silent { 0 } else { raft.leader_id };
        if self.shared.leader_id().unwrap_or(0) != named {
            self.publish_soft_state(named, raft.state);
        }
    }

    /// Sends the reads gathered so far to the leader as one read-index round, unless
    /// `READ_ROUNDS_IN_FLIGHT` rounds await their answer or no leader is known (raft-rs drops
    /// read requests then; they stay gathered until one is). True when a round started.
    fn start_read_round(&mut self) -> bool {
        if self.raw.raft.leader_id == raft::INVALID_ID || self.reads.in_flight() >= READ_ROUNDS_IN_FLIGHT {
            return false;
        }
        let Some(ctx) = self.reads.start_round(Instant::now()) else { return false };
        let ctx = self.reads.ctx_bytes(ctx);
        self.raw.read_index(ctx);
        self.shared.read_rounds.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Read-Index shortcut of a sole voter is taken only once it has applied an entry of
    /// its own term: never at term 0, never while it replays an earlier term's log.
    #[test]
    fn a_sole_leader_skips_read_index_only_after_applying_its_own_term() {
        let s = GroupShared::new(0);
        s.sole_voter.store(true, Ordering::Release);
        s.role.store(Role::Leader as u8, Ordering::Release);
        assert!(!s.leads_alone(), "term 0: nothing known yet");
        s.term.store(2, Ordering::Release);
        s.applied_term.store(1, Ordering::Release);
        assert!(!s.leads_alone(), "still replaying the log of term 1");
        s.applied_term.store(2, Ordering::Release);
        assert!(s.leads_alone());
        s.sole_voter.store(false, Ordering::Release);
        assert!(!s.leads_alone(), "not alone any more");
    }
}
