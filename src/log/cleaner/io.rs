//! The cleaner's segment I/O: sealed segments read batch by batch through
//! a bounded buffer, a cleaned segment written page by page with its
//! indexes, the swap of a cleaned group into the log's files, and, at open,
//! the completion or removal of a swap a crash interrupted. Every byte read
//! or written is charged to the shard's [`IoBudget`].
//!
//! Runs on the partition's shard; the buffers belong to one pass.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use glommio::io::{DmaFile, OpenOptions};

use super::throttle::Throttle;
use crate::log::index::SegmentIndex;
use crate::log::segment::{align_down, align_up, write_file_direct};
use crate::log::LogError;
use crate::record::{BatchHeader, LOG_OVERHEAD};

/// Suffix of a cleaned segment's files while they are written.
pub const CLEANED_SUFFIX: &str = "cleaned";
/// Suffix of a cleaned segment's files once committed, before they take
/// the replaced segments' place.
pub const SWAP_SUFFIX: &str = "swap";

/// The shard's cleaner I/O budget.
pub struct IoBudget {
    throttle: RefCell<Throttle>,
}

pub fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl IoBudget {
    pub fn new(bytes_per_second: u64) -> IoBudget {
        IoBudget {
            throttle: RefCell::new(Throttle::new(bytes_per_second, wall_clock_ms())),
        }
    }

    /// Spends `bytes`, sleeping as long as the rate asks.
    pub async fn charge(&self, bytes: u64) {
        let wait = self.throttle.borrow_mut().take(bytes, wall_clock_ms());
        if wait > 0 {
            glommio::timer::sleep(Duration::from_millis(wait)).await;
        }
    }
}

/// `<path>.<suffix>`.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

/// A sealed segment's batches, in order, read `chunk_bytes` at a time.
pub struct BatchReader {
    file: Rc<DmaFile>,
    path: PathBuf,
    position: u64,
    end: u64,
    carry: BytesMut,
    chunk_bytes: usize,
    max_batch_bytes: usize,
}

impl BatchReader {
    pub fn new(
        file: Rc<DmaFile>,
        path: PathBuf,
        (position, end): (u64, u64),
        chunk_bytes: usize,
        max_batch_bytes: usize,
    ) -> BatchReader {
        BatchReader {
            file,
            path,
            position,
            end,
            carry: BytesMut::new(),
            chunk_bytes,
            max_batch_bytes,
        }
    }

    fn corrupt(&self) -> LogError {
        LogError::Corrupt {
            path: self.path.clone(),
            position: self.position - self.carry.len() as u64,
        }
    }

    /// The next whole batch, `None` at the segment's end.
    pub async fn next(&mut self, budget: &IoBudget) -> Result<Option<Bytes>, LogError> {
        loop {
            let mut need = LOG_OVERHEAD;
            if self.carry.len() >= LOG_OVERHEAD {
                let (_, length) =
                    BatchHeader::parse_prefix(&self.carry).map_err(|_| self.corrupt())?;
                let size = LOG_OVERHEAD + length.max(0) as usize;
                if length <= 0 || size > self.max_batch_bytes {
                    return Err(self.corrupt());
                }
                if self.carry.len() >= size {
                    return Ok(Some(self.carry.split_to(size).freeze()));
                }
                need = size;
            }
            if self.position >= self.end {
                return match self.carry.is_empty() {
                    true => Ok(None),
                    false => Err(self.corrupt()),
                };
            }
            let want = self
                .chunk_bytes
                .max(need - self.carry.len())
                .min((self.end - self.position) as usize);
            let chunk = self
                .file
                .read_at(self.position, want)
                .await
                .map_err(|e| LogError::io("read", &self.path, e))?;
            if chunk.is_empty() {
                return Err(self.corrupt());
            }
            budget.charge(chunk.len() as u64).await;
            self.carry.extend_from_slice(&chunk);
            self.position += chunk.len() as u64;
        }
    }
}

/// A cleaned segment being written: batches appended in offset order,
/// indexed as the appender indexes them, written whole pages at a time.
pub struct CleanedWriter {
    file: DmaFile,
    path: PathBuf,
    base_offset: i64,
    pending: Vec<u8>,
    /// File position of `pending[0]` (page aligned).
    pending_at: u64,
    pub size: u64,
    index: SegmentIndex,
    bytes_since_index: u64,
    index_interval_bytes: u64,
    max_timestamp: i64,
    offset_of_max_timestamp: i64,
    chunk_bytes: usize,
}

impl CleanedWriter {
    /// Creates `<final>.cleaned` for a segment that will be `final_path`.
    pub async fn create(
        final_path: &Path,
        base_offset: i64,
        index_interval_bytes: u64,
        chunk_bytes: usize,
    ) -> Result<CleanedWriter, LogError> {
        let path = with_suffix(final_path, CLEANED_SUFFIX);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .dma_open(&path)
            .await
            .map_err(|e| LogError::io("open", &path, e))?;
        Ok(CleanedWriter {
            file,
            path,
            base_offset,
            pending: Vec::new(),
            pending_at: 0,
            size: 0,
            index: SegmentIndex::default(),
            bytes_since_index: 0,
            index_interval_bytes,
            max_timestamp: -1,
            offset_of_max_timestamp: -1,
            chunk_bytes: align_up(chunk_bytes.max(1) as u64) as usize,
        })
    }

    /// Appends one batch (offsets after every earlier one's).
    pub async fn append(&mut self, batch: &[u8], budget: &IoBudget) -> Result<(), LogError> {
        let h = BatchHeader::parse(batch).expect("a batch read back whole");
        let (last, max_ts) = (h.last_offset(), h.max_timestamp());
        if max_ts > self.max_timestamp {
            self.max_timestamp = max_ts;
            self.offset_of_max_timestamp = last;
        }
        let relative = |o: i64| (o - self.base_offset).max(0) as u32;
        self.index.track(
            &mut self.bytes_since_index,
            (self.size, batch.len() as u64),
            relative(last),
            (self.max_timestamp, relative(self.offset_of_max_timestamp)),
            self.index_interval_bytes,
        );
        self.pending.extend_from_slice(batch);
        self.size += batch.len() as u64;
        if self.pending.len() >= self.chunk_bytes {
            self.write_pages(false, budget).await?;
        }
        Ok(())
    }

    /// Writes the whole pages of `pending` (all of it, padded, when `last`).
    async fn write_pages(&mut self, last: bool, budget: &IoBudget) -> Result<(), LogError> {
        let len = if last {
            align_up(self.pending.len() as u64) as usize
        } else {
            align_down(self.pending.len() as u64) as usize
        };
        if len == 0 {
            return Ok(());
        }
        let mut buf = self.file.alloc_dma_buffer(len);
        let data = len.min(self.pending.len());
        buf.as_bytes_mut()[..data].copy_from_slice(&self.pending[..data]);
        buf.as_bytes_mut()[data..].fill(0);
        self.file
            .write_at(buf, self.pending_at)
            .await
            .map_err(|e| LogError::io("write", &self.path, e))?;
        budget.charge(len as u64).await;
        self.pending.drain(..data);
        self.pending_at += len as u64;
        Ok(())
    }

    /// Writes out the rest, trims the file to its batches, syncs it and
    /// writes its indexes (`.index.cleaned`, `.timeindex.cleaned`).
    pub async fn finish(mut self, budget: &IoBudget) -> Result<u64, LogError> {
        self.write_pages(true, budget).await?;
        let io = |op| {
            let path = self.path.clone();
            move |e| LogError::io(op, &path, e)
        };
        self.file
            .truncate(self.size)
            .await
            .map_err(io("truncate"))?;
        self.file.fdatasync().await.map_err(io("fdatasync"))?;
        self.file.close().await.map_err(io("close"))?;
        let mut index = std::mem::take(&mut self.index);
        index.seal(
            self.max_timestamp,
            (self.offset_of_max_timestamp - self.base_offset).max(0) as u32,
        );
        let stem = self.path.with_extension("").with_extension("");
        for (ext, bytes) in [
            ("index", index.encode_offsets()),
            ("timeindex", index.encode_times()),
        ] {
            let path = with_suffix(&stem.with_extension(ext), CLEANED_SUFFIX);
            write_file_direct(&path, &bytes).await?;
            budget.charge(bytes.len() as u64).await;
        }
        Ok(self.size)
    }
}

/// The three files of the segment at `log_path`, index files first (the
/// `.log` file goes last in every rename, so its presence commits them).
pub fn segment_files(log_path: &Path) -> [PathBuf; 3] {
    let stem = log_path.with_extension("");
    [
        stem.with_extension("index"),
        stem.with_extension("timeindex"),
        stem.with_extension("log"),
    ]
}

fn rename(from: &Path, to: &Path) -> Result<(), LogError> {
    std::fs::rename(from, to).map_err(|e| LogError::io("rename", from, e))
}

/// Commits a cleaned segment: its `.cleaned` files become `.swap`.
pub fn commit_cleaned(final_path: &Path) -> Result<(), LogError> {
    for f in segment_files(final_path) {
        rename(
            &with_suffix(&f, CLEANED_SUFFIX),
            &with_suffix(&f, SWAP_SUFFIX),
        )?;
    }
    Ok(())
}

/// Renames the files of a replaced segment `<name>.deleted` (and its
/// producer snapshot unless `keep_snapshot`); returns the renamed paths.
pub fn retire_segment(
    dir: &Path,
    log_path: &Path,
    base_offset: i64,
    keep_snapshot: bool,
) -> Result<Vec<PathBuf>, LogError> {
    let snapshot = dir.join(crate::producer_state::snapshot_file_name(base_offset));
    let mut files = segment_files(log_path).to_vec();
    if !keep_snapshot {
        files.push(snapshot);
    }
    let mut renamed = Vec::new();
    for f in files {
        let to = with_suffix(&f, "deleted");
        match std::fs::rename(&f, &to) {
            Ok(()) => renamed.push(to),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(LogError::io("rename", &f, e)),
        }
    }
    Ok(renamed)
}

/// The committed segment takes its final names.
pub fn install_swap(final_path: &Path) -> Result<(), LogError> {
    for f in segment_files(final_path) {
        rename(&with_suffix(&f, SWAP_SUFFIX), &f)?;
    }
    Ok(())
}

/// Removes a cleaned segment's files that were never committed.
pub fn remove_cleaned(final_path: &Path) {
    for f in segment_files(final_path) {
        for suffix in [CLEANED_SUFFIX, SWAP_SUFFIX] {
            let _ = std::fs::remove_file(with_suffix(&f, suffix));
        }
    }
}

/// Last offset of the batches in the file at `path` (-1: none), reading
/// only their headers.
fn last_offset_in(path: &Path) -> Result<i64, LogError> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).map_err(|e| LogError::io("open", path, e))?;
    let size = file
        .metadata()
        .map_err(|e| LogError::io("stat", path, e))?
        .len();
    let (mut at, mut last) = (0u64, -1i64);
    let mut header = [0u8; crate::record::BATCH_HEADER_BYTES];
    while at + header.len() as u64 <= size {
        file.read_exact_at(&mut header, at)
            .map_err(|e| LogError::io("read", path, e))?;
        let Ok(h) = BatchHeader::parse(&header) else {
            break;
        };
        if h.batch_length() <= 0 {
            break;
        }
        last = h.last_offset();
        at += h.total_size() as u64;
    }
    Ok(last)
}

/// At open, before the segments are listed: uncommitted cleaned files are
/// removed; a committed swap (`<base>.log.swap`) replaces the segments its
/// batches cover (bases from its own up to its last offset; a later one it
/// replaced held only records the cleaner dropped, so keeping it is what an
/// uncleaned log holds) and takes its final names.
pub fn recover_swaps(dir: &Path) -> Result<(), LogError> {
    let entries = std::fs::read_dir(dir).map_err(|e| LogError::io("list", dir, e))?;
    let mut swaps = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| LogError::io("list", dir, e))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.unwrap_or_default();
        if name.ends_with(&format!(".{CLEANED_SUFFIX}")) {
            std::fs::remove_file(&path).map_err(|e| LogError::io("remove", &path, e))?;
        } else if let Some(stem) = name.strip_suffix(&format!(".log.{SWAP_SUFFIX}")) {
            if let Ok(base) = stem.parse::<i64>() {
                swaps.push((base, path));
            }
        }
    }
    for (base, swap) in swaps {
        let last = last_offset_in(&swap)?;
        for old in crate::log::segment_bases(dir)? {
            if old >= base && old <= last.max(base) {
                let path = dir.join(crate::log::segment::log_file_name(old));
                retire_segment(dir, &path, old, old == base)?;
            }
        }
        let final_path = dir.join(crate::log::segment::log_file_name(base));
        for f in segment_files(&final_path) {
            let s = with_suffix(&f, SWAP_SUFFIX);
            if s.exists() {
                rename(&s, &f)?;
            }
        }
        tracing::info!(path = %final_path.display(), "finished swapping in a cleaned segment after a restart");
    }
    // Index swaps without their log: a commit that did not complete.
    let entries = std::fs::read_dir(dir).map_err(|e| LogError::io("list", dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| LogError::io("list", dir, e))?.path();
        if path.extension().is_some_and(|e| e == SWAP_SUFFIX) {
            std::fs::remove_file(&path).map_err(|e| LogError::io("remove", &path, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::cleaner::dedupe::tests::keyed_batch;
    use crate::log::segment::log_file_name;

    fn write_segment(dir: &Path, base: i64, content: &[u8], suffix: Option<&str>) {
        let log = dir.join(log_file_name(base));
        for f in segment_files(&log) {
            let path = suffix.map_or(f.clone(), |s| with_suffix(&f, s));
            let bytes = if f == log { content } else { b"idx" };
            std::fs::write(path, bytes).unwrap();
        }
    }

    #[test]
    fn a_committed_swap_replaces_the_segments_it_covers_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let old0 = keyed_batch(0, &[("a", Some("1")), ("b", Some("1"))], 5);
        let old2 = keyed_batch(2, &[("a", Some("2"))], 5);
        let old3 = keyed_batch(3, &[("a", Some("3"))], 5);
        let cleaned = keyed_batch(1, &[("b", Some("1"))], 5);
        write_segment(d, 0, &old0, None);
        write_segment(d, 2, &old2, None);
        write_segment(d, 3, &old3, None);
        // Crash after the commit: the swap covers offsets up to 1.
        write_segment(d, 0, &cleaned, Some(SWAP_SUFFIX));
        // And an uncommitted cleaning of a later group.
        write_segment(d, 2, &old2, Some(CLEANED_SUFFIX));
        recover_swaps(d).unwrap();
        assert_eq!(std::fs::read(d.join(log_file_name(0))).unwrap(), cleaned);
        assert_eq!(std::fs::read(d.join(log_file_name(2))).unwrap(), old2);
        assert_eq!(std::fs::read(d.join(log_file_name(3))).unwrap(), old3);
        let mut left: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".deleted"))
            .collect();
        left.sort();
        assert_eq!(
            left.len(),
            9,
            "three segments, no swap or cleaned files: {left:?}"
        );
        assert!(d.join(format!("{}.deleted", log_file_name(0))).exists());
    }

    #[test]
    fn index_swaps_without_their_log_are_an_unfinished_commit() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let old0 = keyed_batch(0, &[("a", Some("1"))], 5);
        write_segment(d, 0, &old0, None);
        let log = d.join(log_file_name(0));
        let [index, _, _] = segment_files(&log);
        std::fs::write(with_suffix(&index, SWAP_SUFFIX), b"new").unwrap();
        std::fs::write(with_suffix(&log, CLEANED_SUFFIX), b"new").unwrap();
        recover_swaps(d).unwrap();
        assert_eq!(std::fs::read(&index).unwrap(), b"idx");
        assert_eq!(std::fs::read(&log).unwrap(), old0);
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 3);
    }
}
