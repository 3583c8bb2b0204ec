//! Bridges raft-rs's `slog` logging into the `log` facade (and from there into `tracing`, which
//! picks `log` records up when a subscriber with `tracing-log` is installed).

use slog::Drain;

use crate::types::{NodeId, ShardId};

/// A raft-rs logger that forwards to `log`, tagged with the node and shard.
pub(crate) fn raft_logger(node: NodeId, shard: ShardId) -> slog::Logger {
    slog::Logger::root(slog_stdlog::StdLog.fuse(), slog::o!("node" => node, "shard" => shard))
}
