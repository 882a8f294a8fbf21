//! Storage of the metadata log for the Raft library.
//!
//! Two halves: [`MetaStorage`] is what raft-rs reads (entries, hard state,
//! conf state, the latest snapshot, all in memory), and a [`LogStore`] makes
//! the same state durable before raft-rs is told it is stable. [`DiskLog`]
//! keeps it under `<data-dir>/__cluster_metadata-0/`; [`MemLog`] keeps it in
//! memory across simulated crashes.
//!
//! Runs on the controller shard (shard 0); `DiskLog` I/O is moved to a
//! blocking thread by the driver so the shard keeps serving.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};
use thiserror::Error;

/// Directory of the metadata log inside the data dir (Kafka's name).
pub const METADATA_LOG_DIR: &str = "__cluster_metadata-0";
const LOG_FILE: &str = "raft.log";
const HARD_STATE_FILE: &str = "hard-state";
const SNAPSHOT_FILE: &str = "snapshot";
/// Largest entry accepted when reading the log back; a longer length is a
/// torn or corrupt tail.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is corrupt: {what}")]
    Corrupt { path: PathBuf, what: String },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// What a store holds after a restart.
#[derive(Debug, Clone, Default)]
pub struct Persisted {
    pub hard_state: HardState,
    pub snapshot: Option<Snapshot>,
    /// Entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

/// One Ready's worth of state to make durable, in this order: a snapshot
/// received from the leader (or taken locally to compact), entries (which
/// replace any stored entries from the first one's index on), hard state.
#[derive(Debug, Clone, Default)]
pub struct PersistWork {
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
}

impl PersistWork {
    pub fn is_empty(&self) -> bool {
        self.snapshot.is_none() && self.entries.is_empty() && self.hard_state.is_none()
    }
}

/// Durable home of the metadata log.
pub trait LogStore {
    fn load(&mut self) -> Result<Persisted, StoreError>;
    /// Returns once everything in `work` survives a crash.
    fn persist(&mut self, work: &PersistWork) -> Result<(), StoreError>;
}

/// In-memory state raft-rs reads. Cloning shares it.
#[derive(Clone, Default)]
pub struct MetaStorage {
    core: Rc<RefCell<StorageCore>>,
}

#[derive(Default)]
struct StorageCore {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    entries: Vec<Entry>,
}

impl StorageCore {
    fn first_index(&self) -> u64 {
        self.snapshot.get_metadata().index + 1
    }
    fn last_index(&self) -> u64 {
        self.snapshot.get_metadata().index + self.entries.len() as u64
    }
}

impl MetaStorage {
    /// Storage restored from `persisted`; `voters` is the configuration of a
    /// cluster that has no snapshot yet.
    pub fn new(persisted: &Persisted, voters: &[u64]) -> MetaStorage {
        let storage = MetaStorage::default();
        {
            let mut core = storage.core.borrow_mut();
            match &persisted.snapshot {
                Some(s) => {
                    core.conf_state = s.get_metadata().get_conf_state().clone();
                    core.snapshot = s.clone();
                }
                None => core.conf_state.voters = voters.to_vec(),
            }
            core.hard_state = persisted.hard_state.clone();
            core.entries = persisted.entries.clone();
        }
        storage
    }

    pub fn append(&self, entries: &[Entry]) {
        let Some(first) = entries.first() else {
            return;
        };
        let mut core = self.core.borrow_mut();
        let keep = first.index.saturating_sub(core.first_index()) as usize;
        core.entries.truncate(keep);
        core.entries.extend_from_slice(entries);
    }

    pub fn set_hard_state(&self, hs: HardState) {
        self.core.borrow_mut().hard_state = hs;
    }

    pub fn set_commit(&self, commit: u64) {
        self.core.borrow_mut().hard_state.commit = commit;
    }

    /// Installs a snapshot: entries it covers are dropped.
    pub fn apply_snapshot(&self, snapshot: Snapshot) {
        let mut core = self.core.borrow_mut();
        let meta = snapshot.get_metadata();
        let index = meta.index;
        if index <= core.snapshot.get_metadata().index {
            return;
        }
        let drop = (index + 1).saturating_sub(core.first_index()) as usize;
        if drop >= core.entries.len() || core.entries[drop - 1].term != meta.term {
            core.entries.clear();
        } else {
            core.entries.drain(..drop);
        }
        core.conf_state = meta.get_conf_state().clone();
        if core.hard_state.commit < index {
            core.hard_state.commit = index;
        }
        if core.hard_state.term < meta.term {
            core.hard_state.term = meta.term;
        }
        core.snapshot = snapshot;
    }

    pub fn conf_state(&self) -> ConfState {
        self.core.borrow().conf_state.clone()
    }

    pub fn snapshot_index(&self) -> u64 {
        self.core.borrow().snapshot.get_metadata().index
    }

    pub fn term_of(&self, index: u64) -> Option<u64> {
        self.term(index).ok()
    }
}

impl Storage for MetaStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let core = self.core.borrow();
        Ok(RaftState::new(
            core.hard_state.clone(),
            core.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let core = self.core.borrow();
        if low < core.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > core.last_index() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = core.first_index();
        let mut out = core.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let core = self.core.borrow();
        let meta = core.snapshot.get_metadata();
        if idx == meta.index {
            return Ok(meta.term);
        }
        if idx < core.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > core.last_index() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(core.entries[(idx - core.first_index()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.core.borrow().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.core.borrow().last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let core = self.core.borrow();
        if core.snapshot.get_metadata().index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(core.snapshot.clone())
    }
}

/// The metadata log on disk: `raft.log` (entries, each framed as length,
/// CRC32C, protobuf bytes), `hard-state` and `snapshot` (each replaced
/// atomically: temp file, fsync, rename, directory fsync).
pub struct DiskLog {
    dir: PathBuf,
    log: Option<File>,
    /// Index and file position of every entry in `raft.log`.
    positions: Vec<(u64, u64)>,
    end: u64,
}

impl DiskLog {
    pub fn new(data_dir: &Path) -> DiskLog {
        DiskLog {
            dir: data_dir.join(METADATA_LOG_DIR),
            log: None,
            positions: Vec::new(),
            end: 0,
        }
    }

    pub fn exists(data_dir: &Path) -> bool {
        data_dir.join(METADATA_LOG_DIR).join(LOG_FILE).exists()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read_optional(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(name);
        match std::fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", &path)(e)),
        }
    }

    fn corrupt(&self, name: &str, what: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            path: self.path(name),
            what: what.into(),
        }
    }

    fn load_snapshot(&self) -> Result<Option<Snapshot>, StoreError> {
        let Some(bytes) = self.read_optional(SNAPSHOT_FILE)? else {
            return Ok(None);
        };
        let body = unframe(&bytes).ok_or_else(|| self.corrupt(SNAPSHOT_FILE, "bad CRC"))?;
        Snapshot::parse_from_bytes(body)
            .map(Some)
            .map_err(|e| self.corrupt(SNAPSHOT_FILE, e.to_string()))
    }

    /// Reads entries back; a torn or corrupt tail (a crash mid-append) is
    /// cut off, everything before it kept.
    fn load_entries(&mut self, after: u64) -> Result<Vec<Entry>, StoreError> {
        let path = self.path(LOG_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io("open", &path))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io("read", &path))?;
        let (mut entries, mut pos) = (Vec::new(), 0usize);
        self.positions.clear();
        while let Some((body, size)) = next_frame(&bytes[pos..]) {
            let Ok(entry) = Entry::parse_from_bytes(body) else {
                break;
            };
            if entries
                .last()
                .is_some_and(|e: &Entry| e.index + 1 != entry.index)
            {
                break;
            }
            self.positions.push((entry.index, pos as u64));
            entries.push(entry);
            pos += size;
        }
        if pos < bytes.len() {
            tracing::warn!(path = %path.display(), valid = pos, size = bytes.len(), "truncating torn metadata log tail");
            file.set_len(pos as u64).map_err(io("truncate", &path))?;
            file.sync_data().map_err(io("fdatasync", &path))?;
        }
        self.end = pos as u64;
        self.log = Some(file);
        // Entries a snapshot already covers (a crash between storing the
        // snapshot and rewriting the log) go now.
        let skip = entries.iter().take_while(|e| e.index <= after).count();
        if skip > 0 {
            self.drop_through(after)?;
        }
        Ok(entries.split_off(skip))
    }

    fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        let path = self.path(LOG_FILE);
        let file = self.log.as_mut().expect("loaded before use");
        let keep = self.positions.partition_point(|(i, _)| *i < first.index);
        if keep < self.positions.len() {
            self.end = self.positions[keep].1;
            self.positions.truncate(keep);
            file.set_len(self.end).map_err(io("truncate", &path))?;
        }
        let mut buf = Vec::new();
        for e in entries {
            self.positions.push((e.index, self.end + buf.len() as u64));
            frame(&mut buf, &e.write_to_bytes().expect("entries encode"));
        }
        file.seek(SeekFrom::Start(self.end))
            .map_err(io("seek", &path))?;
        file.write_all(&buf).map_err(io("write", &path))?;
        file.sync_data().map_err(io("fdatasync", &path))?;
        self.end += buf.len() as u64;
        Ok(())
    }

    /// Stores `snapshot` and rewrites the log without the entries it covers.
    fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        frame(
            &mut buf,
            &snapshot.write_to_bytes().expect("snapshots encode"),
        );
        crate::cluster::write_atomically(&self.path(SNAPSHOT_FILE), &buf)
            .map_err(io("write", &self.path(SNAPSHOT_FILE)))?;
        self.drop_through(snapshot.get_metadata().index)
    }

    /// Rewrites `raft.log` without the entries up to `index` (atomically).
    fn drop_through(&mut self, index: u64) -> Result<(), StoreError> {
        let keep_from = self.positions.partition_point(|(i, _)| *i <= index);
        if keep_from == 0 {
            return Ok(());
        }
        let path = self.path(LOG_FILE);
        let rest = match self.positions.get(keep_from) {
            Some((_, pos)) => {
                let mut bytes = Vec::new();
                let file = self.log.as_mut().expect("loaded before use");
                file.seek(SeekFrom::Start(*pos))
                    .map_err(io("seek", &path))?;
                file.read_to_end(&mut bytes).map_err(io("read", &path))?;
                bytes
            }
            None => Vec::new(),
        };
        crate::cluster::write_atomically(&path, &rest).map_err(io("write", &path))?;
        let base = self.positions.get(keep_from).map_or(0, |(_, p)| *p);
        self.positions = self.positions[keep_from..]
            .iter()
            .map(|(i, p)| (*i, p - base))
            .collect();
        self.end = rest.len() as u64;
        self.log = Some(
            OpenOptions::new()
                .read(true)
                .append(true)
                .open(&path)
                .map_err(io("open", &path))?,
        );
        Ok(())
    }
}

impl LogStore for DiskLog {
    fn load(&mut self) -> Result<Persisted, StoreError> {
        std::fs::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        let snapshot = self.load_snapshot()?;
        let after = snapshot.as_ref().map_or(0, |s| s.get_metadata().index);
        let entries = self.load_entries(after)?;
        if entries.first().is_some_and(|e| e.index != after + 1) {
            return Err(self.corrupt(LOG_FILE, "entries do not follow the snapshot"));
        }
        let hard_state = match self.read_optional(HARD_STATE_FILE)? {
            None => HardState::default(),
            Some(bytes) => {
                let body =
                    unframe(&bytes).ok_or_else(|| self.corrupt(HARD_STATE_FILE, "bad CRC"))?;
                HardState::parse_from_bytes(body)
                    .map_err(|e| self.corrupt(HARD_STATE_FILE, e.to_string()))?
            }
        };
        Ok(Persisted {
            hard_state,
            snapshot,
            entries,
        })
    }

    fn persist(&mut self, work: &PersistWork) -> Result<(), StoreError> {
        if let Some(s) = &work.snapshot {
            self.install_snapshot(s)?;
        }
        self.append(&work.entries)?;
        if let Some(hs) = &work.hard_state {
            let mut buf = Vec::new();
            frame(&mut buf, &hs.write_to_bytes().expect("hard state encodes"));
            let path = self.path(HARD_STATE_FILE);
            crate::cluster::write_atomically(&path, &buf).map_err(io("write", &path))?;
        }
        Ok(())
    }
}

fn frame(buf: &mut Vec<u8>, body: &[u8]) {
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(&crc32c::crc32c(body).to_be_bytes());
    buf.extend_from_slice(body);
}

/// The body of the frame at the start of `bytes` and the frame's size.
fn next_frame(bytes: &[u8]) -> Option<(&[u8], usize)> {
    if bytes.len() < 8 {
        return None;
    }
    let len = u32::from_be_bytes(bytes[0..4].try_into().expect("4")) as usize;
    let crc = u32::from_be_bytes(bytes[4..8].try_into().expect("4"));
    if len > MAX_ENTRY_BYTES || bytes.len() < 8 + len {
        return None;
    }
    let body = &bytes[8..8 + len];
    (crc32c::crc32c(body) == crc).then_some((body, 8 + len))
}

fn unframe(bytes: &[u8]) -> Option<&[u8]> {
    next_frame(bytes).and_then(|(body, size)| (size == bytes.len()).then_some(body))
}

/// A store that lives in memory and survives simulated crashes (the
/// simulation keeps it while it drops the node).
#[derive(Clone, Default)]
pub struct MemLog {
    persisted: Persisted,
}

impl LogStore for MemLog {
    fn load(&mut self) -> Result<Persisted, StoreError> {
        Ok(self.persisted.clone())
    }

    fn persist(&mut self, work: &PersistWork) -> Result<(), StoreError> {
        let p = &mut self.persisted;
        if let Some(s) = &work.snapshot {
            let index = s.get_metadata().index;
            p.entries.retain(|e| e.index > index);
            p.snapshot = Some(s.clone());
        }
        if let Some(first) = work.entries.first() {
            p.entries.retain(|e| e.index < first.index);
            p.entries.extend_from_slice(&work.entries);
        }
        if let Some(hs) = &work.hard_state {
            p.hard_state = hs.clone();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn snapshot(index: u64, term: u64) -> Snapshot {
        let mut s = Snapshot::default();
        s.mut_metadata().index = index;
        s.mut_metadata().term = term;
        s.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        s.data = b"image".to_vec().into();
        s
    }

    fn indexes(entries: &[Entry]) -> Vec<(u64, u64)> {
        entries.iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn disk_log_survives_restart_truncation_and_snapshots() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = DiskLog::new(dir.path());
        assert!(log.load().unwrap().entries.is_empty());
        let hs = HardState {
            term: 2,
            commit: 3,
            ..Default::default()
        };
        log.persist(&PersistWork {
            entries: (1..=5).map(|i| entry(i, 1, b"x")).collect(),
            hard_state: Some(hs.clone()),
            ..Default::default()
        })
        .unwrap();
        // A new leader overwrites the uncommitted tail from index 4.
        log.persist(&PersistWork {
            entries: vec![entry(4, 2, b"y"), entry(5, 2, b"z"), entry(6, 2, b"w")],
            ..Default::default()
        })
        .unwrap();
        let mut again = DiskLog::new(dir.path());
        let p = again.load().unwrap();
        assert_eq!(
            indexes(&p.entries),
            vec![(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
        );
        assert_eq!(p.hard_state, hs);
        again
            .persist(&PersistWork {
                snapshot: Some(snapshot(4, 2)),
                ..Default::default()
            })
            .unwrap();
        again
            .persist(&PersistWork {
                entries: vec![entry(7, 2, b"v")],
                ..Default::default()
            })
            .unwrap();
        let p = DiskLog::new(dir.path()).load().unwrap();
        assert_eq!(p.snapshot.unwrap().get_metadata().index, 4);
        assert_eq!(indexes(&p.entries), vec![(5, 2), (6, 2), (7, 2)]);
    }

    #[test]
    fn a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = DiskLog::new(dir.path());
        log.load().unwrap();
        log.persist(&PersistWork {
            entries: (1..=3).map(|i| entry(i, 1, b"abc")).collect(),
            ..Default::default()
        })
        .unwrap();
        let path = dir.path().join(METADATA_LOG_DIR).join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let full = bytes.len();
        bytes.truncate(full - 2);
        std::fs::write(&path, &bytes).unwrap();
        let mut log = DiskLog::new(dir.path());
        assert_eq!(indexes(&log.load().unwrap().entries), vec![(1, 1), (2, 1)]);
        log.persist(&PersistWork {
            entries: vec![entry(3, 1, b"def")],
            ..Default::default()
        })
        .unwrap();
        let p = DiskLog::new(dir.path()).load().unwrap();
        assert_eq!(&p.entries[2].data[..], b"def");
    }

    #[test]
    fn storage_serves_raft_after_a_snapshot() {
        let persisted = Persisted {
            snapshot: Some(snapshot(10, 3)),
            entries: vec![entry(11, 3, b""), entry(12, 4, b"")],
            ..Default::default()
        };
        let s = MetaStorage::new(&persisted, &[]);
        assert_eq!(s.first_index().unwrap(), 11);
        assert_eq!(s.last_index().unwrap(), 12);
        assert_eq!(s.term(10).unwrap(), 3);
        assert_eq!(s.term(12).unwrap(), 4);
        assert!(s.term(9).is_err());
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
        s.append(&[entry(12, 5, b""), entry(13, 5, b"")]);
        assert_eq!(s.term(12).unwrap(), 5);
        s.apply_snapshot(snapshot(12, 5));
        assert_eq!(s.first_index().unwrap(), 13);
        assert_eq!(s.last_index().unwrap(), 13);
    }
}
