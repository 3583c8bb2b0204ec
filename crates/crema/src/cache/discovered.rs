//! What a node does with its cluster discovery (see [`crate::discovery`]): links to the nodes
//! it finds, Raft membership changes exactly as its [`PeerManagementConfig`] allows, shard
//! leader hints from others into the coordinator; and the other way, this node's shard
//! leaderships broadcast as hints (debounced by `leader_broadcast_debounce_ms`).
//!
//! Links follow events at once. Voter changes are reconciled once a second on the meta shard's
//! leader, one change per pass, from the discovery's current view (an event can reach a
//! follower, and the leader may change): a voter declared down is removed, a live node that is
//! no member is added as a learner, and a learner that has caught up is promoted.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use raft::eraftpb::ConfChangeType;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::membership::Membership;
use super::table::ShardTable;
use crate::consensus::admit::WarnThrottle;
use crate::discovery::{ClusterDiscovery, DiscoveryEvent, NodeHealth, PeerManagementConfig, ShardLeaderHint};
use crate::multiraft::coordinator::CoordinatorState;
use crate::types::{NodeId, ShardId};

/// How often voter changes are reconciled.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// Peer links past which discovery adds none: gossip without a cluster secret is open to
/// anyone, and each link is a socket, a queue and a task that dials (20,000 announced strangers
/// took a node to 18,000 sockets). Links that configuration or Raft membership make are not
/// counted out.
pub const MAX_DISCOVERED_LINKS: usize = 1024;

/// What the discovery task needs.
pub(super) struct Discovered {
    pub discovery: Arc<dyn ClusterDiscovery>,
    pub membership: Membership,
    pub coordinator: Arc<CoordinatorState>,
    pub table: Arc<ShardTable>,
    /// How long leader changes gather before they are broadcast.
    pub debounce: Duration,
    /// Paces the warning for nodes not linked past [`MAX_DISCOVERED_LINKS`].
    pub link_warnings: WarnThrottle,
}

impl Discovered {
    pub async fn run(self, mut events: mpsc::UnboundedReceiver<DiscoveryEvent>, cancel: CancellationToken) {
        let policy = self.discovery.peer_management();
        let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hints = tokio::time::interval(self.debounce.max(Duration::from_millis(10)));
        hints.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut broadcast: HashMap<ShardId, u64> = HashMap::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                Some(event) = events.recv() => self.on_event(event, policy),
                _ = reconcile.tick(), if policy.auto_add_voters || policy.auto_remove_voters => {
                    self.reconcile_voters(policy).await;
                }
                _ = hints.tick() => self.broadcast_leaderships(&mut broadcast),
            }
        }
    }

    fn on_event(&self, event: DiscoveryEvent, policy: PeerManagementConfig) {
        let me = self.membership.node_id;
        match event {
            DiscoveryEvent::NodeUp(node) if node.node_id != me && node.node_id != 0 => {
                // Only a node the transport does not know: an address a link already has
                // came from the configuration or from Raft membership, and gossip (which anyone
                // on an open network can speak) must not redirect it.
                let transport = &self.membership.transport;
                if policy.auto_add_peers && transport.peer_addr(node.node_id).is_none() {
                    if transport.peer_count() >= MAX_DISCOVERED_LINKS {
                        if let Some(count) = self.link_warnings.note(std::time::Instant::now()) {
                            warn!(
                                node = node.node_id,
                                not_linked_since_last_warning = count,
                                "discovered nodes not linked: this node keeps {MAX_DISCOVERED_LINKS} links at most \
                                 (gossip without a cluster secret takes anyone's announcements)"
                            );
                        }
                        return;
                    }
                    debug!(node = node.node_id, addr = %node.raft_addr, "discovered: linked as a peer");
                    transport.add_peer(node.node_id, Some(node.raft_addr));
                }
            }
            DiscoveryEvent::NodeUp(_) => {}
            DiscoveryEvent::NodeDown(id) => {
                let forgotten = self.coordinator.forget_node(id);
                info!(node = id, hints = forgotten.len(), "discovery declared a node down");
                let member = self.is_member(id);
                if policy.auto_remove_peers && id != me && !member {
                    self.membership.transport.remove_peer(id);
                }
            }
            // Only for shards that exist (as `Envelope::Leaders`): found in review, a stranger's
            // gossip could grow the hints with any shard id. And only naming a node that follows
            // the meta shard (every node of the cluster does): found from outside, hints naming
            // a node that does not exist routed requests to nowhere.
            DiscoveryEvent::ShardLeader(hint)
                if hint.shard < self.table.num_shards() && self.is_member(hint.leader) =>
            {
                self.coordinator.hint_if_newer(hint.shard, hint.leader, hint.epoch);
            }
            DiscoveryEvent::ShardLeader(_) => {}
        }
    }

    /// Whether `id` is a voter or learner of any shard on this node (its link stays).
    fn is_member(&self, id: NodeId) -> bool {
        self.table
            .groups()
            .iter()
            .any(|g| g.shared.voters().contains(&id) || g.shared.learners().contains(&id))
    }

    /// One voter change, when this node leads the meta shard and the policy allows one.
    async fn reconcile_voters(&self, policy: PeerManagementConfig) {
        if self.membership.shards > 1 {
            // Placement changes the members of every shard, the meta shard's too.
            return;
        }
        let meta = &self.membership.meta;
        if !meta.shared.is_leader() {
            return;
        }
        let Ok(status) = meta.status().await else { return };
        let nodes = self.discovery.nodes();
        let health = |id: NodeId| nodes.iter().find(|n| n.node_id == id).map(|n| n.health);
        let me = self.membership.node_id;
        let change = if policy.auto_remove_voters {
            let members = status.voters.iter().chain(&status.learners);
            members
                .copied()
                .find(|v| *v != me && health(*v) == Some(NodeHealth::Down))
                .map(|v| (ConfChangeType::RemoveNode, v, None))
        } else {
            None
        };
        let change = change.or_else(|| {
            if !policy.auto_add_voters {
                return None;
            }
            let caught_up = |id: NodeId| {
                status.replica_progress.iter().any(|(p, matched)| *p == id && *matched >= status.commit_index)
            };
            let addr_of = |id: NodeId| nodes.iter().find(|n| n.node_id == id).map(|n| n.raft_addr);
            let promote = status
                .learners
                .iter()
                .copied()
                .find(|l| caught_up(*l) && health(*l) == Some(NodeHealth::Alive));
            if let Some(learner) = promote {
                // The address membership gave it, not one gossip claims.
                let addr = self.membership.transport.peer_addr(learner).or(addr_of(learner));
                return Some((ConfChangeType::AddNode, learner, addr));
            }
            let member = |id: NodeId| status.voters.contains(&id) || status.learners.contains(&id);
            nodes
                .iter()
                .find(|n| n.node_id != 0 && n.health == NodeHealth::Alive && !member(n.node_id))
                .map(|n| (ConfChangeType::AddLearnerNode, n.node_id, Some(n.raft_addr)))
        });
        let Some((kind, id, addr)) = change else { return };
        match self.membership.change(kind, id, addr).await {
            Ok(()) => info!(node = id, ?kind, "discovery policy: membership changed"),
            Err(e) => warn!(node = id, ?kind, error = %e, "discovery policy: membership change refused"),
        }
    }

    /// Broadcasts the shards this node leads whose term changed since the last broadcast.
    fn broadcast_leaderships(&self, broadcast: &mut HashMap<ShardId, u64>) {
        let me = self.membership.node_id;
        let mut changed = Vec::new();
        for group in &self.table.groups() {
            let shared = &group.shared;
            if !shared.is_leader() {
                continue;
            }
            let hint = ShardLeaderHint { shard: shared.shard, leader: me, epoch: shared.term() };
            self.coordinator.hint_if_newer(hint.shard, me, hint.epoch);
            if broadcast.insert(hint.shard, hint.epoch) != Some(hint.epoch) {
                changed.push(hint);
            }
        }
        if !changed.is_empty() {
            self.discovery.broadcast_shard_leaders(&changed);
        }
    }
}
