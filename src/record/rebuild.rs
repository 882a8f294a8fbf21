//! Rebuilding a stored batch with some of its records (the log cleaner):
//! the records section read whole (decompressed within a cap), split into
//! raw records, and a new batch written around the ones kept, compressed
//! with the batch's own codec.
//!
//! As Kafka's cleaner does for v2 batches, the rebuilt batch keeps the
//! original header fields: base offset, last offset delta (so the producer's
//! last sequence and the batch's offset range survive), producer id, epoch,
//! base sequence, leader epoch and attributes; only the record count, max
//! timestamp, length and CRC change. When a delete horizon is given the
//! batch gets Kafka's delete-horizon flag (attributes bit 6) and the
//! horizon as its base timestamp, each record's timestamp delta re-encoded
//! against it (KIP-534). Record bytes are otherwise copied as they were.
//!
//! Pure; runs on the shard of the partition being cleaned.

use std::io::Read;

use super::compression::{self, Codec};
use super::recompress::CompressionLevels;
use super::{BatchError, BatchHeader, BATCH_HEADER_BYTES, LOG_OVERHEAD};

/// Kafka's attribute bit for a batch whose base timestamp is its delete
/// horizon (RecordBatch.DELETE_HORIZON_FLAG_MASK).
pub const ATTR_DELETE_HORIZON: i16 = 0x40;
const ATTRIBUTES: usize = 21;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const RECORDS_COUNT: usize = 57;
const CRC: usize = 17;

/// One record of a batch, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRecord<'a> {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    /// A null value: a tombstone.
    pub tombstone: bool,
    /// The whole record, its length prefix included.
    pub bytes: &'a [u8],
    /// Where the timestamp delta starts and ends inside `bytes`.
    timestamp_delta_at: (usize, usize),
}

/// The delete horizon a batch carries (KIP-534), if it has one.
pub fn delete_horizon_ms(h: &BatchHeader) -> Option<i64> {
    (h.attributes() & ATTR_DELETE_HORIZON != 0).then(|| h.base_timestamp())
}

/// The records section of `batch`, decompressed (at most `limit` bytes).
pub fn records_section(batch: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let h = BatchHeader::parse(batch)?;
    if h.total_size() < BATCH_HEADER_BYTES || batch.len() < h.total_size() {
        return Err(BatchError::BadLength(h.batch_length()));
    }
    let codec = Codec::from_id(h.compression_codec())?;
    let mut out = Vec::new();
    compression::decompress(codec, h.records_bytes(), limit)?
        .read_to_end(&mut out)
        .map_err(|e| compression::stream_error(codec, limit, e))?;
    Ok(out)
}

fn varint_at(bytes: &[u8], at: &mut usize) -> Result<i64, BatchError> {
    let mut raw = 0u64;
    for i in 0..10 {
        let b = *bytes.get(*at).ok_or(BatchError::BadRecord {
            index: -1,
            reason: "records end inside a varint",
        })?;
        *at += 1;
        raw |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((raw >> 1) as i64 ^ -((raw & 1) as i64));
        }
    }
    Err(BatchError::BadRecord {
        index: -1,
        reason: "varint longer than 64 bits",
    })
}

fn put_varint(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Splits a decompressed records section into its records; `h` is the
/// batch's header.
pub fn split_records<'a>(
    h: &BatchHeader,
    section: &'a [u8],
) -> Result<Vec<RawRecord<'a>>, BatchError> {
    let bad = |index: usize, reason| BatchError::BadRecord {
        index: index as i32,
        reason,
    };
    let log_append = h.is_log_append_time().then(|| h.max_timestamp());
    let mut out = Vec::with_capacity(h.records_count().clamp(0, 4096) as usize);
    let mut at = 0usize;
    while at < section.len() {
        let index = out.len();
        let start = at;
        let length = varint_at(section, &mut at)?;
        let end = at
            .checked_add(usize::try_from(length).map_err(|_| bad(index, "negative length"))?)
            .filter(|e| *e <= section.len())
            .ok_or(bad(index, "record runs past the batch"))?;
        let body = &section[..end];
        at += 1; // attributes
        let ts_start = at - start;
        let timestamp_delta = varint_at(body, &mut at)?;
        let ts_end = at - start;
        let offset_delta = varint_at(body, &mut at)?;
        let key_len = varint_at(body, &mut at)?;
        let key = if key_len < 0 {
            None
        } else {
            let k = body
                .get(at..at + key_len as usize)
                .ok_or(bad(index, "key runs past the record"))?;
            at += key_len as usize;
            Some(k)
        };
        let value_len = varint_at(body, &mut at)?;
        out.push(RawRecord {
            offset: h.base_offset() + offset_delta,
            timestamp: log_append.unwrap_or(h.base_timestamp().wrapping_add(timestamp_delta)),
            key,
            tombstone: value_len < 0,
            bytes: &section[start..end],
            timestamp_delta_at: (ts_start, ts_end),
        });
        at = end;
    }
    Ok(out)
}

/// A new batch holding `kept` (records of `original`, in order, at least
/// one), its header as described in the module doc. `delete_horizon_ms`
/// stamps the batch with a delete horizon (and must be absent when the
/// original carries one already, which is then kept).
pub fn rebuild_batch(
    original: &[u8],
    kept: &[RawRecord],
    delete_horizon_ms: Option<i64>,
) -> Result<Vec<u8>, BatchError> {
    let h = BatchHeader::parse(original)?;
    let codec = Codec::from_id(h.compression_codec())?;
    let (base_ts, attributes) = match delete_horizon_ms {
        Some(horizon) => (horizon, h.attributes() | ATTR_DELETE_HORIZON),
        None => (h.base_timestamp(), h.attributes()),
    };
    let mut section = Vec::with_capacity(kept.iter().map(|r| r.bytes.len() + 4).sum());
    for r in kept {
        if base_ts == h.base_timestamp() {
            section.extend_from_slice(r.bytes);
            continue;
        }
        // The timestamp delta moves to the new base: re-encode the record.
        let (ts_start, ts_end) = r.timestamp_delta_at;
        let mut body = vec![r.bytes[ts_start - 1]];
        put_varint(&mut body, r.timestamp.wrapping_sub(base_ts));
        body.extend_from_slice(&r.bytes[ts_end..]);
        put_varint(&mut section, body.len() as i64);
        section.extend_from_slice(&body);
    }
    let payload = super::recompress::compress(codec, &CompressionLevels::default(), &section)?;
    let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + payload.len());
    out.extend_from_slice(&original[..BATCH_HEADER_BYTES]);
    out.extend_from_slice(&payload);
    let length = (out.len() - LOG_OVERHEAD) as i32;
    out[8..12].copy_from_slice(&length.to_be_bytes());
    out[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    out[BASE_TIMESTAMP..BASE_TIMESTAMP + 8].copy_from_slice(&base_ts.to_be_bytes());
    if !h.is_log_append_time() {
        let max = kept.iter().map(|r| r.timestamp).max().unwrap_or(-1);
        out[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&max.to_be_bytes());
    }
    out[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    let crc = crc32c::crc32c(&out[ATTRIBUTES..]);
    out[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::make_batch;
    use crate::record::{assign_offsets, batch_records, validate_batch};
    use kafka_protocol::records::{Compression, RecordBatchDecoder};

    fn every_codec() -> [Compression; 5] {
        [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ]
    }

    #[test]
    fn rebuilt_batches_keep_offsets_and_decode_in_every_codec() {
        for codec in every_codec() {
            let mut batch = make_batch(6, codec, 1_000);
            assign_offsets(&mut batch, 500, 3);
            let h = BatchHeader::parse(&batch).unwrap();
            let section = records_section(&batch, 1 << 20).unwrap();
            let records = split_records(&h, &section).unwrap();
            assert_eq!(records.len(), 6);
            let kept: Vec<_> = records
                .iter()
                .copied()
                .filter(|r| r.offset % 2 == 1)
                .collect();
            for horizon in [None, Some(9_000)] {
                let out = rebuild_batch(&batch, &kept, horizon).unwrap();
                assert_eq!(validate_batch(&out, 1 << 20).unwrap(), out.len());
                let nh = BatchHeader::parse(&out).unwrap();
                assert_eq!((nh.base_offset(), nh.last_offset()), (500, 505));
                assert_eq!(nh.records_count(), 3);
                assert_eq!(nh.compression_codec(), h.compression_codec());
                assert_eq!(nh.max_timestamp(), 1_005);
                assert_eq!(delete_horizon_ms(&nh), horizon);
                let got: Vec<_> = batch_records(&out, 1 << 20, true)
                    .unwrap()
                    .map(|r| r.unwrap())
                    .map(|r| (r.offset, r.timestamp, r.key.unwrap()))
                    .collect();
                let want: Vec<_> = [501i64, 503, 505]
                    .iter()
                    .map(|&o| (o, 1_000 + o - 500, format!("k{}", o - 500).into()))
                    .collect::<Vec<(i64, i64, bytes::Bytes)>>();
                assert_eq!(got, want, "{codec:?}");
                // A client's decoder reads it too (headers intact).
                let mut buf = bytes::Bytes::from(out);
                let set = RecordBatchDecoder::decode(&mut buf).unwrap();
                assert_eq!(set.records.len(), 3);
                assert_eq!(set.records[0].headers.len(), 1);
                assert_eq!(set.records[2].timestamp, 1_005);
            }
        }
    }

    #[test]
    fn tombstones_and_keys_are_seen() {
        let body = crate::record::tests::record_body(0, 0, b"x");
        let one = crate::record::tests::with_length(&body);
        let batch = crate::record::tests::raw_batch(&one, 1, 0, 0);
        let h = BatchHeader::parse(&batch).unwrap();
        let section = records_section(&batch, 1 << 20).unwrap();
        let r = split_records(&h, &section).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].key, r[0].tombstone), (None, false));
        assert!(split_records(&h, &section[..section.len() - 1]).is_err());
    }
}
