//! The broker's lag monitor: a thread of its own (`lag-sampler`, not a
//! shard: its Kafka client blocks) that, every `lag.sample_interval_ms`,
//! samples the cluster through this broker's own listener, as Burrow
//! samples the cluster it watches, and feeds the evaluator. The evaluator
//! sits behind a mutex shared by that thread and the HTTP handler (a few
//! requests a minute, never on the data path); `http_get` answers Burrow's
//! paths from it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::evaluator::{GroupStatus, LagError, LagEvaluator};
use super::sampler::{Round, Sampler};
use super::CLUSTER_NAME;
use crate::config::{Config, LagConfig};

/// Longest the sampler thread sleeps between two looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);
/// How long sampling may keep failing before the monitor warns: rounds fail
/// while the broker starts (a node listens only once a quorum registered
/// it, up to `server::STARTUP_CLUSTER_WAIT`) or the cluster moves.
const FAILING_BEFORE_WARNING: Duration = Duration::from_secs(60);

pub struct LagMonitor {
    evaluator: Mutex<LagEvaluator>,
    stop: AtomicBool,
    host: String,
}

/// Milliseconds since the epoch (Burrow's timestamps).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Starts the monitor of the cluster this broker belongs to, sampling it
/// through the broker's advertised address; None when `lag.enabled` is off.
pub fn start(config: &Config) -> std::io::Result<Option<Arc<LagMonitor>>> {
    if !config.lag.enabled {
        return Ok(None);
    }
    let (host, port) = config.advertised();
    let bootstrap = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let monitor = Arc::new(LagMonitor::new(config.lag.clone()));
    let (m, lag) = (monitor.clone(), config.lag.clone());
    std::thread::Builder::new()
        .name("lag-sampler".into())
        .spawn(move || m.run(&bootstrap, &lag))?;
    Ok(Some(monitor))
}

impl LagMonitor {
    pub fn new(config: LagConfig) -> LagMonitor {
        LagMonitor {
            evaluator: Mutex::new(LagEvaluator::new(config)),
            stop: AtomicBool::new(false),
            host: host_name(),
        }
    }

    /// Burrow's answer for a GET of `path`; None when the path is not one
    /// of the lag endpoints (see lag/http.rs).
    pub fn http_get(&self, path: &str, now_ms: i64) -> Option<(u16, String)> {
        super::http::http_get(&self.evaluator(), path, now_ms, &self.host)
    }

    /// Every tracked group's status (for metrics).
    pub fn statuses(&self, now_ms: i64) -> Vec<GroupStatus> {
        let ev = self.evaluator();
        ev.groups()
            .filter_map(|g| ev.evaluate(CLUSTER_NAME, g, now_ms))
            .collect()
    }

    /// Has the sampler thread stop after its current round.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn evaluator(&self) -> MutexGuard<'_, LagEvaluator> {
        // A panic elsewhere while holding it leaves windows still usable.
        self.evaluator.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self, bootstrap: &str, config: &LagConfig) {
        let mut sampler = Sampler::new(bootstrap, "ringtail-lag-monitor");
        let interval = Duration::from_millis(config.sample_interval_ms);
        let mut failing_since: Option<Instant> = None;
        let mut warned = false;
        let mut refused_before = 0usize;
        while !self.stop.load(Ordering::SeqCst) {
            match sampler.sample(None, config.max_groups) {
                Ok(round) => {
                    (failing_since, warned) = (None, false);
                    let refused = apply_round(&mut self.evaluator(), &round, now_ms());
                    tracing::debug!(groups = round.groups.len(), "lag monitor: round sampled");
                    if refused.len() > refused_before {
                        tracing::warn!(groups = refused.len(), first = %refused[0], "lag monitor: limits reached, some groups are not evaluated");
                    }
                    refused_before = refused.len();
                }
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if !warned && since.elapsed() >= FAILING_BEFORE_WARNING {
                        tracing::warn!(error = %e, "lag monitor cannot sample the cluster");
                        warned = true;
                    } else {
                        tracing::debug!(error = %e, "lag monitor: round failed");
                    }
                }
            }
            let mut slept = Duration::ZERO;
            while slept < interval && !self.stop.load(Ordering::SeqCst) {
                let step = STOP_POLL.min(interval - slept);
                std::thread::sleep(step);
                slept += step;
            }
        }
    }
}

/// Feeds one round to the evaluator: groups the cluster no longer lists are
/// forgotten (when every broker answered), each sampled group gets a sample
/// per partition. Returns the refusals of the evaluator's limits.
pub fn apply_round(ev: &mut LagEvaluator, round: &Round, now_ms: i64) -> Vec<LagError> {
    if round.listing_complete {
        ev.retain_groups(|g| round.listed.contains(g));
    }
    let mut refused = Vec::new();
    for g in &round.groups {
        // DescribeGroups answers "Dead" for a group it does not know.
        if g.observations.is_empty() && g.state == "Dead" && !ev.contains(&g.group) {
            continue;
        }
        if let Err(e) = ev.observe_group(&g.group, &g.observations, now_ms) {
            refused.push(e);
        }
    }
    refused
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lag::evaluator::Observation;
    use crate::lag::sampler::SampledGroup;

    fn sampled(group: &str, state: &str, committed: Option<i64>) -> SampledGroup {
        SampledGroup {
            group: group.into(),
            state: state.into(),
            observations: committed
                .into_iter()
                .map(|c| Observation {
                    topic: "t".into(),
                    partition: 0,
                    committed_offset: c,
                    log_end_offset: 10,
                    owner: None,
                })
                .collect(),
        }
    }

    #[test]
    fn rounds_add_samples_and_forget_unlisted_groups_only_when_complete() {
        let mut ev = LagEvaluator::new(LagConfig::default());
        let mut round = Round {
            listed: ["a", "b"].iter().map(|s| s.to_string()).collect(),
            listing_complete: true,
            groups: vec![
                sampled("a", "Stable", Some(1)),
                sampled("b", "Empty", Some(2)),
            ],
        };
        assert!(apply_round(&mut ev, &round, 0).is_empty());
        round.listed.remove("b");
        round.groups.truncate(1);
        round.listing_complete = false;
        apply_round(&mut ev, &round, 1_000);
        assert_eq!(ev.groups().collect::<Vec<_>>(), ["a", "b"]);
        round.listing_complete = true;
        apply_round(&mut ev, &round, 2_000);
        assert_eq!(ev.groups().collect::<Vec<_>>(), ["a"]);
        let a = ev.evaluate("local", "a", 2_000).unwrap();
        assert_eq!(a.partitions[0].complete, 0.3);
    }

    #[test]
    fn a_dead_group_without_offsets_is_not_tracked() {
        let mut ev = LagEvaluator::new(LagConfig::default());
        let round = Round {
            listed: ["x".to_string()].into_iter().collect(),
            listing_complete: true,
            groups: vec![sampled("x", "Dead", None), sampled("y", "Empty", None)],
        };
        apply_round(&mut ev, &round, 0);
        assert_eq!(ev.groups().collect::<Vec<_>>(), ["y"]);
    }

    #[test]
    fn http_get_answers_from_the_evaluator() {
        let monitor = LagMonitor::new(LagConfig::default());
        let (code, body) = monitor.http_get("/v3/kafka/local/consumer", 0).unwrap();
        assert_eq!(code, 200);
        assert!(body.contains("\"consumers\":[]"), "{body}");
        assert!(monitor.http_get("/metrics", 0).is_none());
    }
}
