//! The follower side of forwarding: the writes this node forwarded and still waits for.
//!
//! Each forwarded write gets a sequence number from this node's process (its write session,
//! see `consensus::sessions`): every copy of the write, however often it is resent and to
//! whichever leader, carries the same number, and the state machine applies it once. The
//! table here matches the leader's replies to the writes by that number, and tells each new
//! write the lowest number still awaited, which lets the state machine drop older answers.
//! Numbers start at a random point in each process (the session is also told apart by the
//! process's incarnation; the random start keeps replies meant for an earlier process from
//! matching).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tracing::warn;

use super::envelope::{Envelope, WireError};
use super::Transport;
use crate::consensus::sessions::MAX_ABANDONED;
use crate::consensus::Applied;
use crate::error::Result;
use crate::types::NodeId;

/// The leader's reply to one copy of a forwarded write.
pub(crate) type Reply = std::result::Result<Applied, WireError>;

/// One awaited write (see [`Forwarder::complete`]).
#[derive(Default)]
struct Awaited {
    sent_to: Vec<NodeId>,
    reply: Option<oneshot::Sender<Reply>>,
}

/// Forwarded writes awaiting the leader's answer, by sequence number.
pub(crate) struct Forwarder {
    next_seq: AtomicU64,
    /// Every write still awaited: the nodes its copies went to, and the sender while a copy
    /// is out.
    pending: Mutex<BTreeMap<u64, Awaited>>,
    /// Writes given up on (their caller timed out) that no applied write has reported yet.
    abandoned: Mutex<BTreeSet<u64>>,
    /// Writes forwarded since the node started (each once, however often it is sent).
    opened: AtomicU64,
}

impl Default for Forwarder {
    fn default() -> Self {
        // A random start (with room below u64::MAX).
        Self {
            next_seq: AtomicU64::new(rand::random::<u64>() >> 2),
            pending: Mutex::default(),
            abandoned: Mutex::default(),
            opened: AtomicU64::new(0),
        }
    }
}

impl Forwarder {
    /// Writes this node forwarded since it started, each counted once.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Takes the next sequence number for a write about to be forwarded: it counts as awaited
    /// until the returned slot is dropped.
    pub fn open(&self) -> ForwardSlot<'_> {
        // The number is taken under the lock that `oldest_pending` reads: a number taken but
        // not yet in `pending` would let a concurrent write's stamp claim a floor above it, and
        // the leader would then refuse this write as expired on its first copy.
        let mut pending = self.pending.lock().expect("pending poisoned");
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        pending.insert(seq, Awaited::default());
        drop(pending);
        self.opened.fetch_add(1, Ordering::Relaxed);
        ForwardSlot { forwarder: self, seq, answered: AtomicBool::new(false) }
    }

    /// The writes given up on that a new write should report (those at or above
    /// `oldest_pending`; older ones are covered by it), at most `MAX_ABANDONED`.
    pub fn abandoned_since(&self, oldest_pending: u64) -> Vec<u64> {
        let mut abandoned = self.abandoned.lock().expect("abandoned poisoned");
        *abandoned = abandoned.split_off(&oldest_pending);
        abandoned.iter().rev().take(MAX_ABANDONED).copied().collect()
    }

    /// A write that reported `seqs` was applied: the state machine knows of them.
    pub fn reported(&self, seqs: &[u64]) {
        let mut abandoned = self.abandoned.lock().expect("abandoned poisoned");
        for seq in seqs {
            abandoned.remove(seq);
        }
    }

    /// The lowest sequence number still awaited (the next one when none is).
    pub fn oldest_pending(&self) -> u64 {
        let pending = self.pending.lock().expect("pending poisoned");
        pending.keys().next().copied().unwrap_or_else(|| self.next_seq.load(Ordering::Relaxed))
    }

    /// Completes the copy of write `seq` that is out with the reply `from` sent (ignored when
    /// the write is no longer awaited, no copy is out, or no copy went to `from`: found in
    /// review, any member could answer any write, whose numbers follow each other, with an
    /// output its command cannot produce).
    pub fn complete(&self, from: NodeId, seq: u64, reply: Reply) {
        let mut pending = self.pending.lock().expect("pending poisoned");
        let waiting =
            pending.get_mut(&seq).filter(|a| a.sent_to.contains(&from)).and_then(|a| a.reply.take());
        drop(pending);
        if let Some(tx) = waiting {
            let _ = tx.send(reply);
        }
    }
}

/// One forwarded write, awaited until dropped; dropped unanswered, it is given up on.
pub(crate) struct ForwardSlot<'a> {
    forwarder: &'a Forwarder,
    /// The write's sequence number.
    pub seq: u64,
    answered: AtomicBool,
}

impl ForwardSlot<'_> {
    /// Where the reply to the next copy, about to be sent to `to`, goes (a reply to an earlier
    /// copy then goes here too: every copy is answered alike).
    pub fn arm(&self, to: NodeId) -> oneshot::Receiver<Reply> {
        let (tx, rx) = oneshot::channel();
        if let Some(slot) = self.forwarder.pending.lock().expect("pending poisoned").get_mut(&self.seq) {
            if !slot.sent_to.contains(&to) {
                slot.sent_to.push(to);
            }
            slot.reply = Some(tx);
        }
        rx
    }
}

impl ForwardSlot<'_> {
    /// The write was answered (its outcome is known): dropping the slot gives nothing up.
    pub fn answered(&self) {
        self.answered.store(true, Ordering::Relaxed);
    }
}

impl Drop for ForwardSlot<'_> {
    fn drop(&mut self) {
        self.forwarder.pending.lock().expect("pending poisoned").remove(&self.seq);
        if !self.answered.load(Ordering::Relaxed) {
            let mut abandoned = self.forwarder.abandoned.lock().expect("abandoned poisoned");
            abandoned.insert(self.seq);
            while abandoned.len() > MAX_ABANDONED {
                abandoned.pop_first();
            }
        }
    }
}

/// The leader's side of one forwarded write: where its answer goes. The group loop answers it
/// itself once the entry is applied (or dropped), so no task waits per forwarded write.
pub(crate) struct ForwardTicket {
    pub transport: Arc<Transport>,
    /// The follower that forwarded the write.
    pub to: NodeId,
    pub request_id: u64,
    /// When the follower has given up on this copy for certain: it ends a forwarded write
    /// `forwarding_timeout` after the first copy went out, and its request at
    /// `request_timeout`, so at the lesser of the two after this copy arrived (when the nodes
    /// agree on them; a node with longer ones is answered `ProposalDropped` for a copy left
    /// out of the log, and sends another).
    pub given_up_at: std::time::Instant,
}

impl ForwardTicket {
    /// Sends `result` back to the follower (a full or lost link drops it: the follower sends
    /// the write again, and the copy is answered with the first one's output).
    pub fn answer(self, result: Result<Applied>) {
        let mut result = result.map_err(|e| WireError::from(&e));
        // Measured before it is encoded (the outputs share the stored values; their encoding
        // would copy them all, gigabytes for a batch of large GETDELs).
        let weight = result.as_ref().map_or(0, |applied| crate::consensus::sessions::weight(&applied.output));
        if weight > self.transport.max_frame_bytes() {
            result = Err(WireError::Other(reply_too_large(weight)));
        }
        let frame = Envelope::ForwardReply { request_id: self.request_id, result }.to_frame();
        let sent = match self.transport.send(self.to, frame) {
            // The outputs of a pipeline of GETDELs of large values, say: the follower is told
            // what happened rather than left to time out on a write that applied.
            Err(super::TransportError::FrameTooLarge { len, .. }) => {
                let result = Err(WireError::Other(reply_too_large(len)));
                self.transport
                    .send(self.to, Envelope::ForwardReply { request_id: self.request_id, result }.to_frame())
            }
            sent => sent,
        };
        if let Err(e) = sent {
            warn!(to = self.to, error = %e, "forward reply dropped");
        }
    }
}

/// Why a forwarded write that applied is answered with an error: its reply does not fit.
fn reply_too_large(bytes: usize) -> String {
    format!(
        "the write was applied, but its reply ({bytes} bytes) is larger than a peer frame: send such \
         writes to the shard's leader, or fewer at once"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_awaited_write_is_known_and_replies_reach_the_armed_copy() {
        let f = Forwarder::default();
        let a = f.open();
        let b = f.open();
        assert_eq!(b.seq, a.seq + 1);
        assert_eq!(f.oldest_pending(), a.seq);
        // A reply with no copy out is dropped; one to an armed copy arrives.
        f.complete(2, b.seq, Err(WireError::ProposalDropped));
        let mut rx = b.arm(2);
        // Only from a node a copy went to.
        f.complete(3, b.seq, Err(WireError::ProposalDropped));
        f.complete(2, b.seq, Err(WireError::Shutdown));
        assert_eq!(rx.try_recv().unwrap(), Err(WireError::Shutdown));
        let first = a.seq;
        a.answered();
        drop(a);
        assert_eq!(f.oldest_pending(), b.seq);
        let c = f.open();
        drop(b); // given up on
        assert_eq!(f.abandoned_since(first), vec![first + 1]);
        f.reported(&[first + 1]);
        assert!(f.abandoned_since(0).is_empty());
        // One below the oldest awaited write is covered by it and not listed.
        let d = f.open();
        drop(d);
        assert!(f.abandoned_since(first + 2).contains(&(first + 3)));
        assert!(f.abandoned_since(first + 4).is_empty(), "pruned below the floor");
        c.answered();
        drop(c);
        assert_eq!(f.oldest_pending(), first + 4, "none awaited: the next number");
        f.complete(2, first, Err(WireError::Shutdown));
    }

    /// The leader raises a session's floor to what each write's stamp says is the oldest write
    /// still awaited: no write may ever be below a floor some stamp made while it was awaited
    /// (it would be refused as expired on its first copy). Several threads open slots at once,
    /// as concurrent client writes do.
    #[test]
    fn no_stamp_claims_a_write_done_that_is_still_awaited() {
        let forwarder = Arc::new(Forwarder::default());
        let floor = Arc::new(Mutex::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (forwarder, floor) = (forwarder.clone(), floor.clone());
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let slot = forwarder.open();
                        let oldest = forwarder.oldest_pending();
                        let mut floor = floor.lock().unwrap();
                        assert!(slot.seq >= *floor, "write {} is below the floor {}", slot.seq, *floor);
                        *floor = (*floor).max(oldest.min(slot.seq));
                        drop(floor);
                        slot.answered();
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
    }

    #[test]
    fn each_forwarder_starts_its_numbers_somewhere_else() {
        let (a, b) = (Forwarder::default(), Forwarder::default());
        let (a, b) = (a.next_seq.load(Ordering::Relaxed), b.next_seq.load(Ordering::Relaxed));
        assert!(a.abs_diff(b) > 1 << 40, "{a} and {b}");
    }
}
