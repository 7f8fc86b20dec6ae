//! Loads of `struct sock` / `tcp_sock` fields at the offsets userspace
//! computed from kernel BTF. The loads go straight through the typed tp_btf
//! pointer (no `bpf_probe_read_kernel`): the offsets are read-only frozen
//! globals, so the verifier sees constants and checks each access against
//! the kernel's BTF; `tcp_sock` fields go through `bpf_skc_to_tcp_sock()`.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_skc_to_tcp_sock;
use tracer_common::AF_INET6;

use crate::ld;

/// Read a `T` at `base + off`.
///
/// # Safety
/// `base` must be a BTF-typed kernel pointer the verifier tracks (the
/// tracepoint's `sk`, or one derived from it) and `off` a field offset of
/// its type; the verifier rejects anything else at load time.
#[inline(always)]
pub unsafe fn load<T: Copy>(base: *const u8, off: u32) -> T {
    // SAFETY: see the function's contract; volatile keeps each field access
    // separate, as the verifier checks them one by one.
    unsafe { core::ptr::read_volatile(base.add(off as usize) as *const T) }
}

/// The ports and family every transition needs.
#[derive(Clone, Copy)]
pub struct Ends {
    pub family: u16,
    /// Local port (0 until connect() picked one).
    pub lport: u16,
    pub rport: u16,
}

/// At → CLOSE (`closing`) the kernel has already released the local port
/// (`skc_num` = 0, `inet_put_port()` runs before the state store that fires
/// the tracepoint); `inet_sport` keeps it, and stays 0 for a connect() that
/// never got one (EADDRNOTAVAIL).
#[inline(always)]
pub fn ends(sk: *const u8, family: u16, closing: bool) -> Ends {
    // SAFETY: `sk` is the tracepoint's socket; offsets of sock_common fields.
    let mut e = unsafe {
        Ends {
            family,
            lport: load::<u16>(sk, ld!(OFFSETS.skc_num)),
            rport: u16::from_be(load::<u16>(sk, ld!(OFFSETS.skc_dport))),
        }
    };
    if closing {
        let tp = tcp(sk);
        if !tp.is_null() {
            // SAFETY: `tp` came from `bpf_skc_to_tcp_sock` and is non-null.
            e.lport = u16::from_be(unsafe { load::<u16>(tp, ld!(OFFSETS.inet_sport)) });
        }
    }
    e
}

/// The socket's address as a plain number. Copied through
/// `bpf_probe_read_kernel` so the verifier tracks a scalar, not a pointer:
/// a pointer-typed map key would keep its states apart from the cookie
/// paths' and double what it explores.
#[inline(always)]
pub fn address(sk: *const u8) -> u64 {
    let at = &sk as *const *const u8 as *const u64;
    // SAFETY: reads the 8 bytes of the local `sk` on this program's stack.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(at) }.unwrap_or(0)
}

#[inline(always)]
pub fn protocol(sk: *const u8) -> u16 {
    // SAFETY: as above.
    unsafe { load::<u16>(sk, ld!(OFFSETS.sk_protocol)) }
}

#[inline(always)]
pub fn family(sk: *const u8) -> u16 {
    // SAFETY: as above.
    unsafe { load::<u16>(sk, ld!(OFFSETS.skc_family)) }
}

/// The socket's network namespace inode (`sk->__sk_common.skc_net.net->ns.inum`).
#[inline(always)]
pub fn netns(sk: *const u8) -> u32 {
    // SAFETY: as above; the loaded `struct net *` is BTF-typed in turn.
    unsafe {
        let net: *const u8 = load(sk, ld!(OFFSETS.skc_net));
        load::<u32>(net, ld!(OFFSETS.net_ns_inum))
    }
}

/// Remote and local address (IPv4 in the first 4 bytes).
#[inline(always)]
pub fn addrs(sk: *const u8, family: u16, raddr: &mut [u8; 16], laddr: &mut [u8; 16]) {
    // SAFETY: as above.
    unsafe {
        if family == AF_INET6 {
            copy16(sk, ld!(OFFSETS.skc_v6_daddr), raddr);
            copy16(sk, ld!(OFFSETS.skc_v6_rcv_saddr), laddr);
        } else {
            raddr[..4].copy_from_slice(&load::<[u8; 4]>(sk, ld!(OFFSETS.skc_daddr)));
            laddr[..4].copy_from_slice(&load::<[u8; 4]>(sk, ld!(OFFSETS.skc_rcv_saddr)));
        }
    }
}

/// # Safety
/// As `load`.
#[inline(always)]
unsafe fn copy16(sk: *const u8, off: u32, out: &mut [u8; 16]) {
    // SAFETY: as `load`.
    let (a, b): (u64, u64) = unsafe { (load(sk, off), load(sk, off + 8)) };
    out[..8].copy_from_slice(&a.to_ne_bytes());
    out[8..].copy_from_slice(&b.to_ne_bytes());
}

/// `sk_err`, and the SOCK_DONE flag (bit 1 of `sk_flags`, set by
/// `tcp_fin()` when the peer's FIN arrived).
#[inline(always)]
pub fn err_and_done(sk: *const u8) -> (u16, bool) {
    // SAFETY: as above.
    unsafe {
        let err = load::<i32>(sk, ld!(OFFSETS.sk_err)) as u16;
        let flags = load::<u64>(sk, ld!(OFFSETS.sk_flags));
        (err, flags & (1 << 1) != 0)
    }
}

/// The socket as a `tcp_sock`, or null.
#[inline(always)]
pub fn tcp(sk: *const u8) -> *const u8 {
    // SAFETY: the helper checks the socket's type and returns null if not TCP.
    unsafe { bpf_skc_to_tcp_sock(sk as *mut c_void) as *const u8 }
}

/// `tcp_sock.total_retrans`.
#[inline(always)]
pub fn total_retrans(tp: *const u8) -> u32 {
    // SAFETY: `tp` came from `bpf_skc_to_tcp_sock` and is non-null.
    unsafe { load::<u32>(tp, ld!(OFFSETS.total_retrans)) }
}

/// `tcp_sock.srtt_us` (µs << 3).
#[inline(always)]
pub fn srtt_us_x8(tp: *const u8) -> u32 {
    // SAFETY: as above.
    unsafe { load::<u32>(tp, ld!(OFFSETS.srtt_us)) }
}

/// `tcp_sock.bytes_received`, `bytes_acked` (raw sequence space).
#[inline(always)]
pub fn raw_bytes(tp: *const u8) -> (u64, u64) {
    // SAFETY: as above.
    unsafe {
        (
            load::<u64>(tp, ld!(OFFSETS.bytes_received)),
            load::<u64>(tp, ld!(OFFSETS.bytes_acked)),
        )
    }
}
