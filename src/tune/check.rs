//! `ringtail tune check [PROFILE]`: settings known to hurt this broker,
//! each with its reason. One small checker per concern; each sees the
//! host's values, or a profile's where it sets them (so a profile is
//! checked before it is applied). `ringtail serve` logs the same warnings
//! at start-up.

use std::collections::BTreeMap;

use serde::Serialize;

use super::inspect::mount_of;
use super::knob::Devices;
use super::sysfs::{bracketed, disks_under, Host};
use crate::config::Config;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub knob: String,
    pub value: String,
    pub reason: String,
}

/// Backlog the broker asks for on each shard's listener (server.rs).
pub const BROKER_LISTEN_BACKLOG: i64 = 1024;
/// Smallest TCP buffer ceiling that does not cap one connection's
/// throughput on a fast link: a 64 KiB produce batch times the requests
/// clients keep in flight, and fetch responses of several MiB.
pub const MIN_TCP_BUFFER_MAX_BYTES: i64 = 1 << 20;
/// Largest swappiness that keeps the batch cache out of swap.
pub const MAX_SWAPPINESS: i64 = 10;

/// The values checkers look at: a profile's where it sets them, else the
/// host's.
pub struct View<'a> {
    pub host: &'a Host,
    pub overlay: &'a BTreeMap<String, String>,
    pub devices: &'a Devices,
    pub config: &'a Config,
}

impl View<'_> {
    /// A knob's value (the selected word of a bracketed list), per disk or
    /// CPU where `label` names one.
    fn get(&self, knob: &str, label: &str) -> Option<String> {
        if let Some(v) = self.overlay.get(knob) {
            return Some(v.clone());
        }
        let rel = match knob.split_once('.')? {
            ("sysctl", k) => format!("proc/sys/{}", k.replace('.', "/")),
            ("thp", k) => format!("sys/kernel/mm/transparent_hugepage/{k}"),
            ("block", k) => format!("sys/block/{label}/queue/{k}"),
            ("cpu", k) => format!("sys/devices/system/cpu/{label}/cpufreq/scaling_{k}"),
            _ => return None,
        };
        let raw = self.host.read_trim(&rel)?;
        Some(bracketed(&raw).0.unwrap_or(raw))
    }

    fn int(&self, knob: &str) -> Option<i64> {
        self.get(knob, "")?.parse().ok()
    }
}

type Checker = fn(&View) -> Vec<Warning>;

/// Every checker, in the order warnings are printed.
const CHECKERS: &[Checker] = &[
    io_uring_enabled,
    swappiness,
    thp_compaction,
    zone_reclaim,
    numa_balancing,
    somaxconn,
    tcp_buffers,
    slow_start_after_idle,
    scheduler,
    write_barriers,
    governor,
    shards_fit_cores,
];

/// Warnings for the host and the disks under the configuration's data
/// directory, where `overlay` (a profile's settings) wins.
pub fn check_host(
    host: &Host,
    config: &Config,
    overlay: &BTreeMap<String, String>,
) -> Vec<Warning> {
    let (disks, no_disks) = match disks_under(host, &config.data_dir) {
        Ok(d) => (d.into_iter().map(|d| d.name).collect(), None),
        Err(why) => (Vec::new(), Some(why)),
    };
    let devices = Devices {
        disks,
        no_disks,
        cpus: host.online_cpus(),
    };
    check(&View {
        host,
        overlay,
        devices: &devices,
        config,
    })
}

pub fn check(view: &View) -> Vec<Warning> {
    CHECKERS.iter().flat_map(|c| c(view)).collect()
}

fn warn(knob: &str, value: impl ToString, reason: &str) -> Vec<Warning> {
    vec![Warning {
        knob: knob.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }]
}

fn io_uring_enabled(v: &View) -> Vec<Warning> {
    match v.int("sysctl.kernel.io_uring_disabled") {
        Some(1) => warn("sysctl.kernel.io_uring_disabled", 1, "only root and members of kernel.io_uring_group may create io_uring rings; the broker cannot start as another user"),
        Some(2) => warn("sysctl.kernel.io_uring_disabled", 2, "io_uring is disabled: the broker cannot start"),
        _ => vec![],
    }
}

fn swappiness(v: &View) -> Vec<Warning> {
    match v.int("sysctl.vm.swappiness") {
        Some(s) if s > MAX_SWAPPINESS => warn("sysctl.vm.swappiness", s, "the batch cache (a quarter of memory by default) is anonymous memory; swapping it out turns cached fetches into disk reads (1 keeps it in memory)"),
        _ => vec![],
    }
}

fn thp_compaction(v: &View) -> Vec<Warning> {
    let (enabled, defrag) = (v.get("thp.enabled", ""), v.get("thp.defrag", ""));
    if enabled.as_deref() == Some("always") && defrag.as_deref() == Some("always") {
        return warn("thp.defrag", "always", "with huge pages always on, a page fault may stall to compact memory: latency spikes on the shards (defrag madvise or defer avoids it)");
    }
    vec![]
}

fn zone_reclaim(v: &View) -> Vec<Warning> {
    match v.int("sysctl.vm.zone_reclaim_mode") {
        Some(m) if m != 0 => warn("sysctl.vm.zone_reclaim_mode", m, "reclaims the local NUMA node's memory (the batch cache, the page cache) rather than using another node's"),
        _ => vec![],
    }
}

fn numa_balancing(v: &View) -> Vec<Warning> {
    let numa = v.host.path("sys/devices/system/node/node1").exists();
    match v.int("sysctl.kernel.numa_balancing") {
        Some(1) if numa => warn("sysctl.kernel.numa_balancing", 1, "the shards are pinned to their cores; automatic NUMA balancing adds page faults to migrate their memory"),
        _ => vec![],
    }
}

fn somaxconn(v: &View) -> Vec<Warning> {
    match v.int("sysctl.net.core.somaxconn") {
        Some(n) if n < BROKER_LISTEN_BACKLOG => warn("sysctl.net.core.somaxconn", n, "each shard listens with a backlog of 1024 and the kernel caps it at somaxconn: bursts of new connections are dropped"),
        _ => vec![],
    }
}

fn tcp_buffers(v: &View) -> Vec<Warning> {
    let mut out = Vec::new();
    for knob in ["sysctl.net.ipv4.tcp_rmem", "sysctl.net.ipv4.tcp_wmem"] {
        let max = v.get(knob, "").and_then(|t| {
            t.split_whitespace()
                .nth(2)
                .and_then(|m| m.parse::<i64>().ok())
        });
        if let Some(max) = max.filter(|m| *m < MIN_TCP_BUFFER_MAX_BYTES) {
            out.extend(warn(knob, max, "the autotuning ceiling is below 1 MiB: one connection's produce or fetch throughput is capped by its buffer"));
        }
    }
    out
}

fn slow_start_after_idle(v: &View) -> Vec<Warning> {
    match v.int("sysctl.net.ipv4.tcp_slow_start_after_idle") {
        Some(1) => warn("sysctl.net.ipv4.tcp_slow_start_after_idle", 1, "a client connection idle for a retransmission timeout restarts with a small congestion window: the first requests after a pause are slow over a real network (0 keeps the window)"),
        _ => vec![],
    }
}

fn scheduler(v: &View) -> Vec<Warning> {
    let mut out = Vec::new();
    for d in &v.devices.disks {
        if v.get("block.scheduler", d).as_deref() == Some("bfq") {
            out.extend(warn(&format!("block.scheduler[{d}]"), "bfq", "bfq spends CPU per request and idles between streams; the broker's few large O_DIRECT writes and fdatasyncs want mq-deadline or none"));
        }
    }
    out
}

fn write_barriers(v: &View) -> Vec<Warning> {
    let Some(m) = mount_of(v.host, &v.config.data_dir) else {
        return vec![];
    };
    let off = m
        .options
        .split(',')
        .find(|o| *o == "nobarrier" || *o == "barrier=0");
    match off {
        Some(o) => warn("mount", o, "fdatasync no longer flushes the disk's write cache: acknowledged records can be lost on power failure"),
        None => vec![],
    }
}

fn governor(v: &View) -> Vec<Warning> {
    let mut out = Vec::new();
    for c in &v.devices.cpus {
        let label = format!("cpu{c}");
        if v.get("cpu.governor", &label).as_deref() == Some("powersave") {
            out.extend(warn(
                &format!("cpu.governor[{label}]"),
                "powersave",
                "the CPU stays at a low frequency: every request's latency grows",
            ));
        }
    }
    out
}

fn shards_fit_cores(v: &View) -> Vec<Warning> {
    let cpus = v.devices.cpus.len();
    let shards = v.config.shard_count();
    if cpus > 0 && shards > cpus {
        return warn("broker.cores", shards, "more shards than online CPUs: shards pinned to the same core take turns, adding latency");
    }
    vec![]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(dir: &std::path::Path, files: &[(&str, &str)]) -> Host {
        for (rel, text) in files {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        Host::at(dir)
    }

    fn knobs(
        host: &Host,
        overlay: &[(&str, &str)],
        disks: &[&str],
        config: &Config,
    ) -> Vec<String> {
        let overlay = overlay
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let devices = Devices {
            disks: disks.iter().map(|d| d.to_string()).collect(),
            no_disks: None,
            cpus: vec![0, 1],
        };
        check(&View {
            host,
            overlay: &overlay,
            devices: &devices,
            config,
        })
        .into_iter()
        .map(|w| w.knob)
        .collect()
    }

    #[test]
    fn known_bad_settings_warn_with_their_knob() {
        let dir = tempfile::tempdir().unwrap();
        let host = fake(
            dir.path(),
            &[
                ("proc/sys/vm/swappiness", "60\n"),
                ("proc/sys/net/core/somaxconn", "128\n"),
                ("proc/sys/net/ipv4/tcp_wmem", "4096\t16384\t524288\n"),
                ("proc/sys/kernel/io_uring_disabled", "2\n"),
                (
                    "sys/kernel/mm/transparent_hugepage/enabled",
                    "[always] madvise never\n",
                ),
                (
                    "sys/kernel/mm/transparent_hugepage/defrag",
                    "[always] defer madvise never\n",
                ),
                ("sys/block/vdx/queue/scheduler", "none mq-deadline [bfq]\n"),
                (
                    "sys/devices/system/cpu/cpu1/cpufreq/scaling_governor",
                    "powersave\n",
                ),
            ],
        );
        let config = Config {
            cores: Some(4),
            ..Config::default()
        };
        let got = knobs(&host, &[], &["vdx"], &config);
        assert_eq!(
            got,
            [
                "sysctl.kernel.io_uring_disabled",
                "sysctl.vm.swappiness",
                "thp.defrag",
                "sysctl.net.core.somaxconn",
                "sysctl.net.ipv4.tcp_wmem",
                "block.scheduler[vdx]",
                "cpu.governor[cpu1]",
                "broker.cores",
            ]
        );
    }

    #[test]
    fn a_profile_overlay_wins_over_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let host = fake(
            dir.path(),
            &[
                ("proc/sys/vm/swappiness", "1\n"),
                ("sys/block/vdx/queue/scheduler", "none [mq-deadline] bfq\n"),
            ],
        );
        let config = Config {
            cores: Some(1),
            ..Config::default()
        };
        assert!(knobs(&host, &[], &["vdx"], &config).is_empty());
        let got = knobs(
            &host,
            &[("sysctl.vm.swappiness", "30"), ("block.scheduler", "bfq")],
            &["vdx"],
            &config,
        );
        assert_eq!(got, ["sysctl.vm.swappiness", "block.scheduler[vdx]"]);
    }
}
