//! Sparse offset and time indexes of one segment, kept in memory and written
//! in Kafka's on-disk formats when the segment is sealed or the broker stops.
//!
//! Owned by the segment, on the partition's shard.
//!
//! Entries are what Kafka's `LogSegment.append` writes, so `kafka-dump-log
//! --verify-index-only` finds no mismatch: an `.index` entry maps the LAST
//! offset of the batch starting at its position to that position; a
//! `.timeindex` entry maps the segment's largest timestamp so far to the
//! last offset of the batch that carries it. Data directories written
//! before this used the batch's BASE offset in both; such an entry is still
//! a correct, more conservative scan start (its batch begins at or before
//! every offset it could be looked up for), so those logs read correctly.

/// `.index` entry: last offset of the batch at `position`, relative to the
/// segment base, and the batch's byte position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// `.timeindex` entry: largest timestamp so far, and the last offset
/// (relative to the base) of the batch holding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeIndexEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

#[derive(Debug, Default, Clone)]
pub struct SegmentIndex {
    pub offsets: Vec<IndexEntry>,
    pub times: Vec<TimeIndexEntry>,
}

impl SegmentIndex {
    /// Adds an `.index` entry for the batch at `position` whose last offset
    /// is `relative_last_offset`, and a `.timeindex` entry for the largest
    /// timestamp so far (`max_timestamp`, in the batch whose last offset is
    /// `relative_offset_of_max`) when it is above the last one. As in
    /// Kafka's TimeIndex, no entry for a missing timestamp (-1): the
    /// timestamps of a time index strictly increase from above -1.
    pub fn push(
        &mut self,
        relative_last_offset: u32,
        position: u32,
        (max_timestamp, relative_offset_of_max): (i64, u32),
    ) {
        self.offsets.push(IndexEntry {
            relative_offset: relative_last_offset,
            position,
        });
        if max_timestamp > self.times.last().map_or(-1, |t| t.timestamp) {
            self.times.push(TimeIndexEntry {
                timestamp: max_timestamp,
                relative_offset: relative_offset_of_max,
            });
        }
    }

    /// Indexes a batch of `size` bytes at `position` as it is appended or
    /// recovered: an entry for the segment's first batch, then one each time
    /// `interval` bytes went by since the last entry (`bytes_since_index`
    /// counts them). `relative_last_offset`: the batch's last offset;
    /// `max`: the segment's largest timestamp, this batch included, and the
    /// relative last offset of the batch carrying it.
    pub fn track(
        &mut self,
        bytes_since_index: &mut u64,
        (position, size): (u64, u64),
        relative_last_offset: u32,
        max: (i64, u32),
        interval: u64,
    ) {
        if *bytes_since_index >= interval || self.offsets.is_empty() && position == 0 {
            self.push(relative_last_offset, position as u32, max);
            *bytes_since_index = 0;
        }
        *bytes_since_index += size;
    }

    /// Byte position from which a scan finds `relative_offset`: the entry
    /// with the largest offset not above it, or the segment start. As in
    /// Kafka: an entry's batch ends at or before the target (its last offset
    /// is not above it), so the target is in that batch or a later one and
    /// the scan from there reaches it; a base-offset entry of an older data
    /// directory starts the scan no later.
    pub fn lookup(&self, relative_offset: u32) -> u32 {
        let i = self
            .offsets
            .partition_point(|e| e.relative_offset <= relative_offset);
        if i == 0 {
            0
        } else {
            self.offsets[i - 1].position
        }
    }

    /// Relative offset from which a scan finds the first record at or after
    /// `timestamp`: the last entry whose timestamp is below it. Every record
    /// up to that entry's offset is older than `timestamp`, so the record
    /// wanted lies after it (a base-offset entry of an older data directory
    /// starts earlier still).
    pub fn lookup_time(&self, timestamp: i64) -> u32 {
        let i = self.times.partition_point(|e| e.timestamp < timestamp);
        if i == 0 {
            0
        } else {
            self.times[i - 1].relative_offset
        }
    }

    /// Drops entries at or past byte `position` (the segment was cut there,
    /// before the batch at `relative_offset`): time entries name the last
    /// offset of a batch, so those at or past the cut point at cut batches.
    pub fn truncate(&mut self, position: u32, relative_offset: u32) {
        self.offsets.retain(|e| e.position < position);
        self.times.retain(|e| e.relative_offset < relative_offset);
    }

    pub fn encode_offsets(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.offsets.len() * 8);
        for e in &self.offsets {
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
            out.extend_from_slice(&e.position.to_be_bytes());
        }
        out
    }

    pub fn encode_times(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.times.len() * 12);
        for e in &self.times {
            out.extend_from_slice(&e.timestamp.to_be_bytes());
            out.extend_from_slice(&e.relative_offset.to_be_bytes());
        }
        out
    }

    /// Kafka's last step when a segment becomes inactive: a time-index
    /// entry for the segment's largest timestamp if the sparse entries do
    /// not reach it, so the sealed `.timeindex` ends at the segment's
    /// maximum (its offset: the last offset of the batch holding it).
    pub fn seal(&mut self, max_timestamp: i64, relative_offset_of_max: u32) {
        if max_timestamp >= 0
            && self
                .times
                .last()
                .is_none_or(|t| max_timestamp > t.timestamp)
        {
            self.times.push(TimeIndexEntry {
                timestamp: max_timestamp,
                relative_offset: relative_offset_of_max,
            });
        }
    }

    /// Both index files of a sealed segment of `size` bytes holding
    /// relative offsets below `span`, or `None` when they fail Kafka's
    /// sanity checks: whole entries, offsets and positions increasing,
    /// positions inside the file, timestamps not decreasing, offsets below
    /// the next segment.
    pub fn decode_checked(
        offsets: &[u8],
        times: &[u8],
        size: u64,
        span: u32,
    ) -> Option<SegmentIndex> {
        if !offsets.len().is_multiple_of(8) || !times.len().is_multiple_of(12) {
            return None;
        }
        let offsets = Self::decode_offsets(offsets);
        let times: Vec<TimeIndexEntry> = times
            .chunks_exact(12)
            .map(|c| TimeIndexEntry {
                timestamp: i64::from_be_bytes(c[0..8].try_into().expect("8")),
                relative_offset: u32::from_be_bytes(c[8..12].try_into().expect("4")),
            })
            .collect();
        let offsets_ok = offsets
            .windows(2)
            .all(|w| w[0].relative_offset < w[1].relative_offset && w[0].position < w[1].position)
            && offsets
                .iter()
                .all(|e| (e.position as u64) < size && e.relative_offset < span);
        let times_ok = times.windows(2).all(|w| {
            w[0].timestamp <= w[1].timestamp && w[0].relative_offset <= w[1].relative_offset
        }) && times.iter().all(|e| e.relative_offset < span);
        let starts_at_zero = offsets.first().is_none_or(|e| e.position == 0);
        (offsets_ok && times_ok && starts_at_zero && (size == 0) == offsets.is_empty())
            .then_some(SegmentIndex { offsets, times })
    }

    pub fn decode_offsets(bytes: &[u8]) -> Vec<IndexEntry> {
        bytes
            .chunks_exact(8)
            .map(|c| IndexEntry {
                relative_offset: u32::from_be_bytes(c[0..4].try_into().expect("4")),
                position: u32::from_be_bytes(c[4..8].try_into().expect("4")),
            })
            .take_while(|e| e.relative_offset != 0 || e.position == 0)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SegmentIndex {
        let mut idx = SegmentIndex::default();
        idx.push(0, 0, (100, 0));
        idx.push(10, 4096, (200, 10));
        idx.push(25, 8200, (200, 10));
        idx.push(40, 12300, (300, 40));
        idx
    }

    #[test]
    fn lookup_finds_floor_entry() {
        let idx = sample();
        assert_eq!(idx.lookup(0), 0);
        assert_eq!(idx.lookup(9), 0);
        assert_eq!(idx.lookup(10), 4096);
        assert_eq!(idx.lookup(39), 8200);
        assert_eq!(idx.lookup(1000), 12300);
        assert_eq!(SegmentIndex::default().lookup(5), 0);
    }

    #[test]
    fn time_index_is_monotonic_and_looked_up() {
        let idx = sample();
        assert_eq!(idx.times.len(), 3, "no new maximum adds no time entry");
        assert_eq!(idx.lookup_time(50), 0);
        assert_eq!(idx.lookup_time(200), 0);
        assert_eq!(idx.lookup_time(201), 10);
        assert_eq!(idx.lookup_time(10_000), 40);
    }

    #[test]
    fn missing_timestamps_add_no_time_entry() {
        let mut idx = SegmentIndex::default();
        idx.push(4, 0, (-1, 0));
        assert!(idx.times.is_empty(), "Kafka writes no -1 timestamp");
        idx.push(9, 100, (7, 9));
        assert_eq!(
            idx.times,
            [TimeIndexEntry {
                timestamp: 7,
                relative_offset: 9
            }]
        );
    }

    /// A segment of batches as (relative base, relative last, position,
    /// size, max timestamp), built from (records, size, timestamp) triples.
    fn batches(spec: &[(u32, u64, i64)]) -> Vec<(u32, u32, u64, u64, i64)> {
        let (mut off, mut pos) = (0u32, 0u64);
        spec.iter()
            .map(|&(records, size, ts)| {
                let b = (off, off + records - 1, pos, size, ts);
                off += records;
                pos += size;
                b
            })
            .collect()
    }

    /// Indexes `log` as the appender does, entries keyed by the batch's last
    /// offset (`by_last`) or, as older data directories did, its base.
    fn index_of(log: &[(u32, u32, u64, u64, i64)], interval: u64, by_last: bool) -> SegmentIndex {
        let mut idx = SegmentIndex::default();
        let (mut since, mut max) = (0u64, (-1i64, 0u32));
        for &(base, last, pos, size, ts) in log {
            if ts > max.0 {
                max = (ts, last);
            }
            let key = if by_last { last } else { base };
            idx.track(&mut since, (pos, size), key, max, interval);
        }
        idx
    }

    proptest::proptest! {
        /// For every offset of the segment, the scan start is the start of
        /// a batch at or before the batch holding it, whether the entries
        /// name last offsets (Kafka's) or base offsets (older data dirs);
        /// and every entry maps a batch's last offset to its position, as
        /// kafka-dump-log --verify-index-only checks.
        #[test]
        fn lookup_starts_at_or_before_the_batch_holding_the_offset(
            spec in proptest::collection::vec((1u32..20, 70u64..3000, 0i64..1000), 1..120),
            interval in 1u64..8000,
        ) {
            let log = batches(&spec);
            let starts: Vec<u64> = log.iter().map(|b| b.2).collect();
            for by_last in [true, false] {
                let idx = index_of(&log, interval, by_last);
                for &(base, last, pos, _, _) in &log {
                    for probe in [base, last, (base + last) / 2] {
                        let at = idx.lookup(probe) as u64;
                        proptest::prop_assert!(at <= pos && starts.contains(&at));
                    }
                }
            }
            let idx = index_of(&log, interval, true);
            for e in &idx.offsets {
                let b = log.iter().find(|b| b.2 == e.position as u64).expect("a batch start");
                proptest::prop_assert_eq!(e.relative_offset, b.1);
            }
        }

        /// Time entries are what kafka-dump-log verifies: strictly rising
        /// timestamps, each the max timestamp of the batch whose last offset
        /// the entry names; a lookup by time starts no later than the first
        /// batch reaching the timestamp.
        #[test]
        fn time_entries_name_the_batch_holding_the_maximum(
            spec in proptest::collection::vec((1u32..20, 70u64..3000, -1i64..1000), 1..120),
            interval in 1u64..8000,
            probe in 0i64..1100,
        ) {
            let log = batches(&spec);
            let idx = index_of(&log, interval, true);
            for w in idx.times.windows(2) {
                proptest::prop_assert!(w[0].timestamp < w[1].timestamp);
            }
            for t in &idx.times {
                let b = log.iter().find(|b| b.1 == t.relative_offset).expect("a batch's last offset");
                proptest::prop_assert_eq!(b.4, t.timestamp);
                proptest::prop_assert!(t.timestamp >= 0);
            }
            if let Some(first) = log.iter().find(|b| b.4 >= probe) {
                proptest::prop_assert!(idx.lookup_time(probe) <= first.1);
            }
        }
    }

    #[test]
    fn offsets_round_trip_in_kafka_format() {
        let idx = sample();
        let bytes = idx.encode_offsets();
        assert_eq!(bytes.len(), 32);
        assert_eq!(SegmentIndex::decode_offsets(&bytes), idx.offsets);
        assert_eq!(idx.encode_times().len(), 36);
    }
}
