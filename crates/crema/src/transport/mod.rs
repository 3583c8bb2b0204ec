//! The peer transport: TCP between nodes, length-prefixed frames carrying versioned envelopes.
//!
//! One connection per node pair, shared by every Raft group (the envelope carries the shard id).
//! The node with the lower id dials and redials with backoff; the other side accepts and adopts
//! the newest connection, and dials itself only after a while without one (the lower id may not
//! know its address; see `peer.rs`). Each peer has a bounded outgoing queue: a dead or slow peer fills its
//! own queue and further messages to it are dropped (Raft retransmits), so it slows nobody else.
//! Received envelopes are handed to an [`Inbound`] without blocking the reader.
//!
//! Not here: what the messages mean (the node's dispatcher) and forwarding's request table
//! (`forward.rs` keeps it, this module only carries its frames).

pub(crate) mod envelope;
mod error;
pub(crate) mod forward;
pub(crate) mod frame;
mod peer;
pub(crate) mod snapshot_assembly;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use envelope::Envelope;
pub use error::TransportError;
use peer::{Connection, PeerLink};

use crate::types::NodeId;

/// Receives what peers send. Called from connection reader tasks: implementations must not
/// block (hand work to mailboxes or spawned tasks).
pub(crate) trait Inbound: Send + Sync + 'static {
    /// A Raft, forward or forward-reply envelope arrived from `from`.
    fn on_envelope(&self, transport: &Arc<Transport>, from: NodeId, envelope: Envelope);
    /// `from` completed a handshake and reported its highest term and commit index.
    fn on_hello(&self, from: NodeId, term: u64, commit: u64);
    /// This node's highest term and commit index, for our side of the handshake.
    fn local_progress(&self) -> (u64, u64);
}

/// Transport settings.
#[derive(Debug, Clone)]
pub(crate) struct TransportConfig {
    pub node_id: NodeId,
    pub max_frame_bytes: usize,
    pub queue_capacity: usize,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    #[cfg(feature = "fault-injection")]
    pub faults: Option<Arc<crate::faults::Faults>>,
}

/// The node's peer connections.
pub(crate) struct Transport {
    config: TransportConfig,
    local_addr: SocketAddr,
    inbound: Arc<dyn Inbound>,
    peers: RwLock<HashMap<NodeId, Arc<PeerLink>>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Transport {
    /// Starts accepting peers on `listener`.
    pub fn start(
        config: TransportConfig,
        listener: TcpListener,
        inbound: Arc<dyn Inbound>,
    ) -> std::io::Result<Arc<Self>> {
        let local_addr = listener.local_addr()?;
        let transport = Arc::new(Self {
            config,
            local_addr,
            inbound,
            peers: RwLock::default(),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
        });
        let t = transport.clone();
        transport.tracker.spawn(async move { t.accept_loop(listener).await });
        Ok(transport)
    }

    /// The address peers reach this node on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Adds `id` at `addr` (or updates its address) and starts its link.
    pub fn add_peer(self: &Arc<Self>, id: NodeId, addr: Option<SocketAddr>) {
        if id == self.config.node_id {
            return;
        }
        let mut peers = self.peers.write().expect("peer map poisoned");
        if let Some(link) = peers.get(&id) {
            if addr.is_some() {
                link.set_addr(addr);
            }
            return;
        }
        let link = PeerLink::spawn(self, id, addr);
        peers.insert(id, link);
    }

    /// Stops talking to `id` and closes its connection.
    pub fn remove_peer(&self, id: NodeId) {
        if let Some(link) = self.peers.write().expect("peer map poisoned").remove(&id) {
            link.close();
        }
    }

    /// The address known for `id`.
    pub fn peer_addr(&self, id: NodeId) -> Option<SocketAddr> {
        if id == self.config.node_id {
            return Some(self.local_addr);
        }
        self.peers.read().expect("peer map poisoned").get(&id).and_then(|l| l.addr())
    }

    /// Queues one encoded frame for `to`.
    ///
    /// # Errors
    /// `UnknownPeer` or `QueueFull`; the frame is dropped.
    pub fn send(&self, to: NodeId, frame: Bytes) -> Result<(), TransportError> {
        let peers = self.peers.read().expect("peer map poisoned");
        let link = peers.get(&to).ok_or(TransportError::UnknownPeer(to))?;
        #[cfg(feature = "fault-injection")]
        if let Some(faults) = &self.config.faults {
            use crate::faults::Delivery;
            match faults.delivery(self.config.node_id, to) {
                Delivery::Drop => return Ok(()),
                Delivery::Send { copies, delay: Some(delay) } => {
                    let link = link.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        for _ in 0..copies {
                            let _ = link.enqueue(frame.clone());
                        }
                    });
                    return Ok(());
                }
                Delivery::Send { copies, delay: None } => {
                    for _ in 1..copies {
                        let _ = link.enqueue(frame.clone());
                    }
                }
            }
        }
        link.enqueue(frame)
    }

    /// Tells every transport task to stop, without waiting.
    pub fn close(&self) {
        self.cancel.cancel();
    }

    /// Closes every connection and waits for every transport task to end.
    pub async fn shutdown(&self) {
        self.close();
        self.tracker.close();
        self.tracker.wait().await;
        self.peers.write().expect("peer map poisoned").clear();
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                _ = self.cancel.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, remote)) => {
                    let t = self.clone();
                    self.tracker.spawn(async move {
                        let cancel = t.cancel.clone();
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            _ = t.clone().adopt_incoming(stream, remote) => {}
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    warn!(error = %e, "accepting a peer connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    async fn adopt_incoming(self: Arc<Self>, stream: TcpStream, remote: SocketAddr) {
        let mut conn = Connection::new(stream);
        let hello =
            tokio::time::timeout(self.config.handshake_timeout, conn.read_envelope(&self.config)).await;
        let (peer, (term, commit)) = match hello {
            Ok(Ok(Envelope::Hello { node_id, term, commit }))
                if node_id != self.config.node_id && node_id != 0 =>
            {
                (node_id, (term, commit))
            }
            Ok(Ok(other)) => {
                warn!(%remote, "closing peer connection: first frame is not a valid hello ({other:?})");
                return;
            }
            Ok(Err(e)) => {
                warn!(%remote, error = %e, "closing peer connection during handshake");
                return;
            }
            Err(_) => {
                warn!(%remote, "closing peer connection: no hello within the handshake timeout");
                return;
            }
        };
        if let Err(e) = conn.write_frame(&self.hello_frame()).await {
            debug!(%remote, peer, error = %e, "peer left during handshake");
            return;
        }
        info!(peer, %remote, "peer connected");
        self.inbound.on_hello(peer, term, commit);
        self.add_peer(peer, None);
        let link = self.peers.read().expect("peer map poisoned").get(&peer).cloned();
        if let Some(link) = link {
            link.adopt(conn).await;
        }
    }

    fn hello_frame(&self) -> Bytes {
        let (term, commit) = self.inbound.local_progress();
        Envelope::Hello { node_id: self.config.node_id, term, commit }.to_frame()
    }

    fn dispatch(self: &Arc<Self>, from: NodeId, payload: &[u8]) -> Result<(), TransportError> {
        let envelope = Envelope::from_payload(payload)?;
        if let Envelope::Hello { .. } = envelope {
            return Err(TransportError::Handshake("hello after the handshake".into()));
        }
        self.inbound.on_envelope(self, from, envelope);
        Ok(())
    }
}
