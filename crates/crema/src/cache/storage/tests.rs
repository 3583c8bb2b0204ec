use super::*;

fn storage(max_capacity: u64) -> CacheStorage {
    CacheStorage::new(StorageLimits { max_capacity, max_memory_bytes: None, time_to_idle: None })
}

#[test]
fn get_counts_hits_and_misses() {
    let s = storage(100);
    s.insert(Bytes::from("a"), Bytes::from("1"), None);
    assert_eq!(s.get(b"a"), Some(Bytes::from("1")));
    assert_eq!(s.get(b"b"), None);
    assert_eq!(s.stats(), CacheStats { hits: 1, misses: 1, evictions: 0 });
    assert_eq!(s.stats().hit_rate(), 0.5);
}

#[test]
fn an_entry_past_its_absolute_expiry_is_a_miss() {
    let s = storage(100);
    let now = unix_now_ms();
    s.insert(Bytes::from("old"), Bytes::from("v"), Some(now - 1));
    s.insert(Bytes::from("new"), Bytes::from("v"), Some(now + 60_000));
    assert_eq!(s.get(b"old"), None);
    assert!(!s.contains(b"old"));
    assert!(!s.remove(b"old"), "removing an expired entry removes nothing live");
    assert_eq!(s.get(b"new"), Some(Bytes::from("v")));
    assert_eq!(s.live_entries(now).len(), 1);
}

#[test]
fn purge_reclaims_only_what_the_log_time_has_passed() {
    let s = storage(100);
    s.insert(Bytes::from("a"), Bytes::from("1"), Some(1_000));
    s.insert(Bytes::from("b"), Bytes::from("2"), Some(2_000));
    s.insert(Bytes::from("c"), Bytes::from("3"), None);
    // The wall clock is far past both expiries, but the applied state is at log time 1500.
    s.advance_log_time(1_500);
    s.advance_log_time(1_200);
    assert_eq!(s.log_time_ms(), 1_500, "log time never goes back");
    assert_eq!(s.purge_expired(), 1);
    assert!(s.entry_at(b"a", 1_500).is_none());
    assert_eq!(s.entry_at(b"b", 1_500).unwrap().value, Bytes::from("2"));
    assert!(s.entry_at(b"b", 2_000).is_none(), "expired at its own expiry instant");
    assert_eq!(s.entry_count(), 2);
    // "b" still carries an expiry: the next sweep scans and reclaims it.
    s.advance_log_time(2_500);
    assert_eq!(s.purge_expired(), 1);
    assert_eq!(s.purge_expired(), 0, "nothing left that expires: the scan is skipped");
    // An expiring entry written after a skipped sweep is reclaimed by the next one.
    s.insert(Bytes::from("d"), Bytes::from("4"), Some(2_600));
    s.advance_log_time(3_000);
    assert_eq!(s.purge_expired(), 1);
    assert_eq!(s.entry_count(), 1);
}

#[test]
fn a_capture_sees_the_cache_as_it_was_when_it_began() {
    let s = storage(1000);
    for (k, v) in [("same", "1"), ("changed", "1"), ("deleted", "1"), ("expiring", "1")] {
        s.insert(Bytes::from(k), Bytes::from(v), None);
    }
    assert!(s.begin_capture());
    assert!(!s.begin_capture(), "one capture at a time");
    s.insert(Bytes::from("changed"), Bytes::from("2"), None);
    s.insert(Bytes::from("changed"), Bytes::from("3"), None);
    s.remove_at(b"deleted", 0);
    s.insert(Bytes::from("new"), Bytes::from("1"), None);
    s.insert(Bytes::from("expiring"), Bytes::from("1"), Some(5));
    let mut captured = s.finish_capture(10).unwrap();
    captured.sort_by(|a, b| a.0.cmp(&b.0));
    let keys: Vec<(&[u8], &[u8])> = captured.iter().map(|(k, v)| (k.as_ref(), v.value.as_ref())).collect();
    assert_eq!(
        keys,
        vec![(&b"changed"[..], &b"1"[..]), (b"deleted", b"1"), (b"expiring", b"1"), (b"same", b"1")]
    );
    assert_eq!(s.get_entry(b"changed").unwrap().value, Bytes::from("3"), "the cache itself moved on");
    assert!(s.begin_capture());
    s.clear();
    assert_eq!(s.finish_capture(10), None, "a clear aborts the capture");
}

/// Evicts what the policy chose, as applying the leader's `Evict` does; answers how many.
fn evict_victims(s: &CacheStorage) -> usize {
    s.run_policy_tasks();
    let victims = s.take_victims(usize::MAX, usize::MAX);
    victims.iter().filter(|k| s.evict(k, 0)).count()
}

#[test]
fn a_follower_never_evicts_on_its_own() {
    let s = storage(50);
    for i in 0..500u32 {
        s.insert(Bytes::from(i.to_be_bytes().to_vec()), Bytes::from("v"), None);
    }
    assert_eq!(evict_victims(&s), 0, "an inactive policy chooses nothing");
    assert_eq!(s.entry_count(), 500, "only the log evicts");
}

/// Victims are proposed as one `Evict` entry, which must fit in a peer frame: with large keys
/// a take stops at its byte budget, and the rest come in later takes.
#[test]
fn victims_are_taken_within_a_byte_budget() {
    let s = storage(10);
    s.activate_policy();
    for i in 0..100u32 {
        s.insert(Bytes::from(vec![i as u8; 1000]), Bytes::from("v"), None);
    }
    s.run_policy_tasks();
    let mut takes = Vec::new();
    loop {
        let taken = s.take_victims(1024, 4500);
        if taken.is_empty() {
            break;
        }
        assert!(taken.iter().map(|k| k.len()).sum::<usize>() <= 4500, "{} keys", taken.len());
        takes.push(taken.len());
    }
    assert!(takes.iter().sum::<usize>() >= 90, "every victim comes out: {takes:?}");
    assert!(takes.iter().all(|n| *n <= 4), "{takes:?}");
}

#[test]
fn the_leaders_policy_brings_the_cache_to_its_bound_in_entries() {
    let s = storage(50);
    assert_eq!(s.activate_policy(), 0);
    for i in 0..500u32 {
        s.insert(Bytes::from(i.to_be_bytes().to_vec()), Bytes::from("v"), None);
    }
    let evicted = evict_victims(&s);
    assert!(s.entry_count() <= 50, "{} entries", s.entry_count());
    assert_eq!(s.entry_count() as usize + evicted, 500, "every entry is kept or evicted");
    assert_eq!(s.stats().evictions as usize, evicted);
}

#[test]
fn the_leaders_policy_bounds_bytes_by_weight() {
    let s = by_memory(10_000);
    s.activate_policy();
    for i in 0..100u32 {
        s.insert(Bytes::from(i.to_be_bytes().to_vec()), Bytes::from(vec![0u8; 1000]), None);
    }
    evict_victims(&s);
    assert!(s.weighted_size() <= 10_000, "{} bytes", s.weighted_size());
    assert!(s.entry_count() <= 10);
}

#[test]
fn an_overwrite_that_grows_a_value_counts_its_new_weight() {
    let s = by_memory(10_000);
    s.activate_policy();
    for i in 0..50u32 {
        s.insert(Bytes::from(i.to_be_bytes().to_vec()), Bytes::from(vec![0u8; 10]), None);
    }
    assert_eq!(evict_victims(&s), 0, "50 small entries fit");
    for i in 0..50u32 {
        s.insert(Bytes::from(i.to_be_bytes().to_vec()), Bytes::from(vec![0u8; 1000]), None);
    }
    evict_victims(&s);
    assert!(s.weighted_size() <= 10_000, "{} bytes after the values grew", s.weighted_size());
}

#[test]
fn keys_overwritten_often_survive_new_keys_read_a_few_times() {
    let s = storage(100);
    s.activate_policy();
    for i in 0..100u32 {
        s.insert(Bytes::from(format!("old{i}")), Bytes::from("v"), None);
    }
    // 400 new keys come, each read a few times (more than the other old keys ever were),
    // while the first ten old keys are overwritten all the while with values of the same
    // size: those overwrites, not reads, are what keeps them.
    for i in 0..400u32 {
        for round in 0..4u32 {
            for hot in 0..10u32 {
                s.insert(Bytes::from(format!("old{hot}")), Bytes::from(format!("{round}")), None);
            }
        }
        let key = format!("new{i}");
        s.insert(Bytes::from(key.clone()), Bytes::from("v"), None);
        for _ in 0..4 * POLICY_READ_SAMPLE {
            s.get(key.as_bytes());
        }
        if i % 50 == 0 {
            evict_victims(&s);
        }
    }
    evict_victims(&s);
    assert!(s.entry_count() <= 100, "{} entries", s.entry_count());
    for i in 0..10u32 {
        assert!(s.contains(format!("old{i}").as_bytes()), "often written key old{i} was evicted");
    }
}

#[test]
fn a_new_leader_fills_its_policy_from_the_cache_and_frequent_reads_survive() {
    let s = storage(100);
    for i in 0..100u32 {
        s.insert(Bytes::from(format!("old{i}")), Bytes::from("v"), None);
    }
    assert_eq!(s.activate_policy(), 100, "the policy starts with every entry held");
    // The first ten keys are read often; then 400 new keys are written once each.
    // Each is read 20 * POLICY_READ_SAMPLE times, so that some of its reads train the
    // policy (the chance that one of the ten is never sampled is about 1e-8).
    for _ in 0..20 * POLICY_READ_SAMPLE {
        for i in 0..10u32 {
            assert!(s.get(format!("old{i}").as_bytes()).is_some());
        }
    }
    for i in 0..400u32 {
        s.insert(Bytes::from(format!("new{i}")), Bytes::from("v"), None);
        if i % 50 == 0 {
            evict_victims(&s);
        }
    }
    evict_victims(&s);
    assert!(s.entry_count() <= 100, "{} entries", s.entry_count());
    for i in 0..10u32 {
        assert!(s.contains(format!("old{i}").as_bytes()), "hot key old{i} was evicted");
    }
    s.deactivate_policy();
    s.insert(Bytes::from("after"), Bytes::from("v"), None);
    assert!(s.take_victims(usize::MAX, usize::MAX).is_empty(), "a deposed leader keeps no victims");
}

#[test]
fn an_unbounded_cache_has_no_policy() {
    let s = storage(u64::MAX);
    assert!(s.eviction_wake().is_none());
    assert_eq!(s.activate_policy(), 0);
}

/// A cache bounded to `bytes` of keys, values and overhead, with no time-to-idle.
fn by_memory(bytes: u64) -> CacheStorage {
    CacheStorage::new(StorageLimits {
        max_capacity: u64::MAX,
        max_memory_bytes: Some(bytes),
        time_to_idle: None,
    })
}

/// Both entry stores: the map (no time-to-idle) and Moka (with one).
fn by_memory_both_ways() -> [CacheStorage; 2] {
    [None, Some(Duration::from_secs(3600))].map(|time_to_idle| {
        CacheStorage::new(StorageLimits {
            max_capacity: u64::MAX,
            max_memory_bytes: Some(1 << 30),
            time_to_idle,
        })
    })
}

#[test]
fn the_weighted_size_follows_overwrites_removes_purges_and_clear() {
    let w = |k: &str, v: &str| k.len() as u64 + v.len() as u64 + ENTRY_OVERHEAD_BYTES;
    for s in by_memory_both_ways() {
        s.insert(Bytes::from("a"), Bytes::from("12345"), None);
        s.insert(Bytes::from("b"), Bytes::from("x"), Some(1_000));
        assert_eq!(s.weighted_size(), w("a", "12345") + w("b", "x"));
        s.insert(Bytes::from("a"), Bytes::from("1"), None);
        assert_eq!(s.weighted_size(), w("a", "1") + w("b", "x"));
        assert!(s.remove_at(b"a", 0));
        assert_eq!(s.weighted_size(), w("b", "x"));
        s.advance_log_time(1_000);
        assert_eq!(s.purge_expired(), 1);
        assert_eq!((s.weighted_size(), s.entry_count()), (0, 0));
        s.insert(Bytes::from("c"), Bytes::from("v"), None);
        s.clear();
        assert_eq!((s.weighted_size(), s.entry_count()), (0, 0));
    }
}

#[test]
fn a_purge_keeps_a_value_rewritten_without_expiry() {
    for s in by_memory_both_ways() {
        s.insert(Bytes::from("k"), Bytes::from("old"), Some(1_000));
        s.advance_log_time(2_000);
        s.insert(Bytes::from("k"), Bytes::from("new"), None);
        assert_eq!(s.purge_expired(), 0);
        assert_eq!(s.get(b"k"), Some(Bytes::from("new")));
    }
}

#[test]
fn clear_and_remove() {
    let s = storage(100);
    s.insert(Bytes::from("a"), Bytes::from("1"), None);
    s.insert(Bytes::from("b"), Bytes::from("2"), None);
    assert!(s.remove(b"a"));
    assert!(!s.remove(b"a"));
    s.clear();
    assert_eq!(s.entry_count(), 0);
}
