//! The pure write path, without Raft or sockets: encoding a command for the log, decoding it on
//! apply, and applying it to the state machine (16-byte keys, 100-byte values).
//! Run: `cargo bench -p crema --bench codec_apply`.

use bytes::Bytes;
use crema::cache::storage::StorageLimits;
use crema::consensus::command::StampedCommand;
use crema::{CacheCommand, CacheStateMachine, CacheStorage, ExpiryUpdate, SetCondition};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

const KEYS: u64 = 100_000;

fn key(i: u64) -> Bytes {
    Bytes::from(format!("k{i:015}"))
}

fn bench(c: &mut Criterion) {
    let value = Bytes::from(vec![b'v'; 100]);
    let put = StampedCommand::new(1_700_000_000_000, CacheCommand::put(key(7), value.clone()));
    let set_nx = StampedCommand::new(
        1_700_000_000_000,
        CacheCommand::Set {
            key: key(7),
            value: value.clone(),
            expiry: ExpiryUpdate::At(1_800_000_000_000),
            condition: SetCondition::IfAbsent,
            return_old: false,
        },
    );
    let encoded = put.encode();

    c.bench_function("encode put", |b| b.iter(|| black_box(&put).encode()));
    c.bench_function("decode put", |b| b.iter(|| StampedCommand::decode(black_box(&encoded)).unwrap()));
    c.bench_function("encode set nx with expiry", |b| b.iter(|| black_box(&set_nx).encode()));

    let storage = CacheStorage::new(StorageLimits {
        max_capacity: KEYS * 2,
        max_memory_bytes: None,
        time_to_idle: None,
    });
    let mut sm = CacheStateMachine::new(storage);
    let mut index = 0u64;
    let commands: Vec<StampedCommand> = (0..KEYS)
        .map(|i| StampedCommand::new(1_700_000_000_000, CacheCommand::put(key(i), value.clone())))
        .collect();
    c.bench_function("apply put (100,000 keys, overwriting)", |b| {
        b.iter(|| {
            index += 1;
            sm.apply(index, &commands[(index % KEYS) as usize])
        })
    });
    // On the leader of a bounded cache every applied write also goes to the eviction policy.
    let leader_storage = CacheStorage::new(StorageLimits {
        max_capacity: KEYS * 2,
        max_memory_bytes: None,
        time_to_idle: None,
    });
    leader_storage.activate_policy();
    let mut leader = CacheStateMachine::new(leader_storage);
    let mut leader_index = 0u64;
    c.bench_function("apply put on the leader (policy on, 100,000 keys, overwriting)", |b| {
        b.iter(|| {
            leader_index += 1;
            leader.apply(leader_index, &commands[(leader_index % KEYS) as usize])
        })
    });
    // What every applied write adds for WATCH: the key's hash and one store (consensus::versions).
    let versions = crema::consensus::versions::KeyVersions::default();
    let keys: Vec<Bytes> = (0..KEYS).map(key).collect();
    let mut touched = 0u64;
    c.bench_function("record a change for WATCH (KeyVersions::touch, 100,000 keys)", |b| {
        b.iter(|| {
            touched += 1;
            versions.touch(black_box(&keys[(touched % KEYS) as usize]), touched)
        })
    });
    c.bench_function("decode + apply put", |b| {
        let bytes: Vec<Vec<u8>> = commands.iter().take(1024).map(StampedCommand::encode).collect();
        b.iter(|| {
            index += 1;
            let command = StampedCommand::decode(&bytes[(index % 1024) as usize]).unwrap();
            sm.apply(index, &command)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
