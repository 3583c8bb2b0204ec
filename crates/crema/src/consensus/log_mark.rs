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
//!   own guard for that (`track_and_verify_wals_in_manifest`) is not in its C API, so each
//!   synced batch of the node's log writer carries a number one past the last one's
//!   ([`MARK_KEY`]), and once the batch is synced the number is written to a file beside the
//!   database. A database that opens with a smaller number than the file's lost synced writes.
//!   (A first version recorded RocksDB's sequence number every 250 ms: found from outside, a
//!   log cut by its last 300 bytes opened unnoticed.)
//!
//! The file is overwritten in place and not synced: after a power loss it can only hold an
//! older number than the log, which is safe. Only the writer's batches carry numbers (one
//! thread, so they land in order); the few synced writes made elsewhere (a group's own flush)
//! are covered by the batches after them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tracing::warn;

/// The file, in the database's directory.
pub(super) const FILE: &str = "CREMA-SYNCED-BATCH";

/// The key the writer's synced batches carry their number under: past every shard's keys (and
/// past the end of any shard's range delete).
pub(super) const MARK_KEY: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0xff, b'm'];

/// The mark of one database.
#[derive(Debug)]
pub(super) struct LogMark {
    path: PathBuf,
    /// The last number handed to a batch.
    next: AtomicU64,
    /// The file, opened at the first record.
    file: Mutex<Option<File>>,
}

impl LogMark {
    /// The mark of the database in `dir`, whose last synced batch carried `in_log` (0: none).
    ///
    /// # Errors
    /// The file records a later batch than the log holds: the log lost synced writes.
    pub fn open(dir: &Path, in_log: u64) -> Result<Self, String> {
        let path = dir.join(FILE);
        let recorded = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                warn!(path = %path.display(), "the synced-log mark does not hold a number: ignored");
                0
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            // Found from outside: bytes that are not text turned the check off without a word.
            Err(e) => {
                warn!(path = %path.display(), error = %e, "the synced-log mark cannot be read: ignored");
                0
            }
        };
        if in_log < recorded {
            return Err(format!(
                "the Raft log in {} lost writes it had synced: its last synced batch is number {in_log}, and \
                 number {recorded} had been synced (its files were truncated, deleted or replaced by older ones)",
                dir.display()
            ));
        }
        Ok(Self { path, next: AtomicU64::new(in_log.max(recorded)), file: Mutex::new(None) })
    }

    /// The number the next synced batch carries under [`MARK_KEY`].
    pub fn next_number(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Records that the batch numbered `number` is synced.
    pub fn synced(&self, number: u64) {
        let mut file = self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let written = match file.as_ref() {
            Some(f) => f.write_all_at(format!("{number:020}\n").as_bytes(), 0),
            None => File::options().create(true).truncate(false).write(true).open(&self.path).and_then(|f| {
                f.write_all_at(format!("{number:020}\n").as_bytes(), 0)?;
                *file = Some(f);
                Ok(())
            }),
        };
        if let Err(e) = written {
            // Not a reason to refuse the write: the mark is a guard for later.
            warn!(path = %self.path.display(), error = %e, "the synced-log mark could not be written");
        }
    }
}

/// The number `value` (a stored [`MARK_KEY`]) holds; 0 for none or a malformed one.
pub(super) fn number_in(value: Option<&[u8]>) -> u64 {
    value.and_then(|v| v.try_into().ok()).map_or(0, u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_behind_its_mark_is_refused_and_numbers_go_on_from_the_larger() {
        let dir = tempfile::tempdir().unwrap();
        let mark = LogMark::open(dir.path(), 0).unwrap();
        let (first, second) = (mark.next_number(), mark.next_number());
        assert_eq!((first, second), (1, 2));
        mark.synced(second);
        let refused = LogMark::open(dir.path(), 1).unwrap_err();
        assert!(refused.contains("lost writes it had synced"), "{refused}");
        let again = LogMark::open(dir.path(), 2).unwrap();
        assert_eq!(again.next_number(), 3);
        assert_eq!(LogMark::open(dir.path(), 7).unwrap().next_number(), 8, "the log's number if larger");
        std::fs::write(dir.path().join(FILE), "garbage").unwrap();
        assert!(LogMark::open(dir.path(), 0).is_ok(), "an unreadable mark guards nothing");
        assert_eq!(number_in(Some(&5u64.to_be_bytes())), 5);
        assert_eq!((number_in(None), number_in(Some(b"short"))), (0, 0));
    }
}
