//! Controller listener and links to the other controller voters: Raft
//! messages and broker-to-controller requests over TCP, framed as a 4-byte
//! length (bounded by `controller_max_frame_bytes`), a kind byte and the
//! payload (protobuf for Raft messages, JSON for requests and replies, each
//! request tagged with a correlation id its reply carries back).
//!
//! Runs on the controller shard (shard 0). One outgoing link per peer with a
//! bounded queue: a full queue drops Raft messages (Raft retransmits) and
//! refuses requests; a broken link fails its pending requests, tells Raft the
//! peer is unreachable, and reconnects after a back-off. Each refused
//! connect (ECONNREFUSED: nothing listens on the peer's port, its process is
//! gone) and each successful one is reported, for the active controller's
//! fencing of dead brokers; timeouts and other errors are not.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use futures::channel::oneshot;
use futures_lite::AsyncReadExt;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};

use super::controller::{ControllerError, ControllerReply, ControllerRequest};
use super::records::NodeId;

const KIND_RAFT: u8 = 1;
const KIND_REQUEST: u8 = 2;
const KIND_REPLY: u8 = 3;

/// Limits of the controller links (defaults in config.rs).
#[derive(Debug, Clone, Copy)]
pub struct LinkLimits {
    pub max_frame_bytes: usize,
    pub queue_messages: usize,
    pub reconnect_backoff: Duration,
    pub connect_timeout: Duration,
}

pub type ReplyResult = Result<ControllerReply, ControllerError>;
type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// Where inbound traffic goes: Raft messages to the quorum driver, requests
/// to the controller service.
pub trait Inbound {
    fn raft_message(&self, msg: Message);
    fn request(&self, req: ControllerRequest) -> LocalFuture<ReplyResult>;
    /// The link to `peer` broke; a snapshot sent on it may not have arrived.
    fn unreachable(&self, peer: NodeId, lost_snapshot: bool);
    fn snapshot_sent(&self, peer: NodeId);
    /// A connection to `peer`'s controller listener was refused.
    fn refused(&self, peer: NodeId);
    /// A connection to `peer`'s controller listener was established.
    fn connected(&self, peer: NodeId);
}

enum Outgoing {
    Raft(Message),
    Request(u64, ControllerRequest),
}

struct Link {
    queue: LocalSender<Outgoing>,
}

/// The outgoing side: one link per peer.
pub struct Links {
    links: HashMap<NodeId, Link>,
    pending: Rc<RefCell<HashMap<u64, oneshot::Sender<ReplyResult>>>>,
    next_correlation: Cell<u64>,
}

impl Links {
    pub fn start(
        peers: &[(NodeId, SocketAddr)],
        limits: LinkLimits,
        inbound: Rc<dyn Inbound>,
    ) -> Links {
        let pending = Rc::new(RefCell::new(HashMap::new()));
        let mut links = HashMap::new();
        for (peer, addr) in peers {
            let (tx, rx) = local_channel::new_bounded(limits.queue_messages);
            let (peer, addr, inbound, pending) = (*peer, *addr, inbound.clone(), pending.clone());
            glommio::spawn_local(run_link(peer, addr, rx, limits, inbound, pending)).detach();
            links.insert(peer, Link { queue: tx });
        }
        Links {
            links,
            pending,
            next_correlation: Cell::new(1),
        }
    }

    /// Queues a Raft message; dropped when the link's queue is full.
    pub fn send_raft(&self, msg: Message, inbound: &dyn Inbound) {
        let to = super::quorum::node::node_id(msg.to);
        let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
        let queued = self
            .links
            .get(&to)
            .is_some_and(|l| l.queue.try_send(Outgoing::Raft(msg)).is_ok());
        if !queued {
            inbound.unreachable(to, snapshot);
        }
    }

    /// Sends a request to `peer` and waits for its reply.
    pub async fn request(
        &self,
        peer: NodeId,
        req: ControllerRequest,
        timeout: Duration,
    ) -> ReplyResult {
        let Some(link) = self.links.get(&peer) else {
            return Err(ControllerError::NotController);
        };
        let id = self.next_correlation.get();
        self.next_correlation.set(id + 1);
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        if link.queue.try_send(Outgoing::Request(id, req)).is_err() {
            self.pending.borrow_mut().remove(&id);
            return Err(ControllerError::Timeout);
        }
        let timer = glommio::timer::sleep(timeout);
        futures::pin_mut!(timer);
        match futures::future::select(rx, timer).await {
            futures::future::Either::Left((Ok(reply), _)) => reply,
            futures::future::Either::Left((Err(_), _)) => Err(ControllerError::Timeout),
            futures::future::Either::Right(_) => {
                self.pending.borrow_mut().remove(&id);
                Err(ControllerError::Timeout)
            }
        }
    }
}

fn encode(kind: u8, correlation: Option<u64>, body: &[u8]) -> Vec<u8> {
    let extra = if correlation.is_some() { 8 } else { 0 };
    let mut out = Vec::with_capacity(5 + extra + body.len());
    out.extend_from_slice(&((1 + extra + body.len()) as u32).to_be_bytes());
    out.push(kind);
    if let Some(c) = correlation {
        out.extend_from_slice(&c.to_be_bytes());
    }
    out.extend_from_slice(body);
    out
}

fn split_correlation(body: &[u8]) -> Option<(u64, &[u8])> {
    let id = u64::from_be_bytes(body.get(..8)?.try_into().ok()?);
    Some((id, &body[8..]))
}

async fn run_link(
    peer: NodeId,
    addr: SocketAddr,
    rx: LocalReceiver<Outgoing>,
    limits: LinkLimits,
    inbound: Rc<dyn Inbound>,
    pending: Rc<RefCell<HashMap<u64, oneshot::Sender<ReplyResult>>>>,
) {
    loop {
        let connect = TcpStream::connect_timeout(addr, limits.connect_timeout).await;
        let stream = match connect {
            Ok(s) => {
                inbound.connected(peer);
                s
            }
            Err(e) => {
                tracing::debug!(peer, %addr, error = %e, "controller link: connect failed");
                if is_refused(&e) {
                    inbound.refused(peer);
                }
                fail_queued(&rx, &inbound, peer, &pending).await;
                glommio::timer::sleep(limits.reconnect_backoff).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let stream = Rc::new(RefCell::new(stream));
        let reader = {
            let (stream, pending) = (stream.clone(), pending.clone());
            glommio::spawn_local(read_replies(stream, limits.max_frame_bytes, pending))
        };
        let sent = RefCell::new(Vec::new());
        // The link ends when a write fails or the peer closes (a killed
        // peer is noticed by the reader even while nothing is written).
        let writer = write_queued(&stream, &rx, &inbound, peer, &sent, &pending);
        futures::pin_mut!(writer);
        match futures::future::select(writer, reader).await {
            futures::future::Either::Left((result, reader)) => {
                reader.cancel().await;
                if let Err(e) = result {
                    tracing::debug!(peer, error = %e, "controller link broke");
                }
            }
            futures::future::Either::Right(_) => {
                tracing::debug!(peer, "controller link closed by the peer");
            }
        }
        // Requests written on the broken connection get no reply: their
        // callers retry at once instead of waiting out their timeouts.
        for id in sent.take() {
            if let Some(tx) = pending.borrow_mut().remove(&id) {
                let _ = tx.send(Err(ControllerError::NotController));
            }
        }
        inbound.unreachable(peer, false);
        glommio::timer::sleep(limits.reconnect_backoff).await;
    }
}

/// Whether a connect failed because nothing listens on the port (the
/// peer's host answered with a reset), not for a timeout or a routing error.
fn is_refused<T>(e: &glommio::GlommioError<T>) -> bool {
    let io = match e {
        glommio::GlommioError::IoError(io) => io,
        glommio::GlommioError::EnhancedIoError { source, .. } => source,
        _ => return false,
    };
    io.kind() == std::io::ErrorKind::ConnectionRefused
        || io.raw_os_error() == Some(libc::ECONNREFUSED)
}

/// While a peer cannot be reached: Raft messages are dropped (reported),
/// requests fail at once.
async fn fail_queued(
    rx: &LocalReceiver<Outgoing>,
    inbound: &Rc<dyn Inbound>,
    peer: NodeId,
    pending: &RefCell<HashMap<u64, oneshot::Sender<ReplyResult>>>,
) {
    inbound.unreachable(peer, false);
    while let Some(Some(m)) = futures_lite::future::poll_once(rx.recv()).await {
        match m {
            Outgoing::Raft(msg) => {
                if msg.get_msg_type() == MessageType::MsgSnapshot {
                    inbound.unreachable(peer, true);
                }
            }
            Outgoing::Request(id, _) => {
                if let Some(tx) = pending.borrow_mut().remove(&id) {
                    let _ = tx.send(Err(ControllerError::NotController));
                }
            }
        }
    }
}

async fn write_queued(
    stream: &Rc<RefCell<TcpStream>>,
    rx: &LocalReceiver<Outgoing>,
    inbound: &Rc<dyn Inbound>,
    peer: NodeId,
    sent: &RefCell<Vec<u64>>,
    pending: &RefCell<HashMap<u64, oneshot::Sender<ReplyResult>>>,
) -> std::io::Result<()> {
    while let Some(m) = rx.recv().await {
        let (frame, snapshot) = match m {
            Outgoing::Raft(msg) => {
                let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
                let body = msg.write_to_bytes().map_err(std::io::Error::other)?;
                (encode(KIND_RAFT, None, &body), snapshot)
            }
            Outgoing::Request(id, req) => {
                let body = serde_json::to_vec(&req).map_err(std::io::Error::other)?;
                let mut sent = sent.borrow_mut();
                sent.retain(|i| pending.borrow().contains_key(i));
                sent.push(id);
                (encode(KIND_REQUEST, Some(id), &body), false)
            }
        };
        let written = write_all(stream, &frame).await;
        if snapshot {
            match &written {
                Ok(()) => inbound.snapshot_sent(peer),
                Err(_) => inbound.unreachable(peer, true),
            }
        }
        written?;
    }
    Ok(())
}

async fn write_all(stream: &Rc<RefCell<TcpStream>>, bytes: &[u8]) -> std::io::Result<()> {
    let mut at = 0;
    while at < bytes.len() {
        let n = std::future::poll_fn(|cx| {
            let mut s = stream.borrow_mut();
            futures_lite::AsyncWrite::poll_write(Pin::new(&mut *s), cx, &bytes[at..])
        })
        .await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        at += n;
    }
    Ok(())
}

async fn read_replies(
    stream: Rc<RefCell<TcpStream>>,
    max: usize,
    pending: Rc<RefCell<HashMap<u64, oneshot::Sender<ReplyResult>>>>,
) {
    let mut reader = SharedReader(stream);
    loop {
        let Ok((kind, body)) = read_shared(&mut reader, max).await else {
            return;
        };
        if kind != KIND_REPLY {
            continue;
        }
        let Some((id, json)) = split_correlation(&body) else {
            continue;
        };
        let reply = serde_json::from_slice::<ReplyResult>(json)
            .unwrap_or_else(|e| Err(ControllerError::InvalidRequest(e.to_string())));
        if let Some(tx) = pending.borrow_mut().remove(&id) {
            let _ = tx.send(reply);
        }
    }
}

/// Reads through a stream shared with a writer (same thread).
struct SharedReader(Rc<RefCell<TcpStream>>);

impl futures_lite::AsyncRead for SharedReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

async fn read_shared(reader: &mut SharedReader, max: usize) -> std::io::Result<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > max {
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    let mut body = Vec::new();
    (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut body)
        .await?;
    if body.len() != len {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let kind = body.remove(0);
    Ok((kind, body))
}

/// Accepts peers' links for as long as the shard runs.
pub async fn serve(listener: TcpListener, max_frame_bytes: usize, inbound: Rc<dyn Inbound>) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let inbound = inbound.clone();
                glommio::spawn_local(async move {
                    if let Err(e) = serve_peer(stream, max_frame_bytes, inbound).await {
                        tracing::debug!(error = %e, "controller connection closed");
                    }
                })
                .detach();
            }
            Err(e) => {
                tracing::warn!(error = %e, "controller listener: accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_peer(
    stream: TcpStream,
    max: usize,
    inbound: Rc<dyn Inbound>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let stream = Rc::new(RefCell::new(stream));
    let mut reader = SharedReader(stream.clone());
    // Replies are written whole, one at a time.
    let writing = Rc::new(glommio::sync::Semaphore::new(1));
    loop {
        let (kind, body) = read_shared(&mut reader, max).await?;
        match kind {
            KIND_RAFT => {
                let msg = Message::parse_from_bytes(&body).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
                })?;
                inbound.raft_message(msg);
            }
            KIND_REQUEST => {
                let Some((id, json)) = split_correlation(&body) else {
                    return Err(std::io::ErrorKind::InvalidData.into());
                };
                let req: ControllerRequest = serde_json::from_slice(json).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string())
                })?;
                let (inbound, stream, writing) = (inbound.clone(), stream.clone(), writing.clone());
                glommio::spawn_local(async move {
                    let reply = inbound.request(req).await;
                    let body = serde_json::to_vec(&reply).expect("replies serialize");
                    let Ok(_permit) = writing.acquire_permit(1).await else {
                        return;
                    };
                    let _ = write_all(&stream, &encode(KIND_REPLY, Some(id), &body)).await;
                })
                .detach();
            }
            other => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("unknown controller frame kind {other}"),
                ))
            }
        }
    }
}
