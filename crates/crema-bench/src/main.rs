//! `crema-bench`: load against a RESP server (crema or any Redis) or against crema nodes in this
//! process, closed or open loop, with latency percentiles from HdrHistogram.
//!
//! ```text
//! crema-bench resp --addr 127.0.0.1:6380 --clients 50 --reads 0.9 --distribution zipfian
//! crema-bench embedded --nodes 3 --clients 64 --duration 10 --read-mode local
//! ```

mod driver;
mod report;
mod target;
mod workload;

use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use driver::RunSpec;
use report::Report;
use target::{ReadMode, Target};
use workload::{Distribution, Workload};

/// jemalloc, as in the `crema` binary: the embedded target then measures crema as the server
/// runs it, and the load generator spends less of the shared cores in glibc's malloc (22% of
/// an embedded 3-node run).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "crema-bench", version, about = "Load generator for crema (and any Redis-protocol server)")]
struct Cli {
    #[command(subcommand)]
    target: TargetCmd,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Subcommand)]
enum TargetCmd {
    /// A RESP server: crema or Redis. Clients are spread over the addresses (with `--cluster`,
    /// each reaches every node that leads a slot range).
    Resp {
        /// host:port (repeat for several nodes).
        #[arg(long = "addr", default_value = "127.0.0.1:6380")]
        addrs: Vec<String>,
        /// Reads from crema's local cache (sends READONLY on each connection).
        #[arg(long)]
        local_reads: bool,
        /// Connect with TLS (`rediss://`), trusting this CA certificate (PEM), e.g. the
        /// `ca.crt` of `crema certs init`.
        #[arg(long)]
        tls_ca: Option<std::path::PathBuf>,
        /// Each client is a Redis Cluster client (the `redis` crate's cluster client): it asks
        /// the nodes for the slot map (`CLUSTER SLOTS`) and sends every key to its slot's
        /// primary, the shard's leader; the addresses are its seeds. Its slot map is refreshed
        /// when a connection fails or answers `-MOVED` (only the connection that asked for the
        /// map does): until then a write sent to a node that no longer leads is forwarded.
        #[arg(long, conflicts_with = "local_reads")]
        cluster: bool,
    },
    /// An etcd cluster through its gRPC API (built with `--features etcd`).
    #[cfg(feature = "etcd")]
    Etcd {
        /// host:port of a member's client URL (repeat for several).
        #[arg(long = "endpoint", default_value = "127.0.0.1:2379")]
        endpoints: Vec<String>,
        /// Serializable reads (a member's local state) instead of linearizable ones.
        #[arg(long)]
        serializable: bool,
    },
    /// crema nodes started in this process (memory storage, 127.0.0.1).
    Embedded {
        /// Nodes in the cluster.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// How reads are made.
        #[arg(long, value_enum, default_value = "linearizable")]
        read_mode: ReadMode,
    },
}

#[derive(Args)]
struct LoadArgs {
    /// Concurrent clients (connections).
    #[arg(long, global = true, default_value_t = 50)]
    clients: usize,
    /// Operations per request batch (RESP only; with `resp --cluster` a batch's requests go out
    /// at once, each to its key's node, not as one pipeline).
    #[arg(long, global = true, default_value_t = 1)]
    pipeline: usize,
    /// Distinct keys.
    #[arg(long, global = true, default_value_t = 100_000)]
    keys: u64,
    /// Bytes per key.
    #[arg(long, global = true, default_value_t = 16)]
    key_size: usize,
    /// Bytes per value.
    #[arg(long, global = true, default_value_t = 100)]
    value_size: usize,
    /// How keys are picked.
    #[arg(long, global = true, value_enum, default_value = "uniform")]
    distribution: Distribution,
    /// Fraction of reads (0: only writes, 1: only reads).
    #[arg(long, global = true, default_value_t = 0.0)]
    reads: f64,
    /// Measured seconds.
    #[arg(long, global = true, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured seconds of load first.
    #[arg(long, global = true, default_value_t = 2.0)]
    warmup: f64,
    /// Open loop at this many operations per second over all clients (default: closed loop).
    #[arg(long, global = true)]
    rate: Option<f64>,
    /// Seconds one request may take before it counts as an error.
    #[arg(long, global = true, default_value_t = 30.0)]
    timeout: f64,
    /// Write every key once before the run (for read workloads).
    #[arg(long, global = true)]
    preload: bool,
    /// Print the report as JSON.
    #[arg(long, global = true)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Silent unless asked: `RUST_LOG=redis=info` shows the redis crate's cluster clients
    // refreshing their slot maps, `RUST_LOG=crema=debug` the embedded nodes.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG") {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    }
    let load = &cli.load;
    anyhow::ensure!(load.clients > 0 && load.pipeline > 0, "--clients and --pipeline must be at least 1");
    anyhow::ensure!(load.duration > 0.0 && load.warmup >= 0.0, "--duration must be positive");
    anyhow::ensure!(load.rate.is_none_or(|r| r > 0.0), "--rate must be positive");
    anyhow::ensure!(load.timeout > 0.0, "--timeout must be positive");
    let workload = Workload {
        keys: load.keys,
        key_size: load.key_size,
        value_size: load.value_size,
        distribution: load.distribution,
        read_ratio: load.reads,
    };
    workload.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(async {
        let (target, what) = match &cli.target {
            TargetCmd::Resp { addrs, local_reads, tls_ca, cluster } => {
                let init = local_reads.then(|| "READONLY".to_owned());
                let reads = if *local_reads { "local reads" } else { "default reads" };
                let timeout = Duration::from_secs_f64(load.timeout);
                let tls_ca = match tls_ca {
                    None => None,
                    Some(path) => {
                        let _ = rustls::crypto::ring::default_provider().install_default();
                        Some(
                            std::fs::read(path)
                                .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?,
                        )
                    }
                };
                let tls = if tls_ca.is_some() { ", TLS" } else { "" };
                let mode = if *cluster { ", cluster client" } else { "" };
                (
                    Target::Resp { addrs: addrs.clone(), init, timeout, tls_ca, cluster: *cluster },
                    format!("resp {} ({reads}{tls}{mode})", addrs.join(",")),
                )
            }
            #[cfg(feature = "etcd")]
            TargetCmd::Etcd { endpoints, serializable } => {
                anyhow::ensure!(load.pipeline == 1, "etcd requests are not pipelined: use --pipeline 1");
                let reads = if *serializable { "serializable" } else { "linearizable" };
                let what = format!("etcd {} ({reads} reads)", endpoints.join(","));
                (Target::Etcd { endpoints: endpoints.clone(), serializable: *serializable }, what)
            }
            TargetCmd::Embedded { nodes, read_mode } => {
                anyhow::ensure!(load.pipeline == 1, "the embedded API has no pipelining: use --pipeline 1");
                let what = format!("embedded, {nodes} nodes ({read_mode:?} reads)");
                (Target::embedded(*nodes, *read_mode).await?, what)
            }
        };
        let target = Arc::new(target);
        if load.preload {
            driver::preload(target.clone(), &workload, load.clients).await?;
        }
        let spec = RunSpec {
            clients: load.clients,
            pipeline: load.pipeline,
            duration: Duration::from_secs_f64(load.duration),
            warmup: Duration::from_secs_f64(load.warmup),
            rate: load.rate,
        };
        let outcome = driver::run(target.clone(), &workload, &spec).await?;
        if let Some(events) = target.events() {
            eprintln!("{events}");
        }
        target.shutdown().await;
        let label = format!(
            "{what}: {} keys ({:?}), {} B keys, {} B values, {:.0}% reads",
            workload.keys,
            workload.distribution,
            workload.key_size,
            workload.value_size,
            workload.read_ratio * 100.0
        );
        anyhow::Ok(Report::new(label, spec.clients, spec.pipeline, spec.rate, &outcome))
    })?;
    if load.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.human());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["crema-bench", "embedded", "--read-mode", "local", "--reads", "0.9"])
            .unwrap();
        assert!(matches!(cli.target, TargetCmd::Embedded { nodes: 3, read_mode: ReadMode::Local }));
        assert_eq!(cli.load.reads, 0.9);
    }
}
