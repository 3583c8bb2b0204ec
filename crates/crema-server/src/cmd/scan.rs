//! SCAN: pages of the keyspace in the order of the keys' hashes (xxh3), the cursor being the
//! hash the next page starts at, so a cursor stays valid across any writes, leader changes and
//! nodes (any node continues a scan another began).
//!
//! The entries live in hash maps with no order to resume from, so finding a page means walking
//! every key. One walk therefore keeps a *window* for its connection: the next keys in cursor
//! order, up to [`WINDOW_KEYS`]. The pages asked next with the cursors this connection was
//! answered come out of the window in O(COUNT), and a full iteration walks the keys about once
//! per [`WINDOW_KEYS`] keys instead of once per page (found from outside: every `SCAN 0 COUNT 10`
//! over a million keys walked them all, 520 ms, so a full iteration was hours of CPU). Windows
//! of all connections together hold at most [`WINDOW_BUDGET_KEYS`] keys; past that a walk keeps
//! only its page. Walks run on blocking threads (see `crema::cache::keyspace::off_runtime`).
//!
//! What a scan promises is Redis's: a key live from the first call to the last is returned (a
//! window holds every matching key of its hash range as of its walk), and one written or
//! deleted in between may be returned or not, a deleted one possibly after its deletion.

use std::collections::{BinaryHeap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use crema::cache::keyspace::off_runtime;
use crema::glob::glob_match;
use xxhash_rust::xxh3::xxh3_64;

use super::{parse_int, Call, CmdError};
use crate::resp::Reply;

/// The most keys one walk keeps for the pages after the one it answers.
pub const WINDOW_KEYS: usize = 65_536;

/// The most keys the windows of all connections of this process hold together (each key is
/// shared with the cache; a window's entry is its hash and a handle, 40 bytes).
pub const WINDOW_BUDGET_KEYS: usize = 1 << 20;

/// Keys held by every connection's window.
static WINDOW_KEYS_HELD: AtomicUsize = AtomicUsize::new(0);

/// The keys after the page a connection was last answered, in cursor order.
#[derive(Debug)]
pub struct ScanWindow {
    /// The cursor that continues this window (the one the connection was answered).
    cursor: u64,
    /// The pattern the keys were matched with.
    pattern: Option<Bytes>,
    /// Matching keys at or after `cursor`, sorted by hash.
    keys: VecDeque<(u64, Bytes)>,
    /// Whether the walk left out matching keys past the window.
    more: bool,
    /// Keys counted in [`WINDOW_KEYS_HELD`] for this window.
    counted: usize,
}

impl Drop for ScanWindow {
    fn drop(&mut self) {
        WINDOW_KEYS_HELD.fetch_sub(self.counted, Ordering::Relaxed);
    }
}

pub(super) async fn run(call: &mut Call<'_>) -> Result<Reply, CmdError> {
    let cursor: u64 = std::str::from_utf8(call.arg(1))
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CmdError::Invalid("invalid cursor".into()))?;
    let (mut pattern, mut count, mut strings_only) = (None, 10usize, true);
    let mut i = 2;
    while i < call.args.len() {
        let value = call.args.get(i + 1).ok_or(CmdError::Syntax)?;
        match call.option(i).as_str() {
            "MATCH" => pattern = Some(value.clone()),
            "COUNT" => {
                count = usize::try_from(parse_int(value)?).ok().filter(|c| *c > 0).ok_or(CmdError::Syntax)?;
            }
            "TYPE" => strings_only = value.eq_ignore_ascii_case(b"string"),
            _ => return Err(CmdError::Syntax),
        }
        i += 2;
    }
    if !strings_only {
        call.read_barrier().await?;
        return Ok(Reply::Array(vec![Reply::bulk("0"), Reply::Array(Vec::new())]));
    }
    let count = count.min(100_000);
    let window = call.session.scan.take().filter(|w| w.continues(cursor, pattern.as_ref()));
    let mut window = match window {
        Some(window) => window,
        None => walk(call, cursor, count, pattern).await?,
    };
    let page = window.next_page(count);
    let reply = Reply::Array(vec![
        Reply::Bulk(Bytes::from(window.cursor.to_string())),
        Reply::Array(page.into_iter().map(Reply::Bulk).collect()),
    ]);
    if !window.keys.is_empty() {
        call.session.scan = Some(window);
    }
    Ok(reply)
}

/// Walks the keyspace for the keys at or after `cursor` matching `pattern`: at least `count`
/// (and all sharing the last one's hash), as many more as the window may hold.
async fn walk(
    call: &mut Call<'_>,
    cursor: u64,
    count: usize,
    pattern: Option<Bytes>,
) -> Result<ScanWindow, CmdError> {
    let room = WINDOW_BUDGET_KEYS.saturating_sub(WINDOW_KEYS_HELD.load(Ordering::Relaxed));
    let keep = count.max(WINDOW_KEYS.min(room));
    let (keys, more) = if call.holds_every_shard() {
        call.read_barrier().await?;
        let (keyspace, matching) = (call.storage().clone(), pattern.clone());
        off_runtime(move || {
            smallest(|visit| keyspace.for_each_live_key(|k, _| visit(k)), cursor, keep, matching.as_deref())
        })
        .await?
    } else {
        // Shards held elsewhere send their matching keys; the window is cut from them all.
        let keys = call.live_keys(pattern.as_deref()).await?;
        off_runtime(move || smallest(|visit| keys.iter().for_each(|k| _ = visit(k)), cursor, keep, None))
            .await?
    };
    let counted = keys.len().saturating_sub(count);
    WINDOW_KEYS_HELD.fetch_add(counted, Ordering::Relaxed);
    Ok(ScanWindow { cursor, pattern, keys: keys.into(), more, counted })
}

impl ScanWindow {
    /// Whether the page at `cursor` matching `pattern` comes from this window.
    fn continues(&self, cursor: u64, pattern: Option<&Bytes>) -> bool {
        cursor != 0 && self.cursor == cursor && self.pattern.as_ref() == pattern && !self.keys.is_empty()
    }

    /// The next page: `count` keys and every one sharing the last one's hash; moves the cursor
    /// past them (0 when the scan is complete).
    fn next_page(&mut self, count: usize) -> Vec<Bytes> {
        let mut page = Vec::with_capacity(count.min(self.keys.len()));
        let mut last = None;
        while let Some((hash, _)) = self.keys.front() {
            if page.len() >= count && last != Some(*hash) {
                break;
            }
            let (hash, key) = self.keys.pop_front().expect("a front key");
            last = Some(hash);
            page.push(key);
        }
        self.cursor = match (self.keys.front(), last) {
            (Some((next, _)), _) => *next,
            (None, Some(last)) if self.more => last.checked_add(1).unwrap_or(0),
            // Nothing past the window: complete. (A walk that found nothing is complete too.)
            _ => 0,
        };
        page
    }
}

/// Of the keys `walk` visits, those matching `pattern` with the `keep` smallest hashes at or
/// after `cursor` (all keys sharing the largest kept hash included), sorted by hash, and
/// whether any matching key was left out.
fn smallest(
    walk: impl FnOnce(&mut dyn FnMut(&Bytes) -> bool),
    cursor: u64,
    keep: usize,
    pattern: Option<&[u8]>,
) -> (Vec<(u64, Bytes)>, bool) {
    let mut best: BinaryHeap<(u64, Bytes)> = BinaryHeap::new();
    let mut more = false;
    walk(&mut |key| {
        let hash = xxh3_64(key);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn window(keys: &[&str], keep: usize, count: usize) -> (Vec<Vec<Bytes>>, usize) {
        let all: Vec<Bytes> = keys.iter().map(|k| Bytes::from(k.to_string())).collect();
        let mut pages = Vec::new();
        let mut walks = 0;
        let mut cursor = 0;
        let mut held: Option<ScanWindow> = None;
        loop {
            let mut w = match held.take().filter(|w| w.continues(cursor, None)) {
                Some(w) => w,
                None => {
                    walks += 1;
                    let (keys, more) =
                        smallest(|visit| all.iter().for_each(|k| _ = visit(k)), cursor, keep, None);
                    ScanWindow { cursor, pattern: None, keys: keys.into(), more, counted: 0 }
                }
            };
            pages.push(w.next_page(count));
            cursor = w.cursor;
            if cursor == 0 {
                return (pages, walks);
            }
            held = Some(w);
        }
    }

    #[test]
    fn a_scan_returns_every_key_once_walking_once_per_window() {
        let keys: Vec<String> = (0..1000).map(|i| format!("key:{i}")).collect();
        let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
        for (keep, count) in [(1000, 10), (100, 10), (10, 10), (37, 3), (2000, 1)] {
            let (pages, walks) = window(&refs, keep, count);
            let mut seen: Vec<Bytes> = pages.concat();
            seen.sort();
            let mut expected: Vec<Bytes> = keys.iter().map(|k| Bytes::from(k.clone())).collect();
            expected.sort();
            assert_eq!(seen, expected, "keep {keep}, count {count}");
            assert_eq!(walks, 1000usize.div_ceil(keep), "keep {keep}, count {count}");
            assert!(pages.iter().all(|p| p.len() <= count), "keep {keep}, count {count}");
        }
    }

    #[test]
    fn an_empty_keyspace_is_one_empty_page() {
        let (pages, walks) = window(&[], 10, 10);
        assert_eq!((pages, walks), (vec![Vec::new()], 1));
    }
}
