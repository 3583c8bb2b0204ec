//! SCAN: pages of the keyspace in the order of the keys' hashes (`crema::cache::scan_order`:
//! xxh3 cut to 52 bits, exact in the floating-point numbers some clients read cursors as), the
//! cursor being the hash the next page starts at, so a cursor stays valid across any writes,
//! leader changes and nodes (any node continues a scan another began).
//!
//! The entries live in hash maps with no order to resume from, so finding a page means walking
//! every key. One walk therefore keeps a *window* for its connection: the next keys in cursor
//! order, up to [`WINDOW_KEYS`]. The pages asked next with the cursors this connection was
//! answered come out of the window in O(COUNT), and a full iteration walks the keys about once
//! per [`WINDOW_KEYS`] keys instead of once per page (found from outside: every `SCAN 0 COUNT 10`
//! over a million keys walked them all, 520 ms, so a full iteration was hours of CPU). Windows
//! of all connections together hold at most [`WINDOW_BUDGET_BYTES`]; a walk that finds the
//! budget spent first empties the windows left unused longest, once unused for [`WINDOW_IDLE`]
//! (found from outside: sixteen idle connections that had each asked one SCAN held the whole
//! budget, and every later page walked every key), and keeps only its page when none is. An
//! emptied window's connection walks again from its cursor. Walks run on blocking threads (see
//! `crema::cache::keyspace::off_runtime`).
//!
//! What a scan promises is Redis's: a key live from the first call to the last is returned (a
//! window holds every matching key of its hash range as of its walk), and one written or
//! deleted in between may be returned or not, a deleted one possibly after its deletion.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crema::cache::keyspace::off_runtime;
use crema::cache::scan_order::smallest;

use super::{parse_int, Call, CmdError};
use crate::resp::Reply;

/// The most keys one walk keeps for the pages after the one it answers.
pub const WINDOW_KEYS: usize = 65_536;

/// What the windows of all connections of this process may hold together, in bytes: each key
/// weighs its length and 40 bytes (its hash and handle). Counted in bytes, not keys: keys sent
/// by a shard's holder are copies, and long ones filled a key budget's room many times over.
pub const WINDOW_BUDGET_BYTES: usize = 64 << 20;

/// What one key of a window weighs in [`WINDOW_BUDGET_BYTES`].
fn weight(key: &Bytes) -> usize {
    40 + key.len()
}

/// How long a window must go unused before a walk short of budget may empty it.
pub const WINDOW_IDLE: Duration = Duration::from_secs(10);

/// Bytes held by every connection's window.
static WINDOW_BYTES_HELD: AtomicUsize = AtomicUsize::new(0);

/// Every window that holds keys counted in [`WINDOW_BYTES_HELD`] (dropped ones are pruned when
/// the list is next looked at).
static WINDOWS: Mutex<Vec<Weak<Mutex<Held>>>> = Mutex::new(Vec::new());

/// The keys after the page a connection was last answered, in cursor order.
#[derive(Debug)]
pub struct ScanWindow {
    /// The cursor that continues this window (the one the connection was answered).
    cursor: u64,
    /// The pattern the keys were matched with.
    pattern: Option<Bytes>,
    /// Whether the walk left out matching keys past the window.
    more: bool,
    /// The keys, shared with [`WINDOWS`] so that a walk short of budget can empty them.
    held: Arc<Mutex<Held>>,
}

/// A window's keys and what they count in the budget.
#[derive(Debug)]
struct Held {
    /// Matching keys at or after the window's cursor, sorted by hash.
    keys: VecDeque<(u64, Bytes)>,
    /// Bytes counted in [`WINDOW_BYTES_HELD`] for this window.
    counted: usize,
    /// When the window's connection last took a page from it.
    used: Instant,
}

impl Held {
    /// Counts in the budget what this window holds beyond `free` keys (those of the page it
    /// answers, which leave with it).
    fn count(&mut self, free: usize) {
        let counted = self.keys.iter().skip(free).map(|(_, k)| weight(k)).sum();
        WINDOW_BYTES_HELD.fetch_add(counted, Ordering::Relaxed);
        self.counted += counted;
    }

    /// Empties the window and gives its budget back: its connection walks again for its next
    /// page. (Paging does not give budget back: the keys' room stays allocated until then.)
    fn empty(&mut self) {
        self.keys = VecDeque::new();
        WINDOW_BYTES_HELD.fetch_sub(std::mem::take(&mut self.counted), Ordering::Relaxed);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        WINDOW_BYTES_HELD.fetch_sub(self.counted, Ordering::Relaxed);
    }
}

/// Bytes the budget has room for.
fn room() -> usize {
    WINDOW_BUDGET_BYTES.saturating_sub(WINDOW_BYTES_HELD.load(Ordering::Relaxed))
}

/// What a walk would like free before it keeps a whole window: [`WINDOW_KEYS`] short keys.
const WINDOW_WANTS: usize = WINDOW_KEYS * 64;

/// Empties windows unused for `idle` or longer, the longest unused first, until the budget
/// has room for `want` bytes or none is left to empty.
fn reclaim(want: usize, idle: Duration) {
    let now = Instant::now();
    let mut idle_windows: Vec<(Instant, Arc<Mutex<Held>>)> = {
        let mut windows = WINDOWS.lock().expect("scan windows poisoned");
        windows.retain(|w| w.strong_count() > 0);
        windows
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|held| {
                // A window being paged now is in use: skipped.
                let used = held.try_lock().ok()?.used;
                (now.saturating_duration_since(used) >= idle).then_some((used, held))
            })
            .collect()
    };
    idle_windows.sort_by_key(|(used, _)| *used);
    for (_, held) in idle_windows {
        if room() >= want {
            return;
        }
        if let Ok(mut held) = held.try_lock() {
            held.empty();
        }
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
            // Kept for the next pages: a copy of its own, not the read buffer it came in.
            "MATCH" => pattern = Some(crate::resp::detached(value)),
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
    let mut window = call.session.scan.take();
    let (window, page) = match window.as_mut().and_then(|w| w.continued_page(cursor, pattern.as_ref(), count))
    {
        Some(page) => (window.expect("a window gave the page"), page),
        None => {
            let mut window = walk(call, cursor, count, pattern).await?;
            let page = window.next_page(count);
            (window, page)
        }
    };
    let reply = Reply::Array(vec![
        Reply::Bulk(Bytes::from(window.cursor.to_string())),
        Reply::Array(page.into_iter().map(Reply::Bulk).collect()),
    ]);
    if window.holds_keys() {
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
    if room() < WINDOW_WANTS {
        reclaim(WINDOW_WANTS, WINDOW_IDLE);
    }
    let keep = count.max(WINDOW_KEYS.min(room() / 64));
    let (keys, more) = if let Some(led) = call.primary_scope() {
        call.state.cache.scan_keys_in(&led, cursor, keep, pattern.as_deref(), true).await?
    } else if call.holds_every_shard() {
        call.read_barrier().await?;
        let (keyspace, matching) = (call.storage().clone(), pattern.clone());
        off_runtime(move || {
            smallest(|visit| keyspace.for_each_live_key(|k, _| visit(k)), cursor, keep, matching.as_deref())
        })
        .await?
    } else {
        // Shards held elsewhere send their next keys in scan order, a bounded answer each.
        call.state.cache.scan_keys(cursor, keep, pattern.as_deref(), true).await?
    };
    Ok(ScanWindow::new(cursor, pattern, keys.into(), more, count))
}

/// Cuts `keys` (sorted by hash) so that what follows the first `page` keys weighs at most
/// `room`, at a change of hash (keys sharing a hash stay together); answers whether it cut.
fn trim(keys: &mut VecDeque<(u64, Bytes)>, page: usize, room: usize) -> bool {
    let mut weighed = 0;
    for i in page.max(1)..keys.len() {
        weighed += weight(&keys[i].1);
        if weighed > room && keys[i].0 != keys[i - 1].0 {
            keys.truncate(i);
            return true;
        }
    }
    false
}

impl ScanWindow {
    /// A window of `keys` (sorted by hash, at or after `cursor`), the first `count` of them the
    /// page about to be answered; it counts the rest in the budget and can be emptied.
    fn new(
        cursor: u64,
        pattern: Option<Bytes>,
        mut keys: VecDeque<(u64, Bytes)>,
        more: bool,
        count: usize,
    ) -> Self {
        let more = trim(&mut keys, count, room()) || more;
        let mut held = Held { keys, counted: 0, used: Instant::now() };
        held.count(count);
        let held = Arc::new(Mutex::new(held));
        let mut windows = WINDOWS.lock().expect("scan windows poisoned");
        // Pruned when full, so the list grows only with windows alive.
        if windows.len() == windows.capacity() {
            windows.retain(|w| w.strong_count() > 0);
        }
        windows.push(Arc::downgrade(&held));
        drop(windows);
        Self { cursor, pattern, more, held }
    }

    /// Whether any key is left in the window (none once emptied for another walk).
    fn holds_keys(&self) -> bool {
        !self.held.lock().expect("scan window poisoned").keys.is_empty()
    }

    /// The page at `cursor` matching `pattern`, if it comes from this window: checked and
    /// taken under one lock, so a window emptied for another walk in between is not taken for
    /// the end of the scan.
    fn continued_page(&mut self, cursor: u64, pattern: Option<&Bytes>, count: usize) -> Option<Vec<Bytes>> {
        let held = Arc::clone(&self.held);
        let mut held = held.lock().expect("scan window poisoned");
        let continues = cursor != 0 && self.cursor == cursor && self.pattern.as_ref() == pattern;
        (continues && !held.keys.is_empty()).then(|| self.page_of(&mut held, count))
    }

    /// The next page: `count` keys and every one sharing the last one's hash; moves the cursor
    /// past them (0 when the scan is complete).
    fn next_page(&mut self, count: usize) -> Vec<Bytes> {
        let held = Arc::clone(&self.held);
        let mut held = held.lock().expect("scan window poisoned");
        self.page_of(&mut held, count)
    }

    /// [`Self::next_page`] from `held`, this window's keys, locked.
    fn page_of(&mut self, held: &mut Held, count: usize) -> Vec<Bytes> {
        held.used = Instant::now();
        let keys = &mut held.keys;
        let mut page = Vec::with_capacity(count.min(keys.len()));
        let mut last = None;
        while let Some((hash, _)) = keys.front() {
            if page.len() >= count && last != Some(*hash) {
                break;
            }
            let (hash, key) = keys.pop_front().expect("a front key");
            last = Some(hash);
            page.push(key);
        }
        self.cursor = match (keys.front(), last) {
            (Some((next, _)), _) => *next,
            (None, Some(last)) if self.more => last.checked_add(1).unwrap_or(0),
            // Nothing past the window: complete. (A walk that found nothing is complete too.)
            _ => 0,
        };
        page
    }
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
            let page = held.as_mut().and_then(|w| w.continued_page(cursor, None, count));
            let w = match page {
                Some(page) => {
                    pages.push(page);
                    held.as_mut().expect("paged")
                }
                None => {
                    walks += 1;
                    let (keys, more) =
                        smallest(|visit| all.iter().for_each(|k| _ = visit(k)), cursor, keep, None);
                    let w = held.insert(ScanWindow::new(cursor, None, keys.into(), more, count));
                    pages.push(w.next_page(count));
                    w
                }
            };
            cursor = w.cursor;
            if cursor == 0 {
                return (pages, walks);
            }
        }
    }

    /// A window of `n` keys whose first page of `count` was answered, last used `ago`.
    fn held_window(n: usize, count: usize, ago: Duration) -> ScanWindow {
        let keys = (0..n as u64).map(|i| (i, Bytes::from(format!("k{i}")))).collect();
        let mut window = ScanWindow::new(0, None, keys, false, count);
        window.next_page(count);
        window.held.lock().unwrap().used = Instant::now().checked_sub(ago).unwrap();
        window
    }

    #[test]
    fn a_walk_short_of_budget_empties_the_windows_unused_longest() {
        let idle = held_window(1000, 10, Duration::from_secs(30));
        let older = held_window(1000, 10, Duration::from_secs(60));
        let busy = held_window(1000, 10, Duration::ZERO);
        // Budget for no more than there is: only the idle windows, the oldest first, are emptied.
        reclaim(usize::MAX, Duration::from_secs(20));
        assert!(!idle.holds_keys() && !older.holds_keys(), "idle windows are emptied");
        assert!(busy.holds_keys(), "a window in use is kept");
        assert_eq!(idle.held.lock().unwrap().counted, 0, "an emptied window gives its budget back");
        let past_page: usize = (10..1000).map(|i| 40 + format!("k{i}").len()).sum();
        assert_eq!(busy.held.lock().unwrap().counted, past_page, "the keys past the first page count");

        // Its connection's next page walks again: the cursor is not taken for the end.
        let mut idle = idle;
        let cursor = idle.cursor;
        assert_ne!(cursor, 0);
        assert_eq!(idle.continued_page(cursor, None, 10), None);

        // With room enough, nothing is emptied.
        let kept = held_window(1000, 10, Duration::from_secs(60));
        reclaim(0, Duration::from_secs(20));
        assert!(kept.holds_keys());
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
    fn a_window_is_cut_to_the_room_left_keeping_its_page() {
        let mut keys: VecDeque<(u64, Bytes)> =
            [1, 2, 2, 3, 4].into_iter().map(|h| (h, Bytes::from(vec![b'k'; 60]))).collect();
        // Each key weighs 100: room for one past a page of one, and the key sharing its hash.
        assert!(trim(&mut keys, 1, 100));
        assert_eq!(keys.iter().map(|(h, _)| *h).collect::<Vec<_>>(), [1, 2, 2]);
        // No room at all: the page stays.
        assert!(trim(&mut keys, 1, 0));
        assert_eq!(keys.len(), 1);
        assert!(!trim(&mut keys, 1, 0));
    }

    #[test]
    fn an_empty_keyspace_is_one_empty_page() {
        let (pages, walks) = window(&[], 10, 10);
        assert_eq!((pages, walks), (vec![Vec::new()], 1));
    }
}
