//! Time and size retention (Kafka's cleanup.policy=delete): which of the
//! oldest sealed segments go, and whether the active segment is old enough
//! to roll (segment.ms) so that time retention can reach its data. Pure:
//! the partition applies the answer one segment at a time.

/// What retention sees of one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentInfo {
    pub base_offset: i64,
    /// Offset after its last batch.
    pub next_offset: i64,
    pub size: u64,
    /// Largest record timestamp in it (-1: none).
    pub max_timestamp: i64,
}

/// The topic's limits (-1: none), the partition's high watermark and the
/// broker's clock.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub high_watermark: i64,
    pub now_ms: i64,
}

/// How many of the oldest segments retention deletes: sealed ones only (the
/// last of `segments` is the active one), wholly below the high watermark,
/// each either past retention.ms (its largest timestamp older than that;
/// a segment of records without timestamps never expires by time) or
/// needed to bring the log within retention.bytes, as Kafka's
/// UnifiedLog.deleteRetentionMsBreachedSegments and
/// deleteRetentionSizeBreachedSegments decide.
pub fn deletable(segments: &[SegmentInfo], limits: Limits) -> usize {
    let sealed = &segments[..segments.len().saturating_sub(1)];
    let total: u64 = segments.iter().map(|s| s.size).sum();
    let mut excess = if limits.retention_bytes >= 0 {
        total as i64 - limits.retention_bytes
    } else {
        0
    };
    let mut n = 0;
    for s in sealed {
        if s.next_offset > limits.high_watermark {
            break;
        }
        // A segment the cleaner emptied holds nothing to keep and would
        // otherwise stop time retention at its missing timestamp.
        let emptied = s.size == 0 && limits.retention_ms >= 0;
        let expired = emptied
            || limits.retention_ms >= 0
                && s.max_timestamp >= 0
                && limits.now_ms.saturating_sub(s.max_timestamp) > limits.retention_ms;
        let over_size = excess - s.size as i64 >= 0 && limits.retention_bytes >= 0;
        if !(expired || over_size) {
            break;
        }
        excess -= s.size as i64;
        n += 1;
    }
    n
}

/// Whether the active segment has data and is older than segment.ms.
pub fn should_roll(active_size: u64, created_ms: i64, segment_ms: i64, now_ms: i64) -> bool {
    active_size > 0 && segment_ms > 0 && now_ms.saturating_sub(created_ms) >= segment_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(base: i64, next: i64, size: u64, ts: i64) -> SegmentInfo {
        SegmentInfo {
            base_offset: base,
            next_offset: next,
            size,
            max_timestamp: ts,
        }
    }

    fn limits(ms: i64, bytes: i64, hw: i64) -> Limits {
        Limits {
            retention_ms: ms,
            retention_bytes: bytes,
            high_watermark: hw,
            now_ms: 10_000,
        }
    }

    #[test]
    fn time_retention_deletes_old_sealed_segments_oldest_first() {
        let log = [
            seg(0, 10, 100, 1_000),
            seg(10, 20, 100, 8_000),
            seg(20, 30, 100, 2_000),
            seg(30, 35, 50, 9_999),
        ];
        // 5 s: the first is 9 s old, the second 2 s: only the first goes
        // (the third is old but behind a young one, as in Kafka).
        assert_eq!(deletable(&log, limits(5_000, -1, 35)), 1);
        assert_eq!(
            deletable(&log, limits(1_000, -1, 35)),
            3,
            "never the active segment"
        );
        assert_eq!(deletable(&log, limits(-1, -1, 35)), 0);
        assert_eq!(
            deletable(&log, limits(1_000, -1, 15)),
            1,
            "only below the high watermark"
        );
        assert_eq!(
            deletable(&[seg(0, 10, 100, -1), seg(10, 11, 1, 1)], limits(0, -1, 11)),
            0
        );
        // A segment compaction emptied does not hold time retention back.
        let compacted = [
            seg(0, 10, 0, -1),
            seg(10, 20, 100, 1_000),
            seg(20, 30, 1, 9_999),
        ];
        assert_eq!(deletable(&compacted, limits(5_000, -1, 30)), 2);
        assert_eq!(deletable(&compacted, limits(-1, -1, 30)), 0);
    }

    #[test]
    fn size_retention_keeps_the_log_within_its_bytes() {
        let log = [
            seg(0, 10, 100, 1),
            seg(10, 20, 100, 1),
            seg(20, 30, 100, 1),
            seg(30, 35, 50, 1),
        ];
        assert_eq!(deletable(&log, limits(-1, 350, 35)), 0);
        assert_eq!(deletable(&log, limits(-1, 250, 35)), 1);
        assert_eq!(
            deletable(&log, limits(-1, 149, 35)),
            2,
            "never below the limit"
        );
        assert_eq!(
            deletable(&log, limits(-1, 0, 35)),
            3,
            "never the active segment"
        );
    }

    #[test]
    fn roll_after_segment_ms_when_there_is_data() {
        assert!(should_roll(10, 1_000, 500, 1_500));
        assert!(!should_roll(10, 1_000, 500, 1_499));
        assert!(
            !should_roll(0, 0, 500, 10_000),
            "an empty segment does not roll"
        );
    }
}
