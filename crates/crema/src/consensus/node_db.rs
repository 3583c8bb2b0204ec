//! [`NodeDb`]: a node's one RocksDB, shared by the Raft logs of every shard replica on it
//! (feature `rocksdb`): how it is opened (a vector memtable, small caches), reopened after a
//! failed write, and keyed (`[shard: u32 BE][tag]`, plus the index for entries); the changes
//! a write carries ([`Op`]) and the free-space reserve checked before each write. A log that
//! lost synced writes is refused when it opens (`log_mark`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use raft::StorageError;
use rocksdb::{DBRecoveryMode, Options, WriteBatch, WriteOptions, DB};

use super::log_mark::{number_in, LogMark, MARK_KEY};
use super::rocks_writer::NodeWriter;
use crate::types::ShardId;

pub(super) const TAG_HARD_STATE: u8 = 1;
pub(super) const TAG_CONF_STATE: u8 = 2;
pub(super) const TAG_COMPACTED: u8 = 3;
pub(super) const TAG_ENTRY: u8 = 0x10;

/// One change waiting for the next synced write.
#[derive(Debug, Clone)]
pub(super) enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    DeleteRange(Vec<u8>, Vec<u8>),
}

impl Op {
    /// The bytes it adds to a write batch (keys and value; RocksDB's few bytes of framing
    /// aside).
    pub(super) fn bytes(&self) -> u64 {
        let len = match self {
            Op::Put(k, v) | Op::DeleteRange(k, v) => k.len() + v.len(),
            Op::Delete(k) => k.len(),
        };
        len as u64
    }
}

/// What `ops` add to a write batch.
pub(super) fn ops_bytes(ops: &[Op]) -> u64 {
    ops.iter().map(Op::bytes).sum()
}

/// A node's RocksDB, shared by the groups of every shard on it (keys carry the shard). The
/// groups' off-loop writes go through its one log writer (`rocks_writer`), which writes what
/// every group handed over meanwhile in one synced batch: more shards do not mean more fsyncs,
/// nor more threads.
pub struct NodeDb {
    path: PathBuf,
    pub(super) writer: NodeWriter,
    /// How far the log was synced (see `log_mark`).
    pub(super) mark: LogMark,
    /// None after a failed write: RocksDB must not be written through a handle that failed
    /// (Debian's build asserts on it), so the next write opens the database again, once every
    /// write through the failed handle has ended (until then the reopen fails on RocksDB's
    /// lock, and the caller retries).
    slot: RwLock<Option<Arc<DB>>>,
    /// When the database, closed after a failed write, may be opened again (see
    /// [`NodeDb::may_reopen`]), and how many opens in a row failed.
    reopen: Mutex<(Option<Instant>, u32)>,
}

/// The first pause after a failed open, doubled after each one that fails, up to the most.
const REOPEN_PAUSE: Duration = Duration::from_millis(100);
const REOPEN_PAUSE_MAX: Duration = Duration::from_secs(10);

impl std::fmt::Debug for NodeDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeDb").field("path", &self.path).finish_non_exhaustive()
    }
}

impl NodeDb {
    /// The handle, opening the database again after a failed write.
    pub(super) fn handle(&self) -> Result<Arc<DB>, rocksdb::Error> {
        if let Some(db) = self.slot.read().expect("db slot poisoned").as_ref() {
            return Ok(db.clone());
        }
        let mut slot = self.slot.write().expect("db slot poisoned");
        if let Some(db) = slot.as_ref() {
            return Ok(db.clone());
        }
        let mut reopen = self.reopen.lock().expect("reopen pace poisoned");
        let opened = open_rocks(&self.path);
        match &opened {
            Ok(db) => {
                *slot = Some(db.clone());
                *reopen = (None, 0);
            }
            Err(_) => {
                let pause = REOPEN_PAUSE.saturating_mul(1 << reopen.1.min(7)).min(REOPEN_PAUSE_MAX);
                *reopen = (Some(Instant::now() + pause), reopen.1.saturating_add(1));
            }
        }
        opened
    }

    /// Whether the database may be opened again now, if it was closed after a failed write.
    /// Not before the pause after a failed open has passed, nor while the disk lacks the room
    /// to replay the write-ahead log (opening writes what it holds to a table file first).
    /// Found from outside: with a reserve smaller than the log, a node on a full disk tried
    /// every 220 ms, forever, to replay a 67 MB log into 40 MB, for half a core, each failed
    /// open leaving one more of RocksDB's info logs on the full disk.
    ///
    /// # Errors
    /// Why not yet, in words for the log.
    pub(super) fn may_reopen(&self) -> Result<(), String> {
        if self.slot.read().expect("db slot poisoned").is_some() {
            return Ok(());
        }
        let (next, failures) = *self.reopen.lock().expect("reopen pace poisoned");
        if let Some(at) = next.filter(|at| Instant::now() < *at) {
            return Err(format!(
                "the raft log's database could not be opened again ({failures} tries in a row); next try in {:?}",
                at.saturating_duration_since(Instant::now())
            ));
        }
        let log_bytes: u64 = std::fs::read_dir(&self.path)
            .map_err(|e| format!("cannot list {}: {e}", self.path.display()))?
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        let free = crate::checkpoint::free_bytes(&self.path)
            .map_err(|e| format!("cannot read free space of {}: {e}", self.path.display()))?;
        if free < log_bytes {
            return Err(format!(
                "the raft log's database cannot be opened again before {log_bytes} bytes are free on the disk of {} \
                 (its write-ahead log is replayed into a table file as it opens): {free} bytes are free",
                self.path.display()
            ));
        }
        Ok(())
    }

    /// A write through `failed` failed: the next write opens the database again.
    pub(super) fn forget(&self, failed: &Arc<DB>) {
        let mut slot = self.slot.write().expect("db slot poisoned");
        if slot.as_ref().is_some_and(|db| Arc::ptr_eq(db, failed)) {
            *slot = None;
        }
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The shards below `num_shards` that have Raft state here (a conf state or a hard state).
    ///
    /// # Errors
    /// The database cannot be read.
    pub fn shards_with_state(&self, num_shards: u32) -> Result<Vec<ShardId>, rocksdb::Error> {
        let db = self.handle()?;
        let mut found = Vec::new();
        for shard in 0..num_shards {
            if db.get(key(shard, TAG_CONF_STATE))?.is_some() || db.get(key(shard, TAG_HARD_STATE))?.is_some()
            {
                found.push(shard);
            }
        }
        Ok(found)
    }

    /// Deletes everything group `shard` keeps here (a replica that left this node), synced.
    ///
    /// # Errors
    /// The write failed.
    pub fn drop_shard(&self, shard: ShardId) -> Result<(), rocksdb::Error> {
        let db = self.handle()?;
        let mut batch = WriteBatch::default();
        let end = shard.checked_add(1).map_or_else(|| vec![0xff; 5], |next| next.to_be_bytes().to_vec());
        batch.delete_range(shard.to_be_bytes().to_vec(), end);
        let mut options = WriteOptions::default();
        options.set_sync(true);
        let written = db.write_opt(batch, &options);
        if written.is_err() {
            self.forget(&db);
        }
        written
    }
}

/// Opens (creating if needed) the RocksDB database at `path`.
///
/// # Errors
/// RocksDB cannot open it (missing permissions, another process holds its lock), or its log is
/// damaged or lost writes it had synced (the text says what to do).
pub fn open_db(path: &Path) -> Result<Arc<NodeDb>, String> {
    let db = open_rocks(path).map_err(|e| match e.kind() {
        rocksdb::ErrorKind::Corruption => format!("{e}: {}", untrusted(path)),
        _ => e.to_string(),
    })?;
    let in_log = db.get(MARK_KEY).map_err(|e| e.to_string())?;
    let mark =
        LogMark::open(path, number_in(in_log.as_deref())).map_err(|e| format!("{e}: {}", untrusted(path)))?;
    let slot = RwLock::new(Some(db));
    let reopen = Mutex::new((None, 0));
    Ok(Arc::new(NodeDb { path: path.to_owned(), writer: NodeWriter::default(), mark, slot, reopen }))
}

/// What to do with a log that cannot be trusted.
fn untrusted(path: &Path) -> String {
    format!(
        "this node's Raft log cannot be trusted. Move {} away (keep the rest of the data dir) and start the \
         node again: with no log it recovers as a node that lost its disk does, from the peers that kept \
         theirs, before it votes; what only this node held is lost",
        path.display()
    )
}

pub(super) fn open_rocks(path: &Path) -> Result<Arc<DB>, rocksdb::Error> {
    let mut options = Options::default();
    options.create_if_missing(true);
    // The log is written once and read rarely: keep RocksDB's own caches small.
    options.set_max_total_wal_size(64 * 1024 * 1024);
    options.set_keep_log_file_num(4);
    // Only a torn last record (a write the power cut) is dropped: damage followed by records is
    // an error, not a shorter log (see `log_mark`).
    options.set_wal_recovery_mode(DBRecoveryMode::TolerateCorruptedTailRecords);
    // The log is only appended to while the node runs (reads come from each store's memory
    // mirror), and the groups' appends interleave in the writer's batches: a skip list paid a
    // seek across shards for every key (12% of a node's CPU under W3 with 16 shards). A vector
    // memtable appends and sorts once, at flush. The cost moves to reads of a live memtable
    // (each sorts a copy of it, at most the 64 MiB write buffer), which happen only when a
    // replica's store opens (a node's start, a replica placed here), next to the checkpoint it
    // loads. Measured in docs/performance.md.
    options.set_allow_concurrent_memtable_write(false);
    options.set_memtable_factory(rocksdb::MemtableFactory::Vector);
    DB::open(&options, path).map(Arc::new)
}

pub(super) fn key(shard: ShardId, tag: u8) -> Vec<u8> {
    let mut k = shard.to_be_bytes().to_vec();
    k.push(tag);
    k
}

pub(super) fn entry_key(shard: ShardId, index: u64) -> Vec<u8> {
    let mut k = key(shard, TAG_ENTRY);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Refuses a write while the disk holding `path` has less than `min_free_bytes` free (none
/// when it is zero).
pub(super) fn check_free_space(path: &Path, min_free_bytes: u64) -> Result<(), StorageError> {
    room_above_reserve(path, min_free_bytes).map(|_| ())
}

/// The bytes the disk holding `path` has free above `min_free_bytes` (`u64::MAX` with no
/// reserve: the disk is not asked); refused, as [`check_free_space`] says, when it is below.
pub(super) fn room_above_reserve(path: &Path, min_free_bytes: u64) -> Result<u64, StorageError> {
    if min_free_bytes == 0 {
        return Ok(u64::MAX);
    }
    let free = crate::checkpoint::free_bytes(path).map_err(|e| {
        StorageError::Other(format!("cannot read free space of {}: {e}", path.display()).into())
    })?;
    if free < min_free_bytes {
        return Err(StorageError::Other(
            format!(
                "disk nearly full: {free} bytes free on {}, below the reserve of {min_free_bytes} bytes",
                path.display(),
            )
            .into(),
        ));
    }
    Ok(free - min_free_bytes)
}

/// Adds `ops` to `batch`, in order.
pub(super) fn add_ops(batch: &mut WriteBatch, ops: &[Op]) {
    for op in ops {
        match op {
            Op::Put(k, v) => batch.put(k, v),
            Op::Delete(k) => batch.delete(k),
            Op::DeleteRange(from, to) => batch.delete_range(from, to),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found from outside: a database that could not be opened again after a failed write
    /// (its log did not fit the disk) was tried every 220 ms, forever.
    #[test]
    fn a_failed_reopen_is_tried_again_only_after_a_pause() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        assert!(db.may_reopen().is_ok(), "open: nothing to wait for");
        // A write failed: the handle is dropped, but one still holds RocksDB's lock.
        let held = db.handle().unwrap();
        db.forget(&held);
        assert!(db.may_reopen().is_ok(), "the first reopen is tried at once");
        assert!(db.handle().is_err(), "the lock is held");
        let why = db.may_reopen().unwrap_err();
        assert!(why.contains("1 tries in a row"), "{why}");
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(5);
        while db.may_reopen().is_err() {
            assert!(Instant::now() < deadline, "the pause ends");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(db.handle().is_ok());
        assert!(db.may_reopen().is_ok());
    }
}
