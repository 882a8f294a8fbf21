//! What a scan of one partition found: per segment file, the runs of
//! batches to keep and the regions to drop, in file order; whether the
//! partition is damaged; and the printed account of it.
//!
//! Built and read on the repair command's thread.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::scan::{scan_segment, Candidate, Decision, OrderFilter, Piece};
use super::RepairError;
use crate::log::segment::log_file_name;

/// Why bytes are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No intact batch there.
    Damaged,
    /// An intact batch whose offsets do not fit the log's order.
    OutOfOrder,
}

/// A part of a segment file, by file position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Consecutive intact batches with consecutive offsets.
    Kept {
        position: u64,
        size: u64,
        first_offset: i64,
        last_offset: i64,
        batches: u64,
    },
    Dropped {
        position: u64,
        size: u64,
        why: Why,
    },
    /// Zeros after the last batch: nothing lost.
    ZeroTail {
        position: u64,
        size: u64,
    },
}

impl Entry {
    fn position(&self) -> u64 {
        match self {
            Entry::Kept { position, .. }
            | Entry::Dropped { position, .. }
            | Entry::ZeroTail { position, .. } => *position,
        }
    }
}

pub struct SegmentScan {
    pub base_offset: i64,
    pub path: PathBuf,
    pub file_bytes: u64,
    pub entries: Vec<Entry>,
}

/// The state of a partition's log as the scan found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Intact,
    /// Only the end of the last segment is bad: what a crash leaves, and
    /// what the broker's recovery truncates by itself.
    TornTail,
    /// Bad bytes before intact ones: the broker fences such a partition.
    Damaged,
}

pub struct PartitionScan {
    pub name: String,
    pub dir: PathBuf,
    pub segments: Vec<SegmentScan>,
}

impl PartitionScan {
    /// Scans every segment of the partition in `dir` (read only).
    /// `limits`: the largest batch and the read size.
    pub fn scan(
        name: &str,
        dir: &Path,
        limits: (usize, usize),
    ) -> Result<PartitionScan, RepairError> {
        let bases = crate::log::segment_bases(dir).map_err(RepairError::Log)?;
        let mut segments = Vec::with_capacity(bases.len());
        let mut filter = OrderFilter::new(bases.first().copied().unwrap_or(0));
        for (i, base) in bases.into_iter().enumerate() {
            let path = dir.join(log_file_name(base));
            let file = std::fs::File::open(&path).map_err(|e| RepairError::io("open", &path, e))?;
            let file_bytes = file
                .metadata()
                .map_err(|e| RepairError::io("stat", &path, e))?
                .len();
            segments.push(SegmentScan {
                base_offset: base,
                path: path.clone(),
                file_bytes,
                entries: Vec::new(),
            });
            scan_segment(file, (i, base), limits, |piece| match piece {
                Piece::Batch(c) => filter.push(c, &mut |d| decide(&mut segments, d)),
                Piece::Damaged { position, size } => insert(
                    &mut segments[i].entries,
                    Entry::Dropped {
                        position,
                        size,
                        why: Why::Damaged,
                    },
                ),
                Piece::ZeroTail { position, size } => {
                    insert(&mut segments[i].entries, Entry::ZeroTail { position, size })
                }
            })
            .map_err(|e| RepairError::io("read", &path, e))?;
        }
        filter.finish(&mut |d| decide(&mut segments, d));
        Ok(PartitionScan {
            name: name.to_string(),
            dir: dir.to_owned(),
            segments,
        })
    }

    pub fn status(&self) -> Status {
        let mut status = Status::Intact;
        let last = self.segments.len().saturating_sub(1);
        for (i, seg) in self.segments.iter().enumerate() {
            let last_kept = seg
                .entries
                .iter()
                .rposition(|e| matches!(e, Entry::Kept { .. }));
            for (j, e) in seg.entries.iter().enumerate() {
                if let Entry::Dropped { .. } = e {
                    let trailing = i == last && last_kept.is_none_or(|k| j > k);
                    if !trailing {
                        return Status::Damaged;
                    }
                    status = Status::TornTail;
                }
            }
        }
        status
    }

    /// (batches, bytes) kept and (regions, bytes) dropped.
    pub fn totals(&self) -> ((u64, u64), (u64, u64)) {
        let (mut kept, mut dropped) = ((0, 0), (0, 0));
        for e in self.segments.iter().flat_map(|s| &s.entries) {
            match e {
                Entry::Kept { size, batches, .. } => {
                    kept.0 += batches;
                    kept.1 += size;
                }
                Entry::Dropped { size, .. } => {
                    dropped.0 += 1;
                    dropped.1 += size;
                }
                Entry::ZeroTail { .. } => {}
            }
        }
        (kept, dropped)
    }

    /// Prints, per segment, what is kept and what is dropped, at most
    /// `max_lines` lines of them, then the totals.
    pub fn report(&self, out: &mut impl Write, max_lines: usize) -> std::io::Result<()> {
        let flat: Vec<(&SegmentScan, &Entry)> = self
            .segments
            .iter()
            .flat_map(|s| s.entries.iter().map(move |e| (s, e)))
            .collect();
        // First kept offset after each entry, for the offsets a drop loses.
        let mut next_first = vec![None; flat.len()];
        let mut following = None;
        for (i, (_, e)) in flat.iter().enumerate().rev() {
            next_first[i] = following;
            if let Entry::Kept { first_offset, .. } = e {
                following = Some(*first_offset);
            }
        }
        let mut prev_next: Option<i64> = None;
        let mut printed = 0usize;
        for (i, (seg, e)) in flat.iter().enumerate() {
            let file = seg.path.file_name().unwrap_or_default().to_string_lossy();
            let line = match e {
                Entry::Kept {
                    position,
                    size,
                    first_offset,
                    last_offset,
                    batches,
                } => {
                    prev_next = Some(last_offset + 1);
                    format!("  {file}: kept offsets {first_offset}..={last_offset} ({batches} batches, {size} bytes at {position}..{})", position + size)
                }
                Entry::Dropped {
                    position,
                    size,
                    why,
                } => {
                    let why = match why {
                        Why::Damaged => "damaged",
                        Why::OutOfOrder => "intact batch out of offset order",
                    };
                    let from = prev_next.unwrap_or(seg.base_offset);
                    let lost = match next_first[i] {
                        Some(to) if to > from => format!("; offsets {from}..={} missing", to - 1),
                        Some(_) => String::new(),
                        None => format!("; offsets from {from} on lost"),
                    };
                    format!(
                        "  {file}: dropped {size} bytes at {position}..{} ({why}){lost}",
                        position + size
                    )
                }
                Entry::ZeroTail { .. } => continue,
            };
            if printed < max_lines {
                writeln!(out, "{line}")?;
            }
            printed += 1;
        }
        if printed > max_lines {
            writeln!(out, "  ... and {} more ranges", printed - max_lines)?;
        }
        let ((kb, kbytes), (dr, dbytes)) = self.totals();
        let scanned: u64 = self.segments.iter().map(|s| s.file_bytes).sum();
        writeln!(
            out,
            "  total: {} segments, {scanned} bytes scanned; kept {kb} batches ({kbytes} bytes); dropped {dbytes} bytes in {dr} regions",
            self.segments.len()
        )
    }
}

/// Records an order decision in the segment the batch came from.
fn decide(segments: &mut [SegmentScan], d: Decision) {
    match d {
        Decision::Keep(c) => keep(&mut segments[c.segment].entries, c),
        Decision::Drop(c) => insert(
            &mut segments[c.segment].entries,
            Entry::Dropped {
                position: c.position,
                size: c.size,
                why: Why::OutOfOrder,
            },
        ),
    }
}

/// Adds a kept batch, extending the run before it when the batch follows
/// it in both file position and offsets.
fn keep(entries: &mut Vec<Entry>, c: Candidate) {
    let at = entries.partition_point(|e| e.position() < c.position);
    if let Some(Entry::Kept {
        position,
        size,
        last_offset,
        batches,
        ..
    }) = at.checked_sub(1).and_then(|i| entries.get_mut(i))
    {
        if *position + *size == c.position && *last_offset + 1 == c.base_offset {
            *size += c.size;
            *last_offset = c.last_offset;
            *batches += 1;
            return;
        }
    }
    entries.insert(
        at,
        Entry::Kept {
            position: c.position,
            size: c.size,
            first_offset: c.base_offset,
            last_offset: c.last_offset,
            batches: 1,
        },
    );
}

/// Inserts in file-position order (decisions come at most one batch late,
/// so this is near the end).
fn insert(entries: &mut Vec<Entry>, e: Entry) {
    let at = entries.partition_point(|x| x.position() < e.position());
    entries.insert(at, e);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::assign_offsets;
    use crate::record::tests::make_batch;
    use kafka_protocol::records::Compression;

    /// Writes segments of `n` batches of 5 records each into `dir`.
    fn write_log(dir: &Path, segments: &[(i64, usize)]) -> Vec<Vec<(usize, usize)>> {
        let mut layout = Vec::new();
        for (base, n) in segments {
            let mut bytes = Vec::new();
            let mut at = Vec::new();
            for i in 0..*n {
                let mut b = make_batch(5, Compression::None, i as i64);
                assign_offsets(&mut b, base + 5 * i as i64, 0);
                at.push((bytes.len(), b.len()));
                bytes.extend_from_slice(&b);
            }
            std::fs::write(dir.join(log_file_name(*base)), &bytes).unwrap();
            layout.push(at);
        }
        layout
    }

    fn flip(path: &Path, at: usize) {
        let mut bytes = std::fs::read(path).unwrap();
        bytes[at] ^= 0xff;
        std::fs::write(path, bytes).unwrap();
    }

    const LIMITS: (usize, usize) = (1 << 20, 4096);

    #[test]
    fn intact_log_is_one_run_per_segment() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), &[(0, 10), (50, 10)]);
        let scan = PartitionScan::scan("t-0", dir.path(), LIMITS).unwrap();
        assert_eq!(scan.status(), Status::Intact);
        assert!(scan.segments.iter().all(|s| s.entries.len() == 1));
        assert_eq!(scan.totals().0 .0, 20);
    }

    #[test]
    fn damage_in_a_sealed_segment_is_reported_with_the_lost_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let layout = write_log(dir.path(), &[(0, 10), (50, 10)]);
        let (pos, size) = layout[0][3];
        flip(&dir.path().join(log_file_name(0)), pos + size - 5);
        let scan = PartitionScan::scan("t-0", dir.path(), LIMITS).unwrap();
        assert_eq!(scan.status(), Status::Damaged);
        assert_eq!(scan.totals(), ((19, scan.totals().0 .1), (1, size as u64)));
        let mut out = Vec::new();
        scan.report(&mut out, 100).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("kept offsets 0..=14 (3 batches"), "{text}");
        assert!(text.contains("offsets 15..=19 missing"), "{text}");
        assert!(text.contains("kept offsets 20..=49 (6 batches"), "{text}");
        assert!(text.contains("kept offsets 50..=99 (10 batches"), "{text}");
    }

    #[test]
    fn a_bad_end_of_the_last_segment_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let layout = write_log(dir.path(), &[(0, 4), (20, 4)]);
        let (pos, _) = layout[1][3];
        flip(&dir.path().join(log_file_name(20)), pos + 30);
        let scan = PartitionScan::scan("t-0", dir.path(), LIMITS).unwrap();
        assert_eq!(scan.status(), Status::TornTail);
        let mut out = Vec::new();
        scan.report(&mut out, 100).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("offsets from 35 on lost"));
    }

    #[test]
    fn the_report_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let layout = write_log(dir.path(), &[(0, 30)]);
        let path = dir.path().join(log_file_name(0));
        for (pos, size) in layout[0].iter().step_by(2) {
            flip(&path, pos + size - 3);
        }
        let scan = PartitionScan::scan("t-0", dir.path(), LIMITS).unwrap();
        let mut out = Vec::new();
        scan.report(&mut out, 5).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 7, "{text}");
        assert!(text.contains("... and 25 more ranges"), "{text}");
    }
}
