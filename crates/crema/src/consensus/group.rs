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
//! Apply answers each proposal by its `(index, term)`; a proposal whose entry was overwritten by
//! another leader's answers `ProposalDropped`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protobuf::Message as PbMessage;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::{RawNode, ReadOnlyOption, StateRole};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::command::CacheCommand;
use super::logger::raft_logger;
use super::pending::{ctx_bytes, ctx_from_bytes, ProposalReply, Proposals, ReadBatches, ReadReply};
use super::state_machine::{ApplyOutput, CacheStateMachine};
use super::storage::LogStore;
use super::{Applied, GroupStatus, Role};
use crate::config::{RaftConfig, MAX_FRAME_BYTES};
use crate::error::{Error, Result};
use crate::transport::envelope::Envelope;
use crate::transport::Transport;
use crate::types::{NodeId, ShardId};

/// Requests handled per mailbox per pass, so ticks and Readies are never starved.
const DRAIN_LIMIT: usize = 4096;

/// What a client (the cache API, a forwarded request, an admin call) asks of the group.
pub(crate) enum ClientMsg {
    Propose { command: Bytes, reply: ProposalReply },
    ConfChange { change: ConfChange, reply: ProposalReply },
    ReadIndex { reply: ReadReply },
    Status { reply: oneshot::Sender<GroupStatus> },
}

/// State the loop publishes for handles to read without a round trip.
pub(crate) struct GroupShared {
    pub shard: ShardId,
    role: AtomicU8,
    leader: AtomicU64,
    term: AtomicU64,
    commit: AtomicU64,
    applied: watch::Sender<u64>,
    /// Set when this node may have lost its Raft state (memory storage, restarted into a cluster
    /// that had already committed): it neither votes nor campaigns until it hears from a leader.
    probation: AtomicBool,
    leader_changed: Notify,
}

impl GroupShared {
    fn new(shard: ShardId) -> Self {
        Self {
            shard,
            role: AtomicU8::new(Role::Follower as u8),
            leader: AtomicU64::new(0),
            term: AtomicU64::new(0),
            commit: AtomicU64::new(0),
            applied: watch::Sender::new(0),
            probation: AtomicBool::new(false),
            leader_changed: Notify::new(),
        }
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

    pub fn enter_probation(&self) {
        self.probation.store(true, Ordering::Release);
    }

    pub fn in_probation(&self) -> bool {
        self.probation.load(Ordering::Acquire)
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
    raft_tx: mpsc::Sender<Message>,
}

impl GroupHandle {
    async fn ask<T>(&self, msg: impl FnOnce(oneshot::Sender<Result<T>>) -> ClientMsg) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.client_tx.send(msg(tx)).await.map_err(|_| Error::Shutdown)?;
        rx.await.map_err(|_| Error::Shutdown)?
    }

    /// Proposes an encoded command; answers once this node applied it.
    pub async fn propose(&self, command: Bytes) -> Result<Applied> {
        self.ask(|reply| ClientMsg::Propose { command, reply }).await
    }

    /// Proposes a membership change; answers once applied.
    pub async fn conf_change(&self, change: ConfChange) -> Result<Applied> {
        self.ask(|reply| ClientMsg::ConfChange { change, reply }).await
    }

    /// A read index that is safe for a linearizable read once applied locally.
    pub async fn read_index(&self) -> Result<u64> {
        self.ask(|reply| ClientMsg::ReadIndex { reply }).await
    }

    /// Waits until this node applied `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<()> {
        let mut rx = self.shared.applied.subscribe();
        rx.wait_for(|applied| *applied >= index).await.map(|_| ()).map_err(|_| Error::Shutdown)
    }

    /// The group's current status.
    pub async fn status(&self) -> Result<GroupStatus> {
        let (tx, rx) = oneshot::channel();
        self.client_tx.send(ClientMsg::Status { reply: tx }).await.map_err(|_| Error::Shutdown)?;
        rx.await.map_err(|_| Error::Shutdown)
    }

    /// Hands a peer's Raft message to the group; dropped when the mailbox is full (Raft retries).
    pub fn step(&self, msg: Message) {
        if self.raft_tx.try_send(msg).is_err() {
            debug!(shard = self.shared.shard, "raft mailbox full or closed; message dropped");
        }
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
        ..Default::default()
    };
    cfg.validate()?;
    let mut store = store;
    store.set_snapshot_source(Box::new(sm.snapshot_source()));
    store.set_applied(applied);
    let mut raw = RawNode::new(&cfg, store, &raft_logger(settings.node_id, settings.shard))?;
    let voters = raw.raft.prs().conf().voters().ids();
    if voters.len() == 1 && voters.contains(settings.node_id) && raw.raft.term == 0 {
        // The only voter of a new group: lead at once instead of after an election timeout.
        raw.campaign()?;
    }
    let (client_tx, client_rx) = mpsc::channel(settings.mailbox_capacity);
    let (raft_tx, raft_rx) = mpsc::channel(settings.mailbox_capacity);
    let shared = Arc::new(GroupShared::new(settings.shard));
    shared.applied.send_replace(applied);
    let handle = GroupHandle { shared: shared.clone(), client_tx, raft_tx };
    let group = Group {
        raw,
        sm,
        shared,
        transport,
        proposals: Proposals::default(),
        reads: ReadBatches::default(),
        client_rx,
        raft_rx,
        settings,
        heard_leader: false,
    };
    let task = tokio::spawn(group.run(cancel));
    Ok((handle, task))
}

struct Group<S: LogStore> {
    raw: RawNode<S>,
    sm: CacheStateMachine,
    shared: Arc<GroupShared>,
    transport: Arc<Transport>,
    proposals: Proposals,
    reads: ReadBatches,
    client_rx: mpsc::Receiver<ClientMsg>,
    raft_rx: mpsc::Receiver<Message>,
    settings: GroupSettings,
    heard_leader: bool,
}

impl<S: LogStore> Group<S> {
    async fn run(mut self, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(self.settings.raft.tick_interval());
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(msg) = self.raft_rx.recv() => self.step(msg),
                Some(msg) = self.client_rx.recv() => self.on_client(msg),
                _ = ticker.tick() => self.tick(),
            }
            self.pass();
        }
        self.drain_before_exit(&mut ticker).await;
    }

    /// The rest of a loop pass: drain the mailboxes, start a read round, handle the Ready.
    fn pass(&mut self) {
        for _ in 0..DRAIN_LIMIT {
            match self.raft_rx.try_recv() {
                Ok(msg) => self.step(msg),
                Err(_) => break,
            }
        }
        for _ in 0..DRAIN_LIMIT {
            match self.client_rx.try_recv() {
                Ok(msg) => self.on_client(msg),
                Err(_) => break,
            }
        }
        if let Some(ctx) = self.reads.start_round(Instant::now()) {
            self.raw.read_index(ctx_bytes(ctx));
        }
        if self.raw.has_ready() {
            self.on_ready();
        }
    }

    /// Graceful stop: refuse new requests, give in-flight proposals a short grace to commit, then
    /// answer whatever is left with `Shutdown`.
    async fn drain_before_exit(&mut self, ticker: &mut tokio::time::Interval) {
        self.client_rx.close();
        while let Ok(msg) = self.client_rx.try_recv() {
            self.on_client(msg);
        }
        let deadline = tokio::time::Instant::now() + self.settings.shutdown_grace;
        while self.proposals.len() > 0 && self.raw.raft.state == StateRole::Leader {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                Some(msg) = self.raft_rx.recv() => self.step(msg),
                _ = ticker.tick() => self.tick(),
            }
            self.pass();
        }
        self.proposals.fail_all(|| Error::Shutdown);
        self.reads.fail_all(|| Error::Shutdown);
        self.shared.role.store(Role::Follower as u8, Ordering::Release);
        self.shared.leader.store(0, Ordering::Release);
    }

    fn probation_blocks_votes(&self) -> bool {
        !self.heard_leader && self.shared.in_probation()
    }

    fn step(&mut self, msg: Message) {
        let vote = matches!(msg.get_msg_type(), MessageType::MsgRequestVote | MessageType::MsgRequestPreVote);
        if vote && self.probation_blocks_votes() {
            debug!(shard = self.shared.shard, from = msg.from, "in probation: vote request ignored");
            return;
        }
        if let Err(e) = self.raw.step(msg) {
            debug!(shard = self.shared.shard, error = %e, "raft refused a message");
        }
    }

    fn tick(&mut self) {
        if self.raw.raft.leader_id != raft::INVALID_ID {
            self.heard_leader = true;
        }
        // In probation a follower must not campaign (that is a vote for itself): do not tick.
        if !(self.probation_blocks_votes() && self.raw.raft.state == StateRole::Follower) {
            self.raw.tick();
        }
        let leader = self.shared.leader_id();
        let timeout = self.settings.read_timeout;
        self.reads.expire(Instant::now(), timeout, || match leader {
            None => Error::NotLeader { leader_hint: None },
            Some(_) => Error::Timeout(timeout),
        });
    }

    fn on_client(&mut self, msg: ClientMsg) {
        match msg {
            ClientMsg::Propose { command, reply } => self.propose(command, reply),
            ClientMsg::ConfChange { change, reply } => self.propose_conf_change(change, reply),
            ClientMsg::ReadIndex { reply } => self.reads.push(reply),
            ClientMsg::Status { reply } => {
                let _ = reply.send(self.status());
            }
        }
    }

    fn not_leader(&self) -> Error {
        Error::NotLeader { leader_hint: Some(self.raw.raft.leader_id).filter(|id| *id != 0) }
    }

    fn propose(&mut self, command: Bytes, reply: ProposalReply) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        let before = self.raw.raft.raft_log.last_index();
        let result = self.raw.propose(Vec::new(), command.to_vec());
        self.track(before, result, reply);
    }

    fn propose_conf_change(&mut self, change: ConfChange, reply: ProposalReply) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(self.not_leader()));
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
                let _ = reply.send(Err(Error::ProposalDropped));
            }
            Err(e) => {
                let _ = reply.send(Err(Error::Raft(e)));
            }
        }
    }

    fn on_ready(&mut self) {
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
            if let Some(ctx) = ctx_from_bytes(&rs.request_ctx) {
                self.reads.complete(ctx, rs.index);
            }
        }
        self.apply(ready.take_committed_entries());
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
        self.raw.advance_apply();
        self.shared.commit.store(self.raw.raft.raft_log.committed, Ordering::Release);
        self.compact_log();
    }

    fn publish_soft_state(&mut self, leader: NodeId, role: StateRole) {
        let previous = self.shared.leader.swap(leader, Ordering::AcqRel);
        self.shared.role.store(Role::from(role) as u8, Ordering::Release);
        if leader != raft::INVALID_ID {
            self.heard_leader = true;
        }
        if previous != leader {
            self.shared.leader_changed.notify_waiters();
            info!(shard = self.shared.shard, leader, term = self.raw.raft.term, ?role, "leader changed");
        }
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for msg in msgs {
            let to = msg.to;
            let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            let bytes = msg.write_to_bytes().expect("encoding a raft message cannot fail");
            let frame = Envelope::Raft { shard: self.shared.shard, message: bytes.into() }.to_frame();
            if frame.len() > MAX_FRAME_BYTES {
                // Only a snapshot of a large cache can get here; the peer would refuse the frame
                // and drop the connection. Chunked snapshot transfer is not built yet.
                warn!(
                    shard = self.shared.shard,
                    to,
                    bytes = frame.len(),
                    "message over the frame limit not sent"
                );
                if is_snapshot {
                    self.raw.report_snapshot(to, raft::SnapshotStatus::Failure);
                }
                continue;
            }
            if let Err(e) = self.transport.send(to, frame) {
                debug!(shard = self.shared.shard, to, error = %e, "raft message dropped");
                self.raw.report_unreachable(to);
                if is_snapshot {
                    self.raw.report_snapshot(to, raft::SnapshotStatus::Failure);
                }
            }
        }
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
        info!(shard = self.shared.shard, index = meta.index, entries = count, elapsed = ?started.elapsed(), "installed snapshot");
    }

    fn apply(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        for entry in entries {
            let (index, term) = (entry.index, entry.term);
            let result = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    self.sm.advance_to(index);
                    Ok(ApplyOutput::Done)
                }
                EntryType::EntryNormal => {
                    let command = CacheCommand::decode(&entry.data).unwrap_or_else(|e| {
                        panic!("shard {} entry {index} cannot be decoded ({e}): corrupt log or incompatible version", self.shared.shard)
                    });
                    Ok(self.sm.apply(index, &command))
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => self.apply_conf_change(&entry),
            };
            if let Some(reply) = self.proposals.settle(index, term) {
                let _ = reply.send(result.map(|output| Applied { index, output }));
            }
        }
        let applied = self.sm.applied_index();
        self.raw.mut_store().set_applied(applied);
        self.shared.applied.send_replace(applied);
    }

    fn apply_conf_change(&mut self, entry: &Entry) -> Result<ApplyOutput> {
        self.sm.advance_to(entry.index);
        let corrupt = |e: protobuf::ProtobufError| -> ! {
            panic!("conf change at {} cannot be decoded: {e}", entry.index)
        };
        let (applied, changes) = if entry.get_entry_type() == EntryType::EntryConfChange {
            let cc = ConfChange::parse_from_bytes(&entry.data).unwrap_or_else(|e| corrupt(e));
            (self.raw.apply_conf_change(&cc), vec![(cc.change_type, cc.node_id, cc.context)])
        } else {
            let cc = ConfChangeV2::parse_from_bytes(&entry.data).unwrap_or_else(|e| corrupt(e));
            let changes = cc.changes.iter().map(|c| (c.change_type, c.node_id, cc.context.clone())).collect();
            (self.raw.apply_conf_change(&cc), changes)
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
            self.apply_membership(kind, id, &context);
        }
        self.raw
            .mut_store()
            .set_conf_state(cs)
            .unwrap_or_else(|e| panic!("persisting conf state failed: {e}"));
        Ok(ApplyOutput::Done)
    }

    fn apply_membership(&mut self, kind: ConfChangeType, id: NodeId, context: &[u8]) {
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
                if id != self.settings.node_id {
                    self.transport.remove_peer(id);
                }
                info!(shard = self.shared.shard, node = id, "member removed");
            }
        }
    }

    /// Keeps at most `max_log_entries` applied entries; compacts in steps of a quarter of that.
    fn compact_log(&mut self) {
        let keep = self.settings.raft.max_log_entries;
        let applied = self.sm.applied_index();
        let first = self.raw.raft.raft_log.first_index();
        if applied + 1 >= first + keep + keep / 4 {
            let store = self.raw.mut_store();
            store.compact(applied + 1 - keep).unwrap_or_else(|e| panic!("compacting the log failed: {e}"));
        }
    }

    fn status(&self) -> GroupStatus {
        let raft = &self.raw.raft;
        let conf = raft.prs().conf();
        let mut voters: Vec<NodeId> = conf.voters().ids().iter().collect();
        voters.sort_unstable();
        let mut learners: Vec<NodeId> = conf.learners().iter().copied().collect();
        learners.sort_unstable();
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
            probation: self.probation_blocks_votes(),
            pending_proposals: self.proposals.len(),
        }
    }
}
