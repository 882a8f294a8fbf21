//! `/healthz` and `/readyz`.
//!
//! `/healthz` answers 200 while the process serves HTTP at all. `/readyz`
//! answers 200 once recovery has finished on every shard, this broker is
//! registered with the controller quorum and unfenced, and every shard
//! accepts Kafka clients; 503 with the reason before that, while fenced,
//! and once shutting down. The readiness check is given by the server's
//! start-up (`server.rs`), which owns the start-up phases.
//!
//! Runs on the shard serving HTTP.

use std::rc::Rc;

use super::server::Response;

/// Says whether the broker is ready, or why not.
pub type Readiness = Rc<dyn Fn() -> Result<(), String>>;

pub fn healthz() -> Response {
    Response::text(200, "ok\n")
}

pub fn readyz(ready: &Readiness) -> Response {
    match ready() {
        Ok(()) => Response::text(200, "ready\n"),
        Err(why) => Response::text(503, format!("not ready: {why}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readyz_says_why_it_is_not_ready() {
        let not: Readiness = Rc::new(|| Err("recovering".into()));
        let r = readyz(&not);
        assert_eq!(r.status, 503);
        assert_eq!(r.body, b"not ready: recovering\n");
        let yes: Readiness = Rc::new(|| Ok(()));
        assert_eq!(readyz(&yes).status, 200);
        assert_eq!(healthz().status, 200);
    }
}
