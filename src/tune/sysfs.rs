//! Reads and writes of the kernel's files (/proc, /sys) under a host root,
//! the durable replacement of state files, and the block devices under a
//! directory. Plain blocking I/O on the caller's thread.
//!
//! The root is `/` for the real host; tests point it at a directory tree
//! shaped like /proc and /sys to drive the logic without touching the host.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::TuneError;

/// Where the kernel's files are.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
}

impl Host {
    pub fn real() -> Host {
        Host { root: "/".into() }
    }

    /// A tree shaped like the host's `/proc` and `/sys` under `root`.
    pub fn at(root: &Path) -> Host {
        Host {
            root: root.to_owned(),
        }
    }

    pub fn is_real(&self) -> bool {
        self.root == Path::new("/")
    }

    /// `rel` is relative to `/`, e.g. `proc/sys/vm/swappiness`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// The file's content, exactly; `None` when it does not exist.
    pub fn read(&self, rel: &str) -> Option<String> {
        read_raw(&self.path(rel)).ok().flatten()
    }

    /// The file's content without surrounding white space.
    pub fn read_trim(&self, rel: &str) -> Option<String> {
        self.read(rel).map(|s| s.trim().to_string())
    }

    /// Online CPUs (`/sys/devices/system/cpu/online`), e.g. `[0, 1]`.
    pub fn online_cpus(&self) -> Vec<usize> {
        self.read_trim("sys/devices/system/cpu/online")
            .map(|s| parse_cpu_list(&s))
            .unwrap_or_default()
    }

    /// Queue directory of a whole disk, e.g. `/sys/block/vda/queue`.
    pub fn queue_dir(&self, disk: &str) -> PathBuf {
        self.path(&format!("sys/block/{disk}/queue"))
    }
}

/// A file's exact content; `Ok(None)` when it does not exist.
pub fn read_raw(path: &Path) -> Result<Option<String>, TuneError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TuneError::io("read", path, e)),
    }
}

/// Writes `value` to a kernel file in one `write` call, as the kernel's
/// handlers expect (a short write would set a truncated value).
pub fn write_value(path: &Path, value: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    let written = file.write(value.as_bytes())?;
    if written != value.len() {
        return Err(std::io::Error::other(format!(
            "short write: {written} of {} bytes",
            value.len()
        )));
    }
    Ok(())
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the
/// new content: temp file, fsync, rename, fsync of the directory.
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), TuneError> {
    let tmp = path.with_extension("tmp");
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    result.map_err(|e| TuneError::io("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| TuneError::io("rename", path, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| TuneError::io("fsync", dir, e))
}

/// `0-3,8,10-11` -> `[0, 1, 2, 3, 8, 10, 11]`; malformed parts are skipped.
pub fn parse_cpu_list(s: &str) -> Vec<usize> {
    let mut cpus = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let mut ends = part.splitn(2, '-').map(|n| n.trim().parse::<usize>());
        match (ends.next(), ends.next()) {
            (Some(Ok(a)), None) => cpus.push(a),
            (Some(Ok(a)), Some(Ok(b))) if a <= b && b - a < 65536 => cpus.extend(a..=b),
            _ => {}
        }
    }
    cpus
}

/// The choices a kernel file lists with the current one in brackets:
/// `none [mq-deadline] kyber` -> (`mq-deadline`, all three).
pub fn bracketed(raw: &str) -> (Option<String>, Vec<String>) {
    let mut selected = None;
    let choices = raw
        .split_whitespace()
        .map(|w| {
            if let Some(inner) = w.strip_prefix('[').and_then(|w| w.strip_suffix(']')) {
                selected = Some(inner.to_string());
                inner.to_string()
            } else {
                w.to_string()
            }
        })
        .collect();
    (selected, choices)
}

/// A whole disk the data directory's file system lives on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Disk {
    /// Kernel name, e.g. `vda`, `nvme0n1`.
    pub name: String,
    /// How it was reached from the file system's device, e.g.
    /// `vda1 (partition)`, `dm-0 -> sda`; empty when it is that device.
    pub via: String,
}

/// The whole disks under `dir` (its nearest existing ancestor): the file
/// system's device, its parent disk when it is a partition, the disks under
/// it when it is a device-mapper or md device. Err: why there is none.
pub fn disks_under(host: &Host, dir: &Path) -> Result<Vec<Disk>, String> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .ok_or_else(|| format!("{} does not exist", dir.display()))?;
    let meta = std::fs::metadata(existing).map_err(|e| format!("{}: {e}", existing.display()))?;
    let mut dev = meta.dev();
    if libc::major(dev) == 0 {
        // Virtual or multi-device file systems (tmpfs, overlay, btrfs) have
        // anonymous device numbers; the mount's source may still be a disk.
        dev = super::inspect::mount_of(host, existing)
            .and_then(|m| m.source.starts_with("/dev/").then_some(m.source))
            .and_then(|src| std::fs::metadata(src).ok())
            .map(|m| m.rdev())
            .filter(|d| libc::major(*d) != 0)
            .ok_or_else(|| format!("{} is on no block device", existing.display()))?;
    }
    let sys = host.path(&format!(
        "sys/dev/block/{}:{}",
        libc::major(dev),
        libc::minor(dev)
    ));
    let mut disks = Vec::new();
    walk_to_disks(host, &sys, "", &mut disks, 0)?;
    disks.dedup();
    Ok(disks)
}

fn walk_to_disks(
    host: &Host,
    sys: &Path,
    via: &str,
    out: &mut Vec<Disk>,
    depth: usize,
) -> Result<(), String> {
    if depth > 8 {
        return Err("device stack deeper than 8 levels".into());
    }
    let real = std::fs::canonicalize(sys).map_err(|e| format!("{}: {e}", sys.display()))?;
    let name = file_name(&real);
    if real.join("partition").exists() {
        let parent = real.parent().map(file_name).unwrap_or_default();
        let via = join_via(via, &format!("{name} (partition)"));
        return walk_to_disks(
            host,
            &host.path(&format!("sys/block/{parent}")),
            &via,
            out,
            depth + 1,
        );
    }
    let slaves: Vec<String> = std::fs::read_dir(real.join("slaves"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if slaves.is_empty() {
        out.push(Disk {
            name,
            via: via.to_string(),
        });
        return Ok(());
    }
    for slave in slaves {
        let via = join_via(via, &name);
        walk_to_disks(
            host,
            &host.path(&format!("sys/class/block/{slave}")),
            &via,
            out,
            depth + 1,
        )?;
    }
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn join_via(via: &str, step: &str) -> String {
    if via.is_empty() {
        step.to_string()
    } else {
        format!("{via} -> {step}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_expand_ranges() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(parse_cpu_list(""), Vec::<usize>::new());
        assert_eq!(parse_cpu_list("5-2,x,7"), vec![7]);
    }

    #[test]
    fn bracketed_lists_give_the_selected_choice() {
        let (sel, all) = bracketed("none [mq-deadline] kyber bfq \n");
        assert_eq!(sel.as_deref(), Some("mq-deadline"));
        assert_eq!(all, ["none", "mq-deadline", "kyber", "bfq"]);
        assert_eq!(bracketed("reno bbr cubic").0, None);
    }

    #[test]
    fn durable_writes_replace_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_durably(&path, b"first version, longer").unwrap();
        write_durably(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn the_root_file_system_has_a_disk_when_on_a_block_device() {
        // Whatever this machine's disk is, a directory on a block device
        // resolves to whole disks with queue directories.
        let host = Host::real();
        let dir = std::env::temp_dir();
        if let Ok(disks) = disks_under(&host, &dir) {
            assert!(!disks.is_empty());
            for d in disks {
                assert!(host.queue_dir(&d.name).is_dir(), "{d:?}");
            }
        }
    }
}
