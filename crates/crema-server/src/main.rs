//! The `crema` binary: `serve` runs a node, `dev` a local cluster, and `status`, `metrics show`
//! and `cluster add-node|remove-node` talk to a running node's admin port.

mod cli_http;
mod operator;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use crema::NodeId;
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
        /// Shards (Raft groups) the keys are split into (see `crema serve --shards`).
        #[arg(long, default_value_t = 1)]
        shards: u32,
        /// Secure every port the way docs/security.md describes: mutual TLS between the nodes
        /// and TLS on the RESP ports, with certificates from --certs-dir (written there by
        /// `crema certs init` first if it holds none).
        #[arg(long)]
        tls: bool,
        /// Where the certificates for --tls are.
        #[arg(long, default_value = "certs")]
        certs_dir: std::path::PathBuf,
    },
    /// Show a node's role, leader, term, indexes, members and cache figures.
    Status {
        #[command(flatten)]
        admin: AdminTarget,
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
    /// Certificates for trying the secure setup.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Write a cluster CA and certificates for N nodes and a client: ca.crt, ca.key,
    /// node-1.crt, node-1.key, ..., client.crt, client.key. Node certificates name localhost,
    /// 127.0.0.1, each --host, and their node (crema://node/N).
    Init {
        /// Where to write them (created 0700; an existing CA key is never overwritten).
        #[arg(long, default_value = "certs")]
        dir: std::path::PathBuf,
        /// How many node certificates.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Another host name or IP address the nodes are reached at (repeat).
        #[arg(long)]
        host: Vec<String>,
    },
}

/// Which node's admin port a command talks to, with what token.
#[derive(Debug, Clone, clap::Args)]
struct AdminTarget {
    /// The node's admin address (for membership changes, the leader's).
    #[arg(long, default_value = "127.0.0.1:9090", env = "CREMA_ADMIN")]
    admin: SocketAddr,
    /// The node's admin token, if it has one.
    #[arg(long, env = "CREMA_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

impl AdminTarget {
    async fn request(
        &self,
        method: &str,
        path: &str,
        json: Option<&str>,
    ) -> anyhow::Result<cli_http::Response> {
        cli_http::request(self.admin, self.admin_token.as_deref(), method, path, json).await
    }
}

#[derive(Debug, Subcommand)]
enum MetricsCommand {
    /// Print a node's Prometheus metrics.
    Show {
        #[command(flatten)]
        admin: AdminTarget,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Add a node (started with `crema serve --join`) as a voter, or a learner.
    AddNode {
        #[command(flatten)]
        admin: AdminTarget,
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
        #[command(flatten)]
        admin: AdminTarget,
        /// The node's id.
        #[arg(long)]
        id: NodeId,
    },
    /// Start the placement moves that replace replicas of down nodes and even out the
    /// replicas per node (with several shards). At most two shards move at once: run it again
    /// until it starts none. A down node's meta-shard replica is replaced last, which removes
    /// the node from the cluster (to come back it starts with --join and is added again).
    Rebalance {
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Move one shard's replica from a node to another (with several shards).
    MoveShard {
        #[command(flatten)]
        admin: AdminTarget,
        /// The shard.
        #[arg(long)]
        shard: crema::ShardId,
        /// The node that gives its replica up.
        #[arg(long)]
        from: NodeId,
        /// The node that gets it.
        #[arg(long)]
        to: NodeId,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,raft=warn")),
        )
        // Logs go to stderr, coloured only on a terminal: stdout carries the `crema ready`
        // line and command output that scripts read.
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    exit_on_panic();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(run(cli.command)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with the causes, no backtrace: these are operator errors (a refused
            // connection, a bad flag), not bugs.
            eprintln!("crema: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Writes `text` to stdout. A reader that went away (`crema status | head -3`) is not an
/// error: what it wanted was written.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Fail fast: a panic anywhere (a Raft group loop, the transport, apply, a connection task)
/// is a bug, and a node that runs on with a dead task may answer on its ports with a dead Raft
/// group. The process logs one line saying where and why, and exits with status 70
/// (EX_SOFTWARE); a supervisor (systemd, Kubernetes) restarts it.
fn exit_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let location = info.location().map_or_else(|| "unknown place".to_string(), |l| l.to_string());
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            %location,
            "crema panicked: {message}; the process exits (status 70) instead of running on with a dead task"
        );
        std::process::exit(70);
    }));
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve(args.resolve()?).await,
        Command::Dev {
            nodes,
            resp_port,
            raft_port,
            admin_port,
            tick_interval_ms,
            shards,
            tls,
            certs_dir,
        } => {
            let certs = tls.then_some(certs_dir);
            dev(nodes, [resp_port, raft_port, admin_port], tick_interval_ms, shards, certs).await
        }
        Command::Status { admin, json } => operator::status(admin, json).await,
        Command::Metrics { command: MetricsCommand::Show { admin } } => {
            emit(&admin.request("GET", "/metrics", None).await?.ok()?)
        }
        Command::Cluster { command } => operator::cluster(command).await,
        Command::Certs { command: CertsCommand::Init { dir, nodes, host } } => {
            let written = crema_server::certs::init(&dir, nodes, &host)?;
            let mut out = String::new();
            for file in &written.files {
                out.push_str(&format!("wrote {}\n", file.display()));
            }
            let d = dir.display();
            out.push_str(&format!(
                "node 1: crema serve --node-id 1 --peer-tls-cert {d}/node-1.crt --peer-tls-key {d}/node-1.key \
                 --peer-tls-ca {d}/ca.crt ...\n"
            ));
            emit(&out)
        }
    }
}

/// Files and directories this process creates are its user's alone, whatever umask it was
/// started with: the data directory holds the cache's data in plain text (see
/// `crema::private_files`).
fn private_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Raises the soft limit on open files to the hard one, as Redis does for its `maxclients`:
/// clients, peers, handshakes under way and RocksDB's files all take descriptors, and the usual
/// soft default of 1,024 is spent by strangers' connections alone. Found from outside: under
/// it, 1,100 idle connections to the peer port made the RESP port fail to accept and
/// checkpoints fail to open their files.
///
/// Answers how many clients fit: `max_clients`, or fewer when the limit stays below what they
/// and the node's own needs take, as Redis lowers its `maxclients`. Found from outside: under
/// a limit of 128, 250 idle clients took the descriptors RocksDB needed for its next log file,
/// and the node refused every write until they left.
fn raise_open_file_limit(max_clients: usize) -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return max_clients };
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "open-file limit raised"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "the open-file limit could not be raised"),
        }
    }
    // Clients, then a margin for peers, handshakes (1,024 at most) and RocksDB; under a small
    // limit, half of it for the node (the peer port takes handshakes in proportion too).
    let wanted = max_clients as u64 + 4096;
    let now = getrlimit(Resource::RLIMIT_NOFILE).map_or(soft, |(soft, _)| soft);
    if now >= wanted {
        return max_clients;
    }
    let fitting = now.saturating_sub(4096).max(now / 2).max(1);
    let lowered = max_clients.min(usize::try_from(fitting).unwrap_or(usize::MAX));
    if lowered < max_clients {
        tracing::warn!(
            limit = now,
            wanted,
            max_clients = lowered,
            "the open-file limit is below --max-clients and the node's own needs: raise it (ulimit -n); \
             until then fewer clients are let in"
        );
    } else {
        tracing::warn!(
            limit = now,
            wanted,
            "the open-file limit is below the node's needs: raise it (ulimit -n)"
        );
    }
    lowered
}

/// Warns about secrets given as flags: any local user sees them in the process list.
fn warn_secret_flags() {
    for arg in std::env::args() {
        for flag in ["--password", "--cluster-secret", "--admin-token"] {
            if arg == flag || arg.starts_with(&format!("{flag}=")) {
                tracing::warn!(
                    "{flag} on the command line shows in the process list to every local user: use {flag}-file or \
                     the environment variable instead"
                );
            }
        }
    }
}

async fn serve(mut config: ServeConfig) -> anyhow::Result<()> {
    private_umask();
    warn_secret_flags();
    config.max_clients = raise_open_file_limit(config.max_clients);
    let node = RunningNode::start(&config).await?;
    let stop = shutdown_signal()?;
    // Two lines scripts and tests can wait for: the ports are open, then a leader is known (a
    // node of a cluster prints the second only once enough of its peers are up).
    let addrs = format!("resp={} raft={} admin={}", node.resp_addr, node.raft_addr, node.admin_addr);
    // Written without `println!`, which panics when stdout is gone (`crema serve | head -1`).
    let _ = emit(&format!("crema listening: node {} {addrs}\n", config.node_id));
    let (cache, id) = (node.cache.clone(), config.node_id);
    tokio::spawn(async move {
        loop {
            if let Some(leader) = cache.wait_for_leader(Duration::from_secs(3600)).await {
                let _ = emit(&format!("crema ready: node {id} leader={leader} {addrs}\n"));
                return;
            }
        }
    });
    tokio::select! {
        _ = stop => tracing::info!("signal received, shutting down"),
        end = node.cache.ended() => match end {
            crema::NodeEnd::Failed(why) => {
                // The node already stopped serving; say why and exit non-zero.
                anyhow::bail!("the node stopped: {why}");
            }
            crema::NodeEnd::Removed => {
                tracing::warn!("this node was removed from the cluster: it exits (its data directory is kept)");
            }
        },
    }
    node.stop().await;
    Ok(())
}

async fn dev(
    nodes: u64,
    [resp_port, raft_port, admin_port]: [u16; 3],
    tick_interval_ms: u64,
    shards: u32,
    certs: Option<std::path::PathBuf>,
) -> anyhow::Result<()> {
    anyhow::ensure!((1..=9).contains(&nodes), "--nodes must be 1 to 9");
    private_umask();
    if let Some(dir) = &certs {
        if !dir.join("ca.crt").exists() {
            crema_server::certs::init(dir, nodes, &[])?;
        }
    }
    let addr = |base: u16, i: u64| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], base + i as u16 - 1)) };
    let mut configs = Vec::new();
    for id in 1..=nodes {
        let peers = (1..=nodes)
            .filter(|p| *p != id)
            .map(|p| format!("{p}={},{}", addr(raft_port, p), addr(resp_port, p)))
            .collect();
        let mut config = ServeConfig {
            node_id: id,
            resp_addr: addr(resp_port, id),
            raft_addr: addr(raft_port, id),
            admin_addr: addr(admin_port, id),
            peers,
            tick_interval_ms,
            shards,
            ..ServeConfig::default()
        };
        if let Some(dir) = &certs {
            let (cert, key) = (dir.join(format!("node-{id}.crt")), dir.join(format!("node-{id}.key")));
            anyhow::ensure!(cert.exists(), "{} is missing: use another --certs-dir", cert.display());
            config.peer_tls_cert = Some(cert.clone());
            config.peer_tls_key = Some(key.clone());
            config.peer_tls_ca = Some(dir.join("ca.crt"));
            config.tls_cert = Some(cert);
            config.tls_key = Some(key);
        }
        configs.push(config);
    }
    // Started together: a memory node of a sharded cluster listens to its seeds' handshakes
    // before its meta replica starts, and would wait for seeds started after it.
    let starts = configs.iter().map(|config| async move {
        RunningNode::start(config).await.with_context(|| format!("starting node {}", config.node_id))
    });
    let running = futures_util::future::try_join_all(starts).await?;
    let stop = shutdown_signal()?;
    // Printed once every node knows a leader of each shard it holds: the commands below work
    // as soon as they show.
    for node in &running {
        let led = node.cache.wait_for_leader(Duration::from_secs(60)).await;
        anyhow::ensure!(led.is_some(), "the local cluster elected no leaders within 60 s");
    }
    let mut text = match shards {
        1 => format!("crema dev cluster of {nodes} nodes:\n"),
        _ => format!("crema dev cluster of {nodes} nodes, {shards} shards (redis-cli -c follows -MOVED):\n"),
    };
    let tls_flags = certs.as_ref().map(|d| format!("--tls --cacert {} ", d.join("ca.crt").display()));
    for (i, node) in running.iter().enumerate() {
        text.push_str(&format!(
            "  node {}: redis-cli {}-p {}   admin http://{}   raft {}\n",
            i + 1,
            tls_flags.as_deref().unwrap_or_default(),
            node.resp_addr.port(),
            node.admin_addr,
            node.raft_addr
        ));
    }
    text.push_str("Writes through any node are forwarded to the leader. Ctrl-C stops all nodes.\n");
    emit(&text)?;
    stop.await;
    for node in running {
        node.stop().await;
    }
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
