//! The socket population of every network namespace, folded into one
//! `SocketTally`: the tracer's own namespace through sock_diag here, every
//! other one through sock_diag inside it (setns) or, without the privilege
//! for that, its /proc/PID/net/tcp{,6}. What could not be read is listed in
//! the coverage, never skipped silently.

use crate::{
    filter::FilterSpec,
    host::cgroup,
    host::diag,
    host::diag::DiagSocket,
    host::kube,
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

/// Read every namespace of `d` into `tally` (sockets matching `filter`).
/// The own namespace's sock_diag failing is an error; any other namespace
/// failing is reported in the coverage.
pub fn read_all(
    d: &netns::Discovery,
    filter: &FilterSpec,
    own_sysctls: &Sysctls,
    tally: &mut SocketTally,
) -> anyhow::Result<(Vec<NamespaceMeta>, Coverage)> {
    let mut cov = Coverage {
        own_netns: d.own,
        found: d.namespaces.len() as u64,
        processes_denied: d.processes_denied,
        ..Default::default()
    };
    let mut metas = Vec::new();
    let names = kube::Names::read(std::path::Path::new(kube::LOG_ROOT));
    for ns in &d.namespaces {
        let read = if ns.inode == d.own {
            read_own(ns.inode, filter, own_sysctls, tally).map(|()| "own")
        } else {
            read_other(ns, filter, tally)
        };
        match read {
            Ok(via) => {
                cov.read += 1;
                match via {
                    "setns" => cov.via_setns += 1,
                    "proc" => cov.via_proc += 1,
                    _ => {}
                }
                metas.push(NamespaceMeta {
                    netns: ns.inode,
                    names: ns.names.clone(),
                    pid: ns.pid,
                    workload: ns
                        .pid
                        .and_then(cgroup::workload_of_pid)
                        .map(|w| names.name(w)),
                    read_via: via,
                });
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
    Ok((metas, cov))
}

enum ReadError {
    Own(anyhow::Error),
    Ns(EnterError),
}

fn read_own(
    inode: u32,
    filter: &FilterSpec,
    sysctls: &Sysctls,
    tally: &mut SocketTally,
) -> Result<(), ReadError> {
    tally.begin_namespace(inode, Some(sysctls.ip_local_port_range));
    diag::dump_each(diag::population_states(), |s| add(filter, tally, &s))
        .map_err(|e| ReadError::Own(e.into()))
}

fn add(filter: &FilterSpec, tally: &mut SocketTally, s: &DiagSocket) {
    if filter.matches_socket(s) {
        tally.add(s);
    }
}

/// sock_diag inside the namespace; /proc/PID/net when entering is not
/// permitted. A read that fails half-way leaves nothing in the tally.
fn read_other(
    ns: &Namespace,
    filter: &FilterSpec,
    tally: &mut SocketTally,
) -> Result<&'static str, ReadError> {
    let entered = netns::within(ns, || {
        let range = Sysctls::read().ip_local_port_range;
        tally.begin_namespace(ns.inode, Some(range));
        diag::dump_each(diag::population_states(), |s| add(filter, tally, &s))
    });
    let err = match entered {
        Ok(Ok(())) => return Ok("setns"),
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
        Ok(()) if still_in(pid, ns.inode) => Ok("proc"),
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
