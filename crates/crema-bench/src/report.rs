//! What a run measured, printed for people or as JSON.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use crate::driver::Outcome;

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
    /// Failed operations by kind (RESP error code, `io`, ...).
    pub error_kinds: BTreeMap<String, u64>,
    /// Time to any answer, errors included (microseconds): median.
    pub answer_p50_us: u64,
    /// 99th percentile of the time to any answer.
    pub answer_p99_us: u64,
    /// Longest wait for any answer.
    pub answer_max_us: u64,
}

impl Report {
    /// Figures of a run's outcome.
    pub fn new(label: String, clients: usize, pipeline: usize, rate: Option<f64>, outcome: &Outcome) -> Self {
        let hist: &Histogram<u64> = &outcome.latencies;
        let (errors, seconds) = (outcome.errors, outcome.seconds);
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
            error_kinds: outcome.error_kinds.clone(),
            answer_p50_us: outcome.answers.value_at_quantile(0.50),
            answer_p99_us: outcome.answers.value_at_quantile(0.99),
            answer_max_us: outcome.answers.max(),
        }
    }

    /// One line per figure, for a terminal.
    pub fn human(&self) -> String {
        let us =
            |v: u64| if v >= 10_000 { format!("{:.1} ms", v as f64 / 1000.0) } else { format!("{v} µs") };
        let mut text = format!(
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
        );
        if self.errors > 0 {
            let kinds: Vec<String> = self.error_kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
            text.push_str(&format!(
                "\n  errors: {}\n  any answer (errors included): p50 {}  p99 {}  max {}",
                kinds.join(", "),
                us(self.answer_p50_us),
                us(self.answer_p99_us),
                us(self.answer_max_us),
            ));
        }
        text
    }
}
