//! The order SCAN pages the keyspace in: by [`scan_hash`], the cursor being the hash the next
//! page starts at, so a cursor is valid on any node and across any writes. A node that holds
//! none of a shard asks a holder for that shard's next keys in this order
//! (`RemoteRead::Scan`), a bounded answer, instead of for all of its keys (found from outside:
//! three hundred connections each asking `SCAN 0 COUNT 1` on such a node held a copy of the
//! shard's keys each, 4.7 GB, and a shard whose keys passed a peer frame could not be scanned
//! there at all).

use std::collections::BinaryHeap;

use bytes::Bytes;
use xxhash_rust::xxh3::xxh3_64;

use crate::glob::glob_match;

/// Bits of [`scan_hash`]: every cursor is exact in a JavaScript number or a double (found from
/// outside: node-redis v4 reads cursors with `Number()`, which rounded 64-bit ones, and its
/// `scanIterator` skipped keys silently).
pub const CURSOR_BITS: u32 = 52;

/// The most keys one shard's holder sends for one walk.
pub const MAX_SCAN_KEEP: usize = 65_536;

/// The position of `key` in a scan: its xxh3 hash cut to [`CURSOR_BITS`] bits.
pub fn scan_hash(key: &[u8]) -> u64 {
    xxh3_64(key) >> (64 - CURSOR_BITS)
}

/// Of the keys `walk` visits, those matching `pattern` with the `keep` smallest hashes at or
/// after `cursor` (all keys sharing the largest kept hash included), sorted by hash, and
/// whether any matching key was left out.
pub fn smallest(
    walk: impl FnOnce(&mut dyn FnMut(&Bytes) -> bool),
    cursor: u64,
    keep: usize,
    pattern: Option<&[u8]>,
) -> (Vec<(u64, Bytes)>, bool) {
    let mut best: BinaryHeap<(u64, Bytes)> = BinaryHeap::new();
    let mut more = false;
    walk(&mut |key| {
        let hash = scan_hash(key);
        if hash < cursor || pattern.is_some_and(|p| !glob_match(p, key)) {
            return true;
        }
        best.push((hash, key.clone()));
        if best.len() > keep {
            more = true;
            let dropped = best.pop().expect("heap is not empty");
            // Keep keys that share the largest kept hash, so none is skipped by the next cursor.
            if best.peek().is_some_and(|(top, _)| *top == dropped.0) {
                best.push(dropped);
            }
        }
        true
    });
    let mut kept = best.into_vec();
    kept.sort_unstable();
    (kept, more)
}

/// Cuts `kept` (sorted by hash) to about `budget` bytes of keys, keeping every key that shares
/// the last kept hash and at least one hash's keys; answers whether it cut anything.
pub fn cut_to_bytes(kept: &mut Vec<(u64, Bytes)>, budget: usize) -> bool {
    let mut bytes = 0;
    let mut end = kept.len();
    for (i, (hash, key)) in kept.iter().enumerate() {
        bytes += 8 + key.len();
        if bytes > budget && i > 0 && kept[i - 1].0 != *hash {
            end = i;
            break;
        }
    }
    let cut = end < kept.len();
    kept.truncate(end);
    cut
}

/// The next keys in scan order of several shards' answers, each sorted by hash with whether
/// its shard left keys out: only keys up to the smallest last hash of the shards that left
/// some out are certain to be all there is, so the merge stops there; then the `keep`
/// smallest, as [`smallest`] takes them. Answers the keys and whether any were left out.
pub fn merge(answers: Vec<(Vec<(u64, Bytes)>, bool)>, keep: usize) -> (Vec<(u64, Bytes)>, bool) {
    let bound =
        answers.iter().filter(|(_, more)| *more).filter_map(|(keys, _)| keys.last().map(|(h, _)| *h)).min();
    let truncated = answers.iter().any(|(_, more)| *more);
    let mut all: Vec<(u64, Bytes)> = answers
        .into_iter()
        .flat_map(|(keys, _)| keys)
        .filter(|(hash, _)| bound.is_none_or(|b| *hash <= b))
        .collect();
    all.sort_unstable();
    let mut end = all.len().min(keep);
    while end > 0 && end < all.len() && all[end].0 == all[end - 1].0 {
        end += 1;
    }
    let more = truncated || end < all.len();
    all.truncate(end);
    (all, more)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: usize) -> Vec<Bytes> {
        (0..n).map(|i| Bytes::from(format!("key:{i}"))).collect()
    }

    fn walk(all: &[Bytes]) -> impl FnOnce(&mut dyn FnMut(&Bytes) -> bool) + '_ {
        move |visit| all.iter().for_each(|k| _ = visit(k))
    }

    #[test]
    fn cursors_fit_a_double() {
        assert!(keys(10_000).iter().all(|k| scan_hash(k) < 1 << 53));
    }

    #[test]
    fn merged_shard_answers_page_like_one_keyspace() {
        // Three "shards" answering with at most 50 keys each, and cut to bytes now and then:
        // a scan over the merges returns every key once, in hash order.
        let all = keys(1000);
        let shards: Vec<Vec<Bytes>> =
            (0..3).map(|s| all.iter().skip(s).step_by(3).cloned().collect()).collect();
        let (mut cursor, mut seen, mut rounds) = (0u64, Vec::new(), 0);
        loop {
            rounds += 1;
            let answers = shards
                .iter()
                .enumerate()
                .map(|(s, keys)| {
                    let (mut kept, more) = smallest(walk(keys), cursor, 50, None);
                    let cut = s == rounds % 3 && cut_to_bytes(&mut kept, 200);
                    (kept, more || cut)
                })
                .collect();
            let (page, more) = merge(answers, 40);
            assert!(page.windows(2).all(|w| w[0].0 <= w[1].0));
            seen.extend(page.iter().map(|(_, k)| k.clone()));
            match page.last() {
                Some((last, _)) if more => cursor = last + 1,
                _ => break,
            }
        }
        let mut expected = all.clone();
        expected.sort();
        seen.sort();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_cut_keeps_at_least_one_hash() {
        let mut kept = vec![(1, Bytes::from(vec![b'x'; 100])), (2, Bytes::from("y"))];
        assert!(cut_to_bytes(&mut kept, 10));
        assert_eq!(kept.len(), 1);
        let mut whole = vec![(1, Bytes::from("a")), (2, Bytes::from("b"))];
        assert!(!cut_to_bytes(&mut whole, 1000));
        assert_eq!(whole.len(), 2);
    }
}
