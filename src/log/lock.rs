//! The data directory's lock file: one process at a time owns a data
//! directory, the broker for its whole run or `ringtail repair` while it
//! rewrites logs. An advisory `flock` on `<data-dir>/.lock` (Kafka's file
//! name): the kernel drops it when the process ends, however it ends.
//!
//! Taken once at start-up on the main thread, before any shard starts.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use super::LogError;

/// Lock file in the data directory.
pub const LOCK_FILE: &str = ".lock";

/// Held while alive.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock of `data_dir` (which must exist), or says who holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, LogError> {
        let path = data_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| LogError::io("open", &path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file, path }),
            Err(TryLockError::WouldBlock) => Err(LogError::InUse { path }),
            Err(TryLockError::Error(e)) => Err(LogError::io("lock", &path, e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        assert!(matches!(err, LogError::InUse { .. }), "{err}");
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
