//! `ringtail repair`: salvages the intact batches of damaged partitions
//! while the broker is stopped.
//!
//! Runs on the main thread of its own process (no shards; plain blocking
//! file I/O) and holds the data directory's lock, so it refuses to run
//! beside a broker and no broker starts while it works. For each damaged
//! partition (or the one named): scan every segment and keep every intact
//! batch in offset order (`scan`, `report`), write a clean log in Kafka's
//! layout with rebuilt indexes and move the damaged files aside into
//! `<partition dir>/damaged-<unix seconds>/`, never deleting them
//! (`rewrite`). It prints what was kept and what was dropped. A rewritten
//! partition's producer snapshots and the data directory's recovery-point
//! checkpoint are deleted, so the broker's next start scans it whole.
//!
//! The broker's recovery reads only from each log's recovery point (the
//! segments below it were synced and are loaded from their indexes), so it
//! does not look for damage there: running `ringtail repair` on a stopped
//! broker scans every segment of every partition and reports what it finds.
//!
//! "Damaged" is what the broker fences: bad bytes before intact ones. A bad
//! end of the last segment (a torn write) is the broker's recovery's to
//! truncate; naming the partition repairs that too.

mod report;
mod rewrite;
pub mod scan;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use thiserror::Error;

use crate::config::{
    Config, MAX_REPAIR_REPORT_LINES, MIN_RECOVERED_BATCH_BYTES, REPAIR_READ_BYTES,
};
use crate::log::lock::DataDirLock;
use crate::log::LogError;
use report::{PartitionScan, Status};

#[derive(Debug, Error)]
pub enum RepairError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Log(LogError),
    #[error("{path} changed at byte {position} during the repair; nothing was replaced")]
    Changed { path: PathBuf, position: u64 },
}

impl RepairError {
    fn io(op: &'static str, path: &Path, source: std::io::Error) -> RepairError {
        RepairError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

#[derive(clap::Args)]
pub struct RepairArgs {
    /// Data directory of the stopped broker.
    #[arg(long)]
    data_dir: PathBuf,
    /// Repair only this topic's partition (with --partition), even if it
    /// only has a torn tail.
    #[arg(long, requires = "partition")]
    topic: Option<String>,
    #[arg(long, requires = "topic")]
    partition: Option<i32>,
    /// The broker's TOML configuration (for max_message_bytes and
    /// index_interval_bytes); defaults otherwise.
    #[arg(long)]
    config: Option<PathBuf>,
}

pub fn run(args: RepairArgs) -> Result<()> {
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    let data_dir = &args.data_dir;
    if !data_dir.is_dir() {
        bail!("{} is not a directory", data_dir.display());
    }
    let _lock = DataDirLock::acquire(data_dir)
        .context("refusing to repair a data directory in use: stop the broker first")?;
    let named = args.topic.clone().zip(args.partition);
    let targets = match &named {
        Some((topic, p)) => {
            let dir = data_dir.join(format!("{topic}-{p}"));
            if !dir.is_dir() {
                bail!("no partition {topic}-{p} in {}", data_dir.display());
            }
            vec![(format!("{topic}-{p}"), dir)]
        }
        None => partition_dirs(data_dir)?,
    };
    let limits = (
        config.max_message_bytes.max(MIN_RECOVERED_BATCH_BYTES),
        REPAIR_READ_BYTES,
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let job = Job {
        data_dir,
        limits,
        index_interval_bytes: config.index_interval_bytes as u64,
        now_secs: now,
        named: named.is_some(),
    };
    let mut out = std::io::stdout().lock();
    let mut repaired = 0;
    for (name, dir) in &targets {
        if repair_partition(&job, name, dir, &mut out)? {
            repaired += 1;
        }
    }
    writeln!(
        out,
        "repair: {} partitions scanned, {repaired} repaired",
        targets.len()
    )?;
    Ok(())
}

/// What every partition's repair shares.
struct Job<'a> {
    data_dir: &'a Path,
    /// Largest batch, read size.
    limits: (usize, usize),
    index_interval_bytes: u64,
    now_secs: u64,
    /// The operator named the partition: repair a torn tail too.
    named: bool,
}

/// Scans one partition and, when it needs it, reports and rewrites it;
/// true when rewritten.
fn repair_partition(job: &Job, name: &str, dir: &Path, out: &mut impl Write) -> Result<bool> {
    let scan = PartitionScan::scan(name, dir, job.limits)?;
    let status = scan.status();
    let wanted = match status {
        Status::Intact => false,
        Status::TornTail => job.named,
        Status::Damaged => true,
    };
    if !wanted {
        if job.named {
            writeln!(out, "{name}: intact; nothing to repair")?;
        }
        return Ok(false);
    }
    let what = if status == Status::Damaged {
        "damaged"
    } else {
        "torn tail"
    };
    writeln!(out, "{name}: {what}")?;
    scan.report(out, MAX_REPAIR_REPORT_LINES)?;
    let aside = rewrite::rewrite(
        &scan,
        job.data_dir,
        (job.index_interval_bytes, job.limits.0),
        job.now_secs,
    )?;
    forget_recovery_state(job.data_dir, dir)?;
    writeln!(
        out,
        "  wrote a clean log; damaged files moved to {}",
        aside.display()
    )?;
    Ok(true)
}

/// A rewritten log is recovered whole at the next start: its producer
/// snapshots (which may remember dropped batches) are deleted, and so is
/// the data directory's recovery-point checkpoint.
fn forget_recovery_state(data_dir: &Path, dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "snapshot") {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    let rp = data_dir.join(crate::log::checkpoint::RECOVERY_POINT_FILE);
    match std::fs::remove_file(&rp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", rp.display()))
        }
        _ => Ok(()),
    }
}

/// `<topic>-<partition>` directories of the data directory holding a log.
fn partition_dirs(data_dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in
        std::fs::read_dir(data_dir).with_context(|| format!("listing {}", data_dir.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_partition = name.rsplit_once('-').is_some_and(|(topic, p)| {
            crate::cluster::valid_topic_name(topic) && p.parse::<u32>().is_ok()
        });
        if is_partition && !name.starts_with('.') && entry.file_type()?.is_dir() {
            let dir = entry.path();
            let has_log = crate::log::segment_bases(&dir).is_ok_and(|b| !b.is_empty());
            if has_log {
                out.push((name, dir));
            }
        }
    }
    out.sort();
    Ok(out)
}
