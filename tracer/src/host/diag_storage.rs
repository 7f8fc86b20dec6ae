//! The kernel side's per-socket state of the sockets sock_diag listed: the
//! program's socket tables (`SOCKS`, then `SOCKS_MORE`: socket cookie →
//! `SockState`) are read for each cookie. This is how a CLOSE_WAIT or
//! SYN_SENT socket's age is known exactly. The maps are read through their
//! open fds, from any namespace.

use std::{collections::HashMap, os::fd::BorrowedFd};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use tracer_common::SockState;

use crate::host::diag::DiagError;

/// The program's two per-socket tables: the small one most sockets are in,
/// and the large one for the sockets beyond it.
#[derive(Clone, Copy, Debug)]
pub struct SocketTables<'a> {
    pub hot: BorrowedFd<'a>,
    pub more: BorrowedFd<'a>,
}

/// Cookie → the program's state, for each of `cookies` that has one
/// (sockets the program has not seen have none).
pub fn states_of(
    tables: SocketTables<'_>,
    cookies: impl IntoIterator<Item = u64>,
) -> Result<HashMap<u64, SockState>, DiagError> {
    let mut cookies = cookies.into_iter().peekable();
    let mut out = HashMap::new();
    if cookies.peek().is_none() {
        return Ok(out);
    }
    let (hot, more) = (open(tables.hot)?, open(tables.more)?);
    for c in cookies {
        if let Ok(st) = hot.get(&c, 0).or_else(|_| more.get(&c, 0)) {
            out.insert(c, st);
        }
    }
    Ok(out)
}

fn open(fd: BorrowedFd<'_>) -> Result<BpfHashMap<MapData, u64, SockState>, DiagError> {
    let data = MapData::from_fd(fd.try_clone_to_owned()?)?;
    Ok(BpfHashMap::try_from(Map::HashMap(data))?)
}
