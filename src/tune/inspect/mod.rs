//! `ringtail tune show`: every host setting that matters to the broker,
//! with its current value and where it comes from, and the broker's own
//! knobs. Reads only.

use std::path::PathBuf;

use serde::Serialize;

use super::knob::{self, Scope};
use super::sysfs::{bracketed, disks_under, Disk, Host};
use crate::config::{Config, FlushPolicy};

mod mount;
mod network;

pub use mount::{mount_of, parse_mountinfo_line, Mount};

#[derive(Debug, Clone, Serialize)]
pub struct Fact {
    pub group: &'static str,
    pub name: String,
    pub value: String,
    /// The file, probe or configuration the value comes from.
    pub source: String,
}

/// Where `tune show` looks: the broker's configuration and data directory.
pub struct Subject<'a> {
    pub config: &'a Config,
    /// `--config FILE`, or "defaults".
    pub config_source: String,
    pub data_dir: PathBuf,
    /// `--device` names given instead of the data directory's disks.
    pub explicit_disks: Vec<String>,
}

impl Subject<'_> {
    /// The disks block knobs apply to, and why there are none.
    pub fn disks(&self, host: &Host) -> (Vec<Disk>, Option<String>) {
        if !self.explicit_disks.is_empty() {
            let d = self.explicit_disks.iter().map(|n| Disk {
                name: n.clone(),
                via: "--device".into(),
            });
            return (d.collect(), None);
        }
        match disks_under(host, &self.data_dir) {
            Ok(d) => (d, None),
            Err(why) => (Vec::new(), Some(why)),
        }
    }

    pub fn devices(&self, host: &Host) -> knob::Devices {
        let (disks, no_disks) = self.disks(host);
        knob::Devices {
            disks: disks.into_iter().map(|d| d.name).collect(),
            no_disks,
            cpus: host.online_cpus(),
        }
    }
}

/// Every fact `tune show` prints, in groups.
pub fn inspect(host: &Host, subject: &Subject) -> Vec<Fact> {
    let mut f = Facts(Vec::new());
    cpu(host, &mut f);
    memory(host, &mut f);
    storage(host, subject, &mut f);
    network::network(host, &mut f);
    io_uring(host, &mut f);
    broker(host, subject, &mut f);
    f.0
}

struct Facts(Vec<Fact>);

impl Facts {
    fn add(
        &mut self,
        group: &'static str,
        name: impl Into<String>,
        value: impl Into<String>,
        source: impl Into<String>,
    ) {
        self.0.push(Fact {
            group,
            name: name.into(),
            value: value.into(),
            source: source.into(),
        });
    }

    /// A file's content with its white space runs as single spaces (the
    /// tabs of tcp_rmem), or "(absent)".
    fn file(&mut self, host: &Host, group: &'static str, name: &str, rel: &str) {
        let value = host
            .read(rel)
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|| "(absent)".into());
        self.add(group, name, value, format!("/{rel}"));
    }
}

/// Boot parameters that decide CPU placement and are only reported.
pub const CMDLINE_KEYS: &[&str] = &[
    "isolcpus",
    "nohz_full",
    "rcu_nocbs",
    "irqaffinity",
    "transparent_hugepage",
    "mitigations",
    "intel_pstate",
    "idle",
    "processor.max_cstate",
];

/// `key=value` of the kernel command line (`Some("")` for a bare flag).
pub fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .take_while(|w| *w != "--")
        .find_map(|w| match w.split_once('=') {
            Some((k, v)) if k == key => Some(v.to_string()),
            None if w == key => Some(String::new()),
            _ => None,
        })
}

fn cpu(host: &Host, f: &mut Facts) {
    let online = host.online_cpus();
    f.add(
        "cpu",
        "online",
        format!(
            "{} ({} cores)",
            host.read_trim("sys/devices/system/cpu/online")
                .unwrap_or_default(),
            online.len()
        ),
        "/sys/devices/system/cpu/online",
    );
    f.file(
        host,
        "cpu",
        "smt.control",
        "sys/devices/system/cpu/smt/control",
    );
    f.file(
        host,
        "cpu",
        "smt.active",
        "sys/devices/system/cpu/smt/active",
    );
    let governors: Vec<(usize, Option<String>)> = online
        .iter()
        .map(|c| {
            (
                *c,
                host.read_trim(&format!(
                    "sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor"
                )),
            )
        })
        .collect();
    if governors.iter().all(|(_, g)| g.is_none()) {
        f.add(
            "cpu",
            "governor",
            "(no cpufreq: fixed frequency or managed by the hypervisor)",
            "/sys/devices/system/cpu/cpuN/cpufreq",
        );
    } else {
        for (c, g) in governors {
            f.add(
                "cpu",
                format!("governor[cpu{c}]"),
                g.unwrap_or_else(|| "(no cpufreq)".into()),
                format!("/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor"),
            );
        }
    }
    let cmdline = host.read_trim("proc/cmdline").unwrap_or_default();
    for key in CMDLINE_KEYS {
        let v = cmdline_value(&cmdline, key).unwrap_or_else(|| "(not set)".into());
        f.add(
            "cpu",
            format!("cmdline.{key}"),
            v,
            "/proc/cmdline (reported only)",
        );
    }
}

fn sysctls(host: &Host, f: &mut Facts, group: &'static str, prefixes: &[&str]) {
    for k in knob::KNOBS.iter().filter(|k| k.scope == Scope::Sysctl) {
        let name = k.name.trim_start_matches("sysctl.");
        if prefixes.iter().any(|p| name.starts_with(p)) {
            f.file(
                host,
                group,
                name,
                &format!("proc/sys/{}", name.replace('.', "/")),
            );
        }
    }
}

fn memory(host: &Host, f: &mut Facts) {
    let total = host
        .read("proc/meminfo")
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .map(|l| l["MemTotal:".len()..].trim().to_string())
        })
        .unwrap_or_default();
    f.add("memory", "MemTotal", total, "/proc/meminfo");
    sysctls(host, f, "memory", &["vm.", "kernel."]);
    for t in ["enabled", "defrag"] {
        let raw = host
            .read_trim(&format!("sys/kernel/mm/transparent_hugepage/{t}"))
            .unwrap_or_default();
        let v = bracketed(&raw).0.unwrap_or_else(|| "(absent)".into());
        f.add(
            "memory",
            format!("thp.{t}"),
            format!("{v}  ({raw})"),
            format!("/sys/kernel/mm/transparent_hugepage/{t}"),
        );
    }
    let (soft, hard) = memlock();
    f.add(
        "memory",
        "memlock (ulimit -l)",
        format!("soft {soft}, hard {hard}"),
        "getrlimit(RLIMIT_MEMLOCK) of this process",
    );
}

/// RLIMIT_MEMLOCK of this process, soft and hard, as text.
pub fn memlock() -> (String, String) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the valid struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return ("?".into(), "?".into());
    }
    let show = |v: libc::rlim_t| {
        if v == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            format!("{} KiB", v / 1024)
        }
    };
    (show(r.rlim_cur), show(r.rlim_max))
}

/// Queue attributes shown per disk.
const QUEUE_ATTRS: &[&str] = &[
    "scheduler",
    "nr_requests",
    "read_ahead_kb",
    "io_poll",
    "rq_affinity",
    "nomerges",
    "wbt_lat_usec",
    "max_sectors_kb",
    "write_cache",
    "rotational",
    "logical_block_size",
];

fn storage(host: &Host, s: &Subject, f: &mut Facts) {
    f.add(
        "storage",
        "data_dir",
        s.data_dir.display().to_string(),
        s.config_source.clone(),
    );
    match mount_of(host, &s.data_dir) {
        Some(m) => {
            f.add(
                "storage",
                "mount",
                m.mount_point.display().to_string(),
                "/proc/self/mountinfo",
            );
            f.add(
                "storage",
                "filesystem",
                format!("{} on {}", m.fs_type, m.source),
                "/proc/self/mountinfo",
            );
            f.add(
                "storage",
                "mount options",
                m.options,
                "/proc/self/mountinfo",
            );
        }
        None => f.add("storage", "mount", "(not found)", "/proc/self/mountinfo"),
    }
    let (disks, why) = s.disks(host);
    if let Some(why) = why {
        f.add(
            "storage",
            "disks",
            format!("(none: {why})"),
            "/sys/dev/block",
        );
    }
    for d in disks {
        let via = if d.via.is_empty() {
            String::new()
        } else {
            format!(" via {}", d.via)
        };
        f.add(
            "storage",
            "disk",
            format!("{}{via}", d.name),
            "/sys/dev/block",
        );
        for a in QUEUE_ATTRS {
            f.file(
                host,
                "storage",
                &format!("{}.{a}", d.name),
                &format!("sys/block/{}/queue/{a}", d.name),
            );
        }
    }
}

/// io_uring_setup with `flags`: Ok, or the errno's text.
pub fn probe_io_uring(flags: u32) -> Result<(), String> {
    // struct io_uring_params is 120 bytes; flags at offset 8.
    let mut params = [0u32; 30];
    params[2] = flags;
    // SAFETY: io_uring_setup reads and writes the 120-byte params buffer;
    // the returned descriptor is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: fd is the ring this call created.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

/// IORING_SETUP_SQPOLL.
pub const IORING_SETUP_SQPOLL: u32 = 1 << 1;

fn io_uring(host: &Host, f: &mut Facts) {
    f.file(
        host,
        "io_uring",
        "kernel.io_uring_disabled",
        "proc/sys/kernel/io_uring_disabled",
    );
    if !host.is_real() {
        return;
    }
    let show = |r: Result<(), String>| {
        r.map(|_| "available".to_string())
            .unwrap_or_else(|e| format!("unavailable: {e}"))
    };
    f.add(
        "io_uring",
        "io_uring_setup",
        show(probe_io_uring(0)),
        "io_uring_setup probe",
    );
    f.add(
        "io_uring",
        "SQPOLL",
        show(probe_io_uring(IORING_SETUP_SQPOLL)),
        "io_uring_setup(IORING_SETUP_SQPOLL) probe",
    );
}

fn broker(host: &Host, s: &Subject, f: &mut Facts) {
    let c = s.config;
    let src = s.config_source.clone();
    let shards = c.shard_count();
    let cores = match c.cores {
        Some(n) => format!("{n} shards"),
        None => format!("{shards} shards (one per CPU)"),
    };
    f.add("broker", "cores", cores, src.clone());
    let (disks, _) = s.disks(host);
    let polls: Vec<String> = disks
        .iter()
        .map(|d| {
            format!(
                "{}: io_poll={}",
                d.name,
                host.read_trim(&format!("sys/block/{}/queue/io_poll", d.name))
                    .unwrap_or_else(|| "?".into())
            )
        })
        .collect();
    let polled = disks.iter().any(|d| {
        host.read_trim(&format!("sys/block/{}/queue/io_poll", d.name))
            .as_deref()
            == Some("1")
    });
    let polled = if polled {
        "on: reads use glommio's polled ring"
    } else {
        "off: the device has no poll queues enabled"
    };
    f.add(
        "broker",
        "polled I/O",
        format!("{polled} ({})", polls.join(", ")),
        "data directory's disk (decided at start-up)",
    );
    f.add(
        "broker",
        "SQPOLL",
        "not used: glommio 0.9 creates its rings without IORING_SETUP_SQPOLL",
        "glommio",
    );
    f.add(
        "broker",
        "write_buffer_bytes",
        c.write_buffer_bytes.to_string(),
        src.clone(),
    );
    let flush = match c.flush_policy {
        FlushPolicy::GroupCommit => "group_commit (fdatasync before acks)".to_string(),
        FlushPolicy::Interval => format!("interval (fdatasync every {} ms)", c.flush_interval_ms),
    };
    f.add("broker", "flush_policy", flush, src.clone());
    let cache = match c.batch_cache_bytes {
        Some(b) => format!("{b} per shard"),
        None => format!(
            "{} per shard (default share of memory)",
            c.batch_cache_bytes_per_shard(shards)
        ),
    };
    f.add("broker", "batch_cache_bytes", cache, src.clone());
    f.add(
        "broker",
        "segment_bytes",
        c.segment_bytes.to_string(),
        src.clone(),
    );
    f.add("broker", "preallocate", c.preallocate.to_string(), src);
}

/// Prints facts as aligned text, one group after the other.
pub fn print_text(facts: &[Fact]) {
    let width = facts.iter().map(|f| f.name.len()).max().unwrap_or(0);
    let vwidth = facts
        .iter()
        .map(|f| f.value.len())
        .max()
        .unwrap_or(0)
        .min(60);
    let mut group = "";
    for fact in facts {
        if fact.group != group {
            group = fact.group;
            println!("{group}:");
        }
        println!(
            "  {:width$}  {:vwidth$}  [{}]",
            fact.name, fact.value, fact.source
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_values() {
        let c = "quiet isolcpus=2-3 nohz_full=2-3 nosmt -- init-arg isolcpus=9";
        assert_eq!(cmdline_value(c, "isolcpus").as_deref(), Some("2-3"));
        assert_eq!(cmdline_value(c, "nosmt").as_deref(), Some(""));
        assert_eq!(cmdline_value(c, "rcu_nocbs"), None);
    }

    #[test]
    fn show_covers_every_group_on_this_host() {
        let config = Config::default();
        let dir = tempfile::tempdir().unwrap();
        let subject = Subject {
            config: &config,
            config_source: "defaults".into(),
            data_dir: dir.path().to_owned(),
            explicit_disks: vec![],
        };
        let facts = inspect(&Host::real(), &subject);
        for group in ["cpu", "memory", "storage", "network", "io_uring", "broker"] {
            assert!(facts.iter().any(|f| f.group == group), "no {group} facts");
        }
        for name in [
            "vm.swappiness",
            "net.core.busy_poll",
            "thp.enabled",
            "flush_policy",
            "SQPOLL",
            "cmdline.isolcpus",
        ] {
            assert!(facts.iter().any(|f| f.name == name), "no {name}");
        }
    }
}
