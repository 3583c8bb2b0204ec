//! Local `get` of an existing key through `CacheStorage` against a bare `moka::sync::Cache::get`,
//! same keys, same values, same capacity; and as the leader of a bounded cache, whose eviction
//! policy local hits train (one in `POLICY_READ_SAMPLE`). Run: `cargo bench --bench local_get`.

use bytes::Bytes;
use crema::cache::storage::StorageLimits;
use crema::CacheStorage;
use criterion::{black_box, criterion_group, criterion_main, Criterion};

const KEYS: usize = 100_000;

fn keys() -> Vec<Bytes> {
    (0..KEYS).map(|i| Bytes::from(format!("key:{i:012}"))).collect()
}

fn bench(c: &mut Criterion) {
    let keys = keys();
    let value = Bytes::from(vec![b'v'; 100]);

    let bare: moka::sync::Cache<Bytes, Bytes> =
        moka::sync::Cache::builder().max_capacity(KEYS as u64 * 2).build();
    let limits = StorageLimits { max_capacity: KEYS as u64 * 2, max_memory_bytes: None, time_to_idle: None };
    let ours = CacheStorage::new(limits);
    let with_ttl = CacheStorage::new(limits);
    let leader = CacheStorage::new(limits);
    let far = crema::cache::storage::unix_now_ms() + 3_600_000;
    for k in &keys {
        bare.insert(k.clone(), value.clone());
        ours.insert(k.clone(), value.clone(), None);
        with_ttl.insert(k.clone(), value.clone(), Some(far));
        leader.insert(k.clone(), value.clone(), None);
    }
    leader.activate_policy();

    let mut group = c.benchmark_group("local_get");
    let mut i = 0usize;
    group.bench_function("bare_moka", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(bare.get(&keys[i][..]))
        })
    });
    group.bench_function("crema_cache_storage", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(ours.get(&keys[i][..]))
        })
    });
    group.bench_function("crema_cache_storage_with_ttl", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(with_ttl.get(&keys[i][..]))
        })
    });
    group.bench_function("crema_cache_storage_leader", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(leader.get(&keys[i][..]))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
