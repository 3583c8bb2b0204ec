//! One peer link: its bounded outgoing queue and the task that keeps a connection to it.
//!
//! The link task owns the queue's receiver. It gets a connection by dialing (when this node has
//! the lower id) or from the accept loop, then writes queued frames in batches (one flush per
//! batch) while a reader task hands incoming frames to the transport. A broken connection is
//! replaced; a newer accepted one replaces the current one.
//!
//! The node with the higher id dials too once it has been without a connection for
//! [`DIAL_FALLBACK`]: the lower one may not know its address (it joined, or was re-added, after
//! the higher one did, and can only learn it from the log the higher one would send). The lower
//! id redials at once after a loss and the higher one waits, so when both dial at the same moment
//! and each adopts the other's connection, the next round settles on the lower id's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::envelope::Envelope;
use super::frame::decode_frame;
use super::stream::{PeerStream, ReadHalf, WriteHalf};
use super::{Transport, TransportConfig, TransportError};
use crate::types::NodeId;

const READ_CHUNK_BYTES: usize = 64 * 1024;
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// The largest handshake frame (hello, authentication) of any cluster: a hello names the
/// sender's position in each of its groups, about 50 bytes each, so 16,384 shards fit with room
/// to spare.
pub(super) const HANDSHAKE_FRAME_BYTES: usize = 1 << 20;

/// The largest handshake frame of a cluster of `shards` shards: what its hello needs (see
/// [`HANDSHAKE_FRAME_BYTES`]), so a stranger's unfinished frame holds no more (3 KiB with 16
/// shards, instead of 1 MiB).
pub(super) fn handshake_frame_bytes(shards: u32) -> usize {
    (1024 + 128 * shards as usize).min(HANDSHAKE_FRAME_BYTES)
}
/// Frames written before a flush, at most.
const WRITE_BATCH_FRAMES: usize = 256;
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long the higher id of a pair waits for the lower one to dial before it dials itself.
const DIAL_FALLBACK: Duration = Duration::from_secs(2);
/// Failed dials are logged at debug level until a peer stays unreachable this long, then
/// once this often at info level (found from outside: a link that stayed down for three
/// minutes left nothing in either node's log).
const DIAL_FAILURES_SAID_EVERY: Duration = Duration::from_secs(10);
/// Bulk frames (snapshot pieces) queued per peer at most: a sender waits for room, so one large
/// snapshot never sits in front of other groups' heartbeats and appends for long.
const BULK_QUEUE_FRAMES: usize = 2;
/// Bytes queued per peer at most (a frame is taken whatever its size when nothing is queued).
/// Found from outside: the queue was bounded in frames only, and 200 reads of 15 MB each that a
/// peer asked for and never read filled 2.9 GB (it could have been 128 GiB).
pub(crate) const MAX_QUEUED_BYTES: usize = 64 << 20;
/// Bytes queued per peer below which the link counts as having room (see
/// [`PeerLink::room`]): a quarter of what it queues before it drops.
pub(crate) const ROOM_BYTES: usize = MAX_QUEUED_BYTES / 4;
/// Bytes queued in a peer's urgent lane at most (its frames are small: heartbeats, votes,
/// answers).
const MAX_URGENT_BYTES: usize = 8 << 20;
/// How long one write to a peer may take before the connection is given up (the link then
/// takes the peer's next connection or dials again). Found from outside: a peer that stopped
/// reading held the writer in its write for good, and with it the newer connection of the real
/// peer, which was never taken.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// A peer stream with the bytes read ahead of the frames consumed so far.
pub(super) struct Connection {
    stream: PeerStream,
    buf: BytesMut,
    /// The incarnation the peer announced in this connection's handshake.
    pub(super) peer_incarnation: u64,
    /// The node id the peer's TLS certificate names, if any.
    pub(super) certified: Option<NodeId>,
}

impl Connection {
    /// A connection over `tcp`, first through the TLS handshake when the transport has TLS:
    /// `dialed` is the address this side dialed (none on the accepting side).
    pub(super) async fn open(
        tcp: TcpStream,
        config: &TransportConfig,
        dialed: Option<SocketAddr>,
    ) -> Result<Self, TransportError> {
        let _ = tcp.set_nodelay(true);
        let (stream, certified) = match (&config.tls, dialed) {
            (None, _) => (PeerStream::Plain(tcp), None),
            (Some(tls), Some(addr)) => {
                let handshake = tls.connect(tcp, addr);
                let (stream, id) = tokio::time::timeout(config.handshake_timeout, handshake)
                    .await
                    .map_err(|_| TransportError::Handshake("TLS handshake timed out".into()))??;
                (PeerStream::Tls(Box::new(stream)), id)
            }
            (Some(tls), None) => {
                let (stream, id) =
                    tokio::time::timeout(config.handshake_timeout, tls.accept(tcp))
                        .await
                        .map_err(|_| TransportError::Handshake("TLS handshake timed out".into()))??;
                (PeerStream::Tls(Box::new(stream)), id)
            }
        };
        Ok(Self { stream, buf: BytesMut::with_capacity(READ_CHUNK_BYTES), peer_incarnation: 0, certified })
    }

    /// Reads one whole envelope (used for the handshake), of at most [`handshake_frame_bytes`]:
    /// a stranger may open many connections before any proves who it is, and each would
    /// otherwise hold a frame of up to `max_frame_bytes` for the handshake timeout.
    pub(super) async fn read_envelope(
        &mut self,
        config: &TransportConfig,
    ) -> Result<Envelope, TransportError> {
        let max = config.max_frame_bytes.min(handshake_frame_bytes(config.shards));
        loop {
            if let Some(payload) = decode_frame(&mut self.buf, max)? {
                return Envelope::from_payload(&payload);
            }
            self.buf.reserve(READ_CHUNK_BYTES);
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(TransportError::Handshake("connection closed".into()));
            }
        }
    }

    pub(super) async fn write_frame(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(frame).await?;
        self.stream.flush().await
    }
}

pub(super) struct PeerLink {
    id: NodeId,
    addr: Mutex<Option<SocketAddr>>,
    queue: mpsc::Sender<Bytes>,
    /// Small frames that must not wait behind `queue` (see [`PeerLink::enqueue`]).
    urgent: mpsc::Sender<Bytes>,
    /// Snapshot pieces: written only when `queue` is empty.
    bulk: mpsc::Sender<Bytes>,
    incoming: mpsc::Sender<Connection>,
    cancel: CancellationToken,
    /// Bytes in `queue` (see [`MAX_QUEUED_BYTES`]).
    queued_bytes: AtomicUsize,
    /// Bytes in `urgent` (see [`MAX_URGENT_BYTES`]).
    urgent_bytes: AtomicUsize,
    /// Told when `queued_bytes` falls below [`ROOM_BYTES`].
    room: tokio::sync::Notify,
}

enum WriteEnd {
    Broken,
    Replaced(Connection),
    Closed,
}

impl PeerLink {
    pub(super) fn spawn(transport: &Arc<Transport>, id: NodeId, addr: Option<SocketAddr>) -> Arc<Self> {
        let (queue, queue_rx) = mpsc::channel(transport.config.queue_capacity);
        let (urgent, urgent_rx) = mpsc::channel(transport.config.queue_capacity);
        let (bulk, bulk_rx) = mpsc::channel(BULK_QUEUE_FRAMES);
        let (incoming, incoming_rx) = mpsc::channel(4);
        let link = Arc::new(Self {
            id,
            addr: Mutex::new(addr),
            queue,
            urgent,
            bulk,
            incoming,
            cancel: transport.cancel.child_token(),
            queued_bytes: AtomicUsize::new(0),
            urgent_bytes: AtomicUsize::new(0),
            room: tokio::sync::Notify::new(),
        });
        let task = LinkTask {
            link: link.clone(),
            transport: transport.clone(),
            queue_rx,
            urgent_rx,
            bulk_rx,
            incoming_rx,
        };
        transport.tracker.spawn(task.run());
        link
    }

    pub(super) fn addr(&self) -> Option<SocketAddr> {
        *self.addr.lock().expect("addr poisoned")
    }

    pub(super) fn set_addr(&self, addr: Option<SocketAddr>) {
        *self.addr.lock().expect("addr poisoned") = addr;
    }

    /// Queues `frame`; an `urgent` one goes out before anything of the ordinary queue not yet
    /// written. Heartbeats, votes and answers are urgent, appends and forwarded requests are
    /// not: found from outside, with 64 MB of 8 MB appends queued for a follower its
    /// heartbeats of every group waited behind them. Raft takes messages out of order (as a
    /// network may deliver them), and the frames of each lane keep theirs.
    pub(super) fn enqueue(&self, frame: Bytes, urgent: bool) -> Result<(), TransportError> {
        let len = frame.len();
        let (count, queue, max) = match urgent {
            true => (&self.urgent_bytes, &self.urgent, MAX_URGENT_BYTES),
            false => (&self.queued_bytes, &self.queue, MAX_QUEUED_BYTES),
        };
        let before = count.fetch_add(len, Ordering::Relaxed);
        if (before > 0 && before + len > max) || queue.try_send(frame).is_err() {
            self.release(len, urgent);
            return Err(TransportError::QueueFull(self.id));
        }
        Ok(())
    }

    /// Bytes in the ordinary lane.
    pub(super) fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Resolves once the ordinary lane holds fewer than [`ROOM_BYTES`].
    pub(super) async fn room(&self) {
        loop {
            let told = self.room.notified();
            tokio::pin!(told);
            told.as_mut().enable();
            if self.queued_bytes() < ROOM_BYTES || self.cancel.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = told => {}
                _ = self.cancel.cancelled() => return,
            }
        }
    }

    /// Notes that `frame` left its lane.
    fn dequeued(&self, frame: &Bytes, urgent: bool) {
        self.release(frame.len(), urgent);
    }

    /// Takes `len` bytes off a lane's count (a frame left it, or was never queued after all),
    /// and tells those waiting for room when the ordinary lane falls below [`ROOM_BYTES`]: a
    /// frame refused while the count was just past it takes it below too.
    fn release(&self, len: usize, urgent: bool) {
        if urgent {
            self.urgent_bytes.fetch_sub(len, Ordering::Relaxed);
            return;
        }
        let before = self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
        if before >= ROOM_BYTES && before - len < ROOM_BYTES {
            self.room.notify_waiters();
        }
    }

    /// A sender for bulk frames (see `BULK_QUEUE_FRAMES`).
    pub(super) fn bulk(&self) -> mpsc::Sender<Bytes> {
        self.bulk.clone()
    }

    pub(super) async fn adopt(&self, conn: Connection) {
        let _ = self.incoming.send(conn).await;
    }

    pub(super) fn close(&self) {
        self.cancel.cancel();
    }
}

struct LinkTask {
    link: Arc<PeerLink>,
    transport: Arc<Transport>,
    queue_rx: mpsc::Receiver<Bytes>,
    urgent_rx: mpsc::Receiver<Bytes>,
    bulk_rx: mpsc::Receiver<Bytes>,
    incoming_rx: mpsc::Receiver<Connection>,
}

impl LinkTask {
    async fn run(mut self) {
        let mut next: Option<Connection> = None;
        loop {
            let conn = match next.take() {
                Some(conn) => conn,
                None => match self.connect().await {
                    Some(conn) => conn,
                    None => return,
                },
            };
            let (rd, wr) = conn.stream.into_split();
            let reader = self.spawn_reader(rd, conn.buf, conn.peer_incarnation);
            match self.write_loop(wr, reader).await {
                WriteEnd::Broken => debug!(peer = self.link.id, "peer connection lost"),
                WriteEnd::Replaced(conn) => next = Some(conn),
                WriteEnd::Closed => return,
            }
        }
    }

    fn dials(&self) -> bool {
        self.transport.config.node_id < self.link.id
    }

    /// Waits for a connection: dials with backoff (lower id), or waits for the peer to dial and
    /// dials itself past [`DIAL_FALLBACK`] (higher id).
    async fn connect(&mut self) -> Option<Connection> {
        // Not before the node's groups are attached: the hello says where they stand, and a
        // hello sent before would say they hold nothing. Found with a durable node restarted
        // on a wiped dir: a peer still opening its log greeted it first, and the empty
        // position counted as that peer's answer to its recovery.
        let mut open = self.transport.open.subscribe();
        tokio::select! {
            _ = self.link.cancel.cancelled() => return None,
            _ = open.wait_for(|open| *open) => {}
        }
        let mut backoff = BACKOFF_MIN;
        let started = tokio::time::Instant::now();
        let mut said = started;
        let mut failed = 0u64;
        loop {
            let may_dial = self.dials() || started.elapsed() >= DIAL_FALLBACK;
            if may_dial {
                if let Some(addr) = self.link.addr() {
                    match self.dial(addr).await {
                        Ok(conn) => return Some(conn),
                        Err(e) if said.elapsed() >= DIAL_FAILURES_SAID_EVERY => {
                            failed += 1;
                            said = tokio::time::Instant::now();
                            let seconds = started.elapsed().as_secs();
                            info!(peer = self.link.id, %addr, error = %e, failed, seconds, "cannot reach the peer: dialing on");
                        }
                        Err(e) => {
                            failed += 1;
                            debug!(peer = self.link.id, %addr, error = %e, "dial failed");
                        }
                    }
                }
            }
            let jitter = rand::thread_rng().gen_range(0..=backoff.as_millis() as u64 / 2);
            let wait = if may_dial { backoff } else { DIAL_FALLBACK.saturating_sub(started.elapsed()) };
            tokio::select! {
                _ = self.link.cancel.cancelled() => return None,
                conn = self.incoming_rx.recv() => return conn,
                _ = tokio::time::sleep(wait + Duration::from_millis(jitter)) => {}
            }
            if may_dial {
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    async fn dial(&self, addr: SocketAddr) -> Result<Connection, TransportError> {
        let config = &self.transport.config;
        let stream = tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| TransportError::Handshake("connect timed out".into()))??;
        let mut conn = match Connection::open(stream, config, Some(addr)).await {
            Ok(conn) => conn,
            Err(e) => {
                self.transport.refuse(addr, &e.to_string());
                return Err(e);
            }
        };
        if let Err(e) = super::tls::check_claim(config.tls.as_ref(), self.link.id, conn.certified) {
            self.transport.refuse(addr, &e.to_string());
            return Err(e);
        }
        if let Some(secret) = &config.secret {
            if let Err(e) = super::auth::dial(&mut conn, secret, config).await {
                self.transport.refuse(addr, &e.to_string());
                return Err(e);
            }
        }
        conn.write_frame(&self.transport.hello_frame()).await?;
        let reply = tokio::time::timeout(config.handshake_timeout, conn.read_envelope(config))
            .await
            .map_err(|_| TransportError::Handshake("no hello reply".into()))??;
        match reply {
            Envelope::Hello { node_id, shards, .. } if node_id == self.link.id && shards != config.shards => {
                let why = super::shard_count_mismatch(node_id, shards, config.shards);
                self.transport.refuse_loudly(addr, &why);
                Err(TransportError::Handshake(why))
            }
            Envelope::Hello { node_id, incarnation, groups, client_addr, .. } if node_id == self.link.id => {
                info!(peer = node_id, %addr, incarnation, "connected to peer");
                let client_addr = super::told_client_addr(client_addr, addr.ip());
                self.transport.inbound.on_hello(node_id, incarnation, groups, client_addr);
                conn.peer_incarnation = incarnation;
                Ok(conn)
            }
            other => Err(TransportError::Handshake(format!(
                "expected hello from node {}, got {other:?}",
                self.link.id
            ))),
        }
    }

    fn spawn_reader(&self, rd: ReadHalf, buf: BytesMut, incarnation: u64) -> JoinHandle<()> {
        let transport = self.transport.clone();
        let peer = self.link.id;
        self.transport.tracker.spawn(async move {
            if let Err(e) = read_loop(&transport, peer, incarnation, rd, buf).await {
                warn!(peer, error = %e, "closing peer connection");
            }
        })
    }

    async fn write_loop(&mut self, wr: WriteHalf, mut reader: JoinHandle<()>) -> WriteEnd {
        let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, wr);
        let end = loop {
            let (frame, urgent) = tokio::select! {
                biased;
                _ = self.link.cancel.cancelled() => break WriteEnd::Closed,
                conn = self.incoming_rx.recv() => match conn {
                    Some(conn) => break WriteEnd::Replaced(conn),
                    None => break WriteEnd::Closed,
                },
                _ = &mut reader => break WriteEnd::Broken,
                frame = self.urgent_rx.recv() => (frame, true),
                frame = self.queue_rx.recv() => (frame, false),
                // Only when nothing else waits (biased): one piece, then the queue again.
                Some(frame) = self.bulk_rx.recv() => {
                    let written = async {
                        out.write_all(&frame).await?;
                        out.flush().await
                    };
                    if let Err(e) = within_deadline(written).await {
                        debug!(peer = self.link.id, error = %e, "write to peer failed");
                        break WriteEnd::Broken;
                    }
                    continue;
                }
            };
            let Some(frame) = frame else { break WriteEnd::Closed };
            self.link.dequeued(&frame, urgent);
            if let Err(e) = within_deadline(self.write_batch(&mut out, frame)).await {
                debug!(peer = self.link.id, error = %e, "write to peer failed");
                break WriteEnd::Broken;
            }
        };
        reader.abort();
        end
    }

    /// Writes `first` and whatever else is queued (urgent frames first, before each frame),
    /// then flushes once. Before the flush it yields once to the runtime, so the tasks that
    /// are ready to run (the other groups woken by the same incoming batch) add their
    /// messages to this one write: with many shards the groups' messages to a peer would
    /// otherwise each cost a send and a wake-up of the peer.
    async fn write_batch(&mut self, out: &mut BufWriter<WriteHalf>, first: Bytes) -> std::io::Result<()> {
        out.write_all(&first).await?;
        let mut written = 1;
        for round in 0..2 {
            while written < WRITE_BATCH_FRAMES {
                let (frame, urgent) = match self.urgent_rx.try_recv() {
                    Ok(frame) => (frame, true),
                    Err(_) => match self.queue_rx.try_recv() {
                        Ok(frame) => (frame, false),
                        Err(_) => break,
                    },
                };
                self.link.dequeued(&frame, urgent);
                out.write_all(&frame).await?;
                written += 1;
            }
            if round == 0 {
                tokio::task::yield_now().await;
            }
        }
        out.flush().await
    }
}

/// `write`, failed with `TimedOut` once it takes longer than [`WRITE_DEADLINE`].
async fn within_deadline(
    write: impl std::future::Future<Output = std::io::Result<()>>,
) -> std::io::Result<()> {
    tokio::time::timeout(WRITE_DEADLINE, write).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the peer took nothing for the write deadline"))
    })
}

async fn read_loop(
    transport: &Arc<Transport>,
    peer: NodeId,
    incarnation: u64,
    mut rd: ReadHalf,
    mut buf: BytesMut,
) -> Result<(), TransportError> {
    let max = transport.config.max_frame_bytes;
    loop {
        while let Some(payload) = decode_frame(&mut buf, max)? {
            transport.dispatch(peer, incarnation, &payload)?;
        }
        buf.reserve(READ_CHUNK_BYTES);
        if rd.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    }
}
