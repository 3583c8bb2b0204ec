//! The conformance suite every [`LogStore`] runs (memory now, RocksDB later): the contract of
//! `raft::Storage` plus the writes of `LogStore`, each check one behaviour raft-rs relies on.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, StorageError};

use super::storage::LogStore;

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, data: format!("e{index}").into_bytes().into(), ..Default::default() }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|i| entry(i, term)).collect()
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

fn is(err: raft::Error, expected: StorageError) -> bool {
    matches!(err, raft::Error::Store(e) if e == expected)
}

/// Runs every check on fresh stores from `make`.
pub(crate) fn run_all<S: LogStore>(make: impl Fn() -> S) {
    empty_store_starts_at_index_one(make());
    append_then_read_back(make());
    append_replaces_a_conflicting_suffix(make());
    append_refuses_gaps_and_compacted_ranges(make());
    entries_respect_max_size_but_return_one(make());
    compact_drops_a_prefix_and_keeps_its_last_term(make());
    hard_and_conf_state_are_kept(make());
    snapshot_is_taken_at_the_applied_index(make());
    apply_snapshot_replaces_the_log(make());
}

fn empty_store_starts_at_index_one<S: LogStore>(s: S) {
    assert_eq!(s.first_index().unwrap(), 1);
    assert_eq!(s.last_index().unwrap(), 0);
    assert_eq!(s.term(0).unwrap(), 0);
    assert!(is(s.term(1).unwrap_err(), StorageError::Unavailable));
    assert!(!s.initial_state().unwrap().initialized());
}

fn append_then_read_back<S: LogStore>(mut s: S) {
    s.append(&entries(1..=5, 1)).unwrap();
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 5));
    let got = s.entries(2, 5, None, ctx()).unwrap();
    assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), vec![2, 3, 4]);
    assert_eq!(got[0].data.as_ref(), b"e2");
    assert_eq!(s.term(5).unwrap(), 1);
    s.append(&[]).unwrap();
    assert_eq!(s.last_index().unwrap(), 5);
}

fn append_replaces_a_conflicting_suffix<S: LogStore>(mut s: S) {
    s.append(&entries(1..=5, 1)).unwrap();
    s.append(&entries(3..=4, 2)).unwrap();
    assert_eq!(s.last_index().unwrap(), 4, "entries after the conflict are gone");
    assert_eq!(s.term(2).unwrap(), 1);
    assert_eq!(s.term(3).unwrap(), 2);
    s.append(&entries(5..=6, 2)).unwrap();
    assert_eq!(s.last_index().unwrap(), 6);
}

fn append_refuses_gaps_and_compacted_ranges<S: LogStore>(mut s: S) {
    s.append(&entries(1..=3, 1)).unwrap();
    assert!(is(s.append(&entries(5..=6, 1)).unwrap_err(), StorageError::Unavailable));
    s.compact(3).unwrap();
    assert!(is(s.append(&entries(1..=2, 1)).unwrap_err(), StorageError::Compacted));
    assert_eq!(s.last_index().unwrap(), 3);
}

fn entries_respect_max_size_but_return_one<S: LogStore>(mut s: S) {
    s.append(&entries(1..=5, 1)).unwrap();
    let one = s.entries(1, 6, 1, ctx()).unwrap();
    assert_eq!(one.len(), 1, "a limit below one entry still returns one");
    let all = s.entries(1, 6, u64::MAX, ctx()).unwrap();
    assert_eq!(all.len(), 5);
}

fn compact_drops_a_prefix_and_keeps_its_last_term<S: LogStore>(mut s: S) {
    s.append(&entries(1..=3, 1)).unwrap();
    s.append(&entries(4..=6, 2)).unwrap();
    s.compact(5).unwrap();
    assert_eq!(s.first_index().unwrap(), 5);
    assert_eq!(s.term(4).unwrap(), 2, "the term just before the first index is kept");
    assert!(is(s.term(3).unwrap_err(), StorageError::Compacted));
    assert!(is(s.entries(4, 6, None, ctx()).unwrap_err(), StorageError::Compacted));
    assert_eq!(s.entries(5, 7, None, ctx()).unwrap().len(), 2);
    s.compact(2).unwrap();
    assert_eq!(s.first_index().unwrap(), 5, "compacting below the first index is a no-op");
}

fn hard_and_conf_state_are_kept<S: LogStore>(mut s: S) {
    let hs = HardState { term: 3, vote: 2, commit: 0, ..Default::default() };
    s.set_hard_state(hs.clone()).unwrap();
    s.append(&entries(1..=2, 3)).unwrap();
    s.set_commit(2).unwrap();
    let cs = ConfState { voters: vec![1, 2, 3], learners: vec![4], ..Default::default() };
    s.set_conf_state(cs.clone()).unwrap();
    let state = s.initial_state().unwrap();
    assert_eq!((state.hard_state.term, state.hard_state.vote), (3, 2));
    assert_eq!(state.hard_state.commit, 2);
    assert_eq!(state.conf_state, cs);
}

fn snapshot_is_taken_at_the_applied_index<S: LogStore>(mut s: S) {
    s.append(&entries(1..=4, 2)).unwrap();
    let cs = ConfState { voters: vec![1, 2], ..Default::default() };
    s.set_conf_state(cs.clone()).unwrap();
    s.set_applied(3);
    s.set_snapshot_source(Box::new(|| b"state".to_vec()));
    let snap = s.snapshot(2, 9).unwrap();
    assert_eq!((snap.get_metadata().index, snap.get_metadata().term), (3, 2));
    assert_eq!(snap.get_metadata().get_conf_state(), &cs);
    assert_eq!(snap.data.as_ref(), b"state");
    assert!(is(s.snapshot(4, 9).unwrap_err(), StorageError::SnapshotTemporarilyUnavailable));
}

fn apply_snapshot_replaces_the_log<S: LogStore>(mut s: S) {
    s.append(&entries(1..=3, 1)).unwrap();
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 10;
    snap.mut_metadata().term = 4;
    snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    s.apply_snapshot(&snap).unwrap();
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (11, 10));
    assert_eq!(s.term(10).unwrap(), 4);
    let state = s.initial_state().unwrap();
    assert_eq!(state.conf_state.voters, vec![1, 2, 3]);
    assert_eq!(state.hard_state.commit, 10);
    s.append(&entries(11..=12, 4)).unwrap();
    assert_eq!(s.last_index().unwrap(), 12);
    snap.mut_metadata().index = 5;
    assert!(is(s.apply_snapshot(&snap).unwrap_err(), StorageError::SnapshotOutOfDate));
}
