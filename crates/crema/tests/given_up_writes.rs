//! Writes a leader held under overload whose callers timed out are left out of the log: a
//! client told `TIMEOUT` does not see its write appear long after, and fresh writes do not
//! wait behind writes nobody waits for.
//!
//! Real nodes on 127.0.0.1; the leader's appends are cut with the fault-injection hooks of the
//! transport, so its first two batches stay uncommitted and every later write waits in the
//! leader (`held_writes`) until its caller gives up. The cut heals well inside an election
//! timeout (3-6 s), so the same leader then commits what it had appended.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{wait_leader, wait_until};
use crema::faults::Faults;
use crema::{CacheConfig, DistributedCache, Error, NodeId, RaftConfig};

/// Short against the election timeout: every held write's caller gives up long before the
/// leader could lose its leadership.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(500);

async fn cluster(faults: &Arc<Faults>) -> Vec<Arc<DistributedCache>> {
    let bound = common::bind(3);
    let addrs: Vec<_> = bound.iter().map(|(_, a)| *a).collect();
    let mut nodes = Vec::new();
    for (i, (listener, addr)) in bound.into_iter().enumerate() {
        let id = i as NodeId + 1;
        let seeds = (1..=3).filter(|p| *p != id).map(|p| (p, addrs[p as usize - 1])).collect();
        // 100 ms ticks, elections after 3-6 s without a leader.
        let raft = RaftConfig { tick_interval_ms: 100, election_tick: 30, ..Default::default() };
        let config = CacheConfig::new(id, addr)
            .with_seed_nodes(seeds)
            .with_raft_config(raft)
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_forwarding_timeout(REQUEST_TIMEOUT)
            .with_faults(faults.clone());
        nodes.push(Arc::new(DistributedCache::new_with_listener(config, listener).await.unwrap()));
    }
    nodes
}

/// Starts a SET of `key` on `node`; answers what the caller was told.
fn set(node: &Arc<DistributedCache>, key: &str) -> tokio::task::JoinHandle<Result<(), Error>> {
    let (node, key) = (node.clone(), key.to_string());
    tokio::spawn(async move { node.put(key, "v").await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_whose_callers_timed_out_while_held_are_never_applied() {
    let faults = Arc::new(Faults::new(11));
    let nodes = cluster(&faults).await;
    let refs: Vec<&DistributedCache> = nodes.iter().map(|n| n.as_ref()).collect();
    let l = wait_leader(&refs, Duration::from_secs(15)).await;
    let leader = &nodes[l];
    let leader_id = l as NodeId + 1;
    let followers: Vec<usize> = (0..3).filter(|i| *i != l).collect();
    let (f1, f2) = (followers[0] as NodeId + 1, followers[1] as NodeId + 1);
    leader.put("before", "v").await.unwrap();

    // Nothing from the leader reaches the followers, and nothing of the second follower
    // reaches the leader; the first still reaches it (to forward a write).
    faults.cut(leader_id, f1);
    faults.cut(leader_id, f2);
    faults.cut(f2, leader_id);

    // Two batches in flight, each of one write, proposed in passes of their own.
    let mut proposed = Vec::new();
    for key in ["in-log-1", "in-log-2"] {
        let batches = leader.raft_figures().proposal_batches;
        proposed.push(set(leader, key));
        wait_until(Duration::from_secs(5), "the write proposed", || async {
            leader.raft_figures().proposal_batches > batches
        })
        .await;
    }
    // Every later write waits in the leader: four of its own clients and one forwarded.
    let mut held: Vec<_> = (1..=4).map(|i| set(leader, &format!("held-{i}"))).collect();
    held.push(set(&nodes[followers[0]], "held-forwarded"));
    wait_until(Duration::from_secs(5), "five writes held by the leader", || async {
        leader.raft_figures().held_writes == 5
    })
    .await;
    for write in proposed.into_iter().chain(held) {
        let told = write.await.unwrap();
        assert!(matches!(told, Err(Error::Timeout(_))), "a write through a cut leader: {told:?}");
    }
    // The forwarded copy's sender has given up for certain once its patience has passed at the
    // leader too (both ends use the same timeouts).
    tokio::time::sleep(REQUEST_TIMEOUT).await;
    assert_eq!(leader.raft_figures().term, nodes[followers[0]].raft_figures().term, "no election yet");

    faults.heal();
    let storage = leader.storage();
    // Appended before their callers gave up, these commit now (a timeout allows it); the
    // held writes would be proposed in the same pass.
    wait_until(Duration::from_secs(10), "the batches in flight committed", || async {
        storage.get(b"in-log-2").is_some()
    })
    .await;
    // A fresh write goes through the same leader; anything held before it would be proposed
    // first, so once it is applied, the held writes' fate is decided.
    leader.put("after", "v").await.expect("a write once the cut healed");
    assert!(leader.is_leader(), "the leader of the cut kept its leadership");
    for key in ["before", "in-log-1", "in-log-2", "after"] {
        assert!(storage.get(key.as_bytes()).is_some(), "{key} is missing");
    }
    for key in ["held-1", "held-2", "held-3", "held-4", "held-forwarded"] {
        assert_eq!(storage.get(key.as_bytes()), None, "{key} was applied after its caller timed out");
    }
    // Each held write left out once: a forwarded write whose caller timed out sends no more
    // copies (it sent 128 more at its deadline, each held and given up here in turn).
    assert_eq!(leader.raft_figures().writes_given_up, 5);
    for node in &nodes {
        node.shutdown().await;
    }
}
