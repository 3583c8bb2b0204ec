//! Raft log storage: the [`LogStore`] trait the group loop writes through, and [`MemStorage`], the
//! in-memory implementation.
//!
//! `raft::Storage` is the read side raft-rs asks; `LogStore` adds the writes the group loop makes
//! while handling a Ready (append, hard state, conf state, compaction, snapshots) so a persistent
//! store can slot in. Every implementation runs the conformance suite in `storage_suite`.
//!
//! Snapshots are built lazily: the store remembers the applied index and asks a snapshot source
//! (the state machine's encoder) for the data only when raft-rs needs a snapshot for a follower.
//! Compaction therefore costs nothing but dropping entries.
//!
//! A new cluster's initial voters are written into the log itself ([`bootstrap_log`]), not only
//! into the conf state: a node added later starts with an empty log and learns the membership by
//! replaying the log from index 1, so the log must say who the first voters were. Without those
//! entries such a node would know only the voters added after the bootstrap, and could count a
//! majority of that partial set (once it elected itself alone).

use std::fmt;

pub use super::persist::WriteTicket;

use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfState, Entry, EntryType, HardState, Snapshot, SnapshotMetadata,
};
use raft::{GetEntriesContext, RaftState, StorageError};

/// The term of the bootstrap entries: every initial voter writes the same entries at term 1, so
/// their logs agree before any election, which starts at term 2.
pub const BOOTSTRAP_TERM: u64 = 1;

/// The log a new cluster's initial voters start with: one committed `AddNode` entry per voter
/// (indices `1..=voters.len()`, term [`BOOTSTRAP_TERM`]) and the hard state committing them. The
/// entries are identical on every initial voter (they carry no address), and applying them on
/// a node whose conf state already holds the voters changes nothing. `learners` follow as
/// `AddLearnerNode` entries (the meta shard's non-voting replicas, see
/// `crate::multiraft::placement`).
pub fn bootstrap_log(voters: &[u64], learners: &[u64]) -> (Vec<Entry>, HardState) {
    let changes = voters.iter().map(|&id| (ConfChangeType::AddNode, id));
    let changes = changes.chain(learners.iter().map(|&id| (ConfChangeType::AddLearnerNode, id)));
    let entries: Vec<Entry> = changes
        .enumerate()
        .map(|(i, (change_type, id))| {
            let cc = ConfChange { change_type, node_id: id, ..Default::default() };
            Entry {
                entry_type: EntryType::EntryConfChange,
                term: BOOTSTRAP_TERM,
                index: i as u64 + 1,
                data: cc.write_to_bytes().expect("encoding a conf change cannot fail").into(),
                ..Default::default()
            }
        })
        .collect();
    let hard_state =
        HardState { term: BOOTSTRAP_TERM, vote: 0, commit: entries.len() as u64, ..Default::default() };
    (entries, hard_state)
}

/// Produces the snapshot data of the state machine at the store's applied index.
pub type SnapshotSource = Box<dyn Fn() -> Vec<u8> + Send>;

/// The write side of Raft log storage, used by the group loop.
///
/// Contract (checked by the conformance suite):
/// - `append` takes entries contiguous with the log (their first index in
///   `first_index()..=last_index() + 1`) and replaces any conflicting suffix.
/// - `compact(i)` drops entries below `i` (`i <= applied + 1`); `term(i - 1)` stays answerable.
/// - `apply_snapshot` replaces the log with the snapshot's metadata (data goes to the state
///   machine, not here) and refuses a snapshot older than the first index.
/// - `snapshot(request_index, _)` answers a snapshot at the applied index, with the conf state
///   as of that index, or `SnapshotTemporarilyUnavailable` when the applied index is older than
///   `request_index`.
pub trait LogStore: raft::Storage + Send + 'static {
    /// Forgets how snapshots for follower `to` were paced: it started again, or the last one
    /// never reached it (see `SnapshotPace`).
    fn forget_snapshot_pace(&mut self, _to: u64) {}

    /// Appends `entries`, truncating any conflicting suffix first.
    ///
    /// # Errors
    /// `Compacted` if the first entry is below the first index; `Unavailable` for a gap.
    fn append(&mut self, entries: &[Entry]) -> raft::Result<()>;
    /// Replaces the hard state.
    fn set_hard_state(&mut self, hs: HardState) -> raft::Result<()>;
    /// Sets only the commit index of the hard state.
    fn set_commit(&mut self, commit: u64) -> raft::Result<()>;
    /// Replaces the conf state (after a conf change is applied).
    fn set_conf_state(&mut self, cs: ConfState) -> raft::Result<()>;
    /// Drops entries below `index`.
    fn compact(&mut self, index: u64) -> raft::Result<()>;
    /// Replaces the log with a received snapshot's metadata.
    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> raft::Result<()>;
    /// Records the state machine's applied index (what a snapshot would capture).
    fn set_applied(&mut self, index: u64);
    /// Installs the function that encodes the state machine for snapshots.
    fn set_snapshot_source(&mut self, source: SnapshotSource);
    /// What the entries this store keeps in memory weigh, in bytes (see [`entry_weight`]).
    fn retained_bytes(&self) -> u64;
    /// The first index to keep so that the entries kept in memory weigh at most `budget`
    /// bytes, but never above `upto` (entries from `upto` on are kept whatever they weigh).
    fn first_index_within(&self, budget: u64, upto: u64) -> u64;
    /// Writes every change made since the last flush, with one write, and makes durable what
    /// Raft needs durable (entries, term, vote, conf state, a snapshot) before it returns; a
    /// change of the commit index alone may stay unsynced until a later flush or [`Self::sync`].
    /// The group loop calls it once per Ready, before anything of that Ready is sent as
    /// persisted or acknowledged. Memory storage has nothing to do.
    ///
    /// # Errors
    /// The write failed (after the store's own retries); the changes are not durable.
    fn flush(&mut self) -> raft::Result<()> {
        Ok(())
    }
    /// True when [`Self::flush`] will wait for the disk (an fsync): the pending changes include
    /// entries, a term or vote, a conf state or a snapshot.
    fn flush_syncs(&self) -> bool {
        false
    }
    /// Like [`Self::flush`], and makes everything written so far durable, the commit index
    /// included: before a checkpoint at an applied index is written, and when the group stops.
    ///
    /// # Errors
    /// As [`Self::flush`].
    fn sync(&mut self) -> raft::Result<()> {
        self.flush()
    }
    /// True when [`Self::flush`] has changes to write (and may block on the disk). The group
    /// loop moves off its runtime worker only then: handing a worker over costs a thread
    /// wake-up, which memory storage would pay on every Ready for nothing.
    fn has_unflushed(&self) -> bool {
        false
    }
    /// True when this store can hand its pending changes to a write that runs away from the
    /// group loop ([`Self::take_write`]). The loop then keeps stepping messages, proposing and
    /// applying while the disk syncs a batch, and the changes of the Readies it handles
    /// meanwhile go together in the next write.
    fn writes_off_loop(&self) -> bool {
        false
    }
    /// Takes every change made since the last flush or take as one write, synced when
    /// [`Self::flush_syncs`] was true; `None` when nothing is pending (or the store cannot
    /// write off the loop). Writes taken land in the order they were taken, and before any
    /// later [`Self::flush`] or [`Self::sync`]; the store's reads (`raft::Storage`) answer the
    /// taken changes at once.
    fn take_write(&mut self) -> Option<Box<dyn LogWrite>> {
        None
    }
    /// True when a write taken may start before the previous one landed: the store's writes go
    /// through one queue that writes them in order (RocksDB's node log writer), so the group
    /// hands each Ready's write over at once. Otherwise (the default) one runs at a time.
    fn pipelines_writes(&self) -> bool {
        false
    }
}

/// Changes taken from a [`LogStore`] to be written away from the group loop.
pub trait LogWrite: Send + 'static {
    /// Writes the changes, durably when they were taken as synced. After an error it may be
    /// called again and writes the same changes.
    ///
    /// # Errors
    /// The write failed; the changes are not durable.
    fn write(&mut self) -> raft::Result<()>;
    /// Starts the write away from the group loop; it reports through `ticket` once it landed
    /// (or was given up as the group stops). By default it runs on a blocking thread of its
    /// own, retrying while the disk refuses it; a store whose writes can share one synced batch
    /// with other groups' (RocksDB: the node's log writer) hands it there instead.
    fn start(self: Box<Self>, ticket: WriteTicket) {
        let mut this = self;
        ticket.run_alone(move || this.write());
    }
}

/// What an entry kept in memory weighs: its payload and a fixed cost for the rest.
pub fn entry_weight(entry: &Entry) -> u64 {
    (entry.data.len() + entry.context.len()) as u64 + 64
}

/// In-memory Raft storage. Nothing survives a restart.
#[derive(Default)]
pub struct MemStorage {
    hard_state: HardState,
    conf_state: ConfState,
    /// `entries[i].index == compacted.index + 1 + i`.
    entries: Vec<Entry>,
    /// The [`entry_weight`]s of `entries`, added.
    bytes: u64,
    /// Index and term of the last entry dropped by compaction or covered by a snapshot.
    compacted: SnapshotMetadata,
    applied: u64,
    source: Option<SnapshotSource>,
    /// When each follower may be given a snapshot again (see [`SnapshotPace`]).
    pace: SnapshotPace,
}

/// Paces the snapshots a leader makes for one follower: the first at once, another within a
/// pause only if the follower keeps asking, the pause doubling (1 s up to a minute) while it
/// does. Found from outside: a follower whose disk could not hold a 138 MB snapshot refused it,
/// and its leaders encoded and sent another about every second per shard (240 MB/s, a quarter
/// of a core each, half a core on the follower) for as long as the disk stayed short. A
/// follower that took its snapshot asks for no other, and the pause resets after it stays
/// quiet for twice the pause.
#[derive(Debug, Default)]
struct SnapshotPace {
    /// Per follower: when it was last given one, and the pause after it.
    given: std::sync::Mutex<std::collections::HashMap<u64, (std::time::Instant, std::time::Duration)>>,
}

impl SnapshotPace {
    const FIRST: std::time::Duration = std::time::Duration::from_secs(1);
    const MOST: std::time::Duration = std::time::Duration::from_secs(60);

    /// Whether follower `to` may be given a snapshot now (then counted as given).
    fn may_give(&self, to: u64) -> bool {
        let now = std::time::Instant::now();
        let mut given = self.given.lock().expect("snapshot pace poisoned");
        let pause = match given.get(&to) {
            Some((at, pause)) if now.duration_since(*at) < *pause => return false,
            Some((at, pause)) if now.duration_since(*at) < *pause * 2 => (*pause * 2).min(Self::MOST),
            _ => Self::FIRST,
        };
        given.insert(to, (now, pause));
        true
    }
}

impl fmt::Debug for MemStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemStorage")
            .field("hard_state", &self.hard_state)
            .field("conf_state", &self.conf_state)
            .field("first_index", &self.first())
            .field("last_index", &self.last())
            .field("applied", &self.applied)
            .finish()
    }
}

impl MemStorage {
    /// An empty store with no members: a node waiting to be added to a cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// The store of an initial voter of a new cluster: `voters` as the conf state and the
    /// [`bootstrap_log`] naming them.
    pub fn new_with_conf_state(voters: &[u64]) -> Self {
        Self::bootstrapped(voters, &[])
    }

    /// As [`Self::new_with_conf_state`], with `learners` too.
    pub fn bootstrapped(voters: &[u64], learners: &[u64]) -> Self {
        let mut store = Self::new();
        store.conf_state.voters = voters.to_vec();
        store.conf_state.learners = learners.to_vec();
        if !voters.is_empty() {
            (store.entries, store.hard_state) = bootstrap_log(voters, learners);
            store.bytes = store.entries.iter().map(entry_weight).sum();
        }
        store
    }

    /// A store holding state loaded from disk: the log after the compaction point
    /// (`compacted_index`, `compacted_term`), hard state and conf state.
    pub fn restored(
        hard_state: HardState,
        conf_state: ConfState,
        compacted_index: u64,
        compacted_term: u64,
        entries: Vec<Entry>,
    ) -> Self {
        let compacted =
            SnapshotMetadata { index: compacted_index, term: compacted_term, ..Default::default() };
        let bytes = entries.iter().map(entry_weight).sum();
        Self {
            hard_state,
            conf_state,
            entries,
            bytes,
            compacted,
            applied: compacted_index,
            source: None,
            pace: SnapshotPace::default(),
        }
    }

    /// The current hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The current conf state.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    fn first(&self) -> u64 {
        self.compacted.index + 1
    }

    fn last(&self) -> u64 {
        self.compacted.index + self.entries.len() as u64
    }
}

fn store_err(e: StorageError) -> raft::Error {
    raft::Error::Store(e)
}

impl raft::Storage for MemStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(store_err(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(store_err(StorageError::Unavailable));
        }
        let offset = self.first();
        let mut out = self.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.compacted.index {
            return Ok(self.compacted.term);
        }
        if idx < self.compacted.index {
            return Err(store_err(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(store_err(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let index = self.applied.max(self.compacted.index);
        if index < request_index || (self.source.is_some() && !self.pace.may_give(to)) {
            return Err(store_err(StorageError::SnapshotTemporarilyUnavailable));
        }
        let mut snapshot = Snapshot::default();
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = self.term(index)?;
        meta.set_conf_state(self.conf_state.clone());
        if let Some(source) = &self.source {
            snapshot.data = source().into();
        }
        Ok(snapshot)
    }
}

impl LogStore for MemStorage {
    fn forget_snapshot_pace(&mut self, to: u64) {
        self.pace.given.lock().expect("snapshot pace poisoned").remove(&to);
    }

    fn append(&mut self, entries: &[Entry]) -> raft::Result<()> {
        let Some(first_new) = entries.first().map(|e| e.index) else {
            return Ok(());
        };
        if first_new < self.first() {
            return Err(store_err(StorageError::Compacted));
        }
        if first_new > self.last() + 1 {
            return Err(store_err(StorageError::Unavailable));
        }
        let kept = (first_new - self.first()) as usize;
        self.bytes -= self.entries[kept..].iter().map(entry_weight).sum::<u64>();
        self.entries.truncate(kept);
        self.entries.extend_from_slice(entries);
        self.bytes += entries.iter().map(entry_weight).sum::<u64>();
        Ok(())
    }

    fn set_hard_state(&mut self, hs: HardState) -> raft::Result<()> {
        self.hard_state = hs;
        Ok(())
    }

    fn set_commit(&mut self, commit: u64) -> raft::Result<()> {
        self.hard_state.commit = commit;
        Ok(())
    }

    fn set_conf_state(&mut self, cs: ConfState) -> raft::Result<()> {
        self.conf_state = cs;
        Ok(())
    }

    fn compact(&mut self, index: u64) -> raft::Result<()> {
        if index <= self.first() {
            return Ok(());
        }
        if index > self.last() + 1 {
            return Err(store_err(StorageError::Unavailable));
        }
        let term = raft::Storage::term(self, index - 1)?;
        let dropped = (index - self.first()) as usize;
        self.bytes -= self.entries[..dropped].iter().map(entry_weight).sum::<u64>();
        self.entries.drain(..dropped);
        self.compacted.index = index - 1;
        self.compacted.term = term;
        Ok(())
    }

    fn apply_snapshot(&mut self, snapshot: &Snapshot) -> raft::Result<()> {
        let meta = snapshot.get_metadata();
        if meta.index < self.first() {
            return Err(store_err(StorageError::SnapshotOutOfDate));
        }
        self.entries.clear();
        self.bytes = 0;
        self.compacted.index = meta.index;
        self.compacted.term = meta.term;
        self.conf_state = meta.get_conf_state().clone();
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = meta.index;
        self.applied = meta.index;
        Ok(())
    }

    fn set_applied(&mut self, index: u64) {
        self.applied = index;
    }

    fn set_snapshot_source(&mut self, source: SnapshotSource) {
        self.source = Some(source);
    }

    fn retained_bytes(&self) -> u64 {
        self.bytes
    }

    fn first_index_within(&self, budget: u64, upto: u64) -> u64 {
        let (mut index, mut kept) = (self.first(), self.bytes);
        for entry in &self.entries {
            if kept <= budget || index >= upto {
                break;
            }
            kept -= entry_weight(entry);
            index += 1;
        }
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_storage_passes_the_conformance_suite() {
        crate::consensus::storage_suite::run_all(MemStorage::new);
    }

    /// A follower that keeps asking for snapshots gets one per pause, not one per round trip.
    #[test]
    fn snapshots_for_one_follower_are_paced() {
        let pace = SnapshotPace::default();
        assert!(pace.may_give(2), "the first at once");
        assert!(!pace.may_give(2), "not another within the pause");
        assert!(pace.may_give(3), "another follower is paced on its own");
        // Asked again just after the pause: allowed, and the next pause is twice as long.
        let given_at = pace.given.lock().unwrap()[&2].0;
        pace.given.lock().unwrap().insert(2, (given_at - SnapshotPace::FIRST, SnapshotPace::FIRST));
        assert!(pace.may_give(2));
        assert_eq!(pace.given.lock().unwrap()[&2].1, SnapshotPace::FIRST * 2);
        // Quiet for twice the pause: back to the first pause.
        let given_at = pace.given.lock().unwrap()[&3].0;
        pace.given.lock().unwrap().insert(3, (given_at - SnapshotPace::FIRST * 3, SnapshotPace::FIRST));
        assert!(pace.may_give(3));
        assert_eq!(pace.given.lock().unwrap()[&3].1, SnapshotPace::FIRST);
    }

    #[test]
    fn the_log_knows_what_its_entries_weigh() {
        let entry = |index: u64, term: u64, bytes: usize| Entry {
            index,
            term,
            data: vec![0u8; bytes].into(),
            ..Default::default()
        };
        let mut store = MemStorage::new();
        store.append(&(1..=10).map(|i| entry(i, 1, 1000)).collect::<Vec<_>>()).unwrap();
        assert_eq!(store.retained_bytes(), 10 * 1064);
        // A conflicting suffix replaces entries 6..=10 with two heavier ones.
        store.append(&[entry(6, 2, 5000), entry(7, 2, 5000)]).unwrap();
        assert_eq!(store.retained_bytes(), 5 * 1064 + 2 * 5064);
        // Keeping at most 10,200 bytes drops entries 1..=5, not beyond what may be dropped.
        assert_eq!(store.first_index_within(10_200, 8), 6);
        assert_eq!(store.first_index_within(10_200, 3), 3);
        assert_eq!(store.first_index_within(u64::MAX, 8), 1);
        store.compact(6).unwrap();
        assert_eq!(store.retained_bytes(), 2 * 5064);
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 20;
        snapshot.mut_metadata().term = 3;
        store.apply_snapshot(&snapshot).unwrap();
        assert_eq!(store.retained_bytes(), 0);
    }

    #[test]
    fn bootstrap_voters_are_the_initial_conf_state_and_in_the_log() {
        let store = MemStorage::new_with_conf_state(&[1, 2, 3]);
        let state = raft::Storage::initial_state(&store).unwrap();
        assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
        assert!(state.initialized(), "a store with voters is initialized");
        assert_eq!(state.hard_state.term, BOOTSTRAP_TERM);
        assert_eq!(state.hard_state.commit, 3, "the bootstrap entries are committed");
        let entries = raft::Storage::entries(&store, 1, 4, None, GetEntriesContext::empty(false)).unwrap();
        let added: Vec<u64> = entries
            .iter()
            .map(|e| {
                assert_eq!((e.get_entry_type(), e.term), (EntryType::EntryConfChange, BOOTSTRAP_TERM));
                let cc = ConfChange::parse_from_bytes(&e.data).unwrap();
                assert_eq!(cc.change_type, ConfChangeType::AddNode);
                cc.node_id
            })
            .collect();
        assert_eq!(added, vec![1, 2, 3], "a node replaying the log from 1 learns the first voters");
        assert_eq!(
            MemStorage::new_with_conf_state(&[1, 2, 3]).entries,
            store.entries,
            "identical on every voter"
        );
    }
}
