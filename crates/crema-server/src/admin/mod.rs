//! The admin HTTP server: `/metrics` (Prometheus text), `/health` (the process is up), `/ready`
//! (a leader is known and this node has applied what it knows is committed), `/cluster` (this
//! node's view as JSON), `/` (the same view as a page: `dashboard`), and membership changes (`POST /cluster/nodes`, `DELETE
//! /cluster/nodes/{id}`) used by `crema cluster add-node` / `remove-node`. Who may call what:
//! `auth`. How connections are taken (timeouts, a cap): `listener`.

pub mod auth;
pub mod dashboard;
pub mod listener;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use crema::{DistributedCache, NodeId};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::metrics::Metrics;

/// What the admin handlers need.
#[derive(Clone)]
pub struct AdminState {
    /// The node.
    pub cache: Arc<DistributedCache>,
    /// Its metrics.
    pub metrics: Arc<Metrics>,
    /// Its RESP address (shown in `/cluster`).
    pub resp_addr: SocketAddr,
    /// Who may read and change what.
    pub auth: Arc<auth::AdminAuth>,
}

/// `/cluster`: this node's view of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterView {
    /// This node.
    pub node_id: NodeId,
    /// `Leader`, `Follower`, ...
    pub role: String,
    /// Current term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader_id: Option<NodeId>,
    /// Highest committed index known here.
    pub commit_index: u64,
    /// Highest index applied here.
    pub applied_index: u64,
    /// Voting members.
    pub voters: Vec<NodeId>,
    /// Learners.
    pub learners: Vec<NodeId>,
    /// Raft addresses of the members this node knows.
    pub members: std::collections::BTreeMap<NodeId, String>,
    /// This node's Raft address.
    pub raft_addr: String,
    /// This node's RESP address.
    pub resp_addr: String,
    /// Entries in the local cache.
    pub entries: u64,
    /// Weighted size of the local cache (bytes when sized by memory, else entries).
    pub size: u64,
    /// Local read hits.
    pub hits: u64,
    /// Local read misses.
    pub misses: u64,
    /// Resident memory of the node's process, bytes (Linux).
    pub memory_bytes: Option<u64>,
    /// While this node recovers from a restart without its Raft state (memory storage): what
    /// it waits for before it votes again (none once recovered).
    pub recovery: Option<String>,
    /// Replicas of this node whose committed log their leader contradicts (they serve nothing
    /// until the node restarts empty), if any.
    #[serde(default)]
    pub diverged: Option<String>,
    /// The shards this node holds a replica of (absent from nodes older than shards).
    #[serde(default)]
    pub shards: Vec<ShardView>,
    /// Which cluster discovery this node runs (`memberlist`, `static`, `noop`), if any.
    #[serde(default)]
    pub discovery: Option<String>,
    /// The nodes its discovery knows, with their health (this node alone without discovery).
    #[serde(default)]
    pub nodes: Vec<crema::DiscoveredNode>,
}

/// One shard replica in `/cluster`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardView {
    /// The shard.
    pub id: crema::ShardId,
    /// `initializing`, `active`, `transferring`, `removing` or `stopped`.
    pub state: crema::ShardState,
    /// The leader this node knows of.
    pub leader: Option<NodeId>,
    /// Voting members.
    pub members: Vec<NodeId>,
    /// Learners.
    pub learners: Vec<NodeId>,
    /// Entries in this replica.
    pub entries: u64,
    /// Weighted size of this replica (bytes when sized by memory, else entries).
    pub size_bytes: u64,
    /// Current term.
    pub term: u64,
    /// Highest committed index known here.
    pub commit_index: u64,
    /// Highest index applied here.
    pub applied_index: u64,
    /// The hash slots the shard owns, `first-last`.
    pub slots: String,
    /// True while the replica's idle group hibernates (ticks no clock).
    #[serde(default)]
    pub hibernating: bool,
    /// Whether this node holds a replica of the shard; for one it does not, the members and
    /// state come from the shard map, the leader from gossip, and the figures are zero.
    #[serde(default = "held_by_default")]
    pub held: bool,
}

fn held_by_default() -> bool {
    true
}

impl From<&crema::ShardInfo> for ShardView {
    fn from(s: &crema::ShardInfo) -> Self {
        Self {
            id: s.shard_id,
            state: s.state,
            leader: s.leader,
            members: s.members.clone(),
            learners: s.learners.clone(),
            entries: s.entry_count,
            size_bytes: s.size_bytes,
            term: s.term,
            commit_index: s.commit_index,
            applied_index: s.applied_index,
            slots: format!("{}-{}", s.first_slot, s.last_slot),
            hibernating: s.hibernating,
            held: true,
        }
    }
}

/// `POST /cluster/nodes` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddNode {
    /// The new node's id.
    pub id: NodeId,
    /// Its Raft address.
    pub addr: SocketAddr,
    /// Add as a learner (no vote) instead of a voter.
    #[serde(default)]
    pub learner: bool,
}

/// `POST /cluster/shards/{id}/move` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MoveShard {
    /// The node that gives its replica up.
    pub from: NodeId,
    /// The node that gets it.
    pub to: NodeId,
}

/// The router (exposed for tests).
pub fn router(state: AdminState) -> Router {
    let read = Router::new()
        .route("/metrics", get(metrics))
        .route("/cluster", get(cluster))
        .route("/", get(dashboard_page))
        .route("/dashboard", get(dashboard_page))
        .route_layer(axum::middleware::from_fn_with_state(state.auth.clone(), auth::read));
    let change = Router::new()
        .route("/cluster/nodes", post(add_node))
        .route("/cluster/nodes/{id}", delete(remove_node))
        .route("/cluster/rebalance", post(rebalance))
        .route("/cluster/shards/{id}/move", post(move_shard))
        .merge(debug_routes())
        .route_layer(axum::middleware::from_fn_with_state(state.auth.clone(), auth::change));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .merge(read)
        .merge(change)
        .with_state(state)
}

/// Serves the admin API on `listener` until `shutdown`.
///
/// # Errors
/// The server failed (the listener broke).
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    info!(addr = %listener.local_addr()?, "admin HTTP listening");
    listener::serve(listener, router(state), shutdown).await
}

/// Test-only routes (feature `fault-injection`): `POST /debug/panic-group` makes the Raft group
/// loop panic, as a bug would; the process must then exit.
#[cfg(feature = "fault-injection")]
fn debug_routes() -> Router<AdminState> {
    Router::new().route(
        "/debug/panic-group",
        axum::routing::post(|State(s): State<AdminState>| async move {
            s.cache.inject_group_panic().await;
            "group loop told to panic\n"
        }),
    )
}

#[cfg(not(feature = "fault-injection"))]
fn debug_routes() -> Router<AdminState> {
    Router::new()
}

async fn health(State(s): State<AdminState>) -> Response {
    match s.cache.end() {
        Some(crema::NodeEnd::Failed(why)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("failed: {why}\n")).into_response()
        }
        Some(crema::NodeEnd::Removed) => {
            (StatusCode::SERVICE_UNAVAILABLE, "removed from the cluster\n").into_response()
        }
        None => "ok\n".into_response(),
    }
}

/// How long one `/ready` waits for the shard map's confirmation (once per start; probes
/// usually give up after a second).
const READY_MAP_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

async fn ready(State(s): State<AdminState>) -> Response {
    let raft = s.cache.raft_figures();
    if raft.persist_failing {
        let why = s.cache.persist_error().unwrap_or_else(|| "see the node's log".into());
        return (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: cannot persist the raft log: {why}\n"))
            .into_response();
    }
    if let Some(shard) = raft.diverged_shard {
        let body = format!(
            "not ready: the replica of shard {shard} committed entries its leader contradicts; it serves nothing \
             until brought back empty (see the node's log)\n"
        );
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    if raft.recovering {
        let body = "not ready: restarted without its raft state, recovering (see `crema status`)\n";
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    // With several shards, every shard must be served, and this node must hold the replicas
    // the map gives it (a restarted memory node starts them once it read the map).
    if s.cache.router().num_shards() > 1 && s.cache.shard_map().is_empty() {
        let body = "not ready: no shard map yet (a new cluster agrees on one as it starts; a node \
                    that does not follow the meta shard, started with --join or removed from it \
                    while it was down, waits to be added: crema cluster add-node, or discovery \
                    with --auto-add-voters)\n";
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    // A restarted node's map is first the one its own log held: it may still name replicas
    // moved away while the node was down (see `crema::cache::readiness`).
    if !s.cache.confirm_shard_map(READY_MAP_WAIT).await {
        let body = "not ready: the shard map is not yet confirmed as new as the meta shard leader's \
                    (a read through the meta shard did not pass)\n";
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    if !s.cache.holds_its_replicas() {
        let body = "not ready: the replicas the shard map gives this node have not all started\n";
        return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    }
    let shards = s.cache.shard_info();
    if shards.len() > 1 {
        // Replicas this node serves: one removed from its group, that has not learned it yet,
        // is routed around (and retired once its group confirms it).
        let serving = shards.iter().filter(|i| s.cache.holds_shard(i.shard_id));
        let heard = |leader: Option<crema::NodeId>| leader.filter(|l| s.cache.heard_from(*l));
        if let Some(shard) =
            serving.clone().find(|i| heard(i.leader).is_none() || i.applied_index < i.commit_index)
        {
            let why = match (shard.leader, heard(shard.leader)) {
                (None, _) => "no leader known".to_owned(),
                (Some(leader), None) => format!("its leader {leader} has not been heard from"),
                (Some(_), Some(_)) => {
                    format!("applied {} of {} committed", shard.applied_index, shard.commit_index)
                }
            };
            let body = format!("not ready: shard {}: {why}\n", shard.shard_id);
            return (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
        }
    }
    // Found from outside: a node that only follows the meta shard (a learner, which never
    // campaigns) kept naming a dead leader, and answered ready while its shards had none.
    match s.cache.leader_id() {
        None => (StatusCode::SERVICE_UNAVAILABLE, "not ready: no leader known\n").into_response(),
        Some(leader) if !s.cache.heard_from(leader) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: leader {leader} has not been heard from\n"))
                .into_response()
        }
        Some(_) if raft.applied_index < raft.commit_index => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: applied {} of {} committed\n", raft.applied_index, raft.commit_index),
        )
            .into_response(),
        Some(leader) => format!("ready: leader {leader}, applied {}\n", raft.applied_index).into_response(),
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let body = s.metrics.render();
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        .into_response()
}

async fn cluster(State(s): State<AdminState>) -> Response {
    match cluster_view(&s).await {
        Ok(view) => Json(view).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

async fn dashboard_page(State(s): State<AdminState>) -> Response {
    match cluster_view(&s).await {
        Ok(view) => {
            ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], dashboard::render(&view)).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e),
    }
}

/// This node's view of the cluster (`/cluster`, the dashboard).
async fn cluster_view(s: &AdminState) -> crema::Result<ClusterView> {
    let every_shard = s.cache.cluster_shards().await?;
    let status = s.cache.cluster_status().await?;
    let g = &status.group;
    let shards = every_shard
        .iter()
        .map(|info| ShardView { held: s.cache.holds_shard(info.shard_id), ..ShardView::from(info) })
        .collect();
    Ok(ClusterView {
        node_id: status.node_id,
        role: format!("{:?}", g.role),
        term: g.term,
        leader_id: g.leader_id,
        commit_index: g.commit_index,
        applied_index: g.applied_index,
        voters: g.voters.clone(),
        learners: g.learners.clone(),
        members: status.members.iter().map(|(id, a)| (*id, a.to_string())).collect(),
        raft_addr: status.raft_addr.to_string(),
        resp_addr: s.resp_addr.to_string(),
        entries: status.entry_count,
        size: s.cache.storage().weighted_size(),
        hits: status.stats.hits,
        misses: status.stats.misses,
        memory_bytes: crate::metrics::resident_memory_bytes(),
        recovery: recovery_text(&g.recovery),
        diverged: diverged_text(&s.cache.raft_figures()),
        shards,
        discovery: s.cache.discovery_kind().map(str::to_string),
        nodes: s.cache.discovered_nodes(),
    })
}

/// How diverged replicas are shown in `crema status` (none when there is none).
fn diverged_text(figures: &crema::RaftFigures) -> Option<String> {
    let first = figures.diverged_shard?;
    Some(format!(
        "{} replica(s), shard {first} first: committed entries their leader contradicts; they serve nothing \
         until the node is restarted empty (see its log)",
        figures.diverged_shards
    ))
}

/// How a recovery is shown in `crema status` (none when there is none).
fn recovery_text(state: &crema::RecoveryState) -> Option<String> {
    match state {
        crema::RecoveryState::Done => None,
        crema::RecoveryState::WaitingForPeers { heard, needed } => Some(format!(
            "restarted without its raft state: waiting for {needed} other voters to answer (heard {heard:?}); no votes meanwhile"
        )),
        crema::RecoveryState::CatchingUp { last_term, last_index } => Some(format!(
            "catching up to the log its peers reported (term {last_term}, index {last_index}) before voting"
        )),
    }
}

async fn add_node(State(s): State<AdminState>, Json(body): Json<AddNode>) -> Response {
    let result = if body.learner {
        s.cache.add_learner(body.id, body.addr).await
    } else {
        s.cache.add_peer(body.id, body.addr).await
    };
    match result {
        Ok(()) => (StatusCode::OK, format!("node {} added at {}\n", body.id, body.addr)).into_response(),
        Err(e) => membership_error(&s, &e),
    }
}

async fn remove_node(State(s): State<AdminState>, Path(id): Path<NodeId>) -> Response {
    match s.cache.remove_peer(id).await {
        Ok(()) => (StatusCode::OK, format!("node {id} removed\n")).into_response(),
        Err(e) => membership_error(&s, &e),
    }
}

async fn rebalance(State(s): State<AdminState>) -> Response {
    match s.cache.rebalance().await {
        Ok(moves) if moves.is_empty() => {
            let map = s.cache.shard_map();
            let moving: Vec<crema::ShardId> = (map.shards().iter())
                .filter(|p| p.state == crema::ShardState::Transferring)
                .map(|p| p.shard_id)
                .collect();
            if moving.is_empty() {
                "nothing to move: the placement is balanced\n".into_response()
            } else {
                format!(
                    "no move started: shards {moving:?} are still moving (at most two at once); run it again once they settle\n"
                )
                .into_response()
            }
        }
        Ok(moves) => {
            let mut out = format!("{} move(s) started:\n", moves.len());
            for m in moves {
                let node = |n: Option<NodeId>| n.map_or("-".to_owned(), |n| n.to_string());
                out.push_str(&format!(
                    "  shard {}: to {} from {}\n",
                    m.shard_id,
                    node(m.add),
                    node(m.remove)
                ));
            }
            out.into_response()
        }
        Err(e) => membership_error(&s, &e),
    }
}

async fn move_shard(
    State(s): State<AdminState>,
    Path(id): Path<crema::ShardId>,
    Json(body): Json<MoveShard>,
) -> Response {
    match s.cache.move_shard(id, body.from, body.to).await {
        Ok(()) => format!("shard {id} moves from node {} to node {}\n", body.from, body.to).into_response(),
        Err(e) => membership_error(&s, &e),
    }
}

fn membership_error(s: &AdminState, e: &crema::Error) -> Response {
    if let crema::Error::Membership(_) = e {
        return error(StatusCode::BAD_REQUEST, e);
    }
    match e.leader_hint() {
        Some(leader) => {
            let addr = s.cache.peer_addr(leader).map(|a| a.to_string()).unwrap_or_default();
            let msg =
                format!("not the leader: node {leader} (raft {addr}) is; send this to its admin port\n");
            (StatusCode::CONFLICT, msg).into_response()
        }
        None => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

fn error(code: StatusCode, e: &crema::Error) -> Response {
    (code, format!("{e}\n")).into_response()
}
