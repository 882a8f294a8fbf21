use super::*;
use crate::record::tests::{fix_crc, make_batch};
use crate::record::{batch_records, validate_batch, validate_produce, Record};
use kafka_protocol::records::Compression;

const LIMITS: BatchLimits = BatchLimits {
    max_batch_bytes: 1 << 20,
    max_decompressed_bytes: 4 << 20,
};
const CODECS: [(Compression, Codec); 5] = [
    (Compression::None, Codec::None),
    (Compression::Gzip, Codec::Gzip),
    (Compression::Snappy, Codec::Snappy),
    (Compression::Lz4, Codec::Lz4),
    (Compression::Zstd, Codec::Zstd),
];

/// A producer's batch of `n` records in `codec`, as an idempotent producer
/// sends it (producer id, epoch and base sequence set).
fn idempotent_batch(n: usize, codec: Compression) -> Vec<u8> {
    let mut b = make_batch(n, codec, 1_700_000_000_000).to_vec();
    b[43..51].copy_from_slice(&4242i64.to_be_bytes());
    b[51..53].copy_from_slice(&3i16.to_be_bytes());
    b[53..57].copy_from_slice(&17i32.to_be_bytes());
    fix_crc(&mut b);
    b
}

fn records_of(batch: &[u8]) -> Vec<Record> {
    batch_records(batch, 64 << 20, true)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// The records' bytes (keys, values, headers, deltas), decompressed.
fn raw_records(batch: &[u8]) -> Vec<u8> {
    let h = BatchHeader::parse(batch).unwrap();
    let codec = Codec::from_id(h.compression_codec()).unwrap();
    match codec {
        Codec::None => h.records_bytes().to_vec(),
        _ => decompress_all(codec, h.records_bytes(), 64 << 20).unwrap(),
    }
}

#[test]
fn every_codec_pair_round_trips_with_header_fields_kept() {
    for (source, _) in CODECS {
        let original = idempotent_batch(20, source);
        for (_, target) in CODECS {
            let out = recompress(&original, target, &CompressionLevels::default(), &LIMITS)
                .unwrap_or_else(|e| panic!("{source:?} -> {target}: {e}"));
            assert_eq!(validate_batch(&out, 1 << 20).unwrap(), out.len());
            validate_produce(&out, &LIMITS).unwrap();
            let (a, b) = (
                BatchHeader::parse(&original).unwrap(),
                BatchHeader::parse(&out).unwrap(),
            );
            assert_eq!(
                b.compression_codec(),
                target as i16,
                "{source:?} -> {target}"
            );
            assert_eq!(b.attributes() & !7, a.attributes() & !7);
            assert_eq!(
                (b.producer_id(), b.producer_epoch(), b.base_sequence()),
                (4242, 3, 17)
            );
            assert_eq!(
                (b.base_offset(), b.last_offset_delta(), b.records_count()),
                (a.base_offset(), a.last_offset_delta(), a.records_count())
            );
            assert_eq!(
                (b.base_timestamp(), b.max_timestamp()),
                (a.base_timestamp(), a.max_timestamp())
            );
            assert_eq!(raw_records(&out), raw_records(&original));
            assert_eq!(records_of(&out), records_of(&original));
        }
    }
}

#[test]
fn log_append_time_and_offsets_apply_to_the_new_batch() {
    let original = idempotent_batch(5, Compression::Gzip);
    let mut out = recompress(&original, Codec::Zstd, &Default::default(), &LIMITS).unwrap();
    crate::record::set_log_append_time(&mut out, 99);
    crate::record::assign_offsets(&mut out, 1000, 4);
    validate_batch(&out, 1 << 20).unwrap();
    let read = records_of(&out);
    assert_eq!(
        read.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (1000..1005).collect::<Vec<_>>()
    );
    assert!(read.iter().all(|r| r.timestamp == 99));
}

/// Bytes that compress a little: a repeated pattern with noise.
fn text(n: usize) -> Vec<u8> {
    let mut x = 0x9e3779b9u32;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if x.is_multiple_of(4) {
                (x >> 24) as u8
            } else {
                b"the quick brown fox "[i % 20]
            }
        })
        .collect()
}

/// One uncompressed record holding `value`, as a producer's batch.
fn one_value(value: &[u8]) -> Vec<u8> {
    use crate::record::tests::{raw_batch, record_body, with_length};
    raw_batch(&with_length(&record_body(0, 0, value)), 1, 0, 0)
}

#[test]
fn a_batch_past_the_limit_after_recompression_is_refused() {
    let limits = BatchLimits {
        max_batch_bytes: 4096,
        ..LIMITS
    };
    // Compressed it fits; uncompressed it does not.
    let zeros = one_value(&vec![b'a'; 64 * 1024]);
    let zstd = recompress(&zeros, Codec::Zstd, &Default::default(), &LIMITS).unwrap();
    assert!(zstd.len() < 4096);
    assert_eq!(
        recompress(&zstd, Codec::None, &Default::default(), &limits),
        Err(BatchError::RecompressedTooLarge { limit: 4096 })
    );
    // Incompressible bytes grow a little in every codec.
    let noise: Vec<u8> = text(4000)
        .iter()
        .map(|b| b.wrapping_mul(97) ^ 0x5a)
        .collect();
    let noisy = one_value(&noise);
    for target in [Codec::Gzip, Codec::Snappy, Codec::Lz4, Codec::Zstd] {
        let got = recompress(&noisy, target, &Default::default(), &limits);
        if let Ok(out) = &got {
            assert!(out.len() <= 4096, "{target}");
        } else {
            assert_eq!(got, Err(BatchError::RecompressedTooLarge { limit: 4096 }));
        }
    }
    assert_eq!(
        recompress(
            &one_value(&vec![1u8; 8192]),
            Codec::None,
            &Default::default(),
            &limits
        ),
        Err(BatchError::RecompressedTooLarge { limit: 4096 })
    );
}

#[test]
fn lz4_frames_are_what_kafka_reads() {
    let out = recompress(
        &one_value(&text(200_000)),
        Codec::Lz4,
        &Default::default(),
        &LIMITS,
    )
    .unwrap();
    let frame = &out[BATCH_HEADER_BYTES..];
    assert_eq!(&frame[..4], &0x184D2204u32.to_le_bytes());
    // Version 01, independent blocks, no block or content checksum, no
    // content size; 64 KiB blocks.
    assert_eq!((frame[4], frame[5]), (0x60, 0x40));
}

#[test]
fn snappy_uses_kafkas_framing_in_32_kib_blocks() {
    let data = text(100_000);
    let out = recompress(
        &one_value(&data),
        Codec::Snappy,
        &Default::default(),
        &LIMITS,
    )
    .unwrap();
    let mut rest = &out[BATCH_HEADER_BYTES..];
    assert_eq!(&rest[..16], XERIAL_HEADER);
    rest = &rest[16..];
    let mut blocks = 0;
    while !rest.is_empty() {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        let n = snap::raw::decompress_len(&rest[4..4 + len]).unwrap();
        assert!(n <= RECOMPRESS_SNAPPY_BLOCK_BYTES);
        rest = &rest[4 + len..];
        blocks += 1;
    }
    assert!(blocks >= 3);
}

#[test]
fn levels_are_applied() {
    let batch = one_value(&text(300_000));
    let size = |codec, levels: CompressionLevels| {
        recompress(&batch, codec, &levels, &LIMITS).unwrap().len()
    };
    let d = CompressionLevels::default();
    assert!(
        size(Codec::Gzip, CompressionLevels { gzip: 1, ..d })
            > size(Codec::Gzip, CompressionLevels { gzip: 9, ..d })
    );
    assert!(size(Codec::Lz4, d) > size(Codec::Lz4, CompressionLevels { lz4: 12, ..d }));
    assert!(
        size(Codec::Zstd, CompressionLevels { zstd: -5, ..d })
            > size(Codec::Zstd, CompressionLevels { zstd: 19, ..d })
    );
    // -1 is gzip's default level, 6.
    assert_eq!(
        size(Codec::Gzip, d),
        size(Codec::Gzip, CompressionLevels { gzip: 6, ..d })
    );
}

#[test]
fn compression_types_and_targets() {
    assert_eq!(
        CompressionType::from_name("producer"),
        Some(CompressionType::Producer)
    );
    assert_eq!(
        CompressionType::from_name("uncompressed"),
        Some(CompressionType::Codec(Codec::None))
    );
    assert_eq!(CompressionType::from_name("none"), None);
    for name in crate::config::COMPRESSION_TYPES {
        let t = CompressionType::from_name(name).unwrap();
        assert_eq!(t.to_string(), name);
    }
    let zstd = CompressionType::Codec(Codec::Zstd);
    assert_eq!(zstd.target_for(Codec::Zstd), None);
    assert_eq!(zstd.target_for(Codec::Gzip), Some(Codec::Zstd));
    assert_eq!(CompressionType::Producer.target_for(Codec::Gzip), None);
    assert_eq!(
        CompressionType::Codec(Codec::None).target_for(Codec::Lz4),
        Some(Codec::None)
    );
}
