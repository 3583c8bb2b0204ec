//! Starting a node: the transport, then its shard replicas (see `cache::replica`), then the
//! node's own tasks, all watched by the supervisor.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

use super::discovered::Discovered;
use super::dispatch::Dispatcher;
use super::keyspace::Keyspace;
use super::membership::Membership;
use super::replica::Replicas;
use super::split::META_SHARD;
use super::supervisor::{NodeEnd, Supervisor};
use super::DistributedCache;
use crate::config::{CacheConfig, ConfigError};
use crate::consensus::command::CommandLimits;
use crate::discovery::DiscoveryContext;
use crate::error::Result;
use crate::multiraft::ShardRouter;
use crate::transport::{Transport, TransportConfig};
use crate::types::NodeId;

impl DistributedCache {
    pub(super) async fn start(config: CacheConfig, listener: tokio::net::TcpListener) -> Result<Self> {
        let limits =
            CommandLimits { max_key_bytes: config.max_key_bytes, max_value_bytes: config.max_value_bytes };
        let router = ShardRouter::new(config.shard_count())?;
        let dispatcher = Arc::new(Dispatcher::new(
            config.node_id,
            limits,
            config.request_timeout,
            config.request_timeout.min(config.forwarding_timeout),
            config.raft.election_timeout(),
            #[cfg(feature = "fault-injection")]
            config.faults.clone(),
        ));
        let transport = Transport::start(
            TransportConfig {
                node_id: config.node_id,
                incarnation: rand::random(),
                client_addr: config.client_addr,
                max_frame_bytes: crate::config::MAX_FRAME_BYTES,
                queue_capacity: config.peer_queue_capacity,
                handshake_timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(1),
                secret: config.cluster_secret.clone(),
                tls: config.peer_tls.clone(),
                shards: router.num_shards(),
                #[cfg(feature = "fault-injection")]
                faults: config.faults.clone(),
            },
            listener,
            dispatcher.clone(),
        )?;
        for (id, addr) in &config.seed_nodes {
            transport.add_peer(*id, Some(*addr));
            transport.pin(*id);
        }
        let cancel = CancellationToken::new();
        // Discovery first: a gossip port that does not bind stops the start before any group runs.
        let discovery_events = match &config.cluster_discovery {
            None => None,
            Some(discovery) => {
                let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
                let (heard, window) = (dispatcher.clone(), config.raft.election_timeout());
                let hears: Arc<dyn Fn(NodeId) -> bool + Send + Sync> =
                    Arc::new(move |node| heard.heard_within(&[node], window) == 1);
                let authenticated = config.cluster_secret.is_some() || config.peer_tls.is_some();
                let ctx = DiscoveryContext::new(
                    events_tx,
                    hears,
                    cancel.clone(),
                    config.cluster_secret.clone(),
                    authenticated,
                );
                match discovery.start(ctx) {
                    Ok(task) => Some((events, task)),
                    Err(e) => {
                        cancel.cancel();
                        transport.close();
                        return Err(ConfigError::Invalid(e.to_string()).into());
                    }
                }
            }
        };
        let supervisor = Supervisor::new(cancel.clone());
        let replicas = Arc::new(Replicas::new(
            config.clone(),
            transport.clone(),
            dispatcher.clone(),
            supervisor.clone(),
            cancel.clone(),
        ));
        let table = replicas.table.clone();
        let tasks = replicas.tasks.clone();
        let push = |task| tasks.lock().expect("tasks poisoned").push(task);
        // Restarting on its data directory, a node opens the replicas it has state for (placement
        // may have moved shards since the first map); else those the first map gives it. A shard
        // it holds no replica of keeps an empty cache: reads of its keys go to the nodes that
        // hold it (see `cache::remote`).
        //
        // A memory node keeps no state, and cannot tell a restart from a first start: the
        // members its shards had at first may have changed since (a move), and a replica started
        // with the first ones would refuse their leader and wait for nodes that left. It starts
        // the meta shard alone, with its members as the running cluster has them
        // (`cache::meta_conf`), and the others once the meta shard says which it holds and the
        // shard's group says with whom (`placement::Placement::follow`).
        //
        // A durable node that finds its data dir empty cannot tell a first start from a lost
        // disk either: it asks the same way, and when the cluster runs, it starts as a memory
        // node does; else (a first start) from the first map, its replicas recovering until a
        // quorum answers (`consensus::recovery`).
        let stored = replicas.stored_shards()?;
        let memory = config.raft_storage == crate::config::RaftStorageType::Memory;
        let stateless = (memory || stored.is_none()) && !config.force_new_cluster;
        // The first node of a gossip cluster has no peer to ask: started again with its first
        // command line, it would found a second cluster beside the running one (found from
        // outside: its one-voter meta shard led the running nodes' replicas into another
        // history, they declared themselves diverged, and shard 0 served nothing, for good).
        // It listens to gossip first; the running cluster's nodes announce themselves to it.
        let gossip_peers = if stateless && config.seed_nodes.is_empty() && !config.join {
            gossip_peers(&config).await
        } else {
            Vec::new()
        };
        for (id, addr) in &gossip_peers {
            transport.add_peer(*id, Some(*addr));
        }
        // So does a node started with `--join`: the cluster may count it already, added
        // before this start, and then it recovers as a member instead of waiting, empty, to be
        // added. With one shard as with many: the group's members may have changed since the
        // command line was written (found from outside: a one-shard memory node restarted with
        // the members of now among its peers built their bootstrap log, which the leader's
        // log, that added one of them later, contradicts, and it served nothing, for good).
        let asks = stateless
            && (router.num_shards() > 1
                || config.join
                || !config.seed_nodes.is_empty()
                || !gossip_peers.is_empty());
        // Where the meta shard stands now, asked of the running cluster (`cache::meta_conf`):
        // the transport opens first, with no replica yet, for the answers to arrive.
        let mut asking = config.clone();
        asking.seed_nodes.extend(gossip_peers.iter().copied());
        let meta_now = if asks {
            dispatcher.attach(table.clone());
            transport.open();
            super::meta_conf::meta_members_now(&asking, &transport, &dispatcher).await
        } else {
            None
        };
        if config.join && asks && meta_now.is_none() {
            replicas.membership_unknown.store(true, std::sync::atomic::Ordering::Release);
        }
        // A `--join` node the cluster does not count yet starts as a new node: placement adds
        // its replicas, learners first (found from outside: a durable one started its
        // replicas as members restarted, from the first members' log, which the groups had
        // left behind, and never caught up).
        let counted = meta_now.as_ref().is_some_and(|(voters, learners)| {
            voters.contains(&config.node_id) || learners.contains(&config.node_id)
        });
        // One of the first members that the running cluster no longer counts was removed
        // (while it was away, or before it lost its state): it stops, as a durable node that
        // reads its removal in its log does (found from outside: a removed memory node started
        // again with its first command line stayed up for good, recovering, forwarding).
        // With discovery's policy to add nodes, the cluster adds it again by itself.
        let added_again =
            config.cluster_discovery.as_ref().is_some_and(|d| d.peer_management().auto_add_voters);
        if let Some((voters, learners)) =
            meta_now.as_ref().filter(|_| !counted && !config.join && !added_again)
        {
            let me = config.node_id;
            let first =
                config.initial_conf(META_SHARD).is_some_and(|(v, l)| v.contains(&me) || l.contains(&me));
            if first {
                return Err(crate::error::Error::Membership(format!(
                    "node {me} was removed from the cluster (it counts voters {voters:?} and learners \
                     {learners:?}); to add it again, start it with --join and add it (crema cluster add-node)"
                )));
            }
        }
        let after_meta = asks && (memory || meta_now.is_some()) && (counted || !config.join);
        let mut acl = None;
        let mut shard_map = None;
        for id in 0..router.num_shards() {
            let conf = match &stored {
                Some(stored) if id != META_SHARD && !stored.contains(&id) => continue,
                // Its stored conf state counts; this one is not used.
                Some(_) => config.initial_conf(id).unwrap_or_default(),
                None if after_meta && id != META_SHARD => continue,
                None => match config.initial_conf(id) {
                    Some(conf) => conf,
                    None => continue,
                },
            };
            let started = match &meta_now {
                Some((voters, learners)) if id == META_SHARD => {
                    // Empty, its log sent by the leader, recovering with the group's voters, or
                    // for the leader to add when the group no longer counts this node (see
                    // `replica::Begin`). Never the bootstrap log of the members as they are now:
                    // this node cannot know they are the group's first (found from outside:
                    // after a node was added, a node restarted with the new one among its
                    // peers built the bootstrap of all of them, which the leader's log, that
                    // added the new one later, contradicts; the replica declared itself
                    // diverged and served nothing, and a second such restart cost the meta
                    // shard its quorum).
                    let me = config.node_id;
                    let counted = voters.contains(&me) || learners.contains(&me);
                    let conf = if counted { (voters.clone(), learners.clone()) } else { Default::default() };
                    // Linked to (their connections taken): the leader may be a node this
                    // one's command line does not name, added since.
                    for id in voters.iter().chain(learners) {
                        transport.add_peer(*id, None);
                    }
                    replicas.start_replaying(id, &conf, super::replica::Begin::Empty)?
                }
                _ => replicas.start(id, &conf)?,
            };
            if id == META_SHARD {
                acl = Some(started.acl);
                shard_map = Some(started.shard_map);
            }
        }
        let meta = table.get(META_SHARD).expect("every node holds the meta shard");
        if asks && meta_now.is_none() && !config.join && !asking.seed_nodes.is_empty() {
            // Started with the first map's members: no seed said how the group stands in time.
            let looking = super::meta_conf::keep_asking(
                asking,
                transport.clone(),
                dispatcher.clone(),
                meta.group.clone(),
                cancel.clone(),
            );
            push(supervisor.spawn("the meta shard's members asked again", looking));
        }
        let shard_map = shard_map.expect("shard 0 exists");
        let migrations = Arc::new(super::placement::Migrations::default());
        let membership = Membership {
            node_id: config.node_id,
            meta: meta.group.clone(),
            transport: transport.clone(),
            shards: router.num_shards() as usize,
            timeout: config.request_timeout,
        };
        if router.num_shards() > 1 {
            let placement = super::placement::Placement {
                node_id: config.node_id,
                replicas: replicas.clone(),
                map: shard_map.clone(),
                meta: meta.group.clone(),
                membership: membership.clone(),
                discovery: config.cluster_discovery.clone(),
                initial: config.initial_shard_map().filter(|_| !config.join),
                starts_members: after_meta,
                replica_factor: config.replica_factor,
                look_every: config
                    .raft
                    .election_timeout()
                    .clamp(Duration::from_millis(100), Duration::from_secs(1)),
                migrations: migrations.clone(),
                started: std::sync::Mutex::default(),
                began: std::time::Instant::now(),
                leaving_asked: std::sync::Mutex::default(),
            };
            push(supervisor.spawn("the placement task", placement.run(cancel.clone())));
            // Leaders spread by themselves (see `cache::balance`), looked at every two election
            // timeouts (a transfer takes about one round trip, and the new leader's heartbeat
            // tells every node).
            let interval = 2 * config.raft.election_timeout();
            // Two pings of the beat below (`cache::keepalive`).
            let window = 2 * config.raft.tick_interval() * config.raft.heartbeat_tick as u32;
            let views = (shard_map.clone(), dispatcher.hints.clone(), dispatcher.clone());
            let balance = super::balance::balance_leaders(
                config.node_id,
                table.clone(),
                views,
                (interval, window),
                cancel.clone(),
            );
            push(supervisor.spawn("the leader balancer", balance));
        }
        let coordinator = dispatcher.hints.clone();
        if let (Some(discovery), Some((events, task))) = (config.cluster_discovery.clone(), discovery_events)
        {
            if let Some(task) = task {
                push(supervisor.watch("the cluster discovery", task, || false));
            }
            let follow = Discovered {
                discovery,
                membership,
                coordinator: coordinator.clone(),
                table: table.clone(),
                debounce: Duration::from_millis(config.multiraft.leader_broadcast_debounce_ms),
                link_warnings: Default::default(),
            };
            push(supervisor.spawn("the discovery follower", follow.run(events, cancel.clone())));
        }
        // Pings and wakes hibernating groups (see `cache::keepalive`): a few beats per election
        // timeout, as heartbeats go.
        let beat = config.raft.tick_interval() * config.raft.heartbeat_tick as u32;
        let beat = super::keepalive::KeepAlive {
            node_id: config.node_id,
            transport: transport.clone(),
            dispatcher: dispatcher.clone(),
            table: table.clone(),
            period: beat,
            window: config.raft.election_timeout(),
            #[cfg(feature = "fault-injection")]
            faults: config.faults.clone(),
        };
        let keep_alive = super::keepalive::keep_alive(beat, cancel.clone());
        push(supervisor.spawn("the keep-alive beat", keep_alive));
        // Watched, not awaited at shutdown: it ends when the transport closes, after the groups.
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
        dispatcher.attach(table.clone());
        transport.open();
        if config.force_new_cluster {
            for shard in table.held() {
                shard.group.force_new_cluster().await?;
            }
        }
        info!(
            node = config.node_id,
            addr = %transport.local_addr(),
            voters = ?config.initial_voters(),
            shards = router.num_shards(),
            join = config.join,
            "crema node started"
        );
        let keyspace = Keyspace::new(replicas.storages.clone(), router);
        Ok(Self {
            config,
            keyspace,
            shards: table,
            meta,
            acl: acl.expect("shard 0 exists"),
            shard_map,
            migrations,
            coordinator,
            transport,
            dispatcher,
            cancel,
            supervisor,
            group_tasks: tasks,
            shut_down: AtomicBool::new(false),
            map_confirmed: AtomicBool::new(false),
            ready_once: AtomicBool::new(false),
            live_metrics: crate::metrics::LiveMetrics::new(),
        })
    }
}

/// The nodes gossip reports alive within [`LISTEN_BEFORE_FOUNDING`] (none without gossip), with
/// their peer addresses: with them, a node that has no peer to ask learns whether a cluster
/// that counts it runs.
///
/// [`LISTEN_BEFORE_FOUNDING`]: crate::discovery::memberlist::LISTEN_BEFORE_FOUNDING
async fn gossip_peers(config: &CacheConfig) -> Vec<(NodeId, std::net::SocketAddr)> {
    let Some(discovery) = config.cluster_discovery.as_ref().filter(|d| d.kind() == "memberlist") else {
        return Vec::new();
    };
    let deadline = tokio::time::Instant::now() + crate::discovery::memberlist::LISTEN_BEFORE_FOUNDING;
    loop {
        let alive: Vec<_> = (discovery.nodes().into_iter())
            .filter(|n| n.node_id != config.node_id && n.health == crate::discovery::NodeHealth::Alive)
            .map(|n| (n.node_id, n.raft_addr))
            .collect();
        if !alive.is_empty() || tokio::time::Instant::now() >= deadline {
            if !alive.is_empty() {
                info!(peers = ?alive, "gossip reports running nodes: asking them before founding a cluster");
            }
            return alive;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
