//! [`CacheStateMachine`]: applies committed commands to the local [`CacheStorage`].
//!
//! Apply is deterministic and never fails the group: it reads no clock and does no I/O; a command
//! that does not fit the stored value (INCR on text) is answered with [`ApplyOutput::Failed`] and
//! changes nothing. Time comes from the log: the *log time* is the largest stamp of any command
//! applied so far, and a command is applied at `max(log time, its stamp)`, so expiry decisions
//! never go back in time and are the same on every node however late it applies. It is
//! idempotent: the applied index is tracked and an entry at or below it is skipped, so a replay
//! after a snapshot restore changes nothing. Snapshots (the whole cache at the applied index,
//! with the log time) are encoded and restored here too.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::cache::storage::{CacheStorage, StoredValue};
use crate::consensus::apply::apply_command;
pub use crate::consensus::apply::{ApplyError, ApplyOutput};
use crate::consensus::command::{CommandError, StampedCommand};
use crate::types::NodeId;

/// Version byte leading snapshot data.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 1;

#[derive(Serialize, Deserialize)]
struct SnapshotEntry {
    key: Bytes,
    value: Bytes,
    expires_at_ms: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotData {
    log_time_ms: u64,
    members: Vec<(NodeId, SocketAddr)>,
    entries: Vec<SnapshotEntry>,
}

/// The peer addresses known from applied conf changes, replicated so that a node that catches up
/// from a snapshot still knows how to reach every member.
pub type Members = Arc<Mutex<BTreeMap<NodeId, SocketAddr>>>;

/// The cache state machine of one Raft group.
#[derive(Debug)]
pub struct CacheStateMachine {
    storage: CacheStorage,
    members: Members,
    applied_index: u64,
}

impl CacheStateMachine {
    /// A state machine over `storage`, at applied index 0.
    pub fn new(storage: CacheStorage) -> Self {
        Self { storage, members: Members::default(), applied_index: 0 }
    }

    /// The member address book (shared with the snapshot source).
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// The index of the last entry applied (or restored from a snapshot).
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The storage applied into.
    pub fn storage(&self) -> &CacheStorage {
        &self.storage
    }

    /// Applies the command committed at `index`. An index at or below the applied index is a
    /// replay and changes nothing.
    pub fn apply(&mut self, index: u64, stamped: &StampedCommand) -> ApplyOutput {
        if index <= self.applied_index {
            return ApplyOutput::Done;
        }
        self.applied_index = index;
        let t = self.storage.log_time_ms().max(stamped.now_ms);
        self.storage.advance_log_time(t);
        apply_command(&self.storage, t, &stamped.command)
    }

    /// The log time of the applied state (unix ms).
    pub fn log_time_ms(&self) -> u64 {
        self.storage.log_time_ms()
    }

    /// Records that the entry at `index` (an empty entry or a conf change) was applied.
    pub fn advance_to(&mut self, index: u64) {
        self.applied_index = self.applied_index.max(index);
    }

    /// Encodes every entry live at the log time (entries already expired are dropped), the log
    /// time and the member address book.
    pub fn snapshot_data(&self) -> Vec<u8> {
        encode_snapshot(&self.storage, &self.members)
    }

    /// Starts a copy-on-write capture of the state as it is now, in constant time; the returned
    /// function completes it (walking the cache) and may run on another thread while writes
    /// are applied. It answers none if a `clear` aborted the capture. None when a capture is
    /// already running.
    pub fn capture_later(&self) -> Option<impl FnOnce() -> Option<SnapshotCapture> + Send + 'static> {
        if !self.storage.begin_capture() {
            return None;
        }
        let storage = self.storage.clone();
        let log_time_ms = storage.log_time_ms();
        let members: Vec<(NodeId, SocketAddr)> =
            self.members.lock().expect("members poisoned").iter().map(|(k, v)| (*k, *v)).collect();
        Some(move || {
            let entries = storage
                .finish_capture(log_time_ms)?
                .into_iter()
                .map(|(key, StoredValue { value, expires_at_ms })| SnapshotEntry {
                    key,
                    value,
                    expires_at_ms,
                })
                .collect();
            Some(SnapshotCapture(SnapshotData { log_time_ms, members, entries }))
        })
    }

    /// A function encoding the current state, for the log store to call when a snapshot is due.
    pub fn snapshot_source(&self) -> impl Fn() -> Vec<u8> + Send + 'static {
        let storage = self.storage.clone();
        let members = self.members.clone();
        move || encode_snapshot(&storage, &members)
    }

    /// Replaces the whole state with snapshot `data` taken at `index`; answers the entry count.
    ///
    /// # Errors
    /// Data of an unknown version or that does not decode; the state is then unchanged.
    pub fn restore(&mut self, index: u64, data: &[u8]) -> Result<usize, CommandError> {
        let decoded: SnapshotData = match data.split_first() {
            None => SnapshotData { log_time_ms: 0, members: Vec::new(), entries: Vec::new() },
            Some((&SNAPSHOT_FORMAT_VERSION, rest)) => {
                postcard::from_bytes(rest).map_err(|e| CommandError::Decode(e.to_string()))?
            }
            Some((v, _)) => {
                return Err(CommandError::Decode(format!("unknown snapshot version {v}")));
            }
        };
        self.storage.clear();
        self.storage.advance_log_time(decoded.log_time_ms);
        let count = decoded.entries.len();
        for e in decoded.entries {
            self.storage.insert(e.key, e.value, e.expires_at_ms);
        }
        *self.members.lock().expect("members poisoned") = decoded.members.into_iter().collect();
        self.applied_index = index;
        Ok(count)
    }
}

/// The state at one applied index, captured for a snapshot (values shared, not copied).
pub struct SnapshotCapture(SnapshotData);

impl SnapshotCapture {
    /// The snapshot bytes (format version + postcard).
    pub fn encode(self) -> Vec<u8> {
        let out = vec![SNAPSHOT_FORMAT_VERSION];
        postcard::to_extend(&self.0, out).expect("encoding into a Vec cannot fail")
    }
}

fn capture(storage: &CacheStorage, members: &Members) -> SnapshotData {
    let log_time_ms = storage.log_time_ms();
    let entries = storage
        .live_entries(log_time_ms)
        .into_iter()
        .map(|(key, StoredValue { value, expires_at_ms })| SnapshotEntry { key, value, expires_at_ms })
        .collect();
    let members = members.lock().expect("members poisoned").iter().map(|(k, v)| (*k, *v)).collect();
    SnapshotData { log_time_ms, members, entries }
}

fn encode_snapshot(storage: &CacheStorage, members: &Members) -> Vec<u8> {
    SnapshotCapture(capture(storage, members)).encode()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::storage::{unix_now_ms, StorageLimits};
    use crate::consensus::command::{CacheCommand, ExpiryUpdate, SetCondition};

    fn machine() -> CacheStateMachine {
        CacheStateMachine::new(CacheStorage::new(StorageLimits {
            max_capacity: 1_000_000,
            max_memory_bytes: None,
            time_to_idle: None,
        }))
    }

    fn at(now_ms: u64, command: CacheCommand) -> StampedCommand {
        StampedCommand::new(now_ms, command)
    }

    #[test]
    fn replayed_entries_change_nothing() {
        let mut sm = machine();
        sm.apply(1, &at(1, CacheCommand::put("k", "v1")));
        sm.apply(2, &at(1, CacheCommand::put("k", "v2")));
        assert_eq!(sm.apply(1, &at(1, CacheCommand::put("k", "v1"))), ApplyOutput::Done);
        assert_eq!(sm.apply(2, &at(1, CacheCommand::delete("k"))), ApplyOutput::Done);
        assert_eq!(sm.storage().get(b"k"), Some(Bytes::from("v2")));
        assert_eq!(sm.applied_index(), 2);
    }

    #[test]
    fn delete_reports_whether_it_removed() {
        let mut sm = machine();
        sm.apply(1, &at(1, CacheCommand::put("k", "v")));
        assert_eq!(sm.apply(2, &at(1, CacheCommand::delete("k"))), ApplyOutput::Removed(true));
        assert_eq!(sm.apply(3, &at(1, CacheCommand::delete("k"))), ApplyOutput::Removed(false));
    }

    #[test]
    fn log_time_is_the_largest_stamp_and_never_goes_back() {
        let mut sm = machine();
        sm.apply(1, &at(5_000, CacheCommand::Clear));
        sm.apply(2, &at(4_000, CacheCommand::Clear));
        assert_eq!(sm.log_time_ms(), 5_000);
        // A key expiring at 4500 written by a proposer whose clock is behind is already gone.
        let put = CacheCommand::Put { key: "k".into(), value: "v".into(), expires_at_ms: Some(4_500) };
        sm.apply(3, &at(4_000, put));
        assert!(sm.storage().entry_at(b"k", sm.log_time_ms()).is_none());
    }

    /// The reason for log time: a node applying late (catching up long after the commands were
    /// made, its own clock far past every expiry) decides exactly as the leader did.
    #[test]
    fn a_late_applier_decides_conditional_writes_like_the_leader() {
        let commands = [
            at(1_000, CacheCommand::Put { key: "k".into(), value: "v".into(), expires_at_ms: Some(2_000) }),
            at(
                1_500,
                CacheCommand::Set {
                    key: "k".into(),
                    value: "w".into(),
                    expiry: ExpiryUpdate::Persist,
                    condition: SetCondition::IfAbsent,
                    return_old: true,
                },
            ),
            at(1_600, CacheCommand::IncrBy { key: "n".into(), delta: 1 }),
            at(
                2_500,
                CacheCommand::Set {
                    key: "k".into(),
                    value: "x".into(),
                    expiry: ExpiryUpdate::Persist,
                    condition: SetCondition::IfAbsent,
                    return_old: false,
                },
            ),
        ];
        let mut sm = machine();
        let outputs: Vec<_> = commands.iter().enumerate().map(|(i, c)| sm.apply(i as u64 + 1, c)).collect();
        assert!(unix_now_ms() > 2_000_000, "this node's clock is far past every expiry above");
        assert_eq!(outputs[1], ApplyOutput::Written { written: false, old: Some(Bytes::from("v")) });
        assert_eq!(outputs[3], ApplyOutput::Written { written: true, old: None });
        assert_eq!(sm.storage().entry_at(b"k", 2_500).unwrap().value, Bytes::from("x"));
    }

    #[test]
    fn snapshot_round_trips_with_log_time_and_drops_expired() {
        let mut sm = machine();
        let now = unix_now_ms();
        sm.apply(1, &at(now, CacheCommand::put("a", "1")));
        let b = CacheCommand::Put { key: "b".into(), value: "2".into(), expires_at_ms: Some(now + 60_000) };
        sm.apply(2, &at(now, b));
        let gone = CacheCommand::Put { key: "gone".into(), value: "x".into(), expires_at_ms: Some(now + 5) };
        sm.apply(3, &at(now, gone));
        // Advances the log time past "gone"'s expiry (the delete itself touches nothing).
        sm.apply(4, &at(now + 10, CacheCommand::delete("nothing")));
        sm.members().lock().unwrap().insert(2, "127.0.0.1:9002".parse().unwrap());
        let data = sm.snapshot_data();

        let mut other = machine();
        other.apply(1, &at(now, CacheCommand::put("stale", "x")));
        assert_eq!(other.restore(4, &data).unwrap(), 2, "the entry expired at the log time is dropped");
        assert_eq!(other.applied_index(), 4);
        assert_eq!(other.log_time_ms(), now + 10);
        assert_eq!(other.storage().get(b"stale"), None);
        assert_eq!(other.storage().get_entry(b"b").unwrap().expires_at_ms, Some(now + 60_000));
        assert_eq!(other.storage().get(b"a"), Some(Bytes::from("1")));
        assert_eq!(other.members().lock().unwrap().get(&2), Some(&"127.0.0.1:9002".parse().unwrap()));
    }

    #[test]
    fn restore_refuses_unknown_versions_and_keeps_state() {
        let mut sm = machine();
        sm.apply(1, &at(1, CacheCommand::put("a", "1")));
        assert!(sm.restore(5, &[9, 0]).is_err());
        assert!(sm.restore(5, &[SNAPSHOT_FORMAT_VERSION, 0xff]).is_err());
        assert_eq!(sm.applied_index(), 1);
        assert_eq!(sm.storage().get(b"a"), Some(Bytes::from("1")));
    }
}
