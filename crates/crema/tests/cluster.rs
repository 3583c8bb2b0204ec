//! A real cluster over TCP on 127.0.0.1: election, replication, forwarding, linearizable reads
//! on followers, leader failure and recovery, concurrent writers.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use crema::{ApplyError, ApplyOutput, CacheCommand, DistributedCache, Error};

const ELECTION: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_leads_at_once_and_serves_writes() {
    init_tracing();
    let nodes = cluster(1).await;
    let n = &nodes[0];
    n.put("user:123", "Alice").await.unwrap();
    assert!(n.is_leader());
    assert_eq!(n.get(b"user:123").await, Some(Bytes::from("Alice")));
    assert_eq!(n.consistent_get(b"user:123").await.unwrap(), Some(Bytes::from("Alice")));
    assert!(n.contains(b"user:123").await);
    assert!(n.delete("user:123").await.unwrap());
    assert!(!n.delete("user:123").await.unwrap(), "second delete removes nothing");
    assert_eq!(n.get(b"user:123").await, None);
    n.put("a", "1").await.unwrap();
    n.clear().await.unwrap();
    assert_eq!(n.entry_count(), 0);
    let addr = n.local_addr();
    n.shutdown().await;
    assert!(matches!(n.put("a", "1").await, Err(Error::Shutdown)));
    assert!(matches!(n.consistent_get(b"a").await, Err(Error::Shutdown)));
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "the peer port is closed after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_forward_and_read_linearizably() {
    init_tracing();
    let nodes = cluster(3).await;
    let refs: Vec<&DistributedCache> = nodes.iter().collect();
    let leader = wait_leader(&refs, 10 * ELECTION).await;
    let follower = (leader + 1) % 3;

    nodes[leader].put("on-leader", "1").await.unwrap();
    for n in &nodes {
        wait_until(5 * ELECTION, "the put reaches every node", || async {
            n.get(b"on-leader").await.is_some()
        })
        .await;
    }

    // A write on a follower is forwarded, and readable there as soon as it is acknowledged.
    nodes[follower].put("on-follower", "2").await.unwrap();
    assert_eq!(nodes[follower].get(b"on-follower").await, Some(Bytes::from("2")));
    assert_eq!(nodes[leader].consistent_get(b"on-follower").await.unwrap(), Some(Bytes::from("2")));

    // A linearizable read on the other follower sees a write made a moment before on the leader.
    let other = (leader + 2) % 3;
    for i in 0..20 {
        let value = format!("v{i}");
        nodes[leader].put("fresh", value.clone()).await.unwrap();
        assert_eq!(nodes[other].consistent_get(b"fresh").await.unwrap(), Some(Bytes::from(value)));
    }

    let status = nodes[follower].cluster_status().await.unwrap();
    assert_eq!(status.group.voters, vec![1, 2, 3]);
    assert_eq!(status.group.leader_id, Some(nodes[leader].node_id()));
    assert_eq!(status.members.len(), 3);
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_forwarding_off_a_follower_names_the_leader() {
    init_tracing();
    let nodes = cluster_with(3, |c| c.with_forwarding(false)).await;
    let refs: Vec<&DistributedCache> = nodes.iter().collect();
    let leader = wait_leader(&refs, 10 * ELECTION).await;
    let follower = (leader + 1) % 3;
    let err = nodes[follower].put("k", "v").await.unwrap_err();
    assert_eq!(err.leader_hint(), Some(nodes[leader].node_id()));
    assert!(err.is_retryable());
    nodes[leader].put("k", "v").await.unwrap();
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_node_learns_the_others_client_addresses_from_the_handshake() {
    init_tracing();
    // Node 3 says nothing; node 1 tells a client address of its own, node 2 its port on every
    // interface, which the others name by the host they reach node 2 at (127.0.0.1 here).
    let at = |ip: [u8; 4], id: u64| std::net::SocketAddr::from((ip, 16_000 + id as u16));
    let told = |id: u64| match id {
        1 => Some(at([127, 0, 0, 1], 1)),
        2 => Some(at([0, 0, 0, 0], 2)),
        _ => None,
    };
    let named = |id: u64| (id != 3).then(|| at([127, 0, 0, 1], id));
    let nodes = cluster_with(3, |c| match told(c.node_id) {
        Some(addr) => c.with_client_addr(addr),
        None => c,
    })
    .await;
    let refs: Vec<&DistributedCache> = nodes.iter().collect();
    wait_leader(&refs, 10 * ELECTION).await;
    wait_until(10 * ELECTION, "every node knows the client addresses told", || async {
        nodes
            .iter()
            .all(|n| (1..=3).filter(|id| *id != n.node_id()).all(|id| n.client_addr_of(id) == named(id)))
    })
    .await;
    assert_eq!(nodes[0].client_addr_of(9), None, "a node never heard of has none");
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_keeps_every_acknowledged_write() {
    init_tracing();
    let nodes = cluster(3).await;
    let refs: Vec<&DistributedCache> = nodes.iter().collect();
    let leader = wait_leader(&refs, 10 * ELECTION).await;
    for i in 0..50 {
        nodes[(leader + i) % 3].put(format!("k{i}"), format!("v{i}")).await.unwrap();
    }
    let old_leader_id = nodes[leader].node_id();
    nodes[leader].shutdown().await;

    let survivors: Vec<&DistributedCache> =
        nodes.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, n)| n).collect();
    // A new leader within 3 election timeouts (randomised timeouts run up to 2x, plus pre-vote).
    let started = tokio::time::Instant::now();
    let new_leader = wait_leader(&survivors, 3 * 2 * ELECTION + ELECTION).await;
    assert_ne!(survivors[new_leader].node_id(), old_leader_id);
    eprintln!("new leader after {:?}", started.elapsed());

    for n in &survivors {
        for i in 0..50 {
            let want = Bytes::from(format!("v{i}"));
            assert_eq!(n.consistent_get(format!("k{i}").as_bytes()).await.unwrap(), Some(want));
        }
    }
    survivors[(new_leader + 1) % 2].put("after", "failover").await.unwrap();
    for n in &survivors {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_every_node_lose_nothing() {
    init_tracing();
    let nodes: Vec<Arc<DistributedCache>> = cluster(3).await.into_iter().map(Arc::new).collect();
    let refs: Vec<&DistributedCache> = nodes.iter().map(|n| n.as_ref()).collect();
    wait_leader(&refs, 10 * ELECTION).await;

    let run_for = Duration::from_secs(2);
    let mut tasks = Vec::new();
    for t in 0..32usize {
        let node = nodes[t % 3].clone();
        tasks.push(tokio::spawn(async move {
            let mut last = HashMap::new();
            let until = tokio::time::Instant::now() + run_for;
            let mut i = 0u64;
            while tokio::time::Instant::now() < until {
                let key = format!("t{t}-k{}", i % 16);
                let value = format!("{t}-{i}");
                node.put(key.clone(), value.clone()).await.expect("put");
                last.insert(key, value);
                i += 1;
            }
            last
        }));
    }
    let mut expected = HashMap::new();
    for t in tasks {
        expected.extend(t.await.unwrap());
    }
    assert!(expected.len() >= 32, "every writer wrote");
    let leader = refs.iter().find(|n| n.is_leader()).unwrap();
    let commit = leader.cluster_status().await.unwrap().group.commit_index;
    for n in &nodes {
        wait_until(Duration::from_secs(5), "every node applied the last write", || async {
            n.cluster_status().await.unwrap().group.applied_index >= commit
        })
        .await;
        for (k, v) in &expected {
            assert_eq!(
                n.get(k.as_bytes()).await.as_deref(),
                Some(v.as_bytes()),
                "node {} key {k}",
                n.node_id()
            );
        }
    }
    for n in &nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_every_in_flight_write() {
    init_tracing();
    let nodes: Vec<Arc<DistributedCache>> = cluster(3).await.into_iter().map(Arc::new).collect();
    let refs: Vec<&DistributedCache> = nodes.iter().map(|n| n.as_ref()).collect();
    let leader = wait_leader(&refs, 10 * ELECTION).await;
    let mut writers = Vec::new();
    for w in 0..16 {
        let node = nodes[leader].clone();
        writers.push(tokio::spawn(async move {
            let mut outcomes = (0u32, 0u32);
            for i in 0.. {
                match node.put(format!("w{w}-{i}"), "v").await {
                    Ok(()) => outcomes.0 += 1,
                    Err(Error::Shutdown) => return outcomes,
                    Err(_) => outcomes.1 += 1,
                }
            }
            outcomes
        }));
    }
    wait_until(Duration::from_secs(5), "writes flowing", || async {
        nodes[leader].cluster_status().await.map(|s| s.group.applied_index > 100).unwrap_or(false)
    })
    .await;
    nodes[leader].shutdown().await;
    let mut acked = 0;
    for w in writers {
        // Every call returns: answered before the stop, or refused with Shutdown.
        let (ok, _) =
            tokio::time::timeout(Duration::from_secs(10), w).await.expect("no writer hangs").unwrap();
        acked += ok;
    }
    assert!(acked > 0);
    for (i, n) in nodes.iter().enumerate() {
        if i != leader {
            n.shutdown().await;
        }
    }
}

/// INCR is decided in apply: clients racing on one key through different nodes never lose an
/// increment, and every node ends with the same count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_increments_through_every_node_are_all_counted() {
    init_tracing();
    let nodes = Arc::new(cluster(3).await);
    let refs: Vec<&DistributedCache> = nodes.iter().collect();
    wait_leader(&refs, 10 * ELECTION).await;
    let mut tasks = Vec::new();
    for client in 0..6 {
        let nodes = nodes.clone();
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = 0;
            for _ in 0..40 {
                let out =
                    nodes[client % 3].execute(CacheCommand::IncrBy { key: "hits".into(), delta: 1 }).await;
                if let Ok(ApplyOutput::Int(_)) = out {
                    acknowledged += 1;
                }
            }
            acknowledged
        }));
    }
    let mut acknowledged = 0;
    for t in tasks {
        acknowledged += t.await.unwrap();
    }
    assert_eq!(acknowledged, 240, "no failures expected on a healthy cluster");
    for n in nodes.iter() {
        n.read_barrier().await.unwrap();
        assert_eq!(n.get(b"hits").await, Some(Bytes::from(acknowledged.to_string())));
    }
    let out =
        nodes[0].execute(CacheCommand::Append { key: "hits".into(), value: "x".into(), max_len: 64 }).await;
    assert_eq!(out.unwrap(), ApplyOutput::Int(4));
    let out = nodes[1].execute(CacheCommand::IncrBy { key: "hits".into(), delta: 1 }).await;
    assert_eq!(
        out.unwrap(),
        ApplyOutput::Failed(ApplyError::NotInteger),
        "decided on the leader, answered here"
    );
}
