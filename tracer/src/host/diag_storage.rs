//! The kernel side's per-socket state of sockets in given states: sock_diag
//! lists the sockets of this namespace (with their cookies), and the
//! program's `SOCKS` table (socket cookie → `SockState`) is read for each.
//! This is how a CLOSE_WAIT or SYN_SENT socket's age is known exactly.

use std::{collections::HashMap, os::fd::BorrowedFd};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use tracer_common::SockState;

use crate::host::diag::{self, DiagError};

/// Socket cookie → the program's state for every TCP socket in
/// `state_mask` that has one (sockets the program has not seen have none).
pub fn states_by_cookie(
    map_fd: BorrowedFd<'_>,
    state_mask: u32,
) -> Result<HashMap<u64, SockState>, DiagError> {
    let mut cookies = Vec::new();
    diag::dump_each(state_mask, |s| cookies.push(s.cookie))?;
    let mut out = HashMap::new();
    if cookies.is_empty() {
        return Ok(out);
    }
    let table = open(map_fd)?;
    for c in cookies {
        if let Ok(st) = table.get(&c, 0) {
            out.insert(c, st);
        }
    }
    Ok(out)
}

fn open(fd: BorrowedFd<'_>) -> Result<BpfHashMap<MapData, u64, SockState>, DiagError> {
    let owned = fd.try_clone_to_owned()?;
    let data = MapData::from_fd(owned)?;
    Ok(BpfHashMap::try_from(Map::HashMap(data))?)
}
