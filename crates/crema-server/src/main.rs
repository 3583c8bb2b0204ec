//! The `crema` binary: `serve` runs a node, `dev` a local cluster, and `status`, `metrics show`
//! and `cluster add-node|remove-node` talk to a running node's admin port.

mod cli_http;

use std::net::SocketAddr;

use anyhow::Context;
use clap::{Parser, Subcommand};
use crema::NodeId;
use crema_server::admin::{AddNode, ClusterView};
use crema_server::config::{ServeArgs, ServeConfig};
use crema_server::node::RunningNode;
use tracing_subscriber::EnvFilter;

/// jemalloc instead of glibc's malloc: the request path allocates small, short-lived buffers
/// on many threads, where glibc's arenas cost ~10% of a busy node's time. (mimalloc was as fast
/// but stalled for 20-170 ms now and then, which showed at p99.9: docs/performance.md.)
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// crema: a strongly consistent distributed cache that speaks the Redis protocol.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start: the size of the `serve` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node. With no flags: one in-memory node, RESP on 127.0.0.1:6380 (redis-cli -p 6380),
    /// peers on 127.0.0.1:9000, admin HTTP on 127.0.0.1:9090.
    Serve(ServeArgs),
    /// Run a local cluster in this process (RESP on 6380, 6381, ...; Raft on 9000, ...; admin on
    /// 9090, ...). Ctrl-C stops every node.
    Dev {
        /// How many nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// First RESP port.
        #[arg(long, default_value_t = 6380)]
        resp_port: u16,
        /// First Raft port.
        #[arg(long, default_value_t = 9000)]
        raft_port: u16,
        /// First admin port.
        #[arg(long, default_value_t = 9090)]
        admin_port: u16,
        /// Raft tick of every node, ms (shorter elects faster).
        #[arg(long, default_value_t = 100)]
        tick_interval_ms: u64,
    },
    /// Show a node's role, leader, term, indexes, members and cache figures.
    Status {
        /// The node's admin address.
        #[arg(long, default_value = "127.0.0.1:9090", env = "CREMA_ADMIN")]
        admin: SocketAddr,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Metrics commands.
    Metrics {
        #[command(subcommand)]
        command: MetricsCommand,
    },
    /// Membership changes, sent to the leader's admin port.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Debug, Subcommand)]
enum MetricsCommand {
    /// Print a node's Prometheus metrics.
    Show {
        /// The node's admin address.
        #[arg(long, default_value = "127.0.0.1:9090", env = "CREMA_ADMIN")]
        admin: SocketAddr,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Add a node (started with `crema serve --join`) as a voter, or a learner.
    AddNode {
        /// The leader's admin address.
        #[arg(long, default_value = "127.0.0.1:9090", env = "CREMA_ADMIN")]
        admin: SocketAddr,
        /// The new node's id.
        #[arg(long)]
        id: NodeId,
        /// The new node's Raft address.
        #[arg(long)]
        addr: SocketAddr,
        /// Add it as a learner (receives the log, does not vote).
        #[arg(long)]
        learner: bool,
    },
    /// Remove a node from the cluster.
    RemoveNode {
        /// The leader's admin address.
        #[arg(long, default_value = "127.0.0.1:9090", env = "CREMA_ADMIN")]
        admin: SocketAddr,
        /// The node's id.
        #[arg(long)]
        id: NodeId,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,raft=warn")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(args.resolve()?).await,
        Command::Dev { nodes, resp_port, raft_port, admin_port, tick_interval_ms } => {
            dev(nodes, [resp_port, raft_port, admin_port], tick_interval_ms).await
        }
        Command::Status { admin, json } => status(admin, json).await,
        Command::Metrics { command: MetricsCommand::Show { admin } } => {
            print!("{}", cli_http::request(admin, "GET", "/metrics", None).await?.ok()?);
            Ok(())
        }
        Command::Cluster { command } => cluster(command).await,
    }
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let node = RunningNode::start(&config).await?;
    let stop = shutdown_signal()?;
    // One line scripts and tests can wait for.
    println!(
        "crema ready: node {} resp={} raft={} admin={}",
        config.node_id, node.resp_addr, node.raft_addr, node.admin_addr
    );
    stop.await;
    tracing::info!("signal received, shutting down");
    node.stop().await;
    Ok(())
}

async fn dev(
    nodes: u64,
    [resp_port, raft_port, admin_port]: [u16; 3],
    tick_interval_ms: u64,
) -> anyhow::Result<()> {
    anyhow::ensure!((1..=9).contains(&nodes), "--nodes must be 1 to 9");
    let addr = |base: u16, i: u64| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], base + i as u16 - 1)) };
    let mut running = Vec::new();
    for id in 1..=nodes {
        let peers = (1..=nodes)
            .filter(|p| *p != id)
            .map(|p| format!("{p}={},{}", addr(raft_port, p), addr(resp_port, p)))
            .collect();
        let config = ServeConfig {
            node_id: id,
            resp_addr: addr(resp_port, id),
            raft_addr: addr(raft_port, id),
            admin_addr: addr(admin_port, id),
            peers,
            tick_interval_ms,
            ..ServeConfig::default()
        };
        running.push(RunningNode::start(&config).await.with_context(|| format!("starting node {id}"))?);
    }
    let stop = shutdown_signal()?;
    println!("crema dev cluster of {nodes} nodes:");
    for (i, node) in running.iter().enumerate() {
        println!(
            "  node {}: redis-cli -p {}   admin http://{}   raft {}",
            i + 1,
            node.resp_addr.port(),
            node.admin_addr,
            node.raft_addr
        );
    }
    println!("Writes through any node are forwarded to the leader. Ctrl-C stops all nodes.");
    stop.await;
    for node in running {
        node.stop().await;
    }
    Ok(())
}

async fn status(admin: SocketAddr, json: bool) -> anyhow::Result<()> {
    let body = cli_http::request(admin, "GET", "/cluster", None).await?.ok()?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let v: ClusterView = serde_json::from_str(&body).context("reading /cluster")?;
    println!("node        {} ({})", v.node_id, v.role);
    println!("leader      {}", v.leader_id.map_or("none".into(), |l| l.to_string()));
    println!("term        {}", v.term);
    println!("commit      {}", v.commit_index);
    println!("applied     {}", v.applied_index);
    println!("voters      {:?}", v.voters);
    if !v.learners.is_empty() {
        println!("learners    {:?}", v.learners);
    }
    for (id, addr) in &v.members {
        println!("member      {id} raft={addr}");
    }
    println!("resp        {}", v.resp_addr);
    println!("entries     {}", v.entries);
    println!("size        {}", v.size);
    if let Some(bytes) = v.memory_bytes {
        println!("memory      {:.1} MiB resident", bytes as f64 / (1024.0 * 1024.0));
    }
    println!("hits/misses {}/{}", v.hits, v.misses);
    if v.probation {
        println!("probation   waiting to hear from a leader before voting");
    }
    Ok(())
}

async fn cluster(command: ClusterCommand) -> anyhow::Result<()> {
    let response = match command {
        ClusterCommand::AddNode { admin, id, addr, learner } => {
            let body = serde_json::to_string(&AddNode { id, addr, learner })?;
            cli_http::request(admin, "POST", "/cluster/nodes", Some(&body)).await?
        }
        ClusterCommand::RemoveNode { admin, id } => {
            cli_http::request(admin, "DELETE", &format!("/cluster/nodes/{id}"), None).await?
        }
    };
    print!("{}", response.ok()?);
    Ok(())
}

/// Installs the SIGINT and SIGTERM handlers now (before the node says it is ready, so a signal
/// sent right after that line cannot kill it uncleanly) and answers a future that resolves on the
/// first of them.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
