//! The socket population of every network namespace, folded into one
//! `SocketTally`: the tracer's own namespace through sock_diag here, every
//! other one through sock_diag inside it (setns) or, without the privilege
//! for that, its /proc/PID/net/tcp{,6}. What could not be read is listed in
//! the coverage, never skipped silently.
//!
//! The same sock_diag dump (one per namespace, both families in one walk
//! of the kernel's whole established hash, shared by every namespace, so
//! it is the cost of a report) also yields the connecting and CLOSE_WAIT sockets,
//! whose kernel-side state (by cookie) gives the connect and CLOSE_WAIT
//! ages; a LISTEN-only dump (no established-hash walk) gives the listeners
//! with their queue figures.

use std::collections::HashMap;

use tracer_common::{state, SockState};

use crate::{
    filter::FilterSpec,
    host::cgroup,
    host::diag::{self, DiagDetail, DiagError, DiagSocket, ExtensionFlags},
    host::diag_storage::{self, SocketTables},
    host::kube,
    host::listeners::{self, ListenSysctls},
    host::netns::{self, EnterError, Namespace},
    report::{Coverage, NamespaceMeta, SocketTally, Sysctls, Unreadable},
};

/// The namespaces to read: all of them, or the `--netns` one.
pub fn namespaces(filter: &FilterSpec) -> anyhow::Result<netns::Discovery> {
    let mut d = netns::discover()?;
    if let Some(want) = filter.netns {
        d.namespaces.retain(|n| n.inode == want);
        if d.namespaces.is_empty() {
            // Not found (gone, or hidden from us): say so in the coverage.
            d.namespaces.push(Namespace {
                inode: want,
                ..Default::default()
            });
        }
    }
    Ok(d)
}

/// What a report reads of the namespaces besides their population.
#[derive(Debug, Default)]
pub struct Read {
    pub namespaces: Vec<NamespaceMeta>,
    pub coverage: Coverage,
    /// The namespaces read through sock_diag, with their listening and
    /// connecting sockets.
    pub listen: Vec<listeners::Namespace>,
    /// The kernel side's state of the CLOSE_WAIT sockets, by cookie
    /// (cookies are unique host-wide).
    pub close_wait_states: HashMap<u64, SockState>,
}

/// Read every namespace of `d` into `tally` (sockets matching `filter`),
/// with `socks` (the kernel side's per-socket table) for the sockets'
/// kernel-side state. The own namespace's sock_diag failing is an error;
/// any other namespace failing is reported in the coverage.
pub fn read_all(
    d: &netns::Discovery,
    filter: &FilterSpec,
    own_sysctls: &Sysctls,
    socks: Option<SocketTables<'_>>,
    tally: &mut SocketTally,
) -> anyhow::Result<Read> {
    let mut out = Read {
        coverage: Coverage {
            own_netns: d.own,
            found: d.namespaces.len() as u64,
            processes_denied: d.processes_denied,
            ..Default::default()
        },
        ..Default::default()
    };
    let names = kube::Names::read(std::path::Path::new(kube::LOG_ROOT));
    let cov = &mut out.coverage;
    for ns in &d.namespaces {
        let read = if ns.inode == d.own {
            let range = own_sysctls.ip_local_port_range;
            read_diag(ns.inode, range, filter, socks, tally)
                .map(|r| ("own", Some(r)))
                .map_err(|e| ReadError::Own(e.into()))
        } else {
            read_other(ns, filter, socks, tally)
        };
        match read {
            Ok((via, diag)) => {
                cov.read += 1;
                match via {
                    "setns" => cov.via_setns += 1,
                    "proc" => cov.via_proc += 1,
                    _ => {}
                }
                out.namespaces.push(NamespaceMeta {
                    netns: ns.inode,
                    names: ns.names.clone(),
                    pid: ns.pid,
                    workload: ns
                        .pid
                        .and_then(cgroup::workload_of_pid)
                        .map(|w| names.name(w)),
                    read_via: via,
                });
                if let Some(r) = diag {
                    out.close_wait_states.extend(r.close_wait_states);
                    out.listen.push(r.listen);
                }
            }
            Err(ReadError::Own(e)) => return Err(e),
            Err(ReadError::Ns(EnterError::Vanished)) => cov.vanished += 1,
            Err(ReadError::Ns(e)) => cov.unreadable.push(Unreadable {
                netns: ns.inode,
                names: ns.names.clone(),
                pid: ns.pid,
                error: e.to_string(),
            }),
        }
    }
    cov.complete = cov.unreadable.is_empty() && cov.processes_denied == 0;
    Ok(out)
}

enum ReadError {
    Own(anyhow::Error),
    Ns(EnterError),
}

/// What one namespace's sock_diag dumps yield besides its population.
struct DiagRead {
    listen: listeners::Namespace,
    /// The cookies of its CLOSE_WAIT sockets.
    close_wait: Vec<u64>,
    /// Their kernel-side state, where `look_up` found one.
    close_wait_states: HashMap<u64, SockState>,
}

/// The calling thread's namespace (`netns`, whose port range is `range`)
/// through sock_diag: its population into `tally`, the rest returned. Two
/// dumps, each of both families: every state but LISTEN without extensions (the walk
/// of the kernel's established hash, the cost of a report), and LISTEN
/// alone with the memory figures (`drops`; no established-hash walk). The
/// kernel side's state of its SYN_SENT and CLOSE_WAIT sockets is then
/// looked up by cookie; a failed lookup costs the ages only. A read that
/// fails leaves nothing in the tally.
fn read_diag(
    netns: u32,
    range: (u16, u16),
    filter: &FilterSpec,
    socks: Option<SocketTables<'_>>,
    tally: &mut SocketTally,
) -> Result<DiagRead, DiagError> {
    let got = dump_one(netns, range, filter, tally);
    let Ok(mut read) = got else {
        tally.forget_namespace(netns);
        return got;
    };
    if let Some(fd) = socks {
        if let Err(e) = read.look_up(fd) {
            log::debug!("kernel-side socket states in netns {netns}: {e}: no ages there");
        }
    }
    Ok(read)
}

fn dump_one(
    netns: u32,
    range: (u16, u16),
    filter: &FilterSpec,
    tally: &mut SocketTally,
) -> Result<DiagRead, DiagError> {
    tally.begin_namespace(netns, Some(range));
    let mut out = DiagRead {
        listen: listeners::Namespace {
            netns,
            sockets: Vec::new(),
            sysctls: ListenSysctls::read(),
        },
        close_wait: Vec::new(),
        close_wait_states: HashMap::new(),
    };
    let none = ExtensionFlags::empty();
    diag::dump_detail_each(diag::population_states(), none, |d| {
        out.add(filter, tally, d)
    })?;
    let listening = diag::states(&[state::LISTEN]);
    diag::dump_detail_each(listening, ExtensionFlags::SKMEMINFO, |d| {
        out.listen.sockets.push(d)
    })?;
    Ok(out)
}

impl DiagRead {
    /// One socket of the population dump: counted, and kept where a later
    /// section reads it (connects in flight, CLOSE_WAIT ages).
    fn add(&mut self, filter: &FilterSpec, tally: &mut SocketTally, d: DiagDetail) {
        add(filter, tally, &d.socket);
        match d.socket.state {
            state::CLOSE_WAIT => self.close_wait.push(d.socket.cookie),
            state::SYN_SENT => self.listen.sockets.push(d),
            _ => {}
        }
    }

    /// The kernel side's state of the kept SYN_SENT and CLOSE_WAIT sockets.
    fn look_up(&mut self, fd: SocketTables<'_>) -> Result<(), DiagError> {
        let connects = self
            .listen
            .sockets
            .iter()
            .filter(|d| d.socket.state == state::SYN_SENT);
        let cookies = connects.map(|d| d.socket.cookie);
        let wanted: Vec<u64> = cookies.chain(self.close_wait.iter().copied()).collect();
        let mut states = diag_storage::states_of(fd, wanted)?;
        for d in &mut self.listen.sockets {
            d.kernel_state = states.get(&d.socket.cookie).copied();
        }
        for c in &self.close_wait {
            if let Some(st) = states.remove(c) {
                self.close_wait_states.insert(*c, st);
            }
        }
        Ok(())
    }
}

fn add(filter: &FilterSpec, tally: &mut SocketTally, s: &DiagSocket) {
    if filter.matches_socket(s) {
        tally.add(s);
    }
}

/// sock_diag inside the namespace; /proc/PID/net when entering is not
/// permitted (then only the population: no cookies, queues or sysctls).
/// A read that fails half-way leaves nothing in the tally.
fn read_other(
    ns: &Namespace,
    filter: &FilterSpec,
    socks: Option<SocketTables<'_>>,
    tally: &mut SocketTally,
) -> Result<(&'static str, Option<DiagRead>), ReadError> {
    let entered = netns::within(ns, || {
        let range = Sysctls::read().ip_local_port_range;
        read_diag(ns.inode, range, filter, socks, tally)
    });
    let err = match entered {
        Ok(Ok(r)) => return Ok(("setns", Some(r))),
        Ok(Err(e)) => EnterError::Other(format!("sock_diag inside the namespace: {e}")),
        Err(e) => e,
    };
    tally.forget_namespace(ns.inode);
    let (EnterError::NotPermitted(_), Some(pid)) = (&err, ns.pid) else {
        return Err(ReadError::Ns(err));
    };
    tally.begin_namespace(ns.inode, None);
    match netns::proc_sockets(pid, diag::population_states(), |s| add(filter, tally, &s)) {
        // The pid may have moved on: make sure it is still in the namespace.
        Ok(()) if still_in(pid, ns.inode) => Ok(("proc", None)),
        Ok(()) => {
            tally.forget_namespace(ns.inode);
            Err(ReadError::Ns(EnterError::Vanished))
        }
        Err(e) => {
            tally.forget_namespace(ns.inode);
            Err(ReadError::Ns(match e {
                EnterError::Vanished => EnterError::Vanished,
                other => EnterError::Other(format!("{err}; /proc/{pid}/net/tcp: {other}")),
            }))
        }
    }
}

fn still_in(pid: u32, inode: u32) -> bool {
    netns::inode_of(std::path::Path::new(&format!("/proc/{pid}/ns/net"))).is_ok_and(|i| i == inode)
}

/// Listening sockets of every namespace that can be read: (netns, local
/// port, socket inode). For seeding the owners of listeners that predate
/// the tracer, per namespace.
pub fn listeners(d: &netns::Discovery) -> Vec<(u32, u16, u32)> {
    let mask = diag::states(&[tracer_common::state::LISTEN]);
    let mut out = Vec::new();
    for ns in &d.namespaces {
        let mut found = Vec::new();
        let mut keep = |s: DiagSocket| found.push((ns.inode, s.sport, s.inode));
        let ok = if ns.inode == d.own {
            diag::dump_each(mask, &mut keep).is_ok()
        } else {
            match netns::within(ns, || diag::dump_each(mask, &mut keep)) {
                Ok(r) => r.is_ok(),
                Err(_) => ns
                    .pid
                    .is_some_and(|pid| netns::proc_sockets(pid, mask, &mut keep).is_ok()),
            }
        };
        if ok {
            out.extend(found);
        }
    }
    out
}
