//! The live progress line of an experiment: run k of n, variant, repeat,
//! phase, the bench's own latest progress line, time spent and left.
//! Written to stderr by the runner's thread and the bench reader's thread.

use std::sync::Mutex;
use std::time::Instant;

use super::report;

/// The live progress line: redrawn in place on a terminal, one line per
/// phase otherwise.
pub struct Progress {
    tty: bool,
    total: usize,
    started: Instant,
    state: Mutex<ProgressState>,
}

#[derive(Default)]
struct ProgressState {
    run: usize,
    variant: String,
    repeat: usize,
    phase: String,
    detail: String,
    done_seconds: Vec<f64>,
}

impl Progress {
    pub fn new(total: usize) -> Progress {
        Progress {
            // SAFETY: isatty only inspects the descriptor.
            tty: unsafe { libc::isatty(2) } == 1,
            total,
            started: Instant::now(),
            state: Mutex::new(ProgressState::default()),
        }
    }

    fn with(&self, f: impl FnOnce(&mut ProgressState), newline: bool) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
        let elapsed = self.started.elapsed().as_secs();
        let left = if s.done_seconds.is_empty() {
            String::new()
        } else {
            let avg = s.done_seconds.iter().sum::<f64>() / s.done_seconds.len() as f64;
            format!(
                ", ~{:.0} s left",
                avg * (self.total - s.done_seconds.len()) as f64
            )
        };
        let line = format!(
            "[run {}/{} {} #{}] {} {} | {elapsed} s{left}",
            s.run + 1,
            self.total,
            s.variant,
            s.repeat + 1,
            s.phase,
            s.detail
        );
        if self.tty {
            eprint!("\r\x1b[2K{}", line.chars().take(160).collect::<String>());
        } else if newline {
            eprintln!("{line}");
        }
    }

    pub fn start_run(&self, run: usize, variant: &str, repeat: usize) {
        self.with(
            |s| {
                (s.run, s.variant, s.repeat, s.phase, s.detail) = (
                    run,
                    variant.to_string(),
                    repeat,
                    "starting".into(),
                    String::new(),
                )
            },
            true,
        );
    }

    pub fn phase(&self, phase: &str) {
        self.with(
            |s| (s.phase, s.detail) = (phase.to_string(), String::new()),
            true,
        );
    }

    /// A bench progress line (`[   6s]  312000 msg/s ...`).
    pub fn detail(&self, line: &str) {
        self.with(|s| s.detail = line.to_string(), false);
    }

    pub fn end_run(&self, seconds: f64, metric: Option<f64>) {
        let value = metric.map(report::num).unwrap_or_else(|| "-".into());
        self.with(
            |s| {
                s.done_seconds.push(seconds);
                s.phase = "done".into();
                s.detail = format!("metric {value}");
            },
            true,
        );
    }

    pub fn line(&self, text: &str) {
        if self.tty {
            eprint!("\r\x1b[2K");
        }
        eprintln!("{text}");
    }

    pub fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
