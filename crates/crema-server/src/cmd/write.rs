//! Writes as data. Every write command is *prepared* into one [`CacheCommand`] and a [`Render`]
//! that turns its apply output into the reply, before anything is proposed. The dispatcher then
//! proposes it alone; the connection instead gathers a run of pipelined writes and proposes them
//! as one `CacheCommand::Batch` (one Raft entry, applied in the client's order), then renders
//! each reply.
//!
//! Reads have a data form too, a [`ReadCommand`] (prepared in `get` and `keyspace`): inside a
//! transaction it is evaluated in apply, outside one against the local cache, and [`Render`]
//! turns the output into the reply either way, so each command's reply is made in one place.

use bytes::Bytes;
use crema::{ApplyOutput, CacheCommand, ReadCommand};

use super::lcs::LcsQuery;
use super::{get, incr, keyspace, server, set, value_reply, Call, CmdError, Kind};
use crate::resp::Reply;
use crate::server::ServerState;

/// How a command's apply output (or a read's local output) becomes its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Render {
    /// `+OK`.
    Ok,
    /// An integer output as an integer.
    Int,
    /// A value output as a bulk string or null.
    Value,
    /// SET: `+OK` or null, or with GET the old value.
    Set {
        /// The GET option.
        return_old: bool,
    },
    /// SETNX: 1 if written, else 0.
    WrittenFlag,
    /// GETSET: the old value.
    OldValue,
    /// MGET: the values as an array.
    Values,
    /// GETRANGE: the inclusive range of the value (negative positions count from the end).
    Range {
        /// First position.
        start: i64,
        /// Last position.
        end: i64,
    },
    /// STRLEN: the value's length, 0 when absent.
    StrLen,
    /// EXISTS: how many of the keys are live.
    Exists,
    /// TYPE: `string` or `none`.
    Type,
    /// TTL, PTTL, EXPIRETIME or PEXPIRETIME (the kind says which).
    Ttl(Kind),
    /// LCS of the two values.
    Lcs(LcsQuery),
}

/// A read prepared as data.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedRead {
    /// What to read.
    pub read: ReadCommand,
    /// How to answer.
    pub render: Render,
}

/// Prepares `kind` if it is a read of keys that a transaction can evaluate in apply.
pub(super) fn prepare_read(kind: Kind, call: &Call<'_>) -> Result<Option<PreparedRead>, CmdError> {
    use Kind::*;
    match kind {
        Get | MGet | StrLen | GetRange | GetEx | Lcs => get::prepare_read(kind, call).map(Some),
        Exists | Touch | Type | Ttl | PTtl | ExpireTime | PExpireTime => {
            Ok(Some(keyspace::prepare_read(kind, call)))
        }
        _ => Ok(None),
    }
}

/// A prepared write.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedWrite {
    /// What to propose.
    pub command: CacheCommand,
    /// How to answer.
    pub render: Render,
}

impl PreparedWrite {
    pub(super) fn new(command: CacheCommand, render: Render) -> Self {
        Self { command, render }
    }

    /// Bytes of keys and values it carries (to bound a batch).
    pub fn command_bytes(&self) -> usize {
        use CacheCommand::*;
        match &self.command {
            Put { key, value, .. } | Set { key, value, .. } | Append { key, value, .. } => {
                key.len() + value.len()
            }
            SetRange { key, value, .. } => key.len() + value.len(),
            PutMany { pairs, .. } => pairs.iter().map(|(k, v)| k.len() + v.len()).sum(),
            Acl(_) | Placement(_) => 0,
            DeleteMany { keys } | Evict { keys } => keys.iter().map(|k| k.len()).sum(),
            Delete { key }
            | IncrBy { key, .. }
            | IncrByFloat { key, .. }
            | IncrByLongDouble { key, .. }
            | GetDel { key }
            | GetEx { key, .. } => key.len(),
            Expire { key, .. } | Persist { key } => key.len(),
            Copy { from, to, .. } => from.len() + to.len(),
            Clear => 0,
            Batch(commands) => commands.len(),
            Transaction(transaction) => transaction.steps.len(),
        }
    }

    /// What applying it may copy of stored values (APPEND and SETRANGE copy the whole value),
    /// and may add to the values it writes, as estimated for `crema-server`'s runs (see
    /// `server::connection`'s `MAX_RUN_COPIED_BYTES`); `grown`: what the writes before it in
    /// the same run may have added. A value's length is this node's copy of it, or the largest
    /// value allowed where this node holds no replica of the key's shard. None for writes that
    /// neither copy nor add.
    pub fn copies(&self, cache: &crema::DistributedCache, grown: usize) -> Option<(usize, usize)> {
        let stored = |key: &Bytes| {
            let held = cache.holds_shard(cache.router().shard_for_key(key));
            let len = if held {
                cache.storage().get_entry(key).map_or(0, |e| e.value.len())
            } else {
                cache.config().max_value_bytes
            };
            len.saturating_add(grown)
        };
        match &self.command {
            CacheCommand::Append { key, value, .. } => {
                Some((stored(key).saturating_add(value.len()), value.len()))
            }
            CacheCommand::SetRange { key, offset, value, .. } => {
                let end = usize::try_from(*offset).unwrap_or(usize::MAX).saturating_add(value.len());
                Some((stored(key).max(end), end))
            }
            CacheCommand::Put { value, .. } | CacheCommand::Set { value, .. } => Some((0, value.len())),
            CacheCommand::PutMany { pairs, .. } => Some((0, pairs.iter().map(|(_, v)| v.len()).sum())),
            CacheCommand::Copy { from, .. } => Some((0, stored(from))),
            _ => None,
        }
    }

    /// The key of a write whose reply is a stored value (GETDEL, GETEX, GETSET, SET with GET):
    /// that reply may be as large as the largest value.
    fn value_reply_key(&self) -> Option<&Bytes> {
        match (&self.render, &self.command) {
            (
                Render::Value | Render::OldValue | Render::Set { return_old: true },
                CacheCommand::GetDel { key }
                | CacheCommand::GetEx { key, .. }
                | CacheCommand::Set { key, .. },
            ) => Some(key),
            _ => None,
        }
    }
}

/// Splits a run of pipelined writes into the runs proposed one after the other, in order. A
/// run is one entry, and when its shard's leader is another node, that node sends all of its
/// outputs back in one peer frame: found from outside, three GETDELs of 8 MiB values pipelined
/// through a follower were applied and answered an error, their values gone. So the writes
/// whose replies are values another node sends back go in runs whose largest possible outputs
/// fit in a frame (one per run at the default `--max-value-bytes`); writes this node's
/// replicas lead stay in one run.
fn runs_whose_replies_fit(state: &ServerState, writes: Vec<PreparedWrite>) -> Vec<Vec<PreparedWrite>> {
    let cache = &state.cache;
    let largest = cache.config().max_value_bytes;
    let remote_value = |write: &PreparedWrite| {
        write
            .value_reply_key()
            .is_some_and(|key| cache.shard_leader(cache.router().shard_for_key(key)) != Some(cache.node_id()))
    };
    let bound: usize = writes.iter().filter(|w| remote_value(w)).map(|_| largest).sum();
    if bound <= crema::MAX_COMMAND_BYTES {
        return vec![writes];
    }
    let mut runs: Vec<Vec<PreparedWrite>> = vec![Vec::new()];
    let mut run_bound = 0;
    for write in writes {
        let adds = if remote_value(&write) { largest } else { 0 };
        let run = runs.last_mut().expect("a run");
        if !run.is_empty() && run_bound + adds > crema::MAX_COMMAND_BYTES {
            runs.push(Vec::new());
            run_bound = 0;
        }
        run_bound += adds;
        runs.last_mut().expect("a run").push(write);
    }
    runs
}

impl Render {
    /// [`Self::reply`], and LCS's, whose work may be large and runs off the client runtime
    /// (see `LcsQuery::answer`): EXEC renders its replies with it.
    ///
    /// # Errors
    /// As [`Self::reply`].
    pub async fn reply_off_runtime(self, out: ApplyOutput) -> Result<Reply, CmdError> {
        match (self, out) {
            (Render::Lcs(query), ApplyOutput::Values(values)) => {
                let mut values = values.into_iter().map(Option::unwrap_or_default);
                let (a, b) = (values.next().unwrap_or_default(), values.next().unwrap_or_default());
                query.answer(a, b).await
            }
            (render, out) => render.reply(out),
        }
    }

    /// The reply for `out`; a failed apply (INCR on text) is an error.
    pub fn reply(self, out: ApplyOutput) -> Result<Reply, CmdError> {
        Ok(match (self, out) {
            (_, ApplyOutput::Failed(e)) => return Err(e.into()),
            (Render::Ok, _) => Reply::OK,
            (Render::Int, ApplyOutput::Int(n)) => Reply::Integer(n),
            (Render::Int, ApplyOutput::Removed(removed)) => Reply::Integer(removed as i64),
            (Render::Value, ApplyOutput::Value(v)) => value_reply(v),
            (Render::Set { return_old: true }, ApplyOutput::Written { old, .. }) => value_reply(old),
            (Render::Set { return_old: false }, ApplyOutput::Written { written, .. }) => {
                if written {
                    Reply::OK
                } else {
                    Reply::Null
                }
            }
            (Render::WrittenFlag, ApplyOutput::Written { written, .. }) => Reply::Integer(written as i64),
            (Render::OldValue, ApplyOutput::Written { old, .. }) => value_reply(old),
            (Render::Value, ApplyOutput::Values(values)) => value_reply(values.into_iter().next().flatten()),
            (Render::Values, ApplyOutput::Values(values)) => {
                Reply::Array(values.into_iter().map(value_reply).collect())
            }
            (Render::Range { start, end }, ApplyOutput::Values(values)) => {
                let value = values.into_iter().next().flatten().unwrap_or_default();
                Reply::Bulk(get::substring(&value, start, end))
            }
            (Render::StrLen, ApplyOutput::Meta { keys, .. }) => {
                Reply::Integer(keys.first().copied().flatten().map_or(0, |m| m.len as i64))
            }
            (Render::Exists, ApplyOutput::Meta { keys, .. }) => {
                Reply::Integer(keys.iter().filter(|m| m.is_some()).count() as i64)
            }
            (Render::Type, ApplyOutput::Meta { keys, .. }) => {
                Reply::Simple(if keys.first().copied().flatten().is_some() { "string" } else { "none" })
            }
            (Render::Ttl(kind), ApplyOutput::Meta { at_ms, keys }) => {
                Reply::Integer(match keys.first().copied().flatten() {
                    None => -2,
                    Some(meta) => meta.expires_at_ms.map_or(-1, |at| keyspace::ttl_reply(kind, at, at_ms)),
                })
            }
            // Only a peer that lies (or a bug) answers a write with another command's output:
            // an error for this client, never a panic of the node.
            _ => return Err(CmdError::Invalid(UNEXPECTED_OUTPUT.into())),
        })
    }
}

/// What a client is told when the node that applied its write answered with an output the
/// write cannot produce.
pub(super) const UNEXPECTED_OUTPUT: &str =
    "the node that applied this write answered with an output it cannot produce (a peer that lies, or a bug); its outcome is unknown";

/// Prepares `kind` if it is a write; `None` for reads (GETEX without options included).
pub(super) fn prepare(kind: Kind, call: &Call<'_>) -> Result<Option<PreparedWrite>, CmdError> {
    use Kind::*;
    match kind {
        Set | SetNx | SetEx | PSetEx | GetSet | MSet | MSetNx => set::prepare(kind, call).map(Some),
        Incr | IncrBy | Decr | DecrBy | IncrByFloat | Append | SetRange => {
            incr::prepare(kind, call).map(Some)
        }
        GetDel | GetEx => get::prepare(kind, call),
        Del | Unlink | Expire | PExpire | ExpireAt | PExpireAt | Persist | Rename | RenameNx | Copy => {
            keyspace::prepare(kind, call).map(Some)
        }
        FlushDb | FlushAll => server::prepare_flush(call).map(Some),
        _ => Ok(None),
    }
}

/// The replies of `writes` proposed together: one proposal (a batch when there are several;
/// several in turn when the replies might not fit a peer frame), each output rendered in
/// order. When a proposal itself fails, each of its writes gets its error.
pub async fn execute_all(call: &Call<'_>, writes: Vec<PreparedWrite>) -> Vec<Reply> {
    let mut replies = Vec::with_capacity(writes.len());
    for run in runs_whose_replies_fit(call.state, writes) {
        replies.extend(execute_run(call, run).await);
    }
    replies
}

/// One proposal per shard (see `DistributedCache::execute_each`): a shard that fails answers
/// its own writes' replies only.
async fn execute_run(call: &Call<'_>, writes: Vec<PreparedWrite>) -> Vec<Reply> {
    let renders: Vec<Render> = writes.iter().map(|w| w.render).collect();
    let mut commands: Vec<CacheCommand> = writes.into_iter().map(|w| w.command).collect();
    let render =
        |(render, out): (Render, ApplyOutput)| render.reply(out).unwrap_or_else(|e| e.to_reply(call.state));
    if commands.len() == 1 {
        return match call.execute_raw(commands.pop().expect("one command")).await {
            Ok(out) => renders.into_iter().zip([out]).map(render).collect(),
            Err(e) => vec![e.to_reply(call.state)],
        };
    }
    let count = commands.len();
    match call.execute_each(commands).await {
        Ok(answer) if answer.outputs.len() == count => {
            let errors: Vec<Reply> =
                answer.errors.into_iter().map(|e| CmdError::from(e).to_reply(call.state)).collect();
            renders
                .into_iter()
                .zip(answer.outputs)
                .map(|(r, out)| match out {
                    Ok(out) => render((r, out)),
                    Err(e) => errors.get(e).cloned().unwrap_or_else(|| Reply::err(UNEXPECTED_OUTPUT)),
                })
                .collect()
        }
        Ok(_) => vec![CmdError::Invalid(UNEXPECTED_OUTPUT.into()).to_reply(call.state); count],
        Err(e) => vec![e.to_reply(call.state); count],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A forwarded write's output comes from a peer: one that does not fit the command is an
    /// error for its client (found in review: it was `unreachable!`, which ends the process).
    #[test]
    fn an_output_the_command_cannot_produce_is_an_error_not_a_panic() {
        assert!(matches!(Render::Int.reply(ApplyOutput::Value(None)), Err(CmdError::Invalid(_))));
        assert!(matches!(Render::Values.reply(ApplyOutput::Done), Err(CmdError::Invalid(_))));
        assert!(matches!(
            Render::Set { return_old: false }.reply(ApplyOutput::Int(1)),
            Err(CmdError::Invalid(_))
        ));
        assert_eq!(Render::Int.reply(ApplyOutput::Int(3)).unwrap(), Reply::Integer(3));
    }
}
