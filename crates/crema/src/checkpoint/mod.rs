//! Checkpoints: the whole cache at one applied Raft index, written to disk as a file in the
//! format of [`format`](mod@format) (magic `MCRS`, LZ4, CRC32). They are the node's Raft snapshots when it
//! keeps durable state: the log is compacted only behind them, and a restarted node loads the
//! newest valid one and replays the log after it.
//!
//! [`CheckpointStore`] owns the directory: atomic writes (temp file, fsync, rename, fsync of the
//! directory), listing, loading the newest valid checkpoint (a damaged one is logged and skipped
//! for the next older) and pruning. File names carry the index, so listing needs no reads.
//! Each shard has its own directory, and each file names its shard in its header: a file of
//! another shard found in a shard's directory (copied or restored there by hand) is skipped, not
//! loaded as that shard's state.

pub mod format;
mod manager;

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use raft::eraftpb::ConfState;
use tracing::{info, warn};

use crate::types::{ShardId, DEFAULT_SHARD};

pub use format::{CheckpointError, CheckpointMeta};
pub use manager::CheckpointManager;

/// When and how checkpoints are taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// The directory holding checkpoint files.
    pub dir: PathBuf,
    /// Take one no sooner than this many applied entries after the last, and then once the log
    /// since the last is as large as that checkpoint; [`Self::max_log_bytes`] of commands take
    /// one however few the entries.
    pub log_threshold: u64,
    /// Take one once the commands applied since the last reach this many bytes, however large
    /// the cache is: bounds the log kept on disk and in memory (0: every `log_threshold`
    /// entries).
    pub max_log_bytes: u64,
    /// Take one after this long if anything was applied since the last.
    pub interval: Option<Duration>,
    /// LZ4-compress the payload.
    pub compression: bool,
    /// How many to keep (at least 2, so a damaged newest one has a predecessor).
    pub keep: usize,
    /// The shard (Raft group) whose checkpoints these are: written into each file's header,
    /// and a file naming another shard is not loaded.
    pub shard: ShardId,
    /// A checkpoint (or a received snapshot) is not written when it would leave less than
    /// this many bytes free on its disk (0: no reserve). With durable storage the cache's
    /// `min_free_disk_bytes` applies here too.
    pub min_free_bytes: u64,
}

impl CheckpointConfig {
    /// Checkpoints in `dir`, compressed, the newest 2 kept: once the log since the last one is
    /// as large as it (at least 10,000 entries, at most 64 MiB of commands), or after 5 minutes.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            log_threshold: 10_000,
            max_log_bytes: 64 * 1024 * 1024,
            interval: Some(Duration::from_secs(300)),
            compression: true,
            keep: 2,
            shard: DEFAULT_SHARD,
            min_free_bytes: 0,
        }
    }

    /// Leaves at least `bytes` free on the checkpoints' disk (see [`Self::min_free_bytes`]).
    #[must_use]
    pub fn with_min_free_bytes(mut self, bytes: u64) -> Self {
        self.min_free_bytes = bytes;
        self
    }

    /// Checkpoints of shard `shard` (default: the first, the only one without Multi-Raft).
    #[must_use]
    pub fn with_shard(mut self, shard: ShardId) -> Self {
        self.shard = shard;
        self
    }

    /// Take a checkpoint no sooner than `entries` applied entries after the last, unless
    /// `max_log_bytes` of commands were applied since.
    #[must_use]
    pub fn with_log_threshold(mut self, entries: u64) -> Self {
        self.log_threshold = entries.max(1);
        self
    }

    /// Take a checkpoint once `bytes` of commands were applied since the last (0: every
    /// `log_threshold` entries, whatever the cache's size).
    #[must_use]
    pub fn with_max_log_bytes(mut self, bytes: u64) -> Self {
        self.max_log_bytes = bytes;
        self
    }

    /// Take a checkpoint after `interval` (none: only by log threshold).
    #[must_use]
    pub fn with_interval(mut self, interval: Option<Duration>) -> Self {
        self.interval = interval;
        self
    }

    /// Compress payloads with LZ4.
    #[must_use]
    pub fn with_compression(mut self, compression: bool) -> Self {
        self.compression = compression;
        self
    }
}

/// The checkpoint files of one Raft group.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
    shard: ShardId,
}

/// Bytes free for this process on the disk holding `path`.
///
/// # Errors
/// The file system cannot be asked.
pub fn free_bytes(path: &Path) -> io::Result<u64> {
    let stat = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    Ok(stat.blocks_available() as u64 * stat.fragment_size() as u64)
}

/// The shard a checkpoint file's header names, read without the rest of the file; `None` when
/// it is too short, unreadable, or a version 1 file (which did not say).
fn shard_of(path: &Path) -> Option<ShardId> {
    use std::io::Read;
    let mut head = [0u8; format::SHARD_HEAD];
    File::open(path).and_then(|mut f| f.read_exact(&mut head)).ok()?;
    format::shard_in_head(&head)
}

/// A checkpoint read back from disk.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedCheckpoint {
    /// Its metadata.
    pub meta: CheckpointMeta,
    /// The state machine snapshot it holds.
    pub data: Vec<u8>,
    /// The file.
    pub path: PathBuf,
}

const SUFFIX: &str = ".mcrs";

impl CheckpointStore {
    /// The store in `dir`, created if missing. Temp files left by a write that a crash cut
    /// short are removed here, once: no write can be running yet.
    ///
    /// # Errors
    /// The directory cannot be created or read.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        Self::open_for_shard(dir, DEFAULT_SHARD)
    }

    /// As [`Self::open`], for the checkpoints of shard `shard`.
    ///
    /// # Errors
    /// The directory cannot be created or read.
    pub fn open_for_shard(dir: impl Into<PathBuf>, shard: ShardId) -> io::Result<Self> {
        let dir = dir.into();
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        for entry in fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                let _ = fs::remove_file(path);
            }
        }
        Ok(Self { dir, shard })
    }

    /// The shard whose checkpoints these are.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a checkpoint atomically: it appears complete under its final name or not at all.
    ///
    /// # Errors
    /// Any I/O error (disk full included); a partial temp file is removed.
    pub fn write(
        &self,
        index: u64,
        term: u64,
        conf: &ConfState,
        data: &[u8],
        compress: bool,
        min_free_bytes: u64,
    ) -> io::Result<PathBuf> {
        let bytes = format::encode(self.shard, index, term, conf, data, compress);
        // Found from outside: checkpoints (as large as the cache) were written with no look
        // at the disk, filled it past the reserve the log keeps, and each time space was added
        // the next checkpoint took it.
        let needed = bytes.len() as u64 + min_free_bytes;
        let free = if min_free_bytes == 0 { u64::MAX } else { free_bytes(&self.dir)? };
        if free < needed {
            return Err(io::Error::other(format!(
                "not written: {} bytes would leave less than the reserve of {min_free_bytes} bytes \
                 free on the disk of {} ({free} bytes free)",
                bytes.len(),
                self.dir.display()
            )));
        }
        let path = self.dir.join(format!("checkpoint-{index:020}{SUFFIX}"));
        // A name of its own per write: a received snapshot may be written while a checkpoint of
        // the node's own state is still being written in the background.
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let seq = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!(".checkpoint-{index:020}-{seq}.tmp"));
        let written = (|| {
            // Private whatever the umask (see `private_files`).
            let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(path)
    }

    /// This shard's checkpoint files, newest (highest index) first. A file whose header names
    /// another shard is left out (it is not this shard's: it must neither count as one of its
    /// checkpoints, which paces the next and bounds the log, nor be pruned as one); a file too
    /// short or unreadable to say is listed, and loading it tells what is wrong.
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn list(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let mut found = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let index: Option<u64> = name
                .strip_prefix("checkpoint-")
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| n.parse().ok());
            let Some(index) = index else { continue };
            if let Some(shard) = shard_of(&path).filter(|shard| *shard != self.shard) {
                warn!(path = %path.display(), of = shard, here = self.shard, "checkpoint of another shard in this shard's directory; left out");
                continue;
            }
            found.push((index, path));
        }
        found.sort_by_key(|(index, _)| std::cmp::Reverse(*index));
        Ok(found)
    }

    /// The newest checkpoint that reads back intact; damaged ones are logged and skipped.
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn load_newest_valid(&self) -> io::Result<Option<LoadedCheckpoint>> {
        for (index, path) in self.list()? {
            let started = Instant::now();
            let result = fs::read(&path)
                .map_err(|e| CheckpointError::Invalid(e.to_string()))
                .and_then(|b| format::decode(&b));
            match result {
                Ok((meta, data)) if meta.index == index => {
                    info!(index, path = %path.display(), elapsed = ?started.elapsed(), "checkpoint loaded");
                    return Ok(Some(LoadedCheckpoint { meta, data, path }));
                }
                Ok((meta, _)) => {
                    warn!(path = %path.display(), inside = meta.index, "checkpoint name and content disagree; skipped")
                }
                Err(e) => warn!(path = %path.display(), error = %e, "damaged checkpoint skipped"),
            }
        }
        Ok(None)
    }

    /// Removes all but the newest `keep` checkpoints. Temp files are left alone: one may belong
    /// to a write in progress ([`Self::open`] removes those a crash left behind).
    ///
    /// # Errors
    /// The directory cannot be read or a file cannot be removed.
    pub fn prune(&self, keep: usize) -> io::Result<()> {
        for (_, path) in self.list()?.into_iter().skip(keep) {
            match fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf() -> ConfState {
        ConfState { voters: vec![1], ..Default::default() }
    }

    /// Found from outside: checkpoints were written with no look at the disk, and filled it
    /// past the reserve the log keeps.
    #[test]
    fn a_checkpoint_that_would_eat_the_reserve_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        let free = free_bytes(dir.path()).unwrap();
        let refused = store.write(10, 1, &conf(), b"ten", true, free).unwrap_err();
        assert!(refused.to_string().contains("reserve"), "{refused}");
        assert!(store.list().unwrap().is_empty(), "nothing left behind");
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none(), "no temporary file either");
        store.write(10, 1, &conf(), b"ten", true, free / 2).unwrap();
        assert_eq!(store.load_newest_valid().unwrap().unwrap().data, b"ten");
        // A received snapshot is let in only with room for it and the reserve.
        let config = CheckpointConfig::new(dir.path()).with_min_free_bytes(free / 2);
        let manager = CheckpointManager::open(config).unwrap();
        assert!(manager.room_for(1 << 20).is_ok());
        assert!(manager.room_for(free).unwrap_err().contains("do not fit"));
    }

    #[test]
    fn the_newest_valid_checkpoint_wins_and_damaged_ones_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        assert_eq!(store.load_newest_valid().unwrap(), None);
        store.write(10, 1, &conf(), b"ten", true, 0).unwrap();
        store.write(20, 1, &conf(), b"twenty", false, 0).unwrap();
        let newest = store.write(30, 2, &conf(), b"thirty", true, 0).unwrap();
        assert_eq!(store.load_newest_valid().unwrap().unwrap().data, b"thirty");

        // Flip a byte of the newest: the next older is used.
        let mut bytes = fs::read(&newest).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        fs::write(&newest, &bytes).unwrap();
        let loaded = store.load_newest_valid().unwrap().unwrap();
        assert_eq!((loaded.meta.index, loaded.data.as_slice()), (20, &b"twenty"[..]));

        // Truncate that one too: back to 10.
        let twenty = store.list().unwrap()[1].1.clone();
        let len = fs::metadata(&twenty).unwrap().len();
        fs::OpenOptions::new().write(true).open(&twenty).unwrap().set_len(len - 3).unwrap();
        assert_eq!(store.load_newest_valid().unwrap().unwrap().meta.index, 10);

        store.prune(1).unwrap();
        assert_eq!(store.list().unwrap().len(), 1);
        assert_eq!(store.load_newest_valid().unwrap(), None, "only the damaged newest is left");
    }

    #[test]
    fn writes_and_prunes_running_at_once_never_fail() {
        // A follower installs a received snapshot (a checkpoint written on the group loop) while
        // its own background checkpoint is being written and pruned: neither may remove the
        // other's temp file or trip over a file the other pruned.
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        std::thread::scope(|scope| {
            for start in [1u64, 2] {
                let store = store.clone();
                scope.spawn(move || {
                    for i in 0..200 {
                        let index = start + 2 * i;
                        store.write(index, 1, &conf(), &[7; 4096], true, 0).unwrap();
                        store.prune(2).unwrap();
                    }
                });
            }
        });
        let left: Vec<u64> = store.list().unwrap().into_iter().map(|(i, _)| i).collect();
        assert_eq!(left, vec![400, 399]);
    }

    /// A file of shard 3 restored into shard 5's directory (a newer index than shard 5's own)
    /// is not loaded as shard 5's state, not counted as one of its checkpoints and not pruned
    /// as one: the shard's own newest checkpoint is loaded, and its older one kept.
    #[test]
    fn a_checkpoint_of_another_shard_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let five = CheckpointStore::open_for_shard(dir.path(), 5).unwrap();
        five.write(10, 1, &conf(), b"shard five", true, 0).unwrap();
        five.write(12, 1, &conf(), b"shard five, later", true, 0).unwrap();
        let three = CheckpointStore::open_for_shard(dir.path(), 3).unwrap();
        let foreign = three.write(20, 1, &conf(), b"shard three", true, 0).unwrap();
        let loaded = five.load_newest_valid().unwrap().unwrap();
        assert_eq!((loaded.meta.index, loaded.meta.shard), (12, Some(5)));
        assert_eq!(loaded.data, b"shard five, later");
        let listed: Vec<u64> = five.list().unwrap().into_iter().map(|(i, _)| i).collect();
        assert_eq!(listed, vec![12, 10]);
        five.prune(2).unwrap();
        assert_eq!(five.list().unwrap().len(), 2, "both of shard 5's checkpoints are kept");
        assert!(foreign.exists(), "the other shard's file is left alone");
        assert_eq!(three.load_newest_valid().unwrap().unwrap().data, b"shard three");
    }

    #[test]
    fn temp_files_left_by_a_crash_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let leftover = dir.path().join(".checkpoint-00000000000000000005-0.tmp");
        fs::write(&leftover, b"half a checkpoint").unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        assert!(!leftover.exists());
        store.write(5, 1, &conf(), b"five", true, 0).unwrap();
        assert_eq!(store.load_newest_valid().unwrap().unwrap().data, b"five");
    }
}
