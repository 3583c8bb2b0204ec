//! Snapshots larger than a peer frame (16 MiB) travel in pieces: a node added to a cluster whose
//! log was compacted long ago receives a 40 MiB snapshot, or a 1 GiB one, and ends with every
//! entry.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use crema::{CacheConfig, DistributedCache, RaftConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_over_the_frame_limit_reaches_a_new_member() {
    init_tracing();
    let small_log = |c: CacheConfig| {
        c.with_raft_config(RaftConfig { max_log_entries: 16, ..fast_raft() }).with_max_capacity(1_000_000)
    };
    let nodes = cluster_with(3, small_log).await;
    let refs: Vec<&DistributedCache> = nodes.iter().collect();
    let leader = wait_leader(&refs, Duration::from_secs(5)).await;
    // 4,000 values of 10 KiB: about 40 MiB of state, two and a half frames' worth.
    let value = Bytes::from(vec![b'x'; 10 * 1024]);
    for i in 0..4000u32 {
        nodes[leader].put(format!("key:{i:05}"), value.clone()).await.unwrap();
    }
    let first = nodes[leader].cluster_status().await.unwrap().group.first_index;
    assert!(first > 3000, "the log was compacted (first index {first})");

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seeds = nodes.iter().map(|n| (n.node_id(), n.local_addr())).collect();
    let config = small_log(CacheConfig::new(4, addr).with_seed_nodes(seeds).with_join(true));
    let newcomer = DistributedCache::new_with_listener(config, listener).await.unwrap();
    nodes[leader].add_learner(4, addr).await.unwrap();
    let target = nodes[leader].raft_figures().applied_index;
    wait_until(Duration::from_secs(60), "the new member catches up", || async {
        newcomer.raft_figures().applied_index >= target
    })
    .await;
    assert!(newcomer.raft_figures().snapshots_installed >= 1, "it was caught up by a snapshot");
    assert_eq!(newcomer.storage().live_count(), 4000);
    for i in (0..4000u32).step_by(397) {
        assert_eq!(newcomer.get(format!("key:{i:05}").as_bytes()).await, Some(value.clone()));
    }
    newcomer.shutdown().await;
    for n in &nodes {
        n.shutdown().await;
    }
}

/// A 1 GiB cache is caught up by a snapshot too: 1,024 values of 1 MiB on a single-node cluster
/// whose log was compacted, then a new member added.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gib_snapshot_transfers() {
    init_tracing();
    let small_log = |c: CacheConfig| {
        c.with_raft_config(RaftConfig { max_log_entries: 16, ..fast_raft() })
            .with_max_capacity(1_000_000)
            .with_request_timeout(Duration::from_secs(30))
    };
    let nodes = cluster_with(1, small_log).await;
    let leader = &nodes[0];
    wait_until(Duration::from_secs(5), "leader", || async { leader.is_leader() }).await;
    let value = Bytes::from(vec![b'g'; 1 << 20]);
    for i in 0..1024u32 {
        leader.put(format!("big:{i:04}"), value.clone()).await.unwrap();
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let config =
        small_log(CacheConfig::new(2, addr).with_seed_nodes(vec![(1, leader.local_addr())]).with_join(true));
    let newcomer = DistributedCache::new_with_listener(config, listener).await.unwrap();
    leader.add_learner(2, addr).await.unwrap();
    let target = leader.raft_figures().applied_index;
    wait_until(Duration::from_secs(120), "the new member catches up", || async {
        newcomer.raft_figures().applied_index >= target
    })
    .await;
    assert!(newcomer.raft_figures().snapshots_installed >= 1);
    assert_eq!(newcomer.storage().live_count(), 1024);
    assert_eq!(newcomer.get(b"big:1023").await, Some(value));
    newcomer.shutdown().await;
    leader.shutdown().await;
}

/// Found from outside: the log kept its last 10,000 entries whatever they weighed, and 400 SETs
/// of a 4 MB value held 1.8 GB of log on every node of a memory cluster whose cache held 4 MB.
/// Applied entries are kept up to `max_log_bytes` now, and a member added later is caught up by
/// a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_of_large_entries_is_compacted_by_its_weight() {
    init_tracing();
    const BUDGET: u64 = 4 << 20;
    let light_log = |c: CacheConfig| c.with_raft_config(RaftConfig { max_log_bytes: BUDGET, ..fast_raft() });
    let nodes = cluster_with(3, light_log).await;
    let refs: Vec<&DistributedCache> = nodes.iter().collect();
    let leader = wait_leader(&refs, Duration::from_secs(5)).await;
    // 100 writes of 512 KiB to one key: 50 MiB of entries for one 512 KiB value.
    let value = |i: u32| Bytes::from(vec![b'a' + (i % 26) as u8; 512 * 1024]);
    for i in 0..100u32 {
        nodes[leader].put("big", value(i)).await.unwrap();
    }
    let target = nodes[leader].raft_figures().applied_index;
    for node in &nodes {
        wait_until(Duration::from_secs(10), "every node applies every write", || async {
            node.raft_figures().applied_index >= target
        })
        .await;
        let group = node.cluster_status().await.unwrap().group;
        assert!(group.log_bytes <= BUDGET, "node {} keeps {} bytes of log", node.node_id(), group.log_bytes);
        assert!(
            group.first_index > 50,
            "node {} compacted its log (first index {})",
            node.node_id(),
            group.first_index
        );
    }

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seeds = nodes.iter().map(|n| (n.node_id(), n.local_addr())).collect();
    let newcomer = DistributedCache::new_with_listener(
        light_log(CacheConfig::new(4, addr).with_seed_nodes(seeds).with_join(true)),
        listener,
    )
    .await
    .unwrap();
    nodes[leader].add_learner(4, addr).await.unwrap();
    wait_until(Duration::from_secs(30), "the new member catches up", || async {
        newcomer.raft_figures().applied_index >= target
    })
    .await;
    assert!(newcomer.raft_figures().snapshots_installed >= 1, "it was caught up by a snapshot");
    assert_eq!(newcomer.get(b"big").await, Some(value(99)));
    newcomer.shutdown().await;
    for n in &nodes {
        n.shutdown().await;
    }
}
