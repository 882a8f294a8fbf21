//! Sparse offset and time indexes of one segment, kept in memory and written
//! in Kafka's on-disk formats when the segment is sealed or the broker stops.
//!
//! Owned by the segment, on the partition's shard.

/// `.index` entry: offset relative to the segment base, byte position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// `.timeindex` entry: largest timestamp so far, offset relative to the base.
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
    pub fn push(&mut self, relative_offset: u32, position: u32, max_timestamp: i64) {
        self.offsets.push(IndexEntry {
            relative_offset,
            position,
        });
        if self
            .times
            .last()
            .is_none_or(|t| max_timestamp > t.timestamp)
        {
            self.times.push(TimeIndexEntry {
                timestamp: max_timestamp,
                relative_offset,
            });
        }
    }

    /// Indexes a batch of `size` bytes at `position` as it is appended or
    /// recovered: an entry for the segment's first batch, then one each time
    /// `interval` bytes went by since the last entry (`bytes_since_index`
    /// counts them). `max_timestamp`: the segment's largest timestamp,
    /// this batch included.
    pub fn track(
        &mut self,
        bytes_since_index: &mut u64,
        (position, size): (u64, u64),
        relative_offset: u32,
        max_timestamp: i64,
        interval: u64,
    ) {
        if *bytes_since_index >= interval || self.offsets.is_empty() && position == 0 {
            self.push(relative_offset, position as u32, max_timestamp);
            *bytes_since_index = 0;
        }
        *bytes_since_index += size;
    }

    /// Byte position from which a scan finds `relative_offset`: the entry
    /// with the largest offset not above it, or the segment start.
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
    /// `timestamp`: the last entry whose timestamp is below it.
    pub fn lookup_time(&self, timestamp: i64) -> u32 {
        let i = self.times.partition_point(|e| e.timestamp < timestamp);
        if i == 0 {
            0
        } else {
            self.times[i - 1].relative_offset
        }
    }

    /// Drops entries at or past byte `position` (the segment was cut there).
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
        idx.push(0, 0, 100);
        idx.push(10, 4096, 200);
        idx.push(25, 8200, 150);
        idx.push(40, 12300, 300);
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
        assert_eq!(idx.times.len(), 3, "a smaller timestamp adds no time entry");
        assert_eq!(idx.lookup_time(50), 0);
        assert_eq!(idx.lookup_time(200), 0);
        assert_eq!(idx.lookup_time(201), 10);
        assert_eq!(idx.lookup_time(10_000), 40);
    }

    proptest::proptest! {
        /// The sparse index agrees with a linear scan of the same entries.
        #[test]
        fn lookup_matches_linear_model(gaps in proptest::collection::vec((1u32..50, 1u32..5000), 0..200), probe in 0u32..20_000) {
            let mut idx = SegmentIndex::default();
            let (mut off, mut pos) = (0u32, 0u32);
            for (d_off, d_pos) in gaps {
                idx.push(off, pos, off as i64);
                off += d_off;
                pos += d_pos;
            }
            let model = idx.offsets.iter().rev().find(|e| e.relative_offset <= probe).map_or(0, |e| e.position);
            proptest::prop_assert_eq!(idx.lookup(probe), model);
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
