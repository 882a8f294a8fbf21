//! `ringtail tune experiment`: does a host profile or a broker setting
//! change a workload's result? Variants run against a baseline, each run on
//! a fresh broker (the same `ringtail` binary, a new data directory) driven
//! by `ringtail bench`, in ABBA or seeded random order with a cool-down in
//! between. Each run applies its variant's profile, starts the broker,
//! samples the host counters around the bench, stops the broker and
//! reverts; the revert happens on failure and on SIGINT, SIGTERM and SIGHUP
//! too.
//!
//! The results directory gets `results.json` (every run's bench JSON and
//! counters, the statistics), `report.txt` and `runs.svg`, and one folder
//! per run with the broker's configuration and logs.

mod child;
pub mod counters;
pub mod plot;
mod progress;
pub mod report;
mod runner;
pub mod spec;

use serde::Serialize;

pub use runner::{run, RunOptions};
pub use spec::{load, Experiment};

/// One run of one variant.
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub index: usize,
    pub variant: String,
    pub repeat: usize,
    pub started_unix: u64,
    pub wall_seconds: f64,
    pub metric: Option<f64>,
    /// `ringtail bench --json` output.
    pub bench: Option<serde_json::Value>,
    pub counters: Option<counters::HostCounters>,
    pub broker_exit: Option<i32>,
    /// Knob (with its disk or CPU) and what applying it did.
    pub knobs: Vec<(String, String)>,
    pub error: Option<String>,
}

#[cfg(test)]
mod tests;
