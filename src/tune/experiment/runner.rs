//! Runs an experiment: pre-flight (every variant's profile planned, tried
//! and reverted before the first measured run), then each run in order,
//! then the analysis. Child processes (broker, bench) run in their own
//! process group, so a terminal's Ctrl-C reaches only this process, which
//! stops them, reverts the host and writes what it has; they also get a
//! parent-death signal, so they do not outlive a killed runner.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::child::{free_port, tail, Proc};
use super::counters;
use super::progress::Progress;
use super::report;
use super::spec::{self, Bench, Experiment};
use super::RunRecord;
use crate::tune::apply::{self, Plan};
use crate::tune::inspect;
use crate::tune::knob::Devices;
use crate::tune::snapshot::{unix_now, StateDir};
use crate::tune::sysfs::{disks_under, read_raw, Host};
use crate::tune::TuneError;

/// Longest wait for a broker to stop after SIGTERM before SIGKILL (its own
/// drain timeout is 10 s, then every partition is synced).
pub const BROKER_STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// Time a bench may take beyond its warm-up and duration.
pub const BENCH_SLACK: Duration = Duration::from_secs(120);
/// Time a bench with a fixed message count may take.
pub const BENCH_FIXED_COUNT_TIMEOUT: Duration = Duration::from_secs(3600);
const POLL: Duration = Duration::from_millis(50);

pub struct RunOptions {
    /// The `ringtail` binary started as broker and bench.
    pub exe: PathBuf,
    pub out_dir: PathBuf,
    pub state_dir: PathBuf,
    pub host: Host,
    /// Keep each run's broker data directory.
    pub keep_data: bool,
}

/// What a finished experiment left.
pub struct Finished {
    pub report: String,
    pub restored: bool,
}

struct Ctx<'a> {
    exp: &'a Experiment,
    opts: &'a RunOptions,
    state: &'a StateDir,
    devices: Devices,
    data_root: PathBuf,
    stop: Arc<AtomicBool>,
    progress: Arc<Progress>,
}

/// SIGINT, SIGTERM and SIGHUP (the terminal closed) set the stop flag while
/// this lives: the run in progress stops and the host is reverted.
struct Signals(Vec<signal_hook::SigId>);

impl Signals {
    fn register(stop: &Arc<AtomicBool>) -> Result<Signals, TuneError> {
        let mut ids = Vec::new();
        for sig in [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ] {
            let id = signal_hook::flag::register(sig, stop.clone()).map_err(|e| {
                TuneError::Experiment(format!("installing the signal handler: {e}"))
            })?;
            ids.push(id);
        }
        Ok(Signals(ids))
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        for id in self.0.drain(..) {
            signal_hook::low_level::unregister(id);
        }
    }
}

pub fn run(exp: &Experiment, opts: &RunOptions) -> Result<Finished, TuneError> {
    let stop = Arc::new(AtomicBool::new(false));
    let _signals = Signals::register(&stop)?;
    let state = StateDir::open(&opts.state_dir)?;
    apply::refuse_if_active(&state)?;
    let data_root = exp
        .data_dir
        .clone()
        .unwrap_or_else(|| opts.out_dir.join("data"));
    let (disks, no_disks) = match disks_under(&opts.host, &data_root) {
        Ok(d) => (d.into_iter().map(|d| d.name).collect(), None),
        Err(why) => (Vec::new(), Some(why)),
    };
    let devices = Devices {
        disks,
        no_disks,
        cpus: opts.host.online_cpus(),
    };
    let order = spec::run_order(exp);
    let ctx = Ctx {
        exp,
        opts,
        state: &state,
        devices,
        data_root,
        stop,
        progress: Arc::new(Progress::new(order.len())),
    };
    let watched = ctx.preflight()?;
    for dir in [&opts.out_dir, &ctx.data_root] {
        std::fs::create_dir_all(dir).map_err(|e| TuneError::io("create", dir, e))?;
    }
    let started = unix_now();
    let mut runs = Vec::new();
    let mut failure = None;
    for (k, &(v, r)) in order.iter().enumerate() {
        if ctx.stop.load(Ordering::SeqCst) {
            failure = Some(TuneError::Interrupted);
            break;
        }
        let (rec, result) = ctx.run_one(k, v, r);
        runs.push(rec);
        if let Err(e) = result {
            failure = Some(e);
            break;
        }
        if k + 1 < order.len() {
            if let Err(e) = ctx.cool_down() {
                failure = Some(e);
                break;
            }
        }
    }
    ctx.progress.finish();
    ctx.finish(started, &order, &runs, &watched, failure)
}

impl Ctx<'_> {
    /// Plans every variant, refuses unsupported knobs, and applies and
    /// reverts each profile once, so a knob this host denies stops the
    /// experiment before the first run. Returns every file a variant
    /// touches with its content now.
    fn preflight(&self) -> Result<Vec<(String, PathBuf, String)>, TuneError> {
        let mut plans: Vec<Plan> = Vec::new();
        for v in self.exp.variants.iter().filter(|v| !v.settings.is_empty()) {
            let plan = apply::plan(&self.opts.host, &v.name, &v.settings, &self.devices)?;
            if !plan.unsupported.is_empty() {
                let list: Vec<String> = plan
                    .unsupported
                    .iter()
                    .map(|(k, why)| format!("{k}: {why}"))
                    .collect();
                return Err(TuneError::Experiment(format!(
                    "variant {}: this host does not have {}; the run would not measure what it says",
                    v.name,
                    list.join("; ")
                )));
            }
            plans.push(plan);
        }
        if !plans.is_empty() && !crate::tune::is_root() {
            return Err(TuneError::NotRoot {
                action: "an experiment whose variants set host knobs",
            });
        }
        for plan in &plans {
            self.progress.line(&format!(
                "pre-flight: trying profile of variant {}",
                plan.profile
            ));
            let guard = self.apply_guarded(plan, "experiment pre-flight")?;
            guard.revert()?;
        }
        let mut watched = Vec::new();
        for c in plans.iter().flat_map(|p| &p.changes) {
            if !watched
                .iter()
                .any(|(_, p, _): &(String, PathBuf, String)| p == &c.target.path)
            {
                watched.push((c.target.display(), c.target.path.clone(), c.current.clone()));
            }
        }
        Ok(watched)
    }

    /// Applies a plan; every knob must take, or it is reverted and refused.
    fn apply_guarded(&self, plan: &Plan, origin: &str) -> Result<Reverter<'_>, TuneError> {
        let applied = apply::apply(self.state, &self.opts.host, plan, origin)?;
        let guard = Reverter {
            state: self.state,
            host: &self.opts.host,
            path: applied.snapshot_path.clone(),
            done: false,
            knobs: applied
                .snapshot
                .entries
                .iter()
                .map(|e| (e.display(), e.outcome.clone().unwrap_or_default()))
                .collect(),
        };
        let missing: Vec<String> = plan
            .unsupported
            .iter()
            .map(|(k, why)| format!("{k}: {why}"))
            .chain(applied.failed.iter().cloned())
            .collect();
        if !missing.is_empty() {
            guard.revert()?;
            return Err(TuneError::Experiment(format!(
                "variant {}: not every knob could be set, so its runs would not measure what they say (reverted):\n{}",
                plan.profile,
                missing.join("\n")
            )));
        }
        Ok(guard)
    }

    /// One run; its record whether or not it succeeded.
    fn run_one(&self, k: usize, v: usize, r: usize) -> (RunRecord, Result<(), TuneError>) {
        let variant = &self.exp.variants[v];
        let mut rec = RunRecord {
            index: k,
            variant: variant.name.clone(),
            repeat: r,
            started_unix: unix_now(),
            wall_seconds: 0.0,
            metric: None,
            bench: None,
            counters: None,
            broker_exit: None,
            knobs: Vec::new(),
            error: None,
        };
        let t0 = Instant::now();
        self.progress.start_run(k, &variant.name, r);
        let run_dir = self
            .opts
            .out_dir
            .join("runs")
            .join(format!("{:02}-{}", k + 1, variant.name));
        let data = self.data_root.join(format!("run-{:02}", k + 1));
        let result = (|| {
            std::fs::create_dir_all(&run_dir).map_err(|e| TuneError::io("create", &run_dir, e))?;
            let guard = if variant.settings.is_empty() {
                None
            } else {
                self.progress.phase("applying profile");
                let plan = apply::plan(
                    &self.opts.host,
                    &variant.name,
                    &variant.settings,
                    &self.devices,
                )?;
                let origin = format!(
                    "experiment {} run {} ({})",
                    self.exp.name,
                    k + 1,
                    variant.name
                );
                Some(self.apply_guarded(&plan, &origin)?)
            };
            rec.knobs = guard.as_ref().map(|g| g.knobs.clone()).unwrap_or_default();
            let measured = self.measure(variant, &run_dir, &data, &mut rec);
            self.progress.phase("reverting");
            let reverted = guard.map_or(Ok(()), Reverter::revert);
            measured.and(reverted)
        })();
        if !self.opts.keep_data {
            let _ = std::fs::remove_dir_all(&data);
        }
        rec.wall_seconds = t0.elapsed().as_secs_f64();
        self.progress.end_run(rec.wall_seconds, rec.metric);
        if let Err(e) = &result {
            rec.error = Some(e.to_string());
        }
        (rec, result)
    }

    /// Fresh broker, optional prepare bench, measured bench with host
    /// counters around it, broker stopped.
    fn measure(
        &self,
        variant: &spec::Variant,
        run_dir: &Path,
        data: &Path,
        rec: &mut RunRecord,
    ) -> Result<(), TuneError> {
        let _ = std::fs::remove_dir_all(data);
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let (_, text) = spec::broker_config(&variant.broker, &listen, data)?;
        let config_path = run_dir.join("broker.toml");
        std::fs::write(&config_path, &text).map_err(|e| TuneError::io("write", &config_path, e))?;
        self.progress.phase("starting broker");
        let mut cmd = Command::new(&self.opts.exe);
        cmd.arg("serve").arg("--config").arg(&config_path);
        let log = run_dir.join("broker.log");
        let mut broker = Proc::spawn(cmd, "broker", &log, libc::SIGTERM, false)?;
        let result = (|| {
            self.wait_ready(&mut broker, port)?;
            if let Some(p) = &self.exp.prepare {
                self.progress.phase("preparing");
                self.bench(
                    p,
                    &listen,
                    None,
                    &run_dir.join("prepare.log"),
                    &variant.name,
                )?;
            }
            let before = counters::sample(&self.opts.host, &self.devices.disks);
            let json = run_dir.join("bench.json");
            self.progress.phase("bench");
            self.bench(
                &self.exp.workload,
                &listen,
                Some((&json, &config_path)),
                &run_dir.join("bench.log"),
                &variant.name,
            )?;
            let after = counters::sample(&self.opts.host, &self.devices.disks);
            rec.counters = Some(counters::between(&before, &after));
            let bytes = std::fs::read(&json).map_err(|e| TuneError::io("read", &json, e))?;
            let bench: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| TuneError::Experiment(format!("{}: {e}", json.display())))?;
            rec.metric = self.exp.metric.read(&bench);
            rec.bench = Some(bench);
            if rec.metric.is_none() {
                return Err(TuneError::Experiment(format!(
                    "{} has no {}",
                    json.display(),
                    self.exp.metric.pointer()
                )));
            }
            Ok(())
        })();
        self.progress.phase("stopping broker");
        rec.broker_exit = broker.stop(BROKER_STOP_TIMEOUT);
        result?;
        if rec.broker_exit != Some(0) {
            return Err(TuneError::Experiment(format!(
                "the broker exited with {:?}:\n{}",
                rec.broker_exit,
                tail(&log, 10)
            )));
        }
        Ok(())
    }

    fn wait_ready(&self, broker: &mut Proc, port: u16) -> Result<(), TuneError> {
        let deadline = Instant::now() + Duration::from_secs(self.exp.broker_start_timeout_s);
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if self.stop.load(Ordering::SeqCst) {
                return Err(TuneError::Interrupted);
            }
            if let Some(code) = broker.exited() {
                return Err(TuneError::Experiment(format!(
                    "the broker exited with {code:?} at start:\n{}",
                    tail(&broker.log, 10)
                )));
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TuneError::Experiment(format!(
                    "the broker did not listen within {} s",
                    self.exp.broker_start_timeout_s
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Runs `ringtail bench`; its progress lines feed the live line.
    fn bench(
        &self,
        b: &Bench,
        bootstrap: &str,
        json: Option<(&Path, &Path)>,
        log: &Path,
        label: &str,
    ) -> Result<(), TuneError> {
        let mut cmd = Command::new(&self.opts.exe);
        cmd.arg("bench")
            .arg(&b.mode)
            .args(&b.args)
            .arg("--bootstrap")
            .arg(bootstrap)
            .arg("--label")
            .arg(label);
        if let Some((json, config)) = json {
            cmd.arg("--json")
                .arg(json)
                .arg("--broker-config")
                .arg(config);
        }
        let mut bench = Proc::spawn(cmd, "bench", log, libc::SIGKILL, true)?;
        let stderr = bench.child.stderr.take();
        let progress = self.progress.clone();
        let progress_log = log.with_extension("progress.log");
        let reader = std::thread::spawn(move || {
            let mut out = std::fs::File::create(progress_log).ok();
            for line in stderr
                .into_iter()
                .flat_map(|s| BufReader::new(s).lines().map_while(Result::ok))
            {
                if let Some(f) = out.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                progress.detail(line.trim());
            }
        });
        let limit = if b.fixed_count {
            BENCH_FIXED_COUNT_TIMEOUT
        } else {
            Duration::from_secs(b.seconds) + BENCH_SLACK
        };
        let deadline = Instant::now() + limit;
        let result = loop {
            if self.stop.load(Ordering::SeqCst) {
                break Err(TuneError::Interrupted);
            }
            if let Some(code) = bench.exited() {
                break match code {
                    Some(0) => Ok(()),
                    _ => Err(TuneError::Experiment(format!(
                        "ringtail bench exited with {code:?}:\n{}",
                        tail(log, 10)
                    ))),
                };
            }
            if Instant::now() > deadline {
                break Err(TuneError::Experiment(format!(
                    "ringtail bench ran past {} s",
                    limit.as_secs()
                )));
            }
            std::thread::sleep(POLL);
        };
        bench.stop(Duration::from_secs(5));
        let _ = reader.join();
        result
    }

    fn cool_down(&self) -> Result<(), TuneError> {
        let until = Instant::now() + Duration::from_secs(self.exp.cooldown_s);
        self.progress
            .phase(&format!("cool-down {} s", self.exp.cooldown_s));
        while Instant::now() < until {
            if self.stop.load(Ordering::SeqCst) {
                return Err(TuneError::Interrupted);
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// Whether every file a variant touched reads as before the experiment
    /// and no snapshot is left active, and the report's line saying so.
    fn host_check(
        &self,
        watched: &[(String, PathBuf, String)],
    ) -> Result<(bool, String), TuneError> {
        let changed: Vec<String> = watched
            .iter()
            .filter(|(_, path, before)| {
                read_raw(path).ok().flatten().as_deref() != Some(before.as_str())
            })
            .map(|(name, _, _)| name.clone())
            .collect();
        let active = self.state.active()?.len();
        if changed.is_empty() && active == 0 {
            let n = watched.len();
            return Ok((true, format!("host restored: the {n} files the variants touched read exactly as before the experiment")));
        }
        Ok((false, format!("HOST NOT RESTORED: {} differ, {active} snapshots active; run `ringtail tune revert`", changed.join(", "))))
    }

    /// `tune show`'s facts for the baseline's broker, recorded with the
    /// results so that a result says which host it came from.
    fn host_facts(&self) -> Option<Vec<inspect::Fact>> {
        let baseline = &self.exp.variants[self.exp.baseline];
        let (config, _) =
            spec::broker_config(&baseline.broker, "127.0.0.1:9092", &self.data_root).ok()?;
        let subject = inspect::Subject {
            config: &config,
            config_source: "experiment".into(),
            data_dir: self.data_root.clone(),
            explicit_disks: vec![],
        };
        Some(inspect::inspect(&self.opts.host, &subject))
    }

    /// Checks the host is as it was, writes results.json, report.txt and
    /// runs.svg, prints the report.
    fn finish(
        &self,
        started: u64,
        order: &[(usize, usize)],
        runs: &[RunRecord],
        watched: &[(String, PathBuf, String)],
        failure: Option<TuneError>,
    ) -> Result<Finished, TuneError> {
        let (restored, line) = self.host_check(watched)?;
        let summary = report::analyse(self.exp, runs);
        let mut footer = vec![line];
        if let Some(e) = &failure {
            footer.push(format!("stopped early: {e}"));
        }
        let report = report::text(self.exp, runs, &summary, &footer);
        let facts = self.host_facts();
        let json = serde_json::json!({
            "experiment": self.exp.name, "path": self.exp.path, "description": self.exp.description,
            "spec": self.exp.text, "metric": self.exp.metric.name(),
            "higher_is_better": self.exp.metric.higher_is_better(), "order": format!("{:?}", self.exp.order).to_lowercase(),
            "seed": self.exp.seed, "repeats": self.exp.repeats, "started_unix": started, "finished_unix": unix_now(),
            "run_order": order.iter().map(|(v, r)| serde_json::json!({"variant": self.exp.variants[*v].name, "repeat": r})).collect::<Vec<_>>(),
            "runs": runs, "summary": summary,
            "verdict": summary.iter().filter_map(|s| s.verdict.clone()).collect::<Vec<_>>(),
            "host_restored": restored, "host": facts, "error": failure.as_ref().map(|e| e.to_string()),
        });
        let out = &self.opts.out_dir;
        let files = [
            (
                "results.json",
                serde_json::to_string_pretty(&json).unwrap_or_default(),
            ),
            ("report.txt", report.clone()),
            ("runs.svg", super::plot::svg(self.exp, runs, &summary)),
        ];
        for (name, body) in files {
            let path = out.join(name);
            std::fs::write(&path, body).map_err(|e| TuneError::io("write", &path, e))?;
        }
        println!("{report}");
        println!("results in {}", out.display());
        match failure {
            Some(e) if !restored => Err(TuneError::State(format!(
                "{e}; and the host was NOT restored exactly: run `ringtail tune revert`"
            ))),
            Some(e) => Err(e),
            None if !restored => Err(TuneError::State(
                "the host was not restored exactly; see the report".into(),
            )),
            None => Ok(Finished { report, restored }),
        }
    }
}

/// Reverts a snapshot when told to, or when dropped (a panic, an early
/// return).
struct Reverter<'a> {
    state: &'a StateDir,
    host: &'a Host,
    path: PathBuf,
    done: bool,
    knobs: Vec<(String, String)>,
}

impl Reverter<'_> {
    fn revert(mut self) -> Result<(), TuneError> {
        self.done = true;
        apply::revert(self.state, &self.path, self.host, false).map(|_| ())
    }
}

impl Drop for Reverter<'_> {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = apply::revert(self.state, &self.path, self.host, false) {
                eprintln!("reverting {}: {e}", self.path.display());
            }
        }
    }
}
