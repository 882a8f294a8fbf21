//! Record batches (magic v2): the header view and offset assignment
//! (`header`), produce-side validation as strict as Kafka's LogValidator
//! (`validate`), bounded decompression (`compression`), bounded record
//! iteration for the paths that need single records (`records`), the
//! record sets of fetch responses (`set`), and the rewrite of a batch in
//! its topic's codec (`recompress`, compression.type).
//!
//! Pure functions over byte slices; any shard may call them. The produce
//! path checks the header and CRC32C, parses every record (decompressing
//! compressed batches within a cap), then patches the base offset and
//! leader epoch in place (neither is covered by the CRC).

mod compression;
mod header;
pub mod rebuild;
mod recompress;
mod records;
mod set;
mod validate;

use thiserror::Error;

pub use compression::Codec;
pub use header::{
    assign_offsets, set_log_append_time, set_timestamps, split_replicated, validate_batch,
    BatchHeader, BATCH_HEADER_BYTES, LOG_OVERHEAD, NO_TIMESTAMP,
};
pub use recompress::{recompress, CompressionLevels, CompressionType};
pub use records::{
    batch_records, readable_records, record_positions, BatchRecords, Record, RecordPosition,
};
pub use set::{RecordSet, RecordSetBuilder, COALESCE_BATCH_BYTES};
pub use validate::{normalize_header, validate_produce, BatchLimits, ProducedBatch};

/// Why a batch was refused. `protocol::partition_error_code` maps each to
/// the code Kafka answers with.
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
    #[error("record batch is invalid: {0}")]
    Invalid(&'static str),
    #[error("compression codec {0} is unknown")]
    UnsupportedCompression(i16),
    #[error("{codec} payload of the record batch is corrupt: {reason}")]
    CorruptCompressed { codec: Codec, reason: String },
    #[error("record batch decompresses to more than {limit} bytes")]
    DecompressedTooLarge { limit: usize },
    #[error("record batch in the topic's codec is larger than max.message.bytes ({limit})")]
    RecompressedTooLarge { limit: usize },
    #[error("record {index} of the batch is invalid: {reason}")]
    BadRecord { index: i32, reason: &'static str },
    #[error("record batch timestamps are invalid: {0}")]
    InvalidTimestamp(&'static str),
}

#[cfg(test)]
pub mod tests {
    use bytes::{Bytes, BytesMut};
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

    /// Zigzag varint/varlong encoding.
    pub fn varint(n: i64) -> Vec<u8> {
        let mut z = ((n << 1) ^ (n >> 63)) as u64;
        let mut out = Vec::new();
        while z >= 0x80 {
            out.push((z as u8 & 0x7f) | 0x80);
            z >>= 7;
        }
        out.push(z as u8);
        out
    }

    /// A record's body (without its length): no key, `value`, no headers.
    pub fn record_body(offset_delta: i64, timestamp_delta: i64, value: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8];
        b.extend(varint(timestamp_delta));
        b.extend(varint(offset_delta));
        b.extend(varint(-1));
        b.extend(varint(value.len() as i64));
        b.extend_from_slice(value);
        b.extend(varint(0));
        b
    }

    /// A whole record: its length, then `body`.
    pub fn with_length(body: &[u8]) -> Vec<u8> {
        let mut r = varint(body.len() as i64);
        r.extend_from_slice(body);
        r
    }

    /// A v2 batch around `payload` with a correct CRC.
    pub fn raw_batch(
        payload: &[u8],
        count: i32,
        last_offset_delta: i32,
        attributes: i16,
    ) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(0i64.to_be_bytes());
        b.extend(((49 + payload.len()) as i32).to_be_bytes());
        b.extend((-1i32).to_be_bytes());
        b.push(2);
        b.extend([0u8; 4]);
        b.extend(attributes.to_be_bytes());
        b.extend(last_offset_delta.to_be_bytes());
        b.extend(0i64.to_be_bytes());
        b.extend(0i64.to_be_bytes());
        b.extend((-1i64).to_be_bytes());
        b.extend((-1i16).to_be_bytes());
        b.extend((-1i32).to_be_bytes());
        b.extend(count.to_be_bytes());
        b.extend_from_slice(payload);
        fix_crc(&mut b);
        b
    }

    /// Recomputes the CRC after a test changed the batch.
    pub fn fix_crc(batch: &mut [u8]) {
        let crc = crc32c::crc32c(&batch[21..]);
        batch[17..21].copy_from_slice(&crc.to_be_bytes());
    }
}
