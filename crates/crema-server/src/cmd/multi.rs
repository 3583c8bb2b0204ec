//! Transactions: MULTI, EXEC, DISCARD, WATCH, UNWATCH, as Redis defines them.
//!
//! After MULTI a connection's commands are queued, answered `+QUEUED`, and nothing runs until
//! EXEC; the connection never gathers them into a pipelined batch. Only EXEC, DISCARD, MULTI
//! (an error), WATCH (an error), QUIT and RESET run at once, as in Redis. A command that cannot
//! be queued (unknown, wrong arity, not authenticated, not allowed in a transaction, the queue
//! over the size limit) answers its error and marks the transaction, and EXEC then answers
//! `-EXECABORT` and runs nothing. Argument errors that Redis finds only when the command runs
//! (a bad option, a non-integer) are found at EXEC and answered as elements of its array.
//!
//! EXEC prepares every queued command with the ordinary per-command code (`write::prepare`,
//! `write::prepare_read`) and proposes them as one `CacheCommand::Transaction`, one Raft entry,
//! with the watched keys: apply decides the watches and evaluates reads at the transaction's
//! place in the log (`crema::consensus::transaction`), and each output is rendered with the
//! command's own [`Render`]. Commands that do not touch keys (PING, ECHO, TIME, INFO, CONFIG,
//! CLIENT, ...) run on this node once the transaction is applied, their replies at their places.
//! KEYS, SCAN, RANDOMKEY, DBSIZE and WAIT read the whole keyspace or wait on replicas, and OBJECT
//! and MEMORY look at how a value is kept; they have no apply-time form: they are refused in a transaction (`Command not allowed inside a
//! transaction`, which aborts it). With several shards, FLUSHALL and FLUSHDB are refused in a
//! transaction too (they empty every shard, which no single shard's log entry can do), and so is
//! a command whose keys are in another shard than the transaction's first (`-CROSSSLOT`).
//!
//! WATCH takes a read barrier whatever the connection's read mode (a watch must see every
//! acknowledged write), then records for each key this node's applied index, read before the
//! key, and whether the key is live. EXEC carries that; see `crema::consensus::versions` for
//! what counts as a change. EXEC, DISCARD and RESET forget the watches, as does closing the
//! connection (the session goes).
//!
//! Size: the queue may hold at most `max-key-bytes + max-value-bytes` of arguments, and the
//! transaction's encoding the same (it must fit where the largest single write fits); a
//! transaction's reply may carry as many bytes of values. See the README's limits.

use std::collections::HashSet;

use bytes::Bytes;
use crema::consensus::command::CommandLimits;
use crema::{ApplyOutput, CacheCommand, Transaction, TxStep, WatchedKey};

use super::error::CROSSSLOT;
use super::write::{self, PreparedRead, Render};
use super::{check, unknown_command, Call, CmdError, Kind, Session, COMMANDS};
use crate::resp::Reply;
use crate::server::ServerState;

/// Bytes counted per queued argument besides its own, so many tiny commands are bounded too.
const ARG_OVERHEAD_BYTES: usize = 16;

/// A connection's transaction state.
#[derive(Debug, Default)]
pub struct TxState {
    /// The commands queued since MULTI (none outside a transaction).
    queue: Option<Queue>,
    /// The keys WATCHed since the last EXEC, DISCARD or UNWATCH.
    watched: Vec<WatchedKey>,
    /// The same keys, to find one at once (found from outside: a WATCH of 100,000 keys looked
    /// each up in the list, minutes of a runtime worker), and their bytes.
    watched_keys: HashSet<Bytes>,
    watched_bytes: usize,
}

#[derive(Debug, Default)]
struct Queue {
    /// Each command's position in [`COMMANDS`] and its arguments.
    commands: Vec<(usize, Vec<Bytes>)>,
    bytes: usize,
    /// A command could not be queued: EXEC answers EXECABORT.
    failed: bool,
    /// The shard every queued key is in (with several shards a transaction may touch one only,
    /// as in Redis Cluster).
    shard: Option<crema::ShardId>,
}

impl TxState {
    /// Whether the connection is between MULTI and EXEC.
    pub fn in_multi(&self) -> bool {
        self.queue.is_some()
    }

    /// How many commands are queued (none outside MULTI), for `CLIENT INFO`'s `multi=`.
    pub fn queued_count(&self) -> Option<usize> {
        self.queue.as_ref().map(|q| q.commands.len())
    }

    /// What the queued commands hold (`CLIENT LIST`'s `multi-mem`).
    pub fn queued_bytes(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.bytes)
    }

    /// What the queue and the watched keys hold: counted with the connection's query buffer,
    /// under the node's cap on all of them (found from outside: 300 connections with full
    /// queues took a node to 3.4 GB, counted nowhere).
    pub fn held_bytes(&self) -> usize {
        self.queued_bytes() + self.watched_bytes
    }

    /// Whether the command at `index` in [`COMMANDS`] (`None`: unknown) is to be queued rather
    /// than run now.
    pub fn queues(&self, index: Option<usize>) -> bool {
        self.in_multi() && !index.is_some_and(|i| runs_at_once(COMMANDS[i].kind))
    }

    /// Forgets the queue and the watches (RESET).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// The answer for a command that runs at once inside MULTI (`EXEC`, `DISCARD`, ...) but
/// failed its checks (`EXEC x`): the transaction fails, as in Redis, and an `EXEC` that failed
/// them discards it. Found from outside: after `EXEC x` the transaction stayed open, and the
/// next `EXEC` ran it.
pub(super) fn refused_at_once(
    state: &ServerState,
    session: &mut Session,
    kind: Kind,
    refused: CmdError,
) -> Reply {
    if kind == Kind::Exec {
        session.tx.reset();
        // Redis's words: the error without its `ERR` (a `NOPERM` keeps its code).
        let text = refused.to_reply(state).error_text().unwrap_or_default().to_owned();
        let text = text.strip_prefix("ERR ").unwrap_or(&text);
        return Reply::Error(format!("EXECABORT Transaction discarded because of: {text}"));
    }
    if let Some(queue) = session.tx.queue.as_mut() {
        queue.failed = true;
    }
    refused.to_reply(state)
}

/// Commands that run at once even inside MULTI (Redis's list).
fn runs_at_once(kind: Kind) -> bool {
    matches!(kind, Kind::Exec | Kind::Discard | Kind::Multi | Kind::Watch | Kind::Quit | Kind::Reset)
}

/// Commands that have no apply-time form (see the module docs).
fn refused_in_multi(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::Keys
            | Kind::Scan
            | Kind::RandomKey
            | Kind::DbSize
            | Kind::Wait
            | Kind::Acl
            | Kind::Cluster
            | Kind::Object
            | Kind::Memory
    )
}

/// The most bytes a transaction may carry (see the module docs).
fn size_limit(state: &ServerState) -> usize {
    let config = state.cache.config();
    config.max_key_bytes + config.max_value_bytes
}

/// Queues the request `args` (position `index` in [`COMMANDS`], `None`: unknown): `+QUEUED`,
/// or the reason it cannot be queued, which marks the transaction.
pub(super) fn queue(
    state: &ServerState,
    session: &mut Session,
    args: Vec<Bytes>,
    index: Option<usize>,
) -> Reply {
    let refused = match index {
        None => Err(unknown_command(state, session, &args)),
        Some(i) => {
            let spec = &COMMANDS[i];
            session.last_command = spec.name;
            let checked =
                check(state, spec, session, &args, true).and_then(|()| spec.check_subcommand(&args));
            checked.map_err(|e| e.to_reply(state)).and_then(|()| {
                if refused_in_multi(spec.kind) {
                    Err(Reply::err("Command not allowed inside a transaction"))
                } else {
                    Ok(i)
                }
            })
        }
    };
    let limit = size_limit(state);
    let queue = session.tx.queue.as_mut().expect("queue is called inside MULTI only");
    match refused {
        Err(reply) => {
            queue.failed = true;
            reply
        }
        Ok(_) if queue.failed => Reply::Simple("QUEUED"),
        Ok(i) => {
            let router = state.cache.router();
            if router.num_shards() > 1 && matches!(COMMANDS[i].kind, Kind::FlushAll | Kind::FlushDb) {
                // It empties every shard, which no one shard's log can do atomically.
                queue.failed = true;
                return Reply::err(format!(
                    "{} inside a transaction is not allowed with several shards: it would not be atomic across them",
                    COMMANDS[i].name.to_uppercase()
                ));
            }
            if router.num_shards() > 1 {
                let crossed = match super::cluster::key_shard(state, &COMMANDS[i], &args) {
                    Ok(Some((shard, _))) => *queue.shard.get_or_insert(shard) != shard,
                    Ok(None) => false,
                    Err(_) => true,
                };
                if crossed {
                    queue.failed = true;
                    return Reply::Error(CROSSSLOT.into());
                }
            }
            queue.bytes += args.iter().map(|a| a.len() + ARG_OVERHEAD_BYTES).sum::<usize>();
            if queue.bytes > limit {
                // Nothing of it will run: free what it holds.
                *queue = Queue { failed: true, ..Queue::default() };
                return Reply::err(format!(
                    "transaction too large: its commands exceed {limit} bytes (max-key-bytes + max-value-bytes)"
                ));
            }
            queue.commands.push((i, args.iter().map(crate::resp::detached).collect()));
            Reply::Simple("QUEUED")
        }
    }
}

pub(super) async fn run(kind: Kind, call: &mut Call<'_>) -> Result<Reply, CmdError> {
    let tx = &mut call.session.tx;
    match kind {
        Kind::Multi if tx.in_multi() => Err(CmdError::Invalid("MULTI calls can not be nested".into())),
        Kind::Multi => {
            // With several shards, the watched keys' shard (when they are in one) is the
            // transaction's: a queued command on another answers -CROSSSLOT at once.
            let router = call.state.cache.router();
            let mut watched = tx.watched.iter().map(|w| router.shard_for_key(&w.key));
            let first = watched.next().filter(|_| router.num_shards() > 1);
            let shard = first.filter(|f| watched.all(|s| s == *f));
            tx.queue = Some(Queue { shard, ..Queue::default() });
            Ok(Reply::OK)
        }
        Kind::Discard if !tx.in_multi() => Err(CmdError::Invalid("DISCARD without MULTI".into())),
        Kind::Discard | Kind::Unwatch => {
            // UNWATCH inside MULTI is queued, and EXEC answers it (see `run_local`).
            tx.reset();
            Ok(Reply::OK)
        }
        Kind::Watch if tx.in_multi() => Err(CmdError::Invalid("WATCH inside MULTI is not allowed".into())),
        Kind::Watch => watch(call).await,
        Kind::Exec => exec(call).await,
        _ => unreachable!("not a transaction command: {kind:?}"),
    }
}

async fn watch(call: &mut Call<'_>) -> Result<Reply, CmdError> {
    // With several shards a transaction runs in one (Redis Cluster's rule, by slot there): the
    // keys of one WATCH must be in one shard, as Redis Cluster refuses one WATCH across slots.
    // Separate WATCHes may name several (Redis takes them); EXEC then refuses the transaction.
    let router = call.state.cache.router();
    if router.num_shards() > 1 {
        let mut shards = call.args[1..].iter().map(|k| router.shard_for_key(k));
        let first = shards.next();
        if shards.any(|s| Some(s) != first) {
            return Err(CmdError::CrossSlot);
        }
    }
    // The keys' shards only: found from outside, WATCH through a node whose disk was full
    // waited for the barrier of every shard, also of those it could not follow, and timed out.
    if !call.session.barrier_done {
        let mut shards: Vec<_> = call.args[1..].iter().map(|k| router.shard_for_key(k)).collect();
        shards.sort_unstable();
        shards.dedup();
        call.state.cache.read_barrier_for_shards(&shards).await?;
    }
    // The watches travel in the transaction's entry: more than it may carry could never EXEC.
    let limit = size_limit(call.state);
    let tx = &call.session.tx;
    let adding: usize = call.args[1..]
        .iter()
        .filter(|k| !tx.watched_keys.contains(*k))
        .map(|k| k.len() + ARG_OVERHEAD_BYTES)
        .sum();
    if tx.watched_bytes + adding > limit {
        return Err(CmdError::Invalid(format!(
            "the watched keys would be {} bytes, more than a transaction may carry ({limit} bytes: max-key-bytes + max-value-bytes)",
            tx.watched_bytes + adding
        )));
    }
    for (i, key) in call.args[1..].iter().enumerate() {
        if !call.session.tx.watched_keys.contains(key) {
            // The index of the key's shard, then the key: read where the shard is held.
            let (seen_index, live) = call.state.cache.watch_key(key).await?;
            let key = crate::resp::detached(key);
            call.session.tx.watched_keys.insert(key.clone());
            call.session.tx.watched_bytes += key.len() + ARG_OVERHEAD_BYTES;
            call.session.tx.watched.push(WatchedKey { key, seen_index, live });
        }
        // Held shards answer at once: let the worker's other tasks run now and then.
        if i % 1024 == 1023 {
            tokio::task::yield_now().await;
        }
    }
    Ok(Reply::OK)
}

/// What answers one queued command in EXEC's array.
enum Slot {
    /// The output of the transaction's next step, rendered.
    Step(Render),
    /// An answer found before proposing (an argument error).
    Ready(Reply),
    /// A command that touches no key, run here after the transaction.
    Local(Kind, Vec<Bytes>),
}

async fn exec(call: &mut Call<'_>) -> Result<Reply, CmdError> {
    let Some(queue) = call.session.tx.queue.take() else {
        return Err(CmdError::Invalid("EXEC without MULTI".into()));
    };
    let watches = std::mem::take(&mut call.session.tx.watched);
    call.session.tx.watched_keys = HashSet::new();
    call.session.tx.watched_bytes = 0;
    if queue.failed {
        return Ok(Reply::Error("EXECABORT Transaction discarded because of previous errors.".into()));
    }
    let (slots, steps) = plan(call, queue.commands);
    let outputs = if steps.is_empty() && watches.is_empty() {
        Vec::new()
    } else {
        let max_reply_bytes = size_limit(call.state) as u64;
        let transaction = Transaction { watches, steps, max_reply_bytes };
        match call.execute_raw(CacheCommand::Transaction(transaction)).await? {
            ApplyOutput::Exec(Some(outputs)) => outputs,
            ApplyOutput::Exec(None) => return Ok(Reply::NullArray),
            _ => return Err(CmdError::Invalid(super::write::UNEXPECTED_OUTPUT.into())),
        }
    };
    let mut outputs = outputs.into_iter();
    let mut replies = Vec::with_capacity(slots.len());
    for slot in slots {
        replies.push(match slot {
            Slot::Step(render) => match outputs.next() {
                Some(out) => render.reply_off_runtime(out).await.unwrap_or_else(|e| e.to_reply(call.state)),
                None => CmdError::Invalid(super::write::UNEXPECTED_OUTPUT.into()).to_reply(call.state),
            },
            Slot::Ready(reply) => reply,
            Slot::Local(kind, args) => run_local(call, kind, args).await,
        });
    }
    Ok(Reply::Array(replies))
}

/// Prepares each queued command: the transaction's steps, and what answers each command.
fn plan(call: &mut Call<'_>, commands: Vec<(usize, Vec<Bytes>)>) -> (Vec<Slot>, Vec<TxStep>) {
    let config = call.state.cache.config();
    let limits =
        CommandLimits { max_key_bytes: config.max_key_bytes, max_value_bytes: config.max_value_bytes };
    let mut slots = Vec::with_capacity(commands.len());
    let mut steps = Vec::with_capacity(commands.len());
    for (index, args) in commands {
        let kind = COMMANDS[index].kind;
        // Checked again, as Redis 7 does: rules changed since the command was queued apply to
        // it (found from outside: a user whose key patterns were narrowed still read and wrote
        // the keys it had lost through the commands it had queued before).
        if let Err(e) = call.state.acl.check(call.session, &COMMANDS[index], &args, true) {
            slots.push(Slot::Ready(rules_changed(call.state, e)));
            continue;
        }
        let queued = Call { state: call.state, session: &mut *call.session, args };
        let prepared = write::prepare(kind, &queued).and_then(|write| match write {
            Some(write) => Ok(Some((TxStep::Write(write.command), write.render))),
            None => Ok(write::prepare_read(kind, &queued)?
                .map(|PreparedRead { read, render }| (TxStep::Read(read), render))),
        });
        let checked = prepared.and_then(|step| {
            match &step {
                Some((TxStep::Write(command), _)) => command.validate(&limits)?,
                Some((TxStep::Read(read), _)) => read.validate(&limits)?,
                None => {}
            }
            Ok(step)
        });
        slots.push(match checked {
            Ok(Some((step, render))) => {
                steps.push(step);
                Slot::Step(render)
            }
            Ok(None) => Slot::Local(kind, queued.args),
            Err(e) => Slot::Ready(e.to_reply(call.state)),
        });
    }
    (slots, steps)
}

/// The answer for a queued command its user may no longer run, in Redis's words.
fn rules_changed(state: &ServerState, refused: CmdError) -> Reply {
    match refused {
        CmdError::NoPermCommand { .. } | CmdError::NoPermKey => Reply::Error(format!(
            "NOPERM ACLs rules changed between the moment the transaction was accumulated and the EXEC call. \
             This command is no longer allowed for the following reason: {refused}"
        )),
        other => other.to_reply(state),
    }
}

/// Runs a queued command that touches no key, as it would run outside a transaction.
async fn run_local(call: &mut Call<'_>, kind: Kind, args: Vec<Bytes>) -> Reply {
    if kind == Kind::Unwatch {
        // EXEC has already forgotten the watches.
        return Reply::OK;
    }
    let mut local = Call { state: call.state, session: &mut *call.session, args };
    super::dispatch_keyless(kind, &mut local).await.unwrap_or_else(|e| e.to_reply(call.state))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_runs_at_once_what_is_refused_and_what_is_queued() {
        let kind = |name: &[u8]| super::super::lookup(name).unwrap().kind;
        for name in [&b"exec"[..], b"discard", b"multi", b"watch", b"quit", b"reset"] {
            assert!(runs_at_once(kind(name)), "{}", String::from_utf8_lossy(name));
        }
        for name in [&b"keys"[..], b"scan", b"randomkey", b"dbsize", b"wait", b"object", b"memory"] {
            assert!(refused_in_multi(kind(name)), "{}", String::from_utf8_lossy(name));
        }
        for name in [&b"set"[..], b"get", b"ping", b"unwatch", b"flushall", b"ttl", b"hello"] {
            assert!(!runs_at_once(kind(name)) && !refused_in_multi(kind(name)));
        }
    }

    #[test]
    fn only_a_transaction_queues() {
        let mut tx = TxState::default();
        let set = super::super::lookup_index(b"set");
        assert!(!tx.queues(set) && !tx.queues(None));
        tx.queue = Some(Queue::default());
        assert!(tx.queues(set) && tx.queues(None), "unknown commands are refused by the queue");
        assert!(!tx.queues(super::super::lookup_index(b"exec")));
        tx.reset();
        assert!(!tx.in_multi());
    }
}
