//! One client connection: a reader that reads and decodes request frames and
//! starts one task per request, and a writer that sends the responses
//! strictly in request order.
//!
//! Runs on the accepting shard; the connection's state is its own. Memory a
//! connection can hold: the frames being read and handled (the shard's
//! request budget), the fetch responses (the shard's fetch budget), and its
//! queued responses, bounded per connection: a client that stops reading
//! its responses stops being read, as Kafka mutes a channel with a pending
//! response. Everything goes back when the connection closes: handler tasks
//! run to their end and drop their frames and responses.

use std::rc::Rc;
use std::time::Instant;

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;

use super::framing::{self, SharedStream};
use crate::protocol::{self, ResponseFrame};
use crate::shard::{Budget, Grant, Shard};

/// What a request task hands the writer: the response (none for a produce
/// with acks=0) and the bytes it counts against the connection's queue.
struct Response {
    frame: Option<ResponseFrame>,
    _queued: Grant,
}

type ResponseTask = glommio::task::JoinHandle<Response>;

/// Counts the connection closed however `serve` ends.
struct ClosedOnDrop;

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        crate::metrics::with(|m| m.connections_closed.inc());
    }
}

pub async fn serve(shard: Rc<Shard>, stream: TcpStream) -> std::io::Result<()> {
    crate::metrics::with(|m| m.connections_accepted.inc());
    let _closed = ClosedOnDrop;
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr().ok();
    let stream = SharedStream::new(stream);
    let queued = Budget::new(shard.config.connection_max_queued_response_bytes);
    let (tx, rx) =
        local_channel::new_bounded::<ResponseTask>(shard.config.max_in_flight_per_connection);
    let writer = glommio::spawn_local(write_responses(stream.clone(), rx));
    let result = read_requests(&shard, stream.clone(), &tx, &queued, peer).await;
    if let Err(e) = &result {
        tracing::debug!(?peer, error = %e, "closing connection");
    }
    drop(tx);
    let _ = writer.await;
    // Dropping the last handle closes the socket.
    drop(stream);
    result
}

/// Writes responses in request order until the reader stops or a write
/// fails; each response's memory goes back as soon as it is written.
async fn write_responses(
    mut stream: SharedStream,
    rx: LocalReceiver<ResponseTask>,
) -> std::io::Result<()> {
    while let Some(task) = rx.recv().await {
        match task.await {
            Some(Response {
                frame: Some(frame), ..
            }) => framing::write_frame(&mut stream, &frame).await?,
            Some(_) => {}
            None => break,
        }
    }
    Ok(())
}

async fn read_requests(
    shard: &Rc<Shard>,
    mut stream: SharedStream,
    tx: &LocalSender<ResponseTask>,
    queued: &Rc<Budget>,
    peer: Option<std::net::SocketAddr>,
) -> std::io::Result<()> {
    let limits = framing::FrameLimits::of(shard);
    loop {
        if shard.shutting_down.get() {
            return Ok(());
        }
        // Muted while the responses not yet written are over the limit.
        queued.room().await;
        let Some(frame) = framing::read_frame(&mut stream, &limits).await? else {
            return Ok(());
        };
        let decoded = protocol::decode(frame.bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        // A fetch counts its response limit from now, so requests read after
        // it cannot pile up more responses than the connection may queue.
        let mut ticket = queued.take_forced(protocol::response_bytes_bound(&decoded));
        let handler_shard = shard.clone();
        shard.in_flight.set(shard.in_flight.get() + 1);
        let task = glommio::spawn_local(async move {
            let (frame_bytes, api_key, started) = (frame, decoded.api_key as i16, Instant::now());
            let response = protocol::handle(handler_shard.clone(), decoded, peer).await;
            crate::metrics::request_done(api_key, started.elapsed());
            drop(frame_bytes);
            handler_shard
                .in_flight
                .set(handler_shard.in_flight.get() - 1);
            ticket.set_forced(response.as_ref().map_or(0, ResponseFrame::len));
            Response {
                frame: response,
                _queued: ticket,
            }
        })
        .detach();
        if tx.send(task).await.is_err() {
            return Ok(());
        }
    }
}
