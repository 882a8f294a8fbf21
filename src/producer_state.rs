//! Idempotent producer state of one partition: per producer id, its epoch and
//! the last five batches' sequence ranges, as Kafka keeps them.
//!
//! Owned by the partition, on its shard. Pure state machine: no I/O; rebuilt
//! on start-up from a snapshot taken when a segment was rolled (Kafka's
//! `<offset>.snapshot` format) and the batch headers the log recovery
//! replays past it.

use std::collections::{HashMap, VecDeque};

use crate::record::BatchHeader;

/// Batches remembered per producer for duplicate detection (Kafka: 5, the
/// most a producer may have in flight with idempotence on).
pub const BATCHES_PER_PRODUCER: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, Default)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchMeta>,
    /// Every remembered batch was cut off by a truncation: the next batch
    /// is taken whatever its sequence, and the history restarts from it.
    resync: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// New data: append it.
    Append,
    /// Already in the log at this base offset: answer success, append nothing.
    Duplicate {
        base_offset: i64,
    },
    OutOfOrder,
    /// The producer's epoch is older than one already seen.
    InvalidEpoch,
}

#[derive(Debug, Default)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
    limit: usize,
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

impl ProducerStates {
    pub fn new(limit: usize) -> ProducerStates {
        ProducerStates {
            producers: HashMap::new(),
            limit,
        }
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Decides what to do with a batch from an idempotent producer.
    pub fn check(&self, h: &BatchHeader) -> SequenceCheck {
        let Some(entry) = self.producers.get(&h.producer_id()) else {
            return if h.base_sequence() == 0 {
                SequenceCheck::Append
            } else {
                SequenceCheck::OutOfOrder
            };
        };
        if h.producer_epoch() < entry.epoch {
            return SequenceCheck::InvalidEpoch;
        }
        if entry.resync {
            return SequenceCheck::Append;
        }
        if h.producer_epoch() > entry.epoch {
            return if h.base_sequence() == 0 {
                SequenceCheck::Append
            } else {
                SequenceCheck::OutOfOrder
            };
        }
        let (first, last) = (h.base_sequence(), h.last_sequence());
        if let Some(b) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == first && b.last_seq == last)
        {
            return SequenceCheck::Duplicate {
                base_offset: b.base_offset,
            };
        }
        match entry.batches.back() {
            Some(prev) if first == next_seq(prev.last_seq) => SequenceCheck::Append,
            None if first == 0 => SequenceCheck::Append,
            _ => SequenceCheck::OutOfOrder,
        }
    }

    /// The log was cut at `offset` (a follower's divergent tail): batches
    /// from there on are forgotten.
    pub fn truncate(&mut self, offset: i64) {
        for entry in self.producers.values_mut() {
            let before = entry.batches.len();
            entry.batches.retain(|b| b.last_offset < offset);
            if entry.batches.is_empty() && before > 0 {
                entry.resync = true;
            }
        }
    }

    /// Records a batch now in the log (appended, or replayed by recovery).
    pub fn record(&mut self, h: &BatchHeader) {
        if h.producer_id() < 0 {
            return;
        }
        if !self.producers.contains_key(&h.producer_id()) && self.producers.len() >= self.limit {
            // Forget an arbitrary producer: it will get OUT_OF_ORDER on a
            // retry, as with Kafka's producer expiration.
            if let Some(victim) = self.producers.keys().next().copied() {
                self.producers.remove(&victim);
            }
        }
        let entry = self.producers.entry(h.producer_id()).or_default();
        entry.resync = false;
        if h.producer_epoch() != entry.epoch {
            entry.epoch = h.producer_epoch();
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_PER_PRODUCER {
            entry.batches.pop_front();
        }
        entry.batches.push_back(BatchMeta {
            first_seq: h.base_sequence(),
            last_seq: h.last_sequence(),
            base_offset: h.base_offset(),
            last_offset: h.last_offset(),
        });
    }
}

/// Kafka's producer snapshot file version.
const SNAPSHOT_VERSION: i16 = 1;
/// Version and CRC before the entries.
const SNAPSHOT_HEADER_BYTES: usize = 6;
/// One entry: producer id, epoch, last sequence, last offset, offset delta,
/// timestamp, coordinator epoch, current transaction's first offset.
const SNAPSHOT_ENTRY_BYTES: usize = 8 + 2 + 4 + 8 + 4 + 8 + 4 + 8;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("producer snapshot is malformed: {0}")]
pub struct SnapshotError(&'static str);

/// Kafka's producer snapshot file name for the state at `offset`.
pub fn snapshot_file_name(offset: i64) -> String {
    format!("{offset:020}.snapshot")
}

impl ProducerStates {
    /// The state in Kafka's producer snapshot format (version 1, CRC32C of
    /// the entries): one entry per remembered batch, oldest first, so the
    /// five batches of a producer survive; a producer whose batches a
    /// truncation forgot is one entry without a batch (last offset -1).
    pub fn encode_snapshot(&self) -> Vec<u8> {
        let mut entries: Vec<(i64, &ProducerEntry)> =
            self.producers.iter().map(|(id, e)| (*id, e)).collect();
        entries.sort_by_key(|(id, _)| *id);
        let count: usize = entries.iter().map(|(_, e)| e.batches.len().max(1)).sum();
        let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + 4 + count * SNAPSHOT_ENTRY_BYTES);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&(count as i32).to_be_bytes());
        let mut put = |id: i64, epoch: i16, last_seq: i32, last_offset: i64, delta: i32| {
            out.extend_from_slice(&id.to_be_bytes());
            out.extend_from_slice(&epoch.to_be_bytes());
            out.extend_from_slice(&last_seq.to_be_bytes());
            out.extend_from_slice(&last_offset.to_be_bytes());
            out.extend_from_slice(&delta.to_be_bytes());
            out.extend_from_slice(&(-1i64).to_be_bytes()); // timestamp: not kept
            out.extend_from_slice(&(-1i32).to_be_bytes()); // no transactions yet
            out.extend_from_slice(&(-1i64).to_be_bytes());
        };
        for (id, e) in entries {
            if e.batches.is_empty() {
                put(id, e.epoch, -1, -1, 0);
            }
            for b in &e.batches {
                let delta = (b.last_offset - b.base_offset) as i32;
                put(id, e.epoch, b.last_seq, b.last_offset, delta);
            }
        }
        let crc = crc32c::crc32c(&out[SNAPSHOT_HEADER_BYTES..]);
        out[2..6].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// Reads a snapshot written by `encode_snapshot`; anything else
    /// (another version, a bad CRC, a torn file) is refused.
    pub fn decode_snapshot(bytes: &[u8], limit: usize) -> Result<ProducerStates, SnapshotError> {
        let be = |b: &[u8]| -> u64 { b.iter().fold(0u64, |a, x| (a << 8) | *x as u64) };
        if bytes.len() < SNAPSHOT_HEADER_BYTES + 4 {
            return Err(SnapshotError("shorter than its header"));
        }
        if be(&bytes[0..2]) as i16 != SNAPSHOT_VERSION {
            return Err(SnapshotError("unknown version"));
        }
        if be(&bytes[2..6]) as u32 != crc32c::crc32c(&bytes[SNAPSHOT_HEADER_BYTES..]) {
            return Err(SnapshotError("CRC mismatch"));
        }
        let count = be(&bytes[6..10]) as i32;
        let body = &bytes[10..];
        if count < 0 || body.len() != count as usize * SNAPSHOT_ENTRY_BYTES {
            return Err(SnapshotError("entry count does not match the length"));
        }
        let mut states = ProducerStates::new(limit);
        for e in body.chunks_exact(SNAPSHOT_ENTRY_BYTES) {
            let id = be(&e[0..8]) as i64;
            let epoch = be(&e[8..10]) as i16;
            let last_seq = be(&e[10..14]) as i32;
            let last_offset = be(&e[14..22]) as i64;
            let delta = be(&e[22..26]) as i32;
            if id < 0 || delta < 0 {
                return Err(SnapshotError("negative producer id or offset delta"));
            }
            if states.producers.len() >= limit && !states.producers.contains_key(&id) {
                continue;
            }
            let entry = states.producers.entry(id).or_default();
            if entry.epoch != epoch {
                entry.epoch = epoch;
                entry.batches.clear();
            }
            if last_offset < 0 {
                entry.resync = true;
                continue;
            }
            if entry.batches.len() == BATCHES_PER_PRODUCER {
                entry.batches.pop_front();
            }
            let first_seq = last_seq.wrapping_sub(delta);
            entry.batches.push_back(BatchMeta {
                first_seq: if first_seq < 0 {
                    first_seq.wrapping_add(i32::MAX).wrapping_add(1)
                } else {
                    first_seq
                },
                last_seq,
                base_offset: last_offset - delta as i64,
                last_offset,
            });
        }
        Ok(states)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::make_batch;
    use kafka_protocol::records::Compression;

    fn batch(pid: i64, epoch: i16, seq: i32, n: usize, base_offset: i64) -> Vec<u8> {
        let mut b = make_batch(n, Compression::None, 0).to_vec();
        b[43..51].copy_from_slice(&pid.to_be_bytes());
        b[51..53].copy_from_slice(&epoch.to_be_bytes());
        b[53..57].copy_from_slice(&seq.to_be_bytes());
        b[0..8].copy_from_slice(&base_offset.to_be_bytes());
        b
    }

    #[test]
    fn in_order_appends_then_duplicate_then_gap() {
        let mut s = ProducerStates::new(10);
        let b0 = batch(7, 0, 0, 3, 0);
        let h0 = BatchHeader::parse(&b0).unwrap();
        assert_eq!(s.check(&h0), SequenceCheck::Append);
        s.record(&h0);
        let b1 = batch(7, 0, 3, 2, 3);
        let h1 = BatchHeader::parse(&b1).unwrap();
        assert_eq!(s.check(&h1), SequenceCheck::Append);
        s.record(&h1);
        assert_eq!(s.check(&h0), SequenceCheck::Duplicate { base_offset: 0 });
        let gap = batch(7, 0, 9, 1, 0);
        assert_eq!(
            s.check(&BatchHeader::parse(&gap).unwrap()),
            SequenceCheck::OutOfOrder
        );
    }

    #[test]
    fn epochs_fence_and_reset() {
        let mut s = ProducerStates::new(10);
        let b = batch(1, 3, 0, 1, 0);
        s.record(&BatchHeader::parse(&b).unwrap());
        let old = batch(1, 2, 1, 1, 0);
        assert_eq!(
            s.check(&BatchHeader::parse(&old).unwrap()),
            SequenceCheck::InvalidEpoch
        );
        let newer = batch(1, 4, 0, 1, 0);
        assert_eq!(
            s.check(&BatchHeader::parse(&newer).unwrap()),
            SequenceCheck::Append
        );
        let newer_gap = batch(1, 4, 5, 1, 0);
        assert_eq!(
            s.check(&BatchHeader::parse(&newer_gap).unwrap()),
            SequenceCheck::OutOfOrder
        );
        let unknown = batch(99, 0, 4, 1, 0);
        assert_eq!(
            s.check(&BatchHeader::parse(&unknown).unwrap()),
            SequenceCheck::OutOfOrder
        );
    }

    #[test]
    fn snapshot_round_trips_every_remembered_batch() {
        let mut s = ProducerStates::new(10);
        for i in 0..7 {
            let b = batch(5, 2, i * 3, 3, 100 + i as i64 * 3);
            s.record(&BatchHeader::parse(&b).unwrap());
        }
        let b = batch(9, 0, 0, 1, 200);
        s.record(&BatchHeader::parse(&b).unwrap());
        let b = batch(11, 4, 0, 2, 300);
        s.record(&BatchHeader::parse(&b).unwrap());
        s.truncate(300);
        let bytes = s.encode_snapshot();
        assert_eq!(bytes.len(), 10 + (5 + 1 + 1) * SNAPSHOT_ENTRY_BYTES);
        let back = ProducerStates::decode_snapshot(&bytes, 10).unwrap();
        assert_eq!(back.len(), 3);
        for pid in [5, 9, 11] {
            let (a, b) = (&s.producers[&pid], &back.producers[&pid]);
            assert_eq!(
                (a.epoch, a.resync, &a.batches),
                (b.epoch, b.resync, &b.batches)
            );
        }
        // A retry of a remembered batch is still a duplicate after the reload.
        let retry = batch(5, 2, 18, 3, 0);
        assert_eq!(
            back.check(&BatchHeader::parse(&retry).unwrap()),
            SequenceCheck::Duplicate { base_offset: 118 }
        );
        let mut torn = bytes.clone();
        torn.truncate(bytes.len() - 1);
        assert!(ProducerStates::decode_snapshot(&torn, 10).is_err());
        let mut flipped = bytes.clone();
        flipped[20] ^= 1;
        assert!(ProducerStates::decode_snapshot(&flipped, 10).is_err());
        assert!(ProducerStates::decode_snapshot(&[], 10).is_err());
    }

    #[test]
    fn only_last_five_batches_are_remembered() {
        let mut s = ProducerStates::new(10);
        for i in 0..7 {
            let b = batch(5, 0, i, 1, i as i64);
            s.record(&BatchHeader::parse(&b).unwrap());
        }
        let first = batch(5, 0, 0, 1, 0);
        assert_eq!(
            s.check(&BatchHeader::parse(&first).unwrap()),
            SequenceCheck::OutOfOrder
        );
        let recent = batch(5, 0, 6, 1, 0);
        assert_eq!(
            s.check(&BatchHeader::parse(&recent).unwrap()),
            SequenceCheck::Duplicate { base_offset: 6 }
        );
    }
}
