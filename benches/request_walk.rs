//! Cost of the bounds walk that every request frame passes before the codec
//! decodes it, against the codec's own decode of the same frame: a typical
//! Produce (1 MiB of records over 8 partitions; record bytes are skipped by
//! length, not walked) and Fetch requests.

#[path = "../tests/fuzz/typed.rs"]
mod typed;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ringtail::protocol::schema::check_request;

fn request_walk(c: &mut Criterion) {
    let mut group = c.benchmark_group("request_walk");
    let batch = typed::batch(128, 1000); // ~128 KiB per partition
    let cases = [
        ("produce-v9-8x128KiB", typed::produce(9, 1, 8, &batch), 2),
        ("produce-v7-8x128KiB", typed::produce(7, 1, 8, &batch), 1),
        ("fetch-v12-1x8", typed::fetch(12, 1, 8), 2),
        ("fetch-v11-10x100", typed::fetch(11, 10, 100), 1),
    ];
    for (name, frame, header_version) in cases {
        assert_eq!(check_request(&frame, header_version), Ok(frame.len()));
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("walk", name), &frame, |b, f| {
            b.iter(|| check_request(f, header_version))
        });
        let frame = Bytes::from(frame);
        group.bench_with_input(BenchmarkId::new("decode", name), &frame, |b, f| {
            b.iter(|| ringtail::protocol::decode(f.clone()).is_ok())
        });
    }
    group.finish();
}

criterion_group!(benches, request_walk);
criterion_main!(benches);
