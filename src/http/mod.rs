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

use glommio::{Latency, Shares};

pub use health::Readiness;
pub use server::{Handler, Request, Response, Router};

use crate::shard::Shard;

/// Binds the HTTP listener's socket (before the shards start, so that a
/// taken port fails start-up at once); None when disabled.
pub fn bind(addr: Option<SocketAddr>) -> std::io::Result<Option<std::net::TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    std::net::TcpListener::bind(addr).map(Some)
}

/// The broker's routes: `/metrics`, `/healthz`, `/readyz`.
pub fn routes(shard: &Rc<Shard>, ready: Readiness) -> Router {
    let mut router = Router::new();
    let scraped = shard.clone();
    router
        .route(
            "/metrics",
            Rc::new(move |_req| Box::pin(metrics::scrape(scraped.clone()))),
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
    router
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
