//! Runs clients against a target: closed loop (each client sends its next batch when the last
//! one is answered) or open loop (batches leave at a fixed rate, and latency counts from when a
//! batch was due, so a stalled server is not hidden by clients that waited for it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::target::{Conn, Target};
use crate::workload::{Op, OpGen, Workload};

/// Highest latency recorded exactly (larger ones are recorded as this).
const MAX_LATENCY_US: u64 = 60_000_000;

/// How a run is driven.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Concurrent clients, each with its own connection.
    pub clients: usize,
    /// Operations per batch (pipeline depth).
    pub pipeline: usize,
    /// The measured window.
    pub duration: Duration,
    /// Load before the window, not measured.
    pub warmup: Duration,
    /// Operations per second over all clients (open loop); none: closed loop.
    pub rate: Option<f64>,
}

/// What the clients saw in the measured window.
pub struct Outcome {
    /// Latencies of answered operations, microseconds.
    pub latencies: Histogram<u64>,
    /// Time to any answer, an error included (microseconds): what a caller waited.
    pub answers: Histogram<u64>,
    /// Operations that failed.
    pub errors: u64,
    /// Failed operations by kind (the RESP error code, `io`, or crema's error).
    pub error_kinds: BTreeMap<String, u64>,
    /// The window, seconds.
    pub seconds: f64,
}

/// What one client saw.
struct Seen {
    latencies: Histogram<u64>,
    answers: Histogram<u64>,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
}

/// Runs `spec` against `target`.
///
/// # Errors
/// A client cannot connect.
pub async fn run(target: Arc<Target>, workload: &Workload, spec: &RunSpec) -> anyhow::Result<Outcome> {
    let mut conns = Vec::with_capacity(spec.clients);
    for c in 0..spec.clients {
        conns.push(target.connect(c).await?);
    }
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let interval = spec.rate.map(|r| Duration::from_secs_f64(spec.clients as f64 * spec.pipeline as f64 / r));
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(c, conn)| {
            let (target, workload, spec) = (target.clone(), workload.clone(), spec.clone());
            // Open-loop clients start spread over one interval, not all at once.
            let first =
                start + interval.map_or(Duration::ZERO, |i| i.mul_f64(c as f64 / spec.clients as f64));
            tokio::spawn(async move {
                client(c, conn, &target, &workload, &spec, interval, first, measure_from, end).await
            })
        })
        .collect();
    let mut outcome = Outcome {
        latencies: histogram(),
        answers: histogram(),
        errors: 0,
        error_kinds: BTreeMap::new(),
        seconds: spec.duration.as_secs_f64(),
    };
    for task in tasks {
        let seen = task.await?;
        outcome.latencies.add(&seen.latencies)?;
        outcome.answers.add(&seen.answers)?;
        outcome.errors += seen.errors;
        for (kind, n) in seen.error_kinds {
            *outcome.error_kinds.entry(kind).or_default() += n;
        }
    }
    Ok(outcome)
}

/// What kind of failure `e` is: the RESP error code (`TIMEOUT`, `CLUSTERDOWN`, ...), `io` for a
/// broken or refused connection, else the error's first word.
fn error_kind(e: &anyhow::Error) -> String {
    if let Some(e) = e.downcast_ref::<redis::RedisError>() {
        if let Some(code) = e.code() {
            return code.to_owned();
        }
        if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
            return "io".to_owned();
        }
    }
    let text = e.to_string();
    text.split(|c: char| !c.is_alphanumeric()).find(|w| !w.is_empty()).unwrap_or("error").to_owned()
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid bounds")
}

#[allow(clippy::too_many_arguments)]
async fn client(
    c: usize,
    mut conn: Conn,
    target: &Target,
    workload: &Workload,
    spec: &RunSpec,
    interval: Option<Duration>,
    first: Instant,
    measure_from: Instant,
    end: Instant,
) -> Seen {
    let mut gen = OpGen::new(workload, c as u64);
    let mut seen =
        Seen { latencies: histogram(), answers: histogram(), errors: 0, error_kinds: BTreeMap::new() };
    let mut next = first;
    loop {
        let due = match interval {
            Some(i) => {
                let due = next;
                next += i;
                tokio::time::sleep_until(due).await;
                due
            }
            None => Instant::now(),
        };
        if due >= end {
            break;
        }
        let batch: Vec<Op> = (0..spec.pipeline).map(|_| gen.next_op()).collect();
        let result = conn.run(&batch).await;
        let latency = (due.elapsed().as_micros() as u64).clamp(1, MAX_LATENCY_US);
        let measured = due >= measure_from;
        let n = batch.len() as u64;
        if measured {
            seen.answers.record_n(latency, n).expect("clamped to the bounds");
        }
        match result {
            Ok(()) if measured => seen.latencies.record_n(latency, n).expect("clamped to the bounds"),
            Ok(()) => {}
            Err(e) => {
                if measured {
                    seen.errors += n;
                    *seen.error_kinds.entry(error_kind(&e)).or_default() += n;
                }
                // A broken connection stays broken: make a new one (or wait a little).
                match target.connect(c).await {
                    Ok(fresh) => conn = fresh,
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        }
    }
    seen
}

/// Connections a preload uses at least: a one-client workload against a target without
/// pipelining (etcd) would otherwise write its 100,000 keys one round trip at a time.
const PRELOAD_CLIENTS: usize = 32;

/// Times a preload batch is sent before its failure ends the run.
const PRELOAD_ATTEMPTS: u32 = 3;

/// Writes every key once (pipelined, split over at least `PRELOAD_CLIENTS` connections), so
/// reads find data.
///
/// # Errors
/// A client cannot connect or a write fails.
pub async fn preload(target: Arc<Target>, workload: &Workload, clients: usize) -> anyhow::Result<()> {
    let clients = clients.max(PRELOAD_CLIENTS);
    let value = workload.value();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut conn = target.connect(c).await?;
        let (workload, value, target) = (workload.clone(), value.clone(), target.clone());
        tasks.push(tokio::spawn(async move {
            let mine: Vec<u64> = (c as u64..workload.keys).step_by(clients).collect();
            for chunk in mine.chunks(64) {
                let batch: Vec<Op> = chunk.iter().map(|i| Op::Set(workload.key(*i), value.clone())).collect();
                // A write whose outcome is unknown (TIMEOUT, or no answer within the client's
                // own timeout) or that found no leader is sent again, on a new connection: SET
                // is idempotent, and the preload is not measured. Said on stderr. (The redis
                // crate's cluster client 1.8.1 could wedge for good while it refreshed its slot
                // map, so that every later command on it timed out; see docs/reliability.md.)
                let mut attempt = 1;
                while let Err(e) = conn.run(&batch).await {
                    let text = e.to_string();
                    let retriable = ["TIMEOUT", "TRYAGAIN", "CLUSTERDOWN", "timed out"]
                        .iter()
                        .any(|code| text.contains(code));
                    if !retriable || attempt == PRELOAD_ATTEMPTS {
                        return Err(e);
                    }
                    eprintln!(
                        "preload: a batch of {} writes failed ({}), sending it again",
                        batch.len(),
                        error_kind(&e)
                    );
                    conn = target.connect(c).await?;
                    attempt += 1;
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}
