//! Prometheus metrics, declared in one place and served by the admin port's `/metrics`.
//!
//! The cache's own series (hits, entries, proposals, Raft, shards, gossip) come from its
//! registry (`crema::metrics`, `DistributedCache::metrics`); the server adds the RESP series it
//! updates as it works (commands, error replies, latency) and its connection figures, read at
//! scrape time. Every name starts with `crema_`.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

pub use crema::metrics::resident_memory_bytes;
use crema::metrics::{counter, gauge, latency_histogram, Counter, Histogram};
use crema::DistributedCache;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::family::Family;

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

/// Handles of one command's series, made once so that recording is a few atomic adds (no label
/// hashing or locking per command).
#[derive(Clone)]
struct CommandSeries {
    count: Counter,
    errors: Counter,
    seconds: Histogram,
}

/// The RESP server's families; a scrape registers clones of them (shared values) next to the
/// cache's own series.
#[derive(Debug, Clone)]
struct Families {
    commands: Family<CommandLabels, Counter>,
    command_errors: Family<CommandLabels, Counter>,
    command_seconds: Family<CommandLabels, Histogram, fn() -> Histogram>,
    error_replies: Family<PrefixLabels, Counter>,
}

/// The node's metrics.
pub struct Metrics {
    cache: Weak<DistributedCache>,
    families: Families,
    /// By position in [`crate::cmd::COMMANDS`]; the last is for unknown commands.
    series: Vec<CommandSeries>,
    /// By position in [`ERROR_PREFIXES`].
    error_replies: Vec<Counter>,
    /// Set once the RESP server exists, for the connection gauges.
    server: Arc<OnceLock<Weak<ServerState>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics for `cache`'s node.
    pub fn new(cache: &Arc<DistributedCache>) -> Self {
        let families = Families {
            commands: Family::default(),
            command_errors: Family::default(),
            command_seconds: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            error_replies: Family::default(),
        };
        let names = crate::cmd::COMMANDS.iter().map(|c| c.name).chain(["unknown"]);
        let series = names
            .map(|command| {
                let labels = CommandLabels { command };
                CommandSeries {
                    count: families.commands.get_or_create(&labels).clone(),
                    errors: families.command_errors.get_or_create(&labels).clone(),
                    seconds: families.command_seconds.get_or_create(&labels).clone(),
                }
            })
            .collect();
        let error_replies = ERROR_PREFIXES
            .iter()
            .map(|prefix| families.error_replies.get_or_create(&PrefixLabels { prefix }).clone())
            .collect();
        Self {
            cache: Arc::downgrade(cache),
            families,
            series,
            error_replies,
            server: Arc::new(OnceLock::new()),
        }
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

    /// The Prometheus text exposition: the cache's registry (`crema::metrics`) and the RESP
    /// server's series.
    pub fn render(&self) -> String {
        let Some(cache) = self.cache.upgrade() else { return "# EOF\n".into() };
        let mut metrics = cache.metrics();
        let f = self.families.clone();
        metrics.register("resp_commands", "RESP commands run, by command", f.commands);
        metrics.register("resp_command_errors", "RESP commands answered with an error", f.command_errors);
        metrics.register(
            "resp_error_replies",
            "RESP error replies, by the error's first word (INFO errorstats)",
            f.error_replies,
        );
        metrics.register("resp_command_duration_seconds", "RESP command latency", f.command_seconds);
        metrics.register_collector(Box::new(ServerCollector { server: self.server.clone() }));
        metrics.render()
    }
}

/// The RESP server's connection figures, read at scrape time.
#[derive(Debug)]
struct ServerCollector {
    server: Arc<OnceLock<Weak<ServerState>>>,
}

impl Collector for ServerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let Some(server) = self.server.get().and_then(Weak::upgrade) else { return Ok(()) };
        let e = &mut encoder;
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
        )
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
