//! Requests for shards this node holds no replica of: with placement each shard lives on
//! `replica_factor` nodes only (see `crate::multiraft::placement`), and any node still answers
//! for every key.
//!
//! - A write goes, with a write session as every forwarded write does (`cache::route`), to the
//!   shard's leader as gossip last named it, else to each member of the shard in the shard map
//!   in turn; a member that does not lead answers with the leader it knows, and the write
//!   follows it. A resent copy is applied once, whoever gets it.
//! - A read ([`RemoteRead`]) goes to the same nodes: the one that answers holds a replica and,
//!   for a linearizable read, first runs a Read-Index round of the shard and waits until it
//!   applied that index, so the answer is as fresh as a local linearizable read.
//!
//! Pure plumbing over `Envelope::Forward` and `Envelope::Read`; what a shard's holders are
//! comes from the shard map the meta shard agreed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::debug;

use super::keyspace::off_runtime;
use super::scan_order::{cut_to_bytes, smallest, MAX_SCAN_KEEP};
use super::table::ShardTable;
use super::DistributedCache;
use crate::consensus::command::StampedCommand;
use crate::consensus::sessions::SessionStamp;
use crate::consensus::Applied;
use crate::error::{Error, Result};
use crate::multiraft::coordinator::CoordinatorState;
use crate::multiraft::ShardMapStore;
use crate::transport::envelope::{Envelope, RemoteAnswer, RemoteRead, WireError};
use crate::transport::forward::ForwardSlot;
use crate::transport::Transport;
use crate::types::{NodeId, ShardId};

/// Reads this node sent and waits for, by request id.
#[derive(Default)]
pub(crate) struct RemoteReads {
    next: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<std::result::Result<RemoteAnswer, WireError>>>>,
}

impl RemoteReads {
    fn open(&self) -> (u64, oneshot::Receiver<std::result::Result<RemoteAnswer, WireError>>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("remote reads poisoned").insert(id, tx);
        (id, rx)
    }

    fn forget(&self, id: u64) {
        self.pending.lock().expect("remote reads poisoned").remove(&id);
    }

    /// A peer answered read `id` (an answer nobody waits for any more is dropped).
    pub fn complete(&self, id: u64, result: std::result::Result<RemoteAnswer, WireError>) {
        if let Some(tx) = self.pending.lock().expect("remote reads poisoned").remove(&id) {
            let _ = tx.send(result);
        }
    }
}

/// Serves a peer's read of shard `shard` from this node's replica and answers it.
pub(crate) async fn serve_read(
    table: Arc<ShardTable>,
    transport: Arc<Transport>,
    (from, request_id): (NodeId, u64),
    (shard, linearizable, read): (ShardId, bool, RemoteRead),
    timeout: Duration,
    max_frame_bytes: usize,
) {
    let answered = async {
        if let RemoteRead::Replica { not_member } = read {
            let Some(held) = table.get(shard) else {
                return Ok(RemoteAnswer::Replica { held: false, fresh: false });
            };
            let shared = &held.group.shared;
            let fresh = shared.is_fresh();
            // Only the leader this replica follows (or none known) may call it stale.
            if not_member && !fresh && shared.leader_id().is_none_or(|l| l == from) && shard != 0 {
                tracing::info!(
                    shard,
                    leader = from,
                    "the shard's leader no longer counts this replica: it is retired"
                );
                shared.mark_removed();
            }
            return Ok(RemoteAnswer::Replica { held: true, fresh });
        }
        let held = table
            .get(shard)
            .filter(|h| !h.group.shared.removed())
            .ok_or_else(|| WireError::Other(format!("no shard {shard} on this node")))?;
        // The membership is this replica's to tell; its data only while it serves: a diverged
        // replica holds another history, and one that cannot persist would make the asker wait
        // for its disk (the asker tries the next member).
        if !matches!(read, RemoteRead::Members) && !held.group.shared.serves() {
            return Err(WireError::Other(format!("shard {shard}'s replica here serves no reads")));
        }
        if linearizable {
            let index = held.group.read_index().await.map_err(|e| WireError::from(&e))?;
            held.group.wait_applied(index).await.map_err(|e| WireError::from(&e))?;
        }
        let now = crate::cache::storage::unix_now_ms();
        let storage = &held.storage;
        Ok(match read {
            RemoteRead::Entries { keys } => {
                let _whole = (keys.len() > 1).then(|| storage.many_keys_read());
                RemoteAnswer::Entries(
                    keys.iter()
                        .map(|k| storage.entry_at(k, now).map(|e| (e.value, e.expires_at_ms)))
                        .collect(),
                )
            }
            RemoteRead::Keys { pattern } => {
                let storage = storage.clone();
                let walk = off_runtime(move || storage.matching_keys(pattern.as_deref()));
                RemoteAnswer::Keys(walk.await.map_err(|e| WireError::from(&e))?)
            }
            RemoteRead::Scan { cursor, keep, pattern } => {
                let storage = storage.clone();
                let keep = (keep as usize).clamp(1, MAX_SCAN_KEEP);
                let budget = max_frame_bytes / 2;
                let walk = off_runtime(move || {
                    let walk =
                        |visit: &mut dyn FnMut(&Bytes) -> bool| storage.for_each_live_key(|k, _| visit(k));
                    let (mut kept, more) = smallest(walk, cursor, keep, pattern.as_deref());
                    let cut = cut_to_bytes(&mut kept, budget);
                    RemoteAnswer::ScanPage {
                        keys: kept.into_iter().map(|(_, k)| k).collect(),
                        more: more || cut,
                    }
                });
                walk.await.map_err(|e| WireError::from(&e))?
            }
            RemoteRead::Count => {
                let storage = storage.clone();
                RemoteAnswer::Count(
                    off_runtime(move || storage.live_count()).await.map_err(|e| WireError::from(&e))?,
                )
            }
            // Answered above.
            RemoteRead::Replica { .. } => RemoteAnswer::Replica { held: true, fresh: false },
            RemoteRead::Members => RemoteAnswer::Members {
                voters: held.group.shared.voters(),
                learners: held.group.shared.learners(),
            },
            RemoteRead::Watch { keys } => {
                // The index first: a key read after it may be newer (a needless abort), never
                // older.
                let index = held.group.shared.applied();
                RemoteAnswer::Watched(
                    index,
                    keys.iter().map(|k| storage.entry_at(k, now).is_some()).collect(),
                )
            }
        })
    };
    let mut result = tokio::time::timeout(timeout, answered)
        .await
        .unwrap_or(Err(WireError::Timeout(timeout.as_millis() as u64)));
    // Measured before it is encoded: found in review, entries of one large key asked for a
    // million times would have been encoded whole (terabytes) before the frame was found too
    // large.
    let too_large = |bytes: usize| {
        Err(WireError::Other(format!(
            "the answer of shard {shard} is larger than a peer frame ({bytes} bytes); ask for less"
        )))
    };
    let bytes = match &result {
        Ok(RemoteAnswer::Entries(entries)) => {
            entries.iter().map(|e| 16 + e.as_ref().map_or(0, |(value, _)| value.len())).sum()
        }
        Ok(RemoteAnswer::Keys(keys) | RemoteAnswer::ScanPage { keys, .. }) => {
            keys.iter().map(|k| 8 + k.len()).sum()
        }
        _ => 0,
    };
    if bytes > max_frame_bytes {
        result = too_large(bytes);
    }
    let mut frame = Envelope::ReadReply { request_id, result }.to_frame();
    if frame.len() > max_frame_bytes {
        frame = Envelope::ReadReply { request_id, result: too_large(frame.len()) }.to_frame();
    }
    if let Err(e) = transport.send(from, frame) {
        debug!(from, shard, error = %e, "a read answer was not sent");
    }
}

/// The nodes to ask about shard `shard`: its members in the agreed shard map (else every
/// peer), the hinted leader first.
pub(super) fn targets(
    me: NodeId,
    shard: ShardId,
    map: &ShardMapStore,
    hints: &CoordinatorState,
    transport: &Transport,
) -> Targets {
    let mut candidates: Vec<NodeId> = match map.placement(shard) {
        Some(p) => p.members,
        None => transport.peer_ids(),
    };
    candidates.retain(|n| *n != me);
    // Spread the askers over the members.
    let start = if candidates.is_empty() { 0 } else { rand::random::<u32>() as usize % candidates.len() };
    let named = hints.hinted_leader(shard).filter(|l| *l != me);
    Targets { candidates, next: start, named }
}

/// Sends a [`RemoteRead`] to a shard's holders until one answers.
pub(super) struct Asker<'a> {
    pub me: NodeId,
    pub transport: &'a Transport,
    pub reads: &'a RemoteReads,
    /// How long the whole read may take.
    pub timeout: Duration,
    /// The pause before asking again.
    pub tick: Duration,
    /// How long one holder may take to answer before the next is asked.
    pub patience: Duration,
}

/// How long a holder may take over a walk of its shard's keys before another is asked.
const WALK_PATIENCE: Duration = Duration::from_secs(3);

impl Asker<'_> {
    /// Asks `targets` in turn for `read` of shard `shard` (see the module docs).
    ///
    /// # Errors
    /// `Timeout` when none answered within the timeout, `NotLeader` when none is known, a
    /// transport error when the answer would not fit in a frame.
    pub async fn ask(
        &self,
        mut targets: Targets,
        shard: ShardId,
        read: RemoteRead,
        linearizable: bool,
    ) -> Result<RemoteAnswer> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if Instant::now() >= deadline {
                return Err(Error::Timeout(self.timeout));
            }
            let Some(target) = targets.pick() else {
                return Err(Error::NotLeader { leader_hint: None });
            };
            let (request_id, reply) = self.reads.open();
            let frame = Envelope::Read { shard, request_id, linearizable, read: read.clone() };
            if self.transport.send(target, frame.to_frame()).is_err() {
                self.reads.forget(request_id);
                tokio::time::sleep(self.tick).await;
                continue;
            }
            // A walk over a shard's keys takes its time: asked again too soon, the holder would
            // walk again for every copy (the copies wait their turn behind the first).
            let walks = matches!(read, RemoteRead::Keys { .. } | RemoteRead::Count | RemoteRead::Scan { .. });
            let least = if walks { WALK_PATIENCE } else { Duration::from_secs(1) };
            let resend_at = (Instant::now() + self.patience.max(least)).min(deadline);
            let answer = tokio::select! {
                reply = reply => reply,
                _ = tokio::time::sleep_until(resend_at) => {
                    self.reads.forget(request_id);
                    continue;
                }
            };
            match answer {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(WireError::NotLeader(Some(leader)))) if leader != self.me => {
                    targets.named = Some(leader);
                }
                Ok(Err(WireError::Other(why))) if why.contains("larger than a peer frame") => {
                    return Err(Error::Transport(crate::transport::TransportError::Remote(why)));
                }
                Ok(Err(_)) => tokio::time::sleep(self.tick).await,
                Err(_) => return Err(Error::Shutdown),
            }
        }
    }
}

/// Where the next copy of a remote request goes: the leader a member named, else the one
/// gossip names, else the shard's members in turn.
pub(super) struct Targets {
    candidates: Vec<NodeId>,
    next: usize,
    named: Option<NodeId>,
}

impl Targets {
    /// Node `id` alone.
    pub fn only(id: NodeId) -> Self {
        Self { candidates: vec![id], next: 0, named: None }
    }

    /// `ids` in turn.
    pub fn among(ids: Vec<NodeId>) -> Self {
        Self { candidates: ids, next: 0, named: None }
    }

    fn pick(&mut self) -> Option<NodeId> {
        if let Some(leader) = self.named.take() {
            return Some(leader);
        }
        if self.candidates.is_empty() {
            return None;
        }
        let target = self.candidates[self.next % self.candidates.len()];
        self.next += 1;
        Some(target)
    }
}

impl DistributedCache {
    fn targets(&self, shard: ShardId) -> Targets {
        targets(self.config.node_id, shard, &self.shard_map, &self.coordinator, &self.transport)
    }

    /// Forwards `stamped` to shard `shard`'s leader on another node (see the module docs)
    /// until it is answered or `deadline` passes.
    pub(super) async fn route_remote_write(
        &self,
        shard: ShardId,
        mut stamped: StampedCommand,
        deadline: Instant,
    ) -> Result<Applied> {
        if !self.config.forwarding_enabled {
            return Err(Error::NotLeader { leader_hint: self.coordinator.hinted_leader(shard) });
        }
        let deadline = deadline.min(Instant::now() + self.config.forwarding_timeout);
        let slot = self.open_session(&mut stamped);
        let bytes = Bytes::from(stamped.encode());
        self.forward_to_holders(shard, (&slot, &bytes, &stamped.session), deadline, false).await
    }

    /// Sends copies of a write stamped with a session (its `slot`, encoding and session) to
    /// shard `shard`'s holders in turn, the leader they name first, until one answers or
    /// `deadline` passes; `sent`: a copy went out already (its outcome may be unknown).
    pub(super) async fn forward_to_holders(
        &self,
        shard: ShardId,
        (slot, bytes, session): (&ForwardSlot<'_>, &Bytes, &Option<SessionStamp>),
        deadline: Instant,
        mut sent: bool,
    ) -> Result<Applied> {
        let forwarder = &self.dispatcher.forwarder;
        let mut targets = self.targets(shard);
        let tick = self.config.raft.tick_interval();
        let patience = self.config.raft.election_timeout();
        loop {
            if Instant::now() >= deadline {
                return Err(if sent {
                    Error::Timeout(self.config.request_timeout)
                } else {
                    Error::NotLeader { leader_hint: None }
                });
            }
            // This node may have started its replica meanwhile and been handed the shard's
            // leadership (found from outside: a node restarted under load, given leaderships
            // as soon as it caught up; the holders named it, and the writes that arrived
            // before its replica started waited for their deadline). The copy is proposed
            // here then, with the same session as the copies sent out.
            if let Some(applied) = self.propose_if_leading(shard, bytes, deadline).await? {
                slot.answered();
                if let Some(session) = session {
                    forwarder.reported(&session.abandoned);
                }
                return self.settled(applied);
            }
            let Some(target) = targets.pick() else {
                // A copy already sent may still be applied.
                return Err(if sent {
                    Error::Timeout(self.config.request_timeout)
                } else {
                    Error::NotLeader { leader_hint: None }
                });
            };
            let reply = slot.arm(target);
            let frame = Envelope::Forward { shard, request_id: slot.seq, command: bytes.clone() };
            if self.transport.send(target, frame.to_frame()).is_err() {
                tokio::time::sleep(tick).await;
                continue;
            }
            sent = true;
            let resend_at = (Instant::now() + patience).min(deadline);
            let answer = tokio::select! {
                reply = reply => reply,
                _ = tokio::time::sleep_until(resend_at) => continue,
            };
            match answer {
                Ok(Ok(applied)) => {
                    slot.answered();
                    if let Some(session) = session {
                        forwarder.reported(&session.abandoned);
                    }
                    return self.settled(applied);
                }
                Ok(Err(WireError::NotLeader(Some(leader)))) if leader != self.config.node_id => {
                    targets.named = Some(leader);
                }
                Ok(Err(
                    WireError::NotLeader(_)
                    | WireError::ProposalDropped
                    | WireError::Timeout(_)
                    | WireError::Shutdown,
                )) => tokio::time::sleep(tick).await,
                // Not a holder of the shard (any more): ask another.
                Ok(Err(WireError::Other(why))) => {
                    debug!(shard, target, why, "a forwarded write was refused; trying another member");
                    tokio::time::sleep(tick).await;
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(Error::Shutdown),
            }
        }
    }

    /// Proposes `bytes` (a write stamped with its session) to this node's replica of `shard`
    /// when it holds one that leads: `None` when it does not, or when leadership moved before
    /// the proposal could commit (nothing written by this copy).
    ///
    /// # Errors
    /// What the proposal answered otherwise; `Timeout` at `deadline`.
    async fn propose_if_leading(
        &self,
        shard: ShardId,
        bytes: &Bytes,
        deadline: Instant,
    ) -> Result<Option<Applied>> {
        let Some(held) =
            self.shards.get(shard).filter(|s| self.holds_shard(shard) && s.group.shared.is_leader())
        else {
            return Ok(None);
        };
        let proposed = tokio::time::timeout_at(deadline, held.group.propose(bytes.clone())).await;
        match proposed.unwrap_or(Err(Error::Timeout(self.config.request_timeout))) {
            Ok(applied) => Ok(Some(applied)),
            Err(Error::ProposalDropped | Error::NotLeader { .. }) => Ok(None),
            // Retired under the write (a move away) while the node runs: the holders answer.
            Err(Error::Shutdown) if self.check_running().is_ok() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads `read` from a node holding shard `shard` (see the module docs).
    ///
    /// # Errors
    /// No holder answered within the request timeout (`Timeout`), none is known
    /// (`NotLeader`), or the answer would not fit in a peer frame.
    pub(crate) async fn remote_read(
        &self,
        shard: ShardId,
        read: RemoteRead,
        linearizable: bool,
    ) -> Result<RemoteAnswer> {
        self.check_running()?;
        let asker = Asker {
            me: self.config.node_id,
            transport: &self.transport,
            reads: &self.dispatcher.remote_reads,
            timeout: self.config.request_timeout,
            tick: self.config.raft.tick_interval(),
            patience: self.config.raft.election_timeout(),
        };
        asker.ask(self.targets(shard), shard, read, linearizable).await
    }
}
