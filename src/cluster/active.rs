//! The active controller's I/O shell: requests from brokers and admin
//! clients, and the periodic checks, go through one queue; each decision is
//! proposed to the metadata log and answered once applied, so every
//! decision sees every earlier one.
//!
//! Runs on the controller shard of every voter; acts only while its quorum
//! member is the Raft leader with an up-to-date image.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};

use super::controller::{Controller, ControllerError, ControllerRequest};
use super::quorum::driver::QuorumDriver;
use super::records::{MetadataEntry, MetadataRecord, NodeId};
use super::transport::ReplyResult;
use super::CONSUMER_OFFSETS_TOPIC;

enum Work {
    Request(ControllerRequest, oneshot::Sender<ReplyResult>),
    Tick,
}

pub struct ActiveController {
    node_id: NodeId,
    controller: RefCell<Controller>,
    driver: Rc<QuorumDriver>,
    queue: LocalSender<Work>,
    queue_rx: RefCell<Option<LocalReceiver<Work>>>,
    started: Instant,
    write_timeout: Duration,
    /// First records of a new cluster (cluster id, imported topics).
    bootstrap: RefCell<Option<Vec<MetadataRecord>>>,
    next_request_id: std::cell::Cell<u64>,
}

impl ActiveController {
    pub fn new(
        node_id: NodeId,
        controller: Controller,
        driver: Rc<QuorumDriver>,
        queue_limit: usize,
        write_timeout: Duration,
        bootstrap: Vec<MetadataRecord>,
    ) -> Rc<ActiveController> {
        let (queue, rx) = local_channel::new_bounded(queue_limit);
        Rc::new(ActiveController {
            node_id,
            controller: RefCell::new(controller),
            driver,
            queue,
            queue_rx: RefCell::new(Some(rx)),
            started: Instant::now(),
            write_timeout,
            bootstrap: RefCell::new(Some(bootstrap)),
            next_request_id: std::cell::Cell::new(1),
        })
    }

    /// Queues a request for the active controller and waits for its reply.
    pub async fn submit(&self, req: ControllerRequest) -> ReplyResult {
        if !self.driver.is_active_controller() {
            return Err(ControllerError::NotController);
        }
        let (tx, rx) = oneshot::channel();
        if self.queue.try_send(Work::Request(req, tx)).is_err() {
            return Err(ControllerError::Timeout);
        }
        rx.await.unwrap_or(Err(ControllerError::NotController))
    }

    /// Runs the queue and a timer for the periodic checks.
    pub fn start(self: &Rc<Self>, tick: Duration) {
        let rx = self
            .queue_rx
            .borrow_mut()
            .take()
            .expect("the controller starts once");
        let me = self.clone();
        glommio::spawn_local(async move { me.run(rx).await }).detach();
        let me = self.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(tick).await;
                if me.driver.is_active_controller() {
                    let _ = me.queue.try_send(Work::Tick);
                }
            }
        })
        .detach();
    }

    /// The link to `node`'s controller listener was refused: evidence for
    /// the controller's fencing of a broker whose process is gone (kept
    /// while another node is active too; cleared when this one becomes
    /// active, and reported again by the next refused reconnect).
    pub fn link_refused(&self, node: NodeId) {
        let now = self.now_ms();
        self.controller.borrow_mut().link_refused(node, now);
    }

    pub fn link_connected(&self, node: NodeId) {
        self.controller.borrow_mut().link_connected(node);
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    async fn run(self: Rc<Self>, rx: LocalReceiver<Work>) {
        let mut was_active = false;
        while let Some(work) = rx.recv().await {
            let active = self.driver.is_active_controller();
            if active && !was_active {
                tracing::info!(
                    node = self.node_id,
                    "this node is now the active controller"
                );
                self.controller.borrow_mut().reset_sessions();
            }
            was_active = active;
            match work {
                Work::Request(req, tx) => {
                    let reply = if active {
                        self.decide_and_commit(req).await
                    } else {
                        Err(ControllerError::NotController)
                    };
                    let _ = tx.send(reply);
                }
                Work::Tick if active => self.periodic().await,
                Work::Tick => {}
            }
        }
    }

    async fn decide_and_commit(&self, req: ControllerRequest) -> ReplyResult {
        let image = self.driver.with_node(|n| n.image().clone());
        let decision = self
            .controller
            .borrow_mut()
            .decide(&image, req, self.now_ms());
        if !decision.records.is_empty() {
            self.commit(decision.records).await?;
        }
        let image = self.driver.with_node(|n| n.image().clone());
        decision.reply.complete(&image)
    }

    /// Proposes records and waits until they are applied here.
    async fn commit(&self, records: Vec<MetadataRecord>) -> Result<u64, ControllerError> {
        let request_id = self.next_request_id.get();
        self.next_request_id.set(request_id + 1);
        let rx = self.driver.propose(MetadataEntry {
            proposer: self.node_id,
            request_id,
            records,
        });
        let timer = glommio::timer::sleep(self.write_timeout);
        futures::pin_mut!(timer);
        match futures::future::select(rx, timer).await {
            futures::future::Either::Left((Ok(r), _)) => r,
            futures::future::Either::Left((Err(_), _)) => Err(ControllerError::NotController),
            futures::future::Either::Right(_) => Err(ControllerError::Timeout),
        }
    }

    /// Bootstrap of a new cluster, fencing of silent brokers, offline
    /// partitions brought back, the offsets topic once brokers are there.
    async fn periodic(&self) {
        let image = self.driver.with_node(|n| n.image().clone());
        if image.cluster_id.is_none() {
            let Some(records) = self.bootstrap.borrow().clone() else {
                return;
            };
            if self.commit(records).await.is_ok() {
                tracing::info!("cluster bootstrapped");
            }
            return;
        }
        let records = self.controller.borrow_mut().tick(&image, self.now_ms());
        if !records.is_empty() {
            if let Err(e) = self.commit(records).await {
                tracing::warn!(error = %e, "controller: periodic change not committed");
            }
            return;
        }
        if image.topic(CONSUMER_OFFSETS_TOPIC).is_none() {
            let _ = self
                .decide_and_commit(ControllerRequest::EnsureOffsetsTopic)
                .await;
        }
    }
}
