//! Facts about the machine a benchmark ran on, read from /proc and /sys.

use serde_json::{json, Value};

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Kernel, CPU, cores, memory, the disk under the working directory and the
/// sysctls that move streaming benchmarks.
pub fn describe() -> Value {
    let cpu = read("/proc/cpuinfo").and_then(|c| {
        c.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
    });
    let mem_kib = read("/proc/meminfo").and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemTotal"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
    });
    let sysctls: serde_json::Map<String, Value> = [
        "vm/dirty_ratio",
        "vm/dirty_background_ratio",
        "vm/swappiness",
        "net/core/somaxconn",
        "net/core/rmem_max",
        "net/core/wmem_max",
        "net/ipv4/tcp_rmem",
        "net/ipv4/tcp_wmem",
        "kernel/io_uring_disabled",
    ]
    .iter()
    .map(|k| (k.replace('/', "."), json!(read(&format!("/proc/sys/{k}")))))
    .collect();
    json!({
        "kernel": read("/proc/sys/kernel/osrelease"),
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory_bytes": mem_kib.map(|k| k * 1024),
        "disk": disk(),
        "sysctls": sysctls,
    })
}

fn disk() -> Value {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(".") else {
        return Value::Null;
    };
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let queue = format!("/sys/dev/block/{major}:0/queue");
    let model = read(&format!("/sys/dev/block/{major}:0/device/model"));
    json!({
        "device": format!("{major}:{minor}"),
        "model": model,
        "rotational": read(&format!("{queue}/rotational")),
        "scheduler": read(&format!("{queue}/scheduler")),
        "logical_block_size": read(&format!("{queue}/logical_block_size")),
        "io_poll": read(&format!("{queue}/io_poll")),
    })
}
