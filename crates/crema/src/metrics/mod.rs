//! The node's metrics, as the seed names them: [`DistributedCache::metrics`] answers a
//! [`MetricsRegistry`] with the cache's hits, misses, entries and size, the Raft group's
//! proposals, their latency, leader changes, the gossip members, each shard's entries and
//! leader changes, and how long replica moves took, ready to be encoded in the Prometheus text
//! format or read one by one.
//!
//! Built on `prometheus-client` (the Prometheus project's own Rust client): [`Counter`],
//! [`Gauge`] and [`Histogram`] are its types, re-exported so that an application registers its
//! own metrics next to the cache's and serves them all from one endpoint. Two kinds of series:
//! - **updated as the node works**: `crema_raft_proposals_total{result}` and
//!   `crema_raft_proposal_latency_seconds`, counted by every write through the cache API, held
//!   by the node and shared by every registry made of it;
//! - **read when the registry is made**: everything the cache already counts (hits, entries,
//!   terms and indexes, shard figures), so that the hot path pays nothing for them. A registry
//!   is therefore the node as of [`DistributedCache::metrics`]: ask again for newer figures.
//!
//! Every name starts with `crema_` (the seed lists them without it); counters end in `_total`
//! as OpenMetrics has it.
//!
//! ```no_run
//! # async fn example(cache: crema::DistributedCache) -> std::fmt::Result {
//! use crema::metrics::{Counter, MetricsRegistry};
//!
//! let mut metrics: MetricsRegistry = cache.metrics();
//! let hits = metrics.value("crema_cache_hits_total");
//! let logins = Counter::<u64>::default();
//! metrics.register("app_logins", "Logins served", logins.clone());
//! let text = metrics.render(); // what a Prometheus scrape reads
//! # Ok(()) }
//! ```

mod figures;

use std::fmt::Write as _;
use std::time::Duration;

pub use prometheus_client;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
pub use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
pub use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

use crate::DistributedCache;

pub use figures::{counter, gauge, resident_memory_bytes};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// A latency histogram's buckets: 10 µs to about 40 s.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_01, 2.0, 22))
}

/// The series the node updates as it works; clones share the values.
#[derive(Debug, Clone)]
pub(crate) struct LiveMetrics {
    proposals: Family<ResultLabels, Counter>,
    ok: Counter,
    failed: Counter,
    proposal_seconds: Histogram,
}

impl LiveMetrics {
    pub(crate) fn new() -> Self {
        let proposals = Family::<ResultLabels, Counter>::default();
        let ok = proposals.get_or_create(&ResultLabels { result: "ok" }).clone();
        let failed = proposals.get_or_create(&ResultLabels { result: "error" }).clone();
        Self { proposals, ok, failed, proposal_seconds: latency_histogram() }
    }

    /// Records one write through the cache API: how long it took and whether it was applied.
    pub(crate) fn observe_proposal(&self, took: Duration, ok: bool) {
        if ok {
            self.ok.inc();
            self.proposal_seconds.observe(took.as_secs_f64());
        } else {
            self.failed.inc();
        }
    }
}

/// The metrics of one node as of the call that made it (see the module header), and any an
/// application adds. Encode it with [`Self::render`] or [`Self::encode`]; read one value with
/// [`Self::value`].
#[derive(Debug)]
pub struct MetricsRegistry {
    registry: Registry,
}

impl MetricsRegistry {
    /// The registry of `cache`'s node: its live series and its figures read now.
    pub(crate) fn of(cache: &DistributedCache, live: &LiveMetrics) -> Self {
        let mut registry = Registry::with_prefix("crema");
        registry.register(
            "raft_proposals",
            "Writes proposed through this node, by result",
            live.proposals.clone(),
        );
        registry.register(
            "raft_proposal_latency_seconds",
            "Time from propose to applied on this node",
            live.proposal_seconds.clone(),
        );
        registry.register_collector(Box::new(figures::NodeFigures::read(cache)));
        Self { registry }
    }

    /// Adds `metric` under `name` (prefixed `crema_`; a counter's name gets `_total`).
    pub fn register(&mut self, name: impl Into<String>, help: impl Into<String>, metric: impl Metric) {
        self.registry.register(name, help, metric);
    }

    /// Adds a collector: series it makes when the registry is encoded.
    pub fn register_collector(&mut self, collector: Box<dyn Collector>) {
        self.registry.register_collector(collector);
    }

    /// The `prometheus-client` registry underneath, for what the methods here do not cover.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Writes the OpenMetrics text exposition (what a Prometheus scrape reads) to `out`.
    ///
    /// # Errors
    /// Only those of `out`.
    pub fn encode(&self, out: &mut impl std::fmt::Write) -> std::fmt::Result {
        prometheus_client::encoding::text::encode(out, &self.registry)
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.encode(&mut out).expect("writing to a String cannot fail");
        out
    }

    /// The value of the sample named exactly `name` with exactly `labels` (as written in the
    /// exposition: `shard="3"`, or `""` for none): `value("crema_cache_hits_total", "")`,
    /// `value("crema_shard_entries", "shard=\"3\"")`. None when there is no such sample.
    pub fn value_with(&self, name: &str, labels: &str) -> Option<f64> {
        let text = self.render();
        let mut sample = String::with_capacity(name.len() + labels.len() + 2);
        sample.push_str(name);
        if !labels.is_empty() {
            let _ = write!(sample, "{{{labels}}}");
        }
        text.lines().find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series == sample).then(|| value.parse().ok()).flatten()
        })
    }

    /// The value of the unlabelled sample named exactly `name` (`crema_cache_entries`,
    /// `crema_raft_leader_changes_total`); see [`Self::value_with`].
    pub fn value(&self, name: &str) -> Option<f64> {
        self.value_with(name, "")
    }
}
