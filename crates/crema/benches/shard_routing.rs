//! Key → shard routing (Redis Cluster's CRC16 hash slot, then the slot's range) for the benchmarks' 16-byte keys, and
//! for 64-byte and 1 KiB keys. Run: `cargo bench -p crema --bench shard_routing`.

use crema::ShardRouter;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("shard_for_key");
    group.throughput(Throughput::Elements(1));
    for len in [16usize, 64, 1024] {
        let keys: Vec<Vec<u8>> = (0..1024u64)
            .map(|i| {
                let mut k = format!("k{i:015}").into_bytes();
                k.resize(len, b'x');
                k
            })
            .collect();
        for shards in [16u32, 64] {
            let router = ShardRouter::new(shards).unwrap();
            group.bench_with_input(
                BenchmarkId::new(format!("{shards} shards"), format!("{len}-byte key")),
                &keys,
                |b, keys| {
                    let mut i = 0;
                    b.iter(|| {
                        i = (i + 1) & 1023;
                        router.shard_for_key(black_box(&keys[i]))
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
