//! Hibernation of idle shard groups on real nodes over TCP: idle replicas stop ticking and
//! sending, the first request wakes them and is served, and a shard whose leader dies or
//! stops (a paused process) while everything sleeps elects another leader.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{cluster_with, discovered, wait_for_shard_leaders, wait_until};
use crema::{CacheConfig, DistributedCache, MultiRaftCacheConfig, RaftConfig};

const SHARDS: u32 = 4;

/// 20 ms ticks, 25-tick election timeout (500 ms): long enough that a loaded test machine
/// does not make a node look silent.
fn raft() -> RaftConfig {
    RaftConfig { tick_interval_ms: 20, election_tick: 25, ..Default::default() }
}

async fn sharded(tweak: impl Fn(CacheConfig) -> CacheConfig) -> Vec<DistributedCache> {
    let nodes = cluster_with(3, |c| {
        tweak(discovered(c.with_raft_config(raft())).with_multiraft_config(MultiRaftCacheConfig {
            enabled: true,
            num_shards: SHARDS,
            ..Default::default()
        }))
    })
    .await;
    wait_for_shard_leaders(&nodes.iter().collect::<Vec<_>>(), SHARDS, None).await;
    nodes
}

async fn wait_all_hibernate(nodes: &[&DistributedCache]) {
    wait_until(Duration::from_secs(20), "every replica of every shard hibernates", || async {
        nodes.iter().all(|n| n.raft_figures().hibernating_shards == SHARDS as usize)
    })
    .await;
}

fn sent(nodes: &[DistributedCache]) -> u64 {
    nodes.iter().map(|n| n.raft_figures().messages_sent).sum()
}

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key:{i}"))
}

#[tokio::test]
async fn idle_groups_stop_sending_and_wake_on_the_first_request() {
    let nodes = sharded(|c| c).await;
    for i in 0..40 {
        nodes[i % 3].put(key(i), "v").await.unwrap();
    }
    let all: Vec<&DistributedCache> = nodes.iter().collect();
    // The leader balancer hands leaderships over until leads differ by at most one (a transfer
    // is a request, which wakes the shard): let it finish first.
    wait_until(Duration::from_secs(20), "leaders spread", || async {
        let leads: Vec<usize> = nodes
            .iter()
            .map(|n| (0..SHARDS).filter(|s| n.shard_leader(*s) == Some(n.node_id())).count())
            .collect();
        leads.iter().sum::<usize>() == SHARDS as usize
            && leads.iter().max().unwrap() - leads.iter().min().unwrap() <= 1
    })
    .await;
    wait_all_hibernate(&all).await;
    assert!(nodes[0].shard_info().iter().all(|s| s.hibernating));

    // Asleep, the groups send nothing: awake, in this window every leader would send a
    // heartbeat to each follower every 3 ticks, and each would be answered.
    let window = Duration::from_millis(1_000);
    let awake = 2 * SHARDS as u64 * 2 * (window.as_millis() as u64 / (3 * 20));
    let before = sent(&nodes);
    let started = Instant::now();
    while started.elapsed() < window {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let asleep = sent(&nodes) - before;
    assert!(asleep * 10 < awake, "{asleep} raft messages sent while idle (awake: about {awake})");

    // The first request wakes its shard, everywhere it is needed, and is served.
    for (j, node) in nodes.iter().enumerate() {
        for i in 0..40 {
            assert_eq!(node.consistent_get(&key(i)).await.unwrap(), Some(Bytes::from("v")), "key {i}");
        }
        node.put(key(100 + j), "after").await.unwrap();
    }
    for node in &nodes {
        node.read_barrier().await.unwrap();
        assert_eq!(node.storage().live_count(), 43);
    }
    // And once idle again, they sleep again.
    wait_all_hibernate(&all).await;
    for node in &nodes {
        node.shutdown().await;
    }
}

/// The node leading the most shards.
fn busiest(nodes: &[DistributedCache]) -> usize {
    let leads =
        |n: &DistributedCache| (0..SHARDS).filter(|s| n.shard_leader(*s) == Some(n.node_id())).count();
    (0..nodes.len()).max_by_key(|i| leads(&nodes[*i])).unwrap()
}

#[tokio::test]
async fn a_leader_that_dies_while_its_shards_sleep_is_replaced() {
    let nodes = sharded(|c| c).await;
    for i in 0..40 {
        nodes[i % 3].put(key(i), "before").await.unwrap();
    }
    wait_all_hibernate(&nodes.iter().collect::<Vec<_>>()).await;
    let victim = busiest(&nodes);
    let victim_id = nodes[victim].node_id();
    nodes[victim].shutdown().await;
    let survivors: Vec<&DistributedCache> =
        nodes.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, n)| n).collect();
    // Nobody asks anything: the survivors notice the silence by themselves.
    wait_for_shard_leaders(&survivors, SHARDS, Some(victim_id)).await;
    for node in &survivors {
        for i in 0..40 {
            assert_eq!(node.consistent_get(&key(i)).await.unwrap(), Some(Bytes::from("before")), "key {i}");
        }
    }
    for node in &nodes {
        node.shutdown().await;
    }
}

#[cfg(feature = "fault-injection")]
#[tokio::test]
async fn a_leader_that_stops_while_its_shards_sleep_is_replaced_and_steps_down() {
    let faults = std::sync::Arc::new(crema::faults::Faults::new(11));
    let nodes = sharded(|c| c.with_faults(faults.clone())).await;
    for i in 0..40 {
        nodes[i % 3].put(key(i), "before").await.unwrap();
    }
    wait_all_hibernate(&nodes.iter().collect::<Vec<_>>()).await;
    let victim = busiest(&nodes);
    let victim_id = nodes[victim].node_id();
    // Paused, the node sends nothing, pings included, as a stopped process would.
    faults.pause(victim_id);
    let survivors: Vec<&DistributedCache> =
        nodes.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, n)| n).collect();
    wait_for_shard_leaders(&survivors, SHARDS, Some(victim_id)).await;
    for (j, node) in survivors.iter().enumerate() {
        node.put(key(200 + j), "during").await.unwrap();
    }
    // Back, the old leader learns of the new ones and serves what they committed.
    faults.resume(victim_id);
    wait_for_shard_leaders(&nodes.iter().collect::<Vec<_>>(), SHARDS, None).await;
    for node in &nodes {
        for k in [key(0), key(200), key(201)] {
            assert!(node.consistent_get(&k).await.unwrap().is_some(), "{k:?} on node {}", node.node_id());
        }
    }
    for node in &nodes {
        node.shutdown().await;
    }
}
