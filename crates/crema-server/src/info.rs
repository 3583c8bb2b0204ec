//! The sections of `INFO`: Redis's server, clients, memory, stats, replication, errorstats,
//! cluster and keyspace, in the `field:value` lines clients parse, plus `raft` and `shards`
//! sections of crema's own.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use crema::{ClusterStatus, Role};

use crate::server::ServerState;

/// One section: its name and how to write it.
pub type Section = fn(&ServerState, &ClusterStatus, &mut String);

/// Every section, in the order `INFO` prints them.
pub static SECTIONS: &[(&str, Section)] = &[
    ("server", server),
    ("clients", clients),
    ("memory", memory),
    ("stats", stats),
    ("replication", replication),
    ("errorstats", errorstats),
    ("cluster", cluster),
    ("keyspace", keyspace),
    ("raft", raft),
    ("shards", shards),
];

macro_rules! line {
    ($out:expr, $($arg:tt)*) => {{
        let _ = write!($out, $($arg)*);
        $out.push_str("\r\n");
    }};
}

fn server(state: &ServerState, _: &ClusterStatus, out: &mut String) {
    line!(out, "redis_version:{}", crate::REDIS_COMPAT_VERSION);
    line!(out, "crema_version:{}", env!("CARGO_PKG_VERSION"));
    // Every crema node answers Redis Cluster's commands (one shard is one slot range), so tools
    // that look here before speaking cluster (`redis-cli --cluster`) find a cluster node.
    line!(out, "redis_mode:cluster");
    line!(out, "os:{} {}", std::env::consts::OS, std::env::consts::ARCH);
    line!(out, "process_id:{}", std::process::id());
    line!(out, "tcp_port:{}", state.resp_addr.port());
    line!(out, "uptime_in_seconds:{}", state.started.elapsed().as_secs());
    line!(out, "uptime_in_days:{}", state.started.elapsed().as_secs() / 86_400);
}

fn clients(state: &ServerState, _: &ClusterStatus, out: &mut String) {
    line!(out, "connected_clients:{}", state.clients.connected.load(Ordering::Relaxed));
    line!(out, "maxclients:{}", state.settings.max_clients);
}

fn memory(state: &ServerState, _: &ClusterStatus, out: &mut String) {
    let config = state.cache.config();
    let rss = crate::metrics::resident_memory_bytes().unwrap_or(0);
    // Redis's used_memory is what its allocator holds; the process's resident memory is the
    // closest figure crema has, and the cache's own weighted size is shown beside it.
    line!(out, "used_memory:{rss}");
    line!(out, "used_memory_rss:{rss}");
    let weighted = state.cache.storage().weighted_size();
    match config.max_memory_bytes {
        Some(max) => {
            line!(out, "cache_size_bytes:{weighted}");
            line!(out, "maxmemory:{max}");
        }
        None => {
            line!(out, "cache_entries:{weighted}");
            line!(out, "maxmemory:0");
            line!(out, "max_entries:{}", config.max_capacity);
        }
    }
    line!(out, "maxmemory_policy:allkeys-lfu");
}

/// The counters `INFO stats` and `INFO errorstats` show.
#[derive(Debug, Clone, Default)]
struct Counts {
    connections: u64,
    commands: u64,
    rejected: u64,
    hits: u64,
    misses: u64,
    evicted: u64,
    /// By position in [`crate::metrics::ERROR_PREFIXES`].
    errors: Vec<u64>,
}

impl Counts {
    fn now(state: &ServerState) -> Self {
        let cache = state.cache.stats();
        Counts {
            connections: state.clients.accepted.load(Ordering::Relaxed),
            commands: state.metrics.commands_processed(),
            rejected: state.clients.rejected.load(Ordering::Relaxed),
            hits: cache.hits,
            misses: cache.misses,
            evicted: cache.evictions,
            errors: state.metrics.error_replies(),
        }
    }
}

/// Where INFO's counters start: `CONFIG RESETSTAT` sets it to their values then, so that INFO
/// counts from the reset as Redis does, while the Prometheus counters behind them keep going
/// up (a scraper relies on that).
#[derive(Debug, Default)]
pub struct StatsBaseline(Mutex<Counts>);

impl StatsBaseline {
    /// `CONFIG RESETSTAT`: INFO's counters start again from zero.
    pub fn reset(&self, state: &ServerState) {
        *self.0.lock().expect("stats baseline poisoned") = Counts::now(state);
    }

    /// The counters since the last reset (since start, before any).
    fn since(&self, state: &ServerState) -> Counts {
        let now = Counts::now(state);
        let base = self.0.lock().expect("stats baseline poisoned").clone();
        let errors = now
            .errors
            .iter()
            .enumerate()
            .map(|(i, count)| count.saturating_sub(base.errors.get(i).copied().unwrap_or(0)))
            .collect();
        Counts {
            connections: now.connections.saturating_sub(base.connections),
            commands: now.commands.saturating_sub(base.commands),
            rejected: now.rejected.saturating_sub(base.rejected),
            hits: now.hits.saturating_sub(base.hits),
            misses: now.misses.saturating_sub(base.misses),
            evicted: now.evicted.saturating_sub(base.evicted),
            errors,
        }
    }
}

fn stats(state: &ServerState, _: &ClusterStatus, out: &mut String) {
    let s = state.stats_baseline.since(state);
    line!(out, "total_connections_received:{}", s.connections);
    line!(out, "total_commands_processed:{}", s.commands);
    line!(out, "total_error_replies:{}", s.errors.iter().sum::<u64>());
    line!(out, "rejected_connections:{}", s.rejected);
    line!(out, "keyspace_hits:{}", s.hits);
    line!(out, "keyspace_misses:{}", s.misses);
    line!(out, "evicted_keys:{}", s.evicted);
}

fn replication(state: &ServerState, status: &ClusterStatus, out: &mut String) {
    let group = &status.group;
    if group.role == Role::Leader {
        line!(out, "role:master");
        line!(out, "connected_slaves:{}", group.replica_progress.len());
        for (i, (id, matched)) in group.replica_progress.iter().enumerate() {
            let addr = status.members.get(id).map(|a| a.to_string()).unwrap_or_default();
            line!(out, "slave{i}:node_id={id},addr={addr},offset={matched}");
        }
    } else {
        line!(out, "role:slave");
        let leader = group.leader_id.and_then(|id| crate::cmd::error::LeaderAddr::client_addr_of(state, id));
        let (host, port) = leader.as_deref().and_then(|a| a.rsplit_once(':')).unwrap_or(("", "0"));
        line!(out, "master_host:{host}");
        line!(out, "master_port:{port}");
        line!(out, "master_link_status:{}", if group.leader_id.is_some() { "up" } else { "down" });
    }
    line!(out, "master_repl_offset:{}", group.applied_index);
}

/// Error replies by their first word, as Redis counts them (`errorstat_MOVED:count=12`): how
/// often cluster clients were redirected or told to try again shows here first.
fn errorstats(state: &ServerState, _: &ClusterStatus, out: &mut String) {
    let counts = state.stats_baseline.since(state).errors;
    for (prefix, count) in crate::metrics::ERROR_PREFIXES.iter().zip(counts) {
        if count > 0 {
            line!(out, "errorstat_{prefix}:count={count}");
        }
    }
}

fn keyspace(state: &ServerState, _: &ClusterStatus, out: &mut String) {
    let (mut keys, mut expires, mut ttl_sum) = (0u64, 0u64, 0u64);
    let now = crema::unix_now_ms();
    state.cache.storage().for_each_live_key(|_, value| {
        keys += 1;
        if let Some(at) = value.expires_at_ms {
            expires += 1;
            ttl_sum += at.saturating_sub(now);
        }
        true
    });
    if keys > 0 {
        let avg_ttl = ttl_sum.checked_div(expires).unwrap_or(0);
        line!(out, "db0:keys={keys},expires={expires},avg_ttl={avg_ttl}");
    }
}

fn raft(_: &ServerState, status: &ClusterStatus, out: &mut String) {
    let g = &status.group;
    line!(out, "node_id:{}", status.node_id);
    line!(out, "raft_addr:{}", status.raft_addr);
    line!(out, "raft_role:{:?}", g.role);
    line!(out, "term:{}", g.term);
    line!(out, "leader_id:{}", g.leader_id.unwrap_or(0));
    line!(out, "commit_index:{}", g.commit_index);
    line!(out, "applied_index:{}", g.applied_index);
    line!(out, "first_index:{}", g.first_index);
    line!(out, "last_index:{}", g.last_index);
    let ids = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
    line!(out, "voters:{}", ids(&g.voters));
    line!(out, "learners:{}", ids(&g.learners));
    line!(out, "pending_proposals:{}", g.pending_proposals);
    line!(out, "recovering:{}", g.recovery.is_recovering() as u8);
}

/// One line per shard replica, in the shape of Redis's keyspace lines.
fn cluster(_: &ServerState, _: &ClusterStatus, out: &mut String) {
    line!(out, "cluster_enabled:1");
}

fn shards(_: &ServerState, status: &ClusterStatus, out: &mut String) {
    let ids = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join("|");
    line!(out, "shards:{}", status.shards.len());
    for s in &status.shards {
        let state = format!("{:?}", s.state).to_ascii_lowercase();
        line!(
            out,
            "shard{}:state={state},leader={},members={},learners={},slots={}-{},entries={},term={},commit_index={},applied_index={},hibernating={}",
            s.shard_id,
            s.leader.unwrap_or(0),
            ids(&s.members),
            ids(&s.learners),
            s.first_slot,
            s.last_slot,
            s.entry_count,
            s.term,
            s.commit_index,
            s.applied_index,
            u8::from(s.hibernating)
        );
    }
}
