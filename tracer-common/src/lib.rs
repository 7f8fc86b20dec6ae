//! Types and constants shared by the eBPF programs and the userspace collector.
//!
//! Everything here is `#[repr(C)]`, free of `bool`/enums/`Option`, and has its
//! size asserted at compile time, so both sides agree on the layout. States and
//! kinds travel as raw integers; userspace converts them with `TryFrom`.
#![no_std]

pub mod account;
pub mod hist;
pub mod machine;

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub mod state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
    /// Number of slots per dimension of the transition matrix (states 0..=12).
    pub const COUNT: usize = 13;
}

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
pub const TASK_COMM_LEN: usize = 16;

/// errno values the kernel leaves in `sk_err` when it closes a socket.
pub mod errno {
    pub const EPIPE: u16 = 32;
    pub const ENETUNREACH: u16 = 101;
    pub const ECONNRESET: u16 = 104;
    pub const ETIMEDOUT: u16 = 110;
    pub const ECONNREFUSED: u16 = 111;
    pub const EHOSTUNREACH: u16 = 113;
}

/// Which side opened the connection.
pub mod dir {
    /// Seen first in an unknown state (it existed before the tracer started).
    pub const UNKNOWN: u8 = 0;
    /// This host called connect(): CLOSE→SYN_SENT.
    pub const ACTIVE: u8 = 1;
    /// Accepted from a listener: LISTEN→SYN_RECV.
    pub const PASSIVE: u8 = 2;
}

/// How a transition into CLOSE ended the connection, decided in the kernel
/// from the old state, `sk_err` and the SOCK_DONE flag (see README "Close
/// classification"). `NONE` for transitions that do not enter CLOSE.
pub mod close {
    pub const NONE: u8 = 0;
    /// FIN_WAIT2/CLOSING → CLOSE with the peer's FIN received: the connection
    /// moved into a TIME_WAIT sock.
    pub const TIME_WAIT: u8 = 1;
    /// FIN_WAIT2 → CLOSE before the peer's FIN (orphaned socket): parked in a
    /// FIN_WAIT2 timewait minisock, which becomes TIME_WAIT when the FIN comes.
    pub const FIN_WAIT2_PARKED: u8 = 2;
    /// LAST_ACK → CLOSE: passive close completed.
    pub const LAST_ACK: u8 = 3;
    /// X → CLOSE with `sk_err` = 0 from a synchronized state: this host aborted
    /// (close() with SO_LINGER 0, or data left unread) and sends a RST.
    pub const RESET_SENT: u8 = 4;
    /// X → CLOSE with ECONNRESET/EPIPE: a RST from the peer.
    pub const RESET_RECEIVED: u8 = 5;
    /// X → CLOSE with ETIMEDOUT after ESTABLISHED: retransmission/keepalive timeout.
    pub const TIMEOUT: u8 = 6;
    /// SYN_SENT → CLOSE with ECONNREFUSED.
    pub const CONNECT_REFUSED: u8 = 7;
    /// SYN_SENT → CLOSE with ETIMEDOUT (SYN retransmits exhausted).
    pub const CONNECT_TIMEOUT: u8 = 8;
    /// SYN_SENT → CLOSE with EHOSTUNREACH/ENETUNREACH.
    pub const CONNECT_UNREACHABLE: u8 = 9;
    /// SYN_SENT → CLOSE with `sk_err` = 0: closed by the application first.
    pub const CONNECT_ABORTED: u8 = 10;
    /// SYN_RECV → CLOSE: an accepted child died before ESTABLISHED.
    pub const PASSIVE_FAILED: u8 = 11;
    /// LISTEN → CLOSE: a listener was closed.
    pub const LISTENER_CLOSED: u8 = 12;
    /// Anything else (another errno).
    pub const OTHER: u8 = 13;
    /// SYN_SENT → CLOSE with source port 0 and `sk_err` = 0: connect() found
    /// no free local port (EADDRNOTAVAIL, returned only to the caller). The
    /// failure TIME_WAIT buildup causes.
    pub const CONNECT_NO_LOCAL_PORT: u8 = 14;
    pub const COUNT: usize = 15;
}

/// Indices into `Stats::counters`. Every one is exact: it is bumped in the
/// kernel at the transition, whether or not the event reached userspace.
pub mod counter {
    /// TCP transitions that passed the filters.
    pub const TRANSITIONS: u32 = 0;
    /// Events the ring buffer had no room for.
    pub const RINGBUF_DROPS: u32 = 1;
    /// A socket's transition found no per-socket state: the socket predates
    /// the tracer (its time in state and handshake latency are unknown).
    pub const INFLIGHT_MISSING: u32 = 2;
    /// A socket's state could not be created (both per-socket tables full,
    /// `HOT_SOCKET_SLOTS` + `SOCKET_SLOTS`, or no kernel memory): counted, the socket's
    /// transitions still count.
    pub const INFLIGHT_INSERT_FAILED: u32 = 3;
    /// The per-flow breakdown table was full: the flow's numbers went to the
    /// `other` row (`Stats::other_flow`), so rows + other = totals still.
    pub const FLOW_TABLE_FULL: u32 = 4;
    /// CLOSE → SYN_SENT (connect() called).
    pub const CONNECT_ATTEMPTS: u32 = 5;
    /// SYN_SENT → ESTABLISHED.
    pub const ACTIVE_ESTABLISHED: u32 = 6;
    /// SYN_RECV → ESTABLISHED.
    pub const PASSIVE_ESTABLISHED: u32 = 7;
    /// ESTABLISHED → FIN_WAIT1: this host closed first.
    pub const CLOSE_LOCAL_FIRST: u32 = 8;
    /// ESTABLISHED → CLOSE_WAIT: the peer closed first.
    pub const CLOSE_PEER_FIRST: u32 = 9;
    /// FIN_WAIT1 → CLOSING: both sides closed at once.
    pub const CLOSE_SIMULTANEOUS: u32 = 10;
    /// Active handshakes that needed SYN retransmits.
    pub const ACTIVE_HANDSHAKE_RETRANS: u32 = 11;
    /// Passive handshakes that needed SYN-ACK retransmits.
    pub const PASSIVE_HANDSHAKE_RETRANS: u32 = 12;
    /// Transitions dropped by the filters (not counted anywhere else).
    pub const FILTERED_OUT: u32 = 13;
    /// Non-TCP sockets (MPTCP, SCTP) seen on the tracepoint and ignored.
    pub const NON_TCP: u32 = 14;
    /// TCP sockets of another address family, or state numbers outside the
    /// kernel's TCP states: skipped.
    pub const SKIPPED_OTHER: u32 = 15;
    /// Runs before userspace filled in the field offsets (never, normally).
    pub const SKIPPED_NO_OFFSETS: u32 = 16;
    /// `bpf_skc_to_tcp_sock` refused the socket: its TCP facts (retransmits,
    /// RTT, bytes) were not read; the transition still counts.
    pub const TCP_SOCK_UNAVAILABLE: u32 = 17;
    /// Listening sockets not recorded because the listener table was full:
    /// their children's owner is unknown.
    pub const LISTENER_TABLE_FULL: u32 = 18;
    /// Passive handshakes whose SYN-ACK RTT sample was 0 (no sample, e.g.
    /// syncookies): counted as established, not as a 0 µs latency.
    pub const PASSIVE_RTT_UNKNOWN: u32 = 19;
    /// SYN-ACKs a listener retransmitted (`tcp:tcp_retransmit_synack`, which
    /// fires where the kernel counts TcpExtTCPSynRetrans for a SYN-ACK),
    /// under the filters.
    pub const SYNACK_RETRANSMITS: u32 = 20;
    /// Per-listener figures not kept because the `LISTENER_STATS` table was
    /// full (the global counters still have them).
    pub const LISTENER_STATS_FULL: u32 = 21;
    /// Final ACKs a full accept queue refused (`kfree_skb` with reason
    /// `TCP_LISTEN_OVERFLOW`, events mode on kernels whose tracepoint names
    /// the listener) that passed the filters: the `kfree_skb` program's own
    /// slots, as `SYNACK_FILTERED_OUT` explains.
    pub const QUEUE_DROPS: u32 = 22;
    /// The same events the filters dropped.
    pub const QUEUE_DROPS_FILTERED_OUT: u32 = 23;
    /// Listener events (SYN-ACK retransmits) the filters dropped: the
    /// `tcp_retransmit_synack` program's own slot, since it may interrupt
    /// the transition program on a CPU (softirq over process context) and
    /// two writers of one plain per-CPU counter could lose an increment.
    pub const SYNACK_FILTERED_OUT: u32 = 42;
    /// The same program's `LISTENER_STATS_FULL`.
    pub const SYNACK_LISTENER_STATS_FULL: u32 = 43;
    /// Packets the `kfree_skb` program could not read the headers of (not
    /// printed): refused final ACKs, and packets a listener dropped without
    /// a reason that might have been half-open resets.
    pub const LISTENER_DROPS_UNREADABLE: u32 = 44;
    /// Clients' RSTs answering a SYN-ACK, which end a half-open handshake
    /// (the host's `TcpExtEmbryonicRsts`): the kernel frees them with no
    /// drop reason (`NOT_SPECIFIED`) and the listener as the receiving
    /// socket; events mode where the tracepoint names it.
    pub const HALF_OPEN_RESETS: u32 = 45;
    /// The same events the filters dropped.
    pub const HALF_OPEN_RESETS_FILTERED_OUT: u32 = 46;
    /// First of `close::COUNT` slots: X → CLOSE by close kind.
    pub const CLOSE_BASE: u32 = 24;
    /// First of 3 slots (indexed by `dir::*`): entries into the timewait table
    /// (`close::TIME_WAIT` + `close::FIN_WAIT2_PARKED`) by who opened the connection.
    pub const TIME_WAIT_BY_DIR: u32 = CLOSE_BASE + super::close::COUNT as u32;
    /// One past the last `TIME_WAIT_BY_DIR` slot.
    pub const TIME_WAIT_BY_DIR_END: u32 = TIME_WAIT_BY_DIR + 3;
    /// One past the highest slot in use (slots below it that nothing
    /// names stay 0).
    pub const COUNT: u32 = HALF_OPEN_RESETS_FILTERED_OUT + 1;
    const _: () = assert!(TIME_WAIT_BY_DIR_END <= SYNACK_FILTERED_OUT);
}

/// Histogram slots in the `HISTS` per-CPU array.
pub mod hist_kind {
    /// SYN_SENT → ESTABLISHED, measured CLOSE→SYN_SENT to SYN_SENT→ESTABLISHED.
    pub const ACTIVE: u32 = 0;
    /// Same, for connects whose SYN was retransmitted.
    pub const ACTIVE_RETRANS: u32 = 1;
    /// Passive side: the kernel's SYN-ACK→ACK round trip (`srtt_us` at SYN_RECV→ESTABLISHED).
    pub const PASSIVE: u32 = 2;
    /// Same, for handshakes whose SYN-ACK was retransmitted.
    pub const PASSIVE_RETRANS: u32 = 3;
    /// Established connections' lifetime at → CLOSE, from the birth transition.
    pub const LIFETIME: u32 = 4;
    pub const COUNT: u32 = 5;
    // account::effects picks a side's retransmitted histogram as its clean one + 1.
    const _: () = assert!(ACTIVE_RETRANS == ACTIVE + 1 && PASSIVE_RETRANS == PASSIVE + 1);
}

/// Bits in `Event::flags` and `SockState::flags`.
pub mod flag {
    /// The owner pid/comm were captured in the owner's own context.
    pub const OWNER_KNOWN: u8 = 1;
    /// `in_state_ns` is valid (the previous transition was seen).
    pub const DURATION_KNOWN: u8 = 2;
    /// The handshake needed retransmits (`retrans` > 0).
    pub const RETRANS: u8 = 4;
    /// SockState: a transition is waiting for the filter verdict (tuple incomplete).
    pub const DEFERRED: u8 = 8;
    /// SockState: first seen mid-life (counted as `inflight_missing` once
    /// its verdict matches).
    pub const MID_LIFE: u8 = 16;
    /// `lifetime_ns` is valid (the socket's birth transition was seen).
    pub const LIFETIME_KNOWN: u8 = 32;
    /// `handshake_ns` is valid (on → ESTABLISHED).
    pub const HANDSHAKE_KNOWN: u8 = 64;
    /// SockState: initialized (storage is created zeroed).
    pub const INIT: u8 = 128;
}

/// A socket's filter verdict (`SockState::verdict`): decided once, at the
/// first transition whose tuple is complete, and never changed afterwards,
/// so one connection is never split between "matched" and "filtered".
pub mod verdict {
    pub const UNDECIDED: u8 = 0;
    pub const MATCH: u8 = 1;
    pub const NO_MATCH: u8 = 2;
}

/// Byte offsets of the kernel fields the programs read, computed in userspace
/// from /sys/kernel/btf/vmlinux (aya applies no CO-RE relocations to Rust-built
/// objects) and written into the object as a load-time global. The program
/// loads `sock` fields directly through the tp_btf `struct sock *` (the
/// verifier checks each offset against BTF, since the global is read-only and
/// frozen) and `tcp_sock` fields through `bpf_skc_to_tcp_sock()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    /// Local port, host byte order (0 until connect() picked one).
    pub skc_num: u32,
    pub skc_family: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    /// `sock_common.skc_net` (a `struct net *`).
    pub skc_net: u32,
    /// `net.ns.inum`: the network namespace's inode number.
    pub net_ns_inum: u32,
    pub sk_protocol: u32,
    pub sk_err: u32,
    pub sk_flags: u32,
    /// `tcp_sock` fields. `inet_sport` (network order; inet_sock starts
    /// tcp_sock) still holds the local port at → CLOSE, where `skc_num` has
    /// already been released.
    pub inet_sport: u32,
    pub srtt_us: u32,
    pub total_retrans: u32,
    pub bytes_received: u32,
    pub bytes_acked: u32,
    /// `sk_buff` fields the `kfree_skb` program reads.
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    /// `SKB_DROP_REASON_TCP_LISTEN_OVERFLOW` in this kernel's enum (0: the
    /// kernel lacks it or its `kfree_skb` tracepoint has no socket, and the
    /// program is not attached).
    pub listen_overflow_reason: u32,
    /// `SKB_DROP_REASON_NOT_SPECIFIED` (read by the `kfree_skb` program,
    /// which runs only where `listen_overflow_reason` is set).
    pub unspecified_reason: u32,
    /// `sock_common.skc_state`.
    pub skc_state: u32,
    /// 1 once userspace filled this in; the programs do nothing while it is 0.
    pub valid: u32,
}
const _: () = assert!(core::mem::size_of::<Offsets>() == 96);

/// Filters, evaluated in the kernel. A zero field means "no filter".
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Owner process id (tgid).
    pub tgid: u32,
    /// Either local or remote port.
    pub port: u16,
    pub lport: u16,
    pub rport: u16,
    /// AF_INET or AF_INET6.
    pub family: u16,
    /// Remote address prefix (IPv4 in the first 4 bytes), with its family and length.
    pub addr: [u8; 16],
    pub addr_family: u16,
    pub addr_prefix_len: u8,
    /// 1: compare the owner's comm with `comm`.
    pub has_comm: u8,
    pub comm: [u8; TASK_COMM_LEN],
    /// 1: stream events to the ring buffer (live mode); 0: aggregate only.
    pub emit_events: u8,
    /// 1 when any filter above is set (lets the programs skip evaluation).
    pub any: u8,
    /// 1: keep the per-flow table; 0 in the modes that never read it
    /// (`tracer events`), which then skip its updates.
    pub flows: u8,
    pub _pad: [u8; 1],
    /// Network namespace inode (`ls -l /proc/PID/ns/net`); 0: every namespace.
    pub netns: u32,
}
const _: () = assert!(core::mem::size_of::<Filter>() == 56);

/// One TCP state transition as streamed to userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// bpf_ktime_get_ns() (CLOCK_MONOTONIC) at the transition.
    pub ts_ns: u64,
    /// Socket cookie (`bpf_get_socket_cookie`): stable id, joins with sock_diag.
    pub cookie: u64,
    /// Time spent in `oldstate`, valid when `flag::DURATION_KNOWN` is set.
    pub in_state_ns: u64,
    /// Handshake latency on SYN_SENT/SYN_RECV → ESTABLISHED, valid when
    /// `flag::HANDSHAKE_KNOWN` is set.
    pub handshake_ns: u64,
    /// On → CLOSE: time since the socket's birth transition (CLOSE→SYN_SENT or
    /// LISTEN→SYN_RECV), valid when `flag::LIFETIME_KNOWN` is set.
    pub lifetime_ns: u64,
    /// On → CLOSE: `tcp_sock.bytes_received` and `bytes_acked` (payload bytes).
    pub bytes_received: u64,
    pub bytes_acked: u64,
    /// cgroup v2 id of the owner, captured with the owner (0: unknown).
    pub cgroup_id: u64,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Owner process id (tgid) and comm, carried per socket.
    pub tgid: u32,
    /// Retransmits during the handshake (`tcp_sock.total_retrans` at ESTABLISHED).
    pub retrans: u32,
    pub comm: [u8; TASK_COMM_LEN],
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    /// `sk_err` at the transition.
    pub sk_err: u16,
    /// Network namespace inode of the socket.
    pub netns: u32,
    pub oldstate: u8,
    pub newstate: u8,
    /// `close::*`
    pub close_kind: u8,
    /// `dir::*`
    pub dir: u8,
    /// `flag::*`
    pub flags: u8,
    /// `event_kind::*`
    pub kind: u8,
    pub _pad: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<Event>() == 144);

/// Bytes one event takes in the ring buffer (its 8-byte record header
/// included).
pub const EVENT_RECORD_BYTES: u64 = core::mem::size_of::<Event>() as u64 + 8;

/// Whether the submit that leaves `pending` bytes unread should wake the
/// reader: only the one that takes the ring across `threshold`, within a
/// window of a few records (several CPUs may reserve at once), not every
/// submit after it. Each forced wake-up raises an irq_work (a self-IPI: a
/// VM exit in a guest); the reader drains the ring empty once woken, and a
/// crossing that every CPU missed is drained by the reader's timer.
pub const fn wake_reader(pending: u64, threshold: u64) -> bool {
    pending >= threshold && pending < threshold + 4 * EVENT_RECORD_BYTES
}

/// What an `Event` reports: a transition, or a listener-side event that is
/// no transition (then `oldstate`/`newstate` are 0, `saddr`/`sport` are the
/// listener's, `daddr`/`dport` the client's, owner the listener's).
pub mod event_kind {
    pub const TRANSITION: u8 = 0;
    /// A listener retransmitted a SYN-ACK to a pending connection request.
    pub const SYNACK_RETRANSMIT: u8 = 1;
    /// A listener whose accept queue was full refused a client's final ACK.
    pub const QUEUE_DROP: u8 = 2;
    /// A client answered a listener's SYN-ACK with an RST.
    pub const HALF_OPEN_RESET: u8 = 3;
}

/// Close paths a connection took (`machine::close_paths`), added to its
/// flow row once, at → CLOSE.
pub mod close_path {
    pub const LOCAL_FIRST: u8 = 1;
    pub const PEER_FIRST: u8 = 2;
    pub const SIMULTANEOUS: u8 = 4;
}

/// Per-socket state in the `SOCKS` map (keyed by socket cookie): created at
/// the socket's birth transition (or first sight), removed at its → CLOSE.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockState {
    /// When the socket entered its current state.
    pub ts_state: u64,
    /// Birth transition time (CLOSE→SYN_SENT: also the active handshake's
    /// start; LISTEN→SYN_RECV); 0 = not seen.
    pub ts_birth: u64,
    /// The deferred transition's timestamp.
    pub deferred_ts: u64,
    /// Owner's cgroup v2 id, captured with the owner.
    pub cgroup_id: u64,
    /// Owner (tgid) as last captured.
    pub tgid: u32,
    /// The owner tgid fixed into the socket's flow key when its verdict was
    /// decided (0 = unknown then); never changes afterwards.
    pub key_tgid: u32,
    pub comm: [u8; TASK_COMM_LEN],
    /// Network namespace inode.
    pub netns: u32,
    pub dir: u8,
    pub flags: u8,
    /// `verdict::*`
    pub verdict: u8,
    pub deferred_old: u8,
    pub deferred_new: u8,
    pub _pad: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<SockState>() == 72);

/// Key of the listener table: listening port per network namespace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerKey {
    pub netns: u32,
    pub port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<ListenerKey>() == 8);

/// What happened on one listening port (`ListenerKey`) while the tracer
/// ran, per CPU (userspace sums), under the filters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// SYN-ACKs retransmitted (`tcp:tcp_retransmit_synack`).
    pub synack_retransmits: u64,
    /// Handshakes completed into the accept queue (SYN_RECV → ESTABLISHED
    /// of a child of this port).
    pub accepts: u64,
}
const _: () = assert!(core::mem::size_of::<ListenerStats>() == 16);

/// Who owns a listening port (captured at CLOSE→LISTEN in listen()'s context),
/// and how many listening sockets share the key (SO_REUSEPORT, v4 + v6): the
/// entry goes when the last one closes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Owner {
    pub cgroup_id: u64,
    pub tgid: u32,
    pub comm: [u8; TASK_COMM_LEN],
    pub sockets: u32,
}
const _: () = assert!(core::mem::size_of::<Owner>() == 32);

/// Key of the per-flow breakdown: one remote service (active side: remote
/// address and port) or one local service per client address (passive side:
/// remote address and local port), per owner process and network namespace.
/// Ephemeral ports are left out so the table stays bounded.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub raddr: [u8; 16],
    /// Local address: tells apart the interfaces/IPs a host's TIME_WAITs sit on.
    pub laddr: [u8; 16],
    pub family: u16,
    /// Remote port for `dir::ACTIVE`, local port for `dir::PASSIVE`/`UNKNOWN`.
    pub port: u16,
    pub tgid: u32,
    /// Network namespace inode.
    pub netns: u32,
    pub dir: u8,
    /// Harvest generation (`FLOW_GEN` when the row was written): userspace
    /// drains the rows of past generations; 0 in userspace's own rows.
    pub gen: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 48);

/// Counters per flow (per-CPU; userspace sums). A connection is added at
/// two moments: → ESTABLISHED (`established`, the handshake) and → CLOSE
/// (everything else, including its close paths).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    /// Connections that reached ESTABLISHED.
    pub established: u64,
    /// Connects that failed (SYN_SENT → CLOSE).
    pub connect_failed: u64,
    /// Of those, for want of a free local port (EADDRNOTAVAIL).
    pub connect_no_local_port: u64,
    /// Entries into the timewait table (TIME_WAIT + parked FIN_WAIT2).
    pub time_wait: u64,
    /// Of those, orphans parked in FIN_WAIT2 before the peer's FIN.
    pub fin_wait2_parked: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    /// Connections that closed here first / by the peer first /
    /// simultaneously (counted when the connection ends).
    pub close_local_first: u64,
    pub close_peer_first: u64,
    pub close_simultaneous: u64,
    pub handshake_count: u64,
    pub handshake_sum_ns: u64,
    pub handshake_max_ns: u64,
    /// Handshakes that needed retransmits, and the retransmits summed.
    pub handshake_retrans: u64,
    pub retrans_total: u64,
    /// Established connections that closed with a known lifetime, and the
    /// lifetimes summed / maximum.
    pub closed: u64,
    pub lifetime_sum_ns: u64,
    pub lifetime_max_ns: u64,
    /// Payload bytes at close, summed (`bytes_received`, `bytes_acked`).
    pub bytes_received: u64,
    pub bytes_acked: u64,
    /// Owner's cgroup id (last seen).
    pub cgroup_id: u64,
    pub comm: [u8; TASK_COMM_LEN],
}
const _: () = assert!(core::mem::size_of::<FlowStats>() == 184);

/// The per-CPU block of counters every run touches: one map lookup per run.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stats {
    /// Indexed by `counter::*`.
    pub counters: [u64; COUNTER_SLOTS],
    /// Indexed by `transition_index(old, new)`.
    pub transitions: [u64; TRANSITION_SLOTS as usize],
    /// Flow figures of connections that found the flow table full.
    pub other_flow: FlowStats,
}
pub const COUNTER_SLOTS: usize = 48;
const _: () = assert!(counter::COUNT as usize <= COUNTER_SLOTS);
const _: () =
    assert!(core::mem::size_of::<Stats>() == (COUNTER_SLOTS + TRANSITION_SLOTS as usize) * 8 + 184);

impl Default for Stats {
    fn default() -> Self {
        Stats {
            counters: [0; COUNTER_SLOTS],
            transitions: [0; TRANSITION_SLOTS as usize],
            other_flow: FlowStats::default(),
        }
    }
}

/// One second of TIME_WAIT entries, in a 64-slot per-CPU ring indexed by
/// `second % 64`, so userspace can sum the entries of the last 60 s (the
/// kernel's fixed TIME_WAIT length): the population TIME_WAIT should have.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TwSlot {
    /// bpf_ktime_get_ns() / 1e9 of the entries counted here.
    pub sec: u64,
    pub count: u64,
}
pub const TW_SLOTS: u32 = 64;

/// Capacity of the per-socket state tables: sockets with a connection's
/// state at once, `HOT_SOCKET_SLOTS` in `SOCKS` and `SOCKET_SLOTS` more in
/// `SOCKS_MORE`. Not preallocated: the kernel keeps one bucket (16 B) per
/// slot up front and allocates an entry per live socket; a socket that
/// finds both full is counted (`counter::INFLIGHT_INSERT_FAILED`). The
/// buckets cost time too: every lookup and insert lands on a random one,
/// a cache and TLB miss once they outgrow the caches. Summary mode under
/// full-speed churn measured 207 / 221 / 238 / 242 ns per transition with
/// one table of 2^14 / 2^16 / 2^18 / 2^20 slots; a million is what the
/// tracer promises to hold, so the first sockets get the small table.
pub const HOT_SOCKET_SLOTS: u32 = 1 << 14;
pub const SOCKET_SLOTS: u32 = 1 << 20;

/// Slot of (old, new) in the 13x13 transition matrix.
#[inline(always)]
pub const fn transition_index(old: u8, new: u8) -> u32 {
    (old as u32) * (state::COUNT as u32) + new as u32
}
pub const TRANSITION_SLOTS: u32 = (state::COUNT * state::COUNT) as u32;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), contain only integers and byte arrays,
    // and have no implicit padding (their sizes are asserted above).
    unsafe impl aya::Pod for super::Offsets {}
    unsafe impl aya::Pod for super::Filter {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::SockState {}
    unsafe impl aya::Pod for super::Owner {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::ListenerStats {}
    unsafe impl aya::Pod for super::Stats {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowStats {}
    unsafe impl aya::Pod for super::hist::Hist {}
    unsafe impl aya::Pod for super::TwSlot {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_is_woken_once_per_crossing_not_per_event() {
        let t = 1 << 20;
        // The submits that take the ring across the threshold wake it...
        assert!(wake_reader(t, t));
        assert!(wake_reader(t + EVENT_RECORD_BYTES, t));
        // ...those below it and those long after it do not.
        assert!(!wake_reader(t - 1, t));
        assert!(!wake_reader(t + 4 * EVENT_RECORD_BYTES, t));
        assert!(!wake_reader(3 * t, t));
        // Each event crosses at most once: a run of submits from empty
        // wakes exactly as many times as records land in the window.
        let wakes = (1..=20_000u64)
            .filter(|n| wake_reader(n * EVENT_RECORD_BYTES, t))
            .count();
        assert_eq!(wakes, 4);
    }
}
