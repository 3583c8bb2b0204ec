//! What a run measured, printed for people or as JSON.

use hdrhistogram::Histogram;

/// Figures of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// What was measured (target and workload in words).
    pub label: String,
    /// Clients (connections).
    pub clients: usize,
    /// Operations per request batch.
    pub pipeline: usize,
    /// Target rate (ops/s) of an open-loop run; none for closed loop.
    pub rate: Option<f64>,
    /// Operations answered without error in the measured window.
    pub ops: u64,
    /// Operations that failed in the measured window.
    pub errors: u64,
    /// Length of the measured window, seconds.
    pub seconds: f64,
    /// `ops / seconds`.
    pub ops_per_sec: f64,
    /// Latency percentiles, microseconds.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest.
    pub max_us: u64,
}

impl Report {
    /// Figures from a latency histogram (microseconds) of successful operations.
    pub fn new(
        label: String,
        clients: usize,
        pipeline: usize,
        rate: Option<f64>,
        hist: &Histogram<u64>,
        errors: u64,
        seconds: f64,
    ) -> Self {
        let ops = hist.len();
        Self {
            label,
            clients,
            pipeline,
            rate,
            ops,
            errors,
            seconds,
            ops_per_sec: if seconds > 0.0 { ops as f64 / seconds } else { 0.0 },
            p50_us: hist.value_at_quantile(0.50),
            p90_us: hist.value_at_quantile(0.90),
            p99_us: hist.value_at_quantile(0.99),
            p999_us: hist.value_at_quantile(0.999),
            max_us: hist.max(),
        }
    }

    /// One line per figure, for a terminal.
    pub fn human(&self) -> String {
        let us =
            |v: u64| if v >= 10_000 { format!("{:.1} ms", v as f64 / 1000.0) } else { format!("{v} µs") };
        format!(
            "{}\n  clients {}  pipeline {}  {}\n  {:.0} ops/s  ({} ops, {} errors, {:.1} s)\n  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            self.label,
            self.clients,
            self.pipeline,
            self.rate.map_or("closed loop".to_owned(), |r| format!("open loop at {r:.0} ops/s")),
            self.ops_per_sec,
            self.ops,
            self.errors,
            self.seconds,
            us(self.p50_us),
            us(self.p90_us),
            us(self.p99_us),
            us(self.p999_us),
            us(self.max_us),
        )
    }
}
