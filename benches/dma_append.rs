//! Segment appender throughput: batches copied into the page-aligned
//! write-behind buffer and written with O_DIRECT as the buffer fills, then one
//! fdatasync per 64 MiB, on the file system under `RINGTAIL_BENCH_DIR`
//! (default: the current directory). `scripts/append-vs-fio` compares this
//! figure with fio's sequential O_DIRECT write on the same disk.
//!
//! `1000B-write-each` writes after every 1000-byte batch, as a group-commit
//! round of one small batch does, so every write ends in a partial, padded
//! page; `1000B-write-each-exact-size` also ftruncates the file to its
//! batches after each write (the alternative to the padding header that
//! keeps the active file's size exact), to measure what that would cost.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringtail::log::{probe_device, Log, LogConfig};
use ringtail::record::assign_offsets;

const BATCH_BYTES: usize = 64 * 1024;
const BATCHES_PER_ITER: usize = 16; // 1 MiB per iteration of 64 KiB batches
/// Small batches, written one per round: each write ends mid-page.
const SMALL_BATCH_BYTES: usize = 1000;
const SYNC_EVERY_BYTES: u64 = 64 << 20;

fn bench_dir() -> PathBuf {
    std::env::var_os("RINGTAIL_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// A valid-looking batch header followed by payload; the appender only
/// reads the header fields it indexes.
fn batch(bytes: usize) -> Vec<u8> {
    let mut b = vec![7u8; bytes];
    b[0..8].copy_from_slice(&0i64.to_be_bytes());
    b[8..12].copy_from_slice(&((bytes - 12) as i32).to_be_bytes());
    b[16] = 2;
    b[23..27].copy_from_slice(&99i32.to_be_bytes()); // last offset delta
    b[35..43].copy_from_slice(&1_700_000_000_000i64.to_be_bytes());
    b
}

/// How a run writes: batch size, a write after every batch, an ftruncate
/// to the batches' end after every write.
#[derive(Clone, Copy)]
struct Shape {
    batch_bytes: usize,
    write_each: bool,
    exact_size: bool,
}

fn run_appends(iters: u64, shape: Shape) -> Duration {
    ringtail::server::raise_memlock();
    glommio::LocalExecutorBuilder::default()
        .io_memory(ringtail::server::IO_MEMORY_BYTES)
        .spawn(move || async move {
            let root = tempfile::tempdir_in(bench_dir()).expect("bench dir");
            probe_device(root.path()).await.expect("probe");
            let config = LogConfig {
                segment_bytes: u32::MAX as u64,
                index_interval_bytes: 4096,
                write_buffer_bytes: 1 << 20,
                max_batch_bytes: 1 << 20,
                max_decompressed_batch_bytes: 64 << 20,
                preallocate: true,
                segment_index_bytes: 10 << 20,
            };
            let mut log = Log::open(root.path().join("bench-0"), config, 0, -1, |_| {})
                .await
                .expect("log");
            let mut template = batch(shape.batch_bytes);
            let start = Instant::now();
            let mut since_sync = 0u64;
            for _ in 0..iters * BATCHES_PER_ITER as u64 {
                if !log.active().has_room(template.len()) {
                    write_out(&mut log, shape.exact_size).await;
                }
                let leo = log.log_end_offset();
                assign_offsets(&mut template, leo, 0);
                log.append(&template);
                since_sync += template.len() as u64;
                if shape.write_each {
                    write_out(&mut log, shape.exact_size).await;
                }
                if since_sync >= SYNC_EVERY_BYTES {
                    write_out(&mut log, shape.exact_size).await;
                    log.active().file.fdatasync().await.expect("fdatasync");
                    since_sync = 0;
                }
            }
            write_out(&mut log, shape.exact_size).await;
            log.active().file.fdatasync().await.expect("fdatasync");
            start.elapsed()
        })
        .expect("executor")
        .join()
        .expect("join")
}

async fn write_out(log: &mut Log, exact_size: bool) {
    if let Some(p) = log.active_mut().take_write() {
        let end = p.position + p.buffer.len() as u64;
        let step = ringtail::config::PREALLOCATE_STEP_BYTES;
        if let Some(size) = log.active().preallocation_needed(end, step) {
            p.file.pre_allocate(size, true).await.expect("fallocate");
            log.active_mut().allocated_to(size);
        }
        p.file
            .write_rc_at(p.buffer, p.position)
            .await
            .expect("write");
        log.active_mut().written_to(p.end);
        if exact_size {
            p.file.truncate(p.end).await.expect("ftruncate");
        }
    }
}

fn dma_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("dma_append");
    group.throughput(Throughput::Bytes((BATCH_BYTES * BATCHES_PER_ITER) as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));
    let large = Shape {
        batch_bytes: BATCH_BYTES,
        write_each: false,
        exact_size: false,
    };
    group.bench_function("64KiB-batches", |b| {
        b.iter_custom(|iters| run_appends(iters, large))
    });
    group.throughput(Throughput::Bytes(
        (SMALL_BATCH_BYTES * BATCHES_PER_ITER) as u64,
    ));
    for (name, exact_size) in [
        ("1000B-write-each", false),
        ("1000B-write-each-exact-size", true),
    ] {
        let shape = Shape {
            batch_bytes: SMALL_BATCH_BYTES,
            write_each: true,
            exact_size,
        };
        group.bench_function(name, |b| b.iter_custom(|iters| run_appends(iters, shape)));
    }
    group.finish();
}

criterion_group!(benches, dma_append);
criterion_main!(benches);
