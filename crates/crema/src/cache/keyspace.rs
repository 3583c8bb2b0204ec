//! [`Keyspace`]: the node's local caches, one per shard, read as one.
//!
//! Each shard keeps its own [`CacheStorage`] (its own entries, apply clock, copy-on-write
//! capture and eviction policy), so a snapshot installed for one shard, or its `Clear`, touches
//! no other. Reads by key go to the key's shard; counts and walks cover every shard.
//!
//! Walks over every key (KEYS, SCAN, DBSIZE, RANDOMKEY, and peers asking for a shard's keys)
//! run on tokio's blocking threads through [`off_runtime`]: over millions of keys, with a long
//! glob pattern, one takes seconds, and on a runtime worker it stalled the Raft groups, peer
//! links and clients sharing that worker (found from outside: one KEYS froze a node for 23 s,
//! two cost a shard its leader).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::Semaphore;

use super::storage::{CacheStats, CacheStorage, StoredValue};
use crate::error::{Error, Result};
use crate::glob::glob_match;
use crate::multiraft::ShardRouter;
use crate::types::ShardId;

/// Runs `walk` (a walk over a cache's keys) on a blocking thread and answers its result;
/// [`Error::Shutdown`] when the runtime stops first.
///
/// When the returned future is dropped before the walk ends (the client left, its connection
/// was killed, the node is stopping), the walk stops within a few dozen keys: the caches'
/// walks ask `walk_abandoned` as they go. Found from outside: KEYS walks over millions of keys
/// ran on for their whole length after their clients had gone, and held a stopping node 45 s.
///
/// # Errors
/// [`Error::Shutdown`] as said.
pub async fn off_runtime<T: Send + 'static>(walk: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let gone = Arc::new(AtomicBool::new(false));
    let _asker = AskerGone(Arc::clone(&gone));
    let permit = Arc::clone(walk_permits()).acquire_owned().await.map_err(|_| Error::Shutdown)?;
    let walking = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let _set = Walking::on_this_thread(gone);
        walk()
    });
    match walking.await {
        Ok(done) => Ok(done),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::Shutdown),
    }
}

/// Walks run at once on this node: half its cores, at least one, so that walks leave the
/// rest to the Raft groups and the clients (found from outside: six KEYS with a slow pattern,
/// each on a thread of its own, kept both cores busy for minutes and cost a shard its leader).
/// Later walks wait their turn.
fn walk_permits() -> &'static Arc<Semaphore> {
    static PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    PERMITS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Arc::new(Semaphore::new(cores.div_ceil(2)))
    })
}

thread_local! {
    /// While [`off_runtime`] runs a walk on this thread: whether its asker has gone.
    static WALK_ASKER_GONE: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// Whether the walk running on this thread was started by [`off_runtime`] for an asker that
/// has gone since (false for code run any other way).
pub(crate) fn walk_abandoned() -> bool {
    WALK_ASKER_GONE.with(|gone| gone.borrow().as_ref().is_some_and(|g| g.load(Ordering::Relaxed)))
}

/// Asks [`walk_abandoned`] once every [`AskerCheck::EVERY`] keys of a walk.
#[derive(Debug, Default)]
pub(crate) struct AskerCheck {
    seen: u32,
}

impl AskerCheck {
    /// Keys visited between two looks at the flag: few, as one key may cost a long pattern
    /// a million steps.
    const EVERY: u32 = 64;

    /// False once the walk's asker has gone (looked at every [`Self::EVERY`] calls).
    #[inline]
    pub(crate) fn still_wanted(&mut self) -> bool {
        self.seen = self.seen.wrapping_add(1);
        !self.seen.is_multiple_of(Self::EVERY) || !walk_abandoned()
    }
}

/// Tells the walk its asker has gone when [`off_runtime`]'s future ends or is dropped.
struct AskerGone(Arc<AtomicBool>);

impl Drop for AskerGone {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Marks a blocking thread as running a walk, until dropped (a panicking walk included: the
/// thread goes back to tokio's pool and runs other work).
struct Walking;

impl Walking {
    fn on_this_thread(gone: Arc<AtomicBool>) -> Self {
        WALK_ASKER_GONE.with(|g| *g.borrow_mut() = Some(gone));
        Self
    }
}

impl Drop for Walking {
    fn drop(&mut self) {
        WALK_ASKER_GONE.with(|g| *g.borrow_mut() = None);
    }
}

/// The live keys `walk` visits that match `pattern` (a Redis glob; every key when none).
fn matching(
    pattern: Option<&[u8]>,
    walk: impl FnOnce(&mut dyn FnMut(&Bytes, &StoredValue) -> bool),
) -> Vec<Bytes> {
    let mut keys = Vec::new();
    walk(&mut |k, _| {
        if pattern.is_none_or(|p| glob_match(p, k)) {
            keys.push(k.clone());
        }
        true
    });
    keys
}

impl CacheStorage {
    /// The live keys matching `pattern` (every key when none), O(entries): call it through
    /// [`off_runtime`].
    pub fn matching_keys(&self, pattern: Option<&[u8]>) -> Vec<Bytes> {
        matching(pattern, |f| self.for_each_live_key(f))
    }
}

/// The local caches of every shard this node holds, in shard order. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct Keyspace {
    shards: Vec<CacheStorage>,
    router: ShardRouter,
}

/// Looks up entries at a log time: one shard's cache, or the whole [`Keyspace`].
pub trait ReadEntries {
    /// The entry of `key` live at log time `at_ms` (no statistics).
    fn entry_at(&self, key: &[u8], at_ms: u64) -> Option<StoredValue>;
}

impl ReadEntries for CacheStorage {
    fn entry_at(&self, key: &[u8], at_ms: u64) -> Option<StoredValue> {
        CacheStorage::entry_at(self, key, at_ms)
    }
}

impl ReadEntries for Keyspace {
    fn entry_at(&self, key: &[u8], at_ms: u64) -> Option<StoredValue> {
        self.for_key(key).entry_at(key, at_ms)
    }
}

impl Keyspace {
    /// The caches `shards`, shard `i` at index `i`, routed by `router`.
    pub(crate) fn new(shards: Vec<CacheStorage>, router: ShardRouter) -> Self {
        debug_assert_eq!(shards.len(), router.num_shards() as usize);
        Self { shards, router }
    }

    /// The cache of the shard that owns `key`.
    #[inline]
    pub fn for_key(&self, key: &[u8]) -> &CacheStorage {
        &self.shards[self.router.shard_for_key(key) as usize]
    }

    /// The cache of shard `shard`, if this node has one.
    pub fn shard(&self, shard: ShardId) -> Option<&CacheStorage> {
        self.shards.get(shard as usize)
    }

    /// Every shard's cache, in shard order.
    pub fn shards(&self) -> &[CacheStorage] {
        &self.shards
    }

    /// The router that maps keys to shards.
    pub fn router(&self) -> &ShardRouter {
        &self.router
    }

    /// The live value of `key`, counting a hit or a miss.
    pub fn get(&self, key: &[u8]) -> Option<Bytes> {
        self.for_key(key).get(key)
    }

    /// The live values of `keys` (MGET), counting hits and misses: all read while no write of
    /// several keys applies in their shards, so a write of several of them shows whole or not
    /// at all (see [`CacheStorage::many_keys_read`]).
    pub fn get_many(&self, keys: &[Bytes]) -> Vec<Option<Bytes>> {
        let mut shards: Vec<ShardId> = keys.iter().map(|k| self.router.shard_for_key(k)).collect();
        shards.sort_unstable();
        shards.dedup();
        // Readers only, each shard's gate taken alone by its writers: any order is safe.
        let _held: Vec<_> = shards.iter().map(|s| self.shards[*s as usize].many_keys_read()).collect();
        keys.iter().map(|k| self.for_key(k).get(k)).collect()
    }

    /// The live value and expiry of `key`, without touching the statistics.
    pub fn get_entry(&self, key: &[u8]) -> Option<StoredValue> {
        self.for_key(key).get_entry(key)
    }

    /// Whether `key` has a live entry (no statistics).
    pub fn contains(&self, key: &[u8]) -> bool {
        self.for_key(key).contains(key)
    }

    /// The entry of `key` live at log time `at_ms` (no statistics).
    pub fn entry_at(&self, key: &[u8], at_ms: u64) -> Option<StoredValue> {
        self.for_key(key).entry_at(key, at_ms)
    }

    /// Inserts `key` into this node's cache only (see `DistributedCache::put_local`).
    pub fn insert(&self, key: Bytes, value: Bytes, expires_at_ms: Option<u64>) {
        self.for_key(&key).insert(key, value, expires_at_ms);
    }

    /// Calls `f` with every key live on this node's clock, shard after shard, until it answers
    /// false.
    pub fn for_each_live_key(&self, mut f: impl FnMut(&Bytes, &StoredValue) -> bool) {
        let mut going = true;
        for shard in &self.shards {
            shard.for_each_live_key(|k, v| {
                going = f(k, v);
                going
            });
            if !going {
                return;
            }
        }
    }

    /// The live keys of every shard matching `pattern` (every key when none), O(entries): call
    /// it through [`off_runtime`].
    pub fn matching_keys(&self, pattern: Option<&[u8]>) -> Vec<Bytes> {
        matching(pattern, |f| self.for_each_live_key(f))
    }

    /// Entries live on this node's clock in every shard (O(entries)).
    pub fn live_count(&self) -> u64 {
        self.shards.iter().map(CacheStorage::live_count).sum()
    }

    /// Entries held in every shard (expired ones not yet reclaimed included).
    pub fn entry_count(&self) -> u64 {
        self.shards.iter().map(CacheStorage::entry_count).sum()
    }

    /// The weighted size of every shard: bytes when sized by memory, else entries.
    pub fn weighted_size(&self) -> u64 {
        self.shards.iter().map(CacheStorage::weighted_size).sum()
    }

    /// Hits, misses and evictions of every shard together.
    pub fn stats(&self) -> CacheStats {
        self.shards.iter().map(CacheStorage::stats).fold(CacheStats::default(), |a, s| CacheStats {
            hits: a.hits + s.hits,
            misses: a.misses + s.misses,
            evictions: a.evictions + s.evictions,
        })
    }

    /// Every entry live at `now_ms` in every shard, in no particular order.
    pub fn live_entries(&self, now_ms: u64) -> Vec<(Bytes, StoredValue)> {
        self.shards.iter().flat_map(|s| s.live_entries(now_ms)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::storage::StorageLimits;

    fn keyspace(shards: u32) -> Keyspace {
        let limits = StorageLimits { max_capacity: u64::MAX, max_memory_bytes: None, time_to_idle: None };
        let caches = (0..shards).map(|_| CacheStorage::new(limits)).collect();
        Keyspace::new(caches, ShardRouter::new(shards).unwrap())
    }

    #[test]
    fn keys_live_in_their_shard_and_counts_cover_all() {
        let space = keyspace(4);
        for i in 0..200 {
            space.insert(Bytes::from(format!("k{i}")), Bytes::from("v"), None);
        }
        for i in 0..200 {
            let key = format!("k{i}");
            let shard = space.router().shard_for_key(key.as_bytes());
            for (index, cache) in space.shards().iter().enumerate() {
                assert_eq!(cache.contains(key.as_bytes()), index == shard as usize, "{key}");
            }
            assert_eq!(space.get(key.as_bytes()), Some(Bytes::from("v")));
        }
        assert!(space.shards().iter().all(|s| s.entry_count() > 0), "200 keys reach every shard");
        assert_eq!((space.live_count(), space.entry_count(), space.live_entries(0).len()), (200, 200, 200));
        assert_eq!(space.stats().hits, 200);
        let mut walked = 0;
        space.for_each_live_key(|_, _| {
            walked += 1;
            walked < 150
        });
        assert_eq!(walked, 150, "the walk stops when asked, across shards");
        // Clearing one shard leaves the others.
        let cleared = space.router().shard_for_key(b"k0");
        let held = space.shards()[cleared as usize].live_count();
        space.shard(cleared).unwrap().clear();
        assert!(space.get(b"k0").is_none());
        assert_eq!(space.live_count(), 200 - held);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn walks_take_turns() {
        use std::sync::atomic::AtomicUsize;

        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let walks = (0..6).map(|_| {
            let (running, most) = (Arc::clone(&running), Arc::clone(&most));
            off_runtime(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // Stands for a walk's work, long enough for the others to be waiting.
                std::thread::sleep(std::time::Duration::from_millis(30));
                running.fetch_sub(1, Ordering::SeqCst);
            })
        });
        for walked in futures_util::future::join_all(walks).await {
            walked.unwrap();
        }
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let most = most.load(Ordering::SeqCst);
        assert!((1..=cores.div_ceil(2)).contains(&most), "{most} walks ran at once on {cores} cores");
    }

    #[tokio::test]
    async fn a_walk_stops_soon_after_its_asker_leaves() {
        use std::sync::atomic::AtomicUsize;
        use std::sync::mpsc;

        const KEYS: usize = 50_000;
        let space = keyspace(2);
        for i in 0..KEYS {
            space.insert(Bytes::from(format!("k{i}")), Bytes::from("v"), None);
        }
        let visited = Arc::new(AtomicUsize::new(0));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (left_tx, left_rx) = mpsc::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let counter = Arc::clone(&visited);
        let mut walk = Box::pin(off_runtime(move || {
            let mut started = Some(started_tx);
            space.for_each_live_key(|_, _| {
                if let Some(started) = started.take() {
                    let _ = started.send(());
                    // Goes on only once the asker has gone.
                    left_rx.recv().expect("the test signals");
                }
                counter.fetch_add(1, Ordering::Relaxed);
                true
            });
            let _ = done_tx.send(());
        }));
        tokio::select! {
            _ = &mut walk => panic!("the walk cannot end before the test lets it go on"),
            started = started_rx => started.expect("the walk starts"),
        }
        drop(walk);
        left_tx.send(()).expect("the walk waits");
        done_rx.await.expect("the walk ends");
        let visited = visited.load(Ordering::Relaxed);
        assert!(
            visited <= 2 * AskerCheck::EVERY as usize,
            "visited {visited} of {KEYS} keys after the asker left"
        );

        // A walk whose asker stays sees every key, and code run outside off_runtime is never cut short.
        let space = keyspace(2);
        for i in 0..KEYS {
            space.insert(Bytes::from(format!("k{i}")), Bytes::from("v"), None);
        }
        let walked = space.clone();
        assert_eq!(off_runtime(move || walked.live_count()).await.unwrap(), KEYS as u64);
        assert!(!walk_abandoned());
        assert_eq!(space.matching_keys(None).len(), KEYS);
    }
}
