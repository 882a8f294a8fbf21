//! Produce hot path without I/O. Every case is timed in CPU time of the
//! benchmarking thread (see `ThreadCpuTime`).
//!
//! `produce_path`: validate a produce's batch (header, CRC32C and every
//! record), assign offsets in place, copy into the write-behind buffer.
//! Throughput in bytes of record batches.
//!
//! `validation`: the cost of full validation (records parsed, compressed
//! batches decompressed within the cap) against the header + CRC32C check
//! alone, measured in the same run, for uncompressed and each codec's
//! batches of 16 KiB and 1 MiB of records, with the codec alone as a
//! reference. Throughput in bytes of uncompressed records, so codecs
//! compare on the same data.
//!
//! `recompression`: broker-side recompression (topic compression.type
//! differing from the producer's codec) against validation alone, in the
//! same run, for the codec pairs that matter, on batches of 64 KiB and
//! 1 MiB of records at Kafka's default levels. Throughput in bytes of
//! uncompressed records.

use std::io::Read;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use ringtail::config::DEFAULT_MAX_DECOMPRESSED_BATCH_BYTES;
use ringtail::record::{
    assign_offsets, normalize_header, recompress, validate_batch, validate_produce, BatchHeader,
    BatchLimits, Codec, CompressionLevels,
};

const LIMITS: BatchLimits = BatchLimits {
    max_batch_bytes: 8 << 20,
    max_decompressed_bytes: DEFAULT_MAX_DECOMPRESSED_BATCH_BYTES,
};

/// A value of log-like text: words from a small vocabulary and numbers, so
/// it compresses about as much as real JSON or log lines do (3-5x).
fn text_value(seed: u64, len: usize) -> Bytes {
    const WORDS: [&str; 16] = [
        "user",
        "order",
        "id",
        "status",
        "shipped",
        "amount",
        "currency",
        "EUR",
        "item",
        "sku",
        "warehouse",
        "region",
        "eu-west",
        "created",
        "updated",
        "true",
    ];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = String::with_capacity(len + 16);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(WORDS[(x % 16) as usize]);
        out.push_str(if x & 0x100 == 0 { "\":\"" } else { "\",\"" });
        out.push_str(&((x >> 20) % 100_000).to_string());
    }
    out.truncate(len);
    Bytes::from(out)
}

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
            value: Some(text_value(i as u64, value_bytes)),
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

fn produce_path(c: &mut Criterion<ThreadCpuTime>) {
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
                let produced = validate_produce(set, &LIMITS).unwrap();
                // The copy into the write buffer is where offsets get patched.
                let dst = &mut sink[..produced.size];
                dst.copy_from_slice(&set[..produced.size]);
                normalize_header(dst, &produced);
                assign_offsets(dst, next_offset, 0);
                next_offset = BatchHeader::parse(dst).unwrap().last_offset() + 1;
                next_offset
            })
        });
    }
    group.finish();
}

/// The codec alone, as a reference: the payload decompressed into a
/// reused buffer with the codec crate, nothing parsed.
fn decompress_only(codec: Compression, payload: &[u8]) -> usize {
    let mut out = [0u8; 32 * 1024];
    let mut total = 0;
    let mut drain = |mut r: Box<dyn Read + '_>| loop {
        let n = r.read(&mut out).unwrap();
        if n == 0 {
            break;
        }
        total += n;
    };
    match codec {
        Compression::Gzip => drain(Box::new(flate2::bufread::MultiGzDecoder::new(payload))),
        Compression::Lz4 => drain(Box::new(lz4::Decoder::new(payload).unwrap())),
        Compression::Zstd => drain(Box::new(
            zstd::stream::read::Decoder::with_buffer(payload).unwrap(),
        )),
        Compression::Snappy => {
            // kafka-protocol writes Kafka's xerial framing: 16-byte header,
            // then length-prefixed raw blocks.
            let mut rest = &payload[16..];
            let mut block = Vec::new();
            while rest.len() >= 4 {
                let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                block = snap::raw::Decoder::new()
                    .decompress_vec(&rest[4..4 + len])
                    .unwrap_or(block);
                total += block.len();
                rest = &rest[4 + len..];
            }
        }
        Compression::None => total = payload.len(),
    }
    total
}

fn validation(c: &mut Criterion<ThreadCpuTime>) {
    let mut group = c.benchmark_group("validation");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    let codecs = [
        ("none", Compression::None),
        ("gzip", Compression::Gzip),
        ("snappy", Compression::Snappy),
        ("lz4", Compression::Lz4),
        ("zstd", Compression::Zstd),
    ];
    for (size_name, records) in [("16KiB", 16), ("1MiB", 1024)] {
        let uncompressed = batch(records, 1000, Compression::None).len();
        for (codec_name, codec) in codecs {
            let set = batch(records, 1000, codec);
            eprintln!(
                "validation/{size_name}-{codec_name}: {} bytes of records, {} on the wire",
                uncompressed,
                set.len()
            );
            group.throughput(Throughput::Bytes(uncompressed as u64));
            let id = format!("{size_name}-{codec_name}");
            group.bench_with_input(BenchmarkId::new("header_crc", &id), &set, |b, set| {
                b.iter(|| validate_batch(set, LIMITS.max_batch_bytes).unwrap())
            });
            group.bench_with_input(BenchmarkId::new("full", &id), &set, |b, set| {
                b.iter(|| validate_produce(set, &LIMITS).unwrap())
            });
            if codec_name != "none" {
                group.bench_with_input(BenchmarkId::new("codec_only", &id), &set, |b, set| {
                    b.iter(|| decompress_only(codec, &set[61..]))
                });
            }
        }
    }
    group.finish();
}

fn recompression(c: &mut Criterion<ThreadCpuTime>) {
    let mut group = c.benchmark_group("recompression");
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    let levels = CompressionLevels::default();
    let sources = [
        (
            "none",
            Compression::None,
            &[Codec::Lz4, Codec::Zstd, Codec::Snappy, Codec::Gzip][..],
        ),
        ("gzip", Compression::Gzip, &[Codec::Zstd][..]),
        ("lz4", Compression::Lz4, &[Codec::Zstd][..]),
        ("snappy", Compression::Snappy, &[Codec::Lz4][..]),
        ("zstd", Compression::Zstd, &[Codec::Lz4, Codec::None][..]),
    ];
    for (size_name, records) in [("64KiB", 64), ("1MiB", 1024)] {
        let uncompressed = batch(records, 1000, Compression::None).len();
        group.throughput(Throughput::Bytes(uncompressed as u64));
        for (source_name, source, targets) in sources {
            let set = batch(records, 1000, source);
            let id = format!("{size_name}-{source_name}");
            group.bench_with_input(BenchmarkId::new("validate", &id), &set, |b, set| {
                b.iter(|| validate_produce(set, &LIMITS).unwrap())
            });
            for &target in targets {
                let id = format!("{size_name}-{source_name}-to-{target}");
                let out = recompress(&set, target, &levels, &LIMITS).unwrap();
                eprintln!(
                    "recompression/{id}: {uncompressed} bytes of records, {} in, {} out",
                    set.len(),
                    out.len()
                );
                group.bench_with_input(
                    BenchmarkId::new("validate_recompress", &id),
                    &set,
                    |b, set| {
                        b.iter(|| {
                            validate_produce(set, &LIMITS).unwrap();
                            recompress(set, target, &levels, &LIMITS).unwrap()
                        })
                    },
                );
            }
        }
    }
    group.finish();
}

/// CPU time of the benchmarking thread: on a machine shared with other
/// work, time spent descheduled would otherwise land on whichever case ran
/// then, and two cases measured one after the other would not compare.
struct ThreadCpuTime;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns() - start
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, ns: &u64) -> f64 {
        *ns as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuNanos
    }
}

/// Formats nanoseconds of CPU time and bytes per CPU second.
struct CpuNanos;

impl ValueFormatter for CpuNanos {
    fn scale_values(&self, typical: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = match typical {
            t if t < 1e3 => (1.0, "ns cpu"),
            t if t < 1e6 => (1e-3, "us cpu"),
            t if t < 1e9 => (1e-6, "ms cpu"),
            _ => (1e-9, "s cpu"),
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }

    fn scale_throughputs(
        &self,
        typical: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let per_op = match throughput {
            Throughput::Bytes(b) | Throughput::BytesDecimal(b) => *b as f64,
            Throughput::Elements(e) => *e as f64,
        };
        let (divisor, unit) = if per_op * 1e9 / typical >= (1u64 << 30) as f64 {
            ((1u64 << 30) as f64, "GiB/s cpu")
        } else {
            ((1u64 << 20) as f64, "MiB/s cpu")
        };
        values
            .iter_mut()
            .for_each(|v| *v = per_op * 1e9 / *v / divisor);
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpuTime);
    targets = produce_path, validation, recompression
}
criterion_main!(benches);
