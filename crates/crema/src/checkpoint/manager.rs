//! [`CheckpointManager`]: decides when the group loop takes a checkpoint and how far the log may
//! be compacted behind the checkpoints on disk.
//!
//! The log is compacted only up to the *oldest* retained checkpoint, so that if the newest one
//! turns out damaged at restart, the older one plus the log after it still recover everything.
//!
//! Checkpoints are paced by the cache's size, as Redis paces its AOF rewrites: a checkpoint walks,
//! encodes and writes the whole cache, so one is taken once the commands applied since the last
//! are about as many bytes as that checkpoint's payload. A cache of 100,000 keys overwritten
//! again and again is then rewritten about once per 100,000 writes, not once per
//! `log_threshold` entries, while the log kept behind the checkpoints (on disk, and in the
//! RocksDB storage's memory mirror) stays about the cache's size, and no larger than
//! `max_log_bytes` per checkpoint; a restart replays no more log than it loads checkpoint.

use std::io;
use std::time::Instant;

use raft::eraftpb::ConfState;
use tracing::info;

use super::{CheckpointConfig, CheckpointStore, LoadedCheckpoint};

/// Checkpoint policy and bookkeeping of one Raft group.
#[derive(Debug)]
pub struct CheckpointManager {
    config: CheckpointConfig,
    store: CheckpointStore,
    last_index: u64,
    last_at: Instant,
    /// Payload bytes of the newest checkpoint (0 until one is written or loaded).
    last_bytes: u64,
    /// Bytes of the commands applied since the newest checkpoint was started.
    log_bytes: u64,
    /// Indexes of the checkpoints on disk, newest first.
    retained: Vec<u64>,
}

impl CheckpointManager {
    /// Opens the checkpoint directory of `config`.
    ///
    /// # Errors
    /// The directory cannot be created or read.
    pub fn open(config: CheckpointConfig) -> io::Result<Self> {
        let store = CheckpointStore::open_for_shard(&config.dir, config.shard)?;
        let retained: Vec<u64> = store.list()?.into_iter().map(|(i, _)| i).collect();
        let last_index = retained.first().copied().unwrap_or(0);
        Ok(Self { config, store, last_index, last_at: Instant::now(), last_bytes: 0, log_bytes: 0, retained })
    }

    /// The newest checkpoint that reads back intact (damaged ones are logged and skipped); its
    /// size paces the next one.
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn load_newest_valid(&mut self) -> io::Result<Option<LoadedCheckpoint>> {
        let loaded = self.store.load_newest_valid()?;
        if let Some(cp) = &loaded {
            self.last_bytes = cp.data.len() as u64;
        }
        Ok(loaded)
    }

    /// Counts `bytes` of commands applied (the entries' data): they pace the next checkpoint.
    pub fn note_applied(&mut self, bytes: u64) {
        self.log_bytes = self.log_bytes.saturating_add(bytes);
    }

    /// Whether a checkpoint is due at `applied`: at least `log_threshold` entries and as many
    /// bytes of commands as the last checkpoint held since the last, or `max_log_bytes` of
    /// commands however few the entries, or the interval passed. Found from outside: with
    /// 8 MB writes the 10,000 entries of the default threshold came after 80 GB, so only the
    /// interval took checkpoints, and a RocksDB node's log (kept in memory back to the older
    /// checkpoint) grew to 2.8 GB in 30 s, 7 GB with 8 shards.
    pub fn due(&self, applied: u64) -> bool {
        if applied <= self.last_index {
            return false;
        }
        let max = self.config.max_log_bytes;
        let log_grown = (applied - self.last_index >= self.config.log_threshold
            && self.log_bytes >= self.last_bytes.min(max))
            || (max > 0 && self.log_bytes >= max);
        log_grown || self.config.interval.is_some_and(|i| self.last_at.elapsed() >= i)
    }

    /// Writes a checkpoint of `data` at `index`/`term` and prunes old ones, now.
    ///
    /// # Errors
    /// Writing failed (disk full, ...): nothing changed, the previous checkpoints stay.
    pub fn take(&mut self, index: u64, term: u64, conf: &ConfState, data: &[u8]) -> io::Result<()> {
        let data = data.to_vec();
        // A received snapshot: `room_for` kept the reserve when it was let in, and waiting for
        // the disk now (the group cannot go on without it) would be worse than taking from it.
        let bytes = self.job_keeping(index, term, conf.clone(), move || Ok(data), 0)()?;
        self.started(index);
        self.completed(index, bytes)
    }

    /// The work of writing a checkpoint, to run off the group loop (compression, the write and
    /// its fsync take the time); call [`Self::started`] now and [`Self::completed`] with the
    /// payload bytes it returns when it succeeded. Until then the log is not compacted past the
    /// older checkpoints. `data` makes the payload on that thread (encoding a captured state
    /// takes time too).
    pub fn job(
        &self,
        index: u64,
        term: u64,
        conf: ConfState,
        data: impl FnOnce() -> io::Result<Vec<u8>> + Send,
    ) -> impl FnOnce() -> io::Result<u64> + Send {
        self.job_keeping(index, term, conf, data, self.config.min_free_bytes)
    }

    /// [`Self::job`], refused when it would leave less than `min_free` bytes on the disk.
    fn job_keeping(
        &self,
        index: u64,
        term: u64,
        conf: ConfState,
        data: impl FnOnce() -> io::Result<Vec<u8>> + Send,
        min_free: u64,
    ) -> impl FnOnce() -> io::Result<u64> + Send {
        let (store, compress, keep) = (self.store.clone(), self.config.compression, self.config.keep.max(2));
        move || {
            let started = Instant::now();
            let data = data()?;
            let path = store.write(index, term, &conf, &data, compress, min_free)?;
            store.prune(keep)?;
            info!(index, bytes = data.len(), path = %path.display(), elapsed = ?started.elapsed(), "checkpoint written");
            Ok(data.len() as u64)
        }
    }

    /// Whether a received snapshot of `bytes` (its payload, before compression) can be written
    /// as a checkpoint and leave the reserve free: a replica installs a snapshot only once it
    /// can keep it (see `Group::step`).
    ///
    /// # Errors
    /// Why not, in words for the log.
    pub fn room_for(&self, bytes: u64) -> Result<(), String> {
        let free = super::free_bytes(&self.config.dir).map_err(|e| format!("cannot read free space: {e}"))?;
        let reserve = self.config.min_free_bytes;
        // LZ4 may grow incompressible data a little, and the file has a header.
        let written = bytes.saturating_add(bytes / 64).saturating_add(4096);
        if free < written.saturating_add(reserve) {
            return Err(format!(
                "{bytes} bytes do not fit on the disk of {} ({free} bytes free, {reserve} kept free)",
                self.config.dir.display()
            ));
        }
        Ok(())
    }

    /// A checkpoint at `index` is being written: the next one is due from there.
    pub fn started(&mut self, index: u64) {
        self.last_index = index;
        self.last_at = Instant::now();
        self.log_bytes = 0;
    }

    /// A checkpoint job at `index` of `bytes` payload bytes finished: the retained checkpoints
    /// (and so the compaction limit) move, and its size paces the next.
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn completed(&mut self, index: u64, bytes: u64) -> io::Result<()> {
        if index >= self.last_index {
            self.last_bytes = bytes;
        }
        self.last_index = self.last_index.max(index);
        self.retained = self.store.list()?.into_iter().map(|(i, _)| i).collect();
        Ok(())
    }

    /// The first log index that must be kept: one past the oldest retained checkpoint (0 when
    /// there is none: nothing may be compacted).
    pub fn compact_limit(&self) -> u64 {
        self.retained.last().map_or(0, |oldest| oldest + 1)
    }

    /// The index of the newest checkpoint written or found.
    pub fn last_index(&self) -> u64 {
        self.last_index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_stops_at_the_oldest_retained_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let config = CheckpointConfig::new(dir.path()).with_log_threshold(100).with_interval(None);
        let mut m = CheckpointManager::open(config.clone()).unwrap();
        assert_eq!(m.compact_limit(), 0, "no checkpoint: nothing may be compacted");
        assert!(!m.due(99) && m.due(100));
        let conf = ConfState { voters: vec![1], ..Default::default() };
        m.take(100, 1, &conf, b"a").unwrap();
        assert_eq!(m.compact_limit(), 101);
        m.note_applied(1);
        assert!(!m.due(150) && m.due(200));
        m.take(200, 1, &conf, b"b").unwrap();
        m.take(300, 2, &conf, b"c").unwrap();
        assert_eq!(m.compact_limit(), 201, "two kept: compaction waits for the older");
        let mut reopened = CheckpointManager::open(config).unwrap();
        assert_eq!((reopened.last_index(), reopened.compact_limit()), (300, 201));
        assert_eq!(reopened.load_newest_valid().unwrap().unwrap().data, b"c");
    }

    #[test]
    fn checkpoints_are_paced_by_the_size_of_the_last_one_up_to_max_log_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let config = CheckpointConfig::new(dir.path())
            .with_log_threshold(100)
            .with_max_log_bytes(10_000)
            .with_interval(None);
        let mut m = CheckpointManager::open(config.clone()).unwrap();
        let conf = ConfState { voters: vec![1], ..Default::default() };
        m.take(100, 1, &conf, &[1; 5_000]).unwrap();
        m.note_applied(4_999);
        assert!(!m.due(100_000), "the log since is smaller than the checkpoint");
        m.note_applied(1);
        assert!(!m.due(199), "and no sooner than log_threshold entries");
        assert!(m.due(200));
        m.note_applied(5_000);
        assert!(m.due(101), "max_log_bytes of commands, however few the entries");

        // A background job: the log applied meanwhile counts from its start.
        m.started(200);
        m.note_applied(9_999);
        m.completed(200, 50_000).unwrap();
        assert!(!m.due(300), "capped at max_log_bytes, not reached");
        m.note_applied(1);
        assert!(m.due(300), "a cache larger than max_log_bytes is checkpointed every max_log_bytes");

        // After a restart, the loaded checkpoint paces the next.
        let mut reopened = CheckpointManager::open(config.clone()).unwrap();
        assert!(reopened.due(300), "nothing loaded yet: log_threshold alone");
        assert_eq!(reopened.load_newest_valid().unwrap().unwrap().meta.index, 100);
        assert!(!reopened.due(300));
        reopened.note_applied(5_000);
        assert!(reopened.due(300));

        // max_log_bytes 0: every log_threshold entries, whatever the size.
        let mut fixed = CheckpointManager::open(config.with_max_log_bytes(0)).unwrap();
        fixed.load_newest_valid().unwrap();
        assert!(!fixed.due(199) && fixed.due(200));
    }
}
