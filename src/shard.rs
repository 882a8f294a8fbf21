//! A shard: one pinned glommio executor owning a subset of partitions, its
//! copy of the topic table, its flusher and its end of the shard mesh.
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

pub use budget::{buffer_class_size, Budget, BufferPool, Grant};

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use kafka_protocol::ResponseError;
use thiserror::Error;

use crate::cluster::{owner_shard, TopicMeta, TopicTable};
use crate::config::{Config, FlushPolicy};
use crate::log::space::{SpaceGuard, SpaceLimits};
use crate::log::LogConfig;
use crate::partition::{CacheBudget, Partition, PartitionError};

/// Messages queued between any two shards before senders wait.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;

/// Work sent to another shard: runs there with that shard's state.
pub type Job = Box<dyn FnOnce(Rc<Shard>) + Send>;

#[derive(Debug, Error)]
#[error("shard {0} is gone (shutting down)")]
pub struct ShardGone(pub usize);

pub type PartitionKey = (String, i32);

pub struct Shard {
    pub id: usize,
    pub count: usize,
    pub config: Rc<Config>,
    topics: RefCell<Rc<TopicTable>>,
    partitions: RefCell<HashMap<PartitionKey, Rc<Partition>>>,
    senders: Senders<Job>,
    budget: Rc<CacheBudget>,
    dirty: RefCell<Vec<Rc<Partition>>>,
    doorbell: LocalSender<()>,
    doorbell_rx: RefCell<Option<LocalReceiver<()>>>,
    /// Serializes topic table changes (used on shard 0, the controller).
    metadata_lock: glommio::sync::Semaphore,
    producer_ids: RefCell<ProducerIdBlock>,
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
    /// Coordinator of the groups whose `__consumer_offsets` partitions live here.
    pub groups: crate::group::GroupCoordinator,
}

impl Shard {
    pub fn new(
        id: usize,
        count: usize,
        config: Rc<Config>,
        table: TopicTable,
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
        Rc::new(Shard {
            id,
            count,
            groups,
            space,
            producer_ids: RefCell::new(ProducerIdBlock::new(config.data_dir.clone())),
            config,
            topics: RefCell::new(Rc::new(table)),
            partitions: RefCell::new(HashMap::new()),
            senders,
            budget,
            dirty: RefCell::new(Vec::new()),
            doorbell,
            doorbell_rx: RefCell::new(Some(rx)),
            metadata_lock: glommio::sync::Semaphore::new(1),
            offline: RefCell::new(HashSet::new()),
            in_flight: Cell::new(0),
            request_budget,
            fetch_budget,
            frame_pool,
            shutting_down: Cell::new(false),
        })
    }

    pub fn topics(&self) -> Rc<TopicTable> {
        self.topics.borrow().clone()
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

    fn log_config(&self, topic: &TopicMeta) -> LogConfig {
        let segment_bytes = topic
            .configs
            .get("segment.bytes")
            .and_then(|v| v.parse().ok())
            .unwrap_or(self.config.segment_bytes);
        LogConfig {
            segment_bytes,
            index_interval_bytes: self.config.index_interval_bytes as u64,
            write_buffer_bytes: self.config.write_buffer_bytes,
            max_batch_bytes: self.config.max_message_bytes,
            max_decompressed_batch_bytes: self.config.max_decompressed_batch_bytes,
            preallocate: self.config.preallocate,
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
    /// meanwhile wait for the next round.
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
            let mut last_sync = Instant::now();
            while rx.recv().await.is_some() {
                loop {
                    let batch: Vec<Rc<Partition>> = std::mem::take(&mut *shard.dirty.borrow_mut());
                    if batch.is_empty() {
                        break;
                    }
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

    /// Applies a new topic table: opens partitions this shard now owns,
    /// deletes those whose topic is gone. A partition that cannot be opened
    /// (corrupt, or an I/O error) is left offline and the rest is applied;
    /// the error names them.
    pub async fn apply_table(self: &Rc<Self>, table: TopicTable) -> Result<(), String> {
        let table = Rc::new(table);
        let old = self.topics.replace(table.clone());
        let group_commit = self.config.flush_policy == FlushPolicy::GroupCommit;
        let mut failed = Vec::new();
        for topic in table.topics.values() {
            let recreated = old.get(&topic.name).is_some_and(|o| o.id != topic.id);
            if recreated {
                self.drop_topic(&topic.name).await;
            }
            for p in 0..topic.partitions {
                let key = (topic.name.clone(), p);
                if self.owner(&topic.name, p) != self.id
                    || self.partitions.borrow().contains_key(&key)
                    || self.offline.borrow().contains(&key)
                {
                    continue;
                }
                let part = Partition::open(
                    &self.config.data_dir,
                    &topic.name,
                    p,
                    self.log_config(topic),
                    self.budget.clone(),
                    self.space.clone(),
                    group_commit,
                )
                .await;
                match part {
                    Ok(part) => {
                        self.partitions.borrow_mut().insert(key, part);
                    }
                    Err(e) => {
                        // Offline: left untouched on disk for an operator
                        // (`ringtail repair` for a corrupt log); the rest of
                        // the broker keeps serving.
                        if matches!(e, PartitionError::Log(crate::log::LogError::Corrupt { .. })) {
                            tracing::error!(topic = %topic.name, partition = p, error = %e, "partition fenced");
                        } else {
                            tracing::error!(topic = %topic.name, partition = p, error = %e, "partition offline: opening it failed");
                            failed.push(format!("{}-{p}: {e}", topic.name));
                        }
                        self.offline.borrow_mut().insert(key);
                    }
                }
            }
        }
        for name in old.topics.keys() {
            if !table.topics.contains_key(name) {
                self.drop_topic(name).await;
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(format!("opening {}", failed.join("; ")))
        }
    }

    /// Deletes a topic's partitions here. An offline partition's directory
    /// is left on disk (it may hold data an operator wants back).
    async fn drop_topic(&self, name: &str) {
        self.offline.borrow_mut().retain(|(t, _)| t != name);
        let removed: Vec<Rc<Partition>> = {
            let mut parts = self.partitions.borrow_mut();
            let keys: Vec<PartitionKey> =
                parts.keys().filter(|(t, _)| t == name).cloned().collect();
            keys.iter().filter_map(|k| parts.remove(k)).collect()
        };
        for p in removed {
            p.mark_deleted();
            if let Err(e) = std::fs::remove_dir_all(&p.dir) {
                tracing::warn!(dir = %p.dir.display(), error = %e, "removing deleted partition");
            }
        }
    }

    /// Controller (shard 0): changes the topic table with `change`, persists
    /// it, and pushes it to every shard before answering.
    pub async fn change_topics<R: Send + 'static>(
        self: &Rc<Self>,
        change: impl FnOnce(&mut TopicTable) -> Result<R, ResponseError> + Send + 'static,
    ) -> Result<R, ResponseError> {
        let result = self
            .invoke_on(0, move |controller: Rc<Shard>| async move {
                let _lock = controller.metadata_lock.acquire_permit(1).await;
                let mut table = (*controller.topics()).clone();
                let result = change(&mut table)?;
                table.save(&controller.config.data_dir).map_err(|e| {
                    tracing::error!(error = %e, "persisting topic table");
                    ResponseError::KafkaStorageError
                })?;
                let mut pushes = Vec::new();
                for s in 0..controller.count {
                    let copy = table.clone();
                    pushes.push(controller.invoke_on(s, move |shard: Rc<Shard>| async move {
                        shard.apply_table(copy).await
                    }));
                }
                for r in futures::future::join_all(pushes).await {
                    match r {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::error!(error = %e, "applying topic table");
                            return Err(ResponseError::KafkaStorageError);
                        }
                        Err(_) => return Err(ResponseError::BrokerNotAvailable),
                    }
                }
                Ok(result)
            })
            .await;
        result.unwrap_or(Err(ResponseError::BrokerNotAvailable))
    }

    /// Controller: a new producer id, unique across restarts.
    pub async fn allocate_producer_id(self: &Rc<Self>) -> Result<i64, ResponseError> {
        self.invoke_on(0, |c: Rc<Shard>| async move {
            c.producer_ids.borrow_mut().next()
        })
        .await
        .unwrap_or(Err(ResponseError::BrokerNotAvailable))
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

/// Producer ids are handed out from blocks whose end is persisted before use,
/// so no id is given twice even across crashes.
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

struct ProducerIdBlock {
    path: PathBuf,
    next: i64,
    end: i64,
}

impl ProducerIdBlock {
    fn new(data_dir: PathBuf) -> ProducerIdBlock {
        let path = data_dir.join("producer-id-block");
        let start = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0);
        ProducerIdBlock {
            path,
            next: start,
            end: start,
        }
    }

    fn next(&mut self) -> Result<i64, ResponseError> {
        if self.next == self.end {
            let end = self.end + PRODUCER_ID_BLOCK_SIZE;
            crate::cluster::write_atomically(&self.path, end.to_string().as_bytes()).map_err(
                |e| {
                    tracing::error!(error = %e, "persisting producer id block");
                    ResponseError::KafkaStorageError
                },
            )?;
            self.end = end;
        }
        let id = self.next;
        self.next += 1;
        Ok(id)
    }
}
