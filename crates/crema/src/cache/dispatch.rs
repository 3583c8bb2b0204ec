//! The node's side of the transport: what to do with each envelope a peer sends.
//!
//! Raft messages go to their group's mailbox; a forwarded write is checked (decoded and
//! validated: a peer must never get garbage into the log) and proposed on a tracked task whose
//! answer goes back to the sender; forward replies complete the follower's waiting request.
//! Handshakes tell a memory node that it restarted into an existing cluster (probation).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use protobuf::Message as PbMessage;
use raft::eraftpb::Message;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::consensus::command::{CommandLimits, StampedCommand};
use crate::consensus::group::GroupHandle;
use crate::consensus::storage::BOOTSTRAP_TERM;
use crate::error::Error;
use crate::transport::envelope::Envelope;
use crate::transport::forward::{ForwardTicket, Forwarder, SeenRequests};
use crate::transport::snapshot_assembly::{Piece, SnapshotAssembler};
use crate::transport::{Inbound, Transport, TransportError};
use crate::types::{NodeId, ShardId};

/// Routes inbound envelopes to groups and the forwarder.
pub(crate) struct Dispatcher {
    pub groups: OnceLock<Vec<GroupHandle>>,
    pub forwarder: Forwarder,
    pub tasks: TaskTracker,
    pub limits: CommandLimits,
    snapshots: Mutex<SnapshotAssembler>,
    /// Forwarded request ids taken lately, per sender: a repeated frame is not proposed again.
    seen_forwards: Mutex<HashMap<NodeId, SeenRequests>>,
}

impl Dispatcher {
    pub fn new(limits: CommandLimits) -> Self {
        Self {
            groups: OnceLock::new(),
            forwarder: Forwarder::default(),
            tasks: TaskTracker::new(),
            limits,
            snapshots: Mutex::default(),
            seen_forwards: Mutex::default(),
        }
    }

    fn group(&self, shard: ShardId) -> Option<&GroupHandle> {
        self.groups.get()?.get(shard as usize)
    }

    fn on_forward(
        &self,
        transport: &Arc<Transport>,
        from: NodeId,
        shard: ShardId,
        request_id: u64,
        command: Bytes,
    ) {
        let first = self
            .seen_forwards
            .lock()
            .expect("seen forwards poisoned")
            .entry(from)
            .or_default()
            .first_time(request_id);
        if !first {
            debug!(from, request_id, "repeated forward dropped");
            return;
        }
        let checked = StampedCommand::decode(&command).and_then(|c| c.command.validate(&self.limits));
        let ticket = ForwardTicket { transport: transport.clone(), to: from, request_id };
        match (checked, self.group(shard)) {
            (Err(e), _) => ticket.answer(Err(e.into())),
            (Ok(()), None) => ticket.answer(Err(Error::Transport(TransportError::Remote(format!(
                "no shard {shard} on this node"
            ))))),
            (Ok(()), Some(group)) => group.propose_forwarded(command, ticket, &self.tasks),
        }
    }
}

impl Inbound for Dispatcher {
    fn on_envelope(&self, transport: &Arc<Transport>, from: NodeId, envelope: Envelope) {
        match envelope {
            Envelope::Raft { shard, message } => match Message::parse_from_bytes(&message) {
                Ok(msg) => match self.group(shard) {
                    Some(group) => group.step(msg),
                    None => warn!(from, shard, "raft message for an unknown shard dropped"),
                },
                Err(e) => warn!(from, shard, error = %e, "undecodable raft message dropped"),
            },
            Envelope::Forward { shard, request_id, command } => {
                self.on_forward(transport, from, shard, request_id, command);
            }
            Envelope::ForwardReply { request_id, result } => self.forwarder.complete(request_id, result),
            Envelope::SnapshotChunk { shard, transfer, header, total_len, offset, data } => {
                let piece = Piece { transfer, header, total_len, offset, data };
                let assembled =
                    self.snapshots.lock().expect("snapshot assembler poisoned").accept(from, shard, piece);
                match (assembled, self.group(shard)) {
                    (Ok(Some(msg)), Some(group)) => {
                        info!(from, shard, bytes = msg.get_snapshot().data.len(), "snapshot received");
                        group.step(msg);
                    }
                    (Ok(Some(_)), None) => warn!(from, shard, "snapshot for an unknown shard dropped"),
                    (Ok(None), _) => {}
                    (Err(e), _) => warn!(from, shard, error = %e, "snapshot transfer dropped"),
                }
            }
            Envelope::Hello { .. } => {}
        }
    }

    fn on_hello(&self, from: NodeId, _term: u64, commit: u64) {
        let Some(groups) = self.groups.get() else { return };
        let (term, our_commit) = self.local_progress();
        // We never saw an election (nothing past the bootstrap term), but the peer's cluster has
        // committed more than we have: this node may be a restarted memory node that voted
        // before. It must not vote again until it has heard from a leader.
        if term <= BOOTSTRAP_TERM && commit > our_commit {
            for group in groups.iter().filter(|g| !g.shared.in_probation()) {
                info!(
                    peer = from,
                    shard = group.shared.shard,
                    "joining a cluster that already committed: no votes until a leader is heard"
                );
                group.shared.enter_probation();
            }
        }
    }

    fn local_progress(&self) -> (u64, u64) {
        let groups = self.groups.get().map(Vec::as_slice).unwrap_or_default();
        let term = groups.iter().map(|g| g.shared.term()).max().unwrap_or(0);
        let commit = groups.iter().map(|g| g.shared.commit()).max().unwrap_or(0);
        (term, commit)
    }
}
