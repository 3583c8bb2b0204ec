//! Node configuration: [`CacheConfig`] (the whole node) and [`RaftConfig`] (the consensus timing and
//! flow-control knobs, in `config/raft.rs`).
//!
//! Both are plain data with `Default`-like constructors, builder methods for code that builds them
//! inline (as the Quick Start does) and a `validate()` that turns a bad setting into a clear
//! [`ConfigError`] before anything is started. Nothing here touches sockets or clocks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::checkpoint::CheckpointConfig;
use crate::multiraft::MultiRaftCacheConfig;
use crate::types::NodeId;

mod raft;
mod validate;

pub use raft::RaftConfig;

/// The longest TTL a command may carry (10 years). Longer is almost surely a unit mistake
/// (seconds passed as milliseconds), and it keeps `now + ttl` far from overflowing.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The largest frame the peer transport accepts (16 MiB). A value must fit in one frame with
/// its envelope, so `max_value_bytes` is capped below it.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Room kept in a frame for the envelope, the key and the Raft message around a value.
const FRAME_OVERHEAD_BYTES: usize = 64 * 1024;

/// The largest encoded command a node proposes (16 MiB less the frame overhead): a Raft entry
/// must fit in one peer frame with its envelope, or no follower ever receives it and its group
/// stops (found from outside: one MSET of two 8 MiB values did that). A command of several
/// keys over it is refused before it is proposed.
pub const MAX_COMMAND_BYTES: usize = MAX_FRAME_BYTES - FRAME_OVERHEAD_BYTES;

/// A configuration that cannot work, found by `validate()` before the node starts.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// A setting is out of its allowed range; the message names the setting and the range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid(msg.into())
}

/// Everything a node needs to start: identity, peers, cache sizing, Raft and request limits.
///
/// ```
/// use crema::CacheConfig;
/// use std::time::Duration;
///
/// let config = CacheConfig::new(1, "127.0.0.1:9000".parse().unwrap())
///     .with_seed_nodes(vec![(2, "127.0.0.1:9001".parse().unwrap())])
///     .with_max_capacity(100_000)
///     .with_default_ttl(Duration::from_secs(3600));
/// config.validate().unwrap();
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct CacheConfig {
    /// This node's id; unique in the cluster and never 0.
    pub node_id: NodeId,
    /// The address the peer transport listens on and that peers dial.
    pub raft_addr: SocketAddr,
    /// The other members at bootstrap, `(id, raft address)`. Together with this node they are the
    /// initial voters (every member must list the same set), unless `join` is set.
    pub seed_nodes: Vec<(NodeId, SocketAddr)>,
    /// Where this node's clients connect (its RESP address), told to every peer in the
    /// handshake so that each can name it to cluster-aware clients (`CLUSTER SLOTS`, `-MOVED`)
    /// although it was not configured there (a node that joined later). A wildcard host
    /// (`0.0.0.0:6380`: every interface) is named, on each peer, by the host that peer reaches
    /// this node at. Default none.
    pub client_addr: Option<SocketAddr>,
    /// Start empty and wait to be added by an existing cluster's `add_peer`/`add_learner`;
    /// `seed_nodes` then only gives the members' addresses. Default false.
    pub join: bool,
    /// Start as the only voter of a new cluster, keeping this node's state (etcd's
    /// `--force-new-cluster`): the way out when a majority of the voters is lost for good.
    /// Every other member is dropped from this node's configuration without consensus; restart
    /// them empty with `join` and add them back. Default false.
    pub force_new_cluster: bool,
    /// Maximum number of entries in the local cache. Default 100,000.
    pub max_capacity: u64,
    /// Maximum bytes of keys and values (plus a fixed per-entry overhead) in the local cache;
    /// when set, it replaces `max_capacity` as the eviction bound.
    pub max_memory_bytes: Option<u64>,
    /// TTL given to writes that do not carry their own. Default none (entries live until evicted).
    pub default_ttl: Option<Duration>,
    /// Time-to-idle of local entries: an entry not read or written for this long is dropped from
    /// this node's cache (local only, like eviction). Default none.
    pub default_tti: Option<Duration>,
    /// Raft timing and flow control.
    pub raft: RaftConfig,
    /// Forward writes and read-index requests that reach a follower to the leader. Default true.
    pub forwarding_enabled: bool,
    /// How long a forwarded write may take, from when it is first sent to the leader, before
    /// it fails with a timeout (never longer than `request_timeout`). Within it, the write is
    /// sent again to each new leader. Default 5 s.
    pub forwarding_timeout: Duration,
    /// How long a write or a linearizable read may take on this node before it fails with a
    /// timeout (its outcome is then unknown). Default 5 s.
    pub request_timeout: Duration,
    /// Largest key accepted, in bytes. Default 64 KiB.
    pub max_key_bytes: usize,
    /// Largest value accepted, in bytes. Default 8 MiB; at most 16 MiB minus 64 KiB.
    pub max_value_bytes: usize,
    /// Capacity of each Raft group's client mailbox (writes, reads, admin). Default 4,096.
    pub mailbox_capacity: usize,
    /// Frames queued per peer before new ones are dropped (Raft retransmits). Default 8,192.
    pub peer_queue_capacity: usize,
    /// Where the Raft log lives. Default memory.
    pub raft_storage: RaftStorageType,
    /// The node's data directory (RocksDB storage needs one): `raft/` holds the log,
    /// `checkpoints/` the checkpoints unless [`Self::checkpoint`] names another directory.
    pub data_dir: Option<PathBuf>,
    /// Checkpoint settings with durable storage; none: the defaults in `<data_dir>/checkpoints`.
    pub checkpoint: Option<CheckpointConfig>,
    /// With durable storage, writes are held back (new ones refused) while the data disk has
    /// less than this free. Default 64 MiB.
    pub min_free_disk_bytes: u64,
    /// The secret every node of the cluster shares: peers must prove they know it before
    /// anything else is said on the peer port (see `transport::auth`). None: peers are not
    /// authenticated (keep the peer port on a trusted network).
    pub cluster_secret: Option<crate::ClusterSecret>,
    /// Mutual TLS on the peer port (see `transport::tls`); none: plain TCP.
    pub peer_tls: Option<crate::PeerTls>,
    /// Multi-Raft: how many shards (Raft groups) the keys are split into; off by default (one
    /// group).
    pub multiraft: MultiRaftCacheConfig,
    /// With Multi-Raft, the voting replicas of each shard (default 3; 1 to 15): each shard
    /// lives on this many nodes, spread evenly (see [`crate::multiraft::placement`]); with
    /// fewer nodes, on all of them. The meta shard (shard 0) also has every other node as a
    /// non-voting learner, so every node reads the shard map. Every node of a cluster must be
    /// started with the same value.
    pub replica_factor: usize,
    /// How this node finds the others and watches their health (see [`crate::discovery`]);
    /// none: no discovery, membership managed by hand. Multi-Raft needs one.
    pub cluster_discovery: Option<std::sync::Arc<dyn crate::discovery::ClusterDiscovery>>,
    /// Test-only fault injection shared by a test cluster's nodes (feature `fault-injection`).
    #[cfg(feature = "fault-injection")]
    pub faults: Option<std::sync::Arc<crate::faults::Faults>>,
}

/// Where a node keeps its Raft log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RaftStorageType {
    /// In memory: fastest; a restarted node has lost its data and catches up from its peers (see
    /// the README's "Restarting a memory node").
    #[default]
    Memory,
    /// On disk in RocksDB (cargo feature `rocksdb`), with checkpoints: a restarted node recovers
    /// every write it acknowledged. Needs [`CacheConfig::with_data_dir`].
    RocksDb,
}

impl CacheConfig {
    /// A single-node configuration with every default; add peers with [`Self::with_seed_nodes`].
    pub fn new(node_id: NodeId, raft_addr: SocketAddr) -> Self {
        Self {
            node_id,
            raft_addr,
            seed_nodes: Vec::new(),
            client_addr: None,
            join: false,
            force_new_cluster: false,
            max_capacity: 100_000,
            max_memory_bytes: None,
            default_ttl: None,
            default_tti: None,
            raft: RaftConfig::default(),
            forwarding_enabled: true,
            forwarding_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            max_key_bytes: 64 * 1024,
            max_value_bytes: 8 * 1024 * 1024,
            mailbox_capacity: 4096,
            peer_queue_capacity: 8192,
            raft_storage: RaftStorageType::Memory,
            data_dir: None,
            checkpoint: None,
            min_free_disk_bytes: 64 * 1024 * 1024,
            cluster_secret: None,
            peer_tls: None,
            multiraft: MultiRaftCacheConfig::default(),
            replica_factor: 3,
            cluster_discovery: None,
            #[cfg(feature = "fault-injection")]
            faults: None,
        }
    }

    /// Sets the Multi-Raft settings: with `enabled`, keys are split into `num_shards` shards,
    /// each its own Raft group (see [`crate::multiraft`]).
    pub fn with_multiraft_config(mut self, multiraft: MultiRaftCacheConfig) -> Self {
        self.multiraft = multiraft;
        self
    }

    /// Sets the voting replicas of each shard (see [`Self::replica_factor`]).
    pub fn with_replica_factor(mut self, replicas: usize) -> Self {
        self.replica_factor = replicas;
        self
    }

    /// Sets how this node discovers the others ([`crate::MemberlistDiscovery`],
    /// [`crate::StaticClusterDiscovery`], [`crate::NoOpClusterDiscovery`] or your own).
    pub fn with_cluster_discovery(mut self, discovery: impl crate::discovery::ClusterDiscovery) -> Self {
        self.cluster_discovery = Some(std::sync::Arc::new(discovery));
        self
    }

    /// How many Raft groups (shards) this node runs: 1 unless Multi-Raft is enabled.
    pub fn shard_count(&self) -> u32 {
        self.multiraft.shard_count()
    }

    /// Routes this node's peer traffic and group loop through `faults` (test-only, feature
    /// `fault-injection`).
    #[cfg(feature = "fault-injection")]
    pub fn with_faults(mut self, faults: std::sync::Arc<crate::faults::Faults>) -> Self {
        self.faults = Some(faults);
        self
    }

    /// Keeps the Raft log in memory (the default) or in RocksDB.
    pub fn with_raft_storage_type(mut self, storage: RaftStorageType) -> Self {
        self.raft_storage = storage;
        self
    }

    /// The data directory (required for [`RaftStorageType::RocksDb`]; created if missing).
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// With durable storage: hold writes back (and refuse new ones) while the data disk has less
    /// than `bytes` free, instead of running it full.
    pub fn with_min_free_disk_bytes(mut self, bytes: u64) -> Self {
        self.min_free_disk_bytes = bytes;
        self
    }

    /// Checkpoint settings for durable storage.
    pub fn with_checkpoint_config(mut self, checkpoint: CheckpointConfig) -> Self {
        self.checkpoint = Some(checkpoint);
        self
    }

    /// The checkpoint settings in effect with durable storage: the configured ones, or the
    /// defaults in `<data_dir>/checkpoints`.
    pub fn checkpoint_config(&self) -> Option<CheckpointConfig> {
        if self.raft_storage != RaftStorageType::RocksDb {
            return None;
        }
        self.checkpoint
            .clone()
            .or_else(|| self.data_dir.as_ref().map(|d| CheckpointConfig::new(d.join("checkpoints"))))
    }

    /// Where shard `shard`'s checkpoints go: the checkpoint directory itself with one shard;
    /// with several, its `shard-<id>` subdirectory (one directory, and one prune, per shard).
    /// Each file names its shard in its header.
    pub fn shard_checkpoint_config(&self, shard: crate::types::ShardId) -> Option<CheckpointConfig> {
        let mut config = self.checkpoint_config()?.with_shard(shard);
        config.min_free_bytes = config.min_free_bytes.max(self.min_free_disk_bytes);
        if self.shard_count() == 1 {
            return Some(config);
        }
        let dir = config.dir.join(format!("shard-{shard}"));
        Some(CheckpointConfig { dir, ..config })
    }

    /// Sets the other members of the cluster at bootstrap.
    pub fn with_seed_nodes(mut self, seed_nodes: Vec<(NodeId, SocketAddr)>) -> Self {
        self.seed_nodes = seed_nodes;
        self
    }

    /// Tells peers where this node's clients connect (see [`Self::client_addr`]).
    pub fn with_client_addr(mut self, addr: SocketAddr) -> Self {
        self.client_addr = Some(addr);
        self
    }

    /// Authenticates peers with `secret` (see [`Self::cluster_secret`]); every node of the
    /// cluster needs the same one.
    pub fn with_cluster_secret(mut self, secret: crate::ClusterSecret) -> Self {
        self.cluster_secret = Some(secret);
        self
    }

    /// Secures the peer port with mutual TLS (see [`Self::peer_tls`]); every node of the
    /// cluster needs a certificate from the same CA.
    pub fn with_peer_tls(mut self, tls: crate::PeerTls) -> Self {
        self.peer_tls = Some(tls);
        self
    }

    /// Starts this node empty, to be added to a running cluster (see [`Self::join`]).
    pub fn with_join(mut self, join: bool) -> Self {
        self.join = join;
        self
    }

    /// Starts this node as the only voter of a new cluster (see [`Self::force_new_cluster`]).
    pub fn with_force_new_cluster(mut self, force: bool) -> Self {
        self.force_new_cluster = force;
        self
    }

    /// Sets the maximum number of local entries.
    pub fn with_max_capacity(mut self, max_capacity: u64) -> Self {
        self.max_capacity = max_capacity;
        self
    }

    /// Bounds the local cache by bytes instead of entries.
    pub fn with_max_memory(mut self, max_memory_bytes: u64) -> Self {
        self.max_memory_bytes = Some(max_memory_bytes);
        self
    }

    /// Sets the TTL of writes that carry none.
    pub fn with_default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// Sets the local time-to-idle.
    pub fn with_default_tti(mut self, tti: Duration) -> Self {
        self.default_tti = Some(tti);
        self
    }

    /// Replaces the Raft settings.
    pub fn with_raft_config(mut self, raft: RaftConfig) -> Self {
        self.raft = raft;
        self
    }

    /// Turns forwarding of follower writes to the leader on or off.
    pub fn with_forwarding(mut self, enabled: bool) -> Self {
        self.forwarding_enabled = enabled;
        self
    }

    /// Sets the forwarding timeout.
    pub fn with_forwarding_timeout(mut self, timeout: Duration) -> Self {
        self.forwarding_timeout = timeout;
        self
    }

    /// Sets the local request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Sets the largest accepted key.
    pub fn with_max_key_size(mut self, bytes: usize) -> Self {
        self.max_key_bytes = bytes;
        self
    }

    /// Sets the largest accepted value.
    pub fn with_max_value_size(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// The first shard map of the cluster, computed alike on every node from the seed list
    /// and `replica_factor` (see [`crate::multiraft::ShardMap::initial`]); none with one shard.
    pub fn initial_shard_map(&self) -> Option<crate::multiraft::ShardMap> {
        (self.shard_count() > 1).then(|| {
            crate::multiraft::ShardMap::initial(
                self.shard_count(),
                &self.initial_voters(),
                self.replica_factor,
            )
        })
    }

    /// The voters and learners shard `shard`'s group starts with on this node: nothing for a
    /// node that joins a running cluster (which starts the meta shard only, with several: the
    /// others come as placement gives them); else its members in the first shard map (every
    /// seed node with one shard), and for the meta shard every other seed node as a learner.
    /// None when this node holds no replica of the shard at first.
    pub(crate) fn initial_conf(&self, shard: crate::types::ShardId) -> Option<(Vec<NodeId>, Vec<NodeId>)> {
        if self.join {
            let starts = shard == crate::types::DEFAULT_SHARD || self.shard_count() == 1;
            return starts.then(|| (Vec::new(), Vec::new()));
        }
        let nodes = self.initial_voters();
        let Some(map) = self.initial_shard_map() else { return Some((nodes, Vec::new())) };
        let voters = map.shard(shard).map(|p| p.members.clone()).unwrap_or_default();
        if shard == crate::types::DEFAULT_SHARD {
            let learners = nodes.into_iter().filter(|n| !voters.contains(n)).collect();
            return Some((voters, learners));
        }
        voters.contains(&self.node_id).then(|| (voters, Vec::new()))
    }

    /// Ids of the initial nodes: this node and every seed, sorted, without duplicates (the
    /// voters of every shard without placement).
    pub fn initial_voters(&self) -> Vec<NodeId> {
        let mut voters: Vec<NodeId> = self.seed_nodes.iter().map(|(id, _)| *id).collect();
        voters.push(self.node_id);
        voters.sort_unstable();
        voters.dedup();
        voters
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
