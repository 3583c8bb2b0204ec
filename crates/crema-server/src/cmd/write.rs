//! Writes as data. Every write command is *prepared* into one [`CacheCommand`] and a [`Render`]
//! that turns its apply output into the reply, before anything is proposed. The dispatcher then
//! proposes it alone; the connection instead gathers a run of pipelined writes and proposes them
//! as one `CacheCommand::Batch` (one Raft entry, applied in the client's order), then renders
//! each reply.

use crema::{ApplyOutput, CacheCommand};

use super::{get, incr, keyspace, server, set, value_reply, Call, CmdError, Kind};
use crate::resp::Reply;

/// How a write's apply output becomes its reply.
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
            DeleteMany { keys } | Evict { keys } => keys.iter().map(|k| k.len()).sum(),
            Delete { key }
            | IncrBy { key, .. }
            | IncrByFloat { key, .. }
            | GetDel { key }
            | GetEx { key, .. } => key.len(),
            Expire { key, .. } | Persist { key } => key.len(),
            Clear => 0,
            Batch(commands) => commands.len(),
        }
    }
}

impl Render {
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
            (render, out) => unreachable!("{render:?} cannot render {out:?}"),
        })
    }
}

/// Prepares `kind` if it is a write; `None` for reads (GETEX without options included).
pub(super) fn prepare(kind: Kind, call: &Call<'_>) -> Result<Option<PreparedWrite>, CmdError> {
    use Kind::*;
    match kind {
        Set | SetNx | SetEx | PSetEx | GetSet | MSet | MSetNx => set::prepare(kind, call).map(Some),
        Incr | IncrBy | Decr | DecrBy | IncrByFloat | Append | SetRange => {
            incr::prepare(kind, call).map(Some)
        }
        GetDel | GetEx => get::prepare(kind, call),
        Del | Unlink | Expire | PExpire | ExpireAt | PExpireAt | Persist => {
            keyspace::prepare(kind, call).map(Some)
        }
        FlushDb | FlushAll => server::prepare_flush(call).map(Some),
        _ => Ok(None),
    }
}

/// The replies of `writes` proposed together: one proposal (a batch when there are several),
/// each output rendered in order. When the proposal itself fails, every write gets its error.
pub async fn execute_all(call: &Call<'_>, writes: Vec<PreparedWrite>) -> Vec<Reply> {
    let renders: Vec<Render> = writes.iter().map(|w| w.render).collect();
    let mut commands: Vec<CacheCommand> = writes.into_iter().map(|w| w.command).collect();
    let outputs = if commands.len() == 1 {
        call.execute_raw(commands.pop().expect("one command")).await.map(|out| vec![out])
    } else {
        match call.execute_raw(CacheCommand::Batch(commands)).await {
            Ok(ApplyOutput::Batch(outputs)) => Ok(outputs),
            Ok(other) => unreachable!("a batch answered {other:?}"),
            Err(e) => Err(e),
        }
    };
    match outputs {
        Ok(outputs) => renders
            .into_iter()
            .zip(outputs)
            .map(|(render, out)| render.reply(out).unwrap_or_else(|e| e.to_reply(call.state)))
            .collect(),
        Err(e) => vec![e.to_reply(call.state); renders.len()],
    }
}
