//! Test helpers for tests that change the real host: one such test at a
//! time, and loop devices that give their queue back as they found it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

static HOST: Mutex<()> = Mutex::new(());

/// Held by every test that changes the real host.
pub fn host_lock() -> MutexGuard<'static, ()> {
    HOST.lock().unwrap_or_else(|e| e.into_inner())
}

/// Queue attributes attaching a loop device may change; saved before and
/// written back after detaching.
const LOOP_ATTRS: &[&str] = &["scheduler", "nr_requests", "read_ahead_kb", "wbt_lat_usec"];

/// A loop device over a sparse file, detached on drop.
pub struct LoopDevice {
    pub name: String,
    saved: Vec<(PathBuf, String)>,
}

impl LoopDevice {
    pub fn attach(dir: &Path) -> Option<LoopDevice> {
        let file = dir.join("loop.img");
        std::fs::File::create(&file).ok()?.set_len(64 << 20).ok()?;
        for _ in 0..5 {
            let free = Command::new("losetup").arg("-f").output().ok()?;
            let dev = String::from_utf8_lossy(&free.stdout).trim().to_string();
            let name = dev.strip_prefix("/dev/")?.to_string();
            let q = Path::new("/sys/block").join(&name).join("queue");
            let saved = LOOP_ATTRS
                .iter()
                .filter_map(|a| Some((q.join(a), std::fs::read_to_string(q.join(a)).ok()?)))
                .collect();
            let ok = Command::new("losetup")
                .arg(&dev)
                .arg(&file)
                .status()
                .ok()?
                .success();
            if ok {
                return Some(LoopDevice { name, saved });
            }
        }
        None
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup")
            .arg("-d")
            .arg(format!("/dev/{}", self.name))
            .status();
        for (path, value) in &self.saved {
            let v = crate::tune::knob::restore_value(
                crate::tune::knob::spec(&format!(
                    "block.{}",
                    path.file_name().unwrap().to_string_lossy()
                ))
                .expect("registered attribute"),
                value,
            );
            let _ = crate::tune::sysfs::write_value(path, &v);
        }
    }
}
