//! The read rounds' bookkeeping, driven by hand: what goes out, and which reads are answered
//! with which index or sent through their groups (their sender dropped).

use std::sync::Arc;

use super::*;
use crate::consensus::group::GroupShared;

const ME: NodeId = 1;
const PATIENCE: Duration = Duration::from_millis(500);

fn live(peers: &[NodeId]) -> Live {
    peers.iter().copied().collect()
}

/// A shard this node leads in `term` with `commit` committed and voters 1, 2, 3.
fn led(shard: ShardId, term: u64, commit: u64) -> Arc<GroupShared> {
    let shared = GroupShared::for_tests(shard);
    shared.lead_for_tests(term, commit, vec![1, 2, 3]);
    shared
}

fn local_read(state: &mut State, shared: &Arc<GroupShared>) -> oneshot::Receiver<u64> {
    let (term, commit) = shared.read_capture().expect("this node leads");
    let (tx, rx) = oneshot::channel();
    state.queue(shared.clone(), term, commit, Waiter::Local(tx));
    rx
}

/// A check as sent: to whom, its round, the (shard, term) it names.
type Check = (NodeId, u64, Vec<(ShardId, u64)>);

fn checks(outbox: &Outbox) -> Vec<Check> {
    outbox
        .iter()
        .filter_map(|(to, e)| match e {
            Envelope::ReadCheck { round, shards } => Some((*to, *round, shards.clone())),
            _ => None,
        })
        .collect()
}

fn ack(state: &mut State, from: NodeId, round: u64, confirmed: &[ShardId], peers: &Live) -> Outbox {
    state.on_ack(ME, (from, round, confirmed), Instant::now(), PATIENCE, peers)
}

#[test]
fn one_check_per_peer_covers_every_led_shard_and_one_answer_confirms_them() {
    let (a, b) = (led(4, 7, 100), led(9, 3, 50));
    let peers = live(&[2, 3]);
    let mut state = State::default();
    let mut read_a = local_read(&mut state, &a);
    let mut read_b = local_read(&mut state, &b);
    let out = state.start_round(ME, Instant::now(), PATIENCE, &peers);
    let sent = checks(&out);
    assert_eq!(sent.len(), 2, "one check per peer: {sent:?}");
    for (_, _, shards) in &sent {
        assert_eq!(shards, &vec![(4, 7), (9, 3)]);
    }
    assert!(read_a.try_recv().is_err(), "nothing confirmed before a peer answers");
    // Node 2 vouches for both: with this node, 2 of 3 voters.
    let round = sent[0].1;
    ack(&mut state, 2, round, &[4, 9], &peers);
    assert_eq!(read_a.try_recv().unwrap(), 100);
    assert_eq!(read_b.try_recv().unwrap(), 50);
    assert!(state.in_flight.is_none(), "every shard confirmed: the round ended");
    assert_eq!(state.rounds, 1);
}

#[test]
fn reads_that_arrive_during_a_round_go_together_in_the_next_with_a_newer_index() {
    let a = led(4, 7, 100);
    let peers = live(&[2, 3]);
    let mut state = State::default();
    let mut first = local_read(&mut state, &a);
    let round = checks(&state.start_round(ME, Instant::now(), PATIENCE, &peers))[0].1;
    a.lead_for_tests(7, 120, vec![1, 2, 3]);
    let mut second = local_read(&mut state, &a);
    let mut third = local_read(&mut state, &a);
    assert!(
        checks(&state.start_round(ME, Instant::now(), PATIENCE, &peers)).is_empty(),
        "one round at a time"
    );
    let next = checks(&ack(&mut state, 3, round, &[4], &peers));
    assert_eq!(first.try_recv().unwrap(), 100);
    assert_eq!(next.len(), 2, "the held reads' round starts as the first ends");
    assert!(second.try_recv().is_err());
    ack(&mut state, 2, next[0].1, &[4], &peers);
    assert_eq!(second.try_recv().unwrap(), 120);
    assert_eq!(third.try_recv().unwrap(), 120);
    assert_eq!(state.rounds, 2);
}

#[test]
fn a_shard_no_quorum_vouches_for_goes_through_its_group() {
    let (a, b) = (led(4, 7, 100), led(9, 3, 50));
    let peers = live(&[2, 3]);
    let mut state = State::default();
    let mut read_a = local_read(&mut state, &a);
    let mut read_b = local_read(&mut state, &b);
    let round = checks(&state.start_round(ME, Instant::now(), PATIENCE, &peers))[0].1;
    // Both peers moved on in shard 9 (a later leader may exist): only shard 4 is confirmed.
    ack(&mut state, 2, round, &[4], &peers);
    assert_eq!(read_a.try_recv().unwrap(), 100);
    assert!(state.in_flight.is_some(), "shard 9 still waits for node 3");
    ack(&mut state, 3, round, &[], &peers);
    assert!(state.in_flight.is_none());
    assert!(
        matches!(read_b.try_recv(), Err(oneshot::error::TryRecvError::Closed)),
        "unconfirmed: the read goes the old way"
    );
}

#[test]
fn a_leader_that_moved_on_does_not_count_itself() {
    let a = led(4, 7, 100);
    let peers = live(&[2, 3]);
    let mut state = State::default();
    let mut read = local_read(&mut state, &a);
    let round = checks(&state.start_round(ME, Instant::now(), PATIENCE, &peers))[0].1;
    // This node voted in term 8 after it took the index: node 2 alone is no quorum of 3.
    a.move_to_term_for_tests(8);
    ack(&mut state, 2, round, &[4], &peers);
    ack(&mut state, 2, round, &[4], &peers);
    assert!(read.try_recv().is_err(), "a repeated answer counts once");
    ack(&mut state, 4, round, &[4], &peers);
    assert!(read.try_recv().is_err(), "a node not asked (no voter) counts for nothing");
    assert!(read.try_recv().is_err(), "one vouch of three voters confirms nothing");
    ack(&mut state, 3, round, &[4], &peers);
    assert_eq!(read.try_recv().unwrap(), 100, "two other voters of three are a quorum");
}

#[test]
fn dead_peers_are_not_asked_and_a_shard_without_a_live_quorum_is_not_tried() {
    let a = led(4, 7, 100);
    let mut state = State::default();
    let mut read = local_read(&mut state, &a);
    let out = state.start_round(ME, Instant::now(), PATIENCE, &live(&[]));
    assert!(out.is_empty(), "nobody to ask");
    assert!(matches!(read.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
    let mut read = local_read(&mut state, &a);
    let sent = checks(&state.start_round(ME, Instant::now(), PATIENCE, &live(&[3])));
    assert_eq!(sent.iter().map(|(to, _, _)| *to).collect::<Vec<_>>(), vec![3], "only the live peer");
    ack(&mut state, 3, sent[0].1, &[4], &live(&[3]));
    assert_eq!(read.try_recv().unwrap(), 100);
}

#[test]
fn a_followers_ask_for_a_shard_without_a_live_quorum_is_answered_at_once_without_it() {
    let (a, b) = (led(4, 7, 100), led(9, 3, 50));
    let mut state = State::default();
    // Node 5 votes in neither (so the ask waits for a round); node 3 is dead.
    state.queue(a.clone(), 7, 100, Waiter::Peer { node: 5, ask: 21 });
    let out = state.start_round(ME, Instant::now(), PATIENCE, &live(&[5]));
    assert_eq!(out, vec![(5, Envelope::ReadIndexAnswer { ask: 21, indices: Vec::new() })]);
    assert!(state.in_flight.is_none());
    // With a shard that can be confirmed in the same ask, the ask is answered once, by the round.
    b.lead_for_tests(3, 50, vec![1, 5, 6]);
    state.queue(a, 7, 100, Waiter::Peer { node: 5, ask: 22 });
    state.queue(b, 3, 50, Waiter::Peer { node: 5, ask: 22 });
    let out = state.start_round(ME, Instant::now(), PATIENCE, &live(&[5]));
    let sent = checks(&out);
    assert_eq!(out.len(), 1, "only the check: {out:?}");
    let out = ack(&mut state, 5, sent[0].1, &[9], &live(&[5]));
    assert_eq!(out, vec![(5, Envelope::ReadIndexAnswer { ask: 22, indices: vec![(9, 3, 50)] })]);
}

#[test]
fn a_round_unanswered_past_patience_is_given_up_for_the_next() {
    let a = led(4, 7, 100);
    let peers = live(&[2, 3]);
    let mut state = State::default();
    let mut stuck = local_read(&mut state, &a);
    let start = Instant::now();
    let first = checks(&state.start_round(ME, start, PATIENCE, &peers))[0].1;
    let mut next = local_read(&mut state, &a);
    let sent = checks(&state.start_round(ME, start + PATIENCE, PATIENCE, &peers));
    assert!(matches!(stuck.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
    assert_ne!(sent[0].1, first);
    // A late answer to the old round counts for nothing.
    assert!(state.in_flight.as_ref().is_some_and(|r| r.id != first));
    ack(&mut state, 2, sent[0].1, &[4], &peers);
    assert_eq!(next.try_recv().unwrap(), 100);
}

#[test]
fn a_followers_ask_is_answered_with_the_confirmed_shards_only() {
    let (a, b) = (led(4, 7, 100), led(9, 3, 50));
    let peers = live(&[2, 3]);
    let mut state = State::default();
    state.queue(a.clone(), 7, 100, Waiter::Peer { node: 2, ask: 11 });
    state.queue(b.clone(), 3, 50, Waiter::Peer { node: 2, ask: 11 });
    let round = checks(&state.start_round(ME, Instant::now(), PATIENCE, &peers))[0].1;
    assert!(ack(&mut state, 3, round, &[9], &peers).is_empty(), "answered once the round ends");
    let out = ack(&mut state, 2, round, &[], &peers);
    assert_eq!(out, vec![(2, Envelope::ReadIndexAnswer { ask: 11, indices: vec![(9, 3, 50)] })]);
}

#[test]
fn an_ask_from_a_voter_of_three_is_answered_at_once_and_any_other_after_a_round() {
    let a = led(4, 7, 100);
    let peers = live(&[2, 3, 5]);
    let mut state = State::default();
    // This node and the asker are two of three voters: no round.
    let out = state.on_ask(ME, (2, 11), vec![(a.clone(), 7, 100)], Instant::now(), PATIENCE, &peers);
    assert_eq!(out, vec![(2, Envelope::ReadIndexAnswer { ask: 11, indices: vec![(4, 7, 100)] })]);
    assert_eq!(state.rounds, 0);
    // Node 5 votes not: its ask waits for a round that nodes 2 or 3 answer.
    let out = state.on_ask(ME, (5, 12), vec![(a.clone(), 7, 100)], Instant::now(), PATIENCE, &peers);
    let sent = checks(&out);
    assert_eq!(sent.len(), 2, "a round, and no answer yet: {out:?}");
    let out = ack(&mut state, 3, sent[0].1, &[4], &peers);
    assert_eq!(out, vec![(5, Envelope::ReadIndexAnswer { ask: 12, indices: vec![(4, 7, 100)] })]);
    // Five voters: this node and the asker are no majority.
    a.lead_for_tests(7, 100, vec![1, 2, 3, 4, 5]);
    let out = state.on_ask(ME, (2, 13), vec![(a, 7, 100)], Instant::now(), PATIENCE, &peers);
    assert_eq!(checks(&out).len(), 3, "a round to the other voters: {out:?}");
    // Nothing this node leads: answered at once, empty.
    let out = state.on_ask(ME, (2, 14), Vec::new(), Instant::now(), PATIENCE, &peers);
    assert_eq!(out, vec![(2, Envelope::ReadIndexAnswer { ask: 14, indices: Vec::new() })]);
}

#[test]
fn an_answer_serves_a_read_only_while_this_replica_is_in_the_leaders_term() {
    let mut state = State::default();
    let (tx4, mut rx4) = oneshot::channel();
    let (tx5, mut rx5) = oneshot::channel();
    let (tx6, mut rx6) = oneshot::channel();
    let queued = &mut state.asks.entry(2).or_default().queued;
    queued.entry(4).or_default().push(tx4);
    queued.entry(5).or_default().push(tx5);
    queued.entry(6).or_default().push(tx6);
    let out = state.start_ask(2, Instant::now(), PATIENCE);
    let [(2, Envelope::ReadIndexAsk { ask, .. })] = out.as_slice() else { panic!("{out:?}") };
    let ask = *ask;
    // An answer to another ask, or from another node, counts for nothing.
    let vouch = |shard: ShardId, term: u64| shard == 4 && term == 7 || shard == 5 && term == 3;
    state.on_answer((3, ask), &[(4, 7, 100)], vouch, Instant::now(), PATIENCE);
    state.on_answer((2, ask + 1), &[(4, 7, 100)], vouch, Instant::now(), PATIENCE);
    assert!(rx4.try_recv().is_err());
    // Shard 5's replica here moved past term 2; shard 6 was left out.
    state.on_answer((2, ask), &[(4, 7, 100), (5, 2, 50)], vouch, Instant::now(), PATIENCE);
    assert_eq!(rx4.try_recv().unwrap(), 100);
    assert!(matches!(rx5.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
    assert!(matches!(rx6.try_recv(), Err(oneshot::error::TryRecvError::Closed)));
}

#[test]
fn asks_go_one_at_a_time_per_leader() {
    let mut state = State::default();
    let (tx1, mut rx1) = oneshot::channel();
    let (tx2, _rx2) = oneshot::channel();
    state.asks.entry(2).or_default().queued.entry(4).or_default().push(tx1);
    let now = Instant::now();
    let out = state.start_ask(2, now, PATIENCE);
    let [(2, Envelope::ReadIndexAsk { ask, shards })] = out.as_slice() else { panic!("{out:?}") };
    assert_eq!(shards, &vec![4]);
    state.asks.entry(2).or_default().queued.entry(5).or_default().push(tx2);
    assert!(state.start_ask(2, now, PATIENCE).is_empty(), "one ask in flight per leader");
    let (_, _, mut waiting) = state.asks.get_mut(&2).unwrap().in_flight.take().unwrap();
    assert_eq!(waiting.len(), 1);
    let _ = waiting.remove(&4).unwrap().pop().unwrap().send(100);
    assert_eq!(rx1.try_recv().unwrap(), 100);
    let _ = ask;
}

#[test]
fn a_replica_vouches_only_for_its_own_term_and_not_while_recovering() {
    let shared = GroupShared::for_tests(4);
    shared.move_to_term_for_tests(7);
    assert!(shared.confirms_term(7));
    assert!(!shared.confirms_term(6) && !shared.confirms_term(8) && !shared.confirms_term(0));
    shared.recover_for_tests();
    assert!(!shared.confirms_term(7), "a restarted memory node may have voted in a life it forgot");
}

#[test]
fn only_a_leader_with_an_entry_of_its_term_committed_takes_an_index() {
    let shared = GroupShared::for_tests(4);
    assert_eq!(shared.read_capture(), None);
    shared.lead_for_tests(7, 100, vec![1, 2, 3]);
    assert_eq!(shared.read_capture(), Some((7, 100)));
    shared.move_to_term_for_tests(8);
    assert_eq!(shared.read_capture(), None);
}
