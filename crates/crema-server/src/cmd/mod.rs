//! Commands: the table ([`table`]), the dispatcher ([`run`]) and one file per command family
//! (families share their parsing: every SET variant lives in `set`, every INCR in `incr`).
//!
//! A command gets a [`Call`]: its arguments, the connection's [`Session`] and the node's shared
//! [`ServerState`]. Reads go through [`Call::read_barrier`] first (Read-Index unless the
//! connection chose local reads); writes are *prepared* into one [`crema::CacheCommand`] and a
//! way to render its output ([`write`](mod@write)), then proposed alone ([`Call::execute_raw`]) or, from a
//! pipeline, with the writes around them as one batch ([`run_writes`]). Anything that depends on
//! the current value is decided in apply.
//! Between MULTI and EXEC, commands are queued instead and run as one transaction ([`multi`]).
//! Failures are [`CmdError`]s, turned into replies in one place ([`CmdError::to_reply`]).

pub(crate) mod acl;
mod clients;
mod cluster;
mod connection;

pub(crate) use connection::{client_line, constant_time_eq};
pub mod error;
mod get;
mod incr;
mod introspect;
mod keyspace;
pub mod lcs;
pub mod multi;
mod read_view;
mod scan;
mod server;
mod set;
pub mod table;
pub mod write;

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use crema::consensus::command::CommandLimits;
use crema::{ApplyOutput, CacheCommand, Keyspace};

pub use error::CmdError;
pub use table::{lookup, lookup_index, CommandSpec, Kind, COMMANDS};

use crate::acl::SessionUser;
use crate::resp::{Protocol, Reply};
use crate::server::ServerState;

/// How a connection's reads are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// Every read reflects every write acknowledged before it (Read-Index). The default.
    #[default]
    Linearizable,
    /// Reads are served from this node's cache at once: fastest, may lag the leader by a few
    /// milliseconds on a follower (your own writes are always visible). `READONLY` selects it.
    Local,
}

/// Which connections of a sharded crema are answered as by Redis Cluster (`-MOVED` for a key
/// whose shard another node leads, `-CROSSSLOT` for keys of several shards) rather than
/// forwarded (`--cluster-redirects`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Redirects {
    /// Connections that asked for the slot map (`CLUSTER SLOTS`, `SHARDS`, `NODES`): cluster
    /// clients there, plain clients served everywhere. The default.
    #[default]
    SlotMap,
    /// Every connection, as Redis Cluster answers (and KEYS, SCAN, DBSIZE and RANDOMKEY cover
    /// the shards the node leads: `Call::primary_scope`): for deployments whose clients are all
    /// cluster-aware. Cluster clients read the slot map on one connection and send commands on
    /// others, which `slot-map` forwards without a word, so they never learn that a
    /// leadership moved and keep sending its keys to the old leader (one hop more each).
    Always,
}

/// The state of one client connection.
#[derive(Debug)]
pub struct Session {
    /// Unique id of the connection on this node (`CLIENT ID`).
    pub id: u64,
    /// The client's address.
    pub addr: SocketAddr,
    /// The address the client reached this node at (the local end of its connection).
    pub local_addr: Option<SocketAddr>,
    /// `CLIENT SETNAME`.
    pub name: Option<Bytes>,
    /// `CLIENT SETINFO LIB-NAME` / `LIB-VER`.
    pub lib: (Option<Bytes>, Option<Bytes>),
    /// RESP2 or RESP3 (`HELLO`).
    pub protocol: Protocol,
    /// How reads are served.
    pub read_mode: ReadMode,
    /// True once `AUTH` succeeded, or when the `default` user needs no password.
    pub authenticated: bool,
    /// The user logged in as (none before `AUTH`).
    pub user: Option<SessionUser>,
    /// Failed `AUTH` attempts on this connection (it is closed after a few).
    pub auth_failures: u32,
    /// Set when the connection must close after the current reply (`QUIT`).
    pub quit: bool,
    /// When the connection was accepted.
    pub created: Instant,
    /// The last command run (`CLIENT INFO`).
    pub last_command: &'static str,
    /// MULTI's queue and the keys WATCHed.
    pub tx: multi::TxState,
    /// The client asked for the slot map: keys of shards led elsewhere get `-MOVED` (see
    /// `cmd::cluster`).
    pub cluster_mode: bool,
    /// The keys after the last SCAN page this connection was answered (see `scan`).
    scan: Option<scan::ScanWindow>,
    /// Whether a read barrier over every shard already covers the rest of the current batch of
    /// requests.
    barrier_done: bool,
    /// The shards a read barrier already covers for the rest of the batch (one key's barrier
    /// covers its shard only).
    barrier_shards: Vec<crema::ShardId>,
    /// When the current command started: the end of the previous one in the batch (commands of
    /// a batch run back to back), so the clock is read once per command.
    clock: Instant,
}

impl Session {
    /// A new session, logged in as `user` (none: it must authenticate).
    pub fn new(id: u64, addr: SocketAddr, user: Option<SessionUser>, read_mode: ReadMode) -> Self {
        Self {
            id,
            addr,
            local_addr: None,
            name: None,
            lib: (None, None),
            protocol: Protocol::Resp2,
            read_mode,
            authenticated: user.is_some(),
            user,
            auth_failures: 0,
            quit: false,
            created: Instant::now(),
            last_command: "NULL",
            tx: multi::TxState::default(),
            cluster_mode: false,
            scan: None,
            barrier_done: false,
            barrier_shards: Vec::new(),
            clock: Instant::now(),
        }
    }

    /// Drops the window of a scan in progress (RESET): its next page is walked for again.
    pub fn forget_scan(&mut self) {
        self.scan = None;
    }

    /// Called when a new batch of requests has been read from the socket: reads in it need a
    /// fresh barrier. Requests that arrived together began before one barrier taken after their
    /// arrival, so a single barrier serves every read of the batch.
    pub fn new_batch(&mut self) {
        self.barrier_done = false;
        self.barrier_shards.clear();
        self.clock = Instant::now();
    }
}

/// One command being run.
pub struct Call<'a> {
    /// The node.
    pub state: &'a ServerState,
    /// The connection.
    pub session: &'a mut Session,
    /// The arguments, the command name first.
    pub args: Vec<Bytes>,
}

impl Call<'_> {
    /// Argument `i` (the table's arity check guarantees it exists).
    pub fn arg(&self, i: usize) -> &Bytes {
        &self.args[i]
    }

    /// Argument `i` upper-cased, for matching option names.
    pub fn option(&self, i: usize) -> String {
        String::from_utf8_lossy(&self.args[i]).to_ascii_uppercase()
    }

    /// The local caches of every shard, to read after [`Self::read_barrier`].
    pub fn storage(&self) -> &Keyspace {
        self.state.cache.storage()
    }

    /// Makes the following local reads linearizable, unless the connection reads locally.
    pub async fn read_barrier(&mut self) -> Result<(), CmdError> {
        if self.session.read_mode == ReadMode::Linearizable && !self.session.barrier_done {
            self.state.cache.read_barrier().await?;
            self.session.barrier_done = true;
        }
        Ok(())
    }

    /// [`Self::read_barrier`] for the shards of the keys `self.args[keys]` only: what reading
    /// those keys needs (one Read-Index round per shard not yet covered in this batch).
    pub async fn read_barrier_keys(&mut self, keys: std::ops::Range<usize>) -> Result<(), CmdError> {
        if self.session.read_mode != ReadMode::Linearizable || self.session.barrier_done {
            return Ok(());
        }
        let router = self.state.cache.router();
        if router.num_shards() == 1 {
            return self.read_barrier().await;
        }
        let mut needed: Vec<crema::ShardId> = Vec::new();
        for key in &self.args[keys] {
            let shard = router.shard_for_key(key);
            if !self.session.barrier_shards.contains(&shard) && !needed.contains(&shard) {
                needed.push(shard);
            }
        }
        if needed.is_empty() {
            return Ok(());
        }
        self.state.cache.read_barrier_for_shards(&needed).await?;
        self.session.barrier_shards.extend(needed);
        Ok(())
    }

    /// Applies `command` through Raft; answers its output (a failed apply included).
    pub async fn execute_raw(&self, command: CacheCommand) -> Result<ApplyOutput, CmdError> {
        Ok(self.state.cache.execute(command).await?)
    }

    /// Proposes a connection's pipelined writes, each answered on its own (see
    /// `DistributedCache::execute_each`).
    pub async fn execute_each(&self, commands: Vec<CacheCommand>) -> Result<crema::EachAnswer, CmdError> {
        Ok(self.state.cache.execute_each(commands).await?)
    }

    /// The largest value this node accepts.
    pub fn max_value_bytes(&self) -> u64 {
        self.state.cache.config().max_value_bytes as u64
    }
}

/// Runs the request `args` on `session`; answers the reply (errors included). `index` is the
/// command's position in [`COMMANDS`] as [`step`] found it (`None`: unknown command).
pub async fn run(
    state: &ServerState,
    session: &mut Session,
    args: Vec<Bytes>,
    index: Option<usize>,
) -> Reply {
    let reply = match index {
        _ if session.tx.queues(index) => multi::queue(state, session, args, index),
        None => unknown_command(state, session, &args),
        Some(i) => {
            let spec = &COMMANDS[i];
            session.last_command = spec.name;
            match check(state, spec, session, &args, true) {
                Err(e) if session.tx.in_multi() => multi::refused_at_once(state, session, spec.kind, e),
                Err(e) => e.to_reply(state),
                Ok(()) => {
                    let mut call = Call { state, session: &mut *session, args };
                    dispatch(spec.kind, &mut call).await.unwrap_or_else(|e| e.to_reply(state))
                }
            }
        }
    };
    let now = Instant::now();
    state.metrics.observe_command(index, now.duration_since(session.clock), reply.error_text());
    if let (Some(i), Reply::Array(answers)) = (index, &reply) {
        if matches!(COMMANDS[i].kind, Kind::Exec) {
            answers
                .iter()
                .filter_map(Reply::error_text)
                .for_each(|text| state.metrics.observe_inner_error(text));
        }
    }
    session.clock = now;
    reply
}

/// Whether `session` may run `spec` with `args`: authenticated (unless the command needs no
/// login), the arity, then the user's ACL (see `crate::acl`).
fn check(
    state: &ServerState,
    spec: &CommandSpec,
    session: &mut Session,
    args: &[Bytes],
    log: bool,
) -> Result<(), CmdError> {
    if !session.authenticated && !spec.no_auth() {
        return Err(CmdError::NoAuth);
    }
    if !spec.arity_ok(args.len()) {
        return Err(CmdError::Arity(spec.name.to_owned()));
    }
    state.acl.check(session, spec, args, log)?;
    cluster::redirect(state, session, spec, args)
}

fn unknown_command(state: &ServerState, session: &Session, args: &[Bytes]) -> Reply {
    if !session.authenticated {
        return CmdError::NoAuth.to_reply(state);
    }
    let name = args.first().map(|n| String::from_utf8_lossy(n).into_owned()).unwrap_or_default();
    // Each argument followed by a space, as Redis writes them (no argument: nothing).
    let quoted: String =
        args.iter().skip(1).take(8).map(|a| format!("'{}' ", String::from_utf8_lossy(a))).collect();
    CmdError::Unknown { name, args: quoted }.to_reply(state)
}

async fn dispatch(kind: Kind, call: &mut Call<'_>) -> Result<Reply, CmdError> {
    use Kind::*;
    let prepared = match write::prepare(kind, call) {
        Err(e) if get::expiry_checked_after_lookup(kind, &e) => return get::missing_or(call, e).await,
        prepared => prepared?,
    };
    if let Some(prepared) = prepared {
        let render = prepared.render;
        return render.reply(call.execute_raw(prepared.command).await?);
    }
    match kind {
        Multi | Exec | Discard | Watch | Unwatch => multi::run(kind, call).await,
        Get | MGet | StrLen | GetRange | GetEx | Lcs => get::run(kind, call).await,
        Exists | Touch | Type | Keys | Scan | RandomKey | Ttl | PTtl | ExpireTime | PExpireTime => {
            keyspace::run(kind, call).await
        }
        Object | Memory => introspect::run(kind, call).await,
        _ => dispatch_keyless(kind, call).await,
    }
}

/// The commands about the connection and the node (they touch no key); EXEC runs these itself
/// (see [`multi`]), so this never reaches back to [`dispatch`].
async fn dispatch_keyless(kind: Kind, call: &mut Call<'_>) -> Result<Reply, CmdError> {
    use Kind::*;
    match kind {
        Ping | Echo | Hello | Auth | Select | Quit | Reset | Client | ReadOnly | ReadWrite | Asking => {
            connection::run(kind, call).await
        }
        Command | Config | Info | DbSize | Time | LastSave | Wait | Lolwut | Role => {
            server::run(kind, call).await
        }
        Acl => acl::run(call).await,
        Cluster => cluster::run(call).await,
        _ => unreachable!("{kind:?} touches keys: a write prepared above, or a read"),
    }
}

/// What the connection does with one request when it gathers pipelined writes.
pub enum Step {
    /// A write, prepared: it may join the run of writes being gathered.
    Write {
        /// Its position in [`COMMANDS`].
        index: usize,
        /// The write.
        write: write::PreparedWrite,
    },
    /// Answered without running (a bad argument, over a limit).
    Reply {
        /// Its position in [`COMMANDS`].
        index: usize,
        /// The reply.
        reply: Reply,
    },
    /// Anything else (reads, connection and server commands, unknown commands, arity and
    /// authentication errors): run it with [`run`] (its position in [`COMMANDS`] is
    /// given) once the writes before it are answered.
    Run(Vec<Bytes>, Option<usize>),
}

/// Sorts request `args` for the connection: a prepared write, an immediate reply, or a command
/// to run.
pub fn step(state: &ServerState, session: &mut Session, args: Vec<Bytes>) -> Step {
    let Some(index) = args.first().and_then(|name| lookup_index(name)) else { return Step::Run(args, None) };
    let spec = &COMMANDS[index];
    if !spec.is_write() || session.tx.in_multi() || check(state, spec, session, &args, false).is_err() {
        return Step::Run(args, Some(index));
    }
    session.last_command = spec.name;
    let call = Call { state, session, args };
    let config = state.cache.config();
    let limits =
        CommandLimits { max_key_bytes: config.max_key_bytes, max_value_bytes: config.max_value_bytes };
    match write::prepare(spec.kind, &call) {
        Ok(Some(write)) => match write.command.validate(&limits) {
            Ok(()) => Step::Write { index, write },
            Err(e) => Step::Reply { index, reply: CmdError::from(e).to_reply(state) },
        },
        Ok(None) => Step::Run(call.args, Some(index)),
        Err(e) if get::expiry_checked_after_lookup(spec.kind, &e) => Step::Run(call.args, Some(index)),
        Err(e) => Step::Reply { index, reply: e.to_reply(state) },
    }
}

/// Proposes `writes` (gathered from one connection's pipeline, in order) together and answers
/// their replies in the same order.
pub async fn run_writes(
    state: &ServerState,
    session: &mut Session,
    writes: Vec<(usize, write::PreparedWrite)>,
) -> Vec<Reply> {
    let (indexes, prepared): (Vec<usize>, Vec<write::PreparedWrite>) = writes.into_iter().unzip();
    let call = Call { state, session: &mut *session, args: Vec::new() };
    let replies = write::execute_all(&call, prepared).await;
    let now = Instant::now();
    let took = now.duration_since(session.clock);
    for (index, reply) in indexes.iter().zip(&replies) {
        state.metrics.observe_command(Some(*index), took, reply.error_text());
    }
    session.clock = now;
    replies
}

/// Records a reply made by [`step`] without running anything.
pub fn observe_reply(state: &ServerState, session: &mut Session, index: usize, reply: &Reply) {
    let now = Instant::now();
    state.metrics.observe_command(Some(index), now.duration_since(session.clock), reply.error_text());
    session.clock = now;
}

/// Parses an integer argument the way Redis does (canonical decimal `i64`).
pub fn parse_int(arg: &[u8]) -> Result<i64, CmdError> {
    crema::parse_i64(arg).ok_or(CmdError::NotInteger)
}

/// The reply for an optional value.
pub fn value_reply(value: Option<Bytes>) -> Reply {
    value.map_or(Reply::Null, Reply::Bulk)
}

/// The absolute expiry (unix ms) named by a SET/GETEX-style option: `EX` seconds, `PX`
/// milliseconds, `EXAT` unix seconds, `PXAT` unix milliseconds. The amount must be positive.
pub fn expiry_option(option: &str, amount: &[u8], command: &str) -> Result<u64, CmdError> {
    let invalid = || CmdError::InvalidExpire(command.to_owned());
    let amount = parse_int(amount)?;
    if amount <= 0 {
        return Err(invalid());
    }
    let now = crema::unix_now_ms() as i64;
    let at = match option {
        "EX" => amount.checked_mul(1000).and_then(|ms| ms.checked_add(now)),
        "PX" => amount.checked_add(now),
        "EXAT" => amount.checked_mul(1000),
        _ => Some(amount),
    };
    at.map(|at| at as u64).ok_or_else(invalid)
}
