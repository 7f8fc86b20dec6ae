//! The kernel side's per-socket state of sockets in given states, straight
//! from sock_diag: an INET_DIAG request with `INET_DIAG_REQ_SK_BPF_STORAGES`
//! naming the socket-storage map makes the kernel attach each socket's
//! storage value to its reply (needs CAP_BPF, as the map fd does). This is
//! how a CLOSE_WAIT socket's age is known exactly without the program
//! keeping a cookie-keyed table. netlink-packet-sock-diag has no type for
//! that attribute, so this module frames the request and walks the reply
//! attributes itself; the layouts are the kernel's UAPI (inet_diag.h,
//! sock_diag.h).

use std::{collections::HashMap, os::fd::AsRawFd as _};

use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};
use tracer_common::{SockState, AF_INET, AF_INET6, IPPROTO_TCP};

use crate::host::diag::DiagError;

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;
/// Request attribute: the storage maps to report.
const INET_DIAG_REQ_SK_BPF_STORAGES: u16 = 2;
const SK_DIAG_BPF_STORAGE_REQ_MAP_FD: u16 = 1;
/// Reply attribute and its nesting.
const INET_DIAG_SK_BPF_STORAGES: u16 = 20;
const SK_DIAG_BPF_STORAGE: u16 = 1;
const SK_DIAG_BPF_STORAGE_MAP_VALUE: u16 = 3;
/// sizeof(struct inet_diag_req_v2), sizeof(struct inet_diag_msg).
const REQ_LEN: usize = 56;
const MSG_LEN: usize = 72;

/// Socket cookie → the program's state for every TCP socket in `state_mask`.
pub fn states_by_cookie(
    map_fd: std::os::fd::BorrowedFd<'_>,
    state_mask: u32,
) -> Result<HashMap<u64, SockState>, DiagError> {
    let mut out = HashMap::new();
    for family in [AF_INET as u8, AF_INET6 as u8] {
        dump(family, state_mask, map_fd.as_raw_fd() as u32, &mut out)?;
    }
    Ok(out)
}

fn request(family: u8, state_mask: u32, map_fd: u32) -> Vec<u8> {
    let attr_len = 4 + 4 + 4; // outer header + inner header + u32 fd
    let len = 16 + REQ_LEN + attr_len;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&[0; 8]); // seq, pid
    b.extend_from_slice(&[family, IPPROTO_TCP as u8, 0, 0]);
    b.extend_from_slice(&state_mask.to_ne_bytes());
    b.extend_from_slice(&[0; 48]); // inet_diag_sockid: any socket
    b.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    b.extend_from_slice(&(INET_DIAG_REQ_SK_BPF_STORAGES | NLA_F_NESTED).to_ne_bytes());
    b.extend_from_slice(&8u16.to_ne_bytes());
    b.extend_from_slice(&SK_DIAG_BPF_STORAGE_REQ_MAP_FD.to_ne_bytes());
    b.extend_from_slice(&map_fd.to_ne_bytes());
    b
}

fn dump(
    family: u8,
    state_mask: u32,
    map_fd: u32,
    out: &mut HashMap<u64, SockState>,
) -> Result<(), DiagError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&request(family, state_mask, map_fd), 0)?;
    let mut rx = vec![0u8; 1 << 16];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32_at(&rx, off) as usize;
            let kind = u16::from_ne_bytes([rx[off + 4], rx[off + 5]]);
            if len < 16 || off + len > n {
                return Err(DiagError::Decode("truncated netlink message".into()));
            }
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes(rx[off + 16..off + 20].try_into().unwrap());
                    return Err(DiagError::Kernel(code));
                }
                _ => reply(&rx[off + 16..off + len], out),
            }
            off += (len + 3) & !3;
        }
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// One inet_diag_msg and its attributes.
fn reply(msg: &[u8], out: &mut HashMap<u64, SockState>) {
    if msg.len() < MSG_LEN {
        return;
    }
    // inet_diag_msg: 4 bytes, then inet_diag_sockid, whose cookie[2] is at 40.
    let cookie = u64::from(u32_at(msg, 4 + 40)) | (u64::from(u32_at(msg, 4 + 44)) << 32);
    let Some(stg) = attr(&msg[MSG_LEN..], INET_DIAG_SK_BPF_STORAGES) else {
        return;
    };
    let Some(one) = attr(stg, SK_DIAG_BPF_STORAGE) else {
        return;
    };
    if let Some(v) = attr(one, SK_DIAG_BPF_STORAGE_MAP_VALUE) {
        if v.len() >= std::mem::size_of::<SockState>() {
            // SAFETY: SockState is repr(C) plain integers; the length was
            // checked and read_unaligned copes with the attribute's alignment.
            let st = unsafe { std::ptr::read_unaligned(v.as_ptr() as *const SockState) };
            out.insert(cookie, st);
        }
    }
}

/// The payload of the first attribute of `kind` in a run of attributes.
fn attr(mut b: &[u8], kind: u16) -> Option<&[u8]> {
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & !NLA_F_NESTED & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        if ty == kind {
            return Some(&b[4..len]);
        }
        b = &b[((len + 3) & !3).min(b.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_frames_the_storage_attribute() {
        let r = request(2, 1 << 8, 7);
        assert_eq!(r.len(), 16 + REQ_LEN + 12);
        assert_eq!(u32_at(&r, 0) as usize, r.len());
        let attrs = &r[16 + REQ_LEN..];
        let outer = attr(attrs, INET_DIAG_REQ_SK_BPF_STORAGES).unwrap();
        assert_eq!(
            attr(outer, SK_DIAG_BPF_STORAGE_REQ_MAP_FD).unwrap(),
            7u32.to_ne_bytes()
        );
    }

    #[test]
    fn reply_decodes_cookie_and_value() {
        let st = SockState {
            ts_state: 123,
            tgid: 9,
            ..SockState::default()
        };
        // SAFETY: viewing a repr(C) plain-integer struct as bytes.
        let bytes: &[u8] = unsafe {
            std::slice::from_raw_parts(
                (&st as *const SockState).cast(),
                std::mem::size_of::<SockState>(),
            )
        };
        let nla = |ty: u16, payload: &[u8]| {
            let mut v = ((payload.len() + 4) as u16).to_ne_bytes().to_vec();
            v.extend_from_slice(&ty.to_ne_bytes());
            v.extend_from_slice(payload);
            while !v.len().is_multiple_of(4) {
                v.push(0);
            }
            v
        };
        let inner = nla(SK_DIAG_BPF_STORAGE_MAP_VALUE, bytes);
        let one = nla(SK_DIAG_BPF_STORAGE | NLA_F_NESTED, &inner);
        let stg = nla(INET_DIAG_SK_BPF_STORAGES | NLA_F_NESTED, &one);
        let mut msg = vec![0u8; MSG_LEN];
        msg[44..48].copy_from_slice(&5u32.to_ne_bytes());
        msg[48..52].copy_from_slice(&1u32.to_ne_bytes());
        msg.extend_from_slice(&stg);
        let mut out = HashMap::new();
        reply(&msg, &mut out);
        assert_eq!(out.get(&((1u64 << 32) | 5)), Some(&st));
        // Truncated input is ignored, not a panic.
        reply(&msg[..MSG_LEN + 6], &mut out);
        attr(&[0xff, 0xff, 0, 0], 1);
    }
}
