//! Eviction goes through the log: a capacity-bounded cluster evicts the same keys on every node,
//! so read-modify-write commands on evicted keys are decided alike everywhere, and a new leader
//! takes over the policy.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use crema::{ApplyOutput, CacheCommand, DistributedCache};

const CAPACITY: u64 = 50;

/// Every live entry of `node`, sorted.
fn entries(node: &DistributedCache) -> Vec<(Bytes, Bytes)> {
    let mut all: Vec<_> = node.storage().live_entries(0).into_iter().map(|(k, v)| (k, v.value)).collect();
    all.sort();
    all
}

/// Waits until every node has applied the same index, holds at most `CAPACITY` entries and
/// the same entries as the others; answers them.
async fn converged(nodes: &[&DistributedCache]) -> Vec<(Bytes, Bytes)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let index = nodes[0].raft_figures().applied_index;
        let states: Vec<_> = nodes.iter().map(|n| entries(n)).collect();
        let same_index = nodes.iter().all(|n| n.raft_figures().applied_index == index);
        if same_index && states.iter().all(|s| *s == states[0]) && states[0].len() as u64 <= CAPACITY {
            return states.into_iter().next().unwrap();
        }
        let last = format!(
            "applied {:?}, entries {:?}",
            nodes.iter().map(|n| n.raft_figures().applied_index).collect::<Vec<_>>(),
            states.iter().map(Vec::len).collect::<Vec<_>>()
        );
        if tokio::time::Instant::now() > deadline {
            panic!("the nodes did not converge within the bound in 10 s: {last}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes through every node in turn: a put of a fresh key and an INCR of a counter that the
/// policy may well have evicted meanwhile (INCR on an evicted counter restarts it at 1, the
/// same on every node).
async fn write_round(nodes: &[&DistributedCache], from: usize, to: usize) {
    for i in from..to {
        let node = nodes[i % nodes.len()];
        node.put(format!("key{i}"), format!("value{i}")).await.expect("put");
        let counter = Bytes::from(format!("counter{}", i % 20));
        let out = node.execute(CacheCommand::IncrBy { key: counter, delta: 1 }).await.expect("incr");
        assert!(matches!(out, ApplyOutput::Int(n) if n >= 1), "{out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_cluster_evicts_the_same_keys_on_every_node_and_a_new_leader_takes_over() {
    init_tracing();
    let nodes = cluster_with(3, |c| c.with_max_capacity(CAPACITY)).await;
    let refs: Vec<&DistributedCache> = nodes.iter().collect();
    let leader = wait_leader(&refs, Duration::from_secs(5)).await;

    write_round(&refs, 0, 400).await;
    let state = converged(&refs).await;
    assert!(!state.is_empty());
    let evictions: Vec<u64> = refs.iter().map(|n| n.stats().evictions).collect();
    assert!(evictions[0] > 0, "nothing was evicted");
    assert!(evictions.iter().all(|e| *e == evictions[0]), "evictions differ by node: {evictions:?}");
    // A key the cluster evicted is gone on every node, for a linearizable read too.
    let evicted = (0..400).map(|i| format!("key{i}")).find(|k| !state.iter().any(|(s, _)| s == k.as_bytes()));
    let evicted = evicted.expect("400 keys cannot all fit in 50");
    for n in &refs {
        assert_eq!(n.consistent_get(evicted.as_bytes()).await.unwrap(), None);
    }

    // The leader goes; the new one fills its policy from its own entries and keeps the bound.
    nodes[leader].shutdown().await;
    let rest: Vec<&DistributedCache> =
        refs.iter().copied().filter(|n| n.node_id() != refs[leader].node_id()).collect();
    wait_leader(&rest, Duration::from_secs(5)).await;
    let before = rest[0].stats().evictions;
    write_round(&rest, 400, 600).await;
    converged(&rest).await;
    assert!(rest[0].stats().evictions > before, "the new leader evicted nothing");
    assert_eq!(rest[0].stats().evictions, rest[1].stats().evictions);
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbounded_cache_never_evicts() {
    let nodes = cluster_with(1, |c| c.with_max_capacity(u64::MAX)).await;
    let node = &nodes[0];
    wait_leader(&[node], Duration::from_secs(5)).await;
    for i in 0..300 {
        node.put(format!("key{i}"), "v").await.unwrap();
    }
    assert_eq!(node.entry_count(), 300);
    assert_eq!(node.stats().evictions, 0);
    node.shutdown().await;
}
