//! The RESP hot path without sockets: splitting pipelined requests off a read buffer, and
//! encoding the replies. Run: `cargo bench -p crema-server --bench resp`.

use bytes::{Bytes, BytesMut};
use crema_server::resp::{take_request, Protocol, Reply, RequestLimits};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

/// 16 pipelined `SET <16-byte key> <100-byte value>` requests, as redis-benchmark -P 16 sends.
fn pipelined_sets() -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..16 {
        let key = format!("k{i:015}");
        out.extend_from_slice(format!("*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$100\r\n", key.len()).as_bytes());
        out.extend_from_slice(&[b'v'; 100]);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn bench(c: &mut Criterion) {
    let limits = RequestLimits::default();
    let input = pipelined_sets();
    let mut group = c.benchmark_group("resp");
    group.throughput(Throughput::Elements(16));
    group.bench_function("parse 16 pipelined SETs", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(black_box(&input[..]));
            let mut n = 0;
            while let Some(args) = take_request(&mut buf, &limits).unwrap() {
                n += args.len();
            }
            n
        })
    });
    let value = Bytes::from(vec![b'v'; 100]);
    group.bench_function("encode 16 replies (+OK)", |b| {
        let mut out = BytesMut::with_capacity(1024);
        b.iter(|| {
            out.clear();
            for _ in 0..16 {
                Reply::OK.encode(Protocol::Resp2, &mut out);
            }
            out.len()
        })
    });
    group.bench_function("encode 16 replies (100-byte bulk)", |b| {
        let mut out = BytesMut::with_capacity(4096);
        b.iter(|| {
            out.clear();
            for _ in 0..16 {
                Reply::Bulk(value.clone()).encode(Protocol::Resp2, &mut out);
            }
            out.len()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
