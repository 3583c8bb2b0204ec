//! [`RocksDbStorage`]: durable Raft log storage on RocksDB (feature `rocksdb`).
//!
//! The log, hard state, conf state and the compaction point are kept twice: in a [`MemStorage`]
//! mirror that answers raft-rs's reads at memory speed, and in RocksDB for durability. Every
//! change of a Ready is recorded as a pending operation and [`LogStore::flush`] writes them all
//! in one `WriteBatch` with one synced write, so concurrent proposals share one fsync (group
//! commit). Until `flush` returns, nothing of that Ready may be acknowledged or sent as persisted.
//!
//! A batch that only moves the commit index (or compacts the log) is written without waiting
//! for the disk, as etcd does (its `MustSync`): Raft needs entries, term, vote and conf state
//! durable, not the commit index, which a restarted node learns again from the leader and from
//! its checkpoint (`cache/recovery.rs`). Under load every append carries the leader's new commit
//! index, and a follower used to pay one fsync for the entries and another for the commit-only
//! append that followed. RocksDB's log is written in order and recovered up to the first record
//! it cannot read, so a later synced write also makes the earlier unsynced ones durable.
//!
//! Under a multi-threaded runtime the group loop takes each synced batch off the loop
//! ([`LogStore::take_write`]) and keeps working while the node's log writer (`rocks_writer`: one
//! thread per database, one synced batch for the pending writes of every group) writes it; the
//! Readies it handles meanwhile go in the next batch. The handle and what a write needs are
//! shared (`Disk`) between the store and those writes, which run one at a time per group.
//!
//! Keys: `[shard: u32 BE][tag]`, plus the index (u64 BE) for entries, so entries sort by index and
//! a Multi-Raft node can keep every group in one database (`consensus::node_db`).

use std::sync::{Arc, Mutex, MutexGuard};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use rocksdb::{WriteBatch, WriteOptions};

use super::node_db::{
    add_ops, check_free_space, entry_key, key, Op, TAG_COMPACTED, TAG_CONF_STATE, TAG_ENTRY, TAG_HARD_STATE,
};
pub use super::node_db::{open_db, NodeDb};
use super::rocks_writer::Job;
use super::storage::{LogStore, LogWrite, MemStorage, SnapshotSource, WriteTicket};
use crate::types::ShardId;

/// The database as the writes of one group see it.
struct Disk {
    db: Arc<NodeDb>,
    min_free_bytes: u64,
}

/// Durable Raft storage of one group.
pub struct RocksDbStorage {
    mirror: MemStorage,
    disk: Arc<Mutex<Disk>>,
    shard: ShardId,
    pending: Vec<Op>,
    /// The pending changes hold something Raft needs durable before it goes on (entries, a new
    /// term or vote, a conf state, a snapshot): the next flush syncs.
    sync_next: bool,
    /// Changes were written without a sync since the last synced write.
    unsynced: bool,
}

/// The pending changes of a [`RocksDbStorage`], taken to be written off the group loop.
struct RocksWrite {
    disk: Arc<Mutex<Disk>>,
    ops: Vec<Op>,
    sync: bool,
}

impl LogWrite for RocksWrite {
    fn write(&mut self) -> raft::Result<()> {
        lock(&self.disk).write(&self.ops, self.sync)
    }

    /// To the node's log writer, to share one synced batch with the other groups' writes.
    fn start(self: Box<Self>, ticket: WriteTicket) {
        let Self { disk, ops, sync } = *self;
        let (db, min_free_bytes) = {
            let disk = lock(&disk);
            (disk.db.clone(), disk.min_free_bytes)
        };
        drop(disk);
        let writer = db.clone();
        writer.writer.submit(Job { db, ops, sync, min_free_bytes, ticket });
    }
}

/// A write that panicked cannot have left the handle half-changed (it is replaced whole), so a
/// poisoned lock is taken as it is.
fn lock(disk: &Mutex<Disk>) -> MutexGuard<'_, Disk> {
    disk.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl std::fmt::Debug for RocksDbStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksDbStorage").field("shard", &self.shard).field("mirror", &self.mirror).finish()
    }
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(format!("corrupt {what} in the raft database: {e}").into()))
}

fn db_error(e: rocksdb::Error) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl RocksDbStorage {
    /// Loads group `shard` from `db`. A group seen for the first time starts with
    /// `initial_voters` as its conf state and their bootstrap log (`storage::bootstrap_log`);
    /// empty for a node that joins a running cluster.
    ///
    /// # Errors
    /// The database cannot be read or holds undecodable state.
    pub fn open(node_db: Arc<NodeDb>, shard: ShardId, initial_voters: &[u64]) -> raft::Result<Self> {
        Self::open_bootstrapped(node_db, shard, initial_voters, &[])
    }

    /// As [`Self::open`], a group seen for the first time starting with `initial_learners`
    /// too.
    ///
    /// # Errors
    /// As [`Self::open`].
    pub fn open_bootstrapped(
        node_db: Arc<NodeDb>,
        shard: ShardId,
        initial_voters: &[u64],
        initial_learners: &[u64],
    ) -> raft::Result<Self> {
        let db = node_db.handle().map_err(db_error)?;
        let get = |tag| db.get(key(shard, tag)).map_err(db_error);
        let hard_state = match get(TAG_HARD_STATE)? {
            Some(b) => HardState::parse_from_bytes(&b).map_err(|e| corrupt("hard state", e))?,
            None => HardState::default(),
        };
        let stored_conf = get(TAG_CONF_STATE)?;
        let fresh = stored_conf.is_none() && hard_state == HardState::default();
        let conf_state = match stored_conf {
            Some(b) => ConfState::parse_from_bytes(&b).map_err(|e| corrupt("conf state", e))?,
            None => ConfState {
                voters: initial_voters.to_vec(),
                learners: initial_learners.to_vec(),
                ..Default::default()
            },
        };
        let (compacted_index, compacted_term) = match get(TAG_COMPACTED)? {
            Some(b) if b.len() == 16 => {
                let (i, t) = b.split_at(8);
                (
                    u64::from_be_bytes(i.try_into().expect("8 bytes")),
                    u64::from_be_bytes(t.try_into().expect("8 bytes")),
                )
            }
            Some(b) => return Err(corrupt("compaction point", format!("{} bytes", b.len()))),
            None => (0, 0),
        };
        let mut entries = Vec::new();
        let start = entry_key(shard, compacted_index + 1);
        let prefix = key(shard, TAG_ENTRY);
        for item in db.iterator(rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward)) {
            let (k, v) = item.map_err(db_error)?;
            if !k.starts_with(&prefix) {
                break;
            }
            let entry = Entry::parse_from_bytes(&v).map_err(|e| corrupt("log entry", e))?;
            let expected = compacted_index + 1 + entries.len() as u64;
            if entry.index != expected {
                return Err(corrupt("log", format!("entry {} where {expected} was expected", entry.index)));
            }
            entries.push(entry);
        }
        let mirror =
            MemStorage::restored(hard_state, conf_state.clone(), compacted_index, compacted_term, entries);
        drop(db);
        let mut store = Self {
            mirror,
            disk: Arc::new(Mutex::new(Disk { db: node_db, min_free_bytes: 0 })),
            shard,
            pending: Vec::new(),
            sync_next: false,
            unsynced: false,
        };
        if fresh {
            // Make the bootstrap conf state and log durable with the first write.
            store.sync_next = true;
            store
                .put(TAG_CONF_STATE, conf_state.write_to_bytes().expect("encoding a conf state cannot fail"));
            if !initial_voters.is_empty() && raft::Storage::last_index(&store.mirror)? == 0 {
                let (entries, hard_state) =
                    crate::consensus::storage::bootstrap_log(initial_voters, initial_learners);
                store.append(&entries)?;
                store.set_hard_state(hard_state)?;
            }
        }
        Ok(store)
    }

    /// Where the node's database (the raft log of every shard on it) lives.
    pub fn db_path(&self) -> std::path::PathBuf {
        lock(&self.disk).db.path().to_owned()
    }

    /// The current hard state.
    pub fn hard_state(&self) -> &HardState {
        self.mirror.hard_state()
    }

    /// Refuses to write while the disk holding the database has less than `bytes` free: a
    /// write is held back (and retried by the group) instead of running the disk full, which
    /// RocksDB does not recover from without a restart.
    pub fn with_min_free_bytes(self, bytes: u64) -> Self {
        lock(&self.disk).min_free_bytes = bytes;
        self
    }

    fn put(&mut self, tag: u8, value: Vec<u8>) {
        self.pending.push(Op::Put(key(self.shard, tag), value));
    }

    fn put_hard_state(&mut self) {
        let bytes = self.mirror.hard_state().write_to_bytes().expect("encoding a hard state cannot fail");
        self.put(TAG_HARD_STATE, bytes);
    }

    fn put_compacted(&mut self, index: u64, term: u64) {
        let mut v = index.to_be_bytes().to_vec();
        v.extend_from_slice(&term.to_be_bytes());
        self.put(TAG_COMPACTED, v);
    }
}

impl Disk {
    /// One attempt to write `ops` (the caller decides how to wait and retry, and a retry
    /// writes the same ops through a freshly opened handle).
    fn write(&mut self, ops: &[Op], sync: bool) -> raft::Result<()> {
        check_free_space(self.db.path(), self.min_free_bytes).map_err(raft::Error::Store)?;
        self.db.may_reopen().map_err(|e| raft::Error::Store(StorageError::Other(e.into())))?;
        self.write_ops(ops, sync).map_err(db_error)
    }

    fn write_ops(&mut self, ops: &[Op], sync: bool) -> Result<(), rocksdb::Error> {
        let db = self.db.handle()?;
        let mut batch = WriteBatch::default();
        add_ops(&mut batch, ops);
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        let written = db.write_opt(batch, &options);
        if written.is_err() {
            self.db.forget(&db);
        }
        written
    }

    /// Makes every unsynced write so far durable.
    fn sync_wal(&mut self) -> raft::Result<()> {
        let db = self.db.handle().map_err(db_error)?;
        db.flush_wal(true).map_err(db_error)
    }
}

impl raft::Storage for RocksDbStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mirror.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mirror.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mirror.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mirror.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mirror.last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        self.mirror.snapshot(request_index, to)
    }
}

impl LogStore for RocksDbStorage {
    fn forget_snapshot_pace(&mut self, to: u64) {
        self.mirror.forget_snapshot_pace(to);
    }

    fn append(&mut self, entries: &[Entry]) -> raft::Result<()> {
        let Some(first_new) = entries.first().map(|e| e.index) else { return Ok(()) };
        let old_last = raft::Storage::last_index(&self.mirror)?;
        self.mirror.append(entries)?;
        let new_last = first_new + entries.len() as u64 - 1;
        if new_last < old_last {
            // A shorter conflicting suffix replaced a longer one: drop the rest on disk too.
            self.pending.push(Op::DeleteRange(
                entry_key(self.shard, new_last + 1),
                entry_key(self.shard, old_last + 1),
            ));
        }
        for entry in entries {
            let bytes = entry.write_to_bytes().expect("encoding an entry cannot fail");
            self.pending.push(Op::Put(entry_key(self.shard, entry.index), bytes));
        }
        self.sync_next = true;
        Ok(())
    }

    fn set_hard_state(&mut self, hs: HardState) -> raft::Result<()> {
        let old = self.mirror.hard_state();
        // A vote or term must be durable before the node acts on it (or it could vote twice in
        // a term after a restart); a commit index alone need not.
        self.sync_next |= hs.term != old.term || hs.vote != old.vote;
        self.mirror.set_hard_state(hs)?;
        self.put_hard_state();
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) -> raft::Result<()> {
        self.mirror.set_commit(commit)?;
        self.put_hard_state();
        Ok(())
    }

    fn set_conf_state(&mut self, cs: ConfState) -> raft::Result<()> {
        let bytes = cs.write_to_bytes().expect("encoding a conf state cannot fail");
        self.mirror.set_conf_state(cs)?;
        self.put(TAG_CONF_STATE, bytes);
        self.sync_next = true;
        Ok(())
    }

    /// Written without a sync of its own: a compaction lost in a crash leaves entries that the
    /// retained checkpoints already cover, and the next compaction drops them.
    fn compact(&mut self, index: u64) -> raft::Result<()> {
        let first = raft::Storage::first_index(&self.mirror)?;
        self.mirror.compact(index)?;
        if index > first {
            let term = raft::Storage::term(&self.mirror, index - 1)?;
            self.pending.push(Op::DeleteRange(entry_key(self.shard, first), entry_key(self.shard, index)));
            self.put_compacted(index - 1, term);
        }
        Ok(())
    }

    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> raft::Result<()> {
        self.mirror.apply_snapshot(snapshot)?;
        let meta = snapshot.get_metadata();
        self.pending.push(Op::DeleteRange(entry_key(self.shard, 0), entry_key(self.shard, u64::MAX)));
        self.pending.push(Op::Delete(entry_key(self.shard, u64::MAX)));
        self.put_compacted(meta.index, meta.term);
        let conf = meta.get_conf_state().write_to_bytes().expect("encoding a conf state cannot fail");
        self.put(TAG_CONF_STATE, conf);
        self.put_hard_state();
        self.sync_next = true;
        Ok(())
    }

    fn retained_bytes(&self) -> u64 {
        self.mirror.retained_bytes()
    }

    fn first_index_within(&self, budget: u64, upto: u64) -> u64 {
        self.mirror.first_index_within(budget, upto)
    }

    fn set_applied(&mut self, index: u64) {
        self.mirror.set_applied(index);
    }

    fn set_snapshot_source(&mut self, source: SnapshotSource) {
        self.mirror.set_snapshot_source(source);
    }

    fn has_unflushed(&self) -> bool {
        !self.pending.is_empty()
    }

    fn flush_syncs(&self) -> bool {
        !self.pending.is_empty() && self.sync_next
    }

    fn flush(&mut self) -> raft::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // One attempt: the group loop decides how to wait and retry (the pending changes stay
        // queued, so a retry writes exactly the same batch, through a freshly opened handle).
        let sync = self.sync_next;
        lock(&self.disk).write(&self.pending, sync)?;
        self.pending.clear();
        self.sync_next = false;
        // A synced write makes every earlier write of the log durable too.
        self.unsynced = !sync;
        Ok(())
    }

    fn sync(&mut self) -> raft::Result<()> {
        if !self.pending.is_empty() {
            self.sync_next = true;
            return self.flush();
        }
        if self.unsynced {
            lock(&self.disk).sync_wal()?;
            self.unsynced = false;
        }
        Ok(())
    }

    fn writes_off_loop(&self) -> bool {
        true
    }

    fn pipelines_writes(&self) -> bool {
        true
    }

    fn take_write(&mut self) -> Option<Box<dyn LogWrite>> {
        if self.pending.is_empty() {
            return None;
        }
        let sync = std::mem::take(&mut self.sync_next);
        self.unsynced = !sync;
        let ops = std::mem::take(&mut self.pending);
        Some(Box::new(RocksWrite { disk: self.disk.clone(), ops, sync }))
    }
}

#[cfg(test)]
#[path = "rocks_storage_tests.rs"]
mod tests;
