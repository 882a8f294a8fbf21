//! One segment of a partition's log: `<base offset>.log` written with O_DIRECT.
//!
//! Runs on the partition's shard; the partition owns its segments.
//!
//! Durability contract of the appender:
//! - `append` copies a batch into the write-behind buffer (a page-aligned DMA
//!   buffer that maps to file position `buf_pos`). Nothing is on the device yet.
//! - `take_write` hands the filled pages (the last partial page padded, see
//!   `fill_padding`) to the caller, who writes them at `buf_pos` and then
//!   calls `written_to`. The partial last page stays behind in `tail` and is
//!   rewritten with the next write, so the device always holds whole,
//!   aligned pages.
//! - The file size therefore ends at a page boundary while the segment is
//!   active (preallocation keeps the size, FALLOC_FL_KEEP_SIZE), and the
//!   padding after the last batch is visible to readers of the file such as
//!   kafka-dump-log. It starts with a header that Kafka's FileRecords reads
//!   as an incomplete last batch, so they stop there cleanly instead of
//!   failing on a zero length. Keeping the size exact instead (ftruncate
//!   after each write) costs a metadata update, a read-modify-write of the
//!   last block and the preallocated blocks per write round (BENCHMARKS.md).
//!   Sealing and a clean shutdown trim the file to its batches; recovery
//!   treats the padding as a clean end.
//! - Bytes are durable only after an fdatasync that started after `written_to`.
//!   The partition tracks that; the segment never syncs on its own except when sealed.
//! - At most one write is in flight per segment (the partition's io lock), so
//!   two writes of the same partial page never race.
//! - A write that met a full file system keeps its pages (the buffer is
//!   shared with the write, `Rc`): the partition rewrites them at the same
//!   position before any later pages.
//! - `allocated` is how far the file has blocks (preallocated or written);
//!   preallocation past it is sized by the caller from the free-space guard.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaBuffer, DmaFile, OpenOptions};

use super::index::SegmentIndex;
use super::LogError;
use crate::record::LOG_OVERHEAD;

/// Alignment of every O_DIRECT write and read position.
pub const PAGE_BYTES: u64 = 4096;

pub fn align_down(v: u64) -> u64 {
    v & !(PAGE_BYTES - 1)
}
pub fn align_up(v: u64) -> u64 {
    align_down(v + PAGE_BYTES - 1)
}

/// Batch-header prefix that starts the padding after the last batch when
/// at least that much padding is left: base offset -1 (no batch has it) and
/// a length of a whole page, more than the rest of the page holds. Kafka's
/// FileLogInputStream takes a length running past the file's end for a
/// batch still being written and ends the iteration there (a zero length
/// would be a CorruptRecordException); shorter padding is below Kafka's
/// smallest header (17 bytes) and ends it the same way.
pub const PADDING_HEADER: [u8; LOG_OVERHEAD] = {
    let mut h = [0xffu8; LOG_OVERHEAD];
    let length = (PAGE_BYTES as i32).to_be_bytes();
    h[8] = length[0];
    h[9] = length[1];
    h[10] = length[2];
    h[11] = length[3];
    h
};
const _: () = assert!(PAGE_BYTES <= i32::MAX as u64);

/// Fills the padding after the last batch of a partial page.
pub fn fill_padding(padding: &mut [u8]) {
    padding.fill(0);
    if padding.len() >= LOG_OVERHEAD {
        padding[..LOG_OVERHEAD].copy_from_slice(&PADDING_HEADER);
    }
}

/// True when `bytes`, which run from the end of the last batch to the end
/// of the file, are padding: zeros (preallocated space, or padding written
/// before the header existed), or `PADDING_HEADER` then zeros.
pub fn is_padding(bytes: &[u8]) -> bool {
    let rest = match bytes.strip_prefix(&PADDING_HEADER[..]) {
        Some(rest) => rest,
        None => bytes,
    };
    rest.iter().all(|b| *b == 0)
}

pub fn log_file_name(base_offset: i64) -> String {
    format!("{base_offset:020}.log")
}

/// Filled pages ready to be written at `position`.
pub struct PendingWrite {
    /// The segment the pages belong to.
    pub base_offset: i64,
    pub file: Rc<DmaFile>,
    pub buffer: Rc<DmaBuffer>,
    pub position: u64,
    /// Logical segment size covered once this write completes.
    pub end: u64,
}

pub struct Segment {
    pub base_offset: i64,
    /// Offset after the last batch appended here.
    pub next_offset: i64,
    pub path: PathBuf,
    pub file: Rc<DmaFile>,
    /// Logical bytes of batches appended (some maybe only in the buffer).
    pub size: u64,
    /// Bytes on the device (written, not necessarily synced).
    pub written: u64,
    pub index: SegmentIndex,
    pub max_timestamp: i64,
    pub offset_of_max_timestamp: i64,
    bytes_since_index: u64,
    buf: Option<DmaBuffer>,
    buf_len: usize,
    buf_pos: u64,
    /// The partial last page while no buffer is allocated.
    tail: Vec<u8>,
    /// File bytes backed by blocks: preallocated or written (page aligned).
    allocated: u64,
    /// Wall-clock ms when this process created or opened the segment: the
    /// age segment.ms rolls the active segment at.
    pub created_ms: i64,
}

async fn open_dma(path: &Path, create: bool) -> Result<DmaFile, LogError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .dma_open(path)
        .await
        .map_err(|e| LogError::io("open", path, e))
}

impl Segment {
    /// Creates an empty segment file.
    pub async fn create(dir: &Path, base_offset: i64) -> Result<Segment, LogError> {
        let path = dir.join(log_file_name(base_offset));
        let file = open_dma(&path, true).await?;
        file.truncate(0)
            .await
            .map_err(|e| LogError::io("truncate", &path, e))?;
        Ok(Segment::new(path, Rc::new(file), base_offset))
    }

    /// Opens an existing segment file for recovery; the caller scans it and
    /// then calls `recovered` with the valid length.
    pub async fn open(path: PathBuf, base_offset: i64) -> Result<Segment, LogError> {
        let file = open_dma(&path, false).await?;
        Ok(Segment::new(path, Rc::new(file), base_offset))
    }

    fn new(path: PathBuf, file: Rc<DmaFile>, base_offset: i64) -> Segment {
        Segment {
            base_offset,
            next_offset: base_offset,
            path,
            file,
            size: 0,
            written: 0,
            index: SegmentIndex::default(),
            max_timestamp: -1,
            offset_of_max_timestamp: -1,
            bytes_since_index: 0,
            buf: None,
            buf_len: 0,
            buf_pos: 0,
            tail: Vec::new(),
            allocated: 0,
            created_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        }
    }

    /// Records a batch found at `position` by recovery or appended now.
    pub fn track_batch(
        &mut self,
        position: u64,
        size: u64,
        base: i64,
        last: i64,
        max_ts: i64,
        interval: u64,
    ) {
        debug_assert!(base >= self.base_offset);
        if max_ts > self.max_timestamp {
            self.max_timestamp = max_ts;
            self.offset_of_max_timestamp = last;
        }
        let relative = |offset: i64| (offset - self.base_offset).max(0) as u32;
        self.index.track(
            &mut self.bytes_since_index,
            (position, size),
            relative(last),
            (self.max_timestamp, relative(self.offset_of_max_timestamp)),
            interval,
        );
        self.next_offset = last + 1;
    }

    /// After recovery: the file holds `valid` good bytes; `tail` is the partial
    /// last page of them, which the next write rewrites.
    pub async fn recovered(&mut self, valid: u64, tail: Vec<u8>) -> Result<(), LogError> {
        let on_disk = self
            .file
            .file_size()
            .await
            .map_err(|e| LogError::io("stat", &self.path, e))?;
        if on_disk != valid {
            self.file
                .truncate(valid)
                .await
                .map_err(|e| LogError::io("truncate", &self.path, e))?;
        }
        debug_assert_eq!(tail.len() as u64, valid - align_down(valid));
        self.size = valid;
        self.written = valid;
        self.buf_pos = align_down(valid);
        self.tail = tail;
        self.allocated = align_up(valid);
        Ok(())
    }

    /// Room check for `append`.
    pub fn has_room(&self, len: usize) -> bool {
        match &self.buf {
            None => true,
            Some(b) => self.buf_len + len <= b.len(),
        }
    }

    /// Copies a batch into the write-behind buffer. The caller checked
    /// `has_room`; a fresh buffer is sized for whatever batch comes.
    pub fn append(&mut self, batch: &[u8], buffer_bytes: usize) -> u64 {
        if self.buf.is_none() {
            let cap = buffer_bytes.max(align_up((self.tail.len() + batch.len()) as u64) as usize);
            let mut buf = self.file.alloc_dma_buffer(cap);
            buf.as_bytes_mut()[..self.tail.len()].copy_from_slice(&self.tail);
            self.buf_len = self.tail.len();
            self.buf = Some(buf);
        }
        let buf = self.buf.as_mut().expect("allocated above");
        buf.as_bytes_mut()[self.buf_len..self.buf_len + batch.len()].copy_from_slice(batch);
        self.buf_len += batch.len();
        let position = self.size;
        self.size += batch.len() as u64;
        position
    }

    /// Takes the buffered pages for writing, the last partial page padded;
    /// `None` when the device is current.
    pub fn take_write(&mut self) -> Option<PendingWrite> {
        if self.written == self.size {
            return None;
        }
        let mut buffer = self.buf.take().expect("unwritten bytes live in the buffer");
        let len = self.buf_len;
        let full = align_down(len as u64) as usize;
        let padded = align_up(len as u64) as usize;
        fill_padding(&mut buffer.as_bytes_mut()[len..padded]);
        self.tail = buffer.as_bytes()[full..len].to_vec();
        buffer.trim_to_size(padded);
        let position = self.buf_pos;
        self.buf_pos += full as u64;
        self.buf_len = 0;
        Some(PendingWrite {
            base_offset: self.base_offset,
            file: self.file.clone(),
            buffer: Rc::new(buffer),
            position,
            end: self.size,
        })
    }

    /// File size to reserve (`step` bytes past the write) before writing up
    /// to `end`, if the write goes past the allocated blocks and `step` > 0.
    pub fn preallocation_needed(&self, end: u64, step: u64) -> Option<u64> {
        if step == 0 || end <= self.allocated {
            return None;
        }
        Some(align_up(end) + step)
    }

    /// How far the file has blocks.
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    pub fn allocated_to(&mut self, size: u64) {
        self.allocated = self.allocated.max(size);
    }

    /// The device holds the pages up to `end`; returns the bytes of blocks
    /// that the write allocated beyond what was allocated before.
    pub fn written_to(&mut self, end: u64) -> u64 {
        self.written = self.written.max(end);
        let grown = align_up(end).saturating_sub(self.allocated);
        self.allocated += grown;
        grown
    }

    /// The file was cut at byte `position`, where the batch at
    /// `next_offset` started; `tail` is the partial last page, rewritten by
    /// the next write.
    pub fn cut(&mut self, position: u64, next_offset: i64, tail: Vec<u8>) {
        debug_assert!(self.buf.is_none(), "written out before a cut");
        let relative = (next_offset - self.base_offset).max(0) as u32;
        self.index.truncate(position as u32, relative);
        self.bytes_since_index = 0;
        if self.offset_of_max_timestamp >= next_offset {
            let last = self.index.times.last();
            self.max_timestamp = last.map_or(-1, |t| t.timestamp);
            self.offset_of_max_timestamp =
                last.map_or(-1, |t| self.base_offset + t.relative_offset as i64);
        }
        self.next_offset = next_offset;
        self.size = position;
        self.written = position;
        self.buf_pos = align_down(position);
        self.tail = tail;
        self.allocated = align_up(position);
    }

    /// What sealing needs, detached from the segment so no borrow of the
    /// log is held across the I/O.
    pub fn seal_job(&self) -> SealJob {
        let mut index = self.index.clone();
        index.seal(
            self.max_timestamp,
            (self.offset_of_max_timestamp - self.base_offset).max(0) as u32,
        );
        SealJob {
            file: self.file.clone(),
            path: self.path.clone(),
            size: self.size,
            index,
        }
    }

    /// A sealed segment as its index files describe it, without reading its
    /// batches: for recovery below the recovery point, where the segment was
    /// synced, trimmed and indexed when it was sealed. `next_offset` is the
    /// next segment's base. `None` when the index files are missing or fail
    /// Kafka's sanity checks (ordered entries, positions inside the file):
    /// then the segment is scanned instead.
    pub async fn load_sealed(
        path: PathBuf,
        base_offset: i64,
        next_offset: i64,
    ) -> Result<Option<Segment>, LogError> {
        let stem = path.with_extension("");
        let (Ok(offsets), Ok(times)) = (
            std::fs::read(stem.with_extension("index")),
            std::fs::read(stem.with_extension("timeindex")),
        ) else {
            return Ok(None);
        };
        let mut seg = Segment::open(path, base_offset).await?;
        let size = seg
            .file
            .file_size()
            .await
            .map_err(|e| LogError::io("stat", &seg.path, e))?;
        let span = (next_offset - base_offset).clamp(0, u32::MAX as i64) as u32;
        let Some(index) = SegmentIndex::decode_checked(&offsets, &times, size, span) else {
            return Ok(None);
        };
        if let Some(last) = index.times.last() {
            seg.max_timestamp = last.timestamp;
            seg.offset_of_max_timestamp = base_offset + last.relative_offset as i64;
        }
        seg.index = index;
        seg.next_offset = next_offset;
        let tail_start = align_down(size);
        let tail = if size > tail_start {
            let page = seg
                .file
                .read_at(tail_start, (size - tail_start) as usize)
                .await
                .map_err(|e| LogError::io("read", &seg.path, e))?;
            page.to_vec()
        } else {
            Vec::new()
        };
        seg.recovered(size, tail).await?;
        Ok(Some(seg))
    }
}

/// Trims a segment file to its batches and writes its index files.
pub struct SealJob {
    file: Rc<DmaFile>,
    path: PathBuf,
    size: u64,
    index: SegmentIndex,
}

impl SealJob {
    pub async fn run(self) -> Result<(), LogError> {
        self.file
            .truncate(self.size)
            .await
            .map_err(|e| LogError::io("truncate", &self.path, e))?;
        // The trimmed size is durable too: recovery loads a sealed segment
        // below the recovery point by its size, without reading it.
        let timer = crate::metrics::io_begin(crate::metrics::IoOp::Fsync, 0);
        let synced = self.file.fdatasync().await;
        drop(timer);
        synced.map_err(|e| LogError::io("fdatasync", &self.path, e))?;
        let stem = self.path.with_extension("");
        write_file_direct(&stem.with_extension("index"), &self.index.encode_offsets()).await?;
        write_file_direct(
            &stem.with_extension("timeindex"),
            &self.index.encode_times(),
        )
        .await
    }
}

/// Writes `bytes` as the whole content of `path` with O_DIRECT and fdatasync.
pub async fn write_file_direct(path: &Path, bytes: &[u8]) -> Result<(), LogError> {
    let file = open_dma(path, true).await?;
    if !bytes.is_empty() {
        let mut buf = file.alloc_dma_buffer(align_up(bytes.len() as u64) as usize);
        buf.as_bytes_mut().fill(0);
        buf.as_bytes_mut()[..bytes.len()].copy_from_slice(bytes);
        file.write_at(buf, 0)
            .await
            .map_err(|e| LogError::io("write", path, e))?;
    }
    file.truncate(bytes.len() as u64)
        .await
        .map_err(|e| LogError::io("truncate", path, e))?;
    file.fdatasync()
        .await
        .map_err(|e| LogError::io("fdatasync", path, e))?;
    file.close()
        .await
        .map_err(|e| LogError::io("close", path, e))
}

/// Replaces `path` with `bytes` atomically and durably: a temp file written
/// with O_DIRECT and fdatasync, a rename, and a sync of the directory.
pub async fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<(), LogError> {
    // Its own temp name: unsynced replacements use `<name>.tmp`.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".sync-tmp");
    let tmp = PathBuf::from(tmp);
    write_file_direct(&tmp, bytes).await?;
    std::fs::rename(&tmp, path).map_err(|e| LogError::io("rename", path, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let handle = glommio::io::Directory::open(dir)
        .await
        .map_err(|e| LogError::io("open", dir, e))?;
    handle
        .sync()
        .await
        .map_err(|e| LogError::io("fsync", dir, e))?;
    handle
        .close()
        .await
        .map_err(|e| LogError::io("close", dir, e))
}
