//! Least privilege after attach. Loading and attaching need CAP_BPF +
//! CAP_PERFMON (or CAP_SYS_ADMIN); once the programs are attached and the
//! maps, ring buffers and listening socket are open, each mode keeps only
//! what its later work needs and drops every other capability from all five
//! sets (effective, permitted, inheritable, ambient, bounding), and sets
//! no_new_privs, so neither a bug nor an exec can bring them back.
//!
//! What stays, and why:
//! - CAP_BPF, only when reading a map through an fd already open fails
//!   without it (kernels before 6.5 with `kernel.unprivileged_bpf_disabled`
//!   checked every bpf() call; 6.5 and later check map creation and program
//!   loads only). Found out by trying, not by version.
//!   The CLOSE_WAIT and connect ages are such reads too (the program's
//!   per-socket table, looked up by the cookies sock_diag lists).
//! - summary, serve (and top, record): CAP_SYS_ADMIN and CAP_SYS_PTRACE, when
//!   the tracer has them, to read every network namespace's population at
//!   each report or scrape: setns(2) into a namespace needs CAP_SYS_ADMIN,
//!   finding other processes' namespaces (/proc/PID/ns/net, or their
//!   /proc/PID/net/tcp when setns is not allowed) needs ptrace read access.
//!   Without them the report covers fewer namespaces and says which.
//! - summary (and record): CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH, when the tracer has
//!   them: the report names the process holding each CLOSE_WAIT leak from
//!   /proc/PID/fd of every process (searching another user's fd directory
//!   needs DAC_READ_SEARCH, reading its links ptrace read access). Without
//!   them, processes of other users are not found and the owner the kernel
//!   side captured is shown.
//! - events: nothing (an mmapped ring buffer). The exporter's metrics need
//!   no process names (its scrapes skip the /proc walk); sock_diag's plain
//!   dumps and the cgroup tree need no privileges.
//!
//! Capabilities are per thread: this runs on the only thread there is at
//! that point, so threads started later (the blocking pool) inherit the
//! reduced sets.

use caps::{CapSet, Capability, CapsHashSet};

/// What a mode may keep after attach (each only if the tracer has it).
pub fn wanted(mode: Mode) -> CapsHashSet {
    match mode {
        Mode::Events => CapsHashSet::new(),
        Mode::Serve => [Capability::CAP_SYS_ADMIN, Capability::CAP_SYS_PTRACE]
            .into_iter()
            .collect(),
        Mode::Summary => [
            Capability::CAP_SYS_ADMIN,
            Capability::CAP_SYS_PTRACE,
            Capability::CAP_DAC_READ_SEARCH,
        ]
        .into_iter()
        .collect(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Events,
    Summary,
    Serve,
}

/// The effective set before and after `drop_after_attach`.
#[derive(Clone, Debug)]
pub struct Dropped {
    pub before: CapsHashSet,
    pub kept: CapsHashSet,
}

#[derive(Debug, thiserror::Error)]
#[error("dropping capabilities after attach: {0}")]
pub struct PrivError(#[from] caps::errors::CapsError);

/// Drop every capability `mode` does not need any more. `map_read` reads one
/// kernel map through an open fd and says whether it worked; it is tried with
/// CAP_BPF and CAP_SYS_ADMIN lowered to learn whether CAP_BPF must stay.
pub fn drop_after_attach(mode: Mode, map_read: impl Fn() -> bool) -> Result<Dropped, PrivError> {
    let before = caps::read(None, CapSet::Effective)?;
    let permitted = caps::read(None, CapSet::Permitted)?;
    let mut keep: CapsHashSet = wanted(mode).intersection(&permitted).copied().collect();
    if permitted.contains(&Capability::CAP_BPF) || permitted.contains(&Capability::CAP_SYS_ADMIN) {
        let trial: CapsHashSet = permitted
            .iter()
            .copied()
            .filter(|c| *c != Capability::CAP_BPF && *c != Capability::CAP_SYS_ADMIN)
            .collect();
        caps::set(None, CapSet::Effective, &trial)?;
        let reads_unprivileged = map_read();
        caps::set(None, CapSet::Effective, &permitted)?;
        if !reads_unprivileged && permitted.contains(&Capability::CAP_BPF) {
            keep.insert(Capability::CAP_BPF);
        }
    }
    restrict_this_thread(&keep, &permitted)?;
    // Threads started before the drop (the flow harvest) follow it.
    let _ = KEPT.set(keep.clone());
    Ok(Dropped { before, kept: keep })
}

/// What the drop kept, once it happened: threads started before it apply
/// it to themselves (capabilities are per thread).
static KEPT: std::sync::OnceLock<CapsHashSet> = std::sync::OnceLock::new();

/// For a thread started before the drop: once the drop has happened, take
/// the same capabilities (and no more); true when done.
pub fn follow_drop() -> bool {
    let Some(keep) = KEPT.get() else {
        return false;
    };
    let permitted = caps::read(None, CapSet::Permitted).unwrap_or_default();
    if let Err(e) = restrict_this_thread(keep, &permitted) {
        log::warn!("dropping this thread's capabilities: {e}");
    }
    true
}

/// Shrink this thread's bounding set (where CAP_SETPCAP allows), clear its
/// ambient and inheritable sets, set no_new_privs and keep only `keep`.
fn restrict_this_thread(keep: &CapsHashSet, permitted: &CapsHashSet) -> Result<(), PrivError> {
    // The bounding set can only shrink while CAP_SETPCAP is effective.
    if permitted.contains(&Capability::CAP_SETPCAP) {
        for c in caps::read(None, CapSet::Bounding)? {
            if !keep.contains(&c) {
                caps::drop(None, CapSet::Bounding, c)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    set_no_new_privs();
    caps::set(None, CapSet::Effective, keep)?;
    caps::set(None, CapSet::Permitted, keep)?;
    Ok(())
}

fn set_no_new_privs() {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) takes no pointers; it only sets a
    // flag on this thread (inherited by threads and children created later).
    let r = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    if r != 0 {
        log::warn!("PR_SET_NO_NEW_PRIVS: {}", std::io::Error::last_os_error());
    }
}

/// `CAP_A CAP_B` (sorted), or `none`.
pub fn describe(set: &CapsHashSet) -> String {
    let mut names: Vec<String> = set.iter().map(|c| c.to_string()).collect();
    names.sort();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_summary_keeps_proc_access() {
        assert!(wanted(Mode::Events).is_empty());
        assert_eq!(
            describe(&wanted(Mode::Serve)),
            "CAP_SYS_ADMIN CAP_SYS_PTRACE"
        );
        assert_eq!(
            describe(&wanted(Mode::Summary)),
            "CAP_DAC_READ_SEARCH CAP_SYS_ADMIN CAP_SYS_PTRACE"
        );
        assert_eq!(describe(&CapsHashSet::new()), "none");
    }
}
