//! Snapshots: the previous value of every file a profile changes, written
//! durably before the first change, so that `revert` restores the host
//! exactly after anything, a `kill -9` in the middle of an apply included.
//!
//! The state directory (`/var/lib/ringtail/tune`, or `--state-dir`, or
//! `$RINGTAIL_TUNE_STATE_DIR`) holds one JSON file per snapshot and a lock
//! file: one `ringtail tune` at a time changes the host (`flock`, dropped
//! by the kernel however the process ends). A snapshot is `applying` from
//! before the first write, `applied` once every knob was tried, `reverted`
//! once every file reads back exactly as it did before.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::sysfs::{write_durably, Host};
use super::TuneError;

/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/ringtail/tune";
/// Format version of snapshot files.
pub const SNAPSHOT_VERSION: u32 = 1;
/// Reverted snapshots kept as a record (every experiment run leaves one);
/// older ones are deleted after each revert. Active snapshots are never
/// deleted.
pub const MAX_REVERTED_SNAPSHOTS: usize = 200;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Applying,
    Applied,
    Reverted,
}

/// One file's saved value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub knob: String,
    /// Disk or CPU, empty for host-wide knobs.
    pub target: String,
    pub path: PathBuf,
    /// The file's exact content before the apply.
    pub previous: String,
    /// What revert writes to get `previous` back.
    pub restore: String,
    /// Restore order on the target (see `knob::KnobSpec::order`).
    pub order: u8,
    /// The kernel zeroes this knob when the partner is written.
    pub partner: Option<String>,
    /// The profile's value; `None` for a knob saved only because the
    /// kernel changes it with another (a scheduler's `nr_requests`).
    pub desired: Option<String>,
    /// What the apply did, once it did.
    pub outcome: Option<String>,
}

impl Entry {
    pub fn display(&self) -> String {
        if self.target.is_empty() {
            self.knob.clone()
        } else {
            format!("{}[{}]", self.knob, self.target)
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    pub id: String,
    pub profile: String,
    /// `tune apply`, or the experiment and run that applied it.
    pub origin: String,
    pub created_unix: u64,
    /// The kernel's boot id: values from another boot are not this boot's.
    pub boot_id: String,
    pub pid: u32,
    pub state: State,
    pub entries: Vec<Entry>,
    /// Knobs of the profile this host does not have, with the reason.
    pub unsupported: Vec<(String, String)>,
    pub reverted_unix: Option<u64>,
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn boot_id(host: &Host) -> String {
    host.read_trim("proc/sys/kernel/random/boot_id")
        .unwrap_or_default()
}

/// The state directory, locked for the lifetime of this value.
pub struct StateDir {
    path: PathBuf,
    _lock: File,
}

impl StateDir {
    pub fn default_path() -> PathBuf {
        std::env::var_os("RINGTAIL_TUNE_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
    }

    /// Creates and locks the directory, or says that another `ringtail
    /// tune` holds it.
    pub fn open(path: &Path) -> Result<StateDir, TuneError> {
        std::fs::create_dir_all(path).map_err(|e| TuneError::io("create", path, e))?;
        let lock_path = path.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| TuneError::io("open", &lock_path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(StateDir {
                path: path.to_owned(),
                _lock: file,
            }),
            Err(TryLockError::WouldBlock) => Err(TuneError::State(format!(
                "another ringtail tune is changing this host (it holds {})",
                lock_path.display()
            ))),
            Err(TryLockError::Error(e)) => Err(TuneError::io("lock", &lock_path, e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every snapshot, oldest first.
    pub fn snapshots(&self) -> Result<Vec<(PathBuf, Snapshot)>, TuneError> {
        list(&self.path)
    }

    /// Snapshots not yet reverted, oldest first.
    pub fn active(&self) -> Result<Vec<(PathBuf, Snapshot)>, TuneError> {
        Ok(self
            .snapshots()?
            .into_iter()
            .filter(|(_, s)| s.state != State::Reverted)
            .collect())
    }

    /// Deletes the oldest reverted snapshots beyond `keep`.
    pub fn prune_reverted(&self, keep: usize) -> Result<(), TuneError> {
        let reverted: Vec<PathBuf> = self
            .snapshots()?
            .into_iter()
            .filter(|(_, s)| s.state == State::Reverted)
            .map(|(p, _)| p)
            .collect();
        for path in &reverted[..reverted.len().saturating_sub(keep)] {
            std::fs::remove_file(path).map_err(|e| TuneError::io("remove", path, e))?;
        }
        Ok(())
    }

    /// A fresh file name for a snapshot of `profile`.
    pub fn new_path(&self, profile: &str, created: u64) -> (String, PathBuf) {
        let clean: String = profile
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(64)
            .collect();
        let base = format!("{created}-{}-{clean}", std::process::id());
        (0..)
            .map(|n| {
                if n == 0 {
                    base.clone()
                } else {
                    format!("{base}-{n}")
                }
            })
            .map(|id| {
                let p = self.path.join(format!("{id}.json"));
                (id, p)
            })
            .find(|(_, p)| !p.exists())
            .expect("an unused name")
    }

    /// Finds a snapshot by id, file name or path.
    pub fn find(&self, which: &str) -> Result<(PathBuf, Snapshot), TuneError> {
        let all = self.snapshots()?;
        let wanted = Path::new(which);
        all.into_iter()
            .find(|(p, s)| {
                s.id == which || p == wanted || p.file_name() == Some(wanted.as_os_str())
            })
            .ok_or_else(|| {
                TuneError::State(format!("no snapshot {which:?} in {}", self.path.display()))
            })
    }
}

/// Lists snapshots without taking the lock (for `tune show`).
pub fn list(dir: &Path) -> Result<Vec<(PathBuf, Snapshot)>, TuneError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TuneError::io("list", dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) == Some("json") {
            out.push((path.clone(), load(&path)?));
        }
    }
    out.sort_by(|a, b| (a.1.created_unix, &a.1.id).cmp(&(b.1.created_unix, &b.1.id)));
    Ok(out)
}

pub fn load(path: &Path) -> Result<Snapshot, TuneError> {
    let bytes = std::fs::read(path).map_err(|e| TuneError::io("read", path, e))?;
    let s: Snapshot = serde_json::from_slice(&bytes)
        .map_err(|e| TuneError::State(format!("{}: not a snapshot: {e}", path.display())))?;
    if s.version != SNAPSHOT_VERSION {
        return Err(TuneError::State(format!(
            "{}: snapshot version {} (this ringtail reads {SNAPSHOT_VERSION})",
            path.display(),
            s.version
        )));
    }
    Ok(s)
}

/// Writes the snapshot durably (temp file, fsync, rename, directory fsync).
pub fn save(path: &Path, s: &Snapshot) -> Result<(), TuneError> {
    let bytes = serde_json::to_vec_pretty(s)
        .map_err(|e| TuneError::State(format!("encoding snapshot: {e}")))?;
    write_durably(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: &str, created: u64, state: State) -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            id: id.into(),
            profile: "p".into(),
            origin: "test".into(),
            created_unix: created,
            boot_id: "b".into(),
            pid: 1,
            state,
            entries: vec![],
            unsupported: vec![],
            reverted_unix: None,
        }
    }

    #[test]
    fn the_state_dir_is_locked_and_lists_snapshots_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let e = StateDir::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("another ringtail tune"), "{e}");
        for (id, t, st) in [
            ("b", 20, State::Applied),
            ("a", 10, State::Reverted),
            ("c", 30, State::Applying),
        ] {
            save(&dir.path().join(format!("{id}.json")), &snap(id, t, st)).unwrap();
        }
        let ids: Vec<String> = state
            .snapshots()
            .unwrap()
            .into_iter()
            .map(|(_, s)| s.id)
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        let active: Vec<String> = state
            .active()
            .unwrap()
            .into_iter()
            .map(|(_, s)| s.id)
            .collect();
        assert_eq!(active, ["b", "c"]);
        assert_eq!(state.find("b.json").unwrap().1.id, "b");
        assert!(state.find("zzz").is_err());
        let (id, path) = state.new_path("my profile/x", 5);
        assert!(id.ends_with("my_profile_x") && !path.exists(), "{id}");
        state.prune_reverted(0).unwrap();
        let ids: Vec<String> = state
            .snapshots()
            .unwrap()
            .into_iter()
            .map(|(_, s)| s.id)
            .collect();
        assert_eq!(ids, ["b", "c"], "only reverted snapshots are pruned");
        drop(state);
        StateDir::open(dir.path()).unwrap();
    }
}
