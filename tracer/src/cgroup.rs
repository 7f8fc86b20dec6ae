//! cgroup v2 ids → paths. The kernel side records `bpf_get_current_cgroup_id()`
//! (the id of the owner's cgroup in the v2 hierarchy); on cgroup2 that id is
//! the inode number of the cgroup's directory, so a walk of the mounted
//! hierarchy resolves it. Containers show up as their cgroup path
//! (e.g. `/system.slice/docker-<id>.scope`).

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Where the cgroup2 hierarchy is mounted (`/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones), from a mountinfo text.
pub fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "<id> <parent> <maj:min> <root> <mount point> <opts> [optional...] - <fstype> <source> <super opts>"
        let (pre, post) = line.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut f = pre.split_whitespace();
        let root = f.nth(3)?;
        let mount = f.next()?;
        // Only a mount of the hierarchy's root gives paths relative to "/".
        (root == "/").then(|| PathBuf::from(unescape(mount)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// Resolves cgroup ids to paths relative to the hierarchy root, caching the
/// walk and re-walking (at most once a second) on a miss: cgroups come and go.
pub struct Resolver {
    root: Option<PathBuf>,
    by_id: HashMap<u64, String>,
    last_walk: Option<Instant>,
}

impl Resolver {
    /// Find the cgroup2 mount of this host (none: every lookup gives None).
    pub fn new() -> Self {
        let root = fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| cgroup2_mount_in(&m));
        Self::with_root(root)
    }

    pub fn with_root(root: Option<PathBuf>) -> Self {
        Resolver {
            root,
            by_id: HashMap::new(),
            last_walk: None,
        }
    }

    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// The path of cgroup `id` ("/" for the root), if it exists.
    pub fn path(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        let due = self
            .last_walk
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
        if due {
            self.walk();
        }
        self.by_id.get(&id).cloned()
    }

    fn walk(&mut self) {
        self.last_walk = Some(Instant::now());
        let Some(root) = self.root.clone() else {
            return;
        };
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            let Ok(md) = fs::metadata(&dir) else {
                continue;
            };
            let rel = dir.strip_prefix(&root).unwrap_or(Path::new(""));
            self.by_id
                .insert(md.ino(), format!("/{}", rel.to_string_lossy()));
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mount_on_unified_and_hybrid_hosts() {
        let hybrid = "25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw\n\
                      27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            cgroup2_mount_in(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified = "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mount_in(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        // A bind mount of a sub-cgroup (inside a container) is not the root.
        let sub = "30 1 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount_in(sub), None);
        assert_eq!(
            cgroup2_mount_in("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"),
            None
        );
        let spaced = "30 1 0:26 / /mnt/my\\040cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount_in(spaced), Some(PathBuf::from("/mnt/my cg")));
    }

    #[test]
    fn resolves_directory_inodes_to_relative_paths() {
        let dir = std::env::temp_dir().join(format!("cgres-{}", std::process::id()));
        fs::create_dir_all(dir.join("a/b")).unwrap();
        let ino = fs::metadata(dir.join("a/b")).unwrap().ino();
        let root_ino = fs::metadata(&dir).unwrap().ino();
        let mut r = Resolver::with_root(Some(dir.clone()));
        assert_eq!(r.path(ino).as_deref(), Some("/a/b"));
        assert_eq!(r.path(root_ino).as_deref(), Some("/"));
        assert_eq!(r.path(0), None);
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(Resolver::with_root(None).path(ino), None);
    }
}
