//! Helpers for integration tests: clusters of real nodes on 127.0.0.1 with ports bound to 0, and
//! waiting on conditions with deadlines (never fixed sleeps).

#![allow(dead_code)]

pub mod certs;
pub mod durable;
pub mod wire;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use crema::{CacheConfig, DistributedCache, NodeId, RaftConfig};

/// Raft timing for tests: 20 ms ticks, so an election timeout is 200–400 ms.
pub fn fast_raft() -> RaftConfig {
    RaftConfig { tick_interval_ms: 20, ..Default::default() }
}

/// Binds `n` listeners on 127.0.0.1, on ports below the kernel's ephemeral range (32768 and up
/// on Linux), from which every outgoing connection gets its port. A node started again binds
/// its address again (see [`rebind`]): in the ephemeral range, a link between two other nodes
/// could hold it for the rest of their test (found in CI, `AddrInUse`). A port is handed out
/// once per test process ([`claim_port`]), so a node started again never finds its port taken
/// by a node of a test running at the same time.
pub fn bind(n: usize) -> Vec<(TcpListener, SocketAddr)> {
    use rand::Rng;
    let mut held = Vec::with_capacity(n);
    while held.len() < n {
        let port = rand::thread_rng().gen_range(20_000..32_000);
        if !claim_port(port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            let addr = l.local_addr().unwrap();
            held.push((l, addr));
        }
    }
    held
}

/// Whether `port` was not handed out before in this test process; claims it if so.
fn claim_port(port: u16) -> bool {
    static CLAIMED: std::sync::Mutex<Option<std::collections::HashSet<u16>>> = std::sync::Mutex::new(None);
    let mut claimed = CLAIMED.lock().unwrap_or_else(|e| e.into_inner());
    let claimed = claimed.get_or_insert_with(Default::default);
    assert!(claimed.len() < 10_000, "a test process used up the ports 20000..32000");
    claimed.insert(port)
}

/// Binds `addr` (from [`bind`]) again for a node started again on it; retries while the port is
/// in use, up to 10 s (a listener of the node just shut down may still be closing).
pub async fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr) {
            Ok(listener) => return listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("binding {addr} again: {e}"),
        }
    }
}

/// The config of node `id` in a cluster at `addrs` (node i+1 at addrs[i]).
pub fn node_config(id: NodeId, addrs: &[SocketAddr]) -> CacheConfig {
    let seeds = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i as u64 + 1 != id)
        .map(|(i, a)| (i as u64 + 1, *a))
        .collect();
    CacheConfig::new(id, addrs[id as usize - 1])
        .with_seed_nodes(seeds)
        .with_raft_config(fast_raft())
        .with_request_timeout(Duration::from_secs(5))
}

/// Starts an `n`-node cluster; `tweak` adjusts each config.
pub async fn cluster_with(n: usize, tweak: impl Fn(CacheConfig) -> CacheConfig) -> Vec<DistributedCache> {
    let bound = bind(n);
    let addrs: Vec<SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
    let mut nodes = Vec::new();
    for (i, (listener, _)) in bound.into_iter().enumerate() {
        let config = tweak(node_config(i as u64 + 1, &addrs));
        nodes.push(DistributedCache::new_with_listener(config, listener).await.expect("start node"));
    }
    nodes
}

/// Starts an `n`-node cluster with test defaults.
pub async fn cluster(n: usize) -> Vec<DistributedCache> {
    cluster_with(n, |c| c).await
}

/// Polls `cond` every 10 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until exactly one node leads and every listed node agrees on it; answers its index.
pub async fn wait_leader(nodes: &[&DistributedCache], timeout: Duration) -> usize {
    wait_until(timeout, "a leader every node agrees on", || async {
        let leaders: Vec<_> = nodes.iter().filter(|n| n.is_leader()).collect();
        leaders.len() == 1 && nodes.iter().all(|n| n.leader_id() == Some(leaders[0].node_id()))
    })
    .await;
    nodes.iter().position(|n| n.is_leader()).unwrap()
}

/// Installs a tracing subscriber once (RUST_LOG controls it).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Counts panics on any thread from now on (a panicking task does not fail its test by itself);
/// the default hook still prints them.
pub fn count_panics() -> std::sync::Arc<std::sync::atomic::AtomicU64> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, OnceLock};
    static COUNT: OnceLock<Arc<AtomicU64>> = OnceLock::new();
    COUNT
        .get_or_init(|| {
            let count = Arc::new(AtomicU64::new(0));
            let seen = count.clone();
            let default = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                seen.fetch_add(1, Ordering::SeqCst);
                default(info);
            }));
            count
        })
        .clone()
}

/// Waits until each of the first `shards` shards has one leader every listed node knows,
/// other than `not`.
pub async fn wait_for_shard_leaders(nodes: &[&DistributedCache], shards: u32, not: Option<NodeId>) {
    wait_until(Duration::from_secs(20), "a leader of every shard, known to every node", || async {
        (0..shards).all(|shard| {
            let leader = nodes[0].shard_leader(shard);
            leader.is_some_and(|l| Some(l) != not) && nodes.iter().all(|n| n.shard_leader(shard) == leader)
        })
    })
    .await;
}

/// `c` with the cluster its configuration lists as its discovery (health-checked by pings).
pub fn discovered(c: CacheConfig) -> CacheConfig {
    let discovery = crema::StaticClusterDiscovery::new(c.node_id, c.raft_addr, c.seed_nodes.clone());
    c.with_cluster_discovery(discovery)
}

/// `c` with Multi-Raft on, `shards` shards, and the static discovery Multi-Raft needs.
pub fn sharded_config(c: CacheConfig, shards: u32) -> CacheConfig {
    discovered(c).with_multiraft_config(crema::MultiRaftCacheConfig {
        enabled: true,
        num_shards: shards,
        ..Default::default()
    })
}

/// An `n`-node cluster of `shards` shards, once every shard has a leader every node knows.
pub async fn sharded_cluster(n: usize, shards: u32) -> Vec<DistributedCache> {
    let nodes = cluster_with(n, |c| sharded_config(c, shards)).await;
    wait_for_shard_leaders(&nodes.iter().collect::<Vec<_>>(), shards, None).await;
    nodes
}
