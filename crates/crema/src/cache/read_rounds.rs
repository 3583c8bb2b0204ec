//! Node-level read rounds: one leadership check covers every shard a node leads.
//!
//! A linearizable read needs its shard's commit index, taken by the leader after the read
//! began, and proof that no later leader existed when it was taken (Read-Index). raft-rs proves
//! it one group at a time, with a heartbeat round to the group's followers: with 16 shards a
//! node pays up to 16 rounds for reads one round could cover, and every group loop on every node
//! wakes for each (W4 made a third fewer reads with 16 shards than with one;
//! `docs/performance.md`). Here a node takes the commit index of every shard it leads that has
//! reads waiting, and asks each peer once, in one [`Envelope::ReadCheck`], which of those shards
//! it still follows in the same term; a shard whose voters answer yes in a quorum (this node
//! counted) is confirmed, and its reads wait until this node applied the index taken. A follower
//! sends its reads to each shard's leader the same way: all of one leader's shards in one
//! [`Envelope::ReadIndexAsk`], answered after that leader's next round. One round (and one ask
//! per leader) is in flight at a time; reads that arrive meanwhile go together in the next.
//! Nothing here wakes a group loop: leaders and peers answer from what the loops publish.
//!
//! Why a confirmed index is safe, the argument of raft-rs's own Read-Index:
//! - the leader takes the commit index only once it has committed an entry of its own term,
//!   so its log holds every entry committed before, and only outside a joint configuration
//!   (`GroupShared::read_capture`);
//! - a loop publishes its commit index before it sends or applies anything up to it, so the
//!   index taken covers every write anyone was told is done;
//! - a peer vouches for a term only while its replica's published term is that term and it is
//!   not recovering (`GroupShared::confirms_term`); a loop publishes a new term before it sends
//!   any message of it, so a peer that vouched had not yet voted in a later term. A quorum that
//!   vouched after the index was taken leaves no room for a later leader before it, hence for no
//!   committed write past it.
//!
//! Whatever is not confirmed within `patience` (a silent peer, a leader change, a follower that
//! does not know the leader) goes the old way, through its group (raft-rs's Read-Index), which
//! knows how to wait for a leader and when to give up.
//!
//! Hand-written: this is crema's own exchange between its nodes; raft-rs checks one group at a
//! time, and no crate batches Read-Index across Raft groups.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::debug;

use super::table::ShardTable;
use crate::consensus::group::{GroupHandle, GroupShared};
use crate::transport::envelope::Envelope;
use crate::transport::Transport;
use crate::types::{NodeId, ShardId};

/// Shards one check or ask may name: a peer naming more is ignored (the most a cluster has).
pub(crate) const MAX_SHARDS_PER_MESSAGE: usize = crate::multiraft::SLOTS as usize;

/// What a confirmed read index goes to.
enum Waiter {
    /// A read on this node.
    Local(oneshot::Sender<u64>),
    /// A follower's ask.
    Peer { node: NodeId, ask: u64 },
}

/// One shard's part of a round: the leader's term and commit index, taken after every read
/// waiting for it began.
struct Item {
    shared: Arc<GroupShared>,
    term: u64,
    commit: u64,
    voters: Vec<NodeId>,
    /// Peers that vouched for `term`.
    vouched: Vec<NodeId>,
    waiters: Vec<Waiter>,
}

struct Round {
    id: u64,
    started: Instant,
    items: BTreeMap<ShardId, Item>,
    /// Peers asked, and which of them answered.
    asked: Vec<NodeId>,
    answered: Vec<NodeId>,
    /// Confirmed indices for followers' asks, sent when the round ends.
    answers: HashMap<(NodeId, u64), Vec<Answered>>,
}

/// Reads waiting for a read index, by shard.
type ReadsByShard = HashMap<ShardId, Vec<oneshot::Sender<u64>>>;

/// This node's reads of shards led by one other node.
#[derive(Default)]
struct Asks {
    /// The ask in flight: its id, when it went, its reads.
    in_flight: Option<(u64, Instant, ReadsByShard)>,
    queued: ReadsByShard,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Shards this node leads with reads for the next round.
    queued: BTreeMap<ShardId, Item>,
    in_flight: Option<Round>,
    asks: HashMap<NodeId, Asks>,
    /// Rounds and asks started, for the figures.
    rounds: u64,
    asks_sent: u64,
}

/// The node's read rounds (see the module header).
pub(crate) struct NodeReads {
    node_id: NodeId,
    /// How long a round or an ask may take before its reads go through their groups.
    patience: Duration,
    state: Mutex<State>,
    /// A node the fault injector pauses neither reads nor vouches, like a stopped process.
    #[cfg(feature = "fault-injection")]
    faults: Option<Arc<crate::faults::Faults>>,
}

/// Envelopes to send once the state's lock is released.
type Outbox = Vec<(NodeId, Envelope)>;

/// Peers heard from lately: only they are asked, and a shard whose voters among them (with
/// this node) are no majority is not put in a round at all, so a dead peer never holds a
/// round up.
pub(crate) type Live = HashSet<NodeId>;

impl NodeReads {
    /// `patience`: how long a round or an ask may take before its reads go through their
    /// groups.
    pub fn new(node_id: NodeId, patience: Duration) -> Self {
        Self {
            node_id,
            patience,
            // Numbered from a random start, as forwarded writes are: an answer meant for an
            // earlier process of this node (still queued on a peer's link) names no round or
            // ask of this one.
            state: Mutex::new(State { next_id: rand::random(), ..State::default() }),
            #[cfg(feature = "fault-injection")]
            faults: None,
        }
    }

    /// The fault injector that may pause this node (tests).
    #[cfg(feature = "fault-injection")]
    pub fn with_faults(mut self, faults: Option<Arc<crate::faults::Faults>>) -> Self {
        self.faults = faults;
        self
    }

    /// True while the fault injector pauses this node.
    fn paused(&self) -> bool {
        #[cfg(feature = "fault-injection")]
        if self.faults.as_ref().is_some_and(|f| f.is_paused(self.node_id)) {
            return true;
        }
        false
    }

    /// Rounds this node started.
    pub fn rounds(&self) -> u64 {
        self.lock().rounds
    }

    /// Asks this node sent to leaders of other nodes.
    pub fn asks(&self) -> u64 {
        self.lock().asks_sent
    }

    /// Reads of this node waiting for the next round or the next ask, while one is in flight.
    pub fn held(&self) -> usize {
        let state = self.lock();
        let local = |w: &Waiter| matches!(w, Waiter::Local(_));
        let queued: usize =
            state.queued.values().map(|i| i.waiters.iter().filter(|w| local(w)).count()).sum();
        queued + state.asks.values().flat_map(|a| a.queued.values()).map(Vec::len).sum::<usize>()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("read rounds poisoned")
    }

    /// A read index of `group`'s shard, confirmed by a quorum after this call began: once this
    /// node applied it, a local read is linearizable. `None` when it could not be had this way
    /// (the caller goes through the group).
    pub async fn read_index(&self, transport: &Transport, live: &Live, group: &GroupHandle) -> Option<u64> {
        if self.paused() {
            return None;
        }
        let shared = &group.shared;
        let (tx, rx) = oneshot::channel();
        let outbox = {
            let mut state = self.lock();
            let now = Instant::now();
            if let Some((term, commit)) = shared.read_capture() {
                state.queue(shared.clone(), term, commit, Waiter::Local(tx));
                state.start_round(self.node_id, now, self.patience, live)
            } else {
                let leader = shared.leader_id().filter(|l| *l != self.node_id)?;
                state.asks.entry(leader).or_default().queued.entry(shared.shard).or_default().push(tx);
                state.start_ask(leader, now, self.patience)
            }
        };
        send_all(transport, outbox);
        tokio::time::timeout(self.patience, rx).await.ok()?.ok()
    }

    /// A leader's check: which of `shards` this node's replicas still follow in the term named.
    pub fn on_check(
        &self,
        table: &ShardTable,
        transport: &Transport,
        from: NodeId,
        round: u64,
        shards: &[(ShardId, u64)],
    ) {
        if shards.len() > MAX_SHARDS_PER_MESSAGE {
            debug!(from, shards = shards.len(), "read check naming too many shards ignored");
            return;
        }
        if self.paused() {
            return;
        }
        let confirmed = shards
            .iter()
            .filter(|(shard, term)| {
                table.with(*shard, |s| s.group.shared.confirms_term(*term)).unwrap_or(false)
            })
            .map(|(shard, _)| *shard)
            .collect();
        send_all(transport, vec![(from, Envelope::ReadCheckAck { round, confirmed })]);
    }

    /// A peer's answer to this node's round `round`.
    pub fn on_check_ack(
        &self,
        transport: &Transport,
        live: &Live,
        from: NodeId,
        round: u64,
        confirmed: &[ShardId],
    ) {
        if confirmed.len() > MAX_SHARDS_PER_MESSAGE {
            debug!(from, shards = confirmed.len(), "read check answer naming too many shards ignored");
            return;
        }
        let outbox =
            self.lock().on_ack(self.node_id, (from, round, confirmed), Instant::now(), self.patience, live);
        send_all(transport, outbox);
    }

    /// A follower's ask for read indices of `shards`, which it believes this node leads.
    pub fn on_ask(
        &self,
        table: &ShardTable,
        transport: &Transport,
        live: &Live,
        from: NodeId,
        ask: u64,
        shards: &[ShardId],
    ) {
        if shards.len() > MAX_SHARDS_PER_MESSAGE {
            debug!(from, shards = shards.len(), "read-index ask naming too many shards ignored");
            return;
        }
        if self.paused() {
            return;
        }
        let outbox = {
            let mut state = self.lock();
            let captures = shards
                .iter()
                .filter_map(|shard| table.with(*shard, |s| s.group.shared.clone()))
                .filter_map(|shared| shared.read_capture().map(|(term, commit)| (shared, term, commit)))
                .collect();
            state.on_ask(self.node_id, (from, ask), captures, Instant::now(), self.patience, live)
        };
        send_all(transport, outbox);
    }

    /// A leader's answer to this node's ask `ask`.
    pub fn on_answer(
        &self,
        table: &ShardTable,
        transport: &Transport,
        from: NodeId,
        ask: u64,
        indices: &[Answered],
    ) {
        if indices.len() > MAX_SHARDS_PER_MESSAGE {
            debug!(from, shards = indices.len(), "read-index answer naming too many shards ignored");
            return;
        }
        let vouch = |shard: ShardId, term: u64| {
            table.with(shard, |s| s.group.shared.confirms_term(term)).unwrap_or(false)
        };
        let outbox = self.lock().on_answer((from, ask), indices, vouch, Instant::now(), self.patience);
        send_all(transport, outbox);
    }
}

/// A read index in an answer to a follower: `(shard, the leader's term, index)`.
pub(crate) type Answered = (ShardId, u64, u64);

impl State {
    /// A follower's ask: `captures` are the shards of it this node leads, each with its term
    /// and commit index taken now. When this node and the asker are a majority of every
    /// shard's voters (three voters or fewer, both among them), the indices go back at once:
    /// this node was in the term when it took them, and the asker checks that it still is when
    /// the answer arrives (after they were taken), so the two of them vouch as a round would.
    /// Otherwise they wait for this node's next round.
    fn on_ask(
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
    fn on_answer(
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
    fn on_ack(
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

    fn next_id(&mut self) -> u64 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// Adds a read of a shard this node leads to the next round, with the newest capture (a
    /// later index serves every read that began before it was taken).
    fn queue(&mut self, shared: Arc<GroupShared>, term: u64, commit: u64, waiter: Waiter) {
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
    fn start_round(&mut self, me: NodeId, now: Instant, patience: Duration, live: &Live) -> Outbox {
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
    fn settle(&mut self, me: NodeId, now: Instant, patience: Duration, live: &Live) -> Outbox {
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
    fn start_ask(&mut self, leader: NodeId, now: Instant, patience: Duration) -> Outbox {
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
    fn has_quorum(&self, me: NodeId) -> bool {
        let mine = self.voters.contains(&me) && self.shared.confirms_term(self.term);
        let yes = self.vouched.len() + usize::from(mine);
        2 * yes > self.voters.len()
    }
}

/// A round's answers to followers (their unconfirmed shards left out); its unconfirmed local
/// reads are dropped, so they go through their groups.
fn end_round(round: Round) -> Outbox {
    answer_unconfirmed(round.answers, round.items)
}

/// `answers` for followers' asks, with the asks of `unconfirmed` items answered without them
/// (their local reads are dropped: they go through their groups).
fn answer_unconfirmed(
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

fn send_all(transport: &Transport, outbox: Outbox) {
    for (to, envelope) in outbox {
        if let Err(e) = transport.send(to, envelope.to_frame()) {
            debug!(to, error = %e, "read round message dropped");
        }
    }
}

#[cfg(test)]
#[path = "read_rounds_tests.rs"]
mod tests;
