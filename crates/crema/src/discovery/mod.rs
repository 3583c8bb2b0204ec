//! Cluster discovery, the first tier of the seed's two-tier membership: which nodes exist and
//! which are alive. The second tier, Raft membership (who votes), changes only as a
//! discovery's [`PeerManagementConfig`] allows, and only through Raft.
//!
//! A [`ClusterDiscovery`] is handed to [`crate::CacheConfig::with_cluster_discovery`]; the node
//! starts it with a [`DiscoveryContext`] and acts on the [`DiscoveryEvent`]s it emits:
//!
//! - [`MemberlistDiscovery`]: SWIM gossip (the `foca` crate) on its own UDP port, from a few
//!   seed addresses; shard leaders travel with it as routing hints.
//! - [`StaticClusterDiscovery`]: a fixed list of nodes, health-checked by the node's own pings
//!   (no extra connections).
//! - [`NoOpClusterDiscovery`]: nothing discovered; membership is managed by hand.
//!
//! ```
//! use crema::{CacheConfig, NoOpClusterDiscovery, StaticClusterDiscovery};
//!
//! let addr = "127.0.0.1:9000".parse().unwrap();
//! let peers = vec![(2, "127.0.0.1:9001".parse().unwrap())];
//! let config = CacheConfig::new(1, addr)
//!     .with_seed_nodes(peers.clone())
//!     .with_cluster_discovery(StaticClusterDiscovery::new(1, addr, peers));
//! assert_eq!(config.cluster_discovery.as_ref().unwrap().kind(), "static");
//! let manual = CacheConfig::new(1, addr).with_cluster_discovery(NoOpClusterDiscovery::new(1, addr));
//! manual.validate().unwrap();
//! ```

mod hints;
mod identities;
pub mod memberlist;
mod replay;
mod static_list;

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::transport::auth::ClusterSecret;
use crate::types::{NodeId, ShardId};

pub use memberlist::{MemberlistConfig, MemberlistDiscovery};
pub use static_list::StaticClusterDiscovery;

/// What a discovery may do to the cluster on its own. Everything is off by default: discovery
/// then only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PeerManagementConfig {
    /// A discovered node becomes a transport peer: this node keeps a link to it (routing,
    /// forwarding, pings). Raft membership does not change, and the address of a node this
    /// node already links to is never changed by discovery.
    pub auto_add_peers: bool,
    /// A node declared down loses its transport link, unless it is still a member of a Raft
    /// group on this node (links follow membership first).
    pub auto_remove_peers: bool,
    /// A discovered node that is no member is added to the cluster as a voter (by the leader,
    /// through Raft: as a learner first, promoted once it caught up).
    pub auto_add_voters: bool,
    /// A voter declared down is removed from the cluster (by the leader, through Raft), unless
    /// that would leave fewer than one voter. Only for clusters that replace dead nodes rather
    /// than wait for them: a removed node must be added back to serve again.
    pub auto_remove_voters: bool,
}

/// How a discovery sees a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeHealth {
    /// Heard from recently.
    Alive,
    /// Not heard from for a while; not yet declared down.
    Suspect,
    /// Declared down.
    Down,
}

/// A node a discovery knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveredNode {
    /// Its node id.
    pub node_id: NodeId,
    /// Its peer (Raft) address.
    pub raft_addr: SocketAddr,
    /// Its gossip address, with gossip discovery.
    pub gossip_addr: Option<SocketAddr>,
    /// How the discovery sees it.
    pub health: NodeHealth,
}

/// A routing hint: `leader` leads `shard` as of `epoch` (its Raft term); a newer epoch wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardLeaderHint {
    /// The shard.
    pub shard: ShardId,
    /// Its leader.
    pub leader: NodeId,
    /// The leader's term.
    pub epoch: u64,
}

/// What a discovery tells its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryEvent {
    /// A node was found, or came back.
    NodeUp(DiscoveredNode),
    /// A node was declared down.
    NodeDown(NodeId),
    /// Another node's view of a shard's leader.
    ShardLeader(ShardLeaderHint),
}

/// What a starting node hands its discovery.
#[derive(Clone)]
pub struct DiscoveryContext {
    events: mpsc::UnboundedSender<DiscoveryEvent>,
    hears: Arc<dyn Fn(NodeId) -> bool + Send + Sync>,
    cancel: CancellationToken,
    secret: Option<ClusterSecret>,
    peers_authenticated: bool,
}

impl Debug for DiscoveryContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoveryContext").finish_non_exhaustive()
    }
}

impl DiscoveryContext {
    /// A context whose events go to `events`; `hears(n)` answers whether the node heard from
    /// peer `n` within an election timeout; `secret` authenticates gossip; `peers_authenticated`
    /// when the peer port is (then gossip must be too).
    pub fn new(
        events: mpsc::UnboundedSender<DiscoveryEvent>,
        hears: Arc<dyn Fn(NodeId) -> bool + Send + Sync>,
        cancel: CancellationToken,
        secret: Option<ClusterSecret>,
        peers_authenticated: bool,
    ) -> Self {
        Self { events, hears, cancel, secret, peers_authenticated }
    }

    /// Hands `event` to the node (dropped once the node stopped).
    pub fn emit(&self, event: DiscoveryEvent) {
        let _ = self.events.send(event);
    }

    /// Whether the node hears from `node` (its pings or anything else, recently).
    pub fn hears(&self, node: NodeId) -> bool {
        (self.hears)(node)
    }

    /// Cancelled when the node stops: the discovery's tasks end then.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// The cluster secret, if the cluster has one.
    pub(crate) fn secret(&self) -> Option<&ClusterSecret> {
        self.secret.as_ref()
    }

    /// Whether the peer port authenticates peers (secret or mutual TLS).
    pub(crate) fn peers_authenticated(&self) -> bool {
        self.peers_authenticated
    }
}

/// A discovery failed to start.
#[derive(Debug, thiserror::Error)]
#[error("cluster discovery ({kind}): {message}")]
pub struct DiscoveryError {
    /// Which discovery.
    pub kind: &'static str,
    /// What went wrong.
    pub message: String,
}

/// Finds the cluster's nodes and watches their health (see the module docs).
pub trait ClusterDiscovery: Send + Sync + Debug + 'static {
    /// A short name: `memberlist`, `static`, `noop`, ...
    fn kind(&self) -> &'static str;

    /// Starts discovering, inside the node's tokio runtime; called once by the node. Answers
    /// the discovery's task, if it runs one: the node watches it, and a task that ends before
    /// the node does (a panic) stops the node loudly rather than leave it blind. The task must
    /// end when `ctx`'s token is cancelled.
    ///
    /// # Errors
    /// The discovery cannot run (a port that does not bind, a missing secret): the node does
    /// not start.
    fn start(&self, ctx: DiscoveryContext) -> Result<Option<JoinHandle<()>>, DiscoveryError>;

    /// The nodes known now, this node included.
    fn nodes(&self) -> Vec<DiscoveredNode>;

    /// What this discovery may change on its own.
    fn peer_management(&self) -> PeerManagementConfig {
        PeerManagementConfig::default()
    }

    /// Spreads the shard leaderships this node holds (routing hints); nothing by default.
    fn broadcast_shard_leaders(&self, _hints: &[ShardLeaderHint]) {}
}

/// No discovery: the node knows what its configuration lists, and membership is managed by
/// hand (the admin API, `crema cluster`). The default.
#[derive(Debug, Clone)]
pub struct NoOpClusterDiscovery {
    node_id: NodeId,
    raft_addr: SocketAddr,
}

impl NoOpClusterDiscovery {
    /// No discovery for node `node_id` at `raft_addr`.
    pub fn new(node_id: NodeId, raft_addr: SocketAddr) -> Self {
        Self { node_id, raft_addr }
    }
}

impl ClusterDiscovery for NoOpClusterDiscovery {
    fn kind(&self) -> &'static str {
        "noop"
    }

    fn start(&self, _ctx: DiscoveryContext) -> Result<Option<JoinHandle<()>>, DiscoveryError> {
        Ok(None)
    }

    fn nodes(&self) -> Vec<DiscoveredNode> {
        vec![DiscoveredNode {
            node_id: self.node_id,
            raft_addr: self.raft_addr,
            gossip_addr: None,
            health: NodeHealth::Alive,
        }]
    }
}
