//! The node's liveness beat, which lets idle groups hibernate (see `consensus::group::hibernate`):
//! a ping to every peer a few times per election timeout, and a wake-up for every hibernating
//! group with a member this node has not heard from within an election timeout.
//!
//! One task per node, whatever the number of shards: this is what replaces each group's
//! heartbeats while it sleeps.
//!
//! The beat also tells the peers which shards this node leads (`Envelope::Leaders`, with its
//! term in each) whenever that changes, and every `LEADERS_EVERY` beats anyway: with placement
//! a node holds some shards only, and routes the others' keys, and spreads leaders, by these
//! hints (a newer term wins; a stale one costs a hop).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::dispatch::Dispatcher;
use super::table::ShardTable;
use crate::transport::envelope::Envelope;
use crate::transport::Transport;
use crate::types::NodeId;

/// Beats between two tellings of the led shards when nothing changed (a peer that missed one,
/// or started since, learns them within this many).
const LEADERS_EVERY: u64 = 10;

/// What the beat needs.
pub(super) struct KeepAlive {
    pub node_id: NodeId,
    pub transport: Arc<Transport>,
    pub dispatcher: Arc<Dispatcher>,
    pub table: Arc<ShardTable>,
    /// How often it pings.
    pub period: Duration,
    /// A member not heard from for this long is silent.
    pub window: Duration,
    #[cfg(feature = "fault-injection")]
    pub faults: Option<Arc<crate::faults::Faults>>,
}

/// Pings the peers every `period`, and wakes the hibernating groups with a member not heard
/// from within `window`.
pub(super) async fn keep_alive(beat: KeepAlive, cancel: CancellationToken) {
    let KeepAlive { node_id, transport, dispatcher, table, period, window, .. } = beat;
    #[cfg(feature = "fault-injection")]
    let faults = beat.faults;
    let ping = Envelope::Ping.to_frame();
    let mut told: Vec<(crate::types::ShardId, u64)> = Vec::new();
    let mut beats = 0u64;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // A node the fault injector pauses must look as silent as a stopped process.
        #[cfg(feature = "fault-injection")]
        if faults.as_ref().is_some_and(|f| f.is_paused(node_id)) {
            continue;
        }
        dispatcher.expire_snapshots();
        let groups = table.groups();
        let led: Vec<_> = groups
            .iter()
            .filter(|g| g.shared.is_leader())
            .map(|g| (g.shared.shard, g.shared.term()))
            .collect();
        for (shard, term) in &led {
            dispatcher.hints.hint_if_newer(*shard, node_id, *term);
        }
        beats += 1;
        let leaders = (led != told || beats.is_multiple_of(LEADERS_EVERY)).then(|| {
            told.clone_from(&led);
            Envelope::Leaders { led }.to_frame()
        });
        for peer in transport.peer_ids() {
            // A full queue means the peer is not reading: it will not hear this ping either.
            let _ = transport.send_urgent(peer, ping.clone());
            if let Some(leaders) = &leaders {
                let _ = transport.send_urgent(peer, leaders.clone());
            }
        }
        if !groups.iter().any(|g| g.shared.is_hibernating()) {
            continue;
        }
        let heard = dispatcher.heard_peers(window);
        for group in groups.iter().filter(|g| g.shared.is_hibernating()) {
            let shared = &group.shared;
            let mut members = shared.voters();
            members.extend(shared.learners());
            let silent = |m: &NodeId| *m != node_id && !heard.contains(m);
            if members.iter().any(silent) {
                let leader_silent = shared.leader_id().is_some_and(|l| silent(&l));
                shared.wake(leader_silent);
            }
        }
    }
}
