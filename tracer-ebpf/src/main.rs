//! Kernel side of the TCP state tracer.
//!
//! One BTF tracepoint program on `sock:inet_sock_set_state`
//! (`(const struct sock *sk, int oldstate, int newstate)`, Linux ≥ 5.x with BTF;
//! tp_btf needs no tracefs and is the only tracepoint flavour allowed to call
//! `bpf_get_socket_cookie`). It does capture, filtering and exact aggregation;
//! formatting and policy live in userspace.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{bpf_get_current_cgroup_id, bpf_get_socket_cookie},
    },
    macros::{btf_tracepoint, map},
    maps::{HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::BtfTracePointContext,
};
use aya_log_ebpf::warn;
use tracer_common::{
    account::{self, effects, Effects},
    close, counter, dir, flag, hist,
    hist::Hist,
    hist_kind, state, transition_index, Event, Filter, FlowKey, FlowStats, Offsets, Owner,
    SockState, TwSlot, AF_INET, AF_INET6, IPPROTO_TCP, TASK_COMM_LEN, TRANSITION_SLOTS, TW_SLOTS,
};

/// Field offsets, written by the loader (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
static OFFSETS: Offsets = Offsets {
    skc_daddr: 0,
    skc_rcv_saddr: 0,
    skc_dport: 0,
    skc_num: 0,
    skc_family: 0,
    skc_v6_daddr: 0,
    skc_v6_rcv_saddr: 0,
    sk_protocol: 0,
    sk_err: 0,
    sk_flags: 0,
    inet_sport: 0,
    srtt_us: 0,
    total_retrans: 0,
    bytes_received: 0,
    bytes_acked: 0,
    valid: 0,
};

/// Filters, written by the loader; read-only so the verifier prunes unused branches.
#[unsafe(no_mangle)]
static FILTER: Filter = Filter {
    tgid: 0,
    port: 0,
    lport: 0,
    rport: 0,
    family: 0,
    addr: [0; 16],
    addr_family: 0,
    addr_prefix_len: 0,
    has_comm: 0,
    comm: [0; TASK_COMM_LEN],
    emit_events: 0,
    any: 0,
    _pad: [0; 6],
};

/// Read one field of a load-time global without letting the compiler fold the default.
macro_rules! ld {
    ($global:ident . $field:ident) => {
        // SAFETY: reading a field of a static that lives for the program's lifetime.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!($global.$field)) }
    };
}

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[map]
static TRANSITIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(TRANSITION_SLOTS, 0);

#[map]
static HISTS: PerCpuArray<Hist> = PerCpuArray::with_max_entries(hist_kind::COUNT, 0);

/// In-flight sockets by cookie; entries are removed at → CLOSE.
#[map]
static INFLIGHT: LruHashMap<u64, SockState> = LruHashMap::with_max_entries(262_144, 0);

/// Listening ports → the process that called listen().
#[map]
static LISTENERS: HashMap<u16, Owner> = HashMap::with_max_entries(4096, 0);

/// TIME_WAIT entries per second, in a ring of `TW_SLOTS` seconds.
#[map]
static TW_SECONDS: PerCpuArray<TwSlot> = PerCpuArray::with_max_entries(TW_SLOTS, 0);

#[map]
static FLOWS: PerCpuHashMap<FlowKey, FlowStats> = PerCpuHashMap::with_max_entries(16_384, 0);

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    if let Err(e) = try_set_state(&ctx) {
        warn!(&ctx, "inet_sock_set_state: kernel read failed: {}", e);
    }
    0
}

/// An empty program on the same tracepoint: the benchmarks' floor for the
/// in-kernel cost of a tp_btf invocation. Never attached by the tracer itself.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn noop(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[inline(always)]
fn bump(idx: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, this program is the only writer on this CPU.
        unsafe { *p += 1 };
    }
}

/// Read a `T` at `base + off` from kernel memory.
#[inline(always)]
fn rd<T>(base: *const u8, off: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel validates the address; a fault returns Err.
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const T) }
}

struct Tuple {
    family: u16,
    sport: u16,
    dport: u16,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

#[inline(always)]
fn read_tuple(sk: *const u8, family: u16) -> Result<Tuple, i32> {
    let sport = u16::from_be(rd::<u16>(sk, ld!(OFFSETS.inet_sport))?);
    let dport = u16::from_be(rd::<u16>(sk, ld!(OFFSETS.skc_dport))?);
    let mut saddr = [0u8; 16];
    let mut daddr = [0u8; 16];
    if family == AF_INET6 {
        saddr = rd(sk, ld!(OFFSETS.skc_v6_rcv_saddr))?;
        daddr = rd(sk, ld!(OFFSETS.skc_v6_daddr))?;
    } else {
        let s: [u8; 4] = rd(sk, ld!(OFFSETS.skc_rcv_saddr))?;
        let d: [u8; 4] = rd(sk, ld!(OFFSETS.skc_daddr))?;
        saddr[..4].copy_from_slice(&s);
        daddr[..4].copy_from_slice(&d);
    }
    Ok(Tuple {
        family,
        sport,
        dport,
        saddr,
        daddr,
    })
}

#[derive(PartialEq, Eq, Clone, Copy)]
enum Verdict {
    Match,
    NoMatch,
    /// The tuple is not complete yet (source port 0 at CLOSE→SYN_SENT, peer
    /// unknown at LISTEN→SYN_RECV): decide at the socket's next transition.
    Unknown,
}

/// Compare a comm with the filter's, reading the filter bytes volatile (a
/// plain reference would let the compiler fold in the all-zero default).
#[inline(always)]
fn comm_matches_filter(a: &[u8; TASK_COMM_LEN]) -> bool {
    let mut i = 0;
    while i < TASK_COMM_LEN {
        // SAFETY: reading one byte of a static.
        let want = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(FILTER.comm[i])) };
        if a[i] != want {
            return false;
        }
        if want == 0 {
            return true;
        }
        i += 1;
    }
    true
}

/// Does the remote address fall in the filter's prefix? IPv4-mapped IPv6
/// addresses match IPv4 prefixes.
#[inline(never)]
fn addr_match(t: &Tuple) -> bool {
    let af = ld!(FILTER.addr_family);
    let plen = ld!(FILTER.addr_prefix_len) as usize;
    let d = &t.daddr;
    let mapped = t.family == AF_INET6
        && af == AF_INET
        && d[..10] == [0u8; 10]
        && d[10] == 0xff
        && d[11] == 0xff;
    let fam = if mapped { AF_INET } else { t.family };
    if fam != af {
        return false;
    }
    let base = if mapped { 12 } else { 0 };
    let mut i = 0;
    while i < 16 {
        let bits = if plen >= (i + 1) * 8 {
            8
        } else if plen > i * 8 {
            plen - i * 8
        } else {
            0
        };
        if bits == 0 || base + i >= 16 {
            break;
        }
        // SAFETY: reading one byte of a static.
        let want = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(FILTER.addr[i])) };
        let mask: u8 = 0xffu8 << (8 - bits);
        if (d[base + i] ^ want) & mask != 0 {
            return false;
        }
        i += 1;
    }
    true
}

#[inline(never)]
fn verdict(t: &Tuple, st: &SockState) -> Verdict {
    if ld!(FILTER.any) == 0 {
        return Verdict::Match;
    }
    let fam = ld!(FILTER.family);
    if fam != 0 && fam != t.family {
        return Verdict::NoMatch;
    }
    let owner_known = st.flags & flag::OWNER_KNOWN != 0;
    let tgid = ld!(FILTER.tgid);
    if tgid != 0 && (!owner_known || st.tgid != tgid) {
        return Verdict::NoMatch;
    }
    if ld!(FILTER.has_comm) != 0 && (!owner_known || !comm_matches_filter(&st.comm)) {
        return Verdict::NoMatch;
    }
    let mut unknown = false;
    let lport = ld!(FILTER.lport);
    if lport != 0 {
        if t.sport == 0 {
            unknown = true;
        } else if t.sport != lport {
            return Verdict::NoMatch;
        }
    }
    let rport = ld!(FILTER.rport);
    if rport != 0 {
        if t.dport == 0 {
            unknown = true;
        } else if t.dport != rport {
            return Verdict::NoMatch;
        }
    }
    let port = ld!(FILTER.port);
    if port != 0 && t.sport != port && t.dport != port {
        if t.sport == 0 || t.dport == 0 {
            unknown = true;
        } else {
            return Verdict::NoMatch;
        }
    }
    if ld!(FILTER.addr_family) != 0 {
        if t.dport == 0 {
            unknown = true;
        } else if !addr_match(t) {
            return Verdict::NoMatch;
        }
    }
    if unknown {
        Verdict::Unknown
    } else {
        Verdict::Match
    }
}

/// Capture the current task as the socket's owner.
#[inline(always)]
fn own(st: &mut SockState) {
    st.tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    st.comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
    // SAFETY: helper without arguments.
    st.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    st.flags |= flag::OWNER_KNOWN;
}

/// Count one TIME_WAIT entry in this second's slot of the ring.
#[inline(always)]
fn count_tw_second(now: u64) {
    let sec = now / 1_000_000_000;
    if let Some(s) = TW_SECONDS.get_ptr_mut((sec % TW_SLOTS as u64) as u32) {
        // SAFETY: per-CPU slot, this program is the only writer on this CPU.
        unsafe {
            if (*s).sec != sec {
                (*s).sec = sec;
                (*s).count = 0;
            }
            (*s).count += 1;
        }
    }
}

#[inline(always)]
fn observe_hist(kind: u32, v: u64) {
    if let Some(h) = HISTS.get_ptr_mut(kind) {
        let b = hist::bucket(v);
        // SAFETY: per-CPU slot; `b` is bounds-checked against the array.
        unsafe {
            if b < hist::BUCKETS {
                (*h).buckets[b] += 1;
            }
            (*h).count += 1;
            (*h).sum += v;
            if v > (*h).max {
                (*h).max = v;
            }
        }
    }
}

/// Zeroed value to insert new flows from (a map value, so the helper takes it).
static ZERO_FLOW: FlowStats = FlowStats {
    established: 0,
    connect_failed: 0,
    time_wait: 0,
    fin_wait2_parked: 0,
    resets_sent: 0,
    resets_received: 0,
    close_local_first: 0,
    close_peer_first: 0,
    close_simultaneous: 0,
    handshake_count: 0,
    handshake_sum_ns: 0,
    handshake_max_ns: 0,
    handshake_retrans: 0,
    retrans_total: 0,
    closed: 0,
    lifetime_sum_ns: 0,
    lifetime_max_ns: 0,
    bytes_received: 0,
    bytes_acked: 0,
    cgroup_id: 0,
    comm: [0; TASK_COMM_LEN],
};

/// Socket facts a flow update takes: the handshake's latency and retransmits,
/// and what an established connection's close reports (lifetime, payload bytes).
#[derive(Default)]
struct FlowFacts {
    handshake_ns: u64,
    retrans: u32,
    lifetime_ns: u64,
    lifetime_known: bool,
    bytes_received: u64,
    bytes_acked: u64,
}

#[inline(never)]
fn update_flow(t: &Tuple, st: &SockState, e: &Effects, cf: &FlowFacts) {
    let (handshake_ns, retrans) = (cf.handshake_ns, cf.retrans);
    let mut key = FlowKey {
        raddr: t.daddr,
        laddr: t.saddr,
        family: t.family,
        port: if st.dir == dir::ACTIVE {
            t.dport
        } else {
            t.sport
        },
        tgid: st.tgid,
        dir: st.dir,
        _pad: [0; 3],
    };
    if st.flags & flag::OWNER_KNOWN == 0 {
        key.tgid = 0;
    }
    let mut p = FLOWS.get_ptr_mut(&key);
    if p.is_none() {
        // EEXIST from a racing CPU is fine: the lookup below finds its entry.
        if let Err(e) = FLOWS.insert(&key, &ZERO_FLOW, BPF_NOEXIST as u64) {
            if e != -17 {
                bump(counter::FLOW_TABLE_FULL);
                return;
            }
        }
        p = FLOWS.get_ptr_mut(&key);
    }
    let Some(f) = p else {
        bump(counter::FLOW_TABLE_FULL);
        return;
    };
    // SAFETY: per-CPU value of this CPU; this program is its only writer here.
    unsafe {
        (*f).established += e.established as u64;
        (*f).connect_failed += e.connect_failed as u64;
        (*f).time_wait += e.time_wait as u64;
        (*f).fin_wait2_parked += e.fin_wait2_parked as u64;
        (*f).resets_sent += e.resets_sent as u64;
        (*f).resets_received += e.resets_received as u64;
        (*f).close_local_first += e.close_local_first as u64;
        (*f).close_peer_first += e.close_peer_first as u64;
        (*f).close_simultaneous += e.close_simultaneous as u64;
        if e.closed != 0 {
            (*f).bytes_received += cf.bytes_received;
            (*f).bytes_acked += cf.bytes_acked;
            if cf.lifetime_known {
                (*f).closed += 1;
                (*f).lifetime_sum_ns += cf.lifetime_ns;
                if cf.lifetime_ns > (*f).lifetime_max_ns {
                    (*f).lifetime_max_ns = cf.lifetime_ns;
                }
            }
        }
        if e.handshake != 0 {
            (*f).handshake_count += 1;
            (*f).handshake_sum_ns += handshake_ns;
            if handshake_ns > (*f).handshake_max_ns {
                (*f).handshake_max_ns = handshake_ns;
            }
            if retrans > 0 {
                (*f).handshake_retrans += 1;
            }
            (*f).retrans_total += retrans as u64;
        }
        if st.flags & flag::OWNER_KNOWN != 0 {
            (*f).comm = st.comm;
            (*f).cgroup_id = st.cgroup_id;
        }
    }
}

/// Per-transition facts that go into an event besides the tuple and owner.
struct Detail {
    ts: u64,
    old: u8,
    new: u8,
    in_state_ns: u64,
    handshake_ns: u64,
    retrans: u32,
    sk_err: u16,
    close_kind: u8,
    flags: u8,
    lifetime_ns: u64,
    bytes_received: u64,
    bytes_acked: u64,
}

#[inline(never)]
fn emit(t: &Tuple, st: &SockState, cookie: u64, d: &Detail) {
    if ld!(FILTER.emit_events) == 0 {
        return;
    }
    let Some(mut slot) = EVENTS.reserve::<Event>(0) else {
        bump(counter::RINGBUF_DROPS);
        return;
    };
    let e = slot.as_mut_ptr();
    // SAFETY: `e` points at a reserved, exclusively owned ring-buffer slot of
    // size_of::<Event>(); every field is written before submit.
    unsafe {
        (*e).ts_ns = d.ts;
        (*e).cookie = cookie;
        (*e).in_state_ns = d.in_state_ns;
        (*e).handshake_ns = d.handshake_ns;
        (*e).lifetime_ns = d.lifetime_ns;
        (*e).bytes_received = d.bytes_received;
        (*e).bytes_acked = d.bytes_acked;
        (*e).cgroup_id = st.cgroup_id;
        (*e).saddr = t.saddr;
        (*e).daddr = t.daddr;
        (*e).tgid = st.tgid;
        (*e).retrans = d.retrans;
        (*e).comm = st.comm;
        (*e).sport = t.sport;
        (*e).dport = t.dport;
        (*e).family = t.family;
        (*e).sk_err = d.sk_err;
        (*e).oldstate = d.old;
        (*e).newstate = d.new;
        (*e).close_kind = d.close_kind;
        (*e).dir = st.dir;
        (*e).flags = d.flags | (st.flags & flag::OWNER_KNOWN);
        (*e)._pad = [0; 11];
    }
    slot.submit(0);
}

/// Count a transition whose effects need no socket facts (listener
/// transitions, and the deferred CLOSE→SYN_SENT / LISTEN→SYN_RECV).
#[inline(always)]
fn count_simple(old: u8, new: u8) {
    if let Some(p) = TRANSITIONS.get_ptr_mut(transition_index(old, new)) {
        // SAFETY: per-CPU slot.
        unsafe { *p += 1 };
    }
    for c in effects(old, new, dir::UNKNOWN, 0, false, 0, false).counters {
        if c != account::NONE {
            bump(c);
        }
    }
}

fn try_set_state(ctx: &BtfTracePointContext) -> Result<(), i32> {
    if ld!(OFFSETS.valid) == 0 {
        return Ok(());
    }
    let sk: *const u8 = ctx.arg(0);
    let old_i: i32 = ctx.arg(1);
    let new_i: i32 = ctx.arg(2);
    if !(0..state::COUNT as i32).contains(&old_i) || !(0..state::COUNT as i32).contains(&new_i) {
        return Ok(());
    }
    let (old, new) = (old_i as u8, new_i as u8);

    let proto: u16 = rd(sk, ld!(OFFSETS.sk_protocol))?;
    if proto != IPPROTO_TCP {
        bump(counter::NON_TCP);
        return Ok(());
    }
    let family: u16 = rd(sk, ld!(OFFSETS.skc_family))?;
    if family != AF_INET && family != AF_INET6 {
        return Ok(());
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let t = read_tuple(sk, family)?;

    // A listener: remember who owns the port, for the children it will accept.
    if new == state::LISTEN {
        let mut st = SockState::default();
        own(&mut st);
        let owner = Owner {
            cgroup_id: st.cgroup_id,
            tgid: st.tgid,
            comm: st.comm,
            _pad: 0,
        };
        let _ = LISTENERS.insert(&t.sport, &owner, 0);
    }
    // (LISTEN → CLOSE runs in close()'s context too, but the port's owner
    // entry stays: another socket may still listen on it.)
    if old == state::LISTEN && new == state::CLOSE || new == state::LISTEN {
        // Listener transitions: counted in the matrix (if they match), no in-flight state.
        let mut owner = SockState::default();
        if new == state::LISTEN {
            own(&mut owner);
        }
        // A listener has no peer: it matches only filters it fully satisfies.
        if verdict(&t, &owner) == Verdict::Match {
            count_simple(old, new);
            let detail = Detail {
                ts: now,
                old,
                new,
                in_state_ns: 0,
                handshake_ns: 0,
                retrans: 0,
                sk_err: 0,
                close_kind: if new == state::CLOSE {
                    close::LISTENER_CLOSED
                } else {
                    close::NONE
                },
                flags: 0,
                lifetime_ns: 0,
                bytes_received: 0,
                bytes_acked: 0,
            };
            emit(&t, &owner, 0, &detail);
        }
        return Ok(());
    }

    // SAFETY: tp_btf passes a valid `struct sock *`; the helper only reads it.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };

    // Per-socket state: created at the socket's birth transition, or at the
    // first transition seen for sockets older than the tracer.
    let existing = INFLIGHT.get_ptr_mut(&cookie);
    let had_state = existing.is_some();
    let mut st = match existing {
        // SAFETY: the LRU map value stays valid for this program run.
        Some(p) => unsafe { *p },
        None => SockState::default(),
    };
    if !had_state {
        if old == state::CLOSE && new == state::SYN_SENT {
            st.dir = dir::ACTIVE;
            st.ts_syn = now;
            st.ts_birth = now;
            own(&mut st);
        } else if old == state::LISTEN && new == state::SYN_RECV {
            st.dir = dir::PASSIVE;
            st.ts_birth = now;
            // SAFETY: map value read-only copy.
            if let Some(o) = unsafe { LISTENERS.get(&t.sport) } {
                if o.tgid != 0 {
                    st.tgid = o.tgid;
                    st.comm = o.comm;
                    st.cgroup_id = o.cgroup_id;
                    st.flags |= flag::OWNER_KNOWN;
                }
            }
        } else {
            // Older than the tracer (or evicted): infer the direction from
            // whether the local port is a listener.
            // SAFETY: lookup only.
            st.dir = if unsafe { LISTENERS.get(&t.sport) }.is_some() {
                dir::PASSIVE
            } else {
                dir::ACTIVE
            };
        }
    }
    // close() and shutdown() run in the owner's context: capture it there if
    // it is still unknown (accepted sockets whose listener predates the tracer).
    if st.flags & flag::OWNER_KNOWN == 0
        && ((old == state::ESTABLISHED && new == state::FIN_WAIT1)
            || (old == state::CLOSE_WAIT && new == state::LAST_ACK))
    {
        own(&mut st);
    }

    let v = verdict(&t, &st);
    if v == Verdict::NoMatch {
        bump(counter::FILTERED_OUT);
        if had_state {
            let _ = INFLIGHT.remove(&cookie);
        }
        return Ok(());
    }
    if v == Verdict::Unknown {
        st.flags |= flag::DEFERRED;
        st.deferred_old = old;
        st.deferred_new = new;
        st.deferred_ts = now;
        st.ts_state = now;
        store_state(existing, cookie, &st);
        return Ok(());
    }

    // Matched. A transition held back for an incomplete tuple counts now.
    if st.flags & flag::DEFERRED != 0 {
        let (dold, dnew) = (st.deferred_old, st.deferred_new);
        count_simple(dold, dnew);
        let dd = Detail {
            ts: st.deferred_ts,
            old: dold,
            new: dnew,
            in_state_ns: 0,
            handshake_ns: 0,
            retrans: 0,
            sk_err: 0,
            close_kind: close::NONE,
            flags: 0,
            lifetime_ns: 0,
            bytes_received: 0,
            bytes_acked: 0,
        };
        emit(&t, &st, cookie, &dd);
        st.flags &= !flag::DEFERRED;
    }

    let birth = (old == state::CLOSE && new == state::SYN_SENT)
        || (old == state::LISTEN && new == state::SYN_RECV);
    if !had_state && !birth && new != state::CLOSE {
        bump(counter::INFLIGHT_MISSING);
    }

    if let Some(p) = TRANSITIONS.get_ptr_mut(transition_index(old, new)) {
        // SAFETY: per-CPU slot.
        unsafe { *p += 1 };
    }

    let mut ev_flags = 0u8;
    let in_state_ns = if had_state && st.ts_state != 0 {
        ev_flags |= flag::DURATION_KNOWN;
        now.saturating_sub(st.ts_state)
    } else {
        0
    };

    // Socket facts the accounting needs, read only where they matter.
    let mut sk_err: u16 = 0;
    let mut sock_done = false;
    let mut retrans: u32 = 0;
    let mut handshake_ns: u64 = 0;
    let mut handshake_known = false;
    if new == state::CLOSE {
        sk_err = rd::<i32>(sk, ld!(OFFSETS.sk_err))? as u16;
        let sk_flags: u64 = rd(sk, ld!(OFFSETS.sk_flags))?;
        // SOCK_DONE is bit 1 of sk_flags (enum sock_flags): the peer's FIN arrived.
        sock_done = sk_flags & (1 << 1) != 0;
    } else if new == state::ESTABLISHED {
        retrans = rd::<u32>(sk, ld!(OFFSETS.total_retrans))?;
        if old == state::SYN_SENT {
            if st.ts_syn != 0 {
                handshake_ns = now.saturating_sub(st.ts_syn);
                handshake_known = true;
            } else if had_state {
                // Entry recreated after eviction: no start time.
                bump(counter::INFLIGHT_MISSING);
            }
        } else if old == state::SYN_RECV {
            // tcp_synack_rtt_meas() ran first: srtt_us (<<3) is the SYN-ACK→ACK RTT.
            let srtt: u32 = rd(sk, ld!(OFFSETS.srtt_us))?;
            handshake_ns = (srtt as u64 >> 3) * 1000;
            handshake_known = true;
        }
    }
    let e = effects(
        old,
        new,
        st.dir,
        sk_err,
        sock_done,
        retrans,
        handshake_known,
    );
    let mut cf = FlowFacts {
        handshake_ns,
        retrans,
        ..FlowFacts::default()
    };
    if e.closed != 0 {
        let raw_rx: u64 = rd(sk, ld!(OFFSETS.bytes_received))?;
        let raw_acked: u64 = rd(sk, ld!(OFFSETS.bytes_acked))?;
        (cf.bytes_received, cf.bytes_acked) =
            account::payload_bytes(st.dir, e.close_kind, sock_done, raw_rx, raw_acked);
        if st.ts_birth != 0 {
            cf.lifetime_ns = now.saturating_sub(st.ts_birth);
            cf.lifetime_known = true;
            ev_flags |= flag::LIFETIME_KNOWN;
            observe_hist(hist_kind::LIFETIME, cf.lifetime_ns);
        }
    }
    if e.time_wait != 0 {
        count_tw_second(now);
    }
    for c in e.counters {
        if c != account::NONE {
            bump(c);
        }
    }
    if e.hist != account::NONE {
        observe_hist(e.hist, handshake_ns);
    }
    if e.touches_flow() {
        update_flow(&t, &st, &e, &cf);
    }
    if retrans > 0 {
        ev_flags |= flag::RETRANS;
    }
    let close_kind = e.close_kind;
    // (Summary mode streams nothing: skip building the event. FILTER is
    // read-only, so the verifier prunes whichever branch is dead.)
    if ld!(FILTER.emit_events) != 0 {
        let detail = Detail {
            ts: now,
            old,
            new,
            in_state_ns,
            handshake_ns,
            retrans,
            sk_err,
            close_kind,
            flags: ev_flags,
            lifetime_ns: cf.lifetime_ns,
            bytes_received: cf.bytes_received,
            bytes_acked: cf.bytes_acked,
        };
        emit(&t, &st, cookie, &detail);
    }

    if new == state::CLOSE {
        if had_state {
            let _ = INFLIGHT.remove(&cookie);
        }
    } else {
        st.ts_state = now;
        store_state(existing, cookie, &st);
    }
    Ok(())
}

/// Save a socket's state: in place when it already has an entry (an LRU
/// update allocates a new element and frees the old one — the most
/// expensive step of a transition before this), else as a new entry.
#[inline(always)]
fn store_state(existing: Option<*mut SockState>, cookie: u64, st: &SockState) {
    match existing {
        // SAFETY: the entry's value, found by this run; transitions of one
        // socket are serialized by the kernel (socket lock), so no other
        // run writes it meanwhile.
        Some(p) => unsafe { *p = *st },
        None => {
            if INFLIGHT.insert(&cookie, st, 0).is_err() {
                bump(counter::INFLIGHT_INSERT_FAILED);
            }
        }
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
