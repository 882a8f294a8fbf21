//! The cluster on one node: its member of the controller quorum, the active
//! controller (while this node leads the quorum), the links to the other
//! voters, this broker's registration and heartbeats, and the latest
//! metadata image handed to the shards.
//!
//! Lives on the controller shard (shard 0); other shards reach it through
//! the shard mesh. Shards receive each new image in order, coalesced: a
//! shard still applying one image gets the newest one next, with every
//! change since.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use raft::prelude::Message;
use uuid::Uuid;

use super::active::ActiveController;
use super::controller::{
    Controller, ControllerConfig, ControllerError, ControllerReply, ControllerRequest,
};
use super::image::{ImageChanges, MetadataImage};
use super::quorum::driver::{Applier, QuorumDriver};
use super::quorum::node::{Applied, QuorumConfig, QuorumNode};
use super::quorum::storage::{DiskLog, LogStore};
use super::quorum::{QuorumStatus, VoterStatus};
use super::records::{BrokerRegistration, MetadataRecord, NodeId};
use super::transport::{self, Inbound, LinkLimits, Links, ReplyResult};

type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// Hands a new image and what changed to every shard; resolves when all
/// have applied it.
pub type Publish = Rc<dyn Fn(Arc<MetadataImage>, ImageChanges) -> LocalFuture<()>>;

/// Everything the cluster service needs from the broker's configuration.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub node_id: NodeId,
    /// Every controller voter with its controller listener address.
    pub voters: Vec<(NodeId, SocketAddr)>,
    pub controller_listen: Option<SocketAddr>,
    pub data_dir: std::path::PathBuf,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub controller: ControllerConfig,
    pub quorum: QuorumConfig,
    pub links: LinkLimits,
    pub raft_tick: Duration,
    pub controller_tick: Duration,
    pub heartbeat_interval: Duration,
    pub request_timeout: Duration,
    pub queue_limit: usize,
    pub bootstrap: Vec<MetadataRecord>,
    /// This process's registration id (the shards take roles only while the
    /// image's registration is this one).
    pub incarnation_id: Uuid,
}

/// This broker's standing with the controller.
#[derive(Debug, Clone, Copy, Default)]
struct Standing {
    broker_epoch: Option<u64>,
    fenced: bool,
    want_shutdown: bool,
    shutdown_ready: bool,
}

pub struct ClusterService {
    pub node_id: NodeId,
    config: ClusterConfig,
    driver: Rc<QuorumDriver>,
    active: Rc<ActiveController>,
    links: RefCell<Option<Rc<Links>>>,
    image: RefCell<Arc<MetadataImage>>,
    pending_publish: RefCell<Option<(Arc<MetadataImage>, ImageChanges)>>,
    publish_bell: LocalSender<()>,
    standing: Cell<Standing>,
    heartbeat_bell: LocalSender<()>,
    producer_ids: Cell<(i64, i64)>,
    fatal: RefCell<Option<String>>,
    incarnation_id: Uuid,
}

impl ClusterService {
    /// Opens the metadata log, starts the quorum member, the controller,
    /// the links and listener, and this broker's registration.
    pub async fn start(config: ClusterConfig, publish: Publish) -> anyhow::Result<Rc<Self>> {
        let mut store = DiskLog::new(&config.data_dir);
        let persisted = glommio::executor()
            .spawn_blocking(move || store.load().map(|p| (store, p)))
            .await;
        let (store, persisted) = persisted?;
        let logger = super::quorum::raft_logger(config.node_id);
        let node = QuorumNode::new(&config.quorum, &persisted, &logger)?;
        let image = Arc::new(node.image().clone());
        let driver = Rc::new(QuorumDriver::new(
            node,
            store,
            config.raft_tick,
            config.queue_limit,
        ));
        let controller = Controller::new(config.controller.clone(), Box::new(Uuid::new_v4));
        let active = ActiveController::new(
            config.node_id,
            controller,
            driver.clone(),
            config.queue_limit,
            config.request_timeout,
            config.bootstrap.clone(),
        );
        let (publish_bell, publish_rx) = local_channel::new_bounded(1);
        let (heartbeat_bell, heartbeat_rx) = local_channel::new_bounded(1);
        let service = Rc::new(ClusterService {
            node_id: config.node_id,
            driver: driver.clone(),
            active: active.clone(),
            links: RefCell::new(None),
            image: RefCell::new(image.clone()),
            pending_publish: RefCell::new(Some((image, ImageChanges::default()))),
            publish_bell,
            standing: Cell::new(Standing::default()),
            heartbeat_bell,
            producer_ids: Cell::new((0, 0)),
            fatal: RefCell::new(None),
            incarnation_id: config.incarnation_id,
            config,
        });
        service.start_network().await?;
        driver.start(service.clone(), service.config.voters.len() == 1);
        active.start(service.config.controller_tick);
        service.clone().start_publisher(publish, publish_rx);
        service.clone().start_lifecycle(heartbeat_rx);
        Ok(service)
    }

    async fn start_network(self: &Rc<Self>) -> anyhow::Result<()> {
        let peers: Vec<(NodeId, SocketAddr)> = self
            .config
            .voters
            .iter()
            .copied()
            .filter(|(n, _)| *n != self.node_id)
            .collect();
        let inbound: Rc<dyn Inbound> = self.clone();
        *self.links.borrow_mut() = Some(Rc::new(Links::start(
            &peers,
            self.config.links,
            inbound.clone(),
        )));
        if let Some(addr) = self.config.controller_listen {
            let listener = glommio::net::TcpListener::bind(addr)
                .map_err(|e| anyhow::anyhow!("binding controller listener {addr}: {e}"))?;
            let max = self.config.links.max_frame_bytes;
            glommio::spawn_local(transport::serve(listener, max, inbound)).detach();
            tracing::info!(%addr, "controller listener up");
        }
        Ok(())
    }

    /// The latest applied image.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.driver.leader()
    }

    pub fn is_active_controller(&self) -> bool {
        self.driver.is_active_controller()
    }

    /// Registered and unfenced: may lead partitions.
    pub fn is_serving(&self) -> bool {
        let s = self.standing.get();
        s.broker_epoch.is_some() && !s.fenced
    }

    pub fn broker_epoch(&self) -> Option<u64> {
        self.standing.get().broker_epoch
    }

    /// Why the node must stop, if the metadata log failed.
    pub fn fatal_error(&self) -> Option<String> {
        self.fatal.borrow().clone()
    }

    /// Asks the active controller, wherever it is, retrying while there is
    /// none or it moves, until the request timeout.
    pub async fn call(&self, req: ControllerRequest) -> ReplyResult {
        let deadline = Instant::now() + self.config.request_timeout;
        loop {
            let result = match self.driver.leader() {
                _ if self.driver.is_active_controller() => self.local(req.clone()).await,
                Some(leader) if leader != self.node_id => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let links = self.links.borrow().clone();
                    match links {
                        Some(l) => l.request(leader, req.clone(), left).await,
                        None => Err(ControllerError::NotController),
                    }
                }
                _ => Err(ControllerError::NotController),
            };
            let retry = matches!(
                result,
                Err(ControllerError::NotController) | Err(ControllerError::Timeout)
            );
            if !retry {
                return result;
            }
            if Instant::now() >= deadline {
                // No active controller reachable in time: clients retry a
                // timeout; NOT_CONTROLLER would send them looking for one
                // in Metadata, where brokers forward for them anyway.
                return Err(ControllerError::Timeout);
            }
            glommio::timer::sleep(self.config.raft_tick).await;
        }
    }

    /// Answers on the active controller's node: the quorum as the Raft
    /// leader sees it, or the metadata decision.
    async fn local(&self, req: ControllerRequest) -> ReplyResult {
        if req == ControllerRequest::DescribeQuorum {
            return self.describe_quorum();
        }
        self.active.submit(req).await
    }

    fn describe_quorum(&self) -> ReplyResult {
        if !self.driver.is_active_controller() {
            return Err(ControllerError::NotController);
        }
        Ok(ControllerReply::Quorum(self.quorum_status()))
    }

    /// A producer id from this broker's block; a new block from the
    /// controller when it runs out.
    pub async fn next_producer_id(&self) -> Result<i64, ControllerError> {
        let (next, end) = self.producer_ids.get();
        if next < end {
            self.producer_ids.set((next + 1, end));
            return Ok(next);
        }
        let epoch = self
            .standing
            .get()
            .broker_epoch
            .ok_or(ControllerError::NotController)?;
        match self
            .call(ControllerRequest::AllocateProducerIds {
                node_id: self.node_id,
                broker_epoch: epoch,
            })
            .await?
        {
            ControllerReply::ProducerIds { first, count } => {
                self.producer_ids.set((first + 1, first + count));
                Ok(first)
            }
            other => Err(ControllerError::InvalidRequest(format!(
                "unexpected reply {other:?}"
            ))),
        }
    }

    /// Controlled shutdown: asks the controller to move this broker's
    /// leaderships away and waits until it has (or `timeout` passes).
    pub async fn controlled_shutdown(&self, timeout: Duration) -> bool {
        let mut s = self.standing.get();
        s.want_shutdown = true;
        self.standing.set(s);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let _ = self.heartbeat_bell.try_send(());
            if self.standing.get().shutdown_ready {
                return true;
            }
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// Voters with their replication progress as the leader knows it.
    pub fn quorum_status(&self) -> QuorumStatus {
        let endpoint = |id: NodeId| {
            self.config
                .voters
                .iter()
                .find(|(v, _)| *v == id)
                .map(|(_, a)| (a.ip().to_string(), a.port()))
        };
        self.driver.with_node(|n| {
            let committed = n.committed_index();
            let voters = if n.is_leader() {
                n.voter_progress()
                    .into_iter()
                    .map(|(id, matched, active)| VoterStatus {
                        node_id: id,
                        log_end_offset: matched as i64,
                        caught_up: matched >= committed,
                        recently_heard: active || id == n.node_id,
                        endpoint: endpoint(id),
                    })
                    .collect()
            } else {
                n.voters()
                    .into_iter()
                    .map(|id| {
                        let me = id == n.node_id;
                        VoterStatus {
                            node_id: id,
                            log_end_offset: if me { n.last_index() as i64 } else { -1 },
                            caught_up: me && n.last_index() >= committed,
                            recently_heard: me,
                            endpoint: endpoint(id),
                        }
                    })
                    .collect()
            };
            QuorumStatus {
                leader: n.leader(),
                term: n.term(),
                high_watermark: committed,
                voters,
            }
        })
    }

    fn start_publisher(self: Rc<Self>, publish: Publish, rx: LocalReceiver<()>) {
        let _ = self.publish_bell.try_send(());
        glommio::spawn_local(async move {
            loop {
                let next = self.pending_publish.borrow_mut().take();
                match next {
                    Some((image, changes)) => publish(image, changes).await,
                    None => {
                        if rx.recv().await.is_none() {
                            return;
                        }
                    }
                }
            }
        })
        .detach();
    }

    fn start_lifecycle(self: Rc<Self>, rx: LocalReceiver<()>) {
        glommio::spawn_local(async move {
            loop {
                self.lifecycle_round().await;
                let s = self.standing.get();
                let wait = if s.fenced || s.broker_epoch.is_none() || s.want_shutdown {
                    self.config.raft_tick
                } else {
                    self.config.heartbeat_interval
                };
                let timer = glommio::timer::sleep(wait);
                let bell = rx.recv();
                futures::pin_mut!(timer, bell);
                futures::future::select(timer, bell).await;
            }
        })
        .detach();
    }

    /// Registers if needed, then heartbeats once.
    async fn lifecycle_round(&self) {
        let mut s = self.standing.get();
        if s.broker_epoch.is_none() {
            let reg = BrokerRegistration {
                node_id: self.node_id,
                incarnation_id: self.incarnation_id,
                host: self.config.advertised_host.clone(),
                port: self.config.advertised_port,
                rack: None,
            };
            match self.call(ControllerRequest::RegisterBroker(reg)).await {
                Ok(ControllerReply::Registered { broker_epoch }) => {
                    tracing::info!(node = self.node_id, broker_epoch, "broker registered");
                    s.broker_epoch = Some(broker_epoch);
                    s.fenced = true;
                    self.standing.set(s);
                }
                other => {
                    tracing::debug!(reply = ?other, "registration not done yet");
                    return;
                }
            }
        }
        let req = ControllerRequest::Heartbeat {
            node_id: self.node_id,
            broker_epoch: s.broker_epoch.expect("registered"),
            metadata_offset: self.driver.applied_index(),
            want_shutdown: s.want_shutdown,
        };
        match self.call(req).await {
            Ok(ControllerReply::Heartbeat {
                fenced,
                shutdown_ready,
            }) => {
                let mut now = self.standing.get();
                if now.fenced && !fenced {
                    tracing::info!(node = self.node_id, "broker unfenced");
                }
                now.fenced = fenced;
                now.shutdown_ready = shutdown_ready;
                self.standing.set(now);
            }
            Err(ControllerError::StaleBrokerEpoch(_)) | Err(ControllerError::UnknownBroker(_)) => {
                let mut now = self.standing.get();
                now.broker_epoch = None;
                self.standing.set(now);
            }
            other => tracing::debug!(reply = ?other, "heartbeat not answered"),
        }
    }
}

/// What DescribeQuorum reports.
impl Applier for ClusterService {
    fn send(&self, messages: Vec<Message>) {
        let links = self.links.borrow();
        let Some(links) = links.as_ref() else {
            return;
        };
        for m in messages {
            links.send_raft(m, self);
        }
    }

    fn applied(&self, image: Arc<MetadataImage>, changes: ImageChanges, _entries: &[Applied]) {
        *self.image.borrow_mut() = image.clone();
        let mut pending = self.pending_publish.borrow_mut();
        match pending.as_mut() {
            Some((old, merged)) => {
                *old = image;
                merged.merge(changes);
            }
            None => *pending = Some((image, changes)),
        }
        drop(pending);
        let _ = self.publish_bell.try_send(());
    }

    fn fatal(&self, error: String) {
        tracing::error!(error = %error, "metadata log failed; the broker stops");
        *self.fatal.borrow_mut() = Some(error);
    }
}

impl Inbound for ClusterService {
    fn raft_message(&self, msg: Message) {
        self.driver.step(msg);
    }

    fn request(&self, req: ControllerRequest) -> LocalFuture<ReplyResult> {
        if req == ControllerRequest::DescribeQuorum {
            return Box::pin(std::future::ready(self.describe_quorum()));
        }
        let active = self.active.clone();
        Box::pin(async move { active.submit(req).await })
    }

    fn unreachable(&self, peer: NodeId, lost_snapshot: bool) {
        self.driver.unreachable(peer);
        if lost_snapshot {
            self.driver.snapshot_status(peer, false);
        }
    }

    fn snapshot_sent(&self, peer: NodeId) {
        self.driver.snapshot_status(peer, true);
    }

    fn refused(&self, peer: NodeId) {
        self.active.link_refused(peer);
    }

    fn connected(&self, peer: NodeId) {
        self.active.link_connected(peer);
    }
}
