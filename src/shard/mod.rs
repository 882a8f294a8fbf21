//! A shard: one pinned glommio executor owning a subset of partitions, its
//! copy of the metadata image, its flusher, its follower fetch loops and its
//! end of the shard mesh. Shard 0 also runs this node's cluster service
//! (controller quorum member, active controller, broker registration).
//!
//! Each shard's state is touched only by its own thread. Work for another
//! shard's partitions travels as a closure over the mesh (`invoke_on`), runs
//! there, and its result comes back on a oneshot channel.
//!
//! Each shard also owns a free-space guard for the data directory, refreshed
//! by its disk watcher, which also retries the writes of its partitions that
//! met a full file system.
//!
//! Memory limits per shard (its share of the broker-wide budgets, the frame
//! pool) are in [`budget`].

mod budget;
pub mod placement;

pub use budget::{buffer_class_size, Budget, BufferPool, Grant};

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use kafka_protocol::ResponseError;
use thiserror::Error;

use crate::cluster::controller::{ControllerError, ControllerReply, ControllerRequest};
use crate::cluster::image::{MetadataImage, TopicImage};
use crate::cluster::owner_shard;
use crate::cluster::records::NodeId;
use crate::cluster::service::ClusterService;
use crate::config::{Config, FlushPolicy};
use crate::log::checkpoint::{CheckpointEntry, Checkpoints};
use crate::log::space::{SpaceGuard, SpaceLimits};
use crate::log::LogConfig;
use crate::partition::{CacheBudget, Partition};

/// Messages queued between any two shards before senders wait.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;

/// Work sent to another shard: runs there with that shard's state.
pub type Job = Box<dyn FnOnce(Rc<Shard>) + Send>;

#[derive(Debug, Error)]
#[error("shard {0} is gone (shutting down)")]
pub struct ShardGone(pub usize);

pub type PartitionKey = (String, i32);

mod metadata;

pub use metadata::{now_ms, wall_clock_ms};

pub struct Shard {
    pub id: usize,
    pub count: usize,
    pub config: Rc<Config>,
    /// This broker's node id and the id of this process's registration.
    pub node_id: NodeId,
    pub incarnation_id: uuid::Uuid,
    image: RefCell<Arc<MetadataImage>>,
    partitions: RefCell<HashMap<PartitionKey, Rc<Partition>>>,
    senders: Senders<Job>,
    pub budget: Rc<CacheBudget>,
    dirty: RefCell<Vec<Rc<Partition>>>,
    doorbell: LocalSender<()>,
    doorbell_rx: RefCell<Option<LocalReceiver<()>>>,
    /// Shard 0 only: this node's cluster service.
    cluster: RefCell<Option<Rc<ClusterService>>>,
    /// Follower fetch loops of this shard, one per leader broker.
    pub fetchers: RefCell<HashMap<NodeId, Rc<crate::replication::Fetcher>>>,
    /// Partitions this shard owns but does not serve: fenced at recovery
    /// (corrupt sealed segment) or not opened after an I/O error. Answered
    /// with KAFKA_STORAGE_ERROR, as poisoned ones are.
    offline: RefCell<HashSet<PartitionKey>>,
    /// Free space of the data directory's file system, as this shard sees it.
    pub space: Rc<SpaceGuard>,
    pub in_flight: Cell<usize>,
    /// Bytes of request frames read and not yet handled (this shard's share
    /// of `queued_max_request_bytes`).
    pub request_budget: Rc<Budget>,
    /// Bytes of fetch responses of this shard's connections being read or
    /// written (its share of `max_in_flight_fetch_bytes`).
    pub fetch_budget: Rc<Budget>,
    /// Idle frame buffers for reuse by this shard's connections.
    pub frame_pool: Rc<BufferPool>,
    pub shutting_down: Cell<bool>,
    /// What the data directory's offset checkpoints said at start-up of
    /// this shard's partitions, each entry taken by its partition's first
    /// opening.
    checkpoints: RefCell<Checkpoints>,
    /// Shard 0: one writer of the checkpoint files at a time.
    checkpoint_lock: glommio::sync::Semaphore,
    /// Coordinator of the groups whose `__consumer_offsets` partitions live here.
    pub groups: crate::group::GroupCoordinator,
}

impl Shard {
    pub fn new(
        id: usize,
        count: usize,
        config: Rc<Config>,
        incarnation_id: uuid::Uuid,
        senders: Senders<Job>,
    ) -> Rc<Shard> {
        let (doorbell, rx) = local_channel::new_bounded(1);
        let budget = CacheBudget::new(config.batch_cache_bytes_per_shard(count));
        let request_budget = Budget::new(config.request_bytes_per_shard(count));
        let fetch_budget = Budget::new(config.fetch_bytes_per_shard(count));
        let frame_pool = Rc::new(BufferPool::new(
            config.frame_pool_bytes,
            crate::config::FRAME_POOL_MAX_BUFFER_BYTES,
        ));
        let groups = crate::group::GroupCoordinator::new(crate::group::GroupConfig {
            min_session_timeout_ms: config.group_min_session_timeout_ms,
            max_session_timeout_ms: config.group_max_session_timeout_ms,
            initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms,
        });
        let space = Rc::new(SpaceGuard::new(
            &config.data_dir,
            SpaceLimits {
                min_free_bytes: config.min_free_bytes,
                min_free_percent: config.min_free_percent,
            },
            count,
        ));
        let mut checkpoints = Checkpoints::load(&config.data_dir);
        checkpoints.retain(|t, p| owner_shard(t, p, count) == id);
        Rc::new(Shard {
            id,
            count,
            checkpoints: RefCell::new(checkpoints),
            checkpoint_lock: glommio::sync::Semaphore::new(1),
            groups,
            space,
            node_id: config.node_id,
            incarnation_id,
            config,
            image: RefCell::new(Arc::new(MetadataImage::default())),
            cluster: RefCell::new(None),
            fetchers: RefCell::new(HashMap::new()),
            partitions: RefCell::new(HashMap::new()),
            senders,
            budget,
            dirty: RefCell::new(Vec::new()),
            doorbell,
            doorbell_rx: RefCell::new(Some(rx)),
            offline: RefCell::new(HashSet::new()),
            in_flight: Cell::new(0),
            request_budget,
            fetch_budget,
            frame_pool,
            shutting_down: Cell::new(false),
        })
    }

    /// The latest metadata image this shard applied.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    /// Shard 0: attaches the cluster service.
    pub fn set_cluster(&self, cluster: Rc<ClusterService>) {
        *self.cluster.borrow_mut() = Some(cluster);
    }

    /// The cluster service on shard 0 once it has started; None before and
    /// on the other shards.
    pub fn cluster_if_started(&self) -> Option<Rc<ClusterService>> {
        self.cluster.borrow().clone()
    }

    /// The cluster service; only on shard 0.
    pub fn cluster(&self) -> Rc<ClusterService> {
        self.cluster
            .borrow()
            .clone()
            .expect("the cluster service runs on shard 0")
    }

    /// Asks the active controller (through this node's cluster service).
    pub async fn controller_call(
        self: &Rc<Self>,
        req: ControllerRequest,
    ) -> Result<ControllerReply, ControllerError> {
        self.invoke_on(
            0,
            move |s: Rc<Shard>| async move { s.cluster().call(req).await },
        )
        .await
        .unwrap_or(Err(ControllerError::NotController))
    }

    pub fn owner(&self, topic: &str, partition: i32) -> usize {
        owner_shard(topic, partition, self.count)
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<Rc<Partition>> {
        self.partitions
            .borrow()
            .get(&(topic.to_string(), partition))
            .cloned()
    }

    /// The error for a partition this shard should own but does not serve:
    /// offline (fenced after corruption, or not opened), or unknown.
    pub fn missing_partition_error(&self, topic: &str, partition: i32) -> ResponseError {
        if self
            .offline
            .borrow()
            .contains(&(topic.to_string(), partition))
        {
            ResponseError::KafkaStorageError
        } else if self.image().partition(topic, partition).is_some() {
            // It exists, on other brokers: the client's metadata is stale.
            ResponseError::NotLeaderOrFollower
        } else {
            ResponseError::UnknownTopicOrPartition
        }
    }

    /// The partition if this shard serves it; KAFKA_STORAGE_ERROR when it is
    /// offline or poisoned (what Kafka answers for a partition on an offline
    /// log directory), UNKNOWN_TOPIC_OR_PARTITION when this shard has none.
    pub fn serving_partition(
        &self,
        topic: &str,
        partition: i32,
    ) -> Result<Rc<Partition>, ResponseError> {
        match self.partition(topic, partition) {
            Some(p) if p.is_poisoned() => Err(ResponseError::KafkaStorageError),
            Some(p) => Ok(p),
            None => Err(self.missing_partition_error(topic, partition)),
        }
    }

    /// This shard's partitions that answer KAFKA_STORAGE_ERROR: offline or
    /// poisoned.
    pub fn offline_partitions(&self) -> Vec<PartitionKey> {
        let mut out: Vec<PartitionKey> = self.offline.borrow().iter().cloned().collect();
        out.extend(
            self.partitions
                .borrow()
                .iter()
                .filter(|(_, p)| p.is_poisoned())
                .map(|(k, _)| k.clone()),
        );
        out
    }

    pub fn local_partitions(&self) -> Vec<Rc<Partition>> {
        self.partitions.borrow().values().cloned().collect()
    }

    fn log_config(&self, topic: &TopicImage) -> LogConfig {
        let t = crate::cluster::topic_config::TopicConfig::resolve_with(
            &topic.configs,
            &self.config,
            &self.image().dynamic_broker_configs(self.node_id),
        );
        LogConfig {
            segment_bytes: t.segment_bytes,
            index_interval_bytes: t.index_interval_bytes,
            write_buffer_bytes: self.config.write_buffer_bytes,
            // Recovery and followers take any batch the broker's limit
            // allows; a topic's max.message.bytes applies to produce.
            max_batch_bytes: self.config.max_message_bytes,
            max_decompressed_batch_bytes: self.config.max_decompressed_batch_bytes,
            preallocate: t.preallocate,
            segment_index_bytes: t.segment_index_bytes,
        }
    }

    /// Every `disk_check_interval_ms`: one statvfs for the space guard (so
    /// produce resumes by itself once space returns), and a retry of every
    /// write of this shard's partitions that met a full file system.
    pub fn start_disk_watcher(self: &Rc<Self>) {
        let shard = self.clone();
        glommio::spawn_local(async move {
            let interval = Duration::from_millis(shard.config.disk_check_interval_ms);
            let (mut was_full, mut was_failing) = (false, false);
            loop {
                glommio::timer::sleep(interval).await;
                let refreshed = shard.space.refresh();
                if let Err(e) = &refreshed {
                    if !was_failing {
                        tracing::warn!(shard = shard.id, error = %e, "statvfs of the data directory fails; keeping the last figure");
                    }
                }
                was_failing = refreshed.is_err();
                let stalled: Vec<Rc<Partition>> = shard
                    .local_partitions()
                    .into_iter()
                    .filter(|p| p.is_stalled())
                    .collect();
                for p in stalled {
                    let _ = p.write_out(true).await;
                }
                let full = shard.space.is_full();
                if full != was_full {
                    let (free, threshold) =
                        (shard.space.free_bytes(), shard.space.threshold_bytes());
                    if full {
                        tracing::warn!(
                            shard = shard.id,
                            free_bytes = free,
                            threshold_bytes = threshold,
                            "data directory below its free-space threshold; produce refused"
                        );
                    } else {
                        tracing::info!(
                            shard = shard.id,
                            free_bytes = free,
                            threshold_bytes = threshold,
                            "free space is back; produce resumes"
                        );
                    }
                    was_full = full;
                }
            }
        })
        .detach();
    }

    /// Runs `f` on shard `target` and returns its result.
    pub async fn invoke_on<T, F, Fut>(self: &Rc<Self>, target: usize, f: F) -> Result<T, ShardGone>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Shard>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
    {
        if target == self.id {
            return Ok(f(self.clone()).await);
        }
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |shard: Rc<Shard>| {
            glommio::spawn_local(async move {
                let _ = tx.send(f(shard).await);
            })
            .detach();
        });
        self.senders
            .send_to(target, job)
            .await
            .map_err(|_| ShardGone(target))?;
        rx.await.map_err(|_| ShardGone(target))
    }

    /// Serves jobs sent by the other shards until they hang up.
    pub fn start_mesh_receivers(self: &Rc<Self>, mut receivers: Receivers<Job>) {
        for (_, stream) in receivers.streams() {
            let shard = self.clone();
            glommio::spawn_local(async move {
                while let Some(job) = stream.recv().await {
                    job(shard.clone());
                }
            })
            .detach();
        }
    }

    /// Tells the flusher `partition` has unwritten appends.
    pub fn mark_dirty(&self, partition: Rc<Partition>) {
        self.dirty.borrow_mut().push(partition);
        let _ = self.doorbell.try_send(());
    }

    /// Group commit: each round writes and syncs every partition that got
    /// appends since the previous round, all concurrently; appends arriving
    /// meanwhile wait for the next round. After a round smaller than
    /// `write_round_bytes` the next one first gathers appends for
    /// `write_round_delay_us` (config.rs says why).
    pub fn start_flusher(self: &Rc<Self>) {
        let rx = self
            .doorbell_rx
            .borrow_mut()
            .take()
            .expect("flusher starts once");
        let shard = self.clone();
        glommio::spawn_local(async move {
            let interval = Duration::from_millis(shard.config.flush_interval_ms);
            let group_commit = shard.config.flush_policy == FlushPolicy::GroupCommit;
            let delay = Duration::from_micros(shard.config.write_round_delay_us);
            let mut last_sync = Instant::now();
            // The last round carried write_round_bytes or more.
            let mut busy = false;
            while rx.recv().await.is_some() {
                loop {
                    if !busy && !delay.is_zero() {
                        glommio::timer::sleep(delay).await;
                    }
                    let batch: Vec<Rc<Partition>> = std::mem::take(&mut *shard.dirty.borrow_mut());
                    if batch.is_empty() {
                        break;
                    }
                    let bytes: u64 = batch.iter().map(|p| p.unwritten_bytes()).sum();
                    busy = bytes >= shard.config.write_round_bytes;
                    let sync = group_commit || last_sync.elapsed() >= interval;
                    if sync {
                        last_sync = Instant::now();
                    }
                    futures::future::join_all(batch.iter().map(|p| p.write_out(sync))).await;
                }
            }
        })
        .detach();
        if self.config.flush_policy == FlushPolicy::Interval {
            let shard = self.clone();
            glommio::spawn_local(async move {
                let interval = Duration::from_millis(shard.config.flush_interval_ms);
                loop {
                    glommio::timer::sleep(interval).await;
                    let all = shard.local_partitions();
                    futures::future::join_all(all.iter().map(|p| p.write_out(true))).await;
                }
            })
            .detach();
        }
    }

    /// This shard's partitions' offsets for the checkpoint files; poisoned
    /// ones are left out (their next opening scans them whole).
    pub fn checkpoint_entries(&self) -> Vec<CheckpointEntry> {
        self.partitions
            .borrow()
            .iter()
            .filter(|(_, p)| !p.is_poisoned())
            .map(|((topic, partition), p)| CheckpointEntry {
                topic: topic.clone(),
                partition: *partition,
                offsets: p.checkpoint(),
            })
            .collect()
    }

    /// Shard 0: gathers every shard's entries and writes the data
    /// directory's offset checkpoints.
    pub async fn write_checkpoints(self: &Rc<Self>) -> Result<(), crate::log::LogError> {
        let _one = self.checkpoint_lock.acquire_permit(1).await;
        let gathered = (0..self.count).map(|s| {
            self.invoke_on(
                s,
                |shard: Rc<Shard>| async move { shard.checkpoint_entries() },
            )
        });
        let mut entries = Vec::new();
        for r in futures::future::join_all(gathered).await {
            entries.extend(r.unwrap_or_default());
        }
        crate::log::checkpoint::write_all(&self.config.data_dir, &entries).await
    }

    /// Shard 0: writes the offset checkpoints every `checkpoint_interval_ms`.
    pub fn start_checkpointer(self: &Rc<Self>) {
        let shard = self.clone();
        glommio::spawn_local(async move {
            let interval = Duration::from_millis(shard.config.checkpoint_interval_ms);
            loop {
                glommio::timer::sleep(interval).await;
                if shard.shutting_down.get() {
                    return;
                }
                if let Err(e) = shard.write_checkpoints().await {
                    tracing::warn!(error = %e, "writing the offset checkpoints; recovery will scan more");
                }
            }
        })
        .detach();
    }

    /// Every `retention_check_interval_ms`: retention for each of this
    /// shard's partitions, one after another.
    pub fn start_retention(self: &Rc<Self>) {
        let shard = self.clone();
        glommio::spawn_local(async move {
            let interval = Duration::from_millis(shard.config.retention_check_interval_ms);
            loop {
                glommio::timer::sleep(interval).await;
                if shard.shutting_down.get() {
                    return;
                }
                for p in shard.local_partitions() {
                    if let Err(e) = p.enforce_retention(wall_clock_ms()).await {
                        tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "retention");
                    }
                }
            }
        })
        .detach();
    }

    /// Every `log_cleaner_backoff_ms`: compaction of this shard's
    /// compacted partitions, the dirtiest due one first, each at most once
    /// per round (`partition/cleaner.rs`).
    pub fn start_cleaner(self: &Rc<Self>) {
        let shard = self.clone();
        glommio::spawn_local(async move {
            let cx = crate::partition::CleanerContext::new(&shard.config, shard.count);
            let interval = Duration::from_millis(shard.config.log_cleaner_backoff_ms);
            loop {
                glommio::timer::sleep(interval).await;
                if shard.shutting_down.get() {
                    return;
                }
                shard.clean_round(&cx).await;
            }
        })
        .detach();
    }

    async fn clean_round(&self, cx: &crate::partition::CleanerContext) {
        let mut done: Vec<Rc<Partition>> = Vec::new();
        loop {
            let now = wall_clock_ms();
            let candidates: Vec<_> = self
                .local_partitions()
                .into_iter()
                .filter(|p| !done.iter().any(|d| Rc::ptr_eq(d, p)))
                .filter_map(|p| p.cleanable(now).map(|c| (p, c)))
                .collect();
            let views: Vec<_> = candidates.iter().map(|(_, c)| *c).collect();
            let Some(i) = crate::log::cleaner::plan::dirtiest(&views) else {
                return;
            };
            let p = candidates[i].0.clone();
            match p.clean(now, cx).await {
                Ok(s) => {
                    tracing::info!(topic = %p.topic, partition = p.index, groups = s.groups, keys = s.keys, bytes_before = s.bytes_before, bytes_after = s.bytes_after, records_read = s.records.records_read, records_kept = s.records.records_kept, tombstones_dropped = s.records.tombstones_dropped, "log cleaned")
                }
                Err(e) => {
                    tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "log cleaner")
                }
            }
            done.push(p);
            if self.shutting_down.get() {
                return;
            }
        }
    }

    /// A producer id from this node's block (allocated by the controller).
    pub async fn allocate_producer_id(self: &Rc<Self>) -> Result<i64, ControllerError> {
        self.invoke_on(0, |s: Rc<Shard>| async move {
            s.cluster().next_producer_id().await
        })
        .await
        .unwrap_or(Err(ControllerError::NotController))
    }

    /// Closes every local partition cleanly (written, synced, trimmed) and
    /// names those that could not be.
    pub async fn close_partitions(&self) -> Vec<String> {
        let mut failed = Vec::new();
        for p in self.local_partitions() {
            if let Err(e) = p.close().await {
                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "partition not closed cleanly");
                failed.push(format!("{}-{}", p.topic, p.index));
            }
        }
        failed
    }
}
