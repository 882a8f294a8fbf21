//! The knobs a profile may set: one small spec per knob saying where it
//! lives, which values it takes and what else changing it moves. A name not
//! in this registry is refused, as is a value outside the spec, before
//! anything on the host changes.
//!
//! Names are `<section>.<key>`: `sysctl.vm.swappiness` (any registered
//! sysctl), `thp.enabled`, `block.scheduler` (each disk under the data
//! directory), `cpu.governor` (each online CPU).

use std::path::PathBuf;

use super::sysfs::{bracketed, Host};
use super::TuneError;

mod registry;

pub use registry::{KNOBS, REPORT_ONLY};

/// Where a knob's files are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One file under /proc/sys (the name with `.` as `/`).
    Sysctl,
    /// One file under /sys/kernel/mm/transparent_hugepage.
    Thp,
    /// One file per disk under /sys/block/<disk>/queue.
    Block,
    /// One file per online CPU under /sys/devices/system/cpu/cpuN/cpufreq.
    Cpu,
}

/// The values a knob takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int {
        min: i64,
        max: i64,
    },
    /// Three integers, minimum <= default <= maximum (`tcp_rmem`).
    Triple {
        min: i64,
        max: i64,
    },
    /// One of the words the file itself lists, current one in brackets.
    Bracketed,
    /// One of the words listed in another file: a sysctl path, or a file
    /// beside the knob's own (for per-CPU knobs).
    ListedIn(&'static str),
}

#[derive(Debug)]
pub struct KnobSpec {
    pub name: &'static str,
    pub scope: Scope,
    pub kind: Kind,
    /// Applied and restored in increasing order on each target: a block
    /// device's scheduler first, since switching it resets other attributes.
    pub order: u8,
    /// Knobs the kernel changes as a side effect of this one; their values
    /// are snapshotted and restored too.
    pub companions: &'static [&'static str],
    /// The kernel zeroes this knob when its partner is written (dirty bytes
    /// vs ratio): restore only the member that was not zero.
    pub partner: Option<&'static str>,
    pub about: &'static str,
}

pub fn spec(name: &str) -> Option<&'static KnobSpec> {
    KNOBS.iter().find(|k| k.name == name)
}

/// The spec of `name`, or why there is none.
pub fn lookup(name: &str) -> Result<&'static KnobSpec, TuneError> {
    if let Some(s) = spec(name) {
        return Ok(s);
    }
    let head = name.split('.').next().unwrap_or(name);
    let hint = REPORT_ONLY
        .iter()
        .find(|(k, _)| *k == name || *k == head)
        .map(|(_, why)| format!(": reported only, never changed ({why})"))
        .or_else(|| {
            let near: Vec<&str> = KNOBS
                .iter()
                .map(|k| k.name)
                .filter(|k| k.starts_with(&format!("{head}.")) && similar(k, name))
                .collect();
            (!near.is_empty()).then(|| format!("; did you mean {}?", near.join(" or ")))
        })
        .unwrap_or_else(|| "; known knobs are listed by `ringtail tune show --knobs`".into());
    Err(TuneError::UnknownKnob {
        name: name.to_string(),
        hint,
    })
}

/// Most edits between a misspelt knob name and the one suggested.
const MAX_SUGGESTION_EDITS: usize = 2;

/// Same last word, one last word containing the other, or a name a few
/// edits away (a typo).
fn similar(known: &str, asked: &str) -> bool {
    let last = |s: &str| s.rsplit('.').next().unwrap_or(s).to_string();
    let (a, b) = (last(known), last(asked));
    a == b
        || a.contains(&b)
        || b.contains(&a)
        || strsim::levenshtein(known, asked) <= MAX_SUGGESTION_EDITS
}

/// A value from a profile, checked against the spec without the host:
/// the text to write. TOML integers, strings, and arrays of three integers
/// (or a string of three) for triples.
pub fn normalize(spec: &KnobSpec, value: &toml::Value) -> Result<String, TuneError> {
    let bad = |reason: String| TuneError::BadValue {
        knob: spec.name.to_string(),
        value: value.to_string(),
        reason,
    };
    match spec.kind {
        Kind::Int { min, max } => {
            let n = match value {
                toml::Value::Integer(n) => *n,
                toml::Value::String(s) => {
                    s.trim().parse().map_err(|_| bad("not an integer".into()))?
                }
                _ => return Err(bad("expected an integer".into())),
            };
            if !(min..=max).contains(&n) {
                return Err(bad(format!("must be in {min}..={max}")));
            }
            Ok(n.to_string())
        }
        Kind::Triple { min, max } => {
            let parts: Vec<i64> = match value {
                toml::Value::Array(a) => a
                    .iter()
                    .map(|v| v.as_integer().ok_or(()))
                    .collect::<Result<_, _>>(),
                toml::Value::String(s) => s
                    .split_whitespace()
                    .map(|w| w.parse().map_err(|_| ()))
                    .collect(),
                _ => Err(()),
            }
            .map_err(|_| bad("expected three integers: min, default, max".into()))?;
            if parts.len() != 3 {
                return Err(bad("expected three integers: min, default, max".into()));
            }
            if parts.iter().any(|n| !(min..=max).contains(n)) {
                return Err(bad(format!("each must be in {min}..={max}")));
            }
            if !(parts[0] <= parts[1] && parts[1] <= parts[2]) {
                return Err(bad("must be ordered min <= default <= max".into()));
            }
            Ok(format!("{}\t{}\t{}", parts[0], parts[1], parts[2]))
        }
        Kind::Bracketed | Kind::ListedIn(_) => match value {
            toml::Value::String(s) if !s.trim().is_empty() && !s.contains(char::is_whitespace) => {
                Ok(s.clone())
            }
            _ => Err(bad("expected one word".into())),
        },
    }
}

/// One file a knob lives in on this host.
#[derive(Debug, Clone)]
pub struct Target {
    pub spec: &'static KnobSpec,
    /// The disk or CPU, empty for host-wide knobs.
    pub label: String,
    pub path: PathBuf,
}

impl Target {
    /// `block.scheduler[vda]` or `sysctl.vm.swappiness`.
    pub fn display(&self) -> String {
        if self.label.is_empty() {
            self.spec.name.to_string()
        } else {
            format!("{}[{}]", self.spec.name, self.label)
        }
    }
}

/// The disks and CPUs per-device knobs apply to.
#[derive(Debug, Clone, Default)]
pub struct Devices {
    pub disks: Vec<String>,
    /// Why there are no disks (e.g. the data directory is on tmpfs).
    pub no_disks: Option<String>,
    pub cpus: Vec<usize>,
}

/// The files of `spec` on this host (none when the host has no such device).
pub fn targets(host: &Host, spec: &'static KnobSpec, devices: &Devices) -> Vec<Target> {
    let key = spec.name.split_once('.').map_or("", |(_, k)| k);
    let one = |label: String, rel: String| Target {
        spec,
        label,
        path: host.path(&rel),
    };
    match spec.scope {
        Scope::Sysctl => vec![one(
            String::new(),
            format!("proc/sys/{}", key.replace('.', "/")),
        )],
        Scope::Thp => vec![one(
            String::new(),
            format!("sys/kernel/mm/transparent_hugepage/{key}"),
        )],
        Scope::Block => devices
            .disks
            .iter()
            .map(|d| one(d.clone(), format!("sys/block/{d}/queue/{key}")))
            .collect(),
        Scope::Cpu => devices
            .cpus
            .iter()
            .map(|c| {
                one(
                    format!("cpu{c}"),
                    format!("sys/devices/system/cpu/cpu{c}/cpufreq/scaling_{key}"),
                )
            })
            .collect(),
    }
}

/// Checks `desired` against what this host accepts (the scheduler or
/// governor must be one it offers; the request size within the device's
/// limit). `current` is the target file's content.
pub fn check_on_host(
    host: &Host,
    t: &Target,
    current: &str,
    desired: &str,
) -> Result<(), TuneError> {
    let bad = |reason: String| TuneError::BadValue {
        knob: t.display(),
        value: desired.to_string(),
        reason,
    };
    let offered = match t.spec.kind {
        Kind::Bracketed => Some(bracketed(current).1),
        Kind::ListedIn(list) => {
            let path = match t.spec.scope {
                Scope::Sysctl => host.path(list),
                _ => t.path.with_file_name(list),
            };
            let text = super::sysfs::read_raw(&path)?.unwrap_or_default();
            Some(bracketed(&text).1)
        }
        _ => None,
    };
    if let Some(offered) = offered {
        if !offered.iter().any(|o| o == desired) {
            return Err(bad(format!("this host offers {}", offered.join(", "))));
        }
    }
    if t.spec.name == "block.max_sectors_kb" {
        let hw = t.path.with_file_name("max_hw_sectors_kb");
        if let Some(hw) = super::sysfs::read_raw(&hw)?.and_then(|s| s.trim().parse::<i64>().ok()) {
            if desired.parse::<i64>().is_ok_and(|d| d > hw) {
                return Err(bad(format!("above the device's max_hw_sectors_kb {hw}")));
            }
        }
    }
    Ok(())
}

/// The text that puts back a file whose content was `previous`: the
/// selected word of a bracketed list, the content without its newline
/// otherwise.
pub fn restore_value(spec: &KnobSpec, previous: &str) -> String {
    match spec.kind {
        Kind::Bracketed => bracketed(previous)
            .0
            .unwrap_or_else(|| previous.trim().to_string()),
        _ => previous.trim_end_matches('\n').to_string(),
    }
}

/// Whether the file's content `now` shows the value `desired`.
pub fn shows(spec: &KnobSpec, now: &str, desired: &str) -> bool {
    match spec.kind {
        Kind::Bracketed => bracketed(now).0.as_deref() == Some(desired),
        _ => now.split_whitespace().eq(desired.split_whitespace()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> toml::Value {
        toml::from_str::<toml::Table>(&format!("x = {s}")).unwrap()["x"].clone()
    }

    #[test]
    fn every_spec_is_consistent() {
        for k in KNOBS {
            assert_eq!(
                KNOBS.iter().filter(|o| o.name == k.name).count(),
                1,
                "{}",
                k.name
            );
            let section = k.name.split('.').next().unwrap();
            let expected = match k.scope {
                Scope::Sysctl => "sysctl",
                Scope::Thp => "thp",
                Scope::Block => "block",
                Scope::Cpu => "cpu",
            };
            assert_eq!(section, expected, "{}", k.name);
            for c in k.companions.iter().chain(k.partner.iter()) {
                let other = spec(c).unwrap_or_else(|| panic!("{} names unknown {c}", k.name));
                assert_eq!(
                    other.scope, k.scope,
                    "{} and {c} must share targets",
                    k.name
                );
            }
            if let Some(p) = k.partner {
                assert_eq!(
                    spec(p).unwrap().partner,
                    Some(k.name),
                    "partners go both ways"
                );
            }
        }
    }

    #[test]
    fn unknown_knobs_are_refused_with_a_hint() {
        let e = lookup("sysctl.vm.swapiness").unwrap_err().to_string();
        assert!(
            e.contains("unknown knob") && e.contains("sysctl.vm.swappiness"),
            "{e}"
        );
        let e = lookup("block.write_cache").unwrap_err().to_string();
        assert!(
            e.contains("reported only") && e.contains("durability"),
            "{e}"
        );
        let e = lookup("cmdline.isolcpus").unwrap_err().to_string();
        assert!(e.contains("reboot-level"), "{e}");
        let e = lookup("sysctl.kernel.panic").unwrap_err().to_string();
        assert!(e.contains("tune show --knobs"), "{e}");
        assert!(lookup("block.scheduler").is_ok());
    }

    #[test]
    fn values_are_checked_against_the_spec() {
        let swappiness = spec("sysctl.vm.swappiness").unwrap();
        assert_eq!(normalize(swappiness, &v("1")).unwrap(), "1");
        assert_eq!(normalize(swappiness, &v("\"10\"")).unwrap(), "10");
        assert!(normalize(swappiness, &v("201")).is_err());
        assert!(normalize(swappiness, &v("-1")).is_err());
        assert!(normalize(swappiness, &v("\"lots\"")).is_err());
        assert!(normalize(swappiness, &v("1.5")).is_err());
        let rmem = spec("sysctl.net.ipv4.tcp_rmem").unwrap();
        assert_eq!(
            normalize(rmem, &v("[4096, 131072, 6291456]")).unwrap(),
            "4096\t131072\t6291456"
        );
        assert_eq!(
            normalize(rmem, &v("\"4096 87380 6291456\"")).unwrap(),
            "4096\t87380\t6291456"
        );
        let e = normalize(rmem, &v("[4096, 1, 6291456]"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("ordered"), "{e}");
        assert!(normalize(rmem, &v("[4096, 6291456]")).is_err());
        let sched = spec("block.scheduler").unwrap();
        assert_eq!(normalize(sched, &v("\"none\"")).unwrap(), "none");
        assert!(normalize(sched, &v("\"none kyber\"")).is_err());
        assert!(normalize(sched, &v("3")).is_err());
    }

    #[test]
    fn restore_values_and_read_backs() {
        let sched = spec("block.scheduler").unwrap();
        assert_eq!(
            restore_value(sched, "none [mq-deadline] kyber bfq \n"),
            "mq-deadline"
        );
        assert!(shows(sched, "[none] mq-deadline\n", "none"));
        assert!(!shows(sched, "none [mq-deadline]\n", "none"));
        let rmem = spec("sysctl.net.ipv4.tcp_rmem").unwrap();
        assert_eq!(
            restore_value(rmem, "4096\t131072\t33554432\n"),
            "4096\t131072\t33554432"
        );
        assert!(shows(
            rmem,
            "4096\t131072\t33554432\n",
            "4096 131072 33554432"
        ));
    }

    #[test]
    fn host_choices_come_from_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::at(dir.path());
        let q = dir.path().join("sys/block/vdx/queue");
        std::fs::create_dir_all(&q).unwrap();
        std::fs::write(q.join("scheduler"), "none [mq-deadline] kyber\n").unwrap();
        std::fs::write(q.join("max_hw_sectors_kb"), "1024\n").unwrap();
        let devices = Devices {
            disks: vec!["vdx".into()],
            ..Default::default()
        };
        let t = &targets(&host, spec("block.scheduler").unwrap(), &devices)[0];
        assert_eq!(t.display(), "block.scheduler[vdx]");
        check_on_host(&host, t, "none [mq-deadline] kyber\n", "kyber").unwrap();
        let e = check_on_host(&host, t, "none [mq-deadline] kyber\n", "bfq")
            .unwrap_err()
            .to_string();
        assert!(e.contains("offers none, mq-deadline, kyber"), "{e}");
        let t = &targets(&host, spec("block.max_sectors_kb").unwrap(), &devices)[0];
        check_on_host(&host, t, "512\n", "1024").unwrap();
        assert!(check_on_host(&host, t, "512\n", "2048").is_err());
    }
}
