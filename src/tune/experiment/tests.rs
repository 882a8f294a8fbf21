use std::path::{Path, PathBuf};

use super::plot::svg;
use super::report::{analyse, text, verdict};
use super::spec::{parse, run_order, Metric, Order};
use super::*;
use crate::tune::profile::TuningDir;

const GOOD: &str = r#"
description = "test"
metric = "mib_per_sec"
repeats = 3
cooldown_s = 0
baseline = "b"
[workload]
mode = "produce"
args = ["--duration-s", "2", "--warmup-s", "0"]
[broker]
cores = 1
[[variant]]
name = "a"
[variant.host.sysctl]
vm.swappiness = 10
[variant.broker]
write_buffer_bytes = 2097152
[[variant]]
name = "b"
"#;

fn tuning() -> (tempfile::TempDir, TuningDir) {
    let dir = tempfile::tempdir().unwrap();
    let td = TuningDir(dir.path().to_owned());
    (dir, td)
}

#[test]
fn an_experiment_parses_with_its_variants() {
    let (_d, td) = tuning();
    let e = parse(&td, Path::new("x/sched.toml"), GOOD).unwrap();
    assert_eq!(e.name, "sched");
    assert_eq!(
        (e.metric, e.repeats, e.order, e.baseline),
        (Metric::MibPerSec, 3, Order::Abba, 1)
    );
    assert_eq!(e.workload.seconds, 2);
    assert_eq!(e.variants[0].settings["sysctl.vm.swappiness"], "10");
    assert_eq!(
        e.variants[0].broker["write_buffer_bytes"].as_integer(),
        Some(2097152)
    );
    assert_eq!(e.variants[1].broker["cores"].as_integer(), Some(1));
    assert!(e.variants[1].settings.is_empty());
}

#[test]
fn bad_experiments_are_refused_before_anything_runs() {
    let (_d, td) = tuning();
    for (from, to, needle) in [
        (
            "write_buffer_bytes = 2097152",
            "sqpoll = true",
            "unknown field `sqpoll`",
        ),
        (
            "write_buffer_bytes = 2097152",
            "write_buffer_bytes = 1000",
            "multiple of 4096",
        ),
        (
            "write_buffer_bytes = 2097152",
            "listen = \"0.0.0.0:1\"",
            "set by the runner",
        ),
        (
            "\"--warmup-s\", \"0\"",
            "\"--warmup-s\", \"0\", \"--bootstrap\", \"x:1\"",
            "the runner sets",
        ),
        (
            "\"--warmup-s\", \"0\"",
            "\"--no-such-flag\"",
            "bench produce",
        ),
        (
            "vm.swappiness = 10",
            "vm.swappiness = 1000",
            "must be in 0..=200",
        ),
        ("vm.swappiness = 10", "vm.nonsense = 1", "unknown knob"),
        ("baseline = \"b\"", "baseline = \"zz\"", "baseline \"zz\""),
        (
            "metric = \"mib_per_sec\"",
            "metric = \"e2e_p99_us\"",
            "not reported by bench produce",
        ),
        (
            "metric = \"mib_per_sec\"",
            "metric = \"speed\"",
            "is not one of",
        ),
        ("repeats = 3", "repeats = 1", "repeats must be"),
        ("name = \"b\"", "name = \"a\"", "two variants are named"),
        ("name = \"b\"", "name = \"b c\"", "variant name"),
        ("cooldown_s = 0", "cooldown = 0", "unknown field `cooldown`"),
    ] {
        let text = GOOD.replace(from, to);
        assert_ne!(text, GOOD, "{from}");
        let e = parse(&td, Path::new("x.toml"), &text)
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{to}: {e}");
    }
}

#[test]
fn runs_alternate_or_shuffle_reproducibly() {
    let (_d, td) = tuning();
    let mut e = parse(&td, Path::new("x.toml"), GOOD).unwrap();
    e.repeats = 4;
    assert_eq!(
        run_order(&e),
        vec![
            (0, 0),
            (1, 0),
            (1, 1),
            (0, 1),
            (0, 2),
            (1, 2),
            (1, 3),
            (0, 3)
        ]
    );
    e.order = Order::Random;
    let a = run_order(&e);
    assert_eq!(a, run_order(&e), "seeded");
    for v in 0..2 {
        let repeats: Vec<usize> = a.iter().filter(|(x, _)| *x == v).map(|(_, r)| *r).collect();
        assert_eq!(repeats, vec![0, 1, 2, 3]);
    }
    e.seed = 99;
    let b = run_order(&e);
    assert_eq!(b.len(), 8);
    assert_ne!(a, b, "another seed, another order");
}

fn record(k: usize, variant: &str, value: f64) -> RunRecord {
    RunRecord {
        index: k,
        variant: variant.into(),
        repeat: k / 2,
        started_unix: 0,
        wall_seconds: 1.0,
        metric: Some(value),
        bench: None,
        counters: Some(counters::HostCounters {
            cpu_busy_percent: vec![50.0, 70.0],
            ..Default::default()
        }),
        broker_exit: Some(0),
        knobs: vec![],
        error: None,
    }
}

#[test]
fn verdicts_say_better_worse_or_no_difference() {
    let (_d, td) = tuning();
    let mut e = parse(&td, Path::new("x.toml"), GOOD).unwrap();
    e.repeats = 5;
    let clear: Vec<RunRecord> = (0..5)
        .flat_map(|i| {
            [
                record(2 * i, "a", 120.0 + i as f64),
                record(2 * i + 1, "b", 100.0 + i as f64),
            ]
        })
        .collect();
    let s = analyse(&e, &clear);
    assert!(s[1].baseline && s[1].verdict.is_none());
    let v = s[0].verdict.clone().unwrap();
    assert!(v.starts_with("a is better than b (+19.6%)"), "{v}");
    assert!((s[0].p_value.unwrap() - 2.0 / 252.0).abs() < 1e-12);
    assert_eq!(s[0].cpu_busy_percent, Some(60.0));
    // The same numbers for a latency metric: higher is worse.
    e.metric = Metric::P99Us;
    assert!(verdict(&e, &s[1], &s[0]).starts_with("a is worse than b"));
    e.metric = Metric::MibPerSec;
    // Overlapping values: no difference.
    let mixed: Vec<RunRecord> = [100.0, 104.0, 98.0, 101.0, 103.0]
        .iter()
        .zip([101.0, 99.0, 103.0, 100.0, 102.0])
        .enumerate()
        .flat_map(|(i, (a, b))| [record(2 * i, "a", *a), record(2 * i + 1, "b", b)])
        .collect();
    let v = analyse(&e, &mixed)[0].verdict.clone().unwrap();
    assert!(
        v.starts_with("no difference detected between a and b"),
        "{v}"
    );
    // Three runs each can never reach p < 0.05: the verdict says so.
    e.repeats = 3;
    let few: Vec<RunRecord> = clear.iter().filter(|r| r.repeat < 3).cloned().collect();
    let v = analyse(&e, &few)[0].verdict.clone().unwrap();
    assert!(
        v.contains("no difference detected") && v.contains("smallest possible p = 0.100"),
        "{v}"
    );
}

#[test]
fn the_report_and_plot_show_every_run() {
    let (_d, td) = tuning();
    let e = parse(&td, Path::new("x.toml"), GOOD).unwrap();
    let runs: Vec<RunRecord> = (0..6)
        .map(|k| record(k, ["a", "b"][k % 2], 100.0 + k as f64))
        .collect();
    let s = analyse(&e, &runs);
    let report = text(&e, &runs, &s, &["host restored".into()]);
    assert!(
        report.contains("verdict: no difference detected"),
        "{report}"
    );
    assert!(report.contains("b (base)") && report.contains("host restored"));
    let plot = svg(&e, &runs, &s);
    assert_eq!(plot.matches("class=\"run\"").count(), 6);
    assert!(plot.starts_with("<svg") && plot.trim_end().ends_with("</svg>"));
    assert!(plot.contains("no difference detected"));
}

/// The source tree's `tuning/` folder.
fn shipped() -> TuningDir {
    TuningDir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tuning"))
}

fn toml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for f in &files {
        assert_eq!(
            f.extension().and_then(|e| e.to_str()),
            Some("toml"),
            "only TOML in {}",
            dir.display()
        );
    }
    files
}

#[test]
fn every_file_in_tuning_parses() {
    let td = shipped();
    let profiles = toml_files(&td.0.join("profiles"));
    for required in ["baseline", "throughput", "latency"] {
        assert!(
            profiles.iter().any(|p| p.file_stem().unwrap() == required),
            "no {required} profile"
        );
    }
    for p in &profiles {
        let profile =
            crate::tune::profile::load(&td, p.to_str().unwrap()).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !profile.description.is_empty(),
            "{} needs a description",
            p.display()
        );
        assert!(!profile.settings.is_empty(), "{} sets nothing", p.display());
    }
    let experiments = toml_files(&td.0.join("experiments"));
    assert!(experiments.len() >= 3);
    for x in &experiments {
        let e = load(&td, x.to_str().unwrap()).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !e.description.is_empty(),
            "{} needs a description",
            x.display()
        );
    }
    let entries = std::fs::read_dir(&td.0)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap());
    let mut names: Vec<String> = entries.collect();
    names.sort();
    assert_eq!(
        names,
        ["README.md", "experiments", "profiles"],
        "unexpected files in tuning/"
    );
}
