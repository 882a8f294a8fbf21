//! Record batch (magic v2) header view: validation, offset assignment in place,
//! and record iteration for the rare paths that need single records.
//!
//! Pure functions over byte slices; any shard may call them. The produce hot
//! path reads the 61-byte header, checks the CRC32C and patches the base offset
//! and leader epoch (neither is covered by the CRC), never decoding records.

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

/// Size of the v2 batch header up to the first record.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before `batch_length` counts: base offset (8) and the length itself (4).
pub const LOG_OVERHEAD: usize = 12;

const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const PARTITION_LEADER_EPOCH: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORDS_COUNT: usize = 57;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("record batch truncated: {0} bytes left")]
    Truncated(usize),
    #[error("record batch magic {0} is not 2")]
    BadMagic(i8),
    #[error("record batch length {0} is invalid")]
    BadLength(i32),
    #[error("record batch CRC mismatch: stored {stored:#x}, computed {computed:#x}")]
    BadCrc { stored: u32, computed: u32 },
    #[error("record batch of {0} bytes is above the limit")]
    TooLarge(usize),
    #[error("record batch header is inconsistent: {0}")]
    Invalid(&'static str),
}

/// A borrowed view of one batch's header.
#[derive(Clone, Copy)]
pub struct BatchHeader<'a> {
    bytes: &'a [u8],
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl BatchHeader<'_> {
    /// Base offset and batch length from the first 12 bytes of a batch.
    pub fn parse_prefix(bytes: &[u8]) -> Result<(i64, i32), BatchError> {
        if bytes.len() < LOG_OVERHEAD {
            return Err(BatchError::Truncated(bytes.len()));
        }
        Ok((be_i64(bytes, BASE_OFFSET), be_i32(bytes, BATCH_LENGTH)))
    }
}

impl<'a> BatchHeader<'a> {
    /// Views the header at the start of `bytes`, which must hold at least
    /// the whole header. Checks nothing else.
    pub fn parse(bytes: &'a [u8]) -> Result<BatchHeader<'a>, BatchError> {
        if bytes.len() < BATCH_HEADER_BYTES {
            return Err(BatchError::Truncated(bytes.len()));
        }
        Ok(BatchHeader { bytes })
    }
    pub fn base_offset(&self) -> i64 {
        be_i64(self.bytes, BASE_OFFSET)
    }
    pub fn batch_length(&self) -> i32 {
        be_i32(self.bytes, BATCH_LENGTH)
    }
    /// Whole batch size in bytes, including the 12-byte log overhead.
    pub fn total_size(&self) -> usize {
        LOG_OVERHEAD + self.batch_length().max(0) as usize
    }
    pub fn partition_leader_epoch(&self) -> i32 {
        be_i32(self.bytes, PARTITION_LEADER_EPOCH)
    }
    pub fn magic(&self) -> i8 {
        self.bytes[MAGIC] as i8
    }
    pub fn crc(&self) -> u32 {
        be_i32(self.bytes, CRC) as u32
    }
    pub fn attributes(&self) -> i16 {
        be_i16(self.bytes, ATTRIBUTES)
    }
    pub fn compression_codec(&self) -> i16 {
        self.attributes() & ATTR_COMPRESSION_MASK
    }
    pub fn is_transactional(&self) -> bool {
        self.attributes() & ATTR_TRANSACTIONAL != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes() & ATTR_CONTROL != 0
    }
    pub fn last_offset_delta(&self) -> i32 {
        be_i32(self.bytes, LAST_OFFSET_DELTA)
    }
    pub fn last_offset(&self) -> i64 {
        self.base_offset() + self.last_offset_delta() as i64
    }
    pub fn base_timestamp(&self) -> i64 {
        be_i64(self.bytes, BASE_TIMESTAMP)
    }
    pub fn max_timestamp(&self) -> i64 {
        be_i64(self.bytes, MAX_TIMESTAMP)
    }
    pub fn producer_id(&self) -> i64 {
        be_i64(self.bytes, PRODUCER_ID)
    }
    pub fn producer_epoch(&self) -> i16 {
        be_i16(self.bytes, PRODUCER_EPOCH)
    }
    pub fn base_sequence(&self) -> i32 {
        be_i32(self.bytes, BASE_SEQUENCE)
    }
    pub fn records_count(&self) -> i32 {
        be_i32(self.bytes, RECORDS_COUNT)
    }
    /// Sequence number of the batch's last record (sequences wrap at i32::MAX).
    pub fn last_sequence(&self) -> i32 {
        let seq = self.base_sequence() as i64 + self.last_offset_delta() as i64;
        if seq > i32::MAX as i64 {
            (seq - i32::MAX as i64 - 1) as i32
        } else {
            seq as i32
        }
    }
}

/// Checks that `bytes` starts with one complete, intact v2 batch and returns
/// its size. Used both on produce and by recovery.
pub fn validate_batch(bytes: &[u8], max_batch_bytes: usize) -> Result<usize, BatchError> {
    let header = BatchHeader::parse(bytes)?;
    let length = header.batch_length();
    if length < (BATCH_HEADER_BYTES - LOG_OVERHEAD) as i32 {
        return Err(BatchError::BadLength(length));
    }
    let size = header.total_size();
    if size > max_batch_bytes {
        return Err(BatchError::TooLarge(size));
    }
    if bytes.len() < size {
        return Err(BatchError::Truncated(bytes.len()));
    }
    if header.magic() != 2 {
        return Err(BatchError::BadMagic(header.magic()));
    }
    let computed = crc32c::crc32c(&bytes[ATTRIBUTES..size]);
    if computed != header.crc() {
        return Err(BatchError::BadCrc {
            stored: header.crc(),
            computed,
        });
    }
    Ok(size)
}

/// Extra checks for batches coming from producers (not from our own log).
pub fn validate_produced(header: &BatchHeader) -> Result<(), BatchError> {
    if header.is_control() {
        return Err(BatchError::Invalid(
            "producers may not write control batches",
        ));
    }
    if header.compression_codec() > 4 {
        return Err(BatchError::Invalid("unknown compression codec"));
    }
    let count = header.records_count();
    if count < 1 || header.last_offset_delta() != count - 1 {
        return Err(BatchError::Invalid(
            "records count and last offset delta disagree",
        ));
    }
    Ok(())
}

/// Assigns the batch its place in the log: base offset and leader epoch are
/// written in place. The CRC covers neither, so it stays valid.
pub fn assign_offsets(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[PARTITION_LEADER_EPOCH..PARTITION_LEADER_EPOCH + 4]
        .copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Moves a batch's timestamps so that its first record is at `base_timestamp`
/// (record deltas unchanged) and recomputes its CRC. Used by clients that
/// resend one encoded batch.
pub fn set_timestamps(batch: &mut [u8], base_timestamp: i64) {
    let old_base = be_i64(batch, BASE_TIMESTAMP);
    let max = be_i64(batch, MAX_TIMESTAMP);
    batch[BASE_TIMESTAMP..BASE_TIMESTAMP + 8].copy_from_slice(&base_timestamp.to_be_bytes());
    let new_max = base_timestamp + (max - old_base);
    batch[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&new_max.to_be_bytes());
    let size = (LOG_OVERHEAD + be_i32(batch, BATCH_LENGTH) as usize).min(batch.len());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES..size]);
    batch[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Splits a produce request's record set into whole batches, validating each.
pub fn split_batches(mut records: &[u8], max_batch_bytes: usize) -> Result<Vec<usize>, BatchError> {
    let mut sizes = Vec::new();
    if records.is_empty() {
        return Err(BatchError::Invalid("empty record set"));
    }
    while !records.is_empty() {
        let size = validate_batch(records, max_batch_bytes)?;
        validate_produced(&BatchHeader::parse(records)?)?;
        sizes.push(size);
        records = &records[size..];
    }
    Ok(sizes)
}

/// Splits a leader's record set (for a follower to append as it is) into
/// whole batches, each intact (length, magic, CRC32C).
pub fn split_replicated(
    mut records: &[u8],
    max_batch_bytes: usize,
) -> Result<Vec<usize>, BatchError> {
    let mut sizes = Vec::new();
    while !records.is_empty() {
        let size = validate_batch(
            records,
            max_batch_bytes.max(crate::config::MIN_RECOVERED_BATCH_BYTES),
        )?;
        sizes.push(size);
        records = &records[size..];
    }
    if sizes.is_empty() {
        return Err(BatchError::Invalid("empty record set"));
    }
    Ok(sizes)
}

/// One record's offset and timestamp, for lookups by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPosition {
    pub offset: i64,
    pub timestamp: i64,
}

/// Decodes (and decompresses) one batch and lists its records' offsets and
/// timestamps. Slow path: ListOffsets by timestamp only.
pub fn record_positions(batch: &Bytes) -> Result<Vec<RecordPosition>, BatchError> {
    let mut buf = batch.clone();
    let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf)
        .map_err(|_| BatchError::Invalid("records could not be decoded"))?;
    let _ = buf.remaining();
    Ok(set
        .records
        .iter()
        .map(|r| RecordPosition {
            offset: r.offset,
            timestamp: r.timestamp,
        })
        .collect())
}

/// Batches smaller than this are copied together when a fetch response is
/// assembled, so a response of many small batches stays a few parts.
pub const COALESCE_BATCH_BYTES: usize = 16 * 1024;

/// Whole record batches for a fetch response, kept as the shared buffers
/// they were cached or read into: the response is written from them without
/// another copy.
#[derive(Debug, Clone, Default)]
pub struct RecordSet {
    parts: Vec<Bytes>,
    len: usize,
}

impl RecordSet {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn parts(&self) -> &[Bytes] {
        &self.parts
    }

    /// The batches as one buffer (copies unless there is a single part).
    pub fn to_bytes(&self) -> Bytes {
        match self.parts.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut out = BytesMut::with_capacity(self.len);
                for p in many {
                    out.extend_from_slice(p);
                }
                out.freeze()
            }
        }
    }
}

impl From<Bytes> for RecordSet {
    fn from(b: Bytes) -> RecordSet {
        let mut builder = RecordSetBuilder::default();
        builder.push(b);
        builder.finish()
    }
}

/// Collects batches into a [`RecordSet`]: large ones by reference, small
/// ones copied into a shared buffer.
#[derive(Debug, Default)]
pub struct RecordSetBuilder {
    parts: Vec<Bytes>,
    small: BytesMut,
    len: usize,
}

impl RecordSetBuilder {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a shared buffer, by reference unless it is small.
    pub fn push(&mut self, b: Bytes) {
        self.len += b.len();
        if b.len() < COALESCE_BATCH_BYTES {
            self.small.extend_from_slice(&b);
        } else if !b.is_empty() {
            self.flush_small();
            self.parts.push(b);
        }
    }

    /// Adds bytes from a buffer that is not kept (one copy).
    pub fn push_slice(&mut self, b: &[u8]) {
        if b.len() < COALESCE_BATCH_BYTES {
            self.small.extend_from_slice(b);
        } else {
            self.flush_small();
            self.parts.push(Bytes::copy_from_slice(b));
        }
        self.len += b.len();
    }

    fn flush_small(&mut self) {
        if !self.small.is_empty() {
            self.parts.push(self.small.split().freeze());
        }
    }

    pub fn finish(mut self) -> RecordSet {
        self.flush_small();
        RecordSet {
            parts: self.parts,
            len: self.len,
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    /// Builds a producer-style batch of `n` records with the given compression.
    pub fn make_batch(n: usize, compression: Compression, base_ts: i64) -> BytesMut {
        let records: Vec<Record> = (0..n)
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
                timestamp: base_ts + i as i64,
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(vec![b'v'; 100])),
                headers: [(
                    StrBytes::from_static_str("h"),
                    Some(Bytes::from_static(b"x")),
                )]
                .into_iter()
                .collect(),
            })
            .collect();
        let mut buf = BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression,
        };
        RecordBatchEncoder::encode(&mut buf, &records, &options).expect("encode");
        buf
    }

    #[test]
    fn valid_batch_passes_and_reports_header() {
        let batch = make_batch(5, Compression::None, 1000);
        let size = validate_batch(&batch, 1 << 20).unwrap();
        assert_eq!(size, batch.len());
        let h = BatchHeader::parse(&batch).unwrap();
        assert_eq!(h.records_count(), 5);
        assert_eq!(h.last_offset_delta(), 4);
        assert_eq!(h.max_timestamp(), 1004);
        validate_produced(&h).unwrap();
    }

    #[test]
    fn flipped_bit_fails_crc() {
        let mut batch = make_batch(3, Compression::None, 0);
        let last = batch.len() - 1;
        batch[last] ^= 1;
        assert!(matches!(
            validate_batch(&batch, 1 << 20),
            Err(BatchError::BadCrc { .. })
        ));
    }

    #[test]
    fn truncated_and_oversized_batches_are_refused() {
        let batch = make_batch(3, Compression::Gzip, 0);
        assert!(matches!(
            validate_batch(&batch[..batch.len() - 1], 1 << 20),
            Err(BatchError::Truncated(_))
        ));
        assert!(matches!(
            validate_batch(&batch[..10], 1 << 20),
            Err(BatchError::Truncated(10))
        ));
        assert!(matches!(
            validate_batch(&batch, 20),
            Err(BatchError::TooLarge(_))
        ));
    }

    #[test]
    fn wrong_magic_is_refused() {
        let mut batch = make_batch(1, Compression::None, 0);
        batch[MAGIC] = 1;
        assert_eq!(
            validate_batch(&batch, 1 << 20),
            Err(BatchError::BadMagic(1))
        );
    }

    #[test]
    fn offset_assignment_keeps_crc_valid() {
        let mut batch = make_batch(4, Compression::Lz4, 0);
        assign_offsets(&mut batch, 1234, 7);
        validate_batch(&batch, 1 << 20).unwrap();
        let h = BatchHeader::parse(&batch).unwrap();
        assert_eq!(h.base_offset(), 1234);
        assert_eq!(h.last_offset(), 1237);
        assert_eq!(h.partition_leader_epoch(), 7);
        let positions = record_positions(&batch.freeze()).unwrap();
        assert_eq!(
            positions.iter().map(|p| p.offset).collect::<Vec<_>>(),
            vec![1234, 1235, 1236, 1237]
        );
    }

    #[test]
    fn split_finds_every_batch() {
        let mut all = make_batch(2, Compression::None, 0);
        all.extend_from_slice(&make_batch(3, Compression::Snappy, 0));
        assert_eq!(split_batches(&all, 1 << 20).unwrap().len(), 2);
        assert!(split_batches(&[], 1 << 20).is_err());
    }

    proptest::proptest! {
        /// Any bytes: validation answers, never panics, and accepts only
        /// what has a matching CRC.
        #[test]
        fn validation_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            if validate_batch(&bytes, 1 << 20).is_ok() {
                let h = BatchHeader::parse(&bytes).unwrap();
                proptest::prop_assert_eq!(crc32c::crc32c(&bytes[ATTRIBUTES..h.total_size()]), h.crc());
            }
            let _ = split_batches(&bytes, 1 << 20);
        }

        #[test]
        fn assigned_offsets_read_back(base in 0i64..i64::MAX / 2, epoch in 0i32..i32::MAX, n in 1usize..20) {
            let mut batch = make_batch(n, Compression::None, 0);
            assign_offsets(&mut batch, base, epoch);
            validate_batch(&batch, 1 << 20).unwrap();
            let h = BatchHeader::parse(&batch).unwrap();
            proptest::prop_assert_eq!((h.base_offset(), h.last_offset(), h.partition_leader_epoch()), (base, base + n as i64 - 1, epoch));
        }
    }

    #[test]
    fn sequence_wraps() {
        let mut batch = make_batch(3, Compression::None, 0);
        batch[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&i32::MAX.to_be_bytes());
        let h = BatchHeader::parse(&batch).unwrap();
        assert_eq!(h.last_sequence(), 1);
    }

    #[test]
    fn set_timestamps_keeps_the_batch_valid() {
        let mut batch = make_batch(10, Compression::None, 100);
        let before = BatchHeader::parse(&batch).unwrap().max_timestamp()
            - BatchHeader::parse(&batch).unwrap().base_timestamp();
        set_timestamps(&mut batch, 1_700_000_000_000);
        let h = BatchHeader::parse(&batch).unwrap();
        assert_eq!(h.base_timestamp(), 1_700_000_000_000);
        assert_eq!(h.max_timestamp() - h.base_timestamp(), before);
        assert_eq!(validate_batch(&batch, 1 << 20).unwrap(), batch.len());
    }

    #[test]
    fn record_sets_keep_large_parts_and_coalesce_small_ones() {
        let mut b = RecordSetBuilder::default();
        b.push(Bytes::from(vec![1u8; 10]));
        b.push(Bytes::from(vec![2u8; 20]));
        b.push(Bytes::from(vec![3u8; COALESCE_BATCH_BYTES]));
        b.push_slice(&[4u8; 5]);
        let set = b.finish();
        assert_eq!(set.len(), 35 + COALESCE_BATCH_BYTES);
        let lens: Vec<usize> = set.parts().iter().map(Bytes::len).collect();
        assert_eq!(lens, vec![30, COALESCE_BATCH_BYTES, 5]);
        let all = set.to_bytes();
        assert_eq!(&all[..10], &[1u8; 10]);
        assert_eq!(all[all.len() - 1], 4);
    }
}
