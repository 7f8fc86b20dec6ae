//! The per-socket rules of the state machine: which transitions give a
//! socket its birth and direction, where its owner can be captured, and how
//! its state advances. The eBPF program applies them to the socket's
//! storage; unit tests drive them directly (no root, no kernel).

use crate::{close_path, dir, flag, state, verdict, SockState, TASK_COMM_LEN};

/// The direction a birth transition gives a socket: CLOSE→SYN_SENT (this
/// host called connect()) or LISTEN→SYN_RECV (a child of a listener, born
/// at the client's final ACK). `None` for every other transition.
#[inline(always)]
pub const fn birth(old: u8, new: u8) -> Option<u8> {
    match (old, new) {
        (state::CLOSE, state::SYN_SENT) => Some(dir::ACTIVE),
        (state::LISTEN, state::SYN_RECV) => Some(dir::PASSIVE),
        _ => None,
    }
}

/// A passive birth fired inside the kernel's clone of the listener (Linux
/// 6.1 does; later kernels set SYN_RECV once the child is filled in): the
/// child still carries the listener's addresses (remote port 0) and its
/// cookie, so its state is keyed by the socket's address until its next
/// transition, which sees the child's own cookie.
#[inline(always)]
pub const fn birth_in_clone(old: u8, new: u8, rport: u16) -> bool {
    old == state::LISTEN && new == state::SYN_RECV && rport == 0
}

/// A listening socket's own transitions (no peer, no per-socket state).
#[inline(always)]
pub const fn is_listener(old: u8, new: u8) -> bool {
    new == state::LISTEN || (old == state::LISTEN && new == state::CLOSE)
}

/// Transitions that run in the owning process's context (connect(),
/// close()/shutdown()), where the current task is the socket's owner. The
/// rest run in softirq context, where it is whoever was interrupted.
#[inline(always)]
pub const fn in_owner_context(old: u8, new: u8) -> bool {
    matches!(
        (old, new),
        (state::CLOSE, state::SYN_SENT)
            | (state::ESTABLISHED, state::FIN_WAIT1)
            | (state::CLOSE_WAIT, state::LAST_ACK)
    )
}

/// Transitions whose accounting needs the socket's state in summary mode:
/// its birth (the state is created), → ESTABLISHED (handshake start, flow
/// key), ESTABLISHED → CLOSE_WAIT (when the CLOSE_WAIT began, for leak
/// ages) and → CLOSE (direction, lifetime, flow key; the state goes). The
/// others only count, unless filters or live events need every transition.
#[inline(always)]
pub const fn needs_state(old: u8, new: u8) -> bool {
    birth(old, new).is_some()
        || new == state::ESTABLISHED
        || new == state::CLOSE
        || (old == state::ESTABLISHED && new == state::CLOSE_WAIT)
}

/// Transitions whose summary-mode accounting reads the clock: all that
/// need the state but SYN_RECV → ESTABLISHED, whose handshake is the
/// kernel's RTT sample and whose time in state nothing reads (the
/// CLOSE_WAIT age starts at ESTABLISHED → CLOSE_WAIT). A clock read costs
/// as much as a map lookup; filters and live events read it on every
/// transition.
#[inline(always)]
pub const fn needs_clock(old: u8, new: u8) -> bool {
    needs_state(old, new) && !(old == state::SYN_RECV && new == state::ESTABLISHED)
}

/// The close paths a connection took, read off the state it leaves at
/// → CLOSE (`close_path::*`): FIN_WAIT1/FIN_WAIT2 follow ESTABLISHED →
/// FIN_WAIT1 (closed here first), CLOSING follows it too and the crossing
/// FINs (simultaneous), CLOSE_WAIT/LAST_ACK follow ESTABLISHED →
/// CLOSE_WAIT (the peer closed first). Added to the flow row once.
#[inline(always)]
pub const fn close_paths(old: u8) -> u8 {
    match old {
        state::FIN_WAIT1 | state::FIN_WAIT2 => close_path::LOCAL_FIRST,
        state::CLOSING => close_path::LOCAL_FIRST | close_path::SIMULTANEOUS,
        state::CLOSE_WAIT | state::LAST_ACK => close_path::PEER_FIRST,
        _ => 0,
    }
}

/// The owner as captured in its own context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OwnerFacts {
    pub tgid: u32,
    pub comm: [u8; TASK_COMM_LEN],
    pub cgroup_id: u64,
}

impl SockState {
    /// A new socket's state at its birth (or first sight, `dir::UNKNOWN`
    /// or inferred, with `ts_birth` 0 since its birth was not seen).
    #[inline(always)]
    pub fn born(&mut self, sock_dir: u8, now: u64, seen_birth: bool, netns: u32) {
        self.dir = sock_dir;
        self.ts_birth = if seen_birth { now } else { 0 };
        self.netns = netns;
    }

    #[inline(always)]
    pub fn set_owner(&mut self, o: &OwnerFacts) {
        self.tgid = o.tgid;
        self.comm = o.comm;
        self.cgroup_id = o.cgroup_id;
        self.flags |= flag::OWNER_KNOWN;
    }

    #[inline(always)]
    pub const fn owner_known(&self) -> bool {
        self.flags & flag::OWNER_KNOWN != 0
    }

    /// Fix the socket's verdict (once) and, on a match, the owner that goes
    /// into its flow key: later owner captures (at close()) update what
    /// events show but never move the connection to another flow row.
    #[inline(always)]
    pub fn decide(&mut self, matched: bool) {
        if self.verdict != verdict::UNDECIDED {
            return;
        }
        self.verdict = if matched {
            verdict::MATCH
        } else {
            verdict::NO_MATCH
        };
        self.key_tgid = if self.owner_known() { self.tgid } else { 0 };
    }

    /// Hold `old → new` back until the verdict is known.
    #[inline(always)]
    pub fn defer(&mut self, old: u8, new: u8, now: u64) {
        self.flags |= flag::DEFERRED;
        self.deferred_old = old;
        self.deferred_new = new;
        self.deferred_ts = now;
    }

    /// The transition held back, if any, clearing it.
    #[inline(always)]
    pub fn take_deferred(&mut self) -> Option<(u8, u8, u64)> {
        if self.flags & flag::DEFERRED == 0 {
            return None;
        }
        self.flags &= !flag::DEFERRED;
        Some((self.deferred_old, self.deferred_new, self.deferred_ts))
    }

    /// Time spent in the state being left, when its entry was seen.
    #[inline(always)]
    pub const fn in_state_ns(&self, now: u64) -> Option<u64> {
        if self.ts_state == 0 {
            None
        } else {
            Some(now.saturating_sub(self.ts_state))
        }
    }

    /// The active handshake's latency at SYN_SENT → ESTABLISHED: from
    /// CLOSE → SYN_SENT (the socket's birth), when it was seen.
    #[inline(always)]
    pub const fn active_handshake_ns(&self, now: u64) -> Option<u64> {
        if self.dir == dir::ACTIVE && self.ts_birth != 0 {
            Some(now.saturating_sub(self.ts_birth))
        } else {
            None
        }
    }

    /// Lifetime at → CLOSE, from the birth transition, when it was seen.
    #[inline(always)]
    pub const fn lifetime_ns(&self, now: u64) -> Option<u64> {
        if self.ts_birth == 0 {
            None
        } else {
            Some(now.saturating_sub(self.ts_birth))
        }
    }
}

/// The passive handshake's latency from the kernel's SYN-ACK→ACK RTT sample
/// (`tcp_sock.srtt_us`, scaled by 8, set by `tcp_synack_rtt_meas()` just
/// before SYN_RECV → ESTABLISHED). 0 means no sample (syncookies, or Karn's
/// rule after a retransmit): unknown, not 0 µs.
#[inline(always)]
pub const fn passive_handshake_ns(srtt_us_x8: u32) -> Option<u64> {
    let us = (srtt_us_x8 >> 3) as u64;
    if srtt_us_x8 == 0 {
        None
    } else {
        Some(us * 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn births_and_owner_contexts() {
        assert_eq!(birth(state::CLOSE, state::SYN_SENT), Some(dir::ACTIVE));
        assert_eq!(birth(state::LISTEN, state::SYN_RECV), Some(dir::PASSIVE));
        assert_eq!(birth(state::SYN_SENT, state::ESTABLISHED), None);
        assert!(in_owner_context(state::ESTABLISHED, state::FIN_WAIT1));
        assert!(!in_owner_context(state::FIN_WAIT1, state::FIN_WAIT2));
        assert!(is_listener(state::CLOSE, state::LISTEN));
        assert!(is_listener(state::LISTEN, state::CLOSE));
        assert!(!is_listener(state::LISTEN, state::SYN_RECV));
    }

    #[test]
    fn only_a_passive_birth_without_its_peer_is_inside_the_clone() {
        // 6.1: the child still has the listener's addresses.
        assert!(birth_in_clone(state::LISTEN, state::SYN_RECV, 0));
        // 6.18: the child is filled in first.
        assert!(!birth_in_clone(state::LISTEN, state::SYN_RECV, 41000));
        // Only passive births are clones.
        assert!(!birth_in_clone(state::CLOSE, state::SYN_SENT, 0));
        assert!(!birth_in_clone(state::SYN_RECV, state::ESTABLISHED, 0));
    }

    #[test]
    fn state_is_needed_where_the_accounting_reads_it() {
        assert!(needs_state(state::CLOSE, state::SYN_SENT));
        assert!(needs_state(state::SYN_RECV, state::ESTABLISHED));
        assert!(needs_state(state::ESTABLISHED, state::CLOSE_WAIT));
        assert!(needs_state(state::FIN_WAIT2, state::CLOSE));
        assert!(!needs_state(state::FIN_WAIT1, state::FIN_WAIT2));
        assert!(!needs_state(state::ESTABLISHED, state::FIN_WAIT1));
    }

    #[test]
    fn the_clock_is_read_where_a_time_is_kept() {
        assert!(needs_clock(state::CLOSE, state::SYN_SENT));
        assert!(needs_clock(state::LISTEN, state::SYN_RECV));
        assert!(needs_clock(state::SYN_SENT, state::ESTABLISHED));
        assert!(needs_clock(state::ESTABLISHED, state::CLOSE_WAIT));
        assert!(needs_clock(state::LAST_ACK, state::CLOSE));
        // The passive handshake is the kernel's own RTT sample.
        assert!(!needs_clock(state::SYN_RECV, state::ESTABLISHED));
        assert!(!needs_clock(state::FIN_WAIT1, state::FIN_WAIT2));
    }

    #[test]
    fn close_paths_follow_from_the_state_left() {
        assert_eq!(close_paths(state::FIN_WAIT2), close_path::LOCAL_FIRST);
        assert_eq!(
            close_paths(state::CLOSING),
            close_path::LOCAL_FIRST | close_path::SIMULTANEOUS
        );
        assert_eq!(close_paths(state::LAST_ACK), close_path::PEER_FIRST);
        assert_eq!(close_paths(state::CLOSE_WAIT), close_path::PEER_FIRST);
        assert_eq!(close_paths(state::ESTABLISHED), 0);
        assert_eq!(close_paths(state::SYN_SENT), 0);
    }

    #[test]
    fn verdict_and_flow_owner_are_fixed_once() {
        let mut st = SockState::default();
        st.decide(true);
        assert_eq!(st.verdict, verdict::MATCH);
        assert_eq!(st.key_tgid, 0);
        // The owner appears later (close()): the verdict and key stay.
        st.set_owner(&OwnerFacts {
            tgid: 42,
            ..Default::default()
        });
        st.decide(false);
        assert_eq!(st.verdict, verdict::MATCH);
        assert_eq!(st.key_tgid, 0);
        assert_eq!(st.tgid, 42);
    }

    #[test]
    fn deferral_round_trip() {
        let mut st = SockState::default();
        assert_eq!(st.take_deferred(), None);
        st.defer(state::CLOSE, state::SYN_SENT, 7);
        assert_eq!(st.take_deferred(), Some((state::CLOSE, state::SYN_SENT, 7)));
        assert_eq!(st.take_deferred(), None);
    }

    #[test]
    fn times_need_their_start() {
        let mut st = SockState::default();
        assert_eq!(st.in_state_ns(10), None);
        assert_eq!(st.lifetime_ns(10), None);
        st.born(dir::ACTIVE, 100, true, 1);
        st.ts_state = 100;
        assert_eq!(st.active_handshake_ns(150), Some(50));
        assert_eq!(st.in_state_ns(130), Some(30));
        assert_eq!(st.lifetime_ns(400), Some(300));
        let mut mid_life = SockState::default();
        mid_life.born(dir::ACTIVE, 100, false, 1);
        assert_eq!(mid_life.active_handshake_ns(150), None);
    }

    #[test]
    fn passive_rtt_zero_is_unknown() {
        assert_eq!(passive_handshake_ns(0), None);
        assert_eq!(passive_handshake_ns(8 * 51), Some(51_000));
        // A sub-µs sample still rounds to a known 0 µs only if the kernel
        // stored a non-zero scaled value.
        assert_eq!(passive_handshake_ns(4), Some(0));
    }
}
