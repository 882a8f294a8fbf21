//! The mount a path is on, from /proc/self/mountinfo.

use std::path::{Path, PathBuf};

use crate::tune::sysfs::Host;

/// The mount a path is on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub source: String,
    /// Per-mount and file-system options together.
    pub options: String,
}

/// Parses one line of /proc/self/mountinfo.
pub fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let l: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.split(' ').collect();
    let unescape = |s: &str| {
        s.replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\012", "\n")
            .replace("\\134", "\\")
    };
    Some(Mount {
        mount_point: PathBuf::from(unescape(l.get(4)?)),
        fs_type: r.first()?.to_string(),
        source: unescape(r.get(1)?),
        options: format!("{},{}", l.get(5)?, r.get(2).unwrap_or(&"")),
    })
}

/// The mount holding `path` (its nearest existing ancestor).
pub fn mount_of(host: &Host, path: &Path) -> Option<Mount> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let canonical = std::fs::canonicalize(existing).ok()?;
    let text = host.read("proc/self/mountinfo")?;
    text.lines()
        .filter_map(parse_mountinfo_line)
        .filter(|m| canonical.starts_with(&m.mount_point))
        .fold(None, |best: Option<Mount>, m| match &best {
            Some(b) if b.mount_point.components().count() > m.mount_point.components().count() => {
                best
            }
            _ => Some(m),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_escapes() {
        let line = "29 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw,discard";
        let m = parse_mountinfo_line(line).unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/"));
        assert_eq!(
            (m.fs_type.as_str(), m.source.as_str()),
            ("ext4", "/dev/vda")
        );
        assert_eq!(m.options, "rw,relatime,rw,discard");
        let m = parse_mountinfo_line("40 29 0:5 / /mnt/my\\040disk rw - tmpfs tmpfs rw").unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/mnt/my disk"));
        assert!(parse_mountinfo_line("garbage").is_none());
    }

    #[test]
    fn the_longest_mount_prefix_wins() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("proc/self")).unwrap();
        let data = root.join("data");
        std::fs::create_dir_all(&data).unwrap();
        let data = std::fs::canonicalize(&data).unwrap();
        std::fs::write(
            root.join("proc/self/mountinfo"),
            format!(
                "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n2 1 8:17 / {} rw - xfs /dev/sdb1 rw,nobarrier\n",
                data.display()
            ),
        )
        .unwrap();
        let m = mount_of(&Host::at(root), &data.join("not-yet-created")).unwrap();
        assert_eq!(m.fs_type, "xfs");
        assert!(m.options.contains("nobarrier"));
    }
}
