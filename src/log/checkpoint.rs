//! The data directory's offset checkpoints, in Kafka's text format (version
//! 0, an entry count, then "topic partition offset" lines):
//!
//! - `recovery-point-offset-checkpoint`: per partition, the offset below
//!   which its log was fdatasynced. Recovery loads the sealed segments
//!   wholly below it from their index files and scans only from the segment
//!   holding it (`Log::open`).
//! - `replication-offset-checkpoint`: per partition, its high watermark,
//!   restored at open (capped by the log end).
//! - `log-start-offset-checkpoint`: per partition, its log start offset,
//!   restored at open (within the log's segments).
//! - `cleaner-offset-checkpoint`: per compacted partition, the first offset
//!   the log cleaner has not cleaned (the start of the dirty section).
//!
//! Shard 0 writes all four every `checkpoint_interval_ms` and once more
//! after a clean shutdown closed every partition, each atomically (temp
//! file, fsync, rename, directory fsync). They are read once at start-up,
//! before any shard opens a partition; an entry is taken by the first
//! opening of its partition in this process, so a topic deleted and made
//! again under the same name never inherits the old one's offsets. A
//! missing or malformed file only costs a longer recovery: it is logged and
//! read as empty.

use std::collections::HashMap;
use std::path::Path;

use thiserror::Error;

use super::segment::write_file_atomic;
use super::LogError;

pub const RECOVERY_POINT_FILE: &str = "recovery-point-offset-checkpoint";
pub const REPLICATION_OFFSET_FILE: &str = "replication-offset-checkpoint";
pub const LOG_START_OFFSET_FILE: &str = "log-start-offset-checkpoint";
pub const CLEANER_OFFSET_FILE: &str = "cleaner-offset-checkpoint";

#[derive(Debug, Error, PartialEq, Eq)]
#[error("offset checkpoint is malformed: {0}")]
pub struct CheckpointError(String);

/// One checkpoint file's content: (topic, partition) -> offset.
pub type OffsetMap = HashMap<(String, i32), i64>;

/// What the checkpoints say of one partition; -1 where a file has no entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionCheckpoint {
    pub recovery_point: i64,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    /// First offset not yet cleaned (-1: none, or not compacted).
    pub cleaner_offset: i64,
}

impl PartitionCheckpoint {
    pub const NONE: PartitionCheckpoint = PartitionCheckpoint {
        recovery_point: -1,
        high_watermark: -1,
        log_start_offset: -1,
        cleaner_offset: -1,
    };
}

/// Kafka's offset checkpoint text, entries sorted for a stable file.
pub fn encode(entries: &OffsetMap) -> String {
    let mut sorted: Vec<_> = entries.iter().collect();
    sorted.sort();
    let mut out = format!("0\n{}\n", sorted.len());
    for ((topic, partition), offset) in sorted {
        out.push_str(&format!("{topic} {partition} {offset}\n"));
    }
    out
}

pub fn decode(text: &str) -> Result<OffsetMap, CheckpointError> {
    let bad = |m: &str| CheckpointError(m.to_string());
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some("0") {
        return Err(bad("version is not 0"));
    }
    let count: usize = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| bad("entry count"))?;
    let mut out = OffsetMap::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let line = lines
            .next()
            .ok_or_else(|| bad("fewer entries than counted"))?;
        let mut parts = line.split_whitespace();
        let topic = parts.next();
        let partition = parts.next().and_then(|p| p.parse().ok());
        let offset = parts.next().and_then(|p| p.parse().ok());
        let (Some(topic), Some(partition), Some(offset), None) =
            (topic, partition, offset, parts.next())
        else {
            return Err(bad("entry is not 'topic partition offset'"));
        };
        out.insert((topic.to_string(), partition), offset);
    }
    if lines.any(|l| !l.trim().is_empty()) {
        return Err(bad("more entries than counted"));
    }
    Ok(out)
}

/// The four files as read at start-up.
#[derive(Debug, Default)]
pub struct Checkpoints {
    recovery_points: OffsetMap,
    high_watermarks: OffsetMap,
    log_start_offsets: OffsetMap,
    cleaner_offsets: OffsetMap,
}

impl Checkpoints {
    /// Reads the data directory's checkpoints; a missing file is empty, a
    /// malformed one is logged and taken as empty.
    pub fn load(data_dir: &Path) -> Checkpoints {
        let read = |name: &str| -> OffsetMap {
            let path = data_dir.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => decode(&text).unwrap_or_else(|e| {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring a malformed checkpoint; recovery scans whole logs");
                    OffsetMap::new()
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => OffsetMap::new(),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "reading a checkpoint; recovery scans whole logs");
                    OffsetMap::new()
                }
            }
        };
        Checkpoints {
            recovery_points: read(RECOVERY_POINT_FILE),
            high_watermarks: read(REPLICATION_OFFSET_FILE),
            log_start_offsets: read(LOG_START_OFFSET_FILE),
            cleaner_offsets: read(CLEANER_OFFSET_FILE),
        }
    }

    /// Takes what the files say of one partition (see the module doc).
    pub fn take(&mut self, topic: &str, partition: i32) -> PartitionCheckpoint {
        let key = (topic.to_string(), partition);
        PartitionCheckpoint {
            recovery_point: self.recovery_points.remove(&key).unwrap_or(-1),
            high_watermark: self.high_watermarks.remove(&key).unwrap_or(-1),
            log_start_offset: self.log_start_offsets.remove(&key).unwrap_or(-1),
            cleaner_offset: self.cleaner_offsets.remove(&key).unwrap_or(-1),
        }
    }

    /// Keeps only the entries of partitions that `owns` says belong here
    /// (each shard keeps its own share).
    pub fn retain(&mut self, owns: impl Fn(&str, i32) -> bool) {
        for map in [
            &mut self.recovery_points,
            &mut self.high_watermarks,
            &mut self.log_start_offsets,
            &mut self.cleaner_offsets,
        ] {
            map.retain(|(t, p), _| owns(t, *p));
        }
    }
}

/// One partition's offsets as they are checkpointed now.
#[derive(Debug, Clone)]
pub struct CheckpointEntry {
    pub topic: String,
    pub partition: i32,
    pub offsets: PartitionCheckpoint,
}

/// Writes the four files from the entries of every partition served (the
/// cleaner's only for partitions that have a cleaner offset).
pub async fn write_all(data_dir: &Path, entries: &[CheckpointEntry]) -> Result<(), LogError> {
    let mut maps = [
        OffsetMap::new(),
        OffsetMap::new(),
        OffsetMap::new(),
        OffsetMap::new(),
    ];
    for e in entries {
        let key = (e.topic.clone(), e.partition);
        let o = e.offsets;
        maps[0].insert(key.clone(), o.recovery_point);
        maps[1].insert(key.clone(), o.high_watermark);
        maps[2].insert(key.clone(), o.log_start_offset);
        if o.cleaner_offset >= 0 {
            maps[3].insert(key, o.cleaner_offset);
        }
    }
    let names = [
        RECOVERY_POINT_FILE,
        REPLICATION_OFFSET_FILE,
        LOG_START_OFFSET_FILE,
        CLEANER_OFFSET_FILE,
    ];
    for (name, map) in names.iter().zip(&maps) {
        write_file_atomic(&data_dir.join(name), encode(map).as_bytes()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_kafkas_format() {
        let mut m = OffsetMap::new();
        m.insert(("orders".into(), 3), 1234);
        m.insert(("__consumer_offsets".into(), 0), 7);
        let text = encode(&m);
        assert_eq!(text, "0\n2\n__consumer_offsets 0 7\norders 3 1234\n");
        assert_eq!(decode(&text).unwrap(), m);
        assert_eq!(decode("0\n0\n").unwrap(), OffsetMap::new());
    }

    #[test]
    fn malformed_files_are_refused() {
        for text in [
            "",
            "1\n0\n",
            "0\nx\n",
            "0\n2\nt 0 1\n",
            "0\n1\nt 0\n",
            "0\n1\nt zero 1\n",
            "0\n1\nt 0 1 extra\n",
            "0\n1\nt 0 1\nu 0 2\n",
        ] {
            assert!(decode(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn entries_are_taken_once() {
        crate::server::raise_memlock();
        let dir = tempfile::tempdir().unwrap();
        let entry = |t: &str, p, o| CheckpointEntry {
            topic: t.into(),
            partition: p,
            offsets: PartitionCheckpoint {
                recovery_point: o,
                high_watermark: o - 1,
                log_start_offset: o - 2,
                cleaner_offset: o - 3,
            },
        };
        let path = dir.path().to_owned();
        glommio::LocalExecutorBuilder::default()
            .io_memory(crate::server::IO_MEMORY_BYTES)
            .spawn(move || async move {
                write_all(&path, &[entry("a", 0, 10), entry("b", 1, 20)])
                    .await
                    .unwrap()
            })
            .expect("executor")
            .join()
            .expect("join");
        let mut c = Checkpoints::load(dir.path());
        c.retain(|t, _| t == "a");
        assert_eq!(
            c.take("b", 1),
            PartitionCheckpoint::NONE,
            "not this shard's"
        );
        let a = c.take("a", 0);
        assert_eq!(
            (
                a.recovery_point,
                a.high_watermark,
                a.log_start_offset,
                a.cleaner_offset
            ),
            (10, 9, 8, 7)
        );
        assert_eq!(c.take("a", 0), PartitionCheckpoint::NONE, "taken once");
        std::fs::write(dir.path().join(RECOVERY_POINT_FILE), "garbage").unwrap();
        assert_eq!(
            Checkpoints::load(dir.path()).take("a", 0).recovery_point,
            -1
        );
    }
}
