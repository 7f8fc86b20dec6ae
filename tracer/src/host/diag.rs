//! Socket populations from the kernel's own sock_diag (NETLINK_SOCK_DIAG,
//! INET_DIAG) — the interface `ss` uses, so the numbers match `ss` exactly.
//! TIME_WAIT sockets are invisible to the tracepoint once created (nothing
//! fires when they expire), so the current population can only come from here.

use std::net::IpAddr;

use netlink_packet_core::{
    ErrorBuffer, NetlinkBuffer, Parseable, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::inet::{nlas::Nla, InetResponse, Timer};
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
    dump_tcp(state_mask, ExtensionFlags::empty(), &mut |r| {
        f(socket_of(r))
    })
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
    dump_tcp(state_mask, extensions, &mut |r| f(detail_of(r)))
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

/// `TCPDIAG_GETSOCK`, inet_diag's original request type (`ss` still
/// knows it). The kernel answers it for IPv4 and IPv6 sockets in one walk of
/// its established hash (it dumps with the family unspecified), where
/// `SOCK_DIAG_BY_FAMILY` takes a walk per family. A walk visits every
/// socket in the hash, of every namespace: with 131 000 TIME_WAIT sockets
/// a scrape spent 40 % of its CPU in those walks, and two of its four
/// (two families, two namespaces) now go.
const TCPDIAG_GETSOCK: u16 = 18;

/// `struct nlmsghdr` + `struct inet_diag_req`: the dump request.
const REQUEST_LEN: usize = 16 + 60;

/// A dump of TCP sockets (both families) in `state_mask`'s states with the
/// attributes of `extensions`, in the calling thread's network namespace.
fn dump_tcp(
    state_mask: u32,
    extensions: ExtensionFlags,
    out: &mut impl FnMut(&InetResponse),
) -> Result<(), DiagError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    socket.send(&request(state_mask, extensions), 0)?;
    let mut rx = vec![0u8; 1 << 16];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        if n == 0 {
            return Err(DiagError::Decode(
                "the dump ended without NLMSG_DONE".into(),
            ));
        }
        if replies(&rx[..n], out)? {
            return Ok(());
        }
    }
}

/// The dump request (all-zero socket id: no address or port filter).
fn request(state_mask: u32, extensions: ExtensionFlags) -> [u8; REQUEST_LEN] {
    let mut buf = [0u8; REQUEST_LEN];
    let mut nl = NetlinkBuffer::new(&mut buf[..]);
    nl.set_length(REQUEST_LEN as u32);
    nl.set_message_type(TCPDIAG_GETSOCK);
    nl.set_flags(NLM_F_REQUEST | NLM_F_DUMP);
    // struct inet_diag_req: family (0 here; the kernel ignores it for
    // dumps of this type), address lengths, extensions, socket id
    // (48 bytes), states, dbs.
    let req = nl.payload_mut();
    req[3] = extensions.bits();
    req[52..56].copy_from_slice(&state_mask.to_ne_bytes());
    buf
}

/// Hand each socket of one datagram of replies to `out`; true at the dump's
/// end.
fn replies(mut data: &[u8], out: &mut impl FnMut(&InetResponse)) -> Result<bool, DiagError> {
    let bad = |e: netlink_packet_core::DecodeError| DiagError::Decode(e.to_string());
    while !data.is_empty() {
        let msg = NetlinkBuffer::new_checked(data).map_err(bad)?;
        match msg.message_type() {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let e = ErrorBuffer::new_checked(msg.payload()).map_err(bad)?;
                return Err(DiagError::Kernel(e.code().map_or(0, |c| c.get())));
            }
            TCPDIAG_GETSOCK => out(&InetResponse::parse(msg.payload()).map_err(bad)?),
            _ => {}
        }
        // Messages are 4-byte aligned; `new_checked` bounds the length.
        let len = (msg.length() as usize).next_multiple_of(4);
        data = data.get(len..).unwrap_or_default();
    }
    Ok(false)
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use netlink_packet_core::Emitable;
    use netlink_packet_sock_diag::{
        constants::AF_INET,
        inet::{InetResponseHeader, SocketId},
    };

    use super::*;

    /// One netlink message of type `ty`, padded to 4 bytes.
    fn message(ty: u16, payload: &[u8]) -> Vec<u8> {
        let len = 16 + payload.len();
        let mut buf = vec![0u8; len.next_multiple_of(4)];
        let mut nl = NetlinkBuffer::new(&mut buf[..]);
        nl.set_length(len as u32);
        nl.set_message_type(ty);
        nl.payload_mut()[..payload.len()].copy_from_slice(payload);
        buf
    }

    fn time_wait(sport: u16) -> Vec<u8> {
        let r = InetResponse {
            header: InetResponseHeader {
                family: AF_INET,
                state: state::TIME_WAIT,
                timer: None,
                socket_id: SocketId {
                    source_port: sport,
                    destination_port: 9000,
                    source_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
                    destination_address: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
                    interface_id: 0,
                    cookie: 7u64.to_ne_bytes(),
                },
                recv_queue: 0,
                send_queue: 0,
                uid: 0,
                inode: 0,
            },
            nlas: Default::default(),
        };
        let mut payload = vec![0u8; r.buffer_len()];
        r.emit(&mut payload);
        message(TCPDIAG_GETSOCK, &payload)
    }

    #[test]
    fn the_request_is_an_inet_diag_req_dump_of_both_families() {
        let buf = request(0b1010, ExtensionFlags::SKMEMINFO);
        let nl = NetlinkBuffer::new_checked(&buf[..]).unwrap();
        assert_eq!(nl.length() as usize, REQUEST_LEN);
        assert_eq!(nl.message_type(), TCPDIAG_GETSOCK);
        assert_eq!(nl.flags(), NLM_F_REQUEST | NLM_F_DUMP);
        let req = nl.payload();
        assert_eq!(req[0], 0, "family unspecified");
        assert_eq!(req[3], ExtensionFlags::SKMEMINFO.bits());
        assert_eq!(req[52..56], 0b1010u32.to_ne_bytes());
        assert!(req[4..52].iter().all(|b| *b == 0), "no socket id filter");
    }

    #[test]
    fn replies_yield_each_socket_and_end_at_done() {
        let mut data = [time_wait(40000), message(0x99, &[0; 4]), time_wait(40001)].concat();
        let mut got = Vec::new();
        let end = replies(&data, &mut |r| got.push(socket_of(r))).unwrap();
        assert!(!end, "no NLMSG_DONE yet");
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].state, got[0].sport, got[0].dport),
            (state::TIME_WAIT, 40000, 9000)
        );
        assert_eq!((got[1].sport, got[1].cookie), (40001, 7));

        data.extend(message(NLMSG_DONE, &0i32.to_ne_bytes()));
        data.extend(time_wait(40002));
        got.clear();
        assert!(replies(&data, &mut |r| got.push(socket_of(r))).unwrap());
        assert_eq!(got.len(), 2, "nothing after NLMSG_DONE");
    }

    #[test]
    fn a_kernel_error_and_a_damaged_reply_are_errors() {
        let err = message(NLMSG_ERROR, &[(-13i32).to_ne_bytes(), [0; 4]].concat());
        let r = replies(&[err.clone(), [0u8; 16].to_vec()].concat(), &mut |_| {});
        assert!(matches!(r, Err(DiagError::Kernel(-13))), "{r:?}");
        let mut cut = time_wait(40000);
        cut.truncate(30);
        assert!(matches!(
            replies(&cut, &mut |_| {}),
            Err(DiagError::Decode(_))
        ));
    }
}
