//! Compaction of one partition (cleanup.policy=compact), the I/O shell
//! around the pure decisions of `log/cleaner/`: a pass maps the dirty
//! section (key -> last offset, within the shard's map budget), then
//! rewrites the sealed segments from the log start to the map's end,
//! grouped up to segment.bytes, each group into one cleaned segment that
//! is swapped in under the io lock. The active segment is never touched,
//! nor anything at or above the high watermark.
//!
//! Runs on the partition's shard from the shard's cleaner task, one batch
//! at a time with a yield between, the I/O charged to the shard's budget;
//! the append lock is never taken, the io lock only for the swap (renames
//! and opening the new segment). The pass's progress (the first dirty
//! offset, the cleaner checkpoint) and the earliest delete horizon it
//! wrote are this partition's state.
//!
//! Simplification: a batch left with no records is dropped, also when it
//! was a producer's last (Kafka keeps its header for the producer's
//! sequence state). Producer state is rebuilt from the snapshots taken at
//! each roll, so only a producer idle since before the cleaned section
//! loses its de-duplication state after a restart.

use std::cell::Cell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use glommio::io::DmaFile;

use super::{Partition, PartitionError};
use crate::config::Config;
use crate::log::cleaner::dedupe::{self, BatchOutcome, FilterStats, OffsetMap};
use crate::log::cleaner::io::{self as cio, IoBudget};
use crate::log::cleaner::plan::{self, Cleanable, LogState, SegmentView};
use crate::log::cleaner::{BatchReader, CleanedWriter};
use crate::log::segment::Segment;
use crate::log::LogError;
use crate::record::rebuild::delete_horizon_ms;
use crate::record::BatchHeader;

/// The cleaner's progress on one partition.
pub(super) struct CleanerState {
    /// First offset not yet cleaned (-1: none yet).
    pub first_dirty_offset: Cell<i64>,
    /// Earliest delete horizon the last pass wrote (i64::MAX: none).
    delete_horizon_ms: Cell<i64>,
}

impl CleanerState {
    pub fn new(first_dirty_offset: i64) -> CleanerState {
        CleanerState {
            first_dirty_offset: Cell::new(first_dirty_offset),
            delete_horizon_ms: Cell::new(i64::MAX),
        }
    }
}

/// One shard's cleaner resources.
pub struct CleanerContext {
    pub budget: IoBudget,
    pub dedupe_buffer_bytes: usize,
    pub io_buffer_bytes: usize,
}

impl CleanerContext {
    /// This shard's share of the broker's cleaner I/O rate, its own map.
    pub fn new(config: &Config, shards: usize) -> CleanerContext {
        CleanerContext {
            budget: IoBudget::new(
                config.log_cleaner_io_max_bytes_per_second / shards.max(1) as u64,
            ),
            dedupe_buffer_bytes: config.log_cleaner_dedupe_buffer_bytes,
            io_buffer_bytes: config.log_cleaner_io_buffer_bytes,
        }
    }
}

/// What a pass did.
#[derive(Debug, Default, Clone, Copy)]
pub struct CleanStats {
    pub groups: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub keys: usize,
    pub first_dirty_offset: i64,
    pub records: FilterStats,
}

/// A sealed segment as the pass found it.
#[derive(Clone)]
struct SegmentRef {
    view: SegmentView,
    file: Rc<DmaFile>,
    path: PathBuf,
}

/// What a pass applies to every batch.
struct PassRules {
    map_end: i64,
    now_ms: i64,
    delete_retention_ms: i64,
    max_decompressed_bytes: usize,
    max_batch_bytes: usize,
}

impl Partition {
    /// How dirty this partition's log is and the ratio its topic asks
    /// for; `None` when it is not compacted, not serving, or has nothing
    /// sealed below its high watermark.
    pub fn cleanable(&self, now_ms: i64) -> Option<(Cleanable, f64)> {
        let config = self.config.borrow();
        if !config.cleanup_compact || self.is_poisoned() || self.deleted.get() {
            return None;
        }
        let state = LogState {
            log_start_offset: self.log_start_offset(),
            first_dirty_offset: self.cleaner.first_dirty_offset.get(),
            high_watermark: self.high_watermark(),
            min_compaction_lag_ms: config.min_compaction_lag_ms,
            max_compaction_lag_ms: config.max_compaction_lag_ms,
            min_cleanable_ratio: config.min_cleanable_dirty_ratio,
            delete_horizon_ms: self.cleaner.delete_horizon_ms.get(),
            now_ms,
        };
        let views = self
            .segment_refs()
            .iter()
            .map(|s| s.view)
            .collect::<Vec<_>>();
        plan::cleanable(&views, state).map(|c| (c, config.min_cleanable_dirty_ratio))
    }

    fn segment_refs(&self) -> Vec<SegmentRef> {
        self.log
            .borrow()
            .segments
            .iter()
            .map(|s| SegmentRef {
                view: SegmentView {
                    base_offset: s.base_offset,
                    next_offset: s.next_offset,
                    size: s.size,
                    max_timestamp: s.max_timestamp,
                },
                file: s.file.clone(),
                path: s.path.clone(),
            })
            .collect()
    }

    /// One cleaning pass at `now_ms` (the wall clock).
    pub async fn clean(
        self: &Rc<Self>,
        now_ms: i64,
        cx: &CleanerContext,
    ) -> Result<CleanStats, PartitionError> {
        let Some((c, _)) = self.cleanable(now_ms) else {
            return Ok(CleanStats::default());
        };
        let config = self.topic_config();
        let segs = self.segment_refs();
        let cleanable = &segs[..c.segments];
        let (map, map_end) = self.build_offset_map(cleanable, &c, cx).await?;
        if map.is_empty() && map_end < c.first_uncleanable_offset {
            tracing::warn!(topic = %self.topic, partition = self.index, offset = map_end, "the cleaner's offset map cannot hold one batch's keys; raise log_cleaner_dedupe_buffer_bytes");
            return Ok(CleanStats::default());
        }
        let rules = PassRules {
            map_end,
            now_ms,
            delete_retention_ms: config.delete_retention_ms,
            max_decompressed_bytes: self.batch_limits.max_decompressed_bytes,
            max_batch_bytes: self
                .batch_limits
                .max_batch_bytes
                .max(crate::config::MIN_RECOVERED_BATCH_BYTES),
        };
        let count = cleanable
            .iter()
            .take_while(|s| s.view.base_offset < map_end)
            .count();
        let views: Vec<SegmentView> = cleanable.iter().map(|s| s.view).collect();
        let mut stats = CleanStats {
            keys: map.len(),
            first_dirty_offset: c.first_dirty_offset,
            ..CleanStats::default()
        };
        let mut horizon = i64::MAX;
        for group in plan::groups(&views, count, config.segment_bytes) {
            let next = segs[group.end].view.base_offset;
            let group = &cleanable[group];
            let (after, h) = self
                .clean_group(group, next, &map, &rules, cx, &mut stats.records)
                .await?;
            horizon = horizon.min(h);
            stats.groups += 1;
            stats.bytes_before += group.iter().map(|s| s.view.size).sum::<u64>();
            stats.bytes_after += after;
        }
        self.cleaner.first_dirty_offset.set(map_end);
        self.cleaner.delete_horizon_ms.set(horizon);
        self.cache.borrow_mut().drop_below(map_end);
        Ok(stats)
    }

    /// Maps the dirty section's keys to their last offsets, stopping at a
    /// batch boundary when the map is full. Returns the map and its end.
    async fn build_offset_map(
        &self,
        cleanable: &[SegmentRef],
        c: &Cleanable,
        cx: &CleanerContext,
    ) -> Result<(OffsetMap, i64), PartitionError> {
        let mut map = OffsetMap::new(cx.dedupe_buffer_bytes);
        let limit = self.batch_limits.max_decompressed_bytes;
        for s in cleanable
            .iter()
            .filter(|s| s.view.next_offset > c.first_dirty_offset)
        {
            let mut reader = BatchReader::new(
                s.file.clone(),
                s.path.clone(),
                (0, s.view.size),
                cx.io_buffer_bytes,
                crate::config::MIN_RECOVERED_BATCH_BYTES.max(self.batch_limits.max_batch_bytes),
            );
            while let Some(batch) = reader.next(&cx.budget).await? {
                let h = BatchHeader::parse(&batch)?;
                if h.last_offset() < c.first_dirty_offset {
                    continue;
                }
                if !dedupe::map_batch(&mut map, &batch, limit)? {
                    tracing::info!(topic = %self.topic, partition = self.index, keys = map.len(), end = h.base_offset(), "cleaner offset map full; cleaning up to here");
                    return Ok((map, h.base_offset()));
                }
                glommio::yield_if_needed().await;
            }
        }
        Ok((map, c.first_uncleanable_offset))
    }

    /// Rewrites one group of sealed segments (the segment after it starts
    /// at `next`) into one cleaned segment and swaps it in. Returns its
    /// size and the earliest delete horizon still ahead in it.
    async fn clean_group(
        self: &Rc<Self>,
        group: &[SegmentRef],
        next: i64,
        map: &OffsetMap,
        rules: &PassRules,
        cx: &CleanerContext,
        stats: &mut FilterStats,
    ) -> Result<(u64, i64), PartitionError> {
        let final_path = group[0].path.clone();
        let interval = self.topic_config().index_interval_bytes;
        let mut out = CleanedWriter::create(
            &final_path,
            group[0].view.base_offset,
            interval,
            cx.io_buffer_bytes,
        )
        .await?;
        let mut horizon = i64::MAX;
        let written = async {
            for s in group {
                let mut reader = BatchReader::new(
                    s.file.clone(),
                    s.path.clone(),
                    (0, s.view.size),
                    cx.io_buffer_bytes,
                    rules.max_batch_bytes,
                );
                while let Some(batch) = reader.next(&cx.budget).await? {
                    let outcome = if BatchHeader::parse(&batch)?.base_offset() >= rules.map_end {
                        BatchOutcome::Keep
                    } else {
                        dedupe::filter_batch(
                            &batch,
                            map,
                            rules.now_ms,
                            rules.delete_retention_ms,
                            rules.max_decompressed_bytes,
                            stats,
                        )?
                    };
                    let kept = match &outcome {
                        BatchOutcome::Keep => &batch[..],
                        BatchOutcome::Rewrite(b) => &b[..],
                        BatchOutcome::Drop => continue,
                    };
                    if let Some(h) = delete_horizon_ms(&BatchHeader::parse(kept)?) {
                        if h > rules.now_ms {
                            horizon = horizon.min(h);
                        }
                    }
                    out.append(kept, &cx.budget).await?;
                    glommio::yield_if_needed().await;
                }
            }
            out.finish(&cx.budget).await.map_err(PartitionError::from)
        }
        .await;
        let size = match written {
            Ok(size) => size,
            Err(e) => {
                cio::remove_cleaned(&final_path);
                return Err(e);
            }
        };
        self.swap_group(group, next, &final_path).await?;
        Ok((size, horizon))
    }

    /// Swaps a cleaned segment in for `group` under the io lock (see the
    /// log cleaner's module doc for the order of the renames). A group that
    /// changed meanwhile (retention took a segment) is left alone.
    async fn swap_group(
        self: &Rc<Self>,
        group: &[SegmentRef],
        next: i64,
        final_path: &std::path::Path,
    ) -> Result<(), PartitionError> {
        let _io = self
            .io_lock
            .acquire_permit(1)
            .await
            .map_err(|_| PartitionError::Deleted)?;
        let bases: Vec<i64> = group.iter().map(|s| s.view.base_offset).collect();
        let Some(at) = self.group_position(&bases) else {
            cio::remove_cleaned(final_path);
            return Ok(());
        };
        let dir = self.dir.clone();
        let mut renamed = Vec::new();
        let swapped = async {
            cio::commit_cleaned(final_path)?;
            sync_dir(&dir).await?;
            for (i, s) in group.iter().enumerate() {
                renamed.extend(cio::retire_segment(
                    &dir,
                    &s.path,
                    s.view.base_offset,
                    i == 0,
                )?);
            }
            cio::install_swap(final_path)?;
            let seg = Segment::load_sealed(final_path.to_owned(), bases[0], next)
                .await?
                .ok_or_else(|| LogError::Corrupt {
                    path: final_path.to_owned(),
                    position: 0,
                })?;
            sync_dir(&dir).await?;
            Ok::<Segment, LogError>(seg)
        }
        .await;
        let seg = match swapped {
            Ok(seg) => seg,
            Err(e) => {
                // The files on disk are consistent (a restart finishes the
                // swap); the partition's view of them is not any more.
                tracing::error!(topic = %self.topic, partition = self.index, error = %e, "swapping in a cleaned segment failed; partition fenced");
                self.poison();
                return Err(e.into());
            }
        };
        self.log
            .borrow_mut()
            .segments
            .splice(at..at + group.len(), [seg]);
        self.delete_later(renamed);
        Ok(())
    }

    /// Where the segments with `bases` sit in the log, consecutive and
    /// sealed; `None` if they are not there any more.
    fn group_position(&self, bases: &[i64]) -> Option<usize> {
        let log = self.log.borrow();
        let at = log
            .segments
            .iter()
            .position(|s| s.base_offset == bases[0])?;
        let end = at + bases.len();
        let same = end < log.segments.len()
            && log.segments[at..end]
                .iter()
                .zip(bases)
                .all(|(s, b)| s.base_offset == *b);
        same.then_some(at)
    }

    /// Removes replaced files after file.delete.delay.ms, so a fetch that
    /// planned its read on them finishes first.
    fn delete_later(&self, paths: Vec<PathBuf>) {
        let delay = self.topic_config().file_delete_delay_ms;
        glommio::spawn_local(async move {
            glommio::timer::sleep(Duration::from_millis(delay)).await;
            for path in paths {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "removing a replaced segment file");
                }
            }
        })
        .detach();
    }
}

/// Kafka's LogValidator rule for compacted topics: every record has a key
/// (the cleaner could only drop a keyless one). Refused as INVALID_RECORD.
pub(super) fn check_keys(
    config: &crate::cluster::topic_config::TopicConfig,
    batch: &[u8],
    max_decompressed_bytes: usize,
) -> Result<(), crate::record::BatchError> {
    if !config.cleanup_compact {
        return Ok(());
    }
    let h = BatchHeader::parse(batch)?;
    let section = crate::record::rebuild::records_section(batch, max_decompressed_bytes)?;
    let records = crate::record::rebuild::split_records(&h, &section)?;
    if records.iter().any(|r| r.key.is_none()) {
        return Err(crate::record::BatchError::Invalid(
            "compacted topic cannot accept a record without a key",
        ));
    }
    Ok(())
}

async fn sync_dir(dir: &std::path::Path) -> Result<(), LogError> {
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
