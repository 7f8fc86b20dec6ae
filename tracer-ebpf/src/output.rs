//! What a counted transition writes besides the stats block: histograms,
//! the TIME_WAIT seconds ring, the flow table, and live events.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::{bpf_get_smp_processor_id, bpf_ringbuf_query},
};
use tracer_common::{
    account::{apply_flow, Effects, FlowFacts},
    counter, dir, hist, FlowKey, FlowStats, SockState, Stats, TW_SLOTS,
};

use crate::{
    ld,
    maps::{bump, EVENT_RINGS, FLOWS, FLOW_GEN, FLOW_NEW, HISTS, TW_SECONDS},
    sock::{self, Ends},
};

#[inline(always)]
pub fn observe_hist(kind: u32, v: u64) {
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

/// Count one TIME_WAIT entry in this second's slot of the ring.
#[inline(always)]
pub fn count_tw_second(now: u64) {
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

/// Zeroed value to insert new flows from (a static, so the helper takes it).
static ZERO_FLOW: FlowStats = FlowStats {
    established: 0,
    connect_failed: 0,
    connect_no_local_port: 0,
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
    comm: [0; tracer_common::TASK_COMM_LEN],
};

/// Add the connection to its flow row, or to the `other` row when the
/// table is full, so rows + other always equal the totals.
#[inline(never)]
pub fn update_flow(sk: *const u8, stats: &mut Stats, x: &FlowArgs) {
    let st = x.st;
    let mut key = FlowKey {
        family: x.ends.family,
        port: if st.dir == dir::ACTIVE {
            x.ends.rport
        } else {
            x.ends.lport
        },
        tgid: st.key_tgid,
        netns: st.netns,
        dir: st.dir,
        ..FlowKey::default()
    };
    sock::addrs(sk, x.ends.family, &mut key.raddr, &mut key.laddr);
    if let Some(g) = FLOW_GEN.get_ptr(0) {
        // SAFETY: array slot 0 exists; a torn read is impossible for a u32.
        key.gen = unsafe { *g } as u8;
    }
    let mut p = FLOWS.get_ptr_mut(&key);
    if p.is_none() {
        // EEXIST from a racing CPU is fine: the lookup below finds its
        // entry (and that CPU counted the new row).
        if FLOWS.insert(&key, &ZERO_FLOW, BPF_NOEXIST as u64).is_ok() {
            if let Some(n) = FLOW_NEW.get_ptr_mut(0) {
                // SAFETY: per-CPU slot 0, this program its only writer here.
                unsafe { *n += 1 };
            }
        }
        p = FLOWS.get_ptr_mut(&key);
    }
    match p {
        // SAFETY: per-CPU value of this CPU; this program is its only writer here.
        Some(f) => apply_flow(unsafe { &mut *f }, x.e, st, x.facts),
        None => {
            bump(stats, counter::FLOW_TABLE_FULL);
            apply_flow(&mut stats.other_flow, x.e, st, x.facts);
        }
    }
}

pub struct FlowArgs<'a> {
    pub ends: &'a Ends,
    pub st: &'a SockState,
    pub e: &'a Effects,
    pub facts: &'a FlowFacts,
}

/// Per-transition facts an event carries besides the tuple and owner.
#[derive(Default)]
pub struct EventFacts {
    pub ts: u64,
    pub cookie: u64,
    pub old: u8,
    pub new: u8,
    pub in_state_ns: u64,
    pub handshake_ns: u64,
    pub lifetime_ns: u64,
    pub bytes_received: u64,
    pub bytes_acked: u64,
    pub retrans: u32,
    pub sk_err: u16,
    pub close_kind: u8,
    pub flags: u8,
    /// `event_kind::*` (0: a transition).
    pub kind: u8,
}

/// Write one event straight into the ring buffer (summary mode: nothing;
/// `FILTER.emit_events` is known to the verifier, which prunes this then).
#[inline(never)]
pub fn emit(sk: *const u8, e: &Ends, st: &SockState, x: &EventFacts) {
    emit_with(e, st, x, |remote, local| {
        sock::addrs(sk, e.family, remote, local)
    });
}

/// `emit` with the addresses from `addrs(remote, local)` (zeroed before).
#[inline(always)]
pub fn emit_with(
    e: &Ends,
    st: &SockState,
    x: &EventFacts,
    addrs: impl FnOnce(&mut [u8; 16], &mut [u8; 16]),
) {
    if ld!(FILTER.emit_events) == 0 {
        return;
    }
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // No ring: a CPU brought online after the rings were made.
    let ring = EVENT_RINGS.get(cpu);
    let Some(mut slot) = ring.and_then(|r| r.reserve(0)) else {
        if let Some(stats) = crate::maps::stats() {
            bump(stats, counter::RINGBUF_DROPS);
        }
        return;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: `ev` points at a reserved, exclusively owned ring-buffer slot of
    // size_of::<Event>(); every field is written before submit.
    unsafe {
        (*ev).ts_ns = x.ts;
        (*ev).cookie = x.cookie;
        (*ev).in_state_ns = x.in_state_ns;
        (*ev).handshake_ns = x.handshake_ns;
        (*ev).lifetime_ns = x.lifetime_ns;
        (*ev).bytes_received = x.bytes_received;
        (*ev).bytes_acked = x.bytes_acked;
        (*ev).cgroup_id = st.cgroup_id;
        core::ptr::addr_of_mut!((*ev).saddr)
            .cast::<[u64; 2]>()
            .write([0; 2]);
        core::ptr::addr_of_mut!((*ev).daddr)
            .cast::<[u64; 2]>()
            .write([0; 2]);
        addrs(&mut (*ev).daddr, &mut (*ev).saddr);
        (*ev).tgid = st.tgid;
        (*ev).retrans = x.retrans;
        (*ev).comm = st.comm;
        (*ev).sport = e.lport;
        (*ev).dport = e.rport;
        (*ev).family = e.family;
        (*ev).sk_err = x.sk_err;
        (*ev).netns = st.netns;
        (*ev).oldstate = x.old;
        (*ev).newstate = x.new;
        (*ev).close_kind = x.close_kind;
        (*ev).dir = st.dir;
        (*ev).flags = x.flags | (st.flags & tracer_common::flag::OWNER_KNOWN);
        (*ev).kind = x.kind;
        (*ev)._pad = [0; 6];
    }
    let pending = ring.map_or(0, |r| {
        // SAFETY: the ring's map pointer, as the verifier gave it to us.
        unsafe {
            bpf_ringbuf_query(
                core::ptr::from_ref(r).cast_mut().cast(),
                BPF_RB_AVAIL_DATA as u64,
            )
        }
    });
    let wake = if tracer_common::wake_reader(pending, ld!(WAKE_BYTES)) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    slot.submit(wake as u64);
}
