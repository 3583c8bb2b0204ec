//! The node's figures read when a [`super::MetricsRegistry`] is made, and encoded as Prometheus
//! series when it is encoded: the cache's counts, the Raft group's clock, the gossip members and
//! each shard replica's figures.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;

use crate::cache::{MigrationFigures, RaftFigures};
use crate::discovery::NodeHealth;
use crate::multiraft::ShardInfo;
use crate::{CacheStats, DistributedCache, NodeId};

/// This process's resident memory in bytes (Linux: `VmRSS` of `/proc/self/status`; none
/// elsewhere).
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One shard replica's figures.
#[derive(Debug)]
struct ShardFigures {
    info: ShardInfo,
    leader_changes: u64,
}

/// What a registry reports of its node, read once.
#[derive(Debug)]
pub(super) struct NodeFigures {
    me: NodeId,
    stats: CacheStats,
    entries: u64,
    weighted_size: u64,
    leader: bool,
    raft: RaftFigures,
    /// Gossip members by health: alive, suspect, down.
    members: [usize; 3],
    shards: Vec<ShardFigures>,
    /// With more than one shard.
    migrations: Option<MigrationFigures>,
    resident_bytes: Option<u64>,
}

impl NodeFigures {
    pub(super) fn read(cache: &DistributedCache) -> Self {
        let nodes = cache.discovered_nodes();
        let count = |health: NodeHealth| nodes.iter().filter(|n| n.health == health).count();
        Self {
            me: cache.node_id(),
            stats: cache.stats(),
            entries: cache.entry_count(),
            weighted_size: cache.storage().weighted_size(),
            leader: cache.is_leader(),
            raft: cache.raft_figures(),
            members: [count(NodeHealth::Alive), count(NodeHealth::Suspect), count(NodeHealth::Down)],
            shards: cache
                .shard_info()
                .into_iter()
                .map(|info| ShardFigures { leader_changes: cache.shard_leader_changes(info.shard_id), info })
                .collect(),
            migrations: (cache.router().num_shards() > 1).then(|| cache.migrations()),
            resident_bytes: resident_memory_bytes(),
        }
    }
}

/// Encodes one counter `name` of `value`, read at encoding time (for a
/// [`prometheus_client::collector::Collector`]).
///
/// # Errors
/// Those of the encoder.
pub fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// Encodes one gauge `name` of `value`, read at encoding time.
///
/// # Errors
/// Those of the encoder.
pub fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// One labelled value per shard replica: `name{shard="i"}`.
fn per_shard(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    values: impl Iterator<Item = (u32, i64)>,
    counter: bool,
) -> std::fmt::Result {
    let kind = if counter { MetricType::Counter } else { MetricType::Gauge };
    let mut family = encoder.encode_descriptor(name, help, None, kind)?;
    for (shard, value) in values {
        let labels = [("shard", shard.to_string())];
        let metric = family.encode_family(&labels)?;
        if counter {
            ConstCounter::new(value as u64).encode(metric)?;
        } else {
            ConstGauge::new(value).encode(metric)?;
        }
    }
    Ok(())
}

impl NodeFigures {
    fn cache(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        counter(e, "cache_hits", "Local reads that found a live entry", self.stats.hits)?;
        counter(e, "cache_misses", "Local reads that found nothing", self.stats.misses)?;
        counter(
            e,
            "cache_evictions",
            "Entries removed by evictions replicated from the leader",
            self.stats.evictions,
        )?;
        gauge(e, "cache_entries", "Entries held in the local cache", self.entries as i64)?;
        gauge(
            e,
            "cache_size_bytes",
            "Weighted size of the local cache (bytes when sized by memory, else entries)",
            self.weighted_size as i64,
        )
    }

    fn raft(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let raft = &self.raft;
        gauge(e, "raft_term", "Current Raft term", raft.term as i64)?;
        gauge(e, "raft_commit_index", "Highest committed log index known here", raft.commit_index as i64)?;
        gauge(e, "raft_applied_index", "Highest log index applied here", raft.applied_index as i64)?;
        gauge(e, "raft_is_leader", "1 when this node leads its Raft group", i64::from(self.leader))?;
        counter(e, "raft_leader_changes", "Leader changes seen by this node", raft.leader_changes)?;
        counter(
            e,
            "raft_snapshots_installed",
            "Snapshots installed here (a replica behind the leader's compacted log is caught up with one)",
            raft.snapshots_installed,
        )?;
        counter(
            e,
            "checkpoint_written",
            "Checkpoints of this node's own state written (durable storage)",
            raft.checkpoints_written,
        )?;
        counter(
            e,
            "raft_proposal_batches",
            "Batches of writes proposed together as leader (one append per follower each)",
            raft.proposal_batches,
        )?;
        counter(e, "raft_proposed_entries", "Log entries proposed as leader", raft.proposed_entries)?;
        counter(
            e,
            "raft_writes_given_up",
            "Writes held by this leader whose callers timed out before they were proposed (left out of the log)",
            raft.writes_given_up,
        )?;
        counter(e, "raft_messages_sent", "Raft messages sent to peers", raft.messages_sent)?;
        counter(
            e,
            "forwarded_writes",
            "Writes forwarded to their shard's leader (sent to a node not leading the key's shard)",
            raft.forwarded_writes,
        )?;
        gauge(
            e,
            "raft_mailbox_requests",
            "Requests waiting in the Raft group's mailbox",
            raft.queued_requests as i64,
        )?;
        gauge(
            e,
            "raft_held_writes",
            "Writes the leader holds for its next batch while its batches in flight commit",
            raft.held_writes as i64,
        )?;
        counter(
            e,
            "raft_read_rounds",
            "Read-index rounds started (linearizable reads share them)",
            raft.read_rounds,
        )?;
        counter(
            e,
            "raft_node_read_rounds",
            "Node-level read rounds started: one leadership check of every shard this node leads with reads waiting",
            raft.node_read_rounds,
        )?;
        counter(
            e,
            "raft_node_read_asks",
            "Node-level asks sent to shard leaders: this node's reads of every shard one node leads, in one message",
            raft.node_read_asks,
        )?;
        gauge(
            e,
            "raft_held_reads",
            "Linearizable reads waiting for the next read-index round while one is in flight",
            raft.held_reads as i64,
        )?;
        counter(
            e,
            "apply_rejected",
            "Committed entries that did not decode (garbage or an unknown version), applied as no-ops",
            raft.apply_rejected,
        )?;
        counter(
            e,
            "peer_messages_rejected",
            "Raft messages from peers dropped or corrected because a correct peer could not have sent them",
            raft.peer_messages_rejected,
        )?;
        counter(
            e,
            "peer_handshakes_refused",
            "Incoming peer connections closed in the handshake (no proof of the cluster secret, or not a member)",
            raft.peer_handshakes_refused,
        )?;
        counter(
            e,
            "peer_frames_dropped",
            "Frames not sent to a peer because its queue was full (Raft sends lost appends again)",
            raft.peer_frames_dropped,
        )?;
        gauge(
            e,
            "raft_recovering",
            "1 while this node recovers from a restart without its raft state (it does not vote)",
            i64::from(raft.recovering),
        )?;
        gauge(
            e,
            "raft_hibernating_shards",
            "Shard replicas on this node whose idle Raft group hibernates (ticks no clock)",
            raft.hibernating_shards as i64,
        )
    }

    /// The nodes the cluster discovery knows, by health (`crema_memberlist_nodes{state=...}`).
    fn members(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let mut metric = e.encode_descriptor(
            "memberlist_nodes",
            "Nodes the cluster discovery knows (this one included), by health",
            None,
            MetricType::Gauge,
        )?;
        for (state, count) in ["alive", "suspect", "down"].into_iter().zip(self.members) {
            let labels = [("state", state)];
            ConstGauge::new(count as i64).encode(metric.encode_family(&labels)?)?;
        }
        Ok(())
    }

    /// The figures of each shard replica (Multi-Raft), labelled by shard.
    fn shards(&self, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        let shards = &self.shards;
        per_shard(
            e,
            "shard_entries",
            "Entries held in the shard's local cache",
            shards.iter().map(|s| (s.info.shard_id, s.info.entry_count as i64)),
            false,
        )?;
        per_shard(
            e,
            "shard_is_leader",
            "1 when this node leads the shard's Raft group",
            shards.iter().map(|s| (s.info.shard_id, i64::from(s.info.leader == Some(self.me)))),
            false,
        )?;
        per_shard(
            e,
            "shard_applied_index",
            "Highest log index of the shard applied here",
            shards.iter().map(|s| (s.info.shard_id, s.info.applied_index as i64)),
            false,
        )?;
        per_shard(
            e,
            "shard_leader_changes",
            "Leader changes of the shard's group seen by this node",
            shards.iter().map(|s| (s.info.shard_id, s.leader_changes as i64)),
            true,
        )
    }

    /// Replica moves this node planned and settled as the meta shard's leader (placement).
    fn migrations(moves: &MigrationFigures, e: &mut DescriptorEncoder<'_>) -> std::fmt::Result {
        counter(
            e,
            "migrations_started",
            "Replica moves this node planned (as the meta shard's leader)",
            moves.started,
        )?;
        counter(e, "migrations_settled", "Replica moves this node settled", moves.settled)?;
        // From 50 ms to about 7 minutes.
        let histogram = Histogram::new(exponential_buckets(0.05, 2.0, 14));
        for seconds in &moves.durations_seconds {
            histogram.observe(*seconds);
        }
        histogram.encode(e.encode_descriptor(
            "migration_duration_seconds",
            "How long each replica move took, from its planning until the shard's group had its new members",
            None,
            histogram.metric_type(),
        )?)
    }
}

impl Collector for NodeFigures {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let e = &mut encoder;
        self.cache(e)?;
        self.raft(e)?;
        self.members(e)?;
        self.shards(e)?;
        if let Some(moves) = &self.migrations {
            Self::migrations(moves, e)?;
        }
        if let Some(rss) = self.resident_bytes {
            gauge(e, "process_resident_memory_bytes", "Resident memory of this process", rss as i64)?;
        }
        Ok(())
    }
}
