//! The kernel side's per-socket state, straight from sock_diag: an INET_DIAG
//! request with `INET_DIAG_REQ_SK_BPF_STORAGES` naming the socket-storage
//! map makes the kernel attach each socket's storage value to its reply
//! (needs CAP_BPF, as the map fd does). This is how a CLOSE_WAIT socket's
//! age is known exactly without the program keeping a cookie-keyed table.
//! netlink-packet-sock-diag has no type for that attribute, so this module
//! frames the request attribute and walks the reply attribute itself; the
//! layouts are the kernel's UAPI (inet_diag.h, sock_diag.h).

use netlink_packet_core::{DefaultNla, Nla as _};
use tracer_common::SockState;

const NLA_F_NESTED: u16 = 0x8000;
/// Request attribute: the storage maps to report.
const INET_DIAG_REQ_SK_BPF_STORAGES: u16 = 2;
const SK_DIAG_BPF_STORAGE_REQ_MAP_FD: u16 = 1;
/// Reply attribute and its nesting.
const INET_DIAG_SK_BPF_STORAGES: u16 = 20;
const SK_DIAG_BPF_STORAGE: u16 = 1;
const SK_DIAG_BPF_STORAGE_MAP_VALUE: u16 = 3;

/// The request attribute asking for each socket's value in the map `map_fd`.
pub fn request_attribute(map_fd: u32) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..2].copy_from_slice(&12u16.to_ne_bytes()); // outer + inner header + u32 fd
    b[2..4].copy_from_slice(&(INET_DIAG_REQ_SK_BPF_STORAGES | NLA_F_NESTED).to_ne_bytes());
    b[4..6].copy_from_slice(&8u16.to_ne_bytes());
    b[6..8].copy_from_slice(&SK_DIAG_BPF_STORAGE_REQ_MAP_FD.to_ne_bytes());
    b[8..12].copy_from_slice(&map_fd.to_ne_bytes());
    b
}

/// The storage value in a reply attribute, if `nla` is the storage
/// attribute and holds one.
pub fn state_of(nla: &DefaultNla) -> Option<SockState> {
    if nla.kind() & !NLA_F_NESTED & 0x3fff != INET_DIAG_SK_BPF_STORAGES {
        return None;
    }
    let mut stg = vec![0u8; nla.value_len()];
    nla.emit_value(&mut stg);
    value(&stg)
}

/// The value in the payload of an INET_DIAG_SK_BPF_STORAGES attribute.
fn value(stg: &[u8]) -> Option<SockState> {
    let one = attr(stg, SK_DIAG_BPF_STORAGE)?;
    let v = attr(one, SK_DIAG_BPF_STORAGE_MAP_VALUE)?;
    if v.len() < std::mem::size_of::<SockState>() {
        return None;
    }
    // SAFETY: SockState is repr(C) plain integers; the length was checked
    // and read_unaligned copes with the attribute's alignment.
    Some(unsafe { std::ptr::read_unaligned(v.as_ptr() as *const SockState) })
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
        let r = request_attribute(7);
        let outer = attr(&r, INET_DIAG_REQ_SK_BPF_STORAGES).unwrap();
        assert_eq!(
            attr(outer, SK_DIAG_BPF_STORAGE_REQ_MAP_FD).unwrap(),
            7u32.to_ne_bytes()
        );
    }

    #[test]
    fn reply_decodes_the_value() {
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
        let stg = DefaultNla::new(INET_DIAG_SK_BPF_STORAGES | NLA_F_NESTED, one.clone());
        assert_eq!(state_of(&stg), Some(st));
        assert_eq!(state_of(&DefaultNla::new(21, one.clone())), None);
        // Truncated input is ignored, not a panic.
        assert_eq!(value(&one[..10]), None);
        attr(&[0xff, 0xff, 0, 0], 1);
    }
}
