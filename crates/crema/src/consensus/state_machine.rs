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
//!
//! The state machine also keeps the record of when keys changed that `WATCH` is decided with
//! ([`KeyVersions`], see `consensus::versions`). It is replicated state like the entries:
//! snapshots carry it since format version 2. A version-1 snapshot (no record) still restores:
//! every key then counts as changed at the snapshot's index, which only makes transactions
//! watching older reads fail, and a `WATCH` reads after a read barrier, so never that old.
//!
//! The group's ACL users live here as well ([`AclStore`], see `crate::acl`); snapshots carry
//! them since format version 4.
//!
//! It keeps the write sessions too ([`Sessions`], see `consensus::sessions`), with which a
//! forwarded write is applied once however many copies of it commit; snapshots carry them since
//! format version 3 (an older snapshot restores with none).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::acl::{AclData, AclStore};
use crate::cache::storage::{CacheStorage, StoredValue};
use crate::consensus::apply::{apply_command, Target};
pub use crate::consensus::apply::{ApplyError, ApplyOutput};
use crate::consensus::command::{CacheCommand, CommandError, StampedCommand};
use crate::consensus::sessions::{Sessions, SessionsData};
use crate::consensus::versions::{KeyVersions, VersionsData};
use crate::multiraft::map_store::ShardMapStore;
use crate::multiraft::ShardMap;
use crate::types::NodeId;

/// Version byte leading snapshot data. Versions 1 (no record of key versions), 2 (no write
/// sessions), 3 (no ACL users) and 4 (no shard map) are still read.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 5;

/// The snapshot version before the shard map.
const SNAPSHOT_FORMAT_V4: u8 = 4;

/// The snapshot version before the ACL users.
const SNAPSHOT_FORMAT_V3: u8 = 3;

/// The snapshot version before the write sessions.
const SNAPSHOT_FORMAT_V2: u8 = 2;

/// The snapshot version before the record of key versions.
const SNAPSHOT_FORMAT_V1: u8 = 1;

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
    /// None only when decoded from a version-1 snapshot.
    versions: Option<VersionsData>,
    /// Empty when decoded from a snapshot of version 1 or 2.
    sessions: SessionsData,
    /// Empty when decoded from a snapshot before version 4.
    acl: AclData,
    /// Empty when decoded from a snapshot before version 5, and outside the meta shard.
    shard_map: ShardMap,
}

/// Snapshot data of format version 4.
#[derive(Serialize, Deserialize)]
struct SnapshotDataV4 {
    log_time_ms: u64,
    members: Vec<(NodeId, SocketAddr)>,
    entries: Vec<SnapshotEntry>,
    versions: Option<VersionsData>,
    sessions: SessionsData,
    acl: AclData,
}

/// Snapshot data of format version 3.
#[derive(Serialize, Deserialize)]
struct SnapshotDataV3 {
    log_time_ms: u64,
    members: Vec<(NodeId, SocketAddr)>,
    entries: Vec<SnapshotEntry>,
    versions: Option<VersionsData>,
    sessions: SessionsData,
}

/// Snapshot data of format version 2.
#[derive(Serialize, Deserialize)]
struct SnapshotDataV2 {
    log_time_ms: u64,
    members: Vec<(NodeId, SocketAddr)>,
    entries: Vec<SnapshotEntry>,
    versions: Option<VersionsData>,
}

/// Snapshot data of format version 1.
#[derive(Serialize, Deserialize)]
struct SnapshotDataV1 {
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
    versions: Arc<KeyVersions>,
    /// Written by the group task only; shared with the snapshot source.
    sessions: Arc<Mutex<Sessions>>,
    acl: Arc<AclStore>,
    shard_map: Arc<ShardMapStore>,
}

impl CacheStateMachine {
    /// A state machine over `storage`, at applied index 0.
    pub fn new(storage: CacheStorage) -> Self {
        Self {
            storage,
            members: Members::default(),
            applied_index: 0,
            versions: Arc::default(),
            sessions: Arc::default(),
            acl: Arc::default(),
            shard_map: Arc::default(),
        }
    }

    /// The shard map this group applied (the meta shard's is the cluster's; see
    /// [`crate::multiraft::placement`]).
    pub fn shard_map(&self) -> &Arc<ShardMapStore> {
        &self.shard_map
    }

    /// The group's ACL users (shared with the server, which reads them).
    pub fn acl(&self) -> &Arc<AclStore> {
        &self.acl
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
        let mut target = Target::new(&self.storage, &self.versions, index, t);
        if stamped.bounded_copies {
            match stamped.command {
                CacheCommand::Transaction(_) => {
                    target = target.with_copy_bound(crate::consensus::apply::MOST_COPIED_PER_ENTRY)
                }
                CacheCommand::Batch(_) => {
                    target = target.with_copy_bound(crate::consensus::apply::MOST_COPIED_PER_BATCH)
                }
                _ => {}
            }
        }
        let _whole = stamped.command.writes_many_keys().then(|| self.storage.many_keys_write());
        let (acl, shard_map) = (&self.acl, &self.shard_map);
        let run = || match &stamped.command {
            CacheCommand::Acl(change) => acl.apply(change),
            CacheCommand::Placement(change) => shard_map.apply(change),
            command => apply_command(&target, command),
        };
        match &stamped.session {
            None => run(),
            Some(session) => self.sessions.lock().expect("sessions poisoned").apply(session, index, run),
        }
    }

    /// Open write sessions and the outputs they keep (see `consensus::sessions`).
    pub fn session_figures(&self) -> (usize, usize) {
        let sessions = self.sessions.lock().expect("sessions poisoned");
        (sessions.open_count(), sessions.answers_kept())
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
        encode_snapshot(
            &self.storage,
            &self.members,
            &self.versions,
            &self.sessions,
            &self.acl,
            &self.shard_map,
        )
    }

    /// The record of key changes that `WATCH` is decided with.
    pub fn versions(&self) -> &KeyVersions {
        &self.versions
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
        // Copied now, with the capture's start (a fixed 512 KiB walk), to match its entries.
        let versions = Some(self.versions.data());
        let sessions = self.sessions.lock().expect("sessions poisoned").data();
        let acl = self.acl.data();
        let shard_map = self.shard_map.data();
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
            Some(SnapshotCapture(SnapshotData {
                log_time_ms,
                members,
                entries,
                versions,
                sessions,
                acl,
                shard_map,
            }))
        })
    }

    /// A function encoding the current state, for the log store to call when a snapshot is due.
    pub fn snapshot_source(&self) -> impl Fn() -> Vec<u8> + Send + 'static {
        let storage = self.storage.clone();
        let members = self.members.clone();
        let versions = self.versions.clone();
        let sessions = self.sessions.clone();
        let acl = self.acl.clone();
        let shard_map = self.shard_map.clone();
        move || encode_snapshot(&storage, &members, &versions, &sessions, &acl, &shard_map)
    }

    /// Replaces the whole state with snapshot `data` taken at `index`; answers the entry count.
    ///
    /// # Errors
    /// Data of an unknown version or that does not decode; the state is then unchanged.
    pub fn restore(&mut self, index: u64, data: &[u8]) -> Result<usize, CommandError> {
        let decoded = decode_snapshot(data)?;
        // First, because these are the only steps that can still refuse the data.
        let sessions = Sessions::from_data(decoded.sessions).map_err(CommandError::Decode)?;
        match &decoded.versions {
            Some(versions) => self.versions.restore(versions).map_err(CommandError::Decode)?,
            None => self.versions.forget(index),
        }
        *self.sessions.lock().expect("sessions poisoned") = sessions;
        self.storage.clear();
        self.storage.advance_log_time(decoded.log_time_ms);
        let count = decoded.entries.len();
        for e in decoded.entries {
            self.storage.insert(e.key, e.value, e.expires_at_ms);
        }
        *self.members.lock().expect("members poisoned") = decoded.members.into_iter().collect();
        self.acl.restore(decoded.acl);
        self.shard_map.restore(decoded.shard_map);
        self.applied_index = index;
        Ok(count)
    }
}

fn decode_snapshot(data: &[u8]) -> Result<SnapshotData, CommandError> {
    match data.split_first() {
        None => Ok(SnapshotData {
            log_time_ms: 0,
            members: Vec::new(),
            entries: Vec::new(),
            versions: None,
            sessions: SessionsData::default(),
            acl: AclData::default(),
            shard_map: ShardMap::default(),
        }),
        Some((&SNAPSHOT_FORMAT_VERSION, rest)) => {
            let data: SnapshotData =
                postcard::from_bytes(rest).map_err(|e| CommandError::Decode(e.to_string()))?;
            if let Some(versions) = &data.versions {
                versions.check().map_err(CommandError::Decode)?;
            }
            Sessions::from_data(data.sessions.clone()).map_err(CommandError::Decode)?;
            Ok(data)
        }
        Some((&SNAPSHOT_FORMAT_V4, rest)) => {
            let SnapshotDataV4 { log_time_ms, members, entries, versions, sessions, acl } =
                postcard::from_bytes(rest).map_err(|e| CommandError::Decode(e.to_string()))?;
            if let Some(versions) = &versions {
                versions.check().map_err(CommandError::Decode)?;
            }
            Sessions::from_data(sessions.clone()).map_err(CommandError::Decode)?;
            Ok(SnapshotData {
                log_time_ms,
                members,
                entries,
                versions,
                sessions,
                acl,
                shard_map: ShardMap::default(),
            })
        }
        Some((&SNAPSHOT_FORMAT_V3, rest)) => {
            let SnapshotDataV3 { log_time_ms, members, entries, versions, sessions } =
                postcard::from_bytes(rest).map_err(|e| CommandError::Decode(e.to_string()))?;
            if let Some(versions) = &versions {
                versions.check().map_err(CommandError::Decode)?;
            }
            Sessions::from_data(sessions.clone()).map_err(CommandError::Decode)?;
            Ok(SnapshotData {
                log_time_ms,
                members,
                entries,
                versions,
                sessions,
                acl: AclData::default(),
                shard_map: ShardMap::default(),
            })
        }
        Some((&SNAPSHOT_FORMAT_V2, rest)) => {
            let SnapshotDataV2 { log_time_ms, members, entries, versions } =
                postcard::from_bytes(rest).map_err(|e| CommandError::Decode(e.to_string()))?;
            if let Some(versions) = &versions {
                versions.check().map_err(CommandError::Decode)?;
            }
            Ok(SnapshotData {
                log_time_ms,
                members,
                entries,
                versions,
                sessions: SessionsData::default(),
                acl: AclData::default(),
                shard_map: ShardMap::default(),
            })
        }
        Some((&SNAPSHOT_FORMAT_V1, rest)) => {
            let SnapshotDataV1 { log_time_ms, members, entries } =
                postcard::from_bytes(rest).map_err(|e| CommandError::Decode(e.to_string()))?;
            Ok(SnapshotData {
                log_time_ms,
                members,
                entries,
                versions: None,
                sessions: SessionsData::default(),
                acl: AclData::default(),
                shard_map: ShardMap::default(),
            })
        }
        Some((v, _)) => Err(CommandError::Decode(format!("unknown snapshot version {v}"))),
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

fn capture(
    storage: &CacheStorage,
    members: &Members,
    versions: &KeyVersions,
    sessions: &Mutex<Sessions>,
    acl: &AclStore,
    shard_map: &ShardMapStore,
) -> SnapshotData {
    let log_time_ms = storage.log_time_ms();
    let entries = storage
        .live_entries(log_time_ms)
        .into_iter()
        .map(|(key, StoredValue { value, expires_at_ms })| SnapshotEntry { key, value, expires_at_ms })
        .collect();
    let members = members.lock().expect("members poisoned").iter().map(|(k, v)| (*k, *v)).collect();
    let sessions = sessions.lock().expect("sessions poisoned").data();
    SnapshotData {
        log_time_ms,
        members,
        entries,
        versions: Some(versions.data()),
        sessions,
        acl: acl.data(),
        shard_map: shard_map.data(),
    }
}

/// Whether `data` is snapshot data this build can restore: decodes it and changes nothing. The
/// peer transport checks a received snapshot with it before Raft accepts the snapshot, since
/// data that fails to restore after that would leave the node with nothing to apply.
///
/// # Errors
/// As [`CacheStateMachine::restore`].
pub fn check_snapshot_data(data: &[u8]) -> Result<(), CommandError> {
    decode_snapshot(data).map(|_| ())
}

fn encode_snapshot(
    storage: &CacheStorage,
    members: &Members,
    versions: &KeyVersions,
    sessions: &Mutex<Sessions>,
    acl: &AclStore,
    shard_map: &ShardMapStore,
) -> Vec<u8> {
    SnapshotCapture(capture(storage, members, versions, sessions, acl, shard_map)).encode()
}

#[cfg(test)]
#[path = "state_machine_tests.rs"]
mod tests;
