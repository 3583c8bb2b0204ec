//! Starting a whole node from a [`ServeConfig`]: the cache, the RESP server and the admin HTTP
//! server, all stopped together by one cancellation token. `crema serve` runs one; `crema dev`
//! runs several in one process.
//!
//! The RESP server and its connections run on a tokio runtime of their own (threads named
//! `crema-clients`, `--client-threads`, by default half the cores), apart from the Raft
//! groups, the peer transport and the admin server on the runtime that started the node: tokio does not preempt a task, and a Raft
//! group's write takes several hops between tasks (connection, group loop, peer links), each of
//! which waited its turn behind every connection that had work. Found from outside: 200
//! clients that each asked for an 8 MB value and never read it kept a leader copying into
//! their sockets' kernel buffers, its Raft group waited 0.4-1.4 s, once long enough for an
//! election. Apart, the operating system shares the cores between the two runtimes' threads,
//! and the groups run within a few milliseconds whatever the connections do (measured in
//! docs/reliability.md and docs/performance.md, with what the hand-over between the runtimes
//! costs; what the groups are given to replicate is bounded in the groups and the peer links,
//! docs/reliability.md, "multi-MB writes").

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use crema::DistributedCache;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::config::ServeConfig;
use crate::metrics::Metrics;
use crate::server::RespServer;

/// The client address peers are told (see `CacheConfig::client_addr`): the RESP address, or,
/// when it listens on every interface, its port on the peer address's host (the one the
/// others reach this node on). When that is a wildcard too, the wildcard with the port: each
/// peer names this node by the host it reaches it at. Nothing when the RESP address is a
/// loopback one and the peer address is not: a peer on another host would send clients to its
/// own loopback, that is to itself.
fn advertised(resp: SocketAddr, raft: SocketAddr) -> Option<SocketAddr> {
    let host = if resp.ip().is_unspecified() { raft.ip() } else { resp.ip() };
    if host.is_loopback() && !raft.ip().is_loopback() {
        return None;
    }
    Some(SocketAddr::new(host, resp.port()))
}

/// A running node.
pub struct RunningNode {
    /// The cache.
    pub cache: Arc<DistributedCache>,
    /// Where Redis clients connect.
    pub resp_addr: SocketAddr,
    /// Where peers connect.
    pub raft_addr: SocketAddr,
    /// The admin HTTP address.
    pub admin_addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    /// The RESP connections' runtime (see the module docs).
    _clients: ClientsRuntime,
}

/// The RESP connections' runtime, shut down when dropped without waiting for its tasks: it is
/// dropped on a thread of the node's runtime, where blocking is not allowed (after
/// [`RunningNode::stop`] closed the connections, or when the node failed to start).
struct ClientsRuntime(Option<tokio::runtime::Runtime>);

impl Drop for ClientsRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl RunningNode {
    /// Binds the three ports and starts everything.
    ///
    /// # Errors
    /// A port cannot be bound, or the cache does not start.
    pub async fn start(config: &ServeConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let raft_listener = std::net::TcpListener::bind(config.raft_addr)
            .with_context(|| format!("binding the raft address {}", config.raft_addr))?;
        let clients = ClientsRuntime(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.client_threads())
                .thread_name("crema-clients")
                .enable_all()
                .build()
                .context("starting the clients' runtime")?,
        ));
        let runtime = clients.0.as_ref().expect("just built");
        let resp_listener = std::net::TcpListener::bind(config.resp_addr)
            .with_context(|| format!("binding the RESP address {}", config.resp_addr))?;
        resp_listener.set_nonblocking(true)?;
        // Registered with the clients' runtime, whose threads then accept and serve.
        let resp_listener = {
            let _inside = runtime.enter();
            TcpListener::from_std(resp_listener)?
        };
        let admin_listener = TcpListener::bind(config.admin_addr)
            .await
            .with_context(|| format!("binding the admin address {}", config.admin_addr))?;
        let raft_addr = raft_listener.local_addr()?;
        let mut cache_config = config.cache_config()?;
        cache_config.raft_addr = raft_addr;
        cache_config.client_addr = advertised(resp_listener.local_addr()?, raft_addr);
        let cache = Arc::new(DistributedCache::new_with_listener(cache_config, raft_listener).await?);
        let metrics = Arc::new(Metrics::new(&cache));
        let server = RespServer::new(cache.clone(), resp_listener, config.resp_settings()?, metrics.clone())?;
        metrics.attach_server(&server.state());
        let resp_addr = server.local_addr();
        let admin_addr = admin_listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let auth = std::sync::Arc::new(crate::admin::auth::AdminAuth {
            users: Some(cache.acl().clone()),
            ..config.admin_auth()?
        });
        let admin_state = AdminState { cache: cache.clone(), metrics, resp_addr, auth };
        let admin_shutdown = shutdown.clone();
        let mut tasks = vec![
            runtime.spawn(server.run(shutdown.clone())),
            tokio::spawn(async move {
                if let Err(e) = admin::serve(admin_listener, admin_state, admin_shutdown).await {
                    tracing::error!(error = %e, "admin server failed");
                }
            }),
        ];
        if let Some(users) = config.acl_users()? {
            let change = crema::acl::AclChange::replace(&users, true).map_err(anyhow::Error::msg)?;
            tasks.push(tokio::spawn(load_acl_file(cache.clone(), change, shutdown.clone())));
        }
        Ok(Self { cache, resp_addr, raft_addr, admin_addr, shutdown, tasks, _clients: clients })
    }

    /// Stops accepting, closes client connections, stops the admin server and shuts the cache
    /// down gracefully (in-flight writes get an answer).
    pub async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            let _ = task.await;
        }
        self.cache.shutdown().await;
    }
}

/// Proposes the ACL file's users (only if the cluster has none yet) until the cluster answers:
/// the node may start before there is a leader.
async fn load_acl_file(
    cache: Arc<DistributedCache>,
    change: crema::acl::AclChange,
    shutdown: CancellationToken,
) {
    let command = crema::CacheCommand::Acl(change);
    loop {
        let outcome = tokio::select! {
            _ = shutdown.cancelled() => return,
            outcome = cache.execute(command.clone()) => outcome,
        };
        match outcome {
            Ok(crema::ApplyOutput::Int(-1)) => {
                tracing::info!(
                    "the cluster already has ACL users: the ACL file was not loaded (ACL LOAD replaces them)"
                );
                return;
            }
            Ok(crema::ApplyOutput::Int(n)) => {
                tracing::info!(users = n, "ACL users loaded from the ACL file");
                return;
            }
            Ok(other) => {
                tracing::error!(?other, "the ACL file could not be applied");
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "ACL file not loaded yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::advertised;

    #[test]
    fn a_wildcard_resp_address_is_advertised_on_the_peer_host() {
        let at = |s: &str| s.parse().unwrap();
        assert_eq!(advertised(at("127.0.0.1:6380"), at("127.0.0.1:7000")), Some(at("127.0.0.1:6380")));
        assert_eq!(advertised(at("10.0.0.5:6380"), at("0.0.0.0:7000")), Some(at("10.0.0.5:6380")));
        assert_eq!(advertised(at("0.0.0.0:6380"), at("10.0.0.5:7000")), Some(at("10.0.0.5:6380")));
        assert_eq!(advertised(at("[::]:6380"), at("[::]:7000")), Some(at("[::]:6380")));
        assert_eq!(advertised(at("0.0.0.0:6380"), at("0.0.0.0:7000")), Some(at("0.0.0.0:6380")));
    }

    #[test]
    fn a_loopback_resp_address_is_not_told_to_peers_on_other_hosts() {
        let at = |s: &str| s.parse().unwrap();
        assert_eq!(advertised(at("127.0.0.1:6380"), at("10.0.0.5:7000")), None);
        assert_eq!(advertised(at("[::1]:6380"), at("0.0.0.0:7000")), None);
    }
}
