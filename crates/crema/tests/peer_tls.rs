//! The peer port with mutual TLS (`CacheConfig::with_peer_tls`): nodes with certificates from
//! the cluster CA form a cluster; a peer with no certificate, one from another CA, or one that
//! claims a member's id that its certificate does not name (or names no node, where the
//! cluster's certificates name theirs) gets nothing and changes nothing; a certificate naming
//! a node that is not a member is refused after the hello.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::certs::TestCa;
use common::wire::bare_hello;
use common::*;
use crema::DistributedCache;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A TLS client of `addr` with `config`: the stream, or why the handshake failed.
async fn tls_connect(
    addr: SocketAddr,
    config: rustls::ClientConfig,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await
}

/// Sends a hello as `id` and reads until the node closes: what it said (nothing, if refused).
async fn hello_as(stream: &mut tokio_rustls::client::TlsStream<TcpStream>, id: u64) -> Vec<u8> {
    let _ = stream.write_all(&bare_hello(id, 7)).await;
    let _ = stream.flush().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    out
}

async fn refused(node: &DistributedCache, before: u64) {
    wait_until(Duration::from_secs(5), "the handshake was counted as refused", || async {
        node.raft_figures().peer_handshakes_refused > before
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_certified_members_take_part() {
    init_tracing();
    let ca = TestCa::new("crema test CA");
    let nodes = cluster_with(3, |c| {
        let id = c.node_id;
        c.with_peer_tls(ca.peer_tls(id))
    })
    .await;
    let refs: Vec<&DistributedCache> = nodes.iter().collect();
    let leader = wait_leader(&refs, Duration::from_secs(10)).await;
    nodes[leader].put("k", "v").await.unwrap();
    for n in &nodes {
        assert_eq!(n.consistent_get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]), "replicated over TLS");
    }
    let target = &nodes[(leader + 1) % 3];
    let addr = target.local_addr();
    let commit = nodes[leader].raft_figures().commit_index;

    // Plain TCP: a hello gets no answer.
    let before = target.raft_figures().peer_handshakes_refused;
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain.write_all(&bare_hello(2, 7)).await.unwrap();
    let mut said = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut said)).await;
    assert!(said.is_empty() || said[0] == 0x15, "at most a TLS alert, no hello: {said:?}");
    refused(target, before).await;

    // No client certificate: the TLS handshake fails.
    let before = target.raft_figures().peer_handshakes_refused;
    if let Ok(mut s) = tls_connect(addr, ca.client_config(None)).await {
        assert!(hello_as(&mut s, 2).await.is_empty(), "no certificate, no hello back");
    }
    refused(target, before).await;

    // A certificate from another CA.
    let other = TestCa::new("another CA");
    let before = target.raft_figures().peer_handshakes_refused;
    if let Ok(mut s) = tls_connect(addr, ca.client_config(Some(other.node(Some(2))))).await {
        assert!(hello_as(&mut s, 2).await.is_empty(), "a foreign certificate, no hello back");
    }
    refused(target, before).await;

    // The cluster CA, but node 3's certificate claiming node 2 (or the other way round).
    let member = nodes[(leader + 2) % 3].node_id();
    let someone_else = if member == 1 { 2 } else { 1 };
    let before = target.raft_figures().peer_handshakes_refused;
    let mut s = tls_connect(addr, ca.client_config(Some(ca.node(Some(someone_else))))).await.unwrap();
    assert!(hello_as(&mut s, member).await.is_empty(), "another member's certificate cannot claim this id");
    refused(target, before).await;

    // The cluster CA and a certificate that names no node (a client's, as `crema certs init`
    // writes one for redis-cli), claiming a member's id: this cluster's node certificates name
    // their nodes, so it is no node's.
    let before = target.raft_figures().peer_handshakes_refused;
    let mut s = tls_connect(addr, ca.client_config(Some(ca.node(None)))).await.unwrap();
    assert!(
        hello_as(&mut s, member).await.is_empty(),
        "a certificate naming no node cannot claim a member's id"
    );
    refused(target, before).await;

    // The cluster CA and a certificate naming node 99, not a member.
    let before = target.raft_figures().peer_handshakes_refused;
    let mut s = tls_connect(addr, ca.client_config(Some(ca.node(Some(99))))).await.unwrap();
    assert!(hello_as(&mut s, 99).await.is_empty(), "not a member");
    refused(target, before).await;

    assert_eq!(nodes[leader].raft_figures().commit_index, commit, "nothing reached the log");
    nodes[leader].put("k2", "v2").await.unwrap();
    for n in &nodes {
        assert_eq!(n.consistent_get(b"k2").await.unwrap().as_deref(), Some(&b"v2"[..]), "still serving");
    }
    for n in &nodes {
        n.shutdown().await;
    }
}

/// Certificates that name no node (an operator's PKI) prove membership of the cluster: nodes
/// whose certificates all name none form a cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_whose_certificates_name_no_node_form_a_cluster() {
    let ca = TestCa::new("crema test CA");
    let nodes = cluster_with(3, |c| c.with_peer_tls(ca.peer_tls_naming(None))).await;
    let refs: Vec<&DistributedCache> = nodes.iter().collect();
    let leader = wait_leader(&refs, Duration::from_secs(10)).await;
    nodes[leader].put("k", "v").await.unwrap();
    for n in &nodes {
        assert_eq!(n.consistent_get(b"k").await.unwrap().as_deref(), Some(&b"v"[..]), "replicated over TLS");
    }
    for n in &nodes {
        n.shutdown().await;
    }
}

#[test]
fn a_certificate_for_another_node_is_refused_at_start() {
    let ca = TestCa::new("crema test CA");
    let config = crema::CacheConfig::new(1, "127.0.0.1:0".parse().unwrap()).with_peer_tls(ca.peer_tls(2));
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("node 2's") && err.contains("node 1"), "{err}");
    assert!(crema::PeerTls::from_pem(b"not pem", b"", ca.pem().as_bytes()).is_err());
}
