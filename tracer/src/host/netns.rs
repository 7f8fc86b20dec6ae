//! Network namespaces: finding every one on the host, reading the sockets of
//! each, and the `--netns` selector.
//!
//! A namespace is named by its inode (what `ls -l /proc/PID/ns/net` shows as
//! `net:[4026531840]`). It is found the way container tools find them: the
//! `ns/net` link of every process in /proc (with a representative pid), and
//! every nsfs bind mount in our mountinfo (`ip netns add` puts them under
//! /run/netns; runtimes use their own directories). The sockets of a
//! namespace are read by one of two roads:
//!
//! - **setns**: a fresh OS thread enters the namespace (`setns(CLONE_NEWNET)`,
//!   needs CAP_SYS_ADMIN; opening another process's /proc/PID/ns/net needs
//!   CAP_SYS_PTRACE), opens its NETLINK_SOCK_DIAG socket there, dumps, and
//!   exits. The rest of the process never changes namespace, and nothing is
//!   kept open afterwards (an open socket would keep a deleted namespace alive).
//! - **proc**: /proc/PID/net/tcp and tcp6 of a process inside it, readable
//!   without privileges. No socket cookies (so no exact CLOSE_WAIT age) and
//!   the namespace's sysctls are not readable this way.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, BufRead as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::{fd::AsRawFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use crate::host::diag::DiagSocket;

/// Where nsfs bind mounts of `ip netns` live.
pub const RUN_NETNS: &[&str] = &["/run/netns", "/var/run/netns"];

/// One network namespace of the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Namespace {
    /// The namespace's inode number.
    pub inode: u32,
    /// A process inside it (the first found that is not a pod's `pause`).
    pub pid: Option<u32>,
    /// Its /run/netns names.
    pub names: Vec<String>,
    /// Bind mounts of it (including the /run/netns ones): files to enter it by.
    pub mounts: Vec<PathBuf>,
}

impl Namespace {
    /// Files that refer to this namespace, best first.
    fn files(&self) -> Vec<PathBuf> {
        let mut out = self.mounts.clone();
        if let Some(pid) = self.pid {
            out.push(PathBuf::from(format!("/proc/{pid}/ns/net")));
        }
        out
    }

    /// "4026532246 (blue)" / "4026532246 (pid 812)".
    pub fn describe(&self) -> String {
        match (self.names.first(), self.pid) {
            (Some(n), _) => format!("{} ({n})", self.inode),
            (None, Some(p)) => format!("{} (pid {p})", self.inode),
            (None, None) => self.inode.to_string(),
        }
    }
}

/// Every namespace found, the tracer's own first.
#[derive(Clone, Debug, Default)]
pub struct Discovery {
    pub own: u32,
    pub namespaces: Vec<Namespace>,
    /// Processes whose namespace link we were not allowed to read (no
    /// CAP_SYS_PTRACE): their namespaces are missing unless bind-mounted.
    pub processes_denied: u64,
}

/// "net:[4026531840]" → 4026531840.
pub fn parse_ns_link(s: &str) -> Option<u32> {
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// The inode of the namespace a path refers to (a /proc/PID/ns/net link or
/// an nsfs bind mount).
pub fn inode_of(path: &Path) -> io::Result<u32> {
    if let Ok(target) = fs::read_link(path) {
        if let Some(i) = parse_ns_link(&target.to_string_lossy()) {
            return Ok(i);
        }
    }
    let md = fs::metadata(path)?;
    // nsfs files have inode = the namespace's number; anything else is not one.
    if md.dev() != nsfs_dev()? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a network namespace", path.display()),
        ));
    }
    u32::try_from(md.ino()).map_err(|_| io::Error::other("namespace inode beyond 32 bits"))
}

/// The device number of nsfs, from our own namespace link.
fn nsfs_dev() -> io::Result<u64> {
    Ok(fs::metadata("/proc/self/ns/net")?.dev())
}

/// The tracer's own network namespace.
pub fn own() -> io::Result<u32> {
    inode_of(Path::new("/proc/self/ns/net"))
}

/// nsfs bind mounts of network namespaces in a mountinfo text:
/// (mount point, inode).
pub fn nsfs_mounts_in(mountinfo: &str) -> Vec<(PathBuf, u32)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            if post.split_whitespace().next()? != "nsfs" {
                return None;
            }
            let mut f = pre.split_whitespace();
            let inode = parse_ns_link(f.nth(3)?)?;
            let mount = f.next()?;
            Some((PathBuf::from(crate::host::cgroup::unescape(mount)), inode))
        })
        .collect()
}

/// The /run/netns name of a mount point, if it is one.
fn run_netns_name(p: &Path) -> Option<String> {
    let dir = p.parent()?.to_str()?;
    RUN_NETNS
        .contains(&dir)
        .then(|| p.file_name()?.to_str().map(String::from))
        .flatten()
}

/// Find every network namespace this process can see.
pub fn discover() -> io::Result<Discovery> {
    let own = own()?;
    let mut by_inode: BTreeMap<u32, Namespace> = BTreeMap::new();
    by_inode.insert(
        own,
        Namespace {
            inode: own,
            pid: Some(std::process::id()),
            ..Default::default()
        },
    );
    let mut denied = 0;
    // With CAP_SYS_PTRACE a refusal is a race with exec or exit, not a
    // hidden namespace.
    let may_ptrace = caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_PTRACE,
    )
    .unwrap_or(false);
    for entry in fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let inode = match fs::read_link(entry.path().join("ns/net")) {
            Ok(t) => parse_ns_link(&t.to_string_lossy()),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied && !may_ptrace => {
                denied += 1;
                None
            }
            Err(_) => None, // exited, or a kernel thread
        };
        let Some(inode) = inode else { continue };
        let ns = by_inode.entry(inode).or_insert_with(|| Namespace {
            inode,
            ..Default::default()
        });
        if inode != own && ns.pid.is_none_or(|p| is_pause(p) && !is_pause(pid)) {
            ns.pid = Some(pid);
        }
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for (mount, inode) in nsfs_mounts_in(&mountinfo) {
        let ns = by_inode.entry(inode).or_insert_with(|| Namespace {
            inode,
            ..Default::default()
        });
        if let Some(n) = run_netns_name(&mount) {
            if !ns.names.contains(&n) {
                ns.names.push(n);
            }
        }
        if !ns.mounts.contains(&mount) {
            ns.mounts.push(mount);
        }
    }
    let mut namespaces: Vec<Namespace> = by_inode.into_values().collect();
    namespaces.sort_by_key(|n| (n.inode != own, n.inode));
    Ok(Discovery {
        own,
        namespaces,
        processes_denied: denied,
    })
}

/// A pod's sandbox process: it holds the pod's namespace, the workload runs
/// beside it.
fn is_pause(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_end() == "pause")
}

/// Why a namespace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    /// The namespace is gone (its last process exited / it was deleted).
    #[error("the namespace no longer exists")]
    Vanished,
    #[error("not permitted: {0} (entering a network namespace needs CAP_SYS_ADMIN, opening another process's /proc/PID/ns/net CAP_SYS_PTRACE)")]
    NotPermitted(String),
    #[error("{0}")]
    Other(String),
}

impl EnterError {
    fn from_io(what: &str, e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::ENOENT | libc::ESRCH) => EnterError::Vanished,
            Some(libc::EPERM | libc::EACCES) => EnterError::NotPermitted(format!("{what}: {e}")),
            _ => EnterError::Other(format!("{what}: {e}")),
        }
    }
}

/// Run `f` in a fresh OS thread that has entered `ns` (setns CLONE_NEWNET):
/// netlink sockets it opens and /proc/sys/net it reads are that namespace's.
/// The calling thread's namespace never changes.
pub fn within<T: Send>(ns: &Namespace, f: impl FnOnce() -> T + Send) -> Result<T, EnterError> {
    let files = ns.files();
    if files.is_empty() {
        // Only a `--netns` inode that nothing visible refers to gets here.
        return Err(EnterError::Other(
            "not found: no process (whose /proc/PID/ns/net we may read) and no bind mount refers to it".into(),
        ));
    }
    let mut last = EnterError::Vanished;
    for path in files {
        let file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) => {
                last = EnterError::from_io(&path.display().to_string(), e);
                continue;
            }
        };
        // A reused pid or a re-mounted name may point elsewhere by now.
        match file.metadata() {
            Ok(md) if md.ino() == u64::from(ns.inode) => {}
            _ => continue,
        }
        return std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: setns on a valid fd we own, in a thread of our own
                // that ends with `f`; CLONE_NEWNET changes only this thread.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(EnterError::from_io("setns", io::Error::last_os_error()));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| EnterError::Other("the namespace reader thread panicked".into()))?
        });
    }
    Err(last)
}

/// The sockets of `pid`'s namespace from /proc/PID/net/tcp and tcp6, in the
/// states of `state_mask` (as for sock_diag). Cookies are not there (0).
pub fn proc_sockets(
    pid: u32,
    state_mask: u32,
    mut f: impl FnMut(DiagSocket),
) -> Result<(), EnterError> {
    for file in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{file}");
        let fh = match fs::File::open(&path) {
            Ok(fh) => fh,
            // No IPv6 in that namespace's kernel config: nothing to read.
            Err(e) if file == "tcp6" && e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(EnterError::from_io(&path, e)),
        };
        for line in io::BufReader::new(fh).lines().skip(1) {
            let line = line.map_err(|e| EnterError::from_io(&path, e))?;
            if let Some(s) = parse_proc_tcp_line(&line) {
                if state_mask & (1 << s.state) != 0 {
                    f(s);
                }
            }
        }
    }
    Ok(())
}

/// One line of /proc/net/tcp{,6}: `sl local rem st queues tr retrnsmt uid
/// timeout inode ...`. Addresses are the kernel's 32-bit words printed in
/// host order (`%08X`), ports in host order.
pub fn parse_proc_tcp_line(line: &str) -> Option<DiagSocket> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 10 {
        return None;
    }
    let (src, sport) = parse_endpoint(f[1])?;
    let (dst, dport) = parse_endpoint(f[2])?;
    Some(DiagSocket {
        state: u8::from_str_radix(f[3], 16).ok()?,
        src,
        sport,
        dst,
        dport,
        cookie: 0,
        inode: f[9].parse().ok()?,
        uid: f[7].parse().ok()?,
    })
}

fn parse_endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(a.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match a.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some((ip, port))
}

/// What `--netns` names: an inode, a /run/netns name, or `pid:PID`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    Inode(u32),
    Name(String),
    Pid(u32),
}

impl std::str::FromStr for Selector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(p) = s.strip_prefix("pid:") {
            return p
                .parse()
                .map(Selector::Pid)
                .map_err(|_| format!("pid:{p}: not a process id"));
        }
        if let Some(i) = parse_ns_link(s) {
            return Ok(Selector::Inode(i));
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(Selector::Inode)
                .map_err(|_| format!("{s}: namespace inodes are 32-bit"));
        }
        if s.is_empty() || s.contains('/') || s == "." || s == ".." {
            return Err(format!(
                "{s:?}: expected an inode number, a /run/netns name or pid:PID"
            ));
        }
        Ok(Selector::Name(s.to_string()))
    }
}

impl Selector {
    /// The namespace's inode.
    pub fn resolve(&self) -> Result<u32, String> {
        match self {
            Selector::Inode(i) => Ok(*i),
            Selector::Pid(p) => {
                let path = format!("/proc/{p}/ns/net");
                inode_of(Path::new(&path)).map_err(|e| {
                    format!("--netns pid:{p}: {path}: {e} (another user's process needs CAP_SYS_PTRACE)")
                })
            }
            Selector::Name(n) => {
                let found = RUN_NETNS
                    .iter()
                    .map(|d| Path::new(d).join(n))
                    .find(|p| p.exists());
                let Some(path) = found else {
                    return Err(format!(
                        "--netns {n}: no such namespace in {}",
                        RUN_NETNS.join(" or ")
                    ));
                };
                inode_of(&path).map_err(|e| format!("--netns {n}: {}: {e}", path.display()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_links() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("mnt:[4026531840]"), None);
        assert_eq!(parse_ns_link("net:[x]"), None);
    }

    #[test]
    fn nsfs_bind_mounts_from_mountinfo() {
        let mi = "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n\
                  42 26 0:25 / /run/netns rw shared:2 - tmpfs tmpfs rw\n\
                  43 42 0:4 net:[4026532246] /run/netns/blue rw shared:2 - nsfs nsfs rw\n\
                  51 26 0:4 net:[4026532300] /run/docker/netns/1a2b3c rw - nsfs nsfs rw\n\
                  52 26 0:4 mnt:[4026532301] /run/mnt-ns rw - nsfs nsfs rw\n\
                  53 26 0:4 net:[4026532302] /var/run/netns/with\\040space rw - nsfs nsfs rw\n";
        let m = nsfs_mounts_in(mi);
        assert_eq!(
            m,
            vec![
                (PathBuf::from("/run/netns/blue"), 4026532246),
                (PathBuf::from("/run/docker/netns/1a2b3c"), 4026532300),
                (PathBuf::from("/var/run/netns/with space"), 4026532302),
            ]
        );
        assert_eq!(run_netns_name(&m[0].0).as_deref(), Some("blue"));
        assert_eq!(run_netns_name(&m[1].0), None);
        assert_eq!(run_netns_name(&m[2].0).as_deref(), Some("with space"));
    }

    #[test]
    fn proc_net_tcp_lines() {
        // Real lines (x86_64): a listener, a TIME_WAIT minisock, an IPv6
        // v4-mapped established socket.
        let listen = "   0: 0100007F:2328 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0";
        let s = parse_proc_tcp_line(listen).unwrap();
        assert_eq!(s.src, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            (s.sport, s.dport, s.state, s.inode, s.uid),
            (9000, 0, 10, 123456, 0)
        );
        let tw = "   1: 0100007F:2328 0100007F:D8C2 06 00000000:00000000 03:000016D5 00000000     0        0 0 3 0000000000000000";
        let s = parse_proc_tcp_line(tw).unwrap();
        assert_eq!((s.state, s.dport, s.inode), (6, 0xD8C2, 0));
        let v6 = "   0: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000200007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 777 1 0000000000000000 20 4 30 10 -1";
        let s = parse_proc_tcp_line(v6).unwrap();
        assert_eq!(s.src, "::ffff:127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(s.dst, "::ffff:127.0.0.2".parse::<IpAddr>().unwrap());
        assert_eq!((s.sport, s.dport, s.state, s.uid), (8080, 50000, 1, 1000));
        let lo6 = "   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 9 1 0";
        assert_eq!(
            parse_proc_tcp_line(lo6).unwrap().src,
            "::1".parse::<IpAddr>().unwrap()
        );
        assert!(parse_proc_tcp_line("  sl  local_address rem_address   st tx_queue").is_none());
        assert!(parse_proc_tcp_line("   0: 0100007F:ZZZZ 00000000:0000 0A 0 0 0 0 0 1").is_none());
    }

    #[test]
    fn our_own_namespace_reads_both_ways() {
        let own = own().unwrap();
        let me = std::process::id();
        assert_eq!(Selector::Pid(me).resolve(), Ok(own));
        assert_eq!(
            inode_of(Path::new(&format!("/proc/{me}/ns/net"))).unwrap(),
            own
        );
        // A listener of ours shows in /proc/self/net/tcp.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let mut found = false;
        proc_sockets(me, 1 << 10, |s| found |= s.sport == port).unwrap();
        assert!(found, "listener on {port} not in /proc/{me}/net/tcp");
        assert!(Selector::Name("no-such-netns-here".into())
            .resolve()
            .is_err());
        assert!(inode_of(Path::new("/proc/self/status")).is_err());
    }

    #[test]
    fn selectors() {
        let p = |s: &str| s.parse::<Selector>();
        assert_eq!(p("4026531840"), Ok(Selector::Inode(4026531840)));
        assert_eq!(p("net:[4026531840]"), Ok(Selector::Inode(4026531840)));
        assert_eq!(p("pid:1"), Ok(Selector::Pid(1)));
        assert_eq!(p("blue"), Ok(Selector::Name("blue".into())));
        for bad in ["", "pid:x", "99999999999", "../etc", "a/b", ".."] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }
}
