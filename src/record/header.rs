//! The 61-byte v2 batch header: a borrowed view of its fields, the framing
//! and CRC32C check used on produce and by recovery, and the in-place writes
//! that give a batch its place in the log.

use super::BatchError;

/// Size of the v2 batch header up to the first record.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before `batch_length` counts: base offset (8) and the length itself (4).
pub const LOG_OVERHEAD: usize = 12;
/// Timestamp of a record or batch that has none (Kafka's NO_TIMESTAMP).
pub const NO_TIMESTAMP: i64 = -1;

const BASE_OFFSET: usize = 0;
pub(super) const BATCH_LENGTH: usize = 8;
const PARTITION_LEADER_EPOCH: usize = 12;
pub(super) const MAGIC: usize = 16;
const CRC: usize = 17;
pub(super) const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
pub(super) const BASE_SEQUENCE: usize = 53;
pub(super) const RECORDS_COUNT: usize = 57;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
pub(super) const ATTR_LOG_APPEND_TIME: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

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
    /// The records (compressed or not) that follow the header, as far as
    /// the viewed bytes hold them.
    pub fn records_bytes(&self) -> &'a [u8] {
        let end = self
            .total_size()
            .clamp(BATCH_HEADER_BYTES, self.bytes.len());
        &self.bytes[BATCH_HEADER_BYTES..end]
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
    /// The timestamp type bit: the batch's records all carry the batch's
    /// max timestamp (LogAppendTime) instead of their own (CreateTime).
    pub fn is_log_append_time(&self) -> bool {
        self.attributes() & ATTR_LOG_APPEND_TIME != 0
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
/// its size: framing, magic and CRC32C, not the records. Used both on
/// produce and by recovery.
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

/// Splits a leader's record set (for a follower to append as it is) into
/// whole batches, each intact (length, magic, CRC32C). The leader validated
/// the records when they were produced.
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

impl BatchHeader<'_> {
    /// Base offset and batch length from the first 12 bytes of a batch.
    pub fn parse_prefix(bytes: &[u8]) -> Result<(i64, i32), BatchError> {
        if bytes.len() < LOG_OVERHEAD {
            return Err(BatchError::Truncated(bytes.len()));
        }
        Ok((be_i64(bytes, BASE_OFFSET), be_i32(bytes, BATCH_LENGTH)))
    }
}

/// Assigns the batch its place in the log: base offset and leader epoch are
/// written in place. The CRC covers neither, so it stays valid.
pub fn assign_offsets(batch: &mut [u8], base_offset: i64, leader_epoch: i32) {
    batch[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
    batch[PARTITION_LEADER_EPOCH..PARTITION_LEADER_EPOCH + 4]
        .copy_from_slice(&leader_epoch.to_be_bytes());
}

/// Writes the CRC32C of everything after it (the batch is `batch_length`
/// long, or as long as the slice if shorter).
pub(super) fn update_crc(batch: &mut [u8]) {
    let size = (LOG_OVERHEAD + be_i32(batch, BATCH_LENGTH).max(0) as usize).min(batch.len());
    let crc = crc32c::crc32c(&batch[ATTRIBUTES..size]);
    batch[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
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
    update_crc(batch);
}

/// Makes the batch a CreateTime batch whose max timestamp is
/// `max_timestamp`, recomputing the CRC, as Kafka's LogValidator rewrites a
/// produced batch whose header disagrees with its records.
pub(super) fn set_create_time(batch: &mut [u8], max_timestamp: i64) {
    let attributes = be_i16(batch, ATTRIBUTES) & !ATTR_LOG_APPEND_TIME;
    batch[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&max_timestamp.to_be_bytes());
    update_crc(batch);
}

/// Stamps an accepted batch with the broker's time (message.timestamp.type
/// = LogAppendTime): the timestamp-type bit and the max timestamp, which
/// consumers read as every record's timestamp, and the CRC over them.
pub fn set_log_append_time(batch: &mut [u8], now_ms: i64) {
    let attributes = be_i16(batch, ATTRIBUTES) | ATTR_LOG_APPEND_TIME;
    batch[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&now_ms.to_be_bytes());
    update_crc(batch);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::make_batch;
    use kafka_protocol::records::Compression;

    #[test]
    fn valid_batch_passes_and_reports_header() {
        let batch = make_batch(5, Compression::None, 1000);
        let size = validate_batch(&batch, 1 << 20).unwrap();
        assert_eq!(size, batch.len());
        let h = BatchHeader::parse(&batch).unwrap();
        assert_eq!(h.records_count(), 5);
        assert_eq!(h.last_offset_delta(), 4);
        assert_eq!(h.max_timestamp(), 1004);
        assert_eq!(h.records_bytes().len(), batch.len() - BATCH_HEADER_BYTES);
        assert!(!h.is_log_append_time());
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
    fn set_log_append_time_sets_the_type_bit_and_keeps_the_crc_valid() {
        let mut batch = make_batch(2, Compression::None, 100);
        set_log_append_time(&mut batch, 777);
        let h = BatchHeader::parse(&batch).unwrap();
        assert!(h.is_log_append_time());
        assert_eq!(h.max_timestamp(), 777);
        validate_batch(&batch, 1 << 20).unwrap();
    }

    #[test]
    fn set_create_time_clears_the_type_bit_and_keeps_the_crc_valid() {
        let mut batch = make_batch(2, Compression::None, 100);
        let attributes = (ATTR_LOG_APPEND_TIME).to_be_bytes();
        batch[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes);
        set_create_time(&mut batch, 555);
        let h = BatchHeader::parse(&batch).unwrap();
        assert!(!h.is_log_append_time());
        assert_eq!(h.max_timestamp(), 555);
        validate_batch(&batch, 1 << 20).unwrap();
    }
}
