//! Reads through the cache API: local reads (fast, may be stale on a follower), linearizable
//! reads (`consistent_get`), and the read barriers the RESP server's commands wait on (a shard's
//! Read-Index, confirmed with every other read of this node in one round where it can be).
//! A key of a shard this node holds no replica of is read from a node that holds one
//! (`cache::remote`).

use bytes::Bytes;

use super::shard::Shard;
use super::DistributedCache;
use crate::error::{Error, Result};
use crate::types::ShardId;

impl DistributedCache {
    /// The value of `key` in this node's cache: fast, may be stale on a follower. For a key
    /// of a shard this node holds no replica of, the value a node that holds it has (none if
    /// no such node answers within the request timeout).
    pub async fn get(&self, key: &[u8]) -> Option<Bytes> {
        if self.holds_shard(self.keyspace.router().shard_for_key(key)) {
            return self.keyspace.get(key);
        }
        let keys = [Bytes::copy_from_slice(key)];
        self.read_entries(&keys, false).await.ok()?.pop().flatten().map(|e| e.value)
    }

    /// The value of `key`, linearizable: reflects every write acknowledged before the call began,
    /// on any node (Read-Index through the leader, then a local read once caught up).
    ///
    /// # Errors
    /// No leader within the request timeout, timeout, shutdown.
    pub async fn consistent_get(&self, key: &[u8]) -> Result<Option<Bytes>> {
        self.coordinator.count_operation();
        if self.barrier_here(self.keyspace.router().shard_for_key(key), true).await? {
            return Ok(self.keyspace.get(key));
        }
        let keys = [Bytes::copy_from_slice(key)];
        Ok(self.read_entries(&keys, true).await?.pop().flatten().map(|e| e.value))
    }

    /// Whether shard `shard` is read from this node's replica: it holds one and, with
    /// `linearizable`, that replica passed its read barrier. False when it holds none, or when
    /// the replica left meanwhile (see [`Self::left_meanwhile`]): read from a holder then.
    ///
    /// # Errors
    /// As [`Self::read_barrier`].
    pub(super) async fn barrier_here(&self, shard: ShardId, linearizable: bool) -> Result<bool> {
        if !self.holds_shard(shard) {
            return Ok(false);
        }
        if linearizable {
            if let Err(e) = self.read_barrier_for_shard(shard).await {
                return if self.left_meanwhile(shard, &e) { Ok(false) } else { Err(e) };
            }
        }
        Ok(self.holds_shard(shard))
    }

    /// Waits until this node's replica `shard` applied `index`; `Shutdown` once it serves its
    /// shard no more (a move away, see [`Self::left_meanwhile`]): a replica removed from its
    /// group may never apply `index`, and what it held is read from the holders then.
    ///
    /// # Errors
    /// `Shutdown` as above, or when the node stops.
    pub(super) async fn applied_here(&self, shard: &Shard, index: u64) -> Result<()> {
        let every = self.config.raft.tick_interval();
        shard.group.wait_applied_unless(index, every, || !self.holds_shard(shard.id)).await
    }

    /// Whether `error`, from this node's replica of `shard`, only means that the replica left
    /// the node meanwhile (a move away: its removal applied, its group ended) while the node
    /// runs on: the shard is then read from the nodes that hold it, never answered with the
    /// replica's `Shutdown`.
    pub fn left_meanwhile(&self, shard: ShardId, error: &Error) -> bool {
        matches!(error, Error::Shutdown) && self.check_running().is_ok() && !self.holds_shard(shard)
    }

    /// Waits until this node has applied every write acknowledged (on any node) before the call
    /// began, in every shard (Read-Index through each shard's leader). Local reads made after it
    /// returns, through [`Self::storage`], are linearizable; this is how the RESP server serves
    /// DBSIZE, KEYS and the rest in its default mode.
    ///
    /// # Errors
    /// No leader within the request timeout, timeout, shutdown.
    pub async fn read_barrier(&self) -> Result<()> {
        self.check_running()?;
        let held = self.shards.held();
        let barriers = held.iter().map(|shard| self.shard_barrier_unless_left(shard));
        futures_util::future::join_all(barriers).await.into_iter().collect()
    }

    /// [`Self::shard_barrier`], passed when the replica left the node meanwhile (see
    /// [`Self::left_meanwhile`]): its keys are read from their holders, not here.
    async fn shard_barrier_unless_left(&self, shard: &Shard) -> Result<()> {
        // A replica that serves nothing here (a follower whose disk is full, a diverged one):
        // its keys are read from their holders, and its barrier would wait for nothing.
        if !self.holds_shard(shard.id) {
            return Ok(());
        }
        match self.shard_barrier(shard).await {
            Err(e) if self.left_meanwhile(shard.id, &e) => Ok(()),
            passed => passed,
        }
    }

    /// [`Self::read_barrier`] for the shard of `key` only: what a read of `key` needs (the
    /// server's EXISTS, TTL, MGET, ...).
    ///
    /// # Errors
    /// As [`Self::read_barrier`].
    pub async fn read_barrier_for_key(&self, key: &[u8]) -> Result<()> {
        self.check_running()?;
        self.shard_barrier(&self.shard_for_key(key)?).await
    }

    /// [`Self::read_barrier`] for the shards `shards` only, together. A shard this node holds
    /// no replica of, or whose replica left the node meanwhile, passes (see
    /// [`Self::left_meanwhile`]): the caller checks that it holds a shard before reading it
    /// here, and reads it from its holders otherwise.
    ///
    /// # Errors
    /// As [`Self::read_barrier`].
    pub async fn read_barrier_for_shards(&self, shards: &[ShardId]) -> Result<()> {
        self.check_running()?;
        let barriers = shards.iter().map(|id| async move {
            match self.shard(*id) {
                Ok(shard) => self.shard_barrier_unless_left(&shard).await,
                Err(e) if self.left_meanwhile(*id, &e) => Ok(()),
                Err(e) => Err(e),
            }
        });
        futures_util::future::join_all(barriers).await.into_iter().collect()
    }

    /// [`Self::read_barrier`] for shard `shard` only.
    ///
    /// # Errors
    /// As [`Self::read_barrier`]; `Shutdown` for a shard this node has no replica of.
    pub async fn read_barrier_for_shard(&self, shard: ShardId) -> Result<()> {
        self.check_running()?;
        self.shard_barrier(&self.shard(shard)?).await
    }

    pub(super) async fn shard_barrier(&self, shard: &Shard) -> Result<()> {
        let group = &shard.group;
        if group.shared.leads_alone() {
            return Ok(());
        }
        #[cfg(feature = "fault-injection")]
        if group.planted(crate::faults::Mutant::StaleLeaderReads) && group.shared.is_leader() {
            return Ok(());
        }
        let timeout = self.config.request_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let read = async {
            // First with every other read of this node's shards in one round (see
            // `cache::read_rounds`); what that cannot confirm goes through the group.
            let live = self.dispatcher.live_peers();
            if let Some(index) = self.dispatcher.reads.read_index(&self.transport, &live, group).await {
                return self.applied_here(shard, index).await;
            }
            loop {
                // A read changes nothing: it is refused (`NotLeader`) as soon as this node can
                // no longer reach a quorum, also while its request waits in the group.
                let index = tokio::select! {
                    index = group.read_index() => index,
                    _ = self.quorum_lost(group) => Err(Error::NotLeader { leader_hint: None }),
                };
                match index {
                    Ok(index) => return self.applied_here(shard, index).await,
                    Err(Error::NotLeader { .. }) if tokio::time::Instant::now() < deadline => {
                        self.await_leader(group, deadline, false).await?;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        tokio::time::timeout_at(deadline, read).await.unwrap_or(Err(Error::Timeout(timeout)))
    }

    /// Whether `key` has a live entry in this node's cache (for a shard it does not hold, on
    /// a node that does, as [`Self::get`]).
    pub async fn contains(&self, key: &[u8]) -> bool {
        if self.holds_shard(self.keyspace.router().shard_for_key(key)) {
            return self.keyspace.contains(key);
        }
        self.get(key).await.is_some()
    }
}
