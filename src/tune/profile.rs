//! Tuning profiles: commented TOML files in `tuning/profiles/`, layered
//! like tuned's (`include` names profiles whose settings come first; the
//! including file's settings win).
//!
//! ```toml
//! description = "what this profile is for"
//! include = ["baseline"]
//! [sysctl]
//! vm.swappiness = 1            # a TOML dotted key: the sysctl's own name
//! net.ipv4.tcp_rmem = [4096, 131072, 6291456]
//! [thp]
//! enabled = "madvise"
//! [block]                      # every disk under the data directory
//! scheduler = "none"
//! [cpu]
//! governor = "performance"     # every online CPU
//! ```
//!
//! Every knob is checked against the registry (`knob`) when the file is
//! loaded: an unknown name or a bad value refuses the whole profile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::knob;
use super::TuneError;

/// Sections whose keys are knobs.
pub const SECTIONS: &[&str] = &["sysctl", "thp", "block", "cpu"];
/// Longest chain of includes.
pub const MAX_INCLUDE_DEPTH: usize = 8;

#[derive(Debug, Clone, Default)]
pub struct Profile {
    pub name: String,
    pub path: Option<PathBuf>,
    pub description: String,
    /// Knob name -> text to write, after includes (later wins).
    pub settings: BTreeMap<String, String>,
}

/// Where profiles and experiments are looked up.
#[derive(Debug, Clone)]
pub struct TuningDir(pub PathBuf);

impl TuningDir {
    /// `--tuning-dir`, else `$RINGTAIL_TUNING_DIR`, else `./tuning`, else the
    /// `tuning/` of the source tree the binary was built in.
    pub fn locate(flag: Option<&Path>) -> TuningDir {
        if let Some(p) = flag {
            return TuningDir(p.to_owned());
        }
        if let Some(p) = std::env::var_os("RINGTAIL_TUNING_DIR") {
            return TuningDir(p.into());
        }
        let local = PathBuf::from("tuning");
        if local.is_dir() {
            return TuningDir(local);
        }
        TuningDir(Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning"))
    }

    /// A name (`throughput`) in `<dir>/<kind>/`, or a path to a file.
    pub fn find(&self, kind: &str, name: &str) -> PathBuf {
        if name.contains('/') || name.ends_with(".toml") {
            PathBuf::from(name)
        } else {
            self.0.join(kind).join(format!("{name}.toml"))
        }
    }
}

fn perr(path: &Path, message: impl Into<String>) -> TuneError {
    TuneError::Profile {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Loads a profile by name or path, with its includes.
pub fn load(dir: &TuningDir, name: &str) -> Result<Profile, TuneError> {
    let path = dir.find("profiles", name);
    let mut stack = Vec::new();
    let mut profile = load_file(&path, &mut stack)?;
    profile.name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| name.to_string());
    Ok(profile)
}

fn load_file(path: &Path, stack: &mut Vec<PathBuf>) -> Result<Profile, TuneError> {
    let text = std::fs::read_to_string(path).map_err(|e| TuneError::io("read", path, e))?;
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| perr(path, format!("not valid TOML: {e}")))?;
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    if stack.contains(&canonical) {
        return Err(perr(path, "includes itself (an include cycle)"));
    }
    if stack.len() >= MAX_INCLUDE_DEPTH {
        return Err(perr(
            path,
            format!("includes nest deeper than {MAX_INCLUDE_DEPTH}"),
        ));
    }
    stack.push(canonical);
    let mut profile = Profile {
        path: Some(path.to_owned()),
        ..Default::default()
    };
    for (key, value) in &table {
        match key.as_str() {
            "description" => {
                profile.description = value
                    .as_str()
                    .ok_or_else(|| perr(path, "description must be a string"))?
                    .to_string()
            }
            "include" => {
                for inc in include_names(value)
                    .ok_or_else(|| perr(path, "include must be a name or a list of names"))?
                {
                    let inc_path = path.with_file_name(format!("{inc}.toml"));
                    let base = load_file(&inc_path, stack)?;
                    layer(&mut profile.settings, base.settings, &inc_path)?;
                }
            }
            _ => {}
        }
    }
    let own = settings_of(&table, path, &["description", "include"])?;
    layer(&mut profile.settings, own, path)?;
    stack.pop();
    Ok(profile)
}

/// Puts the settings of `top` over `base`: a knob set in `top` wins, and so
/// does its partner (writing vm.dirty_bytes zeroes vm.dirty_ratio and the
/// other way round, so a layer that sets one drops the other from below).
/// One layer setting both partners is refused: the second write would undo
/// the first.
pub fn layer(
    base: &mut BTreeMap<String, String>,
    top: BTreeMap<String, String>,
    path: &Path,
) -> Result<(), TuneError> {
    for name in top.keys() {
        let Some(partner) = knob::spec(name).and_then(|s| s.partner) else {
            continue;
        };
        if top.contains_key(partner) {
            return Err(perr(
                path,
                format!(
                    "sets both {name} and {partner}: writing one zeroes the other; set one of them"
                ),
            ));
        }
        base.remove(partner);
    }
    base.extend(top);
    Ok(())
}

fn include_names(v: &toml::Value) -> Option<Vec<String>> {
    match v {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Array(a) => a.iter().map(|v| v.as_str().map(String::from)).collect(),
        _ => None,
    }
}

/// The knob settings of a table with sections `sysctl`, `thp`, `block`,
/// `cpu` (keys in `other_keys` are the caller's; anything else is refused).
pub fn settings_of(
    table: &toml::Table,
    path: &Path,
    other_keys: &[&str],
) -> Result<BTreeMap<String, String>, TuneError> {
    let mut out = BTreeMap::new();
    for (key, value) in table {
        if other_keys.contains(&key.as_str()) {
            continue;
        }
        if !SECTIONS.contains(&key.as_str()) {
            // A knob written at the top level, or a section we do not know.
            let e = knob::lookup(key)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            return Err(perr(
                path,
                format!(
                    "unknown key {key:?} (sections are {}) {e}",
                    SECTIONS.join(", ")
                ),
            ));
        }
        let toml::Value::Table(section) = value else {
            return Err(perr(path, format!("[{key}] must be a table")));
        };
        let mut flat = Vec::new();
        flatten(key, section, &mut flat);
        for (name, value) in flat {
            let spec = knob::lookup(&name).map_err(|e| perr(path, e.to_string()))?;
            let text = knob::normalize(spec, value).map_err(|e| perr(path, e.to_string()))?;
            out.insert(name, text);
        }
    }
    Ok(out)
}

/// `[sysctl] vm.swappiness = 1` parses as nested tables; the knob name is
/// the dotted path.
fn flatten<'a>(prefix: &str, table: &'a toml::Table, out: &mut Vec<(String, &'a toml::Value)>) {
    for (k, v) in table {
        let name = format!("{prefix}.{k}");
        match v {
            toml::Value::Table(t) => flatten(&name, t, out),
            _ => out.push((name, v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir.join("profiles")).unwrap();
        std::fs::write(dir.join("profiles").join(format!("{name}.toml")), text).unwrap();
    }

    #[test]
    fn sections_flatten_to_knob_names_and_includes_layer() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "base",
            "description = \"b\"\n[sysctl]\nvm.swappiness = 60\nvm.dirty_ratio = 20\n",
        );
        write(
            dir.path(),
            "top",
            "include = \"base\"\n[sysctl.vm]\nswappiness = 1\n[sysctl]\nnet.ipv4.tcp_rmem = [4096, 131072, 6291456]\n[block]\nscheduler = \"none\"\n",
        );
        let p = load(&TuningDir(dir.path().into()), "top").unwrap();
        assert_eq!(p.name, "top");
        let s: Vec<(&str, &str)> = p
            .settings
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            s,
            [
                ("block.scheduler", "none"),
                ("sysctl.net.ipv4.tcp_rmem", "4096\t131072\t6291456"),
                ("sysctl.vm.dirty_ratio", "20"),
                ("sysctl.vm.swappiness", "1"),
            ]
        );
        // A layer that sets dirty_bytes replaces the included dirty_ratio.
        write(
            dir.path(),
            "bytes",
            "include = \"base\"\n[sysctl]\nvm.dirty_bytes = 268435456\n",
        );
        let p = load(&TuningDir(dir.path().into()), "bytes").unwrap();
        assert!(
            !p.settings.contains_key("sysctl.vm.dirty_ratio"),
            "{:?}",
            p.settings
        );
        assert_eq!(p.settings["sysctl.vm.dirty_bytes"], "268435456");
    }

    #[test]
    fn unknown_knobs_sections_and_bad_values_refuse_the_profile() {
        let dir = tempfile::tempdir().unwrap();
        let td = TuningDir(dir.path().into());
        for (text, needle) in [
            ("[sysctl]\nvm.swapiness = 1\n", "unknown knob"),
            ("[sysctl]\nvm.swappiness = 500\n", "must be in 0..=200"),
            ("[grub]\nisolcpus = \"1\"\n", "unknown key \"grub\""),
            ("[cmdline]\nisolcpus = \"1\"\n", "reboot-level"),
            (
                "[block]\nwrite_cache = \"write through\"\n",
                "reported only",
            ),
            ("include = \"missing\"\n", "missing.toml"),
            ("include = \"bad\"\n", "includes itself"),
            ("[sysctl\n", "not valid TOML"),
            ("[sysctl]\nvm.dirty_bytes = 0\n", "must be in 8192"),
            (
                "[sysctl]\nvm.dirty_ratio = 5\nvm.dirty_bytes = 1048576\n",
                "sets both",
            ),
        ] {
            write(dir.path(), "bad", text);
            let e = load(&td, "bad").unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }
}
