//! Idempotent producer state of one partition: per producer id, its epoch and
//! the last five batches' sequence ranges, as Kafka keeps them.
//!
//! Owned by the partition, on its shard. Pure state machine: no I/O; rebuilt
//! on start-up from the batch headers the log recovery replays.

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
