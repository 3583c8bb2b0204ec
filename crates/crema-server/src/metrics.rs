//! Prometheus metrics, declared in one place and served by the admin port's `/metrics`.
//!
//! Counters and histograms the server updates as it works (RESP commands, proposals,
//! connections) live in the registry; figures the cache already keeps (hits, misses, entries,
//! bytes, Raft term and indexes, leader changes) are read at scrape time by a collector, so the
//! hot path pays nothing for them. Every name starts with `crema_`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use crema::DistributedCache;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{text::encode, DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::server::ServerState;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabels {
    command: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PrefixLabels {
    prefix: &'static str,
}

/// The first words of the error replies crema makes, as INFO's `errorstats` and
/// `crema_resp_error_replies_total` count them; an error that starts with any other word counts as
/// `OTHER` (Redis keeps any first word, up to 128 of them: a fixed list keeps the series bounded).
pub const ERROR_PREFIXES: &[&str] = &[
    "ERR",
    "MOVED",
    "CROSSSLOT",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "TIMEOUT",
    "NOTLEADER",
    "NOAUTH",
    "WRONGPASS",
    "NOPERM",
    "NOPROTO",
    "EXECABORT",
    "SHUTDOWN",
    "OTHER",
];

/// The position in [`ERROR_PREFIXES`] of the error reply `text`'s first word.
fn error_prefix(text: &str) -> usize {
    let word = text.split(' ').next().unwrap_or_default();
    ERROR_PREFIXES.iter().position(|p| *p == word).unwrap_or(ERROR_PREFIXES.len() - 1)
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Handles of one command's series, made once so that recording is a few atomic adds (no label
/// hashing or locking per command).
#[derive(Clone)]
struct CommandSeries {
    count: Counter,
    errors: Counter,
    seconds: Histogram,
}

/// The node's metrics.
pub struct Metrics {
    registry: Registry,
    /// By position in [`crate::cmd::COMMANDS`]; the last is for unknown commands.
    series: Vec<CommandSeries>,
    /// By position in [`ERROR_PREFIXES`].
    error_replies: Vec<Counter>,
    proposals: Family<ResultLabels, Counter>,
    proposal_seconds: Histogram,
    /// Set once the RESP server exists, for the connection gauges.
    server: Arc<OnceLock<Weak<ServerState>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 10 µs to ~40 s.
    Histogram::new(exponential_buckets(0.000_01, 2.0, 22))
}

impl Metrics {
    /// Metrics for `cache`'s node.
    pub fn new(cache: &Arc<DistributedCache>) -> Self {
        let mut registry = Registry::with_prefix("crema");
        let commands = Family::<CommandLabels, Counter>::default();
        let command_errors = Family::<CommandLabels, Counter>::default();
        let command_seconds =
            Family::<CommandLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        let error_replies = Family::<PrefixLabels, Counter>::default();
        let proposals = Family::<ResultLabels, Counter>::default();
        let proposal_seconds = latency_histogram();
        registry.register("resp_commands", "RESP commands run, by command", commands.clone());
        registry.register(
            "resp_command_errors",
            "RESP commands answered with an error",
            command_errors.clone(),
        );
        registry.register(
            "resp_error_replies",
            "RESP error replies, by the error's first word (INFO errorstats)",
            error_replies.clone(),
        );
        registry.register("resp_command_duration_seconds", "RESP command latency", command_seconds.clone());
        registry.register(
            "raft_proposals",
            "Writes proposed through this node, by result",
            proposals.clone(),
        );
        registry.register(
            "raft_proposal_latency_seconds",
            "Time from propose to applied on this node",
            proposal_seconds.clone(),
        );
        let server = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(NodeCollector {
            cache: Arc::downgrade(cache),
            server: server.clone(),
        }));
        let names = crate::cmd::COMMANDS.iter().map(|c| c.name).chain(["unknown"]);
        let series = names
            .map(|command| {
                let labels = CommandLabels { command };
                CommandSeries {
                    count: commands.get_or_create(&labels).clone(),
                    errors: command_errors.get_or_create(&labels).clone(),
                    seconds: command_seconds.get_or_create(&labels).clone(),
                }
            })
            .collect();
        let error_replies = ERROR_PREFIXES
            .iter()
            .map(|prefix| error_replies.get_or_create(&PrefixLabels { prefix }).clone())
            .collect();
        Self { registry, series, error_replies, proposals, proposal_seconds, server }
    }

    /// Connects the connection gauges to the RESP server.
    pub fn attach_server(&self, state: &Arc<ServerState>) {
        let _ = self.server.set(Arc::downgrade(state));
    }

    /// Records one RESP command: `index` is its position in [`crate::cmd::COMMANDS`], or
    /// `None` for an unknown command; `error` is its error reply's text, if it failed.
    pub fn observe_command(&self, index: Option<usize>, took: Duration, error: Option<&str>) {
        let series = &self.series[index.unwrap_or(self.series.len() - 1)];
        series.count.inc();
        if let Some(text) = error {
            series.errors.inc();
            self.error_replies[error_prefix(text)].inc();
        }
        series.seconds.observe(took.as_secs_f64());
    }

    /// Records an error reply made inside another reply (a command of a transaction, in
    /// EXEC's answer): Redis counts those too.
    pub fn observe_inner_error(&self, text: &str) {
        self.error_replies[error_prefix(text)].inc();
    }

    /// Error replies since the node started, by position in [`ERROR_PREFIXES`].
    pub fn error_replies(&self) -> Vec<u64> {
        self.error_replies.iter().map(Counter::get).collect()
    }

    /// Commands run since the node started, errors included (INFO's
    /// `total_commands_processed`).
    pub fn commands_processed(&self) -> u64 {
        self.series.iter().map(|s| s.count.get()).sum()
    }

    /// Records one proposal.
    pub fn observe_proposal(&self, took: Duration, ok: bool) {
        self.proposals.get_or_create(&ResultLabels { result: if ok { "ok" } else { "error" } }).inc();
        if ok {
            self.proposal_seconds.observe(took.as_secs_f64());
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

/// This process's resident memory in bytes (Linux: `VmRSS` of `/proc/self/status`; none
/// elsewhere).
pub fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Reads the cache's own figures at scrape time.
#[derive(Debug)]
struct NodeCollector {
    cache: Weak<DistributedCache>,
    server: Arc<OnceLock<Weak<ServerState>>>,
}

fn counter(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn gauge(encoder: &mut DescriptorEncoder<'_>, name: &str, help: &str, value: i64) -> std::fmt::Result {
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

/// The nodes the cluster discovery knows, by health (`crema_memberlist_nodes{state=...}`).
fn discovery_metrics(e: &mut DescriptorEncoder<'_>, cache: &DistributedCache) -> std::fmt::Result {
    let nodes = cache.discovered_nodes();
    let count = |health: crema::NodeHealth| nodes.iter().filter(|n| n.health == health).count() as i64;
    let mut metric = e.encode_descriptor(
        "memberlist_nodes",
        "Nodes the cluster discovery knows (this one included), by health",
        None,
        MetricType::Gauge,
    )?;
    for (state, health) in [
        ("alive", crema::NodeHealth::Alive),
        ("suspect", crema::NodeHealth::Suspect),
        ("down", crema::NodeHealth::Down),
    ] {
        let labels = [("state", state)];
        ConstGauge::new(count(health)).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// Replica moves this node planned and settled as the meta shard's leader (placement).
fn migration_metrics(e: &mut DescriptorEncoder<'_>, cache: &DistributedCache) -> std::fmt::Result {
    let moves = cache.migrations();
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

/// The figures of each shard replica (Multi-Raft), labelled by shard.
fn shard_metrics(e: &mut DescriptorEncoder<'_>, cache: &DistributedCache) -> std::fmt::Result {
    let shards = cache.shard_info();
    let me = cache.node_id();
    per_shard(
        e,
        "shard_entries",
        "Entries held in the shard's local cache",
        shards.iter().map(|s| (s.shard_id, s.entry_count as i64)),
        false,
    )?;
    per_shard(
        e,
        "shard_is_leader",
        "1 when this node leads the shard's Raft group",
        shards.iter().map(|s| (s.shard_id, i64::from(s.leader == Some(me)))),
        false,
    )?;
    per_shard(
        e,
        "shard_applied_index",
        "Highest log index of the shard applied here",
        shards.iter().map(|s| (s.shard_id, s.applied_index as i64)),
        false,
    )?;
    per_shard(
        e,
        "shard_leader_changes",
        "Leader changes of the shard's group seen by this node",
        shards.iter().map(|s| (s.shard_id, cache.shard_leader_changes(s.shard_id) as i64)),
        true,
    )
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let Some(cache) = self.cache.upgrade() else { return Ok(()) };
        let stats = cache.stats();
        let raft = cache.raft_figures();
        let e = &mut encoder;
        counter(e, "cache_hits", "Local reads that found a live entry", stats.hits)?;
        counter(e, "cache_misses", "Local reads that found nothing", stats.misses)?;
        counter(
            e,
            "cache_evictions",
            "Entries removed by evictions replicated from the leader",
            stats.evictions,
        )?;
        gauge(e, "cache_entries", "Entries held in the local cache", cache.entry_count() as i64)?;
        gauge(
            e,
            "cache_size_bytes",
            "Weighted size of the local cache (bytes when sized by memory, else entries)",
            cache.storage().weighted_size() as i64,
        )?;
        gauge(e, "raft_term", "Current Raft term", raft.term as i64)?;
        gauge(e, "raft_commit_index", "Highest committed log index known here", raft.commit_index as i64)?;
        gauge(e, "raft_applied_index", "Highest log index applied here", raft.applied_index as i64)?;
        gauge(e, "raft_is_leader", "1 when this node leads its Raft group", cache.is_leader() as i64)?;
        counter(e, "raft_leader_changes", "Leader changes seen by this node", raft.leader_changes)?;
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
        gauge(
            e,
            "raft_recovering",
            "1 while this node recovers from a restart without its raft state (it does not vote)",
            raft.recovering as i64,
        )?;
        gauge(
            e,
            "raft_hibernating_shards",
            "Shard replicas on this node whose idle Raft group hibernates (ticks no clock)",
            raft.hibernating_shards as i64,
        )?;
        discovery_metrics(e, &cache)?;
        shard_metrics(e, &cache)?;
        if cache.router().num_shards() > 1 {
            migration_metrics(e, &cache)?;
        }
        if let Some(rss) = resident_memory_bytes() {
            gauge(e, "process_resident_memory_bytes", "Resident memory of this process", rss as i64)?;
        }
        if let Some(server) = self.server.get().and_then(Weak::upgrade) {
            let clients = &server.clients;
            gauge(
                e,
                "resp_connected_clients",
                "RESP clients connected",
                clients.connected.load(Ordering::Relaxed) as i64,
            )?;
            counter(
                e,
                "resp_connections",
                "RESP connections accepted",
                clients.accepted.load(Ordering::Relaxed),
            )?;
            counter(
                e,
                "resp_rejected_connections",
                "RESP connections refused at max clients",
                clients.rejected.load(Ordering::Relaxed),
            )?;
            counter(
                e,
                "resp_auth_failures",
                "Failed AUTH attempts",
                clients.auth_failures.load(Ordering::Relaxed),
            )?;
            counter(
                e,
                "resp_auth_closed_connections",
                "RESP connections closed for failing AUTH too often or not authenticating in time",
                clients.auth_closed.load(Ordering::Relaxed),
            )?;
            gauge(
                e,
                "resp_query_buffer_bytes",
                "Unparsed request bytes held by clients with large buffers (64 KiB or more)",
                server.buffers.total_bytes() as i64,
            )?;
            counter(
                e,
                "resp_evicted_clients",
                "RESP connections closed because all query buffers together passed their cap",
                server.buffers.evicted(),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_count_by_their_first_word() {
        assert_eq!(ERROR_PREFIXES[error_prefix("MOVED 866 127.0.0.1:6381")], "MOVED");
        assert_eq!(ERROR_PREFIXES[error_prefix("ERR unknown command 'x'")], "ERR");
        assert_eq!(ERROR_PREFIXES[error_prefix("EXECABORT")], "EXECABORT");
        // A word of no reply crema makes, a prefix of a known one, an empty text: OTHER.
        for text in ["WRONGTYPE Operation", "MOVE 1 a:1", ""] {
            assert_eq!(ERROR_PREFIXES[error_prefix(text)], "OTHER", "{text:?}");
        }
    }
}
