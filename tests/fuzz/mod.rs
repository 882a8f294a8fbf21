//! A fuzz harness on stable Rust: seeded mutation of valid inputs, each
//! mutant run under `catch_unwind` and a counting allocator, failing on a
//! panic or on a peak allocation above the target's bound.
//!
//! A target is a decoder with seeds and a bound (see [`Target`]); adding
//! one is a struct implementing the trait and a `#[test] fn` calling
//! [`fuzz`]. Targets: request decoding (tests/fuzz_requests.rs) and record
//! batch validation (tests/fuzz_batches.rs).
//!
//! Environment: `RINGTAIL_FUZZ_SECONDS` (per target; default
//! [`DEFAULT_SECONDS`], for CI), `RINGTAIL_FUZZ_SEED` (default: from the
//! clock, printed), `RINGTAIL_FUZZ_CASE` (run only that case of the seed).

#![allow(dead_code)] // each test binary uses part of the harness

pub mod alloc;
pub mod batches;
pub mod mutate;
pub mod requests;
pub mod rng;
pub mod typed;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use bytes::Bytes;

use rng::Rng;

/// Seconds per target in a plain `cargo test` run.
pub const DEFAULT_SECONDS: f64 = 2.0;

/// A decoder under fuzz.
pub trait Target {
    fn name(&self) -> &'static str;
    /// Valid inputs to mutate, built from `rng` only (so a seed replays).
    fn seeds(&self, rng: &mut Rng) -> Vec<Vec<u8>>;
    /// Decodes one input; true if it was accepted.
    fn run(&self, input: Bytes) -> bool;
    /// Most bytes `run` may hold at once for an input of `len` bytes.
    fn alloc_bound(&self, len: usize) -> usize;
}

/// What one fuzz run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub cases: u64,
    pub accepted: u64,
    /// Largest peak allocation seen, in bytes.
    pub max_peak_bytes: usize,
    /// Largest share of its bound that a case's peak took.
    pub max_share_of_bound: f64,
}

struct Settings {
    seed: u64,
    seconds: f64,
    case: Option<u64>,
}

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value} is not valid")),
    )
}

fn settings() -> Settings {
    let clock = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    Settings {
        seed: env("RINGTAIL_FUZZ_SEED").unwrap_or(clock),
        seconds: env("RINGTAIL_FUZZ_SECONDS").unwrap_or(DEFAULT_SECONDS),
        case: env("RINGTAIL_FUZZ_CASE"),
    }
}

/// Fuzzes `target` for the configured time; panics (with the line that
/// replays it) on the first failing case.
pub fn fuzz(target: &dyn Target) -> Report {
    let s = settings();
    println!(
        "fuzz {}: RINGTAIL_FUZZ_SEED={} for {}s",
        target.name(),
        s.seed,
        s.seconds
    );
    let label: &'static str =
        Box::leak(format!("RINGTAIL_FUZZ_SEED={} RINGTAIL_FUZZ_CASE=", s.seed).into_boxed_str());
    let seeds = target.seeds(&mut Rng::new(s.seed));
    assert!(!seeds.is_empty(), "{}: no seeds", target.name());
    let mut report = Report::default();
    if let Some(case) = s.case {
        let input = mutate::mutant(&seeds, &mut Rng::for_case(s.seed, case));
        check_case(target, label, case, input, &mut report);
        return report;
    }
    let deadline = Instant::now() + Duration::from_secs_f64(s.seconds);
    let mut case = 0u64;
    while Instant::now() < deadline {
        for _ in 0..64 {
            let input = mutate::mutant(&seeds, &mut Rng::for_case(s.seed, case));
            check_case(target, label, case, input, &mut report);
            case += 1;
        }
    }
    println!("fuzz {}: {report:?}", target.name());
    report
}

/// Runs one input; panics with its replay line on a panic or an
/// allocation peak above the bound.
pub fn check_case(
    target: &dyn Target,
    label: &'static str,
    case: u64,
    input: Vec<u8>,
    report: &mut Report,
) {
    let len = input.len();
    let frame = Bytes::from(input);
    let kept = frame.clone();
    let (outcome, peak) = alloc::peak_during(label, case, || {
        catch_unwind(AssertUnwindSafe(|| target.run(frame)))
    });
    let replay = || {
        let hex: String = kept.iter().map(|b| format!("{b:02x}")).collect();
        format!("{label}{case}; input ({len} bytes) {hex}")
    };
    let Ok(accepted) = outcome else {
        panic!("{}: panicked on {}", target.name(), replay());
    };
    let bound = target.alloc_bound(len);
    if peak > bound {
        panic!(
            "{}: peak allocation {peak} bytes above the bound {bound} on {}",
            target.name(),
            replay()
        );
    }
    report.cases += 1;
    report.accepted += u64::from(accepted);
    report.max_peak_bytes = report.max_peak_bytes.max(peak);
    report.max_share_of_bound = report.max_share_of_bound.max(peak as f64 / bound as f64);
}
