//! Every map of the program. Per-CPU where the program writes counters, so
//! runs on different CPUs never contend; userspace sums over CPUs.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::{ArrayOfMaps, RingBuf},
    macros::{btf_map, map},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap},
};
use tracer_common::{
    hist::Hist, hist_kind, Event, FlowKey, FlowStats, ListenerKey, ListenerStats, Owner, SockState,
    Stats, TwSlot, HOT_SOCKET_SLOTS, SOCKET_SLOTS, TW_SLOTS,
};

/// Events for live mode: one ring buffer per CPU (written in place; full →
/// counted as dropped), so CPUs never contend for a ring's lock. Userspace
/// creates the rings (`--ring-kib` each), sets the outer array's size to
/// the CPU count and merges the rings by timestamp. A single shared ring
/// made events mode cost 1.7-1.9x summary mode on two CPUs (1.14x with
/// everything on one CPU): its spin lock and positions bounced between
/// them. The size here is the template's only (the kernel compares type,
/// key, value and flags of inner maps, not their size).
#[btf_map]
pub static EVENT_RINGS: ArrayOfMaps<RingBuf<Event, 4096>, 1> = ArrayOfMaps::new();

/// Counters, the transition matrix and the flow table's `other` row: the
/// one lookup every run makes.
#[map]
pub static STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static HISTS: PerCpuArray<Hist> = PerCpuArray::with_max_entries(hist_kind::COUNT, 0);

/// TIME_WAIT entries per second, in a ring of `TW_SLOTS` seconds.
#[map]
pub static TW_SECONDS: PerCpuArray<TwSlot> = PerCpuArray::with_max_entries(TW_SLOTS, 0);

/// Per-flow breakdown; connections that find it full go to `Stats::other_flow`.
/// Userspace harvests it (reads and deletes the rows of past generations)
/// once a quarter of it is new rows, or every second, so it holds only the
/// flows of the last harvest periods.
#[map]
pub static FLOWS: PerCpuHashMap<FlowKey, FlowStats> = PerCpuHashMap::with_max_entries(16_384, 0);

/// The generation new flow rows are written in (`FlowKey::gen`), set by
/// userspace before each harvest.
#[map]
pub static FLOW_GEN: Array<u32> = Array::with_max_entries(1, 0);

/// Flow rows this CPU created (only the insert path counts): the harvest
/// polls it to run as soon as the table fills, and rarely otherwise.
#[map]
pub static FLOW_NEW: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Listening ports per network namespace → the process that called listen().
#[map]
pub static LISTENERS: HashMap<ListenerKey, Owner> = HashMap::with_max_entries(8192, 0);

/// What happened per listening port in a namespace (SYN-ACK retransmits,
/// completed handshakes); rows stay for the run (bounded by the ports
/// that saw any), full → `counter::LISTENER_STATS_FULL`.
#[map]
pub static LISTENER_STATS: PerCpuHashMap<ListenerKey, ListenerStats> =
    PerCpuHashMap::with_max_entries(8192, 0);

/// Per-socket state, keyed by socket cookie: created at the socket's birth
/// (or first sight), removed at its → CLOSE (every TCP socket passes there
/// before it is freed; cookies are never reused). Not preallocated, so an
/// entry costs memory only while its socket lives. It replaced socket-local
/// storage, which cost as much per transition but twice the host CPU per
/// connection outside the program (a kzalloc with memcg charging at birth,
/// an RCU free at socket destruction); the hash's entries come from the
/// kernel's per-CPU BPF allocator caches. The first `HOT_SOCKET_SLOTS`
/// sockets live here, the rest in `SOCKS_MORE` (see `socks`).
#[map]
pub static SOCKS: HashMap<u64, SockState> =
    HashMap::with_max_entries(HOT_SOCKET_SLOTS, BPF_F_NO_PREALLOC);

/// `SOCKS` for the sockets beyond its capacity: `SOCKET_SLOTS` more.
#[map]
pub static SOCKS_MORE: HashMap<u64, SockState> =
    HashMap::with_max_entries(SOCKET_SLOTS, BPF_F_NO_PREALLOC);

/// A per-CPU stand-in state for a socket that has none (first seen at its
/// → CLOSE, or no room for its state): kept off the 512-byte stack.
#[map]
pub static SCRATCH: PerCpuArray<SockState> = PerCpuArray::with_max_entries(1, 0);

/// This CPU's stats block.
#[inline(always)]
pub fn stats() -> Option<&'static mut Stats> {
    // SAFETY: per-CPU slot; this program is its only writer on this CPU, and
    // a run is not preempted by another run of itself on the same CPU.
    STATS.get_ptr_mut(0).map(|p| unsafe { &mut *p })
}

#[inline(always)]
pub fn bump(stats: &mut Stats, counter: u32) {
    if let Some(c) = stats.counters.get_mut(counter as usize) {
        *c += 1;
    }
}
