use super::*;
use crate::consensus::transaction::{ReadCommand, Transaction, WatchedKey};

fn router() -> ShardRouter {
    ShardRouter::new(4).unwrap()
}

/// Two keys in different shards of `router()`, and one sharing the first's shard.
fn keys() -> (Bytes, Bytes, Bytes) {
    let r = router();
    let a = Bytes::from("{a}:1");
    let same = Bytes::from("{a}:2");
    let other = (0..100)
        .map(|i| Bytes::from(format!("k{i}")))
        .find(|k| r.shard_for_key(k) != r.shard_for_key(&a))
        .expect("some key elsewhere");
    (a, same, other)
}

#[test]
fn one_shard_writes_go_whole_and_one_group_takes_everything() {
    let (a, same, other) = keys();
    let r = router();
    let put = CacheCommand::put(a.clone(), "v");
    assert_eq!(plan(&r, put.clone()).unwrap(), Plan::One(r.shard_for_key(&a), put));
    let mset = CacheCommand::PutMany {
        pairs: vec![(a.clone(), "1".into()), (same.clone(), "2".into())],
        only_if_none_exist: false,
    };
    assert_eq!(plan(&r, mset.clone()).unwrap(), Plan::One(r.shard_for_key(&a), mset));
    // A batch on one shard goes as it came.
    let batch = CacheCommand::Batch(vec![CacheCommand::put(a.clone(), "1"), CacheCommand::delete(same)]);
    assert_eq!(plan(&r, batch.clone()).unwrap(), Plan::One(r.shard_for_key(&a), batch));
    // One shard: nothing is looked at.
    let single = ShardRouter::new(1).unwrap();
    let cross =
        CacheCommand::PutMany { pairs: vec![(a, "1".into()), (other, "2".into())], only_if_none_exist: true };
    assert_eq!(plan(&single, cross.clone()).unwrap(), Plan::One(0, cross));
    let clear_splits = plan(&r, CacheCommand::Clear).map(|p| matches!(p, Plan::Split(_))).unwrap();
    assert!(clear_splits, "a clear reaches every shard");
}

#[test]
fn atomic_writes_across_shards_are_refused() {
    let (a, _, other) = keys();
    let r = router();
    let mset = CacheCommand::PutMany {
        pairs: vec![(a.clone(), "1".into()), (other.clone(), "2".into())],
        only_if_none_exist: false,
    };
    assert_eq!(plan(&r, mset), Err(CommandError::CrossSlot));
    let watched = Transaction {
        watches: vec![WatchedKey { key: other.clone(), seen_index: 1, live: false }],
        steps: vec![TxStep::Write(CacheCommand::put(a.clone(), "1"))],
        max_reply_bytes: 1 << 20,
    };
    assert_eq!(plan(&r, CacheCommand::Transaction(watched)), Err(CommandError::CrossSlot));
    let read_elsewhere = Transaction {
        watches: Vec::new(),
        steps: vec![
            TxStep::Write(CacheCommand::put(a.clone(), "1")),
            TxStep::Read(ReadCommand::Values { keys: vec![other.clone()] }),
        ],
        max_reply_bytes: 1 << 20,
    };
    assert_eq!(plan(&r, CacheCommand::Transaction(read_elsewhere)), Err(CommandError::CrossSlot));
    let del_in_tx = Transaction {
        watches: Vec::new(),
        steps: vec![TxStep::Write(CacheCommand::DeleteMany { keys: vec![a.clone(), other.clone()] })],
        max_reply_bytes: 1 << 20,
    };
    assert_eq!(plan(&r, CacheCommand::Transaction(del_in_tx)), Err(CommandError::CrossSlot));
    // In a batch too: one MSET across shards refuses the batch.
    let batch = CacheCommand::Batch(vec![
        CacheCommand::put(a.clone(), "1"),
        CacheCommand::PutMany {
            pairs: vec![(a, "1".into()), (other, "2".into())],
            only_if_none_exist: false,
        },
    ]);
    assert_eq!(plan(&r, batch), Err(CommandError::CrossSlot));
}

#[test]
fn deletes_and_batches_split_by_shard_and_answer_in_order() {
    let (a, same, other) = keys();
    let r = router();
    let (sa, so) = (r.shard_for_key(&a), r.shard_for_key(&other));
    let del = CacheCommand::DeleteMany { keys: vec![a.clone(), other.clone(), same.clone()] };
    let Plan::Split(split) = plan(&r, del).unwrap() else { panic!("split") };
    let mut pieces = split.pieces.clone();
    pieces.sort_by_key(|(s, _)| *s);
    let mut expected = vec![
        (sa, vec![CacheCommand::DeleteMany { keys: vec![a.clone(), same.clone()] }]),
        (so, vec![CacheCommand::DeleteMany { keys: vec![other.clone()] }]),
    ];
    expected.sort_by_key(|(s, _)| *s);
    assert_eq!(pieces, expected);
    let outputs =
        split.pieces.iter().map(|(s, _)| vec![ApplyOutput::Int(if *s == sa { 2 } else { 1 })]).collect();
    assert_eq!(split.merge(outputs), ApplyOutput::Int(3));

    // A pipelined batch: SET a, SET other, DEL a other, FLUSHALL, INCR same.
    let batch = CacheCommand::Batch(vec![
        CacheCommand::put(a.clone(), "1"),
        CacheCommand::put(other.clone(), "2"),
        CacheCommand::DeleteMany { keys: vec![a.clone(), other.clone()] },
        CacheCommand::Clear,
        CacheCommand::IncrBy { key: same.clone(), delta: 1 },
    ]);
    let Plan::Split(split) = plan(&r, batch).unwrap() else { panic!("split") };
    assert_eq!(split.pieces.len(), 4, "every shard gets the clear");
    let on_a = &split.pieces.iter().find(|(s, _)| *s == sa).unwrap().1;
    assert_eq!(
        on_a,
        &vec![
            CacheCommand::put(a.clone(), "1"),
            CacheCommand::DeleteMany { keys: vec![a.clone()] },
            CacheCommand::Clear,
            CacheCommand::IncrBy { key: same, delta: 1 },
        ],
        "shard a's writes in the client's order"
    );
    // Answer each piece as a batch would.
    let outputs = split
        .pieces
        .iter()
        .map(|(_, commands)| {
            commands
                .iter()
                .map(|c| match c {
                    CacheCommand::Put { .. } | CacheCommand::Clear => ApplyOutput::Done,
                    CacheCommand::DeleteMany { keys } => ApplyOutput::Int(keys.len() as i64),
                    CacheCommand::IncrBy { .. } => ApplyOutput::Int(1),
                    other => panic!("unexpected {other:?}"),
                })
                .collect()
        })
        .collect();
    assert_eq!(
        split.merge(outputs),
        ApplyOutput::Batch(vec![
            ApplyOutput::Done,
            ApplyOutput::Done,
            ApplyOutput::Int(2),
            ApplyOutput::Done,
            ApplyOutput::Int(1),
        ])
    );
}

#[test]
fn a_failed_part_is_the_answer() {
    let (a, _, other) = keys();
    let r = router();
    let Plan::Split(split) = plan(&r, CacheCommand::DeleteMany { keys: vec![a, other] }).unwrap() else {
        panic!("split")
    };
    let failed = ApplyOutput::Failed(crate::consensus::ApplyError::SessionExpired);
    let outputs = vec![vec![ApplyOutput::Int(1)], vec![failed.clone()]];
    assert_eq!(split.merge(outputs), failed);
}

#[test]
fn missing_outputs_read_as_done_not_a_panic() {
    let (a, same, other) = keys();
    let r = router();
    let batch = CacheCommand::Batch(vec![
        CacheCommand::put(a.clone(), "1"),
        CacheCommand::put(other.clone(), "2"),
        CacheCommand::put(same.clone(), "3"),
    ]);
    let Plan::Split(split) = plan(&r, batch).unwrap() else { panic!("split") };
    // No piece answered anything (or fewer outputs than commands): no index out of bounds.
    let merged = split.merge(vec![Vec::new(); split.pieces.len()]);
    assert_eq!(merged, ApplyOutput::Batch(vec![ApplyOutput::Done; 3]));
    assert_eq!(split.merge(Vec::new()), ApplyOutput::Batch(vec![ApplyOutput::Done; 3]));
}

/// Each write of a split batch on its own: a failed piece answers its own writes, and a write
/// that reached a failed piece and an applied one is answered as partly applied.
#[test]
fn each_write_of_a_batch_is_answered_by_its_own_pieces() {
    let (a, same, other) = keys();
    let r = router();
    let (sa, so) = (r.shard_for_key(&a), r.shard_for_key(&other));
    let batch = CacheCommand::Batch(vec![
        CacheCommand::IncrBy { key: a.clone(), delta: 1 },
        CacheCommand::IncrBy { key: other.clone(), delta: 1 },
        CacheCommand::DeleteMany { keys: vec![same.clone(), other.clone()] },
        CacheCommand::IncrBy { key: same.clone(), delta: 1 },
    ]);
    let Plan::Split(split) = plan(&r, batch).unwrap() else { panic!("split") };
    let piece_of = |shard| split.pieces.iter().position(|(s, _)| *s == shard).unwrap();
    // Shard a's piece applied (INCR, DEL part, INCR), the other's failed.
    let mut outputs: Vec<Option<Vec<ApplyOutput>>> = vec![None; split.pieces.len()];
    outputs[piece_of(sa)] = Some(vec![ApplyOutput::Int(1), ApplyOutput::Int(1), ApplyOutput::Int(2)]);
    let failed = piece_of(so);
    assert_eq!(
        split.each(outputs),
        vec![
            Each::Output(ApplyOutput::Int(1)),
            Each::Failed { piece: failed, partly: false },
            Each::Failed { piece: failed, partly: true },
            Each::Output(ApplyOutput::Int(2)),
        ]
    );
}
