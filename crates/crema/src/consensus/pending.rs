//! Bookkeeping of the group loop's outstanding requests: proposals awaiting their entry's apply,
//! and linearizable reads batched into read-index rounds. Pure code, no I/O or Raft calls.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::consensus::Applied;
use crate::error::{Error, Result};

/// Where a proposal's answer goes.
pub(crate) type ProposalReply = oneshot::Sender<Result<Applied>>;
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
                let _ = p.reply.send(Err(Error::ProposalDropped));
            }
        }
        matched
    }

    /// Answers every proposal with an error made by `err` (shutdown).
    pub fn fail_all(&mut self, err: impl Fn() -> Error) {
        for p in self.queue.drain(..) {
            let _ = p.reply.send(Err(err()));
        }
    }

    /// Proposals awaiting an answer.
    pub fn len(&self) -> usize {
        self.queue.len()
    }
}

struct ReadRound {
    started: Instant,
    replies: Vec<ReadReply>,
}

/// Linearizable reads: those gathered in this loop pass, and rounds awaiting their read index.
#[derive(Default)]
pub(crate) struct ReadBatches {
    gathered: Vec<ReadReply>,
    next_ctx: u64,
    rounds: HashMap<u64, ReadRound>,
}

impl ReadBatches {
    /// Adds a read to the next round.
    pub fn push(&mut self, reply: ReadReply) {
        self.gathered.push(reply);
    }

    /// Turns the reads gathered so far into one round; answers its context for `read_index`.
    pub fn start_round(&mut self, now: Instant) -> Option<u64> {
        if self.gathered.is_empty() {
            return None;
        }
        self.next_ctx += 1;
        let replies = std::mem::take(&mut self.gathered);
        self.rounds.insert(self.next_ctx, ReadRound { started: now, replies });
        Some(self.next_ctx)
    }

    /// Raft answered round `ctx` with `index`: every read in it may proceed once `index` is applied.
    pub fn complete(&mut self, ctx: u64, index: u64) {
        if let Some(round) = self.rounds.remove(&ctx) {
            for reply in round.replies {
                let _ = reply.send(Ok(index));
            }
        }
    }

    /// Fails rounds older than `timeout` (Raft drops read requests when there is no leader).
    pub fn expire(&mut self, now: Instant, timeout: Duration, err: impl Fn() -> Error) {
        self.rounds.retain(|_, round| {
            let keep = now.duration_since(round.started) < timeout;
            if !keep {
                for reply in round.replies.drain(..) {
                    let _ = reply.send(Err(err()));
                }
            }
            keep
        });
    }

    /// Fails everything (shutdown).
    pub fn fail_all(&mut self, err: impl Fn() -> Error) {
        let gathered = std::mem::take(&mut self.gathered);
        for reply in gathered.into_iter().chain(self.rounds.drain().flat_map(|(_, r)| r.replies)) {
            let _ = reply.send(Err(err()));
        }
    }
}

/// Encodes a read round's context for `RawNode::read_index`.
pub(crate) fn ctx_bytes(ctx: u64) -> Vec<u8> {
    ctx.to_be_bytes().to_vec()
}

/// Decodes a read state's context; none for a context this node did not make.
pub(crate) fn ctx_from_bytes(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::state_machine::ApplyOutput;

    fn proposal(p: &mut Proposals, index: u64, term: u64) -> oneshot::Receiver<Result<Applied>> {
        let (tx, rx) = oneshot::channel();
        p.push(index, term, tx);
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
        reply.send(Ok(Applied { index: 5, output: ApplyOutput::Done })).unwrap();
        assert_eq!(p.len(), 1);
        assert!(r6.try_recv().is_err(), "6 not answered yet");
    }

    #[test]
    fn reads_are_batched_into_one_round() {
        let mut reads = ReadBatches::default();
        let (tx1, mut rx1) = oneshot::channel();
        let (tx2, mut rx2) = oneshot::channel();
        reads.push(tx1);
        reads.push(tx2);
        let now = Instant::now();
        let ctx = reads.start_round(now).unwrap();
        assert_eq!(reads.start_round(now), None, "nothing gathered since");
        assert_eq!(ctx_from_bytes(&ctx_bytes(ctx)), Some(ctx));
        reads.complete(ctx, 42);
        assert_eq!(rx1.try_recv().unwrap().unwrap(), 42);
        assert_eq!(rx2.try_recv().unwrap().unwrap(), 42);
    }

    #[test]
    fn stale_rounds_expire() {
        let mut reads = ReadBatches::default();
        let (tx, mut rx) = oneshot::channel();
        reads.push(tx);
        let t0 = Instant::now();
        reads.start_round(t0).unwrap();
        reads.expire(t0 + Duration::from_millis(10), Duration::from_secs(1), || Error::ProposalDropped);
        assert!(rx.try_recv().is_err(), "not yet");
        reads.expire(t0 + Duration::from_secs(2), Duration::from_secs(1), || Error::ProposalDropped);
        assert!(matches!(rx.try_recv().unwrap(), Err(Error::ProposalDropped)));
    }
}
