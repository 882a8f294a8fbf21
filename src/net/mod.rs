//! Network: each shard accepts on the shared port (SO_REUSEPORT) and serves
//! its connections ([`connection`]): per connection a reader reads frames
//! ([`framing`]) and starts one task per request; a writer sends the
//! responses strictly in request order.
//!
//! Runs on the accepting shard; the connection's state is its own. What a
//! connection may hold in memory is bounded by the shard's budgets
//! (`Shard::request_budget`, `Shard::fetch_budget`) and the connection's own
//! bound on queued responses.

mod connection;
mod framing;

use std::rc::Rc;

use glommio::net::TcpListener;

use crate::shard::Shard;

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
                    if let Err(e) = connection::serve(shard, stream).await {
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
