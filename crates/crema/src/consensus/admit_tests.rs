//! Tests of [`check_against_log`] and the throttle: what each check refuses, corrects or lets
//! through, on a real raft-rs group.

use super::*;
use raft::eraftpb::Entry;

fn msg(kind: MessageType) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = 2;
    m.to = 1;
    m.term = 5;
    m
}

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, ..Default::default() }
}

/// Node 1's replica of a group of three, at `term`, with an empty log.
fn replica_at(term: u64) -> Raft<raft::storage::MemStorage> {
    let storage = raft::storage::MemStorage::new_with_conf_state((vec![1, 2, 3], vec![]));
    let config = raft::Config { id: 1, ..Default::default() };
    let logger = crate::consensus::logger::raft_logger(1, 0);
    let mut raft = Raft::new(&config, storage, &logger).expect("a valid config");
    raft.term = term;
    raft
}

/// Found from outside, claiming a member's id on the peer port: one append "after" an
/// entry far past the log with term 0 (raft-rs reads any index past its log as term 0, so
/// it matched and committed past the log: a panic), and one answer at a term just under
/// `MAX_TERM` (every replica took it, and no election could be won after it).
#[test]
fn an_append_after_an_entry_past_the_log_and_a_leap_of_terms_are_refused() {
    let raft = replica_at(5);
    let mut append = msg(MessageType::MsgAppend);
    (append.index, append.log_term, append.commit) = (1_000_000_000_000, 0, 1_000_000_000_000);
    assert_eq!(check_against_log(&raft, &mut append, false), Err(Reject::AppendPastLog));
    // A leader probing a follower that lags names the term of its entry there: raft-rs
    // answers that with a rejection and the follower's last index.
    append.log_term = 4;
    assert_eq!(check_against_log(&raft, &mut append, false), Ok(Admitted::AsIs));
    let mut answer = msg(MessageType::MsgHeartbeatResponse);
    answer.term = MAX_TERM - 1;
    assert_eq!(check_from_peer(&answer, 2, 1), Ok(()), "not absurd on its own");
    assert_eq!(check_against_log(&raft, &mut answer, false), Err(Reject::TermLeap));
    answer.term = 5 + MAX_TERM_LEAP - 1;
    assert_eq!(check_against_log(&raft, &mut answer, false), Ok(Admitted::AsIs));
    answer.term = 5 + MAX_TERM_LEAP;
    assert_eq!(check_against_log(&raft, &mut answer, false), Err(Reject::TermLeap));
}

/// A replica whose group changed while it was away counts the old members: the appends and
/// heartbeats of a new leader the shard map names reach it; its votes and answers, and
/// anything from a node the map does not name, do not.
#[test]
fn a_leader_this_replica_does_not_count_yet_is_heard() {
    let raft = replica_at(5);
    let from_new = |kind, term| {
        let mut m = msg(kind);
        (m.from, m.term) = (4, term);
        m
    };
    for kind in [MessageType::MsgAppend, MessageType::MsgHeartbeat] {
        assert_eq!(check_against_log(&raft, &mut from_new(kind, 6), true), Ok(Admitted::AsIs), "{kind:?}");
        assert_eq!(check_against_log(&raft, &mut from_new(kind, 5), true), Ok(Admitted::AsIs), "{kind:?}");
        assert_eq!(
            check_against_log(&raft, &mut from_new(kind, 4), true),
            Err(Reject::NotAMember),
            "{kind:?}"
        );
        // Not named by the shard map: a node of another shard, or a stranger.
        assert_eq!(
            check_against_log(&raft, &mut from_new(kind, 6), false),
            Err(Reject::NotAMember),
            "{kind:?}"
        );
    }
    for kind in [
        MessageType::MsgRequestVote,
        MessageType::MsgRequestPreVote,
        MessageType::MsgAppendResponse,
        MessageType::MsgHeartbeatResponse,
        MessageType::MsgTimeoutNow,
    ] {
        assert_eq!(
            check_against_log(&raft, &mut from_new(kind, 6), true),
            Err(Reject::NotAMember),
            "{kind:?}"
        );
    }
}

/// An append of a leader of an earlier term is raft-rs's to answer (with this replica's
/// term), not a contradiction of the log to warn about: raft-rs appends nothing from it.
#[test]
fn an_append_of_an_earlier_term_is_left_to_raft_rs() {
    let mut raft = replica_at(5);
    raft.raft_log.append(&[entry(1, 5), entry(2, 5)]);
    raft.raft_log.commit_to(2);
    let mut stale = msg(MessageType::MsgAppend);
    (stale.term, stale.index, stale.log_term) = (4, 0, 0);
    stale.set_entries(vec![entry(1, 4), entry(2, 4)].into());
    assert_eq!(check_against_log(&raft, &mut stale, false), Ok(Admitted::AsIs));
    stale.term = 5;
    assert_eq!(check_against_log(&raft, &mut stale, false), Err(Reject::ConflictsWithCommitted));
}

#[test]
fn only_what_a_peer_may_send_passes() {
    assert_eq!(check_from_peer(&msg(MessageType::MsgHeartbeat), 2, 1), Ok(()));
    assert_eq!(check_from_peer(&msg(MessageType::MsgHeartbeat), 3, 1), Err(Reject::WrongSender));
    assert_eq!(check_from_peer(&msg(MessageType::MsgHeartbeat), 2, 4), Err(Reject::WrongReceiver));
    for local in [
        MessageType::MsgPropose,
        MessageType::MsgHup,
        MessageType::MsgBeat,
        MessageType::MsgUnreachable,
        MessageType::MsgSnapStatus,
        MessageType::MsgCheckQuorum,
        MessageType::MsgTransferLeader,
    ] {
        assert_eq!(check_from_peer(&msg(local), 2, 1), Err(Reject::LocalOnly), "{local:?}");
    }
    let mut huge = msg(MessageType::MsgHeartbeat);
    huge.term = u64::MAX;
    assert_eq!(check_from_peer(&huge, 2, 1), Err(Reject::AbsurdTerm));
    huge.term = MAX_TERM - 1;
    assert_eq!(check_from_peer(&huge, 2, 1), Ok(()));
    let mut read = msg(MessageType::MsgReadIndex);
    read.term = 0;
    assert_eq!(check_from_peer(&read, 2, 1), Err(Reject::MalformedReadIndex));
    read.set_entries(vec![Entry::default()].into());
    assert_eq!(check_from_peer(&read, 2, 1), Ok(()));
    read.term = 5;
    assert_eq!(
        check_from_peer(&read, 2, 1),
        Err(Reject::WrongTermField),
        "raft-rs forwards these without a term"
    );
    for kind in [MessageType::MsgRequestVote, MessageType::MsgRequestPreVote, MessageType::MsgHeartbeat] {
        let mut no_term = msg(kind);
        no_term.term = 0;
        assert_eq!(check_from_peer(&no_term, 2, 1), Err(Reject::WrongTermField), "{kind:?}");
    }
}

#[test]
fn appended_entries_must_follow_the_index_with_terms_that_never_go_back() {
    let mut m = msg(MessageType::MsgAppend);
    m.index = 10;
    m.log_term = 3;
    m.set_entries(vec![entry(11, 3), entry(12, 5)].into());
    assert_eq!(check_from_peer(&m, 2, 1), Ok(()));
    for bad in [
        vec![entry(12, 3)],               // gap
        vec![entry(11, 3), entry(11, 3)], // repeated index
        vec![entry(11, 2)],               // before the previous entry's term
        vec![entry(11, 6)],               // past the message's term
        vec![entry(11, 4), entry(12, 3)], // terms go back
    ] {
        m.set_entries(bad.clone().into());
        assert_eq!(check_from_peer(&m, 2, 1), Err(Reject::MalformedEntries), "{bad:?}");
    }
    m.index = u64::MAX;
    m.set_entries(vec![entry(0, 3)].into());
    assert_eq!(check_from_peer(&m, 2, 1), Err(Reject::MalformedEntries), "index overflow");
}

#[test]
fn warnings_are_paced_and_count_what_they_cover() {
    let t = WarnThrottle::default();
    let start = Instant::now();
    assert_eq!(t.note(start), Some(1));
    assert_eq!(t.note(start + Duration::from_secs(1)), None);
    assert_eq!(t.note(start + Duration::from_secs(2)), None);
    assert_eq!(t.note(start + WarnThrottle::EVERY), Some(3));
}

#[test]
fn a_snapshot_needs_voters_and_data_that_decodes() {
    let mut m = msg(MessageType::MsgSnapshot);
    assert_eq!(check_from_peer(&m, 2, 1), Err(Reject::BadSnapshot), "no voters");
    m.mut_snapshot().mut_metadata().mut_conf_state().voters = vec![1, 2];
    assert_eq!(check_from_peer(&m, 2, 1), Ok(()), "empty data is an empty state");
    m.mut_snapshot().data = vec![1, 0xff, 0xff].into();
    assert_eq!(check_from_peer(&m, 2, 1), Err(Reject::BadSnapshot));
    // Found from outside: node 1 both voter and learner stopped the node in raft-rs.
    m.mut_snapshot().data = Default::default();
    m.mut_snapshot().mut_metadata().mut_conf_state().learners = vec![1];
    assert_eq!(check_from_peer(&m, 2, 1), Err(Reject::BadSnapshot));
}

/// Every configuration `conf_state_restores` lets through is restored by raft-rs as it is
/// (no panic), over every way of placing nodes 1-3 in the four lists, with and without
/// `auto_leave`; those found from outside are refused.
#[test]
fn a_snapshot_configuration_let_through_is_one_raft_rs_restores() {
    use raft::eraftpb::{ConfState, Snapshot};
    let quiet = slog::Logger::root(slog::Discard, slog::o!());
    let mut accepted = 0;
    for placing in 0..(16u32.pow(3) * 2) {
        let mut cs = ConfState { auto_leave: placing >= 16u32.pow(3), ..Default::default() };
        for id in 1..=3u64 {
            let lists = (placing % 16u32.pow(3)) / 16u32.pow(id as u32 - 1) % 16;
            let put = |bit: u32, list: &mut Vec<u64>| {
                if lists & bit != 0 {
                    list.push(id);
                }
            };
            put(1, &mut cs.voters);
            put(2, &mut cs.learners);
            put(4, &mut cs.voters_outgoing);
            put(8, &mut cs.learners_next);
        }
        if !conf_state_restores(&cs) {
            continue;
        }
        accepted += 1;
        let storage = raft::storage::MemStorage::new_with_conf_state((vec![1, 2, 3], vec![]));
        let config = raft::Config { id: 1, ..Default::default() };
        let mut raft = Raft::new(&config, storage, &quiet).expect("a valid config");
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 100;
        snapshot.mut_metadata().term = 1;
        snapshot.mut_metadata().set_conf_state(cs.clone());
        let restored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| raft.restore(snapshot)));
        assert!(restored.is_ok(), "raft-rs panicked restoring {cs:?}");
    }
    assert!(accepted > 100, "only {accepted} configurations accepted");
    for bad in [
        ConfState { voters: vec![1, 2, 3], learners: vec![2], ..Default::default() },
        ConfState {
            voters: vec![1, 2],
            voters_outgoing: vec![1, 3],
            learners_next: vec![1],
            ..Default::default()
        },
        ConfState { voters: vec![1, 1], ..Default::default() },
        ConfState { voters: vec![0, 1], ..Default::default() },
        ConfState { voters: vec![1], auto_leave: true, ..Default::default() },
    ] {
        assert!(!conf_state_restores(&bad), "{bad:?}");
    }
}

/// Found from outside: two forged answers asking for a snapshot (one per follower) left the
/// leader waiting for snapshots its store never makes, and sending no follower an append.
#[test]
fn an_answer_asking_for_a_snapshot_is_refused() {
    let mut answer = msg(MessageType::MsgAppendResponse);
    (answer.reject, answer.index) = (true, 1 << 40);
    assert_eq!(check_from_peer(&answer, 2, 1), Ok(()));
    answer.request_snapshot = 7;
    assert_eq!(check_from_peer(&answer, 2, 1), Err(Reject::SnapshotAsked));
}
