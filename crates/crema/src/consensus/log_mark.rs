//! How far the node's Raft log was synced, recorded beside it (feature `rocksdb`), so that a log
//! that lost synced writes is refused when it opens instead of serving an older history.
//!
//! Found from outside: with one node's RocksDB log damaged while it was stopped (bytes flipped
//! in the write-ahead log, the file truncated or deleted), RocksDB opened it without a word, cut
//! back to the last record before the damage, or to the last flush. The node had acknowledged
//! the lost entries and voted in the lost terms; it voted again, elected a peer that lagged, and
//! the group lost acknowledged writes for good (the up-to-date replicas then diverged). Two
//! guards close that:
//!
//! - the log opens in RocksDB's `TolerateCorruptedTailRecords` mode: only a torn last record
//!   (a write in flight when the power went) is dropped; damage with records after it is an
//!   error;
//! - a truncated or deleted log ends cleanly, which no mode can tell from a short log. RocksDB's
//!   own guard for that (`track_and_verify_wals_in_manifest`) is not in its C API, so the node
//!   writes the database's sequence number, once writes up to it are synced, to a file beside
//!   it (at most every [`EVERY`], and when the database closes), and refuses a database that
//!   opens below it. What the mark misses is at most the last [`EVERY`] before a crash.
//!
//! The mark is written to a temporary file and renamed over the old one, not synced: after a
//! power loss it can only be older than the log, which is safe.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::warn;

/// The file, in the database's directory.
pub(super) const FILE: &str = "CREMA-SYNCED-SEQUENCE";

/// The mark is written at most this often while writes go on.
pub(super) const EVERY: Duration = Duration::from_millis(250);

/// The mark of one database.
#[derive(Debug)]
pub(super) struct LogMark {
    path: PathBuf,
    /// When the mark was last written, and what it says.
    written: Mutex<(Option<Instant>, u64)>,
}

impl LogMark {
    /// The mark of the database in `dir`, as recorded there (0 when none is).
    pub fn open(dir: &Path) -> Self {
        let path = dir.join(FILE);
        let recorded = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                warn!(path = %path.display(), "the synced-log mark does not hold a number: ignored");
                0
            }),
            Err(_) => 0,
        };
        Self { path, written: Mutex::new((None, recorded)) }
    }

    /// The sequence number every write up to which was synced, as last recorded.
    pub fn recorded(&self) -> u64 {
        self.written.lock().unwrap_or_else(std::sync::PoisonError::into_inner).1
    }

    /// Records that every write up to `sequence` is synced: now when `now`, else once
    /// [`EVERY`] passed since the last time.
    pub fn note(&self, sequence: u64, now: bool) {
        let mut written = self.written.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let due = now || written.0.is_none_or(|at| at.elapsed() >= EVERY);
        if !due || sequence <= written.1 {
            return;
        }
        let temporary = self.path.with_extension("tmp");
        let stored = std::fs::write(&temporary, format!("{sequence}\n"))
            .and_then(|()| std::fs::rename(&temporary, &self.path));
        match stored {
            Ok(()) => *written = (Some(Instant::now()), sequence),
            Err(e) => {
                // Not a reason to refuse the write: the mark is a guard for later.
                written.0 = Some(Instant::now());
                warn!(path = %self.path.display(), error = %e, "the synced-log mark could not be written");
            }
        }
    }

    /// Refuses a database that opened with fewer writes than were synced.
    pub fn check(&self, dir: &Path, opened_at: u64) -> Result<(), String> {
        let recorded = self.recorded();
        if opened_at >= recorded {
            return Ok(());
        }
        Err(format!(
            "the Raft log in {} lost writes it had synced: it opened at write {opened_at}, and writes up to \
             {recorded} had been synced (its files were truncated, deleted or replaced by older ones)",
            dir.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_only_grows_and_is_written_at_most_every_interval() {
        let dir = tempfile::tempdir().unwrap();
        let mark = LogMark::open(dir.path());
        assert_eq!(mark.recorded(), 0);
        mark.note(10, false);
        assert_eq!(LogMark::open(dir.path()).recorded(), 10, "the first is written at once");
        mark.note(20, false);
        assert_eq!(LogMark::open(dir.path()).recorded(), 10, "not again within the interval");
        mark.note(5, true);
        assert_eq!(LogMark::open(dir.path()).recorded(), 10, "never lowered");
        mark.note(30, true);
        assert_eq!(LogMark::open(dir.path()).recorded(), 30);
        assert!(mark.check(dir.path(), 30).is_ok() && mark.check(dir.path(), 31).is_ok());
        let refused = mark.check(dir.path(), 29).unwrap_err();
        assert!(refused.contains("lost writes it had synced"), "{refused}");
        std::fs::write(dir.path().join(FILE), "garbage").unwrap();
        assert_eq!(LogMark::open(dir.path()).recorded(), 0, "an unreadable mark guards nothing");
    }
}
