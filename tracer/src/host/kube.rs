//! Pod and container names as people know them, from the directories the
//! kubelet keeps for container logs on every node (the CRI logging layout):
//!
//! - `/var/log/pods/<namespace>_<pod name>_<pod UID>/` for every pod;
//! - `/var/log/containers/<pod name>_<namespace>_<container name>-<container id>.log`
//!   for every container (symlinks into the pod's directory).
//!
//! Kubernetes names and namespaces are DNS labels/subdomains, which never
//! contain `_`, so the names split unambiguously. Reading two directory
//! listings needs no API server, token or network; a node without them (no
//! Kubernetes, or the DaemonSet without the hostPath mounts) just keeps the
//! pod UIDs and container ids the cgroup paths give.

use std::{collections::HashMap, fs, path::Path};

use crate::host::cgroup::Workload;

/// Where the kubelet keeps its log directories.
pub const LOG_ROOT: &str = "/var/log";

/// A pod's namespace and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

/// Names found on this node: pod UID → pod, container id → container name.
#[derive(Clone, Debug, Default)]
pub struct Names {
    pods: HashMap<String, PodName>,
    containers: HashMap<String, String>,
}

impl Names {
    /// The names under `root` (normally [`LOG_ROOT`]); empty where the
    /// directories are missing or unreadable.
    pub fn read(root: &Path) -> Self {
        let entries = |dir: &str| -> Vec<String> {
            fs::read_dir(root.join(dir))
                .map(|d| {
                    d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        Names::from_entries(&entries("pods"), &entries("containers"))
    }

    /// The names in two directory listings (file names only).
    pub fn from_entries(pod_dirs: &[String], container_logs: &[String]) -> Self {
        Names {
            pods: pod_dirs.iter().filter_map(|d| pod_dir(d)).collect(),
            containers: container_logs
                .iter()
                .filter_map(|f| container_log(f))
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.containers.is_empty()
    }

    /// `w` with its pod and container named, where this node knows them.
    pub fn name(&self, mut w: Workload) -> Workload {
        if let Some(p) = w.pod_uid.as_ref().and_then(|u| self.pods.get(u)) {
            w.pod = Some(format!("{}/{}", p.namespace, p.name));
        }
        if let Some(c) = w
            .container_id
            .as_ref()
            .and_then(|id| self.containers.get(id))
        {
            w.container_name = Some(c.clone());
        }
        w
    }
}

/// `<namespace>_<name>_<uid>` → (uid, pod).
fn pod_dir(dir: &str) -> Option<(String, PodName)> {
    let mut parts = dir.splitn(3, '_');
    let (namespace, name, uid) = (parts.next()?, parts.next()?, parts.next()?);
    let uid_ok = uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    (uid_ok && !namespace.is_empty() && !name.is_empty()).then(|| {
        let pod = PodName {
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        (uid.to_string(), pod)
    })
}

/// `<pod>_<namespace>_<container>-<id>.log` → (id, container).
fn container_log(file: &str) -> Option<(String, String)> {
    let stem = file.strip_suffix(".log")?;
    let mut parts = stem.splitn(3, '_');
    let (_pod, _namespace, rest) = (parts.next()?, parts.next()?, parts.next()?);
    let (container, id) = rest.rsplit_once('-')?;
    let id_ok = id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit());
    (id_ok && !container.is_empty()).then(|| (id.to_string(), container.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::cgroup::workload;

    const UID: &str = "5f0b9c2e-7d1a-4b8e-9f3c-2a6d8e4b1c07";
    const ID: &str = "8c1e4f2a9b7d6e5c3a1f0b9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c";

    #[test]
    fn pod_and_container_directories_as_the_kubelet_names_them() {
        let names = Names::from_entries(
            &[
                format!("kube-system_coredns-7db6d8ff4d-x2x9q_{UID}"),
                "not-a-pod".into(),
                "a_b_short-uid".into(),
            ],
            &[
                format!("coredns-7db6d8ff4d-x2x9q_kube-system_coredns-{ID}.log"),
                format!("web-0_shop_istio-proxy-{ID}.txt"),
                "web-0_shop_app-1234.log".into(),
            ],
        );
        assert_eq!(names.pods.len(), 1);
        assert_eq!(names.containers.len(), 1);
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{ID}.scope",
            UID.replace('-', "_")
        );
        let w = names.name(workload(&path));
        assert_eq!(
            w.pod.as_deref(),
            Some("kube-system/coredns-7db6d8ff4d-x2x9q")
        );
        assert_eq!(w.container_name.as_deref(), Some("coredns"));
        assert_eq!(
            w.name().as_deref(),
            Some("kube-system/coredns-7db6d8ff4d-x2x9q/coredns")
        );
    }

    #[test]
    fn container_names_with_dashes_keep_them() {
        let (id, name) = container_log(&format!("web-0_shop_istio-proxy-{ID}.log")).unwrap();
        assert_eq!((id.as_str(), name.as_str()), (ID, "istio-proxy"));
    }

    #[test]
    fn unknown_pods_keep_their_uid() {
        let names = Names::from_entries(&[], &[]);
        assert!(names.is_empty());
        let w = names.name(workload(&format!("/kubepods/besteffort/pod{UID}/{ID}")));
        assert_eq!(w.pod, None);
        assert_eq!(w.name(), Some(format!("pod {UID}/{}", &ID[..12])));
    }

    #[test]
    fn missing_directories_read_as_empty() {
        assert!(Names::read(Path::new("/nonexistent-kubelet-root")).is_empty());
    }
}
