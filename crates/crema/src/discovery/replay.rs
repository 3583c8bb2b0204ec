//! Replay protection for gossip signed with the cluster secret.
//!
//! A signed packet carries, under its tag, a stamp: the sender's node id, its boot (the start
//! time of the sender's process in milliseconds, the same clock that orders a restarted
//! node's gossip identity over its former self) and a sequence number counted from 1 for each
//! packet it sends. A receiver keeps, per sender, the latest boot it heard and a window of
//! the last 64 sequence numbers of that boot (the anti-replay window of IPsec, RFC 4303
//! section 3.4.3, over one `u64`): a packet of an earlier boot, one already seen, or one older
//! than the window is dropped. Packets reordered within the window still pass, so gossip over
//! UDP loses nothing to it; a sender that restarts starts a new window with its later boot.
//! A sender silent for `SILENT` may come back with an earlier boot (its clock was set back
//! across a restart): then that boot starts the window, rather than the node being shut out
//! until every peer restarts.
//!
//! What is left: a receiver that has not heard a sender since it started itself (its window is
//! empty) accepts an ascending run of recorded packets of that sender, each once, until the
//! sender's own packets move the window past them; most of them name the receiver's former
//! identity as their destination, which foca drops. Written by hand: the stamp is this
//! protocol's own framing, and the window is a dozen lines; no crate does it for a custom UDP
//! packet.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::types::NodeId;

/// Bytes of a [`Stamp`] on the wire.
pub(super) const STAMP_BYTES: usize = 24;
/// Sequence numbers a window remembers below the highest seen.
const WINDOW: u64 = 64;
/// How long a sender must have been silent before an earlier boot of it is taken.
pub(super) const SILENT: Duration = Duration::from_secs(10);

/// Who sent a packet, in which life of its process, and its number in that life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    pub(super) node: NodeId,
    pub(super) boot: u64,
    pub(super) seq: u64,
}

impl Stamp {
    pub(super) fn encode(&self) -> [u8; STAMP_BYTES] {
        let mut out = [0u8; STAMP_BYTES];
        out[..8].copy_from_slice(&self.node.to_be_bytes());
        out[8..16].copy_from_slice(&self.boot.to_be_bytes());
        out[16..].copy_from_slice(&self.seq.to_be_bytes());
        out
    }

    /// The stamp at the end of `data`, and what comes before it.
    pub(super) fn split(data: &[u8]) -> Option<(&[u8], Self)> {
        let at = data.len().checked_sub(STAMP_BYTES)?;
        let (body, stamp) = data.split_at(at);
        let word = |i: usize| u64::from_be_bytes(stamp[i..i + 8].try_into().expect("8 bytes"));
        Some((body, Self { node: word(0), boot: word(8), seq: word(16) }))
    }
}

/// The stamps a sender puts on its packets.
#[derive(Debug)]
pub(super) struct Stamper {
    node: NodeId,
    boot: u64,
    sent: u64,
}

impl Stamper {
    pub(super) fn new(node: NodeId, boot: u64) -> Self {
        Self { node, boot, sent: 0 }
    }

    pub(super) fn next(&mut self) -> Stamp {
        self.sent += 1;
        Stamp { node: self.node, boot: self.boot, seq: self.sent }
    }
}

/// Per sender: its latest boot, the highest sequence number of it seen, which of the
/// `WINDOW` numbers below it were seen (bit `i`: `highest - i`), and when it last got one in.
#[derive(Debug, Clone, Copy)]
struct Window {
    boot: u64,
    highest: u64,
    seen: u64,
    last: Instant,
}

/// What a receiver remembers of every sender (one entry per node id that ever sent a packet
/// with a valid tag: bounded by the cluster, as only holders of the secret get this far).
#[derive(Debug, Default)]
pub(super) struct ReplayGuard {
    senders: HashMap<NodeId, Window>,
}

impl ReplayGuard {
    /// Whether a packet with a valid tag and this stamp, received at `now`, is taken: not of an
    /// earlier boot of its sender (unless that sender was silent for `SILENT`), not seen
    /// before, not older than the window. Taking it records it.
    pub(super) fn admit(&mut self, stamp: Stamp, now: Instant) -> bool {
        let fresh = Window { boot: stamp.boot, highest: stamp.seq, seen: 1, last: now };
        let window = match self.senders.entry(stamp.node) {
            Entry::Vacant(first) => {
                first.insert(fresh);
                return true;
            }
            Entry::Occupied(known) => known.into_mut(),
        };
        if stamp.boot != window.boot {
            // A later boot is the sender's next life; an earlier one only after `SILENT`.
            let taken = stamp.boot > window.boot || now.saturating_duration_since(window.last) >= SILENT;
            if taken {
                *window = fresh;
            }
            return taken;
        }
        if stamp.seq > window.highest {
            let shift = stamp.seq - window.highest;
            window.seen = if shift >= WINDOW { 0 } else { window.seen << shift };
            window.seen |= 1;
            window.highest = stamp.seq;
            window.last = now;
            return true;
        }
        let below = window.highest - stamp.seq;
        if below >= WINDOW {
            return false;
        }
        let bit = 1u64 << below;
        if window.seen & bit != 0 {
            return false;
        }
        window.seen |= bit;
        window.last = now;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(node: NodeId, boot: u64, seq: u64) -> Stamp {
        Stamp { node, boot, seq }
    }

    fn now() -> Instant {
        Instant::now()
    }

    #[test]
    fn a_stamp_survives_the_wire_and_splits_off_its_packet() {
        let s = stamp(7, 1_733_000_000_000, 42);
        let mut packet = b"foca bytes".to_vec();
        packet.extend_from_slice(&s.encode());
        assert_eq!(Stamp::split(&packet), Some((&b"foca bytes"[..], s)));
        assert_eq!(Stamp::split(&[0u8; STAMP_BYTES - 1]), None);
    }

    #[test]
    fn each_packet_is_taken_once_in_any_order_within_the_window() {
        let mut guard = ReplayGuard::default();
        let mut stamper = Stamper::new(1, 100);
        let sent: Vec<Stamp> = (0..10).map(|_| stamper.next()).collect();
        // Delivered out of order: all taken.
        for i in [0, 3, 1, 2, 9, 5, 4, 8, 6, 7] {
            assert!(guard.admit(sent[i], now()), "packet {i} refused");
        }
        // Every one of them again: all refused.
        for (i, s) in sent.iter().enumerate() {
            assert!(!guard.admit(*s, now()), "packet {i} taken twice");
        }
    }

    #[test]
    fn packets_older_than_the_window_or_of_an_earlier_boot_are_refused() {
        let mut guard = ReplayGuard::default();
        assert!(guard.admit(stamp(1, 100, 1), now()));
        assert!(guard.admit(stamp(1, 100, 1 + WINDOW + 5), now()));
        // Never seen, but too old to tell: refused.
        assert!(!guard.admit(stamp(1, 100, 2), now()));
        // Just inside the window: taken once.
        assert!(guard.admit(stamp(1, 100, 6 + 1), now()));
        assert!(!guard.admit(stamp(1, 100, 6 + 1), now()));
        // The sender restarted: its new life starts a new window, its former one is over.
        assert!(guard.admit(stamp(1, 200, 1), now()));
        assert!(!guard.admit(stamp(1, 100, 1 + WINDOW + 6), now()));
        assert!(!guard.admit(stamp(1, 200, 1), now()));
        assert!(guard.admit(stamp(1, 200, 2), now()));
        // Senders have windows of their own.
        assert!(guard.admit(stamp(2, 100, 1), now()));
        assert!(guard.admit(stamp(2, 100, 2), now()));
    }

    #[test]
    fn a_sequence_far_ahead_clears_the_window() {
        let mut guard = ReplayGuard::default();
        for seq in 1..=64 {
            assert!(guard.admit(stamp(3, 5, seq), now()));
        }
        assert!(guard.admit(stamp(3, 5, 1_000), now()));
        assert!(!guard.admit(stamp(3, 5, 1_000), now()));
        assert!(guard.admit(stamp(3, 5, 999), now()));
        assert!(!guard.admit(stamp(3, 5, 64), now()));
    }

    #[test]
    fn an_earlier_boot_is_taken_only_from_a_sender_silent_for_a_while() {
        let mut guard = ReplayGuard::default();
        let t0 = Instant::now();
        assert!(guard.admit(stamp(4, 500, 1), t0));
        assert!(guard.admit(stamp(4, 500, 2), t0 + Duration::from_secs(1)));
        // A recorded packet of its former life, while it talks: refused.
        assert!(!guard.admit(stamp(4, 400, 9), t0 + Duration::from_secs(2)));
        // It restarted with its clock set back and has been silent since: its new life is taken,
        // and its later packets too.
        let back = t0 + Duration::from_secs(1) + SILENT;
        assert!(guard.admit(stamp(4, 450, 1), back));
        assert!(guard.admit(stamp(4, 450, 2), back));
        assert!(!guard.admit(stamp(4, 450, 1), back));
    }
}
