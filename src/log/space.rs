//! Free space on the data directory's file system, and the guard that keeps
//! the broker from taking the last of it.
//!
//! One `SpaceGuard` per shard, owned by the shard and shared (Rc) with the
//! shard's partitions; only that shard's thread touches it. The shard's disk
//! watcher refreshes it with one statvfs every `disk_check_interval_ms`.
//! Produce asks `is_full` (no syscall); the write path asks
//! `preallocation_step`.
//!
//! The shards share nothing, so between two checks each shard may take only
//! its share of the headroom above the threshold (the headroom divided by
//! the shard count), counting what it allocated itself: all shards together
//! never take the free space below the threshold before the next check
//! shows what the others did. A write or fallocate that met ENOSPC marks
//! the file system full until the next check.

use std::cell::Cell;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::config::{MIN_PREALLOCATE_STEP_BYTES, PREALLOCATE_STEP_BYTES};

/// The free space to keep: the larger of an absolute floor and a share of
/// the file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceLimits {
    pub min_free_bytes: u64,
    pub min_free_percent: u64,
}

impl SpaceLimits {
    pub fn threshold_bytes(&self, total_bytes: u64) -> u64 {
        self.min_free_bytes
            .max(total_bytes / 100 * self.min_free_percent)
    }
}

/// What statvfs says of a file system: bytes available to the broker and
/// its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// statvfs of the file system holding `path`. Free bytes are those an
/// unprivileged writer may use (`f_bavail`), so root's reserve is not counted.
pub fn fs_space(path: &Path) -> std::io::Result<FsSpace> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs only writes into the zeroed struct we pass it.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path alive for the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let unit = st.f_frsize as u64;
    Ok(FsSpace {
        free_bytes: st.f_bavail as u64 * unit,
        total_bytes: st.f_blocks as u64 * unit,
    })
}

/// True for the errors that mean "no room": ENOSPC and EDQUOT. Such a write
/// failed for want of space, not because the device lost data.
pub fn is_no_space(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

pub struct SpaceGuard {
    limits: SpaceLimits,
    /// Shards sharing the file system's headroom.
    shards: u64,
    data_dir: PathBuf,
    checked: Cell<FsSpace>,
    /// Bytes this shard allocated since the last check.
    used_since_check: Cell<u64>,
    /// A write or fallocate met ENOSPC since the last check.
    ran_out: Cell<bool>,
}

impl SpaceGuard {
    /// A guard for the file system of `data_dir`, one of `shards`, checked
    /// once now. Until a check succeeds the space is taken as plentiful.
    pub fn new(data_dir: &Path, limits: SpaceLimits, shards: usize) -> SpaceGuard {
        let guard = SpaceGuard {
            limits,
            shards: shards.max(1) as u64,
            data_dir: data_dir.to_owned(),
            checked: Cell::new(FsSpace {
                free_bytes: u64::MAX,
                total_bytes: 0,
            }),
            used_since_check: Cell::new(0),
            ran_out: Cell::new(false),
        };
        if let Err(e) = guard.refresh() {
            tracing::warn!(dir = %data_dir.display(), error = %e, "statvfs of the data directory");
        }
        guard
    }

    /// A guard that never refuses (tests of other concerns).
    pub fn unlimited() -> SpaceGuard {
        SpaceGuard {
            limits: SpaceLimits {
                min_free_bytes: 0,
                min_free_percent: 0,
            },
            shards: 1,
            data_dir: PathBuf::new(),
            checked: Cell::new(FsSpace {
                free_bytes: u64::MAX,
                total_bytes: 0,
            }),
            used_since_check: Cell::new(0),
            ran_out: Cell::new(false),
        }
    }

    /// One statvfs of the data directory's file system.
    pub fn refresh(&self) -> std::io::Result<()> {
        let space = fs_space(&self.data_dir)?;
        self.observe(space);
        Ok(())
    }

    /// Takes a fresh figure: what was estimated since the last one is
    /// replaced by the file system's word.
    pub fn observe(&self, space: FsSpace) {
        self.checked.set(space);
        self.used_since_check.set(0);
        self.ran_out.set(false);
    }

    pub fn threshold_bytes(&self) -> u64 {
        self.limits.threshold_bytes(self.checked.get().total_bytes)
    }

    /// Size of the file system at the last check; 0 before any succeeded.
    pub fn total_bytes(&self) -> u64 {
        self.checked.get().total_bytes
    }

    /// Free bytes now, as far as this shard knows.
    pub fn free_bytes(&self) -> u64 {
        self.checked
            .get()
            .free_bytes
            .saturating_sub(self.used_since_check.get())
    }

    /// This shard's share of the headroom above the threshold at the last
    /// check.
    fn share_bytes(&self) -> u64 {
        self.checked
            .get()
            .free_bytes
            .saturating_sub(self.threshold_bytes())
            / self.shards
    }

    /// What this shard may still allocate before the next check.
    fn headroom_bytes(&self) -> u64 {
        self.share_bytes()
            .saturating_sub(self.used_since_check.get())
    }

    /// True while produce must be refused: free space below the threshold,
    /// this shard's share of the headroom used up, or a write met ENOSPC,
    /// all since the last check. With no threshold only ENOSPC counts.
    pub fn is_full(&self) -> bool {
        let threshold = self.threshold_bytes();
        self.ran_out.get()
            || self.checked.get().free_bytes < threshold
            || threshold > 0 && self.used_since_check.get() > self.share_bytes()
    }

    /// This shard allocated `bytes` (a write past the allocated end, a
    /// fallocate).
    pub fn took(&self, bytes: u64) {
        self.used_since_check
            .set(self.used_since_check.get().saturating_add(bytes));
    }

    /// A write or fallocate met ENOSPC: full until the next check.
    pub fn ran_out(&self) {
        self.ran_out.set(true);
    }

    /// Bytes to preallocate past a write that itself needs `write_bytes` of
    /// new allocation: the full step when this shard's headroom allows it,
    /// else the largest halving of it that fits, else 0 (none). Even with no
    /// threshold, never the last free space.
    pub fn preallocation_step(&self, write_bytes: u64) -> u64 {
        if self.ran_out.get() {
            return 0;
        }
        let headroom = self.headroom_bytes().saturating_sub(write_bytes);
        let mut step = PREALLOCATE_STEP_BYTES;
        while step > headroom {
            step /= 2;
            if step < MIN_PREALLOCATE_STEP_BYTES {
                return 0;
            }
        }
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn guard(min_free_bytes: u64, min_free_percent: u64, free: u64, total: u64) -> SpaceGuard {
        sharded(min_free_bytes, min_free_percent, free, total, 1)
    }

    fn sharded(min_free: u64, percent: u64, free: u64, total: u64, shards: u64) -> SpaceGuard {
        let g = SpaceGuard {
            limits: SpaceLimits {
                min_free_bytes: min_free,
                min_free_percent: percent,
            },
            shards,
            ..SpaceGuard::unlimited()
        };
        g.observe(FsSpace {
            free_bytes: free,
            total_bytes: total,
        });
        g
    }

    #[test]
    fn threshold_is_the_larger_of_bytes_and_percent() {
        let l = SpaceLimits {
            min_free_bytes: 100 * MIB,
            min_free_percent: 5,
        };
        assert_eq!(l.threshold_bytes(1000 * MIB), 100 * MIB);
        assert_eq!(l.threshold_bytes(100_000 * MIB), 5000 * MIB);
    }

    #[test]
    fn full_below_threshold_and_back_when_space_returns() {
        let g = guard(100 * MIB, 0, 150 * MIB, 1000 * MIB);
        assert!(!g.is_full());
        g.took(49 * MIB);
        assert!(!g.is_full(), "101 MiB left");
        g.took(2 * MIB);
        assert!(g.is_full(), "own allocations count before the next check");
        g.observe(FsSpace {
            free_bytes: 300 * MIB,
            total_bytes: 1000 * MIB,
        });
        assert!(!g.is_full(), "resumes by itself");
    }

    #[test]
    fn shards_together_stay_above_the_threshold_between_checks() {
        // Four shards, 40 MiB of headroom: 10 MiB each until the next check.
        let shards: Vec<SpaceGuard> = (0..4)
            .map(|_| sharded(100 * MIB, 0, 140 * MIB, 1000 * MIB, 4))
            .collect();
        let mut taken = 0;
        for g in &shards {
            while !g.is_full() {
                let step = g.preallocation_step(0).max(MIB);
                g.took(step);
                taken += step;
            }
        }
        assert!(
            taken <= 40 * MIB + 4 * MIB,
            "at most one write past each share"
        );
        for g in &shards {
            assert_eq!(
                g.preallocation_step(0),
                0,
                "no preallocation past the share"
            );
        }
        // With no threshold the share bounds preallocation, not produce.
        let g = sharded(0, 0, 10 * MIB, 1000 * MIB, 2);
        g.took(8 * MIB);
        assert!(!g.is_full());
        assert_eq!(g.preallocation_step(0), 0);
    }

    #[test]
    fn enospc_is_full_until_the_next_check() {
        let g = guard(0, 0, 10 * MIB, 1000 * MIB);
        assert!(!g.is_full());
        g.ran_out();
        assert!(g.is_full());
        assert_eq!(g.preallocation_step(0), 0);
        g.observe(FsSpace {
            free_bytes: 10 * MIB,
            total_bytes: 1000 * MIB,
        });
        assert!(!g.is_full());
    }

    #[test]
    fn preallocation_never_takes_the_headroom() {
        let g = guard(100 * MIB, 0, 1000 * MIB, 2000 * MIB);
        assert_eq!(g.preallocation_step(MIB), PREALLOCATE_STEP_BYTES);
        let g = guard(100 * MIB, 0, 120 * MIB, 2000 * MIB);
        // 20 MiB above the threshold, 1 MiB of it for the write: 16 MiB fits.
        assert_eq!(g.preallocation_step(MIB), 16 * MIB);
        let g = guard(100 * MIB, 0, 101 * MIB + MIB / 2, 2000 * MIB);
        assert_eq!(g.preallocation_step(MIB / 4), MIB);
        let g = guard(100 * MIB, 0, 100 * MIB + MIB / 2, 2000 * MIB);
        assert_eq!(g.preallocation_step(0), 0, "less than the smallest step");
        let g = guard(100 * MIB, 0, 90 * MIB, 2000 * MIB);
        assert_eq!(g.preallocation_step(0), 0, "below the threshold");
    }

    #[test]
    fn preallocation_steps_keep_free_space_above_threshold() {
        // Whatever the free space, a step plus the write stays above the threshold.
        for free_mib in 0..200u64 {
            for write in [0, 4096, MIB / 2, 3 * MIB] {
                for shards in [1, 3] {
                    let g = sharded(64 * MIB, 0, free_mib * MIB, 4096 * MIB, shards);
                    let step = g.preallocation_step(write);
                    if step > 0 {
                        assert!(free_mib * MIB - shards * (step + write) >= 64 * MIB);
                        assert!(step >= MIN_PREALLOCATE_STEP_BYTES);
                    }
                }
            }
        }
    }

    #[test]
    fn statvfs_reports_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let s = fs_space(dir.path()).unwrap();
        assert!(s.total_bytes > 0 && s.free_bytes <= s.total_bytes);
        assert!(fs_space(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn no_space_errors_are_recognised() {
        assert!(is_no_space(&std::io::Error::from_raw_os_error(
            libc::ENOSPC
        )));
        assert!(is_no_space(&std::io::Error::from_raw_os_error(
            libc::EDQUOT
        )));
        assert!(!is_no_space(&std::io::Error::from_raw_os_error(libc::EIO)));
        // glommio's enhanced errors keep only the kind.
        let kind = std::io::Error::from_raw_os_error(libc::ENOSPC).kind();
        assert!(is_no_space(&std::io::Error::new(kind, "writing")));
    }
}
