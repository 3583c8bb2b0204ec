//! [`DistributedCache`]: one node of a crema cluster, as the embedding application sees it.
//!
//! Writes are validated, encoded and proposed to the Raft group of their key's shard (forwarded
//! to its leader when this node follows); they return once this node has applied them, so a
//! caller always reads its own writes here. `get` reads the local cache; `consistent_get` first
//! obtains a read index from the shard's leader and waits until it is applied locally.
//!
//! One shard (the default) is one Raft group owning every key. With Multi-Raft
//! ([`crate::MultiRaftCacheConfig`]) each shard is its own group with its own cache, and every
//! call is routed by the key's hash slot (see [`crate::multiraft`]); writes that span shards are
//! split or refused as `cache::split` says. Shard 0 also holds the cluster's ACL users, and its
//! group's membership is the node's: the peer links follow it.

mod background;
mod balance;
mod capture;
mod discovered;
pub(crate) mod dispatch;
mod figures;
mod gather;
mod keepalive;
pub mod keyspace;
mod membership;
mod meta_conf;
mod moves;
mod placement;
mod read_rounds;
mod readiness;
mod reads;
#[cfg(feature = "rocksdb")]
mod recovery;
mod remote;
mod replica;
mod route;
pub mod scan_order;
pub(crate) mod shard;
mod split;
mod start;
pub mod storage;
mod supervisor;
pub(crate) mod table;
mod writes;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::config::CacheConfig;
use crate::consensus::GroupStatus;
use crate::error::{Error, Result};
use crate::multiraft::ShardRouter;
use crate::transport::Transport;
use crate::types::{NodeId, ShardId};
use dispatch::Dispatcher;
pub use figures::RaftFigures;
use keyspace::Keyspace;
pub use placement::MigrationFigures;
use shard::Shard;
use split::META_SHARD;
use storage::CacheStats;
pub use supervisor::NodeEnd;
use supervisor::Supervisor;
use table::ShardTable;
pub use writes::EachAnswer;

/// The cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This node's id.
    pub node_id: NodeId,
    /// The address peers reach this node on.
    pub raft_addr: SocketAddr,
    /// The state of shard 0's Raft group on this node (the only group without Multi-Raft; its
    /// membership is the cluster's).
    pub group: GroupStatus,
    /// Known peer addresses, by node id (this node included).
    pub members: BTreeMap<NodeId, SocketAddr>,
    /// Live entries in the local cache (approximate).
    pub entry_count: u64,
    /// Local read statistics.
    pub stats: CacheStats,
    /// The shards this node holds a replica of, in shard order.
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
    keyspace: Keyspace,
    /// This node's replicas (see `cache::table`).
    shards: Arc<ShardTable>,
    /// Shard 0's replica, which every node holds (see `cache::split::META_SHARD`).
    meta: Shard,
    acl: Arc<crate::acl::AclStore>,
    /// The shard map as the meta shard applied it here.
    shard_map: Arc<crate::multiraft::ShardMapStore>,
    /// Moves this node planned and settled (see `cache::placement`).
    migrations: Arc<placement::Migrations>,
    coordinator: Arc<crate::multiraft::coordinator::CoordinatorState>,
    transport: Arc<Transport>,
    dispatcher: Arc<Dispatcher>,
    cancel: CancellationToken,
    supervisor: Supervisor,
    group_tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    shut_down: AtomicBool,
    /// Whether this node's shard map was confirmed as new as the meta shard's leader's since
    /// it started (see `cache::readiness`).
    map_confirmed: AtomicBool,
    /// Set the first time the node was ready since it started (see `has_been_ready`).
    ready_once: AtomicBool,
    /// Series the cache API updates as it works (see `crate::metrics`).
    live_metrics: crate::metrics::LiveMetrics,
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

    /// The node's metrics as of now: the cache's, the Raft groups', the shards' and the
    /// gossip's, with the names the seed lists (prefixed `crema_`); see [`crate::metrics`].
    ///
    /// ```
    /// # #[tokio::main] async fn main() -> crema::Result<()> {
    /// use crema::{CacheConfig, DistributedCache};
    ///
    /// let cache = DistributedCache::new(CacheConfig::new(1, "127.0.0.1:0".parse().unwrap())).await?;
    /// cache.put("k", "v").await?;
    /// let _ = cache.get(b"k").await;
    /// let metrics = cache.metrics();
    /// assert_eq!(metrics.value("crema_cache_hits_total"), Some(1.0));
    /// assert_eq!(metrics.value_with("crema_raft_proposals_total", "result=\"ok\""), Some(1.0));
    /// assert!(metrics.render().contains("crema_raft_proposal_latency_seconds_count 1"));
    /// # cache.shutdown().await;
    /// # Ok(()) }
    /// ```
    pub fn metrics(&self) -> crate::metrics::MetricsRegistry {
        crate::metrics::MetricsRegistry::of(self, &self.live_metrics)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// The address the peer transport listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.transport.local_addr()
    }

    /// Where node `id`'s clients connect: this node's own [`CacheConfig::client_addr`], or
    /// what `id` said in its latest handshake with this node. None when it said nothing or
    /// has not been connected yet.
    pub fn client_addr_of(&self, id: NodeId) -> Option<SocketAddr> {
        if id == self.config.node_id {
            return self.config.client_addr;
        }
        self.dispatcher.client_addr_of(id)
    }

    /// The configuration this node runs with.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The shard map as this node's replica of the meta shard applied it: which nodes hold a
    /// voting replica of each shard (see [`crate::multiraft::placement`]). Empty with one
    /// shard, and until the meta shard's leader agreed the first map.
    pub fn shard_map(&self) -> crate::multiraft::ShardMap {
        self.shard_map.map()
    }

    /// The replica moves this node planned and settled as the meta shard's leader, and how
    /// long each took (what `crema_migration_duration_seconds` shows).
    pub fn migrations(&self) -> MigrationFigures {
        self.migrations.figures()
    }

    /// Whether this node holds a replica of shard `shard` (every shard without placement).
    /// Reads of a shard it does not hold go to a node that does ([`Self::read_entries`]).
    pub fn holds_shard(&self, shard: ShardId) -> bool {
        // A replica its group removed serves nothing: the shard's other holders do. So does one
        // the settled shard map no longer names (removed, but it has not learned it yet).
        let moved_away = || {
            self.shard_map
                .with_placement(shard, |p| {
                    p.state == crate::multiraft::ShardState::Active
                        && !p.members.contains(&self.config.node_id)
                })
                .unwrap_or(false)
        };
        // Nor does one whose history its group contradicts, or a follower that cannot persist
        // (`GroupShared::serves`).
        self.shards.with(shard, |s| s.group.shared.serves()).unwrap_or(false)
            && !(shard != META_SHARD && moved_away())
    }

    /// Whether a local read of shard `shard` (`READONLY`, `--read-mode local`) may be answered
    /// by this node's replica: it holds it ([`Self::holds_shard`]) as a voter that is not
    /// recovering. A learner still replays the log its leader sends (a move to this node), and
    /// a memory node's replica recovering after a restart has not caught up: found from
    /// outside, both answered nil for keys that existed. Their local reads go to the shard's
    /// holders ([`Self::read_entries`]).
    pub fn serves_local_reads(&self, shard: ShardId) -> bool {
        let me = self.config.node_id;
        self.holds_shard(shard)
            && self
                .shards
                .with(shard, |s| !s.group.shared.recovering() && s.group.shared.has_voter(me))
                .unwrap_or(false)
    }

    /// Shard `id`'s replica on this node, while it runs.
    fn shard(&self, id: ShardId) -> Result<Shard> {
        let shard = self.shards.get(id).ok_or(Error::Shutdown)?;
        if shard.group.shared.removed() {
            return Err(Error::Shutdown);
        }
        Ok(shard)
    }

    /// The replica of the shard that owns `key`.
    fn shard_for_key(&self, key: &[u8]) -> Result<Shard> {
        self.shard(self.keyspace.router().shard_for_key(key))
    }

    /// Shard 0: the cluster's ACL users and shard map, and the membership the peer links
    /// follow. Every node holds it.
    fn meta(&self) -> &Shard {
        &self.meta
    }

    /// Entries in this node's cache (every shard).
    pub fn entry_count(&self) -> u64 {
        self.keyspace.entry_count()
    }

    /// Local hit/miss statistics (every shard).
    pub fn stats(&self) -> CacheStats {
        self.keyspace.stats()
    }

    /// The local caches of every shard, read as one (for inspection; writes to them bypass
    /// consensus like `put_local`).
    pub fn storage(&self) -> &Keyspace {
        &self.keyspace
    }

    /// The index this node has applied in the shard of `key` (what `WATCH` remembers).
    pub fn applied_index_for_key(&self, key: &[u8]) -> u64 {
        let shard = self.keyspace.router().shard_for_key(key);
        self.shards.with(shard, |s| s.group.shared.applied()).unwrap_or(0)
    }

    /// The Multi-Raft coordinator of this node (shard routing, reports and leader hints), when
    /// Multi-Raft is enabled.
    pub fn multiraft_coordinator(&self) -> Option<crate::multiraft::MultiRaftCoordinator<'_>> {
        self.config.multiraft.enabled.then(|| crate::multiraft::MultiRaftCoordinator::of(self))
    }

    pub(crate) fn coordinator_state(&self) -> &crate::multiraft::coordinator::CoordinatorState {
        &self.coordinator
    }

    /// How keys map to shards in this cluster.
    pub fn router(&self) -> &ShardRouter {
        self.keyspace.router()
    }

    /// The group's ACL users as this node has applied them; change them by executing a
    /// [`CacheCommand::Acl`](crate::CacheCommand::Acl).
    pub fn acl(&self) -> &Arc<crate::acl::AclStore> {
        &self.acl
    }

    // ----- cluster -----

    /// Whether this node currently leads the Raft group (shard 0's, with Multi-Raft).
    pub fn is_leader(&self) -> bool {
        self.meta().group.shared.is_leader()
    }

    /// The leader this node knows of (of shard 0, with Multi-Raft).
    pub fn leader_id(&self) -> Option<NodeId> {
        self.meta().group.shared.leader_id()
    }

    /// Whether node `id` is this node or a peer it heard from (any message, its pings
    /// included) within two election timeouts: a leader known but not heard from is likely
    /// gone (a learner never campaigns, so it keeps naming the last leader it heard of).
    pub fn heard_from(&self, id: NodeId) -> bool {
        id == self.config.node_id
            || self.dispatcher.heard_peers(2 * self.config.raft.election_timeout()).contains(&id)
    }

    /// The nodes this node's cluster discovery knows, itself included, with their health
    /// (see [`crate::discovery`]); without a discovery, this node alone.
    pub fn discovered_nodes(&self) -> Vec<crate::DiscoveredNode> {
        match &self.config.cluster_discovery {
            Some(discovery) => discovery.nodes(),
            None => vec![crate::DiscoveredNode {
                node_id: self.config.node_id,
                raft_addr: self.transport.local_addr(),
                gossip_addr: None,
                health: crate::NodeHealth::Alive,
            }],
        }
    }

    /// The kind of this node's cluster discovery (`memberlist`, `static`, `noop`), if any.
    pub fn discovery_kind(&self) -> Option<&'static str> {
        self.config.cluster_discovery.as_ref().map(|d| d.kind())
    }

    /// The leader of shard `shard` this node knows of: its own replica's, else (for a shard
    /// it holds none of) the one gossip last named.
    pub fn shard_leader(&self, shard: ShardId) -> Option<NodeId> {
        match self.shards.with(shard, |s| s.group.shared.leader_id()) {
            Some(known) => known,
            None => self.coordinator.hinted_leader(shard),
        }
    }

    /// Starts handing the leadership of shard `shard` to its voter `to` (raft-rs's leader
    /// transfer: `to` is caught up, then told to campaign). Call it on the shard's leader; it
    /// answers once started, and the transfer may still fail (the leader then stays). With
    /// several shards, nodes also do this by themselves to spread the leaders (`cache::balance`).
    ///
    /// # Errors
    /// `NotLeader` (with the leader's id) on another node; `Membership` when `to` is not another
    /// voter of the shard; `Shutdown`.
    pub async fn transfer_shard_leader(&self, shard: ShardId, to: NodeId) -> Result<()> {
        self.check_running()?;
        self.shard(shard)?.group.transfer_leader(to).await
    }

    /// The peer address of node `id` as this node knows it (from configuration or applied
    /// membership changes).
    pub fn peer_addr(&self, id: NodeId) -> Option<SocketAddr> {
        if id == self.config.node_id {
            return Some(self.transport.local_addr());
        }
        self.transport.peer_addr(id)
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
                self.dispatcher.on_hello(from, 1, Vec::new(), None);
                1
            }
        };
        self.dispatcher.on_envelope(&self.transport, from, incarnation, envelope);
    }

    /// Makes the Raft group loop panic, as a bug would (test-only, feature `fault-injection`):
    /// the node must stop at once ([`Self::ended`]).
    #[cfg(feature = "fault-injection")]
    pub async fn inject_group_panic(&self) {
        self.meta().group.inject_panic().await;
    }

    fn check_running(&self) -> Result<()> {
        // A node removed from the group stopped its Raft loop: it serves nothing consistent;
        // neither does one whose essential task failed.
        if self.shut_down.load(Ordering::Acquire)
            || self.meta().group.shared.removed()
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
