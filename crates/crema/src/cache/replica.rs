//! Starting and retiring shard replicas on a node: at start, the shards the first shard map
//! gives it (or, restarting on its data directory, those it has state for); while it runs, the
//! shards placement moves to and from it (see `cache::placement`).
//!
//! A replica is its shard's Raft group on this node, with its state machine over the shard's
//! cache, and the shard's expiry sweeper and evictor. Each replica stops with its own token (a
//! child of the node's): retiring one, or its removal from its group, leaves the node running.
//! A retired replica leaves nothing behind: its cache is cleared, its Raft state deleted from
//! the node's database and its checkpoints removed, so a later replica of the same shard here
//! starts empty and catches up from the leader like any new member.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;
#[cfg(feature = "rocksdb")]
use tracing::warn;

use super::background::{evict, sweep_expired};
use super::dispatch::Dispatcher;
use super::shard::Shard;
use super::split::META_SHARD;
use super::storage::{CacheStorage, StorageLimits};
use super::supervisor::Supervisor;
use super::table::ShardTable;
use crate::acl::AclStore;
use crate::config::{CacheConfig, RaftStorageType};
use crate::consensus::group::{spawn_group, GroupHandle, GroupSettings};
use crate::consensus::state_machine::CacheStateMachine;
use crate::consensus::storage::MemStorage;
use crate::error::Result;
use crate::multiraft::ShardMapStore;
use crate::transport::Transport;
use crate::types::{NodeId, ShardId};

/// A shard's first voters and learners on this node (both empty: it joins a running group).
pub(super) type Conf = (Vec<NodeId>, Vec<NodeId>);

/// Starts and retires this node's replicas.
pub(super) struct Replicas {
    pub config: CacheConfig,
    pub transport: Arc<Transport>,
    pub dispatcher: Arc<Dispatcher>,
    pub table: Arc<ShardTable>,
    /// Every shard's cache, held here or not (a shard not held keeps an empty one).
    pub storages: Vec<CacheStorage>,
    pub supervisor: Supervisor,
    pub cancel: CancellationToken,
    /// The node's database, opened with the first durable replica and shared by every one.
    node_db: Mutex<NodeDbSlot>,
    /// The node's tasks, awaited at shutdown.
    pub tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// Per shard, how many replicas of it this node has started: a retired replica's cache is
    /// cleared later only if no other started since.
    incarnations: Arc<Vec<std::sync::atomic::AtomicU64>>,
    /// A durable node found no Raft state in its data dir at start: a first start or a lost
    /// disk (see `spawn_shard_group`).
    pub started_empty: std::sync::atomic::AtomicBool,
    /// A `--join` node heard from no peer whether the cluster counts it already: its replicas
    /// started empty vote only once they hold state (`GroupSettings::votes_only_with_state`).
    pub membership_unknown: std::sync::atomic::AtomicBool,
    /// Paces the planner's warning about a replica count the map does not have.
    pub replica_warnings: crate::consensus::admit::WarnThrottle,
}

/// How long a retired replica's cache is kept: reads that passed their barrier on it just
/// before it retired may still be reading it (they are bounded by the request timeout).
fn clear_after(config: &CacheConfig) -> Duration {
    2 * config.request_timeout
}

/// A replica just started, with what the meta shard's replica shares with the node.
pub(super) struct Started {
    pub shard: Shard,
    pub acl: Arc<AclStore>,
    pub shard_map: Arc<ShardMapStore>,
}

impl Replicas {
    pub fn new(
        config: CacheConfig,
        transport: Arc<Transport>,
        dispatcher: Arc<Dispatcher>,
        supervisor: Supervisor,
        cancel: CancellationToken,
    ) -> Self {
        let shards = config.shard_count();
        let storages = (0..shards).map(|_| CacheStorage::new(shard_limits(&config))).collect();
        Self {
            config,
            transport,
            dispatcher,
            table: Arc::new(ShardTable::new(shards)),
            storages,
            supervisor,
            cancel,
            node_db: Mutex::new(NodeDbSlot::default()),
            tasks: Arc::default(),
            incarnations: Arc::new((0..shards).map(|_| std::sync::atomic::AtomicU64::new(0)).collect()),
            started_empty: std::sync::atomic::AtomicBool::new(false),
            membership_unknown: std::sync::atomic::AtomicBool::new(false),
            replica_warnings: Default::default(),
        }
    }

    /// The shards this node has Raft state for in its database (a durable node restarting),
    /// or none (memory storage, or a first start).
    pub fn stored_shards(&self) -> Result<Option<Vec<ShardId>>> {
        #[cfg(feature = "rocksdb")]
        if self.config.raft_storage == RaftStorageType::RocksDb {
            let db = self.node_db()?;
            let stored = db.shards_with_state(self.config.shard_count()).map_err(|e| {
                crate::Error::Storage(format!("reading the shards in {}: {e}", db.path().display()))
            })?;
            self.started_empty.store(stored.is_empty(), std::sync::atomic::Ordering::Release);
            return Ok((!stored.is_empty()).then_some(stored));
        }
        Ok(None)
    }

    #[cfg(feature = "rocksdb")]
    fn node_db(&self) -> Result<Arc<crate::consensus::rocks_storage::NodeDb>> {
        let mut slot = self.node_db.lock().expect("node db poisoned");
        match slot.as_ref() {
            Some(db) => Ok(db.clone()),
            None => Ok(slot.insert(super::recovery::open_node_db(&self.config)?).clone()),
        }
    }

    /// Starts shard `id`'s replica with `conf` and adds it to the table.
    ///
    /// # Errors
    /// Its durable state cannot be opened or recovered.
    pub fn start(&self, id: ShardId, conf: &Conf) -> Result<Started> {
        let begin = if conf.0.is_empty() && conf.1.is_empty() {
            Begin::Empty
        } else {
            Begin::Bootstrap { replays_removals: false }
        };
        self.start_replaying(id, conf, begin)
    }

    /// [`Self::start`], the log beginning as `begin` says.
    pub(super) fn start_replaying(&self, id: ShardId, conf: &Conf, begin: Begin) -> Result<Started> {
        if id >= self.table.num_shards() {
            // A shard map from a node that splits the keys into more shards (refused at the
            // handshake since; see `transport::shard_count_mismatch`).
            return Err(crate::Error::Config(crate::config::ConfigError::Invalid(format!(
                "shard {id} does not exist on this node ({} shards): every node needs the same --shards",
                self.table.num_shards()
            ))));
        }
        let config = &self.config;
        let storage = self.storages[id as usize].clone();
        self.incarnations[id as usize].fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let sm = CacheStateMachine::new(storage.clone());
        let (acl, shard_map) = (sm.acl().clone(), sm.shard_map().clone());
        {
            let mut members = sm.members().lock().expect("members poisoned");
            members.insert(config.node_id, config.raft_addr);
            members.extend(config.seed_nodes.iter().copied());
        }
        let stop = self.cancel.child_token();
        let (group, task) = {
            let mut node_db = self.node_db.lock().expect("node db poisoned");
            let empty = self.started_empty.load(std::sync::atomic::Ordering::Acquire);
            let unknown = self.membership_unknown.load(std::sync::atomic::Ordering::Acquire);
            let starting = (id, conf, begin, empty, unknown);
            spawn_shard_group(config, starting, sm, &self.transport, &stop, &mut node_db)?
        };
        let name = |what: &str| {
            if config.shard_count() == 1 {
                format!("the {what}")
            } else {
                format!("the {what} of shard {id}")
            }
        };
        let supervisor = &self.supervisor;
        let (shared, retired) = (group.shared.clone(), stop.clone());
        let retired_too = (stop.clone(), stop.clone());
        let tasks = [
            if id == META_SHARD {
                supervisor.watch(name("raft group loop"), task, move || shared.removed())
            } else {
                supervisor.watch_replica(name("raft group loop"), task, move || {
                    shared.removed() || retired.is_cancelled()
                })
            },
            supervisor.watch_replica(
                name("expiry sweeper"),
                tokio::spawn(sweep_expired(storage.clone(), stop.clone())),
                move || retired_too.0.is_cancelled(),
            ),
            supervisor.watch_replica(
                name("evictor"),
                tokio::spawn(evict(storage.clone(), group.clone(), stop.clone())),
                move || retired_too.1.is_cancelled(),
            ),
        ];
        self.tasks.lock().expect("tasks poisoned").extend(tasks);
        let shard = Shard { id, group, storage, stop };
        self.table.insert(shard.clone());
        Ok(Started { shard, acl, shard_map })
    }

    /// Starts shard `id`'s replica while the node runs, empty: the shard's leader adds it as a
    /// learner and sends it a snapshot.
    ///
    /// # Errors
    /// As [`Self::start`].
    pub fn join(&self, id: ShardId) -> Result<()> {
        // What an earlier replica here left (see `retire`).
        if let Some(storage) = self.storages.get(id as usize) {
            storage.clear();
        }
        let started = self.start(id, &(Vec::new(), Vec::new()))?;
        // The peers' handshakes came before this group existed.
        self.dispatcher.introduce(&started.shard.group);
        info!(shard = id, "a replica of this shard started here; it waits for its leader");
        Ok(())
    }

    /// Starts shard `id`'s replica while the node runs, as a member the group already counts
    /// (`conf`, as the group has it): a memory node's replica after a restart, which recovers
    /// before it votes (`consensus::recovery`). The peers' handshakes of this process's start
    /// are its answers: every one came after the earlier process ended.
    ///
    /// # Errors
    /// As [`Self::start`].
    /// `first`: `conf` is the group's first members, never changed (the first map's
    /// placement at its first epoch): the replica begins with their bootstrap log, as on a first
    /// start, which a memory node cannot tell from a restart. Else it begins empty and learns
    /// its configuration from the log it is sent (see [`Begin::Empty`]).
    pub fn rejoin(&self, id: ShardId, conf: &Conf, first: bool) -> Result<()> {
        if let Some(storage) = self.storages.get(id as usize) {
            storage.clear();
        }
        // The log it is sent may hold this node's removal from an earlier move away (and back).
        let begin = if first { Begin::Bootstrap { replays_removals: true } } else { Begin::Empty };
        let started = self.start_replaying(id, conf, begin)?;
        self.dispatcher.introduce(&started.shard.group);
        info!(shard = id, voters = ?conf.0, learners = ?conf.1, "this node's replica of the shard started again");
        Ok(())
    }

    /// Stops shard `id`'s replica and deletes what it held (see the module docs). Reads go to
    /// the shard's holders from now on; its cache is cleared after `clear_after`, unless a new
    /// replica of the shard started here meanwhile (which clears it first).
    pub async fn retire(&self, id: ShardId) {
        if id == META_SHARD {
            return;
        }
        let Some(shard) = self.table.remove(id) else { return };
        shard.stop.cancel();
        // Its loop may still be writing its last Ready: the state goes once it has stopped.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !shard.group.has_ended() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let incarnation = self.incarnations[id as usize].load(std::sync::atomic::Ordering::Acquire);
        let (storage, table, cancel, grace) =
            (shard.storage.clone(), self.table.clone(), self.cancel.clone(), clear_after(&self.config));
        let incarnations = self.incarnations.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = tokio::time::sleep(grace) => {
                    let current = incarnations[id as usize].load(std::sync::atomic::Ordering::Acquire);
                    if current == incarnation && !table.holds(id) {
                        storage.clear();
                    }
                }
            }
        });
        #[cfg(feature = "rocksdb")]
        if self.config.raft_storage == RaftStorageType::RocksDb {
            match self.node_db() {
                Ok(db) => {
                    if let Err(e) = db.drop_shard(id) {
                        warn!(shard = id, error = %e, "the retired replica's raft state was not deleted");
                    }
                }
                Err(e) => warn!(shard = id, error = %e, "the retired replica's raft state was not deleted"),
            }
            if let Some(checkpoints) = self.config.shard_checkpoint_config(id) {
                if let Err(e) = std::fs::remove_dir_all(&checkpoints.dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        warn!(shard = id, error = %e, "the retired replica's checkpoints were not removed");
                    }
                }
            }
        }
        info!(shard = id, "this node's replica of the shard is retired");
    }
}

/// The cache bounds of one shard: the node's, split evenly between its shards (and at most
/// `shard_capacity` entries each) when there are several.
pub(super) fn shard_limits(config: &CacheConfig) -> StorageLimits {
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

/// The node's RocksDB once a durable shard opened it (always `None` without RocksDB).
type NodeDbSlot = Option<NodeDbHandle>;
#[cfg(feature = "rocksdb")]
type NodeDbHandle = Arc<crate::consensus::rocks_storage::NodeDb>;
/// Without RocksDB there is no node database to hold.
#[cfg(not(feature = "rocksdb"))]
type NodeDbHandle = std::convert::Infallible;

/// How a memory replica's log begins (a durable one opens what it stored, else begins as
/// `Bootstrap` or `Empty` too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Begin {
    /// With the bootstrap entries of the group's first members (`conf`): a first start, or a
    /// memory node's replica of a data shard still at its first placement (the agreed map
    /// says so; the meta shard's members, learners included, are not in the map, so a
    /// restarted meta replica of a running cluster always begins `Empty`). `replays_removals`: the
    /// replica starts without the log it had here, so the log it is sent may hold the removal
    /// of an earlier replica of this node, which it replays instead of obeying
    /// (`GroupSettings::fresh`).
    Bootstrap { replays_removals: bool },
    /// Empty, its configuration learned from the log it is sent (from its start, or a
    /// snapshot), replaying removals: a replica placement adds (empty `conf`), or a memory
    /// node's replica of a running group whose members may have changed since its first ones
    /// (a moved data shard, the meta shard), which recovers before it votes counting `conf`'s
    /// voters. The first members' bootstrap entries
    /// would not do there (they are the group's first entries only while its members never
    /// changed, and a different prefix, committed, contradicts the leader's log for good), nor
    /// would `conf` over an empty log (the log's changes replayed over it do not end where the
    /// group is).
    Empty,
}

/// Starts the Raft group of shard `id` over its state machine `sm`.
fn spawn_shard_group(
    config: &CacheConfig,
    (id, conf, begin, started_empty, membership_unknown): (ShardId, &Conf, Begin, bool, bool),
    sm: CacheStateMachine,
    transport: &Arc<Transport>,
    cancel: &CancellationToken,
    node_db: &mut NodeDbSlot,
) -> Result<(GroupHandle, JoinHandle<()>)> {
    let replays_removals = matches!(begin, Begin::Empty | Begin::Bootstrap { replays_removals: true });
    let rejoins = begin == Begin::Empty && !conf.0.is_empty();
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
        // restart: it recovers first unless it is the only voter (or joins, empty conf). So
        // does a durable node that found its data dir empty: a first start, or a disk lost or
        // wiped. Found from outside: one restarted on a wiped dir voted at once, with an empty
        // log, and a lagging peer it elected rolled acknowledged writes back. Its recovery
        // also ends with a quorum that never ran (a first start), so a new cluster starts
        // with a node missing (`consensus::recovery`). `--join` changes only the first
        // configuration (none: the node waits to be added); a joined node started again
        // with the same command line is a restart like any other (found from outside: it
        // voted with an empty log, and a lagging peer it elected lost acknowledged writes).
        recover: (config.raft_storage == RaftStorageType::Memory || started_empty)
            && !config.force_new_cluster
            && conf.0.len() > 1,
        first_start_possible: started_empty,
        // A member started again empty (`Begin::Empty`) counts its group's voters, not its
        // empty configuration's.
        recovery_voters: if rejoins { conf.0.clone() } else { Vec::new() },
        fresh: replays_removals,
        votes_only_with_state: membership_unknown && conf.0.is_empty(),
        #[cfg(feature = "fault-injection")]
        faults: config.faults.clone(),
    };
    match config.raft_storage {
        RaftStorageType::Memory => {
            let store = match begin {
                Begin::Bootstrap { .. } => MemStorage::bootstrapped(&conf.0, &conf.1),
                Begin::Empty => MemStorage::new(),
            };
            spawn_group(settings, store, sm, transport.clone(), cancel.clone())
        }
        // `Begin::Empty` is an empty log on disk too: found from outside, a durable replica
        // started empty with its group's members wrote their bootstrap entries as committed,
        // which the group had long left behind, and never caught up. (A replica with state on
        // disk keeps it either way.)
        RaftStorageType::RocksDb => {
            let boot = if begin == Begin::Empty { &(Vec::new(), Vec::new()) } else { conf };
            spawn_durable(config, id, boot, settings, sm, transport, cancel, node_db)
        }
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
