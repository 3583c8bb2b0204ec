//! Reads that gather across shards: the entries of many keys, the keys of every shard, what
//! `WATCH` remembers, the count of live entries. Each shard is read from this node's replica
//! when it holds one, else from a node that does ([`DistributedCache::remote_read`], in
//! `remote.rs`), all shards at once.

use std::collections::BTreeMap;

use bytes::Bytes;

use tokio::sync::Semaphore;

use super::keyspace::off_runtime;
use super::scan_order::{merge, scan_hash, smallest, MAX_SCAN_KEEP};
use super::storage::{unix_now_ms, StoredValue};
use super::DistributedCache;
use crate::error::{Error, Result};
use crate::transport::envelope::{RemoteAnswer, RemoteRead};
use crate::types::ShardId;

/// Gathers of keys from every shard (KEYS, SCAN and the like on a node that holds only some
/// shards) run at most this many at once on a node; later ones wait their turn. Each holds what
/// the holders sent until it is done (found from outside: three hundred connections scanning at
/// once held a copy of a shard's keys each, 4.7 GB).
const GATHERS: usize = 2;

fn gathers() -> &'static Semaphore {
    static TURNS: Semaphore = Semaphore::const_new(GATHERS);
    &TURNS
}

impl DistributedCache {
    /// The live entries of `keys`, in order (none where absent), from this node's replicas
    /// and, for the shards it holds none of, from nodes that do (see the module docs). With
    /// `linearizable`, every shard involved first runs a Read-Index round, as
    /// [`Self::consistent_get`] does.
    ///
    /// # Errors
    /// As [`Self::consistent_get`]; for a shard held elsewhere, also when no holder answers.
    pub async fn read_entries(&self, keys: &[Bytes], linearizable: bool) -> Result<Vec<Option<StoredValue>>> {
        let router = self.keyspace.router();
        let mut by_shard: BTreeMap<ShardId, Vec<usize>> = BTreeMap::new();
        for (i, key) in keys.iter().enumerate() {
            by_shard.entry(router.shard_for_key(key)).or_default().push(i);
        }
        let fetches = by_shard.into_iter().map(|(shard, positions)| async move {
            let found =
                self.shard_entries(shard, positions.iter().map(|&i| keys[i].clone()).collect(), linearizable);
            found.await.map(|entries| (positions, entries))
        });
        let mut out = vec![None; keys.len()];
        for fetched in futures_util::future::join_all(fetches).await {
            let (positions, entries) = fetched?;
            for (i, entry) in positions.into_iter().zip(entries) {
                out[i] = entry;
            }
        }
        Ok(out)
    }

    /// [`Self::read_entries`] for keys of one shard.
    async fn shard_entries(
        &self,
        shard: ShardId,
        keys: Vec<Bytes>,
        linearizable: bool,
    ) -> Result<Vec<Option<StoredValue>>> {
        if self.barrier_here(shard, linearizable).await? {
            let now = unix_now_ms();
            return Ok(keys.iter().map(|k| self.keyspace.entry_at(k, now)).collect());
        }
        let count = keys.len();
        match self.remote_read(shard, RemoteRead::Entries { keys }, linearizable).await? {
            RemoteAnswer::Entries(entries) if entries.len() == count => {
                // Judged live again here: an entry may expire on its way.
                let now = unix_now_ms();
                Ok(entries
                    .into_iter()
                    .map(|e| {
                        e.map(|(value, expires_at_ms)| StoredValue { value, expires_at_ms })
                            .filter(|e| e.expires_at_ms.is_none_or(|t| t > now))
                    })
                    .collect())
            }
            _ => Err(malformed(shard)),
        }
    }

    /// The live keys of every shard, those matching `pattern` (a Redis glob) when given: from
    /// this node's replicas and, for the shards it holds none of, from nodes that do.
    ///
    /// # Errors
    /// As [`Self::read_entries`]; also when one shard's keys do not fit in a peer frame.
    pub async fn live_keys(&self, pattern: Option<&[u8]>, linearizable: bool) -> Result<Vec<Bytes>> {
        let all: Vec<ShardId> = (0..self.keyspace.router().num_shards()).collect();
        self.live_keys_in(&all, pattern, linearizable).await
    }

    /// [`Self::live_keys`] of the shards `shards` only (those a node leads, for a Redis
    /// Cluster client that asks every primary in turn).
    ///
    /// # Errors
    /// As [`Self::live_keys`].
    pub async fn live_keys_in(
        &self,
        shards: &[ShardId],
        pattern: Option<&[u8]>,
        linearizable: bool,
    ) -> Result<Vec<Bytes>> {
        let _turn = gathers().acquire().await.map_err(|_| Error::Shutdown)?;
        let fetches = shards.iter().map(|&shard| self.keys_of(shard, pattern, linearizable));
        let mut all = Vec::new();
        for keys in futures_util::future::join_all(fetches).await {
            all.extend(keys?);
        }
        Ok(all)
    }

    /// [`Self::live_keys`] of shard `shard` only.
    ///
    /// # Errors
    /// As [`Self::live_keys`].
    pub async fn shard_keys(
        &self,
        shard: ShardId,
        pattern: Option<&[u8]>,
        linearizable: bool,
    ) -> Result<Vec<Bytes>> {
        let _turn = gathers().acquire().await.map_err(|_| Error::Shutdown)?;
        self.keys_of(shard, pattern, linearizable).await
    }

    /// The next keys of every shard in scan order (`cache::scan_order`): the `keep` smallest
    /// at or after `cursor` matching `pattern` (all sharing the last one's hash included), with
    /// their scan hashes, and whether any matching key was left out. From this node's replicas
    /// and, for the shards it holds none of, a holder's bounded answer (`RemoteRead::Scan`).
    ///
    /// # Errors
    /// As [`Self::read_entries`].
    pub async fn scan_keys(
        &self,
        cursor: u64,
        keep: usize,
        pattern: Option<&[u8]>,
        linearizable: bool,
    ) -> Result<(Vec<(u64, Bytes)>, bool)> {
        let all: Vec<ShardId> = (0..self.keyspace.router().num_shards()).collect();
        self.scan_keys_in(&all, cursor, keep, pattern, linearizable).await
    }

    /// [`Self::scan_keys`] of the shards `shards` only.
    ///
    /// # Errors
    /// As [`Self::read_entries`].
    pub async fn scan_keys_in(
        &self,
        shards: &[ShardId],
        cursor: u64,
        keep: usize,
        pattern: Option<&[u8]>,
        linearizable: bool,
    ) -> Result<(Vec<(u64, Bytes)>, bool)> {
        let _turn = gathers().acquire().await.map_err(|_| Error::Shutdown)?;
        let keep = keep.clamp(1, MAX_SCAN_KEEP);
        let pattern = pattern.map(Bytes::copy_from_slice);
        let fetches = shards.iter().map(|&shard| {
            let pattern = pattern.clone();
            async move {
                if self.barrier_here(shard, linearizable).await? {
                    let Some(storage) = self.keyspace.shard(shard).cloned() else {
                        return Ok((Vec::new(), false));
                    };
                    return off_runtime(move || {
                        let walk = |visit: &mut dyn FnMut(&Bytes) -> bool| {
                            storage.for_each_live_key(|k, _| visit(k))
                        };
                        smallest(walk, cursor, keep, pattern.as_deref())
                    })
                    .await;
                }
                let read = RemoteRead::Scan { cursor, keep: keep as u32, pattern };
                match self.remote_read(shard, read, linearizable).await? {
                    RemoteAnswer::ScanPage { keys, more } => {
                        let mut keys: Vec<(u64, Bytes)> = keys
                            .into_iter()
                            .map(|k| (scan_hash(&k), k))
                            .filter(|(h, _)| *h >= cursor)
                            .collect();
                        keys.sort_unstable();
                        Ok((keys, more))
                    }
                    _ => Err(malformed(shard)),
                }
            }
        });
        let answers =
            futures_util::future::join_all(fetches).await.into_iter().collect::<Result<Vec<_>>>()?;
        off_runtime(move || merge(answers, keep)).await
    }

    /// [`Self::shard_keys`], in the turn its caller took.
    async fn keys_of(
        &self,
        shard: ShardId,
        pattern: Option<&[u8]>,
        linearizable: bool,
    ) -> Result<Vec<Bytes>> {
        let pattern = pattern.map(Bytes::copy_from_slice);
        if self.barrier_here(shard, linearizable).await? {
            let Some(storage) = self.keyspace.shard(shard).cloned() else { return Ok(Vec::new()) };
            return off_runtime(move || storage.matching_keys(pattern.as_deref())).await;
        }
        match self.remote_read(shard, RemoteRead::Keys { pattern }, linearizable).await? {
            RemoteAnswer::Keys(keys) => Ok(keys),
            _ => Err(malformed(shard)),
        }
    }

    /// What `WATCH` remembers of `key`: the index this node applied in the key's shard (read
    /// before the key) and whether the key is live. For a shard this node holds, read here (the
    /// caller runs the read barrier first); for another, asked of a node that holds it after a
    /// Read-Index round there.
    ///
    /// # Errors
    /// As [`Self::read_entries`].
    pub async fn watch_key(&self, key: &Bytes) -> Result<(u64, bool)> {
        let shard = self.keyspace.router().shard_for_key(key);
        if self.holds_shard(shard) {
            let index = self.applied_index_for_key(key);
            return Ok((index, self.keyspace.get_entry(key).is_some()));
        }
        match self.remote_read(shard, RemoteRead::Watch { keys: vec![key.clone()] }, true).await? {
            RemoteAnswer::Watched(index, live) if live.len() == 1 => Ok((index, live[0])),
            _ => Err(malformed(shard)),
        }
    }

    /// How many live entries the cluster holds: this node's replicas counted here, the
    /// shards it holds none of asked of nodes that do (Redis's `DBSIZE`).
    ///
    /// # Errors
    /// As [`Self::read_entries`].
    pub async fn live_count(&self, linearizable: bool) -> Result<u64> {
        let all: Vec<ShardId> = (0..self.keyspace.router().num_shards()).collect();
        self.live_count_in(&all, linearizable).await
    }

    /// [`Self::live_count`] of the shards `shards` only.
    ///
    /// # Errors
    /// As [`Self::read_entries`].
    pub async fn live_count_in(&self, shards: &[ShardId], linearizable: bool) -> Result<u64> {
        let fetches = shards.iter().map(|&shard| async move {
            if self.barrier_here(shard, linearizable).await? {
                let Some(storage) = self.keyspace.shard(shard).cloned() else { return Ok(0) };
                return off_runtime(move || storage.live_count()).await;
            }
            match self.remote_read(shard, RemoteRead::Count, linearizable).await? {
                RemoteAnswer::Count(count) => Ok(count),
                _ => Err(malformed(shard)),
            }
        });
        let mut total = 0;
        for count in futures_util::future::join_all(fetches).await {
            total += count?;
        }
        Ok(total)
    }
}

fn malformed(shard: ShardId) -> Error {
    Error::Transport(crate::transport::TransportError::Remote(format!(
        "a holder of shard {shard} answered a read with something else"
    )))
}
