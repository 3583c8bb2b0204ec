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

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::debug;

use super::storage::{unix_now_ms, StoredValue};
use super::table::ShardTable;
use super::DistributedCache;
use crate::consensus::command::StampedCommand;
use crate::consensus::Applied;
use crate::error::{Error, Result};
use crate::glob::glob_match;
use crate::multiraft::coordinator::CoordinatorState;
use crate::multiraft::ShardMapStore;
use crate::transport::envelope::{Envelope, RemoteAnswer, RemoteRead, WireError};
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
        if linearizable {
            let index = held.group.read_index().await.map_err(|e| WireError::from(&e))?;
            held.group.wait_applied(index).await.map_err(|e| WireError::from(&e))?;
        }
        let now = crate::cache::storage::unix_now_ms();
        let storage = &held.storage;
        Ok(match read {
            RemoteRead::Entries { keys } => RemoteAnswer::Entries(
                keys.iter().map(|k| storage.entry_at(k, now).map(|e| (e.value, e.expires_at_ms))).collect(),
            ),
            RemoteRead::Keys { pattern } => {
                let mut keys = Vec::new();
                storage.for_each_live_key(|k, _| {
                    if pattern.as_ref().is_none_or(|p| glob_match(p, k)) {
                        keys.push(k.clone());
                    }
                    true
                });
                RemoteAnswer::Keys(keys)
            }
            RemoteRead::Count => RemoteAnswer::Count(storage.live_count()),
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
    let result = tokio::time::timeout(timeout, answered)
        .await
        .unwrap_or(Err(WireError::Timeout(timeout.as_millis() as u64)));
    let mut frame = Envelope::ReadReply { request_id, result }.to_frame();
    if frame.len() > max_frame_bytes {
        let result = Err(WireError::Other(format!(
            "the answer of shard {shard} is larger than a peer frame ({} bytes); ask for less",
            frame.len()
        )));
        frame = Envelope::ReadReply { request_id, result }.to_frame();
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
            let resend_at = (Instant::now() + self.patience.max(Duration::from_secs(1))).min(deadline);
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
        let forwarder = &self.dispatcher.forwarder;
        let slot = self.open_session(&mut stamped);
        let bytes = Bytes::from(stamped.encode());
        let mut targets = self.targets(shard);
        let tick = self.config.raft.tick_interval();
        let patience = self.config.raft.election_timeout();
        let mut sent = false;
        loop {
            if Instant::now() >= deadline {
                return Err(if sent {
                    Error::Timeout(self.config.request_timeout)
                } else {
                    Error::NotLeader { leader_hint: None }
                });
            }
            let Some(target) = targets.pick() else {
                return Err(Error::NotLeader { leader_hint: None });
            };
            let reply = slot.arm();
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
                    if let Some(session) = &stamped.session {
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

    /// The live entries of `keys`, in order (none where absent), from this node's replicas
    /// and, for the shards it holds none of, from nodes that do (see the module docs). With
    /// `linearizable`, every shard involved first runs a Read-Index round, as
    /// [`Self::consistent_get`] does.
    ///
    /// # Errors
    /// As [`Self::consistent_get`]; for a shard held elsewhere, also when no holder answers.
    pub async fn read_entries(&self, keys: &[Bytes], linearizable: bool) -> Result<Vec<Option<StoredValue>>> {
        let router = self.keyspace.router();
        let mut by_shard: BTreeMap<ShardId, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            by_shard.entry(router.shard_for_key(key)).or_default().push(i);
        }
        let fetches = by_shard.into_iter().map(|(shard, positions)| async move {
            let found =
                self.shard_entries(shard, positions.iter().map(|&i| keys[i].clone()).collect(), linearizable);
            found.await.map(|entries| (positions, entries))
        });
        let mut out = vec![None; keys.len()];
        for fetched in futures_util::future::join_all(fetches).await {
            let (positions, entries) = fetched?;
            for (i, entry) in positions.into_iter().zip(entries) {
                out[i] = entry;
            }
        }
        Ok(out)
    }

    /// [`Self::read_entries`] for keys of one shard.
    async fn shard_entries(
        &self,
        shard: ShardId,
        keys: Vec<Bytes>,
        linearizable: bool,
    ) -> Result<Vec<Option<StoredValue>>> {
        if self.holds_shard(shard) {
            if linearizable {
                self.read_barrier_for_shard(shard).await?;
            }
            let now = unix_now_ms();
            return Ok(keys.iter().map(|k| self.keyspace.entry_at(k, now)).collect());
        }
        let count = keys.len();
        match self.remote_read(shard, RemoteRead::Entries { keys }, linearizable).await? {
            RemoteAnswer::Entries(entries) if entries.len() == count => {
                // Judged live again here: an entry may expire on its way.
                let now = unix_now_ms();
                Ok(entries
                    .into_iter()
                    .map(|e| {
                        e.map(|(value, expires_at_ms)| StoredValue { value, expires_at_ms })
                            .filter(|e| e.expires_at_ms.is_none_or(|t| t > now))
                    })
                    .collect())
            }
            _ => Err(malformed(shard)),
        }
    }

    /// The live keys of every shard, those matching `pattern` (a Redis glob) when given: from
    /// this node's replicas and, for the shards it holds none of, from nodes that do.
    ///
    /// # Errors
    /// As [`Self::read_entries`]; also when one shard's keys do not fit in a peer frame.
    pub async fn live_keys(&self, pattern: Option<&[u8]>, linearizable: bool) -> Result<Vec<Bytes>> {
        let shards = 0..self.keyspace.router().num_shards();
        let fetches = shards.map(|shard| self.shard_keys(shard, pattern, linearizable));
        let mut all = Vec::new();
        for keys in futures_util::future::join_all(fetches).await {
            all.extend(keys?);
        }
        Ok(all)
    }

    /// [`Self::live_keys`] of shard `shard` only.
    ///
    /// # Errors
    /// As [`Self::live_keys`].
    pub async fn shard_keys(
        &self,
        shard: ShardId,
        pattern: Option<&[u8]>,
        linearizable: bool,
    ) -> Result<Vec<Bytes>> {
        if self.holds_shard(shard) {
            if linearizable {
                self.read_barrier_for_shard(shard).await?;
            }
            let mut keys = Vec::new();
            if let Some(storage) = self.keyspace.shard(shard) {
                storage.for_each_live_key(|k, _| {
                    if pattern.is_none_or(|p| glob_match(p, k)) {
                        keys.push(k.clone());
                    }
                    true
                });
            }
            return Ok(keys);
        }
        let pattern = pattern.map(Bytes::copy_from_slice);
        match self.remote_read(shard, RemoteRead::Keys { pattern }, linearizable).await? {
            RemoteAnswer::Keys(keys) => Ok(keys),
            _ => Err(malformed(shard)),
        }
    }

    /// What `WATCH` remembers of `key`: the index this node applied in the key's shard (read
    /// before the key) and whether the key is live. For a shard this node holds, read here (the
    /// caller runs the read barrier first); for another, asked of a node that holds it after a
    /// Read-Index round there.
    ///
    /// # Errors
    /// As [`Self::read_entries`].
    pub async fn watch_key(&self, key: &Bytes) -> Result<(u64, bool)> {
        let shard = self.keyspace.router().shard_for_key(key);
        if self.holds_shard(shard) {
            let index = self.applied_index_for_key(key);
            return Ok((index, self.keyspace.get_entry(key).is_some()));
        }
        match self.remote_read(shard, RemoteRead::Watch { keys: vec![key.clone()] }, true).await? {
            RemoteAnswer::Watched(index, live) if live.len() == 1 => Ok((index, live[0])),
            _ => Err(malformed(shard)),
        }
    }

    /// How many live entries the cluster holds: this node's replicas counted here, the
    /// shards it holds none of asked of nodes that do (Redis's `DBSIZE`).
    ///
    /// # Errors
    /// As [`Self::read_entries`].
    pub async fn live_count(&self, linearizable: bool) -> Result<u64> {
        let shards = 0..self.keyspace.router().num_shards();
        let fetches = shards.map(|shard| async move {
            if self.holds_shard(shard) {
                if linearizable {
                    self.read_barrier_for_shard(shard).await?;
                }
                return Ok(self.keyspace.shard(shard).map_or(0, |s| s.live_count()));
            }
            match self.remote_read(shard, RemoteRead::Count, linearizable).await? {
                RemoteAnswer::Count(count) => Ok(count),
                _ => Err(malformed(shard)),
            }
        });
        let mut total = 0;
        for count in futures_util::future::join_all(fetches).await {
            total += count?;
        }
        Ok(total)
    }
}

fn malformed(shard: ShardId) -> Error {
    Error::Transport(crate::transport::TransportError::Remote(format!(
        "a holder of shard {shard} answered a read with something else"
    )))
}
