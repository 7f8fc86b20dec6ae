//! Final ACKs a full accept queue refused, as event lines of their own
//! (events mode only). The kernel frees such an ACK with `kfree_skb` and
//! the drop reason `TCP_LISTEN_OVERFLOW`, and since Linux 6.12 the
//! tracepoint also carries the receiving socket: the listener. Userspace
//! attaches this program only where the kernel's BTF has both (the
//! reason's value is `OFFSETS.listen_overflow_reason`); elsewhere, and for
//! the SYNs a full queue refuses (freed as consumed packets, no reason),
//! the listener's `sk_drops` in the report is all there is.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tracer_common::{counter, event_kind, AF_INET, AF_INET6};

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
    let reason: u64 = ctx.arg(2);
    if reason as u32 != ld!(OFFSETS.listen_overflow_reason) {
        return 0;
    }
    let (skb, sk): (*const u8, *const u8) = (ctx.arg(0), ctx.arg(3));
    if !sk.is_null() {
        on_overflow(skb, sk);
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
}

#[inline(never)]
fn on_overflow(skb: *const u8, sk: *const u8) {
    let Some(stats) = stats() else { return };
    let Some(p) = packet(skb) else {
        bump(stats, counter::QUEUE_DROPS_UNREADABLE);
        return;
    };
    let ends = Ends {
        family: p.family,
        lport: p.server_port,
        rport: p.client_port,
    };
    let Some(st) =
        synack::listener_state(stats, sk, &ends, counter::QUEUE_DROPS_FILTERED_OUT, || {
            p.client
        })
    else {
        return;
    };
    bump(stats, counter::QUEUE_DROPS);
    let facts = EventFacts {
        // SAFETY: helper without arguments.
        ts: unsafe { bpf_ktime_get_ns() },
        kind: event_kind::QUEUE_DROP,
        ..EventFacts::default()
    };
    output::emit_with(&ends, &st, &facts, |remote, local| {
        *remote = p.client;
        *local = p.server;
    });
}

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
        let ports = bpf_probe_read_kernel((head + th as u64) as *const [u8; 4]).ok()?;
        let mut p = Packet {
            family: AF_INET,
            client: [0; 16],
            server: [0; 16],
            client_port: u16::from_be_bytes([ports[0], ports[1]]),
            server_port: u16::from_be_bytes([ports[2], ports[3]]),
        };
        match ip[0] >> 4 {
            4 => {
                p.client[..4].copy_from_slice(&ip[12..16]);
                p.server[..4].copy_from_slice(&ip[16..20]);
            }
            6 => {
                p.family = AF_INET6;
                p.client.copy_from_slice(&ip[8..24]);
                p.server.copy_from_slice(&ip[24..40]);
            }
            _ => return None,
        }
        Some(p)
    }
}
