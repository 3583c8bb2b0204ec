//! The node's side of placement (see `crate::multiraft::placement` for the map and the
//! planner): one task per node, looking at the agreed shard map whenever it changes and once
//! an election timeout (at most a second).
//!
//! - **The first map.** The meta shard's leader proposes the map every seed node computed at
//!   start (`Init`), right after the first election.
//! - **Following the map.** A node starts an empty replica of each shard the map names it a
//!   member of and it holds none of (the shard's leader then adds it as a learner and sends it
//!   a snapshot; a memory node's replica of a group that counts it already starts as that
//!   member, recovering, since the node restarted, and so does one of a shard moving away from
//!   it whose group still counts it: `restart.rs`), and retires the replica of a shard whose
//!   move away from it has settled, or whose group removed it (`cache::replica`). The meta
//!   shard stays on every node.
//! - **Carrying moves out.** The leader of a shard whose group's voters differ from its members
//!   in the map changes them one step per look, each through the checked membership path: a
//!   missing member is added as a learner, promoted once it has the log (through the group's
//!   latest configuration change, and within `CAUGHT_UP_SLACK` entries of the commit index), and only then is a member the map dropped
//!   removed (its leadership handed over first if that is this node). The meta shard demotes a
//!   live voter to a learner instead of removing it: every node keeps a meta replica.
//! - **Planning** (`leader.rs`). The meta shard's leader, once every look: a move whose group has its
//!   members is settled (`Settle`); new moves are planned from the map and the nodes discovery
//!   reports alive that follow the meta shard, and proposed (`Move`), at most `MAX_MOVES`
//!   shards moving at once. A live node that does not follow the meta shard yet is added to it
//!   as a learner, so it reads the map before it is given replicas.
//!
//! What discovery's policy allows: without `auto_add_voters` nothing is planned (the map stays
//! as agreed at first); `auto_remove_voters` lets the planner replace the replicas of nodes
//! declared down, and drop down nodes that hold nothing from the meta shard.
//!
//! Every change is agreed in Raft (the map in the meta shard, members in each shard's group)
//! and named by epoch, so a node that acts on a stale view changes nothing: its proposal is
//! refused, and the next look sees the new state.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raft::eraftpb::ConfChangeType;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

mod catch_up;
mod leader;
mod restart;

use super::membership::Membership;
use super::remote::{targets, Asker};
use super::replica::Replicas;
use super::split::META_SHARD;
use crate::consensus::command::{CacheCommand, StampedCommand};
use crate::consensus::group::GroupHandle;
use crate::consensus::ApplyOutput;
use crate::discovery::{ClusterDiscovery, NodeHealth, PeerManagementConfig};
use crate::multiraft::{PlacementChange, ShardMap, ShardMapStore, ShardState};
use crate::transport::envelope::{RemoteAnswer, RemoteRead};
use crate::types::{NodeId, ShardId};
use catch_up::caught_up;

/// Shards moving at once, cluster-wide: each move costs a snapshot, and client traffic comes
/// first.
const MAX_MOVES: usize = 2;
/// How long after its start a memory node asks at every look about shards moving away from it
/// whose groups may still count it (`rejoin_leaving`): only a node that restarted while such a
/// move was under way is in one, and asking about every moving shard at every look for good
/// would cost every node a request per moving shard per look. After it, once every
/// `REJOIN_PACE` per shard.
const REJOIN_WINDOW: Duration = Duration::from_secs(120);
const REJOIN_PACE: Duration = Duration::from_secs(30);
/// How long after its start the planner leaves alone a node of the map that discovery has not
/// reported at all: a cluster's nodes start one after another, and one not up yet is not dead
/// (gossip declares a killed node down within a few seconds).
const UNSEEN_GRACE: Duration = Duration::from_secs(10);

/// The nodes the planner may place replicas on: not declared down by discovery (a node gossip
/// only suspects keeps its replicas: they move once it is declared down, and a suspicion it
/// refutes moves nothing), or heard from lately by this node (gossip on a loaded machine may
/// call a node that still talks down, and counting it dead would move its replicas, or see a
/// shard without a quorum it has), and
/// following the meta shard (a node that does not read the map yet could not start the
/// replicas it is given), `me` included.
pub(super) fn live_followers(
    me: NodeId,
    meta: &GroupHandle,
    nodes: &[crate::DiscoveredNode],
    heard: &std::collections::HashSet<NodeId>,
) -> BTreeSet<NodeId> {
    let followers: BTreeSet<NodeId> =
        meta.shared.voters().into_iter().chain(meta.shared.learners()).collect();
    let mut live: BTreeSet<NodeId> = nodes
        .iter()
        .filter(|n| n.health != NodeHealth::Down)
        .map(|n| n.node_id)
        .chain(heard.iter().copied())
        .filter(|n| followers.contains(n))
        .collect();
    live.insert(me);
    live
}

/// What the placement task works with.
pub(super) struct Placement {
    pub node_id: NodeId,
    pub replicas: Arc<Replicas>,
    pub map: Arc<ShardMapStore>,
    pub meta: GroupHandle,
    pub membership: Membership,
    pub discovery: Option<Arc<dyn ClusterDiscovery>>,
    /// The first map, when this node was started with the cluster (not joining).
    pub initial: Option<ShardMap>,
    /// A memory node started with the cluster: its replicas start once the map is read, as the
    /// members their groups may count (see `start_replica`).
    pub starts_members: bool,
    pub replica_factor: usize,
    /// How often the task looks when nothing wakes it.
    pub look_every: Duration,
    /// Moves planned and settled here, and how long they took.
    pub migrations: Arc<Migrations>,
    /// When each move this node planned started (the meta shard's leader settles it).
    pub started: std::sync::Mutex<std::collections::HashMap<ShardId, std::time::Instant>>,
    /// When this task started (see `UNSEEN_GRACE`).
    pub began: std::time::Instant,
    /// When this node last asked about each shard moving away from it (see `REJOIN_PACE`).
    pub leaving_asked: std::sync::Mutex<std::collections::HashMap<ShardId, std::time::Instant>>,
}

/// The moves the meta shard's leader planned and settled on this node, for metrics.
#[derive(Debug, Default)]
pub struct Migrations {
    started: std::sync::atomic::AtomicU64,
    settled: std::sync::atomic::AtomicU64,
    /// Seconds each settled move took, from its planning (the last `MIGRATIONS_KEPT`).
    durations: std::sync::Mutex<Vec<f64>>,
}

/// Durations of settled moves kept for metrics.
const MIGRATIONS_KEPT: usize = 4096;

/// What [`crate::DistributedCache::migrations`] reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MigrationFigures {
    /// Moves this node started or saw start as the meta shard's leader (its planner's and
    /// operators').
    pub started: u64,
    /// Moves this node settled.
    pub settled: u64,
    /// Seconds each settled move took from its start (or from when this node, leading the
    /// meta shard, first saw it), of moves this node settled (at most the last 4,096).
    pub durations_seconds: Vec<f64>,
}

impl Migrations {
    /// The figures now.
    pub fn figures(&self) -> MigrationFigures {
        use std::sync::atomic::Ordering::Relaxed;
        MigrationFigures {
            started: self.started.load(Relaxed),
            settled: self.settled.load(Relaxed),
            durations_seconds: self.durations.lock().expect("migrations poisoned").clone(),
        }
    }
}

impl Placement {
    /// Runs until the node stops.
    pub async fn run(self, cancel: CancellationToken) {
        let mut changes = self.map.subscribe();
        loop {
            self.look().await;
            // Looked at again as soon as the map or the meta shard's leader changes: the first
            // map is agreed right after the first election, before anything else is written.
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = changes.changed() => {}
                _ = self.meta.shared.leader_changed() => {}
                _ = tokio::time::sleep(self.look_every) => {}
            }
        }
    }

    async fn look(&self) {
        let map = self.map.map();
        let leads_meta = self.meta.shared.is_leader();
        if map.is_empty() {
            if let (true, Some(initial)) = (leads_meta, &self.initial) {
                if self.propose(PlacementChange::Init(initial.clone())).await {
                    info!(shards = initial.shards().len(), "the first shard map is agreed");
                }
            }
            return;
        }
        self.follow(&map).await;
        self.carry_out(&map).await;
        if leads_meta {
            self.settle(&map).await;
            self.plan(&map).await;
            self.tend_meta_followers(&map).await;
        }
    }

    /// Proposes a change of the map through this node's meta replica (it leads the meta
    /// shard); whether it was applied.
    async fn propose(&self, change: PlacementChange) -> bool {
        let stamped = StampedCommand::new(super::storage::unix_now_ms(), CacheCommand::Placement(change));
        match self.meta.propose(Bytes::from(stamped.encode())).await {
            Ok(applied) => applied.output == ApplyOutput::Int(1),
            Err(e) => {
                debug!(error = %e, "a shard map change was not agreed");
                false
            }
        }
    }

    /// Starts and retires this node's replicas as the map says (see the module docs).
    async fn follow(&self, map: &ShardMap) {
        let table = &self.replicas.table;
        let mut to_start = Vec::new();
        let mut leaving = Vec::new();
        // Whether an ask of this look about a removal found no answer (see `confirm_removal`).
        let mut unanswered = false;
        for placement in map.shards().iter().filter(|p| p.shard_id != META_SHARD) {
            let shard = placement.shard_id;
            let member = placement.members.contains(&self.node_id);
            // The leader of a move this replica missed is heard (`admit::check_against_log`).
            table.with(shard, |held| held.group.shared.set_map_members(&placement.members));
            match table.get(shard) {
                None if member => to_start.push(shard),
                None if self.starts_members
                    && placement.state == ShardState::Transferring
                    && self.may_ask_leaving(shard) =>
                {
                    leaving.push(shard);
                }
                None => {}
                // Only a replica that applied its own removal is retired: raft ids are node
                // ids, so a replica replaced while its group still counts this node (this
                // node's map lagging a move back to it) would have its acknowledgements
                // counted for a replica that no longer holds them. One that never learned of
                // its removal (its node was down or paused while the shard moved away) is
                // routed around (`holds_shard`) and asked about (`confirm_removal`): it would
                // campaign in vain, for good, and keep its node from being ready.
                Some(held) if held.group.shared.removed() => self.replicas.retire(shard).await,
                Some(held) if !member && placement.state == ShardState::Active && !unanswered => {
                    unanswered = !self.confirm_removal(shard, &held.group).await;
                }
                Some(_) => {}
            }
        }
        if !to_start.is_empty() {
            self.start_replicas(&to_start).await;
        }
        if !leaving.is_empty() {
            self.rejoin_leaving(&leaving).await;
        }
    }

    /// For this node's replica of `shard`, which the settled map no longer names: asks the
    /// shard's members (after a read-index round there) whether its group still counts this
    /// node, and marks the replica removed when it does not (the next look retires it). False
    /// when no member answered (asked again next look).
    async fn confirm_removal(&self, shard: ShardId, group: &GroupHandle) -> bool {
        let replicas = &self.replicas;
        let to = targets(self.node_id, shard, &self.map, &replicas.dispatcher.hints, &replicas.transport);
        match self.asker().ask(to, shard, RemoteRead::Members, true).await {
            Ok(RemoteAnswer::Members { voters, learners }) => {
                if !voters.contains(&self.node_id) && !learners.contains(&self.node_id) {
                    info!(shard, ?voters, "the shard's group no longer counts this replica: it is retired");
                    group.shared.mark_removed();
                }
                true
            }
            _ => false,
        }
    }

    /// The map as the meta shard has it now: read after a read-index round of the meta shard
    /// and once this replica applied up to it. None when the round fails (no leader yet, or
    /// the replica still recovering).
    async fn current_map(&self) -> Option<ShardMap> {
        let index = self.meta.read_index().await.ok()?;
        self.meta.wait_applied(index).await.ok()?;
        Some(self.map.map())
    }

    /// One membership step for every shard this node leads whose group differs from the map.
    async fn carry_out(&self, map: &ShardMap) {
        for held in self.replicas.table.held() {
            let group = &held.group;
            if !group.shared.is_leader() {
                continue;
            }
            let Some(placement) = map.shard(held.id) else { continue };
            if let Err(e) = self.step(held.id, group, &placement.members).await {
                debug!(shard = held.id, error = %e, "a placement step was not taken; tried again later");
            }
        }
    }

    async fn step(&self, shard: ShardId, group: &GroupHandle, target: &[NodeId]) -> crate::Result<()> {
        let status = group.status().await?;
        let (voters, learners) = (&status.voters, &status.learners);
        if voters.as_slice() == target && (shard == META_SHARD || learners.is_empty()) {
            return Ok(());
        }
        let change = |kind, id| async move {
            let addr = if kind == ConfChangeType::RemoveNode { None } else { self.addr_of(id) };
            info!(shard, node = id, ?kind, "placement: changing the shard's members");
            self.membership.change_in(group, kind, id, addr).await
        };
        let caught_up = |id: NodeId| caught_up(&status, id);
        // Members first: nothing is removed before every new member votes.
        if let Some(&id) = target.iter().find(|id| !voters.contains(id)) {
            if !learners.contains(&id) {
                if self.addr_of(id).is_none() {
                    return Ok(()); // Not reachable yet: discovery will link it.
                }
                // Raft ids are node ids: the node must hold a fresh replica of the shard, not
                // one that was a member before and has not applied its removal yet (its
                // answers would be counted for the replica that replaces it). A stale one is
                // retired on being asked; the next look finds the fresh one.
                if shard != META_SHARD && !self.fresh_replica_on(id, shard).await {
                    return Ok(());
                }
                return change(ConfChangeType::AddLearnerNode, id).await;
            }
            if caught_up(id) {
                return change(ConfChangeType::AddNode, id).await;
            }
            return Ok(()); // Still catching up.
        }
        if let Some(&id) = voters.iter().find(|id| !target.contains(id)) {
            if id == self.node_id {
                // Hand the leadership to a member that stays and answers (found from outside:
                // a dead one not yet declared down was picked again and again, for minutes);
                // the new leader goes on.
                let window = self.replicas.config.raft.election_timeout();
                let heard = |t: NodeId| self.replicas.dispatcher.heard_within(&[t], window) == 1;
                let to = target.iter().copied().find(|t| *t != id && caught_up(*t) && heard(*t));
                if let Some(to) = to {
                    group.transfer_leader(to).await?;
                }
                return Ok(());
            }
            if shard == META_SHARD && self.health(id) != Some(NodeHealth::Down) {
                return change(ConfChangeType::AddLearnerNode, id).await;
            }
            change(ConfChangeType::RemoveNode, id).await?;
            self.tell_removed(id, shard).await;
            return Ok(());
        }
        if shard != META_SHARD {
            if let Some(&id) = learners.iter().find(|l| !target.contains(l)) {
                change(ConfChangeType::RemoveNode, id).await?;
                self.tell_removed(id, shard).await;
            }
        }
        Ok(())
    }

    /// Tells node `id` that its replica of `shard` was removed (this node leads the shard): the
    /// replica may never apply its removal (the leader stops sending to it once it applied it),
    /// and until it knows, it would serve reads and wait for writes it can no longer apply. A
    /// node not reached learns it when the move settles (`DistributedCache::holds_shard`).
    async fn tell_removed(&self, id: NodeId, shard: ShardId) {
        if self.health(id) != Some(NodeHealth::Down) {
            self.fresh_replica_on(id, shard).await;
        }
    }

    /// Asks the placement's questions of other nodes: a busy node answers late, and asking
    /// again next look costs a whole look.
    fn asker(&self) -> Asker<'_> {
        let replicas = &self.replicas;
        let raft = &replicas.config.raft;
        Asker {
            me: self.node_id,
            transport: &replicas.transport,
            reads: &replicas.dispatcher.remote_reads,
            timeout: raft.election_timeout().max(Duration::from_secs(2)),
            tick: raft.tick_interval(),
            patience: raft.election_timeout(),
        }
    }

    /// Whether node `id` holds a fresh replica of `shard` (see `step`); asking it also retires
    /// a stale one there.
    async fn fresh_replica_on(&self, id: NodeId, shard: ShardId) -> bool {
        let only = super::remote::Targets::only(id);
        let answer = self.asker().ask(only, shard, RemoteRead::Replica { not_member: true }, false).await;
        matches!(answer, Ok(RemoteAnswer::Replica { held: true, fresh: true }))
    }

    /// Where node `id` listens for peers: the address its link has, else discovery's.
    fn addr_of(&self, id: NodeId) -> Option<SocketAddr> {
        let transport = &self.replicas.transport;
        if id == self.node_id {
            return Some(transport.local_addr());
        }
        transport.peer_addr(id).or_else(|| {
            let nodes = self.discovery.as_ref()?.nodes();
            nodes.iter().find(|n| n.node_id == id).map(|n| n.raft_addr)
        })
    }

    fn health(&self, id: NodeId) -> Option<NodeHealth> {
        let nodes = self.discovery.as_ref()?.nodes();
        nodes.iter().find(|n| n.node_id == id).map(|n| n.health)
    }

    fn policy(&self) -> PeerManagementConfig {
        self.discovery.as_ref().map(|d| d.peer_management()).unwrap_or_default()
    }

    /// A shard's voters and learners: this node's replica's view, else a holder's (after a
    /// read-index round of the shard there with `linearizable`: as its leader has them).
    async fn members_of(&self, shard: ShardId, linearizable: bool) -> Option<(Vec<NodeId>, Vec<NodeId>)> {
        if let Some(held) = self.replicas.table.get(shard) {
            if held.group.shared.is_leader() || held.group.shared.leader_id().is_none() {
                return Some((held.group.shared.voters(), held.group.shared.learners()));
            }
        }
        let replicas = &self.replicas;
        let config = &replicas.config;
        let dispatcher = &replicas.dispatcher;
        let asker = Asker {
            me: self.node_id,
            transport: &replicas.transport,
            reads: &dispatcher.remote_reads,
            timeout: config.request_timeout,
            tick: config.raft.tick_interval(),
            patience: config.raft.election_timeout(),
        };
        // The shard's leader knows its members best: ask it first (the hint), then the others.
        let to = targets(self.node_id, shard, &self.map, &dispatcher.hints, &replicas.transport);
        match asker.ask(to, shard, RemoteRead::Members, linearizable).await {
            Ok(RemoteAnswer::Members { voters, learners }) => Some((voters, learners)),
            _ => None,
        }
    }
}
