//! What a read command sees. A node holds replicas of some shards only when the cluster has
//! more nodes than each shard has replicas (placement): a read of keys whose shards are all
//! held here reads this node's caches (after the read barrier, as always); otherwise the
//! entries come from the nodes that hold them ([`crema::DistributedCache::read_entries`]), and
//! KEYS, SCAN, DBSIZE and RANDOMKEY ask each shard held elsewhere for its keys or count. Those
//! remote reads are always linearizable, also on a `READONLY` connection: the holder asked may
//! be a follower that has not yet applied a write this connection made through another node,
//! and a local read promises to see the connection's own writes.

use std::collections::HashMap;
use std::ops::Range;

use bytes::Bytes;
use crema::cache::keyspace::off_runtime;
use crema::cache::storage::StoredValue;
use crema::{Keyspace, ReadEntries};

use super::{Call, CmdError, ReadMode};

/// The entries a read command reads.
pub enum ReadView<'a> {
    /// This node's caches: it holds every key's shard.
    Local(&'a Keyspace),
    /// Entries fetched for the command's keys, none where absent.
    Fetched(HashMap<Bytes, Option<StoredValue>>),
}

impl ReadView<'_> {
    /// The live value of `key` (a local read counts a hit or a miss).
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        match self {
            ReadView::Local(storage) => storage.get(key),
            ReadView::Fetched(_) => self.entry_at(key, crema::unix_now_ms()).map(|e| e.value),
        }
    }

    /// The live values of `keys` (MGET): a write of several of them shows whole or not at all.
    pub fn get_many(&self, keys: &[Bytes]) -> Vec<Option<Bytes>> {
        match self {
            ReadView::Local(storage) => storage.get_many(keys),
            ReadView::Fetched(_) => keys.iter().map(|k| self.get(k)).collect(),
        }
    }
}

impl ReadEntries for ReadView<'_> {
    fn entry_at(&self, key: &[u8], at_ms: u64) -> Option<StoredValue> {
        match self {
            ReadView::Local(storage) => storage.entry_at(key, at_ms),
            ReadView::Fetched(entries) => {
                entries.get(key).cloned().flatten().filter(|e| e.expires_at_ms.is_none_or(|t| t > at_ms))
            }
        }
    }
}

impl<'a> Call<'a> {
    /// Whether this node holds a replica of every shard (one that serves local reads, on a
    /// connection that reads locally).
    pub fn holds_every_shard(&self) -> bool {
        let cache = &self.state.cache;
        let local = self.session.read_mode == ReadMode::Local;
        (0..cache.router().num_shards()).all(|s| {
            if local {
                cache.serves_local_reads(s)
            } else {
                cache.holds_shard(s)
            }
        })
    }

    /// Under `--cluster-redirects always`, the shards this node leads: KEYS, SCAN, DBSIZE and
    /// RANDOMKEY cover those, as a Redis Cluster primary covers its slots, so that a cluster
    /// client that asks every primary in turn (redis-py's `dbsize()` and `scan_iter()`,
    /// ioredis's per-master `scanStream`) sees each key once. None otherwise: they cover the
    /// whole cluster, from any node, for clients that know one node. Found from outside: with
    /// every node answering for the whole cluster, a cluster client's SCAN over three
    /// primaries returned each key three times, and its DBSIZE three times the count.
    ///
    /// A shard with no known leader counts for the first member the map names (whom `CLUSTER
    /// SLOTS` then names too, unless that one is down), so that its keys are not left out by
    /// every node. A scan that spans a leadership change may miss or repeat the keys of the
    /// shard that moved, as a Redis Cluster scan may across a failover.
    pub fn primary_scope(&self) -> Option<Vec<crema::ShardId>> {
        if self.state.settings.cluster_redirects != super::Redirects::Always {
            return None;
        }
        let cache = &self.state.cache;
        let (me, map) = (cache.node_id(), cache.shard_map());
        let primary = |s: crema::ShardId| match cache.shard_leader(s) {
            Some(leader) => leader == me,
            None => map.shard(s).and_then(|p| p.members.first()) == Some(&me),
        };
        Some((0..cache.router().num_shards()).filter(|s| primary(*s)).collect())
    }

    /// What a read of the keys `self.args[keys]` sees (see the module docs).
    pub async fn read_view(&mut self, keys: Range<usize>) -> Result<ReadView<'a>, CmdError> {
        let state: &'a crate::server::ServerState = self.state;
        let router = state.cache.router();
        let local = self.session.read_mode == ReadMode::Local;
        let here = |shard| {
            if local {
                state.cache.serves_local_reads(shard)
            } else {
                state.cache.holds_shard(shard)
            }
        };
        let all_here = |args: &[Bytes]| args.iter().all(|k| here(router.shard_for_key(k)));
        if all_here(&self.args[keys.clone()]) {
            self.read_barrier_keys(keys.clone()).await?;
            // A replica may have left this node during the barrier (a move away; the barrier
            // passes it): its keys are then read from their holders.
            if all_here(&self.args[keys.clone()]) {
                return Ok(ReadView::Local(state.cache.storage()));
            }
        }
        let wanted = self.args[keys].to_vec();
        let entries = state.cache.read_entries(&wanted, true).await?;
        Ok(ReadView::Fetched(wanted.into_iter().zip(entries).collect()))
    }

    /// The live keys of every shard matching `pattern`, for KEYS, SCAN and RANDOMKEY: read
    /// here after the read barrier when this node holds every shard, else gathered from the
    /// shards' holders.
    pub async fn live_keys(&mut self, pattern: Option<&[u8]>) -> Result<Vec<Bytes>, CmdError> {
        if let Some(led) = self.primary_scope() {
            return Ok(self.state.cache.live_keys_in(&led, pattern, true).await?);
        }
        if self.holds_every_shard() {
            self.read_barrier().await?;
        }
        // Checked again: a replica may have left this node during the barrier (a move away).
        if self.holds_every_shard() {
            let (keyspace, pattern) = (self.storage().clone(), pattern.map(Bytes::copy_from_slice));
            return Ok(off_runtime(move || keyspace.matching_keys(pattern.as_deref())).await?);
        }
        Ok(self.state.cache.live_keys(pattern, true).await?)
    }

    /// The live keys of shard `shard` (CLUSTER COUNTKEYSINSLOT and GETKEYSINSLOT).
    pub async fn shard_keys(&mut self, shard: crema::ShardId) -> Result<Vec<Bytes>, CmdError> {
        Ok(self
            .state
            .cache
            .shard_keys(
                shard,
                None,
                self.session.read_mode == ReadMode::Linearizable
                    || !self.state.cache.serves_local_reads(shard),
            )
            .await?)
    }

    /// How many live entries the cluster holds (DBSIZE).
    pub async fn live_count(&mut self) -> Result<u64, CmdError> {
        if let Some(led) = self.primary_scope() {
            return Ok(self.state.cache.live_count_in(&led, true).await?);
        }
        if self.holds_every_shard() {
            self.read_barrier().await?;
        }
        if self.holds_every_shard() {
            let keyspace = self.storage().clone();
            return Ok(off_runtime(move || keyspace.live_count()).await?);
        }
        Ok(self.state.cache.live_count(true).await?)
    }
}
