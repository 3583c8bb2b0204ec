//! Placement on real nodes over TCP: with a replica factor below the node count, each shard
//! lives on that many nodes (the meta shard on every node, the others as learners), the map is
//! agreed through the meta shard, and every node answers for every key, reads and writes,
//! whether it holds the key's shard or not.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{cluster_with, discovered, wait_until};
use crema::{ApplyOutput, CacheCommand, DistributedCache, MultiRaftCacheConfig};

const SHARDS: u32 = 8;

async fn placed(n: usize, replicas: usize) -> Vec<DistributedCache> {
    let nodes = cluster_with(n, |c| {
        discovered(c)
            .with_multiraft_config(MultiRaftCacheConfig {
                enabled: true,
                num_shards: SHARDS,
                ..Default::default()
            })
            .with_replica_factor(replicas)
    })
    .await;
    // Every shard has a leader its holders agree on.
    wait_until(Duration::from_secs(20), "a leader of every shard, known to its holders", || async {
        (0..SHARDS).all(|shard| {
            let holders: Vec<_> = nodes.iter().filter(|n| n.holds_shard(shard)).collect();
            let leader = holders.first().and_then(|n| n.shard_leader(shard));
            leader.is_some() && holders.iter().all(|n| n.shard_leader(shard) == leader)
        })
    })
    .await;
    nodes
}

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key:{i}"))
}

#[tokio::test]
async fn each_shard_lives_on_its_replicas_and_every_node_answers_for_every_key() {
    let nodes = placed(5, 3).await;
    // The map is agreed, the same on every node, and is the one the nodes started from.
    wait_until(Duration::from_secs(10), "the shard map on every node", || async {
        nodes.iter().all(|n| !n.shard_map().is_empty())
    })
    .await;
    let map = nodes[0].shard_map();
    assert!(nodes.iter().all(|n| n.shard_map() == map));
    assert_eq!(Some(map.clone()), nodes[0].config().initial_shard_map());
    let mut loads = [0usize; 5];
    for placement in map.shards() {
        let shard = placement.shard_id;
        assert_eq!(placement.members.len(), 3, "{placement:?}");
        for node in &nodes {
            let member = placement.members.contains(&node.node_id());
            loads[node.node_id() as usize - 1] += usize::from(member);
            // The meta shard is on every node; another shard only on its members.
            assert_eq!(
                node.holds_shard(shard),
                member || shard == 0,
                "node {} shard {shard}",
                node.node_id()
            );
        }
        let holder = nodes.iter().find(|n| placement.members.contains(&n.node_id())).unwrap();
        let status = holder.shard_status(shard).await.unwrap();
        assert_eq!(status.voters, placement.members, "shard {shard}'s voters are its placement");
        if shard == 0 {
            assert_eq!(status.learners.len(), 2, "the other nodes follow the meta shard as learners");
        } else {
            assert!(status.learners.is_empty());
        }
    }
    // 24 replicas over 5 nodes: 4 or 5 each.
    assert!(loads.iter().all(|l| (4..=5).contains(l)), "{loads:?}");

    // Every node writes keys of every shard, held or not.
    for i in 0..200 {
        nodes[i % 5].put(key(i), format!("v{i}")).await.unwrap();
    }
    for node in &nodes {
        for i in (0..200).step_by(7) {
            let want = Some(Bytes::from(format!("v{i}")));
            assert_eq!(node.consistent_get(&key(i)).await.unwrap(), want, "node {} key {i}", node.node_id());
        }
        assert_eq!(node.live_count(true).await.unwrap(), 200);
        let mut ones = node.live_keys(Some(b"key:1?"), true).await.unwrap();
        ones.sort();
        let want: Vec<Bytes> = (10..20).map(key).collect();
        assert_eq!(ones, want);
    }
    // A node that holds few shards: a write over every shard is split and counted whole.
    let keys: Vec<Bytes> = (0..50).map(key).collect();
    let deleted = nodes[4].execute(CacheCommand::DeleteMany { keys: keys.clone() }).await.unwrap();
    assert_eq!(deleted, ApplyOutput::Int(50));
    for node in &nodes {
        let entries = node.read_entries(&keys, true).await.unwrap();
        assert!(entries.iter().all(Option::is_none), "node {}", node.node_id());
        assert_eq!(node.live_count(true).await.unwrap(), 150);
        // The fast read sees a write acknowledged before on the node that made it.
    }
    nodes[3].put("mine", "here").await.unwrap();
    assert_eq!(nodes[3].get(b"mine").await, Some(Bytes::from("here")));
    assert!(nodes[3].contains(b"mine").await);
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn with_as_many_replicas_as_nodes_every_node_holds_every_shard() {
    let nodes = placed(3, 3).await;
    for node in &nodes {
        assert!((0..SHARDS).all(|s| node.holds_shard(s)));
        let status = node.shard_status(0).await.unwrap();
        assert_eq!((status.voters, status.learners), (vec![1, 2, 3], vec![]));
    }
    for node in &nodes {
        node.shutdown().await;
    }
}
