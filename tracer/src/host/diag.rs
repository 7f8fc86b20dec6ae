//! Socket populations from the kernel's own sock_diag (NETLINK_SOCK_DIAG,
//! INET_DIAG) — the interface `ss` uses, so the numbers match `ss` exactly.
//! TIME_WAIT sockets are invisible to the tracepoint once created (nothing
//! fires when they expire), so the current population can only come from here.

use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{nlas::Nla, InetRequest, InetResponse, SocketId, StateFlags, Timer},
    SockDiagMessage,
};
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};
use tracer_common::{state, SockState};

/// The INET_DIAG_* attributes a dump asks for (`dump_detail_each`).
pub use netlink_packet_sock_diag::inet::ExtensionFlags;

#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("sock_diag netlink socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("sock_diag: undecodable reply: {0}")]
    Decode(String),
    #[error("sock_diag: kernel answered error {0}")]
    Kernel(i32),
    #[error("the program's socket table (SOCKS): {0}")]
    Table(#[from] aya::maps::MapError),
}

/// One socket as sock_diag reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    /// Kernel TCP state (`tracer_common::state::*`); timewait minisocks report
    /// their substate (TIME_WAIT, or FIN_WAIT2 for a parked orphan).
    pub state: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub cookie: u64,
    pub inode: u32,
    pub uid: u32,
}

#[cfg(test)]
impl DiagSocket {
    /// A socket in `state` from `src:sport` to `dst:dport` (cookie, inode
    /// and uid 0): what the tests' tallies are made of.
    pub(crate) fn test(state: u8, src: &str, sport: u16, dst: &str, dport: u16) -> Self {
        DiagSocket {
            state,
            src: src.parse().unwrap(),
            sport,
            dst: dst.parse().unwrap(),
            dport,
            cookie: 0,
            inode: 0,
            uid: 0,
        }
    }
}

/// Which states to ask for.
pub fn states(list: &[u8]) -> u32 {
    list.iter().fold(0u32, |acc, s| acc | (1u32 << s))
}

/// All TCP sockets (IPv4 and IPv6) in the given states, in this network namespace.
pub fn dump(state_mask: u32) -> Result<Vec<DiagSocket>, DiagError> {
    let mut out = Vec::new();
    dump_each(state_mask, |s| out.push(s))?;
    Ok(out)
}

/// Like `dump`, one socket at a time: a host with a million sockets is
/// tallied without holding a million records.
pub fn dump_each(state_mask: u32, mut f: impl FnMut(DiagSocket)) -> Result<(), DiagError> {
    for family in [AF_INET, AF_INET6] {
        dump_family(family, state_mask, ExtensionFlags::empty(), &mut |r| {
            f(socket_of(r))
        })?;
    }
    Ok(())
}

/// A socket with the queue and retransmit figures listeners and connects
/// in flight are reported with, and the kernel side's state of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagDetail {
    pub socket: DiagSocket,
    /// idiag_rqueue: for a listener, its accept queue now.
    pub recv_queue: u32,
    /// idiag_wqueue: for a listener, its accept queue limit (the listen()
    /// backlog, capped by net.core.somaxconn).
    pub send_queue: u32,
    /// SK_MEMINFO_DROPS: the socket's `sk_drops`; for a listener every
    /// SYN or final ACK `tcp_listendrop()` refused since listen().
    pub drops: u32,
    /// Retransmits of the running retransmit timer (SYN_SENT: SYNs resent).
    pub retransmits: u8,
    /// When that timer fires next, ms.
    pub timer_ms: Option<u64>,
    /// The kernel side's state of the socket (`SOCKS`, by cookie), where it
    /// was looked up and the socket has one (SYN_SENT: connect ages).
    pub kernel_state: Option<SockState>,
}

/// Like `dump_each`, with `DiagDetail`'s figures (`extensions`: the
/// INET_DIAG_* attributes to ask for, SKMEMINFO for `drops`).
pub fn dump_detail_each(
    state_mask: u32,
    extensions: ExtensionFlags,
    mut f: impl FnMut(DiagDetail),
) -> Result<(), DiagError> {
    for family in [AF_INET, AF_INET6] {
        dump_family(family, state_mask, extensions.clone(), &mut |r| {
            f(detail_of(r))
        })?;
    }
    Ok(())
}

fn detail_of(r: &InetResponse) -> DiagDetail {
    let drops = r.nlas.iter().find_map(|n| match n {
        Nla::MemInfo(m) => Some(m.drops),
        _ => None,
    });
    let (retransmits, timer_ms) = match &r.header.timer {
        Some(Timer::Retransmit(d, n)) => (*n, Some(d.as_millis() as u64)),
        _ => (0, None),
    };
    DiagDetail {
        socket: socket_of(r),
        recv_queue: r.header.recv_queue,
        send_queue: r.header.send_queue,
        drops: drops.unwrap_or(0),
        retransmits,
        timer_ms,
        kernel_state: None,
    }
}

fn socket_of(r: &InetResponse) -> DiagSocket {
    let id = &r.header.socket_id;
    DiagSocket {
        state: r.header.state,
        src: id.source_address,
        sport: id.source_port,
        dst: id.destination_address,
        dport: id.destination_port,
        cookie: u64::from_ne_bytes(id.cookie),
        inode: r.header.inode,
        uid: r.header.uid,
    }
}

fn dump_family(
    family: u8,
    state_mask: u32,
    extensions: ExtensionFlags,
    out: &mut impl FnMut(&InetResponse),
) -> Result<(), DiagError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;

    let mut hdr = NetlinkHeader::default();
    hdr.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut req = NetlinkMessage::new(
        hdr,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions,
            states: StateFlags::from_bits_retain(state_mask),
            socket_id: if family == AF_INET {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            },
        })
        .into(),
    );
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut rx = vec![0u8; 1 << 16];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut off = 0;
        while off < n {
            let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&rx[off..n])
                .map_err(|e| DiagError::Decode(e.to_string()))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(()),
                NetlinkPayload::Error(e) => {
                    return Err(DiagError::Kernel(e.code.map_or(0, |c| c.get())));
                }
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => out(&r),
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

/// Counts of the states the summary reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Population {
    pub time_wait: u64,
    /// FIN_WAIT2 sockets: full sockets plus parked orphan minisocks.
    pub fin_wait2: u64,
    pub close_wait: u64,
    pub established: u64,
}

impl Population {
    pub fn merge(&mut self, o: &Population) {
        self.time_wait += o.time_wait;
        self.fin_wait2 += o.fin_wait2;
        self.close_wait += o.close_wait;
        self.established += o.established;
    }

    pub fn total(&self) -> u64 {
        self.time_wait + self.fin_wait2 + self.close_wait + self.established
    }

    pub fn add(&mut self, s: &DiagSocket) {
        match s.state {
            state::TIME_WAIT => self.time_wait += 1,
            state::FIN_WAIT2 => self.fin_wait2 += 1,
            state::CLOSE_WAIT => self.close_wait += 1,
            state::ESTABLISHED => self.established += 1,
            _ => {}
        }
    }
}

/// The states the report reads: those `Population` counts, plus every other
/// state that holds a local port (for port pressure). Not LISTEN.
pub fn population_states() -> u32 {
    states(&[
        state::TIME_WAIT,
        state::FIN_WAIT2,
        state::CLOSE_WAIT,
        state::ESTABLISHED,
        state::SYN_SENT,
        state::SYN_RECV,
        state::FIN_WAIT1,
        state::LAST_ACK,
        state::CLOSING,
    ])
}
