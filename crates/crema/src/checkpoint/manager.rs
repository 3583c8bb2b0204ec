//! [`CheckpointManager`]: decides when the group loop takes a checkpoint and how far the log may
//! be compacted behind the checkpoints on disk.
//!
//! The log is compacted only up to the *oldest* retained checkpoint, so that if the newest one
//! turns out damaged at restart, the older one plus the log after it still recover everything.

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
    /// Indexes of the checkpoints on disk, newest first.
    retained: Vec<u64>,
}

impl CheckpointManager {
    /// Opens the checkpoint directory of `config`.
    ///
    /// # Errors
    /// The directory cannot be created or read.
    pub fn open(config: CheckpointConfig) -> io::Result<Self> {
        let store = CheckpointStore::open(&config.dir)?;
        let retained: Vec<u64> = store.list()?.into_iter().map(|(i, _)| i).collect();
        let last_index = retained.first().copied().unwrap_or(0);
        Ok(Self { config, store, last_index, last_at: Instant::now(), retained })
    }

    /// The newest checkpoint that reads back intact (damaged ones are logged and skipped).
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn load_newest_valid(&self) -> io::Result<Option<LoadedCheckpoint>> {
        self.store.load_newest_valid()
    }

    /// Whether a checkpoint is due at `applied`.
    pub fn due(&self, applied: u64) -> bool {
        if applied <= self.last_index {
            return false;
        }
        applied - self.last_index >= self.config.log_threshold
            || self.config.interval.is_some_and(|i| self.last_at.elapsed() >= i)
    }

    /// Writes a checkpoint of `data` at `index`/`term` and prunes old ones, now.
    ///
    /// # Errors
    /// Writing failed (disk full, ...): nothing changed, the previous checkpoints stay.
    pub fn take(&mut self, index: u64, term: u64, conf: &ConfState, data: &[u8]) -> io::Result<()> {
        let data = data.to_vec();
        self.job(index, term, conf.clone(), move || Ok(data))()?;
        self.completed(index)
    }

    /// The work of writing a checkpoint, to run off the group loop (compression, the write and
    /// its fsync take the time); call [`Self::started`] now and [`Self::completed`] when it
    /// succeeded. Until then the log is not compacted past the older checkpoints. `data` makes
    /// the payload on that thread (encoding a captured state takes time too).
    pub fn job(
        &self,
        index: u64,
        term: u64,
        conf: ConfState,
        data: impl FnOnce() -> io::Result<Vec<u8>> + Send,
    ) -> impl FnOnce() -> io::Result<()> + Send {
        let (store, compress, keep) = (self.store.clone(), self.config.compression, self.config.keep.max(2));
        move || {
            let started = Instant::now();
            let data = data()?;
            let path = store.write(index, term, &conf, &data, compress)?;
            store.prune(keep)?;
            info!(index, bytes = data.len(), path = %path.display(), elapsed = ?started.elapsed(), "checkpoint written");
            Ok(())
        }
    }

    /// A checkpoint at `index` is being written: the next one is due from there.
    pub fn started(&mut self, index: u64) {
        self.last_index = index;
        self.last_at = Instant::now();
    }

    /// A checkpoint job finished: the retained checkpoints (and so the compaction limit) move.
    ///
    /// # Errors
    /// The directory cannot be read.
    pub fn completed(&mut self, index: u64) -> io::Result<()> {
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
        assert!(!m.due(150) && m.due(200));
        m.take(200, 1, &conf, b"b").unwrap();
        m.take(300, 2, &conf, b"c").unwrap();
        assert_eq!(m.compact_limit(), 201, "two kept: compaction waits for the older");
        let reopened = CheckpointManager::open(config).unwrap();
        assert_eq!((reopened.last_index(), reopened.compact_limit()), (300, 201));
        assert_eq!(reopened.load_newest_valid().unwrap().unwrap().data, b"c");
    }
}
