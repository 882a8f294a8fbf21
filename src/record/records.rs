//! Record iteration: the v2 record grammar read from a batch's records,
//! uncompressed in memory or through a bounded decompressing stream.
//!
//! Every length is checked against the record that holds it and every
//! count against the bytes that follow, so nothing is allocated or looped
//! over by a number read from the data: a batch claiming 2^31 records costs
//! what its bytes cost. Used by produce validation (strict) and by readers
//! of stored batches (ListOffsets by time, group loading), which stop at the
//! first malformed record with a warning instead of failing.

use std::io::{self, BufRead, Read};

use bytes::Bytes;

use super::compression::{self, Codec};
use super::{BatchError, BatchHeader, BATCH_HEADER_BYTES};

/// Why a record could not be read.
pub(super) enum ReadError {
    /// The bytes break the record grammar (INVALID_RECORD in Kafka).
    Malformed(&'static str),
    /// The decompressing stream failed or passed its cap.
    Stream(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> ReadError {
        ReadError::Stream(e)
    }
}

impl ReadError {
    pub(super) fn at(self, index: i32, codec: Codec, limit: usize) -> BatchError {
        match self {
            ReadError::Malformed(reason) => BatchError::BadRecord { index, reason },
            ReadError::Stream(e) => compression::stream_error(codec, limit, e),
        }
    }
}

/// A record's fields, its key and value kept only when asked for.
pub(super) struct RawRecord {
    pub timestamp_delta: i64,
    pub offset_delta: i32,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
}

#[inline(always)]
fn read_u8<R: BufRead>(r: &mut R) -> io::Result<Option<u8>> {
    let b = match r.fill_buf()?.first() {
        Some(b) => *b,
        None => return Ok(None),
    };
    r.consume(1);
    Ok(Some(b))
}

/// Decodes the varint at the start of `bytes`: at most `max` bytes, the
/// last of which may hold no bits above `last_max`. `None` if `bytes` ends
/// before the varint does.
fn decode_varint(
    bytes: &[u8],
    max: usize,
    last_max: u8,
) -> Result<Option<(u64, usize)>, ReadError> {
    let mut raw = 0u64;
    for (i, &b) in bytes.iter().take(max).enumerate() {
        if i == max - 1 && b > last_max {
            return Err(ReadError::Malformed(if max == 5 {
                "varint longer than 32 bits"
            } else {
                "varlong longer than 64 bits"
            }));
        }
        raw |= ((b & 0x7f) as u64) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((raw, i + 1)));
        }
    }
    Ok(None)
}

fn zigzag(raw: u64) -> i64 {
    (raw >> 1) as i64 ^ -((raw & 1) as i64)
}

/// Whether the stream has no bytes left.
#[inline(always)]
pub(super) fn at_end<R: BufRead>(r: &mut R) -> io::Result<bool> {
    Ok(r.fill_buf()?.is_empty())
}

/// Reads within one record: at most `left` more bytes.
struct Body<'r, R> {
    r: &'r mut R,
    left: usize,
}

impl<R: BufRead> Body<'_, R> {
    #[inline(always)]
    fn byte(&mut self) -> Result<u8, ReadError> {
        if self.left == 0 {
            return Err(ReadError::Malformed("record fields run past its length"));
        }
        let b = read_u8(self.r)?.ok_or(ReadError::Malformed("records end inside a record"))?;
        self.left -= 1;
        Ok(b)
    }

    /// A zigzag varint of at most 5 bytes whose value fits 32 bits (Kafka's
    /// ByteUtils.readVarint refuses longer ones; a fifth byte with bits past
    /// 32 would be read differently by different clients).
    #[inline(always)]
    fn varint(&mut self) -> Result<i32, ReadError> {
        Ok(zigzag(self.unsigned_varint(5, 0x0f)?) as i32)
    }

    /// A zigzag varlong of at most 10 bytes whose value fits 64 bits.
    #[inline(always)]
    fn varlong(&mut self) -> Result<i64, ReadError> {
        Ok(zigzag(self.unsigned_varint(10, 0x01)?))
    }

    /// The raw bits of a varint of at most `max` bytes, decoded in place
    /// when the buffer holds it (the common case), byte by byte otherwise.
    #[inline(always)]
    fn unsigned_varint(&mut self, max: usize, last_max: u8) -> Result<u64, ReadError> {
        let buf = self.r.fill_buf()?;
        let window = &buf[..buf.len().min(self.left)];
        if let Some((raw, len)) = decode_varint(window, max, last_max)? {
            self.r.consume(len);
            self.left -= len;
            return Ok(raw);
        }
        self.unsigned_varint_slow(max, last_max)
    }

    /// A varint across a buffer boundary or the record's end.
    #[cold]
    #[inline(never)]
    fn unsigned_varint_slow(&mut self, max: usize, last_max: u8) -> Result<u64, ReadError> {
        let mut bytes = [0u8; 10];
        for i in 0..max {
            bytes[i] = self.byte()?;
            if let Some((raw, _)) = decode_varint(&bytes[..=i], max, last_max)? {
                return Ok(raw);
            }
        }
        unreachable!("{max} bytes end the varint or fail")
    }

    /// Passes over `n` bytes of this record.
    #[inline(always)]
    fn skip(&mut self, n: usize) -> Result<(), ReadError> {
        if n > self.left {
            return Err(ReadError::Malformed("field longer than its record"));
        }
        let mut n = n;
        while n > 0 {
            let available = self.r.fill_buf()?.len();
            if available == 0 {
                return Err(ReadError::Malformed("records end inside a record"));
            }
            let step = available.min(n);
            self.r.consume(step);
            self.left -= step;
            n -= step;
        }
        Ok(())
    }

    /// `n` bytes of this record, copied as they arrive (so a length read
    /// from the data never sizes an allocation by itself).
    fn take(&mut self, n: usize) -> Result<Bytes, ReadError> {
        if n > self.left {
            return Err(ReadError::Malformed("field longer than its record"));
        }
        let mut out = Vec::new();
        (&mut *self.r).take(n as u64).read_to_end(&mut out)?;
        if out.len() < n {
            return Err(ReadError::Malformed("records end inside a record"));
        }
        self.left -= n;
        Ok(Bytes::from(out))
    }

    /// A length-prefixed byte field: -1 is null; below -1 is refused (some
    /// clients read it as null, others fail on it).
    #[inline(always)]
    fn bytes_field(&mut self, keep: bool) -> Result<Option<Bytes>, ReadError> {
        let len = self.varint()?;
        if len < -1 {
            return Err(ReadError::Malformed("field length below -1"));
        }
        if len == -1 {
            return Ok(None);
        }
        if keep {
            self.take(len as usize).map(Some)
        } else {
            self.skip(len as usize).map(|_| None)
        }
    }
}

/// Reads the next record; `None` if the records end before it starts.
/// `keep_payload` keeps key and value, otherwise they are skipped.
#[inline(always)]
pub(super) fn read_record<R: BufRead>(
    r: &mut R,
    keep_payload: bool,
) -> Result<Option<RawRecord>, ReadError> {
    if at_end(r)? {
        return Ok(None);
    }
    let length = Body {
        r: &mut *r,
        left: usize::MAX,
    }
    .varint()?;
    let Ok(length) = usize::try_from(length) else {
        return Err(ReadError::Malformed("negative record length"));
    };
    let mut body = Body { r, left: length };
    let _attributes = body.byte()?;
    let timestamp_delta = body.varlong()?;
    let offset_delta = body.varint()?;
    let key = body.bytes_field(keep_payload)?;
    let value = body.bytes_field(keep_payload)?;
    let headers = body.varint()?;
    if headers < 0 {
        return Err(ReadError::Malformed("negative header count"));
    }
    // Each header takes at least two bytes, so the count is bounded by the
    // record's own length before it is looped over.
    if headers as usize > body.left / 2 {
        return Err(ReadError::Malformed("more headers than the record holds"));
    }
    for _ in 0..headers {
        let key_len = body.varint()?;
        if key_len < 0 {
            return Err(ReadError::Malformed("negative header key length"));
        }
        body.skip(key_len as usize)?;
        body.bytes_field(false)?;
    }
    if body.left != 0 {
        return Err(ReadError::Malformed("record shorter than its length"));
    }
    Ok(Some(RawRecord {
        timestamp_delta,
        offset_delta,
        key,
        value,
    }))
}

/// One record of a stored batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
}

/// The records of one batch, read within a decompression cap. Yields at
/// most `records_count` records; after an error it yields nothing more.
pub struct BatchRecords<'a> {
    input: Box<dyn BufRead + 'a>,
    codec: Codec,
    limit: usize,
    base_offset: i64,
    base_timestamp: i64,
    log_append_time: Option<i64>,
    index: i32,
    count: i32,
    keep_payload: bool,
}

/// Opens the records of the batch at the start of `batch` (as much of it as
/// `batch` holds), decompressing up to `limit` bytes.
pub fn batch_records(
    batch: &[u8],
    limit: usize,
    keep_payload: bool,
) -> Result<BatchRecords<'_>, BatchError> {
    let h = BatchHeader::parse(batch)?;
    if h.total_size() < BATCH_HEADER_BYTES {
        return Err(BatchError::BadLength(h.batch_length()));
    }
    let codec = Codec::from_id(h.compression_codec())?;
    Ok(BatchRecords {
        input: compression::decompress(codec, h.records_bytes(), limit)?,
        codec,
        limit,
        base_offset: h.base_offset(),
        base_timestamp: h.base_timestamp(),
        log_append_time: h.is_log_append_time().then(|| h.max_timestamp()),
        index: 0,
        count: h.records_count().max(0),
        keep_payload,
    })
}

impl Iterator for BatchRecords<'_> {
    type Item = Result<Record, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        let index = self.index;
        let raw = match read_record(&mut self.input, self.keep_payload) {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                self.count = index;
                return Some(Err(BatchError::BadRecord {
                    index,
                    reason: "batch holds fewer records than its count",
                }));
            }
            Err(e) => {
                self.count = index;
                return Some(Err(e.at(index, self.codec, self.limit)));
            }
        };
        self.index += 1;
        Some(Ok(Record {
            offset: self.base_offset + raw.offset_delta as i64,
            timestamp: self
                .log_append_time
                .unwrap_or(self.base_timestamp.wrapping_add(raw.timestamp_delta)),
            key: raw.key,
            value: raw.value,
        }))
    }
}

/// Records of a stored batch, stopping with a warning at the first one that
/// cannot be read (older versions stored batches unchecked).
pub fn readable_records(
    batch: &[u8],
    limit: usize,
    keep_payload: bool,
) -> impl Iterator<Item = Record> + '_ {
    let base_offset = BatchHeader::parse(batch).map_or(-1, |h| h.base_offset());
    let mut records = batch_records(batch, limit, keep_payload)
        .map_err(|e| tracing::warn!(base_offset, error = %e, "stored batch unreadable; skipped"))
        .ok();
    std::iter::from_fn(move || match records.as_mut()?.next()? {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(base_offset, error = %e, "stored batch partly unreadable; rest skipped");
            records = None;
            None
        }
    })
}

/// One record's offset and timestamp, for lookups by time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPosition {
    pub offset: i64,
    pub timestamp: i64,
}

/// Offsets and timestamps of a stored batch's records, in order, without
/// keeping keys or values. Slow path: ListOffsets by timestamp only.
pub fn record_positions(batch: &[u8], limit: usize) -> impl Iterator<Item = RecordPosition> + '_ {
    readable_records(batch, limit, false).map(|r| RecordPosition {
        offset: r.offset,
        timestamp: r.timestamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::{make_batch, raw_batch, record_body, with_length};
    use kafka_protocol::records::Compression;

    #[test]
    fn positions_of_every_codec() {
        for codec in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let mut batch = make_batch(4, codec, 500);
            crate::record::assign_offsets(&mut batch, 1234, 7);
            let positions: Vec<RecordPosition> = record_positions(&batch, 1 << 20).collect();
            assert_eq!(
                positions,
                (0..4)
                    .map(|i| RecordPosition {
                        offset: 1234 + i,
                        timestamp: 500 + i
                    })
                    .collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn stored_batches_with_absurd_counts_yield_what_they_hold() {
        // As older versions stored it: 2^31-1 records claimed, one present.
        let one = with_length(&record_body(0, 3, b"x"));
        let batch = raw_batch(&one, i32::MAX, i32::MAX - 1, 0);
        let records: Vec<Record> = readable_records(&batch, 1 << 20, true).collect();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].value.as_deref(), Some(&b"x"[..]));
        let mut strict = batch_records(&batch, 1 << 20, false).unwrap();
        assert!(strict.next().unwrap().is_ok());
        assert!(matches!(
            strict.next(),
            Some(Err(BatchError::BadRecord { index: 1, .. }))
        ));
        assert!(strict.next().is_none());
    }

    #[test]
    fn unreadable_stored_batches_yield_nothing() {
        let noise = raw_batch(&[0x1f, 0x8b, 1, 2, 3, 4, 5, 6, 7, 8], 1, 0, 1);
        assert_eq!(record_positions(&noise, 1 << 20).count(), 0);
        assert_eq!(record_positions(&noise[..30], 1 << 20).count(), 0);
        let unknown_codec = raw_batch(&[], 1, 0, 6);
        assert_eq!(record_positions(&unknown_codec, 1 << 20).count(), 0);
    }

    #[test]
    fn payloads_are_copied_as_they_arrive_not_sized_by_their_length() {
        // A value claiming 2 GiB inside a record claiming as much: the
        // read fails at the end of the data without a 2 GiB allocation.
        let mut body = vec![0u8, 0, 0, 1];
        body.extend(crate::record::tests::varint(i32::MAX as i64 - 100));
        body.extend(b"short");
        let mut payload = crate::record::tests::varint(i32::MAX as i64);
        payload.extend(body);
        let batch = raw_batch(&payload, 1, 0, 0);
        let got: Vec<_> = batch_records(&batch, 1 << 20, true).unwrap().collect();
        assert!(matches!(
            got[..],
            [Err(BatchError::BadRecord {
                reason: "records end inside a record",
                ..
            })]
        ));
    }
}
