//! [`SnapshotAssembler`]: puts a snapshot sent in pieces (`Envelope::SnapshotChunk`) back
//! together. Pure bookkeeping, no I/O.
//!
//! One transfer per (peer, group) is assembled at a time; a first piece starts a new one and
//! drops any unfinished one. A piece that does not continue its transfer exactly (wrong transfer,
//! gap, overlap, more bytes than announced) drops the transfer: the leader notices the follower
//! is still behind and sends a new snapshot. The announced size is checked against a limit
//! before anything is buffered for it.
//!
//! Memory is bounded: the buffers of the transfers in progress together hold at most
//! [`ASSEMBLY_BUDGET_BYTES`] (a new transfer, or a piece, that does not fit drops its transfer,
//! and its leader sends it again later), and a transfer that received nothing for
//! [`ASSEMBLY_EXPIRY`] (its sender died, or moved on) is dropped. What counts is the memory a
//! transfer holds (its buffer grows as pieces arrive, doubling up to the announced size), not
//! the size it announced: found from outside, one forged announcement of 8 GiB, with nothing
//! sent after it, kept every other sender's snapshots out for the expiry.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::Message;

use crate::types::{NodeId, ShardId};

/// Largest snapshot accepted, bytes.
pub const MAX_SNAPSHOT_BYTES: u64 = 8 << 30;
/// What the transfers in progress may announce together, bytes.
pub const ASSEMBLY_BUDGET_BYTES: u64 = MAX_SNAPSHOT_BYTES;
/// A transfer that received no piece for this long is dropped.
pub const ASSEMBLY_EXPIRY: Duration = Duration::from_secs(60);

struct Assembly {
    transfer: u64,
    header: Bytes,
    total_len: u64,
    data: Vec<u8>,
    /// When its last piece arrived.
    touched: Instant,
}

/// One piece, as it arrived.
#[derive(Debug, Clone)]
pub struct Piece {
    /// Which transfer.
    pub transfer: u64,
    /// The message without data (first piece only).
    pub header: Option<Bytes>,
    /// Announced size of the data.
    pub total_len: u64,
    /// Where this piece starts.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
}

/// The most a new transfer's buffer starts with, bytes (it grows as pieces arrive).
const FIRST_BUFFER_BYTES: u64 = 64 << 20;

/// Snapshots being received, by sender and group.
pub struct SnapshotAssembler {
    in_progress: HashMap<(NodeId, ShardId), Assembly>,
    /// What the transfers' buffers may hold together ([`ASSEMBLY_BUDGET_BYTES`]).
    budget: u64,
}

impl Default for SnapshotAssembler {
    fn default() -> Self {
        Self::with_budget(ASSEMBLY_BUDGET_BYTES)
    }
}

impl SnapshotAssembler {
    /// An assembler whose transfers' buffers hold at most `budget` bytes together.
    pub fn with_budget(budget: u64) -> Self {
        Self { in_progress: HashMap::new(), budget }
    }

    /// What the buffers of the transfers in progress hold, bytes, leaving out `except`'s.
    fn held(&self, except: Option<(NodeId, ShardId)>) -> u64 {
        let others = self.in_progress.iter().filter(|(key, _)| Some(**key) != except);
        others.map(|(_, a)| a.data.capacity() as u64).sum()
    }

    /// Drops the transfers that received nothing for [`ASSEMBLY_EXPIRY`]. Called on every
    /// piece and by the node's keep-alive beat: found from outside, an abandoned transfer's
    /// 400 MB stayed until some other piece arrived, which may be never.
    pub fn expire(&mut self, now: Instant) {
        self.in_progress.retain(|_, a| now.saturating_duration_since(a.touched) < ASSEMBLY_EXPIRY);
    }

    /// Takes one piece from `from` for `shard`. Answers the whole Raft message once its last
    /// piece arrived, `Ok(None)` while more are expected.
    ///
    /// # Errors
    /// Why the piece (and its transfer) was dropped.
    pub fn accept(
        &mut self,
        from: NodeId,
        shard: ShardId,
        piece: Piece,
        now: Instant,
    ) -> Result<Option<Message>, String> {
        let key = (from, shard);
        // On every piece too: an abandoned transfer's memory goes when it expires, not when the
        // next transfer starts.
        self.expire(now);
        if let Some(header) = piece.header {
            self.in_progress.remove(&key);
            if piece.total_len > MAX_SNAPSHOT_BYTES {
                return Err(format!(
                    "snapshot of {} bytes is over the limit of {MAX_SNAPSHOT_BYTES}",
                    piece.total_len
                ));
            }
            let held = self.held(None);
            let first = piece.total_len.min(FIRST_BUFFER_BYTES).min(self.budget / 16);
            if held + first > self.budget {
                return Err(format!(
                    "snapshot of {} bytes does not fit beside the {held} bytes held for others \
                     (budget {}); its leader sends it again later",
                    piece.total_len, self.budget
                ));
            }
            let assembly = Assembly {
                transfer: piece.transfer,
                header,
                total_len: piece.total_len,
                data: Vec::with_capacity(first as usize),
                touched: now,
            };
            self.in_progress.insert(key, assembly);
        }
        let Some(assembly) = self.in_progress.get_mut(&key) else {
            return Err(format!("piece of transfer {} without its first piece", piece.transfer));
        };
        let fits = assembly.transfer == piece.transfer
            && piece.offset == assembly.data.len() as u64
            && piece.total_len == assembly.total_len
            && piece.offset + piece.data.len() as u64 <= assembly.total_len;
        if !fits {
            self.in_progress.remove(&key);
            return Err(format!(
                "piece at {} of transfer {} does not continue it",
                piece.offset, piece.transfer
            ));
        }
        let needed = assembly.data.len() + piece.data.len();
        if needed > assembly.data.capacity() {
            // Doubling (copies stay linear in the size), never past the announced size.
            let grown = (2 * assembly.data.capacity()).max(needed).min(assembly.total_len as usize);
            let held = self.held(Some(key));
            if held + grown as u64 > self.budget {
                self.in_progress.remove(&key);
                return Err(format!(
                    "snapshot transfer {} would hold {grown} bytes beside the {held} held for others \
                     (budget {}); dropped, its leader sends it again later",
                    piece.transfer, self.budget
                ));
            }
            let assembly = self.in_progress.get_mut(&key).expect("looked up above");
            assembly.data.reserve_exact(grown - assembly.data.len());
        }
        let assembly = self.in_progress.get_mut(&key).expect("looked up above");
        assembly.data.extend_from_slice(&piece.data);
        assembly.touched = now;
        if (assembly.data.len() as u64) < assembly.total_len {
            return Ok(None);
        }
        let assembly = self.in_progress.remove(&key).expect("present above");
        let mut msg =
            Message::parse_from_bytes(&assembly.header).map_err(|e| format!("undecodable header: {e}"))?;
        msg.mut_snapshot().data = Bytes::from(assembly.data);
        Ok(Some(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::MessageType;

    fn header() -> Bytes {
        let mut msg = Message::default();
        msg.set_msg_type(MessageType::MsgSnapshot);
        msg.to = 2;
        msg.mut_snapshot().mut_metadata().index = 77;
        Bytes::from(msg.write_to_bytes().unwrap())
    }

    fn piece(transfer: u64, first: bool, total: u64, offset: u64, data: &'static [u8]) -> Piece {
        Piece {
            transfer,
            header: first.then(header),
            total_len: total,
            offset,
            data: Bytes::from_static(data),
        }
    }

    impl SnapshotAssembler {
        fn accept_now(
            &mut self,
            from: NodeId,
            shard: ShardId,
            piece: Piece,
        ) -> Result<Option<Message>, String> {
            self.accept(from, shard, piece, Instant::now())
        }
    }

    #[test]
    fn transfers_share_a_budget_and_idle_ones_expire() {
        // First buffers of 10 bytes (a sixteenth of the budget).
        let mut a = SnapshotAssembler::with_budget(160);
        let t0 = Instant::now();
        let filled = |len: usize| -> &'static [u8] { Box::leak(vec![b'x'; len].into_boxed_slice()) };
        // Two transfers announce more than the budget together, and hold what they received.
        a.accept(1, 0, piece(1, true, 150, 0, filled(60)), t0).unwrap();
        a.accept(1, 1, piece(1, true, 150, 0, filled(60)), t0).unwrap();
        // A third's first 50 bytes do not fit beside the 120 bytes they hold...
        let refused = a.accept(2, 0, piece(1, true, 100, 0, filled(50)), t0);
        assert!(refused.unwrap_err().contains("budget"));
        // ... nor does a first buffer (10 bytes) beside 155.
        a.accept(3, 0, piece(1, true, 100, 0, filled(35)), t0).unwrap();
        assert!(a.accept(4, 0, piece(1, true, 100, 0, b""), t0).unwrap_err().contains("budget"));
        assert!(a.accept(3, 0, piece(1, false, 100, 99, b"x"), t0).is_err(), "a gap drops it, and its bytes");
        // ... and neither does more of one of them: it is dropped, the other goes on.
        assert!(a.accept(1, 0, piece(1, false, 150, 60, filled(60)), t0).unwrap_err().contains("budget"));
        a.accept(1, 1, piece(1, false, 150, 60, filled(60)), t0).unwrap();
        // It goes silent past the expiry, and its memory goes with it.
        let after = t0 + ASSEMBLY_EXPIRY + Duration::from_secs(1);
        a.accept(2, 0, piece(1, true, 100, 0, filled(100)), after).unwrap();
        assert!(
            a.accept(1, 1, piece(1, false, 150, 120, filled(30)), after).is_err(),
            "the silent one was dropped"
        );
        // A restarted transfer of the same sender and group replaces its own buffer.
        a.accept(2, 0, piece(2, true, 100, 0, filled(100)), after).unwrap();
    }

    #[test]
    fn an_announced_size_holds_no_memory_until_pieces_arrive() {
        // Found from outside: one announcement of 8 GiB, and nothing after it, kept every
        // other sender's snapshots out for the expiry.
        let mut a = SnapshotAssembler::default();
        let t0 = Instant::now();
        a.accept(9, 0, piece(1, true, MAX_SNAPSHOT_BYTES, 0, b""), t0).unwrap();
        a.accept(9, 1, piece(1, true, MAX_SNAPSHOT_BYTES, 0, b""), t0).unwrap();
        for shard in 0..8 {
            a.accept(2, shard, piece(1, true, 100, 0, b"abc"), t0).unwrap();
        }
        let msg = a.accept(3, 0, piece(1, true, 3, 0, b"abc"), t0).unwrap().unwrap();
        assert_eq!(msg.get_snapshot().data.as_ref(), b"abc");
        assert!(a.held(None) <= 2 * FIRST_BUFFER_BYTES + 8 * 100);
    }

    #[test]
    fn an_abandoned_transfer_expires_without_another_piece() {
        let mut a = SnapshotAssembler::default();
        let t0 = Instant::now();
        a.accept(1, 0, piece(1, true, 10, 0, b"a"), t0).unwrap();
        a.expire(t0 + ASSEMBLY_EXPIRY / 2);
        assert_eq!(a.in_progress.len(), 1, "not idle long enough");
        a.expire(t0 + ASSEMBLY_EXPIRY + Duration::from_secs(1));
        assert!(a.in_progress.is_empty(), "its memory is freed");
    }

    #[test]
    fn pieces_in_order_make_the_message() {
        let mut a = SnapshotAssembler::default();
        assert!(a.accept_now(1, 0, piece(1, true, 6, 0, b"abc")).unwrap().is_none());
        let msg = a.accept_now(1, 0, piece(1, false, 6, 3, b"def")).unwrap().unwrap();
        assert_eq!(msg.get_snapshot().get_metadata().index, 77);
        assert_eq!(msg.get_snapshot().data.as_ref(), b"abcdef");
        let empty = a.accept_now(1, 0, piece(2, true, 0, 0, b"")).unwrap().unwrap();
        assert!(empty.get_snapshot().data.is_empty(), "an empty snapshot is one piece");
    }

    #[test]
    fn a_gap_another_transfer_or_too_many_bytes_drop_the_transfer() {
        let mut a = SnapshotAssembler::default();
        a.accept_now(1, 0, piece(1, true, 6, 0, b"abc")).unwrap();
        assert!(a.accept_now(1, 0, piece(1, false, 6, 4, b"ef")).is_err(), "gap");
        assert!(
            a.accept_now(1, 0, piece(1, false, 6, 3, b"def")).is_err(),
            "dropped: the rest is refused too"
        );
        a.accept_now(1, 0, piece(3, true, 4, 0, b"ab")).unwrap();
        assert!(a.accept_now(1, 0, piece(4, false, 4, 2, b"cd")).is_err(), "another transfer");
        a.accept_now(1, 0, piece(5, true, 4, 0, b"ab")).unwrap();
        assert!(a.accept_now(1, 0, piece(5, false, 4, 2, b"cde")).is_err(), "more than announced");
        assert!(
            a.accept_now(1, 0, piece(6, true, MAX_SNAPSHOT_BYTES + 1, 0, b"")).is_err(),
            "over the limit"
        );
        // Another sender's transfer is separate.
        a.accept_now(1, 0, piece(7, true, 2, 0, b"a")).unwrap();
        a.accept_now(3, 0, piece(1, true, 2, 0, b"x")).unwrap();
        assert_eq!(
            a.accept_now(1, 0, piece(7, false, 2, 1, b"b")).unwrap().unwrap().get_snapshot().data.as_ref(),
            b"ab"
        );
    }
}
