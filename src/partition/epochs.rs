//! A partition's leader epoch cache: the start offset of every leader epoch
//! in its log, kept in Kafka's `leader-epoch-checkpoint` file. It answers
//! OffsetForLeaderEpoch, tells a leader where a follower's log diverges
//! from its own (KIP-101, KIP-279, KIP-320), and tells a follower where to
//! truncate. Pure; the partition owns it and writes the checkpoint.

use thiserror::Error;

/// Kafka's "no epoch" and "no offset".
pub const UNDEFINED_EPOCH: i32 = -1;
pub const UNDEFINED_OFFSET: i64 = -1;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderEpochCache {
    /// (epoch, start offset), both strictly increasing.
    entries: Vec<(i32, i64)>,
}

#[derive(Debug, Error, PartialEq, Eq)]
#[error("leader-epoch-checkpoint is malformed: {0}")]
pub struct CheckpointError(String);

/// Where a follower's log stops agreeing with the leader's: the largest
/// epoch both have, and where that epoch ends on the leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEnd {
    pub epoch: i32,
    pub end_offset: i64,
}

impl LeaderEpochCache {
    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|(e, _)| *e)
    }

    /// Records that `epoch` starts at `start_offset`. An epoch older than
    /// the latest is ignored; a newer one is appended, dropping entries that
    /// started at or after `start_offset` (they never got a batch).
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> bool {
        if epoch < 0 || self.latest_epoch().is_some_and(|e| e >= epoch) {
            return false;
        }
        while self.entries.last().is_some_and(|(_, s)| *s >= start_offset) {
            self.entries.pop();
        }
        self.entries.push((epoch, start_offset));
        true
    }

    /// Kafka's `endOffsetFor`: the largest epoch <= `requested` and the
    /// offset where it ends (the next epoch's start, or the log end for the
    /// latest epoch).
    pub fn end_offset_for(&self, requested: i32, log_end_offset: i64) -> EpochEnd {
        let undefined = EpochEnd {
            epoch: UNDEFINED_EPOCH,
            end_offset: UNDEFINED_OFFSET,
        };
        if requested == UNDEFINED_EPOCH {
            return undefined;
        }
        if self.latest_epoch() == Some(requested) {
            return EpochEnd {
                epoch: requested,
                end_offset: log_end_offset,
            };
        }
        let higher = self.entries.iter().find(|(e, _)| *e > requested);
        let Some((_, higher_start)) = higher else {
            return undefined;
        };
        let floor = self.entries.iter().rev().find(|(e, _)| *e <= requested);
        EpochEnd {
            epoch: floor.map_or(requested, |(e, _)| *e),
            end_offset: *higher_start,
        }
    }

    /// As leader: where a follower fetching `fetch_offset`, whose last
    /// batch has `last_fetched_epoch`, diverges, if it does.
    pub fn diverging(
        &self,
        fetch_offset: i64,
        last_fetched_epoch: i32,
        log_end_offset: i64,
    ) -> Option<EpochEnd> {
        if last_fetched_epoch < 0 {
            return None;
        }
        let end = self.end_offset_for(last_fetched_epoch, log_end_offset);
        (end.epoch < last_fetched_epoch || end.end_offset < fetch_offset).then_some(end)
    }

    /// As follower told it diverges: the offset to truncate to, and whether
    /// that settles it (otherwise the next fetch asks again from there).
    pub fn truncation_for(&self, leader: EpochEnd, log_end_offset: i64) -> (i64, bool) {
        if leader.end_offset == UNDEFINED_OFFSET {
            return (log_end_offset.min(self.first_offset()), false);
        }
        let ours = self.end_offset_for(leader.epoch, log_end_offset);
        if ours.end_offset == UNDEFINED_OFFSET {
            return (leader.end_offset.min(log_end_offset), true);
        }
        if ours.epoch != leader.epoch {
            return (ours.end_offset.min(log_end_offset), false);
        }
        (
            leader.end_offset.min(ours.end_offset).min(log_end_offset),
            true,
        )
    }

    fn first_offset(&self) -> i64 {
        self.entries.first().map_or(0, |(_, s)| *s)
    }

    /// The log was truncated to `end_offset`: epochs starting there or later go.
    pub fn truncate_from_end(&mut self, end_offset: i64) {
        self.entries.retain(|(_, s)| *s < end_offset);
    }

    /// The log now starts at `start_offset`: earlier epochs go, the one
    /// holding it starts there.
    pub fn truncate_from_start(&mut self, start_offset: i64) {
        let keep_from = self
            .entries
            .iter()
            .rposition(|(_, s)| *s <= start_offset)
            .unwrap_or(0);
        self.entries.drain(..keep_from);
        if let Some(first) = self.entries.first_mut() {
            first.1 = first.1.max(start_offset);
        }
    }

    /// Kafka's checkpoint text: version 0, entry count, "epoch offset" lines.
    pub fn encode(&self) -> String {
        let mut out = format!("0\n{}\n", self.entries.len());
        for (e, s) in &self.entries {
            out.push_str(&format!("{e} {s}\n"));
        }
        out
    }

    pub fn decode(text: &str) -> Result<LeaderEpochCache, CheckpointError> {
        let bad = |m: &str| CheckpointError(m.to_string());
        let mut lines = text.lines();
        if lines.next().map(str::trim) != Some("0") {
            return Err(bad("version is not 0"));
        }
        let count: usize = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| bad("entry count"))?;
        let mut cache = LeaderEpochCache::default();
        for _ in 0..count {
            let line = lines
                .next()
                .ok_or_else(|| bad("fewer entries than counted"))?;
            let mut parts = line.split_whitespace();
            let epoch = parts.next().and_then(|p| p.parse().ok());
            let offset = parts.next().and_then(|p| p.parse().ok());
            let (Some(epoch), Some(offset)) = (epoch, offset) else {
                return Err(bad("entry is not 'epoch offset'"));
            };
            if !cache.assign(epoch, offset) {
                return Err(bad("epochs are not increasing"));
            }
        }
        Ok(cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> LeaderEpochCache {
        let mut c = LeaderEpochCache::default();
        for (e, s) in entries {
            assert!(c.assign(*e, *s));
        }
        c
    }

    #[test]
    fn end_offsets_follow_kafka() {
        let c = cache(&[(1, 0), (3, 10), (4, 25)]);
        assert_eq!(
            c.end_offset_for(4, 40),
            EpochEnd {
                epoch: 4,
                end_offset: 40
            }
        );
        assert_eq!(
            c.end_offset_for(3, 40),
            EpochEnd {
                epoch: 3,
                end_offset: 25
            }
        );
        assert_eq!(
            c.end_offset_for(2, 40),
            EpochEnd {
                epoch: 1,
                end_offset: 10
            }
        );
        assert_eq!(
            c.end_offset_for(0, 40),
            EpochEnd {
                epoch: 0,
                end_offset: 0
            }
        );
        assert_eq!(c.end_offset_for(5, 40).epoch, UNDEFINED_EPOCH);
    }

    #[test]
    fn a_follower_with_an_old_leaders_tail_truncates_it() {
        // Leader: epoch 1 for [0, 10), epoch 3 from 10 on.
        let leader = cache(&[(1, 0), (3, 10)]);
        // The follower took batches of epoch 2 that never committed, up to 14.
        let follower = cache(&[(1, 0), (2, 12)]);
        let div = leader.diverging(14, 2, 30).expect("diverges");
        assert_eq!(
            div,
            EpochEnd {
                epoch: 1,
                end_offset: 10
            }
        );
        let (to, done) = follower.truncation_for(div, 14);
        assert_eq!((to, done), (10, true));
        // A follower in step does not diverge.
        assert_eq!(leader.diverging(20, 3, 30), None);
        assert_eq!(leader.diverging(10, 1, 30), None);
    }

    #[test]
    fn assignment_and_truncation_keep_epochs_increasing() {
        let mut c = cache(&[(1, 0), (2, 5)]);
        assert!(!c.assign(2, 9), "same epoch again");
        assert!(!c.assign(1, 9), "older epoch");
        assert!(
            c.assign(4, 5),
            "a newer epoch at the same start replaces the empty one"
        );
        assert_eq!(c.entries(), &[(1, 0), (4, 5)]);
        c.truncate_from_end(5);
        assert_eq!(c.entries(), &[(1, 0)]);
        let mut c = cache(&[(1, 0), (2, 5), (3, 9)]);
        c.truncate_from_start(7);
        assert_eq!(c.entries(), &[(2, 7), (3, 9)]);
    }

    #[test]
    fn checkpoint_round_trips_in_kafkas_format() {
        let c = cache(&[(0, 0), (2, 120)]);
        assert_eq!(c.encode(), "0\n2\n0 0\n2 120\n");
        assert_eq!(LeaderEpochCache::decode(&c.encode()).unwrap(), c);
        assert!(LeaderEpochCache::decode("0\n2\n0 0\n").is_err());
        assert!(LeaderEpochCache::decode("1\n0\n").is_err());
    }
}
