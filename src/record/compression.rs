//! Bounded decompression of a batch's records: gzip, snappy (Kafka's xerial
//! framing and raw blocks), lz4 frames and zstd, each read as a stream
//! through a hard cap on the bytes it may produce.
//!
//! A stream that would produce more than the cap fails with
//! [`BatchError::DecompressedTooLarge`] as soon as the cap is passed, so a
//! decompression bomb costs at most the cap in work. Memory stays at the
//! codecs' own windows (gzip 32 KiB, lz4 at most one 4 MiB block, zstd a
//! window of at most 128 MiB of which no more than the cap is written),
//! except raw snappy, whose single block is decompressed whole once its
//! declared length is checked against the cap.
//! A stream that does not decode, ends early or carries bytes after its end
//! fails with [`BatchError::CorruptCompressed`].

use std::fmt;
use std::io::{self, BufRead, BufReader, Cursor, Read};

use super::BatchError;

/// Buffer between a decompressor and the record parser.
const STREAM_BUFFER_BYTES: usize = 32 * 1024;
/// Kafka's xerial snappy framing: magic, then version and compatible
/// version (4 bytes each), then blocks prefixed by their compressed length.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_BYTES: usize = 16;
/// zstd decoders' default window limit (ZSTD_WINDOWLOG_LIMIT_DEFAULT,
/// 128 MiB), which every client's encoder stays within, and the largest a
/// 64-bit decoder accepts (ZSTD_WINDOWLOG_MAX_64). A frame may declare a
/// window larger than its content, so the window limit is never set below
/// the default; the cap on output still bounds the window bytes touched.
const ZSTD_WINDOW_LOG_DEFAULT: u32 = 27;
const ZSTD_WINDOW_LOG_MAX: u32 = 31;

/// The compression codec of a batch (attributes bits 0-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None = 0,
    Gzip = 1,
    Snappy = 2,
    Lz4 = 3,
    Zstd = 4,
}

impl Codec {
    pub fn from_id(id: i16) -> Result<Codec, BatchError> {
        Ok(match id {
            0 => Codec::None,
            1 => Codec::Gzip,
            2 => Codec::Snappy,
            3 => Codec::Lz4,
            4 => Codec::Zstd,
            other => return Err(BatchError::UnsupportedCompression(other)),
        })
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        })
    }
}

/// The marker inside the `io::Error` of a stream that passed its cap.
#[derive(Debug)]
struct CapExceeded;

impl fmt::Display for CapExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("decompressed size limit passed")
    }
}

impl std::error::Error for CapExceeded {}

fn corrupt(reason: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.to_string())
}

/// The batch error for a failed read of a decompressing stream.
pub(super) fn stream_error(codec: Codec, limit: usize, e: io::Error) -> BatchError {
    if e.get_ref().is_some_and(|inner| inner.is::<CapExceeded>()) {
        BatchError::DecompressedTooLarge { limit }
    } else {
        BatchError::CorruptCompressed {
            codec,
            reason: e.to_string(),
        }
    }
}

/// A reader that fails once its inner reader produced more than `left`
/// bytes in all. A stream ending exactly at the cap is fine.
struct Capped<R> {
    inner: R,
    left: usize,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(CapExceeded)),
            };
        }
        let want = buf.len().min(self.left);
        let got = self.inner.read(&mut buf[..want])?;
        self.left -= got;
        Ok(got)
    }
}

/// One lz4 frame (Kafka's framing for lz4 since magic 1): at its end the
/// frame must be complete and nothing may follow it.
struct Lz4Frame<'a> {
    decoder: Option<lz4::Decoder<&'a [u8]>>,
}

impl Read for Lz4Frame<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(decoder) = self.decoder.as_mut() else {
            return Ok(0);
        };
        let n = decoder.read(buf)?;
        if n == 0 && !buf.is_empty() {
            let (rest, finished) = self.decoder.take().expect("present").finish();
            finished.map_err(|_| corrupt("lz4 frame ends early"))?;
            if !rest.is_empty() {
                return Err(corrupt("bytes follow the lz4 frame"));
            }
        }
        Ok(n)
    }
}

/// Snappy blocks in Kafka's (xerial) framing, one block at a time, each
/// checked against the cap before it is decompressed; read in place.
struct XerialBlocks<'a> {
    input: &'a [u8],
    /// The current block is `block[at..end]`; the buffer is reused.
    block: Vec<u8>,
    at: usize,
    end: usize,
    left: usize,
}

impl XerialBlocks<'_> {
    fn next_block(&mut self) -> io::Result<()> {
        if self.input.len() < 4 {
            return Err(corrupt("snappy block length truncated"));
        }
        let (len, rest) = self.input.split_at(4);
        let len = u32::from_be_bytes(len.try_into().expect("4")) as usize;
        if rest.len() < len {
            return Err(corrupt("snappy block truncated"));
        }
        let (compressed, rest) = rest.split_at(len);
        self.input = rest;
        let n = snap::raw::decompress_len(compressed).map_err(|e| corrupt(&e.to_string()))?;
        if n > self.left {
            return Err(io::Error::other(CapExceeded));
        }
        if self.block.len() < n {
            self.block.resize(n, 0);
        }
        snap::raw::Decoder::new()
            .decompress(compressed, &mut self.block[..n])
            .map_err(|e| corrupt(&e.to_string()))?;
        self.left -= n;
        (self.at, self.end) = (0, n);
        Ok(())
    }
}

impl Read for XerialBlocks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for XerialBlocks<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.at == self.end && !self.input.is_empty() {
            self.next_block()?;
        }
        Ok(&self.block[self.at..self.end])
    }

    fn consume(&mut self, n: usize) {
        self.at = (self.at + n).min(self.end);
    }
}

/// The zstd window log accepted: the default, or one covering `limit`
/// bytes when an operator raised the cap past it.
fn zstd_window_log(limit: usize) -> u32 {
    let log = usize::BITS - limit.saturating_sub(1).leading_zeros();
    log.clamp(ZSTD_WINDOW_LOG_DEFAULT, ZSTD_WINDOW_LOG_MAX)
}

fn buffered<'a>(inner: impl Read + 'a, limit: usize) -> Box<dyn BufRead + 'a> {
    Box::new(BufReader::with_capacity(
        STREAM_BUFFER_BYTES,
        Capped { inner, left: limit },
    ))
}

/// The decompressed records of a compressed batch as a stream that fails
/// past `limit` bytes. `payload` is everything after the batch header.
pub(super) fn decompress<'a>(
    codec: Codec,
    payload: &'a [u8],
    limit: usize,
) -> Result<Box<dyn BufRead + 'a>, BatchError> {
    let fail = |e: io::Error| stream_error(codec, limit, e);
    Ok(match codec {
        Codec::None => Box::new(payload),
        Codec::Gzip => buffered(flate2::bufread::MultiGzDecoder::new(payload), limit),
        Codec::Lz4 => {
            let decoder = lz4::Decoder::new(payload).map_err(fail)?;
            buffered(
                Lz4Frame {
                    decoder: Some(decoder),
                },
                limit,
            )
        }
        Codec::Zstd => {
            let mut decoder = zstd::stream::read::Decoder::with_buffer(payload).map_err(fail)?;
            decoder
                .window_log_max(zstd_window_log(limit))
                .map_err(fail)?;
            buffered(decoder, limit)
        }
        Codec::Snappy if payload.starts_with(XERIAL_MAGIC) => Box::new(XerialBlocks {
            input: payload
                .get(XERIAL_HEADER_BYTES..)
                .ok_or_else(|| fail(corrupt("snappy header truncated")))?,
            block: Vec::new(),
            at: 0,
            end: 0,
            left: limit,
        }),
        Codec::Snappy => {
            let n =
                snap::raw::decompress_len(payload).map_err(|e| fail(corrupt(&e.to_string())))?;
            if n > limit {
                return Err(BatchError::DecompressedTooLarge { limit });
            }
            let mut out = vec![0u8; n];
            snap::raw::Decoder::new()
                .decompress(payload, &mut out)
                .map_err(|e| fail(corrupt(&e.to_string())))?;
            Box::new(Cursor::new(out))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read_all(codec: Codec, payload: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
        let mut out = Vec::new();
        decompress(codec, payload, limit)?
            .read_to_end(&mut out)
            .map_err(|e| stream_error(codec, limit, e))?;
        Ok(out)
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn lz4(data: &[u8]) -> Vec<u8> {
        let mut e = lz4::EncoderBuilder::new().build(Vec::new()).unwrap();
        e.write_all(data).unwrap();
        let (out, r) = e.finish();
        r.unwrap();
        out
    }

    fn xerial(data: &[u8], block: usize) -> Vec<u8> {
        let mut out = XERIAL_MAGIC.to_vec();
        out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
        for chunk in data.chunks(block) {
            let c = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
            out.extend_from_slice(&(c.len() as u32).to_be_bytes());
            out.extend_from_slice(&c);
        }
        out
    }

    fn every_codec(data: &[u8]) -> Vec<(Codec, Vec<u8>)> {
        vec![
            (Codec::Gzip, gzip(data)),
            (Codec::Lz4, lz4(data)),
            (Codec::Zstd, zstd::encode_all(data, 3).unwrap()),
            (Codec::Snappy, xerial(data, 32 * 1024)),
            (
                Codec::Snappy,
                snap::raw::Encoder::new().compress_vec(data).unwrap(),
            ),
        ]
    }

    #[test]
    fn every_codec_round_trips_up_to_the_cap() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for (codec, payload) in every_codec(&data) {
            assert_eq!(
                read_all(codec, &payload, data.len()).unwrap(),
                data,
                "{codec}"
            );
            assert_eq!(
                read_all(codec, &payload, data.len() - 1),
                Err(BatchError::DecompressedTooLarge {
                    limit: data.len() - 1
                }),
                "{codec}"
            );
        }
    }

    #[test]
    fn a_bomb_stops_at_the_cap() {
        // 256 MiB of zeros, a few hundred KiB compressed at most.
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..256 {
            e.write_all(&zeros).unwrap();
        }
        let bomb = e.finish().unwrap();
        assert!(bomb.len() < 1 << 20);
        let limit = 4 << 20;
        let mut stream = decompress(Codec::Gzip, &bomb, limit).unwrap();
        let mut sink = Vec::new();
        let err = stream.read_to_end(&mut sink).unwrap_err();
        assert_eq!(
            stream_error(Codec::Gzip, limit, err),
            BatchError::DecompressedTooLarge { limit }
        );
        assert!(sink.len() <= limit);
    }

    #[test]
    fn truncated_garbage_and_trailing_bytes_are_corrupt() {
        let data = vec![7u8; 5000];
        for (codec, payload) in every_codec(&data) {
            let cut = &payload[..payload.len() - 3];
            let mut with_tail = payload.clone();
            with_tail.extend_from_slice(b"tail");
            for bad in [cut, &with_tail[..], &b"\x00garbage bytes here"[..]] {
                match read_all(codec, bad, 1 << 20) {
                    Err(BatchError::CorruptCompressed { .. }) => {}
                    // A cut snappy stream may still be a shorter valid one.
                    Ok(out) => assert_ne!(out, data, "{codec} accepted a damaged stream"),
                    Err(e) => panic!("{codec}: unexpected {e}"),
                }
            }
        }
    }

    #[test]
    fn zstd_window_covers_the_limit() {
        assert_eq!(zstd_window_log(1), ZSTD_WINDOW_LOG_DEFAULT);
        assert_eq!(zstd_window_log(64 << 20), ZSTD_WINDOW_LOG_DEFAULT);
        assert_eq!(zstd_window_log((256 << 20) + 1), 29);
        assert_eq!(zstd_window_log(usize::MAX), ZSTD_WINDOW_LOG_MAX);
    }
}
