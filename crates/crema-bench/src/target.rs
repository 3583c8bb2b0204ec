//! Where operations go: a RESP server (crema or any Redis) or crema nodes in this process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use crema::{CacheConfig, DistributedCache, RaftConfig};
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;

use crate::workload::Op;

/// How embedded reads are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadMode {
    /// `consistent_get`: Read-Index through the leader.
    Linearizable,
    /// `get`: this node's cache.
    Local,
}

/// A system under test.
pub enum Target {
    /// RESP servers; client `i` talks to `addrs[i % len]`, or with `cluster` to every node
    /// that leads a slot range.
    Resp {
        /// host:port of each server.
        addrs: Vec<String>,
        /// Sent once on each new connection (`READONLY` for crema's local reads).
        init: Option<String>,
        /// How long one request may take before it counts as an error (the `redis` crate's own
        /// default is 500 ms, too short for a loaded server).
        timeout: Duration,
        /// With TLS: the CA certificate (PEM) the servers' certificates are checked against.
        tls_ca: Option<Vec<u8>>,
        /// Each client is a Redis Cluster client (the `redis` crate's): it reads the slot map
        /// from the servers and sends each key to its slot's primary (see `resp --cluster`).
        cluster: bool,
    },
    /// An etcd cluster through its gRPC API (cargo feature `etcd`); each client has its own
    /// connection to all endpoints.
    #[cfg(feature = "etcd")]
    Etcd {
        /// host:port of each member's client URL.
        endpoints: Vec<String>,
        /// Serializable (local) reads instead of etcd's default linearizable ones.
        serializable: bool,
    },
    /// crema nodes in this process; client `i` uses `nodes[i % len]`.
    Embedded {
        /// The nodes.
        nodes: Vec<Arc<DistributedCache>>,
        /// How reads are made.
        reads: ReadMode,
    },
}

/// One client's connection.
pub enum Conn {
    /// A `redis` crate connection.
    Resp(MultiplexedConnection),
    /// A `redis` crate cluster connection (one connection per node it sends to).
    Cluster(ClusterConnection),
    /// A node handle.
    Embedded(Arc<DistributedCache>, ReadMode),
    /// An etcd KV client and whether reads are serializable.
    #[cfg(feature = "etcd")]
    Etcd(Box<etcd_client::KvClient>, bool),
}

impl Target {
    /// Starts `n` in-process nodes on 127.0.0.1 with memory storage and waits for a leader.
    ///
    /// # Errors
    /// A node does not start or no leader is elected within 10 s.
    pub async fn embedded(n: usize, reads: ReadMode) -> anyhow::Result<Self> {
        let listeners: Vec<std::net::TcpListener> =
            (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr()).collect::<Result<_, _>>()?;
        let mut nodes = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let id = i as u64 + 1;
            let seeds = (0..n).filter(|j| *j != i).map(|j| (j as u64 + 1, addrs[j])).collect();
            let config = CacheConfig::new(id, addrs[i])
                .with_seed_nodes(seeds)
                .with_max_capacity(10_000_000)
                .with_raft_config(RaftConfig { tick_interval_ms: 20, ..Default::default() });
            nodes.push(Arc::new(DistributedCache::new_with_listener(config, listener).await?));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !nodes.iter().any(|n| n.is_leader()) || nodes.iter().any(|n| n.leader_id().is_none()) {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "no leader within 10 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Self::Embedded { nodes, reads })
    }

    /// A connection for client number `client`.
    ///
    /// # Errors
    /// The server cannot be reached.
    pub async fn connect(&self, client: usize) -> anyhow::Result<Conn> {
        match self {
            Target::Resp { addrs, timeout, tls_ca, cluster: true, .. } => {
                let scheme = if tls_ca.is_some() { "rediss" } else { "redis" };
                let mut builder = redis::cluster::ClusterClient::builder(
                    addrs.iter().map(|a| format!("{scheme}://{a}/")).collect::<Vec<_>>(),
                )
                .connection_timeout(*timeout)
                .response_timeout(*timeout);
                if let Some(ca) = tls_ca {
                    builder = builder
                        .certs(redis::TlsCertificates { client_tls: None, root_cert: Some(ca.clone()) });
                }
                let conn = builder
                    .build()?
                    .get_async_connection()
                    .await
                    .with_context(|| format!("connecting to the cluster at {}", addrs.join(",")))?;
                Ok(Conn::Cluster(conn))
            }
            Target::Resp { addrs, init, timeout, tls_ca, cluster: false } => {
                let addr = &addrs[client % addrs.len()];
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(*timeout))
                    .set_response_timeout(Some(*timeout));
                // The redis crate's defaults (no TCP_NODELAY), as every earlier figure in
                // docs/performance.md was measured with.
                let server = match tls_ca {
                    None => redis::Client::open(format!("redis://{addr}/"))?,
                    Some(ca) => redis::Client::build_with_tls(
                        format!("rediss://{addr}/"),
                        redis::TlsCertificates { client_tls: None, root_cert: Some(ca.clone()) },
                    )?,
                };
                let mut conn = server
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .with_context(|| format!("connecting to {addr}"))?;
                if let Some(init) = init {
                    let mut cmd = redis::Cmd::new();
                    for word in init.split_whitespace() {
                        cmd.arg(word);
                    }
                    cmd.query_async::<()>(&mut conn).await.with_context(|| format!("{init} on {addr}"))?;
                }
                Ok(Conn::Resp(conn))
            }
            Target::Embedded { nodes, reads } => {
                Ok(Conn::Embedded(nodes[client % nodes.len()].clone(), *reads))
            }
            #[cfg(feature = "etcd")]
            Target::Etcd { endpoints, serializable } => {
                let client = etcd_client::Client::connect(endpoints, None)
                    .await
                    .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
                Ok(Conn::Etcd(Box::new(client.kv_client()), *serializable))
            }
        }
    }

    /// For in-process nodes: what happened in the cluster during the run (leader changes and
    /// snapshots installed, summed over the nodes), which explains latency outliers.
    pub fn events(&self) -> Option<String> {
        let Target::Embedded { nodes, .. } = self else { return None };
        let figures: Vec<_> = nodes.iter().map(|n| n.raft_figures()).collect();
        let changes: u64 = figures.iter().map(|f| f.leader_changes).sum();
        let snapshots: u64 = figures.iter().map(|f| f.snapshots_installed).sum();
        let batches: u64 = figures.iter().map(|f| f.proposal_batches).sum();
        let entries: u64 = figures.iter().map(|f| f.proposed_entries).sum();
        let per_batch = if batches == 0 { 0.0 } else { entries as f64 / batches as f64 };
        Some(format!(
            "cluster: {changes} leader changes seen, {snapshots} snapshots installed, \
             {entries} entries proposed in {batches} batches ({per_batch:.1} per batch)"
        ))
    }

    /// Stops in-process nodes.
    pub async fn shutdown(&self) {
        if let Target::Embedded { nodes, .. } = self {
            for node in nodes {
                node.shutdown().await;
            }
        }
    }
}

impl Conn {
    /// Sends `ops` (pipelined on RESP; all at once, each to its key's node, for a cluster
    /// client; one after another embedded) and waits for every answer.
    ///
    /// # Errors
    /// Any error answer or a broken connection.
    pub async fn run(&mut self, ops: &[Op]) -> anyhow::Result<()> {
        match self {
            Conn::Resp(conn) => {
                if let [op] = ops {
                    command(op).query_async::<redis::Value>(conn).await?;
                } else {
                    let mut pipe = redis::pipe();
                    for op in ops {
                        pipe.add_command(command(op));
                    }
                    pipe.query_async::<Vec<redis::Value>>(conn).await?;
                }
                Ok(())
            }
            Conn::Cluster(conn) => {
                // A pipeline's keys live in different slots: each command goes to its own
                // slot's primary, all of them at once over the client's connections.
                let sent = ops.iter().map(|op| {
                    let mut conn = conn.clone();
                    async move { command(op).query_async::<redis::Value>(&mut conn).await }
                });
                futures_util::future::try_join_all(sent).await?;
                Ok(())
            }
            Conn::Embedded(node, reads) => {
                for op in ops {
                    match (op, *reads) {
                        (Op::Get(key), ReadMode::Linearizable) => {
                            node.consistent_get(key).await?;
                        }
                        (Op::Get(key), ReadMode::Local) => {
                            node.get(key).await;
                        }
                        (Op::Set(key, value), _) => node.put(key.clone(), value.clone()).await?,
                    }
                }
                Ok(())
            }
            #[cfg(feature = "etcd")]
            Conn::Etcd(kv, serializable) => {
                for op in ops {
                    match op {
                        Op::Get(key) => {
                            let options =
                                serializable.then(|| etcd_client::GetOptions::new().with_serializable());
                            kv.get(&key[..], options).await?;
                        }
                        Op::Set(key, value) => {
                            kv.put(&key[..], &value[..], None).await?;
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

fn command(op: &Op) -> redis::Cmd {
    match op {
        Op::Get(key) => redis::cmd("GET").arg(&key[..]).to_owned(),
        Op::Set(key, value) => redis::cmd("SET").arg(&key[..]).arg(&value[..]).to_owned(),
    }
}
