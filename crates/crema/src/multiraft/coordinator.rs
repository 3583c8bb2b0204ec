//! [`MultiRaftCoordinator`], [`MultiRaftBuilder`], [`MultiRaftStats`] and [`ShardConfig`]: the
//! seed's Multi-Raft control-plane API, name for name, over a [`DistributedCache`].
//!
//! The coordinator is a view of a node: it reads each shard's group as it runs (leaders, terms,
//! indexes) and the node's caches, and it keeps the node's shard-leader *hints* (`shard_id ->
//! leader, epoch`, the newer epoch winning), which routing to a shard this node holds no replica
//! of will use; for a shard the node holds, its own group's knowledge wins. It does not sit on the
//! data path: its `put`/`get`/`delete` are the node's.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::CacheConfig;
use crate::error::Result;
use crate::multiraft::{MultiRaftCacheConfig, Shard, ShardInfo, ShardRange, ShardState};
use crate::types::{NodeId, ShardId};
use crate::DistributedCache;

/// Figures over a node's shards ([`MultiRaftCoordinator::stats`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MultiRaftStats {
    /// Shards of the cluster.
    pub total_shards: u32,
    /// Shards this node holds a replica of that serve (a leader is known).
    pub active_shards: u32,
    /// Shards this node leads.
    pub local_leader_shards: u32,
    /// Entries in this node's caches, every shard.
    pub total_entries: u64,
    /// Writes and linearizable reads this node took per second, since the previous `stats()`
    /// (or the node's start).
    pub operations_per_sec: f64,
}

/// The settings of one shard: which slots it owns, how many replicas it wants, its cache's
/// bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardConfig {
    /// The shard.
    pub shard_id: ShardId,
    /// Shards of the cluster.
    pub total_shards: u32,
    /// Replicas wanted (default 3).
    pub replicas: usize,
    /// Most entries its cache holds (default 100,000).
    pub max_capacity: u64,
    /// TTL of writes that set none.
    pub default_ttl: Option<Duration>,
}

impl ShardConfig {
    /// Shard `shard_id` of `total_shards`, with the defaults.
    pub fn new(shard_id: ShardId, total_shards: u32) -> Self {
        Self { shard_id, total_shards, replicas: 3, max_capacity: 100_000, default_ttl: None }
    }

    /// Sets the replicas wanted.
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Sets the most entries of the shard's cache.
    pub fn with_max_capacity(mut self, max_capacity: u64) -> Self {
        self.max_capacity = max_capacity;
        self
    }

    /// Sets the TTL of writes that set none.
    pub fn with_default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// The slots the shard owns.
    pub fn range(&self) -> ShardRange {
        ShardRange { shard_id: self.shard_id, total_shards: self.total_shards }
    }
}

/// How long a shard-leader hint holds off hints of earlier epochs without being named again.
/// Leaders name their shards to every peer every few election timeouts (`cache::keepalive`),
/// so a real hint is renewed long before; one nobody names again (a leader's forged by an
/// unauthenticated gossip packet with an epoch no term reaches: found from outside, it
/// routed the shard's requests to nowhere until the nodes restarted) stops holding then.
pub(crate) const HINT_HOLDS: Duration = Duration::from_secs(30);

/// Whether a shard-leader hint's `epoch` (a term) is one a group could have reached, given
/// `highest`, the highest epoch known here of any shard: a group starts its history at a term
/// below [`MAX_TERM_LEAP`] (the clock in seconds) and goes on one term per election, so no real
/// term is a leap past both. Found from outside: gossip without a cluster secret took a hint
/// just below 2^63 (the only bound then) naming a node that does not exist, and every node
/// forgot the leaders of the shards it does not hold, for as long as the packet was sent again.
///
/// [`MAX_TERM_LEAP`]: crate::consensus::admit::MAX_TERM_LEAP
pub(crate) fn epoch_in_reach(epoch: u64, highest: u64) -> bool {
    use crate::consensus::admit::MAX_TERM_LEAP;
    epoch < highest.max(MAX_TERM_LEAP).saturating_add(MAX_TERM_LEAP)
}

/// A node's shard-leader hints and operation counter, kept by the node for its coordinator.
#[derive(Debug)]
pub(crate) struct CoordinatorState {
    hints: Mutex<BTreeMap<ShardId, (Option<NodeId>, u64)>>,
    /// When each shard's hint was last taken or named again (see [`HINT_HOLDS`]).
    renewed: Mutex<BTreeMap<ShardId, Instant>>,
    operations: AtomicU64,
    /// When `stats()` last looked, and the operation count then.
    last_stats: Mutex<(Instant, u64)>,
}

impl CoordinatorState {
    /// Keeps `leader` as shard `shard`'s hint if `epoch` is newer than the hint held.
    /// A hint not named again for [`HINT_HOLDS`] no longer holds off hints of earlier epochs.
    pub(crate) fn hint_if_newer(&self, shard: ShardId, leader: NodeId, epoch: u64) -> bool {
        let mut hints = self.hints.lock().expect("hints poisoned");
        if !epoch_in_reach(epoch, hints.values().map(|(_, e)| *e).max().unwrap_or(0)) {
            return false; // No term gets there.
        }
        let mut renewed = self.renewed.lock().expect("hints poisoned");
        let holds = renewed.get(&shard).is_some_and(|at| at.elapsed() < HINT_HOLDS);
        match hints.get(&shard) {
            Some((held_leader, held)) if *held == epoch && *held_leader == Some(leader) => {
                renewed.insert(shard, Instant::now());
                false
            }
            // Forgotten when its leader's node was declared down (see `forget_node`): that
            // leader, heard again in the same term, leads still. Found from outside: a node
            // cut off for longer than the down delay never learned again the leaders that
            // kept their terms, and named wrong primaries in CLUSTER SLOTS for good.
            Some((None, held)) if *held == epoch => {
                hints.insert(shard, (Some(leader), epoch));
                renewed.insert(shard, Instant::now());
                true
            }
            Some((_, held)) if *held >= epoch && holds => false,
            _ => {
                hints.insert(shard, (Some(leader), epoch));
                renewed.insert(shard, Instant::now());
                true
            }
        }
    }

    /// Takes `leader` as shard `shard`'s hint with an epoch above the one held; answers it.
    pub(crate) fn set_leader(&self, shard: ShardId, leader: NodeId) -> u64 {
        let mut hints = self.hints.lock().expect("hints poisoned");
        let hint = hints.entry(shard).or_insert((None, 0));
        *hint = (Some(leader), hint.1 + 1);
        self.renewed.lock().expect("hints poisoned").insert(shard, Instant::now());
        hint.1
    }

    /// The leader of `shard` the newest hint names.
    pub(crate) fn hinted_leader(&self, shard: ShardId) -> Option<NodeId> {
        self.hints.lock().expect("hints poisoned").get(&shard).and_then(|(leader, _)| *leader)
    }

    /// Forgets every hint naming `node` (it was declared down).
    pub(crate) fn forget_node(&self, node: NodeId) -> Vec<ShardId> {
        let mut hints = self.hints.lock().expect("hints poisoned");
        let mut invalidated = Vec::new();
        // The epoch stays: the next leader's hint, of a later term, is taken, and so is that
        // node's again in the same term (it was cut off, not dead: see `hint_if_newer`).
        for (shard, hint) in hints.iter_mut().filter(|(_, h)| h.0 == Some(node)) {
            hint.0 = None;
            invalidated.push(*shard);
        }
        invalidated
    }
}

impl Default for CoordinatorState {
    fn default() -> Self {
        Self {
            hints: Mutex::default(),
            renewed: Mutex::default(),
            operations: AtomicU64::new(0),
            last_stats: Mutex::new((Instant::now(), 0)),
        }
    }
}

impl CoordinatorState {
    /// Counts one write or linearizable read.
    #[inline]
    pub fn count_operation(&self) {
        self.operations.fetch_add(1, Ordering::Relaxed);
    }
}

/// The node a coordinator looks at: borrowed from its owner, or owned (from the builder).
enum NodeRef<'a> {
    Borrowed(&'a DistributedCache),
    Owned(Arc<DistributedCache>),
}

impl Deref for NodeRef<'_> {
    type Target = DistributedCache;

    fn deref(&self) -> &DistributedCache {
        match self {
            NodeRef::Borrowed(node) => node,
            NodeRef::Owned(node) => node,
        }
    }
}

/// The seed's Multi-Raft coordinator: shard routing, shard reports and leader hints of a node.
///
/// ```
/// use crema::{MultiRaftBuilder, MultiRaftStats};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let coordinator = MultiRaftBuilder::new(1).num_shards(4).replica_factor(1).build_and_init().await?;
/// coordinator.put("user:1", "ann").await?;
/// assert_eq!(coordinator.get(b"user:1").await?.as_deref(), Some(&b"ann"[..]));
/// let shard = coordinator.shard_for_key(b"user:1");
/// assert!(shard < 4);
/// let stats: MultiRaftStats = coordinator.stats();
/// assert_eq!((stats.total_shards, stats.local_leader_shards), (4, 4));
/// // The seed's hint calls: this node's own leadership (gossiped when gossip runs), a hint
/// // heard from another node (kept only if newer).
/// let epoch = coordinator.set_local_shard_leader(shard, 1);
/// assert_eq!(coordinator.leader_hint(shard), Some((Some(1), epoch)));
/// assert!(!coordinator.set_shard_leader_if_newer(shard, 2, epoch - 1));
/// coordinator.node().shutdown().await;
/// # Ok(()) }
/// ```
pub struct MultiRaftCoordinator<'a> {
    node: NodeRef<'a>,
}

impl std::fmt::Debug for MultiRaftCoordinator<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiRaftCoordinator").field("node", &*self.node).finish()
    }
}

impl<'a> MultiRaftCoordinator<'a> {
    pub(crate) fn of(node: &'a DistributedCache) -> Self {
        Self { node: NodeRef::Borrowed(node) }
    }

    /// The node this coordinator looks at.
    pub fn node(&self) -> &DistributedCache {
        &self.node
    }

    /// Stores `value` under `key` in its shard (see [`DistributedCache::put`]).
    ///
    /// # Errors
    /// As [`DistributedCache::put`].
    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<()> {
        self.node.put(key, value).await
    }

    /// The value of `key`, linearizable (Read-Index on the key's shard).
    ///
    /// # Errors
    /// As [`DistributedCache::consistent_get`].
    pub async fn get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.node.consistent_get(key).await
    }

    /// Removes `key`; true when a live entry was removed.
    ///
    /// # Errors
    /// As [`DistributedCache::delete`].
    pub async fn delete(&self, key: &[u8]) -> Result<bool> {
        self.node.delete(Bytes::copy_from_slice(key)).await
    }

    /// The shard that owns `key`.
    pub fn shard_for_key(&self, key: &[u8]) -> ShardId {
        self.node.router().shard_for_key(key)
    }

    /// This node's replica of `shard`, if it holds one (see [`Shard`]).
    pub fn shard(&self, shard: ShardId) -> Option<Shard> {
        let total = self.node.router().num_shards();
        self.node.replica(shard).map(|replica| Shard::new(replica, total))
    }

    /// Every shard replica this node holds, by shard id.
    pub fn local_shards(&self) -> Vec<Shard> {
        let total = self.node.router().num_shards();
        let mut shards: Vec<Shard> = self.node.replicas().into_iter().map(|r| Shard::new(r, total)).collect();
        shards.sort_by_key(Shard::shard_id);
        shards
    }

    /// Every shard replica on this node, read without asking the groups (a group's learners
    /// and figures as last published).
    pub fn shard_info(&self) -> Vec<ShardInfo> {
        self.node.shard_info()
    }

    /// Figures over this node's shards.
    pub fn stats(&self) -> MultiRaftStats {
        let infos = self.shard_info();
        let me = self.node.node_id();
        let state = self.node.coordinator_state();
        let operations = state.operations.load(Ordering::Relaxed);
        let operations_per_sec = {
            let mut last = state.last_stats.lock().expect("stats poisoned");
            let elapsed = last.0.elapsed().as_secs_f64();
            let rate = if elapsed > 0.0 { (operations - last.1) as f64 / elapsed } else { 0.0 };
            *last = (Instant::now(), operations);
            rate
        };
        MultiRaftStats {
            total_shards: self.node.router().num_shards(),
            active_shards: infos.iter().filter(|s| s.state == ShardState::Active).count() as u32,
            local_leader_shards: infos.iter().filter(|s| s.leader == Some(me)).count() as u32,
            total_entries: infos.iter().map(|s| s.entry_count).sum(),
            operations_per_sec,
        }
    }

    /// The leader of every shard as this node knows it: its own group's for a shard it holds,
    /// else the newest hint.
    pub fn shard_leaders(&self) -> HashMap<ShardId, Option<NodeId>> {
        let hints = self.node.coordinator_state().hints.lock().expect("hints poisoned").clone();
        (0..self.node.router().num_shards())
            .map(|shard| {
                let known = self.node.shard_leader(shard);
                (shard, known.or_else(|| hints.get(&shard).and_then(|(leader, _)| *leader)))
            })
            .collect()
    }

    /// Records that `leader` leads `shard` (a routing hint), with an epoch above any before;
    /// answers that epoch.
    pub fn set_shard_leader(&self, shard: ShardId, leader: NodeId) -> u64 {
        self.node.coordinator_state().set_leader(shard, leader)
    }

    /// Records that this node leads `shard` (the seed's call when a node becomes a shard's
    /// leader), with an epoch above any held, and gossips the hint to the other nodes when the
    /// node runs gossip discovery; answers that epoch. The node does this by itself as its
    /// groups elect leaders (with their terms as epochs).
    pub fn set_local_shard_leader(&self, shard: ShardId, node: NodeId) -> u64 {
        let epoch = self.set_shard_leader(shard, node);
        if let Some(discovery) = self.node.config().cluster_discovery.as_ref() {
            discovery.broadcast_shard_leaders(&[crate::discovery::ShardLeaderHint {
                shard,
                leader: node,
                epoch,
            }]);
        }
        epoch
    }

    /// Records a hint heard from another node: kept only if `epoch` is newer than the hint held.
    pub fn set_shard_leader_if_newer(&self, shard: ShardId, leader: NodeId, epoch: u64) -> bool {
        self.node.coordinator_state().hint_if_newer(shard, leader, epoch)
    }

    /// The hint held for `shard`: its leader (none once invalidated) and epoch.
    pub fn leader_hint(&self, shard: ShardId) -> Option<(Option<NodeId>, u64)> {
        self.node.coordinator_state().hints.lock().expect("hints poisoned").get(&shard).copied()
    }

    /// Forgets every hint naming `node` as leader (it failed); answers the shards concerned.
    pub fn invalidate_leader_for_node(&self, node: NodeId) -> Vec<ShardId> {
        self.node.coordinator_state().forget_node(node)
    }
}

/// Builds a node with Multi-Raft on and answers its coordinator (the seed's
/// `MultiRaftBuilder::new(id).num_shards(16).replica_factor(3).build_and_init()`).
///
/// The node listens for peers on `raft_addr` (default `127.0.0.1:0`) and starts alone unless
/// seed nodes are given. Each shard lives on `replica_factor` of the nodes (all of them when
/// fewer are given; see [`crate::multiraft::placement`]).
#[derive(Debug, Clone)]
pub struct MultiRaftBuilder {
    node_id: NodeId,
    raft_addr: SocketAddr,
    seed_nodes: Vec<(NodeId, SocketAddr)>,
    multiraft: MultiRaftCacheConfig,
    replica_factor: usize,
    default_ttl: Option<Duration>,
}

impl MultiRaftBuilder {
    /// A builder for node `node_id`: 16 shards, replica factor 3, 100,000 entries per shard.
    pub fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            raft_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            seed_nodes: Vec::new(),
            multiraft: MultiRaftCacheConfig { enabled: true, ..MultiRaftCacheConfig::default() },
            replica_factor: 3,
            default_ttl: None,
        }
    }

    /// Sets the number of shards.
    pub fn num_shards(mut self, num_shards: u32) -> Self {
        self.multiraft.num_shards = num_shards;
        self
    }

    /// Sets the replicas each shard wants.
    pub fn replica_factor(mut self, replicas: usize) -> Self {
        self.replica_factor = replicas;
        self
    }

    /// Sets the most entries of each shard's cache.
    pub fn shard_capacity(mut self, capacity: u64) -> Self {
        self.multiraft.shard_capacity = capacity;
        self
    }

    /// Sets the TTL of writes that set none.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// Sets the address peers reach this node on.
    pub fn raft_addr(mut self, addr: SocketAddr) -> Self {
        self.raft_addr = addr;
        self
    }

    /// Sets the other nodes of the cluster.
    pub fn seed_nodes(mut self, seeds: Vec<(NodeId, SocketAddr)>) -> Self {
        self.seed_nodes = seeds;
        self
    }

    /// Starts the node (every shard's group) and answers its coordinator once every shard has a
    /// leader (within the request timeout).
    ///
    /// # Errors
    /// Invalid settings (a replica factor of 0 or above the nodes given, bad shard count), the
    /// address cannot be bound, or no leader of every shard in time.
    pub async fn build_and_init(self) -> Result<MultiRaftCoordinator<'static>> {
        let listener = std::net::TcpListener::bind(self.raft_addr)?;
        let raft_addr = listener.local_addr()?;
        // The nodes given are the cluster: a static list, health-checked by the node's pings.
        let discovery = crate::StaticClusterDiscovery::new(self.node_id, raft_addr, self.seed_nodes.clone());
        let mut config = CacheConfig::new(self.node_id, self.raft_addr)
            .with_seed_nodes(self.seed_nodes)
            .with_cluster_discovery(discovery)
            .with_multiraft_config(self.multiraft)
            .with_replica_factor(self.replica_factor)
            .with_max_capacity(
                self.multiraft.shard_capacity.saturating_mul(u64::from(self.multiraft.num_shards)),
            );
        if let Some(ttl) = self.default_ttl {
            config = config.with_default_ttl(ttl);
        }
        let timeout = config.request_timeout;
        if self.raft_addr.port() == 0 {
            config.raft_addr = raft_addr;
        }
        let node = DistributedCache::new_with_listener(config, listener).await?;
        if node.wait_for_leader(timeout).await.is_none() {
            node.shutdown().await;
            return Err(crate::Error::Timeout(timeout));
        }
        Ok(MultiRaftCoordinator { node: NodeRef::Owned(Arc::new(node)) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_config_in_the_seeds_shape() {
        let config = ShardConfig::new(3, 16)
            .with_replicas(5)
            .with_max_capacity(10)
            .with_default_ttl(Duration::from_secs(1));
        assert_eq!(
            (config.shard_id, config.total_shards, config.replicas, config.max_capacity),
            (3, 16, 5, 10)
        );
        assert_eq!(config.range().first_slot(), 3072);
        assert_eq!(ShardConfig::new(0, 1).replicas, 3);
    }

    #[test]
    fn a_hint_past_any_term_a_group_reaches_is_not_taken() {
        let state = CoordinatorState::default();
        assert!(!state.hint_if_newer(1, 99, (1 << 62) + 200), "just below 2^63");
        assert!(!state.hint_if_newer(1, 99, 1 << 33));
        assert!(state.hint_if_newer(1, 2, 1_796_640_713), "a clock-started term");
        assert!(state.hint_if_newer(1, 3, 1_796_640_714), "the next election");
        assert_eq!(state.hinted_leader(1), Some(3));
        // Terms grow one per election: past the highest known, only as far as a leap.
        let leap = crate::consensus::admit::MAX_TERM_LEAP;
        assert!(state.hint_if_newer(2, 2, 1_796_640_714 + leap - 1));
        assert!(!state.hint_if_newer(2, 2, 1_796_640_714 + 3 * leap));
    }
}
