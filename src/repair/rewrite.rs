//! Writes the clean log of a scanned partition and puts the damaged files
//! aside, never deleting them.
//!
//! Runs on the repair command's thread with the data directory locked.
//! Order of work, so that a crash at any point loses nothing:
//! 1. the kept batches are copied into a staging directory beside the
//!    partition (`<data-dir>/.repair-<topic>-<p>-<time>/`) in Kafka's layout
//!    (`<base offset>.log`, `.index`, `.timeindex`, and the
//!    `leader-epoch-checkpoint`), every file and the directory synced;
//! 2. the staging and partition directories are swapped atomically
//!    (renameat2 RENAME_EXCHANGE; two renames where the file system cannot);
//! 3. the old partition directory is moved into the new one as
//!    `damaged-<time>/`, and the data directory synced.
//!
//! After a crash between 2 and 3 the partition holds the clean log and the
//! damaged files wait under the staging name.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::report::{Entry, PartitionScan};
use super::RepairError;
use crate::log::index::SegmentIndex;
use crate::log::segment::log_file_name;
use crate::record::{validate_batch, BatchHeader, LOG_OVERHEAD};

const LEADER_EPOCH_CHECKPOINT: &str = "leader-epoch-checkpoint";

/// Writes the clean log and moves the damaged one aside; returns where the
/// damaged files are now.
pub fn rewrite(
    scan: &PartitionScan,
    data_dir: &Path,
    (index_interval_bytes, max_batch_bytes): (u64, usize),
    now_secs: u64,
) -> Result<PathBuf, RepairError> {
    let staging = data_dir.join(format!(".repair-{}-{now_secs}", scan.name));
    std::fs::create_dir(&staging).map_err(|e| RepairError::io("create dir", &staging, e))?;
    write_segments(scan, &staging, (index_interval_bytes, max_batch_bytes))?;
    let checkpoint = scan.dir.join(LEADER_EPOCH_CHECKPOINT);
    if checkpoint.exists() {
        let to = staging.join(LEADER_EPOCH_CHECKPOINT);
        std::fs::copy(&checkpoint, &to).map_err(|e| RepairError::io("copy", &to, e))?;
        sync_file(&to)?;
    }
    sync_dir(&staging)?;
    swap(&staging, &scan.dir)?;
    let aside = free_name(&scan.dir, &format!("damaged-{now_secs}"));
    std::fs::rename(&staging, &aside).map_err(|e| RepairError::io("rename", &staging, e))?;
    sync_dir(&scan.dir)?;
    sync_dir(data_dir)?;
    Ok(aside)
}

/// Copies each segment's kept runs into `<to>/<base>.log` and writes its
/// indexes. A segment without kept batches gets no file, except the last
/// one, which stays (empty) so the log end offset does not move back.
fn write_segments(
    scan: &PartitionScan,
    to: &Path,
    (interval, max_batch_bytes): (u64, usize),
) -> Result<(), RepairError> {
    let mut next_offset = i64::MIN;
    let last = scan.segments.len().saturating_sub(1);
    for (i, seg) in scan.segments.iter().enumerate() {
        let runs: Vec<(u64, u64)> = seg
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Kept { position, size, .. } => Some((*position, *size)),
                _ => None,
            })
            .collect();
        if runs.is_empty() && i != last {
            continue;
        }
        // Never below what an earlier segment holds.
        let base = seg.base_offset.max(next_offset);
        let mut out = SegmentWriter::create(to, base, interval)?;
        let mut source =
            File::open(&seg.path).map_err(|e| RepairError::io("open", &seg.path, e))?;
        let mut batch = Vec::new();
        for (position, size) in runs {
            source
                .seek(SeekFrom::Start(position))
                .map_err(|e| RepairError::io("seek", &seg.path, e))?;
            let end = position + size;
            let mut at = position;
            while at < end {
                read_batch(&mut source, &mut batch, max_batch_bytes, (&seg.path, at))?;
                out.push(&batch)?;
                at += batch.len() as u64;
            }
        }
        next_offset = next_offset.max(out.finish()?);
    }
    Ok(())
}

/// Reads the batch at the reader's position into `buf`, checking it again:
/// the file must not have changed since the scan.
fn read_batch(
    source: &mut File,
    buf: &mut Vec<u8>,
    max_batch_bytes: usize,
    (path, position): (&Path, u64),
) -> Result<(), RepairError> {
    let changed = || RepairError::Changed {
        path: path.to_owned(),
        position,
    };
    buf.resize(LOG_OVERHEAD, 0);
    source
        .read_exact(buf)
        .map_err(|e| RepairError::io("read", path, e))?;
    let length = i32::from_be_bytes(buf[8..12].try_into().expect("4 bytes"));
    let size = LOG_OVERHEAD + usize::try_from(length).map_err(|_| changed())?;
    if size > max_batch_bytes {
        return Err(changed());
    }
    buf.resize(size, 0);
    source
        .read_exact(&mut buf[LOG_OVERHEAD..])
        .map_err(|e| RepairError::io("read", path, e))?;
    validate_batch(buf, max_batch_bytes).map_err(|_| changed())?;
    Ok(())
}

/// One new segment file and its sparse indexes, built as the broker builds
/// them when it appends or recovers (`SegmentIndex::track`).
struct SegmentWriter {
    path: PathBuf,
    file: BufWriter<File>,
    base_offset: i64,
    position: u64,
    index: SegmentIndex,
    bytes_since_index: u64,
    max_timestamp: i64,
    /// Last offset of the batch holding `max_timestamp`, relative.
    relative_offset_of_max: u32,
    next_offset: i64,
    interval: u64,
}

impl SegmentWriter {
    fn create(dir: &Path, base_offset: i64, interval: u64) -> Result<SegmentWriter, RepairError> {
        let path = dir.join(log_file_name(base_offset));
        let file = File::create(&path).map_err(|e| RepairError::io("create", &path, e))?;
        Ok(SegmentWriter {
            path,
            file: BufWriter::with_capacity(1 << 20, file),
            base_offset,
            position: 0,
            index: SegmentIndex::default(),
            bytes_since_index: 0,
            max_timestamp: -1,
            relative_offset_of_max: 0,
            next_offset: base_offset,
            interval,
        })
    }

    fn push(&mut self, batch: &[u8]) -> Result<(), RepairError> {
        let h = BatchHeader::parse(batch).expect("validated");
        // Kafka's index entries name a batch's last offset (see log::index).
        let relative = u32::try_from(h.last_offset() - self.base_offset).map_err(|_| {
            RepairError::Changed {
                path: self.path.clone(),
                position: self.position,
            }
        })?;
        if h.max_timestamp() > self.max_timestamp {
            self.max_timestamp = h.max_timestamp();
            self.relative_offset_of_max = relative;
        }
        self.index.track(
            &mut self.bytes_since_index,
            (self.position, batch.len() as u64),
            relative,
            (self.max_timestamp, self.relative_offset_of_max),
            self.interval,
        );
        self.file
            .write_all(batch)
            .map_err(|e| RepairError::io("write", &self.path, e))?;
        self.position += batch.len() as u64;
        self.next_offset = h.last_offset() + 1;
        Ok(())
    }

    /// Syncs the log, writes and syncs the indexes; returns the offset after
    /// the last batch.
    fn finish(mut self) -> Result<i64, RepairError> {
        // As a sealed segment: the time index ends at the maximum.
        self.index
            .seal(self.max_timestamp, self.relative_offset_of_max);
        let file = self
            .file
            .into_inner()
            .map_err(|e| RepairError::io("write", &self.path, e.into_error()))?;
        file.sync_all()
            .map_err(|e| RepairError::io("fsync", &self.path, e))?;
        let stem = self.path.with_extension("");
        for (ext, bytes) in [
            ("index", self.index.encode_offsets()),
            ("timeindex", self.index.encode_times()),
        ] {
            let path = stem.with_extension(ext);
            std::fs::write(&path, bytes).map_err(|e| RepairError::io("write", &path, e))?;
            sync_file(&path)?;
        }
        Ok(self.next_offset)
    }
}

/// Swaps two directories' names in one step where the file system can.
fn swap(a: &Path, b: &Path) -> Result<(), RepairError> {
    use std::os::unix::ffi::OsStrExt;
    let cstr = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|e| RepairError::io("rename", p, std::io::Error::other(e)))
    };
    let (ca, cb) = (cstr(a)?, cstr(b)?);
    // SAFETY: both are valid NUL-terminated paths alive for the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
        return Err(RepairError::io("exchange", b, e));
    }
    // Without an atomic exchange: old out of the way, new in, old to `a`.
    let old = a.with_extension("old");
    std::fs::rename(b, &old).map_err(|e| RepairError::io("rename", b, e))?;
    std::fs::rename(a, b).map_err(|e| RepairError::io("rename", a, e))?;
    std::fs::rename(&old, a).map_err(|e| RepairError::io("rename", &old, e))
}

/// `dir/name`, or `dir/name-N` for the first N free.
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let mut candidate = dir.join(name);
    let mut n = 1;
    while candidate.exists() {
        candidate = dir.join(format!("{name}-{n}"));
        n += 1;
    }
    candidate
}

fn sync_file(path: &Path) -> Result<(), RepairError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| RepairError::io("fsync", path, e))
}

fn sync_dir(path: &Path) -> Result<(), RepairError> {
    sync_file(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::assign_offsets;
    use crate::record::tests::make_batch;
    use kafka_protocol::records::Compression;

    const LIMITS: (usize, usize) = (1 << 20, 4096);

    #[test]
    fn rewrites_the_kept_batches_and_keeps_the_damaged_files() {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("t-0");
        std::fs::create_dir(&dir).unwrap();
        let mut originals = Vec::new();
        let mut damaged_batch = (0, 0);
        for (base, n) in [(0i64, 8usize), (40, 8)] {
            let mut bytes = Vec::new();
            for i in 0..n {
                let mut b = make_batch(5, Compression::None, i as i64);
                assign_offsets(&mut b, base + 5 * i as i64, 0);
                if base == 0 && i == 2 {
                    damaged_batch = (bytes.len(), b.len());
                }
                bytes.extend_from_slice(&b);
            }
            if base == 0 {
                bytes[damaged_batch.0 + 40] ^= 0x10;
            }
            std::fs::write(dir.join(log_file_name(base)), &bytes).unwrap();
            originals.push(bytes);
        }
        std::fs::write(dir.join(LEADER_EPOCH_CHECKPOINT), b"0\n1\n0 0\n").unwrap();

        let scan = PartitionScan::scan("t-0", &dir, LIMITS).unwrap();
        let aside = rewrite(&scan, data.path(), (1024, LIMITS.0), 42).unwrap();

        assert_eq!(aside, dir.join("damaged-42"));
        assert_eq!(
            std::fs::read(aside.join(log_file_name(0))).unwrap(),
            originals[0]
        );
        assert_eq!(
            std::fs::read(aside.join(log_file_name(40))).unwrap(),
            originals[1]
        );
        let first = std::fs::read(dir.join(log_file_name(0))).unwrap();
        let (pos, len) = damaged_batch;
        let mut expected = originals[0][..pos].to_vec();
        expected.extend_from_slice(&originals[0][pos + len..]);
        assert_eq!(first, expected, "every intact batch, in order");
        assert_eq!(
            std::fs::read(dir.join(log_file_name(40))).unwrap(),
            originals[1]
        );
        assert!(dir.join("00000000000000000000.index").exists());
        assert!(dir.join("00000000000000000040.timeindex").exists());
        assert!(dir.join(LEADER_EPOCH_CHECKPOINT).exists());
        assert!(!data.path().join(".repair-t-0-42").exists(), "staging gone");
        let again = PartitionScan::scan("t-0", &dir, LIMITS).unwrap();
        assert_eq!(again.status(), super::super::report::Status::Intact);
    }
}
