use super::*;

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, data: format!("e{index}").into_bytes().into(), ..Default::default() }
}

#[test]
fn rocksdb_storage_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_db(dir.path()).unwrap();
    let next = std::sync::atomic::AtomicU32::new(0);
    // A fresh group (its own key prefix) per case, all in one database.
    crate::consensus::storage_suite::run_all(|| {
        let shard = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        RocksDbStorage::open(db.clone(), shard, &[]).unwrap()
    });
}

#[test]
fn what_was_flushed_survives_a_reopen_and_what_was_not_does_not() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_db(dir.path()).unwrap();
        let mut s = RocksDbStorage::open(db, 0, &[1, 2, 3]).unwrap();
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 1), entry(4, 2)]).unwrap();
        s.set_hard_state(HardState { term: 2, vote: 3, commit: 3, ..Default::default() }).unwrap();
        s.flush().unwrap();
        // Overwrite the tail with a shorter conflicting suffix, compact, flush.
        s.append(&[entry(3, 3)]).unwrap();
        s.compact(2).unwrap();
        s.flush().unwrap();
        s.append(&[entry(4, 3)]).unwrap(); // never flushed: lost like a crash would lose it
    }
    let db = open_db(dir.path()).unwrap();
    let s = RocksDbStorage::open(db, 0, &[9]).unwrap();
    let state = raft::Storage::initial_state(&s).unwrap();
    assert_eq!(state.hard_state.term, 2);
    assert_eq!(state.hard_state.vote, 3);
    assert_eq!(state.conf_state.voters, vec![1, 2, 3], "the stored conf state, not the new initial voters");
    assert_eq!(raft::Storage::first_index(&s).unwrap(), 2);
    assert_eq!(raft::Storage::last_index(&s).unwrap(), 3);
    assert_eq!(raft::Storage::term(&s, 1).unwrap(), 1, "the compaction point keeps its term");
    assert_eq!(raft::Storage::term(&s, 3).unwrap(), 3);
}

/// Entries, a vote or a term wait for the disk; a commit index alone (the append that only
/// carries the leader's commit, the light ready's commit) does not, and `sync` writes it.
#[test]
fn only_what_raft_needs_durable_waits_for_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_db(dir.path()).unwrap();
        let mut s = RocksDbStorage::open(db, 0, &[1]).unwrap();
        assert!(s.flush_syncs(), "the bootstrap conf state and log");
        s.flush().unwrap();
        s.append(&[entry(2, 1), entry(3, 1)]).unwrap();
        assert!(s.flush_syncs(), "entries");
        s.flush().unwrap();
        assert!(!s.has_unflushed() && !s.flush_syncs());
        s.set_hard_state(HardState { term: 1, vote: 0, commit: 2, ..Default::default() }).unwrap();
        assert!(s.has_unflushed() && !s.flush_syncs(), "the commit index alone");
        s.flush().unwrap();
        s.set_commit(3).unwrap();
        assert!(!s.flush_syncs(), "the light ready's commit index");
        s.compact(2).unwrap();
        assert!(!s.flush_syncs(), "a compaction");
        s.flush().unwrap();
        s.set_hard_state(HardState { term: 2, vote: 0, commit: 3, ..Default::default() }).unwrap();
        assert!(s.flush_syncs(), "a new term");
        s.flush().unwrap();
        s.set_hard_state(HardState { term: 2, vote: 3, commit: 3, ..Default::default() }).unwrap();
        assert!(s.flush_syncs(), "a vote");
        s.flush().unwrap();
        s.set_commit(4).unwrap();
        s.sync().unwrap();
        assert!(!s.has_unflushed());
        s.sync().unwrap();
    }
    let s = RocksDbStorage::open(open_db(dir.path()).unwrap(), 0, &[]).unwrap();
    let hs = raft::Storage::initial_state(&s).unwrap().hard_state;
    assert_eq!((hs.term, hs.vote, hs.commit), (2, 3, 4));
    assert_eq!(raft::Storage::first_index(&s).unwrap(), 2);
}

#[test]
fn a_snapshot_replaces_the_log_durably() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_db(dir.path()).unwrap();
        let mut s = RocksDbStorage::open(db, 7, &[1]).unwrap();
        s.append(&[entry(1, 1), entry(2, 1)]).unwrap();
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 10;
        snap.mut_metadata().term = 4;
        snap.mut_metadata().mut_conf_state().voters = vec![1, 2];
        s.apply_snapshot(&snap).unwrap();
        s.flush().unwrap();
    }
    let s = RocksDbStorage::open(open_db(dir.path()).unwrap(), 7, &[]).unwrap();
    assert_eq!(raft::Storage::first_index(&s).unwrap(), 11);
    assert_eq!(raft::Storage::last_index(&s).unwrap(), 10);
    assert_eq!(raft::Storage::term(&s, 10).unwrap(), 4);
    assert_eq!(s.hard_state().commit, 10);
    assert_eq!(raft::Storage::initial_state(&s).unwrap().conf_state.voters, vec![1, 2]);
}
