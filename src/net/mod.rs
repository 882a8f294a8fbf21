//! Network: each shard accepts on the shared port (SO_REUSEPORT) and serves
//! its connections. Per connection a reader decodes frames and starts one
//! task per request; a writer sends the responses strictly in request order.
//!
//! Runs on the accepting shard; the connection's state is its own.

use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use std::io::IoSlice;
use std::os::fd::{AsRawFd, RawFd};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};

use crate::protocol::{self, ResponseFrame};
use crate::shard::Shard;

/// The stream shared by the reader and the writer of one connection; each
/// poll borrows it only for the duration of the call (same thread).
#[derive(Clone)]
struct SharedStream(Rc<RefCell<TcpStream>>);

impl AsyncRead for SharedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// Accepts connections until the shard shuts down.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let accepted = {
            let accept = listener.accept();
            let stop = wait_shutdown(&shard);
            futures::pin_mut!(accept, stop);
            match futures::future::select(accept, stop).await {
                futures::future::Either::Left((r, _)) => r,
                futures::future::Either::Right(_) => return,
            }
        };
        match accepted {
            Ok(stream) => {
                let shard = shard.clone();
                glommio::spawn_local(async move {
                    if let Err(e) = serve_connection(shard, stream).await {
                        tracing::debug!(error = %e, "connection closed");
                    }
                })
                .detach();
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

async fn wait_shutdown(shard: &Shard) {
    while !shard.shutting_down.get() {
        glommio::timer::sleep(std::time::Duration::from_millis(50)).await;
    }
}

type ResponseTask = glommio::task::JoinHandle<Option<ResponseFrame>>;

async fn serve_connection(shard: Rc<Shard>, stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let peer = stream.peer_addr().ok();
    let stream = SharedStream(Rc::new(RefCell::new(stream)));
    let (tx, rx) =
        local_channel::new_bounded::<ResponseTask>(shard.config.max_in_flight_per_connection);
    let mut writer_stream = stream.clone();
    let writer_shard = shard.clone();
    let writer = glommio::spawn_local(async move {
        while let Some(task) = rx.recv().await {
            let response = task.await;
            writer_shard.in_flight.set(writer_shard.in_flight.get() - 1);
            match response {
                Some(Some(frame)) => write_frame(&mut writer_stream, &frame).await?,
                Some(None) => {}
                None => break,
            }
        }
        Ok::<(), std::io::Error>(())
    });
    let result = read_requests(&shard, stream.clone(), &tx, peer).await;
    if let Err(e) = &result {
        tracing::debug!(?peer, error = %e, "closing connection");
    }
    drop(tx);
    let _ = writer.await;
    // Dropping the last handle closes the socket.
    drop(stream);
    result
}

async fn read_requests(
    shard: &Rc<Shard>,
    mut stream: SharedStream,
    tx: &local_channel::LocalSender<ResponseTask>,
    peer: Option<std::net::SocketAddr>,
) -> std::io::Result<()> {
    let max = shard.config.max_request_bytes;
    let mut len_buf = [0u8; 4];
    loop {
        if shard.shutting_down.get() {
            return Ok(());
        }
        match stream.read_exact(&mut len_buf).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let len = i32::from_be_bytes(len_buf);
        if len < 8 || len as usize > max {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("request frame of {len} bytes refused (limit {max})"),
            ));
        }
        let mut body = BytesMut::zeroed(len as usize);
        stream.read_exact(&mut body).await?;
        let frame: Bytes = body.freeze();
        let decoded = protocol::decode(frame)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
        let handler_shard = shard.clone();
        shard.in_flight.set(shard.in_flight.get() + 1);
        let task =
            glommio::spawn_local(
                async move { protocol::handle(handler_shard, decoded, peer).await },
            )
            .detach();
        if tx.send(task).await.is_err() {
            return Ok(());
        }
    }
}

/// Most parts passed to one sendmsg (IOV_MAX is 1024 on Linux).
const MAX_PARTS_PER_SEND: usize = 256;

/// Writes a frame's parts in order: vectored non-blocking sends while the
/// socket takes them, the reactor's write (which waits for room) otherwise.
async fn write_frame(stream: &mut SharedStream, frame: &ResponseFrame) -> std::io::Result<()> {
    let parts = &frame.parts;
    let (mut index, mut offset) = (0usize, 0usize);
    while index < parts.len() {
        if offset == parts[index].len() {
            index += 1;
            offset = 0;
            continue;
        }
        let sent = {
            let iov: Vec<IoSlice<'_>> = parts[index..]
                .iter()
                .take(MAX_PARTS_PER_SEND)
                .enumerate()
                .map(|(i, p)| IoSlice::new(if i == 0 { &p[offset..] } else { &p[..] }))
                .collect();
            send_vectored(stream.0.borrow().as_raw_fd(), &iov)
        };
        let mut sent = match sent {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let n = stream.write(&parts[index][offset..]).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::WriteZero.into());
                }
                n
            }
            Err(e) => return Err(e),
        };
        while sent > 0 {
            let left = parts[index].len() - offset;
            if sent < left {
                offset += sent;
                sent = 0;
            } else {
                sent -= left;
                index += 1;
                offset = 0;
            }
        }
    }
    Ok(())
}

/// One non-blocking sendmsg of `iov`.
fn send_vectored(fd: RawFd, iov: &[IoSlice<'_>]) -> std::io::Result<usize> {
    // SAFETY: IoSlice is ABI-compatible with iovec; the message header
    // points only at `iov`, which outlives the call.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}
