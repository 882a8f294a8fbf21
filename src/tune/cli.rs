//! `ringtail tune show|check|apply|revert|experiment`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::apply;
use super::check;
use super::experiment;
use super::inspect::{self, Subject};
use super::knob;
use super::profile::{self, TuningDir};
use super::snapshot::{self, StateDir};
use super::sysfs::Host;
use super::{is_root, TuneError};
use crate::config::Config;

#[derive(clap::Args)]
pub struct TuneArgs {
    #[command(subcommand)]
    command: TuneCommand,
    /// Where profiles/ and experiments/ are (default: ./tuning, else the
    /// source tree's tuning/; or $RINGTAIL_TUNING_DIR).
    #[arg(long, global = true)]
    tuning_dir: Option<PathBuf>,
    /// Where snapshots are kept (default /var/lib/ringtail/tune, or
    /// $RINGTAIL_TUNE_STATE_DIR).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
}

#[derive(clap::Subcommand)]
enum TuneCommand {
    /// Every host setting that matters to the broker, its value and source.
    Show {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
        /// List the knobs a profile may set instead.
        #[arg(long)]
        knobs: bool,
    },
    /// Warnings for settings known to hurt the broker (with a profile: as
    /// the host would be with it applied).
    Check {
        profile: Option<String>,
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Apply a profile, saving every previous value first (root).
    Apply {
        profile: String,
        #[command(flatten)]
        target: Target,
        /// Print what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Restore the values saved by apply (default: every active snapshot,
    /// newest first).
    Revert {
        /// Snapshot id, file name or path.
        snapshot: Option<String>,
        /// List the snapshots instead.
        #[arg(long)]
        list: bool,
        /// Write back a snapshot taken in an earlier boot.
        #[arg(long)]
        force: bool,
    },
    /// Run an A/B experiment (tuning/experiments/NAME.toml or a path).
    Experiment {
        experiment: String,
        /// Results directory (default tune-results/NAME-UNIXTIME).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Keep each run's broker data directory.
        #[arg(long)]
        keep_data: bool,
        /// Check the experiment and print the run order; run nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// The broker whose host is inspected or tuned.
#[derive(clap::Args)]
struct Target {
    /// The broker's TOML configuration (its data_dir and own knobs).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The broker's data directory (default: the configuration's).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Tune this disk (e.g. nvme0n1) instead of the data directory's; repeatable.
    #[arg(long = "device")]
    devices: Vec<String>,
}

impl Target {
    fn config(&self) -> Result<(Config, String)> {
        Ok(match &self.config {
            Some(p) => (Config::load(p)?, format!("config file {}", p.display())),
            None => (Config::default(), "defaults".to_string()),
        })
    }
}

pub fn run(args: TuneArgs) -> Result<()> {
    let tuning = TuningDir::locate(args.tuning_dir.as_deref());
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(StateDir::default_path);
    let host = Host::real();
    let reads_only = match &args.command {
        TuneCommand::Show { .. } | TuneCommand::Check { .. } => true,
        TuneCommand::Revert { list, .. } => *list,
        _ => false,
    };
    if reads_only {
        // Commands that only print end quietly when their reader goes away
        // (`| head`). Never for apply, revert or experiment: they must get
        // to their revert whatever happens to their output.
        // SAFETY: restores the default disposition of one signal before any
        // thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match args.command {
        TuneCommand::Show {
            target,
            json,
            knobs,
        } if knobs => show_knobs(json, &target),
        TuneCommand::Show { target, json, .. } => show(&host, &target, json, &state_dir),
        TuneCommand::Check {
            profile,
            target,
            json,
        } => check(&host, &tuning, profile.as_deref(), &target, json),
        TuneCommand::Apply {
            profile,
            target,
            dry_run,
        } => apply_cmd(&host, &tuning, &profile, &target, dry_run, &state_dir),
        TuneCommand::Revert {
            snapshot,
            list,
            force,
        } => revert_cmd(&host, snapshot.as_deref(), list, force, &state_dir),
        TuneCommand::Experiment {
            experiment,
            out,
            keep_data,
            dry_run,
        } => experiment_cmd(
            &host,
            &tuning,
            &experiment,
            out,
            keep_data,
            dry_run,
            &state_dir,
        ),
    }
}

fn subject<'a>(target: &Target, config: &'a Config, source: String) -> Subject<'a> {
    Subject {
        config,
        config_source: source,
        data_dir: target
            .data_dir
            .clone()
            .unwrap_or_else(|| config.data_dir.clone()),
        explicit_disks: target.devices.clone(),
    }
}

fn show_knobs(json: bool, _target: &Target) -> Result<()> {
    if json {
        let list: Vec<_> = knob::KNOBS
            .iter()
            .map(|k| serde_json::json!({"name": k.name, "values": format!("{:?}", k.kind), "about": k.about}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    for k in knob::KNOBS {
        let values = match k.kind {
            knob::Kind::Int { min, max } => format!("{min}..={max}"),
            knob::Kind::Triple { .. } => "[min, default, max]".into(),
            knob::Kind::Bracketed | knob::Kind::ListedIn(_) => "one of the host's choices".into(),
        };
        println!("{:<42} {:<26} {}", k.name, values, k.about);
    }
    for (name, why) in knob::REPORT_ONLY {
        println!("{name:<42} {:<26} {why}", "(reported only)");
    }
    Ok(())
}

fn show(host: &Host, target: &Target, json: bool, state_dir: &std::path::Path) -> Result<()> {
    let (config, source) = target.config()?;
    let subject = subject(target, &config, source);
    let facts = inspect::inspect(host, &subject);
    let active: Vec<_> = snapshot::list(state_dir)
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, s)| s.state != snapshot::State::Reverted)
        .collect();
    if json {
        let applied: Vec<_> = active
            .iter()
            .map(|(p, s)| serde_json::json!({"profile": s.profile, "snapshot": p, "origin": s.origin}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"facts": facts, "applied": applied}))?
        );
        return Ok(());
    }
    inspect::print_text(&facts);
    println!("tuning state:");
    if active.is_empty() {
        println!("  no profile applied ({})", state_dir.display());
    }
    for (p, s) in active {
        println!(
            "  profile {} applied by {} (snapshot {})",
            s.profile,
            s.origin,
            p.display()
        );
    }
    Ok(())
}

fn check(
    host: &Host,
    tuning: &TuningDir,
    profile: Option<&str>,
    target: &Target,
    json: bool,
) -> Result<()> {
    let (mut config, _) = target.config()?;
    if let Some(d) = &target.data_dir {
        config.data_dir = d.clone();
    }
    // The data directory's disks, or those given with --device.
    let devices = subject(target, &config, String::new()).devices(host);
    let overlay = match profile {
        Some(p) => {
            let profile = profile::load(tuning, p)?;
            // A value this host would refuse (a scheduler it does not
            // offer) fails the check as it would fail the apply.
            apply::plan(host, &profile.name, &profile.settings, &devices)?;
            profile.settings
        }
        None => Default::default(),
    };
    let warnings = check::check(&check::View {
        host,
        overlay: &overlay,
        devices: &devices,
        config: &config,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&warnings)?);
        return Ok(());
    }
    for w in &warnings {
        println!("warning: {} = {}: {}", w.knob, w.value, w.reason);
    }
    let with = profile
        .map(|p| format!(" with profile {p}"))
        .unwrap_or_default();
    println!("{} warnings for this host{with}", warnings.len());
    Ok(())
}

fn apply_cmd(
    host: &Host,
    tuning: &TuningDir,
    name: &str,
    target: &Target,
    dry_run: bool,
    state_dir: &std::path::Path,
) -> Result<()> {
    let profile = profile::load(tuning, name)?;
    let (config, source) = target.config()?;
    let devices = subject(target, &config, source).devices(host);
    let plan = apply::plan(host, &profile.name, &profile.settings, &devices)?;
    if dry_run {
        println!(
            "profile {} ({}), dry run: nothing changes",
            profile.name,
            profile.description.trim()
        );
        for c in &plan.changes {
            let now = c.current.trim();
            match &c.desired {
                Some(d) if knob::shows(c.target.spec, &c.current, d) => {
                    println!("  {:<44} {now:?} (unchanged)", c.target.display())
                }
                Some(d) => println!("  {:<44} {now:?} -> {d:?}", c.target.display()),
                None => println!(
                    "  {:<44} {now:?} (saved: the kernel may change it)",
                    c.target.display()
                ),
            }
        }
        for (k, why) in &plan.unsupported {
            println!("  {k:<44} unsupported: {why}");
        }
        return Ok(());
    }
    if !is_root() {
        return Err(TuneError::NotRoot {
            action: "ringtail tune apply",
        }
        .into());
    }
    let state = StateDir::open(state_dir)?;
    let applied = apply::apply(&state, host, &plan, "ringtail tune apply")?;
    println!(
        "profile {}: previous values saved in {}",
        profile.name,
        applied.snapshot_path.display()
    );
    for e in &applied.snapshot.entries {
        println!(
            "  {:<44} {}",
            e.display(),
            e.outcome.as_deref().unwrap_or("-")
        );
    }
    for (k, why) in &plan.unsupported {
        println!("  {k:<44} unsupported here, nothing changed: {why}");
    }
    println!("undo with: ringtail tune revert");
    if !applied.failed.is_empty() {
        bail!(
            "{} knobs not set:\n  {}\n(the others are applied; `ringtail tune revert` restores them)",
            applied.failed.len(),
            applied.failed.join("\n  ")
        );
    }
    Ok(())
}

fn revert_cmd(
    host: &Host,
    which: Option<&str>,
    list: bool,
    force: bool,
    state_dir: &std::path::Path,
) -> Result<()> {
    if list {
        for (p, s) in snapshot::list(state_dir)? {
            println!(
                "{:<9} {:<28} {:<40} {}",
                format!("{:?}", s.state).to_lowercase(),
                s.profile,
                s.origin,
                p.display()
            );
        }
        return Ok(());
    }
    if !is_root() {
        return Err(TuneError::NotRoot {
            action: "ringtail tune revert",
        }
        .into());
    }
    let state = StateDir::open(state_dir)?;
    let done = match which {
        Some(w) => {
            let (path, _) = state.find(w)?;
            vec![apply::revert(&state, &path, host, force)?]
        }
        None => apply::revert_all(&state, host, force)?,
    };
    if done.is_empty() {
        println!(
            "nothing to revert: no profile is applied ({})",
            state_dir.display()
        );
    }
    for r in done {
        println!(
            "reverted profile {} ({}); every file reads as before:",
            r.profile,
            r.snapshot_path.display()
        );
        for (k, what) in r.lines {
            println!("  {k:<44} {what}");
        }
    }
    Ok(())
}

fn experiment_cmd(
    host: &Host,
    tuning: &TuningDir,
    name: &str,
    out: Option<PathBuf>,
    keep_data: bool,
    dry_run: bool,
    state_dir: &std::path::Path,
) -> Result<()> {
    let exp = experiment::load(tuning, name)?;
    if dry_run {
        println!(
            "experiment {}: {} variants x {} repeats, metric {}",
            exp.name,
            exp.variants.len(),
            exp.repeats,
            exp.metric.name()
        );
        for v in &exp.variants {
            let knobs: Vec<String> = v
                .settings
                .iter()
                .map(|(k, val)| format!("{k}={val:?}"))
                .collect();
            println!(
                "  variant {}: host {} broker {}",
                v.name,
                knobs.join(" "),
                toml::to_string(&v.broker)?.replace('\n', " ")
            );
        }
        let order: Vec<String> = experiment::spec::run_order(&exp)
            .iter()
            .map(|(v, r)| format!("{}#{}", exp.variants[*v].name, r + 1))
            .collect();
        println!("  order: {}", order.join(" "));
        return Ok(());
    }
    let out = out.unwrap_or_else(|| {
        PathBuf::from("tune-results").join(format!("{}-{}", exp.name, snapshot::unix_now()))
    });
    let opts = experiment::RunOptions {
        exe: std::env::current_exe().context("locating the ringtail binary")?,
        out_dir: out,
        state_dir: state_dir.to_owned(),
        host: host.clone(),
        keep_data,
    };
    experiment::run(&exp, &opts)?;
    Ok(())
}
