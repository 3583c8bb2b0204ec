//! Writes through the cache API: `put`, `put_with_ttl`, `delete`, `clear`, `execute` (any
//! command), each validated, stamped with this node's clock and routed to its shard's group
//! (`cache::route`, or `cache::remote` for a shard this node holds no replica of).

use std::time::Duration;

use bytes::Bytes;

use super::split::{self, Plan, Split};
use super::storage::unix_now_ms;
use super::DistributedCache;
use crate::consensus::command::{expiry_from_ttl, CacheCommand, CommandLimits, StampedCommand};
use crate::consensus::state_machine::ApplyOutput;
use crate::consensus::Applied;
use crate::error::{Error, Result};
use crate::types::ShardId;

impl DistributedCache {
    /// Stores `value` under `key` through Raft, with the default TTL if one is configured.
    ///
    /// # Errors
    /// See [`Error`]: invalid input, no leader, timeout (outcome unknown), shutdown.
    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<()> {
        let expires_at_ms = match self.config.default_ttl {
            Some(ttl) => Some(expiry_from_ttl(unix_now_ms(), ttl)?),
            None => None,
        };
        let command = CacheCommand::Put { key: key.into(), value: value.into(), expires_at_ms };
        self.write(command).await.map(|_| ())
    }

    /// Stores `value` under `key` through Raft; it expires `ttl` from now on every node at the
    /// same absolute time.
    ///
    /// # Errors
    /// As [`Self::put`]; a TTL of zero or over 10 years is `InvalidCommand`.
    pub async fn put_with_ttl(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ttl: Duration,
    ) -> Result<()> {
        let expires_at_ms = Some(expiry_from_ttl(unix_now_ms(), ttl)?);
        let command = CacheCommand::Put { key: key.into(), value: value.into(), expires_at_ms };
        self.write(command).await.map(|_| ())
    }

    /// Removes `key` through Raft; true when a live entry was removed.
    ///
    /// # Errors
    /// As [`Self::put`].
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<bool> {
        let applied = self.write(CacheCommand::Delete { key: key.into() }).await?;
        Ok(applied.output == ApplyOutput::Removed(true))
    }

    /// Removes every entry on every node, through Raft.
    ///
    /// # Errors
    /// As [`Self::put`].
    pub async fn clear(&self) -> Result<()> {
        self.write(CacheCommand::Clear).await.map(|_| ())
    }

    /// Stores `value` in this node's cache only, without consensus. Other nodes never see it and
    /// any replicated write of the key replaces it: for node-local memoisation, not shared data.
    pub async fn put_local(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) {
        let expires_at_ms = self.config.default_ttl.and_then(|ttl| expiry_from_ttl(unix_now_ms(), ttl).ok());
        self.keyspace.insert(key.into(), value.into(), expires_at_ms);
    }

    /// Applies `command` through Raft and answers what applying it produced, as decided on the
    /// leader (forwarded from a follower like every write). This is the general write: `put`,
    /// `delete` and `clear` are shorthands for it, and the RESP server builds INCR, SET NX, ...
    /// on it. Answers once this node has applied the command, so a following local read sees it.
    ///
    /// # Errors
    /// As [`Self::put`]. A command that committed but did not fit the stored value (INCR on
    /// text) is not an error: it is `Ok(ApplyOutput::Failed(..))`.
    pub async fn execute(&self, command: CacheCommand) -> Result<ApplyOutput> {
        self.write(command).await.map(|applied| applied.output)
    }

    /// Proposes `bytes` as a log entry as they are, without decoding or validating them
    /// (test-only, feature `fault-injection`): how tests put into the log what a buggy or
    /// hostile proposer could, to show that apply survives it.
    ///
    /// # Errors
    /// As [`Self::put`]; an entry that does not decode is applied as a no-op and answered
    /// `InvalidCommand`.
    #[cfg(feature = "fault-injection")]
    pub async fn propose_unchecked(&self, bytes: Bytes) -> Result<()> {
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        let meta = self.meta();
        match StampedCommand::decode(&bytes) {
            Ok(stamped) => self.route_write(meta, stamped, deadline).await.map(|_| ()),
            // A follower does not forward what does not decode; the leader proposes it.
            Err(e) if !meta.group.shared.is_leader() => Err(e.into()),
            Err(_) => meta.group.propose(bytes).await.map(|_| ()),
        }
    }

    /// Writes a client's pipelined writes as [`Self::execute`] writes a `Batch` of them, but
    /// answers each on its own: with several shards the writes of each shard are one entry
    /// there, and a shard that fails (no leader, a timeout) answers only its own writes.
    /// Found from outside: one leaderless shard answered every write of a pipeline
    /// `-CLUSTERDOWN ... try again`, those applied on other shards too, and a client that
    /// retried applied an INCR twice.
    ///
    /// # Errors
    /// The whole answer is an error when nothing of it could be decided apart (an invalid
    /// write, every write in one shard and that shard failing); else each write's own result
    /// names an error of [`EachAnswer::errors`].
    pub async fn execute_each(&self, commands: Vec<CacheCommand>) -> Result<EachAnswer> {
        let started = std::time::Instant::now();
        let answer = self.write_each(commands).await;
        self.live_metrics.observe_proposal(started.elapsed(), answer.is_ok());
        answer
    }

    async fn write_each(&self, commands: Vec<CacheCommand>) -> Result<EachAnswer> {
        let count = commands.len();
        let (plan, now, deadline) = self.plan_write(CacheCommand::Batch(commands))?;
        let timeout = self.config.request_timeout;
        let split = match plan {
            Plan::One(shard, command) => {
                let written = self.route_to(shard, StampedCommand::new(now, command), deadline);
                let applied = tokio::time::timeout_at(deadline, written)
                    .await
                    .unwrap_or(Err(Error::Timeout(timeout)))?;
                let outputs = match applied.output {
                    ApplyOutput::Batch(outputs) if outputs.len() == count => outputs,
                    output => vec![output; count],
                };
                return Ok(EachAnswer { outputs: outputs.into_iter().map(Ok).collect(), errors: Vec::new() });
            }
            Plan::Split(split) => split,
        };
        let mut errors = Vec::new();
        let mut failed_piece = Vec::new();
        let mut outputs = Vec::with_capacity(split.pieces.len());
        for (answer, (_, commands)) in
            self.write_pieces(&split, now, deadline).await.into_iter().zip(&split.pieces)
        {
            match answer {
                Ok(applied) => {
                    failed_piece.push(None);
                    outputs.push(Some(piece_outputs(applied.output, commands.len())));
                }
                Err(e) => {
                    failed_piece.push(Some(errors.len()));
                    errors.push(e);
                    outputs.push(None);
                }
            }
        }
        let mut partly = None;
        let outputs = split
            .each(outputs)
            .into_iter()
            .map(|each| match each {
                split::Each::Output(output) => Ok(output),
                // Applied on some shards and not on others: its outcome is what a timeout says.
                split::Each::Failed { partly: true, .. } => Err(*partly.get_or_insert_with(|| {
                    errors.push(Error::Timeout(timeout));
                    errors.len() - 1
                })),
                split::Each::Failed { piece, .. } => Err(failed_piece[piece].expect("a failed piece")),
            })
            .collect();
        Ok(EachAnswer { outputs, errors })
    }

    async fn write(&self, command: CacheCommand) -> Result<Applied> {
        let started = std::time::Instant::now();
        let applied = self.write_planned(command).await;
        self.live_metrics.observe_proposal(started.elapsed(), applied.is_ok());
        applied
    }

    async fn write_planned(&self, command: CacheCommand) -> Result<Applied> {
        let (plan, now, deadline) = self.plan_write(command)?;
        let timeout = self.config.request_timeout;
        let written = async {
            match plan {
                Plan::One(shard, command) => {
                    self.route_to(shard, StampedCommand::new(now, command), deadline).await
                }
                Plan::Split(split) => {
                    let mut outputs = Vec::with_capacity(split.pieces.len());
                    let mut index = 0;
                    let answers = self.write_pieces(&split, now, deadline).await;
                    for ((_, commands), answer) in split.pieces.iter().zip(answers) {
                        let applied = answer?;
                        // Indexes of different groups do not compare; the highest is reported.
                        index = index.max(applied.index);
                        outputs.push(piece_outputs(applied.output, commands.len()));
                    }
                    Ok(Applied { index, output: split.merge(outputs) })
                }
            }
        };
        tokio::time::timeout_at(deadline, written).await.unwrap_or(Err(Error::Timeout(timeout)))
    }

    /// Checks `command` and plans its way to the shards; the time it is stamped with and its
    /// deadline.
    fn plan_write(&self, command: CacheCommand) -> Result<(Plan, u64, tokio::time::Instant)> {
        self.check_running()?;
        self.coordinator.count_operation();
        command.validate(&CommandLimits {
            max_key_bytes: self.config.max_key_bytes,
            max_value_bytes: self.config.max_value_bytes,
        })?;
        let deadline = tokio::time::Instant::now() + self.config.request_timeout;
        Ok((split::plan(self.keyspace.router(), command)?, unix_now_ms(), deadline))
    }

    /// Writes every piece of `split` to its shard at once; each piece's answer, in order (a
    /// piece not answered by `deadline` answers a timeout).
    async fn write_pieces(
        &self,
        split: &Split,
        now: u64,
        deadline: tokio::time::Instant,
    ) -> Vec<Result<Applied>> {
        let timeout = self.config.request_timeout;
        let pieces = split.pieces.iter().map(|(shard, commands)| async move {
            let command = match commands.as_slice() {
                [one] => one.clone(),
                many => CacheCommand::Batch(many.to_vec()),
            };
            let written = self.route_to(*shard, StampedCommand::new(now, command), deadline);
            tokio::time::timeout_at(deadline, written).await.unwrap_or(Err(Error::Timeout(timeout)))
        });
        futures_util::future::join_all(pieces).await
    }
}

/// The outputs of a piece of `count` commands, one per command: a batch's outputs, or one
/// answer for a whole piece (a single command, or a batch answered as a whole) given to each.
fn piece_outputs(output: ApplyOutput, count: usize) -> Vec<ApplyOutput> {
    match output {
        ApplyOutput::Batch(outputs) if count > 1 && outputs.len() == count => outputs,
        output => vec![output; count],
    }
}

/// The answer of [`DistributedCache::execute_each`]: each write's output, or the position in
/// `errors` of the error that answers it (one error answers every write of a shard's entry).
#[derive(Debug)]
pub struct EachAnswer {
    /// Per write, in the order given.
    pub outputs: Vec<std::result::Result<ApplyOutput, usize>>,
    /// The errors the writes name.
    pub errors: Vec<Error>,
}

impl DistributedCache {
    /// Writes `stamped` to shard `shard`: through this node's replica when it holds one, else
    /// through a node that does (see `cache::remote`).
    async fn route_to(
        &self,
        shard: ShardId,
        stamped: StampedCommand,
        deadline: tokio::time::Instant,
    ) -> Result<Applied> {
        match self.shards.get(shard).filter(|_| self.holds_shard(shard)) {
            Some(held) => self.route_write(&held, stamped, deadline).await,
            // Not held, or removed from its group: through the shard's holders.
            None => self.route_remote_write(shard, stamped, deadline).await,
        }
    }
}
