//! Record batches as producers write them, in every codec, and the hostile
//! variants the batch target starts from: records mutated before they are
//! compressed (so the damage survives the codec), payloads flagged with
//! another codec, and small compressed batches of well-formed records that
//! decompress past a cap.

use std::io::Write;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::mutate;
use super::rng::Rng;

/// Bytes of a v2 batch header; its records follow.
pub const HEADER_BYTES: usize = 61;
/// Where the CRC32C sits, and where the bytes it covers start.
const CRC_AT: usize = 17;
const CRC_FROM: usize = 21;
const ATTRIBUTES_AT: usize = 21;

pub const CODECS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

/// A producer's batch of `records` records with `value_bytes` values (each
/// value filled by `fill`), encoded by kafka-protocol with `compression`.
pub fn batch(
    records: usize,
    value_bytes: usize,
    compression: Compression,
    fill: impl Fn(usize) -> u8,
) -> Vec<u8> {
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
            value: Some(Bytes::from(vec![fill(i); value_bytes])),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression,
    };
    RecordBatchEncoder::encode(&mut buf, &records, &options).expect("encode");
    buf.to_vec()
}

/// Recomputes the batch's CRC32C, so that a mutation reaches the checks
/// behind it; inputs too short to hold one are left as they are.
pub fn fix_crc(batch: &mut [u8]) {
    if batch.len() >= CRC_FROM {
        let crc = crc32c::crc32c(&batch[CRC_FROM..]);
        batch[CRC_AT..CRC_FROM].copy_from_slice(&crc.to_be_bytes());
    }
}

/// `payload` compressed as Kafka's producers frame it for `codec`.
pub fn compress(codec: Compression, payload: &[u8]) -> Vec<u8> {
    match codec {
        Compression::None => payload.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(payload).expect("gzip");
            e.finish().expect("gzip")
        }
        Compression::Snappy => {
            // Kafka's xerial framing: magic, version, compatible version,
            // then blocks of at most 32 KiB behind their compressed length.
            let mut out = b"\x82SNAPPY\x00".to_vec();
            out.extend(1i32.to_be_bytes());
            out.extend(1i32.to_be_bytes());
            for block in payload.chunks(32 * 1024) {
                let raw = snap::raw::Encoder::new()
                    .compress_vec(block)
                    .expect("snappy");
                out.extend((raw.len() as u32).to_be_bytes());
                out.extend(raw);
            }
            out
        }
        Compression::Lz4 => {
            let mut e = lz4::EncoderBuilder::new().build(Vec::new()).expect("lz4");
            e.write_all(payload).expect("lz4");
            let (out, result) = e.finish();
            result.expect("lz4");
            out
        }
        Compression::Zstd => zstd::encode_all(payload, 3).expect("zstd"),
    }
}

/// `batch` with its records replaced by `records` compressed with `codec`,
/// its length, codec bits and CRC set to match.
pub fn with_records(batch: &[u8], codec: Compression, records: &[u8]) -> Vec<u8> {
    let mut out = batch[..HEADER_BYTES].to_vec();
    out.extend(compress(codec, records));
    let length = (out.len() - 12) as i32;
    out[8..12].copy_from_slice(&length.to_be_bytes());
    set_codec(&mut out, codec as i16);
    out
}

/// Sets the codec bits of the batch's attributes (0-7, so unknown codecs
/// too) and fixes the CRC.
pub fn set_codec(batch: &mut [u8], codec: i16) {
    let at = ATTRIBUTES_AT;
    let attributes = i16::from_be_bytes([batch[at], batch[at + 1]]);
    let attributes = (attributes & !7) | (codec & 7);
    batch[at..at + 2].copy_from_slice(&attributes.to_be_bytes());
    fix_crc(batch);
}

/// Seeds for the batch target, built from `rng` only: valid batches of
/// every codec; for each compressed codec, batches whose records were
/// mutated before compression and batches flagged with another codec; and
/// per codec one batch of well-formed records of zeros that decompresses
/// to `bomb_bytes`, a few KiB on the wire.
pub fn seeds(rng: &mut Rng, bomb_bytes: usize) -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for codec in CODECS {
        for _ in 0..2 {
            let (n, value) = (1 + rng.below(8), rng.below(200));
            seeds.push(batch(n, value, codec, |i| (i % 251) as u8));
        }
    }
    for codec in &CODECS[1..] {
        for _ in 0..4 {
            let plain = batch(1 + rng.below(6), rng.below(100), Compression::None, |i| {
                i as u8
            });
            let records = mutate::mutant(&[plain[HEADER_BYTES..].to_vec()], rng);
            seeds.push(with_records(&plain, *codec, &records));
        }
        let mut flagged = batch(3, 50, *codec, |_| b'x');
        let other = (*codec as usize + 1 + rng.below(7)) % 8;
        set_codec(&mut flagged, other as i16);
        seeds.push(flagged);
    }
    let value_bytes = 16 * 1024;
    for codec in &CODECS[1..] {
        let records = bomb_bytes.div_ceil(value_bytes) + 1;
        let bomb = batch(records, value_bytes, *codec, |_| 0);
        assert!(
            bomb.len() < mutate::MAX_MUTANT_BYTES,
            "{codec:?} bomb too large"
        );
        seeds.push(bomb);
    }
    seeds
}
