//! Bookkeeping of the group loop's outstanding requests: proposals awaiting their entry's apply,
//! and linearizable reads batched into read-index rounds. No Raft calls and no waiting: an
//! answer goes into a oneshot channel, or, for a write a follower forwarded, onto that
//! follower's peer queue (`ForwardTicket`).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::consensus::Applied;
use crate::error::{Error, Result};
use crate::transport::forward::ForwardTicket;
use crate::types::NodeId;

/// Where a proposal's answer goes.
pub(crate) enum ProposalReply {
    /// A caller on this node waits for it.
    Local(oneshot::Sender<Result<Applied>>),
    /// A follower forwarded the write: the answer goes straight back to it from the group loop,
    /// with no task on this node waiting for it.
    Forwarded(ForwardTicket),
}

impl ProposalReply {
    /// Delivers the answer (a caller that stopped waiting is not an error).
    pub fn send(self, result: Result<Applied>) {
        match self {
            Self::Local(tx) => {
                let _ = tx.send(result);
            }
            Self::Forwarded(ticket) => ticket.answer(result),
        }
    }

    /// Whoever waits for this write has stopped waiting (at `now`): a local caller dropped its
    /// receiver (its request timed out), or a forwarded copy is older than its sender's
    /// patience (see `ForwardTicket::given_up_at`). A write not yet proposed that nobody waits
    /// for can be left out of the log: its caller was told `TIMEOUT`, which allows either.
    pub fn given_up(&self, now: Instant) -> bool {
        match self {
            Self::Local(tx) => tx.is_closed(),
            Self::Forwarded(ticket) => now >= ticket.given_up_at,
        }
    }
}
/// Where a read's read index goes.
pub(crate) type ReadReply = oneshot::Sender<Result<u64>>;

struct Proposal {
    index: u64,
    term: u64,
    reply: ProposalReply,
}

/// Proposals appended to the log by this node as leader, in index order.
#[derive(Default)]
pub(crate) struct Proposals {
    queue: VecDeque<Proposal>,
}

impl Proposals {
    /// Records a proposal appended at `(index, term)`. Indexes must increase.
    pub fn push(&mut self, index: u64, term: u64, reply: ProposalReply) {
        debug_assert!(self.queue.back().is_none_or(|p| p.index < index && p.term <= term));
        self.queue.push_back(Proposal { index, term, reply });
    }

    /// The entry at `(index, term)` was applied. Answers `ProposalDropped` to every proposal that
    /// can no longer commit (one at or below `index` with another term, or any with a lower term,
    /// since the committed log past `index` only holds terms `>= term`), and returns the reply of
    /// the proposal that is this very entry, if any.
    pub fn settle(&mut self, index: u64, term: u64) -> Option<ProposalReply> {
        let mut matched = None;
        while let Some(front) = self.queue.front() {
            if front.index > index && front.term >= term {
                break;
            }
            let p = self.queue.pop_front().expect("front exists");
            if p.index == index && p.term == term {
                matched = Some(p.reply);
            } else {
                p.reply.send(Err(Error::ProposalDropped));
            }
        }
        matched
    }

    /// Answers every proposal with an error made by `err` (shutdown).
    pub fn fail_all(&mut self, err: impl Fn() -> Error) {
        for p in self.queue.drain(..) {
            p.reply.send(Err(err()));
        }
    }

    /// Proposals awaiting an answer.
    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

/// A follower's read-index request that this node, as leader, answers from its own next round
/// (a `MsgReadIndexResp` with the round's index and the follower's context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerRead {
    /// The follower that asked.
    pub from: NodeId,
    /// The term this node led in when it took the request: answered only in that term.
    pub term: u64,
    /// The follower's context, sent back unchanged.
    pub ctx: Bytes,
}

/// Who waits for a read's index.
enum ReadWaiter {
    Local(ReadReply),
    Peer(PeerRead),
}

/// A read waiting for its index, with the time it was asked (its deadline counts from there).
struct PendingRead {
    asked: Instant,
    waiter: ReadWaiter,
}

struct ReadRound {
    started: Instant,
    reads: Vec<PendingRead>,
}

/// Linearizable reads: those gathered since the last round, and rounds awaiting their read index.
///
/// Raft drops a read-index request it cannot serve (no leader yet, or a new leader that has not
/// committed in its term), without an answer. So a round unanswered after the retry interval is
/// not failed but gathered again into the next round; a read fails only when its own deadline
/// passes.
///
/// A leader also holds its followers' read-index requests for its next round (`push_peer`):
/// raft-rs would broadcast a heartbeat round for each, so three nodes reading made three rounds
/// (six heartbeats and six answers) where one does. A round started after the request arrived
/// reads a commit index at least as high as the one raft-rs would have read for it, which is
/// what makes the answer linearizable. Held requests are dropped, not moved, when the leader
/// changes or their deadline passes: the follower asks again after its own retry interval.
///
/// A round's context is this loop's random `incarnation` followed by the round's number. The
/// leader keys pending read-index requests by context alone and answers a request whose context
/// it already holds with the index of the one it holds. With bare round numbers, a node restarted
/// after a SIGKILL numbered its rounds from 1 again and could be answered, for a new round, with
/// the index its previous life had asked for before a write committed: a stale "linearizable"
/// read (`crash_recovery.rs` caught it). Contexts are now never reused by another loop.
pub(crate) struct ReadBatches {
    gathered: Vec<PendingRead>,
    incarnation: u64,
    next_ctx: u64,
    rounds: HashMap<u64, ReadRound>,
}

impl Default for ReadBatches {
    fn default() -> Self {
        Self { gathered: Vec::new(), incarnation: rand::random(), next_ctx: 0, rounds: HashMap::new() }
    }
}

impl ReadBatches {
    /// Encodes round `ctx`'s context for `RawNode::read_index`.
    pub fn ctx_bytes(&self, ctx: u64) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(16);
        bytes.extend_from_slice(&self.incarnation.to_be_bytes());
        bytes.extend_from_slice(&ctx.to_be_bytes());
        bytes
    }

    /// Decodes a read state's context; none for a context this loop did not make.
    pub fn ctx_of(&self, bytes: &[u8]) -> Option<u64> {
        let (incarnation, ctx) = bytes.split_at_checked(8)?;
        if incarnation != self.incarnation.to_be_bytes() {
            return None;
        }
        Some(u64::from_be_bytes(ctx.try_into().ok()?))
    }

    /// Adds a read, asked at `now`, to the next round.
    pub fn push(&mut self, now: Instant, reply: ReadReply) {
        self.gathered.push(PendingRead { asked: now, waiter: ReadWaiter::Local(reply) });
    }

    /// Adds a follower's read-index request, received at `now` by this node as leader, to the
    /// next round.
    pub fn push_peer(&mut self, now: Instant, read: PeerRead) {
        self.gathered.push(PendingRead { asked: now, waiter: ReadWaiter::Peer(read) });
    }

    /// Turns the reads gathered so far into one round; answers its context for `read_index`.
    pub fn start_round(&mut self, now: Instant) -> Option<u64> {
        if self.gathered.is_empty() {
            return None;
        }
        self.next_ctx += 1;
        let reads = std::mem::take(&mut self.gathered);
        self.rounds.insert(self.next_ctx, ReadRound { started: now, reads });
        Some(self.next_ctx)
    }

    /// Rounds sent and neither answered nor given up on yet.
    pub fn in_flight(&self) -> usize {
        self.rounds.len()
    }

    /// Reads waiting for the next round.
    pub fn gathered_len(&self) -> usize {
        self.gathered.len()
    }

    /// Gathers again the reads of every round in flight: the leader changed, and raft-rs drops
    /// the read-index requests a leader held when it steps down (a later round's index is as
    /// good for them: it is taken after they were asked).
    /// Followers' requests held as leader are dropped: they ask the new leader themselves.
    pub fn requeue_rounds(&mut self) {
        for (_, round) in self.rounds.drain() {
            self.gathered.extend(round.reads);
        }
        self.gathered.retain(|r| matches!(r.waiter, ReadWaiter::Local(_)));
    }

    /// Raft answered round `ctx` with `index`: every read in it may proceed once `index` is
    /// applied. Answers the followers' requests of the round, for the caller to send.
    pub fn complete(&mut self, ctx: u64, index: u64) -> Vec<PeerRead> {
        let mut peers = Vec::new();
        if let Some(round) = self.rounds.remove(&ctx) {
            for read in round.reads {
                match read.waiter {
                    ReadWaiter::Local(reply) => {
                        let _ = reply.send(Ok(index));
                    }
                    ReadWaiter::Peer(peer) => peers.push(peer),
                }
            }
        }
        peers
    }

    /// Gathers again the reads of rounds unanswered for `retry_after`, and fails with `err` every
    /// read (gathered or in a round) asked more than `timeout` ago.
    pub fn expire(
        &mut self,
        now: Instant,
        retry_after: Duration,
        timeout: Duration,
        err: impl Fn() -> Error,
    ) {
        let stale: Vec<u64> = self
            .rounds
            .iter()
            .filter(|(_, r)| now.duration_since(r.started) >= retry_after)
            .map(|(c, _)| *c)
            .collect();
        for ctx in stale {
            let round = self.rounds.remove(&ctx).expect("listed above");
            self.gathered.extend(round.reads);
        }
        let (late, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.gathered)
            .into_iter()
            .partition(|r| now.duration_since(r.asked) >= timeout);
        self.gathered = waiting;
        for read in late {
            read.fail(err());
        }
    }

    /// Whether reads wait to be sent in a round.
    #[cfg(test)]
    pub fn has_gathered(&self) -> bool {
        !self.gathered.is_empty()
    }

    /// Fails everything (shutdown).
    pub fn fail_all(&mut self, err: impl Fn() -> Error) {
        let gathered = std::mem::take(&mut self.gathered);
        for read in gathered.into_iter().chain(self.rounds.drain().flat_map(|(_, r)| r.reads)) {
            read.fail(err());
        }
    }
}

impl PendingRead {
    /// Answers a local caller with `err`; a follower's request is dropped (it retries).
    fn fail(self, err: Error) {
        if let ReadWaiter::Local(reply) = self.waiter {
            let _ = reply.send(Err(err));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::state_machine::ApplyOutput;

    fn proposal(p: &mut Proposals, index: u64, term: u64) -> oneshot::Receiver<Result<Applied>> {
        let (tx, rx) = oneshot::channel();
        p.push(index, term, ProposalReply::Local(tx));
        rx
    }

    #[test]
    fn the_matching_entry_is_returned_and_overwritten_ones_dropped() {
        let mut p = Proposals::default();
        let mut r5 = proposal(&mut p, 5, 2);
        let _r6 = proposal(&mut p, 6, 2);
        // A new leader (term 3) overwrote index 5: proposal 5 and everything of term 2 is dead.
        assert!(p.settle(5, 3).is_none());
        assert!(matches!(r5.try_recv().unwrap(), Err(Error::ProposalDropped)));
        assert_eq!(p.len(), 0, "index 6 of term 2 can never commit after a term-3 entry");
    }

    #[test]
    fn later_proposals_of_the_same_term_wait() {
        let mut p = Proposals::default();
        let _r5 = proposal(&mut p, 5, 2);
        let mut r6 = proposal(&mut p, 6, 2);
        let reply = p.settle(5, 2).expect("5 is this entry");
        reply.send(Ok(Applied { index: 5, output: ApplyOutput::Done }));
        assert_eq!(p.len(), 1);
        assert!(r6.try_recv().is_err(), "6 not answered yet");
    }

    #[test]
    fn a_restarted_loop_does_not_take_its_previous_lifes_read_contexts() {
        let before = ReadBatches::default();
        let mut after = ReadBatches::default();
        let (tx, _rx) = oneshot::channel();
        after.push(Instant::now(), tx);
        let ctx = after.start_round(Instant::now()).unwrap();
        // The same round number from the loop before the restart, and a bare number.
        assert_eq!(after.ctx_of(&before.ctx_bytes(ctx)), None);
        assert_eq!(after.ctx_of(&ctx.to_be_bytes()), None);
        assert_ne!(before.ctx_bytes(ctx), after.ctx_bytes(ctx), "two loops never share a context");
        assert_eq!(after.ctx_of(&after.ctx_bytes(ctx)), Some(ctx));
    }

    #[test]
    fn reads_are_batched_into_one_round() {
        let mut reads = ReadBatches::default();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        let now = Instant::now();
        reads.push(now, tx1);
        reads.push(now, tx2);
        let ctx = reads.start_round(now).unwrap();
        assert_eq!(reads.start_round(now), None, "nothing gathered since");
        assert_eq!(reads.ctx_of(&reads.ctx_bytes(ctx)), Some(ctx));
        assert!(reads.complete(ctx, 42).is_empty(), "no follower asked");
        assert_eq!(rx1.try_recv().unwrap().unwrap(), 42);
        assert_eq!(rx2.try_recv().unwrap().unwrap(), 42);
    }

    #[test]
    fn unanswered_rounds_are_retried_until_the_deadline() {
        let mut reads = ReadBatches::default();
        let (tx, mut rx) = oneshot::channel();
        let t0 = Instant::now();
        let (retry, timeout) = (Duration::from_millis(100), Duration::from_secs(1));
        reads.push(t0, tx);
        let first = reads.start_round(t0).unwrap();
        reads.expire(t0 + Duration::from_millis(10), retry, timeout, || Error::ProposalDropped);
        assert!(!reads.has_gathered() && rx.try_recv().is_err(), "too early to retry");
        reads.expire(t0 + Duration::from_millis(150), retry, timeout, || Error::ProposalDropped);
        assert!(reads.has_gathered(), "the dropped round is gathered again");
        let second = reads.start_round(t0 + Duration::from_millis(150)).unwrap();
        reads.complete(first, 7);
        assert!(rx.try_recv().is_err(), "a late answer to the dropped round is ignored");
        reads.complete(second, 9);
        assert_eq!(rx.try_recv().unwrap().unwrap(), 9);
    }

    #[test]
    fn reads_fail_at_their_deadline() {
        let mut reads = ReadBatches::default();
        let (tx, mut rx) = oneshot::channel();
        let t0 = Instant::now();
        reads.push(t0, tx);
        reads.start_round(t0).unwrap();
        let (retry, timeout) = (Duration::from_millis(100), Duration::from_secs(1));
        reads.expire(t0 + Duration::from_millis(500), retry, timeout, || Error::ProposalDropped);
        assert!(rx.try_recv().is_err(), "gathered again, not failed");
        reads.expire(t0 + Duration::from_secs(2), retry, timeout, || Error::ProposalDropped);
        assert!(matches!(rx.try_recv().unwrap(), Err(Error::ProposalDropped)));
    }

    fn peer(from: NodeId, ctx: &'static [u8]) -> PeerRead {
        PeerRead { from, term: 3, ctx: Bytes::from_static(ctx) }
    }

    #[test]
    fn followers_requests_join_the_next_round_and_are_handed_back_with_it() {
        let mut reads = ReadBatches::default();
        let t0 = Instant::now();
        let (tx, mut rx) = oneshot::channel();
        reads.push(t0, tx);
        let first = reads.start_round(t0).unwrap();
        // Asked while the first round is in flight: they wait for a round started after them.
        reads.push_peer(t0, peer(2, b"two"));
        reads.push_peer(t0, peer(3, b"three"));
        assert!(reads.complete(first, 10).is_empty());
        assert_eq!(rx.try_recv().unwrap().unwrap(), 10);
        let second = reads.start_round(t0).unwrap();
        assert_eq!(reads.complete(second, 12), vec![peer(2, b"two"), peer(3, b"three")]);
        assert_eq!(reads.in_flight() + reads.gathered_len(), 0);
    }

    #[test]
    fn followers_requests_are_dropped_at_a_leader_change_and_at_their_deadline() {
        let mut reads = ReadBatches::default();
        let t0 = Instant::now();
        let (tx, mut rx) = oneshot::channel();
        reads.push(t0, tx);
        reads.push_peer(t0, peer(2, b"a"));
        reads.start_round(t0).unwrap();
        reads.push_peer(t0, peer(3, b"b"));
        reads.requeue_rounds();
        assert_eq!(reads.gathered_len(), 1, "only this node's own read is gathered again");
        let round = reads.start_round(t0).unwrap();
        assert!(reads.complete(round, 5).is_empty());
        assert_eq!(rx.try_recv().unwrap().unwrap(), 5);

        let (retry, timeout) = (Duration::from_millis(100), Duration::from_secs(1));
        reads.push_peer(t0, peer(2, b"c"));
        reads.expire(t0 + Duration::from_secs(2), retry, timeout, || Error::ProposalDropped);
        assert_eq!(reads.gathered_len(), 0, "a late follower's request is dropped without an answer");
    }
}
