//! In-process Raft groups for the group-loop benchmark (`benches/group_loop.rs`). Behind the
//! test-only feature `bench-internals`; never part of a server build.
//!
//! [`GroupBench::start`] runs `nodes` nodes in this process, each with its own peer transport on
//! 127.0.0.1 and `groups` Raft groups (shards `0..groups`), every group replicated on every
//! node. All groups of a node pair share that pair's one connection, as Multi-Raft does. Each
//! group has its own memory log and its own state machine. Commands go straight to each
//! group's leader. The benchmark therefore measures the group loop (propose → replicate →
//! persist → commit → apply), with neither the cache API nor forwarding in the way.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::cache::dispatch::Dispatcher;
use crate::cache::storage::{CacheStorage, StorageLimits};
use crate::config::CacheConfig;
use crate::consensus::command::CommandLimits;
use crate::consensus::group::{spawn_group, GroupHandle, GroupSettings};
use crate::consensus::state_machine::CacheStateMachine;
use crate::consensus::storage::MemStorage;
use crate::error::{Error, Result};
use crate::transport::{Transport, TransportConfig};
use crate::types::ShardId;

/// `nodes` in-process nodes running `groups` Raft groups each.
pub struct GroupBench {
    nodes: Vec<BenchNode>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

struct BenchNode {
    transport: Arc<Transport>,
    dispatcher: Arc<Dispatcher>,
    groups: Vec<GroupHandle>,
    /// Each group's local cache, by shard.
    storages: Vec<CacheStorage>,
}

impl GroupBench {
    /// Starts the nodes and their groups with crema's default settings (memory logs).
    ///
    /// # Errors
    /// Binding a port or starting a group failed.
    ///
    /// # Panics
    /// `nodes` or `groups` is 0.
    pub async fn start(nodes: usize, groups: usize) -> Result<Self> {
        assert!(nodes > 0 && groups > 0, "at least one node and one group");
        let listeners =
            (0..nodes).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<Vec<_>>>()?;
        let addrs = listeners.iter().map(TcpListener::local_addr).collect::<std::io::Result<Vec<_>>>()?;
        let voters: Vec<u64> = (1..=nodes as u64).collect();
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut started = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let id = i as u64 + 1;
            let config = CacheConfig::new(id, addrs[i]);
            let limits = CommandLimits {
                max_key_bytes: config.max_key_bytes,
                max_value_bytes: config.max_value_bytes,
            };
            let dispatcher = Arc::new(Dispatcher::new(
                id,
                limits,
                config.request_timeout,
                config.request_timeout.min(config.forwarding_timeout),
                config.raft.election_timeout(),
                #[cfg(feature = "fault-injection")]
                None,
            ));
            listener.set_nonblocking(true)?;
            let transport = Transport::start(
                TransportConfig {
                    node_id: id,
                    incarnation: rand::random(),
                    client_addr: None,
                    max_frame_bytes: crate::config::MAX_FRAME_BYTES,
                    queue_capacity: config.peer_queue_capacity,
                    handshake_timeout: Duration::from_secs(5),
                    connect_timeout: Duration::from_secs(1),
                    secret: None,
                    tls: None,
                    shards: groups as u32,
                    #[cfg(feature = "fault-injection")]
                    faults: None,
                },
                tokio::net::TcpListener::from_std(listener)?,
                dispatcher.clone(),
            )?;
            for (p, addr) in addrs.iter().enumerate().filter(|(p, _)| *p != i) {
                transport.add_peer(p as u64 + 1, Some(*addr));
            }
            let table = Arc::new(crate::cache::table::ShardTable::new(groups as u32));
            let mut handles = Vec::with_capacity(groups);
            let mut storages = Vec::with_capacity(groups);
            for shard in 0..groups as ShardId {
                let settings = GroupSettings {
                    node_id: id,
                    shard,
                    raft: config.raft.clone(),
                    mailbox_capacity: config.mailbox_capacity,
                    read_timeout: config.request_timeout,
                    shutdown_grace: config.raft.election_timeout(),
                    checkpoints: None,
                    recover: false,
                    first_start_possible: false,
                    recovery_voters: Vec::new(),
                    fresh: false,
                    votes_only_with_state: false,
                    #[cfg(feature = "fault-injection")]
                    faults: None,
                };
                let storage = CacheStorage::new(StorageLimits {
                    max_capacity: 10_000_000,
                    max_memory_bytes: None,
                    time_to_idle: None,
                });
                let sm = CacheStateMachine::new(storage.clone());
                let store = MemStorage::new_with_conf_state(&voters);
                let (handle, task) = spawn_group(settings, store, sm, transport.clone(), cancel.clone())?;
                table.insert(crate::cache::shard::Shard {
                    id: shard,
                    group: handle.clone(),
                    storage: storage.clone(),
                    stop: cancel.clone(),
                });
                handles.push(handle);
                storages.push(storage);
                tasks.push(task);
            }
            dispatcher.attach(table);
            transport.open();
            started.push(BenchNode { transport, dispatcher, groups: handles, storages });
        }
        Ok(Self { nodes: started, cancel, tasks })
    }

    /// Waits until every group has a leader.
    ///
    /// # Errors
    /// `Timeout` when some group has none after `timeout`.
    pub async fn wait_for_leaders(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        for group in &self.nodes[0].groups {
            loop {
                if group.shared.wait_for_leader(deadline).await.is_none() {
                    return Err(Error::Timeout(timeout));
                }
                // The leader itself must know it leads before proposals can go to it.
                if self.leader(group.shared.shard).is_some() {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(Error::Timeout(timeout));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(())
    }

    /// The number of groups per node.
    pub fn groups(&self) -> usize {
        self.nodes[0].groups.len()
    }

    /// The index (node id − 1) of the node leading `shard`, if one does.
    pub fn leader(&self, shard: ShardId) -> Option<usize> {
        self.nodes.iter().position(|n| n.groups.get(shard as usize).is_some_and(|g| g.shared.is_leader()))
    }

    /// Proposes an encoded command (`StampedCommand::encode`) to `shard`'s leader; answers the
    /// log index once the leader applied it.
    ///
    /// # Errors
    /// `NotLeader` when the shard has no leader now; any error of the proposal.
    pub async fn propose(&self, shard: ShardId, command: Bytes) -> Result<u64> {
        let node = self.leader(shard).ok_or(Error::NotLeader { leader_hint: None })?;
        Ok(self.nodes[node].groups[shard as usize].propose(command).await?.index)
    }

    /// `key`'s value in `shard`'s local cache on node `node` (0-based).
    pub fn local_get(&self, node: usize, shard: ShardId, key: &[u8]) -> Option<Bytes> {
        self.nodes[node].storages[shard as usize].get(key)
    }

    /// Waits until node `node` (0-based) applied `index` in `shard`.
    ///
    /// # Errors
    /// `Shutdown` when the group stopped first.
    pub async fn wait_applied(&self, node: usize, shard: ShardId, index: u64) -> Result<()> {
        self.nodes[node].groups[shard as usize].wait_applied(index).await
    }

    /// Stops every group and transport and waits for their tasks.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        for node in &self.nodes {
            node.dispatcher.tasks.close();
            node.dispatcher.tasks.wait().await;
            node.transport.shutdown().await;
        }
    }
}

impl Drop for GroupBench {
    fn drop(&mut self) {
        self.cancel.cancel();
        for node in &self.nodes {
            node.transport.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::command::{CacheCommand, StampedCommand};
    use crate::multiraft::ShardRouter;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_group_replicates_its_own_keys_to_every_node() {
        let bench = GroupBench::start(3, 4).await.unwrap();
        bench.wait_for_leaders(Duration::from_secs(20)).await.unwrap();
        let router = ShardRouter::new(4).unwrap();
        let mut written = Vec::new();
        for i in 0..40u32 {
            let key = format!("key-{i}");
            let shard = router.shard_for_key(key.as_bytes());
            let command = StampedCommand::new(0, CacheCommand::put(key.clone(), format!("v{i}"))).encode();
            let index = bench.propose(shard, command.into()).await.unwrap();
            written.push((key, shard, index));
        }
        let shards: std::collections::BTreeSet<_> = written.iter().map(|(_, s, _)| *s).collect();
        assert_eq!(shards.len(), 4, "40 keys should land in all 4 shards");
        for (i, (key, shard, index)) in written.iter().enumerate() {
            for node in 0..3 {
                bench.wait_applied(node, *shard, *index).await.unwrap();
                let value = format!("v{i}");
                assert_eq!(bench.local_get(node, *shard, key.as_bytes()).as_deref(), Some(value.as_bytes()));
                // No other group applied it: each shard is its own state machine.
                for other in (0..4).filter(|s| s != shard) {
                    assert_eq!(bench.local_get(node, other, key.as_bytes()), None);
                }
            }
        }
        bench.shutdown().await;
    }
}
