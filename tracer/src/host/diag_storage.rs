//! The kernel side's per-socket state of the sockets sock_diag listed: the
//! program's `SOCKS` table (socket cookie → `SockState`) is read for each
//! cookie. This is how a CLOSE_WAIT or SYN_SENT socket's age is known
//! exactly. The map is read through its open fd, from any namespace.

use std::{collections::HashMap, os::fd::BorrowedFd};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use tracer_common::SockState;

use crate::host::diag::DiagError;

/// Cookie → the program's state, for each of `cookies` that has one
/// (sockets the program has not seen have none).
pub fn states_of(
    map_fd: BorrowedFd<'_>,
    cookies: impl IntoIterator<Item = u64>,
) -> Result<HashMap<u64, SockState>, DiagError> {
    let mut cookies = cookies.into_iter().peekable();
    let mut out = HashMap::new();
    if cookies.peek().is_none() {
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
    let data = MapData::from_fd(fd.try_clone_to_owned()?)?;
    Ok(BpfHashMap::try_from(Map::HashMap(data))?)
}
