use std::collections::BTreeMap;
use std::path::Path;

use super::*;
use crate::tune::testutil::{host_lock, LoopDevice};

fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A tree shaped like /proc and /sys. Kernel files end in a newline and the
/// kernel re-formats what is written; these plain files do not, so their
/// saved content has no newline, as restore writes it.
fn fake_host(dir: &Path) -> Host {
    let sys = dir.join("proc/sys/vm");
    std::fs::create_dir_all(&sys).unwrap();
    std::fs::write(sys.join("swappiness"), "60").unwrap();
    std::fs::write(sys.join("dirty_expire_centisecs"), "3000").unwrap();
    std::fs::write(sys.join("max_map_count"), "65530").unwrap();
    std::fs::create_dir_all(dir.join("proc/sys/kernel/random")).unwrap();
    std::fs::write(dir.join("proc/sys/kernel/random/boot_id"), "boot-1\n").unwrap();
    Host::at(dir)
}

#[test]
fn apply_reports_each_knob_and_revert_restores_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let host = fake_host(&dir.path().join("root"));
    let state = StateDir::open(&dir.path().join("state")).unwrap();
    let wanted = settings(&[
        ("sysctl.vm.swappiness", "1"),
        ("sysctl.vm.dirty_expire_centisecs", "3000"),
        ("sysctl.vm.max_map_count", "262144"),
        ("sysctl.net.core.busy_poll", "50"),
    ]);
    let plan = plan(&host, "test", &wanted, &Devices::default()).unwrap();
    assert_eq!(plan.unsupported.len(), 1, "{:?}", plan.unsupported);
    assert!(plan.unsupported[0].0 == "sysctl.net.core.busy_poll");
    assert_eq!(plan.changing().count(), 2);
    // A directory where the file was: the write fails, as a write the
    // kernel denies does.
    let max_map = host.path("proc/sys/vm/max_map_count");
    std::fs::remove_file(&max_map).unwrap();
    std::fs::create_dir(&max_map).unwrap();
    let applied = apply(&state, &host, &plan, "test").unwrap();
    let outcome = |k: &str| {
        applied
            .snapshot
            .entries
            .iter()
            .find(|e| e.knob == k)
            .unwrap()
            .outcome
            .clone()
            .unwrap()
    };
    assert_eq!(outcome("sysctl.vm.swappiness"), "applied");
    assert_eq!(outcome("sysctl.vm.dirty_expire_centisecs"), "unchanged");
    assert!(outcome("sysctl.vm.max_map_count").starts_with("write failed"));
    assert_eq!(applied.failed.len(), 1, "{:?}", applied.failed);
    assert_eq!(host.read("proc/sys/vm/swappiness").unwrap(), "1");
    // The snapshot on disk holds the previous values.
    let saved = snapshot::load(&applied.snapshot_path).unwrap();
    assert_eq!(saved.state, State::Applied);
    assert_eq!(
        saved
            .entries
            .iter()
            .find(|e| e.knob == "sysctl.vm.swappiness")
            .unwrap()
            .previous,
        "60"
    );

    let e = apply(&state, &host, &plan, "again")
        .unwrap_err()
        .to_string();
    assert!(e.contains("run `ringtail tune revert` first"), "{e}");

    // A file that cannot be put back keeps the snapshot active.
    let e = revert(&state, &applied.snapshot_path, &host, false)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not restored exactly") && e.contains("max_map_count"),
        "{e}"
    );
    assert_eq!(state.active().unwrap().len(), 1);
    std::fs::remove_dir(&max_map).unwrap();
    std::fs::write(&max_map, "65530").unwrap();

    let done = revert_all(&state, &host, false).unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(host.read("proc/sys/vm/swappiness").unwrap(), "60");
    assert_eq!(
        snapshot::load(&applied.snapshot_path).unwrap().state,
        State::Reverted
    );
    assert!(state.active().unwrap().is_empty());
    apply(&state, &host, &plan, "after revert").unwrap();
}

#[test]
fn bad_values_refuse_the_whole_plan_before_any_change() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let host = fake_host(&root);
    let q = root.join("sys/block/vdx/queue");
    std::fs::create_dir_all(&q).unwrap();
    std::fs::write(q.join("scheduler"), "none [mq-deadline]").unwrap();
    let devices = Devices {
        disks: vec!["vdx".into()],
        ..Default::default()
    };
    let wanted = settings(&[("sysctl.vm.swappiness", "1"), ("block.scheduler", "bfq")]);
    let e = plan(&host, "bad", &wanted, &devices)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("nothing was changed") && e.contains("block.scheduler[vdx]"),
        "{e}"
    );
    assert_eq!(host.read("proc/sys/vm/swappiness").unwrap(), "60");
    let e = plan(
        &host,
        "bad",
        &settings(&[("sysctl.vm.swapiness", "1")]),
        &devices,
    )
    .unwrap_err();
    assert!(e.to_string().contains("unknown knob"), "{e}");
}

#[test]
fn an_interrupted_apply_is_reverted_from_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let host = fake_host(&dir.path().join("root"));
    let state = StateDir::open(&dir.path().join("state")).unwrap();
    let wanted = settings(&[
        ("sysctl.vm.swappiness", "5"),
        ("sysctl.vm.dirty_expire_centisecs", "100"),
    ]);
    let plan = plan(&host, "crash", &wanted, &Devices::default()).unwrap();
    // What a process killed after its first write leaves behind: the
    // snapshot, still `applying`, and one knob changed.
    let mut snap = Snapshot {
        version: SNAPSHOT_VERSION,
        id: "crashed".into(),
        profile: "crash".into(),
        origin: "test".into(),
        created_unix: 1,
        boot_id: "boot-1".into(),
        pid: 1,
        state: State::Applying,
        entries: plan.changes.iter().map(entry_of).collect(),
        unsupported: vec![],
        reverted_unix: None,
    };
    let path = state.path().join("crashed.json");
    snapshot::save(&path, &snap).unwrap();
    std::fs::write(host.path("proc/sys/vm/dirty_expire_centisecs"), "100").unwrap();
    revert_all(&state, &host, false).unwrap();
    assert_eq!(
        host.read("proc/sys/vm/dirty_expire_centisecs").unwrap(),
        "3000"
    );
    assert_eq!(host.read("proc/sys/vm/swappiness").unwrap(), "60");
    // A snapshot from another boot is not written back unless forced.
    snap.id = "old-boot".into();
    snap.boot_id = "boot-0".into();
    snap.created_unix = 2;
    snapshot::save(&state.path().join("old-boot.json"), &snap).unwrap();
    let e = revert_all(&state, &host, false).unwrap_err().to_string();
    assert!(e.contains("another boot"), "{e}");
    revert_all(&state, &host, true).unwrap();
    assert!(state.active().unwrap().is_empty());
}

/// A sysctl's value nudged by `delta`, so the change is harmless to the
/// other programs on the machine for the moment it lasts.
fn nudged(host: &Host, rel: &str, delta: i64) -> String {
    let now: i64 = host.read_trim(rel).unwrap().parse().unwrap();
    (now + delta).to_string()
}

#[test]
fn real_sysctls_and_block_queue_attributes_round_trip_byte_exact() {
    if !crate::tune::is_root() {
        eprintln!("skipped: writes real sysctls and a loop device's queue (needs root)");
        return;
    }
    let _guard = host_lock();
    let host = Host::real();
    let dir = tempfile::tempdir().unwrap();
    let state = StateDir::open(&dir.path().join("state")).unwrap();
    let dev = LoopDevice::attach(dir.path()).expect("a loop device");
    let q = host.queue_dir(&dev.name);
    let (sched, _) =
        crate::tune::sysfs::bracketed(&std::fs::read_to_string(q.join("scheduler")).unwrap());
    let other = if sched.as_deref() == Some("none") {
        "mq-deadline"
    } else {
        "none"
    };
    let rmem = host.read_trim("proc/sys/net/ipv4/tcp_rmem").unwrap();
    let r: Vec<i64> = rmem
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    let files = [
        "proc/sys/vm/dirty_expire_centisecs",
        "proc/sys/net/ipv4/tcp_rmem",
        "proc/sys/vm/dirty_background_bytes",
        "proc/sys/vm/dirty_background_ratio",
    ];
    let before_sys: Vec<String> = files.iter().map(|f| host.read(f).unwrap()).collect();
    let attrs = [
        "scheduler",
        "nr_requests",
        "read_ahead_kb",
        "io_poll",
        "wbt_lat_usec",
    ];
    let read_q = || -> Vec<String> {
        attrs
            .iter()
            .map(|a| std::fs::read_to_string(q.join(a)).unwrap())
            .collect()
    };
    let before_q = read_q();
    let wanted = settings(&[
        (
            "sysctl.vm.dirty_expire_centisecs",
            &nudged(&host, files[0], 1),
        ),
        (
            "sysctl.net.ipv4.tcp_rmem",
            &format!("{}\t{}\t{}", r[0], r[1] + 4096, r[2]),
        ),
        ("sysctl.vm.dirty_background_bytes", "268435456"),
        ("block.scheduler", other),
        ("block.read_ahead_kb", "512"),
        ("block.nr_requests", "64"),
    ]);
    let devices = Devices {
        disks: vec![dev.name.clone()],
        ..Default::default()
    };
    let mut plan = plan(&host, "real", &wanted, &devices).unwrap();
    // io_poll on a device without poll queues: the kernel refuses it.
    let io_poll = knob::targets(&host, knob::spec("block.io_poll").unwrap(), &devices).remove(0);
    let current = std::fs::read_to_string(&io_poll.path).unwrap();
    plan.changes.push(Planned {
        target: io_poll,
        current,
        desired: Some("1".into()),
    });
    let applied = apply(&state, &host, &plan, "test").unwrap();
    let outcomes: BTreeMap<String, String> = applied
        .snapshot
        .entries
        .iter()
        .map(|e| (e.knob.clone(), e.outcome.clone().unwrap()))
        .collect();
    for k in wanted.keys() {
        assert_eq!(outcomes[k], "applied", "{k}: {outcomes:?}");
    }
    assert!(
        outcomes["block.io_poll"].contains("refused by the kernel"),
        "{outcomes:?}"
    );
    assert_eq!(applied.failed.len(), 1, "{:?}", applied.failed);
    assert_eq!(
        host.read_trim("proc/sys/vm/dirty_background_ratio")
            .unwrap(),
        "0"
    );
    assert_ne!(read_q(), before_q);
    let reverted = revert_all(&state, &host, false).unwrap();
    let after_sys: Vec<String> = files.iter().map(|f| host.read(f).unwrap()).collect();
    assert_eq!(after_sys, before_sys, "{:?}", reverted[0].lines);
    assert_eq!(read_q(), before_q, "{:?}", reverted[0].lines);
}
