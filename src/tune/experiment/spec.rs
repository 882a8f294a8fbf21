//! Experiment files (`tuning/experiments/*.toml`): variants, each a host
//! profile plus broker configuration overrides, against a baseline, with a
//! `ringtail bench` workload. Everything is checked when the file is
//! loaded, before anything runs: the bench arguments are parsed as `ringtail
//! bench` parses them, the broker overrides as `ringtail serve --config`
//! reads them (an unknown key, such as a feature the broker does not have,
//! is refused), the profiles as `tune apply` loads them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

use crate::config::Config;
use crate::tune::profile::{self, TuningDir};
use crate::tune::TuneError;

/// Most repeats per variant.
pub const MAX_REPEATS: usize = 100;
/// Most variants per experiment.
pub const MAX_VARIANTS: usize = 8;
/// Longest cool-down between runs.
pub const MAX_COOLDOWN_S: u64 = 600;
/// Cool-down when the experiment names none: long enough for the previous
/// broker's writeback and the disk's cache to settle on most hosts.
pub const DEFAULT_COOLDOWN_S: u64 = 5;
/// Wait for a fresh broker to listen (it recovers an empty data directory).
pub const DEFAULT_BROKER_START_TIMEOUT_S: u64 = 60;
pub const MAX_BROKER_START_TIMEOUT_S: u64 = 600;
/// Bench options the runner sets itself.
pub const RUNNER_FLAGS: &[&str] = &[
    "--bootstrap",
    "--json",
    "--svg",
    "--label",
    "--broker-config",
];
/// Broker keys the runner sets itself.
pub const RUNNER_KEYS: &[&str] = &["listen", "data_dir", "advertise"];

/// What a run is judged by, read from the bench JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    MibPerSec,
    MessagesPerSec,
    P50Us,
    P99Us,
    P999Us,
    E2eP50Us,
    E2eP99Us,
}

impl Metric {
    pub const ALL: &[(&str, Metric)] = &[
        ("mib_per_sec", Metric::MibPerSec),
        ("messages_per_sec", Metric::MessagesPerSec),
        ("p50_us", Metric::P50Us),
        ("p99_us", Metric::P99Us),
        ("p999_us", Metric::P999Us),
        ("e2e_p50_us", Metric::E2eP50Us),
        ("e2e_p99_us", Metric::E2eP99Us),
    ];

    /// The metric named `name`, or the list of names.
    pub fn parse(name: &str) -> Result<Metric, String> {
        Metric::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, m)| *m)
            .ok_or_else(|| {
                let names: Vec<&str> = Metric::ALL.iter().map(|(n, _)| *n).collect();
                format!("metric {name:?} is not one of {}", names.join(", "))
            })
    }

    pub fn name(self) -> &'static str {
        Metric::ALL
            .iter()
            .find(|(_, m)| *m == self)
            .map(|(n, _)| *n)
            .unwrap_or("?")
    }

    /// JSON pointer into `ringtail bench --json` output.
    pub fn pointer(self) -> &'static str {
        match self {
            Metric::MibPerSec => "/result/mib_per_sec",
            Metric::MessagesPerSec => "/result/messages_per_sec",
            Metric::P50Us => "/result/latency_us/p50",
            Metric::P99Us => "/result/latency_us/p99",
            Metric::P999Us => "/result/latency_us/p99.9",
            Metric::E2eP50Us => "/result/e2e_latency_us/p50",
            Metric::E2eP99Us => "/result/e2e_latency_us/p99",
        }
    }

    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::MibPerSec | Metric::MessagesPerSec)
    }

    /// Bench modes that report this metric.
    fn modes(self) -> &'static [&'static str] {
        match self {
            Metric::MibPerSec | Metric::MessagesPerSec => &["produce", "consume", "e2e"],
            Metric::P50Us | Metric::P99Us | Metric::P999Us => &["produce", "e2e"],
            Metric::E2eP50Us | Metric::E2eP99Us => &["e2e"],
        }
    }

    pub fn read(self, bench: &serde_json::Value) -> Option<f64> {
        bench.pointer(self.pointer())?.as_f64()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Repeat blocks alternate the variants' order: A B, B A, A B, ...
    Abba,
    /// Every run shuffled with the seed.
    Random,
}

#[derive(Debug, Clone)]
pub struct Bench {
    pub mode: String,
    pub args: Vec<String>,
    /// Warm-up plus duration, as the bench will run them.
    pub seconds: u64,
    /// Runs until a message count is sent (`--messages`), not for a time.
    pub fixed_count: bool,
}

#[derive(Debug, Clone)]
pub struct Variant {
    pub name: String,
    /// The profile's name, if the variant names one.
    pub profile: Option<String>,
    /// Knob -> value: the profile's settings with the variant's own on top.
    pub settings: BTreeMap<String, String>,
    /// Broker configuration keys (the experiment's, the variant's on top).
    pub broker: toml::Table,
}

#[derive(Debug, Clone)]
pub struct Experiment {
    pub name: String,
    pub path: PathBuf,
    pub text: String,
    pub description: String,
    pub metric: Metric,
    pub repeats: usize,
    pub order: Order,
    pub seed: u64,
    pub cooldown_s: u64,
    pub baseline: usize,
    pub data_dir: Option<PathBuf>,
    pub broker_start_timeout_s: u64,
    pub workload: Bench,
    /// A bench run before the measured one on each fresh broker (e.g. the
    /// data a catch-up read consumes); not measured.
    pub prepare: Option<Bench>,
    pub variants: Vec<Variant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    description: Option<String>,
    metric: String,
    repeats: usize,
    order: Option<String>,
    seed: Option<u64>,
    cooldown_s: Option<u64>,
    baseline: Option<String>,
    data_dir: Option<PathBuf>,
    broker_start_timeout_s: Option<u64>,
    workload: RawWorkload,
    broker: Option<toml::Table>,
    variant: Vec<RawVariant>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkload {
    mode: String,
    args: Vec<String>,
    prepare: Option<RawBench>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBench {
    mode: String,
    args: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVariant {
    name: String,
    profile: Option<String>,
    host: Option<toml::Table>,
    broker: Option<toml::Table>,
}

/// Loads and checks an experiment by name (`tuning/experiments/NAME.toml`)
/// or path.
pub fn load(dir: &TuningDir, name: &str) -> Result<Experiment, TuneError> {
    let path = dir.find("experiments", name);
    let text = std::fs::read_to_string(&path).map_err(|e| TuneError::io("read", &path, e))?;
    parse(dir, &path, &text)
}

fn err(path: &Path, message: impl Into<String>) -> TuneError {
    TuneError::Profile {
        path: path.to_owned(),
        message: message.into(),
    }
}

pub fn parse(dir: &TuningDir, path: &Path, text: &str) -> Result<Experiment, TuneError> {
    let raw: Raw =
        toml::from_str(text).map_err(|e| err(path, format!("not a valid experiment: {e}")))?;
    let metric = Metric::parse(&raw.metric).map_err(|e| err(path, e))?;
    let order = match raw.order.as_deref().unwrap_or("abba") {
        "abba" => Order::Abba,
        "random" => Order::Random,
        o => return Err(err(path, format!("order {o:?} is not abba or random"))),
    };
    if !(2..=MAX_REPEATS).contains(&raw.repeats) {
        return Err(err(path, format!("repeats must be in 2..={MAX_REPEATS}")));
    }
    let cooldown_s = raw.cooldown_s.unwrap_or(DEFAULT_COOLDOWN_S);
    if cooldown_s > MAX_COOLDOWN_S {
        return Err(err(
            path,
            format!("cooldown_s must be at most {MAX_COOLDOWN_S}"),
        ));
    }
    let workload = check_bench(path, &raw.workload.mode, &raw.workload.args)?;
    if !metric.modes().contains(&workload.mode.as_str()) {
        return Err(err(
            path,
            format!(
                "metric {} is not reported by bench {}",
                metric.name(),
                workload.mode
            ),
        ));
    }
    let prepare = match raw.workload.prepare {
        Some(p) => Some(check_bench(path, &p.mode, &p.args)?),
        None => None,
    };
    let common = raw.broker.unwrap_or_default();
    let variants = raw
        .variant
        .into_iter()
        .map(|v| variant(dir, path, &common, v))
        .collect::<Result<Vec<_>, _>>()?;
    let baseline = check_variants(&variants, raw.baseline.as_deref()).map_err(|e| err(path, e))?;
    let timeout = raw
        .broker_start_timeout_s
        .unwrap_or(DEFAULT_BROKER_START_TIMEOUT_S);
    if !(1..=MAX_BROKER_START_TIMEOUT_S).contains(&timeout) {
        return Err(err(
            path,
            format!("broker_start_timeout_s must be in 1..={MAX_BROKER_START_TIMEOUT_S}"),
        ));
    }
    Ok(Experiment {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: path.to_owned(),
        text: text.to_string(),
        description: raw.description.unwrap_or_default(),
        metric,
        repeats: raw.repeats,
        order,
        seed: raw.seed.unwrap_or(1),
        cooldown_s,
        baseline,
        data_dir: raw.data_dir,
        broker_start_timeout_s: timeout,
        workload,
        prepare,
        variants,
    })
}

/// Between 2 and MAX_VARIANTS variants with distinct names; the index of
/// the baseline (the first variant unless named).
fn check_variants(variants: &[Variant], baseline: Option<&str>) -> Result<usize, String> {
    if !(2..=MAX_VARIANTS).contains(&variants.len()) {
        return Err(format!("an experiment has 2..={MAX_VARIANTS} variants"));
    }
    for (i, v) in variants.iter().enumerate() {
        if variants[..i].iter().any(|o| o.name == v.name) {
            return Err(format!("two variants are named {:?}", v.name));
        }
    }
    match baseline {
        None => Ok(0),
        Some(b) => variants
            .iter()
            .position(|v| v.name == b)
            .ok_or_else(|| format!("baseline {b:?} is not a variant")),
    }
}

/// `ringtail bench MODE ARGS...` as the bench parses it.
#[derive(Parser)]
#[command(name = "bench")]
struct BenchCli {
    #[command(flatten)]
    args: crate::bench::BenchArgs,
}

fn check_bench(path: &Path, mode: &str, args: &[String]) -> Result<Bench, TuneError> {
    if let Some(f) = args
        .iter()
        .find(|a| RUNNER_FLAGS.contains(&a.split('=').next().unwrap_or(a)))
    {
        return Err(err(
            path,
            format!(
                "workload sets {f}: the runner sets {} itself",
                RUNNER_FLAGS.join(", ")
            ),
        ));
    }
    let argv = std::iter::once("bench".to_string())
        .chain(std::iter::once(mode.to_string()))
        .chain(args.iter().cloned());
    let parsed = BenchCli::try_parse_from(argv).map_err(|e| {
        let first = e.to_string().lines().next().unwrap_or_default().to_string();
        err(path, format!("bench {mode} {}: {first}", args.join(" ")))
    })?;
    let o = &parsed.args.opts;
    Ok(Bench {
        mode: mode.to_string(),
        args: args.to_vec(),
        seconds: o.warmup_s + o.duration_s,
        fixed_count: o.messages > 0 || mode == "consume",
    })
}

fn variant(
    dir: &TuningDir,
    path: &Path,
    common: &toml::Table,
    v: RawVariant,
) -> Result<Variant, TuneError> {
    if v.name.is_empty()
        || !v
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return Err(err(
            path,
            format!(
                "variant name {:?}: use letters, digits, '.', '_', '-'",
                v.name
            ),
        ));
    }
    let mut settings = match &v.profile {
        Some(p) => profile::load(dir, p)?.settings,
        None => BTreeMap::new(),
    };
    if let Some(host) = &v.host {
        profile::layer(&mut settings, profile::settings_of(host, path, &[])?, path)?;
    }
    let mut broker = common.clone();
    broker.extend(v.broker.unwrap_or_default());
    if let Some(k) = broker.keys().find(|k| RUNNER_KEYS.contains(&k.as_str())) {
        return Err(err(
            path,
            format!("variant {}: broker key {k} is set by the runner", v.name),
        ));
    }
    broker_config(&broker, "127.0.0.1:9092", Path::new("/tmp/x"))
        .map_err(|e| err(path, format!("variant {}: {e}", v.name)))?;
    Ok(Variant {
        name: v.name,
        profile: v.profile,
        settings,
        broker,
    })
}

/// The broker configuration of a run: the overrides plus where it listens
/// and keeps its data, read and checked as `ringtail serve` would.
pub fn broker_config(
    overrides: &toml::Table,
    listen: &str,
    data_dir: &Path,
) -> Result<(Config, String), TuneError> {
    let mut table = overrides.clone();
    table.insert("listen".into(), listen.into());
    table.insert("data_dir".into(), data_dir.display().to_string().into());
    let text = toml::to_string(&table)
        .map_err(|e| TuneError::Experiment(format!("encoding broker config: {e}")))?;
    let config: Config =
        toml::from_str(&text).map_err(|e| TuneError::Experiment(format!("broker config: {e}")))?;
    config
        .validate()
        .map_err(|e| TuneError::Experiment(e.to_string()))?;
    Ok((config, text))
}

/// The runs in the order they happen: (variant index, repeat).
pub fn run_order(exp: &Experiment) -> Vec<(usize, usize)> {
    let n = exp.variants.len();
    match exp.order {
        Order::Abba => (0..exp.repeats)
            .flat_map(|r| {
                let ids: Vec<usize> = if r % 2 == 0 {
                    (0..n).collect()
                } else {
                    (0..n).rev().collect()
                };
                ids.into_iter().map(move |v| (v, r))
            })
            .collect(),
        Order::Random => {
            use rand::seq::SliceRandom;
            use rand::SeedableRng;
            let mut runs: Vec<(usize, usize)> = (0..exp.repeats)
                .flat_map(|r| (0..n).map(move |v| (v, r)))
                .collect();
            let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(exp.seed);
            runs.shuffle(&mut rng);
            // Repeat numbers in the order each variant's runs happen.
            let mut seen = vec![0; n];
            runs.iter_mut().for_each(|(v, r)| {
                *r = seen[*v];
                seen[*v] += 1;
            });
            runs
        }
    }
}
