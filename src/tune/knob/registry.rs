//! The registry: every knob a profile may set, with its range and what it
//! does, and the settings that are only ever reported.

use super::{Kind, KnobSpec, Scope};

const I32: i64 = i32::MAX as i64;

macro_rules! knob {
    ($name:literal, $scope:ident, $kind:expr, $about:literal) => {
        KnobSpec {
            name: $name,
            scope: Scope::$scope,
            kind: $kind,
            order: 1,
            companions: &[],
            partner: None,
            about: $about,
        }
    };
}

const fn int(min: i64, max: i64) -> Kind {
    Kind::Int { min, max }
}

/// Every knob a profile may name.
pub static KNOBS: &[KnobSpec] = &[
    knob!(
        "sysctl.vm.swappiness",
        Sysctl,
        int(0, 200),
        "how eagerly anonymous memory (the batch cache) is swapped out"
    ),
    KnobSpec {
        partner: Some("sysctl.vm.dirty_bytes"),
        companions: &["sysctl.vm.dirty_bytes"],
        ..knob!(
            "sysctl.vm.dirty_ratio",
            Sysctl,
            int(0, 100),
            "percent of memory dirty before writers are throttled"
        )
    },
    KnobSpec {
        partner: Some("sysctl.vm.dirty_background_bytes"),
        companions: &["sysctl.vm.dirty_background_bytes"],
        ..knob!(
            "sysctl.vm.dirty_background_ratio",
            Sysctl,
            int(0, 100),
            "percent of memory dirty before background writeback starts"
        )
    },
    KnobSpec {
        partner: Some("sysctl.vm.dirty_ratio"),
        companions: &["sysctl.vm.dirty_ratio"],
        ..knob!(
            "sysctl.vm.dirty_bytes",
            Sysctl,
            int(8192, i64::MAX),
            "bytes dirty before writers are throttled (replaces dirty_ratio, which then reads 0)"
        )
    },
    KnobSpec {
        partner: Some("sysctl.vm.dirty_background_ratio"),
        companions: &["sysctl.vm.dirty_background_ratio"],
        ..knob!(
            "sysctl.vm.dirty_background_bytes",
            Sysctl,
            int(1, i64::MAX),
            "bytes dirty before background writeback (replaces the ratio, which then reads 0)"
        )
    },
    knob!(
        "sysctl.vm.dirty_expire_centisecs",
        Sysctl,
        int(0, I32),
        "age at which dirty pages are written back"
    ),
    knob!(
        "sysctl.vm.dirty_writeback_centisecs",
        Sysctl,
        int(0, I32),
        "interval of the writeback threads"
    ),
    knob!(
        "sysctl.vm.max_map_count",
        Sysctl,
        int(65530, I32),
        "memory mappings per process"
    ),
    knob!(
        "sysctl.vm.zone_reclaim_mode",
        Sysctl,
        int(0, 7),
        "reclaim in the local NUMA node before using another"
    ),
    knob!(
        "sysctl.kernel.numa_balancing",
        Sysctl,
        int(0, 3),
        "automatic NUMA page migration"
    ),
    knob!(
        "sysctl.kernel.sched_autogroup_enabled",
        Sysctl,
        int(0, 1),
        "group tasks by session for fair scheduling"
    ),
    knob!(
        "sysctl.net.core.somaxconn",
        Sysctl,
        int(128, 65535),
        "cap on a listener's pending connections"
    ),
    knob!(
        "sysctl.net.core.netdev_max_backlog",
        Sysctl,
        int(1, I32),
        "packets queued per CPU before the stack processes them"
    ),
    knob!(
        "sysctl.net.core.netdev_budget",
        Sysctl,
        int(1, I32),
        "packets one softirq round may process"
    ),
    knob!(
        "sysctl.net.core.rmem_max",
        Sysctl,
        int(4096, I32),
        "largest receive buffer a socket may ask for"
    ),
    knob!(
        "sysctl.net.core.wmem_max",
        Sysctl,
        int(4096, I32),
        "largest send buffer a socket may ask for"
    ),
    knob!(
        "sysctl.net.core.rmem_default",
        Sysctl,
        int(4096, I32),
        "receive buffer of non-TCP sockets"
    ),
    knob!(
        "sysctl.net.core.wmem_default",
        Sysctl,
        int(4096, I32),
        "send buffer of non-TCP sockets"
    ),
    knob!(
        "sysctl.net.core.busy_poll",
        Sysctl,
        int(0, 100_000),
        "microseconds poll/select busy-wait on the device queue"
    ),
    knob!(
        "sysctl.net.core.busy_read",
        Sysctl,
        int(0, 100_000),
        "microseconds a socket read busy-waits on the device queue"
    ),
    knob!(
        "sysctl.net.ipv4.tcp_rmem",
        Sysctl,
        Kind::Triple { min: 1, max: I32 },
        "TCP receive buffer: min, default, autotuning max"
    ),
    knob!(
        "sysctl.net.ipv4.tcp_wmem",
        Sysctl,
        Kind::Triple { min: 1, max: I32 },
        "TCP send buffer: min, default, autotuning max"
    ),
    knob!(
        "sysctl.net.ipv4.tcp_notsent_lowat",
        Sysctl,
        int(1, u32::MAX as i64),
        "unsent bytes a socket may queue before it stops being writable"
    ),
    knob!(
        "sysctl.net.ipv4.tcp_congestion_control",
        Sysctl,
        Kind::ListedIn("proc/sys/net/ipv4/tcp_available_congestion_control"),
        "TCP congestion control algorithm"
    ),
    knob!(
        "sysctl.net.ipv4.tcp_slow_start_after_idle",
        Sysctl,
        int(0, 1),
        "shrink the congestion window of a connection that went idle"
    ),
    knob!(
        "sysctl.net.ipv4.tcp_max_syn_backlog",
        Sysctl,
        int(128, I32),
        "half-open connections remembered"
    ),
    knob!(
        "sysctl.net.ipv4.tcp_autocorking",
        Sysctl,
        int(0, 1),
        "coalesce small writes while earlier data is queued"
    ),
    knob!(
        "thp.enabled",
        Thp,
        Kind::Bracketed,
        "transparent huge pages for the broker's heap"
    ),
    knob!(
        "thp.defrag",
        Thp,
        Kind::Bracketed,
        "whether a huge page fault may stall to compact memory"
    ),
    KnobSpec {
        order: 0,
        companions: &["block.nr_requests", "block.wbt_lat_usec"],
        ..knob!(
            "block.scheduler",
            Block,
            Kind::Bracketed,
            "I/O scheduler of the data directory's disks"
        )
    },
    knob!(
        "block.nr_requests",
        Block,
        int(4, 1 << 20),
        "requests the scheduler queues per hardware queue"
    ),
    knob!(
        "block.read_ahead_kb",
        Block,
        int(0, 1 << 20),
        "buffered read-ahead (the broker reads with O_DIRECT)"
    ),
    knob!(
        "block.io_poll",
        Block,
        int(0, 1),
        "polled completions (needs poll queues; the broker then polls its reads)"
    ),
    knob!(
        "block.rq_affinity",
        Block,
        int(0, 2),
        "complete requests on the submitting CPU (2: forced)"
    ),
    knob!(
        "block.nomerges",
        Block,
        int(0, 2),
        "merging of adjacent requests (0: all, 2: none)"
    ),
    knob!(
        "block.wbt_lat_usec",
        Block,
        int(-1, I32),
        "writeback throttling target latency (0: off, -1: default)"
    ),
    knob!(
        "block.max_sectors_kb",
        Block,
        Kind::Int {
            min: 4,
            max: 1 << 22
        },
        "largest request sent to the device"
    ),
    knob!(
        "cpu.governor",
        Cpu,
        Kind::ListedIn("scaling_available_governors"),
        "cpufreq governor of every online CPU"
    ),
];

/// Settings shown and checked but never changed, with the reason.
pub static REPORT_ONLY: &[(&str, &str)] = &[
    ("block.write_cache", "changing it trades durability: 'write through' on a disk with a volatile cache makes the kernel skip the flushes fdatasync relies on"),
    ("sysctl.kernel.io_uring_disabled", "the broker needs io_uring; restricting it is the host's security policy"),
    ("cpu.smt", "SMT on/off is CPU hotplug; set it at boot"),
    ("cmdline", "the kernel command line is a reboot-level change; set it in the boot loader"),
    ("kernel_cmdline", "the kernel command line is a reboot-level change; set it in the boot loader"),
];
