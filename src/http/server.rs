//! A minimal HTTP/1.1 server: one request per connection (`Connection:
//! close`), GET and HEAD only, the head parsed with `httparse`, answers
//! with a `Content-Length`. Routed by a table of exact paths and path
//! prefixes, each with an async handler that gets the request and returns
//! status, content type and body.
//!
//! Runs on one shard (shard 0), in a task queue of its own with few shares
//! (`HTTP_TASK_QUEUE_SHARES`), so the data path keeps the core when both
//! want it. Hostile clients cost bounded memory and time: at most
//! `HTTP_MAX_CONNECTIONS` at once (more wait in the kernel's backlog), a
//! head of at most `HTTP_MAX_REQUEST_HEAD_BYTES` with at most
//! `HTTP_MAX_HEADERS` headers, read within `HTTP_REQUEST_TIMEOUT_MS`, and
//! the response written within `HTTP_WRITE_TIMEOUT_MS`.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;

use crate::config::{
    HTTP_MAX_CONNECTIONS, HTTP_MAX_HEADERS, HTTP_MAX_REQUEST_HEAD_BYTES, HTTP_REQUEST_TIMEOUT_MS,
    HTTP_WRITE_TIMEOUT_MS,
};

/// A parsed request as handlers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query, e.g. `/v3/kafka/local/consumer/g1/lag`.
    pub path: String,
    /// What follows `?`, if anything.
    pub query: Option<String>,
}

/// A handler's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type: content_type.to_string(),
            body: body.into(),
        }
    }

    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, "text/plain; charset=utf-8", body.into())
    }

    pub fn json(status: u16, body: impl Into<String>) -> Response {
        Response::new(status, "application/json", body.into())
    }
}

pub type HandlerFuture = Pin<Box<dyn Future<Output = Response>>>;
/// An endpoint: gets the request, answers asynchronously (it may gather
/// from every shard over the mesh).
pub type Handler = Rc<dyn Fn(Request) -> HandlerFuture>;

/// Paths to handlers. Exact paths win over prefixes; the longest prefix
/// wins among prefixes. A prefix `/a/b` matches `/a/b` and `/a/b/...`.
#[derive(Default, Clone)]
pub struct Router {
    exact: Vec<(String, Handler)>,
    prefixes: Vec<(String, Handler)>,
}

impl Router {
    pub fn new() -> Router {
        Router::default()
    }

    /// Serves `path` exactly with `handler`.
    pub fn route(&mut self, path: &str, handler: Handler) -> &mut Router {
        self.exact.push((path.to_string(), handler));
        self
    }

    /// Serves `prefix` and every path below it with `handler`.
    pub fn route_prefix(&mut self, prefix: &str, handler: Handler) -> &mut Router {
        self.prefixes
            .push((prefix.trim_end_matches('/').to_string(), handler));
        self
    }

    pub fn find(&self, path: &str) -> Option<&Handler> {
        if let Some((_, h)) = self.exact.iter().find(|(p, _)| p == path) {
            return Some(h);
        }
        self.prefixes
            .iter()
            .filter(|(p, _)| {
                path.strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .max_by_key(|(p, _)| p.len())
            .map(|(_, h)| h)
    }
}

/// What reading a request head came to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Head {
    Request(Request),
    /// Answer this status and close (400, 405, 431).
    Refuse(u16),
    /// Incomplete: read more.
    Partial,
}

/// Parses what was read so far of a request head.
pub(super) fn parse_head(buf: &[u8]) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; HTTP_MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let method = req.method.unwrap_or_default().to_string();
            if method != "GET" && method != "HEAD" {
                return Head::Refuse(405);
            }
            let target = req.path.unwrap_or("/");
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p.to_string(), Some(q.to_string())),
                None => (target.to_string(), None),
            };
            Head::Request(Request {
                method,
                path,
                query,
            })
        }
        Ok(httparse::Status::Partial) if buf.len() >= HTTP_MAX_REQUEST_HEAD_BYTES => {
            Head::Refuse(431)
        }
        Ok(httparse::Status::Partial) => Head::Partial,
        Err(httparse::Error::TooManyHeaders) => Head::Refuse(431),
        Err(_) => Head::Refuse(400),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// The response's bytes: status line, headers, and the body unless `head_only`.
pub(super) fn encode_response(r: &Response, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(&r.body);
    }
    out
}

/// Accepts until `stop()` says so; each connection serves one request.
pub async fn serve(listener: TcpListener, router: Rc<Router>, stop: Rc<dyn Fn() -> bool>) {
    let slots = Rc::new(Semaphore::new(HTTP_MAX_CONNECTIONS as u64));
    loop {
        let Ok(slot) = slots.acquire_static_permit(1).await else {
            return;
        };
        let accepted = {
            let accept = listener.accept();
            let stopped = wait_until(stop.clone());
            futures::pin_mut!(accept, stopped);
            match futures::future::select(accept, stopped).await {
                futures::future::Either::Left((r, _)) => r,
                futures::future::Either::Right(_) => return,
            }
        };
        match accepted {
            Ok(stream) => {
                let router = router.clone();
                glommio::spawn_local(async move {
                    serve_one(stream, &router).await;
                    drop(slot);
                })
                .detach();
            }
            Err(e) => {
                tracing::debug!(error = %e, "http accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn wait_until(stop: Rc<dyn Fn() -> bool>) {
    while !stop() {
        glommio::timer::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `fut` for at most `ms`; None when it took longer.
async fn within<T>(ms: u64, fut: impl Future<Output = T>) -> Option<T> {
    let timer = glommio::timer::sleep(Duration::from_millis(ms));
    futures::pin_mut!(fut, timer);
    match futures::future::select(fut, timer).await {
        futures::future::Either::Left((v, _)) => Some(v),
        futures::future::Either::Right(_) => None,
    }
}

async fn serve_one(mut stream: TcpStream, router: &Router) {
    let head = within(HTTP_REQUEST_TIMEOUT_MS, read_head(&mut stream))
        .await
        .unwrap_or(Head::Refuse(408));
    let (response, head_only) = match head {
        Head::Partial => return, // the client closed mid-head
        Head::Refuse(status) => (Response::text(status, reason(status)), false),
        Head::Request(req) => {
            let head_only = req.method == "HEAD";
            let response = match router.find(&req.path) {
                Some(handler) => handler(req).await,
                None => Response::text(404, "not found\n"),
            };
            (response, head_only)
        }
    };
    let bytes = encode_response(&response, head_only);
    let written = within(HTTP_WRITE_TIMEOUT_MS, async {
        stream.write_all(&bytes).await?;
        stream.close().await
    })
    .await;
    if !matches!(written, Some(Ok(()))) {
        tracing::debug!("http response not written in time or the client went away");
    }
}

/// Reads until the head is complete, refused, or the client closes.
async fn read_head(stream: &mut TcpStream) -> Head {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let room = HTTP_MAX_REQUEST_HEAD_BYTES - buf.len();
        let n = match stream.read(&mut chunk[..room.min(1024)]).await {
            Ok(0) | Err(_) => return Head::Partial,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        match parse_head(&buf) {
            Head::Partial => continue,
            done => return done,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler(tag: &'static str) -> Handler {
        Rc::new(move |_req| Box::pin(async move { Response::text(200, tag) }))
    }

    #[test]
    fn exact_paths_win_then_the_longest_prefix_on_a_segment_boundary() {
        let mut r = Router::new();
        r.route("/metrics", handler("metrics"))
            .route_prefix("/v3/kafka/local/consumer", handler("consumers"))
            .route_prefix("/v3/kafka/local/consumer/special", handler("special"))
            .route("/v3/kafka/local/consumer", handler("list"));
        let tag = |p: &str| {
            r.find(p).map(|h| {
                let resp = futures::executor::block_on(h(Request {
                    method: "GET".into(),
                    path: p.into(),
                    query: None,
                }));
                String::from_utf8(resp.body).unwrap()
            })
        };
        assert_eq!(tag("/metrics").as_deref(), Some("metrics"));
        assert_eq!(tag("/metrics/x"), None);
        assert_eq!(tag("/v3/kafka/local/consumer").as_deref(), Some("list"));
        assert_eq!(
            tag("/v3/kafka/local/consumer/g1/lag").as_deref(),
            Some("consumers")
        );
        assert_eq!(
            tag("/v3/kafka/local/consumer/special/x").as_deref(),
            Some("special")
        );
        assert_eq!(tag("/v3/kafka/local/consumerX"), None);
    }

    #[test]
    fn heads_are_parsed_refused_or_read_further() {
        let get = parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(
            get,
            Head::Request(Request {
                method: "GET".into(),
                path: "/metrics".into(),
                query: Some("x=1".into())
            })
        );
        assert_eq!(parse_head(b"GET /metrics HTTP/1.1\r\nHo"), Head::Partial);
        assert_eq!(parse_head(b"POST / HTTP/1.1\r\n\r\n"), Head::Refuse(405));
        assert_eq!(parse_head(b"\x00\x01garbage\r\n\r\n"), Head::Refuse(400));
        let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
        huge.resize(HTTP_MAX_REQUEST_HEAD_BYTES, b'a');
        assert_eq!(parse_head(&huge), Head::Refuse(431));
        let many: String = (0..HTTP_MAX_HEADERS + 1)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse_head(req.as_bytes()), Head::Refuse(431));
    }

    #[test]
    fn responses_carry_their_length_and_close() {
        let r = Response::text(503, "recovering\n");
        let bytes = String::from_utf8(encode_response(&r, false)).unwrap();
        assert!(bytes.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
        assert!(bytes.contains("Content-Length: 11\r\n"));
        assert!(bytes.contains("Connection: close\r\n\r\nrecovering\n"));
        let head = String::from_utf8(encode_response(&r, true)).unwrap();
        assert!(head.ends_with("\r\n\r\n"));
    }
}
