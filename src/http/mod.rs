//! The HTTP listener (`http_listen`, default 0.0.0.0:9644; "0" disables
//! it): Prometheus `/metrics`, `/healthz` and `/readyz`, served by
//! [`server`] from a route table that other endpoints join with
//! [`Router::route`] and [`Router::route_prefix`].
//!
//! Runs on shard 0, in a task queue of its own with few shares, so a scrape
//! yields to the data path. A scrape asks every shard for a copy of its
//! shard-local counters and a description of its partitions and groups
//! over the shard mesh ([`gather`]) and encodes them on shard 0
//! ([`metrics`]); no shard's data path waits on it.

pub mod gather;
pub mod health;
pub mod metrics;
pub mod server;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use glommio::{Latency, Shares};

pub use health::Readiness;
pub use server::{Handler, Request, Response, Router};

use crate::lag::monitor::LagMonitor;
use crate::shard::Shard;

/// Binds the HTTP listener's socket (before the shards start, so that a
/// taken port fails start-up at once); None when disabled.
pub fn bind(addr: Option<SocketAddr>) -> std::io::Result<Option<std::net::TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    std::net::TcpListener::bind(addr).map(Some)
}

/// The broker's routes: `/metrics`, `/healthz`, `/readyz`, and with the
/// lag monitor on, Burrow's `/v3/kafka/local/consumer[/GROUP/lag|status]`.
pub fn routes(shard: &Rc<Shard>, ready: Readiness, lag: Option<Arc<LagMonitor>>) -> Router {
    let mut router = Router::new();
    let (scraped, lag_metrics) = (shard.clone(), lag.clone());
    router
        .route(
            "/metrics",
            Rc::new(move |_req| Box::pin(metrics::scrape(scraped.clone(), lag_metrics.clone()))),
        )
        .route(
            "/healthz",
            Rc::new(|_req| Box::pin(async { health::healthz() })),
        )
        .route(
            "/readyz",
            Rc::new(move |_req| {
                let answer = health::readyz(&ready);
                Box::pin(async move { answer })
            }),
        );
    if let Some(lag) = lag {
        router.route_prefix(
            "/v3/kafka",
            Rc::new(move |req: Request| {
                let answer = consumer_lag(&lag, &req.path);
                Box::pin(async move { answer })
            }),
        );
    }
    router
}

/// Burrow's consumer lag endpoints, answered from the lag monitor's
/// evaluator (its lock is held by the sampler thread only while it feeds
/// a round's samples).
fn consumer_lag(lag: &LagMonitor, path: &str) -> Response {
    match lag.http_get(path, crate::lag::monitor::now_ms()) {
        Some((status, body)) => Response::new(status, "application/json", body),
        None => Response::new(404, "text/plain; charset=utf-8", "not found\n"),
    }
}

/// Serves `router` on `listener` from this shard, in a low-share task
/// queue, until `stop()`.
pub fn start(listener: std::net::TcpListener, router: Router, stop: Rc<dyn Fn() -> bool>) {
    use std::os::fd::{FromRawFd, IntoRawFd};
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(http_listen = %addr, "serving metrics and health over HTTP");
    }
    // SAFETY: the descriptor is a bound, listening TCP socket owned by no one else.
    let listener = unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
    let queue = glommio::executor().create_task_queue(
        Shares::Static(crate::config::HTTP_TASK_QUEUE_SHARES),
        Latency::NotImportant,
        "http",
    );
    let serve = server::serve(listener, Rc::new(router), stop);
    match glommio::spawn_local_into(serve, queue) {
        Ok(task) => {
            task.detach();
        }
        Err(e) => tracing::error!(error = %e, "starting the HTTP listener"),
    };
}
