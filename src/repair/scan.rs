//! The salvage scanner: walks a segment file and says, for each part of it,
//! whether it is a structurally intact batch, damage, or the zero padding
//! after the last batch; then an offset-order filter decides which intact
//! batches the repaired log keeps.
//!
//! Pure over bytes (`classify`, `OrderFilter`) plus a streaming driver over
//! any `Read` (`scan_segment`) whose window is bounded by one largest batch
//! plus one read. Runs on the repair command's thread.
//!
//! A batch is intact when its length is sane, its magic is 2, its CRC32C
//! matches and its header is consistent: base offset at or above the
//! segment's, non-negative counts, a known compression codec. After a
//! damaged region the scanner resynchronises by trying every following byte
//! position until an intact batch starts there.
//!
//! The CRC does not cover the base offset, so a damaged base offset can
//! pass it. The order filter therefore holds a batch whose offsets jump
//! ahead until the next intact batch: if that one continues it, both are
//! kept; if it fits after the batches kept before but below the held one,
//! the held batch's offsets are what is damaged and it is dropped. A batch
//! below what was kept is dropped. The kept batches are in strictly
//! increasing offset order.

use std::io::Read;

use crate::log::segment::PADDING_HEADER;
use crate::record::{validate_batch, BatchHeader, BATCH_HEADER_BYTES, LOG_OVERHEAD};

/// One part of a segment file, by file position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// A structurally intact batch.
    Batch(Candidate),
    /// Bytes that are no intact batch.
    Damaged { position: u64, size: u64 },
    /// Padding from the last batch to the end of the file (a page's
    /// padding, see `segment::is_padding`, or preallocated zeros): nothing
    /// lost.
    ZeroTail { position: u64, size: u64 },
}

/// An intact batch found in segment number `segment` of the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub segment: usize,
    pub position: u64,
    pub size: u64,
    pub base_offset: i64,
    pub last_offset: i64,
}

/// What starts at the beginning of a buffer: an intact batch of `size`
/// bytes, or not (`None`).
///
/// `buf` holds at least `max_batch_bytes` bytes, or everything up to the
/// end of the file. `segment_base`: the segment's base offset.
pub fn classify(buf: &[u8], segment_base: i64, max_batch_bytes: usize) -> Option<usize> {
    if buf.len() < BATCH_HEADER_BYTES {
        return None;
    }
    let length = i32::from_be_bytes(buf[8..12].try_into().expect("4 bytes"));
    if length < (BATCH_HEADER_BYTES - LOG_OVERHEAD) as i32 {
        return None;
    }
    let size = LOG_OVERHEAD + length as usize;
    if size > max_batch_bytes || size > buf.len() {
        return None;
    }
    validate_batch(&buf[..size], max_batch_bytes).ok()?;
    let h = BatchHeader::parse(buf).ok()?;
    let sane = h.base_offset() >= segment_base
        && h.last_offset_delta() >= 0
        && h.records_count() >= 0
        && h.compression_codec() <= 4
        && h.base_offset()
            .checked_add(h.last_offset_delta() as i64)
            .is_some();
    sane.then_some(size)
}

/// A region of bytes being skipped: where it started, whether it is all
/// zeros, and whether it is `PADDING_HEADER` then zeros.
struct Skipped {
    position: u64,
    size: u64,
    zeros: bool,
    padding: bool,
}

/// Scans segment number `segment` (base offset `segment_base`) from its
/// start, calling `on` with every piece in file order. The window holds
/// `max_batch_bytes + read_bytes`.
pub fn scan_segment<R: Read>(
    mut reader: R,
    (segment, segment_base): (usize, i64),
    (max_batch_bytes, read_bytes): (usize, usize),
    mut on: impl FnMut(Piece),
) -> std::io::Result<()> {
    let capacity = max_batch_bytes + read_bytes;
    let mut window: Vec<u8> = Vec::with_capacity(capacity);
    let mut start = 0usize; // window index of `position`
    let mut position = 0u64;
    let mut eof = false;
    let mut skipped: Option<Skipped> = None;
    loop {
        if !eof && window.len() - start < max_batch_bytes {
            window.drain(..start);
            start = 0;
            eof = fill(&mut reader, &mut window, capacity)?;
        }
        let rest = &window[start..];
        if rest.is_empty() {
            break;
        }
        match classify(rest, segment_base, max_batch_bytes) {
            Some(size) => {
                if let Some(s) = skipped.take() {
                    on(skipped_piece(s, false));
                }
                let h = BatchHeader::parse(rest).expect("classified");
                on(Piece::Batch(Candidate {
                    segment,
                    position,
                    size: size as u64,
                    base_offset: h.base_offset(),
                    last_offset: h.last_offset(),
                }));
                start += size;
                position += size as u64;
            }
            None => {
                let s = skipped.get_or_insert(Skipped {
                    position,
                    size: 0,
                    zeros: true,
                    padding: true,
                });
                let padding_byte = PADDING_HEADER.get(s.size as usize).copied();
                s.padding &= rest[0] == padding_byte.unwrap_or(0);
                s.size += 1;
                s.zeros &= rest[0] == 0;
                start += 1;
                position += 1;
            }
        }
    }
    if let Some(s) = skipped {
        on(skipped_piece(s, true));
    }
    Ok(())
}

fn skipped_piece(s: Skipped, at_end: bool) -> Piece {
    if at_end && (s.zeros || s.padding) {
        Piece::ZeroTail {
            position: s.position,
            size: s.size,
        }
    } else {
        Piece::Damaged {
            position: s.position,
            size: s.size,
        }
    }
}

/// Reads until `window` holds `capacity` bytes or the file ends; true at the end.
fn fill<R: Read>(reader: &mut R, window: &mut Vec<u8>, capacity: usize) -> std::io::Result<bool> {
    let mut chunk = [0u8; 64 * 1024];
    while window.len() < capacity {
        let want = chunk.len().min(capacity - window.len());
        let n = match reader.read(&mut chunk[..want]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(true);
        }
        window.extend_from_slice(&chunk[..n]);
    }
    Ok(false)
}

/// What the order filter decided for an intact batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Keep(Candidate),
    /// Intact, but its offsets do not fit the log's order.
    Drop(Candidate),
}

/// Chooses the intact batches to keep so that offsets strictly increase
/// (see the module header). Fed every segment's batches in log order.
#[derive(Debug)]
pub struct OrderFilter {
    /// Smallest base offset the next kept batch may have: the log's first
    /// segment's base offset, then one past the last kept batch.
    next_offset: i64,
    held: Option<Candidate>,
}

impl OrderFilter {
    /// A filter for a log whose first segment's base offset is `start`.
    pub fn new(start: i64) -> OrderFilter {
        OrderFilter {
            next_offset: start,
            held: None,
        }
    }

    pub fn push(&mut self, c: Candidate, out: &mut impl FnMut(Decision)) {
        if let Some(h) = self.held.take() {
            if c.base_offset > h.last_offset {
                self.keep(h, out);
            } else if c.base_offset >= self.next_offset {
                out(Decision::Drop(h));
            } else {
                out(Decision::Drop(c));
                self.held = Some(h);
                return;
            }
        }
        match c.base_offset.cmp(&self.next_offset) {
            std::cmp::Ordering::Less => out(Decision::Drop(c)),
            std::cmp::Ordering::Equal => self.keep(c, out),
            std::cmp::Ordering::Greater => self.held = Some(c),
        }
    }

    /// The end of the log: a held batch has nothing against it.
    pub fn finish(&mut self, out: &mut impl FnMut(Decision)) {
        if let Some(h) = self.held.take() {
            self.keep(h, out);
        }
    }

    fn keep(&mut self, c: Candidate, out: &mut impl FnMut(Decision)) {
        self.next_offset = c.last_offset + 1;
        out(Decision::Keep(c));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::assign_offsets;
    use crate::record::tests::make_batch;
    use kafka_protocol::records::Compression;

    // Small, so that the window refills within a test segment.
    const MAX: usize = 4096;

    /// A segment of `n` batches of 5 records from `base`; returns its bytes
    /// and each batch's (position, size).
    fn segment(base: i64, n: usize) -> (Vec<u8>, Vec<(usize, usize)>) {
        let mut out = Vec::new();
        let mut at = Vec::new();
        for i in 0..n {
            let mut b = make_batch(5, Compression::None, i as i64);
            assign_offsets(&mut b, base + 5 * i as i64, 0);
            at.push((out.len(), b.len()));
            out.extend_from_slice(&b);
        }
        (out, at)
    }

    fn scan(bytes: &[u8], base: i64, window: usize) -> Vec<Piece> {
        let mut pieces = Vec::new();
        scan_segment(bytes, (0, base), (MAX, window), |p| pieces.push(p)).unwrap();
        pieces
    }

    /// Base offsets the order filter keeps, fed the intact batches of `pieces`.
    fn kept(pieces: &[Piece]) -> Vec<i64> {
        let mut filter = OrderFilter::new(0);
        let mut out = Vec::new();
        let mut on = |d: Decision| {
            if let Decision::Keep(c) = d {
                out.push(c.base_offset);
            }
        };
        for p in pieces {
            if let Piece::Batch(c) = p {
                filter.push(*c, &mut on);
            }
        }
        filter.finish(&mut on);
        out
    }

    fn candidate(base_offset: i64, last_offset: i64) -> Candidate {
        Candidate {
            segment: 0,
            position: base_offset as u64,
            size: 1,
            base_offset,
            last_offset,
        }
    }

    #[test]
    fn intact_segment_keeps_every_batch() {
        let (bytes, _) = segment(100, 20);
        let pieces = scan(&bytes, 100, 4096);
        assert_eq!(pieces.len(), 20);
        assert_eq!(
            kept(&pieces),
            (0..20).map(|i| 100 + 5 * i).collect::<Vec<_>>()
        );
    }

    #[test]
    fn damage_in_the_middle_drops_one_batch_and_resynchronises() {
        let (mut bytes, at) = segment(0, 10);
        let (pos, size) = at[4];
        bytes[pos + size / 2] ^= 0xff;
        // A small window forces refills across the damaged region.
        let pieces = scan(&bytes, 0, 300);
        let expected: Vec<i64> = (0..10).filter(|i| *i != 4).map(|i| 5 * i).collect();
        assert_eq!(kept(&pieces), expected);
        assert!(pieces.contains(&Piece::Damaged {
            position: pos as u64,
            size: size as u64
        }));
    }

    #[test]
    fn a_wrecked_length_field_is_skipped_too() {
        let (mut bytes, at) = segment(0, 6);
        let (pos, _) = at[2];
        bytes[pos + 8..pos + 12].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(kept(&scan(&bytes, 0, 4096)), vec![0, 5, 15, 20, 25]);
    }

    #[test]
    fn garbage_between_batches_is_dropped_and_counted() {
        let (bytes, at) = segment(0, 4);
        let (split, _) = at[2];
        let mut damaged = bytes[..split].to_vec();
        damaged.extend((0..777u32).map(|i| (i * 7 + 3) as u8));
        damaged.extend_from_slice(&bytes[split..]);
        let pieces = scan(&damaged, 0, 512);
        assert_eq!(kept(&pieces), vec![0, 5, 10, 15]);
        assert!(pieces.contains(&Piece::Damaged {
            position: split as u64,
            size: 777
        }));
    }

    #[test]
    fn zero_padding_at_the_end_is_no_damage_but_zeros_between_batches_are() {
        let (mut bytes, at) = segment(0, 3);
        let end = bytes.len();
        bytes.resize(end + 4000, 0);
        let pieces = scan(&bytes, 0, 4096);
        assert_eq!(
            pieces.last(),
            Some(&Piece::ZeroTail {
                position: end as u64,
                size: 4000
            })
        );
        // The active segment's padding starts with a header Kafka's tools
        // stop at; it is padding too, but not in the middle of the file.
        crate::log::segment::fill_padding(&mut bytes[end..]);
        let pieces = scan(&bytes, 0, 4096);
        assert_eq!(
            pieces.last(),
            Some(&Piece::ZeroTail {
                position: end as u64,
                size: 4000
            })
        );
        let mut moved = bytes[..at[2].0].to_vec();
        moved.extend_from_slice(&bytes[end..]);
        moved.extend_from_slice(&bytes[at[2].0..end]);
        let pieces = scan(&moved, 0, 4096);
        assert_eq!(kept(&pieces), vec![0, 5, 10]);
        assert!(pieces.contains(&Piece::Damaged {
            position: at[2].0 as u64,
            size: 4000
        }));
        bytes[end..].fill(0);
        let (pos, size) = at[1];
        bytes[pos..pos + size].fill(0);
        let pieces = scan(&bytes, 0, 4096);
        assert_eq!(kept(&pieces), vec![0, 10]);
        assert!(pieces.contains(&Piece::Damaged {
            position: pos as u64,
            size: size as u64
        }));
    }

    #[test]
    fn a_torn_last_batch_is_damage_at_the_end() {
        let (bytes, at) = segment(0, 3);
        let (pos, size) = at[2];
        let pieces = scan(&bytes[..pos + size / 2], 0, 4096);
        assert_eq!(kept(&pieces), vec![0, 5]);
        assert_eq!(
            pieces.last(),
            Some(&Piece::Damaged {
                position: pos as u64,
                size: (size / 2) as u64
            })
        );
    }

    #[test]
    fn batches_below_the_segment_base_are_not_intact() {
        let (bytes, _) = segment(0, 3);
        assert!(kept(&scan(&bytes, 100, 4096)).is_empty());
    }

    #[test]
    fn order_filter_keeps_offsets_strictly_increasing() {
        let run = |cands: &[(i64, i64)]| {
            let mut filter = OrderFilter::new(0);
            let mut kept = Vec::new();
            let mut on = |d: Decision| {
                if let Decision::Keep(c) = d {
                    kept.push(c.base_offset);
                }
            };
            for (b, l) in cands {
                filter.push(candidate(*b, *l), &mut on);
            }
            filter.finish(&mut on);
            kept
        };
        // Contiguous, and gaps (as compaction leaves) confirmed by what follows.
        assert_eq!(
            run(&[(0, 4), (5, 9), (20, 24), (25, 29)]),
            vec![0, 5, 20, 25]
        );
        // A damaged base offset far ahead: dropped once the next batch shows it.
        assert_eq!(
            run(&[(0, 4), (5_000_000, 5_000_004), (10, 14), (15, 19)]),
            vec![0, 10, 15]
        );
        // A copy of older batches: dropped.
        assert_eq!(
            run(&[(0, 4), (5, 9), (5, 9), (0, 4), (10, 14)]),
            vec![0, 5, 10]
        );
        // The very first batch's offsets damaged.
        assert_eq!(run(&[(900, 904), (5, 9), (10, 14)]), vec![5, 10]);
        // A lone held batch at the end is kept.
        assert_eq!(run(&[(0, 4), (50, 54)]), vec![0, 50]);
        // Below the held one and below what was kept: the newcomer goes.
        assert_eq!(run(&[(0, 9), (40, 44), (3, 4), (45, 49)]), vec![0, 40, 45]);
    }

    #[test]
    fn every_single_byte_flip_loses_at_most_the_batch_it_hit() {
        let (bytes, at) = segment(0, 4);
        for flip in 0..bytes.len() {
            for mask in [0x01u8, 0x5a, 0xff] {
                let mut damaged = bytes.clone();
                damaged[flip] ^= mask;
                let hit = at
                    .iter()
                    .position(|(p, s)| (*p..p + s).contains(&flip))
                    .unwrap();
                let got = kept(&scan(&damaged, 0, 256));
                for i in 0..4 {
                    if i != hit {
                        assert!(
                            got.contains(&(5 * i as i64)),
                            "flip {mask:#x} at {flip} lost batch {i}: {got:?}"
                        );
                    }
                }
                assert!(got.windows(2).all(|w| w[0] < w[1]));
            }
        }
    }
}
