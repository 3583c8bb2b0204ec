//! [`DistributedCache`]: one node of a crema cluster, as the embedding application sees it.
//!
//! Writes are validated, encoded and proposed to the Raft group (forwarded to the leader when
//! this node follows); they return once this node has applied them, so a caller always reads its
//! own writes here. `get` reads the local cache; `consistent_get` first obtains a read index
//! from the leader and waits until it is applied locally.

mod capture;
pub(crate) mod dispatch;
mod membership;
#[cfg(feature = "rocksdb")]
mod recovery;
mod route;
pub mod storage;
mod supervisor;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use raft::eraftpb::ConfChangeType;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::{CacheConfig, RaftStorageType};
use crate::consensus::command::{expiry_from_ttl, CacheCommand, CommandLimits, StampedCommand};
use crate::consensus::group::{spawn_group, GroupHandle, GroupSettings};
use crate::consensus::state_machine::{ApplyOutput, CacheStateMachine};
use crate::consensus::storage::MemStorage;
use crate::consensus::{Applied, GroupStatus};
use crate::error::{Error, Result};
use crate::transport::{Transport, TransportConfig};
use crate::types::{NodeId, DEFAULT_SHARD};
use dispatch::Dispatcher;
use storage::{unix_now_ms, CacheStats, CacheStorage, StorageLimits};
pub use supervisor::NodeEnd;
use supervisor::Supervisor;

/// The cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This node's id.
    pub node_id: NodeId,
    /// The address peers reach this node on.
    pub raft_addr: SocketAddr,
    /// The Raft group's state on this node.
    pub group: GroupStatus,
    /// Known peer addresses, by node id (this node included).
    pub members: BTreeMap<NodeId, SocketAddr>,
    /// Live entries in the local cache (approximate).
    pub entry_count: u64,
    /// Local read statistics.
    pub stats: CacheStats,
    /// The shards this node holds a replica of (one today: the single group, every slot).
    pub shards: Vec<crate::multiraft::ShardInfo>,
}

/// A node of a strongly consistent distributed cache.
///
/// ```no_run
/// use crema::{CacheConfig, DistributedCache};
/// use std::time::Duration;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let config = CacheConfig::new(1, "127.0.0.1:9000".parse()?)
///     .with_max_capacity(100_000)
///     .with_default_ttl(Duration::from_secs(3600));
/// let cache = DistributedCache::new(config).await?;
/// cache.put("user:123", "Alice").await?;
/// assert_eq!(cache.get(b"user:123").await.as_deref(), Some(&b"Alice"[..]));
/// cache.shutdown().await;
/// # Ok(()) }
/// ```
pub struct DistributedCache {
    config: CacheConfig,
    storage: CacheStorage,
    acl: Arc<crate::acl::AclStore>,
    group: GroupHandle,
    transport: Arc<Transport>,
    dispatcher: Arc<Dispatcher>,
    cancel: CancellationToken,
    supervisor: Supervisor,
    group_tasks: Mutex<Vec<JoinHandle<()>>>,
    shut_down: AtomicBool,
}

impl std::fmt::Debug for DistributedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DistributedCache")
            .field("node_id", &self.config.node_id)
            .field("raft_addr", &self.transport.local_addr())
            .finish()
    }
}

impl DistributedCache {
    /// Starts a node: binds `config.raft_addr`, starts the Raft group and connects to the seeds.
    ///
    /// # Errors
    /// An invalid configuration, or the peer address cannot be bound.
    pub async fn new(config: CacheConfig) -> Result<Self> {
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(config.raft_addr).await?;
        Self::start(config, listener).await
    }

    /// Starts a node on an already-bound listener (tests bind port 0 and pass it in; the
    /// configured `raft_addr` is then only what peers are told).
    ///
    /// # Errors
    /// An invalid configuration, or the listener cannot be used.
    pub async fn new_with_listener(config: CacheConfig, listener: std::net::TcpListener) -> Result<Self> {
        config.validate()?;
        listener.set_nonblocking(true)?;
        Self::start(config, tokio::net::TcpListener::from_std(listener)?).await
    }

    async fn start(config: CacheConfig, listener: tokio::net::TcpListener) -> Result<Self> {
        let limits =
            CommandLimits { max_key_bytes: config.max_key_bytes, max_value_bytes: config.max_value_bytes };
        let dispatcher = Arc::new(Dispatcher::new(config.node_id, limits));
        let transport = Transport::start(
            TransportConfig {
                node_id: config.node_id,
                incarnation: rand::random(),
                max_frame_bytes: crate::config::MAX_FRAME_BYTES,
                queue_capacity: config.peer_queue_capacity,
                handshake_timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(1),
                secret: config.cluster_secret.clone(),
                tls: config.peer_tls.clone(),
                #[cfg(feature = "fault-injection")]
                faults: config.faults.clone(),
            },
            listener,
            dispatcher.clone(),
        )?;
        let storage = CacheStorage::new(StorageLimits {
            max_capacity: config.max_capacity,
            max_memory_bytes: config.max_memory_bytes,
            time_to_idle: config.default_tti,
        });
        let sm = CacheStateMachine::new(storage.clone());
        let acl = sm.acl().clone();
        {
            let mut members = sm.members().lock().expect("members poisoned");
            members.insert(config.node_id, config.raft_addr);
            members.extend(config.seed_nodes.iter().copied());
        }
        for (id, addr) in &config.seed_nodes {
            transport.add_peer(*id, Some(*addr));
        }
        let cancel = CancellationToken::new();
        let settings = GroupSettings {
            node_id: config.node_id,
            shard: DEFAULT_SHARD,
            raft: config.raft.clone(),
            mailbox_capacity: config.mailbox_capacity,
            // A read waits for its index as long as its caller does (rounds dropped by Raft are
            // retried meanwhile), so a node still catching up answers late rather than not at all.
            read_timeout: config.request_timeout,
            shutdown_grace: config.raft.election_timeout(),
            checkpoints: None,
            // A memory node remembers nothing of an earlier life, so every start may be a
            // restart: it recovers first unless it is the only voter (or joins, empty conf).
            recover: config.raft_storage == RaftStorageType::Memory
                && !config.join
                && !config.force_new_cluster
                && config.initial_voters().len() > 1,
            #[cfg(feature = "fault-injection")]
            faults: config.faults.clone(),
        };
        let (group, task) = match config.raft_storage {
            RaftStorageType::Memory => {
                let store = if config.join {
                    MemStorage::new()
                } else {
                    MemStorage::new_with_conf_state(&config.initial_voters())
                };
                spawn_group(settings, store, sm, transport.clone(), cancel.clone())?
            }
            RaftStorageType::RocksDb => Self::spawn_durable(&config, settings, sm, &transport, &cancel)?,
        };
        let supervisor = Supervisor::new(cancel.clone());
        let removed = group.shared.clone();
        let task = supervisor.watch("the raft group loop", task, move || removed.removed());
        let sweeper = supervisor.spawn("the expiry sweeper", sweep_expired(storage.clone(), cancel.clone()));
        let evictor = supervisor.spawn("the evictor", evict(storage.clone(), group.clone(), cancel.clone()));
        let tasks = vec![task, sweeper, evictor];
        // Watched, not awaited at shutdown: it ends when the transport closes, after the group.
        if let Some(accept) = transport.take_accept_task() {
            drop(supervisor.watch("the peer accept loop", accept, || false));
        }
        // A failed node stops talking to its peers too: it must not look alive to them.
        let (watching, closing, stopped) = (supervisor.clone(), transport.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                end = watching.ended() => if let NodeEnd::Failed(_) = end { closing.close() },
                _ = stopped.cancelled() => {
                    // Stopped by its owner, or by a failure: a failure is recorded first.
                    if let Some(NodeEnd::Failed(_)) = watching.end() { closing.close() }
                }
            }
        });
        dispatcher.attach(vec![group.clone()]);
        transport.open();
        if config.force_new_cluster {
            group.force_new_cluster().await?;
        }
        info!(node = config.node_id, addr = %transport.local_addr(), voters = ?config.initial_voters(), join = config.join, "crema node started");
        Ok(Self {
            config,
            storage,
            acl,
            group,
            transport,
            dispatcher,
            cancel,
            supervisor,
            group_tasks: Mutex::new(tasks),
            shut_down: AtomicBool::new(false),
        })
    }

    #[cfg(feature = "rocksdb")]
    fn spawn_durable(
        config: &CacheConfig,
        mut settings: GroupSettings,
        mut sm: CacheStateMachine,
        transport: &Arc<Transport>,
        cancel: &CancellationToken,
    ) -> Result<(GroupHandle, JoinHandle<()>)> {
        let (store, checkpoints) = recovery::open_durable(config, &mut sm)?;
        let members: Vec<_> = sm.members().lock().expect("members poisoned").clone().into_iter().collect();
        for (id, addr) in members.into_iter().filter(|(id, _)| *id != config.node_id) {
            transport.add_peer(id, Some(addr));
        }
        settings.checkpoints = Some(checkpoints);
        spawn_group(settings, store, sm, transport.clone(), cancel.clone())
    }

    #[cfg(not(feature = "rocksdb"))]
    fn spawn_durable(
        _: &CacheConfig,
        _: GroupSettings,
        _: CacheStateMachine,
        _: &Arc<Transport>,
        _: &CancellationToken,
    ) -> Result<(GroupHandle, JoinHandle<()>)> {
        Err(Error::Config(crate::config::ConfigError::Invalid(
            "RocksDB storage needs crema built with the `rocksdb` feature".into(),
        )))
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// The address the peer transport listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// The configuration this node runs with.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    // ----- writes -----

    /// Stores `value` under `key` through Raft, with the default TTL if one is configured.
    ///
    /// # Errors
    /// See [`Error`]: invalid input, no leader, timeout (outcome unknown), shutdown.
    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<()> {
        let expires_at_ms = match self.config.default_ttl {
            Some(ttl) => Some(expiry_from_ttl(unix_now_ms(), ttl)?),
            None => None,
        };
        let command = CacheCommand::Put { key: key.into(), value: value.into(), expires_at_ms };
        self.write(command).await.map(|_| ())
    }

    /// Stores `value` under `key` through Raft; it expires `ttl` from now on every node at the
    /// same absolute time.
    ///
    /// # Errors
    /// As [`Self::put`]; a TTL of zero or over 10 years is `InvalidCommand`.
    pub async fn put_with_ttl(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ttl: Duration,
    ) -> Result<()> {
        let expires_at_ms = Some(expiry_from_ttl(unix_now_ms(), ttl)?);
        let command = CacheCommand::Put { key: key.into(), value: value.into(), expires_at_ms };
        self.write(command).await.map(|_| ())
    }

    /// Removes `key` through Raft; true when a live entry was removed.
    ///
    /// # Errors
    /// As [`Self::put`].
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<bool> {
        let applied = self.write(CacheCommand::Delete { key: key.into() }).await?;
        Ok(applied.output == ApplyOutput::Removed(true))
    }

    /// Removes every entry on every node, through Raft.
    ///
    /// # Errors
    /// As [`Self::put`].
    pub async fn clear(&self) -> Result<()> {
        self.write(CacheCommand::Clear).await.map(|_| ())
    }

    /// Stores `value` in this node's cache only, without consensus. Other nodes never see it and
    /// any replicated write of the key replaces it: for node-local memoisation, not shared data.
    pub async fn put_local(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) {
        let expires_at_ms = self.config.default_ttl.and_then(|ttl| expiry_from_ttl(unix_now_ms(), ttl).ok());
        self.storage.insert(key.into(), value.into(), expires_at_ms);
    }

    /// Applies `command` through Raft and answers what applying it produced, as decided on the
    /// leader (forwarded from a follower like every write). This is the general write: `put`,
    /// `delete` and `clear` are shorthands for it, and the RESP server builds INCR, SET NX, ...
    /// on it. Answers once this node has applied the command, so a following local read sees it.
    ///
    /// # Errors
    /// As [`Self::put`]. A command that committed but did not fit the stored value (INCR on
    /// text) is not an error: it is `Ok(ApplyOutput::Failed(..))`.
    pub async fn execute(&self, command: CacheCommand) -> Result<ApplyOutput> {
        self.write(command).await.map(|applied| applied.output)
    }

    /// Proposes `bytes` as a log entry as they are, without decoding or validating them
    /// (test-only, feature `fault-injection`): how tests put into the log what a buggy or
    /// hostile proposer could, to show that apply survives it.
    ///
    /// # Errors
    /// As [`Self::put`]; an entry that does not decode is applied as a no-op and answered
    /// `InvalidCommand`.
    #[cfg(feature = "fault-injection")]
    pub async fn propose_unchecked(&self, bytes: Bytes) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        match StampedCommand::decode(&bytes) {
            Ok(stamped) => self.route_write(stamped, deadline).await.map(|_| ()),
            // A follower does not forward what does not decode; the leader proposes it.
            Err(e) if !self.group.shared.is_leader() => Err(e.into()),
            Err(_) => self.group.propose(bytes).await.map(|_| ()),
        }
    }

    async fn write(&self, command: CacheCommand) -> Result<Applied> {
        self.check_running()?;
        command.validate(&CommandLimits {
            max_key_bytes: self.config.max_key_bytes,
            max_value_bytes: self.config.max_value_bytes,
        })?;
        let stamped = StampedCommand::new(unix_now_ms(), command);
        let timeout = self.config.request_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        tokio::time::timeout_at(deadline, self.route_write(stamped, deadline))
            .await
            .unwrap_or(Err(Error::Timeout(timeout)))
    }

    // ----- reads -----

    /// The value of `key` in this node's cache: fast, may be stale on a follower.
    pub async fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.storage.get(key)
    }

    /// The value of `key`, linearizable: reflects every write acknowledged before the call began,
    /// on any node (Read-Index through the leader, then a local read once caught up).
    ///
    /// # Errors
    /// No leader within the request timeout, timeout, shutdown.
    pub async fn consistent_get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.read_barrier().await?;
        Ok(self.storage.get(key))
    }

    /// Waits until this node has applied every write acknowledged (on any node) before the call
    /// began (Read-Index through the leader). Local reads made after it returns, through
    /// [`Self::storage`], are linearizable; this is how the RESP server serves EXISTS, TTL, MGET
    /// and the rest in its default mode.
    ///
    /// # Errors
    /// No leader within the request timeout, timeout, shutdown.
    pub async fn read_barrier(&self) -> Result<()> {
        self.check_running()?;
        if self.group.shared.leads_alone() {
            return Ok(());
        }
        #[cfg(feature = "fault-injection")]
        if self.group.planted(crate::faults::Mutant::StaleLeaderReads) && self.group.shared.is_leader() {
            return Ok(());
        }
        let timeout = self.config.request_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let read = async {
            loop {
                // A read changes nothing: it is refused (`NotLeader`) as soon as this node can
                // no longer reach a quorum, also while its request waits in the group.
                let index = tokio::select! {
                    index = self.group.read_index() => index,
                    _ = self.quorum_lost() => Err(Error::NotLeader { leader_hint: None }),
                };
                match index {
                    Ok(index) => return self.group.wait_applied(index).await,
                    Err(Error::NotLeader { .. }) if tokio::time::Instant::now() < deadline => {
                        self.await_leader(deadline, false).await?;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        tokio::time::timeout_at(deadline, read).await.unwrap_or(Err(Error::Timeout(timeout)))
    }

    /// Whether `key` has a live entry in this node's cache.
    pub async fn contains(&self, key: &[u8]) -> bool {
        self.storage.contains(key)
    }

    /// Entries in this node's cache.
    pub fn entry_count(&self) -> u64 {
        self.storage.entry_count()
    }

    /// Local hit/miss statistics.
    pub fn stats(&self) -> CacheStats {
        self.storage.stats()
    }

    /// The local cache (for inspection; writes to it bypass consensus like `put_local`).
    pub fn storage(&self) -> &CacheStorage {
        &self.storage
    }

    /// The group's ACL users as this node has applied them; change them by executing a
    /// [`CacheCommand::Acl`].
    pub fn acl(&self) -> &Arc<crate::acl::AclStore> {
        &self.acl
    }

    // ----- cluster -----

    /// Whether this node currently leads the Raft group.
    pub fn is_leader(&self) -> bool {
        self.group.shared.is_leader()
    }

    /// The leader this node knows of.
    pub fn leader_id(&self) -> Option<NodeId> {
        self.group.shared.leader_id()
    }

    /// Waits up to `timeout` until this node knows a leader; answers it (none at the timeout).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<NodeId> {
        self.group.shared.wait_for_leader(tokio::time::Instant::now() + timeout).await
    }

    /// Cheap figures of the Raft group (no round trip to its task): term, commit and applied
    /// index, leader changes seen so far.
    pub fn raft_figures(&self) -> RaftFigures {
        let shared = &self.group.shared;
        RaftFigures {
            term: shared.term(),
            commit_index: shared.commit(),
            applied_index: shared.applied(),
            leader_changes: shared.leader_changes(),
            snapshots_installed: shared.snapshots_installed(),
            checkpoints_written: shared.checkpoints_written(),
            persist_failing: shared.persist_failing(),
            proposal_batches: shared.proposals().0,
            proposed_entries: shared.proposals().1,
            messages_sent: shared.messages_sent(),
            queued_requests: self.group.queued_requests(),
            held_writes: shared.held_writes(),
            read_rounds: shared.read_rounds(),
            held_reads: shared.held_reads(),
            apply_rejected: shared.apply_rejected(),
            peer_messages_rejected: shared.messages_rejected() + self.dispatcher.rejected(),
            peer_handshakes_refused: self.transport.handshakes_refused(),
            recovering: shared.recovering(),
        }
    }

    /// The peer address of node `id` as this node knows it (from configuration or applied
    /// membership changes).
    pub fn peer_addr(&self, id: NodeId) -> Option<SocketAddr> {
        if id == self.config.node_id {
            return Some(self.transport.local_addr());
        }
        self.transport.peer_addr(id)
    }

    /// The voting members.
    ///
    /// # Errors
    /// `Shutdown` once stopped.
    pub async fn voters(&self) -> Result<Vec<NodeId>> {
        Ok(self.group.status().await?.voters)
    }

    /// Role, term, indexes, members and cache figures of this node.
    ///
    /// # Errors
    /// `Shutdown` once stopped.
    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        let group = self.group.status().await?;
        let mut members: BTreeMap<NodeId, SocketAddr> = BTreeMap::new();
        for id in group.voters.iter().chain(&group.learners) {
            if let Some(addr) = self.transport.peer_addr(*id) {
                members.insert(*id, addr);
            }
        }
        let shard = crate::multiraft::ShardInfo::from_status(
            &group,
            self.storage.entry_count(),
            self.storage.weighted_size(),
            1,
            self.end().is_some(),
        );
        Ok(ClusterStatus {
            node_id: self.config.node_id,
            raft_addr: self.transport.local_addr(),
            group,
            members,
            entry_count: self.storage.entry_count(),
            stats: self.storage.stats(),
            shards: vec![shard],
        })
    }

    /// Adds node `id` (reachable at `addr`) as a voter, or promotes the learner `id`. Must be
    /// called on the leader. The new node should be started with [`CacheConfig::with_join`];
    /// it must answer the peer handshake at `addr` as node `id` before anything is proposed.
    ///
    /// # Errors
    /// `NotLeader` on a follower; `Membership` for id 0, an id already a voter (or a learner
    /// at another address), an address another member has, or an address where node `id`
    /// does not answer; a Raft refusal (another change pending). Nothing changes on error.
    pub async fn add_peer(&self, id: NodeId, addr: SocketAddr) -> Result<()> {
        self.change_membership(ConfChangeType::AddNode, id, Some(addr)).await
    }

    /// Adds node `id` as a learner (receives the log, does not vote).
    ///
    /// # Errors
    /// As [`Self::add_peer`].
    pub async fn add_learner(&self, id: NodeId, addr: SocketAddr) -> Result<()> {
        self.change_membership(ConfChangeType::AddLearnerNode, id, Some(addr)).await
    }

    /// Removes node `id` from the group. The removed node stops by itself once it applies its
    /// removal ([`NodeEnd::Removed`]).
    ///
    /// # Errors
    /// `NotLeader` on a follower; `Membership` when `id` is not a member or is the last voter;
    /// a Raft refusal (another change pending). Nothing changes on error.
    pub async fn remove_peer(&self, id: NodeId) -> Result<()> {
        self.change_membership(ConfChangeType::RemoveNode, id, None).await
    }

    /// Makes this node the only voter of a new cluster, keeping its state: etcd's
    /// `--force-new-cluster`, the way out when a majority of the voters is lost for good and
    /// the group can elect no leader. Without consensus, every other member is removed from
    /// this node's configuration; it then leads alone. Writes the lost members held and this
    /// node did not are gone. Restart the others empty with [`CacheConfig::with_join`] and add
    /// them back with [`Self::add_peer`]. Answers the members removed.
    ///
    /// # Errors
    /// This node is not a voter; shutdown.
    pub async fn force_new_cluster(&self) -> Result<Vec<NodeId>> {
        self.check_running()?;
        self.group.force_new_cluster().await
    }

    // ----- lifecycle -----

    /// How this node stopped by itself, if it did: an essential task failed (the node then
    /// serves nothing; see [`NodeEnd`]) or it was removed from the cluster.
    pub fn end(&self) -> Option<NodeEnd> {
        self.supervisor.end()
    }

    /// Waits until this node stops by itself (see [`Self::end`]); never resolves for a node that
    /// runs until [`Self::shutdown`]. The `crema` server exits when it resolves: non-zero for
    /// a failure, zero for a removal.
    pub async fn ended(&self) -> NodeEnd {
        self.supervisor.ended().await
    }

    /// Hands `envelope` to this node as if peer `from` had sent it on its current connection
    /// (fuzzing only): the same checks and mailboxes as the network path, without a socket.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn inject_envelope(&self, from: NodeId, envelope: crate::transport::envelope::Envelope) {
        use crate::transport::Inbound as _;
        let incarnation = match self.dispatcher.current_incarnation(from) {
            Some(incarnation) => incarnation,
            None => {
                self.dispatcher.on_hello(from, 1, Vec::new());
                1
            }
        };
        self.dispatcher.on_envelope(&self.transport, from, incarnation, envelope);
    }

    /// Makes the Raft group loop panic, as a bug would (test-only, feature `fault-injection`):
    /// the node must stop at once ([`Self::ended`]).
    #[cfg(feature = "fault-injection")]
    pub async fn inject_group_panic(&self) {
        self.group.inject_panic().await;
    }

    fn check_running(&self) -> Result<()> {
        // A node removed from the group stopped its Raft loop: it serves nothing consistent;
        // neither does one whose essential task failed.
        if self.shut_down.load(Ordering::Acquire)
            || self.group.shared.removed()
            || self.supervisor.end().is_some()
        {
            Err(Error::Shutdown)
        } else {
            Ok(())
        }
    }

    /// Stops the node gracefully: refuses new requests, gives in-flight proposals a short grace
    /// to commit (each gets an answer), stops the group, closes peer connections and waits for
    /// every task. Calling it again does nothing.
    pub async fn shutdown(&self) {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            return;
        }
        self.cancel.cancel();
        let tasks: Vec<_> = std::mem::take(&mut *self.group_tasks.lock().expect("tasks poisoned"));
        for task in tasks {
            let _ = task.await;
        }
        self.dispatcher.tasks.close();
        self.dispatcher.tasks.wait().await;
        self.transport.shutdown().await;
        info!(node = self.config.node_id, "crema node stopped");
    }
}

impl Drop for DistributedCache {
    fn drop(&mut self) {
        // Without `shutdown().await`, still stop the group loop and the transport's tasks (they
        // end on their own; nobody waits for them here).
        self.cancel.cancel();
        self.transport.close();
    }
}

/// Raft figures read without a round trip to the group task; see
/// [`DistributedCache::raft_figures`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftFigures {
    /// The current term.
    pub term: u64,
    /// The highest committed index known here.
    pub commit_index: u64,
    /// The highest index applied here.
    pub applied_index: u64,
    /// Leader changes seen by this node since it started.
    pub leader_changes: u64,
    /// Snapshots received from a leader and installed since this node started.
    pub snapshots_installed: u64,
    /// Checkpoints of this node's own state written since it started (durable storage; a
    /// received snapshot, written as a checkpoint too, counts in `snapshots_installed`).
    pub checkpoints_written: u64,
    /// True while the Raft log cannot be written (disk full): writes wait and time out.
    pub persist_failing: bool,
    /// Proposal batches this node appended as leader: every write the group loop took from
    /// its mailbox in one pass goes into one batch (one append message per follower).
    pub proposal_batches: u64,
    /// Log entries in those batches (writes proposed here as leader).
    pub proposed_entries: u64,
    /// Raft messages this node sent to its peers (appends, heartbeats, votes, responses).
    pub messages_sent: u64,
    /// Requests (writes, reads, admin calls) waiting in the group's mailbox right now.
    pub queued_requests: usize,
    /// Writes the leader took from its mailbox and holds for its next batch, while as many
    /// batches as it keeps in flight are still uncommitted.
    pub held_writes: usize,
    /// Read-index rounds this node started: linearizable reads gathered in one loop pass, or
    /// held while a round was in flight, share one (a round retried after a lost answer counts
    /// again).
    pub read_rounds: u64,
    /// Linearizable reads waiting for the next round while this node's round is in flight.
    pub held_reads: usize,
    /// Committed entries that did not decode (garbage, or a command version this build does
    /// not know), applied as no-ops on every node.
    pub apply_rejected: u64,
    /// Raft messages from peers dropped (or, for a heartbeat's commit index, corrected)
    /// because a correct peer could not have sent them.
    pub peer_messages_rejected: u64,
    /// Incoming peer connections closed in the handshake: no proof of the cluster secret, or
    /// an id that is not a member of the cluster.
    pub peer_handshakes_refused: u64,
    /// True while this node recovers from a restart without its Raft state (memory storage):
    /// it does not vote until it has caught up (see [`crate::consensus::RecoveryState`]).
    pub recovering: bool,
}

/// Most keys one `Evict` command carries.
const EVICT_BATCH: usize = 1024;

/// The leader's evictor (see `cache::storage`): while this node leads it keeps the eviction
/// policy and proposes the keys the policy drops as `Evict` commands, one at a time; when it
/// stops leading it drops the policy, which the next leader rebuilds from its own entries.
/// Nothing runs for an unbounded cache.
async fn evict(storage: CacheStorage, group: GroupHandle, cancel: CancellationToken) {
    let Some(wake) = storage.eviction_wake() else {
        // An unbounded cache has nothing to evict; the task still lives as long as the node,
        // since the supervisor reads an essential task that ends on its own as a failure.
        cancel.cancelled().await;
        return;
    };
    let mut leading = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = wake.notified() => {}
            // Leadership changes and the policy's own pending work are noticed on this tick.
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        if group.shared.is_leader() != leading {
            leading = !leading;
            if leading {
                let filling = storage.clone();
                let started = std::time::Instant::now();
                let Ok(held) = tokio::task::spawn_blocking(move || filling.activate_policy()).await else {
                    return;
                };
                tracing::debug!(
                    held,
                    took_ms = started.elapsed().as_millis() as u64,
                    "eviction policy filled"
                );
            } else {
                storage.deactivate_policy();
            }
        }
        if !leading {
            continue;
        }
        storage.run_policy_tasks();
        loop {
            let keys = storage.take_victims(EVICT_BATCH);
            if keys.is_empty() {
                break;
            }
            let command = StampedCommand::new(unix_now_ms(), CacheCommand::Evict { keys: keys.clone() });
            let proposed = tokio::select! {
                _ = cancel.cancelled() => return,
                proposed = group.propose(Bytes::from(command.encode())) => proposed,
            };
            if let Err(e) = proposed {
                // Still leading: try again on the next tick. Deposed: the policy is dropped.
                tracing::debug!(error = %e, keys = keys.len(), "eviction not committed");
                storage.return_victims(keys);
                break;
            }
        }
    }
}

/// Reclaims expired entries in the background: every second, or less often when a pass takes
/// long (a pass walks every entry, so it is spaced to at most ~5% of one core).
async fn sweep_expired(storage: CacheStorage, cancel: CancellationToken) {
    let mut pause = Duration::from_secs(1);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let started = std::time::Instant::now();
        let purging = storage.clone();
        let Ok(purged) = tokio::task::spawn_blocking(move || purging.purge_expired()).await else {
            return;
        };
        let took = started.elapsed();
        pause = (took * 20).max(Duration::from_secs(1));
        if purged > 0 {
            tracing::debug!(purged, took_ms = took.as_millis() as u64, "expired entries reclaimed");
        }
    }
}
