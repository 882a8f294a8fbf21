//! Which part of a log the cleaner may clean, how dirty it is, which log
//! of a shard goes first, and how the cleaned segments are grouped.
//! Pure, time passed in.
//!
//! Kafka's rules (LogCleanerManager): the dirty section runs from the
//! cleaner checkpoint (the first dirty offset; the log start when it has
//! none or it is outside the log) to the first uncleanable offset: the
//! active segment's base, the high watermark, or the first segment not yet
//! older than min.compaction.lag.ms, whichever is lowest, at segment
//! boundaries. The dirty ratio is dirty bytes over the bytes of the whole
//! cleanable log; a log is cleaned when it reaches min.cleanable.dirty.ratio,
//! when its oldest dirty segment is past max.compaction.lag.ms, or when a
//! delete horizon it wrote has passed (tombstones can go). A segment with
//! no timestamps counts as old.

use std::ops::Range;

/// What the cleaner sees of one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentView {
    pub base_offset: i64,
    pub next_offset: i64,
    pub size: u64,
    pub max_timestamp: i64,
}

/// A log's state and its topic's settings.
#[derive(Debug, Clone, Copy)]
pub struct LogState {
    pub log_start_offset: i64,
    /// The cleaner checkpoint (-1: none).
    pub first_dirty_offset: i64,
    pub high_watermark: i64,
    pub min_compaction_lag_ms: i64,
    pub max_compaction_lag_ms: i64,
    pub min_cleanable_ratio: f64,
    /// Earliest delete horizon written into the log (i64::MAX: none).
    pub delete_horizon_ms: i64,
    pub now_ms: i64,
}

/// The cleanable part of a log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cleanable {
    pub first_dirty_offset: i64,
    pub first_uncleanable_offset: i64,
    /// Sealed segments below `first_uncleanable_offset`.
    pub segments: usize,
    pub clean_bytes: u64,
    pub dirty_bytes: u64,
    pub dirty_ratio: f64,
    /// Due whatever the ratio: max.compaction.lag.ms or a delete horizon.
    pub forced: bool,
}

impl Cleanable {
    /// Whether the cleaner should clean this log now.
    pub fn due(&self, min_cleanable_ratio: f64) -> bool {
        (self.dirty_bytes > 0 && self.dirty_ratio >= min_cleanable_ratio) || self.forced
    }
}

fn old_enough(s: &SegmentView, lag_ms: i64, now_ms: i64) -> bool {
    s.max_timestamp < 0 || lag_ms <= 0 || now_ms.saturating_sub(s.max_timestamp) >= lag_ms
}

/// The cleanable part of a log whose last segment in `segments` is the
/// active one; `None` when nothing is sealed below the high watermark.
pub fn cleanable(segments: &[SegmentView], s: LogState) -> Option<Cleanable> {
    let sealed = &segments[..segments.len().saturating_sub(1)];
    let n = sealed
        .iter()
        .take_while(|g| {
            g.next_offset <= s.high_watermark && old_enough(g, s.min_compaction_lag_ms, s.now_ms)
        })
        .count();
    if n == 0 {
        return None;
    }
    let end = sealed[n - 1].next_offset;
    let first_dirty = if (s.log_start_offset..=end).contains(&s.first_dirty_offset) {
        s.first_dirty_offset
    } else {
        s.log_start_offset
    };
    let (mut clean_bytes, mut dirty_bytes) = (0u64, 0u64);
    let mut oldest_dirty = None;
    for g in &sealed[..n] {
        if g.next_offset <= first_dirty {
            clean_bytes += g.size;
        } else {
            dirty_bytes += g.size;
            oldest_dirty.get_or_insert(*g);
        }
    }
    let total = clean_bytes + dirty_bytes;
    let dirty_ratio = if total == 0 {
        0.0
    } else {
        dirty_bytes as f64 / total as f64
    };
    let lag_passed = oldest_dirty.is_some_and(|g| {
        g.max_timestamp >= 0
            && s.max_compaction_lag_ms < i64::MAX
            && s.now_ms.saturating_sub(g.max_timestamp) >= s.max_compaction_lag_ms
    });
    Some(Cleanable {
        first_dirty_offset: first_dirty,
        first_uncleanable_offset: end,
        segments: n,
        clean_bytes,
        dirty_bytes,
        dirty_ratio,
        forced: (lag_passed && dirty_bytes > 0) || s.delete_horizon_ms <= s.now_ms,
    })
}

/// Index of the log to clean first among those due: forced ones first,
/// then the highest dirty ratio (Kafka's "filthiest").
pub fn dirtiest(candidates: &[(Cleanable, f64)]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, (c, ratio))| c.due(*ratio))
        .max_by(|(_, (a, _)), (_, (b, _))| {
            (a.forced, a.dirty_ratio)
                .partial_cmp(&(b.forced, b.dirty_ratio))
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .map(|(i, _)| i)
}

/// Groups the first `count` segments (sealed, cleanable) into runs that
/// each become one cleaned segment: consecutive segments whose sizes
/// before cleaning add up to at most `max_bytes` (segment.bytes) and whose
/// offsets span less than 2^31 (relative offsets in the index are 32-bit),
/// as Kafka's groupSegmentsBySize. A segment alone in its group may be
/// larger.
pub fn groups(segments: &[SegmentView], count: usize, max_bytes: u64) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < count {
        let mut end = start + 1;
        let mut bytes = segments[start].size;
        while end < count
            && bytes + segments[end].size <= max_bytes
            && segments[end].next_offset - segments[start].base_offset < i32::MAX as i64
        {
            bytes += segments[end].size;
            end += 1;
        }
        out.push(start..end);
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(base: i64, next: i64, size: u64, ts: i64) -> SegmentView {
        SegmentView {
            base_offset: base,
            next_offset: next,
            size,
            max_timestamp: ts,
        }
    }

    fn state(first_dirty: i64, hw: i64) -> LogState {
        LogState {
            log_start_offset: 0,
            first_dirty_offset: first_dirty,
            high_watermark: hw,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            min_cleanable_ratio: 0.5,
            delete_horizon_ms: i64::MAX,
            now_ms: 10_000,
        }
    }

    fn log() -> Vec<SegmentView> {
        vec![
            seg(0, 10, 100, 1_000),
            seg(10, 20, 100, 2_000),
            seg(20, 30, 100, 9_000),
            seg(30, 35, 50, 9_999),
        ]
    }

    #[test]
    fn the_dirty_section_starts_at_the_checkpoint_and_stops_before_the_active_segment() {
        let c = cleanable(&log(), state(-1, 35)).unwrap();
        assert_eq!((c.first_dirty_offset, c.first_uncleanable_offset), (0, 30));
        assert_eq!((c.clean_bytes, c.dirty_bytes, c.segments), (0, 300, 3));
        assert!(c.due(0.5));
        let c = cleanable(&log(), state(20, 35)).unwrap();
        assert_eq!((c.clean_bytes, c.dirty_bytes), (200, 100));
        assert!(!c.due(0.5) && c.due(0.3));
        let c = cleanable(&log(), state(30, 35)).unwrap();
        assert_eq!(c.dirty_bytes, 0);
        assert!(!c.due(0.0), "nothing dirty: nothing to do");
        let c = cleanable(&log(), state(999, 35)).unwrap();
        assert_eq!(c.first_dirty_offset, 0, "a checkpoint past the log resets");
    }

    #[test]
    fn the_high_watermark_and_min_compaction_lag_bound_the_section() {
        let c = cleanable(&log(), state(-1, 25)).unwrap();
        assert_eq!(c.first_uncleanable_offset, 20);
        assert!(cleanable(&log(), state(-1, 5)).is_none());
        let mut s = state(-1, 35);
        s.min_compaction_lag_ms = 5_000;
        assert_eq!(cleanable(&log(), s).unwrap().first_uncleanable_offset, 20);
        s.min_compaction_lag_ms = 9_500;
        assert!(cleanable(&log(), s).is_none());
        assert!(
            cleanable(&log()[3..], state(-1, 35)).is_none(),
            "active only"
        );
    }

    #[test]
    fn max_compaction_lag_and_delete_horizons_force_a_clean() {
        let mut s = state(20, 35);
        s.max_compaction_lag_ms = 2_000;
        assert!(!cleanable(&log(), s).unwrap().forced, "9000 is 1 s old");
        s.max_compaction_lag_ms = 1_000;
        let c = cleanable(&log(), s).unwrap();
        assert!(c.forced && c.due(0.99));
        let mut s = state(30, 35);
        s.delete_horizon_ms = 10_000;
        assert!(cleanable(&log(), s).unwrap().due(0.99));
        s.delete_horizon_ms = 10_001;
        assert!(!cleanable(&log(), s).unwrap().due(0.99));
    }

    #[test]
    fn the_dirtiest_due_log_goes_first() {
        let c = |ratio: f64, forced| Cleanable {
            first_dirty_offset: 0,
            first_uncleanable_offset: 1,
            segments: 1,
            clean_bytes: 1,
            dirty_bytes: 1,
            dirty_ratio: ratio,
            forced,
        };
        assert_eq!(
            dirtiest(&[(c(0.6, false), 0.5), (c(0.9, false), 0.5)]),
            Some(1)
        );
        assert_eq!(
            dirtiest(&[(c(0.6, false), 0.5), (c(0.9, false), 0.95)]),
            Some(0)
        );
        assert_eq!(
            dirtiest(&[(c(0.6, false), 0.5), (c(0.1, true), 0.95)]),
            Some(1)
        );
        assert_eq!(dirtiest(&[(c(0.2, false), 0.5)]), None);
    }

    #[test]
    fn groups_fill_up_to_segment_bytes() {
        let segs = [
            seg(0, 10, 40, 1),
            seg(10, 20, 40, 1),
            seg(20, 30, 40, 1),
            seg(30, 40, 200, 1),
            seg(40, 50, 10, 1),
        ];
        assert_eq!(groups(&segs, 5, 100), vec![0..2, 2..3, 3..4, 4..5]);
        assert_eq!(groups(&segs, 3, 1000), vec![0..3]);
        assert_eq!(groups(&segs, 0, 1000), Vec::<Range<usize>>::new());
        let far = [
            seg(0, 10, 1, 1),
            seg(i32::MAX as i64, i32::MAX as i64 + 5, 1, 1),
        ];
        assert_eq!(groups(&far, 2, 1000), vec![0..1, 1..2]);
    }
}
