//! What one TCP state transition contributes to the aggregates.
//!
//! The eBPF program applies these effects to its maps; unit tests replay
//! synthetic transition sequences through the same function, so the meaning of
//! every counter is defined once, here.

use crate::{close, counter, dir, errno, hist_kind, state};

/// Sentinel for "no counter" / "no histogram".
pub const NONE: u32 = u32::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effects {
    /// `close::*` for transitions into CLOSE, else `close::NONE`.
    pub close_kind: u8,
    /// Up to three `counter::*` slots to bump (`NONE` = unused).
    pub counters: [u32; 3],
    /// `hist_kind::*` to record the handshake latency in, or `NONE`.
    pub hist: u32,
    /// Per-flow deltas.
    pub established: u8,
    pub connect_failed: u8,
    pub time_wait: u8,
    pub fin_wait2_parked: u8,
    pub resets_sent: u8,
    pub resets_received: u8,
    pub close_local_first: u8,
    pub close_peer_first: u8,
    pub close_simultaneous: u8,
    /// The flow's handshake stats take this transition's latency.
    pub handshake: u8,
    /// An established connection ended: its lifetime and bytes count.
    pub closed: u8,
}

impl Effects {
    const fn none() -> Self {
        Effects {
            close_kind: close::NONE,
            counters: [NONE; 3],
            hist: NONE,
            established: 0,
            connect_failed: 0,
            time_wait: 0,
            fin_wait2_parked: 0,
            resets_sent: 0,
            resets_received: 0,
            close_local_first: 0,
            close_peer_first: 0,
            close_simultaneous: 0,
            handshake: 0,
            closed: 0,
        }
    }

    /// Does this transition touch the per-flow breakdown at all?
    pub const fn touches_flow(&self) -> bool {
        self.established
            | self.connect_failed
            | self.time_wait
            | self.resets_sent
            | self.resets_received
            | self.close_local_first
            | self.close_peer_first
            | self.close_simultaneous
            | self.closed
            != 0
    }
}

/// How an X → CLOSE transition ended the connection, from the old state,
/// `sk_err` and the SOCK_DONE flag (the peer's FIN arrived).
///
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
pub fn classify_close(old: u8, sk_err: u16, sock_done: bool) -> u8 {
    match old {
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

/// Effects of `old → new` on a socket opened in direction `sock_dir`.
/// `sk_err`/`sock_done` matter only for → CLOSE; `retrans` and
/// `handshake_known` only for → ESTABLISHED.
#[inline(always)]
pub fn effects(
    old: u8,
    new: u8,
    sock_dir: u8,
    sk_err: u16,
    sock_done: bool,
    retrans: u32,
    handshake_known: bool,
) -> Effects {
    let mut e = Effects::none();
    e.counters[0] = counter::TRANSITIONS;
    match (old, new) {
        (state::CLOSE, state::SYN_SENT) => e.counters[1] = counter::CONNECT_ATTEMPTS,
        (state::SYN_SENT, state::ESTABLISHED) => {
            e.counters[1] = counter::ACTIVE_ESTABLISHED;
            e.established = 1;
            if handshake_known {
                e.handshake = 1;
                e.hist = hist_kind::ACTIVE;
                if retrans > 0 {
                    e.counters[2] = counter::ACTIVE_HANDSHAKE_RETRANS;
                    e.hist = hist_kind::ACTIVE_RETRANS;
                }
            }
        }
        (state::SYN_RECV, state::ESTABLISHED) => {
            e.counters[1] = counter::PASSIVE_ESTABLISHED;
            e.established = 1;
            if handshake_known {
                e.handshake = 1;
                e.hist = hist_kind::PASSIVE;
                if retrans > 0 {
                    e.counters[2] = counter::PASSIVE_HANDSHAKE_RETRANS;
                    e.hist = hist_kind::PASSIVE_RETRANS;
                }
            }
        }
        (state::ESTABLISHED, state::FIN_WAIT1) => {
            e.counters[1] = counter::CLOSE_LOCAL_FIRST;
            e.close_local_first = 1;
        }
        (state::ESTABLISHED, state::CLOSE_WAIT) => {
            e.counters[1] = counter::CLOSE_PEER_FIRST;
            e.close_peer_first = 1;
        }
        (state::FIN_WAIT1, state::CLOSING) => {
            e.counters[1] = counter::CLOSE_SIMULTANEOUS;
            e.close_simultaneous = 1;
        }
        (_, state::CLOSE) => {
            let k = classify_close(old, sk_err, sock_done);
            e.close_kind = k;
            e.counters[1] = counter::CLOSE_BASE + k as u32;
            if old == state::SYN_SENT {
                e.connect_failed = 1;
            } else if old != state::SYN_RECV && old != state::LISTEN && old != state::CLOSE {
                e.closed = 1;
            }
            if k == close::TIME_WAIT || k == close::FIN_WAIT2_PARKED {
                e.time_wait = 1;
                e.fin_wait2_parked = (k == close::FIN_WAIT2_PARKED) as u8;
                e.counters[2] = counter::TIME_WAIT_BY_DIR
                    + if sock_dir <= dir::PASSIVE {
                        sock_dir as u32
                    } else {
                        0
                    };
            } else if k == close::RESET_SENT {
                e.resets_sent = 1;
            } else if k == close::RESET_RECEIVED && old != state::SYN_SENT {
                e.resets_received = 1;
            }
        }
        _ => {}
    }
    e
}
