//! Per-socket state in two tables: `SOCKS`, small, which a host's
//! connections fit in most of the time, and `SOCKS_MORE`, large, for the
//! sockets beyond it. Every operation on a hash lands on a random bucket of
//! its bucket array; the large table's 16 MiB of buckets make that a cache
//! and TLB miss on every transition, the small one's 256 KiB stay in cache
//! (`tracer_common::HOT_SOCKET_SLOTS`). A socket in the large table costs
//! one lookup more.

use tracer_common::SockState;

use crate::maps::{SOCKS, SOCKS_MORE};

/// Where a socket's state is: its key, and which table holds it.
#[derive(Clone, Copy)]
pub struct Slot {
    pub key: u64,
    pub more: bool,
}

/// The kernel's -EEXIST: a `BPF_NOEXIST` insert found the key there.
const EEXIST: i32 = -17;

/// The state under `key`, in whichever table holds it.
#[inline(always)]
pub fn get(key: u64) -> Option<(Slot, &'static mut SockState)> {
    // SAFETY (both): the map's value for this socket, valid for this run.
    // Transitions of one socket are serialized by the kernel (socket
    // lock), so no other run writes it meanwhile.
    if let Some(p) = SOCKS.get_ptr_mut(&key) {
        return Some((Slot { key, more: false }, unsafe { &mut *p }));
    }
    let p = SOCKS_MORE.get_ptr_mut(&key)?;
    Some((Slot { key, more: true }, unsafe { &mut *p }))
}

/// Insert `st` under `key` with `flags` into the small table, or into the
/// large one when the small one has no room (full, or no memory). An
/// existing key in the small table is replaced there (`BPF_ANY`) or is
/// an error (`BPF_NOEXIST`), never duplicated into the large one.
#[inline(always)]
pub fn insert(key: u64, st: &SockState, flags: u64) -> Result<(), i32> {
    match SOCKS.insert(&key, st, flags) {
        Err(e) if e != EEXIST => SOCKS_MORE.insert(&key, st, flags),
        r => r,
    }
}

/// The connection is over: its state goes (its socket may be freed now).
#[inline(always)]
pub fn remove(at: Slot) {
    let _ = if at.more {
        SOCKS_MORE.remove(&at.key)
    } else {
        SOCKS.remove(&at.key)
    };
}
