//! The follower side of forwarding: a table of writes sent to the leader and awaiting its reply.
//!
//! A request gets an id, its frame goes out on the leader's link, and the reply (matched by id)
//! completes it. A request that outlives its timeout fails with `Timeout` (outcome unknown: the
//! leader may still apply it) and its slot is freed; a late reply is then ignored.
//!
//! The leader side keeps a [`SeenRequests`] window per sender, so a forward frame delivered
//! twice is proposed once: a write applied twice is not linearizable (a read can see its value
//! come back after a later write, or a compare-and-set answer "not written" for the copy that
//! found its own value). Ids start at a random point in each process, so a restarted follower's
//! ids are not taken for repeats of its earlier ones.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::warn;

use super::envelope::{Envelope, WireError};
use super::Transport;
use crate::consensus::Applied;
use crate::error::{Error, Result};
use crate::types::{NodeId, ShardId};

type Reply = std::result::Result<Applied, WireError>;

/// Forwarded requests awaiting the leader's answer.
pub(crate) struct Forwarder {
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
}

impl Default for Forwarder {
    fn default() -> Self {
        // A random start (with room below u64::MAX) tells this incarnation's ids apart.
        Self { next_id: AtomicU64::new(rand::random::<u64>() >> 2), pending: Mutex::default() }
    }
}

/// How far behind the newest id of a sender a request may arrive and still be told apart from
/// a repeat. An older one is refused (its sender times out: outcome unknown, nothing applied).
const SEEN_WINDOW: u64 = 65_536;

/// Ids further than this from the newest one seen belong to a new incarnation of the sender.
const NEW_INCARNATION: u64 = 1 << 40;

/// The request ids one sender's forwards carried lately (leader side): a sliding window.
#[derive(Debug, Default)]
pub(crate) struct SeenRequests {
    newest: u64,
    seen: BTreeSet<u64>,
}

impl SeenRequests {
    /// Whether `id` is new (and now remembered); false for a repeat, or for an id too old to
    /// tell.
    pub fn first_time(&mut self, id: u64) -> bool {
        if self.seen.is_empty() || id.abs_diff(self.newest) > NEW_INCARNATION {
            self.seen.clear();
            self.seen.insert(id);
            self.newest = id;
            return true;
        }
        if id.saturating_add(SEEN_WINDOW) <= self.newest || !self.seen.insert(id) {
            return false;
        }
        self.newest = self.newest.max(id);
        if self.seen.len() as u64 > 2 * SEEN_WINDOW {
            self.seen = self.seen.split_off(&(self.newest - SEEN_WINDOW + 1));
        }
        true
    }
}

/// The leader's side of one forwarded write: where its answer goes. The group loop answers it
/// itself once the entry is applied (or dropped), so no task waits per forwarded write.
pub(crate) struct ForwardTicket {
    pub transport: Arc<Transport>,
    /// The follower that forwarded the write.
    pub to: NodeId,
    pub request_id: u64,
}

impl ForwardTicket {
    /// Sends `result` back to the follower (a full or lost link drops it: the follower times
    /// out, outcome unknown).
    pub fn answer(self, result: Result<Applied>) {
        let result = result.map_err(|e| WireError::from(&e));
        let frame = Envelope::ForwardReply { request_id: self.request_id, result }.to_frame();
        if let Err(e) = self.transport.send(self.to, frame) {
            warn!(to = self.to, error = %e, "forward reply dropped");
        }
    }
}

struct Slot<'a> {
    forwarder: &'a Forwarder,
    id: u64,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.forwarder.pending.lock().expect("pending poisoned").remove(&self.id);
    }
}

impl Forwarder {
    /// Sends `command` to `leader` for group `shard` and waits for where it was applied.
    pub async fn forward(
        &self,
        transport: &Transport,
        leader: NodeId,
        shard: ShardId,
        command: Bytes,
        timeout: Duration,
    ) -> Result<Applied> {
        let request_id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending poisoned").insert(request_id, tx);
        let _slot = Slot { forwarder: self, id: request_id };
        transport.send(leader, Envelope::Forward { shard, request_id, command }.to_frame())?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply.map_err(Error::from),
            Ok(Err(_)) => Err(Error::Shutdown),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// Completes request `request_id` with the leader's reply (ignored if it already timed out).
    pub fn complete(&self, request_id: u64, reply: Reply) {
        if let Some(tx) = self.pending.lock().expect("pending poisoned").remove(&request_id) {
            let _ = tx.send(reply);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_refused_and_reordering_is_not() {
        let mut seen = SeenRequests::default();
        assert!(seen.first_time(1000));
        assert!(!seen.first_time(1000), "a repeat");
        assert!(seen.first_time(1002));
        assert!(seen.first_time(1001), "overtaken, but new");
        assert!(!seen.first_time(1001) && !seen.first_time(1002));
        // Far ahead: the window slides, and what fell out of it is refused.
        assert!(seen.first_time(1000 + 3 * SEEN_WINDOW));
        assert!(!seen.first_time(1003), "too old to tell from a repeat");
        for id in 0..3 * SEEN_WINDOW {
            seen.first_time(2_000_000 + id);
        }
        assert!(seen.seen.len() as u64 <= 2 * SEEN_WINDOW + 1, "bounded: {}", seen.seen.len());
        assert!(!seen.first_time(2_000_000 + 3 * SEEN_WINDOW - 1));
        // A restarted sender starts somewhere else entirely: a new window.
        assert!(seen.first_time(1 << 60));
        assert!(seen.first_time((1 << 60) + 1));
        assert!(!seen.first_time(1 << 60));
    }

    #[test]
    fn each_forwarder_starts_its_ids_somewhere_else() {
        let (a, b) = (Forwarder::default(), Forwarder::default());
        let (a, b) = (a.next_id.load(Ordering::Relaxed), b.next_id.load(Ordering::Relaxed));
        assert!(a.abs_diff(b) > NEW_INCARNATION, "{a} and {b}");
    }
}
