//! A group's mailboxes and its handle: what peers ([`PeerInput`]) and clients ([`ClientMsg`])
//! hand the group loop, and the cheap, cloneable [`GroupHandle`] the rest of the node talks to
//! the loop through.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raft::eraftpb::{ConfChange, Message};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::GroupShared;
use crate::consensus::pending::{ProposalReply, ReadReply};
#[cfg(feature = "fault-injection")]
use crate::consensus::state_machine::ApplyOutput;
use crate::consensus::{Applied, GroupStatus};
use crate::error::{Error, Result};
use crate::transport::envelope::GroupPosition;
use crate::transport::forward::ForwardTicket;
use crate::types::NodeId;

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
    /// The group's members as a running member answered them, for a replica that started
    /// with its command line's (see `learn_members`).
    LearnMembers {
        voters: Vec<NodeId>,
        learners: Vec<NodeId>,
    },
    /// Test-only: the loop panics, as a bug would make it (fail-fast tests).
    #[cfg(feature = "fault-injection")]
    Panic,
}

/// A cheap, cloneable way to talk to a group's task.
#[derive(Clone)]
pub(crate) struct GroupHandle {
    pub shared: Arc<GroupShared>,
    pub(super) client_tx: mpsc::Sender<ClientMsg>,
    pub(super) raft_tx: mpsc::Sender<PeerInput>,
    #[cfg(feature = "fault-injection")]
    pub(super) faults: Option<Arc<crate::faults::Faults>>,
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
        if let Some(why) = self.shared.persist_error() {
            return Err(Error::Storage(format!(
                "writes are refused: this node cannot persist its raft log: {why}"
            )));
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

    /// [`Self::wait_applied`], given up with `Shutdown` once `gone` says this replica serves
    /// the shard no more (looked at every `every`): a replica removed from its group may never
    /// apply `index`.
    pub async fn wait_applied_unless(
        &self,
        index: u64,
        every: Duration,
        gone: impl Fn() -> bool,
    ) -> Result<()> {
        let mut rx = self.shared.applied.subscribe();
        loop {
            if *rx.borrow_and_update() >= index {
                return Ok(());
            }
            if gone() {
                return Err(Error::Shutdown);
            }
            tokio::select! {
                changed = rx.changed() => changed.map_err(|_| Error::Shutdown)?,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Makes this node the only voter of its group, keeping its state (see
    /// `Group::force_new_cluster`); answers the members it dropped.
    pub async fn force_new_cluster(&self) -> Result<Vec<NodeId>> {
        let (tx, rx) = oneshot::channel();
        self.client_tx.send(ClientMsg::ForceNewCluster { reply: tx }).await.map_err(|_| Error::Shutdown)?;
        rx.await.map_err(|_| Error::Shutdown)?
    }

    /// Tells a replica that recovers the group's members as a running member answered them
    /// (`cache::meta_conf`): its recovery counts the answers of those voters instead of its
    /// configuration's, and it hears their leader's messages before its log names them (see
    /// `Group::learn_members`).
    pub async fn learn_members(&self, voters: Vec<NodeId>, learners: Vec<NodeId>) -> Result<()> {
        self.client_tx.send(ClientMsg::LearnMembers { voters, learners }).await.map_err(|_| Error::Shutdown)
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
pub(super) fn answer_shutdown(msg: ClientMsg) {
    match msg {
        ClientMsg::Propose { reply, .. } | ClientMsg::ConfChange { reply, .. } => {
            reply.send(Err(Error::Shutdown))
        }
        ClientMsg::ReadIndex { reply } => {
            let _ = reply.send(Err(Error::Shutdown));
        }
        ClientMsg::Status { .. } | ClientMsg::LearnMembers { .. } => {}
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
