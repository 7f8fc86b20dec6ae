//! Packets a listener refused, as event lines of their own (events mode
//! only): final ACKs a full accept queue refused, and clients' RSTs that
//! ended a half-open handshake. The kernel frees such an ACK with
//! `kfree_skb` and the drop reason `TCP_LISTEN_OVERFLOW`, and an RST that
//! matched a pending request (`tcp_check_req`, what `TcpExtEmbryonicRsts`
//! counts) with no reason (`NOT_SPECIFIED`); since Linux 6.12 the
//! tracepoint also carries the receiving socket: the listener. Userspace
//! attaches this program only where the kernel's BTF has both (the
//! reasons' values are in `OFFSETS`); elsewhere, and for the SYNs a full
//! queue refuses (freed as consumed packets, no reason), the listener's
//! `sk_drops` in the report is all there is.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tracer_common::{counter, event_kind, state, AF_INET, AF_INET6, IPPROTO_TCP};

use crate::{
    ld,
    maps::{bump, stats},
    output::{self, EventFacts},
    sock::{load, Ends},
    synack,
};

/// `kfree_skb(struct sk_buff *skb, void *location, enum skb_drop_reason
/// reason, struct sock *rx_sk)`: every other reason returns at once.
#[btf_tracepoint(function = "kfree_skb")]
pub fn kfree_skb(ctx: BtfTracePointContext) -> i32 {
    let reason = ctx.arg::<u64>(2) as u32;
    let kind = if reason == ld!(OFFSETS.listen_overflow_reason) {
        event_kind::QUEUE_DROP
    } else if reason == ld!(OFFSETS.unspecified_reason) {
        event_kind::HALF_OPEN_RESET
    } else {
        return 0;
    };
    let (skb, sk): (*const u8, *const u8) = (ctx.arg(0), ctx.arg(3));
    if !sk.is_null() {
        on_drop(skb, sk, kind);
    }
    0
}

/// The refused packet's addresses and ports, client first.
struct Packet {
    family: u16,
    client: [u8; 16],
    server: [u8; 16],
    client_port: u16,
    server_port: u16,
    /// A TCP segment with RST set.
    rst: bool,
}

/// The counters of one kind: (passed the filters, dropped by them).
fn counters(kind: u8) -> (u32, u32) {
    if kind == event_kind::QUEUE_DROP {
        (counter::QUEUE_DROPS, counter::QUEUE_DROPS_FILTERED_OUT)
    } else {
        (
            counter::HALF_OPEN_RESETS,
            counter::HALF_OPEN_RESETS_FILTERED_OUT,
        )
    }
}

#[inline(never)]
fn on_drop(skb: *const u8, sk: *const u8, kind: u8) {
    // An unspecified drop is a half-open reset only as a listener's RST.
    // SAFETY: `sk` is the tracepoint's BTF-typed socket; a sock_common field.
    let listening = unsafe { load::<u8>(sk, ld!(OFFSETS.skc_state)) } == state::LISTEN;
    if kind == event_kind::HALF_OPEN_RESET && !listening {
        return;
    }
    let Some(stats) = stats() else { return };
    let Some(p) = packet(skb) else {
        bump(stats, counter::LISTENER_DROPS_UNREADABLE);
        return;
    };
    if kind == event_kind::HALF_OPEN_RESET && !p.rst {
        return;
    }
    let ends = Ends {
        family: p.family,
        lport: p.server_port,
        rport: p.client_port,
    };
    let (passed, filtered_out) = counters(kind);
    let Some(st) = synack::listener_state(stats, sk, &ends, filtered_out, || p.client) else {
        return;
    };
    bump(stats, passed);
    let facts = EventFacts {
        // SAFETY: helper without arguments.
        ts: unsafe { bpf_ktime_get_ns() },
        kind,
        ..EventFacts::default()
    };
    output::emit_with(&ends, &st, &facts, |remote, local| {
        *remote = p.client;
        *local = p.server;
    });
}

/// RST in the TCP header's flags byte (byte 13).
const TCP_RST: u8 = 0x04;

/// Parse the IP and TCP headers at `skb->head + network_header` /
/// `transport_header` (an ACK on its way in: both are set).
#[inline(always)]
fn packet(skb: *const u8) -> Option<Packet> {
    // SAFETY: `skb` is the tracepoint's BTF-typed `struct sk_buff *`; the
    // offsets are its fields'. `head` loads as a plain number, read through
    // bpf_probe_read_kernel, which fails cleanly on a bad address.
    unsafe {
        let head: u64 = load(skb, ld!(OFFSETS.skb_head));
        let nh: u16 = load(skb, ld!(OFFSETS.skb_network_header));
        let th: u16 = load(skb, ld!(OFFSETS.skb_transport_header));
        let ip = bpf_probe_read_kernel((head + nh as u64) as *const [u8; 40]).ok()?;
        let tcp = bpf_probe_read_kernel((head + th as u64) as *const [u8; 14]).ok()?;
        let mut p = Packet {
            family: AF_INET,
            client: [0; 16],
            server: [0; 16],
            client_port: u16::from_be_bytes([tcp[0], tcp[1]]),
            server_port: u16::from_be_bytes([tcp[2], tcp[3]]),
            rst: tcp[13] & TCP_RST != 0,
        };
        let protocol = match ip[0] >> 4 {
            4 => {
                p.client[..4].copy_from_slice(&ip[12..16]);
                p.server[..4].copy_from_slice(&ip[16..20]);
                ip[9]
            }
            6 => {
                p.family = AF_INET6;
                p.client.copy_from_slice(&ip[8..24]);
                p.server.copy_from_slice(&ip[24..40]);
                ip[6]
            }
            _ => return None,
        };
        p.rst &= u16::from(protocol) == IPPROTO_TCP;
        Some(p)
    }
}
