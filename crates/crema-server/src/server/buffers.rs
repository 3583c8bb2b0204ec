//! The query-buffer memory of all clients together, and Redis's client eviction: when the
//! unparsed request bytes of every connection pass `--max-total-query-buffer-bytes`, the
//! connections holding the largest buffers are closed first until the total is under the cap.
//! Without it, many clients each sending part of a large bulk (under the per-client limit) could
//! grow the node's memory without bound.
//!
//! Only buffers of at least [`QueryBuffers::TRACKED_BYTES`] are tracked: small requests, the
//! common case, never touch the lock, and what they hold together is bounded by the client cap.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

/// The tracked buffers.
#[derive(Debug)]
pub struct QueryBuffers {
    cap: usize,
    held: Mutex<HashMap<u64, (usize, CancellationToken)>>,
    total: AtomicUsize,
    evicted: AtomicU64,
}

impl QueryBuffers {
    /// Buffers smaller than this are not tracked.
    pub const TRACKED_BYTES: usize = 64 * 1024;

    /// Buffers capped at `cap` bytes in all (0: no cap).
    pub fn new(cap: usize) -> Self {
        Self { cap, held: Mutex::default(), total: AtomicUsize::new(0), evicted: AtomicU64::new(0) }
    }

    /// Records that connection `id` (closed by cancelling `evict`) buffers `bytes`, then evicts
    /// the largest buffers while the total is over the cap (the caller's own included). Answers
    /// whether the connection is tracked now (it must then call [`Self::leave`] when it closes).
    pub fn update(&self, id: u64, bytes: usize, evict: &CancellationToken) -> bool {
        let mut held = self.held.lock().expect("query buffers poisoned");
        let before = held.get(&id).map_or(0, |(b, _)| *b);
        let tracked = bytes >= Self::TRACKED_BYTES;
        if tracked {
            held.insert(id, (bytes, evict.clone()));
        } else {
            held.remove(&id);
        }
        let mut total = self.total.load(Ordering::Relaxed) - before + if tracked { bytes } else { 0 };
        while self.cap > 0 && total > self.cap {
            let Some((&largest, _)) = held.iter().max_by_key(|(_, (b, _))| *b) else { break };
            let (bytes, token) = held.remove(&largest).expect("found above");
            token.cancel();
            total -= bytes;
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        self.total.store(total, Ordering::Relaxed);
        held.contains_key(&id)
    }

    /// Forgets connection `id` (it closed or its buffer shrank).
    pub fn leave(&self, id: u64) {
        let mut held = self.held.lock().expect("query buffers poisoned");
        if let Some((bytes, _)) = held.remove(&id) {
            self.total.fetch_sub(bytes, Ordering::Relaxed);
        }
    }

    /// Bytes held by the tracked buffers now.
    pub fn total_bytes(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Connections closed to bring the total under the cap, since start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: usize = QueryBuffers::TRACKED_BYTES;

    #[test]
    fn the_largest_buffers_go_first_until_under_the_cap() {
        let buffers = QueryBuffers::new(10 * K);
        let tokens: Vec<CancellationToken> = (0..4).map(|_| CancellationToken::new()).collect();
        assert!(buffers.update(0, 3 * K, &tokens[0]));
        assert!(buffers.update(1, 5 * K, &tokens[1]));
        assert!(!buffers.update(2, K - 1, &tokens[2]), "small buffers are not tracked");
        assert_eq!(buffers.total_bytes(), 8 * K);
        // 3 + 5 + 4 = 12 > 10: the 5 goes.
        assert!(buffers.update(3, 4 * K, &tokens[3]));
        assert!(tokens[1].is_cancelled() && !tokens[0].is_cancelled() && !tokens[3].is_cancelled());
        assert_eq!((buffers.total_bytes(), buffers.evicted()), (7 * K, 1));
        // The one growing can be the largest: it closes itself.
        assert!(!buffers.update(0, 9 * K, &tokens[0]));
        assert!(tokens[0].is_cancelled());
        buffers.leave(3);
        assert_eq!(buffers.total_bytes(), 0);
    }

    #[test]
    fn shrinking_and_no_cap() {
        let buffers = QueryBuffers::new(0);
        let token = CancellationToken::new();
        assert!(buffers.update(1, 1 << 30, &token));
        assert!(!token.is_cancelled(), "no cap, no eviction");
        assert!(!buffers.update(1, 10, &token));
        assert_eq!(buffers.total_bytes(), 0);
    }
}
