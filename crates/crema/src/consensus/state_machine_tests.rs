use super::*;
use crate::cache::storage::{unix_now_ms, StorageLimits};
use crate::consensus::command::{CacheCommand, ExpiryUpdate, SetCondition};
use crate::consensus::sessions::SessionStamp;
use crate::consensus::transaction::{Transaction, TxStep, WatchedKey};

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

/// `WATCH` as the server records it: this node's applied index and whether `key` is live.
fn watch(sm: &CacheStateMachine, key: &str) -> WatchedKey {
    let live = sm.storage().entry_at(key.as_bytes(), sm.log_time_ms()).is_some();
    WatchedKey { key: Bytes::from(key.to_owned()), seen_index: sm.applied_index(), live }
}

fn exec(watches: Vec<WatchedKey>) -> CacheCommand {
    let steps = vec![TxStep::Write(CacheCommand::IncrBy { key: "n".into(), delta: 1 })];
    CacheCommand::Transaction(Transaction { watches, steps, max_reply_bytes: 1 << 20 })
}

#[test]
fn a_snapshot_carries_the_record_of_changes() {
    let mut sm = machine();
    sm.apply(1, &at(1, CacheCommand::put("k", "1")));
    let (k, other) = (watch(&sm, "k"), watch(&sm, "other"));
    sm.apply(2, &at(1, CacheCommand::put("k", "2")));
    let data = sm.snapshot_data();
    assert_eq!(data[0], SNAPSHOT_FORMAT_VERSION);

    let mut restored = machine();
    restored.restore(2, &data).unwrap();
    assert_eq!(restored.versions().data(), sm.versions().data());
    for node in [&mut sm, &mut restored] {
        assert_eq!(node.apply(3, &at(1, exec(vec![k.clone()]))), ApplyOutput::Exec(None));
        let applied = ApplyOutput::Exec(Some(vec![ApplyOutput::Int(1)]));
        assert_eq!(node.apply(4, &at(1, exec(vec![other.clone()]))), applied);
    }
}

#[test]
fn a_version_1_snapshot_restores_and_counts_every_key_as_changed_at_its_index() {
    let v1 = SnapshotDataV1 {
        log_time_ms: 7,
        members: vec![(2, "127.0.0.1:9002".parse().unwrap())],
        entries: vec![SnapshotEntry { key: "k".into(), value: "v".into(), expires_at_ms: None }],
    };
    let data = postcard::to_extend(&v1, vec![SNAPSHOT_FORMAT_V1]).unwrap();
    check_snapshot_data(&data).unwrap();
    let mut sm = machine();
    assert_eq!(sm.restore(5, &data).unwrap(), 1);
    assert_eq!((sm.storage().get(b"k"), sm.log_time_ms()), (Some(Bytes::from("v")), 7));
    assert_eq!(sm.members().lock().unwrap().len(), 1);
    let older = WatchedKey { key: "k".into(), seen_index: 4, live: true };
    assert_eq!(sm.apply(6, &at(7, exec(vec![older]))), ApplyOutput::Exec(None));
    let seen_after = WatchedKey { key: "k".into(), seen_index: 6, live: true };
    assert!(matches!(sm.apply(7, &at(7, exec(vec![seen_after]))), ApplyOutput::Exec(Some(_))));
}

#[test]
fn a_version_2_snapshot_restores_with_no_sessions() {
    let v2 = SnapshotDataV2 {
        log_time_ms: 7,
        members: Vec::new(),
        entries: vec![SnapshotEntry { key: "k".into(), value: "v".into(), expires_at_ms: None }],
        versions: Some(VersionsData::default()),
    };
    let data = postcard::to_extend(&v2, vec![SNAPSHOT_FORMAT_V2]).unwrap();
    check_snapshot_data(&data).unwrap();
    let mut sm = machine();
    assert_eq!(sm.restore(5, &data).unwrap(), 1);
    assert_eq!(sm.session_figures(), (0, 0));
}

#[test]
fn a_forwarded_write_is_applied_once_and_the_snapshot_remembers_it() {
    let mut sm = machine();
    let incr = |seq| {
        let mut stamped = at(1, CacheCommand::IncrBy { key: "n".into(), delta: 1 });
        stamped.session =
            Some(SessionStamp { origin: 2, incarnation: 9, seq, oldest_pending: seq, abandoned: vec![] });
        stamped
    };
    assert_eq!(sm.apply(1, &incr(40)), ApplyOutput::Int(1));
    assert_eq!(sm.apply(2, &incr(40)), ApplyOutput::Int(1), "a resent copy");
    let mut restored = machine();
    restored.restore(2, &sm.snapshot_data()).unwrap();
    for node in [&mut sm, &mut restored] {
        assert_eq!(node.apply(3, &incr(40)), ApplyOutput::Int(1), "a copy after the snapshot");
        assert_eq!(node.apply(4, &incr(41)), ApplyOutput::Int(2));
        assert_eq!(node.storage().get(b"n"), Some(Bytes::from("2")));
    }
}

#[test]
fn a_snapshot_with_a_bad_version_bucket_is_refused() {
    let mut sm = machine();
    sm.apply(1, &at(1, CacheCommand::put("a", "1")));
    // Floor 0, one changed bucket: number 81,919 (varint ff ff 04), at index 1.
    let versions = postcard::from_bytes(&[0, 1, 0xff, 0xff, 0x04, 1]).unwrap();
    let data = SnapshotData {
        log_time_ms: 1,
        members: Vec::new(),
        entries: Vec::new(),
        versions: Some(versions),
        sessions: SessionsData::default(),
        acl: crate::acl::AclData::default(),
        shard_map: ShardMap::default(),
    };
    let bytes = SnapshotCapture(data).encode();
    assert!(check_snapshot_data(&bytes).is_err());
    assert!(sm.restore(9, &bytes).is_err());
    assert_eq!(sm.storage().get(b"a"), Some(Bytes::from("1")), "the state is unchanged");
}

proptest::proptest! {
    /// A node restored from a snapshot decides every later command, transactions and their
    /// watches included, as the node that applied the whole log did.
    #[test]
    fn a_restored_node_decides_like_the_node_that_applied_everything(
        commands in proptest::collection::vec(crate::consensus::command::tests::any_command(), 1..40),
        split in 0usize..40,
        step_ms in 0u64..50,
        sessions in proptest::collection::vec(proptest::option::of((1u64..3, 1u64..3, 0u64..6)), 40),
    ) {
        let mut whole = machine();
        let mut restored = machine();
        let split = split.min(commands.len());
        for (i, command) in commands.iter().enumerate() {
            let index = i as u64 + 1;
            let mut stamped = at(1_000 + index * step_ms, command.clone());
            // Some commands forwarded, in few sessions, with repeats and stale copies.
            stamped.session = sessions[i].map(|(origin, incarnation, seq)| SessionStamp {
                origin,
                incarnation,
                seq,
                oldest_pending: seq.saturating_sub(2),
                abandoned: if seq % 2 == 0 { vec![seq + 1] } else { vec![] },
            });
            let out = whole.apply(index, &stamped);
            if i + 1 == split {
                restored.restore(index, &whole.snapshot_data()).unwrap();
            } else if i + 1 > split {
                proptest::prop_assert_eq!(restored.apply(index, &stamped), out, "{:?}", command);
            }
        }
    }
}

#[test]
fn snapshots_carry_the_acl_users_and_older_ones_restore_with_none() {
    let mut sm = machine();
    let rules = [Bytes::from_static(b"on"), Bytes::from_static(b">pw"), Bytes::from_static(b"+get")];
    let change = crate::acl::AclChange::set_user("alice", &rules).unwrap();
    assert_eq!(sm.apply(1, &at(1, CacheCommand::Acl(change))), ApplyOutput::Done);
    let mut restored = machine();
    restored.restore(1, &sm.snapshot_data()).unwrap();
    assert!(restored.acl().user("alice").unwrap().accepts(b"pw"));
    // A version-3 snapshot (before ACL users) of the same state.
    let v3 = SnapshotDataV3 {
        log_time_ms: 1,
        members: Vec::new(),
        entries: Vec::new(),
        versions: None,
        sessions: SessionsData::default(),
    };
    let bytes = postcard::to_extend(&v3, vec![SNAPSHOT_FORMAT_V3]).unwrap();
    restored.restore(2, &bytes).unwrap();
    assert!(restored.acl().is_empty());
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

#[test]
fn snapshots_carry_the_shard_map_and_older_ones_restore_with_none() {
    use crate::multiraft::PlacementChange;
    let mut sm = machine();
    let map = ShardMap::initial(8, &[1, 2, 3, 4, 5], 3);
    let init = at(1, CacheCommand::Placement(PlacementChange::Init(map.clone())));
    assert_eq!(sm.apply(1, &init), ApplyOutput::Int(1));
    let moving = PlacementChange::Move { shard_id: 3, epoch: 1, members: vec![1, 2, 5] };
    assert_eq!(sm.apply(2, &at(2, CacheCommand::Placement(moving))), ApplyOutput::Int(1));
    let mut restored = machine();
    let changes = restored.shard_map().subscribe();
    restored.restore(2, &sm.snapshot_data()).unwrap();
    assert!(changes.has_changed().unwrap(), "a restore wakes the map's watchers");
    assert_eq!(restored.shard_map().map(), sm.shard_map().map());
    assert_eq!(restored.shard_map().placement(3).unwrap().members, vec![1, 2, 5]);
    // A copy-on-write capture carries it too.
    let captured = sm.capture_later().unwrap()().unwrap().encode();
    let mut from_capture = machine();
    from_capture.restore(2, &captured).unwrap();
    assert_eq!(from_capture.shard_map().map(), sm.shard_map().map());
    // A version-4 snapshot (before the shard map) of the same state.
    let v4 = SnapshotDataV4 {
        log_time_ms: 1,
        members: Vec::new(),
        entries: Vec::new(),
        versions: None,
        sessions: SessionsData::default(),
        acl: AclData::default(),
    };
    let bytes = postcard::to_extend(&v4, vec![SNAPSHOT_FORMAT_V4]).unwrap();
    restored.restore(3, &bytes).unwrap();
    assert!(restored.shard_map().map().is_empty());
}

/// A transaction's APPENDs and SETRANGEs copy at most `MOST_COPIED_PER_ENTRY` of stored values
/// (each copies its whole value), a pipeline's batch `MOST_COPIED_PER_BATCH`; entries of an
/// earlier build's format apply as before.
#[test]
fn a_transactions_appends_and_setranges_copy_a_bounded_amount() {
    let mib = 1 << 20;
    let append = || CacheCommand::Append { key: "big".into(), value: "x".into(), max_len: u64::MAX };
    let setrange =
        || CacheCommand::SetRange { key: "big".into(), offset: 0, value: "y".into(), max_len: u64::MAX };
    // Each copies about 1 MiB: the 64th would take the transaction past 64 MiB.
    let mut writes: Vec<CacheCommand> = (0..60).map(|_| append()).collect();
    writes.extend((0..4).map(|_| setrange()));
    writes.extend((0..10).map(|_| append()));
    // Once one is refused, every later one is, however small.
    writes.push(CacheCommand::SetRange { key: "small".into(), offset: 0, value: "z".into(), max_len: 8 });
    let transaction = CacheCommand::Transaction(Transaction {
        watches: Vec::new(),
        steps: writes.iter().cloned().map(TxStep::Write).collect(),
        max_reply_bytes: u64::MAX,
    });
    let mut sm = machine();
    sm.apply(1, &at(1, CacheCommand::put("big", vec![b'v'; mib])));
    let ApplyOutput::Exec(Some(outputs)) = sm.apply(2, &at(1, transaction.clone())) else {
        panic!("applied")
    };
    assert_eq!(outputs[59], ApplyOutput::Int(mib as i64 + 60));
    assert_eq!(outputs[62], ApplyOutput::Int(mib as i64 + 60));
    let refused = ApplyOutput::Failed(ApplyError::CopyBudget);
    assert!(outputs[63..].iter().all(|o| *o == refused), "{:?}", &outputs[63..]);
    let stored = sm.storage().get(b"big").unwrap();
    assert_eq!((stored.len(), stored[0], stored[stored.len() - 1]), (mib + 60, b'y', b'x'));
    assert!(sm.storage().get(b"small").is_none(), "the small SETRANGE after the refusals was refused too");
    // The next transaction has a bound of its own.
    let alone = CacheCommand::Transaction(Transaction {
        watches: Vec::new(),
        steps: vec![TxStep::Write(append())],
        max_reply_bytes: u64::MAX,
    });
    assert_eq!(sm.apply(3, &at(1, alone)), ApplyOutput::Exec(Some(vec![ApplyOutput::Int(mib as i64 + 61)])));

    // Written by an earlier build (format 1 or 2): applied whole, as that build applied it.
    let mut earlier = at(1, transaction);
    earlier.bounded_copies = false;
    let earlier = StampedCommand::decode(&earlier.encode()).unwrap();
    let ApplyOutput::Exec(Some(outputs)) = sm.apply(4, &earlier) else { panic!("applied") };
    assert!(outputs.iter().all(|o| matches!(o, ApplyOutput::Int(_))), "{outputs:?}");
    // A pipeline's writes proposed together are bounded more loosely (the server splits them).
    let ApplyOutput::Batch(outputs) = sm.apply(5, &at(1, CacheCommand::Batch(writes))) else {
        panic!("a batch")
    };
    assert!(outputs.iter().all(|o| matches!(o, ApplyOutput::Int(_))), "{outputs:?}");
    sm.apply(6, &at(1, CacheCommand::put("four", vec![b'v'; 4 * mib])));
    let append_four = || CacheCommand::Append { key: "four".into(), value: "x".into(), max_len: u64::MAX };
    let ApplyOutput::Batch(outputs) =
        sm.apply(7, &at(1, CacheCommand::Batch((0..70).map(|_| append_four()).collect())))
    else {
        panic!("a batch")
    };
    assert_eq!(outputs[62], ApplyOutput::Int(4 * mib as i64 + 63), "63 copies of about 4 MiB fit in 256 MiB");
    assert!(outputs[63..].iter().all(|o| *o == refused), "{:?}", &outputs[63..]);
    assert_eq!(sm.storage().get(b"big").unwrap().len(), mib + 61 + 70 + 70);
    assert_eq!(sm.storage().get(b"four").unwrap().len(), 4 * mib + 63);
}
