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
//! for the fsync: the Ready's changes go off the loop as one write (`LogStore::take_write`; with
//! RocksDB to the node's log writer, which batches every group's writes), the Ready is advanced without them counting as persisted
//! (`advance_append_async`), and the loop goes on stepping messages, proposing and applying.
//! Readies handled meanwhile add their changes to the store's next write; their persisted
//! messages wait with them. When a write lands, `on_persist_ready` tells raft-rs, which may then
//! commit (the leader's own entries count), and the held messages go out. Writes land in order:
//! one runs at a time, or, with a store whose writes go through one queue (RocksDB's node log
//! writer, `LogStore::pipelines_writes`), each Ready's write is handed over at once, so it can
//! share the writer's next batch instead of waiting for this group's previous write to land. raft-rs applies nothing this node has not persisted (its
//! committed entries stop at the persisted index). A snapshot, a checkpoint, leaving the group
//! and stopping first wait for the write in flight. Under load this overlaps each node's fsync
//! with its network and apply work, where the synchronous loop did nothing while it synced.
//!
//! Apply answers each proposal by its `(index, term)`; a proposal whose entry was overwritten by
//! another leader's answers `ProposalDropped`.
//!
//! This file holds the handle, the mailboxes and the pass; `group/ready.rs` handles the Ready
//! (steps 1-7) and `group/peer_input.rs` the checks on peer messages, handshakes and this
//! node's recovery after a restart without its Raft state.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft::eraftpb::{ConfChange, Entry, Message, MessageType};
use raft::{RawNode, ReadOnlyOption, StateRole};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::admit::{self, Admitted, Reject, WarnThrottle};
use super::logger::raft_logger;
use super::pending::{PeerRead, ProposalReply, Proposals, ReadBatches, ReadReply};
use super::recovery::Recovery;
#[cfg(feature = "fault-injection")]
use super::state_machine::ApplyOutput;
use super::state_machine::CacheStateMachine;
use super::storage::LogStore;
use super::{Applied, GroupStatus, Role};
use crate::checkpoint::CheckpointManager;
use crate::config::RaftConfig;
use crate::error::{Error, Result};
use crate::transport::envelope::{Envelope, GroupPosition};
use crate::transport::forward::ForwardTicket;
use crate::transport::Transport;
use crate::types::{NodeId, ShardId};

mod hibernate;
mod peer_input;
mod ready;

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

/// What arrives from peers: Raft messages, and handshakes (in the order the transport saw them,
/// so a peer's restart is known before its new incarnation's first message).
pub(crate) enum PeerInput {
    Message(Message),
    /// `peer` connected and reported where it stands in this group; `restarted` when it is a new
    /// incarnation of a peer this node talked to before.
    Hello {
        peer: NodeId,
        restarted: bool,
        position: GroupPosition,
    },
    /// The group's leader `from` stopped ticking at `term`, with `commit` committed and last in
    /// its log (see `hibernate`).
    Hibernate {
        from: NodeId,
        term: u64,
        commit: u64,
    },
    /// The group's leader `from` says, in `term`, that this replica may commit up to `commit`
    /// (see `Envelope::Commit`).
    Commit {
        from: NodeId,
        term: u64,
        commit: u64,
    },
    /// A snapshot this leader sends to `to` went out whole (`ok`), or could not (see
    /// `ready::send_snapshot`).
    SnapshotSent {
        to: NodeId,
        ok: bool,
    },
}

/// What a client (the cache API, a forwarded request, an admin call) asks of the group.
pub(crate) enum ClientMsg {
    Propose {
        command: Bytes,
        reply: ProposalReply,
    },
    ConfChange {
        change: ConfChange,
        reply: ProposalReply,
    },
    ReadIndex {
        reply: ReadReply,
    },
    Status {
        reply: oneshot::Sender<GroupStatus>,
    },
    /// Hand leadership to `to` (raft-rs's leader transfer: it catches `to` up, then tells it to
    /// campaign); refused unless this node leads and `to` is another voter.
    TransferLeader {
        to: NodeId,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Make this node the only voter, without consensus (see `force_new_cluster`).
    ForceNewCluster {
        reply: oneshot::Sender<Result<Vec<NodeId>>>,
    },
    /// Test-only: the loop panics, as a bug would make it (fail-fast tests).
    #[cfg(feature = "fault-injection")]
    Panic,
}

/// State the loop publishes for handles to read without a round trip.
pub(crate) struct GroupShared {
    pub shard: ShardId,
    role: AtomicU8,
    leader: AtomicU64,
    term: AtomicU64,
    commit: AtomicU64,
    /// The term in which this node leads and has committed an entry of its own (so its commit
    /// index covers everything committed before), in a configuration that is not joint; 0
    /// otherwise. What a node-level read round needs (see `cache::read_rounds`).
    read_term: AtomicU64,
    /// The group's configuration is joint (a membership change in two steps is under way).
    joint: AtomicBool,
    applied: watch::Sender<u64>,
    /// True while this node recovers from a restart without its Raft state (see `recovery`).
    recovering: AtomicBool,
    /// The term and index of the last entry in the log (for the peer handshake).
    last_term: AtomicU64,
    last_index: AtomicU64,
    /// Committed entries that did not decode (or were of an unknown version), applied as no-ops.
    apply_rejected: AtomicU64,
    /// Peer messages dropped (or, for a heartbeat's commit index, corrected) before raft-rs saw
    /// them, by this loop's checks against the log.
    messages_rejected: AtomicU64,
    leader_changed: Notify,
    /// When this node last lost its leader (or started without one).
    leaderless_since: Mutex<Instant>,
    /// How many times the known leader changed (to a node or to none).
    leader_changes: AtomicU64,
    /// Snapshots received from a leader and installed.
    snapshots_installed: AtomicU64,
    /// Checkpoints of this node's own state written (durable storage only).
    checkpoints_written: AtomicU64,
    /// The term of the last entry applied here.
    applied_term: AtomicU64,
    /// True while the raft log cannot be persisted (disk full): the group waits.
    persist_failing: AtomicBool,
    /// This node applied its own removal: its group has stopped.
    removed: AtomicBool,
    /// This node is the group's only voter: as leader it has applied every acknowledged write
    /// (a write is acknowledged only by its proposer, after applying it), so reads need no
    /// Read-Index round.
    sole_voter: AtomicBool,
    /// The group's voters, as this node last applied them.
    voters: std::sync::RwLock<Vec<NodeId>>,
    /// The group's learners, as this node last applied them.
    learners: std::sync::RwLock<Vec<NodeId>>,
    /// Proposal batches this node appended as leader (one `MsgPropose` each).
    proposal_batches: AtomicU64,
    /// Entries in those batches.
    proposed_entries: AtomicU64,
    /// Raft messages handed to the transport (snapshot pieces not included).
    messages_sent: AtomicU64,
    /// Writes the leader took from the mailbox and holds until a batch in flight commits.
    held_writes: AtomicUsize,
    /// Read-index rounds this node started (a round retried after a lost answer counts again).
    read_rounds: AtomicU64,
    /// Linearizable reads waiting for the next round while one is in flight.
    held_reads: AtomicUsize,
    /// True while the group hibernates (ticks no clock; see `hibernate`).
    hibernating: AtomicBool,
    /// Wakes a hibernating group (see [`GroupShared::wake`]).
    wake: Notify,
    /// Set with `wake` when the group's leader is no longer heard from.
    wake_urgent: AtomicBool,
    /// The loop has ended: its last write to the store is done.
    ended: AtomicBool,
}

impl GroupShared {
    /// A group's published state before its loop runs (tests of what a loop reports to).
    #[cfg(test)]
    pub(crate) fn for_tests(shard: ShardId) -> Arc<Self> {
        Arc::new(Self::new(shard))
    }

    /// Test-only: this node leads in `term` with `commit` committed (an entry of `term` among
    /// it), `voters` voting.
    #[cfg(test)]
    pub(crate) fn lead_for_tests(&self, term: u64, commit: u64, voters: Vec<NodeId>) {
        self.term.store(term, Ordering::Release);
        self.commit.store(commit, Ordering::Release);
        self.read_term.store(term, Ordering::Release);
        self.role.store(Role::Leader as u8, Ordering::Release);
        *self.voters.write().expect("voters poisoned") = voters;
    }

    /// Test-only: this node moved on to `term` (it voted there, or campaigns).
    #[cfg(test)]
    pub(crate) fn move_to_term_for_tests(&self, term: u64) {
        self.term.store(term, Ordering::Release);
        self.read_term.store(0, Ordering::Release);
        self.role.store(Role::Follower as u8, Ordering::Release);
    }

    /// Test-only: this node recovers from a restart without its Raft state.
    #[cfg(test)]
    pub(crate) fn recover_for_tests(&self) {
        self.recovering.store(true, Ordering::Release);
    }

    fn new(shard: ShardId) -> Self {
        Self {
            shard,
            role: AtomicU8::new(Role::Follower as u8),
            leader: AtomicU64::new(0),
            term: AtomicU64::new(0),
            commit: AtomicU64::new(0),
            read_term: AtomicU64::new(0),
            joint: AtomicBool::new(false),
            applied: watch::Sender::new(0),
            recovering: AtomicBool::new(false),
            last_term: AtomicU64::new(0),
            last_index: AtomicU64::new(0),
            apply_rejected: AtomicU64::new(0),
            messages_rejected: AtomicU64::new(0),
            leader_changed: Notify::new(),
            leaderless_since: Mutex::new(Instant::now()),
            leader_changes: AtomicU64::new(0),
            snapshots_installed: AtomicU64::new(0),
            checkpoints_written: AtomicU64::new(0),
            applied_term: AtomicU64::new(0),
            persist_failing: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            sole_voter: AtomicBool::new(false),
            voters: std::sync::RwLock::default(),
            learners: std::sync::RwLock::default(),
            proposal_batches: AtomicU64::new(0),
            proposed_entries: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            held_writes: AtomicUsize::new(0),
            read_rounds: AtomicU64::new(0),
            held_reads: AtomicUsize::new(0),
            hibernating: AtomicBool::new(false),
            wake: Notify::new(),
            wake_urgent: AtomicBool::new(false),
            ended: AtomicBool::new(false),
        }
    }

    /// Whether the group hibernates on this node (ticks no clock until a message or a request
    /// arrives; see `hibernate`).
    pub fn is_hibernating(&self) -> bool {
        self.hibernating.load(Ordering::Acquire)
    }

    /// Wakes the group if it hibernates. `leader_silent`: its leader's node is no longer heard
    /// from, so a follower counts the silence as an election timeout spent.
    pub fn wake(&self, leader_silent: bool) {
        if leader_silent {
            self.wake_urgent.store(true, Ordering::Release);
        }
        self.wake.notify_one();
    }

    /// Proposal batches appended as leader, and the entries in them.
    pub fn proposals(&self) -> (u64, u64) {
        (self.proposal_batches.load(Ordering::Relaxed), self.proposed_entries.load(Ordering::Relaxed))
    }

    /// Raft messages sent to peers.
    pub fn messages_sent(&self) -> u64 {
        self.messages_sent.load(Ordering::Relaxed)
    }

    /// Writes held for the next batch (see `UNCOMMITTED_BATCHES`).
    pub fn held_writes(&self) -> usize {
        self.held_writes.load(Ordering::Relaxed)
    }

    /// Read-index rounds started (see `READ_ROUNDS_IN_FLIGHT`).
    pub fn read_rounds(&self) -> u64 {
        self.read_rounds.load(Ordering::Relaxed)
    }

    /// Reads waiting for the next read-index round.
    pub fn held_reads(&self) -> usize {
        self.held_reads.load(Ordering::Relaxed)
    }

    pub fn is_leader(&self) -> bool {
        self.role.load(Ordering::Acquire) == Role::Leader as u8
    }

    pub fn leader_id(&self) -> Option<NodeId> {
        Some(self.leader.load(Ordering::Acquire)).filter(|id| *id != 0)
    }

    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }

    pub fn commit(&self) -> u64 {
        self.commit.load(Ordering::Acquire)
    }

    /// `(term, commit index)` for a read index, while this node leads in `term` and has
    /// committed an entry of it (see `read_term`); the caller still has to confirm that a quorum
    /// is in `term` after this call (see `cache::read_rounds`).
    pub fn read_capture(&self) -> Option<(u64, u64)> {
        // `read_term` before `commit`: the loop stores the commit index first.
        let term = self.read_term.load(Ordering::Acquire);
        if term == 0 || !self.is_leader() {
            return None;
        }
        let commit = self.commit();
        (self.term() == term).then_some((term, commit))
    }

    /// Whether this replica vouches that it is still in `term`: it has not voted or campaigned
    /// in a later one (the loop publishes a new term before it sends anything of it), and it is
    /// not recovering from a restart without its state (it could have voted in an earlier
    /// life).
    pub fn confirms_term(&self, term: u64) -> bool {
        term != 0 && !self.recovering() && !self.removed() && self.term() == term
    }

    /// True when this node leads, is the only voter (see `sole_voter`) and has applied an entry
    /// of its own term: everything committed before it (by an earlier run of this node, from
    /// its durable log) is then applied too.
    pub fn leads_alone(&self) -> bool {
        let term = self.term();
        self.sole_voter.load(Ordering::Acquire)
            && self.is_leader()
            && term > 0
            && self.applied_term.load(Ordering::Acquire) == term
    }

    /// The group's voters, as this node last applied them.
    pub fn voters(&self) -> Vec<NodeId> {
        self.voters.read().expect("voters poisoned").clone()
    }

    /// The group's learners, as this node last applied them (sorted).
    pub fn learners(&self) -> Vec<NodeId> {
        self.learners.read().expect("learners poisoned").clone()
    }

    /// How long this node has known no leader (none while it knows one).
    pub fn leaderless_for(&self) -> Option<Duration> {
        match self.leader_id() {
            Some(_) => None,
            None => Some(self.leaderless_since.lock().expect("leaderless poisoned").elapsed()),
        }
    }

    /// Completes at the next change of the known leader (this node's own leadership included).
    pub fn leader_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.leader_changed.notified()
    }

    /// Waits until the known leader is another than `leader` (none included).
    pub async fn leader_moved_from(&self, leader: NodeId) {
        loop {
            let changed = self.leader_changed.notified();
            if self.leader_id() != Some(leader) {
                return;
            }
            changed.await;
        }
    }

    /// Whether this node was removed from the group (its loop has stopped), or its leader
    /// said so (`mark_removed`).
    pub fn removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// The group's leader says this node is no longer a member, though this replica never
    /// applied its removal: it is treated as removed (and retired by the node).
    pub fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
    }

    /// Whether this replica is fresh: no member known, nothing applied (a replica just started
    /// to join its group).
    pub fn is_fresh(&self) -> bool {
        self.voters().is_empty() && self.learners().is_empty() && self.applied() == 0 && !self.removed()
    }

    pub fn persist_failing(&self) -> bool {
        self.persist_failing.load(Ordering::Acquire)
    }

    pub(crate) fn set_persist_failing(&self, failing: bool) {
        self.persist_failing.store(failing, Ordering::Release);
    }

    pub fn snapshots_installed(&self) -> u64 {
        self.snapshots_installed.load(Ordering::Relaxed)
    }

    pub fn checkpoints_written(&self) -> u64 {
        self.checkpoints_written.load(Ordering::Relaxed)
    }

    pub fn leader_changes(&self) -> u64 {
        self.leader_changes.load(Ordering::Relaxed)
    }

    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// True while this node recovers from a restart without its Raft state.
    pub fn recovering(&self) -> bool {
        self.recovering.load(Ordering::Acquire)
    }

    /// Committed entries applied as no-ops because they did not decode.
    pub fn apply_rejected(&self) -> u64 {
        self.apply_rejected.load(Ordering::Relaxed)
    }

    /// Peer messages the loop's checks dropped or corrected.
    pub fn messages_rejected(&self) -> u64 {
        self.messages_rejected.load(Ordering::Relaxed)
    }

    /// Where this group stands here, for the peer handshake.
    pub fn position(&self) -> GroupPosition {
        GroupPosition {
            shard: self.shard,
            term: self.term(),
            commit: self.commit(),
            last_term: self.last_term.load(Ordering::Acquire),
            last_index: self.last_index.load(Ordering::Acquire),
            recovering: self.recovering(),
        }
    }

    /// Waits until some leader is known (or `deadline`); answers it.
    pub async fn wait_for_leader(&self, deadline: tokio::time::Instant) -> Option<NodeId> {
        loop {
            let changed = self.leader_changed.notified();
            if let Some(leader) = self.leader_id() {
                return Some(leader);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.leader_id();
            }
        }
    }
}

/// A cheap, cloneable way to talk to a group's task.
#[derive(Clone)]
pub(crate) struct GroupHandle {
    pub shared: Arc<GroupShared>,
    client_tx: mpsc::Sender<ClientMsg>,
    raft_tx: mpsc::Sender<PeerInput>,
    #[cfg(feature = "fault-injection")]
    faults: Option<Arc<crate::faults::Faults>>,
}

impl GroupHandle {
    async fn ask<T>(&self, msg: impl FnOnce(oneshot::Sender<Result<T>>) -> ClientMsg) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.client_tx.send(msg(tx)).await.map_err(|_| Error::Shutdown)?;
        rx.await.map_err(|_| Error::Shutdown)?
    }

    /// Whether `mutant` is planted in this node (test-only).
    #[cfg(feature = "fault-injection")]
    pub fn planted(&self, mutant: crate::faults::Mutant) -> bool {
        self.faults.as_ref().is_some_and(|f| f.planted(mutant))
    }

    /// Refuses writes while the group cannot persist its log (disk full): nothing is proposed.
    /// A follower refuses too rather than forward: it could not apply the write, so the client
    /// would wait for nothing and time out on a write that may well have committed.
    pub(crate) fn check_persisting(&self) -> Result<()> {
        if self.shared.persist_failing() {
            return Err(Error::Storage(
                "writes are refused: this node cannot persist its raft log (disk full or failing; see its log)".into(),
            ));
        }
        Ok(())
    }

    /// Proposes an encoded command; answers once this node applied it.
    ///
    /// Refused at once while the group cannot persist its log (disk full): nothing is proposed.
    pub async fn propose(&self, command: Bytes) -> Result<Applied> {
        self.check_persisting()?;
        #[cfg(feature = "fault-injection")]
        if self.planted(crate::faults::Mutant::AckBeforeCommit) && self.shared.is_leader() {
            self.propose_unawaited(command);
            return Ok(Applied { index: 0, output: ApplyOutput::Done });
        }
        self.ask(|reply| ClientMsg::Propose { command, reply: ProposalReply::Local(reply) }).await
    }

    /// The planted `AckBeforeCommit` bug: proposes `command` with nobody waiting for it.
    #[cfg(feature = "fault-injection")]
    fn propose_unawaited(&self, command: Bytes) {
        let group = self.clone();
        tokio::spawn(async move {
            group.ask(|reply| ClientMsg::Propose { command, reply: ProposalReply::Local(reply) }).await
        });
    }

    /// Proposes a command a follower forwarded; the group loop answers `ticket` once the entry
    /// is applied. Queues at once when the mailbox has room; when it is full, a task on
    /// `tasks` waits for room (the same backpressure as a local write).
    pub fn propose_forwarded(&self, command: Bytes, ticket: ForwardTicket, tasks: &TaskTracker) {
        if let Err(e) = self.check_persisting() {
            return ticket.answer(Err(e));
        }
        #[cfg(feature = "fault-injection")]
        if self.planted(crate::faults::Mutant::AckBeforeCommit) && self.shared.is_leader() {
            ticket.answer(Ok(Applied { index: 0, output: ApplyOutput::Done }));
            return self.propose_unawaited(command);
        }
        let msg = ClientMsg::Propose { command, reply: ProposalReply::Forwarded(ticket) };
        match self.client_tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(msg)) => {
                let tx = self.client_tx.clone();
                tasks.spawn(async move {
                    if let Err(mpsc::error::SendError(msg)) = tx.send(msg).await {
                        answer_shutdown(msg);
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(msg)) => answer_shutdown(msg),
        }
    }

    /// Proposes a membership change; answers once applied.
    pub async fn conf_change(&self, change: ConfChange) -> Result<Applied> {
        self.ask(|reply| ClientMsg::ConfChange { change, reply: ProposalReply::Local(reply) }).await
    }

    /// A read index that is safe for a linearizable read once applied locally.
    pub async fn read_index(&self) -> Result<u64> {
        self.ask(|reply| ClientMsg::ReadIndex { reply }).await
    }

    /// Whether the group loop has ended, its last write to the store included.
    pub fn has_ended(&self) -> bool {
        self.shared.ended.load(Ordering::Acquire)
    }

    /// Requests waiting in the client mailbox for the group loop to take them.
    pub fn queued_requests(&self) -> usize {
        self.client_tx.max_capacity() - self.client_tx.capacity()
    }

    /// Waits until this node applied `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<()> {
        let mut rx = self.shared.applied.subscribe();
        rx.wait_for(|applied| *applied >= index).await.map(|_| ()).map_err(|_| Error::Shutdown)
    }

    /// Makes this node the only voter of its group, keeping its state (see
    /// `Group::force_new_cluster`); answers the members it dropped.
    pub async fn force_new_cluster(&self) -> Result<Vec<NodeId>> {
        let (tx, rx) = oneshot::channel();
        self.client_tx.send(ClientMsg::ForceNewCluster { reply: tx }).await.map_err(|_| Error::Shutdown)?;
        rx.await.map_err(|_| Error::Shutdown)?
    }

    /// Starts handing this group's leadership to voter `to` (see [`ClientMsg::TransferLeader`]);
    /// answers once started, not when done (it may fail, and this node then stays leader).
    pub async fn transfer_leader(&self, to: NodeId) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.client_tx
            .send(ClientMsg::TransferLeader { to, reply: tx })
            .await
            .map_err(|_| Error::Shutdown)?;
        rx.await.map_err(|_| Error::Shutdown)?
    }

    /// Makes the group loop panic (test-only).
    #[cfg(feature = "fault-injection")]
    pub async fn inject_panic(&self) {
        let _ = self.client_tx.send(ClientMsg::Panic).await;
    }

    /// The group's current status.
    pub async fn status(&self) -> Result<GroupStatus> {
        let (tx, rx) = oneshot::channel();
        self.client_tx.send(ClientMsg::Status { reply: tx }).await.map_err(|_| Error::Shutdown)?;
        rx.await.map_err(|_| Error::Shutdown)
    }

    /// Hands a peer's Raft message to the group; dropped when the mailbox is full (Raft retries).
    pub fn step(&self, msg: Message) {
        if self.raft_tx.try_send(PeerInput::Message(msg)).is_err() {
            debug!(shard = self.shared.shard, "raft mailbox full or closed; message dropped");
        }
    }

    /// Hands a leader's hibernation notice to the group; dropped when the mailbox is full (the
    /// group then keeps ticking, which is always safe).
    /// Hands a leader's commit notice to the group (dropped when the mailbox is full: the next
    /// append or heartbeat carries the commit too).
    pub fn commit_notice(&self, from: NodeId, term: u64, commit: u64) {
        let _ = self.raft_tx.try_send(PeerInput::Commit { from, term, commit });
    }

    pub fn hibernate_notice(&self, from: NodeId, term: u64, commit: u64) {
        let _ = self.raft_tx.try_send(PeerInput::Hibernate { from, term, commit });
    }

    /// Hands a peer's handshake to the group. Never dropped: when the mailbox is full it waits
    /// on a task (a handshake is not retransmitted as Raft messages are).
    pub fn hello(&self, peer: NodeId, restarted: bool, position: GroupPosition) {
        let input = PeerInput::Hello { peer, restarted, position };
        if let Err(mpsc::error::TrySendError::Full(input)) = self.raft_tx.try_send(input) {
            let tx = self.raft_tx.clone();
            tokio::spawn(async move { tx.send(input).await });
        }
    }
}

/// Answers a request the group never took: the node is stopping.
fn answer_shutdown(msg: ClientMsg) {
    match msg {
        ClientMsg::Propose { reply, .. } | ClientMsg::ConfChange { reply, .. } => {
            reply.send(Err(Error::Shutdown))
        }
        ClientMsg::ReadIndex { reply } => {
            let _ = reply.send(Err(Error::Shutdown));
        }
        ClientMsg::Status { .. } => {}
        ClientMsg::ForceNewCluster { reply } => {
            let _ = reply.send(Err(Error::Shutdown));
        }
        ClientMsg::TransferLeader { reply, .. } => {
            let _ = reply.send(Err(Error::Shutdown));
        }
        #[cfg(feature = "fault-injection")]
        ClientMsg::Panic => {}
    }
}

/// Settings of one group.
pub(crate) struct GroupSettings {
    pub node_id: NodeId,
    pub shard: ShardId,
    pub raft: RaftConfig,
    pub mailbox_capacity: usize,
    pub read_timeout: Duration,
    pub shutdown_grace: Duration,
    /// With durable storage: checkpoints are taken here and the log is compacted behind them.
    pub checkpoints: Option<CheckpointManager>,
    /// The node starts without the Raft state of its previous life (memory storage, one of
    /// several voters): it recovers first (see `recovery`).
    pub recover: bool,
    /// The replica started empty while the node ran, to join its running group (placement):
    /// the log it replays may hold the removal of an earlier replica of this node, followed by
    /// the addition of this one (see `Group::removal_floor`).
    pub fresh: bool,
    #[cfg(feature = "fault-injection")]
    pub faults: Option<Arc<crate::faults::Faults>>,
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

/// Starts a group's task over `store` and `sm`; answers its handle and the task to await.
pub(crate) fn spawn_group<S: LogStore>(
    settings: GroupSettings,
    store: S,
    sm: CacheStateMachine,
    transport: Arc<Transport>,
    cancel: CancellationToken,
) -> Result<(GroupHandle, tokio::task::JoinHandle<()>)> {
    let applied = sm.applied_index();
    let cfg = raft::Config {
        id: settings.node_id,
        election_tick: settings.raft.election_tick,
        heartbeat_tick: settings.raft.heartbeat_tick,
        max_size_per_msg: settings.raft.max_size_per_msg,
        max_inflight_msgs: settings.raft.max_inflight_msgs,
        pre_vote: settings.raft.pre_vote,
        check_quorum: settings.raft.check_quorum,
        read_only_option: ReadOnlyOption::Safe,
        applied,
        // See `tell_commit_when_idle`.
        skip_bcast_commit: true,
        ..Default::default()
    };
    cfg.validate()?;
    let mut store = store;
    // Off-loop writes need a blocking thread to hand the write to and block_in_place to wait
    // for one; a current-thread runtime (some tests) writes in the loop.
    let persist_async = store.writes_off_loop()
        && matches!(
            tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()),
            Ok(tokio::runtime::RuntimeFlavor::MultiThread)
        );
    store.set_snapshot_source(Box::new(sm.snapshot_source()));
    store.set_applied(applied);
    let raw = RawNode::new(&cfg, store, &raft_logger(settings.node_id, settings.shard))?;
    let voters = raw.raft.prs().conf().voters().ids();
    // The only voter (of a new group, or restarted from disk) leads at once instead of after an
    // election timeout, as soon as it applied the committed log (raft-rs refuses to campaign
    // with a conf change, such as a bootstrap entry, still to apply).
    let campaign_when_applied = voters.len() == 1 && voters.contains(settings.node_id);
    let mut settings = settings;
    let checkpoints = settings.checkpoints.take();
    let recovery = settings.recover.then(|| Recovery::new(settings.node_id));
    let (client_tx, client_rx) = mpsc::channel(settings.mailbox_capacity);
    let (raft_tx, raft_rx) = mpsc::channel(settings.mailbox_capacity);
    let shared = Arc::new(GroupShared::new(settings.shard));
    shared.applied.send_replace(applied);
    shared.term.store(raw.raft.term, Ordering::Release);
    shared.commit.store(raw.raft.raft_log.committed, Ordering::Release);
    shared.recovering.store(recovery.is_some(), Ordering::Release);
    shared.last_term.store(raw.raft.raft_log.last_term(), Ordering::Release);
    shared.last_index.store(raw.raft.raft_log.last_index(), Ordering::Release);
    let reports = raft_tx.clone();
    let handle = GroupHandle {
        shared: shared.clone(),
        client_tx,
        raft_tx,
        #[cfg(feature = "fault-injection")]
        faults: settings.faults.clone(),
    };
    let group = Group {
        raw,
        sm,
        shared,
        transport,
        proposals: Proposals::default(),
        gathered: Vec::new(),
        in_flight: std::collections::VecDeque::new(),
        reads: ReadBatches::default(),
        client_rx,
        raft_rx,
        settings,
        recovery,
        started: Instant::now(),
        warned_stuck: false,
        reject_warnings: WarnThrottle::default(),
        campaign_when_applied,
        checkpoints,
        checkpoint_job: None,
        snapshot_transfers: 0,
        cancel: cancel.clone(),
        halted: false,
        removed: false,
        persist_async,
        writes_lost: false,
        commit_told: (0, std::collections::HashMap::new()),
        persist_jobs: std::collections::VecDeque::new(),
        unpersisted: std::collections::VecDeque::new(),
        hibernating: false,
        quiet_ticks: 0,
        reports,
        removal_floor: None,
    };
    group.publish_voters();
    let task = tokio::spawn(group.run(cancel));
    Ok((handle, task))
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
    /// it received. The leader added this replica at or below it, so a removal of this node
    /// below it removed an earlier replica (raft ids are node ids) and is replayed, not obeyed.
    removal_floor: Option<u64>,
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
        if self.may_propose() {
            self.propose_gathered();
        }
        self.start_read_round();
        if self.raw.has_ready() {
            self.on_ready();
        }
        // Persisting this node's own entries can commit a batch (its followers answered
        // first), and a Ready can answer the read round in flight: writes and reads held for
        // them go now, not at the next wake-up.
        let mut more = false;
        if !self.gathered.is_empty() && self.may_propose() {
            self.propose_gathered();
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
                }
                let status = if ok { raft::SnapshotStatus::Finish } else { raft::SnapshotStatus::Failure };
                self.raw.report_snapshot(to, status);
            }
        }
    }

    fn step(&mut self, mut msg: Message) {
        if self.settings.fresh && self.removal_floor.is_none() && msg.get_msg_type() == MessageType::MsgAppend
        {
            self.removal_floor = Some(msg.commit);
        }
        if self.recovery.as_ref().is_some_and(Recovery::waiting) {
            // Phase 1 of a recovery: nothing this node would answer can be trusted yet.
            return;
        }
        match admit::check_against_log(&self.raw.raft, &mut msg) {
            Ok(Admitted::AsIs) => {}
            Ok(Admitted::CommitLowered) => self.note_rejected(&msg, Reject::CommitPastLog),
            Err(reason) => return self.note_rejected(&msg, reason),
        }
        let vote = matches!(msg.get_msg_type(), MessageType::MsgRequestVote | MessageType::MsgRequestPreVote);
        if vote && self.recovery.as_ref().is_some_and(|r| !r.may_vote_for(msg.log_term, msg.index)) {
            debug!(
                shard = self.shared.shard,
                from = msg.from,
                "recovering: vote request for a log behind the floor ignored"
            );
            return;
        }
        if msg.get_msg_type() == MessageType::MsgReadIndex && self.hold_peer_read(&mut msg) {
            return;
        }
        if let Err(e) = self.raw.step(msg) {
            debug!(shard = self.shared.shard, error = %e, "raft refused a message");
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
        }
        self.consider_hibernating();
        let leader = self.shared.leader_id();
        let timeout = self.settings.read_timeout;
        let retry_after = self.settings.raft.election_timeout() / 2;
        self.reads.expire(Instant::now(), retry_after, timeout, || match leader {
            None => Error::NotLeader { leader_hint: None },
            Some(_) => Error::Timeout(timeout),
        });
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

    fn on_client(&mut self, msg: ClientMsg) {
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
            ClientMsg::TransferLeader { to, reply } => {
                let answer = if self.raw.raft.state != StateRole::Leader {
                    Err(self.not_leader())
                } else if to == self.settings.node_id || !self.raw.raft.prs().conf().voters().contains(to) {
                    Err(Error::Membership(format!(
                        "node {to} is not another voter of shard {}",
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

    fn not_leader(&self) -> Error {
        Error::NotLeader { leader_hint: Some(self.raw.raft.leader_id).filter(|id| *id != 0) }
    }

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
    fn tell_commit_when_idle(&mut self) {
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
            let _ = self.transport.send(*id, notice.to_frame());
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
    fn on_commit_notice(&mut self, from: NodeId, term: u64, commit: u64) {
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

    fn may_propose(&mut self) -> bool {
        let (term, committed) = (self.raw.raft.term, self.raw.raft.raft_log.committed);
        self.in_flight.retain(|&(t, last)| t == term && last > committed);
        self.raw.raft.state != StateRole::Leader
            || self.in_flight.len() < UNCOMMITTED_BATCHES
            || self.gathered.len() >= GATHER_LIMIT
    }

    /// Proposes every write gathered this pass as one `MsgPropose` carrying all their entries.
    /// raft-rs then appends them together and sends each follower one append for the lot,
    /// where proposing them one by one sent one append (and drew one response) per write.
    fn propose_gathered(&mut self) {
        if self.gathered.is_empty() {
            return;
        }
        let gathered = std::mem::take(&mut self.gathered);
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

    fn propose_conf_change(&mut self, change: ConfChange, reply: ProposalReply) {
        if self.raw.raft.state != StateRole::Leader {
            reply.send(Err(self.not_leader()));
            return;
        }
        let before = self.raw.raft.raft_log.last_index();
        let result = self.raw.propose_conf_change(Vec::new(), change);
        self.track(before, result, reply);
    }

    fn track(&mut self, before: u64, result: raft::Result<()>, reply: ProposalReply) {
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

    fn status(&self) -> GroupStatus {
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
            voters,
            learners,
            recovery: self.recovery_state(),
            pending_proposals: self.proposals.len(),
            replica_progress,
            hibernating: self.hibernating,
        }
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
