//! The answering side of the peer handshake, and probes: a connection accepted on the peer
//! port becomes a peer's link only after its hello (and, with a cluster secret, its proof)
//! names a known member with the cluster's shard count; everything else is refused, throttled
//! in the log, and learns nothing. A probe (a hello from node id 0) is answered with this
//! node's id and closed, which is how a membership change checks an address.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::envelope::Envelope;
use super::peer::Connection;
use super::{auth, shard_count_mismatch, tls, told_client_addr, Transport, TransportConfig, TransportError};
use crate::types::NodeId;

/// How long a probe waits for each answer of the handshake.
const PROBE_PATIENCE: Duration = Duration::from_secs(2);

/// The incoming connections in their handshake, oldest first, each with the token that closes
/// it. Past the room (see `handshake_room`) a newcomer closes the oldest, as the RESP port does
/// with connections that have not authenticated. Found in review: refused instead, as many
/// connections as the room holds that said nothing, each renewed before its handshake timeout,
/// kept every member whose link broke (a restart, a network blip) from linking again. A
/// member's handshake takes milliseconds; to close it a flood must open the whole room's worth
/// of connections within them.
pub(super) struct Handshakes {
    room: usize,
    under_way: Mutex<VecDeque<(u64, CancellationToken, SocketAddr)>>,
    next: AtomicU64,
}

/// A handshake's place among those under way, given up when dropped.
pub(super) struct Ticket {
    id: u64,
    handshakes: Arc<Handshakes>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.handshakes.under_way.lock().expect("handshakes poisoned").retain(|(id, _, _)| *id != self.id);
    }
}

impl Handshakes {
    pub(super) fn new(room: usize) -> Self {
        Self { room: room.max(1), under_way: Mutex::default(), next: AtomicU64::new(0) }
    }

    /// Admits the handshake of a connection from `remote`: its ticket, the token that closes it,
    /// and where an older one closed to make room came from.
    fn admit(self: &Arc<Self>, remote: SocketAddr) -> (Ticket, CancellationToken, Option<SocketAddr>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let closes = CancellationToken::new();
        let mut under_way = self.under_way.lock().expect("handshakes poisoned");
        under_way.push_back((id, closes.clone(), remote));
        let mut closed = None;
        while under_way.len() > self.room {
            if let Some((_, oldest, from)) = under_way.pop_front() {
                oldest.cancel();
                closed = Some(from);
            }
        }
        (Ticket { id, handshakes: self.clone() }, closes, closed)
    }
}

impl Transport {
    pub(super) async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        let mut open = self.open.subscribe();
        tokio::select! {
            _ = self.cancel.cancelled() => return,
            _ = open.wait_for(|open| *open) => {}
        }
        let accept_warnings = crate::consensus::WarnThrottle::default();
        loop {
            let accepted = tokio::select! {
                _ = self.cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, remote)) => {
                    let (ticket, closes, closed) = self.handshakes.admit(remote);
                    if let Some(from) = closed {
                        self.refuse(from, "too many handshakes under way: the oldest closed for a newer one");
                    }
                    let t = self.clone();
                    self.tracker.spawn(async move {
                        let cancel = t.cancel.clone();
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            _ = closes.cancelled() => {}
                            _ = t.clone().adopt_incoming(stream, remote, ticket) => {}
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    if let Some(count) = accept_warnings.note(std::time::Instant::now()) {
                        warn!(error = %e, count, "accepting a peer connection failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn adopt_incoming(self: Arc<Self>, stream: TcpStream, remote: SocketAddr, room: Ticket) {
        let mut conn = match Connection::open(stream, &self.config, None).await {
            Ok(conn) => conn,
            Err(e) => {
                self.refuse(remote, &e.to_string());
                return;
            }
        };
        // A connection that proved itself a node of the cluster (a certificate naming its node,
        // or the secret) leaves the room strangers can take from it.
        let mut room = (conn.certified.is_none()).then_some(room);
        if let Some(secret) = &self.config.secret {
            if let Err(e) = auth::accept(&mut conn, secret, &self.config).await {
                self.refuse(remote, &e.to_string());
                return;
            }
            room = None;
        }
        let hello =
            tokio::time::timeout(self.config.handshake_timeout, conn.read_envelope(&self.config)).await;
        let (peer, incarnation, groups, client_addr) = match hello {
            Ok(Ok(Envelope::Hello { node_id: 0, .. })) => {
                // A probe (see `probe`): say who this node is, and nothing more.
                let reply = Envelope::Hello {
                    node_id: self.config.node_id,
                    incarnation: 0,
                    groups: Vec::new(),
                    client_addr: None,
                    shards: 0,
                };
                let _ = conn.write_frame(&reply.to_frame()).await;
                return;
            }
            Ok(Ok(Envelope::Hello { node_id, .. }))
                if node_id != 0
                    && tls::check_claim(self.config.tls.as_ref(), node_id, conn.certified).is_err() =>
            {
                let why =
                    tls::check_claim(self.config.tls.as_ref(), node_id, conn.certified).expect_err("checked");
                self.refuse(remote, &why.to_string());
                return;
            }
            Ok(Ok(Envelope::Hello { node_id, shards, .. }))
                if node_id != 0 && shards != self.config.shards =>
            {
                // Told, so its log says why too: every node of a cluster needs the same count.
                let why = shard_count_mismatch(node_id, shards, self.config.shards);
                self.refuse_loudly(remote, &why);
                return;
            }
            Ok(Ok(Envelope::Hello { node_id, .. })) if !self.knows(node_id) => {
                // Not a member or a seed: it learns nothing (not even this node's id).
                self.refuse(remote, &format!("node {node_id} is not a member (if it was just added, this node has not applied that yet)"));
                return;
            }
            Ok(Ok(Envelope::Hello { node_id, incarnation, groups, client_addr, .. }))
                if node_id != self.config.node_id =>
            {
                (node_id, incarnation, groups, client_addr)
            }
            // Throttled like every refusal, and without the frame: a stranger's bytes would
            // otherwise reach the log as often and as large as it sends them.
            Ok(Ok(_)) => {
                self.refuse(remote, "the first frame is not a valid hello");
                return;
            }
            Ok(Err(e)) => {
                self.refuse(remote, &format!("handshake failed: {e}"));
                return;
            }
            Err(_) => {
                self.refuse(remote, "no hello within the handshake timeout");
                return;
            }
        };
        drop(room);
        if let Err(e) = conn.write_frame(&self.hello_frame()).await {
            debug!(%remote, peer, error = %e, "peer left during handshake");
            return;
        }
        info!(peer, %remote, incarnation, "peer connected");
        self.inbound.on_hello(peer, incarnation, groups, told_client_addr(client_addr, remote.ip()));
        conn.peer_incarnation = incarnation;
        self.add_peer(peer, None);
        let link = self.peers.read().expect("peer map poisoned").get(&peer).cloned();
        if let Some(link) = link {
            link.adopt(conn).await;
        }
    }

    /// Which crema node answers the peer handshake at `addr`: a hello from node id 0 (no node
    /// has it), which the other side answers with its id and then closes, without taking the
    /// connection as a peer's. How a membership change checks an address before proposing it.
    ///
    /// # Errors
    /// Nothing listens, the connection or the answer takes longer than the timeouts, or what
    /// answers does not speak crema's peer protocol.
    pub async fn probe(&self, addr: SocketAddr) -> Result<NodeId, TransportError> {
        // A live crema node answers in milliseconds; one that waits for the other side to
        // speak first (a cluster secret on one side only) should not hold the caller long.
        let config = &TransportConfig {
            handshake_timeout: self.config.handshake_timeout.min(PROBE_PATIENCE),
            ..self.config.clone()
        };
        let stream = tokio::time::timeout(config.connect_timeout, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| TransportError::Handshake("connect timed out".into()))??;
        let mut conn = Connection::open(stream, config, Some(addr)).await?;
        if let Some(secret) = &config.secret {
            auth::dial(&mut conn, secret, config).await?;
        }
        let hello = Envelope::Hello {
            node_id: 0,
            incarnation: config.incarnation,
            groups: Vec::new(),
            client_addr: None,
            shards: 0,
        };
        conn.write_frame(&hello.to_frame()).await?;
        let reply = tokio::time::timeout(config.handshake_timeout, conn.read_envelope(config))
            .await
            .map_err(|_| TransportError::Handshake("no answer to the handshake".into()))??;
        match reply {
            Envelope::Hello { node_id, .. } if node_id != 0 => Ok(node_id),
            other => Err(TransportError::Handshake(format!("expected a hello, got {other:?}"))),
        }
    }
}
