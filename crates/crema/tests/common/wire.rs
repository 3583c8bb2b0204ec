//! A fake peer that speaks the peer protocol by hand, as an attacker who read the source would:
//! a 4-byte big-endian length, the envelope version byte, a postcard envelope (the hello with
//! an incarnation and group positions, Raft messages as protobuf bytes).

use std::net::SocketAddr;
use std::time::Duration;

use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The envelope version this mirror speaks.
pub const VERSION: u8 = 8;

/// A group's position as the hello carries it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Position {
    pub shard: u32,
    pub term: u64,
    pub commit: u64,
    pub last_term: u64,
    pub last_index: u64,
    pub recovering: bool,
}

/// The envelope as the wire carries it (mirrors crema's; variant order is the protocol).
#[derive(Debug, Serialize, Deserialize)]
pub enum Wire {
    Hello {
        node_id: u64,
        incarnation: u64,
        groups: Vec<Position>,
        client_addr: Option<SocketAddr>,
        shards: u32,
    },
    Raft {
        shard: u32,
        message: Vec<u8>,
    },
    /// A write forwarded to the leader: an encoded `StampedCommand` with the sender's session.
    Forward {
        shard: u32,
        request_id: u64,
        command: Vec<u8>,
    },
}

pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// The framed hello of node `node_id` (incarnation `incarnation`) of a one-shard cluster that
/// reports no group and no client address: what a stranger, a probe or a minimal peer sends
/// first.
pub fn bare_hello(node_id: u64, incarnation: u64) -> Vec<u8> {
    envelope(&Wire::Hello { node_id, incarnation, groups: Vec::new(), client_addr: None, shards: 1 })
}

pub fn envelope(w: &Wire) -> Vec<u8> {
    let mut payload = vec![VERSION];
    payload.extend(postcard::to_stdvec(w).unwrap());
    frame(&payload)
}

/// A Raft message of `kind` from `from` to `to` at `term`.
pub fn raft_msg(kind: MessageType, from: u64, to: u64, term: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = from;
    m.to = to;
    m.term = term;
    m
}

/// A connection to a node's peer port that completed the handshake as `id`.
pub struct FakePeer {
    pub stream: TcpStream,
    pub id: u64,
}

impl FakePeer {
    /// Connects to `addr` as node `id` reporting `position` for shard 0.
    pub async fn connect(addr: SocketAddr, id: u64, position: Position) -> Self {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let hello = Wire::Hello {
            node_id: id,
            incarnation: rand::random(),
            groups: vec![position],
            client_addr: None,
            shards: 1,
        };
        stream.write_all(&envelope(&hello)).await.unwrap();
        let mut peer = Self { stream, id };
        match peer.read_wire().await {
            Some(Wire::Hello { node_id, .. }) => assert_ne!(node_id, id),
            other => panic!("expected a hello back, got {other:?}"),
        }
        peer
    }

    /// Sends `m`; false when the node closed the connection (as it may for a connection that
    /// claims a member's id once the real member connects: an attacker's frames are
    /// best-effort).
    pub async fn send(&mut self, m: &Message) -> bool {
        let bytes = envelope(&Wire::Raft { shard: 0, message: m.write_to_bytes().unwrap() });
        self.stream.write_all(&bytes).await.is_ok()
    }

    /// Sends `bytes` as they are; false when the node closed the connection (see `send`).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).await.is_ok()
    }

    /// The next envelope this mirror knows (others are skipped); none once closed.
    pub async fn read_wire(&mut self) -> Option<Wire> {
        loop {
            let mut len = [0u8; 4];
            self.stream.read_exact(&mut len).await.ok()?;
            let mut payload = vec![0u8; u32::from_be_bytes(len) as usize];
            self.stream.read_exact(&mut payload).await.ok()?;
            assert_eq!(payload[0], VERSION, "envelope version");
            if let Ok(w) = postcard::from_bytes(&payload[1..]) {
                return Some(w);
            }
        }
    }

    /// The next Raft message the node sends on this connection within 10 s; none when the
    /// node closed it first (the real peer's connection may replace one claiming its id).
    pub async fn try_next_raft(&mut self) -> Option<Message> {
        let next = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match self.read_wire().await? {
                    Wire::Raft { message, .. } => return Some(Message::parse_from_bytes(&message).unwrap()),
                    Wire::Hello { .. } | Wire::Forward { .. } => continue,
                }
            }
        })
        .await;
        next.expect("no raft message within 10 s")
    }

    /// The next Raft message the node sends on this connection (within 10 s).
    pub async fn next_raft(&mut self) -> Message {
        let next = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match self.read_wire().await {
                    Some(Wire::Raft { message, .. }) => return Message::parse_from_bytes(&message).unwrap(),
                    Some(Wire::Hello { .. } | Wire::Forward { .. }) => continue,
                    None => panic!("the node closed the connection"),
                }
            }
        })
        .await;
        next.expect("no raft message within 10 s")
    }

    /// Reads until the node closes the connection; fails if it stays open.
    pub async fn expect_closed(stream: &mut TcpStream) {
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
}

/// Node 3 of a 3-node memory cluster of one shard whose nodes 1 and 2 are fake peers driven by
/// the test, not connected yet: its ask of how the group stands goes unanswered (half an
/// election timeout, 2.5 s: `cache::meta_conf`), its replica begins with the bootstrap log of
/// nodes 1 to 3, and recovers once they connect.
pub async fn lone_node_three() -> crema::DistributedCache {
    let bound = super::bind(3);
    let addrs: Vec<SocketAddr> = bound.iter().map(|(_, a)| *a).collect();
    let listener = bound.into_iter().nth(2).unwrap().0;
    // Long election timeout: node 3's own attempts never interleave with the test's messages.
    let config = super::node_config(3, &addrs).with_raft_config(crema::RaftConfig {
        tick_interval_ms: 100,
        election_tick: 50,
        ..Default::default()
    });
    crema::DistributedCache::new_with_listener(config, listener).await.unwrap()
}

/// A position of shard 0 at `term`, whose log ends at `(last_term, last_index)`, all committed.
pub fn at(term: u64, last_term: u64, last_index: u64) -> Position {
    Position { shard: 0, term, commit: last_index, last_term, last_index, recovering: false }
}

/// An append to node 3 from node `from` as leader of `term`: `entries` (index, term) after
/// `(index, log_term)`, and its commit index.
pub fn append(
    from: u64,
    term: u64,
    index: u64,
    log_term: u64,
    entries: &[(u64, u64)],
    commit: u64,
) -> Message {
    let mut m = raft_msg(MessageType::MsgAppend, from, 3, term);
    (m.index, m.log_term, m.commit) = (index, log_term, commit);
    m.entries = entries
        .iter()
        .map(|&(index, term)| raft::eraftpb::Entry { index, term, ..Default::default() })
        .collect::<Vec<_>>()
        .into();
    m
}
