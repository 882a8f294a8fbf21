//! Host counters around each measured bench: per-core CPU busy share,
//! context switches, interrupts and softirqs (/proc/stat), disk utilisation,
//! writes and flushes of the data directory's disks (/proc/diskstats), TCP
//! retransmits (/proc/net/snmp). Two samples, one before and one after.

use std::time::Instant;

use serde::Serialize;

use crate::tune::sysfs::Host;

/// Sector size /proc/diskstats counts in, whatever the device's.
const DISKSTATS_SECTOR_BYTES: u64 = 512;

#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    /// Per core: (busy jiffies, all jiffies).
    cpus: Vec<(u64, u64)>,
    context_switches: u64,
    interrupts: u64,
    softirqs: u64,
    disks: Vec<(String, DiskStat)>,
    tcp_retransmits: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct DiskStat {
    writes: u64,
    sectors_written: u64,
    io_ticks_ms: u64,
    flushes: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct DiskCounters {
    pub name: String,
    pub util_percent: f64,
    pub writes_per_s: f64,
    pub write_mib_per_s: f64,
    pub flushes_per_s: f64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct HostCounters {
    pub seconds: f64,
    pub cpu_busy_percent: Vec<f64>,
    pub context_switches_per_s: f64,
    pub interrupts_per_s: f64,
    pub softirqs_per_s: f64,
    pub disks: Vec<DiskCounters>,
    pub tcp_retransmits: u64,
}

pub fn sample(host: &Host, disks: &[String]) -> Sample {
    let stat = host.read("proc/stat").unwrap_or_default();
    let diskstats = host.read("proc/diskstats").unwrap_or_default();
    Sample {
        at: Instant::now(),
        cpus: parse_cpus(&stat),
        context_switches: stat_field(&stat, "ctxt"),
        interrupts: stat_field(&stat, "intr"),
        softirqs: stat_field(&stat, "softirq"),
        disks: disks
            .iter()
            .map(|d| (d.clone(), parse_diskstat(&diskstats, d).unwrap_or_default()))
            .collect(),
        tcp_retransmits: parse_snmp(
            &host.read("proc/net/snmp").unwrap_or_default(),
            "Tcp",
            "RetransSegs",
        )
        .unwrap_or(0),
    }
}

/// `cpuN user nice system idle iowait irq softirq steal ...`: busy is all
/// but idle and iowait.
fn parse_cpus(stat: &str) -> Vec<(u64, u64)> {
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .take(8)
                .filter_map(|n| n.parse().ok())
                .collect();
            let total: u64 = v.iter().sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle.min(total), total)
        })
        .collect()
}

/// First number after `key` on its /proc/stat line.
fn stat_field(stat: &str, key: &str) -> u64 {
    stat.lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(key))
                .then(|| w.next()?.parse().ok())
                .flatten()
        })
        .unwrap_or(0)
}

fn parse_diskstat(diskstats: &str, disk: &str) -> Option<DiskStat> {
    let line = diskstats
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some(disk))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(3)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    Some(DiskStat {
        writes: *f.get(4)?,
        sectors_written: *f.get(6)?,
        io_ticks_ms: *f.get(9)?,
        flushes: f.get(15).copied().unwrap_or(0),
    })
}

/// A counter of /proc/net/snmp: a header line and a value line per protocol.
fn parse_snmp(snmp: &str, proto: &str, field: &str) -> Option<u64> {
    let prefix = format!("{proto}:");
    let mut lines = snmp.lines().filter(|l| l.starts_with(&prefix));
    let header = lines.next()?;
    let values = lines.next()?;
    let i = header.split_whitespace().position(|h| h == field)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// Counters per second between two samples.
pub fn between(a: &Sample, b: &Sample) -> HostCounters {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
    let rate = |x: u64, y: u64| y.saturating_sub(x) as f64 / secs;
    HostCounters {
        seconds: secs,
        cpu_busy_percent: a
            .cpus
            .iter()
            .zip(&b.cpus)
            .map(|((busy0, all0), (busy1, all1))| {
                let all = all1.saturating_sub(*all0);
                if all == 0 {
                    0.0
                } else {
                    100.0 * busy1.saturating_sub(*busy0) as f64 / all as f64
                }
            })
            .collect(),
        context_switches_per_s: rate(a.context_switches, b.context_switches),
        interrupts_per_s: rate(a.interrupts, b.interrupts),
        softirqs_per_s: rate(a.softirqs, b.softirqs),
        disks: a
            .disks
            .iter()
            .zip(&b.disks)
            .map(|((name, x), (_, y))| DiskCounters {
                name: name.clone(),
                util_percent: (100.0 * y.io_ticks_ms.saturating_sub(x.io_ticks_ms) as f64
                    / (secs * 1000.0))
                    .min(100.0),
                writes_per_s: rate(x.writes, y.writes),
                write_mib_per_s: rate(x.sectors_written, y.sectors_written)
                    * DISKSTATS_SECTOR_BYTES as f64
                    / 1048576.0,
                flushes_per_s: rate(x.flushes, y.flushes),
            })
            .collect(),
        tcp_retransmits: b.tcp_retransmits.saturating_sub(a.tcp_retransmits),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_counter_formats_parse() {
        let stat = "cpu  10 0 10 80 0 0 0 0 0 0\ncpu0 5 0 5 40 10 0 0 0 0 0\ncpu1 5 0 5 40 0 0 0 0 0 0\nintr 1234 5 6\nctxt 999\nsoftirq 77 1 2\n";
        assert_eq!(parse_cpus(stat), vec![(10, 60), (10, 50)]);
        assert_eq!(stat_field(stat, "ctxt"), 999);
        assert_eq!(stat_field(stat, "intr"), 1234);
        assert_eq!(stat_field(stat, "softirq"), 77);
        let diskstats = " 254       0 vda 100 0 800 50 200 10 4000 300 0 1500 400 0 0 0 0 42 9\n   7       0 loop0 1 0 2 0 0 0 0 0 0 0 0\n";
        let d = parse_diskstat(diskstats, "vda").unwrap();
        assert_eq!(
            (d.writes, d.sectors_written, d.io_ticks_ms, d.flushes),
            (200, 4000, 1500, 42)
        );
        assert!(parse_diskstat(diskstats, "sda").is_none());
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RtoMin RetransSegs InErrs\nTcp: 1 200 17 0\n";
        assert_eq!(parse_snmp(snmp, "Tcp", "RetransSegs"), Some(17));
    }

    #[test]
    fn samples_of_this_host_give_rates() {
        let host = Host::real();
        let a = sample(&host, &[]);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let b = sample(&host, &[]);
        let c = between(&a, &b);
        assert!(!c.cpu_busy_percent.is_empty());
        assert!(c.cpu_busy_percent.iter().all(|p| (0.0..=100.0).contains(p)));
        assert!(c.context_switches_per_s > 0.0);
    }
}
