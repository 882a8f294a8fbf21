//! The consumer lag evaluator: per (group, topic, partition) a window of the
//! last `window_samples` samples of (committed offset, log end offset, time),
//! and a status per partition and per group on Burrow's model. No I/O, time
//! passed in; the sampler (sampler.rs) feeds it, whoever owns it (the
//! broker's lag monitor thread or the `groups lag` command) asks it.
//!
//! Burrow reads every commit from `__consumer_offsets`; a sampler only sees
//! the committed offset each time it asks (OffsetFetch). So a window holds
//! one sample per round, a sample's commit time is when its committed offset
//! was first seen, and whether the group is still consuming a partition
//! (a live member owns it in the assignment) tells a consumer that commits
//! the same offset over and over (STALL) from one that stopped (STOP).
//! The rules, in Burrow's order, for a window s_0..s_n-1 (oldest first):
//!
//! 1. OK when the current lag is 0, or the lag was 0 in any sample: the
//!    consumer caught up within the window.
//! 2. REWIND when a committed offset is below the one before it.
//! 3. STOP when no live member owns the partition and the time since the
//!    last commit is longer than the commits in the window span
//!    (now - commit(s_n-1) > commit(s_n-1) - commit(s_0)).
//! 4. STALL when every committed offset in the window is the same.
//! 5. WARN when the offsets move but the lag never decreases.
//! 6. OK otherwise.
//!
//! Rules 3-5 compare samples, so they need at least two. The group's status
//! is its worst partition's, with STOP, STALL and REWIND reported as ERR;
//! `complete` is the share of partitions whose window is full.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;
use thiserror::Error;

use crate::config::LagConfig;

/// Burrow's status words, in its order of severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Status {
    #[serde(rename = "NOTFOUND")]
    NotFound,
    #[serde(rename = "OK")]
    Ok,
    #[serde(rename = "WARN")]
    Warn,
    #[serde(rename = "ERR")]
    Err,
    #[serde(rename = "STOP")]
    Stop,
    #[serde(rename = "STALL")]
    Stall,
    #[serde(rename = "REWIND")]
    Rewind,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::NotFound => "NOTFOUND",
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Err => "ERR",
            Status::Stop => "STOP",
            Status::Stall => "STALL",
            Status::Rewind => "REWIND",
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LagError {
    #[error("group {group} not tracked: lag.max_groups ({limit}) groups are tracked already")]
    TooManyGroups { group: String, limit: usize },
    #[error("partitions of group {group} not tracked: lag.max_partitions ({limit}) reached")]
    TooManyPartitions { group: String, limit: usize },
}

/// The member owning a partition, as DescribeGroups names it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Owner {
    pub client_host: String,
    pub client_id: String,
}

/// What one sampling round saw of one partition of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub topic: String,
    pub partition: i32,
    pub committed_offset: i64,
    pub log_end_offset: i64,
    /// A live member owns the partition in the group's assignment.
    pub owner: Option<Owner>,
}

/// One sample of a partition's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Sample {
    #[serde(rename = "offset")]
    pub committed_offset: i64,
    /// When this committed offset was first seen (Burrow: the commit's time).
    #[serde(rename = "timestamp")]
    pub commit_timestamp_ms: i64,
    #[serde(rename = "observedAt")]
    pub observed_at_ms: i64,
    /// Log end offset minus committed offset when sampled, at least 0.
    pub lag: i64,
}

struct PartitionWindow {
    samples: VecDeque<Sample>,
    owner: Option<Owner>,
}

#[derive(Default)]
struct GroupWindows {
    partitions: BTreeMap<(String, i32), PartitionWindow>,
}

/// A partition's evaluation, in Burrow's JSON shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// The owning member's host ("" when none).
    pub owner: String,
    pub client_id: String,
    pub status: Status,
    pub start: Option<Sample>,
    pub end: Option<Sample>,
    pub current_lag: i64,
    pub complete: f32,
}

/// A group's evaluation, in Burrow's JSON shape.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupStatus {
    pub cluster: String,
    pub group: String,
    pub status: Status,
    pub complete: f32,
    pub partitions: Vec<PartitionStatus>,
    pub partition_count: usize,
    pub maxlag: Option<PartitionStatus>,
    pub totallag: u64,
}

/// Windows of every tracked group; bounded by `LagConfig`'s limits.
pub struct LagEvaluator {
    limits: LagConfig,
    groups: BTreeMap<String, GroupWindows>,
    partition_count: usize,
}

impl LagEvaluator {
    pub fn new(limits: LagConfig) -> LagEvaluator {
        LagEvaluator {
            limits,
            groups: BTreeMap::new(),
            partition_count: 0,
        }
    }

    pub fn window_samples(&self) -> usize {
        self.limits.window_samples
    }

    /// Takes one round's observations of `group`: each partition's window
    /// gets a sample; partitions the round did not see (their offsets were
    /// deleted) are forgotten.
    pub fn observe_group(
        &mut self,
        group: &str,
        observations: &[Observation],
        now_ms: i64,
    ) -> Result<(), LagError> {
        if !self.groups.contains_key(group) && self.groups.len() >= self.limits.max_groups {
            return Err(LagError::TooManyGroups {
                group: group.to_string(),
                limit: self.limits.max_groups,
            });
        }
        let window_samples = self.limits.window_samples;
        let windows = self.groups.entry(group.to_string()).or_default();
        let before = windows.partitions.len();
        windows.partitions.retain(|(t, p), _| {
            observations
                .iter()
                .any(|o| o.partition == *p && o.topic == *t)
        });
        self.partition_count -= before - windows.partitions.len();
        let mut refused = false;
        for o in observations {
            let key = (o.topic.clone(), o.partition);
            if !windows.partitions.contains_key(&key) {
                if self.partition_count >= self.limits.max_partitions {
                    refused = true;
                    continue;
                }
                self.partition_count += 1;
            }
            let window = windows
                .partitions
                .entry(key)
                .or_insert_with(|| PartitionWindow {
                    samples: VecDeque::with_capacity(window_samples),
                    owner: None,
                });
            window.push(o, now_ms, window_samples);
        }
        if refused {
            return Err(LagError::TooManyPartitions {
                group: group.to_string(),
                limit: self.limits.max_partitions,
            });
        }
        Ok(())
    }

    /// Forgets every group for which `keep` is false (groups deleted or
    /// expired on the cluster).
    pub fn retain_groups(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let mut dropped = 0;
        self.groups.retain(|g, w| {
            let k = keep(g);
            if !k {
                dropped += w.partitions.len();
            }
            k
        });
        self.partition_count -= dropped;
    }

    /// Tracked groups, sorted.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(String::as_str)
    }

    pub fn contains(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// `group`'s status at `now_ms`; None when the group is not tracked.
    pub fn evaluate(&self, cluster: &str, group: &str, now_ms: i64) -> Option<GroupStatus> {
        let windows = self.groups.get(group)?;
        let window_samples = self.limits.window_samples;
        let partitions: Vec<PartitionStatus> = windows
            .partitions
            .iter()
            .map(|((topic, partition), w)| w.evaluate(topic, *partition, window_samples, now_ms))
            .collect();
        Some(group_status(cluster, group, partitions))
    }
}

impl PartitionWindow {
    fn push(&mut self, o: &Observation, now_ms: i64, window_samples: usize) {
        let commit_timestamp_ms = match self.samples.back() {
            Some(last) if last.committed_offset == o.committed_offset => last.commit_timestamp_ms,
            _ => now_ms,
        };
        if self.samples.len() == window_samples {
            self.samples.pop_front();
        }
        self.samples.push_back(Sample {
            committed_offset: o.committed_offset,
            commit_timestamp_ms,
            observed_at_ms: now_ms,
            lag: (o.log_end_offset - o.committed_offset).max(0),
        });
        self.owner = o.owner.clone();
    }

    fn evaluate(
        &self,
        topic: &str,
        partition: i32,
        window_samples: usize,
        now_ms: i64,
    ) -> PartitionStatus {
        let samples: Vec<Sample> = self.samples.iter().copied().collect();
        let owner = self.owner.clone().unwrap_or_default();
        PartitionStatus {
            topic: topic.to_string(),
            partition,
            owner: owner.client_host,
            client_id: owner.client_id,
            status: partition_status(&samples, self.owner.is_some(), now_ms),
            start: samples.first().copied(),
            end: samples.last().copied(),
            current_lag: samples.last().map_or(0, |s| s.lag),
            complete: samples.len() as f32 / window_samples.max(1) as f32,
        }
    }
}

/// Burrow's rules over one partition's window (see the module header).
pub fn partition_status(samples: &[Sample], consuming: bool, now_ms: i64) -> Status {
    let Some(last) = samples.last() else {
        return Status::Ok;
    };
    if last.lag == 0 || samples.iter().any(|s| s.lag == 0) {
        return Status::Ok;
    }
    let pairs = || samples.windows(2).map(|w| (w[0], w[1]));
    if pairs().any(|(a, b)| b.committed_offset < a.committed_offset) {
        return Status::Rewind;
    }
    if samples.len() < 2 {
        return Status::Ok;
    }
    let first = samples[0];
    let committing_span_ms = last.commit_timestamp_ms - first.commit_timestamp_ms;
    if !consuming && now_ms - last.commit_timestamp_ms > committing_span_ms {
        return Status::Stop;
    }
    if pairs().all(|(a, b)| a.committed_offset == b.committed_offset) {
        return Status::Stall;
    }
    if pairs().all(|(a, b)| b.lag >= a.lag) {
        return Status::Warn;
    }
    Status::Ok
}

fn group_status(cluster: &str, group: &str, partitions: Vec<PartitionStatus>) -> GroupStatus {
    let mut status = Status::Ok;
    let mut maxlag: Option<&PartitionStatus> = None;
    let mut totallag = 0u64;
    let mut complete_partitions = 0usize;
    for p in &partitions {
        status = status.max(p.status.min(Status::Err));
        if maxlag.is_none_or(|m| p.current_lag > m.current_lag) {
            maxlag = Some(p);
        }
        totallag += p.current_lag.max(0) as u64;
        if p.complete >= 1.0 {
            complete_partitions += 1;
        }
    }
    let complete = if partitions.is_empty() {
        1.0
    } else {
        complete_partitions as f32 / partitions.len() as f32
    };
    GroupStatus {
        cluster: cluster.to_string(),
        group: group.to_string(),
        status,
        complete,
        maxlag: maxlag.cloned(),
        partition_count: partitions.len(),
        partitions,
        totallag,
    }
}

#[cfg(test)]
mod tests;
