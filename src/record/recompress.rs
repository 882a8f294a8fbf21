//! Broker-side recompression (topic `compression.type`): a produced batch
//! whose codec is not the topic's is rewritten as one batch in the topic's
//! codec before it is appended.
//!
//! Runs on the partition's owner shard in the leader's produce path, after
//! validation and before offsets are assigned; followers append the
//! leader's bytes as they are. Pure: bytes in, bytes out.
//!
//! The records' bytes do not depend on the codec (validation checked that
//! their offset deltas are 0, 1, 2, ...), so a batch is recompressed by
//! encoding its decompressed records with the target codec; the header
//! keeps every field (producer id, epoch, base sequence, base and max
//! timestamps, timestamp type, transactional bit) except the codec bits,
//! the length and the CRC. Memory stays bounded: a compressed batch's
//! records are decompressed whole within the validation cap
//! (`max_decompressed_batch_bytes`, which the batch already passed), the
//! encoder's window is bounded (zstd by `RECOMPRESS_ZSTD_WINDOW_LOG_MAX`),
//! and the output stops, refused as too large, as soon as the batch would
//! pass the topic's max.message.bytes (Kafka checks the same size after
//! recompression and answers MESSAGE_TOO_LARGE). One recompression runs at
//! a time per shard: it is synchronous on the shard's thread.

use std::fmt;
use std::io::{self, Read, Write};

use bytes::buf::Writer;
use bytes::{BufMut, BytesMut};

use super::compression::{self, Codec};
use super::header::{update_crc, ATTRIBUTES, BATCH_LENGTH};
use super::{BatchError, BatchHeader, BatchLimits, BATCH_HEADER_BYTES, LOG_OVERHEAD};
use crate::config::{
    DEFAULT_COMPRESSION_GZIP_LEVEL, DEFAULT_COMPRESSION_LZ4_LEVEL, DEFAULT_COMPRESSION_ZSTD_LEVEL,
    RECOMPRESS_SNAPPY_BLOCK_BYTES, RECOMPRESS_ZSTD_WINDOW_LOG_MAX,
};

const ATTR_COMPRESSION_MASK: i16 = 0x07;
/// Kafka's snappy framing (xerial): magic, version 1, compatible version 1.
const XERIAL_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// zlib's default level, what gzip level -1 means.
const GZIP_DEFAULT_LEVEL: u32 = 6;

/// What a topic stores (Kafka's compression.type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompressionType {
    /// Batches are stored in the codec the producer chose.
    Producer,
    /// Batches are stored in this codec (`uncompressed` is `Codec::None`).
    Codec(Codec),
}

impl CompressionType {
    /// Parses a compression.type value; `None` for anything else.
    pub fn from_name(name: &str) -> Option<CompressionType> {
        Some(match name.trim() {
            "producer" => CompressionType::Producer,
            "uncompressed" => CompressionType::Codec(Codec::None),
            "gzip" => CompressionType::Codec(Codec::Gzip),
            "snappy" => CompressionType::Codec(Codec::Snappy),
            "lz4" => CompressionType::Codec(Codec::Lz4),
            "zstd" => CompressionType::Codec(Codec::Zstd),
            _ => return None,
        })
    }

    /// The codec a batch of `codec` must be rewritten in, if any.
    pub fn target_for(self, codec: Codec) -> Option<Codec> {
        match self {
            CompressionType::Codec(target) if target != codec => Some(target),
            _ => None,
        }
    }
}

/// Levels of the codecs that have one (Kafka's compression.<codec>.level).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompressionLevels {
    pub gzip: i32,
    pub lz4: i32,
    pub zstd: i32,
}

impl Default for CompressionLevels {
    fn default() -> CompressionLevels {
        CompressionLevels {
            gzip: DEFAULT_COMPRESSION_GZIP_LEVEL,
            lz4: DEFAULT_COMPRESSION_LZ4_LEVEL,
            zstd: DEFAULT_COMPRESSION_ZSTD_LEVEL,
        }
    }
}

impl fmt::Display for CompressionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompressionType::Producer => f.write_str("producer"),
            CompressionType::Codec(Codec::None) => f.write_str("uncompressed"),
            CompressionType::Codec(c) => c.fmt(f),
        }
    }
}

/// The marker inside the `io::Error` of an output that passed its cap.
#[derive(Debug)]
struct OutputFull;

impl fmt::Display for OutputFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("recompressed batch passed its size limit")
    }
}

impl std::error::Error for OutputFull {}

/// The new batch's bytes, failing once they would pass `limit`.
struct CappedOutput {
    out: Writer<BytesMut>,
    limit: usize,
}

impl Write for CappedOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.out.get_ref().len() + buf.len() > self.limit {
            return Err(io::Error::other(OutputFull));
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Snappy in Kafka's (xerial) framing: blocks of at most
/// RECOMPRESS_SNAPPY_BLOCK_BYTES, each raw-compressed and prefixed by its
/// compressed length.
struct XerialWriter<W: Write> {
    inner: W,
    block: Vec<u8>,
    compressed: Vec<u8>,
    encoder: snap::raw::Encoder,
}

impl<W: Write> XerialWriter<W> {
    fn new(mut inner: W) -> io::Result<XerialWriter<W>> {
        inner.write_all(XERIAL_HEADER)?;
        Ok(XerialWriter {
            inner,
            block: Vec::with_capacity(RECOMPRESS_SNAPPY_BLOCK_BYTES),
            compressed: vec![0; snap::raw::max_compress_len(RECOMPRESS_SNAPPY_BLOCK_BYTES)],
            encoder: snap::raw::Encoder::new(),
        })
    }

    fn write_block(&mut self) -> io::Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let n = self
            .encoder
            .compress(&self.block, &mut self.compressed)
            .map_err(io::Error::other)?;
        self.inner.write_all(&(n as u32).to_be_bytes())?;
        self.inner.write_all(&self.compressed[..n])?;
        self.block.clear();
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        self.write_block()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for XerialWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = RECOMPRESS_SNAPPY_BLOCK_BYTES - self.block.len();
        let n = room.min(buf.len());
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == RECOMPRESS_SNAPPY_BLOCK_BYTES {
            self.write_block()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes `records` through `codec`'s encoder into `out`.
fn encode(
    codec: Codec,
    levels: &CompressionLevels,
    records: &[u8],
    mut out: CappedOutput,
) -> io::Result<CappedOutput> {
    match codec {
        Codec::None => {
            out.write_all(records)?;
            Ok(out)
        }
        Codec::Gzip => {
            let level = u32::try_from(levels.gzip).unwrap_or(GZIP_DEFAULT_LEVEL);
            let mut e = flate2::write::GzEncoder::new(out, flate2::Compression::new(level));
            e.write_all(records)?;
            e.finish()
        }
        Codec::Snappy => {
            let mut e = XerialWriter::new(out)?;
            e.write_all(records)?;
            e.finish()
        }
        Codec::Lz4 => {
            let mut e = lz4_encoder(levels.lz4, out)?;
            e.write_all(records)?;
            let (out, result) = e.finish();
            result.map(|()| out)
        }
        Codec::Zstd => {
            let mut e = zstd::stream::write::Encoder::new(out, levels.zstd)?;
            // With the size known, zstd sizes its window and tables to the
            // records (and writes the size into the frame).
            e.set_pledged_src_size(Some(records.len() as u64))?;
            e.window_log(RECOMPRESS_ZSTD_WINDOW_LOG_MAX)?;
            e.write_all(records)?;
            e.finish()
        }
    }
}

/// An lz4 frame as Kafka writes one: 64 KiB independent blocks, no
/// checksums (Kafka's reader refuses linked blocks). Kafka's default level
/// uses the fast compressor, any other the high-compression one.
fn lz4_encoder(level: i32, out: CappedOutput) -> io::Result<lz4::Encoder<CappedOutput>> {
    let level = if level == DEFAULT_COMPRESSION_LZ4_LEVEL {
        0
    } else {
        level.max(0) as u32
    };
    lz4::EncoderBuilder::new()
        .block_size(lz4::BlockSize::Max64KB)
        .block_mode(lz4::BlockMode::Independent)
        .checksum(lz4::ContentChecksum::NoChecksum)
        .block_checksum(lz4::liblz4::BlockChecksum::NoBlockChecksum)
        .level(level)
        .build(out)
}

/// The records of a compressed batch, decompressed whole within `limit`.
fn decompress_all(codec: Codec, payload: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let mut records = Vec::new();
    compression::decompress(codec, payload, limit)?
        .read_to_end(&mut records)
        .map_err(|e| compression::stream_error(codec, limit, e))?;
    Ok(records)
}

/// Rewrites the validated batch `batch` with `target`'s codec and
/// `levels`; the result is one batch of at most `limits.max_batch_bytes`,
/// with its CRC recomputed. Offsets are assigned later, as for any batch.
///
/// Memory: a compressed batch's records are decompressed whole, at most
/// `limits.max_decompressed_bytes` (the cap validation already held the
/// batch to; for an uncompressed target no more than fits the batch
/// limit), and the output stops at `limits.max_batch_bytes`.
pub fn recompress(
    batch: &[u8],
    target: Codec,
    levels: &CompressionLevels,
    limits: &BatchLimits,
) -> Result<BytesMut, BatchError> {
    let h = BatchHeader::parse(batch)?;
    let source = Codec::from_id(h.compression_codec())?;
    let too_large = BatchError::RecompressedTooLarge {
        limit: limits.max_batch_bytes,
    };
    let decompressed;
    let records = match source {
        Codec::None => h.records_bytes(),
        _ => {
            let room = limits.max_batch_bytes.saturating_sub(BATCH_HEADER_BYTES);
            let limit = match target {
                Codec::None => limits.max_decompressed_bytes.min(room),
                _ => limits.max_decompressed_bytes,
            };
            decompressed = match decompress_all(source, h.records_bytes(), limit) {
                Err(BatchError::DecompressedTooLarge { .. }) if limit == room => {
                    return Err(too_large)
                }
                other => other?,
            };
            &decompressed[..]
        }
    };
    let mut out = BytesMut::with_capacity(batch.len().min(limits.max_batch_bytes));
    out.extend_from_slice(&batch[..BATCH_HEADER_BYTES]);
    let out = CappedOutput {
        out: out.writer(),
        limit: limits.max_batch_bytes,
    };
    let out = encode(target, levels, records, out).map_err(|e| {
        if e.get_ref().is_some_and(|i| i.is::<OutputFull>()) {
            too_large
        } else {
            BatchError::Invalid("the topic's codec failed to encode the records")
        }
    })?;
    let mut out = out.out.into_inner();
    let batch_length = (out.len() - LOG_OVERHEAD) as i32;
    out[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
    let attributes = (h.attributes() & !ATTR_COMPRESSION_MASK) | target as i16;
    out[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    update_crc(&mut out);
    Ok(out)
}

/// `records` compressed with `codec` at `levels`, framed as Kafka's
/// clients frame them: the log cleaner's rebuilt batches (no size cap: a
/// rebuilt batch is never larger than the records it came from, compressed).
pub fn compress(
    codec: Codec,
    levels: &CompressionLevels,
    records: &[u8],
) -> Result<Vec<u8>, BatchError> {
    let out = CappedOutput {
        out: BytesMut::with_capacity(records.len() / 2).writer(),
        limit: usize::MAX,
    };
    let out = encode(codec, levels, records, out)
        .map_err(|_| BatchError::Invalid("the batch's codec failed to encode the records"))?;
    Ok(out.out.into_inner().to_vec())
}

#[cfg(test)]
mod tests;
