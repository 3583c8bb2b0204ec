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

pub mod auth;
pub(crate) mod envelope;
mod error;
pub(crate) mod forward;
pub(crate) mod frame;
mod handshake;
mod peer;
pub(crate) mod snapshot_assembly;
mod stream;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, warn};

use envelope::{Envelope, GroupPosition};
pub use error::TransportError;
use peer::PeerLink;
pub(crate) use peer::ROOM_BYTES;

use crate::types::NodeId;

/// Receives what peers send. Called from connection reader tasks: implementations must not
/// block (hand work to mailboxes or spawned tasks).
pub(crate) trait Inbound: Send + Sync + 'static {
    /// A Raft, forward or forward-reply envelope arrived from incarnation `incarnation` of
    /// `from` (the one that made the handshake on this connection).
    fn on_envelope(&self, transport: &Arc<Transport>, from: NodeId, incarnation: u64, envelope: Envelope);
    /// `from` completed a handshake as `incarnation` and reported where its groups stand.
    /// Called before any envelope of the new connection is handed over.
    /// `client_addr` is where `from` says its clients connect.
    fn on_hello(
        &self,
        from: NodeId,
        incarnation: u64,
        groups: Vec<GroupPosition>,
        client_addr: Option<SocketAddr>,
    );
    /// Where this node's groups stand, for our side of the handshake.
    fn local_positions(&self) -> Vec<GroupPosition>;
    /// True while this node belongs to no configuration yet (it was started to join and waits
    /// for its first snapshot): it accepts a peer it does not know, the leader adding it.
    fn is_joining(&self) -> bool;
}

/// The client address a peer told in its handshake, with a wildcard host (`0.0.0.0`, `::`: the
/// peer's RESP port listens on every interface) replaced by `reached`, the host this node
/// reaches the peer at (the far end of the connection the hello came on): where clients this
/// node redirects can reach it too, as Redis Cluster learns a node's address from its
/// connection when none is announced.
fn told_client_addr(told: Option<SocketAddr>, reached: std::net::IpAddr) -> Option<SocketAddr> {
    told.map(|addr| if addr.ip().is_unspecified() { SocketAddr::new(reached, addr.port()) } else { addr })
}

/// Why a peer that splits the keys into `theirs` shards cannot talk with this node (`ours`).
pub(crate) fn shard_count_mismatch(peer: NodeId, theirs: u32, ours: u32) -> String {
    format!(
        "node {peer} splits the keys into {theirs} shards and this node into {ours}: every node of a \
         cluster needs the same --shards (its keys would reach different groups)"
    )
}

/// Incoming connections in their handshake at once (TLS, the secret's proof, the hello); a
/// newcomer past them closes the oldest (see `handshake::Handshakes`). Each may hold a handshake frame (see
/// [`peer::handshake_frame_bytes`]) until the handshake timeout: found from outside, 1,500
/// strangers that each sent all but one byte of a 1 MiB frame held 1.2-2 GiB of a node's
/// memory, with or without a cluster secret. A cluster's own nodes connect a few at a time.
pub(crate) const MAX_HANDSHAKES: usize = 1024;

/// Room for incoming handshakes: [`MAX_HANDSHAKES`], or an eighth of the open-file limit when
/// that is less. Found from outside: under a limit of 128, 400 idle connections to the peer
/// port took every descriptor, and the admin port could not accept.
fn handshake_room() -> usize {
    let limit =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(u64::MAX, |l| l.0);
    MAX_HANDSHAKES.min(usize::try_from(limit / 8).unwrap_or(usize::MAX)).max(16)
}

/// Peers a joining node links to before it knows its cluster's members (see `knows`).
const MAX_JOINING_PEERS: usize = 1024;

/// Transport settings.
#[derive(Debug, Clone)]
pub(crate) struct TransportConfig {
    pub node_id: NodeId,
    /// This process's random incarnation, sent in every hello.
    pub incarnation: u64,
    /// This node's client address, told in the hello.
    pub client_addr: Option<SocketAddr>,
    pub max_frame_bytes: usize,
    pub queue_capacity: usize,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    /// The cluster secret peers must prove before the hello (see `auth`); none: no proof.
    pub secret: Option<auth::ClusterSecret>,
    /// Mutual TLS (see `tls`); none: plain TCP.
    pub tls: Option<tls::PeerTls>,
    /// How many shards this node's keys are split into: a peer's hello must say the same.
    pub shards: u32,
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
    /// The accept loop, until the node's supervisor takes it to watch.
    accept_task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Incoming connections closed in the handshake: no proof of the secret, or an id that is
    /// not a member.
    handshakes_refused: AtomicU64,
    /// Frames not queued for a peer because its queue was full.
    frames_dropped: AtomicU64,
    refusal_warnings: crate::consensus::admit::WarnThrottle,
    /// False until the node knows its members ([`Transport::open`]): peers that connect
    /// earlier wait in the listen backlog instead of being refused as strangers.
    open: tokio::sync::watch::Sender<bool>,
    /// The incoming handshakes under way, at most [`MAX_HANDSHAKES`] (see `handshake_room`).
    handshakes: Arc<handshake::Handshakes>,
    /// The peers this node was configured with (`--peer`): their links stay (see
    /// [`Transport::pin`]).
    pinned: RwLock<std::collections::HashSet<NodeId>>,
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
            accept_task: std::sync::Mutex::default(),
            handshakes_refused: AtomicU64::new(0),
            frames_dropped: AtomicU64::new(0),
            refusal_warnings: Default::default(),
            open: tokio::sync::watch::Sender::new(false),
            handshakes: Arc::new(handshake::Handshakes::new(handshake_room())),
            pinned: RwLock::default(),
        });
        let t = transport.clone();
        let accept = transport.tracker.spawn(async move { t.accept_loop(listener).await });
        *transport.accept_task.lock().expect("accept task poisoned") = Some(accept);
        Ok(transport)
    }

    /// The accept loop's task (once): it runs until the transport closes.
    pub fn take_accept_task(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.accept_task.lock().expect("accept task poisoned").take()
    }

    /// This process's incarnation (a random number drawn at start, sent in every hello).
    pub fn incarnation(&self) -> u64 {
        self.config.incarnation
    }

    /// Starts taking incoming connections: call once the node knows its members (seeds,
    /// recovered configuration) and its groups are attached.
    pub fn open(&self) {
        self.open.send_replace(true);
    }

    /// Incoming peer connections refused in the handshake so far.
    pub fn handshakes_refused(&self) -> u64 {
        self.handshakes_refused.load(Ordering::Relaxed)
    }

    /// Frames not sent so far because the peer's queue was full (`QueueFull`).
    pub fn frames_dropped(&self) -> u64 {
        self.frames_dropped.load(Ordering::Relaxed)
    }

    /// Counts a refused handshake and logs an error, paced as [`Self::refuse`]: a refusal an
    /// operator must act on (a misconfigured node, not a stranger).
    fn refuse_loudly(&self, remote: SocketAddr, why: &str) {
        self.handshakes_refused.fetch_add(1, Ordering::Relaxed);
        if let Some(count) = self.refusal_warnings.note(std::time::Instant::now()) {
            error!(%remote, refused_since_last_error = count, "peer connection refused: {why}");
        }
    }

    /// Counts a refused handshake and warns, paced (a scan or a flood must not flood the log).
    fn refuse(&self, remote: SocketAddr, why: &str) {
        self.handshakes_refused.fetch_add(1, Ordering::Relaxed);
        if let Some(count) = self.refusal_warnings.note(std::time::Instant::now()) {
            warn!(%remote, refused_since_last_warning = count, "peer connection refused: {why}");
        }
    }

    /// Whether `id` may take part: a peer this node knows (a seed or a member), or anyone while
    /// this node is joining, up to [`MAX_JOINING_PEERS`] links (found from outside: a joining
    /// node kept a link for each of 50,000 strangers' ids, 10 KB each, for good).
    fn knows(&self, id: NodeId) -> bool {
        let peers = self.peers.read().expect("peer map poisoned");
        peers.contains_key(&id) || (self.inbound.is_joining() && peers.len() < MAX_JOINING_PEERS)
    }

    /// The largest frame a peer takes.
    pub fn max_frame_bytes(&self) -> usize {
        self.config.max_frame_bytes
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
        if self.pinned.read().expect("pinned poisoned").contains(&id) {
            debug!(peer = id, "a configured peer keeps its link");
            return;
        }
        if let Some(link) = self.peers.write().expect("peer map poisoned").remove(&id) {
            link.close();
        }
    }

    /// Keeps the link to `id`, a peer this node was configured with, for good: the cluster's
    /// nodes as the operator listed them, whatever groups they are in now. Found from outside:
    /// a memory node removed from the meta shard while it was down (a rebalance replaced it)
    /// was refused by every peer when it came back, and could not be told where it stands.
    pub fn pin(&self, id: NodeId) {
        self.pinned.write().expect("pinned poisoned").insert(id);
    }

    /// The address known for `id`.
    pub fn peer_addr(&self, id: NodeId) -> Option<SocketAddr> {
        if id == self.config.node_id {
            return Some(self.local_addr);
        }
        self.peers.read().expect("peer map poisoned").get(&id).and_then(|l| l.addr())
    }

    /// How many peers this node keeps links to.
    pub fn peer_count(&self) -> usize {
        self.peers.read().expect("peer map poisoned").len()
    }

    /// The peers this node keeps links to.
    pub fn peer_ids(&self) -> Vec<NodeId> {
        self.peers.read().expect("peer map poisoned").keys().copied().collect()
    }

    /// Bytes queued for `to` and not yet written (its ordinary lane), if it is a peer.
    pub fn queued_bytes(&self, to: NodeId) -> Option<usize> {
        self.peers.read().expect("peer map poisoned").get(&to).map(|link| link.queued_bytes())
    }

    /// Resolves once fewer than [`ROOM_BYTES`] are queued for `to` (at once when it is no
    /// peer, or when its link closes): where a large frame that may wait (a forwarded write)
    /// waits, so that the link keeps room for the groups' appends.
    pub async fn room_for(&self, to: NodeId) {
        let link = self.peers.read().expect("peer map poisoned").get(&to).cloned();
        if let Some(link) = link {
            link.room().await;
        }
    }

    /// Queues one encoded frame for `to`.
    ///
    /// # Errors
    /// `UnknownPeer` or `QueueFull`, or `FrameTooLarge` for a frame the peer would refuse;
    /// the frame is dropped.
    pub fn send(&self, to: NodeId, frame: Bytes) -> Result<(), TransportError> {
        self.send_in_lane(to, frame, false)
    }

    /// Queues one small encoded frame for `to` ahead of everything `send` queued and not yet
    /// written: heartbeats, votes, answers, notices (see `PeerLink::enqueue`).
    ///
    /// # Errors
    /// As [`Self::send`].
    pub fn send_urgent(&self, to: NodeId, frame: Bytes) -> Result<(), TransportError> {
        self.send_in_lane(to, frame, true)
    }

    fn send_in_lane(&self, to: NodeId, frame: Bytes, urgent: bool) -> Result<(), TransportError> {
        // The peer would close the link on it, cutting every group's messages: refused here.
        let payload = frame.len().saturating_sub(frame::LENGTH_PREFIX_BYTES);
        if payload > self.config.max_frame_bytes {
            return Err(TransportError::FrameTooLarge { len: payload, max: self.config.max_frame_bytes });
        }
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
                            let _ = link.enqueue(frame.clone(), urgent);
                        }
                    });
                    return Ok(());
                }
                Delivery::Send { copies, delay: None } => {
                    for _ in 1..copies {
                        let _ = link.enqueue(frame.clone(), urgent);
                    }
                }
            }
        }
        let queued = link.enqueue(frame, urgent);
        if queued.is_err() {
            self.frames_dropped.fetch_add(1, Ordering::Relaxed);
        }
        queued
    }

    /// Queues one bulk frame (a snapshot piece) for `to`, waiting while its bulk lane is full:
    /// bulk frames go out only when nothing else is queued for the peer (see `peer.rs`).
    ///
    /// # Errors
    /// `UnknownPeer`, or `QueueFull` once the link has closed.
    pub async fn send_bulk(&self, to: NodeId, frame: Bytes) -> Result<(), TransportError> {
        #[cfg(feature = "fault-injection")]
        if let Some(faults) = &self.config.faults {
            // Cuts and drops apply; bulk frames are not duplicated or delayed.
            if matches!(faults.delivery(self.config.node_id, to), crate::faults::Delivery::Drop) {
                return Ok(());
            }
        }
        let bulk = {
            let peers = self.peers.read().expect("peer map poisoned");
            peers.get(&to).ok_or(TransportError::UnknownPeer(to))?.bulk()
        };
        bulk.send(frame).await.map_err(|_| TransportError::QueueFull(to))
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

    fn hello_frame(&self) -> Bytes {
        let groups = self.inbound.local_positions();
        Envelope::Hello {
            node_id: self.config.node_id,
            incarnation: self.config.incarnation,
            groups,
            client_addr: self.config.client_addr,
            shards: self.config.shards,
        }
        .to_frame()
    }

    fn dispatch(
        self: &Arc<Self>,
        from: NodeId,
        incarnation: u64,
        payload: &[u8],
    ) -> Result<(), TransportError> {
        let envelope = Envelope::from_payload(payload)?;
        if let Envelope::Hello { .. } | Envelope::AuthChallenge { .. } | Envelope::AuthProof { .. } = envelope
        {
            return Err(TransportError::Handshake("handshake frame after the handshake".into()));
        }
        self.inbound.on_envelope(self, from, incarnation, envelope);
        Ok(())
    }
}
