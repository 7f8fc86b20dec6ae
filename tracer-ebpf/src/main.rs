//! Kernel side of the TCP state tracer.
//!
//! One BTF tracepoint program on `sock:inet_sock_set_state`
//! (`(const struct sock *sk, int oldstate, int newstate)`; tp_btf needs no
//! tracefs and may call `bpf_get_socket_cookie`). It does capture,
//! filtering and exact aggregation; formatting and policy live in
//! userspace. The rules it applies (what a transition counts,
//! a socket's birth, owner and verdict) are pure functions in
//! `tracer_common::{account, machine}`, unit-tested there. A second, small
//! program on `tcp:tcp_retransmit_synack` (in `synack`) counts SYN-ACK
//! retransmits per listener; it runs only when the kernel resends one. A
//! third, on `skb:kfree_skb` (in `overflow`), prints the final ACKs a full
//! accept queue refused and the RSTs that ended half-open handshakes, in
//! events mode where the kernel names the listener.
//!
//! Rooms: `maps` (every map), `sock` (field loads), `socks` (per-socket
//! state), `filter` (the verdict),
//! `listener` (listening sockets), `synack` (per-listener figures),
//! `overflow` (queue-drop and half-open-reset events),
//! `transition` (everything else), `output`
//! (histograms, flows, events).
#![no_std]
#![no_main]
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "aya-ebpf's map methods take `impl Borrow<K>`: passing keys and zero values by reference keeps them where they are instead of copying them onto the 512-byte stack"
)]

mod filter;
mod listener;
mod maps;
mod output;
mod overflow;
mod sock;
mod socks;
mod synack;
mod transition;

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{Filter, Offsets};

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
    skc_net: 0,
    net_ns_inum: 0,
    sk_protocol: 0,
    sk_err: 0,
    sk_flags: 0,
    srtt_us: 0,
    total_retrans: 0,
    bytes_received: 0,
    bytes_acked: 0,
    inet_sport: 0,
    skb_head: 0,
    skb_network_header: 0,
    skb_transport_header: 0,
    listen_overflow_reason: 0,
    unspecified_reason: 0,
    skc_state: 0,
    valid: 0,
};

/// Filters, written by the loader; read-only and frozen, so the verifier
/// knows every field and prunes the branches of filters that are not set.
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
    comm: [0; tracer_common::TASK_COMM_LEN],
    emit_events: 0,
    any: 0,
    flows: 0,
    _pad: [0; 1],
    netns: 0,
};

/// Ring-buffer bytes pending before a submit wakes the reader (written by
/// the loader): events are submitted without a wake-up below it, and
/// userspace also drains on a short timer, so a burst costs one wake-up.
#[unsafe(no_mangle)]
static WAKE_BYTES: u64 = 0;

/// Read one field of a load-time global without letting the compiler fold
/// the default.
macro_rules! ld {
    ($global:ident . $field:ident) => {
        $crate::read_global(core::ptr::addr_of!($crate::$global.$field))
    };
    ($global:ident) => {
        $crate::read_global(core::ptr::addr_of!($crate::$global))
    };
}
pub(crate) use ld;

/// A volatile read of (a field of) one of the statics above.
#[inline(always)]
pub(crate) fn read_global<T: Copy>(p: *const T) -> T {
    // SAFETY: only called by `ld!` with the address of a static (or one of
    // its fields), valid for the program's lifetime.
    unsafe { core::ptr::read_volatile(p) }
}

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> i32 {
    // The states as raw 64-bit slots: range-checked in that register, so the
    // verifier bounds every index computed from them.
    let (sk, old, new): (*const u8, u64, u64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    transition::on_transition(sk, old, new);
    0
}

/// An empty program on the same tracepoint: the benchmarks' floor for the
/// in-kernel cost of a tp_btf invocation. Never attached by the tracer itself.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn noop(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
