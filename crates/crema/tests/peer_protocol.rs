//! The peer port under bad input, and a restarted memory node's probation, driven by a fake peer
//! that speaks the wire format by hand: a 4-byte big-endian length, a version byte, a postcard
//! envelope (Hello, Raft with protobuf bytes inside).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use crema::{CacheConfig, DistributedCache, Error};
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The envelope as the wire carries it (mirrors crema's; variant order is the protocol).
#[derive(Debug, Serialize, Deserialize)]
enum Wire {
    Hello { node_id: u64, term: u64, commit: u64 },
    Raft { shard: u32, message: Vec<u8> },
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

fn envelope(w: &Wire) -> Vec<u8> {
    let mut payload = vec![1u8];
    payload.extend(postcard::to_stdvec(w).unwrap());
    frame(&payload)
}

async fn read_wire(stream: &mut TcpStream) -> Option<Wire> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.ok()?;
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut payload).await.ok()?;
    assert_eq!(payload[0], 1, "envelope version");
    // Envelopes this test does not mirror (forwarding) are not expected here.
    Some(postcard::from_bytes(&payload[1..]).expect("an envelope this test knows"))
}

/// Reads until the peer closes the connection; fails if it stays open.
async fn expect_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the node should have closed the connection");
}

async fn hello(stream: &mut TcpStream, node_id: u64, commit: u64) {
    stream.write_all(&envelope(&Wire::Hello { node_id, term: 5, commit })).await.unwrap();
    match read_wire(stream).await {
        Some(Wire::Hello { node_id: id, .. }) => assert_ne!(id, node_id),
        other => panic!("expected a hello back, got {other:?}"),
    }
}

fn raft_msg(kind: MessageType, from: u64, to: u64, term: u64) -> Vec<u8> {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = from;
    m.to = to;
    m.term = term;
    m.log_term = term;
    m.index = 10;
    m.commit = 0;
    envelope(&Wire::Raft { shard: 0, message: m.write_to_bytes().unwrap() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_the_cluster_keeps_serving() {
    init_tracing();
    let nodes = cluster_with(3, |c| c.with_max_key_size(16).with_max_value_size(64)).await;
    let refs: Vec<&DistributedCache> = nodes.iter().collect();
    let leader = wait_leader(&refs, Duration::from_secs(5)).await;
    nodes[leader].put("ok", "1").await.unwrap();
    let commit_before = nodes[leader].cluster_status().await.unwrap().group.commit_index;

    for n in &nodes {
        assert!(matches!(n.put("", "v").await, Err(Error::InvalidCommand(_))));
        assert!(matches!(n.put("k".repeat(17), "v").await, Err(Error::InvalidCommand(_))));
        assert!(matches!(n.put("k", vec![0u8; 65]).await, Err(Error::InvalidCommand(_))));
        assert!(matches!(n.put_with_ttl("k", "v", Duration::ZERO).await, Err(Error::InvalidCommand(_))));
        assert!(matches!(n.delete("").await, Err(Error::InvalidCommand(_))));
    }
    let commit_after = nodes[leader].cluster_status().await.unwrap().group.commit_index;
    assert_eq!(commit_before, commit_after, "nothing invalid reached the log");

    let target: SocketAddr = nodes[(leader + 1) % 3].local_addr();
    // Garbage instead of a hello.
    let mut s = TcpStream::connect(target).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    expect_closed(&mut s).await;
    // A frame announcing more than 16 MiB.
    let mut s = TcpStream::connect(target).await.unwrap();
    s.write_all(&(16 * 1024 * 1024 + 1u32).to_be_bytes()).await.unwrap();
    expect_closed(&mut s).await;
    // A valid hello, then an oversized frame, then garbage inside a well-formed frame.
    let mut s = TcpStream::connect(target).await.unwrap();
    hello(&mut s, 77, 0).await;
    s.write_all(&(17 * 1024 * 1024u32).to_be_bytes()).await.unwrap();
    expect_closed(&mut s).await;
    let mut s = TcpStream::connect(target).await.unwrap();
    hello(&mut s, 78, 0).await;
    s.write_all(&frame(&[1, 0xff, 0xff, 0xff, 0xff])).await.unwrap();
    expect_closed(&mut s).await;

    for (i, n) in nodes.iter().enumerate() {
        n.put(format!("after-{i}"), "still serving").await.unwrap();
        assert_eq!(n.consistent_get(b"ok").await.unwrap().as_deref(), Some(&b"1"[..]));
    }
    for n in &nodes {
        n.shutdown().await;
    }
}

/// Node 3 of a 3-node cluster, alone and fresh (memory storage, never saw an election).
async fn lone_node_three() -> (DistributedCache, SocketAddr) {
    let bound = bind(3);
    let addrs: Vec<SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
    let listener = bound.into_iter().nth(2).unwrap().0;
    // Nodes 1 and 2 are never started: only the fake peer talks to node 3. Long election timeout
    // so node 3's own pre-vote attempts do not interleave with the test's messages.
    let config: CacheConfig = node_config(3, &addrs).with_raft_config(crema::RaftConfig {
        tick_interval_ms: 100,
        election_tick: 50,
        ..Default::default()
    });
    let node = DistributedCache::new_with_listener(config, listener).await.unwrap();
    (node, addrs[2])
}

/// Sends a vote request then a heartbeat from "node 1", and answers the kinds of the replies
/// that arrive until the heartbeat's answer (replies come in order on one connection).
async fn vote_then_heartbeat(s: &mut TcpStream) -> Vec<MessageType> {
    s.write_all(&raft_msg(MessageType::MsgRequestVote, 1, 3, 6)).await.unwrap();
    s.write_all(&raft_msg(MessageType::MsgHeartbeat, 1, 3, 6)).await.unwrap();
    let mut kinds = Vec::new();
    loop {
        let Some(Wire::Raft { message, .. }) = read_wire(s).await else { panic!("connection closed") };
        let m = Message::parse_from_bytes(&message).unwrap();
        kinds.push(m.get_msg_type());
        if m.get_msg_type() == MessageType::MsgHeartbeatResponse {
            return kinds;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_node_joining_a_committed_cluster_does_not_vote_until_it_hears_a_leader() {
    init_tracing();
    let (node, _) = lone_node_three().await;
    // Node 1 (lower id) dials node 3: connect as node 1 and report a cluster that committed.
    let mut s = TcpStream::connect(node.local_addr()).await.unwrap();
    hello(&mut s, 1, 10).await;
    wait_until(Duration::from_secs(5), "probation", || async {
        node.cluster_status().await.unwrap().group.probation
    })
    .await;
    let kinds = vote_then_heartbeat(&mut s).await;
    assert_eq!(kinds, vec![MessageType::MsgHeartbeatResponse], "the vote request got no answer");
    let status = node.cluster_status().await.unwrap();
    assert!(!status.group.probation, "a leader was heard: probation is over");
    assert_eq!(status.group.leader_id, Some(1));
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_node_of_a_new_cluster_votes() {
    init_tracing();
    let (node, _) = lone_node_three().await;
    let mut s = TcpStream::connect(node.local_addr()).await.unwrap();
    hello(&mut s, 1, 0).await;
    let kinds = vote_then_heartbeat(&mut s).await;
    assert_eq!(kinds, vec![MessageType::MsgRequestVoteResponse, MessageType::MsgHeartbeatResponse]);
    assert!(!node.cluster_status().await.unwrap().group.probation);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_memory_node_rejoins_under_probation_and_catches_up() {
    init_tracing();
    let bound = bind(3);
    let addrs: Vec<SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
    let mut nodes = Vec::new();
    for (i, (listener, _)) in bound.into_iter().enumerate() {
        nodes.push(Some(
            DistributedCache::new_with_listener(node_config(i as u64 + 1, &addrs), listener).await.unwrap(),
        ));
    }
    let refs: Vec<&DistributedCache> = nodes.iter().flatten().collect();
    let leader = wait_leader(&refs, Duration::from_secs(5)).await;
    for i in 0..100 {
        refs[leader].put(format!("k{i}"), format!("v{i}")).await.unwrap();
    }
    // Restart the leader itself: same id, same address, empty memory.
    let victim = leader;
    nodes[victim].take().unwrap().shutdown().await;
    let others: Vec<&DistributedCache> = nodes.iter().flatten().collect();
    let new_leader = wait_leader(&others, Duration::from_secs(5)).await;
    others[new_leader].put("after-failover", "yes").await.unwrap();

    let listener = std::net::TcpListener::bind(addrs[victim]).expect("rebind the same address");
    let restarted =
        DistributedCache::new_with_listener(node_config(victim as u64 + 1, &addrs), listener).await.unwrap();
    wait_until(Duration::from_secs(10), "the restarted node catches up", || async {
        restarted.get(b"after-failover").await.is_some()
    })
    .await;
    for i in 0..100 {
        assert_eq!(restarted.get(format!("k{i}").as_bytes()).await, Some(format!("v{i}").into()));
    }
    let status = restarted.cluster_status().await.unwrap();
    assert!(!status.group.probation);
    assert_eq!(status.group.voters, vec![1, 2, 3]);
    assert_ne!(status.group.leader_id, Some(restarted.node_id()));
    // It serves writes again (forwarded to the new leader).
    restarted.put("from-restarted", "ok").await.unwrap();
    restarted.shutdown().await;
    for n in nodes.iter().flatten() {
        n.shutdown().await;
    }
}
