//! The listener side of the handshake that `inet_sock_set_state` does not
//! show: SYN-ACK retransmits (`tcp:tcp_retransmit_synack`, a tp_btf program
//! of its own that runs only when a SYN-ACK is resent) and completed
//! handshakes, both per listening port (`ListenerKey`) in `LISTENER_STATS`.
//! Both honour the filters like a transition of the listener would, with
//! the client's tuple where the kernel gives it.

use aya_ebpf::{
    bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns, macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tracer_common::{
    counter, event_kind, ListenerKey, ListenerStats, SockState, Stats, AF_INET, AF_INET6,
};

use crate::{
    filter::{verdict, Verdict},
    ld, listener,
    maps::{bump, stats, LISTENER_STATS},
    output::{self, EventFacts},
    sock::{self, Ends},
};

/// `tcp_retransmit_synack(const struct sock *sk, const struct request_sock *req)`:
/// `sk` is the listener, `req` the pending connection request, whose
/// `sock_common` (its first member) holds the client's address and port.
/// The kernel fires it after a SYN-ACK was resent, where it also counts
/// TcpExtTCPSynRetrans.
#[btf_tracepoint(function = "tcp_retransmit_synack")]
pub fn tcp_retransmit_synack(ctx: BtfTracePointContext) -> i32 {
    let (sk, req): (*const u8, *const u8) = (ctx.arg(0), ctx.arg(1));
    on_synack_retransmit(sk, req);
    0
}

#[inline(always)]
fn on_synack_retransmit(sk: *const u8, req: *const u8) {
    let Some(stats) = stats() else { return };
    // The two skips below share counters with the transition program; they
    // do not happen on a TCP listener once loaded (kept as guards).
    if ld!(OFFSETS.valid) == 0 {
        bump(stats, counter::SKIPPED_NO_OFFSETS);
        return;
    }
    let family = sock::family(sk);
    if family != AF_INET && family != AF_INET6 {
        bump(stats, counter::SKIPPED_OTHER);
        return;
    }
    // The request carries the full tuple: local port = the listener's.
    let ends = sock::ends(req, family, false);
    let remote = || {
        let (mut r, mut l) = ([0u8; 16], [0u8; 16]);
        sock::addrs(req, ends.family, &mut r, &mut l);
        r
    };
    let Some(st) = listener_state(stats, sk, &ends, counter::SYNACK_FILTERED_OUT, remote) else {
        return;
    };
    bump(stats, counter::SYNACK_RETRANSMITS);
    add(stats, st.netns, ends.lport, Figure::SynackRetransmit);
    let facts = EventFacts {
        // SAFETY: helper without arguments.
        ts: unsafe { bpf_ktime_get_ns() },
        kind: event_kind::SYNACK_RETRANSMIT,
        ..EventFacts::default()
    };
    output::emit(req, &ends, &st, &facts);
}

/// The listener's owner and namespace as a socket state, if the filters
/// keep this event (counted in the caller's `filtered_out` slot if not);
/// `remote` gives the client's address when a filter needs it.
#[inline(always)]
pub fn listener_state(
    stats: &mut Stats,
    sk: *const u8,
    ends: &Ends,
    filtered_out: u32,
    remote: impl FnOnce() -> [u8; 16],
) -> Option<SockState> {
    let netns = sock::netns(sk);
    let mut st = SockState {
        netns,
        ..SockState::default()
    };
    if let Some(o) = listener::owner_of(netns, ends.lport) {
        st.tgid = o.tgid;
        st.comm = o.comm;
        st.cgroup_id = o.cgroup_id;
        st.flags |= tracer_common::flag::OWNER_KNOWN;
    }
    if verdict(ends, &st, netns, true, remote) != Verdict::Match {
        bump(stats, filtered_out);
        return None;
    }
    Some(st)
}

/// A handshake of a child of listening port `lport` completed (its
/// SYN_RECV → ESTABLISHED, already past the filters).
#[inline(always)]
pub fn on_accept(stats: &mut Stats, netns: u32, lport: u16) {
    add(stats, netns, lport, Figure::Accept);
}

/// Zeroed value to insert new rows from (a static, so the helper takes it).
static ZERO: ListenerStats = ListenerStats {
    synack_retransmits: 0,
    accepts: 0,
};

/// Which figure of a port's row to bump. Each has one writer program
/// (and each program its own table-full counter), so the two programs
/// never write the same per-CPU word, even when one interrupts the other.
#[derive(Clone, Copy)]
enum Figure {
    SynackRetransmit,
    Accept,
}

/// A frame of its own, off the transition program's deepest call chain.
#[inline(never)]
fn add(stats: &mut Stats, netns: u32, port: u16, figure: Figure) {
    let key = ListenerKey {
        netns,
        port,
        _pad: 0,
    };
    let mut p = LISTENER_STATS.get_ptr_mut(&key);
    if p.is_none() {
        // EEXIST from a racing CPU is fine: the lookup below finds its entry.
        let _ = LISTENER_STATS.insert(&key, &ZERO, BPF_NOEXIST as u64);
        p = LISTENER_STATS.get_ptr_mut(&key);
    }
    match p {
        // SAFETY: per-CPU value of this CPU; a program does not nest in
        // itself on a CPU, and the field is this program's only (`Figure`).
        Some(s) => unsafe {
            match figure {
                Figure::SynackRetransmit => (*s).synack_retransmits += 1,
                Figure::Accept => (*s).accepts += 1,
            }
        },
        None => bump(
            stats,
            match figure {
                Figure::SynackRetransmit => counter::SYNACK_LISTENER_STATS_FULL,
                Figure::Accept => counter::LISTENER_STATS_FULL,
            },
        ),
    }
}
