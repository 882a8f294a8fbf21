//! `ringtail tune`: host inspection, reversible tuning profiles and A/B
//! tuning experiments.
//!
//! Runs in its own process on the main thread (no shards, plain blocking
//! reads and writes of /proc/sys and /sys); the broker calls only
//! [`log_host_warnings`], once at start-up before any shard starts. The host's
//! settings belong to the kernel: this module reads them, and changes only the
//! knobs a profile names, after writing their previous values durably to a
//! snapshot that `revert` restores byte for byte.
//!
//! - `knob`: the registry of knobs a profile may set (one small spec per
//!   knob: where it lives, what values it takes, what else changing it moves).
//! - `inspect` and `check`: `tune show` and `tune check` (a checker beside each
//!   tunable, warnings with their reasons).
//! - `profile`: commented, layered TOML profiles from the top-level `tuning/`.
//! - `snapshot` and `apply`: the state directory and its snapshots; plan,
//!   apply and revert.
//! - `experiment`: variants against a baseline with fresh brokers and
//!   `ringtail bench` runs; `stats` and `report` turn runs into a verdict.

pub mod apply;
pub mod check;
pub mod cli;
pub mod experiment;
pub mod inspect;
pub mod knob;
pub mod profile;
pub mod snapshot;
pub mod stats;
pub mod sysfs;
#[cfg(test)]
mod testutil;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use cli::{run, TuneArgs};

#[derive(Debug, Error)]
pub enum TuneError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unknown knob {name:?}{hint}")]
    UnknownKnob { name: String, hint: String },
    #[error("{knob}: bad value {value:?}: {reason}")]
    BadValue {
        knob: String,
        value: String,
        reason: String,
    },
    #[error("{path}: {message}")]
    Profile { path: PathBuf, message: String },
    #[error("{action} needs root: it writes /proc/sys and /sys (use --dry-run to see the plan)")]
    NotRoot { action: &'static str },
    #[error("refused, nothing was changed:\n{0}")]
    Refused(String),
    #[error("{0}")]
    State(String),
    #[error("{0}")]
    Experiment(String),
    #[error("interrupted; the host was reverted")]
    Interrupted,
}

impl TuneError {
    pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> TuneError {
        TuneError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    }
}

/// Logs `tune check`'s warnings for this host and configuration; called once
/// by `ringtail serve` at start-up. Never fails: a setting that cannot be
/// read is not a warning.
pub fn log_host_warnings(config: &crate::config::Config) {
    let host = sysfs::Host::real();
    for w in check::check_host(&host, config, &Default::default()) {
        tracing::warn!(knob = %w.knob, value = %w.value, "host setting may hurt the broker: {}", w.reason);
    }
}

/// True when the process runs as root (euid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
