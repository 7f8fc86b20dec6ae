//! What one TCP state transition contributes to the aggregates.
//!
//! The eBPF program applies these effects to its maps; unit tests replay
//! synthetic transition sequences through the same function, so the meaning of
//! every counter is defined once, here.

use crate::{close, close_path, counter, dir, errno, hist_kind, state, FlowStats, SockState};

/// Sentinel for "no counter" / "no histogram".
pub const NONE: u32 = u32::MAX;

/// When a transition touches the connection's flow row.
pub mod flow_point {
    pub const NONE: u8 = 0;
    /// → ESTABLISHED: the connection and its handshake.
    pub const ESTABLISHED: u8 = 1;
    /// → CLOSE: how it ended, its close paths, lifetime and bytes.
    pub const CLOSE: u8 = 2;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effects {
    /// `close::*` for transitions into CLOSE, else `close::NONE`.
    pub close_kind: u8,
    /// Up to three `counter::*` slots to bump (`NONE` = unused).
    pub counters: [u32; 3],
    /// `hist_kind::*` to record the handshake latency in, or `NONE`.
    pub hist: u32,
    /// At → CLOSE: the `close_path::*` bits the connection took
    /// (`machine::close_paths`).
    pub close_paths: u8,
    /// `flow_point::*`.
    pub flow: u8,
    /// An entry into the timewait table (TIME_WAIT or parked FIN_WAIT2).
    pub time_wait: bool,
    /// An established connection ended: its lifetime and bytes count.
    pub closed: bool,
    /// A connect failed (SYN_SENT → CLOSE).
    pub connect_failed: bool,
}

impl Effects {
    const fn none() -> Self {
        Effects {
            close_kind: close::NONE,
            counters: [NONE; 3],
            hist: NONE,
            close_paths: 0,
            flow: flow_point::NONE,
            time_wait: false,
            closed: false,
            connect_failed: false,
        }
    }
}

/// Socket facts a flow row takes at its flow point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowFacts {
    /// → ESTABLISHED: the handshake latency (valid when `handshake_known`)
    /// and its retransmits.
    pub handshake_ns: u64,
    pub handshake_known: bool,
    pub retrans: u32,
    /// → CLOSE of an established connection: lifetime (valid when
    /// `lifetime_known`) and payload bytes.
    pub lifetime_ns: u64,
    pub lifetime_known: bool,
    pub bytes_received: u64,
    pub bytes_acked: u64,
}

/// Add one connection's contribution at a flow point to its row (a map
/// value, or the `other` row of a full table). The close paths the
/// connection took (`Effects::close_paths`) are added once, at → CLOSE.
#[inline(always)]
pub fn apply_flow(f: &mut FlowStats, e: &Effects, st: &SockState, facts: &FlowFacts) {
    if e.flow == flow_point::ESTABLISHED {
        f.established += 1;
        if facts.handshake_known {
            f.handshake_count += 1;
            f.handshake_sum_ns += facts.handshake_ns;
            if facts.handshake_ns > f.handshake_max_ns {
                f.handshake_max_ns = facts.handshake_ns;
            }
            if facts.retrans > 0 {
                f.handshake_retrans += 1;
            }
            f.retrans_total += facts.retrans as u64;
        }
    } else if e.flow == flow_point::CLOSE {
        apply_close(f, e, e.close_paths, facts);
    }
    if st.flags & crate::flag::OWNER_KNOWN != 0 {
        f.comm = st.comm;
        f.cgroup_id = st.cgroup_id;
    }
}

#[inline(always)]
fn apply_close(f: &mut FlowStats, e: &Effects, closes: u8, facts: &FlowFacts) {
    let k = e.close_kind;
    f.connect_failed += e.connect_failed as u64;
    f.connect_no_local_port += (k == close::CONNECT_NO_LOCAL_PORT) as u64;
    f.time_wait += e.time_wait as u64;
    f.fin_wait2_parked += (k == close::FIN_WAIT2_PARKED) as u64;
    f.resets_sent += (k == close::RESET_SENT) as u64;
    f.resets_received += (k == close::RESET_RECEIVED) as u64;
    f.close_local_first += (closes & close_path::LOCAL_FIRST != 0) as u64;
    f.close_peer_first += (closes & close_path::PEER_FIRST != 0) as u64;
    f.close_simultaneous += (closes & close_path::SIMULTANEOUS != 0) as u64;
    if e.closed {
        f.bytes_received += facts.bytes_received;
        f.bytes_acked += facts.bytes_acked;
        if facts.lifetime_known {
            f.closed += 1;
            f.lifetime_sum_ns += facts.lifetime_ns;
            if facts.lifetime_ns > f.lifetime_max_ns {
                f.lifetime_max_ns = facts.lifetime_ns;
            }
        }
    }
}

/// How an X → CLOSE transition ended the connection, from the old state,
/// `sk_err` and the SOCK_DONE flag (the peer's FIN arrived).
///
/// - SYN_SENT with `sk_err` = 0 and no local port: connect() found no free
///   local port (EADDRNOTAVAIL; the error goes only to the caller).
/// - `sk_err` ≠ 0 is an abort: in SYN_SENT a failed connect by errno, later a
///   received RST (ECONNRESET/EPIPE) or a timeout.
/// - `sk_err` = 0 from FIN_WAIT2/CLOSING with SOCK_DONE: `tcp_time_wait()`
///   moved the connection into a TIME_WAIT sock.
/// - `sk_err` = 0 from FIN_WAIT2 without SOCK_DONE: an orphaned socket parked
///   in a FIN_WAIT2 timewait minisock (TIME_WAIT follows when the FIN comes).
/// - `sk_err` = 0 from LAST_ACK: the passive close completed.
/// - `sk_err` = 0 from any other synchronized state: this host aborted (the
///   tracepoint fires before `tcp_disconnect()` sets `sk_err` and sends RST).
#[inline(always)]
pub fn classify_close(old: u8, sk_err: u16, sock_done: bool, lport: u16) -> u8 {
    match old {
        state::SYN_SENT if sk_err == 0 && lport == 0 => close::CONNECT_NO_LOCAL_PORT,
        state::SYN_SENT => match sk_err {
            // A RST answering the SYN: tcp_reset() sets ECONNREFUSED.
            errno::ECONNREFUSED | errno::ECONNRESET => close::CONNECT_REFUSED,
            errno::ETIMEDOUT => close::CONNECT_TIMEOUT,
            errno::EHOSTUNREACH | errno::ENETUNREACH => close::CONNECT_UNREACHABLE,
            0 => close::CONNECT_ABORTED,
            _ => close::OTHER,
        },
        state::SYN_RECV => close::PASSIVE_FAILED,
        state::LISTEN => close::LISTENER_CLOSED,
        _ => match sk_err {
            0 => match old {
                state::FIN_WAIT2 if sock_done => close::TIME_WAIT,
                state::FIN_WAIT2 => close::FIN_WAIT2_PARKED,
                state::CLOSING => close::TIME_WAIT,
                state::LAST_ACK => close::LAST_ACK,
                _ => close::RESET_SENT,
            },
            errno::ECONNRESET | errno::EPIPE => close::RESET_RECEIVED,
            errno::ETIMEDOUT => close::TIMEOUT,
            _ => close::OTHER,
        },
    }
}

/// Payload bytes of a connection at its → CLOSE, from the kernel's raw
/// `tcp_sock.bytes_received` / `bytes_acked`. Those count sequence space, so
/// they include one for each SYN and FIN: `bytes_acked` counts our SYN on an
/// active open (an accepted socket is created after its SYN-ACK was acked)
/// and our FIN once acknowledged (FIN_WAIT2, CLOSING → TIME_WAIT, LAST_ACK →
/// CLOSE); `bytes_received` counts the peer's FIN once received (SOCK_DONE).
/// Returns (received, sent-and-acked) payload bytes.
#[inline(always)]
pub fn payload_bytes(
    sock_dir: u8,
    close_kind: u8,
    sock_done: bool,
    raw_received: u64,
    raw_acked: u64,
) -> (u64, u64) {
    let rx = raw_received.saturating_sub(sock_done as u64);
    let our_fin_acked = matches!(
        close_kind,
        close::TIME_WAIT | close::FIN_WAIT2_PARKED | close::LAST_ACK
    );
    let syn = (sock_dir == dir::ACTIVE) as u64;
    let tx = raw_acked.saturating_sub(syn + our_fin_acked as u64);
    (rx, tx)
}

/// Socket facts read at the transition, where they matter: `sk_err`,
/// SOCK_DONE and the local port for → CLOSE; the handshake's retransmits
/// and whether its latency is known for → ESTABLISHED.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub sk_err: u16,
    pub sock_done: bool,
    pub lport: u16,
    pub retrans: u32,
    pub handshake_known: bool,
}

/// Effects of `old → new` on a socket opened in direction `sock_dir`.
#[inline(always)]
pub fn effects(old: u8, new: u8, sock_dir: u8, x: &Facts) -> Effects {
    let mut e = Effects::none();
    e.counters[0] = counter::TRANSITIONS;
    match (old, new) {
        (state::CLOSE, state::SYN_SENT) => e.counters[1] = counter::CONNECT_ATTEMPTS,
        (state::SYN_SENT, state::ESTABLISHED) => established(
            &mut e,
            counter::ACTIVE_ESTABLISHED,
            hist_kind::ACTIVE,
            counter::ACTIVE_HANDSHAKE_RETRANS,
            x,
        ),
        (state::SYN_RECV, state::ESTABLISHED) => established(
            &mut e,
            counter::PASSIVE_ESTABLISHED,
            hist_kind::PASSIVE,
            counter::PASSIVE_HANDSHAKE_RETRANS,
            x,
        ),
        (state::ESTABLISHED, state::FIN_WAIT1) => e.counters[1] = counter::CLOSE_LOCAL_FIRST,
        (state::ESTABLISHED, state::CLOSE_WAIT) => e.counters[1] = counter::CLOSE_PEER_FIRST,
        (state::FIN_WAIT1, state::CLOSING) => e.counters[1] = counter::CLOSE_SIMULTANEOUS,
        (_, state::CLOSE) => closed(&mut e, old, sock_dir, x),
        _ => {}
    }
    e
}

#[inline(always)]
fn established(e: &mut Effects, count: u32, hist: u32, retrans_count: u32, x: &Facts) {
    e.counters[1] = count;
    e.flow = flow_point::ESTABLISHED;
    if x.handshake_known {
        e.hist = hist;
        if x.retrans > 0 {
            e.counters[2] = retrans_count;
            // The retransmitted histogram of each side follows the clean one.
            e.hist = hist + 1;
        }
    }
}

#[inline(always)]
fn closed(e: &mut Effects, old: u8, sock_dir: u8, x: &Facts) {
    let k = classify_close(old, x.sk_err, x.sock_done, x.lport);
    e.close_kind = k;
    e.counters[1] = counter::CLOSE_BASE + k as u32;
    if old == state::LISTEN {
        return;
    }
    e.connect_failed = old == state::SYN_SENT;
    e.closed = !e.connect_failed && old != state::SYN_RECV && old != state::CLOSE;
    if e.connect_failed || e.closed {
        e.flow = flow_point::CLOSE;
        e.close_paths = crate::machine::close_paths(old);
    }
    if k == close::TIME_WAIT || k == close::FIN_WAIT2_PARKED {
        e.time_wait = true;
        let side = if sock_dir <= dir::PASSIVE {
            sock_dir
        } else {
            0
        };
        e.counters[2] = counter::TIME_WAIT_BY_DIR + side as u32;
    }
}
