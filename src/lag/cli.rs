//! `ringtail groups lag [GROUP]`: samples any Kafka-compatible cluster
//! `--samples` times, `--interval-ms` apart, and prints Burrow's evaluation
//! of every group (or one): a table, or with `--json` Burrow's JSON (the
//! body of `/v3/kafka/local/consumer/GROUP/lag`; one per line for all
//! groups).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::evaluator::{GroupStatus, LagEvaluator, Sample};
use super::monitor::{apply_round, now_ms};
use super::sampler::Sampler;
use super::CLUSTER_NAME;
use crate::config::{LagConfig, DEFAULT_LAG_CLI_SAMPLE_INTERVAL_MS, DEFAULT_LAG_WINDOW_SAMPLES};

#[derive(clap::Args, Debug)]
pub struct LagArgs {
    /// Only this group (default: every group of the cluster).
    pub group: Option<String>,
    /// Samples to take: the window Burrow's rules judge.
    #[arg(long, default_value_t = DEFAULT_LAG_WINDOW_SAMPLES)]
    pub samples: usize,
    /// Wait between two samples.
    #[arg(long, default_value_t = DEFAULT_LAG_CLI_SAMPLE_INTERVAL_MS)]
    pub interval_ms: u64,
    /// Print Burrow's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(bootstrap: &str, args: LagArgs) -> Result<()> {
    let config = LagConfig {
        window_samples: args.samples,
        sample_interval_ms: args.interval_ms,
        ..LagConfig::default()
    };
    if let Err(e) = config.validate() {
        bail!("--samples must be in 2..=1000 and --interval-ms in 10..=3600000 ({e})");
    }
    let mut sampler = Sampler::new(bootstrap, "ringtail-groups-lag");
    let mut ev = LagEvaluator::new(config.clone());
    let interval = Duration::from_millis(args.interval_ms);
    let mut now = now_ms();
    for i in 0..args.samples {
        let started = Instant::now();
        let round = sampler.sample(args.group.as_deref(), config.max_groups)?;
        now = now_ms();
        for refused in apply_round(&mut ev, &round, now) {
            eprintln!("{refused}");
        }
        if i + 1 < args.samples {
            std::thread::sleep(interval.saturating_sub(started.elapsed()));
        }
    }
    let groups: Vec<String> = match &args.group {
        Some(g) if !ev.contains(g) => bail!("group {g} not found (no committed offsets)"),
        Some(g) => vec![g.clone()],
        None => ev.groups().map(str::to_string).collect(),
    };
    for g in &groups {
        let status = ev.evaluate(CLUSTER_NAME, g, now).expect("tracked group");
        if args.json {
            let path = format!("/v3/kafka/{CLUSTER_NAME}/consumer/{g}/lag");
            println!("{}", json_body(&status, &path, bootstrap));
        } else {
            print_table(&status);
        }
    }
    Ok(())
}

/// Burrow's body for `/lag`, built from an evaluated status.
fn json_body(status: &GroupStatus, url: &str, host: &str) -> String {
    serde_json::json!({
        "error": false,
        "message": "consumer status returned",
        "status": status,
        "request": {"url": url, "host": host},
    })
    .to_string()
}

fn print_table(s: &GroupStatus) {
    println!(
        "Group {} is {} (complete {:.2}, total lag {}, {} partitions)",
        s.group,
        s.status.name(),
        s.complete,
        s.totallag,
        s.partition_count
    );
    println!(
        "{:<24} {:>9} {:<7} {:>14} {:>14} {:>12} {:>9}  OWNER",
        "TOPIC", "PARTITION", "STATUS", "START-OFFSET", "END-OFFSET", "CURRENT-LAG", "COMPLETE"
    );
    let offset =
        |s: Option<Sample>| s.map_or_else(|| "-".to_string(), |s| s.committed_offset.to_string());
    for p in &s.partitions {
        let owner = if p.owner.is_empty() { "-" } else { &p.owner };
        println!(
            "{:<24} {:>9} {:<7} {:>14} {:>14} {:>12} {:>9.2}  {} {}",
            p.topic,
            p.partition,
            p.status.name(),
            offset(p.start),
            offset(p.end),
            p.current_lag,
            p.complete,
            owner,
            p.client_id
        );
    }
}
