//! The filter verdict. `FILTER` is read-only and frozen, so the verifier
//! knows which filters are set and prunes the rest of this code away.

use tracer_common::{SockState, AF_INET, AF_INET6, TASK_COMM_LEN};

use crate::{ld, sock::Ends};

#[derive(PartialEq, Eq, Clone, Copy)]
pub enum Verdict {
    Match,
    NoMatch,
    /// The tuple is not complete yet (source port 0 at CLOSE→SYN_SENT, peer
    /// unknown at LISTEN→SYN_RECV): decide at the socket's next transition.
    Unknown,
}

/// Compare a comm with the filter's, reading the filter bytes volatile (a
/// plain reference would let the compiler fold in the all-zero default).
#[inline(always)]
fn comm_matches(a: &[u8; TASK_COMM_LEN]) -> bool {
    let mut i = 0;
    while i < TASK_COMM_LEN {
        let want = crate::read_global(core::ptr::addr_of!(crate::FILTER.comm[i]));
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
fn addr_matches(family: u16, d: &[u8; 16]) -> bool {
    let af = ld!(FILTER.addr_family);
    let plen = ld!(FILTER.addr_prefix_len) as usize;
    let mapped = family == AF_INET6
        && af == AF_INET
        && d[..10] == [0u8; 10]
        && d[10] == 0xff
        && d[11] == 0xff;
    let fam = if mapped { AF_INET } else { family };
    if fam != af {
        return false;
    }
    let base = if mapped { 12 } else { 0 };
    let mut i = 0;
    while i < 16 && base + i < 16 {
        let bits = plen.saturating_sub(i * 8).min(8);
        if bits == 0 {
            break;
        }
        let want = crate::read_global(core::ptr::addr_of!(crate::FILTER.addr[i]));
        let mask: u8 = 0xffu8 << (8 - bits);
        if (d[base + i] ^ want) & mask != 0 {
            return false;
        }
        i += 1;
    }
    true
}

/// A port filter on a port that may not be known yet (0).
#[inline(always)]
fn port_verdict(want: u16, have: u16, last: bool) -> Verdict {
    if want == 0 || want == have {
        Verdict::Match
    } else if have == 0 && !last {
        Verdict::Unknown
    } else {
        Verdict::NoMatch
    }
}

#[inline(always)]
fn and(a: Verdict, b: Verdict) -> Verdict {
    match (a, b) {
        (Verdict::NoMatch, _) | (_, Verdict::NoMatch) => Verdict::NoMatch,
        (Verdict::Unknown, _) | (_, Verdict::Unknown) => Verdict::Unknown,
        _ => Verdict::Match,
    }
}

/// The verdict on a socket with these ends and owner. `last`: the socket's
/// last transition (→ CLOSE), where a port still 0 is final. `daddr` reads
/// the remote address, only when an address filter needs it.
#[inline(always)]
pub fn verdict(
    e: &Ends,
    st: &SockState,
    netns: u32,
    last: bool,
    daddr: impl FnOnce() -> [u8; 16],
) -> Verdict {
    if ld!(FILTER.any) == 0 {
        return Verdict::Match;
    }
    if owner_or_family_excludes(e, st, netns) {
        return Verdict::NoMatch;
    }
    let mut v = and(
        port_verdict(ld!(FILTER.lport), e.lport, last),
        port_verdict(ld!(FILTER.rport), e.rport, last),
    );
    let port = ld!(FILTER.port);
    if port != 0 && e.lport != port && e.rport != port {
        let incomplete = (e.lport == 0 || e.rport == 0) && !last;
        v = and(
            v,
            if incomplete {
                Verdict::Unknown
            } else {
                Verdict::NoMatch
            },
        );
    }
    if ld!(FILTER.addr_family) != 0 && v != Verdict::NoMatch {
        v = and(
            v,
            if e.rport == 0 && !last {
                Verdict::Unknown
            } else if addr_matches(e.family, &daddr()) {
                Verdict::Match
            } else {
                Verdict::NoMatch
            },
        );
    }
    v
}

/// Filters that need no port: namespace, family, owner.
#[inline(always)]
fn owner_or_family_excludes(e: &Ends, st: &SockState, netns: u32) -> bool {
    let want_ns = ld!(FILTER.netns);
    if want_ns != 0 && want_ns != netns {
        return true;
    }
    let fam = ld!(FILTER.family);
    if fam != 0 && fam != e.family {
        return true;
    }
    let tgid = ld!(FILTER.tgid);
    if tgid != 0 && (!st.owner_known() || st.tgid != tgid) {
        return true;
    }
    ld!(FILTER.has_comm) != 0 && (!st.owner_known() || !comm_matches(&st.comm))
}
