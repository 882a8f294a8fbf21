//! Gathers what a scrape reports from every shard over the shard mesh: each
//! shard copies its own counters and describes its partitions and groups
//! (plain data, sent back to the scraping shard); shard 0 adds this node's
//! cluster standing.
//!
//! The closures run on each shard between its other tasks; nothing here
//! holds a borrow across an await.

use std::rc::Rc;
use std::time::Instant;

use crate::cluster::image::MetadataImage;
use crate::cluster::records::NodeId;
use crate::shard::Shard;

/// One partition replica on this broker.
#[derive(Clone, Debug)]
pub struct PartitionView {
    pub topic: String,
    pub partition: i32,
    pub leader: bool,
    pub log_end_offset: i64,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub size_bytes: u64,
    pub replicas: usize,
    pub in_sync_replicas: usize,
    /// As leader: (follower, offsets behind the log end).
    pub follower_lags: Vec<(NodeId, i64)>,
}

/// One consumer group coordinated on this shard.
#[derive(Clone, Debug)]
pub struct GroupView {
    pub group: String,
    pub state: &'static str,
    pub members: usize,
    /// (topic, partition, committed offset).
    pub offsets: Vec<(String, i32, i64)>,
}

/// What one shard reports.
#[derive(Clone, Debug, Default)]
pub struct ShardView {
    pub shard: usize,
    pub counters: crate::metrics::Snapshot,
    pub busy_seconds: f64,
    pub busy_ratio: f64,
    pub requests_in_flight: usize,
    pub cache_bytes: usize,
    pub cache_limit_bytes: usize,
    pub partitions: Vec<PartitionView>,
    pub groups: Vec<GroupView>,
    /// Partitions answering KAFKA_STORAGE_ERROR (corrupt or poisoned).
    pub storage_offline_partitions: usize,
}

/// This node's standing in the cluster (from shard 0).
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub active_controller: bool,
    /// As active controller: partitions without a leader.
    pub offline_partitions: usize,
    /// The data directory's file system at the last check (statvfs every
    /// disk_check_interval_ms); total 0 before the first.
    pub disk_free_bytes: u64,
    pub disk_total_bytes: u64,
}

/// Everything one scrape reports.
#[derive(Clone, Debug, Default)]
pub struct Gathered {
    pub shards: Vec<ShardView>,
    pub cluster: ClusterView,
}

/// Asks every shard for its view, and shard 0 for the cluster's.
pub async fn gather(shard: &Rc<Shard>) -> Gathered {
    let asks = (0..shard.count)
        .map(|s| shard.invoke_on(s, |target: Rc<Shard>| async move { shard_view(&target) }));
    let shards = futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect();
    let cluster = shard
        .invoke_on(0, |s: Rc<Shard>| async move { cluster_view(&s) })
        .await
        .unwrap_or_default();
    Gathered { shards, cluster }
}

/// Runs on `shard`: copies its counters and describes its partitions and
/// groups.
fn shard_view(shard: &Rc<Shard>) -> ShardView {
    let image = shard.image();
    crate::metrics::forget_topics_except(|t| image.topic(t).is_some());
    let ran = glommio::executor().executor_stats().executor_runtime();
    let (busy_seconds, busy_ratio) = crate::metrics::sample_busy(ran, Instant::now());
    ShardView {
        shard: shard.id,
        counters: crate::metrics::snapshot(),
        busy_seconds,
        busy_ratio,
        requests_in_flight: shard.in_flight.get(),
        cache_bytes: shard.budget.used_bytes(),
        cache_limit_bytes: shard.budget.limit_bytes(),
        partitions: shard
            .local_partitions()
            .iter()
            .map(|p| {
                let (replicas, in_sync_replicas, follower_lags) = p.replication_view();
                PartitionView {
                    topic: p.topic.clone(),
                    partition: p.index,
                    leader: p.is_leader(),
                    log_end_offset: p.log_end_offset(),
                    high_watermark: p.high_watermark(),
                    log_start_offset: p.log_start_offset(),
                    size_bytes: p.size_bytes(),
                    replicas,
                    in_sync_replicas,
                    follower_lags,
                }
            })
            .collect(),
        groups: group_views(shard),
        storage_offline_partitions: shard.offline_partitions().len(),
    }
}

fn group_views(shard: &Shard) -> Vec<GroupView> {
    shard
        .groups
        .groups
        .borrow()
        .values()
        .map(|g| GroupView {
            group: g.id.clone(),
            state: g.state.name(),
            members: g.members.len(),
            offsets: g
                .offsets
                .iter()
                .map(|((t, p), o)| (t.clone(), *p, o.offset))
                .collect(),
        })
        .collect()
}

/// Runs on shard 0.
fn cluster_view(shard: &Shard) -> ClusterView {
    let disk = ClusterView {
        disk_free_bytes: shard.space.free_bytes(),
        disk_total_bytes: shard.space.total_bytes(),
        ..ClusterView::default()
    };
    let Some(cluster) = shard.cluster_if_started() else {
        return disk;
    };
    let active_controller = cluster.is_active_controller();
    let offline_partitions = if active_controller {
        offline_partitions(&shard.image())
    } else {
        0
    };
    ClusterView {
        active_controller,
        offline_partitions,
        ..disk
    }
}

/// Partitions without a leader in `image`.
pub fn offline_partitions(image: &MetadataImage) -> usize {
    image
        .topics
        .values()
        .flat_map(|t| t.partitions.iter())
        .filter(|p| MetadataImage::is_offline(p))
        .count()
}
