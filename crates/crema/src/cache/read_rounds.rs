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
//!
//! This file holds the API the cache and the dispatcher call; `read_rounds/state.rs` the
//! bookkeeping behind it.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::debug;

use super::table::ShardTable;
use crate::consensus::group::GroupHandle;
use crate::transport::envelope::Envelope;
use crate::transport::Transport;
use crate::types::{NodeId, ShardId};

mod state;

use state::{State, Waiter};

/// Shards one check or ask may name: a peer naming more is ignored (the most a cluster has).
pub(crate) const MAX_SHARDS_PER_MESSAGE: usize = crate::multiraft::SLOTS as usize;

/// The node's read rounds (see the module header).
pub(crate) struct NodeReads {
    node_id: NodeId,
    /// How long a round or an ask may take before its reads go through their groups.
    patience: Duration,
    state: Mutex<State>,
    /// A node the fault injector pauses neither reads nor vouches, like a stopped process.
    #[cfg(feature = "fault-injection")]
    faults: Option<std::sync::Arc<crate::faults::Faults>>,
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
    pub fn with_faults(mut self, faults: Option<std::sync::Arc<crate::faults::Faults>>) -> Self {
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

fn send_all(transport: &Transport, outbox: Outbox) {
    for (to, envelope) in outbox {
        if let Err(e) = transport.send_urgent(to, envelope.to_frame()) {
            debug!(to, error = %e, "read round message dropped");
        }
    }
}

#[cfg(test)]
#[path = "read_rounds_tests.rs"]
mod tests;
