//! Record batches under hostile input: produce validation
//! (`record::validate_produce`, as a produce runs it before anything is
//! appended) and the bounded record iteration that readers of stored
//! batches use, fuzzed with mutants of valid batches of every codec, of
//! batches whose records were damaged before compression, of payloads
//! flagged with the wrong codec and of decompression bombs (seeds in
//! tests/fuzz/batches.rs). Every mutant gets its CRC fixed, so the damage
//! reaches the checks behind it. `RINGTAIL_FUZZ_SECONDS=600 cargo test
//! --release --test fuzz_batches` runs a long session.
//!
//! The allocation bound counts what Rust code allocates. The lz4 and zstd
//! decoders are C libraries allocating with malloc, outside the count: their
//! memory is bounded by their windows (see src/record/compression.rs), and
//! what they write into it by the decompression cap.

mod fuzz;

use bytes::Bytes;
use kafka_protocol::records::Compression;
use ringtail::record::{
    batch_records, readable_records, validate_produce, BatchError, BatchLimits,
};

use fuzz::batches::{self, fix_crc, HEADER_BYTES};
use fuzz::rng::Rng;
use fuzz::{alloc, Target};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

/// The decompression cap of the target: small, so bombs of a few KiB on the
/// wire pass it and the cap, not the input, is what memory is bounded by.
const DECOMPRESSED_CAP_BYTES: usize = 256 * 1024;
const LIMITS: BatchLimits = BatchLimits {
    max_batch_bytes: 1 << 20,
    max_decompressed_bytes: DECOMPRESSED_CAP_BYTES,
};
/// Seeds that decompress to this much, past the cap.
const BOMB_BYTES: usize = 4 * DECOMPRESSED_CAP_BYTES;

/// What one validation may hold at its peak, as src/record/ reads batches:
/// the mutant's copy (its CRC fixed) and, when it is read back, one record
/// with its key and value copied out of a decompressed stream (at most the
/// cap); a snappy block decompressed whole (at most the cap); and fixed
/// costs: a 32 KiB buffer between codec and record parser, gzip's inflate
/// state and 32 KiB window, the error's text.
fn alloc_bound(len: usize) -> usize {
    len + 2 * DECOMPRESSED_CAP_BYTES + FIXED_BYTES
}
const FIXED_BYTES: usize = 128 * 1024;

struct Batches;

impl Target for Batches {
    fn name(&self) -> &'static str {
        "batches"
    }

    fn seeds(&self, rng: &mut Rng) -> Vec<Vec<u8>> {
        batches::seeds(rng, BOMB_BYTES)
    }

    fn run(&self, input: Bytes) -> bool {
        let mut batch = input.to_vec();
        fix_crc(&mut batch);
        match validate_produce(&batch, &LIMITS) {
            Ok(produced) => {
                // What passed reads back whole: exactly its records count.
                let count = i32::from_be_bytes(batch[57..61].try_into().unwrap());
                let mut read = 0;
                for r in batch_records(&batch[..produced.size], LIMITS.max_decompressed_bytes, true)
                    .expect("an accepted batch opens")
                {
                    r.expect("every record of an accepted batch reads");
                    read += 1;
                }
                assert_eq!(read, count, "records read back from an accepted batch");
                true
            }
            Err(_) => {
                // As stored by an older version: readers stop where it
                // breaks, within the same bounds.
                readable_records(&batch, LIMITS.max_decompressed_bytes, true).count();
                false
            }
        }
    }

    fn alloc_bound(&self, len: usize) -> usize {
        alloc_bound(len)
    }
}

#[test]
fn fuzz_batch_validation() {
    let report = fuzz::fuzz(&Batches);
    assert!(report.cases > 1000, "too few cases ran: {report:?}");
    assert!(report.accepted > 0, "no mutant was accepted: {report:?}");
}

#[test]
fn seeds_are_what_they_claim() {
    let seeds = batches::seeds(&mut Rng::new(7), BOMB_BYTES);
    let bombs = &seeds[seeds.len() - 4..];
    for bomb in bombs {
        let (result, peak) = alloc::peak_during("bomb", 0, || validate_produce(bomb, &LIMITS));
        assert_eq!(
            result,
            Err(BatchError::DecompressedTooLarge {
                limit: DECOMPRESSED_CAP_BYTES
            })
        );
        assert!(peak <= alloc_bound(bomb.len()), "peak {peak}");
        let roomy = BatchLimits {
            max_decompressed_bytes: 2 * BOMB_BYTES,
            ..LIMITS
        };
        assert!(
            validate_produce(bomb, &roomy).is_ok(),
            "well-formed below the cap"
        );
    }
    let (valid, rest) = seeds.split_at(2 * batches::CODECS.len());
    for seed in valid {
        assert!(validate_produce(seed, &LIMITS).is_ok());
    }
    let flagged: Vec<&Vec<u8>> = rest.iter().skip(4).step_by(5).take(4).collect();
    for seed in flagged {
        assert!(
            validate_produce(seed, &LIMITS).is_err(),
            "flagged with another codec"
        );
    }
}

/// The measurement can fail: kafka-protocol's batch decoder sizes a Vec by
/// the records count read from the data, so a 100,000-record claim around
/// one record takes far beyond the bound; validation refuses it within it.
#[test]
fn the_allocation_bound_catches_the_codec_decoder() {
    use kafka_protocol::records::RecordBatchDecoder;
    let mut batch = batches::batch(1, 10, Compression::None, |_| b'v');
    batch[57..61].copy_from_slice(&100_000i32.to_be_bytes());
    batch[23..27].copy_from_slice(&99_999i32.to_be_bytes());
    fix_crc(&mut batch);
    let len = batch.len();
    let mut bytes = Bytes::from(batch.clone());
    let (_, peak) = alloc::peak_during("codec decoder", 0, || {
        RecordBatchDecoder::decode(&mut bytes).is_ok()
    });
    assert!(peak > alloc_bound(len), "peak {peak}");
    let (result, peak) = alloc::peak_during("validation", 0, || validate_produce(&batch, &LIMITS));
    assert!(
        matches!(result, Err(BatchError::BadRecord { index: 1, .. })),
        "{result:?}"
    );
    assert!(peak <= alloc_bound(len), "peak {peak}");
}

/// Records damaged before compression are refused the same in every codec.
#[test]
fn damage_under_every_codec_is_found() {
    let plain = batches::batch(3, 20, Compression::None, |_| b'v');
    let mut records = plain[HEADER_BYTES..].to_vec();
    records[0] = 0x01; // the first record's length: -1
    for codec in batches::CODECS {
        let batch = batches::with_records(&plain, codec, &records);
        assert!(
            matches!(
                validate_produce(&batch, &LIMITS),
                Err(BatchError::BadRecord { index: 0, .. })
            ),
            "{codec:?}"
        );
    }
}
