//! The cleaner's offset map (key -> offset of its last record in the dirty
//! section) and the decision for each stored batch: kept as it is, dropped,
//! or rebuilt with the records that survive. Pure; the map lives on the
//! shard that cleans, for one pass.
//!
//! Kafka hashes keys into a fixed buffer (MD5, log.cleaner.dedupe.buffer.size);
//! here the map keeps whole keys, so it never mistakes one key for another,
//! and counts each entry's key bytes plus [`ENTRY_OVERHEAD_BYTES`] against
//! its limit. When the dirty section holds more than fits, the pass cleans
//! the prefix that did (the map's end), as Kafka does.
//!
//! A record survives when it has a key (Kafka's cleaner drops keyless
//! records of a compacted topic), no later record of its key is in the map,
//! and it is not a tombstone whose batch's delete horizon has passed.
//! Tombstones follow KIP-534: the first pass that keeps one stamps its
//! batch with a delete horizon (now + delete.retention.ms); a pass after
//! that horizon drops it. Control and transactional batches are kept as
//! they are (transactions are refused at produce).

use std::collections::HashMap;

use crate::record::rebuild::{self, RawRecord};
use crate::record::{BatchError, BatchHeader};

/// Bytes counted per map entry besides its key: the hash table slot (key
/// pointer, length, offset, control byte) and the key's allocation header.
pub const ENTRY_OVERHEAD_BYTES: usize = 64;

/// Key -> offset of the key's latest record, within a byte limit.
pub struct OffsetMap {
    entries: HashMap<Box<[u8]>, i64>,
    bytes: usize,
    limit: usize,
}

impl OffsetMap {
    pub fn new(limit: usize) -> OffsetMap {
        OffsetMap {
            entries: HashMap::new(),
            bytes: 0,
            limit,
        }
    }

    /// Whether `new_keys` more keys of `key_bytes` bytes in all would fit.
    pub fn has_room(&self, new_keys: usize, key_bytes: usize) -> bool {
        self.bytes + key_bytes + new_keys * ENTRY_OVERHEAD_BYTES <= self.limit
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.entries.contains_key(key)
    }

    /// Records `offset` as the latest of `key` (offsets arrive in order).
    pub fn put(&mut self, key: &[u8], offset: i64) {
        if let Some(o) = self.entries.get_mut(key) {
            *o = offset;
            return;
        }
        self.bytes += key.len() + ENTRY_OVERHEAD_BYTES;
        self.entries.insert(key.into(), offset);
    }

    pub fn get(&self, key: &[u8]) -> Option<i64> {
        self.entries.get(key).copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Whether the cleaner looks inside a batch at all.
pub fn is_cleanable(h: &BatchHeader) -> bool {
    !h.is_control() && !h.is_transactional()
}

/// Adds one batch's keyed records to the map, all or nothing: `false`
/// (and the map unchanged) when they do not fit.
pub fn map_batch(
    map: &mut OffsetMap,
    batch: &[u8],
    max_decompressed_bytes: usize,
) -> Result<bool, BatchError> {
    let h = BatchHeader::parse(batch)?;
    if !is_cleanable(&h) {
        return Ok(true);
    }
    let section = rebuild::records_section(batch, max_decompressed_bytes)?;
    let records = rebuild::split_records(&h, &section)?;
    let mut fresh: Vec<&[u8]> = records
        .iter()
        .filter_map(|r| r.key)
        .filter(|k| !map.contains(k))
        .collect();
    fresh.sort_unstable();
    fresh.dedup();
    if !map.has_room(fresh.len(), fresh.iter().map(|k| k.len()).sum()) {
        return Ok(false);
    }
    for r in &records {
        if let Some(k) = r.key {
            map.put(k, r.offset);
        }
    }
    Ok(true)
}

/// What becomes of one batch.
#[derive(Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    Keep,
    Drop,
    Rewrite(Vec<u8>),
}

/// What the cleaner counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FilterStats {
    pub records_read: u64,
    pub records_kept: u64,
    pub tombstones_dropped: u64,
}

/// Settles one stored batch against the map at `now_ms`.
pub fn filter_batch(
    batch: &[u8],
    map: &OffsetMap,
    now_ms: i64,
    delete_retention_ms: i64,
    max_decompressed_bytes: usize,
    stats: &mut FilterStats,
) -> Result<BatchOutcome, BatchError> {
    let h = BatchHeader::parse(batch)?;
    if !is_cleanable(&h) {
        return Ok(BatchOutcome::Keep);
    }
    let horizon = rebuild::delete_horizon_ms(&h);
    let horizon_passed = horizon.is_some_and(|t| t <= now_ms);
    let section = rebuild::records_section(batch, max_decompressed_bytes)?;
    let records = rebuild::split_records(&h, &section)?;
    let survives = |r: &RawRecord| {
        let Some(key) = r.key else { return false };
        let latest = map.get(key).is_none_or(|o| r.offset >= o);
        latest && !(r.tombstone && horizon_passed)
    };
    let kept: Vec<RawRecord> = records.iter().copied().filter(survives).collect();
    stats.records_read += records.len() as u64;
    stats.records_kept += kept.len() as u64;
    stats.tombstones_dropped += records
        .iter()
        .filter(|r| r.tombstone && !kept.contains(r))
        .count() as u64;
    let needs_horizon = horizon.is_none() && kept.iter().any(|r| r.tombstone);
    if kept.is_empty() {
        return Ok(BatchOutcome::Drop);
    }
    if kept.len() == records.len() && !needs_horizon {
        return Ok(BatchOutcome::Keep);
    }
    let stamp = needs_horizon.then(|| now_ms.saturating_add(delete_retention_ms));
    Ok(BatchOutcome::Rewrite(rebuild::rebuild_batch(
        batch, &kept, stamp,
    )?))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record::tests::{raw_batch, varint, with_length};

    /// A batch at `base` of (key, value) records, one offset each; `None`
    /// values are tombstones.
    pub fn keyed_batch(base: i64, records: &[(&str, Option<&str>)], ts: i64) -> Vec<u8> {
        let mut payload = Vec::new();
        for (i, (k, v)) in records.iter().enumerate() {
            let mut body = vec![0u8];
            body.extend(varint(0));
            body.extend(varint(i as i64));
            body.extend(varint(k.len() as i64));
            body.extend_from_slice(k.as_bytes());
            match v {
                Some(v) => {
                    body.extend(varint(v.len() as i64));
                    body.extend_from_slice(v.as_bytes());
                }
                None => body.extend(varint(-1)),
            }
            body.extend(varint(0));
            payload.extend(with_length(&body));
        }
        let n = records.len() as i32;
        let mut b = raw_batch(&payload, n, n - 1, 0);
        b[27..35].copy_from_slice(&ts.to_be_bytes());
        b[35..43].copy_from_slice(&ts.to_be_bytes());
        crate::record::tests::fix_crc(&mut b);
        crate::record::assign_offsets(&mut b, base, 0);
        b
    }

    fn values(batch: &[u8]) -> Vec<(i64, String, Option<String>)> {
        crate::record::batch_records(batch, 1 << 20, true)
            .unwrap()
            .map(|r| r.unwrap())
            .map(|r| {
                let s = |b: Option<bytes::Bytes>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
                (r.offset, s(r.key).unwrap(), s(r.value))
            })
            .collect()
    }

    #[test]
    fn the_latest_record_per_key_survives() {
        let old = keyed_batch(
            0,
            &[("a", Some("1")), ("b", Some("1")), ("c", Some("1"))],
            5,
        );
        let new = keyed_batch(3, &[("a", Some("2")), ("c", None)], 6);
        let mut map = OffsetMap::new(1 << 20);
        assert!(map_batch(&mut map, &old, 1 << 20).unwrap());
        assert!(map_batch(&mut map, &new, 1 << 20).unwrap());
        assert_eq!(
            (map.get(b"a"), map.get(b"c"), map.len()),
            (Some(3), Some(4), 3)
        );
        let mut stats = FilterStats::default();
        let BatchOutcome::Rewrite(out) =
            filter_batch(&old, &map, 100, 50, 1 << 20, &mut stats).unwrap()
        else {
            panic!("rewritten");
        };
        assert_eq!(values(&out), [(1, "b".into(), Some("1".into()))]);
        // The newer batch: everything is latest, but it holds a tombstone
        // without a horizon yet: stamped with now + delete.retention.ms.
        let BatchOutcome::Rewrite(stamped) =
            filter_batch(&new, &map, 100, 50, 1 << 20, &mut stats).unwrap()
        else {
            panic!("stamped");
        };
        let h = BatchHeader::parse(&stamped).unwrap();
        assert_eq!(rebuild::delete_horizon_ms(&h), Some(150));
        assert_eq!(values(&stamped).len(), 2);
        // Before the horizon the stamped batch stays; after it, the tombstone goes.
        assert_eq!(
            filter_batch(&stamped, &map, 149, 50, 1 << 20, &mut stats).unwrap(),
            BatchOutcome::Keep
        );
        let BatchOutcome::Rewrite(gone) =
            filter_batch(&stamped, &map, 150, 50, 1 << 20, &mut stats).unwrap()
        else {
            panic!("tombstone dropped");
        };
        assert_eq!(values(&gone), [(3, "a".into(), Some("2".into()))]);
        assert_eq!(stats.tombstones_dropped, 1);
        let only_old = keyed_batch(0, &[("a", Some("1"))], 5);
        assert_eq!(
            filter_batch(&only_old, &map, 100, 50, 1 << 20, &mut stats).unwrap(),
            BatchOutcome::Drop
        );
    }

    #[test]
    fn the_map_stays_within_its_limit() {
        let batch = keyed_batch(0, &[("a", Some("1")), ("b", Some("1"))], 5);
        let mut map = OffsetMap::new(ENTRY_OVERHEAD_BYTES + 1);
        assert!(!map_batch(&mut map, &batch, 1 << 20).unwrap());
        assert!(map.is_empty(), "all or nothing");
        let mut map = OffsetMap::new(2 * ENTRY_OVERHEAD_BYTES + 2);
        assert!(map_batch(&mut map, &batch, 1 << 20).unwrap());
        assert!(
            map_batch(&mut map, &batch, 1 << 20).unwrap(),
            "known keys need no room"
        );
        let c = keyed_batch(2, &[("c", Some("1"))], 5);
        assert!(!map_batch(&mut map, &c, 1 << 20).unwrap());
    }

    proptest::proptest! {
        /// A log model: batches of random keys, values and tombstones. Once
        /// the whole log is mapped and filtered (after every horizon), what
        /// is left is exactly the last record of each key whose last record
        /// is not a tombstone, at its original offset.
        #[test]
        fn cleaning_leaves_the_last_record_per_key(
            log in proptest::collection::vec(
                proptest::collection::vec((0u8..8, proptest::option::weighted(0.8, 0u8..100)), 1..6),
                1..20,
            )
        ) {
            let mut batches = Vec::new();
            let mut base = 0i64;
            let mut model = std::collections::BTreeMap::new();
            for recs in &log {
                let owned: Vec<(String, Option<String>)> = recs
                    .iter()
                    .map(|(k, v)| (format!("k{k}"), v.map(|v| format!("v{v}"))))
                    .collect();
                let refs: Vec<(&str, Option<&str>)> =
                    owned.iter().map(|(k, v)| (k.as_str(), v.as_deref())).collect();
                for (i, (k, v)) in owned.iter().enumerate() {
                    model.insert(k.clone(), (base + i as i64, v.clone()));
                }
                batches.push(keyed_batch(base, &refs, 5));
                base += recs.len() as i64;
            }
            let mut map = OffsetMap::new(1 << 20);
            for b in &batches {
                proptest::prop_assert!(map_batch(&mut map, b, 1 << 20).unwrap());
            }
            let mut stats = FilterStats::default();
            let mut left = Vec::new();
            // Two passes: the first stamps horizons, the second (past them) drops tombstones.
            for now in [100, 1_000] {
                let mut next = Vec::new();
                for b in &batches {
                    match filter_batch(b, &map, now, 50, 1 << 20, &mut stats).unwrap() {
                        BatchOutcome::Keep => next.push(b.clone()),
                        BatchOutcome::Drop => {}
                        BatchOutcome::Rewrite(nb) => next.push(nb),
                    }
                }
                batches = next;
            }
            for b in &batches {
                left.extend(values(b));
            }
            let want: Vec<(i64, String, Option<String>)> = {
                let mut w: Vec<_> = model
                    .into_iter()
                    .filter(|(_, (_, v))| v.is_some())
                    .map(|(k, (o, v))| (o, k, v))
                    .collect();
                w.sort();
                w
            };
            proptest::prop_assert_eq!(left, want);
        }
    }
}
