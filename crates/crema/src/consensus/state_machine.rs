//! [`CacheStateMachine`]: applies committed commands to the local [`CacheStorage`].
//!
//! Apply is deterministic and infallible: it reads no clock, does no I/O and every valid command
//! succeeds (validation happened before propose). It is idempotent: the applied index is tracked
//! and an entry at or below it is skipped, so a replay after a snapshot restore changes nothing.
//! Snapshots (the whole cache at the applied index) are encoded and restored here too.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::cache::storage::{unix_now_ms, CacheStorage, StoredValue};
use crate::consensus::command::{CacheCommand, CommandError};
use crate::types::NodeId;

/// Version byte leading snapshot data.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 1;

/// What applying a command produced, handed back to whoever proposed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyOutput {
    /// The command was applied (put, clear) or skipped as already applied.
    Done,
    /// A delete: whether a live entry was removed.
    Removed(bool),
}

#[derive(Serialize, Deserialize)]
struct SnapshotEntry {
    key: Bytes,
    value: Bytes,
    expires_at_ms: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotData {
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
    pub fn apply(&mut self, index: u64, command: &CacheCommand) -> ApplyOutput {
        if index <= self.applied_index {
            return ApplyOutput::Done;
        }
        self.applied_index = index;
        match command {
            CacheCommand::Put { key, value, expires_at_ms } => {
                self.storage.insert(key.clone(), value.clone(), *expires_at_ms);
                ApplyOutput::Done
            }
            CacheCommand::Delete { key } => ApplyOutput::Removed(self.storage.remove(key)),
            CacheCommand::Clear => {
                self.storage.clear();
                ApplyOutput::Done
            }
        }
    }

    /// Records that the entry at `index` (an empty entry or a conf change) was applied.
    pub fn advance_to(&mut self, index: u64) {
        self.applied_index = self.applied_index.max(index);
    }

    /// Encodes every entry live at `now_ms` (entries already expired are dropped) and the
    /// member address book.
    pub fn snapshot_data(&self, now_ms: u64) -> Vec<u8> {
        encode_snapshot(&self.storage, &self.members, now_ms)
    }

    /// A function encoding the current state, for the log store to call when a snapshot is due.
    pub fn snapshot_source(&self) -> impl Fn() -> Vec<u8> + Send + 'static {
        let storage = self.storage.clone();
        let members = self.members.clone();
        move || encode_snapshot(&storage, &members, unix_now_ms())
    }

    /// Replaces the whole state with snapshot `data` taken at `index`; answers the entry count.
    ///
    /// # Errors
    /// Data of an unknown version or that does not decode; the state is then unchanged.
    pub fn restore(&mut self, index: u64, data: &[u8]) -> Result<usize, CommandError> {
        let decoded: SnapshotData = match data.split_first() {
            None => SnapshotData { members: Vec::new(), entries: Vec::new() },
            Some((&SNAPSHOT_FORMAT_VERSION, rest)) => {
                postcard::from_bytes(rest).map_err(|e| CommandError::Decode(e.to_string()))?
            }
            Some((v, _)) => {
                return Err(CommandError::Decode(format!("unknown snapshot version {v}")));
            }
        };
        self.storage.clear();
        let count = decoded.entries.len();
        for e in decoded.entries {
            self.storage.insert(e.key, e.value, e.expires_at_ms);
        }
        *self.members.lock().expect("members poisoned") = decoded.members.into_iter().collect();
        self.applied_index = index;
        Ok(count)
    }
}

fn encode_snapshot(storage: &CacheStorage, members: &Members, now_ms: u64) -> Vec<u8> {
    let entries = storage
        .live_entries(now_ms)
        .into_iter()
        .map(|(key, StoredValue { value, expires_at_ms })| SnapshotEntry { key, value, expires_at_ms })
        .collect();
    let members = members.lock().expect("members poisoned").iter().map(|(k, v)| (*k, *v)).collect();
    let data = SnapshotData { members, entries };
    let out = vec![SNAPSHOT_FORMAT_VERSION];
    postcard::to_extend(&data, out).expect("encoding into a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::storage::StorageLimits;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn machine() -> CacheStateMachine {
        CacheStateMachine::new(CacheStorage::new(StorageLimits {
            max_capacity: 1_000_000,
            max_memory_bytes: None,
            time_to_idle: None,
        }))
    }

    #[test]
    fn replayed_entries_change_nothing() {
        let mut sm = machine();
        sm.apply(1, &CacheCommand::put("k", "v1"));
        sm.apply(2, &CacheCommand::put("k", "v2"));
        assert_eq!(sm.apply(1, &CacheCommand::put("k", "v1")), ApplyOutput::Done);
        assert_eq!(sm.apply(2, &CacheCommand::delete("k")), ApplyOutput::Done);
        assert_eq!(sm.storage().get(b"k"), Some(Bytes::from("v2")));
        assert_eq!(sm.applied_index(), 2);
    }

    #[test]
    fn delete_reports_whether_it_removed() {
        let mut sm = machine();
        sm.apply(1, &CacheCommand::put("k", "v"));
        assert_eq!(sm.apply(2, &CacheCommand::delete("k")), ApplyOutput::Removed(true));
        assert_eq!(sm.apply(3, &CacheCommand::delete("k")), ApplyOutput::Removed(false));
    }

    #[test]
    fn snapshot_round_trips_and_drops_expired() {
        let mut sm = machine();
        let now = unix_now_ms();
        sm.apply(1, &CacheCommand::put("a", "1"));
        sm.apply(
            2,
            &CacheCommand::Put { key: "b".into(), value: "2".into(), expires_at_ms: Some(now + 60_000) },
        );
        sm.apply(
            3,
            &CacheCommand::Put { key: "gone".into(), value: "x".into(), expires_at_ms: Some(now - 1) },
        );
        sm.members().lock().unwrap().insert(2, "127.0.0.1:9002".parse().unwrap());
        let data = sm.snapshot_data(now);

        let mut other = machine();
        other.apply(1, &CacheCommand::put("stale", "x"));
        assert_eq!(other.restore(3, &data).unwrap(), 2);
        assert_eq!(other.applied_index(), 3);
        assert_eq!(other.storage().get(b"stale"), None);
        assert_eq!(other.storage().get_entry(b"b").unwrap().expires_at_ms, Some(now + 60_000));
        assert_eq!(other.storage().get(b"a"), Some(Bytes::from("1")));
        assert_eq!(other.members().lock().unwrap().get(&2), Some(&"127.0.0.1:9002".parse().unwrap()));
    }

    #[test]
    fn restore_refuses_unknown_versions_and_keeps_state() {
        let mut sm = machine();
        sm.apply(1, &CacheCommand::put("a", "1"));
        assert!(sm.restore(5, &[9, 0]).is_err());
        assert!(sm.restore(5, &[SNAPSHOT_FORMAT_VERSION, 0xff]).is_err());
        assert_eq!(sm.applied_index(), 1);
        assert_eq!(sm.storage().get(b"a"), Some(Bytes::from("1")));
    }

    fn command() -> impl Strategy<Value = CacheCommand> {
        let key = prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(Bytes::from);
        prop_oneof![
            6 => (key.clone(), any::<u16>()).prop_map(|(k, v)| CacheCommand::put(k, v.to_string())),
            3 => key.prop_map(|key| CacheCommand::Delete { key }),
            1 => Just(CacheCommand::Clear),
        ]
    }

    proptest! {
        #[test]
        fn matches_a_btreemap_model(commands in prop::collection::vec(command(), 0..64)) {
            let mut sm = machine();
            let mut model = BTreeMap::new();
            for (i, cmd) in commands.iter().enumerate() {
                let out = sm.apply(i as u64 + 1, cmd);
                match cmd {
                    CacheCommand::Put { key, value, .. } => { model.insert(key.clone(), value.clone()); }
                    CacheCommand::Delete { key } => {
                        prop_assert_eq!(out, ApplyOutput::Removed(model.remove(key).is_some()));
                    }
                    CacheCommand::Clear => model.clear(),
                }
            }
            for key in ["a", "b", "c", "d"] {
                prop_assert_eq!(sm.storage().get(key.as_bytes()), model.get(key.as_bytes()).cloned());
            }
        }
    }
}
