//! [`StaticClusterDiscovery`]: a fixed list of nodes, health-checked by what the node already
//! hears from them (its pings to every peer, see `cache::keepalive`): no extra connection, no
//! extra port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{
    ClusterDiscovery, DiscoveredNode, DiscoveryContext, DiscoveryError, DiscoveryEvent, NodeHealth,
    PeerManagementConfig,
};
use crate::types::NodeId;

/// How often the list is checked.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// A node unheard for this long is declared down (suspect before).
const DEFAULT_DOWN_AFTER: Duration = Duration::from_secs(5);

/// A fixed list of nodes with health checks (see the module docs).
#[derive(Debug, Clone)]
pub struct StaticClusterDiscovery {
    node_id: NodeId,
    peers: Vec<(NodeId, SocketAddr)>,
    down_after: Duration,
    policy: PeerManagementConfig,
    state: Arc<Mutex<BTreeMap<NodeId, DiscoveredNode>>>,
}

impl StaticClusterDiscovery {
    /// Node `node_id` at `raft_addr`, in a cluster of itself and `peers` (`(id, raft address)`).
    pub fn new(node_id: NodeId, raft_addr: SocketAddr, peers: Vec<(NodeId, SocketAddr)>) -> Self {
        let mut state = BTreeMap::new();
        state.insert(
            node_id,
            DiscoveredNode { node_id, raft_addr, gossip_addr: None, health: NodeHealth::Alive },
        );
        for (id, addr) in peers.iter().filter(|(id, _)| *id != node_id) {
            let node = DiscoveredNode {
                node_id: *id,
                raft_addr: *addr,
                gossip_addr: None,
                health: NodeHealth::Suspect,
            };
            state.insert(*id, node);
        }
        Self {
            node_id,
            peers,
            down_after: DEFAULT_DOWN_AFTER,
            policy: PeerManagementConfig::default(),
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// A node unheard for `after` is declared down (default 5 s).
    pub fn with_down_after(mut self, after: Duration) -> Self {
        self.down_after = after;
        self
    }

    /// What this discovery may change on its own (default: nothing).
    pub fn with_peer_management(mut self, policy: PeerManagementConfig) -> Self {
        self.policy = policy;
        self
    }
}

impl ClusterDiscovery for StaticClusterDiscovery {
    fn kind(&self) -> &'static str {
        "static"
    }

    fn start(&self, ctx: DiscoveryContext) -> Result<Option<tokio::task::JoinHandle<()>>, DiscoveryError> {
        let state = self.state.clone();
        let (me, down_after) = (self.node_id, self.down_after);
        let peers: Vec<(NodeId, SocketAddr)> =
            self.peers.iter().copied().filter(|(id, _)| *id != me).collect();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut unheard_since: BTreeMap<NodeId, Instant> =
                peers.iter().map(|(id, _)| (*id, started)).collect();
            // Every listed node is announced once: a policy that adds peers links to them all.
            for (id, addr) in &peers {
                let health = NodeHealth::Suspect;
                ctx.emit(DiscoveryEvent::NodeUp(DiscoveredNode {
                    node_id: *id,
                    raft_addr: *addr,
                    gossip_addr: None,
                    health,
                }));
            }
            let mut ticker = tokio::time::interval(CHECK_EVERY);
            loop {
                tokio::select! {
                    _ = ctx.cancel_token().cancelled() => return,
                    _ = ticker.tick() => {}
                }
                let now = Instant::now();
                for (id, addr) in &peers {
                    let health = if ctx.hears(*id) {
                        unheard_since.remove(id);
                        NodeHealth::Alive
                    } else {
                        let since = *unheard_since.entry(*id).or_insert(now);
                        if now.duration_since(since) >= down_after {
                            NodeHealth::Down
                        } else {
                            NodeHealth::Suspect
                        }
                    };
                    let before = {
                        let mut state = state.lock().expect("discovery state poisoned");
                        let node = state.entry(*id).or_insert(DiscoveredNode {
                            node_id: *id,
                            raft_addr: *addr,
                            gossip_addr: None,
                            health,
                        });
                        std::mem::replace(&mut node.health, health)
                    };
                    match (before, health) {
                        (NodeHealth::Down, NodeHealth::Alive) | (NodeHealth::Suspect, NodeHealth::Alive) => {
                            ctx.emit(DiscoveryEvent::NodeUp(DiscoveredNode {
                                node_id: *id,
                                raft_addr: *addr,
                                gossip_addr: None,
                                health,
                            }));
                        }
                        (b, NodeHealth::Down) if b != NodeHealth::Down => {
                            ctx.emit(DiscoveryEvent::NodeDown(*id))
                        }
                        _ => {}
                    }
                }
            }
        });
        Ok(Some(task))
    }

    fn nodes(&self) -> Vec<DiscoveredNode> {
        self.state.lock().expect("discovery state poisoned").values().cloned().collect()
    }

    fn peer_management(&self) -> PeerManagementConfig {
        self.policy
    }
}
