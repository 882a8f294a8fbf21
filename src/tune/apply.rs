//! Plan, apply and revert a profile's settings.
//!
//! - plan: every knob resolved to its files on this host and checked
//!   against what the host offers; any bad value refuses the whole profile
//!   before anything changes. Knobs the host does not have are listed as
//!   unsupported (nothing to change, nothing to restore).
//! - apply: the snapshot of every file to be touched (and of the files the
//!   kernel changes with them) is written durably first; then each knob is
//!   written in order and read back, and its outcome (applied, unchanged,
//!   denied by the kernel) recorded per knob.
//! - revert: every saved file is written back in order, then every file is
//!   read again and compared byte for byte with the snapshot; only then is
//!   the snapshot marked reverted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::knob::{self, Devices, Target};
use super::snapshot::{self, Entry, Snapshot, State, StateDir, SNAPSHOT_VERSION};
use super::sysfs::{read_raw, write_value, Host};
use super::TuneError;

/// Pause after each knob written, in milliseconds (crash tests kill an
/// apply between two knobs; an operator may watch each change's effect).
pub const STEP_DELAY_ENV: &str = "RINGTAIL_TUNE_STEP_DELAY_MS";

/// One file to change (or, with no desired value, only to save).
#[derive(Debug, Clone)]
pub struct Planned {
    pub target: Target,
    pub current: String,
    pub desired: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub profile: String,
    pub changes: Vec<Planned>,
    /// Knob (with its disk or CPU) -> why this host does not have it.
    pub unsupported: Vec<(String, String)>,
}

impl Plan {
    /// Knobs whose value the apply would change.
    pub fn changing(&self) -> impl Iterator<Item = &Planned> {
        self.changes.iter().filter(|c| {
            c.desired
                .as_deref()
                .is_some_and(|d| !knob::shows(c.target.spec, &c.current, d))
        })
    }
}

/// Resolves `settings` (knob name -> value) to files on this host and
/// checks every value; refuses the whole profile on any bad value.
pub fn plan(
    host: &Host,
    profile: &str,
    settings: &BTreeMap<String, String>,
    devices: &Devices,
) -> Result<Plan, TuneError> {
    let mut plan = Plan {
        profile: profile.to_string(),
        ..Default::default()
    };
    let mut refusals = Vec::new();
    for (name, desired) in settings {
        let spec = knob::lookup(name)?;
        let targets = knob::targets(host, spec, devices);
        if targets.is_empty() {
            plan.unsupported
                .push((name.clone(), no_target_reason(spec, devices)));
        }
        for t in targets {
            let Some(current) = read_raw(&t.path)? else {
                plan.unsupported.push((
                    t.display(),
                    format!("{} does not exist on this host", t.path.display()),
                ));
                continue;
            };
            if let Err(e) = knob::check_on_host(host, &t, &current, desired) {
                refusals.push(e.to_string());
                continue;
            }
            plan.changes.push(Planned {
                target: t,
                current,
                desired: Some(desired.clone()),
            });
        }
    }
    if !refusals.is_empty() {
        return Err(TuneError::Refused(refusals.join("\n")));
    }
    add_companions(host, &mut plan)?;
    plan.changes.sort_by(|a, b| {
        let key = |p: &Planned| {
            (
                p.target.label.clone(),
                p.target.spec.order,
                p.target.spec.name,
            )
        };
        key(a).cmp(&key(b))
    });
    Ok(plan)
}

fn no_target_reason(spec: &knob::KnobSpec, devices: &Devices) -> String {
    match spec.scope {
        knob::Scope::Block => devices
            .no_disks
            .clone()
            .unwrap_or_else(|| "no disk under the data directory".into()),
        knob::Scope::Cpu => "no online CPU".into(),
        _ => "not on this host".into(),
    }
}

/// Files the kernel changes along with a planned one are saved too.
fn add_companions(host: &Host, plan: &mut Plan) -> Result<(), TuneError> {
    let mut extra = Vec::new();
    for c in &plan.changes {
        for name in c.target.spec.companions {
            let spec = knob::lookup(name)?;
            let already = plan.changes.iter().chain(extra.iter()).any(|p: &Planned| {
                p.target.spec.name == spec.name && p.target.label == c.target.label
            });
            if already {
                continue;
            }
            let devices = Devices {
                disks: vec![c.target.label.clone()],
                cpus: Vec::new(),
                no_disks: None,
            };
            let found = knob::targets(host, spec, &devices)
                .into_iter()
                .find(|t| t.label == c.target.label);
            if let Some(t) = found {
                if let Some(current) = read_raw(&t.path)? {
                    extra.push(Planned {
                        target: t,
                        current,
                        desired: None,
                    });
                }
            }
        }
    }
    plan.changes.extend(extra);
    Ok(())
}

/// What happened to each knob.
#[derive(Debug, Clone)]
pub struct Applied {
    pub snapshot_path: PathBuf,
    pub snapshot: Snapshot,
    /// Knobs the profile asked for that the kernel did not take (denied,
    /// refused, or reading back another value). Knobs this host does not
    /// have are the plan's `unsupported`, not failures.
    pub failed: Vec<String>,
}

/// Refuses while another snapshot is active: its revert would undo this
/// one's baseline. `tune revert` first.
pub fn refuse_if_active(state: &StateDir) -> Result<(), TuneError> {
    let active = state.active()?;
    if let Some((path, s)) = active.last() {
        return Err(TuneError::State(format!(
            "profile {:?} is applied (snapshot {}, {}); run `ringtail tune revert` first",
            s.profile,
            path.display(),
            s.origin
        )));
    }
    Ok(())
}

/// Saves the snapshot durably, then writes each knob.
pub fn apply(
    state: &StateDir,
    host: &Host,
    plan: &Plan,
    origin: &str,
) -> Result<Applied, TuneError> {
    refuse_if_active(state)?;
    let created = snapshot::unix_now();
    let (id, path) = state.new_path(&plan.profile, created);
    let mut snap = Snapshot {
        version: SNAPSHOT_VERSION,
        id,
        profile: plan.profile.clone(),
        origin: origin.to_string(),
        created_unix: created,
        boot_id: snapshot::boot_id(host),
        pid: std::process::id(),
        state: State::Applying,
        entries: plan.changes.iter().map(entry_of).collect(),
        unsupported: plan.unsupported.clone(),
        reverted_unix: None,
    };
    snapshot::save(&path, &snap)?;
    let delay = std::env::var(STEP_DELAY_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_millis);
    let mut failed = Vec::new();
    for (entry, planned) in snap.entries.iter_mut().zip(&plan.changes) {
        let outcome = apply_one(planned);
        if !(outcome == "applied" || outcome == "unchanged" || planned.desired.is_none()) {
            failed.push(format!("{}: {outcome}", entry.display()));
        }
        entry.outcome = Some(outcome);
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
    }
    snap.state = State::Applied;
    snapshot::save(&path, &snap)?;
    Ok(Applied {
        snapshot_path: path,
        snapshot: snap,
        failed,
    })
}

fn entry_of(p: &Planned) -> Entry {
    Entry {
        knob: p.target.spec.name.to_string(),
        target: p.target.label.clone(),
        path: p.target.path.clone(),
        previous: p.current.clone(),
        restore: knob::restore_value(p.target.spec, &p.current),
        order: p.target.spec.order,
        partner: p.target.spec.partner.map(String::from),
        desired: p.desired.clone(),
        outcome: None,
    }
}

/// Writes one knob and reads it back: `applied`, `unchanged`, or why not.
fn apply_one(p: &Planned) -> String {
    let Some(desired) = &p.desired else {
        return "saved (the kernel may change it with another knob)".into();
    };
    if knob::shows(p.target.spec, &p.current, desired) {
        return "unchanged".into();
    }
    if let Err(e) = write_value(&p.target.path, desired) {
        return denied(&e);
    }
    match read_raw(&p.target.path) {
        Ok(Some(now)) if knob::shows(p.target.spec, &now, desired) => "applied".into(),
        Ok(Some(now)) => format!("written, but reads {:?}", now.trim()),
        Ok(None) => "vanished after the write".into(),
        Err(e) => format!("written, but not readable: {e}"),
    }
}

fn denied(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EINVAL) => {
            "refused by the kernel (invalid argument: not supported by this device or kernel)"
                .into()
        }
        Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => format!("denied: {e}"),
        _ => format!("write failed: {e}"),
    }
}

/// What a revert did per file.
#[derive(Debug, Clone)]
pub struct Reverted {
    pub snapshot_path: PathBuf,
    pub profile: String,
    pub lines: Vec<(String, String)>,
}

/// Restores one snapshot, checks every file byte for byte, and marks it
/// reverted. A snapshot from another boot is refused unless `force`.
pub fn revert(
    state: &StateDir,
    path: &std::path::Path,
    host: &Host,
    force: bool,
) -> Result<Reverted, TuneError> {
    let mut snap = snapshot::load(path)?;
    let mut out = Reverted {
        snapshot_path: path.to_owned(),
        profile: snap.profile.clone(),
        lines: Vec::new(),
    };
    if snap.state == State::Reverted {
        out.lines.push(("*".into(), "already reverted".into()));
        return Ok(out);
    }
    let newer: Vec<String> = state
        .active()?
        .into_iter()
        .filter(|(p, s)| p != path && (s.created_unix, &s.id) > (snap.created_unix, &snap.id))
        .map(|(_, s)| s.id)
        .collect();
    if !newer.is_empty() {
        return Err(TuneError::State(format!(
            "revert the newer snapshots first: {}",
            newer.join(", ")
        )));
    }
    let boot = snapshot::boot_id(host);
    if !force && snap.boot_id != boot {
        return Err(TuneError::State(format!(
            "{} was taken in another boot ({}): the kernel's settings were reset by the reboot; \
             --force writes the saved values anyway",
            path.display(),
            snap.boot_id
        )));
    }
    let mut order: Vec<usize> = (0..snap.entries.len()).collect();
    order.sort_by_key(|&i| {
        (
            snap.entries[i].target.clone(),
            snap.entries[i].order,
            snap.entries[i].knob.clone(),
        )
    });
    for &i in &order {
        let line = restore_one(&snap, &snap.entries[i]);
        out.lines.push((snap.entries[i].display(), line));
    }
    let mismatched = verify(&snap);
    if !mismatched.is_empty() {
        return Err(TuneError::State(format!(
            "not restored exactly (the snapshot stays active; run revert again):\n{}",
            mismatched.join("\n")
        )));
    }
    snap.state = State::Reverted;
    snap.reverted_unix = Some(snapshot::unix_now());
    snapshot::save(path, &snap)?;
    state.prune_reverted(snapshot::MAX_REVERTED_SNAPSHOTS)?;
    Ok(out)
}

fn restore_one(snap: &Snapshot, e: &Entry) -> String {
    let now = match read_raw(&e.path) {
        Ok(Some(now)) => now,
        Ok(None) => return format!("{} no longer exists", e.path.display()),
        Err(err) => return err.to_string(),
    };
    if now == e.previous {
        return "unchanged".into();
    }
    // Writing the partner (dirty_ratio) zeroes this one (dirty_bytes): a
    // zero is restored by restoring the partner.
    let partner_restores = e.previous.trim() == "0"
        && e.partner.as_ref().is_some_and(|p| {
            snap.entries
                .iter()
                .any(|o| &o.knob == p && o.target == e.target && o.previous.trim() != "0")
        });
    if partner_restores {
        return "restored with its partner".into();
    }
    let mut note = String::new();
    if let (Some(d), Some("applied")) = (&e.desired, e.outcome.as_deref()) {
        if knob::spec(&e.knob).is_some_and(|s| !knob::shows(s, &now, d)) {
            note = format!(
                " (it had been changed since the apply, to {:?})",
                now.trim()
            );
        }
    }
    match write_value(&e.path, &e.restore) {
        Ok(()) => format!("restored {:?}{note}", e.restore),
        Err(err) => format!("restore failed: {err}"),
    }
}

/// Files that do not read back exactly as saved (or cannot be read).
fn verify(snap: &Snapshot) -> Vec<String> {
    let mut bad = Vec::new();
    for e in &snap.entries {
        match read_raw(&e.path) {
            Ok(Some(now)) if now == e.previous => {}
            Ok(now) => bad.push(format!(
                "{}: reads {:?}, saved {:?}",
                e.display(),
                now.unwrap_or_default(),
                e.previous
            )),
            Err(err) => bad.push(format!("{}: {err}", e.display())),
        }
    }
    bad
}

/// Reverts every active snapshot, newest first.
pub fn revert_all(state: &StateDir, host: &Host, force: bool) -> Result<Vec<Reverted>, TuneError> {
    let mut done = Vec::new();
    for (path, _) in state.active()?.into_iter().rev() {
        done.push(revert(state, &path, host, force)?);
    }
    Ok(done)
}

#[cfg(test)]
#[path = "apply_tests.rs"]
mod tests;
