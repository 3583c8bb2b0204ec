//! The bookkeeping of the node's read rounds (see `cache::read_rounds`): the round in flight and
//! the shards queued for the next, the asks this node sent to each leader node, and what every
//! check, ack, ask and answer does to them (pure: what to send comes back as an outbox).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::debug;

use super::{Answered, Live, Outbox};
use crate::consensus::group::GroupShared;
use crate::transport::envelope::Envelope;
use crate::types::{NodeId, ShardId};

/// What a confirmed read index goes to.
pub(super) enum Waiter {
    /// A read on this node.
    Local(oneshot::Sender<u64>),
    /// A follower's ask.
    Peer { node: NodeId, ask: u64 },
}

/// One shard's part of a round: the leader's term and commit index, taken after every read
/// waiting for it began.
pub(super) struct Item {
    pub(super) shared: Arc<GroupShared>,
    pub(super) term: u64,
    pub(super) commit: u64,
    pub(super) voters: Vec<NodeId>,
    /// Peers that vouched for `term`.
    pub(super) vouched: Vec<NodeId>,
    pub(super) waiters: Vec<Waiter>,
}

pub(super) struct Round {
    pub(super) id: u64,
    pub(super) started: Instant,
    pub(super) items: BTreeMap<ShardId, Item>,
    /// Peers asked, and which of them answered.
    pub(super) asked: Vec<NodeId>,
    pub(super) answered: Vec<NodeId>,
    /// Confirmed indices for followers' asks, sent when the round ends.
    pub(super) answers: HashMap<(NodeId, u64), Vec<Answered>>,
}

/// Reads waiting for a read index, by shard.
pub(super) type ReadsByShard = HashMap<ShardId, Vec<oneshot::Sender<u64>>>;

/// This node's reads of shards led by one other node.
#[derive(Default)]
pub(super) struct Asks {
    /// The ask in flight: its id, when it went, its reads.
    pub(super) in_flight: Option<(u64, Instant, ReadsByShard)>,
    pub(super) queued: ReadsByShard,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) next_id: u64,
    /// Shards this node leads with reads for the next round.
    pub(super) queued: BTreeMap<ShardId, Item>,
    pub(super) in_flight: Option<Round>,
    pub(super) asks: HashMap<NodeId, Asks>,
    /// Rounds and asks started, for the figures.
    pub(super) rounds: u64,
    pub(super) asks_sent: u64,
}

impl State {
    /// A follower's ask: `captures` are the shards of it this node leads, each with its term
    /// and commit index taken now. When this node and the asker are a majority of every
    /// shard's voters (three voters or fewer, both among them), the indices go back at once:
    /// this node was in the term when it took them, and the asker checks that it still is when
    /// the answer arrives (after they were taken), so the two of them vouch as a round would.
    /// Otherwise they wait for this node's next round.
    pub(super) fn on_ask(
        &mut self,
        me: NodeId,
        (from, ask): (NodeId, u64),
        captures: Vec<(Arc<GroupShared>, u64, u64)>,
        now: Instant,
        patience: Duration,
        live: &Live,
    ) -> Outbox {
        let pair_is_quorum = |shared: &GroupShared| {
            let voters = shared.voters();
            voters.contains(&me) && voters.contains(&from) && 2 * 2 > voters.len()
        };
        if captures.iter().all(|(shared, _, _)| pair_is_quorum(shared)) {
            // Also when nothing was captured: the follower goes through its groups now.
            let indices =
                captures.iter().map(|(shared, term, commit)| (shared.shard, *term, *commit)).collect();
            return vec![(from, Envelope::ReadIndexAnswer { ask, indices })];
        }
        for (shared, term, commit) in captures {
            self.queue(shared, term, commit, Waiter::Peer { node: from, ask });
        }
        self.start_round(me, now, patience, live)
    }

    /// A leader's answer to this node's ask: each index is used only while this node's replica
    /// is still in the term it names (`vouch`); reads of shards left out or refused go through
    /// their groups. Starts the next ask to that leader.
    pub(super) fn on_answer(
        &mut self,
        (from, ask): (NodeId, u64),
        indices: &[Answered],
        vouch: impl Fn(ShardId, u64) -> bool,
        now: Instant,
        patience: Duration,
    ) -> Outbox {
        let Some(asks) = self.asks.get_mut(&from) else { return Vec::new() };
        if asks.in_flight.as_ref().is_none_or(|(id, _, _)| *id != ask) {
            return Vec::new();
        }
        let (_, _, mut waiting) = asks.in_flight.take().expect("checked above");
        for (shard, term, index) in indices {
            if !vouch(*shard, *term) {
                continue;
            }
            for tx in waiting.remove(shard).unwrap_or_default() {
                let _ = tx.send(*index);
            }
        }
        // What is left in `waiting` is dropped here: those reads go through their groups.
        drop(waiting);
        self.start_ask(from, now, patience)
    }

    /// `from`'s answer to round `round`: the shards it vouched for. Counted once per peer
    /// asked, for the shards it votes in, and only for the round in flight.
    pub(super) fn on_ack(
        &mut self,
        me: NodeId,
        (from, round, confirmed): (NodeId, u64, &[ShardId]),
        now: Instant,
        patience: Duration,
        live: &Live,
    ) -> Outbox {
        let Some(r) = self.in_flight.as_mut().filter(|r| r.id == round) else { return Vec::new() };
        if !r.asked.contains(&from) || r.answered.contains(&from) {
            return Vec::new();
        }
        r.answered.push(from);
        for shard in confirmed {
            if let Some(item) = r.items.get_mut(shard) {
                if item.voters.contains(&from) && !item.vouched.contains(&from) {
                    item.vouched.push(from);
                }
            }
        }
        self.settle(me, now, patience, live)
    }

    pub(super) fn next_id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// Adds a read of a shard this node leads to the next round, with the newest capture (a
    /// later index serves every read that began before it was taken).
    pub(super) fn queue(&mut self, shared: Arc<GroupShared>, term: u64, commit: u64, waiter: Waiter) {
        let voters = shared.voters();
        let item = self.queued.entry(shared.shard).or_insert_with(|| Item {
            shared: shared.clone(),
            term,
            commit,
            voters: Vec::new(),
            vouched: Vec::new(),
            waiters: Vec::new(),
        });
        item.shared = shared;
        item.term = term;
        item.commit = commit;
        item.voters = voters;
        item.waiters.push(waiter);
    }

    /// Starts the next round if none is in flight (one stuck past `patience` is given up).
    pub(super) fn start_round(
        &mut self,
        me: NodeId,
        now: Instant,
        patience: Duration,
        live: &Live,
    ) -> Outbox {
        let mut outbox = Vec::new();
        if let Some(round) = &self.in_flight {
            if now.duration_since(round.started) < patience {
                return outbox;
            }
            let round = self.in_flight.take().expect("checked above");
            debug!(round = round.id, "read round unanswered: its reads go through their groups");
            outbox.extend(end_round(round));
        }
        if self.queued.is_empty() {
            return outbox;
        }
        let (items, mut unreachable): (BTreeMap<_, _>, BTreeMap<_, _>) =
            std::mem::take(&mut self.queued).into_iter().partition(|(_, item)| {
                let reachable = item.voters.iter().filter(|v| **v == me || live.contains(v)).count();
                2 * reachable > item.voters.len()
            });
        // A shard that cannot reach a quorum of live voters: its reads go through the group,
        // and the followers that asked for it hear so now (or with the round's answer, when
        // their ask has other shards in it).
        let in_round: HashSet<(NodeId, u64)> = items
            .values()
            .flat_map(|item| item.waiters.iter())
            .filter_map(|w| match w {
                Waiter::Peer { node, ask } => Some((*node, *ask)),
                Waiter::Local(_) => None,
            })
            .collect();
        for item in unreachable.values_mut() {
            item.waiters
                .retain(|w| !matches!(w, Waiter::Peer { node, ask } if in_round.contains(&(*node, *ask))));
        }
        outbox.extend(answer_unconfirmed(HashMap::new(), unreachable));
        if items.is_empty() {
            return outbox;
        }
        let mut asked: Vec<NodeId> = items.values().flat_map(|i| i.voters.iter().copied()).collect();
        asked.sort_unstable();
        asked.dedup();
        asked.retain(|n| *n != me && live.contains(n));
        let id = self.next_id();
        for peer in &asked {
            let shards = items
                .iter()
                .filter(|(_, i)| i.voters.contains(peer))
                .map(|(shard, i)| (*shard, i.term))
                .collect();
            outbox.push((*peer, Envelope::ReadCheck { round: id, shards }));
        }
        self.rounds += 1;
        self.in_flight =
            Some(Round { id, started: now, items, asked, answered: Vec::new(), answers: HashMap::new() });
        // A shard whose only voter is this node needs nobody's answer.
        outbox.extend(self.settle(me, now, patience, live));
        outbox
    }

    /// Answers the reads of every confirmed shard of the round in flight; ends the round once
    /// nothing is left to confirm or every peer answered, and then starts the next.
    pub(super) fn settle(&mut self, me: NodeId, now: Instant, patience: Duration, live: &Live) -> Outbox {
        let Some(round) = self.in_flight.as_mut() else { return Vec::new() };
        let confirmed: Vec<ShardId> =
            round.items.iter().filter(|(_, item)| item.has_quorum(me)).map(|(shard, _)| *shard).collect();
        for shard in confirmed {
            let item = round.items.remove(&shard).expect("listed above");
            for waiter in item.waiters {
                match waiter {
                    Waiter::Local(tx) => {
                        let _ = tx.send(item.commit);
                    }
                    Waiter::Peer { node, ask } => {
                        round.answers.entry((node, ask)).or_default().push((shard, item.term, item.commit));
                    }
                }
            }
        }
        if !round.items.is_empty() && round.answered.len() < round.asked.len() {
            return Vec::new();
        }
        let round = self.in_flight.take().expect("checked above");
        let mut outbox = end_round(round);
        outbox.extend(self.start_round(me, now, patience, live));
        outbox
    }

    /// Starts an ask to `leader` if none is in flight (one unanswered past `patience` is given
    /// up: its reads go through their groups).
    pub(super) fn start_ask(&mut self, leader: NodeId, now: Instant, patience: Duration) -> Outbox {
        let id = self.next_id();
        let Some(asks) = self.asks.get_mut(&leader) else { return Vec::new() };
        if asks.in_flight.as_ref().is_some_and(|(_, started, _)| now.duration_since(*started) < patience) {
            return Vec::new();
        }
        asks.in_flight = None;
        if asks.queued.is_empty() {
            return Vec::new();
        }
        let waiting = std::mem::take(&mut asks.queued);
        let shards = waiting.keys().copied().collect();
        asks.in_flight = Some((id, now, waiting));
        self.asks_sent += 1;
        vec![(leader, Envelope::ReadIndexAsk { ask: id, shards })]
    }
}

impl Item {
    /// Whether the voters that vouched for the term, this node with them while its own term is
    /// unchanged, are a majority.
    pub(super) fn has_quorum(&self, me: NodeId) -> bool {
        let mine = self.voters.contains(&me) && self.shared.confirms_term(self.term);
        let yes = self.vouched.len() + usize::from(mine);
        2 * yes > self.voters.len()
    }
}

/// A round's answers to followers (their unconfirmed shards left out); its unconfirmed local
/// reads are dropped, so they go through their groups.
pub(super) fn end_round(round: Round) -> Outbox {
    answer_unconfirmed(round.answers, round.items)
}

/// `answers` for followers' asks, with the asks of `unconfirmed` items answered without them
/// (their local reads are dropped: they go through their groups).
pub(super) fn answer_unconfirmed(
    mut answers: HashMap<(NodeId, u64), Vec<Answered>>,
    unconfirmed: BTreeMap<ShardId, Item>,
) -> Outbox {
    for item in unconfirmed.into_values() {
        for waiter in item.waiters {
            if let Waiter::Peer { node, ask } = waiter {
                answers.entry((node, ask)).or_default();
            }
        }
    }
    answers
        .into_iter()
        .map(|((node, ask), indices)| (node, Envelope::ReadIndexAnswer { ask, indices }))
        .collect()
}
