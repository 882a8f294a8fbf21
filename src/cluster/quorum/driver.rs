//! The thin I/O shell around [`QuorumNode`]: ticks it on a timer, feeds it
//! the peers' messages and the controller's proposals, makes each Ready
//! durable on a blocking thread (so the controller shard keeps serving while
//! the metadata log is fsynced), sends messages, and reports applied entries.
//!
//! Runs on the controller shard (shard 0). Only the driver's loop touches the
//! node while a Ready is in flight; everything else goes through its inbox.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use raft::prelude::Message;

use super::node::{Applied, QuorumNode};
use super::storage::{DiskLog, LogStore};
use crate::cluster::controller::ControllerError;
use crate::cluster::image::{ImageChanges, MetadataImage};
use crate::cluster::records::{MetadataEntry, NodeId};

/// Inputs queued for the driver's loop.
enum Input {
    Raft(Message),
    Propose(MetadataEntry, oneshot::Sender<Result<u64, ControllerError>>),
    Unreachable(NodeId),
    Snapshot(NodeId, bool),
}

/// What the driver tells the rest of the node after entries apply.
pub trait Applier {
    fn send(&self, messages: Vec<Message>);
    fn applied(&self, image: Arc<MetadataImage>, changes: ImageChanges, entries: &[Applied]);
    /// The metadata log could not be made durable: the node must stop.
    fn fatal(&self, error: String);
}

pub struct QuorumDriver {
    node: RefCell<QuorumNode>,
    store: RefCell<Option<DiskLog>>,
    inbox: RefCell<VecDeque<Input>>,
    inbox_limit: usize,
    doorbell: LocalSender<()>,
    doorbell_rx: RefCell<Option<LocalReceiver<()>>>,
    waiters: RefCell<HashMap<u64, oneshot::Sender<Result<u64, ControllerError>>>>,
    /// Mirrors of the node's state for readers outside the loop.
    applied: Cell<u64>,
    leader: Cell<Option<NodeId>>,
    active: Cell<bool>,
    tick: Duration,
}

impl QuorumDriver {
    pub fn new(
        node: QuorumNode,
        store: DiskLog,
        tick: Duration,
        inbox_limit: usize,
    ) -> QuorumDriver {
        let (doorbell, rx) = local_channel::new_bounded(1);
        let applied = node.applied_index();
        QuorumDriver {
            node: RefCell::new(node),
            store: RefCell::new(Some(store)),
            inbox: RefCell::new(VecDeque::new()),
            inbox_limit,
            doorbell,
            doorbell_rx: RefCell::new(Some(rx)),
            waiters: RefCell::new(HashMap::new()),
            applied: Cell::new(applied),
            leader: Cell::new(None),
            active: Cell::new(false),
            tick,
        }
    }

    fn push(&self, input: Input) {
        let mut inbox = self.inbox.borrow_mut();
        if inbox.len() >= self.inbox_limit {
            // Raft retransmits; a dropped proposal times out at its caller.
            tracing::warn!("metadata quorum inbox full; dropping the oldest input");
            inbox.pop_front();
        }
        inbox.push_back(input);
        drop(inbox);
        let _ = self.doorbell.try_send(());
    }

    pub fn step(&self, msg: Message) {
        self.push(Input::Raft(msg));
    }

    pub fn unreachable(&self, peer: NodeId) {
        self.push(Input::Unreachable(peer));
    }

    pub fn snapshot_status(&self, peer: NodeId, delivered: bool) {
        self.push(Input::Snapshot(peer, delivered));
    }

    /// Proposes `entry`; resolves with its index once applied here.
    pub fn propose(&self, entry: MetadataEntry) -> oneshot::Receiver<Result<u64, ControllerError>> {
        let (tx, rx) = oneshot::channel();
        self.push(Input::Propose(entry, tx));
        rx
    }

    pub fn applied_index(&self) -> u64 {
        self.applied.get()
    }

    pub fn leader(&self) -> Option<NodeId> {
        self.leader.get()
    }

    pub fn is_active_controller(&self) -> bool {
        self.active.get()
    }

    /// Reads the node (for DescribeQuorum); never across an await.
    pub fn with_node<R>(&self, f: impl FnOnce(&QuorumNode) -> R) -> R {
        f(&self.node.borrow())
    }

    /// Runs the loop until the shard stops. A one-voter quorum elects
    /// itself at once instead of waiting out an election timeout.
    pub fn start(self: &Rc<Self>, applier: Rc<dyn Applier>, campaign_now: bool) {
        let rx = self
            .doorbell_rx
            .borrow_mut()
            .take()
            .expect("the driver starts once");
        if campaign_now {
            if let Err(e) = self.node.borrow_mut().campaign() {
                tracing::warn!(error = %e, "metadata quorum: campaign failed");
            }
        }
        let driver = self.clone();
        glommio::spawn_local(async move { driver.run(rx, applier).await }).detach();
    }

    async fn run(self: Rc<Self>, rx: LocalReceiver<()>, applier: Rc<dyn Applier>) {
        let mut next_tick = Instant::now() + self.tick;
        loop {
            let now = Instant::now();
            if now >= next_tick {
                self.node.borrow_mut().tick();
                next_tick = now + self.tick;
            } else {
                let wait = glommio::timer::sleep(next_tick - now);
                let bell = rx.recv();
                futures::pin_mut!(wait, bell);
                if let futures::future::Either::Left((Some(()), _)) =
                    futures::future::select(bell, wait).await
                {
                    // Woken for input.
                }
            }
            self.drain_inbox();
            if let Err(e) = self.handle_readies(&*applier).await {
                applier.fatal(e);
                return;
            }
        }
    }

    fn drain_inbox(&self) {
        let inputs: Vec<Input> = self.inbox.borrow_mut().drain(..).collect();
        let mut node = self.node.borrow_mut();
        for input in inputs {
            match input {
                Input::Raft(msg) => {
                    if let Err(e) = node.step(msg) {
                        tracing::debug!(error = %e, "metadata quorum: message refused");
                    }
                }
                Input::Propose(entry, tx) => {
                    if !node.is_active_controller() || node.propose(&entry).is_err() {
                        let _ = tx.send(Err(ControllerError::NotController));
                    } else {
                        self.waiters.borrow_mut().insert(entry.request_id, tx);
                    }
                }
                Input::Unreachable(peer) => node.report_unreachable(peer),
                Input::Snapshot(peer, delivered) => node.report_snapshot(peer, delivered),
            }
        }
    }

    async fn handle_readies(&self, applier: &dyn Applier) -> Result<(), String> {
        loop {
            let pending = self.node.borrow_mut().take_ready();
            let Some(pending) = pending else {
                break;
            };
            applier.send(pending.messages.clone());
            if !pending.work.is_empty() {
                self.persist(pending.work.clone()).await?;
            }
            let outcome = self
                .node
                .borrow_mut()
                .finish_ready(pending)
                .map_err(|e| e.to_string())?;
            applier.send(outcome.messages);
            let image = {
                let node = self.node.borrow();
                self.applied.set(node.applied_index());
                for a in &outcome.applied {
                    if a.entry.proposer == node.node_id {
                        if let Some(tx) = self.waiters.borrow_mut().remove(&a.entry.request_id) {
                            let _ = tx.send(Ok(a.index));
                        }
                    }
                }
                let changed = !outcome.applied.is_empty()
                    || outcome.image_replaced
                    || !outcome.changes.is_empty();
                changed.then(|| Arc::new(node.image().clone()))
            };
            if let Some(image) = image {
                applier.applied(image, outcome.changes, &outcome.applied);
            }
            self.drain_inbox();
        }
        let node = self.node.borrow();
        self.leader.set(node.leader());
        self.active.set(node.is_active_controller());
        if !node.is_leader() {
            for (_, tx) in self.waiters.borrow_mut().drain() {
                let _ = tx.send(Err(ControllerError::NotController));
            }
        }
        Ok(())
    }

    /// Makes `work` durable on a blocking thread; the store travels there
    /// and back.
    async fn persist(&self, work: super::storage::PersistWork) -> Result<(), String> {
        let mut store = self
            .store
            .borrow_mut()
            .take()
            .expect("one persist at a time");
        let (store, result) = glommio::executor()
            .spawn_blocking(move || {
                let result = store.persist(&work);
                (store, result)
            })
            .await;
        *self.store.borrow_mut() = Some(store);
        result.map_err(|e| format!("metadata log: {e}"))
    }
}
