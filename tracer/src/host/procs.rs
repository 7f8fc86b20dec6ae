//! Socket inode → owning process, by scanning /proc/*/fd (what `ss -p` does).
//! Used once at start-up for listeners that predate the tracer.

use std::{collections::HashMap, fs};

use tracer_common::{Owner, TASK_COMM_LEN};

/// Owners of the given socket inodes. Processes that vanish or deny access
/// mid-scan are skipped.
pub fn socket_owners(inodes: &[u32]) -> HashMap<u32, Owner> {
    let mut out = HashMap::new();
    if inodes.is_empty() {
        return out;
    }
    let Ok(procs) = fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = parse_socket_link(&target.to_string_lossy()) else {
                continue;
            };
            if inodes.contains(&inode) && !out.contains_key(&inode) {
                let comm = fs::read_to_string(p.path().join("comm")).unwrap_or_default();
                let mut owner = Owner {
                    tgid: pid,
                    ..Owner::default()
                };
                let c = comm.trim_end().as_bytes();
                let n = c.len().min(TASK_COMM_LEN - 1);
                owner.comm[..n].copy_from_slice(&c[..n]);
                out.insert(inode, owner);
            }
        }
    }
    out
}

/// "socket:[12345]" → 12345.
pub fn parse_socket_link(s: &str) -> Option<u32> {
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links() {
        assert_eq!(parse_socket_link("socket:[12345]"), Some(12345));
        assert_eq!(parse_socket_link("pipe:[1]"), None);
        assert_eq!(parse_socket_link("socket:[x]"), None);
    }

    #[test]
    fn finds_our_own_socket() {
        use std::os::unix::fs::MetadataExt;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd;
        let inode = fs::metadata(format!("/proc/self/fd/{}", l.as_raw_fd()))
            .unwrap()
            .ino() as u32;
        let owners = socket_owners(&[inode]);
        assert_eq!(owners[&inode].tgid, std::process::id());
    }
}
