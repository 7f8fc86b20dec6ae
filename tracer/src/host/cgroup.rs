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
pub(crate) fn unescape(s: &str) -> String {
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

/// What a cgroup v2 path says about the workload in it: a Kubernetes pod
/// and container, a container of a runtime, or a systemd unit.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Workload {
    /// Pod UID (dashes, as `kubectl get pod -o jsonpath='{.metadata.uid}'` shows it).
    pub pod_uid: Option<String>,
    /// The pod's QoS class: guaranteed, burstable, besteffort.
    pub qos: Option<&'static str>,
    /// Container id (64 hex digits, as `crictl ps` / `docker ps --no-trunc` show it).
    pub container_id: Option<String>,
    /// containerd, cri-o, docker, podman.
    pub runtime: Option<&'static str>,
    /// The innermost systemd service or scope that is not a container.
    pub unit: Option<String>,
    /// `namespace/name` of the pod, where the node's kubelet log
    /// directories name it (`kube::Names`).
    pub pod: Option<String>,
    /// The container's name in its pod, likewise.
    pub container_name: Option<String>,
}

impl Workload {
    /// A short name: `namespace/pod/container` where the node names them,
    /// else `pod <uid>/<container 12>`, `docker:<id 12>`, `foo.service`.
    pub fn name(&self) -> Option<String> {
        let short = |id: &String| id.chars().take(12).collect::<String>();
        if let Some(pod) = &self.pod {
            let container = self
                .container_name
                .clone()
                .or(self.container_id.as_ref().map(short));
            return Some(match container {
                Some(c) => format!("{pod}/{c}"),
                None => pod.clone(),
            });
        }
        match (&self.pod_uid, &self.container_id, &self.unit) {
            (Some(p), Some(c), _) => Some(format!("pod {p}/{}", short(c))),
            (Some(p), None, _) => Some(format!("pod {p}")),
            (None, Some(c), _) => Some(format!(
                "{}:{}",
                self.runtime.unwrap_or("container"),
                short(c)
            )),
            (None, None, Some(u)) => Some(u.clone()),
            (None, None, None) => None,
        }
    }

    /// The container as a label value: `runtime://id`, like Kubernetes'
    /// `status.containerStatuses[].containerID`.
    pub fn container(&self) -> Option<String> {
        let id = self.container_id.as_ref()?;
        Some(format!("{}://{id}", self.runtime.unwrap_or("container")))
    }
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A pod UID from `pod<uid>` (cgroupfs driver, dashes) or
/// `kubepods-<qos>-pod<uid>.slice` (systemd driver, underscores).
fn pod_uid(component: &str) -> Option<String> {
    let c = component.strip_suffix(".slice").unwrap_or(component);
    let i = c.rfind("pod")?;
    let before = &c[..i];
    if !(before.is_empty() || before.ends_with('-')) {
        return None;
    }
    let uid = c[i + 3..].replace('_', "-");
    let ok = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    ok.then_some(uid)
}

/// A container id and runtime from one path component.
fn container(component: &str) -> Option<(&'static str, String)> {
    const SCOPES: &[(&str, &str)] = &[
        ("cri-containerd-", "containerd"),
        ("crio-conmon-", "cri-o"),
        ("crio-", "cri-o"),
        ("docker-", "docker"),
        ("libpod-conmon-", "podman"),
        ("libpod-", "podman"),
    ];
    if let Some(stem) = component.strip_suffix(".scope") {
        for (prefix, runtime) in SCOPES {
            if let Some(id) = stem.strip_prefix(prefix) {
                return is_container_id(id).then(|| (*runtime, id.to_string()));
            }
        }
        return None;
    }
    is_container_id(component).then(|| ("container", component.to_string()))
}

/// Parse a cgroup v2 path (as in /proc/PID/cgroup, `0::/...`; a leading
/// `/../..` from a cgroup namespace is fine: components are matched, not
/// prefixes).
pub fn workload(path: &str) -> Workload {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != "..")
        .collect();
    let mut w = Workload::default();
    let mut kube = false;
    let mut docker_dir = false;
    for (i, c) in parts.iter().enumerate() {
        let c = *c;
        if c == "kubepods" || c == "kubepods.slice" {
            kube = true;
            w.qos = Some("guaranteed");
        } else if kube
            && ["burstable", "besteffort"]
                .iter()
                .any(|q| c == *q || c == format!("kubepods-{q}.slice"))
        {
            w.qos = Some(if c.contains("burstable") {
                "burstable"
            } else {
                "besteffort"
            });
        } else if let Some(uid) = (kube || c.starts_with("kubepods-"))
            .then(|| pod_uid(c))
            .flatten()
        {
            // A cgroup namespace may hide the kubepods parents; the slice
            // name still says it.
            kube = true;
            w.qos.get_or_insert(match c {
                _ if c.starts_with("kubepods-burstable-") => "burstable",
                _ if c.starts_with("kubepods-besteffort-") => "besteffort",
                _ => "guaranteed",
            });
            w.pod_uid = Some(uid);
        } else if let Some((runtime, id)) = container(c) {
            let runtime = match (runtime, docker_dir, kube) {
                ("container", true, _) => "docker",
                (r, ..) => r,
            };
            w.runtime = Some(runtime);
            w.container_id = Some(id);
        } else if c == "docker" && i + 1 < parts.len() {
            docker_dir = true;
        } else if c.ends_with(".service") || c.ends_with(".scope") {
            w.unit = Some(c.to_string());
        }
    }
    if w.container_id.is_some() {
        w.unit = None;
    }
    if !kube {
        w.qos = None;
    }
    w
}

/// The v2 path in a /proc/PID/cgroup text (the `0::` line).
pub fn v2_path_in(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))
}

/// The workload process `pid` runs in.
pub fn workload_of_pid(pid: u32) -> Option<Workload> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    Some(workload(v2_path_in(&text)?))
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
    const ID: &str = "4f1c2a3b5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7a8";
    const UID: &str = "0b5f4e3c-2d1a-4b9c-8e7f-6a5b4c3d2e1f";

    #[test]
    fn kubernetes_systemd_driver_paths() {
        let u = UID.replace('-', "_");
        let w = workload(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!(w.pod_uid.as_deref(), Some(UID));
        assert_eq!(w.qos, Some("burstable"));
        assert_eq!(w.runtime, Some("containerd"));
        assert_eq!(w.container_id.as_deref(), Some(ID));
        assert_eq!(w.unit, None);
        assert_eq!(w.name().unwrap(), format!("pod {UID}/4f1c2a3b5d6e"));
        assert_eq!(w.container().unwrap(), format!("containerd://{ID}"));
        let w = workload(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{ID}.scope"
        ));
        assert_eq!((w.qos, w.runtime), (Some("besteffort"), Some("cri-o")));
        assert_eq!(w.pod_uid.as_deref(), Some(UID));
        // Guaranteed pods sit right under kubepods.slice; conmon has its own scope.
        let w = workload(&format!(
            "/kubepods.slice/kubepods-pod{u}.slice/crio-conmon-{ID}.scope"
        ));
        assert_eq!((w.qos, w.runtime), (Some("guaranteed"), Some("cri-o")));
        // The pod slice itself (a pod-level process), and docker as the runtime.
        let w = workload(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"
        ));
        assert_eq!(
            (w.pod_uid.as_deref(), w.container_id.as_deref()),
            (Some(UID), None)
        );
        assert_eq!(w.name().unwrap(), format!("pod {UID}"));
        let w = workload(&format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/docker-{ID}.scope"));
        assert_eq!(w.runtime, Some("docker"));
        // Seen from inside a cgroup namespace (the tracer's own pod).
        let w = workload(&format!(
            "/../../kubepods-burstable-pod{u}.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!(w.container_id.as_deref(), Some(ID));
    }

    #[test]
    fn kubernetes_cgroupfs_driver_paths() {
        let w = workload(&format!("/kubepods/burstable/pod{UID}/{ID}"));
        assert_eq!(w.pod_uid.as_deref(), Some(UID));
        assert_eq!(w.qos, Some("burstable"));
        assert_eq!(w.container_id.as_deref(), Some(ID));
        let w = workload(&format!("/kubepods/besteffort/pod{UID}/{ID}"));
        assert_eq!(w.qos, Some("besteffort"));
        let w = workload(&format!("/kubepods/pod{UID}/{ID}"));
        assert_eq!(w.qos, Some("guaranteed"));
        assert_eq!(w.pod_uid.as_deref(), Some(UID));
    }

    #[test]
    fn plain_containers_and_systemd_units() {
        let w = workload(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!((w.runtime, w.pod_uid.as_deref()), (Some("docker"), None));
        assert_eq!(w.name().unwrap(), "docker:4f1c2a3b5d6e");
        let w = workload(&format!("/docker/{ID}"));
        assert_eq!(
            (w.runtime, w.container_id.as_deref()),
            (Some("docker"), Some(ID))
        );
        let w = workload(&format!("/machine.slice/libpod-{ID}.scope"));
        assert_eq!(w.runtime, Some("podman"));
        let w = workload("/system.slice/nginx.service");
        assert_eq!(w.unit.as_deref(), Some("nginx.service"));
        assert_eq!(w.name().as_deref(), Some("nginx.service"));
        assert_eq!(w.qos, None);
        let w = workload("/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo.scope");
        assert_eq!(w.unit.as_deref(), Some("app-foo.scope"));
        let w = workload("/user.slice/user-1000.slice/session-3.scope");
        assert_eq!(w.unit.as_deref(), Some("session-3.scope"));
        assert_eq!(workload("/").name(), None);
        // Not ids: too short, not hex, a pod-like word outside kubepods.
        assert_eq!(workload("/docker/abc").container_id, None);
        assert_eq!(workload(&format!("/system.slice/pod{UID}")).pod_uid, None);
        assert_eq!(workload("/kubepods/burstable/podnotauid").pod_uid, None);
    }

    #[test]
    fn proc_cgroup_v2_line() {
        assert_eq!(
            v2_path_in("0::/system.slice/ssh.service\n"),
            Some("/system.slice/ssh.service")
        );
        let hybrid = "12:cpu,cpuacct:/user.slice\n0::/user.slice/session-1.scope\n";
        assert_eq!(v2_path_in(hybrid), Some("/user.slice/session-1.scope"));
        assert_eq!(v2_path_in("1:name=systemd:/init.scope\n"), None);
        let me = workload_of_pid(std::process::id());
        assert!(me.is_some(), "our own /proc/self/cgroup has a v2 line");
    }
}
