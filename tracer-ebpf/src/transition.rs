//! A transition of a connection's socket: its state, verdict, counters,
//! histograms, flow row and event.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie},
    },
};
use tracer_common::{
    account::{effects, flow_point, payload_bytes, Effects, Facts, FlowFacts, NONE},
    counter, dir, flag, hist_kind,
    machine::{self, OwnerFacts},
    state, transition_index, verdict, SockState, Stats, AF_INET, AF_INET6, IPPROTO_TCP,
    TASK_COMM_LEN,
};

use crate::{
    filter::{self, Verdict},
    ld, listener,
    maps::{bump, stats, SCRATCH},
    output::{self, EventFacts, FlowArgs},
    sock::{self, Ends},
    socks::{self, Slot},
};

/// One run's transition: the socket, the two states, the time and the ends.
pub struct Tr {
    pub sk: *const u8,
    /// The socket cookie (the id that joins events with `ss -e` /
    /// sock_diag); 0 for a listener's own transitions and while it is not
    /// the socket's own (`machine::birth_in_clone`).
    pub cookie: u64,
    /// The connection's key in `socks`: its cookie, or its address while
    /// the cookie is not its own (kernel addresses and cookies, small
    /// counters, never meet).
    pub key: u64,
    pub old: u8,
    pub new: u8,
    pub now: u64,
    pub ends: Ends,
}

/// The task running now, as a socket owner (meaningful only in the
/// process-context transitions, `machine::in_owner_context`).
#[inline(always)]
pub fn current_owner() -> OwnerFacts {
    OwnerFacts {
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]),
        // SAFETY: helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
    }
}

/// Count a transition whose effects need no socket facts (listener
/// transitions, and a deferred CLOSE→SYN_SENT / LISTEN→SYN_RECV).
#[inline(always)]
pub fn count_simple(stats: &mut Stats, old: u8, new: u8) {
    let e = effects(old, new, dir::UNKNOWN, &Facts::default());
    count(stats, old, new, &e);
}

#[inline(always)]
fn count(stats: &mut Stats, old: u8, new: u8, e: &Effects) {
    // Through the stack, opaque to the compiler, so the bounds check stays
    // where it can prove the states (a birth's two pairs): older verifiers
    // (6.1) do not carry a state's range across its narrow stack spills.
    let i = transition_index(old, new) as usize;
    // SAFETY: a local, read back.
    let i = unsafe { core::ptr::read_volatile(&i) };
    if let Some(t) = stats.transitions.get_mut(i) {
        *t += 1;
    }
    for c in e.counters {
        if c != NONE {
            bump(stats, c);
        }
    }
}

pub fn on_transition(sk: *const u8, old: u64, new: u64) {
    let Some(stats) = stats() else { return };
    if ld!(OFFSETS.valid) == 0 {
        bump(stats, counter::SKIPPED_NO_OFFSETS);
        return;
    }
    if old >= state::COUNT as u64 || new >= state::COUNT as u64 {
        bump(stats, counter::SKIPPED_OTHER);
        return;
    }
    let (old, new) = (old as u8, new as u8);
    if sock::protocol(sk) != IPPROTO_TCP {
        bump(stats, counter::NON_TCP);
        return;
    }
    let family = sock::family(sk);
    if family != AF_INET && family != AF_INET6 {
        bump(stats, counter::SKIPPED_OTHER);
        return;
    }
    // Filters and live events need every transition's state (verdict, time
    // in state); summary mode only the transitions whose accounting reads
    // it: the others count without the clock or the socket's ends.
    let every = ld!(FILTER.any) != 0 || ld!(FILTER.emit_events) != 0;
    let listening = machine::is_listener(old, new);
    if !listening && !every && !machine::needs_state(old, new) {
        count_simple(stats, old, new);
        return;
    }
    let now = if every || machine::needs_clock(old, new) {
        // SAFETY: helper without arguments.
        unsafe { bpf_ktime_get_ns() }
    } else {
        0
    };
    let ends = sock::ends(sk, family, new == state::CLOSE);
    let (cookie, key) = if listening {
        (0, 0)
    } else if machine::birth_in_clone(old, new, ends.rport) {
        (0, sock::address(sk))
    } else {
        let c = cookie(sk);
        (c, c)
    };
    let t = Tr {
        sk,
        cookie,
        key,
        old,
        new,
        now,
        ends,
    };
    if listening {
        listener::on_listener(stats, &t);
    } else {
        connection(stats, &t);
    }
}

#[inline(never)]
fn connection(stats: &mut Stats, t: &Tr) {
    if machine::birth(t.old, t.new).is_some() {
        born(stats, t);
        return;
    }
    match state_of(t) {
        Some((at, st)) => {
            on_socket(stats, st, t);
            if t.new == state::CLOSE {
                socks::remove(at);
            }
        }
        None => {
            // First seen at its → CLOSE (older than the tracer, nothing to
            // keep), or no room for its state: the transition still
            // counts, with what this run can see.
            if t.new != state::CLOSE {
                bump(stats, counter::INFLIGHT_INSERT_FAILED);
            }
            if let Some(st) = fresh_scratch() {
                on_socket(stats, st, t);
            }
        }
    }
}

/// A birth: its state is made in this CPU's scratch slot and inserted once
/// the run is done with it (`BPF_ANY` replaces what a missed → CLOSE could
/// have left), a single map operation where inserting a zeroed state and
/// looking it up again took two.
#[inline(always)]
fn born(stats: &mut Stats, t: &Tr) {
    let Some(st) = fresh_scratch() else {
        return;
    };
    on_socket(stats, st, t);
    if socks::insert(t.key, st, BPF_ANY as u64).is_err() {
        bump(stats, counter::INFLIGHT_INSERT_FAILED);
    }
}

/// This CPU's scratch state, zeroed: a state for this run only.
#[inline(always)]
fn fresh_scratch() -> Option<&'static mut SockState> {
    let p = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot, used by this run only.
    let st = unsafe { &mut *p };
    *st = ZERO_STATE;
    Some(st)
}

/// A state before its first transition (verdict undecided, nothing known).
static ZERO_STATE: SockState = SockState {
    ts_state: 0,
    ts_birth: 0,
    deferred_ts: 0,
    cgroup_id: 0,
    tgid: 0,
    key_tgid: 0,
    comm: [0; TASK_COMM_LEN],
    netns: 0,
    dir: 0,
    flags: 0,
    verdict: verdict::UNDECIDED,
    deferred_old: 0,
    deferred_new: 0,
    _pad: [0; 7],
};

/// Where the state of a socket past its birth is, and the state, created
/// (zeroed) at its first sight mid-life, never at its → CLOSE: a first
/// sight inserts only if no other CPU's run did meanwhile.
#[inline(always)]
fn state_of(t: &Tr) -> Option<(Slot, &'static mut SockState)> {
    if let Some(found) = socks::get(t.key) {
        return Some(found);
    }
    if t.old == state::SYN_RECV {
        let at = clone_birth_key(t);
        if at != 0 {
            return socks::get(at);
        }
    }
    if t.new == state::CLOSE {
        return None;
    }
    let _ = socks::insert(t.key, &ZERO_STATE, BPF_NOEXIST as u64);
    socks::get(t.key)
}

/// A child born inside its listener's clone kept its state under its
/// address (`machine::birth_in_clone`): its first transition with its own
/// cookie moves the state there (at → CLOSE it ends where it is). Returns
/// the key the state is under now, 0 for none.
#[inline(never)]
fn clone_birth_key(t: &Tr) -> u64 {
    let Some((from, st)) = socks::get(sock::address(t.sk)) else {
        return 0;
    };
    if t.new == state::CLOSE {
        return from.key;
    }
    let moved = socks::insert(t.key, st, BPF_ANY as u64).is_ok();
    socks::remove(from);
    if moved {
        t.key
    } else {
        0
    }
}

#[inline(always)]
fn on_socket(stats: &mut Stats, st: &mut SockState, t: &Tr) {
    if st.flags & flag::INIT == 0 {
        init(st, t);
    }
    if machine::in_owner_context(t.old, t.new) && !st.owner_known() {
        st.set_owner(&current_owner());
    }
    if st.verdict == verdict::UNDECIDED && !decide(st, t) {
        return;
    }
    if st.verdict == verdict::NO_MATCH {
        bump(stats, counter::FILTERED_OUT);
        finish(st, t);
        return;
    }
    if st.flags & flag::MID_LIFE != 0 {
        st.flags &= !flag::MID_LIFE;
        bump(stats, counter::INFLIGHT_MISSING);
    }
    if let Some((old, new, ts)) = st.take_deferred() {
        count_simple(stats, old, new);
        let facts = EventFacts {
            old,
            new,
            ts,
            cookie: t.cookie,
            ..EventFacts::default()
        };
        output::emit(t.sk, &t.ends, st, &facts);
    }
    counted(stats, st, t);
    finish(st, t);
}

/// First sight of a socket: at its birth, or mid-life (older than the tracer).
#[inline(never)]
fn init(st: &mut SockState, t: &Tr) {
    let netns = sock::netns(t.sk);
    let lport = t.ends.lport;
    match machine::birth(t.old, t.new) {
        Some(d) => st.born(d, t.now, true, netns),
        None => {
            st.flags |= flag::MID_LIFE;
            // Infer the direction from whether the local port is a listener.
            let listening = listener::owner_of(netns, lport).is_some();
            let d = if listening { dir::PASSIVE } else { dir::ACTIVE };
            st.born(d, t.now, false, netns);
        }
    }
    if st.dir == dir::PASSIVE {
        if let Some(o) = listener::owner_of(netns, lport) {
            if o.tgid != 0 {
                st.set_owner(&OwnerFacts {
                    tgid: o.tgid,
                    comm: o.comm,
                    cgroup_id: o.cgroup_id,
                });
            }
        }
    }
    st.flags |= flag::INIT;
}

/// Decide the socket's verdict once its tuple is complete; until then hold
/// the transition back. Returns false when the transition was deferred.
#[inline(always)]
fn decide(st: &mut SockState, t: &Tr) -> bool {
    let v = filter::verdict(&t.ends, st, st.netns, t.new == state::CLOSE, || {
        let (mut r, mut l) = ([0u8; 16], [0u8; 16]);
        sock::addrs(t.sk, t.ends.family, &mut r, &mut l);
        r
    });
    if v == Verdict::Unknown {
        if st.flags & flag::DEFERRED == 0 {
            st.defer(t.old, t.new, t.now);
        }
        st.ts_state = t.now;
        return false;
    }
    st.decide(v == Verdict::Match);
    true
}

/// After a counted or filtered transition: time the new state (0, not
/// known, where the run read no clock). At → CLOSE the state is done with:
/// its `socks` entry goes after this run's last use, in `connection`.
#[inline(always)]
fn finish(st: &mut SockState, t: &Tr) {
    st.ts_state = t.now;
}

/// The socket's cookie (generated at its first request, unique for the
/// host's uptime).
#[inline(always)]
fn cookie(sk: *const u8) -> u64 {
    // SAFETY: tp_btf passes a valid `struct sock *`; the helper only reads it.
    unsafe { bpf_get_socket_cookie(sk as *mut c_void) }
}

/// Socket facts the accounting needs, read only where they matter.
#[inline(always)]
fn read_facts(stats: &mut Stats, st: &SockState, t: &Tr, ff: &mut FlowFacts) -> Facts {
    let mut x = Facts {
        lport: t.ends.lport,
        ..Facts::default()
    };
    if t.new == state::CLOSE {
        (x.sk_err, x.sock_done) = sock::err_and_done(t.sk);
    } else if t.new == state::ESTABLISHED {
        let tp = sock::tcp(t.sk);
        if tp.is_null() {
            bump(stats, counter::TCP_SOCK_UNAVAILABLE);
            return x;
        }
        x.retrans = sock::total_retrans(tp);
        ff.retrans = x.retrans;
        let hs = handshake_ns(stats, st, t, tp);
        if let Some(ns) = hs {
            x.handshake_known = true;
            ff.handshake_known = true;
            ff.handshake_ns = ns;
        }
    }
    x
}

#[inline(always)]
fn handshake_ns(stats: &mut Stats, st: &SockState, t: &Tr, tp: *const u8) -> Option<u64> {
    if t.old == state::SYN_SENT {
        return st.active_handshake_ns(t.now);
    }
    if t.old != state::SYN_RECV {
        return None;
    }
    let hs = machine::passive_handshake_ns(sock::srtt_us_x8(tp));
    if hs.is_none() {
        bump(stats, counter::PASSIVE_RTT_UNKNOWN);
    }
    hs
}

/// Lifetime and payload bytes of an established connection at its → CLOSE.
#[inline(always)]
fn close_facts(
    stats: &mut Stats,
    st: &SockState,
    t: &Tr,
    e: &Effects,
    x: &Facts,
    ff: &mut FlowFacts,
) {
    if !e.closed {
        return;
    }
    let tp = sock::tcp(t.sk);
    if tp.is_null() {
        bump(stats, counter::TCP_SOCK_UNAVAILABLE);
    } else {
        let (rx, acked) = sock::raw_bytes(tp);
        (ff.bytes_received, ff.bytes_acked) =
            payload_bytes(st.dir, e.close_kind, x.sock_done, rx, acked);
    }
    if let Some(l) = st.lifetime_ns(t.now) {
        ff.lifetime_ns = l;
        ff.lifetime_known = true;
        output::observe_hist(hist_kind::LIFETIME, l);
    }
}

#[inline(always)]
fn counted(stats: &mut Stats, st: &mut SockState, t: &Tr) {
    let mut ff = FlowFacts::default();
    let x = read_facts(stats, st, t, &mut ff);
    let e = effects(t.old, t.new, st.dir, &x);
    count(stats, t.old, t.new, &e);
    if t.old == state::SYN_RECV && t.new == state::ESTABLISHED {
        crate::synack::on_accept(stats, st.netns, t.ends.lport);
    }
    if e.hist != NONE {
        output::observe_hist(e.hist, ff.handshake_ns);
    }
    close_facts(stats, st, t, &e, &x, &mut ff);
    if e.time_wait {
        output::count_tw_second(t.now);
    }
    if e.flow != flow_point::NONE && ld!(FILTER.flows) != 0 {
        let args = FlowArgs {
            ends: &t.ends,
            st,
            e: &e,
            facts: &ff,
        };
        output::update_flow(t.sk, stats, &args);
    }
    if ld!(FILTER.emit_events) != 0 {
        event(st, t, &e, &x, &ff);
    }
}

#[inline(always)]
fn event(st: &SockState, t: &Tr, e: &Effects, x: &Facts, ff: &FlowFacts) {
    let mut flags = 0u8;
    let in_state_ns = match st.in_state_ns(t.now) {
        Some(d) => {
            flags |= flag::DURATION_KNOWN;
            d
        }
        None => 0,
    };
    if ff.lifetime_known {
        flags |= flag::LIFETIME_KNOWN;
    }
    if ff.handshake_known {
        flags |= flag::HANDSHAKE_KNOWN;
    }
    if x.retrans > 0 {
        flags |= flag::RETRANS;
    }
    let facts = EventFacts {
        old: t.old,
        new: t.new,
        ts: t.now,
        cookie: t.cookie,
        in_state_ns,
        handshake_ns: ff.handshake_ns,
        lifetime_ns: ff.lifetime_ns,
        bytes_received: ff.bytes_received,
        bytes_acked: ff.bytes_acked,
        retrans: x.retrans,
        sk_err: x.sk_err,
        close_kind: e.close_kind,
        flags,
        ..EventFacts::default()
    };
    output::emit(t.sk, &t.ends, st, &facts);
}
