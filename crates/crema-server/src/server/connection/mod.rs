//! One client connection: the only code that reads and writes a client socket.
//!
//! Each pass reads what has arrived, runs every complete request in order (pipelining) and
//! writes all their replies with one write. Limits are enforced here: the request parser refuses
//! oversized lengths before buffering them, the unparsed bytes are capped, a request must
//! complete within `request_timeout` (slow-drip clients), replies are flushed once
//! `max_output_buffer_bytes` are pending, and some of them must be taken every `write_timeout`
//! (clients that never read), and an idle connection closes after `idle_timeout` when set.

use std::net::SocketAddr;

use bytes::BytesMut;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use tracing::{debug, warn};

mod flush;

use super::{ServerState, MAX_AUTH_FAILURES};
use crate::cmd::write::PreparedWrite;
use crate::cmd::{self, Session, Step};
use crate::resp::{take_request_resuming, Output, Progress, Reply, RequestLimits};

/// Most writes proposed together, and most bytes of keys and values in them: a batch stays
/// well under the peer frame limit when it is forwarded from a follower.
const MAX_RUN_WRITES: usize = 512;
const MAX_RUN_BYTES: usize = 1024 * 1024;

/// Most bytes of stored values the APPENDs and SETRANGEs of a run may copy when applied (each
/// copies its whole value), as estimated when it is gathered (`PreparedWrite::copies`): a run is
/// one Raft entry, applied in one go on every replica. Found in review: 512 pipelined `APPEND
/// big x` on an 8 MiB value made one entry that copied 4 GiB. A sixteenth of what apply allows
/// a run ([`crema::MOST_COPIED_PER_BATCH`]), which refuses the rest where the estimate was
/// wrong (a value another client or a lagging replica changed).
const MAX_RUN_COPIED_BYTES: usize = 16 << 20;

/// One request of a run: a prepared write, or a reply already made (kept for the order).
enum RunEntry {
    Write(usize, PreparedWrite),
    Ready(Reply),
}

#[derive(Default)]
struct WriteRun {
    entries: Vec<RunEntry>,
    bytes: usize,
    /// Bytes of values its APPENDs and SETRANGEs may copy, and may add to the values they change
    /// (see [`MAX_RUN_COPIED_BYTES`]).
    copied: usize,
    grown: usize,
}

impl WriteRun {
    fn is_full(&self) -> bool {
        self.entries.len() >= MAX_RUN_WRITES || self.bytes >= MAX_RUN_BYTES
    }
}

/// Limits before `AUTH` when a password is set: enough for `AUTH`/`HELLO`, nothing more.
const UNAUTHENTICATED: RequestLimits =
    RequestLimits { max_bulk_bytes: 1024, max_args: 8, max_inline_bytes: 1024 };

const READ_CHUNK: usize = 16 * 1024;

/// How long a command runs before its connection also watches for its client hanging up
/// (see `Connection::run_command`): most commands end long before and pay nothing for it, and a
/// client that only shut down its sending side still gets the answers of those that do.
const HANG_UP_WATCH_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// The most a connection reads while one of its commands runs (see `Connection::run_command`).
const HANG_UP_READ_BYTES: usize = 64 * 1024;

const BUFFER_EVICTED: &str =
    "client evicted: the query buffers of all clients passed max-total-query-buffer-bytes, and this one was among the largest";

/// Why a connection ended (logged at debug level; the fields are read through `Debug`).
#[allow(dead_code)]
#[derive(Debug)]
enum Closed {
    ByClient,
    Quit,
    Shutdown,
    Idle,
    SlowRequest,
    SlowReader,
    /// The query buffer filled while the replies waited: see `Connection::flush`.
    PipelineStalled,
    Protocol(String),
    QueryBufferFull,
    AuthFailures,
    AuthTimeout,
    /// Closed to bring the query buffers of all clients under their cap.
    BufferEvicted,
    /// Closed, unauthenticated, to make room for a newer connection.
    Evicted,
    /// Closed by `CLIENT KILL`.
    Killed,
    Io(std::io::Error),
}

pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    state: &ServerState,
    mut stream: S,
    id: u64,
    addr: SocketAddr,
    local_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    evicted: Option<CancellationToken>,
) {
    let mut session = Session::new(id, addr, state.acl.starting_user(), state.settings.read_mode);
    session.cluster_mode = state.settings.cluster_redirects == crate::cmd::Redirects::Always;
    session.local_addr = local_addr;
    let entry = state.clients.registry.register(id, addr, local_addr);
    let mut conn = Connection {
        state,
        stream: &mut stream,
        input: BytesMut::new(),
        progress: Progress::default(),
        output: Output::default(),
        id,
        evicted,
        buffer_evicted: CancellationToken::new(),
        buffer_tracked: false,
        entry,
        read_while_flushing: false,
        shutdown: shutdown.clone(),
        requests: 0,
    };
    let closed = conn.run(&mut session, &shutdown).await;
    state.clients.registry.leave(id);
    conn.release_stranger_slot();
    if conn.buffer_tracked {
        state.buffers.leave(id);
    }
    if matches!(closed, Closed::AuthFailures | Closed::AuthTimeout | Closed::Evicted) {
        state.clients.auth_closed.fetch_add(1, Ordering::Relaxed);
        if let Some(count) = state.clients.auth_warnings.note(std::time::Instant::now()) {
            warn!(%addr, reason = ?closed, closed_since_last_warning = count, "client closed: it did not authenticate");
        }
    }
    debug!(id, %addr, reason = ?closed, "client connection closed");
}

struct Connection<'a, S> {
    state: &'a ServerState,
    stream: &'a mut S,
    input: BytesMut,
    /// How far the request at the front of `input` was parsed (see `resp::Progress`).
    progress: Progress,
    output: Output,
    id: u64,
    /// While unauthenticated: cancelled when a newer stranger takes this one's place (see
    /// `Strangers`).
    evicted: Option<CancellationToken>,
    /// Cancelled when this connection's query buffer is closed to bring all of them under
    /// their cap (see `super::buffers`).
    buffer_evicted: CancellationToken,
    /// This connection in the node's registry (`CLIENT LIST`, `CLIENT KILL`).
    entry: std::sync::Arc<super::registry::ClientEntry>,
    /// Requests were read while replies waited to be taken (see `flush`).
    read_while_flushing: bool,
    /// Whether the query buffers know this connection's.
    buffer_tracked: bool,
    /// Cancelled when the node stops.
    shutdown: CancellationToken,
    /// Requests taken from the input so far.
    requests: u64,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<'_, S> {
    /// Tells the query buffers how much this connection holds; a large buffer may get a
    /// connection (this one included) evicted.
    fn note_buffer(&mut self, session: &Session) {
        let held = self.held_bytes(session);
        note_buffer(self.state, self.id, held, &mut self.buffer_tracked, &self.buffer_evicted);
    }

    /// What this connection's unrun requests hold: the bytes read, what the parser keeps per
    /// argument of the unfinished one (found from outside: a million empty arguments are 6 MB
    /// on the wire and were 32 MB more of parser state, counted nowhere), and its transaction's
    /// queue and watched keys.
    fn held_bytes(&self, session: &Session) -> usize {
        self.input.len() + self.progress.held_bytes() + session.tx.held_bytes()
    }

    /// Why this connection must stop now, if it must: `CLIENT KILL` (its own included), or
    /// the node stopping. Checked before each request, so a client that always has the next
    /// one buffered stops too (found from outside: it was served on for as long as it sent).
    /// The shutdown token is shared by every connection (a lock), so it is looked at every
    /// 64 requests and whenever replies wait.
    fn stop_reason(&self) -> Option<Closed> {
        if self.entry.kill.is_cancelled() {
            Some(Closed::Killed)
        } else if self.requests.is_multiple_of(64) && self.shutdown.is_cancelled() {
            Some(Closed::Shutdown)
        } else {
            None
        }
    }

    fn release_stranger_slot(&mut self) {
        if self.evicted.take().is_some() {
            self.state.clients.strangers.leave(self.id);
        }
    }

    async fn run(&mut self, session: &mut Session, shutdown: &CancellationToken) -> Closed {
        let settings = &self.state.settings;
        let mut partial_since: Option<Instant> = None;
        // One wait for shutdown for the whole connection: making a new one per read would
        // register with the token (a lock) every time.
        let cancelled = shutdown.cancelled();
        tokio::pin!(cancelled);
        let auth_deadline = Instant::now() + settings.auth_timeout;
        loop {
            let taken_before = self.requests;
            let ran = self.run_requests(session).await;
            self.entry.update(session);
            // The clock of a request that has not fully arrived starts after the last one
            // taken (found from outside: it ran from when the input was last empty, so a
            // client streaming a long pipeline at a steady pace was cut off).
            if self.requests != taken_before {
                partial_since = None;
            }
            if let Err(closed) = ran {
                return closed;
            }
            if session.authenticated {
                self.release_stranger_slot();
            }
            self.note_buffer(session);
            if self.buffer_evicted.is_cancelled() {
                let _ = self.reply_and_close(Reply::err(BUFFER_EVICTED)).await;
                return Closed::BufferEvicted;
            }
            if self.held_bytes(session) > settings.max_query_buffer_bytes {
                let _ = self.reply_and_close(Reply::err("Protocol error: query buffer limit reached")).await;
                return Closed::QueryBufferFull;
            }
            // Requests read while replies waited (see `flush`) are run before reading more:
            // they arrived after the batch before, so they are a batch of their own.
            if std::mem::take(&mut self.read_while_flushing) {
                session.new_batch();
                continue;
            }
            let deadline = if self.input.is_empty() {
                partial_since = None;
                (!settings.idle_timeout.is_zero()).then(|| Instant::now() + settings.idle_timeout)
            } else {
                Some(*partial_since.get_or_insert_with(Instant::now) + settings.request_timeout)
            };
            // A connection that has not authenticated gets `auth_timeout` in all.
            let deadline = match (deadline, self.evicted.is_some()) {
                (Some(at), true) => Some(at.min(auth_deadline)),
                (None, true) => Some(auth_deadline),
                (at, false) => at,
            };
            self.input.reserve(READ_CHUNK);
            let evicted = self.evicted.clone();
            let buffer_evicted = self.buffer_evicted.clone();
            let killed = self.entry.kill.clone();
            let read = tokio::select! {
                biased;
                _ = &mut cancelled => return Closed::Shutdown,
                _ = killed.cancelled() => return Closed::Killed,
                _ = buffer_evicted.cancelled(), if self.buffer_tracked => {
                    let _ = self.reply_and_close(Reply::err(BUFFER_EVICTED)).await;
                    return Closed::BufferEvicted;
                }
                _ = async { evicted.as_ref().expect("guarded").cancelled().await }, if evicted.is_some() => {
                    let _ = self.reply_and_close(Reply::err("closed: not authenticated, and newer clients need the room")).await;
                    return Closed::Evicted;
                }
                read = read_until(self.stream, &mut self.input, deadline) => read,
            };
            match read {
                Ok(Some(0)) => return Closed::ByClient,
                Ok(Some(_)) => session.new_batch(),
                Ok(None) if self.evicted.is_some() && Instant::now() >= auth_deadline => {
                    let _ = self.reply_and_close(Reply::err("authentication not completed in time")).await;
                    return Closed::AuthTimeout;
                }
                Ok(None) if self.input.is_empty() => return Closed::Idle,
                Ok(None) => {
                    let _ = self.reply_and_close(Reply::err("request not completed in time")).await;
                    return Closed::SlowRequest;
                }
                Err(e) => return Closed::Io(e),
            }
        }
    }

    /// Runs every complete request in the input and writes the replies. Consecutive writes are
    /// gathered (with replies made without running, to keep the order) and proposed together
    /// when a request that is not a write comes, the input runs dry, or the run is full.
    async fn run_requests(&mut self, session: &mut Session) -> Result<(), Closed> {
        let mut run = WriteRun::default();
        loop {
            // Checked per request: a pipeline of guesses stops at the limit.
            if !session.authenticated && session.auth_failures >= MAX_AUTH_FAILURES {
                self.propose_run(session, &mut run).await?;
                let _ = self.reply_and_close(Reply::err("too many failed AUTH attempts")).await;
                return Err(Closed::AuthFailures);
            }
            let limits = if session.authenticated { &self.state.settings.limits } else { &UNAUTHENTICATED };
            if let Some(closed) = self.stop_reason() {
                self.send_what_fits();
                return Err(closed);
            }
            let args = match take_request_resuming(&mut self.input, limits, &mut self.progress) {
                Ok(Some(args)) if args.is_empty() => continue,
                Ok(Some(args)) => {
                    self.requests += 1;
                    args
                }
                Ok(None) => {
                    self.propose_run(session, &mut run).await?;
                    return self.flush().await;
                }
                Err(e) => {
                    let message = e.to_string();
                    self.propose_run(session, &mut run).await?;
                    self.flush().await?;
                    let _ = self.reply_and_close(Reply::err(&message)).await;
                    return Err(Closed::Protocol(message));
                }
            };
            match cmd::step(self.state, session, args) {
                Step::Write { index, write } => {
                    // A large write goes out on its own: the run's writes are proposed as one
                    // Raft entry, which must fit in a peer frame (`crema::MAX_COMMAND_BYTES`).
                    let bytes = write.command_bytes();
                    let mut copies = write.copies(&self.state.cache, run.grown);
                    let (copied, _) = copies.unwrap_or_default();
                    if (run.bytes > 0 && run.bytes + bytes > MAX_RUN_BYTES)
                        || (copied > 0
                            && run.copied > 0
                            && run.copied.saturating_add(copied) > MAX_RUN_COPIED_BYTES)
                    {
                        self.propose_run(session, &mut run).await?;
                        if copies.is_some() {
                            // Estimated again: nothing before it in the new run.
                            copies = write.copies(&self.state.cache, 0);
                        }
                    }
                    let (copied, grows) = copies.unwrap_or_default();
                    run.bytes += bytes;
                    run.copied = run.copied.saturating_add(copied);
                    run.grown = run.grown.saturating_add(grows);
                    run.entries.push(RunEntry::Write(index, write));
                    if run.is_full() {
                        self.propose_run(session, &mut run).await?;
                    }
                }
                Step::Reply { index, reply } => {
                    cmd::observe_reply(self.state, session, index, &reply);
                    run.entries.push(RunEntry::Ready(reply));
                }
                Step::Run(args, index) => {
                    self.propose_run(session, &mut run).await?;
                    let reply = self.run_command(session, args, index).await?;
                    self.answer(session, reply).await?;
                    if session.quit {
                        self.flush().await?;
                        return Err(Closed::Quit);
                    }
                }
            }
        }
    }

    /// Runs one request that is not a write. A kill ends a long command (KEYS over millions of
    /// keys, a WATCH of many) at once; its walk stops when dropped
    /// (`crema::cache::keyspace::off_runtime`). A command also ends when its client hangs up,
    /// as Redis frees a blocked client: WAIT (for as long as its client asked, forever with a
    /// timeout of 0) from the start, any other once it has run for [`HANG_UP_WATCH_AFTER`]
    /// (found from outside: 50 WAITs whose clients had closed stayed connected, polling, for
    /// good, counted against `maxclients`; abandoned KEYS queued for their turn to walk by the
    /// thousand, holding 1.6 GB and making everyone's DBSIZE wait). What the client sends
    /// meanwhile is kept for after it, up to `HANG_UP_READ_BYTES` (then it waits in the
    /// socket, as before).
    async fn run_command(
        &mut self,
        session: &mut Session,
        args: Vec<bytes::Bytes>,
        index: Option<usize>,
    ) -> Result<Reply, Closed> {
        let blocks = index.is_some_and(|i| matches!(cmd::COMMANDS[i].kind, cmd::Kind::Wait));
        let watch_from = if blocks { Instant::now() } else { Instant::now() + HANG_UP_WATCH_AFTER };
        // Enough to hear a hang-up, and no more: a client whose command waits cannot grow its
        // buffer past what it held plus this (the node-wide cap is looked at between commands).
        let limit = (self.input.len() + HANG_UP_READ_BYTES).min(self.state.settings.max_query_buffer_bytes);
        let (stream, input, kill) = (&mut *self.stream, &mut self.input, &self.entry.kill);
        let (reply, read_meanwhile) = {
            let mut read_meanwhile = false;
            let command = cmd::run(self.state, session, args, index);
            tokio::pin!(command);
            loop {
                tokio::select! {
                    biased;
                    reply = &mut command => break (reply, read_meanwhile),
                    () = kill.cancelled() => return Err(Closed::Killed),
                    read = async {
                        tokio::time::sleep_until(watch_from).await;
                        input.reserve(READ_CHUNK);
                        stream.read_buf(input).await
                    }, if input.len() < limit => match read {
                        Ok(0) => return Err(Closed::ByClient),
                        Ok(_) => read_meanwhile = true,
                        Err(e) => return Err(Closed::Io(e)),
                    },
                }
            }
        };
        // Requests that arrived while it ran come after it: no read barrier taken before
        // covers them.
        if read_meanwhile {
            session.new_batch();
        }
        Ok(reply)
    }

    /// Proposes the gathered writes and writes every reply of the run in order.
    async fn propose_run(&mut self, session: &mut Session, run: &mut WriteRun) -> Result<(), Closed> {
        let entries = std::mem::take(&mut run.entries);
        (run.bytes, run.copied, run.grown) = (0, 0, 0);
        let mut ready = Vec::with_capacity(entries.len());
        let mut writes = Vec::new();
        for entry in entries {
            match entry {
                RunEntry::Write(index, write) => {
                    writes.push((index, write));
                    ready.push(None);
                }
                RunEntry::Ready(reply) => ready.push(Some(reply)),
            }
        }
        let mut replies =
            if writes.is_empty() { Vec::new() } else { cmd::run_writes(self.state, session, writes).await };
        replies.reverse();
        for slot in ready {
            let reply = slot.unwrap_or_else(|| replies.pop().expect("one reply per write"));
            self.answer(session, reply).await?;
        }
        Ok(())
    }
}

/// Tells the query buffers of all clients (`super::buffers`) that connection `id` holds `len`
/// bytes, once it is large enough to count.
fn note_buffer(state: &ServerState, id: u64, len: usize, tracked: &mut bool, evicted: &CancellationToken) {
    if *tracked || len >= super::buffers::QueryBuffers::TRACKED_BYTES {
        *tracked = state.buffers.update(id, len, evicted);
    }
}

/// Reads into `buf` until `deadline`; `Ok(None)` when the deadline passed first.
async fn read_until<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    deadline: Option<Instant>,
) -> std::io::Result<Option<usize>> {
    match deadline {
        None => stream.read_buf(buf).await.map(Some),
        Some(at) => match tokio::time::timeout_at(at, stream.read_buf(buf)).await {
            Ok(read) => read.map(Some),
            Err(_) => Ok(None),
        },
    }
}
