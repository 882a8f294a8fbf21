//! Child processes of an experiment (the broker and the bench): each in its
//! own process group, so a terminal's Ctrl-C reaches only the runner, which
//! stops them in order; each with a parent-death signal, so none outlives a
//! runner that was killed.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::tune::TuneError;

const POLL: Duration = Duration::from_millis(50);

/// A child process in its own process group, killed if still running when
/// dropped.
pub struct Proc {
    pub child: Child,
    name: &'static str,
    pub log: PathBuf,
}

impl Proc {
    /// Output goes to `log`; stderr too unless `pipe_stderr`.
    pub fn spawn(
        mut cmd: Command,
        name: &'static str,
        log: &Path,
        death_signal: i32,
        pipe_stderr: bool,
    ) -> Result<Proc, TuneError> {
        let file = std::fs::File::create(log).map_err(|e| TuneError::io("create", log, e))?;
        let err = file
            .try_clone()
            .map_err(|e| TuneError::io("open", log, e))?;
        cmd.stdin(Stdio::null()).stdout(file).process_group(0);
        if pipe_stderr {
            cmd.stderr(Stdio::piped());
        } else {
            cmd.stderr(err);
        }
        // SAFETY: prctl is async-signal-safe and touches no memory of the
        // parent; it runs in the child between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| TuneError::Experiment(format!("starting the {name}: {e}")))?;
        Ok(Proc {
            child,
            name,
            log: log.to_owned(),
        })
    }

    /// The exit code once exited (`128 + signal` when killed by one).
    pub fn exited(&mut self) -> Option<Option<i32>> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(status.code().or(status.signal().map(|s| 128 + s))),
            Ok(None) => None,
            Err(_) => Some(None),
        }
    }

    /// SIGTERM, then SIGKILL after `timeout`; the exit code.
    pub fn stop(&mut self, timeout: Duration) -> Option<i32> {
        if let Some(code) = self.exited() {
            return code;
        }
        // SAFETY: kill sends a signal to our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(code) = self.exited() {
                return code;
            }
            std::thread::sleep(POLL);
        }
        eprintln!(
            "the {} did not stop within {} s: killing it",
            self.name,
            timeout.as_secs()
        );
        let _ = self.child.kill();
        self.child
            .wait()
            .ok()
            .and_then(|s| s.code().or(s.signal().map(|s| 128 + s)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn free_port() -> Result<u16, TuneError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| TuneError::Experiment(format!("finding a free loopback port: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| TuneError::Experiment(format!("finding a free loopback port: {e}")))
}

/// The last `lines` lines of a log file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
