//! Failover without stalls: writes made through followers while the leader is cut off are
//! answered once the next leader is elected (sent again to it, applied once), not after the
//! request timeout; a node cut off from the majority says so (`NotLeader`, the server's
//! `-CLUSTERDOWN`) within about an election timeout of losing its leader.
//!
//! Real nodes on 127.0.0.1; the cut goes through the fault-injection hooks of the transport
//! (every frame to and from the leader dropped, as a partition or a frozen process does).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fast_raft, wait_leader, wait_until};
use crema::consensus::command::CacheCommand;
use crema::faults::Faults;
use crema::{ApplyOutput, CacheConfig, DistributedCache, Error, NodeId};

/// Far above an election (200-400 ms with 20 ms ticks): a write that waits this long stalled.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(12);

async fn cluster(faults: &Arc<Faults>) -> Vec<Arc<DistributedCache>> {
    let listeners: Vec<_> = (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as NodeId + 1;
        let seeds = (1..=3).filter(|p| *p != id).map(|p| (p, addrs[p as usize - 1])).collect();
        let config = CacheConfig::new(id, addrs[i])
            .with_seed_nodes(seeds)
            .with_raft_config(fast_raft())
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_forwarding_timeout(REQUEST_TIMEOUT)
            .with_faults(faults.clone());
        nodes.push(Arc::new(DistributedCache::new_with_listener(config, listener).await.unwrap()));
    }
    nodes
}

fn incr() -> CacheCommand {
    CacheCommand::IncrBy { key: "n".into(), delta: 1 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_followers_are_answered_after_the_election_and_applied_once() {
    let faults = Arc::new(Faults::new(7));
    let nodes = cluster(&faults).await;
    let refs: Vec<&DistributedCache> = nodes.iter().map(|n| n.as_ref()).collect();
    let leader = wait_leader(&refs, Duration::from_secs(5)).await;
    let leader_id = leader as NodeId + 1;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();

    // Four writers per follower, incrementing one counter until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let node = nodes[followers[w % 2]].clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let result = node.execute(incr()).await;
                answers.push((started.elapsed(), result));
            }
            answers
        }));
    }
    wait_until(Duration::from_secs(5), "writes flowing", || async {
        nodes[followers[0]].storage().get(b"n").is_some()
    })
    .await;
    let others: Vec<NodeId> = (1..=3).filter(|id| *id != leader_id).collect();
    faults.cut_between(&[leader_id], &others);
    wait_until(Duration::from_secs(5), "a new leader among the followers", || async {
        followers.iter().any(|f| nodes[*f].is_leader())
    })
    .await;
    // Writes go on through the new leader for a while.
    let resumed = nodes[followers[0]].raft_figures().applied_index;
    wait_until(Duration::from_secs(5), "writes after the election", || async {
        nodes[followers[0]].raft_figures().applied_index > resumed + 50
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);

    let mut acknowledged = 0i64;
    let mut slowest = Duration::ZERO;
    for writer in writers {
        for (took, result) in writer.await.unwrap() {
            slowest = slowest.max(took);
            match result {
                Ok(ApplyOutput::Int(_)) => acknowledged += 1,
                other => panic!("a write through a follower failed across the failover: {other:?}"),
            }
        }
    }
    // Waiting for the request timeout is what this test is against; the election takes 0.2-0.4 s.
    assert!(slowest < REQUEST_TIMEOUT / 4, "a write waited {slowest:?}");

    // Every acknowledged increment applied exactly once (resent copies changed nothing).
    faults.heal();
    let count =
        |node: &DistributedCache| node.storage().get(b"n").map(|v| String::from_utf8_lossy(&v).into_owned());
    wait_until(Duration::from_secs(10), "every node applied everything", || async {
        nodes.iter().all(|n| count(n) == Some(acknowledged.to_string()))
    })
    .await;
    for node in &nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_majority_answers_not_leader_soon() {
    let faults = Arc::new(Faults::new(8));
    let nodes = cluster(&faults).await;
    let refs: Vec<&DistributedCache> = nodes.iter().map(|n| n.as_ref()).collect();
    let leader = wait_leader(&refs, Duration::from_secs(5)).await;
    let alone = (leader + 1) % 3;
    let alone_id = alone as NodeId + 1;
    nodes[alone].put("before", "1").await.unwrap();
    let others: Vec<NodeId> = (1..=3).filter(|id| *id != alone_id).collect();
    faults.cut_between(&[alone_id], &others);
    wait_until(Duration::from_secs(5), "the cut-off node no longer knows a leader", || async {
        nodes[alone].leader_id().is_none()
    })
    .await;

    let started = Instant::now();
    let write = nodes[alone].put("during", "1").await;
    assert!(matches!(write, Err(Error::NotLeader { leader_hint: None })), "{write:?}");
    let read = nodes[alone].consistent_get(b"before").await;
    assert!(matches!(read, Err(Error::NotLeader { leader_hint: None })), "{read:?}");
    // Within about a second (the floor of the wait), far from the request timeout.
    assert!(started.elapsed() < REQUEST_TIMEOUT / 4, "answered after {:?}", started.elapsed());

    // Once it is cut off for good, the answer is immediate.
    let started = Instant::now();
    assert!(matches!(nodes[alone].put("during", "2").await, Err(Error::NotLeader { leader_hint: None })));
    assert!(started.elapsed() < REQUEST_TIMEOUT / 4);

    // The majority kept serving, and the node catches up once the cut heals.
    nodes[leader].put("majority", "yes").await.unwrap();
    faults.heal();
    wait_until(Duration::from_secs(10), "the node is back", || async {
        nodes[alone].put("after", "1").await.is_ok()
    })
    .await;
    assert_eq!(nodes[alone].consistent_get(b"majority").await.unwrap().as_deref(), Some(&b"yes"[..]));
    assert_eq!(nodes[alone].consistent_get(b"during").await.unwrap(), None, "refused writes left nothing");
    for node in &nodes {
        node.shutdown().await;
    }
}
