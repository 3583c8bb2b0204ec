//! The peer port with a cluster secret (`CacheConfig::with_cluster_secret`): nodes that share
//! it form a cluster; a process without it is challenged first and learns nothing (no hello,
//! no id, no term) and changes nothing; a node with another secret never joins; one that knows
//! the secret but claims an id that is not a member is refused too. Frames are written by hand,
//! as an attacker who read `transport::auth` would.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::wire::{bare_hello, frame, FakePeer, VERSION};
use common::*;
use crema::{ClusterSecret, DistributedCache};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &[u8] = b"correct horse battery staple";

fn secret(bytes: &[u8]) -> ClusterSecret {
    ClusterSecret::new(bytes.to_vec()).unwrap()
}

/// Postcard variant indexes of `AuthChallenge` and `AuthProof` in crema's envelope.
const AUTH_CHALLENGE: u8 = 5;
const AUTH_PROOF: u8 = 6;

async fn read_payload(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut len)).await.ok()?.ok()?;
    let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut payload).await.ok()?;
    Some(payload)
}

/// Connects and reads the node's first frame, which must be a bare challenge.
async fn challenged(addr: SocketAddr) -> (TcpStream, [u8; 32]) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let payload = read_payload(&mut s).await.expect("a first frame");
    assert_eq!(payload.len(), 2 + 32, "a version, a variant and 32 random bytes: nothing else is said");
    assert_eq!(&payload[..2], &[VERSION, AUTH_CHALLENGE]);
    (s, payload[2..].try_into().unwrap())
}

fn dial_proof(key: &[u8], theirs: &[u8; 32], ours: &[u8; 32]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(b"crema-peer-dial-v1");
    mac.update(theirs);
    mac.update(ours);
    mac.finalize().into_bytes().to_vec()
}

fn proof_frame(ours: &[u8; 32], proof: &[u8]) -> Vec<u8> {
    let mut payload = vec![VERSION, AUTH_PROOF];
    payload.extend_from_slice(ours);
    payload.push(proof.len() as u8);
    payload.extend_from_slice(proof);
    frame(&payload)
}

async fn refused(node: &DistributedCache, before: u64) {
    wait_until(Duration::from_secs(5), "the handshake was counted as refused", || async {
        node.raft_figures().peer_handshakes_refused > before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_without_the_secret_learn_nothing_and_change_nothing() {
    init_tracing();
    let nodes = cluster_with(3, |c| c.with_cluster_secret(secret(SECRET))).await;
    let refs: Vec<&DistributedCache> = nodes.iter().collect();
    let leader = wait_leader(&refs, Duration::from_secs(10)).await;
    nodes[leader].put("k", "v").await.unwrap();
    for n in &nodes {
        assert_eq!(n.consistent_get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]), "the cluster works");
    }
    let target = &nodes[(leader + 1) % 3];
    let commit = nodes[leader].raft_figures().commit_index;

    // A hello instead of a proof, as a member: closed, nothing said but the challenge.
    let before = target.raft_figures().peer_handshakes_refused;
    let (mut s, _) = challenged(target.local_addr()).await;
    s.write_all(&bare_hello(1, 7)).await.unwrap();
    assert!(read_payload(&mut s).await.is_none(), "closed without a word");
    refused(target, before).await;

    // A proof made with another secret.
    let before = target.raft_figures().peer_handshakes_refused;
    let (mut s, theirs) = challenged(target.local_addr()).await;
    let ours = [9u8; 32];
    s.write_all(&proof_frame(&ours, &dial_proof(b"not the cluster secret!", &theirs, &ours))).await.unwrap();
    assert!(read_payload(&mut s).await.is_none(), "no proof back, no hello");
    refused(target, before).await;

    // A proof replayed from another connection's challenge.
    let (_, old) = challenged(target.local_addr()).await;
    let (mut s, _) = challenged(target.local_addr()).await;
    s.write_all(&proof_frame(&ours, &dial_proof(SECRET, &old, &ours))).await.unwrap();
    assert!(read_payload(&mut s).await.is_none(), "a replayed proof is refused");

    // The right secret but an id that is not a member: refused after the hello, no hello back.
    let before = target.raft_figures().peer_handshakes_refused;
    let (mut s, theirs) = challenged(target.local_addr()).await;
    s.write_all(&proof_frame(&ours, &dial_proof(SECRET, &theirs, &ours))).await.unwrap();
    let answer = read_payload(&mut s).await.expect("the node proves itself");
    assert_eq!(&answer[..2], &[VERSION, AUTH_PROOF]);
    s.write_all(&bare_hello(99, 7)).await.unwrap();
    assert!(read_payload(&mut s).await.is_none(), "a stranger gets no hello");
    refused(target, before).await;

    // A plain peer speaking first, as before the secret: no hello either.
    let mut p = TcpStream::connect(target.local_addr()).await.unwrap();
    p.write_all(&bare_hello(2, 7)).await.unwrap();
    FakePeer::expect_closed(&mut p).await;

    assert_eq!(nodes[leader].raft_figures().commit_index, commit, "nothing reached the log");
    nodes[leader].put("k2", "v2").await.unwrap();
    for n in &nodes {
        assert_eq!(n.consistent_get(b"k2").await.unwrap().as_deref(), Some(&b"v2"[..]), "still serving");
    }
    for n in &nodes {
        n.shutdown().await;
    }
}

/// Four voters (a memory node that starts must hear from two others: three good nodes are
/// enough), the fourth with another secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_another_secret_never_joins() {
    init_tracing();
    let nodes = cluster_with(4, |c| {
        let key: &[u8] = if c.node_id == 4 { b"a different secret entirely" } else { SECRET };
        c.with_cluster_secret(secret(key))
    })
    .await;
    let refs: Vec<&DistributedCache> = nodes[..3].iter().collect();
    let leader = wait_leader(&refs, Duration::from_secs(10)).await;
    for i in 0..20 {
        nodes[leader].put(format!("k{i}"), "v").await.unwrap();
    }
    wait_until(Duration::from_secs(10), "the good nodes refused node 4", || async {
        nodes[..3].iter().filter(|n| n.raft_figures().peer_handshakes_refused > 0).count() >= 2
    })
    .await;
    assert!(nodes[3].storage().get(b"k0").is_none(), "node 4 got nothing");
    assert!(nodes[3].raft_figures().peer_handshakes_refused > 0, "and refused them back");
    for n in &nodes {
        n.shutdown().await;
    }
}
