//! Produce-side validation, as strict as Kafka's LogValidator (and its
//! ProduceRequest and DefaultRecordBatch checks), so that nothing Kafka
//! would refuse is stored: one whole batch per partition, framing and
//! CRC32C, header fields, and every record parsed (compressed batches
//! through bounded decompression).
//!
//! Stricter than Kafka where its leniency would store bytes that clients
//! read differently: record offset deltas must be 0, 1, 2, ... (Kafka
//! rewrites a compressed batch whose deltas are not, and stores an
//! uncompressed one as it is), key, value and header value lengths below -1
//! and varints with bits past their width are refused, a compressed stream
//! must end where the batch ends, and a batch may decompress to at most
//! `max_decompressed_bytes`.

use std::io::BufRead;

use super::compression::{self, Codec};
use super::header::set_create_time;
use super::records::{at_end, read_record};
use super::{validate_batch, BatchError, BatchHeader, NO_TIMESTAMP};

/// The limits a produced batch is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Largest batch on the wire (Kafka's `message.max.bytes`).
    pub max_batch_bytes: usize,
    /// Largest size a compressed batch's records may decompress to.
    pub max_decompressed_bytes: usize,
}

/// What validation learnt about an accepted batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducedBatch {
    /// Bytes of the batch: the whole record set.
    pub size: usize,
    /// Largest record timestamp, or NO_TIMESTAMP: what Kafka stores as the
    /// batch's max timestamp.
    pub max_timestamp: i64,
    /// Smallest record timestamp (for message.timestamp.before.max.ms).
    pub min_timestamp: i64,
    /// The header's timestamp type or max timestamp disagree with its
    /// records; [`normalize_header`] rewrites them as Kafka does.
    pub rewrite_header: bool,
}

/// Validates the record set of one partition of a produce request.
pub fn validate_produce(records: &[u8], limits: &BatchLimits) -> Result<ProducedBatch, BatchError> {
    if records.is_empty() {
        return Err(BatchError::Invalid("empty record set"));
    }
    let size = validate_batch(records, limits.max_batch_bytes)?;
    if size != records.len() {
        return Err(BatchError::Invalid(
            "a produce may carry exactly one record batch per partition",
        ));
    }
    let h = BatchHeader::parse(records)?;
    let codec = check_header(&h)?;
    let limit = limits.max_decompressed_bytes;
    let (min_timestamp, max_timestamp) = match codec {
        Codec::None => walk(&mut h.records_bytes(), &h, codec, limit)?,
        _ => {
            let mut stream = compression::decompress(codec, h.records_bytes(), limit)?;
            walk(&mut stream, &h, codec, limit)?
        }
    };
    // A LogAppendTime batch's records all read as its max timestamp.
    if h.is_log_append_time() && h.max_timestamp() == NO_TIMESTAMP {
        return Err(BatchError::InvalidTimestamp(
            "producers may not set the LogAppendTime type without a timestamp",
        ));
    }
    Ok(ProducedBatch {
        size,
        max_timestamp,
        min_timestamp,
        rewrite_header: h.is_log_append_time() || h.max_timestamp() != max_timestamp,
    })
}

/// Header fields of a produced batch, as Kafka's LogValidator.validateBatch
/// and UnifiedLog check them.
fn check_header(h: &BatchHeader) -> Result<Codec, BatchError> {
    let codec = Codec::from_id(h.compression_codec())?;
    let invalid = |reason| Err(BatchError::Invalid(reason));
    if h.base_offset() != 0 {
        return invalid("a produced batch's base offset must be 0");
    }
    if h.last_offset_delta() < 0 {
        return invalid("negative last offset delta");
    }
    if h.records_count() < 1 {
        return invalid("records count must be at least 1");
    }
    if h.records_count() as i64 != h.last_offset_delta() as i64 + 1 {
        return invalid("records count and last offset delta disagree");
    }
    if h.is_control() {
        return invalid("producers may not write control batches");
    }
    if h.producer_id() >= 0 && h.base_sequence() < 0 {
        return invalid("an idempotent batch needs a base sequence");
    }
    Ok(codec)
}

/// Reads exactly `records_count` records, which must fill the records
/// exactly, with offset deltas 0, 1, 2, ...; returns the smallest and the
/// largest timestamp.
/// Each record consumes bytes, so the loop is bounded by the data (or the
/// decompression cap), not by the count.
fn walk<R: BufRead>(
    input: &mut R,
    h: &BatchHeader,
    codec: Codec,
    limit: usize,
) -> Result<(i64, i64), BatchError> {
    let base_timestamp = h.base_timestamp();
    let mut max_timestamp = NO_TIMESTAMP;
    let mut min_timestamp = i64::MAX;
    for index in 0..h.records_count() {
        let record = match read_record(input, false) {
            Ok(Some(record)) => record,
            Ok(None) => {
                return Err(BatchError::BadRecord {
                    index,
                    reason: "batch holds fewer records than its count",
                })
            }
            Err(e) => return Err(e.at(index, codec, limit)),
        };
        if record.offset_delta != index {
            return Err(BatchError::BadRecord {
                index,
                reason: "record offset deltas are not 0, 1, 2, ...",
            });
        }
        let timestamp = base_timestamp.wrapping_add(record.timestamp_delta);
        max_timestamp = max_timestamp.max(timestamp);
        min_timestamp = min_timestamp.min(timestamp);
    }
    match at_end(input) {
        Ok(true) => Ok((min_timestamp, max_timestamp)),
        Ok(false) => Err(BatchError::Invalid(
            "batch holds more records than its count",
        )),
        Err(e) => Err(compression::stream_error(codec, limit, e)),
    }
}

/// Rewrites the header of an accepted batch whose timestamp type or max
/// timestamp disagree with its records (and its CRC with them); a no-op
/// for the batches well-behaved clients send.
pub fn normalize_header(batch: &mut [u8], produced: &ProducedBatch) {
    if produced.rewrite_header {
        set_create_time(batch, produced.max_timestamp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::{fix_crc, make_batch, raw_batch, record_body, varint, with_length};
    use crate::record::{batch_records, Record};
    use kafka_protocol::records::Compression;
    use std::io::Write;

    const LIMITS: BatchLimits = BatchLimits {
        max_batch_bytes: 1 << 20,
        max_decompressed_bytes: 4 << 20,
    };
    const CODECS: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn records(n: i64) -> Vec<u8> {
        (0..n)
            .flat_map(|i| with_length(&record_body(i, i, b"value")))
            .collect()
    }

    fn bad_record(index: i32, reason: &'static str) -> Result<ProducedBatch, BatchError> {
        Err(BatchError::BadRecord { index, reason })
    }

    #[test]
    fn batches_of_every_codec_pass_and_read_back() {
        for codec in CODECS {
            let batch = make_batch(7, codec, 1000);
            let p = validate_produce(&batch, &LIMITS).unwrap();
            assert_eq!(
                (p.size, p.max_timestamp, p.rewrite_header),
                (batch.len(), 1006, false)
            );
            let read: Vec<Record> = batch_records(&batch, 1 << 20, true)
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(read.len(), 7, "{codec:?}");
            assert_eq!(read[3].offset, 3);
            assert_eq!(read[3].timestamp, 1003);
            assert_eq!(read[3].key.as_deref(), Some(&b"k3"[..]));
            assert_eq!(read[3].value.as_deref(), Some(&[b'v'; 100][..]));
        }
    }

    #[test]
    fn a_count_of_two_to_the_31_around_one_record_is_refused() {
        let batch = raw_batch(&records(1), i32::MAX, i32::MAX - 1, 0);
        assert_eq!(
            validate_produce(&batch, &LIMITS),
            bad_record(1, "batch holds fewer records than its count")
        );
    }

    #[test]
    fn counts_and_offsets_must_agree() {
        let payload = records(2);
        let cases = [
            (
                raw_batch(&payload, 2, 0, 0),
                "records count and last offset delta disagree",
            ),
            (raw_batch(&[], 0, -1, 0), "negative last offset delta"),
            (raw_batch(&payload, 3, 2, 0), ""),
            (
                raw_batch(&payload, 1, 0, 0),
                "batch holds more records than its count",
            ),
        ];
        for (batch, reason) in cases {
            let got = validate_produce(&batch, &LIMITS).unwrap_err();
            if !reason.is_empty() {
                assert_eq!(got, BatchError::Invalid(reason));
            } else {
                assert!(
                    matches!(got, BatchError::BadRecord { index: 2, .. }),
                    "{got}"
                );
            }
        }
        let swapped = [
            with_length(&record_body(1, 0, b"a")),
            with_length(&record_body(0, 0, b"b")),
        ]
        .concat();
        for attributes in [0, 1] {
            let payload = if attributes == 1 {
                gzip(&swapped)
            } else {
                swapped.clone()
            };
            assert_eq!(
                validate_produce(&raw_batch(&payload, 2, 1, attributes), &LIMITS),
                bad_record(0, "record offset deltas are not 0, 1, 2, ...")
            );
        }
    }

    #[test]
    fn header_rules_of_produced_batches() {
        let payload = records(1);
        let mut base_offset = raw_batch(&payload, 1, 0, 0);
        base_offset[7] = 5;
        let mut idempotent = raw_batch(&payload, 1, 0, 0);
        idempotent[43..51].copy_from_slice(&7i64.to_be_bytes());
        fix_crc(&mut idempotent);
        let mut two = raw_batch(&payload, 1, 0, 0);
        two.extend(raw_batch(&payload, 1, 0, 0));
        let invalid = |r| Err(BatchError::Invalid(r));
        for (batch, expected) in [
            (
                base_offset,
                invalid("a produced batch's base offset must be 0"),
            ),
            (
                raw_batch(&payload, 1, 0, 0x20),
                invalid("producers may not write control batches"),
            ),
            (
                idempotent,
                invalid("an idempotent batch needs a base sequence"),
            ),
            (
                two,
                invalid("a produce may carry exactly one record batch per partition"),
            ),
            (
                raw_batch(&payload, 1, 0, 5),
                Err(BatchError::UnsupportedCompression(5)),
            ),
            (Vec::new(), invalid("empty record set")),
        ] {
            assert_eq!(validate_produce(&batch, &LIMITS), expected);
        }
    }

    /// A batch of one record with the given body, its length prefix correct.
    fn one(body: &[u8]) -> Result<ProducedBatch, BatchError> {
        validate_produce(&raw_batch(&with_length(body), 1, 0, 0), &LIMITS)
    }

    #[test]
    fn malformed_varints_are_refused() {
        let head = [0u8, 0, 0]; // attributes, timestamp delta 0, offset delta 0
        let field = |bytes: &[u8]| [&head[..], bytes, &[2, b'v', 0][..]].concat();
        let overlong = field(&[0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        assert_eq!(one(&overlong), bad_record(0, "varint longer than 32 bits"));
        let wide = field(&[0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert_eq!(one(&wide), bad_record(0, "varint longer than 32 bits"));
        // A truncated varint at the end of the records.
        let truncated = raw_batch(&[0x0c, 0x00, 0x00, 0x80], 1, 0, 0);
        assert_eq!(
            validate_produce(&truncated, &LIMITS),
            bad_record(0, "records end inside a record")
        );
        let mut long_ts = vec![0u8];
        long_ts.extend([0xff; 10]);
        assert_eq!(one(&long_ts), bad_record(0, "varlong longer than 64 bits"));
        // Padded varints (0x80 0x00 for 0) read the same everywhere: accepted.
        let padded = [&[0u8, 0x80, 0x00, 0][..], &[1, 2, b'v', 0]].concat();
        one(&padded).unwrap();
    }

    #[test]
    fn lengths_and_counts_inside_a_record_are_checked() {
        let body = record_body(0, 0, b"abc");
        let short = with_length(&body[..body.len() - 1]);
        let long = [varint(body.len() as i64 + 2), body.clone(), vec![0, 0]].concat();
        let beyond = [varint(body.len() as i64 + 5), body.clone()].concat();
        let negative = [varint(-3), body.clone()].concat();
        for (payload, reason) in [
            (short, "record fields run past its length"),
            (long, "record shorter than its length"),
            (beyond, "record shorter than its length"),
            (negative, "negative record length"),
        ] {
            let got = validate_produce(&raw_batch(&payload, 1, 0, 0), &LIMITS);
            assert_eq!(got, bad_record(0, reason));
        }
        let with = |tail: &[u8]| [&[0u8, 0, 0, 1][..], &[2, b'v'], tail].concat();
        assert_eq!(one(&with(&[1])), bad_record(0, "negative header count"));
        assert_eq!(
            one(&with(&[8])),
            bad_record(0, "more headers than the record holds")
        );
        assert_eq!(
            one(&with(&[2, 1, 1])),
            bad_record(0, "negative header key length")
        );
        assert_eq!(
            one(&with(&[2, 2, b'h', 3])),
            bad_record(0, "field length below -1")
        );
        one(&with(&[2, 2, b'h', 1])).unwrap(); // null header value
        let key_minus_two = [&[0u8, 0, 0][..], &varint(-2), &[2, b'v', 0]].concat();
        assert_eq!(one(&key_minus_two), bad_record(0, "field length below -1"));
    }

    #[test]
    fn corrupt_compressed_payloads_are_refused() {
        let noise: Vec<u8> = (0..200u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        for codec in 1..=4 {
            let got = validate_produce(&raw_batch(&noise, 1, 0, codec), &LIMITS).unwrap_err();
            assert!(
                matches!(got, BatchError::CorruptCompressed { .. }),
                "codec {codec}: {got}"
            );
        }
    }

    #[test]
    fn decompression_bombs_stop_at_the_limit() {
        // Zeros are no record: refused at the first one, as Kafka does.
        let zeros = gzip(&vec![0u8; 16 << 20]);
        assert_eq!(
            validate_produce(&raw_batch(&zeros, 1, 0, 1), &LIMITS),
            bad_record(0, "record fields run past its length")
        );
        // Valid records past the limit: refused once the limit is passed.
        let n = (LIMITS.max_decompressed_bytes / 100) as i64 + 1;
        let many: Vec<u8> = (0..n)
            .flat_map(|i| with_length(&record_body(i, 0, &[0; 100])))
            .collect();
        let batch = raw_batch(&gzip(&many), n as i32, n as i32 - 1, 1);
        let limits = BatchLimits {
            max_batch_bytes: 16 << 20,
            ..LIMITS
        };
        assert_eq!(
            validate_produce(&batch, &limits),
            Err(BatchError::DecompressedTooLarge {
                limit: LIMITS.max_decompressed_bytes
            })
        );
    }

    fn with_header(mut batch: Vec<u8>, attributes: i16, base_ts: i64, max_ts: i64) -> Vec<u8> {
        batch[21..23].copy_from_slice(&attributes.to_be_bytes());
        batch[27..35].copy_from_slice(&base_ts.to_be_bytes());
        batch[35..43].copy_from_slice(&max_ts.to_be_bytes());
        fix_crc(&mut batch);
        batch
    }

    #[test]
    fn timestamps_are_checked_and_headers_normalized_as_kafka_does() {
        let plain = raw_batch(&records(2), 2, 1, 0);
        // LogAppendTime set by a producer without a timestamp: refused.
        let lat_none = with_header(plain.clone(), 0x08, -1, -1);
        assert!(matches!(
            validate_produce(&lat_none, &LIMITS),
            Err(BatchError::InvalidTimestamp(_))
        ));
        // LogAppendTime with timestamps, or a wrong max timestamp: stored
        // as CreateTime with the records' max timestamp.
        for attributes in [0x08, 0] {
            let mut batch = with_header(plain.clone(), attributes, 1000, 5);
            let p = validate_produce(&batch, &LIMITS).unwrap();
            assert_eq!((p.max_timestamp, p.rewrite_header), (1001, true));
            normalize_header(&mut batch, &p);
            let h = BatchHeader::parse(&batch).unwrap();
            assert_eq!((h.is_log_append_time(), h.max_timestamp()), (false, 1001));
            assert!(!validate_produce(&batch, &LIMITS).unwrap().rewrite_header);
        }
        // CreateTime without timestamps is fine.
        let none = with_header(
            raw_batch(&with_length(&record_body(0, 0, b"")), 1, 0, 0),
            0,
            -1,
            -1,
        );
        let p = validate_produce(&none, &LIMITS).unwrap();
        assert_eq!((p.max_timestamp, p.rewrite_header), (-1, false));
    }

    /// Every record of a batch that passed, read back.
    fn read_back(batch: &[u8]) -> Result<Vec<Record>, BatchError> {
        batch_records(batch, LIMITS.max_decompressed_bytes, true)?.collect()
    }

    // 256 cases each by default; PROPTEST_CASES=100000 for a long run.
    proptest::proptest! {
        /// Batches built by kafka-protocol's encoder pass, whatever the codec.
        #[test]
        fn encoded_batches_always_pass(n in 1usize..40, codec in 0usize..5, ts in 0i64..1 << 40) {
            let batch = make_batch(n, CODECS[codec], ts);
            let p = validate_produce(&batch, &LIMITS).unwrap();
            proptest::prop_assert_eq!(p.max_timestamp, ts + n as i64 - 1);
            proptest::prop_assert_eq!(read_back(&batch).unwrap().len(), n);
        }

        /// Any single-byte change (CRC fixed up) never panics, and what
        /// passes still decodes to exactly its records count.
        #[test]
        fn mutated_batches_fail_or_decode_whole(
            n in 1usize..6, codec in 0usize..5, at in 0usize..10_000, byte in 0u8..=255,
        ) {
            let mut batch = make_batch(n, CODECS[codec], 0).to_vec();
            let at = at % batch.len();
            batch[at] = byte;
            fix_crc(&mut batch);
            if let Ok(p) = validate_produce(&batch, &LIMITS) {
                let count = BatchHeader::parse(&batch).unwrap().records_count();
                let records = read_back(&batch[..p.size]).unwrap();
                proptest::prop_assert_eq!(records.len(), count as usize);
            }
        }
    }
}
