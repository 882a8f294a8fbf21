//! Results of a benchmark: merged histograms and counters, the live progress
//! line, the printed summary, the JSON result and the SVG plot.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::wire::BrokerInfo;
use super::{BenchOptions, Live, Mode, MAX_TIMELINE_SECONDS};

/// Percentiles reported, in percent.
pub const PERCENTILES: &[f64] = &[50.0, 90.0, 99.0, 99.9, 99.99];

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

pub struct Outcome {
    pub messages: u64,
    pub bytes: u64,
    pub errors: u64,
    /// Partition error codes in failed produce responses, with counts.
    pub error_codes: BTreeMap<i16, u64>,
    /// Acknowledgement latency in microseconds (produce).
    pub latency: Histogram<u64>,
    /// Send-to-receipt latency in microseconds (e2e).
    pub e2e: Option<Histogram<u64>>,
    pub elapsed: Option<Duration>,
    pub measured: Option<Instant>,
    pub timeline: Vec<u64>,
}

impl Default for Outcome {
    fn default() -> Self {
        Outcome {
            messages: 0,
            bytes: 0,
            errors: 0,
            error_codes: BTreeMap::new(),
            latency: new_histogram(),
            e2e: None,
            elapsed: None,
            measured: None,
            timeline: Vec::new(),
        }
    }
}

impl Outcome {
    pub fn merge(&mut self, other: Outcome) {
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.errors += other.errors;
        for (code, n) in other.error_codes {
            *self.error_codes.entry(code).or_default() += n;
        }
        let _ = self.latency.add(&other.latency);
        if let Some(h) = other.e2e {
            match self.e2e.as_mut() {
                Some(mine) => {
                    let _ = mine.add(&h);
                }
                None => self.e2e = Some(h),
            }
        }
        self.elapsed = self.elapsed.max(other.elapsed);
    }
}

pub fn merge_e2e(produced: Outcome, consumed: Outcome) -> Outcome {
    let mut out = produced;
    out.e2e = consumed.e2e;
    out
}

/// Prints one progress line per second and keeps per-second message counts.
pub fn spawn_progress(live: Arc<Live>, start: Instant) -> JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut timeline = Vec::new();
        let (mut last_m, mut last_b) = (0u64, 0u64);
        let mut tick = start;
        while !live.stop.load(Ordering::SeqCst) {
            tick += Duration::from_secs(1);
            while Instant::now() < tick && !live.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let (m, b) = (
                live.messages.load(Ordering::Relaxed),
                live.bytes.load(Ordering::Relaxed),
            );
            let (dm, db) = (m - last_m, b - last_b);
            (last_m, last_b) = (m, b);
            if timeline.len() < MAX_TIMELINE_SECONDS {
                timeline.push(dm);
            }
            eprintln!(
                "[{:>4}s] {:>10} msg/s {:>9.1} MiB/s  errors {}",
                tick.duration_since(start).as_secs(),
                dm,
                db as f64 / 1048576.0,
                live.errors.load(Ordering::Relaxed)
            );
        }
        timeline
    })
}

pub struct Summary {
    pub mode: Mode,
    pub label: String,
    pub messages: u64,
    pub bytes: u64,
    pub errors: u64,
    pub error_codes: BTreeMap<i16, u64>,
    pub seconds: f64,
    pub latency: Option<Vec<(f64, u64)>>,
    pub latency_max: u64,
    pub e2e: Option<Vec<(f64, u64)>>,
    pub timeline: Vec<u64>,
    pub broker: BrokerInfo,
}

fn percentiles(h: &Histogram<u64>) -> Option<Vec<(f64, u64)>> {
    (!h.is_empty()).then(|| {
        PERCENTILES
            .iter()
            .map(|p| (*p, h.value_at_quantile(p / 100.0)))
            .collect()
    })
}

impl Summary {
    pub fn new(mode: Mode, o: Outcome, broker: BrokerInfo, opts: &BenchOptions) -> Summary {
        let seconds = match mode {
            Mode::Consume => o
                .elapsed
                .map_or(opts.duration_s as f64, |d| d.as_secs_f64()),
            Mode::Produce if opts.messages > 0 => o
                .elapsed
                .map_or(opts.duration_s as f64, |d| d.as_secs_f64()),
            _ => opts.duration_s as f64,
        };
        Summary {
            mode,
            label: opts.label.clone(),
            messages: o.messages,
            bytes: o.bytes,
            errors: o.errors,
            error_codes: o.error_codes,
            seconds: seconds.max(1e-6),
            latency: percentiles(&o.latency),
            latency_max: o.latency.max(),
            e2e: o.e2e.as_ref().and_then(percentiles),
            timeline: o.timeline,
            broker,
        }
    }

    pub fn messages_per_sec(&self) -> f64 {
        self.messages as f64 / self.seconds
    }

    pub fn mib_per_sec(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1048576.0
    }

    pub fn p99_us(&self) -> Option<u64> {
        self.latency
            .as_ref()
            .and_then(|l| l.iter().find(|(p, _)| *p == 99.0).map(|(_, v)| *v))
    }

    pub fn print(&self) {
        println!(
            "{:?}: {} messages in {:.1}s: {:.0} msg/s, {:.1} MiB/s, {} errors",
            self.mode,
            self.messages,
            self.seconds,
            self.messages_per_sec(),
            self.mib_per_sec(),
            self.errors
        );
        if !self.error_codes.is_empty() {
            let codes: Vec<String> = self
                .error_codes
                .iter()
                .map(|(code, n)| format!("{n} x {code} ({})", error_name(*code)))
                .collect();
            println!("partition errors: {}", codes.join(", "));
        }
        for (name, l) in [
            ("ack latency", &self.latency),
            ("end-to-end latency", &self.e2e),
        ] {
            if let Some(l) = l {
                let parts: Vec<String> = l.iter().map(|(p, v)| format!("p{p}={v}us")).collect();
                println!("{name}: {} max={}us", parts.join(" "), self.latency_max);
            }
        }
    }

    pub fn to_json(&self, o: &BenchOptions) -> Result<Value> {
        let broker_config = match &o.broker_config {
            Some(p) => Some(std::fs::read_to_string(p)?),
            None => None,
        };
        let pct = |l: &Option<Vec<(f64, u64)>>| {
            l.as_ref().map(|l| {
                l.iter()
                    .map(|(p, v)| (format!("p{p}"), json!(v)))
                    .collect::<serde_json::Map<_, _>>()
            })
        };
        Ok(json!({
            "mode": format!("{:?}", self.mode).to_lowercase(),
            "label": self.label,
            "params": {
                "bootstrap": o.bootstrap, "topic": o.topic, "partitions": o.partitions,
                "message_bytes": o.message_bytes, "keys": o.keys, "batch_bytes": o.batch_bytes,
                "linger_ms": o.linger_ms, "acks": o.acks, "compression": o.compression,
                "producers": o.producers, "consumers": o.consumers, "duration_s": o.duration_s,
                "warmup_s": o.warmup_s, "rate": o.rate,
            },
            "result": {
                "messages": self.messages, "bytes": self.bytes, "errors": self.errors,
                "error_codes": self.error_codes.iter().map(|(c, n)| (c.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                "seconds": self.seconds, "messages_per_sec": self.messages_per_sec(),
                "mib_per_sec": self.mib_per_sec(),
                "latency_us": pct(&self.latency), "latency_max_us": self.latency_max,
                "e2e_latency_us": pct(&self.e2e),
                "timeline_messages_per_sec": self.timeline,
            },
            "host": super::host::describe(),
            "broker": { "facts": self.broker, "config": broker_config },
        }))
    }

    /// Two panels: throughput per second, and latency by percentile.
    pub fn svg(&self) -> String {
        let mut s = String::from(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="960" height="360" font-family="sans-serif" font-size="12">"#,
        );
        s.push_str(r#"<rect width="960" height="360" fill="white"/>"#);
        let max_t = self.timeline.iter().copied().max().unwrap_or(1).max(1) as f64;
        s.push_str(&format!(
            r#"<text x="40" y="20">throughput (msg/s), peak {max_t:.0}</text>"#
        ));
        s.push_str(r#"<line x1="40" y1="320" x2="440" y2="320" stroke="black"/><line x1="40" y1="40" x2="40" y2="320" stroke="black"/>"#);
        let n = self.timeline.len().max(2) as f64;
        let points: Vec<String> = self
            .timeline
            .iter()
            .enumerate()
            .map(|(i, v)| {
                format!(
                    "{:.1},{:.1}",
                    40.0 + 400.0 * i as f64 / (n - 1.0),
                    320.0 - 280.0 * *v as f64 / max_t
                )
            })
            .collect();
        s.push_str(&format!(
            r#"<polyline fill="none" stroke="steelblue" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        ));
        if let Some(l) = self.latency.as_ref().or(self.e2e.as_ref()) {
            let max_l = l.iter().map(|(_, v)| *v).max().unwrap_or(1).max(1) as f64;
            s.push_str(&format!(r#"<text x="520" y="20">latency by percentile (us), log scale, max {max_l:.0}</text>"#));
            s.push_str(r#"<line x1="520" y1="320" x2="920" y2="320" stroke="black"/>"#);
            let w = 400.0 / l.len() as f64;
            for (i, (p, v)) in l.iter().enumerate() {
                let h = 280.0 * ((*v as f64).max(1.0).ln() / max_l.max(2.0).ln());
                let x = 520.0 + w * i as f64 + 8.0;
                s.push_str(&format!(r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="darkorange"/>"#, 320.0 - h, w - 16.0));
                s.push_str(&format!(
                    r#"<text x="{x:.1}" y="338">p{p}</text><text x="{x:.1}" y="{:.1}">{v}</text>"#,
                    316.0 - h
                ));
            }
        }
        s.push_str("</svg>\n");
        s
    }
}

/// Kafka's name for an error code, where the codec knows it.
fn error_name(code: i16) -> String {
    kafka_protocol::ResponseError::try_from_code(code)
        .map(|e| format!("{e:?}"))
        .unwrap_or_else(|| "unknown".into())
}
