//! Starting a node: the transport, then one Raft group, cache and background tasks per shard
//! (see `cache::shard`), all watched by the supervisor.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::background::{evict, sweep_expired};
use super::discovered::Discovered;
use super::dispatch::Dispatcher;
use super::keyspace::Keyspace;
use super::membership::Membership;
use super::shard::Shard;
use super::split::META_SHARD;
use super::storage::{CacheStorage, StorageLimits};
use super::supervisor::{NodeEnd, Supervisor};
use super::table::ShardTable;
use super::DistributedCache;
use crate::config::{CacheConfig, ConfigError, RaftStorageType};
use crate::consensus::command::CommandLimits;
use crate::consensus::group::{spawn_group, GroupHandle, GroupSettings};
use crate::consensus::state_machine::CacheStateMachine;
use crate::consensus::storage::MemStorage;
use crate::discovery::DiscoveryContext;
use crate::error::Result;
use crate::multiraft::ShardRouter;
use crate::transport::{Transport, TransportConfig};
use crate::types::{NodeId, ShardId};

impl DistributedCache {
    pub(super) async fn start(config: CacheConfig, listener: tokio::net::TcpListener) -> Result<Self> {
        let limits =
            CommandLimits { max_key_bytes: config.max_key_bytes, max_value_bytes: config.max_value_bytes };
        let router = ShardRouter::new(config.shard_count())?;
        let dispatcher = Arc::new(Dispatcher::new(config.node_id, limits, config.request_timeout));
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
        for (id, addr) in &config.seed_nodes {
            transport.add_peer(*id, Some(*addr));
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
        let table = Arc::new(ShardTable::new(router.num_shards()));
        let mut storages = Vec::with_capacity(router.num_shards() as usize);
        let mut tasks = Vec::new();
        let mut acl = None;
        let mut shard_map = None;
        // The node's database, opened with the first durable shard and shared by every one.
        let mut node_db = NodeDbSlot::default();
        for id in 0..router.num_shards() {
            let storage = CacheStorage::new(shard_limits(&config));
            storages.push(storage.clone());
            // A shard this node holds no replica of keeps an empty cache: reads of its keys
            // go to the nodes that hold it (see `cache::remote`).
            let Some(conf) = config.initial_conf(id) else { continue };
            let sm = CacheStateMachine::new(storage.clone());
            if id == META_SHARD {
                acl = Some(sm.acl().clone());
                shard_map = Some(sm.shard_map().clone());
            }
            {
                let mut members = sm.members().lock().expect("members poisoned");
                members.insert(config.node_id, config.raft_addr);
                members.extend(config.seed_nodes.iter().copied());
            }
            let (group, task) = spawn_shard_group(&config, id, &conf, sm, &transport, &cancel, &mut node_db)?;
            let name = |what: &str| {
                if router.num_shards() == 1 {
                    format!("the {what}")
                } else {
                    format!("the {what} of shard {id}")
                }
            };
            let removed = group.shared.clone();
            tasks.push(if id == META_SHARD {
                supervisor.watch(name("raft group loop"), task, move || removed.removed())
            } else {
                supervisor.watch_replica(name("raft group loop"), task, move || removed.removed())
            });
            tasks.push(
                supervisor.spawn(name("expiry sweeper"), sweep_expired(storage.clone(), cancel.clone())),
            );
            tasks.push(
                supervisor.spawn(name("evictor"), evict(storage.clone(), group.clone(), cancel.clone())),
            );
            table.insert(Shard { id, group, storage });
        }
        let meta = table.get(META_SHARD).expect("every node holds the meta shard");
        let shard_map = shard_map.expect("shard 0 exists");
        if let Some(initial) = config.initial_shard_map().filter(|_| !config.join) {
            let agree = super::placement::agree_first_map(
                meta.group.clone(),
                shard_map.clone(),
                initial,
                cancel.clone(),
            );
            tasks.push(supervisor.spawn("the shard map", agree));
        }
        if router.num_shards() > 1 {
            // Leaders spread by themselves (see `cache::balance`), looked at every two election
            // timeouts (a transfer takes about one round trip, and the new leader's heartbeat
            // tells every node).
            let interval = 2 * config.raft.election_timeout();
            let views = (shard_map.clone(), dispatcher.hints.clone());
            let balance = super::balance::balance_leaders(
                config.node_id,
                table.clone(),
                views,
                interval,
                cancel.clone(),
            );
            tasks.push(supervisor.spawn("the leader balancer", balance));
        }
        let coordinator = dispatcher.hints.clone();
        if let (Some(discovery), Some((events, task))) = (config.cluster_discovery.clone(), discovery_events)
        {
            if let Some(task) = task {
                tasks.push(supervisor.watch("the cluster discovery", task, || false));
            }
            let follow = Discovered {
                discovery,
                membership: Membership {
                    node_id: config.node_id,
                    meta: meta.group.clone(),
                    transport: transport.clone(),
                    shards: router.num_shards() as usize,
                    timeout: config.request_timeout,
                },
                coordinator: coordinator.clone(),
                table: table.clone(),
                debounce: Duration::from_millis(config.multiraft.leader_broadcast_debounce_ms),
            };
            tasks.push(supervisor.spawn("the discovery follower", follow.run(events, cancel.clone())));
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
        tasks.push(supervisor.spawn("the keep-alive beat", keep_alive));
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
        let keyspace = Keyspace::new(storages, router);
        Ok(Self {
            config,
            keyspace,
            shards: table,
            meta,
            acl: acl.expect("shard 0 exists"),
            shard_map,
            coordinator,
            transport,
            dispatcher,
            cancel,
            supervisor,
            group_tasks: Mutex::new(tasks),
            shut_down: AtomicBool::new(false),
        })
    }
}

/// The cache bounds of one shard: the node's, split evenly between its shards (and at most
/// `shard_capacity` entries each) when there are several.
fn shard_limits(config: &CacheConfig) -> StorageLimits {
    let shards = u64::from(config.shard_count());
    if shards == 1 {
        return StorageLimits {
            max_capacity: config.max_capacity,
            max_memory_bytes: config.max_memory_bytes,
            time_to_idle: config.default_tti,
        };
    }
    StorageLimits {
        max_capacity: config.max_capacity.div_ceil(shards).min(config.multiraft.shard_capacity),
        max_memory_bytes: config.max_memory_bytes.map(|bytes| bytes.div_ceil(shards)),
        time_to_idle: config.default_tti,
    }
}

/// The node's RocksDB once a durable shard opened it.
#[cfg(feature = "rocksdb")]
type NodeDbSlot = Option<Arc<crate::consensus::rocks_storage::NodeDb>>;
#[cfg(not(feature = "rocksdb"))]
type NodeDbSlot = ();

/// Starts the Raft group of shard `id` over its state machine `sm`.
fn spawn_shard_group(
    config: &CacheConfig,
    id: ShardId,
    conf: &(Vec<NodeId>, Vec<NodeId>),
    sm: CacheStateMachine,
    transport: &Arc<Transport>,
    cancel: &CancellationToken,
    node_db: &mut NodeDbSlot,
) -> Result<(GroupHandle, JoinHandle<()>)> {
    let settings = GroupSettings {
        node_id: config.node_id,
        shard: id,
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
            && conf.0.len() > 1,
        #[cfg(feature = "fault-injection")]
        faults: config.faults.clone(),
    };
    match config.raft_storage {
        RaftStorageType::Memory => {
            let store = MemStorage::bootstrapped(&conf.0, &conf.1);
            spawn_group(settings, store, sm, transport.clone(), cancel.clone())
        }
        RaftStorageType::RocksDb => spawn_durable(config, id, conf, settings, sm, transport, cancel, node_db),
    }
}

#[cfg(feature = "rocksdb")]
#[allow(clippy::too_many_arguments)]
fn spawn_durable(
    config: &CacheConfig,
    shard: ShardId,
    conf: &(Vec<NodeId>, Vec<NodeId>),
    mut settings: GroupSettings,
    mut sm: CacheStateMachine,
    transport: &Arc<Transport>,
    cancel: &CancellationToken,
    node_db: &mut NodeDbSlot,
) -> Result<(GroupHandle, JoinHandle<()>)> {
    let db = match node_db {
        Some(db) => db.clone(),
        None => node_db.insert(super::recovery::open_node_db(config)?).clone(),
    };
    let (store, checkpoints) = super::recovery::open_durable(config, shard, db, &mut sm, conf)?;
    let members: Vec<_> = sm.members().lock().expect("members poisoned").clone().into_iter().collect();
    for (id, addr) in members.into_iter().filter(|(id, _)| *id != config.node_id) {
        transport.add_peer(id, Some(addr));
    }
    settings.checkpoints = Some(checkpoints);
    spawn_group(settings, store, sm, transport.clone(), cancel.clone())
}

#[cfg(not(feature = "rocksdb"))]
#[allow(clippy::too_many_arguments)]
fn spawn_durable(
    _: &CacheConfig,
    _: ShardId,
    _: &(Vec<NodeId>, Vec<NodeId>),
    _: GroupSettings,
    _: CacheStateMachine,
    _: &Arc<Transport>,
    _: &CancellationToken,
    _: &mut NodeDbSlot,
) -> Result<(GroupHandle, JoinHandle<()>)> {
    Err(crate::error::Error::Config(crate::config::ConfigError::Invalid(
        "RocksDB storage needs crema built with the `rocksdb` feature".into(),
    )))
}
