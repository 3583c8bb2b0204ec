//! The cluster under test and its clients: nodes started, crashed and restarted in this
//! process, and the workload that records every operation for the checker.

use super::*;

/// One scenario at a time: a 5-node cluster beside another on 2 cores would time out for
/// reasons that are not faults.
pub(crate) static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Search steps per key before the checker gives up (a failure).
pub(crate) const CHECK_BUDGET: u64 = 20_000_000;
/// Operations on one key before clients move to a fresh one.
pub(crate) const OPS_PER_KEY: u64 = 200;
/// How long a client waits for one operation before it counts the outcome as unknown.
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
/// After the faults stop, the cluster must commit again within this.
pub(crate) const RECOVERY: Duration = Duration::from_secs(5);
pub(crate) const CLIENTS: usize = 6;

// ----- run parameters -----

pub(crate) fn seed(default: u64) -> u64 {
    std::env::var("CREMA_NEMESIS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

pub(crate) fn duration(default: Duration) -> Duration {
    let Ok(text) = std::env::var("CREMA_NEMESIS_DURATION") else { return default };
    let text = text.trim();
    let (number, unit) = match text.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (text.strip_suffix('s').unwrap_or(text), 1),
    };
    number.parse::<u64>().map(|n| Duration::from_secs(n * unit)).unwrap_or(default)
}

pub(crate) const SHORT: Duration = Duration::from_secs(6);

// ----- the cluster -----

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Storage {
    Memory,
    #[cfg(feature = "rocksdb")]
    RocksDb,
}

pub(crate) type Tweak = Box<dyn Fn(CacheConfig) -> CacheConfig + Send + Sync>;

pub(crate) struct Cluster {
    pub(crate) faults: Arc<Faults>,
    pub(crate) addrs: Vec<SocketAddr>,
    /// Node `i + 1` at index `i`; none while crashed.
    pub(crate) nodes: RwLock<Vec<Option<Arc<DistributedCache>>>>,
    /// The nodes clients talk to (the voters, as last known).
    pub(crate) members: RwLock<Vec<NodeId>>,
    pub(crate) initial_voters: usize,
    pub(crate) storage: Storage,
    pub(crate) dirs: Vec<tempfile::TempDir>,
    pub(crate) tweak: Tweak,
}

impl Cluster {
    /// `size` nodes, the first `voters` of them the initial voters, the rest started empty and
    /// waiting to be added.
    pub(crate) async fn start(
        size: usize,
        voters: usize,
        storage: Storage,
        seed: u64,
        tweak: Tweak,
    ) -> Arc<Self> {
        let (listeners, addrs): (Vec<_>, Vec<_>) = crate::common::bind(size).into_iter().unzip();
        let dirs = (0..size).map(|_| tempfile::tempdir().unwrap()).collect();
        let cluster = Arc::new(Self {
            faults: Arc::new(Faults::new(seed)),
            addrs,
            nodes: RwLock::new(vec![None; size]),
            members: RwLock::new((1..=voters as NodeId).collect()),
            initial_voters: voters,
            storage,
            dirs,
            tweak,
        });
        for (i, listener) in listeners.into_iter().enumerate() {
            let id = i as NodeId + 1;
            let config = cluster.config(id, id as usize > voters);
            let node = DistributedCache::new_with_listener(config, listener).await.expect("start node");
            cluster.nodes.write().unwrap()[i] = Some(Arc::new(node));
        }
        cluster
    }

    pub(crate) fn config(&self, id: NodeId, join: bool) -> CacheConfig {
        let seeds = (1..=self.initial_voters as NodeId)
            .filter(|v| *v != id)
            .map(|v| (v, self.addrs[v as usize - 1]))
            .collect();
        let config = CacheConfig::new(id, self.addrs[id as usize - 1])
            .with_seed_nodes(seeds)
            .with_join(join)
            .with_raft_config(fast_raft())
            .with_request_timeout(Duration::from_millis(1500))
            .with_forwarding_timeout(Duration::from_millis(1500))
            .with_faults(self.faults.clone());
        let config = match self.storage {
            Storage::Memory => config,
            #[cfg(feature = "rocksdb")]
            Storage::RocksDb => config
                .with_raft_storage_type(crema::RaftStorageType::RocksDb)
                .with_data_dir(self.dirs[id as usize - 1].path()),
        };
        (self.tweak)(config)
    }

    pub(crate) fn node(&self, id: NodeId) -> Option<Arc<DistributedCache>> {
        self.nodes.read().unwrap()[id as usize - 1].clone()
    }

    pub(crate) fn running(&self) -> Vec<Arc<DistributedCache>> {
        self.nodes.read().unwrap().iter().flatten().cloned().collect()
    }

    pub(crate) fn members(&self) -> Vec<NodeId> {
        self.members.read().unwrap().clone()
    }

    pub(crate) fn ids(&self) -> Vec<NodeId> {
        (1..=self.addrs.len() as NodeId).collect()
    }

    /// A node that believes it leads (during a partition there may be two; any will do).
    pub(crate) fn leader(&self) -> Option<NodeId> {
        self.running().iter().find(|n| n.is_leader()).map(|n| n.node_id())
    }

    /// Stops `id` in process: a shutdown, so requests it holds are answered `Shutdown` (outcome
    /// unknown) and a RocksDB node keeps what it persisted. SIGKILL of real processes is in
    /// the server's tests (`crash_recovery.rs`, `process_faults.rs`).
    pub(crate) async fn crash(&self, id: NodeId) {
        let node = self.nodes.write().unwrap()[id as usize - 1].take();
        if let Some(node) = node {
            node.shutdown().await;
        }
    }

    /// Starts `id` again on its address (and data directory); `join`: as an empty node waiting
    /// to be added.
    pub(crate) async fn restart(&self, id: NodeId, join: bool) {
        let addr = self.addrs[id as usize - 1];
        let listener = crate::common::rebind(addr).await;
        let node = DistributedCache::new_with_listener(self.config(id, join), listener)
            .await
            .unwrap_or_else(|e| panic!("restarting node {id}: {e}"));
        self.nodes.write().unwrap()[id as usize - 1] = Some(Arc::new(node));
    }

    pub(crate) async fn shutdown(&self) {
        for node in self.running() {
            node.shutdown().await;
        }
    }
}

// ----- clients -----

/// Which key an operation uses.
#[derive(Clone, Copy)]
pub(crate) enum Keys {
    /// All clients on one key, a fresh one every `OPS_PER_KEY` operations.
    Rotating,
    /// Spread over `width` keys at a time, moving to fresh ones every `OPS_PER_KEY * width / 4`.
    Spread { width: u64 },
}

/// A write some node acknowledged: for the minority check.
pub(crate) struct Ack {
    pub(crate) node: NodeId,
    pub(crate) call: u64,
    pub(crate) ret: u64,
}

pub(crate) struct Workload {
    pub(crate) history: Recorder,
    pub(crate) ops: AtomicU64,
    pub(crate) stop: AtomicBool,
    pub(crate) keys: Keys,
    /// What the history is checked against.
    pub(crate) model: Model,
    /// Whether clients also send compare-and-set (`SET NX`).
    pub(crate) cas: bool,
    pub(crate) acks: Mutex<Vec<Ack>>,
    pub(crate) max_key: AtomicU64,
}

pub(crate) fn key_name(key: u64) -> Bytes {
    Bytes::from(format!("k{key}"))
}

pub(crate) fn value_of(bytes: Option<Bytes>) -> Option<u64> {
    bytes.map(|b| std::str::from_utf8(&b).ok().and_then(|s| s.parse().ok()).expect("a value we wrote"))
}

/// The node refused before proposing anything: the write certainly did not happen.
pub(crate) fn refused(e: &Error) -> bool {
    matches!(e, Error::NotLeader { .. } | Error::ProposalDropped)
}

pub(crate) async fn client(cluster: Arc<Cluster>, work: Arc<Workload>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !work.stop.load(Ordering::Relaxed) {
        let members = cluster.members();
        let Some(node) = members.choose(&mut rng).and_then(|id| cluster.node(*id)) else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let n = work.ops.fetch_add(1, Ordering::Relaxed);
        let key = match work.keys {
            Keys::Rotating => n / OPS_PER_KEY,
            Keys::Spread { width } => (n / (OPS_PER_KEY * width / 4)) * width + rng.gen_range(0..width),
        };
        work.max_key.fetch_max(key, Ordering::Relaxed);
        let value = n + 1;
        let roll: f64 = rng.gen();
        let input = if roll < 0.45 {
            Input::Put(value)
        } else if roll < 0.90 {
            Input::Get
        } else if roll < 0.95 || !work.cas {
            Input::Delete
        } else {
            Input::Cas { expected: None, new: value }
        };
        let pending = work.history.invoke(key, input.clone());
        let call = work.history.now();
        let outcome = tokio::time::timeout(CLIENT_TIMEOUT, run(&node, key, &input)).await;
        match outcome {
            Ok(Ok(output)) => {
                if !matches!(output, Output::Value(_)) {
                    let ret = work.history.now();
                    work.acks.lock().unwrap().push(Ack { node: node.node_id(), call, ret });
                }
                pending.complete(output);
            }
            Ok(Err(e)) if input == Input::Get || refused(&e) => pending.failed(),
            // A timeout, a node shut down under it, ...: it may have taken effect.
            Ok(Err(_)) | Err(_) => pending.complete(Output::Unknown),
        }
    }
}

pub(crate) async fn run(node: &DistributedCache, key: u64, input: &Input) -> Result<Output, Error> {
    let k = key_name(key);
    match input {
        Input::Get => node.consistent_get(&k).await.map(|v| Output::Value(value_of(v))),
        Input::Put(v) => node.put(k, v.to_string()).await.map(|()| Output::Ok),
        Input::Delete => node.delete(k).await.map(|_| Output::Ok),
        Input::Cas { expected: None, new } => {
            let command = CacheCommand::Set {
                key: k,
                value: Bytes::from(new.to_string()),
                expiry: ExpiryUpdate::Persist,
                condition: SetCondition::IfAbsent,
                return_old: false,
            };
            match node.execute(command).await? {
                ApplyOutput::Written { written, .. } => Ok(Output::Swapped(written)),
                // Only a planted bug answers anything else; count it as unknown.
                _ => Ok(Output::Unknown),
            }
        }
        Input::Cas { .. } => unreachable!("crema has no compare-and-set on a value"),
    }
}
