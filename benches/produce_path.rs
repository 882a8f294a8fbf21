//! Produce hot path without I/O: split a produce's record set into batches,
//! validate each header and CRC32C, assign offsets in place, copy into the
//! write-behind buffer. Throughput in bytes of record batches.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use ringtail::record::{assign_offsets, split_batches, BatchHeader};

fn batch(records: usize, value_bytes: usize, compression: Compression) -> Bytes {
    let records: Vec<Record> = (0..records)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::from(vec![(i % 251) as u8; value_bytes])),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf.freeze()
}

fn produce_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("produce_path");
    for (name, records, value, compression) in [
        ("16x1KiB", 16, 1024, Compression::None),
        ("64x1KiB", 64, 1024, Compression::None),
        ("64x1KiB-lz4", 64, 1024, Compression::Lz4),
        ("1x1MiB", 1, 1 << 20, Compression::None),
    ] {
        let set = batch(records, value, compression);
        let mut sink = vec![0u8; 4 << 20];
        group.throughput(Throughput::Bytes(set.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(name), &set, |b, set| {
            let mut next_offset = 0i64;
            b.iter(|| {
                let sizes = split_batches(set, 8 << 20).unwrap();
                let mut at = 0;
                for size in sizes {
                    // The copy into the write buffer is where offsets get patched.
                    let dst = &mut sink[..size];
                    dst.copy_from_slice(&set[at..at + size]);
                    assign_offsets(dst, next_offset, 0);
                    next_offset = BatchHeader::parse(dst).unwrap().last_offset() + 1;
                    at += size;
                }
                next_offset
            })
        });
    }
    group.finish();
}

criterion_group!(benches, produce_path);
criterion_main!(benches);
