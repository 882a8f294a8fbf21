//! Framing: reading request frames into buffers that grow as bytes arrive,
//! and writing response frames with vectored sends.
//!
//! Runs on the connection's shard. A frame's buffer comes from the shard's
//! pool and its bytes are counted against the shard's request budget from
//! before they are read until the request has been handled; then the buffer
//! goes back to the pool.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::config::FRAME_FIRST_READ_BYTES;
use crate::protocol::ResponseFrame;
use crate::shard::{buffer_class_size, Budget, BufferPool, Grant, Shard};

/// The stream shared by the reader and the writer of one connection; each
/// poll borrows it only for the duration of the call (same thread).
#[derive(Clone)]
pub struct SharedStream(Rc<RefCell<TcpStream>>);

impl SharedStream {
    pub fn new(stream: TcpStream) -> SharedStream {
        SharedStream(Rc::new(RefCell::new(stream)))
    }

    fn fd(&self) -> RawFd {
        self.0.borrow().as_raw_fd()
    }
}

impl AsyncRead for SharedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

/// One request frame (without its length prefix). Dropping it gives its
/// bytes back to the request budget and its buffer back to the pool once no
/// part of the request refers to it any more.
pub struct RequestFrame {
    bytes: Bytes,
    pool: Rc<BufferPool>,
    _grant: Grant,
}

impl RequestFrame {
    pub fn bytes(&self) -> Bytes {
        self.bytes.clone()
    }
}

impl Drop for RequestFrame {
    fn drop(&mut self) {
        // Still shared (a part kept past the request, e.g. group metadata):
        // the buffer is freed with its last part instead.
        if let Ok(buf) = std::mem::take(&mut self.bytes).try_into_mut() {
            self.pool.give(buf);
        }
    }
}

/// Where frames are read into: the largest frame accepted, the budget
/// their bytes count against and the pool their buffers come from.
pub struct FrameLimits {
    pub max_request_bytes: usize,
    pub budget: Rc<Budget>,
    pub pool: Rc<BufferPool>,
}

impl FrameLimits {
    pub fn of(shard: &Shard) -> FrameLimits {
        FrameLimits {
            max_request_bytes: shard.config.max_request_bytes,
            budget: shard.request_budget.clone(),
            pool: shard.frame_pool.clone(),
        }
    }
}

/// Reads the next frame; `None` when the peer closed between frames.
pub async fn read_frame(
    stream: &mut SharedStream,
    limits: &FrameLimits,
) -> io::Result<Option<RequestFrame>> {
    let max = limits.max_request_bytes;
    let mut len_buf = [0u8; 4];
    match stream.read_exact(&mut len_buf).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = i32::from_be_bytes(len_buf);
    if len < 8 || len as usize > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("request frame of {len} bytes refused (limit {max})"),
        ));
    }
    let mut grant = limits.budget.empty();
    let body = read_body(stream, len as usize, &limits.pool, &mut grant).await?;
    Ok(Some(RequestFrame {
        bytes: body.freeze(),
        pool: limits.pool.clone(),
        _grant: grant,
    }))
}

/// Reads a body of `len` bytes into a pooled buffer that starts at what the
/// socket holds (at least FRAME_FIRST_READ_BYTES) and at least doubles each
/// time it fills, up to `len` rounded up to its size class. Each size is
/// granted by the request budget before it is read into (waiting while the
/// budget is full), so the buffer never outgrows what has arrived by more
/// than about twice, and never the budget.
async fn read_body(
    stream: &mut SharedStream,
    len: usize,
    pool: &BufferPool,
    grant: &mut Grant,
) -> io::Result<BytesMut> {
    let whole = buffer_class_size(len);
    let mut buf = BytesMut::new();
    let mut filled = 0;
    while filled < len {
        if filled == buf.len() {
            let arrived = filled + queued_bytes(stream.fd());
            let size = buffer_class_size(arrived.max(buf.len() * 2).max(FRAME_FIRST_READ_BYTES))
                .min(whole);
            grant.grow(size, whole).await;
            let mut bigger = pool.take(size);
            bigger[..filled].copy_from_slice(&buf[..filled]);
            let smaller = std::mem::replace(&mut buf, bigger);
            if smaller.capacity() > 0 {
                pool.give(smaller);
            }
        }
        let end = len.min(buf.len());
        let read = stream.read(&mut buf[filled..end]).await;
        match read {
            Ok(n) if n > 0 => filled += n,
            Ok(_) => {
                pool.give(buf);
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            Err(e) => {
                pool.give(buf);
                return Err(e);
            }
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// Bytes waiting in the socket's receive queue (0 if unknown).
fn queued_bytes(fd: RawFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which is valid.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n as *mut libc::c_int) };
    if rc == 0 {
        n.max(0) as usize
    } else {
        0
    }
}

/// Most parts passed to one sendmsg (IOV_MAX is 1024 on Linux).
const MAX_PARTS_PER_SEND: usize = 256;

/// Writes a frame's parts in order: vectored non-blocking sends while the
/// socket takes them, the reactor's write (which waits for room) otherwise.
pub async fn write_frame(stream: &mut SharedStream, frame: &ResponseFrame) -> io::Result<()> {
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
            send_vectored(stream.fd(), &iov)
        };
        let mut sent = match sent {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let n = stream.write(&parts[index][offset..]).await?;
                if n == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
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
fn send_vectored(fd: RawFd, iov: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: IoSlice is ABI-compatible with iovec; the message header
    // points only at `iov`, which outlives the call.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
        msg.msg_iovlen = iov.len() as _;
        libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    fn run<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move { f().await })
            .expect("executor")
            .join()
            .expect("join");
    }

    fn limits(budget: usize) -> FrameLimits {
        FrameLimits {
            max_request_bytes: 100 << 20,
            budget: Budget::new(budget),
            pool: Rc::new(BufferPool::new(8 << 20, 4 << 20)),
        }
    }

    /// A loopback connection: the broker's end, and a client thread that
    /// runs `client` on its end.
    async fn connect(
        client: impl FnOnce(std::net::TcpStream) + Send + 'static,
    ) -> (SharedStream, std::thread::JoinHandle<()>) {
        let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let thread =
            std::thread::spawn(move || client(std::net::TcpStream::connect(addr).unwrap()));
        (SharedStream::new(listener.accept().await.unwrap()), thread)
    }

    async fn settle() {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }

    #[test]
    fn a_frame_costs_what_has_arrived_until_it_is_whole() {
        run(|| async {
            let limits = Rc::new(limits(64 << 20));
            let len = 1_000_000usize;
            let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
            let sent = body.clone();
            let (mut stream, client) = connect(move |mut c| {
                c.write_all(&(len as i32).to_be_bytes()).unwrap();
                c.write_all(&sent[..10]).unwrap();
                go_rx.recv().unwrap();
                c.write_all(&sent[10..]).unwrap();
            })
            .await;
            let reader = {
                let limits = limits.clone();
                glommio::spawn_local(async move { read_frame(&mut stream, &limits).await })
            };
            settle().await;
            assert_eq!(limits.budget.used(), FRAME_FIRST_READ_BYTES, "10 bytes in");
            go_tx.send(()).unwrap();
            let frame = reader.await.unwrap().unwrap();
            assert_eq!(&frame.bytes()[..], &body[..]);
            assert_eq!(limits.budget.used(), buffer_class_size(len));
            let smaller = limits.pool.pooled();
            assert!(smaller > 0, "outgrown buffers went back to the pool");
            drop(frame);
            assert_eq!(limits.budget.used(), 0);
            assert_eq!(limits.pool.pooled(), smaller + buffer_class_size(len));
            client.join().unwrap();
        });
    }

    #[test]
    fn a_full_budget_holds_the_next_frame_back_until_bytes_come_back() {
        run(|| async {
            let limits = Rc::new(limits(1 << 20));
            let held = limits.budget.take_up_to(1 << 20);
            let (mut stream, client) = connect(|mut c| {
                let mut frame = 200i32.to_be_bytes().to_vec();
                frame.extend_from_slice(&[7u8; 200]);
                c.write_all(&frame).unwrap();
                std::thread::sleep(Duration::from_millis(300));
            })
            .await;
            let reader = {
                let limits = limits.clone();
                glommio::spawn_local(async move { read_frame(&mut stream, &limits).await })
            };
            settle().await;
            assert_eq!(limits.budget.used(), 1 << 20, "waits without reading");
            drop(held);
            let frame = reader.await.unwrap().unwrap();
            assert_eq!(&frame.bytes()[..], &[7u8; 200][..]);
            assert_eq!(limits.budget.used(), 224, "its size class");
            client.join().unwrap();
        });
    }

    #[test]
    fn a_connection_closed_mid_frame_gives_its_buffer_back() {
        run(|| async {
            let limits = limits(64 << 20);
            let (mut stream, client) = connect(|mut c| {
                c.write_all(&(1i32 << 20).to_be_bytes()).unwrap();
                c.write_all(&[1u8; 5000]).unwrap();
            })
            .await;
            let err = match read_frame(&mut stream, &limits).await {
                Err(e) => e,
                Ok(_) => panic!("the frame was cut short"),
            };
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
            assert_eq!(limits.budget.used(), 0);
            assert_eq!(limits.pool.pooled(), FRAME_FIRST_READ_BYTES);
            client.join().unwrap();
        });
    }

    #[test]
    fn oversized_and_undersized_lengths_are_refused_before_any_allocation() {
        run(|| async {
            let limits = limits(64 << 20);
            for len in [i32::MAX, -5, 3] {
                let (mut stream, client) = connect(move |mut c| {
                    c.write_all(&len.to_be_bytes()).unwrap();
                    c.write_all(&[0u8; 64]).unwrap();
                })
                .await;
                let refused = read_frame(&mut stream, &limits).await;
                assert!(matches!(refused, Err(e) if e.kind() == io::ErrorKind::InvalidData));
                assert_eq!((limits.budget.used(), limits.pool.pooled()), (0, 0));
                client.join().unwrap();
            }
        });
    }
}
