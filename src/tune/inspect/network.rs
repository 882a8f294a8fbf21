//! `tune show`'s network facts: the network sysctls, and per NIC its
//! queues, the CPUs its interrupts go to, and its ring sizes.

use std::path::Path;

use super::{sysctls, Facts};
use crate::tune::sysfs::Host;

pub(super) fn network(host: &Host, f: &mut Facts) {
    sysctls(host, f, "network", &["net."]);
    let Ok(rd) = std::fs::read_dir(host.path("sys/class/net")) else {
        return;
    };
    let mut nics: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    nics.sort();
    let interrupts = host.read("proc/interrupts").unwrap_or_default();
    for nic in nics.into_iter().filter(|n| n != "lo") {
        let base = host.path(&format!("sys/class/net/{nic}"));
        if !base.join("device").exists() {
            continue; // virtual interfaces have no queues of their own
        }
        let count = |prefix: &str| {
            std::fs::read_dir(base.join("queues"))
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                        .count()
                })
                .unwrap_or(0)
        };
        f.add(
            "network",
            format!("{nic}.queues"),
            format!("{} rx, {} tx", count("rx-"), count("tx-")),
            format!("/sys/class/net/{nic}/queues"),
        );
        for (irq, name) in nic_irqs(&base.join("device"), &interrupts) {
            let aff = host
                .read_trim(&format!("proc/irq/{irq}/smp_affinity_list"))
                .unwrap_or_else(|| "(unreadable)".into());
            f.add(
                "network",
                format!("{nic}.irq{irq}"),
                format!("{name} on CPUs {aff}"),
                format!("/proc/irq/{irq}/smp_affinity_list"),
            );
        }
        let rings = if host.is_real() {
            ring_sizes(&nic)
        } else {
            Err("not probed".into())
        };
        f.add(
            "network",
            format!("{nic}.rings"),
            rings.unwrap_or_else(|e| format!("(not readable: {e})")),
            "ethtool ETHTOOL_GRINGPARAM",
        );
    }
}

/// The MSI interrupts of a NIC's device (or of the PCI function above a
/// virtio device), with their names in /proc/interrupts.
fn nic_irqs(device: &Path, interrupts: &str) -> Vec<(u32, String)> {
    let Ok(dev) = std::fs::canonicalize(device) else {
        return Vec::new();
    };
    let dir = [
        dev.join("msi_irqs"),
        dev.parent().map(|p| p.join("msi_irqs")).unwrap_or_default(),
    ]
    .into_iter()
    .find(|d| d.is_dir());
    let mut irqs: Vec<u32> = dir
        .and_then(|d| std::fs::read_dir(d).ok())
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    irqs.sort_unstable();
    irqs.into_iter()
        .map(|irq| {
            let name = interrupts
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{irq}:")))
                .and_then(|l| l.split_whitespace().last())
                .unwrap_or("?")
                .to_string();
            (irq, name)
        })
        .collect()
}

/// Current and maximum ring sizes from the driver (ethtool -g).
fn ring_sizes(nic: &str) -> Result<String, String> {
    #[repr(C)]
    #[derive(Default)]
    struct RingParam {
        cmd: u32,
        rx_max: u32,
        rx_mini_max: u32,
        rx_jumbo_max: u32,
        tx_max: u32,
        rx: u32,
        rx_mini: u32,
        rx_jumbo: u32,
        tx: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut RingParam,
        _pad: [u8; 16],
    }
    const ETHTOOL_GRINGPARAM: u32 = 0x10;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    if nic.len() >= 16 {
        return Err("name too long".into());
    }
    let mut ring = RingParam {
        cmd: ETHTOOL_GRINGPARAM,
        ..Default::default()
    };
    let mut req = IfReq {
        name: [0; 16],
        data: &mut ring,
        _pad: [0; 16],
    };
    req.name[..nic.len()].copy_from_slice(nic.as_bytes());
    // SAFETY: a plain datagram socket, closed below; the ioctl reads the
    // interface name and writes `ring` through the pointer, both alive.
    let rc = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error().to_string());
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL as _, &mut req as *mut IfReq);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if rc < 0 {
            Err(err)
        } else {
            Ok(())
        }
    };
    rc.map_err(|e| e.to_string())?;
    Ok(format!(
        "rx {} (max {}), tx {} (max {})",
        ring.rx, ring.rx_max, ring.tx, ring.tx_max
    ))
}
