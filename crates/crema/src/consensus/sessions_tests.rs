use bytes::Bytes;

use super::*;

fn stamp(origin: NodeId, incarnation: u64, seq: u64, oldest_pending: u64) -> SessionStamp {
    SessionStamp { origin, incarnation, seq, oldest_pending, abandoned: Vec::new() }
}

/// Applies `stamp` with a write that counts its runs and answers `Int(runs)`.
fn run(sessions: &mut Sessions, stamp: SessionStamp, index: u64, runs: &mut i64) -> ApplyOutput {
    sessions.apply(&stamp, index, || {
        *runs += 1;
        ApplyOutput::Int(*runs)
    })
}

#[test]
fn a_copy_gets_the_first_output_and_runs_nothing() {
    let (mut s, mut runs) = (Sessions::default(), 0);
    assert_eq!(run(&mut s, stamp(2, 7, 100, 100), 1, &mut runs), ApplyOutput::Int(1));
    assert_eq!(run(&mut s, stamp(2, 7, 100, 100), 2, &mut runs), ApplyOutput::Int(1));
    assert_eq!(runs, 1);
    // Another origin, or another write, is new.
    assert_eq!(run(&mut s, stamp(3, 7, 100, 100), 3, &mut runs), ApplyOutput::Int(2));
    assert_eq!(run(&mut s, stamp(2, 7, 101, 100), 4, &mut runs), ApplyOutput::Int(3));
    assert_eq!(run(&mut s, stamp(2, 7, 100, 100), 5, &mut runs), ApplyOutput::Int(1));
}

#[test]
fn outputs_below_what_the_origin_waits_for_are_dropped_and_their_copies_refused() {
    let (mut s, mut runs) = (Sessions::default(), 0);
    run(&mut s, stamp(2, 7, 10, 10), 1, &mut runs);
    run(&mut s, stamp(2, 7, 11, 10), 2, &mut runs);
    assert_eq!(s.answers_kept(), 2);
    // The origin got 10's answer: its next write says it waits for nothing below 11.
    run(&mut s, stamp(2, 7, 12, 11), 3, &mut runs);
    assert_eq!(s.answers_kept(), 2);
    assert_eq!(
        run(&mut s, stamp(2, 7, 10, 10), 4, &mut runs),
        ApplyOutput::Failed(ApplyError::SessionExpired)
    );
    assert_eq!(run(&mut s, stamp(2, 7, 11, 10), 5, &mut runs), ApplyOutput::Int(2), "still awaited");
    assert_eq!(runs, 3);
}

#[test]
fn a_floor_past_the_write_itself_does_not_drop_its_answer() {
    let (mut s, mut runs) = (Sessions::default(), 0);
    run(&mut s, stamp(2, 7, 5, 9), 1, &mut runs);
    assert_eq!(run(&mut s, stamp(2, 7, 5, 9), 2, &mut runs), ApplyOutput::Int(1));
}

#[test]
fn a_new_incarnation_closes_the_old_one_for_good() {
    let (mut s, mut runs) = (Sessions::default(), 0);
    run(&mut s, stamp(2, 7, 10, 10), 1, &mut runs);
    run(&mut s, stamp(2, 8, 500, 500), 2, &mut runs);
    assert_eq!(s.open_count(), 1);
    // A stale copy of the dead process's write, and a write of it that never applied: refused.
    for seq in [10, 11] {
        assert_eq!(
            run(&mut s, stamp(2, 7, seq, 10), 3, &mut runs),
            ApplyOutput::Failed(ApplyError::SessionExpired)
        );
    }
    assert_eq!(runs, 2);
}

#[test]
fn memory_stays_bounded_by_count_bytes_and_sessions() {
    let (mut s, mut runs) = (Sessions::default(), 0);
    // An origin that never moves its floor.
    for seq in 0..(MAX_ANSWERS_PER_SESSION as u64 + 10) {
        run(&mut s, stamp(2, 1, seq, 0), seq + 1, &mut runs);
    }
    assert_eq!(s.answers_kept(), MAX_ANSWERS_PER_SESSION);
    assert_eq!(
        run(&mut s, stamp(2, 1, 3, 0), 1 << 20, &mut runs),
        ApplyOutput::Failed(ApplyError::SessionExpired)
    );
    // Large outputs.
    let big = Bytes::from(vec![7u8; 1 << 20]);
    for seq in 0..64 {
        s.apply(&stamp(3, 1, seq, 0), 1 << 21, || ApplyOutput::Value(Some(big.clone())));
    }
    let kept = s.open[&(3, 1)].answers.len();
    assert!((16..64).contains(&kept), "{kept}");
    assert!(s.open[&(3, 1)].bytes <= MAX_ANSWER_BYTES_PER_SESSION);
    // Many origins: the least recently used sessions close.
    for origin in 10..(10 + MAX_OPEN_SESSIONS as u64 + 5) {
        run(&mut s, stamp(origin, 1, 0, 0), (1 << 22) + origin, &mut runs);
    }
    assert_eq!(s.open_count(), MAX_OPEN_SESSIONS);
    assert!(s.closed.contains(&(2, 1)) && s.closed.contains(&(3, 1)));
}

#[test]
fn sessions_survive_a_snapshot_and_bad_data_is_refused() {
    let (mut s, mut runs) = (Sessions::default(), 0);
    run(&mut s, stamp(2, 7, 10, 10), 1, &mut runs);
    run(&mut s, stamp(2, 8, 20, 20), 2, &mut runs);
    s.apply(&stamp(4, 1, 1, 1), 3, || ApplyOutput::Value(Some(Bytes::from_static(b"old"))));
    let data = s.data();
    let bytes = postcard::to_allocvec(&data).unwrap();
    let restored = Sessions::from_data(postcard::from_bytes(&bytes).unwrap()).unwrap();
    assert_eq!(restored, s);
    let mut restored = restored;
    assert_eq!(run(&mut restored, stamp(2, 8, 20, 20), 4, &mut runs), ApplyOutput::Int(2));
    assert_eq!(
        run(&mut restored, stamp(2, 7, 10, 10), 5, &mut runs),
        ApplyOutput::Failed(ApplyError::SessionExpired)
    );

    let mut twice = data.clone();
    twice.closed.push(twice.closed[0]);
    assert!(Sessions::from_data(twice).is_err());
    let mut below_floor = data.clone();
    below_floor.open[0].1.floor = 1000;
    assert!(Sessions::from_data(below_floor).is_err());
}

#[test]
fn a_write_its_origin_gave_up_on_is_refused_when_it_commits_late() {
    let (mut s, mut runs) = (Sessions::default(), 0);
    run(&mut s, stamp(2, 7, 10, 10), 1, &mut runs);
    // 11 and 12 are sent; 11 waits on, 12 is given up; 13 carries the news.
    let mut news = stamp(2, 7, 13, 11);
    news.abandoned = vec![12];
    assert_eq!(run(&mut s, news, 2, &mut runs), ApplyOutput::Int(2));
    assert_eq!(
        run(&mut s, stamp(2, 7, 12, 11), 3, &mut runs),
        ApplyOutput::Failed(ApplyError::SessionExpired)
    );
    assert_eq!(run(&mut s, stamp(2, 7, 11, 11), 4, &mut runs), ApplyOutput::Int(3), "still awaited");
    // A write already applied is not taken back by a late "abandoned".
    let mut late = stamp(2, 7, 14, 11);
    late.abandoned = vec![11];
    run(&mut s, late, 5, &mut runs);
    assert_eq!(run(&mut s, stamp(2, 7, 11, 11), 6, &mut runs), ApplyOutput::Int(3));
    // The floor passing them forgets them.
    run(&mut s, stamp(2, 7, 20, 20), 7, &mut runs);
    assert!(s.open[&(2, 7)].abandoned.is_empty());
}

/// A write stamped with the last number there is and an output past the session's budget:
/// found in review, dropping it raised the floor to `u64::MAX + 1`, which wrapped to 0 and
/// dropped nothing, and the apply loop never ended.
#[test]
fn the_last_sequence_number_with_a_large_output_ends() {
    let mut s = Sessions::default();
    let big = Bytes::from(vec![0u8; MAX_ANSWER_BYTES_PER_SESSION + 1]);
    let out = s.apply(&stamp(2, 7, u64::MAX, u64::MAX), 1, || ApplyOutput::Value(Some(big.clone())));
    assert_eq!(out, ApplyOutput::Value(Some(big)));
    assert_eq!(s.answers_kept(), 0, "its answer could not be kept");
}
