//! A partition's log: ordered segments in `<data-dir>/<topic>-<partition>/`,
//! recovery on open, and the read path.
//!
//! Runs on the partition's shard; owned by the partition. Synchronous methods
//! mutate in-memory state only; the partition sequences the async I/O (writes,
//! syncs, rolls) under its io lock so no RefCell borrow is held across an await.

pub mod checkpoint;
pub mod cleaner;
pub mod index;
pub mod lock;
pub mod retention;
pub mod segment;
pub mod space;

use std::path::{Path, PathBuf};
use std::rc::Rc;

use bytes::BytesMut;
use glommio::io::DmaFile;
use thiserror::Error;

use crate::record::{validate_batch, BatchHeader, RecordSet, RecordSetBuilder, LOG_OVERHEAD};
use segment::{align_down, Segment};

/// Bytes read per I/O while recovering a segment.
pub const RECOVERY_READ_BYTES: usize = 4 * 1024 * 1024;
/// Smallest read issued by a fetch from disk, so a scan from an index entry
/// usually reaches the wanted batch in one I/O.
pub const MIN_DISK_READ_BYTES: usize = 64 * 1024;

#[derive(Debug, Error)]
pub enum LogError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("partition storage is poisoned after an I/O error; refusing writes")]
    Poisoned,
    #[error("offset {0} is out of range")]
    OffsetOutOfRange(i64),
    #[error(
        "{path} is corrupt at byte {position}: a sealed segment fails validation; partition fenced"
    )]
    Corrupt { path: PathBuf, position: u64 },
    #[error("data directory lock {path} is held by another process (a running broker or repair)")]
    InUse { path: PathBuf },
}

impl LogError {
    pub fn io(op: &'static str, path: &Path, source: impl Into<std::io::Error>) -> LogError {
        LogError::Io {
            op,
            path: path.to_owned(),
            source: source.into(),
        }
    }

    /// True when the error is the file system's lack of room (ENOSPC,
    /// EDQUOT): the operation may succeed once space returns.
    pub fn is_no_space(&self) -> bool {
        matches!(self, LogError::Io { source, .. } if space::is_no_space(source))
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub segment_bytes: u64,
    pub index_interval_bytes: u64,
    pub write_buffer_bytes: usize,
    pub max_batch_bytes: usize,
    /// Cap on a compressed batch's records when they are read.
    pub max_decompressed_batch_bytes: usize,
    pub preallocate: bool,
    /// The active segment rolls once its offset index would pass this
    /// many bytes (Kafka's segment.index.bytes).
    pub segment_index_bytes: usize,
}

pub struct Log {
    pub dir: PathBuf,
    pub config: LogConfig,
    /// Ordered by base offset; the last one is active.
    pub segments: Vec<Segment>,
    pub log_start_offset: i64,
}

/// Where a read starts: a file, a position in it and how far it is valid.
pub struct ReadPlan {
    pub file: Rc<DmaFile>,
    pub path: PathBuf,
    pub position: u64,
    pub limit: u64,
    pub next_segment: Option<i64>,
}

/// Base offsets of the `.log` files in `dir`, ascending.
pub fn segment_bases(dir: &Path) -> Result<Vec<i64>, LogError> {
    let mut bases = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| LogError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io("list", dir, e))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".log") {
            if let Ok(base) = stem.parse::<i64>() {
                bases.push(base);
            }
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

/// True when the block device under `path` has polled I/O queues enabled
/// (`/sys/dev/block/MAJOR:0/queue/io_poll`).
fn device_polls(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    let major = libc::major(meta.dev());
    std::fs::read_to_string(format!("/sys/dev/block/{major}:0/queue/io_poll"))
        .is_ok_and(|s| s.trim() == "1")
}

/// Settles, for this shard's thread, whether glommio submits O_DIRECT I/O on
/// the data directory's device to its polled ring. glommio decides by trying
/// one polled read on the first file it opens and caches the answer per
/// thread; on a device without poll queues that read can still succeed, and
/// later reads then sit on a ring nobody polls while the executor is parked.
/// The device's own `io_poll` setting decides instead: without poll queues,
/// the probe is made on a write-only file, whose read fails with EBADF, which
/// glommio records as "no polling". Call once per shard before opening any
/// segment.
pub async fn probe_device(data_dir: &Path) -> Result<(), LogError> {
    // One file per thread: shards probe at the same time, and glommio panics
    // if the file vanishes while it opens it.
    let thread = format!("{:?}", std::thread::current().id())
        .replace(|c: char| !c.is_ascii_alphanumeric(), "");
    let path = data_dir.join(format!(".io-probe-{thread}"));
    let written = std::fs::File::create(&path).and_then(|mut f| {
        std::io::Write::write_all(&mut f, &[1u8; 2 * segment::PAGE_BYTES as usize])?;
        f.sync_all()
    });
    written.map_err(|e| LogError::io("write", &path, e))?;
    let polls = device_polls(data_dir);
    let file = glommio::io::OpenOptions::new()
        .read(polls)
        .write(!polls)
        .dma_open(&path)
        .await
        .map_err(|e| LogError::io("open", &path, e))?;
    let _ = file.close().await;
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Base offset of the first segment recovery must scan, given the recovery
/// point: every earlier segment lies wholly below it (its successor starts
/// at or before it). The last segment is always scanned.
pub fn scan_start(bases: &[i64], recovery_point: i64) -> i64 {
    let k = bases
        .windows(2)
        .position(|w| w[1] > recovery_point)
        .unwrap_or(bases.len().saturating_sub(1));
    bases.get(k).copied().unwrap_or(0)
}

impl Log {
    /// Opens (creating if needed) the log in `dir`. Segments before the one
    /// at `scan_from` (see [`scan_start`]) are sealed and synced: they are
    /// loaded from their index files, and scanned only if those fail their
    /// sanity checks. From `scan_from` on every segment is recovered:
    /// batches are validated (length, CRC32C), indexes rebuilt, and a torn
    /// tail of the last segment truncated. A sealed segment was synced before
    /// the next one was created, so damage there is corruption, not a torn
    /// write: the log is refused (`LogError::Corrupt`) and nothing is changed
    /// on disk. `on_batch` sees every batch header from `scan_from` on, in
    /// order. `log_start_offset` (-1: none) moves the start past the first
    /// segment's base, within the log.
    pub async fn open(
        dir: PathBuf,
        config: LogConfig,
        scan_from: i64,
        log_start_offset: i64,
        mut on_batch: impl FnMut(&BatchHeader),
    ) -> Result<Log, LogError> {
        std::fs::create_dir_all(&dir).map_err(|e| LogError::io("create dir", &dir, e))?;
        cleaner::recover_swaps(&dir)?;
        remove_deleted_files(&dir)?;
        let bases = segment_bases(&dir)?;
        let mut segments: Vec<Segment> = Vec::new();
        let last = bases.len().saturating_sub(1);
        let mut loaded = 0;
        for (i, &base) in bases.iter().enumerate() {
            let path = dir.join(segment::log_file_name(base));
            if base < scan_from && i < last {
                if let Some(seg) = Segment::load_sealed(path.clone(), base, bases[i + 1]).await? {
                    segments.push(seg);
                    loaded += 1;
                    continue;
                }
                tracing::warn!(path = %path.display(), "index files missing or inconsistent; scanning the segment");
                let mut seg = Segment::open(path, base).await?;
                recover_segment(&mut seg, &config, &mut |_: &BatchHeader| {}, false).await?;
                segments.push(seg);
                continue;
            }
            let mut seg = Segment::open(path, base).await?;
            recover_segment(&mut seg, &config, &mut on_batch, i == last).await?;
            segments.push(seg);
        }
        if segments.len() > 1 {
            tracing::info!(dir = %dir.display(), loaded, scanned = segments.len() - loaded, "log recovered: segments below the recovery point loaded from their indexes, the rest scanned");
        }
        if segments.is_empty() {
            segments.push(Segment::create(&dir, 0).await?);
        }
        let first_base = segments[0].base_offset;
        let end = segments.last().expect("one at least").next_offset;
        let log_start_offset = if (first_base..=end).contains(&log_start_offset) {
            log_start_offset
        } else {
            first_base
        };
        Ok(Log {
            dir,
            config,
            segments,
            log_start_offset,
        })
    }

    pub fn active(&self) -> &Segment {
        self.segments.last().expect("a log has an active segment")
    }

    pub fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .last_mut()
            .expect("a log has an active segment")
    }

    pub fn log_end_offset(&self) -> i64 {
        self.active().next_offset
    }

    pub fn segment_mut(&mut self, base_offset: i64) -> Option<&mut Segment> {
        self.segments
            .iter_mut()
            .find(|s| s.base_offset == base_offset)
    }

    /// True when `len` more bytes would overflow the active segment.
    pub fn needs_roll(&self, len: usize) -> bool {
        let a = self.active();
        let index_full = (a.index.offsets.len() + 1) * 8 > self.config.segment_index_bytes;
        a.size > 0 && (a.size + len as u64 > self.config.segment_bytes || index_full)
    }

    /// Appends one batch whose offsets are already assigned. The caller made
    /// room (`needs_roll`, `has_room`).
    pub fn append(&mut self, batch: &[u8]) {
        let header = BatchHeader::parse(batch).expect("validated batch");
        let (base, last, ts) = (
            header.base_offset(),
            header.last_offset(),
            header.max_timestamp(),
        );
        let interval = self.config.index_interval_bytes;
        let buffer_bytes = self.config.write_buffer_bytes;
        let seg = self.active_mut();
        let position = seg.append(batch, buffer_bytes);
        seg.track_batch(position, batch.len() as u64, base, last, ts, interval);
    }

    /// First step of cutting the log so `offset` is its end: deletes the
    /// later segments and says how to cut the one holding `offset`, or
    /// `None` when the whole log lies past `offset` (then a new segment at
    /// `offset` replaces it: `replace_all`). `offset` must be a batch
    /// boundary and everything buffered written out. The log always keeps
    /// an active segment, and no borrow is needed across the cut's I/O.
    pub fn cut_from(&mut self, offset: i64) -> Result<Option<CutPlan>, LogError> {
        if self.segments[0].base_offset > offset {
            return Ok(None);
        }
        while self.segments.len() > 1 && self.active().base_offset >= offset {
            let seg = self.segments.pop().expect("checked");
            remove_segment_files(&seg.path)?;
        }
        // Producer snapshots past the cut describe batches that are gone.
        remove_snapshots_from(&self.dir, offset + 1)?;
        let seg = self.active();
        let relative = (offset - seg.base_offset) as u32;
        Ok(Some(CutPlan {
            file: seg.file.clone(),
            path: seg.path.clone(),
            scan_from: seg.index.lookup(relative) as u64,
            written: seg.written,
        }))
    }

    /// Replaces every segment with `seg` (a cut below the log's start).
    pub fn replace_all(&mut self, seg: Segment) -> Result<(), LogError> {
        for old in std::mem::take(&mut self.segments) {
            remove_segment_files(&old.path)?;
        }
        remove_snapshots_from(&self.dir, i64::MIN)?;
        self.log_start_offset = seg.base_offset;
        self.segments.push(seg);
        Ok(())
    }

    /// Last step of a cut: the active segment now ends at `position`.
    pub fn cut_done(&mut self, offset: i64, cut: Cut) {
        self.active_mut().cut(cut.position, offset, cut.tail);
    }

    /// What retention sees of every segment, oldest first.
    pub fn retention_view(&self) -> Vec<retention::SegmentInfo> {
        self.segments
            .iter()
            .map(|s| retention::SegmentInfo {
                base_offset: s.base_offset,
                next_offset: s.next_offset,
                size: s.size,
                max_timestamp: s.max_timestamp,
            })
            .collect()
    }

    /// Takes the oldest segment out of the log (retention) and moves the
    /// log start to the next one's base. Its files are renamed
    /// `<name>.deleted`, to be removed after file.delete.delay.ms (a
    /// reader holding the file keeps reading it meanwhile); returns the
    /// renamed paths. The active segment is never taken.
    pub fn remove_oldest(&mut self) -> Result<Vec<PathBuf>, LogError> {
        if self.segments.len() < 2 {
            return Ok(Vec::new());
        }
        let seg = self.segments.remove(0);
        self.log_start_offset = self.log_start_offset.max(self.segments[0].base_offset);
        let stem = seg.path.with_extension("");
        let mut renamed = Vec::new();
        let snapshot = self
            .dir
            .join(crate::producer_state::snapshot_file_name(seg.base_offset));
        let files = ["log", "index", "timeindex"].map(|ext| stem.with_extension(ext));
        for file in files.iter().chain([&snapshot]) {
            let mut to = file.as_os_str().to_owned();
            to.push(".deleted");
            let to = PathBuf::from(to);
            match std::fs::rename(file, &to) {
                Ok(()) => renamed.push(to),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::io("rename", file, e)),
            }
        }
        Ok(renamed)
    }

    /// Plans a read of the batch holding `offset`.
    pub fn locate(&self, offset: i64) -> Option<ReadPlan> {
        let i = self.segments.partition_point(|s| s.base_offset <= offset);
        if i == 0 {
            return None;
        }
        let seg = &self.segments[i - 1];
        let relative = (offset - seg.base_offset).min(u32::MAX as i64) as u32;
        Some(ReadPlan {
            file: seg.file.clone(),
            path: seg.path.clone(),
            position: seg.index.lookup(relative) as u64,
            limit: seg.written,
            next_segment: self.segments.get(i).map(|s| s.base_offset),
        })
    }

    /// Plans a scan for the first record with timestamp >= `timestamp`.
    pub fn locate_time(&self, timestamp: i64) -> Option<(i64, ReadPlan)> {
        let seg = self
            .segments
            .iter()
            .find(|s| s.max_timestamp >= timestamp)?;
        let start = seg.base_offset + seg.index.lookup_time(timestamp) as i64;
        Some((start, self.locate(start)?))
    }

    /// Bytes of batches in the log: the sum of its segments' sizes, as
    /// Kafka's `Log.size` (not the files' preallocated lengths).
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// Largest timestamp in the log and the offset of the batch carrying it.
    pub fn max_timestamp(&self) -> (i64, i64) {
        self.segments
            .iter()
            .filter(|s| s.max_timestamp >= 0)
            .max_by_key(|s| s.max_timestamp)
            .map(|s| (s.max_timestamp, s.offset_of_max_timestamp))
            .unwrap_or((-1, -1))
    }
}

/// Where a cut of the active segment happens.
pub struct CutPlan {
    file: Rc<DmaFile>,
    path: PathBuf,
    scan_from: u64,
    written: u64,
}

/// A cut made: the segment's new size and its partial last page.
pub struct Cut {
    position: u64,
    tail: Vec<u8>,
}

impl CutPlan {
    /// Finds where the batch at `offset` starts, truncates the file there
    /// and reads back the partial last page.
    pub async fn run(&self, offset: i64) -> Result<Cut, LogError> {
        let mut position = self.scan_from;
        while position < self.written {
            let chunk = self
                .file
                .read_at(position, LOG_OVERHEAD)
                .await
                .map_err(|e| LogError::io("read", &self.path, e))?;
            let Ok((base, length)) = BatchHeader::parse_prefix(&chunk) else {
                break;
            };
            if base >= offset || length <= 0 {
                break;
            }
            position += LOG_OVERHEAD as u64 + length as u64;
        }
        let position = position.min(self.written);
        self.file
            .truncate(position)
            .await
            .map_err(|e| LogError::io("truncate", &self.path, e))?;
        let tail_start = align_down(position);
        let tail = if position > tail_start {
            let page = self
                .file
                .read_at(tail_start, (position - tail_start) as usize)
                .await
                .map_err(|e| LogError::io("read", &self.path, e))?;
            page.to_vec()
        } else {
            Vec::new()
        };
        Ok(Cut { position, tail })
    }
}

/// Deletes a segment's log and index files.
fn remove_segment_files(path: &Path) -> Result<(), LogError> {
    let stem = path.with_extension("");
    for ext in ["log", "index", "timeindex"] {
        let file = stem.with_extension(ext);
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::io("remove", &file, e)),
        }
    }
    Ok(())
}

/// Removes the files retention renamed `*.deleted` and a stop kept from
/// being removed (Kafka does the same at start-up).
fn remove_deleted_files(dir: &Path) -> Result<(), LogError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LogError::io("list", dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| LogError::io("list", dir, e))?.path();
        if path.extension().is_some_and(|e| e == "deleted") {
            std::fs::remove_file(&path).map_err(|e| LogError::io("remove", &path, e))?;
        }
    }
    Ok(())
}

/// Deletes the producer snapshots (`<offset>.snapshot`) at `from` or later.
fn remove_snapshots_from(dir: &Path, from: i64) -> Result<(), LogError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LogError::io("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io("list", dir, e))?;
        let name = entry.file_name();
        let offset = name
            .to_str()
            .and_then(|n| n.strip_suffix(".snapshot"))
            .and_then(|stem| stem.parse::<i64>().ok());
        if offset.is_some_and(|o| o >= from) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| LogError::io("remove", &path, e))?;
        }
    }
    Ok(())
}

/// Scans one segment from its start. A torn or corrupt tail is truncated in
/// the last segment and refused in a sealed one.
async fn recover_segment(
    seg: &mut Segment,
    config: &LogConfig,
    on_batch: &mut impl FnMut(&BatchHeader),
    last: bool,
) -> Result<(), LogError> {
    let file_size = seg
        .file
        .file_size()
        .await
        .map_err(|e| LogError::io("stat", &seg.path, e))?;
    let max_batch = config
        .max_batch_bytes
        .max(crate::config::MIN_RECOVERED_BATCH_BYTES);
    let mut carry = BytesMut::new();
    let mut carry_pos = 0u64; // file position of carry[0]
    let mut read_pos = 0u64;
    let complete;
    'scan: loop {
        loop {
            if carry.len() < LOG_OVERHEAD {
                break;
            }
            let length = i32::from_be_bytes(carry[8..12].try_into().expect("4"));
            if length <= 0 || carry.starts_with(&segment::PADDING_HEADER) {
                // The padding of the last page, or preallocated zeros: a
                // clean end if nothing but padding follows.
                complete = segment::is_padding(&carry) && read_pos >= file_size;
                break 'scan;
            }
            let size = LOG_OVERHEAD + length as usize;
            if carry.len() < size && size <= max_batch {
                break;
            }
            match validate_batch(&carry, max_batch) {
                Ok(size) => {
                    let h = BatchHeader::parse(&carry).expect("validated");
                    seg.track_batch(
                        carry_pos,
                        size as u64,
                        h.base_offset(),
                        h.last_offset(),
                        h.max_timestamp(),
                        config.index_interval_bytes,
                    );
                    on_batch(&h);
                    let _ = carry.split_to(size);
                    carry_pos += size as u64;
                }
                Err(e) => {
                    tracing::warn!(path = %seg.path.display(), position = carry_pos, error = %e, "torn or corrupt batch");
                    complete = false;
                    break 'scan;
                }
            }
        }
        if read_pos >= file_size {
            // Less than a header left: clean if it is padding.
            complete = segment::is_padding(&carry);
            break;
        }
        let want = RECOVERY_READ_BYTES.min((file_size - read_pos) as usize);
        let chunk = seg
            .file
            .read_at(read_pos, want)
            .await
            .map_err(|e| LogError::io("read", &seg.path, e))?;
        if chunk.is_empty() {
            complete = carry.is_empty();
            break;
        }
        carry.extend_from_slice(&chunk);
        read_pos += chunk.len() as u64;
    }
    let valid = carry_pos;
    if !complete && !last {
        return Err(LogError::Corrupt {
            path: seg.path.clone(),
            position: valid,
        });
    }
    if !complete && valid < file_size {
        tracing::warn!(path = %seg.path.display(), valid, file_size, "truncating torn segment tail");
    }
    let tail_start = align_down(valid);
    let tail = if valid > tail_start {
        let page = seg
            .file
            .read_at(tail_start, (valid - tail_start) as usize)
            .await
            .map_err(|e| LogError::io("read", &seg.path, e))?;
        page.to_vec()
    } else {
        Vec::new()
    };
    seg.recovered(valid, tail).await
}

/// Reads whole batches starting with the one holding `offset`, stopping
/// before `end_offset` (the high watermark) and at about `max_bytes` (but
/// always at least one batch). Each read's run of whole batches is copied
/// once out of the DMA buffer.
pub async fn read_batches(
    plan: &ReadPlan,
    offset: i64,
    end_offset: i64,
    max_bytes: usize,
) -> Result<RecordSet, LogError> {
    let (batches, _) =
        read_batches_bounded(plan, offset, end_offset, max_bytes, usize::MAX).await?;
    Ok(batches)
}

/// [`read_batches`], except that a first batch above `max_bytes` is read
/// only if it is at most `first_batch_max_bytes`. Also says whether the
/// read stopped at a byte limit (rather than at the data's end), so that an
/// empty result is not taken for the end of the segment.
pub async fn read_batches_bounded(
    plan: &ReadPlan,
    offset: i64,
    end_offset: i64,
    max_bytes: usize,
    first_batch_max_bytes: usize,
) -> Result<(RecordSet, bool), LogError> {
    let first_max = max_bytes.max(first_batch_max_bytes);
    let mut position = plan.position;
    let mut out = RecordSetBuilder::default();
    let mut want = max_bytes.max(MIN_DISK_READ_BYTES);
    let mut limited = false;
    while position < plan.limit {
        let available = (plan.limit - position) as usize;
        let timer = crate::metrics::io_begin(crate::metrics::IoOp::DirectRead, want.min(available));
        let chunk = plan.file.read_at(position, want.min(available)).await;
        drop(timer);
        let chunk = chunk.map_err(|e| LogError::io("read", &plan.path, e))?;
        // Whole batches to return are chunk[first..at].
        let mut first = None;
        let mut at = 0usize;
        let mut larger = 0usize;
        let mut done = false;
        while chunk.len() - at >= LOG_OVERHEAD {
            let Ok(h) = BatchHeader::parse(&chunk[at..]) else {
                break;
            };
            let size = h.total_size();
            if h.base_offset() >= end_offset || size <= LOG_OVERHEAD {
                done = true;
                break;
            }
            if chunk.len() - at < size {
                larger = size;
                break;
            }
            if h.last_offset() >= offset {
                let taken = out.len() + first.map_or(0, |f| at - f);
                let limit = if taken == 0 { first_max } else { max_bytes };
                if taken + size > limit {
                    limited = true;
                    done = true;
                    break;
                }
                first.get_or_insert(at);
            }
            at += size;
        }
        if let Some(f) = first {
            out.push_slice(&chunk[f..at]);
        }
        if done {
            break;
        }
        if at == 0 {
            let room = if out.is_empty() {
                first_max
            } else {
                max_bytes.saturating_sub(out.len())
            };
            if larger > want && larger <= available && larger <= room {
                want = larger; // one batch larger than the read: read it whole
                continue;
            }
            limited = larger > room && larger <= available;
            break;
        }
        position += at as u64;
        if out.len() >= max_bytes {
            limited = true;
            break;
        }
    }
    Ok((out.finish(), limited))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::make_batch;
    use crate::record::{assign_offsets, BatchHeader};
    use kafka_protocol::records::Compression;

    fn config(segment_bytes: u64) -> LogConfig {
        LogConfig {
            segment_bytes,
            index_interval_bytes: 1024,
            write_buffer_bytes: 64 * 1024,
            max_batch_bytes: 1 << 20,
            max_decompressed_batch_bytes: 16 << 20,
            preallocate: true,
            segment_index_bytes: 10 << 20,
        }
    }

    fn run<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
        crate::server::raise_memlock();
        glommio::LocalExecutorBuilder::default()
            .io_memory(crate::server::IO_MEMORY_BYTES)
            .spawn(move || async move { f().await })
            .expect("executor")
            .join()
            .expect("join");
    }

    /// Appends `n` batches of 10 records and writes them out, rolling when full.
    async fn append(log: &mut Log, n: usize) {
        for _ in 0..n {
            let mut batch = make_batch(10, Compression::None, 1_000 + log.log_end_offset());
            if log.needs_roll(batch.len()) {
                flush(log).await;
                let next = log.log_end_offset();
                log.active().seal_job().run().await.unwrap();
                log.segments
                    .push(segment::Segment::create(&log.dir, next).await.unwrap());
            }
            if !log.active().has_room(batch.len()) {
                flush(log).await;
            }
            assign_offsets(&mut batch, log.log_end_offset(), 0);
            log.append(&batch);
        }
        flush(log).await;
    }

    async fn flush(log: &mut Log) {
        if let Some(p) = log.active_mut().take_write() {
            p.file.write_rc_at(p.buffer, p.position).await.unwrap();
            log.active_mut().written_to(p.end);
        }
    }

    async fn count_batches(log: &Log) -> i64 {
        let mut offset = log.log_start_offset;
        let mut batches = 0;
        while let Some(plan) = log.locate(offset) {
            let bytes = read_batches(&plan, offset, log.log_end_offset(), 1 << 20)
                .await
                .unwrap();
            if bytes.is_empty() {
                match plan.next_segment {
                    Some(n) => {
                        offset = n;
                        continue;
                    }
                    None => break,
                }
            }
            let bytes = bytes.to_bytes();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let h = BatchHeader::parse(rest).unwrap();
                assert_eq!(h.base_offset(), offset, "batches are contiguous");
                offset = h.last_offset() + 1;
                rest = &rest[h.total_size()..];
                batches += 1;
            }
        }
        batches
    }

    #[test]
    fn reopen_recovers_every_batch_and_indexes() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            probe_device(dir.path()).await.unwrap();
            let mut log = Log::open(dir.path().join("t-0"), config(1 << 30), 0, -1, |_| {})
                .await
                .unwrap();
            append(&mut log, 200).await;
            assert_eq!(log.log_end_offset(), 2000);
            drop(log);
            let mut seen = 0;
            let log = Log::open(dir.path().join("t-0"), config(1 << 30), 0, -1, |_| {
                seen += 1
            })
            .await
            .unwrap();
            assert_eq!(seen, 200);
            assert_eq!(log.log_end_offset(), 2000);
            assert!(
                log.active().index.offsets.len() > 10,
                "sparse index rebuilt"
            );
            assert_eq!(count_batches(&log).await, 200);
        });
    }

    #[test]
    fn reads_see_writes_on_the_live_handle() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            probe_device(dir.path()).await.unwrap();
            let mut log = Log::open(dir.path().join("t-0"), config(1 << 30), 0, -1, |_| {})
                .await
                .unwrap();
            append(&mut log, 20).await;
            assert_eq!(count_batches(&log).await, 20);
        });
    }

    #[test]
    fn torn_tail_is_truncated_and_appends_continue() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            probe_device(dir.path()).await.unwrap();
            let path = dir.path().join("t-0");
            let mut log = Log::open(path.clone(), config(1 << 30), 0, -1, |_| {})
                .await
                .unwrap();
            append(&mut log, 50).await;
            let good = log.active().size;
            drop(log);
            // A torn write: half of a new batch lands after the good data.
            let torn = make_batch(10, Compression::None, 0);
            let file = path.join(segment::log_file_name(0));
            let mut bytes = std::fs::read(&file).unwrap();
            bytes.truncate(good as usize);
            bytes.extend_from_slice(&torn[..torn.len() / 2]);
            std::fs::write(&file, &bytes).unwrap();
            let mut log = Log::open(path.clone(), config(1 << 30), 0, -1, |_| {})
                .await
                .unwrap();
            assert_eq!(log.log_end_offset(), 500);
            assert_eq!(log.active().size, good);
            assert_eq!(std::fs::metadata(&file).unwrap().len(), good);
            append(&mut log, 5).await;
            drop(log);
            let log = Log::open(path, config(1 << 30), 0, -1, |_| {})
                .await
                .unwrap();
            assert_eq!(log.log_end_offset(), 550);
            assert_eq!(count_batches(&log).await, 55);
        });
    }

    #[test]
    fn corruption_in_a_sealed_segment_fences_the_log_and_changes_nothing() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            probe_device(dir.path()).await.unwrap();
            let path = dir.path().join("t-0");
            let mut log = Log::open(path.clone(), config(16 * 1024), 0, -1, |_| {})
                .await
                .unwrap();
            append(&mut log, 200).await;
            assert!(log.segments.len() > 3, "small segments rolled");
            let first = log.segments[0].path.clone();
            let files_before: Vec<_> = log.segments.iter().map(|s| s.path.clone()).collect();
            drop(log);
            // Flip a byte in the last batch of the first (sealed) segment.
            let mut bytes = std::fs::read(&first).unwrap();
            let n = bytes.len();
            bytes[n - 5] ^= 0xff;
            std::fs::write(&first, &bytes).unwrap();
            let err = Log::open(path, config(16 * 1024), 0, -1, |_| {})
                .await
                .err()
                .expect("refused");
            assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
            assert_eq!(std::fs::read(&first).unwrap().len(), n, "nothing truncated");
            assert!(
                files_before.iter().all(|p| p.exists()),
                "no segment removed"
            );
        });
    }

    #[test]
    fn scan_starts_at_the_segment_holding_the_recovery_point() {
        assert_eq!(scan_start(&[], 50), 0);
        assert_eq!(scan_start(&[0], 50), 0);
        assert_eq!(scan_start(&[0, 100, 200], -1), 0);
        assert_eq!(scan_start(&[0, 100, 200], 99), 0);
        assert_eq!(scan_start(&[0, 100, 200], 100), 100);
        assert_eq!(scan_start(&[0, 100, 200], 150), 100);
        assert_eq!(scan_start(&[0, 100, 200], 10_000), 200);
    }

    #[test]
    fn sealed_segments_below_the_recovery_point_are_loaded_not_scanned() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            probe_device(dir.path()).await.unwrap();
            let path = dir.path().join("t-0");
            let mut log = Log::open(path.clone(), config(16 * 1024), 0, -1, |_| {})
                .await
                .unwrap();
            append(&mut log, 200).await;
            assert!(log.segments.len() > 3, "small segments rolled");
            drop(log);
            let full = Log::open(path.clone(), config(16 * 1024), 0, -1, |_| {})
                .await
                .unwrap();
            let bases: Vec<i64> = full.segments.iter().map(|s| s.base_offset).collect();
            let scan_from = scan_start(&bases, full.log_end_offset());
            drop(full);
            let full = Log::open(path.clone(), config(16 * 1024), 0, -1, |_| {})
                .await
                .unwrap();
            let mut scanned = 0;
            let fast = Log::open(path.clone(), config(16 * 1024), scan_from, 30, |h| {
                assert!(h.base_offset() >= scan_from);
                scanned += 1;
            })
            .await
            .unwrap();
            assert_eq!(scanned, (full.log_end_offset() - scan_from) / 10);
            assert_eq!(fast.log_end_offset(), full.log_end_offset());
            assert_eq!(fast.log_start_offset, 30, "checkpointed start kept");
            assert_eq!(fast.max_timestamp(), full.max_timestamp());
            for (a, b) in fast.segments.iter().zip(&full.segments) {
                assert_eq!(
                    (a.base_offset, a.next_offset, a.size, &a.index.offsets),
                    (b.base_offset, b.next_offset, b.size, &b.index.offsets)
                );
                assert_eq!(
                    a.max_timestamp, b.max_timestamp,
                    "sealed time index ends at the max"
                );
            }
            assert_eq!(count_batches(&fast).await, 197, "read from the start at 30");
            drop((fast, full));
            // A damaged index file: that segment is scanned instead.
            let first = path.join(segment::log_file_name(0)).with_extension("index");
            std::fs::write(&first, [0u8, 0, 0, 9, 0]).unwrap();
            let log = Log::open(path, config(16 * 1024), scan_from, 10_000, |_| {})
                .await
                .unwrap();
            assert_eq!(log.log_start_offset, 0, "a start past the log is ignored");
            assert_eq!(count_batches(&log).await, 200);
        });
    }

    #[test]
    fn zeroed_preallocated_tail_is_clean_end() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            probe_device(dir.path()).await.unwrap();
            let path = dir.path().join("t-0");
            let mut log = Log::open(path.clone(), config(1 << 30), 0, -1, |_| {})
                .await
                .unwrap();
            append(&mut log, 3).await;
            let size = log.active().size;
            drop(log);
            let file = path.join(segment::log_file_name(0));
            let mut bytes = std::fs::read(&file).unwrap();
            bytes.resize(size as usize + 64 * 1024, 0);
            std::fs::write(&file, &bytes).unwrap();
            let log = Log::open(path, config(1 << 30), 0, -1, |_| {})
                .await
                .unwrap();
            assert_eq!(log.log_end_offset(), 30);
            assert_eq!(std::fs::metadata(&file).unwrap().len(), size);
        });
    }

    /// Kafka 4.1's FileLogInputStream.nextBatch over a whole file: the
    /// (base offset, last offset, position) of each batch it yields, or the
    /// CorruptRecordException it throws.
    fn kafka_batches(file: &[u8]) -> Result<Vec<(i64, i64, usize)>, String> {
        let (mut position, end) = (0usize, file.len());
        let mut out = Vec::new();
        while position + 17 <= end {
            let size = i32::from_be_bytes(file[position + 8..position + 12].try_into().unwrap());
            if size < 14 {
                return Err(format!("record size {size} at {position}"));
            }
            if position + LOG_OVERHEAD + size as usize > end {
                break;
            }
            let h = BatchHeader::parse(&file[position..]).unwrap();
            out.push((h.base_offset(), h.last_offset(), position));
            position += LOG_OVERHEAD + size as usize;
        }
        Ok(out)
    }

    #[test]
    fn kafka_reads_the_active_segment_through_its_padding() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            probe_device(dir.path()).await.unwrap();
            let path = dir.path().join("t-0");
            let file = path.join(segment::log_file_name(0));
            let mut log = Log::open(path.clone(), config(1 << 30), 0, -1, |_| {})
                .await
                .unwrap();
            for round in 1..=40i64 {
                append(&mut log, 1).await;
                let bytes = std::fs::read(&file).unwrap();
                assert_eq!(bytes.len() as u64, segment::align_up(log.active().size));
                let batches = kafka_batches(&bytes).unwrap();
                assert_eq!(batches.len() as i64, round, "every batch, then a clean end");
                assert!(segment::is_padding(&bytes[log.active().size as usize..]));
            }
            let size = log.active().size;
            drop(log); // no clean shutdown: the padding stays on disk
            let log = Log::open(path.clone(), config(1 << 30), 0, -1, |_| {})
                .await
                .unwrap();
            assert_eq!(log.log_end_offset(), 400, "padding read as a clean end");
            assert_eq!(std::fs::metadata(&file).unwrap().len(), size, "trimmed");
            // Short padding (no room for the header) is a clean end too.
            drop(log);
            let mut bytes = std::fs::read(&file).unwrap();
            bytes.resize(size as usize + 7, 0);
            std::fs::write(&file, &bytes).unwrap();
            let log = Log::open(path, config(1 << 30), 0, -1, |_| {})
                .await
                .unwrap();
            assert_eq!(log.log_end_offset(), 400);
            assert_eq!(std::fs::metadata(&file).unwrap().len(), size);
        });
    }

    /// What kafka-dump-log --verify-index-only checks, on sealed segments:
    /// each `.index` entry names the last offset of the batch at its
    /// position; each `.timeindex` entry names a batch's last offset and
    /// that batch's max timestamp, timestamps strictly rising.
    #[test]
    fn sealed_indexes_map_last_offsets_as_kafka_writes_them() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            probe_device(dir.path()).await.unwrap();
            let path = dir.path().join("t-0");
            let mut log = Log::open(path.clone(), config(16 * 1024), 0, -1, |_| {})
                .await
                .unwrap();
            append(&mut log, 200).await;
            let sealed: Vec<_> = log.segments[..log.segments.len() - 1]
                .iter()
                .map(|s| (s.base_offset, s.path.clone()))
                .collect();
            assert!(sealed.len() > 3);
            for (base, file) in sealed {
                let batches = kafka_batches(&std::fs::read(&file).unwrap()).unwrap();
                let offsets = std::fs::read(file.with_extension("index")).unwrap();
                let entries = index::SegmentIndex::decode_offsets(&offsets);
                assert!(entries.len() > 5);
                for e in entries {
                    let (_, last, _) = batches
                        .iter()
                        .find(|b| b.2 == e.position as usize)
                        .expect("an entry points at a batch");
                    assert_eq!(base + e.relative_offset as i64, *last);
                }
                let times = std::fs::read(file.with_extension("timeindex")).unwrap();
                let mut previous = -1;
                for t in times.chunks_exact(12) {
                    let ts = i64::from_be_bytes(t[..8].try_into().unwrap());
                    let rel = u32::from_be_bytes(t[8..].try_into().unwrap()) as i64;
                    let batch = batches
                        .iter()
                        .find(|b| b.1 == base + rel)
                        .expect("a last offset");
                    let bytes = std::fs::read(&file).unwrap();
                    let h = BatchHeader::parse(&bytes[batch.2..]).unwrap();
                    assert_eq!(h.max_timestamp(), ts);
                    assert!(ts > previous);
                    previous = ts;
                }
            }
            // Reads from every offset still find their batch.
            for offset in [0, 1, 9, 10, 11, 555, 1999] {
                let plan = log.locate(offset).unwrap();
                let bytes = read_batches(&plan, offset, 2000, 1)
                    .await
                    .unwrap()
                    .to_bytes();
                let h = BatchHeader::parse(&bytes).unwrap();
                assert!((h.base_offset()..=h.last_offset()).contains(&offset));
            }
        });
    }
}
