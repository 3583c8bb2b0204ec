//! The RESP server: [`RespServer`] accepts clients up to `max_clients` and runs one task per
//! connection (`connection.rs`); [`ServerState`] is what every command can see of the node.

pub mod buffers;
mod connection;
pub mod registry;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crema::{DistributedCache, NodeId};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::acl::Access;
use crate::cmd::error::LeaderAddr;
use crate::cmd::{ReadMode, Redirects};
use crate::metrics::Metrics;
use crate::resp::RequestLimits;

/// Limits and choices of the RESP front door. Every limit, when broken, gets the client an error
/// and a closed connection; the node keeps serving everyone else.
#[derive(Debug, Clone)]
pub struct RespSettings {
    /// Request size limits once authenticated (before `AUTH`, much smaller ones apply).
    pub limits: RequestLimits,
    /// Most bytes of unparsed requests buffered per client.
    pub max_query_buffer_bytes: usize,
    /// Most bytes of unparsed requests buffered by all clients together; past it the largest
    /// buffers' connections are closed (see `buffers`). 0: no cap.
    pub max_total_query_buffer_bytes: usize,
    /// Replies buffered per client before they are written out (the connection then waits for
    /// the client to read; see `write_timeout`).
    pub max_output_buffer_bytes: usize,
    /// Most clients connected at once.
    pub max_clients: usize,
    /// Close a connection idle this long; zero never closes (Redis's default).
    pub idle_timeout: Duration,
    /// TCP keepalive on client connections (as Redis's `tcp-keepalive`); zero off.
    pub tcp_keepalive: Duration,
    /// A request that started arriving must be complete within this (slow clients are closed).
    pub request_timeout: Duration,
    /// While replies wait, the client must take some of them within this, or the connection
    /// is closed.
    pub write_timeout: Duration,
    /// The password of the `default` user while the cluster has no ACL record of it; none: no
    /// password (see `crate::acl`).
    pub password: Option<String>,
    /// The ACL file (`--aclfile`), for `ACL LOAD` and `ACL SAVE`.
    pub acl_file: Option<std::path::PathBuf>,
    /// With a password: a connection must authenticate within this, or it is closed.
    pub auth_timeout: Duration,
    /// TLS on the RESP port (see `tls`); none: plain TCP.
    pub tls: Option<tls::RespTls>,
    /// How new connections read.
    pub read_mode: ReadMode,
    /// Which connections are in cluster mode (`-MOVED`, `-CROSSSLOT`).
    pub cluster_redirects: Redirects,
    /// Client (RESP) addresses of other nodes, for `-NOTLEADER host:port`.
    pub client_addrs: BTreeMap<NodeId, String>,
}

impl Default for RespSettings {
    fn default() -> Self {
        Self {
            limits: RequestLimits::default(),
            max_query_buffer_bytes: 64 * 1024 * 1024,
            max_total_query_buffer_bytes: 256 * 1024 * 1024,
            max_output_buffer_bytes: 1024 * 1024,
            max_clients: 10_000,
            idle_timeout: Duration::ZERO,
            tcp_keepalive: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(30),
            password: None,
            acl_file: None,
            auth_timeout: Duration::from_secs(10),
            tls: None,
            read_mode: ReadMode::Linearizable,
            cluster_redirects: Redirects::SlotMap,
            client_addrs: BTreeMap::new(),
        }
    }
}

/// Connection counters.
#[derive(Debug, Default)]
pub struct Clients {
    /// Connected now.
    pub connected: AtomicUsize,
    /// Accepted since start.
    pub accepted: AtomicU64,
    /// Refused because `max_clients` were connected, or too many had not authenticated.
    pub rejected: AtomicU64,
    /// Connected and not yet authenticated (with a password set), oldest first.
    pub strangers: Strangers,
    /// Failed `AUTH` attempts since start.
    pub auth_failures: AtomicU64,
    /// Connections closed for failing `AUTH` too often or not authenticating in time.
    pub auth_closed: AtomicU64,
    /// Every connected client (`CLIENT LIST`, `CLIENT KILL`).
    pub registry: registry::Registry,
    next_id: AtomicU64,
    /// Paces the warning about connections closed for authentication.
    pub(crate) auth_warnings: crema::consensus::WarnThrottle,
}

/// Connections that have not authenticated yet, oldest first. Past the cap a newcomer closes
/// the oldest: idle strangers can never keep a real client out for longer than it takes that
/// client to authenticate, and none stays past the authentication deadline anyway.
#[derive(Debug, Default)]
pub struct Strangers {
    queue: std::sync::Mutex<std::collections::VecDeque<(u64, CancellationToken)>>,
}

impl Strangers {
    /// How many are waiting now.
    pub fn len(&self) -> usize {
        self.queue.lock().expect("strangers poisoned").len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds connection `id`, closing the oldest past `cap`; answers the token that closes `id`.
    fn admit(&self, id: u64, cap: usize) -> CancellationToken {
        let token = CancellationToken::new();
        let mut queue = self.queue.lock().expect("strangers poisoned");
        queue.push_back((id, token.clone()));
        while queue.len() > cap {
            if let Some((_, oldest)) = queue.pop_front() {
                oldest.cancel();
            }
        }
        token
    }

    /// Removes connection `id` (it authenticated or closed).
    pub(crate) fn leave(&self, id: u64) {
        self.queue.lock().expect("strangers poisoned").retain(|(i, _)| *i != id);
    }
}

/// A client that fails `AUTH` this many times on one connection is disconnected.
pub const MAX_AUTH_FAILURES: u32 = 3;

/// How long a stopping node waits for its client connections to finish the command each is
/// running (a write waits for its commit at most the request timeout, 5 s by default).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl RespSettings {
    /// How many connections may be open without having authenticated: a tenth of
    /// `max_clients` (at least one); past it a newcomer closes the oldest (see [`Strangers`]).
    pub fn max_unauthenticated(&self) -> usize {
        (self.max_clients / 10).max(1)
    }
}

/// What every command can see of the node.
pub struct ServerState {
    /// The cache node.
    pub cache: Arc<DistributedCache>,
    /// The RESP settings.
    pub settings: RespSettings,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Connection counters.
    pub clients: Clients,
    /// When the server started.
    pub started: Instant,
    /// When the server started, in seconds since the Unix epoch (LASTSAVE).
    pub started_unix_secs: i64,
    /// The RESP address.
    pub resp_addr: SocketAddr,
    /// The ACL users and the checks made with them.
    pub acl: Access,
    /// The query buffers of all clients together.
    pub buffers: buffers::QueryBuffers,
    /// Where INFO's counters start (`CONFIG RESETSTAT`).
    pub stats_baseline: crate::info::StatsBaseline,
}

impl LeaderAddr for ServerState {
    fn client_addr_of(&self, id: NodeId) -> Option<String> {
        if id == self.cache.node_id() {
            return Some(self.resp_addr.to_string());
        }
        // A configured address first (`--peer id=raft,resp`), else what the node said in its
        // peer handshake (a node that joined later), unless that is this node's own address
        // (two nodes behind one loopback, say): a client is never sent back to where it is.
        self.settings.client_addrs.get(&id).cloned().or_else(|| {
            self.cache.client_addr_of(id).filter(|addr| *addr != self.resp_addr).map(|addr| addr.to_string())
        })
    }
}

/// The RESP listener of one node.
pub struct RespServer {
    state: Arc<ServerState>,
    listener: TcpListener,
}

impl RespServer {
    /// A server for `cache` on an already-bound `listener` (tests bind port 0).
    ///
    /// # Errors
    /// The listener's address cannot be read.
    pub fn new(
        cache: Arc<DistributedCache>,
        listener: TcpListener,
        settings: RespSettings,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let resp_addr = listener.local_addr()?;
        let acl = Access::new(cache.acl().clone(), settings.password.as_deref(), settings.acl_file.clone());
        let buffers = buffers::QueryBuffers::new(settings.max_total_query_buffer_bytes);
        let state = ServerState {
            cache,
            settings,
            metrics,
            clients: Clients::default(),
            started: Instant::now(),
            started_unix_secs: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            resp_addr,
            acl,
            buffers,
            stats_baseline: Default::default(),
        };
        Ok(Self { state: Arc::new(state), listener })
    }

    /// The shared state (for the admin server and tests).
    pub fn state(&self) -> Arc<ServerState> {
        self.state.clone()
    }

    /// The RESP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.state.resp_addr
    }

    /// Accepts clients until `shutdown` is cancelled, then closes every connection (a command
    /// being run finishes and gets its reply first, within [`SHUTDOWN_GRACE`]) and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        info!(addr = %self.state.resp_addr, "RESP server listening");
        // Found from outside: out of descriptors, a node logged 60-110 of these a second.
        let accept_warnings = crema::consensus::WarnThrottle::default();
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => accepted,
            };
            let (mut stream, addr) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    if let Some(count) = accept_warnings.note(std::time::Instant::now()) {
                        warn!(error = %e, count, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let clients = &self.state.clients;
            if clients.connected.load(Ordering::Acquire) >= self.state.settings.max_clients {
                clients.rejected.fetch_add(1, Ordering::Relaxed);
                debug!(%addr, "refused: max clients reached");
                tracker.spawn(async move {
                    let refusal = stream.write_all(b"-ERR max number of clients reached\r\n");
                    let _ = tokio::time::timeout(Duration::from_secs(1), refusal).await;
                });
                continue;
            }
            let _ = stream.set_nodelay(true);
            if let Err(e) = keep_alive(&stream, self.state.settings.tcp_keepalive) {
                debug!(%addr, error = %e, "TCP keepalive not set");
            }
            let local = stream.local_addr().ok();
            clients.connected.fetch_add(1, Ordering::AcqRel);
            clients.accepted.fetch_add(1, Ordering::Relaxed);
            let id = clients.next_id.fetch_add(1, Ordering::Relaxed) + 1;
            let settings = &self.state.settings;
            let evicted = self
                .state
                .acl
                .starting_user()
                .is_none()
                .then(|| clients.strangers.admit(id, settings.max_unauthenticated()));
            let state = self.state.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(async move {
                match state.settings.tls.clone() {
                    None => connection::serve(&state, stream, id, addr, local, shutdown, evicted).await,
                    Some(acceptor) => {
                        // The handshake counts against the client's time to authenticate, and a
                        // newer stranger may close it as it may close one that authenticates
                        // (found in review: handshakes that never ended filled --max-clients).
                        let patience = state.settings.auth_timeout.max(Duration::from_secs(10));
                        let closed = async {
                            match &evicted {
                                Some(token) => token.cancelled().await,
                                None => std::future::pending().await,
                            }
                        };
                        let handshake = tokio::select! {
                            done = tokio::time::timeout(patience, acceptor.0.accept(stream)) => Some(done),
                            _ = closed => None,
                        };
                        match handshake {
                            Some(Ok(Ok(tls))) => {
                                connection::serve(&state, tls, id, addr, local, shutdown, evicted).await
                            }
                            failed => {
                                debug!(%addr, ?failed, "TLS handshake failed");
                                if evicted.is_some() {
                                    state.clients.strangers.leave(id);
                                }
                            }
                        }
                    }
                }
                state.clients.connected.fetch_sub(1, Ordering::AcqRel);
            });
        }
        drop(self.listener);
        tracker.close();
        // Connections stop at their next request or while their replies wait; one still
        // running a command after this long is dropped with the runtime, so a stopping node
        // ends whatever its clients do (found from outside: a client that kept pipelining
        // held a node that had closed its port for as long as it liked).
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait()).await.is_err() {
            warn!(open = tracker.len(), "connections still open after the shutdown grace: dropped");
        }
        info!("RESP server stopped");
    }
}
/// Sets TCP keepalive on a client connection as Redis's `tcp-keepalive` does: the first probe
/// after `time` of silence, then three a third of it apart; `time` zero turns it off. Found
/// from outside: clients gone without a FIN or RST (a crashed host, a dropped NAT entry) held
/// their `--max-clients` slots for good, the idle timeout being off by default.
fn keep_alive(stream: &tokio::net::TcpStream, time: Duration) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    if time.is_zero() {
        return socket.set_keepalive(false);
    }
    let interval = (time / 3).max(Duration::from_secs(1));
    socket.set_tcp_keepalive(
        &socket2::TcpKeepalive::new().with_time(time).with_interval(interval).with_retries(3),
    )
}
