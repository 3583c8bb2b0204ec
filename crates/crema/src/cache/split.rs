//! Which shard a write goes to, and how a write that spans shards is split and answered.
//!
//! A command on keys of one shard goes to that shard whole. Across shards:
//! - `Clear` goes to every shard; `DeleteMany` and `Evict` are split into one command per shard,
//!   their counts summed (Redis Cluster's multi-key `DEL` is not atomic across nodes either);
//! - a `Batch` (a client's pipelined writes) is split into one batch per shard, each keeping
//!   the client's order, and the outputs are put back in that order: every key's writes are
//!   still applied in order, since a key lives in one shard;
//! - `PutMany` (MSET), a `Transaction` and anything else that must be atomic across its keys is
//!   refused with [`CommandError::CrossSlot`] unless all its keys are in one shard (hash tags
//!   make that possible);
//! - ACL changes go to shard 0, which holds the cluster's users.
//!
//! Pure: no I/O, so the splitting is tested on its own.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::consensus::command::{CacheCommand, CommandError};
use crate::consensus::transaction::TxStep;
use crate::consensus::ApplyOutput;
use crate::multiraft::ShardRouter;
use crate::types::{ShardId, DEFAULT_SHARD};

/// The shard that holds the cluster's ACL users (and, later, the shard map).
pub(crate) const META_SHARD: ShardId = DEFAULT_SHARD;

/// How a write reaches the shards.
#[derive(Debug, PartialEq)]
pub(crate) enum Plan {
    /// Whole, to one shard.
    One(ShardId, CacheCommand),
    /// In pieces: see [`Split`].
    Split(Split),
}

/// A write split into per-shard pieces, and how their outputs make its answer.
#[derive(Debug, PartialEq)]
pub(crate) struct Split {
    /// One command list per shard, proposed as a `Batch` when it holds several.
    pub pieces: Vec<(ShardId, Vec<CacheCommand>)>,
    /// Where each element of the original write landed, in its order.
    elements: Vec<Element>,
    /// Whether the original write was a `Batch` (answered `Batch(outputs)`).
    batch: bool,
}

#[derive(Debug, PartialEq)]
struct Element {
    /// (piece, position in the piece) of each part.
    parts: Vec<(usize, usize)>,
    merge: Merge,
}

/// How the outputs of an element's parts become its output.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Merge {
    /// One part: its output.
    Whole,
    /// Every part answers `Done`.
    Done,
    /// Every part answers `Int`: their sum.
    Sum,
}

/// How `command` reaches the shards of `router`.
///
/// # Errors
/// [`CommandError::CrossSlot`] for a write that must be atomic across keys of several shards.
pub(crate) fn plan(router: &ShardRouter, command: CacheCommand) -> Result<Plan, CommandError> {
    if router.num_shards() == 1 {
        return Ok(Plan::One(DEFAULT_SHARD, command));
    }
    let mut split = Split { pieces: Vec::new(), elements: Vec::new(), batch: false };
    let mut piece_of: BTreeMap<ShardId, usize> = BTreeMap::new();
    let commands = match command {
        CacheCommand::Batch(commands) => {
            split.batch = true;
            commands
        }
        command => match parts(router, &command)? {
            Parts::One(shard) => return Ok(Plan::One(shard, command)),
            _ => vec![command],
        },
    };
    for command in commands {
        let (targets, merge) = match parts(router, &command)? {
            Parts::One(shard) => (vec![(shard, command)], Merge::Whole),
            Parts::Every => {
                let every = (0..router.num_shards()).map(|s| (s, CacheCommand::Clear)).collect();
                (every, Merge::Done)
            }
            Parts::ByShard(keys) => {
                let evict = matches!(command, CacheCommand::Evict { .. });
                let pieces = keys
                    .into_iter()
                    .map(|(shard, keys)| {
                        let command = if evict {
                            CacheCommand::Evict { keys }
                        } else {
                            CacheCommand::DeleteMany { keys }
                        };
                        (shard, command)
                    })
                    .collect();
                (pieces, Merge::Sum)
            }
        };
        let mut parts = Vec::with_capacity(targets.len());
        for (shard, command) in targets {
            let piece = *piece_of.entry(shard).or_insert_with(|| {
                split.pieces.push((shard, Vec::new()));
                split.pieces.len() - 1
            });
            parts.push((piece, split.pieces[piece].1.len()));
            split.pieces[piece].1.push(command);
        }
        split.elements.push(Element { parts, merge });
    }
    if split.pieces.len() == 1 {
        // Every element landed on one shard whole: send the write as it came.
        let (shard, mut commands) = split.pieces.pop().expect("one piece");
        let whole = split.elements.iter().all(|e| e.merge == Merge::Whole);
        if whole {
            let command = if split.batch {
                CacheCommand::Batch(commands)
            } else {
                commands.pop().expect("one command")
            };
            return Ok(Plan::One(shard, command));
        }
        split.pieces.push((shard, commands));
    }
    Ok(Plan::Split(split))
}

/// Where one (non-batch) command's keys live.
enum Parts {
    One(ShardId),
    /// `Clear`.
    Every,
    /// `DeleteMany` or `Evict`: its keys by shard.
    ByShard(BTreeMap<ShardId, Vec<Bytes>>),
}

fn parts(router: &ShardRouter, command: &CacheCommand) -> Result<Parts, CommandError> {
    use CacheCommand::*;
    Ok(match command {
        Put { key, .. }
        | Delete { key }
        | Set { key, .. }
        | IncrBy { key, .. }
        | IncrByFloat { key, .. }
        | IncrByLongDouble { key, .. }
        | Append { key, .. }
        | SetRange { key, .. }
        | GetDel { key }
        | GetEx { key, .. }
        | Expire { key, .. }
        | Persist { key } => Parts::One(router.shard_for_key(key)),
        Clear => Parts::Every,
        Acl(_) | Placement(_) => Parts::One(META_SHARD),
        Copy { from, to, .. } => {
            let mut one = OneShard::default();
            one.note(router.shard_for_key(from))?;
            one.note(router.shard_for_key(to))?;
            one.shard()
        }
        DeleteMany { keys } | Evict { keys } => {
            let mut by_shard: BTreeMap<ShardId, Vec<Bytes>> = BTreeMap::new();
            for key in keys {
                by_shard.entry(router.shard_for_key(key)).or_default().push(key.clone());
            }
            match by_shard.len() {
                0 => Parts::One(DEFAULT_SHARD),
                1 => Parts::One(*by_shard.keys().next().expect("one shard")),
                _ => Parts::ByShard(by_shard),
            }
        }
        PutMany { pairs, .. } => {
            let mut one = OneShard::default();
            pairs.iter().try_for_each(|(key, _)| one.note(router.shard_for_key(key)))?;
            one.shard()
        }
        Transaction(tx) => {
            let mut one = OneShard::default();
            tx.watches.iter().try_for_each(|w| one.note(router.shard_for_key(&w.key)))?;
            for step in &tx.steps {
                match step {
                    TxStep::Read(read) => {
                        read.keys().iter().try_for_each(|key| one.note(router.shard_for_key(key)))?;
                    }
                    TxStep::Write(write) => match parts(router, write)? {
                        Parts::One(shard) => one.note(shard)?,
                        Parts::Every | Parts::ByShard(_) => return Err(CommandError::CrossSlot),
                    },
                }
            }
            one.shard()
        }
        // A batch inside a batch is refused by validation; route one like any other write.
        Batch(commands) => {
            let mut one = OneShard::default();
            for command in commands {
                match parts(router, command)? {
                    Parts::One(shard) => one.note(shard)?,
                    Parts::Every | Parts::ByShard(_) => return Err(CommandError::CrossSlot),
                }
            }
            one.shard()
        }
    })
}

/// The one shard every key of an atomic write is in.
#[derive(Default)]
struct OneShard(Option<ShardId>);

impl OneShard {
    fn note(&mut self, shard: ShardId) -> Result<(), CommandError> {
        match self.0 {
            Some(seen) if seen != shard => Err(CommandError::CrossSlot),
            _ => {
                self.0 = Some(shard);
                Ok(())
            }
        }
    }

    fn shard(self) -> Parts {
        Parts::One(self.0.unwrap_or(DEFAULT_SHARD))
    }
}

/// How one write of a split `Batch` ended, when each is answered on its own.
#[derive(Debug, PartialEq)]
pub(crate) enum Each {
    /// Every piece it went to answered: its output.
    Output(ApplyOutput),
    /// A piece it went to failed (the first such): the piece's error answers it. `partly`:
    /// another of its pieces applied (a `DEL` across shards, a `Clear`).
    Failed { piece: usize, partly: bool },
}

impl Split {
    /// The answer of the original write, from each piece's outputs (in `pieces` order; a
    /// piece of several commands answers their outputs in order).
    pub fn merge(&self, outputs: Vec<Vec<ApplyOutput>>) -> ApplyOutput {
        let mut outputs: Vec<Option<Vec<ApplyOutput>>> = outputs.into_iter().map(Some).collect();
        let mut merged: Vec<ApplyOutput> =
            self.elements.iter().map(|element| element.merge(&mut outputs)).collect();
        if self.batch {
            ApplyOutput::Batch(merged)
        } else {
            merged.pop().unwrap_or(ApplyOutput::Done)
        }
    }

    /// Each write of a split `Batch` on its own, from each piece's outputs or `None` for a
    /// piece that failed: a write whose pieces all answered gets its output, one that went to
    /// a failed piece that piece's failure (see [`Each`]).
    pub fn each(&self, mut outputs: Vec<Option<Vec<ApplyOutput>>>) -> Vec<Each> {
        self.elements
            .iter()
            .map(|element| {
                let failed = |&&(piece, _): &&(usize, usize)| outputs.get(piece).is_none_or(Option::is_none);
                match element.parts.iter().find(failed) {
                    Some(&(piece, _)) => {
                        let partly = element.parts.iter().any(|part| !failed(&part));
                        Each::Failed { piece, partly }
                    }
                    None => Each::Output(element.merge(&mut outputs)),
                }
            })
            .collect()
    }
}

impl Element {
    /// This element's output from its parts' (taken out of `outputs`).
    fn merge(&self, outputs: &mut [Option<Vec<ApplyOutput>>]) -> ApplyOutput {
        let mut parts = self.parts.iter().map(|&(piece, at)| {
            // Every piece answers one output per command (the caller makes sure);
            // a missing one reads as done rather than panicking.
            let slot = outputs.get_mut(piece).and_then(|p| p.as_mut()).and_then(|p| p.get_mut(at));
            slot.map_or(ApplyOutput::Done, |o| std::mem::replace(o, ApplyOutput::Done))
        });
        match self.merge {
            Merge::Whole => parts.next().unwrap_or(ApplyOutput::Done),
            Merge::Done => parts.find(|o| *o != ApplyOutput::Done).unwrap_or(ApplyOutput::Done),
            Merge::Sum => {
                let mut sum = 0;
                for out in parts {
                    match out {
                        ApplyOutput::Int(n) => sum += n,
                        other => return other,
                    }
                }
                ApplyOutput::Int(sum)
            }
        }
    }
}

#[cfg(test)]
#[path = "split_tests.rs"]
mod tests;
