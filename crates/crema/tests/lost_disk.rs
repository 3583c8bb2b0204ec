//! A durable node whose data dir is empty at start: a first start, or a disk lost or wiped. It
//! cannot tell which by itself. Restarted on a wiped dir next to a peer that lags (down while
//! the others acknowledged writes), it must not help that peer lead: the peer's log would
//! overwrite the writes the third node holds. And a new cluster must still start with a node
//! missing. Real nodes over TCP, RocksDB in temporary directories.
#![cfg(feature = "rocksdb")]

mod common;

use std::net::SocketAddr;
use std::path::Path;

use bytes::Bytes;
use common::{discovered, init_tracing, node_config, wait_for_shard_leaders, wait_until};
use crema::{CacheConfig, DistributedCache, MultiRaftCacheConfig, NodeId, RaftStorageType, RecoveryState};
use std::time::Duration;

fn config(id: NodeId, addrs: &[SocketAddr], dir: &Path, shards: u32) -> CacheConfig {
    let config = node_config(id, addrs).with_raft_storage_type(RaftStorageType::RocksDb).with_data_dir(dir);
    if shards == 1 {
        return config;
    }
    discovered(config).with_multiraft_config(MultiRaftCacheConfig {
        enabled: true,
        num_shards: shards,
        ..Default::default()
    })
}

async fn start(id: NodeId, addrs: &[SocketAddr], dir: &Path, shards: u32) -> DistributedCache {
    let listener = common::rebind(addrs[id as usize - 1]).await;
    DistributedCache::new_with_listener(config(id, addrs, dir, shards), listener).await.expect("start node")
}

fn key(what: &str, i: usize) -> Bytes {
    Bytes::from(format!("{what}:{i}"))
}

/// Writes through `node` that every shard's leader acknowledged.
async fn write(node: &DistributedCache, what: &str) {
    for i in 0..60 {
        node.put(key(what, i), format!("{what}{i}")).await.unwrap();
    }
}

async fn all_there(nodes: &[&DistributedCache], whats: &[&str]) {
    for node in nodes {
        for what in whats {
            for i in 0..60 {
                let got = node.consistent_get(&key(what, i)).await.unwrap();
                assert_eq!(
                    got,
                    Some(Bytes::from(format!("{what}{i}"))),
                    "{what}:{i} on node {}",
                    node.node_id()
                );
            }
        }
    }
}

/// Node 1 misses the `late` writes; node 3 loses its disk. Started again with node 1 while node
/// 2, the only other holder of `late`, is down, node 3 recovers and votes for nobody; once node
/// 2 is back, every acknowledged write is there on every node.
async fn a_wiped_node_waits_for_the_peers_that_hold_the_log(shards: u32) {
    init_tracing();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<SocketAddr> = common::bind(3).into_iter().map(|(_, a)| a).collect();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(id, &addrs, dirs[id as usize - 1].path(), shards).await);
    }
    wait_for_shard_leaders(&nodes.iter().collect::<Vec<_>>(), shards, None).await;
    write(&nodes[1], "before").await;
    let [one, two, three] = <[DistributedCache; 3]>::try_from(nodes).ok().unwrap();
    one.shutdown().await;
    drop(one);
    wait_for_shard_leaders(&[&two, &three], shards, Some(1)).await;
    write(&two, "late").await;
    two.shutdown().await;
    three.shutdown().await;
    drop((two, three));
    std::fs::remove_dir_all(dirs[2].path()).unwrap();
    std::fs::create_dir(dirs[2].path()).unwrap();

    let one = start(1, &addrs, dirs[0].path(), shards).await;
    let three = start(3, &addrs, dirs[2].path(), shards).await;
    // Node 3 recovers until node 2 answers too; node 1 alone cannot be elected meanwhile.
    wait_until(Duration::from_secs(10), "node 3 recovering, having heard node 1", || async {
        three.raft_figures().recovering
            && three.cluster_status().await.is_ok_and(|s| {
                s.group.recovery == RecoveryState::WaitingForPeers { heard: vec![1], needed: 2 }
            })
    })
    .await;
    assert!((0..shards).all(|s| one.shard_leader(s).is_none()), "node 1 led with node 3's vote");
    let two = start(2, &addrs, dirs[1].path(), shards).await;
    let nodes = [&one, &two, &three];
    wait_for_shard_leaders(&nodes, shards, None).await;
    wait_until(Duration::from_secs(20), "node 3 recovered", || async { !three.raft_figures().recovering })
        .await;
    all_there(&nodes, &["before", "late"]).await;
    write(&three, "after").await;
    all_there(&nodes, &["after"]).await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_of_one_group_does_not_elect_a_lagging_peer() {
    a_wiped_node_waits_for_the_peers_that_hold_the_log(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_of_a_sharded_cluster_does_not_elect_a_lagging_peer() {
    a_wiped_node_waits_for_the_peers_that_hold_the_log(4).await;
}

/// Two of three new nodes serve at once; the third, started later for the first time, catches up.
async fn a_new_cluster_starts_with_a_node_missing(shards: u32) {
    init_tracing();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addrs: Vec<SocketAddr> = common::bind(3).into_iter().map(|(_, a)| a).collect();
    let one = start(1, &addrs, dirs[0].path(), shards).await;
    let two = start(2, &addrs, dirs[1].path(), shards).await;
    wait_for_shard_leaders(&[&one, &two], shards, None).await;
    write(&one, "two").await;
    all_there(&[&one, &two], &["two"]).await;
    let three = start(3, &addrs, dirs[2].path(), shards).await;
    let nodes = [&one, &two, &three];
    wait_for_shard_leaders(&nodes, shards, None).await;
    wait_until(Duration::from_secs(20), "node 3 caught up", || async { !three.raft_figures().recovering })
        .await;
    all_there(&nodes, &["two"]).await;
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_group_starts_with_a_node_missing() {
    a_new_cluster_starts_with_a_node_missing(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_sharded_cluster_starts_with_a_node_missing() {
    a_new_cluster_starts_with_a_node_missing(4).await;
}
