//! The summary report: built from a kernel snapshot and sock_diag
//! populations, rendered as text or as JSON (schema in README).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
};

use serde::{Deserialize, Serialize};
use tracer_common::{close, counter, dir, hist_kind, state, FlowKey, FlowStats};

use crate::{
    host::diag::{DiagSocket, Population},
    model::{
        comm_str, dir_name, endpoint, flow_netns, group_flows, ip_from_raw, state_name, GroupStats,
        Histogram, Snapshot,
    },
};

pub const SCHEMA: &str = "tcp-state-tracer/summary/v1";

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: Option<f64>,
    pub p90_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub max_us: Option<f64>,
    pub mean_us: Option<f64>,
    /// Non-empty histogram buckets: [low_us, high_us, count].
    pub buckets: Vec<(f64, f64, u64)>,
}

impl Latency {
    pub fn from_hist(h: &Histogram) -> Self {
        let us = |v: Option<u64>| v.map(|ns| ns as f64 / 1e3);
        Latency {
            count: h.count,
            p50_us: us(h.quantile(0.5)),
            p90_us: us(h.quantile(0.9)),
            p99_us: us(h.quantile(0.99)),
            max_us: us((h.count > 0).then_some(h.max_ns)),
            mean_us: us(h.mean_ns()),
            buckets: h
                .nonzero()
                .map(|(lo, hi, n)| (lo as f64 / 1e3, hi as f64 / 1e3, n))
                .collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Handshakes {
    /// All handshakes of this side.
    pub all: Latency,
    /// Only those that needed no retransmit.
    pub clean: Latency,
    /// Only those that needed SYN (active) or SYN-ACK (passive) retransmits:
    /// each costs ≥ 1 s (TCP_TIMEOUT_INIT), so these explain 1 s / 3 s tails.
    pub retransmitted: Latency,
}

impl Handshakes {
    fn new(clean: &Histogram, retrans: &Histogram) -> Self {
        let mut all = clean.clone();
        all.merge(retrans);
        Handshakes {
            all: Latency::from_hist(&all),
            clean: Latency::from_hist(clean),
            retransmitted: Latency::from_hist(retrans),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Connects {
    /// connect() calls (CLOSE → SYN_SENT).
    pub attempts: u64,
    /// SYN_SENT → ESTABLISHED.
    pub established: u64,
    /// SYN_SENT → CLOSE, all reasons.
    pub failed: u64,
    pub refused: u64,
    pub timed_out: u64,
    pub unreachable: u64,
    /// Closed by the application before the handshake finished.
    pub aborted: u64,
    /// connect() found no free local port (EADDRNOTAVAIL): the failure
    /// TIME_WAIT buildup causes (see port_pressure).
    pub no_local_port: u64,
    pub other: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Accepts {
    /// SYN_RECV → ESTABLISHED.
    pub established: u64,
    /// SYN_RECV → CLOSE.
    pub failed: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Closes {
    /// ESTABLISHED → FIN_WAIT1: this host closed first (it pays TIME_WAIT).
    pub closed_here_first: u64,
    /// ESTABLISHED → CLOSE_WAIT: the peer closed first.
    pub closed_by_peer_first: u64,
    /// FIN_WAIT1 → CLOSING.
    pub simultaneous: u64,
    /// LAST_ACK → CLOSE.
    pub passive_close_completed: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    /// Established connections ended by a retransmission/keepalive timeout.
    pub timeouts: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BySide {
    /// Connections this host opened (connect()).
    pub active_opened: u64,
    /// Connections this host accepted.
    pub passive_opened: u64,
    /// Connections that predate the tracer and whose side is unknown.
    pub unknown: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TimeWait {
    /// Connections that entered the timewait table during the run:
    /// `direct` + `via_fin_wait2`.
    pub entered: u64,
    /// FIN_WAIT2/CLOSING → CLOSE after the peer's FIN: straight into TIME_WAIT.
    pub direct: u64,
    /// FIN_WAIT2 → CLOSE of an orphaned socket before the peer's FIN: parked
    /// as a FIN_WAIT2 minisock that turns into TIME_WAIT when the FIN arrives.
    pub via_fin_wait2: u64,
    pub entered_by_side: BySide,
    /// Current population from sock_diag (what `ss` shows), filtered like the run.
    pub now: Population,
    /// The population the entries predict.
    pub model: TimeWaitModel,
    /// Entries and population per local address, top N.
    pub by_local_addr: Vec<LocalAddrRow>,
    /// Current TIME_WAIT population by peer, top N.
    pub now_by_peer: Vec<PopulationRow>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PopulationRow {
    /// Network namespace (inode) the sockets are in.
    pub netns: u32,
    pub peer: String,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TransitionCount {
    pub from: &'static str,
    pub to: &'static str,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PeerRow {
    /// Active side: remote address:port; passive side: client address → local port.
    pub peer: String,
    pub direction: &'static str,
    /// Network namespace of the flows (null until the kernel side reports it;
    /// `time_wait_now` is then summed over every namespace).
    pub netns: Option<u32>,
    /// TIME_WAIT sockets of this peer now (sock_diag).
    pub time_wait_now: u64,
    /// Volume (connections + TIME_WAIT entries + resets) this row's figures
    /// may miss: counted in `flow_breakdown.other` instead. 0: exact.
    pub max_missing: u64,
    #[serde(flatten)]
    pub stats: GroupStats,
}

/// How exact the per-flow tables are: the rows are kept in a bounded table
/// (Space-Saving); what an evicted row held is in `other`, so every table's
/// rows plus `other` equal the totals.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FlowBreakdown {
    /// true: no row was ever evicted, every figure is exact.
    pub exact: bool,
    #[serde(flatten)]
    pub bounds: crate::model::Breakdown,
    /// Figures of evicted rows and of connections the kernel table had no
    /// room for.
    pub other: GroupStats,
}

/// TIME_WAIT per local address: which of the host's IPs hold the sockets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocalAddrRow {
    /// Network namespace; null while flows do not carry theirs (the row then
    /// sums the address over every namespace).
    pub netns: Option<u32>,
    pub local_addr: String,
    /// Entries into TIME_WAIT during the run (this host closed first).
    pub time_wait_entries: u64,
    /// TIME_WAIT sockets on this address now (sock_diag).
    pub time_wait_now: u64,
}

/// Ephemeral ports one destination uses: a connect() to (remote addr:port)
/// from one local address needs a local port no other socket of that
/// 4-tuple holds, so TIME_WAIT + live sockets count against the range.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PressureRow {
    /// Network namespace: each has its own port space and range.
    pub netns: u32,
    pub local_addr: String,
    pub remote: String,
    pub time_wait: u64,
    pub established: u64,
    /// Other non-listening states (SYN_SENT, FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK, CLOSING).
    pub other: u64,
    pub total: u64,
    /// Size of that namespace's net.ipv4.ip_local_port_range.
    pub range_size: u64,
    /// total / range_size, in percent.
    pub used_pct: f64,
    /// At or above the warning threshold.
    pub warning: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PortPressure {
    pub warn_pct: f64,
    /// Destinations sorted by use, top N.
    pub destinations: Vec<PressureRow>,
    /// One line per destination at or above `warn_pct` (all of them, not only the top N).
    pub warnings: Vec<String>,
}

/// The sysctls that decide TIME_WAIT's cost, as read at report time
/// (null when unreadable).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sysctls {
    /// net.ipv4.tcp_tw_reuse: 0 off, 1 on, 2 loopback only (default).
    pub tcp_tw_reuse: Option<u32>,
    pub tcp_max_tw_buckets: Option<u64>,
    /// net.ipv4.ip_local_port_range.
    pub ip_local_port_range: (u16, u16),
    /// net.ipv4.tcp_fin_timeout: how long an orphan stays in FIN_WAIT2.
    pub tcp_fin_timeout: Option<u32>,
}

impl Sysctls {
    /// Read them from /proc/sys (this network namespace).
    pub fn read() -> Self {
        let get = |name: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
                .ok()
                .map(|v| v.trim().to_string())
        };
        Sysctls {
            tcp_tw_reuse: get("tcp_tw_reuse").and_then(|v| v.parse().ok()),
            tcp_max_tw_buckets: get("tcp_max_tw_buckets").and_then(|v| v.parse().ok()),
            ip_local_port_range: crate::ephemeral_range(),
            tcp_fin_timeout: get("tcp_fin_timeout").and_then(|v| v.parse().ok()),
        }
    }
}

/// The TIME_WAIT population predicted from entries: each entry stays 60 s.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TimeWaitModel {
    /// Entries (direct + parked FIN_WAIT2) in the last 60 s.
    pub entered_last_60s: u64,
    /// Entries older than that have aged out (60 s, TCP_TIMEWAIT_LEN).
    pub aged_out: u64,
}

/// A socket in CLOSE_WAIT longer than the threshold: the peer closed and the
/// application has not called close().
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CloseWaitLeak {
    /// Network namespace of the socket.
    pub netns: u32,
    pub local: String,
    pub peer: String,
    /// The process holding the socket now (from /proc), else the owner the
    /// kernel side captured.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Seconds in CLOSE_WAIT.
    pub age_s: f64,
    /// false: the transition into CLOSE_WAIT predates the tracer, `age_s` is
    /// a lower bound (the tracer's uptime).
    pub age_exact: bool,
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CloseWait {
    pub threshold_s: f64,
    /// CLOSE_WAIT sockets now (sock_diag).
    pub now: u64,
    /// Those older than the threshold, oldest first.
    pub leaks: Vec<CloseWaitLeak>,
}

/// Connections per cgroup (v2 id of the owner, path when resolved).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CgroupRow {
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    #[serde(flatten)]
    pub stats: GroupStats,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PortRow {
    /// Network namespace (null until the kernel side reports it).
    pub netns: Option<u32>,
    /// Local listening port; null for outgoing connections (ephemeral ports).
    pub local_port: Option<u16>,
    #[serde(flatten)]
    pub stats: GroupStats,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProcessRow {
    /// null when the owner was never seen in its own context.
    pub pid: Option<u32>,
    pub comm: String,
    #[serde(flatten)]
    pub stats: GroupStats,
}

/// The tracer's own health: every loss or skip is counted here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Health {
    pub transitions_counted: u64,
    /// Events the ring buffer could not take (live mode). Aggregates stay exact.
    pub events_dropped: u64,
    /// Sockets first seen mid-life (older than the tracer): their handshake
    /// latency / time-in-state is unknown; their transitions count.
    pub inflight_missing: u64,
    /// Connections that found no room for their per-socket state (the
    /// table full, or no kernel memory).
    pub inflight_insert_failed: u64,
    /// Connections that found the flow table full: in the totals and in the
    /// `other` row, not in a row of their own.
    pub flow_table_full: u64,
    pub filtered_out: u64,
    pub non_tcp_ignored: u64,
    /// Runs that returned early: another address family or state number
    /// (`skipped`), or the offsets not filled in (`skipped_no_offsets`).
    pub skipped: u64,
    pub skipped_no_offsets: u64,
    /// Transitions whose TCP facts could not be read (`bpf_skc_to_tcp_sock`).
    pub tcp_sock_unavailable: u64,
    /// Listening sockets the listener table had no room for.
    pub listener_table_full: u64,
    /// Passive handshakes without an RTT sample (not counted as 0 µs).
    pub passive_rtt_unknown: u64,
    /// Per-listener figures the listener stats table had no room for.
    pub listener_stats_full: u64,
    /// Program runs the kernel skipped (the program was already running on
    /// that CPU): transitions never seen.
    pub recursion_misses: u64,
}

impl Health {
    /// Every figure with its metric name and meaning: the text report and
    /// the exporter both print this list.
    pub fn entries(&self) -> [(&'static str, &'static str, u64); 14] {
        [
            (
                "events",
                "Transitions the kernel program counted",
                self.transitions_counted,
            ),
            (
                "events_dropped",
                "Events the ring buffer could not take (aggregates stay exact)",
                self.events_dropped,
            ),
            (
                "inflight_missing",
                "Sockets first seen mid-life (older than the tracer)",
                self.inflight_missing,
            ),
            (
                "inflight_insert_failures",
                "Connections that found no room for their per-socket state",
                self.inflight_insert_failed,
            ),
            (
                "flow_table_overflows",
                "Connections counted in the other row because the flow table was full",
                self.flow_table_full,
            ),
            (
                "filtered_out",
                "Transitions (and listener events) the filters dropped",
                self.filtered_out,
            ),
            (
                "non_tcp_ignored",
                "MPTCP/SCTP transitions on the tracepoint, ignored",
                self.non_tcp_ignored,
            ),
            (
                "skipped",
                "Runs skipped: another address family or state number, or a refused ACK whose headers could not be read",
                self.skipped,
            ),
            (
                "skipped_no_offsets",
                "Runs before the field offsets were loaded",
                self.skipped_no_offsets,
            ),
            (
                "tcp_sock_unavailable",
                "Transitions whose TCP facts could not be read",
                self.tcp_sock_unavailable,
            ),
            (
                "listener_table_full",
                "Listening sockets the listener table had no room for",
                self.listener_table_full,
            ),
            (
                "passive_rtt_unknown",
                "Passive handshakes without an RTT sample",
                self.passive_rtt_unknown,
            ),
            (
                "listener_stats_full",
                "Per-listener figures (SYN-ACK retransmits, accepts) the listener stats table had no room for",
                self.listener_stats_full,
            ),
            (
                "recursion_misses",
                "Program runs the kernel skipped (recursion on a CPU)",
                self.recursion_misses,
            ),
        ]
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub schema: &'static str,
    pub duration_s: f64,
    pub filter: String,
    pub active_handshake: Handshakes,
    pub passive_handshake: Handshakes,
    pub connects: Connects,
    pub accepts: Accepts,
    pub closes: Closes,
    pub time_wait: TimeWait,
    pub port_pressure: PortPressure,
    pub sysctls: Sysctls,
    pub close_wait: CloseWait,
    /// Lifetime of established connections that closed (µs fields), from
    /// their birth transition to → CLOSE.
    pub connection_lifetime: Latency,
    pub transitions: Vec<TransitionCount>,
    pub top_peers: Vec<PeerRow>,
    /// Whether the peer, port, process and cgroup tables are exact, and
    /// by how much they may be off.
    pub flow_breakdown: FlowBreakdown,
    pub top_local_ports: Vec<PortRow>,
    pub top_processes: Vec<ProcessRow>,
    pub top_cgroups: Vec<CgroupRow>,
    /// Every network namespace read, largest population first (top N).
    pub namespaces: Vec<NamespaceRow>,
    /// Which namespaces the population covers, and how they were read.
    pub netns_coverage: Coverage,
    /// Listening sockets, connects in flight and the sysctls bounding
    /// them (`listeners`, `connects_in_flight`, `listen_sysctls`).
    #[serde(flatten)]
    pub listen: crate::host::listeners::Listeners,
    pub tracer: Health,
}

/// A network namespace as the report's caller found and read it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamespaceMeta {
    pub netns: u32,
    /// /run/netns names.
    pub names: Vec<String>,
    /// A process inside it.
    pub pid: Option<u32>,
    /// What that process's cgroup says (pod, container, unit).
    pub workload: Option<crate::host::cgroup::Workload>,
    /// "own" (sock_diag, the tracer's namespace), "setns" (sock_diag
    /// inside it), "proc" (/proc/PID/net/tcp{,6}).
    pub read_via: &'static str,
}

/// One namespace's population and what it holds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NamespaceRow {
    pub netns: u32,
    pub names: Vec<String>,
    pub pid: Option<u32>,
    /// Pod UID, container (`runtime://id`), systemd unit, and a short name
    /// from them, when the owner's cgroup says.
    pub pod_uid: Option<String>,
    /// `namespace/name` of the pod and the container's name, where the
    /// node's kubelet log directories name them.
    pub pod: Option<String>,
    pub container_name: Option<String>,
    pub container: Option<String>,
    pub unit: Option<String>,
    pub workload: Option<String>,
    pub read_via: &'static str,
    /// sock_diag (or /proc) counts in this namespace: what `ip netns exec NS ss` shows.
    pub now: Population,
    pub close_wait_leaks: u64,
    /// That namespace's net.ipv4.ip_local_port_range (null: not readable
    /// on the /proc road; the tracer's own applies to port pressure).
    pub ip_local_port_range: Option<(u16, u16)>,
    /// The busiest destination's share of the port range, percent.
    pub port_pressure_max_pct: f64,
    /// Transitions of the namespace's flows; null until the kernel side
    /// reports namespaces on flows.
    pub flows: Option<GroupStats>,
}

/// What the population covers. Without the privileges to enter other
/// namespaces the report says so here: never a silent partial count.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Coverage {
    /// The tracer's own namespace.
    pub own_netns: u32,
    /// Namespaces found (after `--netns`).
    pub found: u64,
    /// Read: own + via setns + via /proc.
    pub read: u64,
    pub via_setns: u64,
    pub via_proc: u64,
    /// Namespaces that disappeared while being read (not counted, no row).
    pub vanished: u64,
    /// Found but not readable, with the reason.
    pub unreadable: Vec<Unreadable>,
    /// Processes whose /proc/PID/ns/net link could not be read (no
    /// CAP_SYS_PTRACE): their namespaces may be missing from `found`.
    pub processes_denied: u64,
    /// true: every namespace found was read and no process was hidden.
    pub complete: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    pub netns: u32,
    pub names: Vec<String>,
    pub pid: Option<u32>,
    pub error: String,
}

/// Inputs besides the snapshot.
pub struct Context<'a> {
    pub duration_s: f64,
    pub filter: String,
    pub top: usize,
    /// Sockets from sock_diag (filtered like the trace), tallied.
    pub sockets: &'a SocketTally,
    /// net.ipv4.ip_local_port_range.
    pub ephemeral: (u16, u16),
    pub sysctls: Sysctls,
    /// Port-pressure warning threshold, percent of the ephemeral range.
    pub pressure_warn_pct: f64,
    /// CLOSE_WAIT sockets older than `close_wait_threshold_s`, already resolved.
    pub close_wait_leaks: Vec<CloseWaitLeak>,
    pub close_wait_threshold_s: f64,
    /// CLOCK_MONOTONIC second at report time (for the TIME_WAIT model).
    pub now_sec: u64,
    /// cgroup id → path.
    pub cgroup_paths: &'a BTreeMap<u64, String>,
    /// The namespaces read (names, owners, road); may be empty.
    pub namespaces: &'a [NamespaceMeta],
    pub coverage: Coverage,
    /// Listeners and connects in flight, read at report time.
    pub listen: crate::host::listeners::Listeners,
}

impl<'a> Context<'a> {
    /// Default knobs (top 10, Linux's default port range and thresholds),
    /// no cgroup paths, clock at 0: for reports built without a live system.
    pub fn defaults(sockets: &'a SocketTally) -> Self {
        static NO_CGROUPS: BTreeMap<u64, String> = BTreeMap::new();
        Context {
            duration_s: 0.0,
            filter: "all TCP".into(),
            top: 10,
            sockets,
            ephemeral: crate::DEFAULT_PORT_RANGE,
            sysctls: Sysctls::default(),
            pressure_warn_pct: 50.0,
            close_wait_leaks: Vec::new(),
            close_wait_threshold_s: 30.0,
            now_sec: 0,
            cgroup_paths: &NO_CGROUPS,
            namespaces: &[],
            coverage: Coverage::default(),
            listen: Default::default(),
        }
    }
}

/// Flows grouped by peer — the remote service (`addr:port`) of outgoing
/// connections, `client -> :local port` of accepted ones — the `top`
/// largest first: (label, direction, stats). The report's peer table and
/// the exporter's peer series both come from here.
pub fn peer_groups(flows: &[(FlowKey, FlowStats)], top: usize) -> Vec<(String, u8, GroupStats)> {
    group_flows(flows, |k, _| (k.dir, k.family, k.raddr, k.port), top)
        .into_iter()
        .map(|((d, family, raddr, port), stats)| (peer_label(d, family, &raddr, port), d, stats))
        .collect()
}

/// Like `peer_groups`, one group per (namespace, peer): the same address in
/// two namespaces is two peers.
pub fn peer_groups_by_netns(
    flows: &[(FlowKey, FlowStats)],
    top: usize,
) -> Vec<(Option<u32>, String, u8, GroupStats)> {
    let key = |k: &FlowKey, _: &FlowStats| (flow_netns(k), k.dir, k.family, k.raddr, k.port);
    group_flows(flows, key, top)
        .into_iter()
        .map(|((ns, d, family, raddr, port), stats)| {
            (ns, peer_label(d, family, &raddr, port), d, stats)
        })
        .collect()
}

fn peer_label(d: u8, family: u16, raddr: &[u8; 16], port: u16) -> String {
    let ip = ip_from_raw(family, raddr);
    if d == dir::ACTIVE {
        endpoint(ip, port)
    } else {
        format!("{ip} -> :{port}")
    }
}

/// Flows grouped by local port: the listening port of accepted
/// connections, None for outgoing ones (ephemeral ports).
pub fn port_groups(flows: &[(FlowKey, FlowStats)], top: usize) -> Vec<(Option<u16>, GroupStats)> {
    group_flows(flows, |k, _| (k.dir != dir::ACTIVE).then_some(k.port), top)
}

/// Flows grouped by owner process: (pid, comm); pid None and comm
/// "(unknown owner)" when the owner was never seen in its own context.
pub fn process_groups(
    flows: &[(FlowKey, FlowStats)],
    top: usize,
) -> Vec<((Option<u32>, String), GroupStats)> {
    let key = |k: &FlowKey, f: &FlowStats| match k.tgid {
        0 => (None, "(unknown owner)".to_string()),
        pid => (Some(pid), comm_str(&f.comm)),
    };
    group_flows(flows, key, top)
}

/// Flows grouped by the owner's cgroup id.
pub fn cgroup_groups(flows: &[(FlowKey, FlowStats)], top: usize) -> Vec<(u64, GroupStats)> {
    group_flows(flows, |_, f| f.cgroup_id, top)
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The sock_diag population folded as it streams in: what the report needs
/// from each socket, without holding a million records on a busy host.
/// Sockets are added namespace by namespace (`begin_namespace`); every key
/// carries the namespace, since two namespaces may reuse the same addresses.
#[derive(Clone, Debug, Default)]
pub struct SocketTally {
    /// The namespace sockets are being added to now (0 until one is begun).
    netns: u32,
    per_ns: BTreeMap<u32, NsTally>,
    /// TIME_WAIT sockets per (namespace, peer label as the flows are labelled).
    tw_by_peer: BTreeMap<(u32, String), u64>,
    tw_by_laddr: BTreeMap<(u32, IpAddr), u64>,
    /// (namespace, local addr, remote addr, remote port) of sockets on
    /// ephemeral local ports → (TIME_WAIT, ESTABLISHED, other).
    pressure: BTreeMap<PressureKey, (u64, u64, u64)>,
    /// CLOSE_WAIT sockets with their namespace, kept whole for the leak list.
    pub close_wait: Vec<(u32, DiagSocket)>,
    /// The range for namespaces whose own range is unknown.
    default_ephemeral: (u16, u16),
    /// Flow directions by (namespace, remote addr, port); namespace 0 = not
    /// known (the kernel side does not say yet).
    active: BTreeSet<(u32, IpAddr, u16)>,
    passive: BTreeSet<(u32, IpAddr, u16)>,
}

/// (namespace, local address, remote address, remote port).
type PressureKey = (u32, IpAddr, IpAddr, u16);

/// One namespace's share of the tally.
#[derive(Clone, Debug, Default)]
pub struct NsTally {
    pub population: Population,
    /// That namespace's net.ipv4.ip_local_port_range.
    pub ephemeral: (u16, u16),
}

impl SocketTally {
    /// An empty tally that labels TIME_WAIT sockets like `snap`'s flows.
    pub fn new(snap: &Snapshot, ephemeral: (u16, u16)) -> Self {
        let mut t = SocketTally {
            default_ephemeral: ephemeral,
            ..Default::default()
        };
        for (k, _) in &snap.flows {
            let ip = ip_from_raw(k.family, &k.raddr);
            let key = (flow_netns(k).unwrap_or(0), ip, k.port);
            if k.dir == dir::ACTIVE {
                t.active.insert(key);
            } else {
                t.passive.insert(key);
            }
        }
        t
    }

    /// TIME_WAIT sockets now per peer label, summed over namespaces.
    pub fn time_wait_by_peer(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((_, peer), n) in &self.tw_by_peer {
            *out.entry(peer.clone()).or_default() += n;
        }
        out
    }

    /// What a recording keeps of the tally (everything the report reads).
    /// The per-namespace split is kept in `by_netns`; the other fields are
    /// its sums.
    pub fn to_record(&self) -> TallyRecord {
        let mut by_laddr: BTreeMap<IpAddr, u64> = BTreeMap::new();
        for ((_, a), n) in &self.tw_by_laddr {
            *by_laddr.entry(*a).or_default() += n;
        }
        let mut pressure: BTreeMap<(IpAddr, IpAddr, u16), (u64, u64, u64)> = BTreeMap::new();
        for ((_, l, r, p), (tw, est, other)) in &self.pressure {
            let e = pressure.entry((*l, *r, *p)).or_default();
            e.0 += tw;
            e.1 += est;
            e.2 += other;
        }
        TallyRecord {
            population: self.population(),
            time_wait_by_peer: self.time_wait_by_peer().into_iter().collect(),
            time_wait_by_local_addr: by_laddr.into_iter().collect(),
            pressure: pressure
                .into_iter()
                .map(|((l, r, p), (tw, est, other))| PressureRecord {
                    local_addr: l,
                    remote_addr: r,
                    remote_port: p,
                    time_wait: tw,
                    established: est,
                    other,
                })
                .collect(),
            ephemeral: self.default_ephemeral,
            by_netns: self
                .per_ns
                .iter()
                .map(|(ns, n)| self.ns_record(*ns, n))
                .collect(),
        }
    }

    fn ns_record(&self, ns: u32, n: &NsTally) -> NsTallyRecord {
        NsTallyRecord {
            netns: ns,
            population: n.population.clone(),
            ephemeral: n.ephemeral,
            time_wait_by_peer: self
                .tw_by_peer
                .iter()
                .filter(|((k, _), _)| *k == ns)
                .map(|((_, p), v)| (p.clone(), *v))
                .collect(),
            time_wait_by_local_addr: self
                .tw_by_laddr
                .iter()
                .filter(|((k, _), _)| *k == ns)
                .map(|((_, a), v)| (*a, *v))
                .collect(),
            pressure: self
                .pressure
                .iter()
                .filter(|((k, ..), _)| *k == ns)
                .map(|((_, l, r, p), (tw, est, other))| PressureRecord {
                    local_addr: *l,
                    remote_addr: *r,
                    remote_port: *p,
                    time_wait: *tw,
                    established: *est,
                    other: *other,
                })
                .collect(),
        }
    }

    /// The tally a recording kept (its CLOSE_WAIT sockets are not kept: the
    /// recording holds the resolved leaks instead).
    pub fn from_record(r: &TallyRecord) -> Self {
        let mut t = SocketTally {
            default_ephemeral: r.ephemeral,
            ..Default::default()
        };
        if r.by_netns.is_empty() {
            // A recording from before namespaces: one namespace, 0.
            t.restore(&NsTallyRecord {
                netns: 0,
                population: r.population.clone(),
                ephemeral: r.ephemeral,
                time_wait_by_peer: r.time_wait_by_peer.clone(),
                time_wait_by_local_addr: r.time_wait_by_local_addr.clone(),
                pressure: r.pressure.clone(),
            });
        }
        for n in &r.by_netns {
            t.restore(n);
        }
        t
    }

    fn restore(&mut self, n: &NsTallyRecord) {
        let ns = n.netns;
        self.begin_namespace(ns, Some(n.ephemeral));
        if let Some(t) = self.per_ns.get_mut(&ns) {
            t.population = n.population.clone();
        }
        for (k, v) in &n.time_wait_by_peer {
            *self.tw_by_peer.entry((ns, k.clone())).or_default() += v;
        }
        for (k, v) in &n.time_wait_by_local_addr {
            *self.tw_by_laddr.entry((ns, *k)).or_default() += v;
        }
        for p in &n.pressure {
            let e = self
                .pressure
                .entry((ns, p.local_addr, p.remote_addr, p.remote_port))
                .or_default();
            e.0 += p.time_wait;
            e.1 += p.established;
            e.2 += p.other;
        }
    }

    /// A tally of a list of sockets (one namespace).
    pub fn of(snap: &Snapshot, ephemeral: (u16, u16), sockets: &[DiagSocket]) -> Self {
        let mut t = Self::new(snap, ephemeral);
        for s in sockets {
            t.add(s);
        }
        t
    }

    /// Sockets added from now on are in namespace `netns`, whose ephemeral
    /// range is `ephemeral` (None: unknown, the default one applies).
    pub fn begin_namespace(&mut self, netns: u32, ephemeral: Option<(u16, u16)>) {
        self.netns = netns;
        let e = ephemeral.unwrap_or(self.default_ephemeral);
        self.per_ns.entry(netns).or_default().ephemeral = e;
    }

    /// Take back everything added for `netns` (a read that failed half-way:
    /// no partial rows).
    pub fn forget_namespace(&mut self, netns: u32) {
        self.per_ns.remove(&netns);
        self.tw_by_peer.retain(|k, _| k.0 != netns);
        self.tw_by_laddr.retain(|k, _| k.0 != netns);
        self.pressure.retain(|k, _| k.0 != netns);
        self.close_wait.retain(|(n, _)| *n != netns);
    }

    /// The namespaces read, with their populations.
    pub fn namespaces(&self) -> &BTreeMap<u32, NsTally> {
        &self.per_ns
    }

    /// The population summed over every namespace read.
    pub fn population(&self) -> Population {
        let mut p = Population::default();
        for n in self.per_ns.values() {
            p.merge(&n.population);
        }
        p
    }

    fn ephemeral_range(&self) -> (u16, u16) {
        self.per_ns
            .get(&self.netns)
            .map_or(self.default_ephemeral, |n| n.ephemeral)
    }

    fn ephemeral(&self, port: u16) -> bool {
        let (lo, hi) = self.ephemeral_range();
        (lo..=hi).contains(&port)
    }

    pub fn add(&mut self, s: &DiagSocket) {
        if !self.per_ns.contains_key(&self.netns) {
            self.begin_namespace(self.netns, None);
        }
        let ns = self.netns;
        if let Some(n) = self.per_ns.get_mut(&ns) {
            n.population.add(s);
        }
        match s.state {
            state::TIME_WAIT => {
                *self.tw_by_peer.entry((ns, self.label(s))).or_default() += 1;
                *self.tw_by_laddr.entry((ns, unmap(s.src))).or_default() += 1;
            }
            state::CLOSE_WAIT => self.close_wait.push((ns, s.clone())),
            _ => {}
        }
        if s.state != state::LISTEN && self.ephemeral(s.sport) {
            let e = self
                .pressure
                .entry((ns, unmap(s.src), unmap(s.dst), s.dport))
                .or_default();
            match s.state {
                state::TIME_WAIT => e.0 += 1,
                state::ESTABLISHED => e.1 += 1,
                _ => e.2 += 1,
            }
        }
    }

    /// TIME_WAIT sockets now of a peer label in `netns` (None: summed over
    /// every namespace, for flows that do not say theirs).
    pub fn time_wait_of_peer(&self, netns: Option<u32>, peer: &str) -> u64 {
        self.tw_by_peer
            .iter()
            .filter(|((n, p), _)| p == peer && netns.is_none_or(|w| w == *n))
            .map(|(_, c)| c)
            .sum()
    }

    /// How a TIME_WAIT socket is grouped, like the flow it came from: the
    /// remote service when this host connected out, else client address →
    /// local port. sock_diag does not say which side opened: a flow the
    /// tracer saw decides; otherwise an ephemeral local port facing a
    /// non-ephemeral remote one means outgoing.
    fn label(&self, s: &DiagSocket) -> String {
        let dst = unmap(s.dst);
        let seen = |set: &BTreeSet<(u32, IpAddr, u16)>, port| {
            set.contains(&(self.netns, dst, port)) || set.contains(&(0, dst, port))
        };
        let outgoing = if seen(&self.active, s.dport) {
            true
        } else if seen(&self.passive, s.sport) {
            false
        } else {
            self.ephemeral(s.sport) && !self.ephemeral(s.dport)
        };
        if outgoing {
            endpoint(dst, s.dport)
        } else {
            format!("{dst} -> :{}", s.sport)
        }
    }
}

/// The serializable form of a `SocketTally` (recordings).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TallyRecord {
    pub population: Population,
    pub time_wait_by_peer: Vec<(String, u64)>,
    pub time_wait_by_local_addr: Vec<(IpAddr, u64)>,
    pub pressure: Vec<PressureRecord>,
    /// net.ipv4.ip_local_port_range when tallied.
    pub ephemeral: (u16, u16),
    /// The same, per network namespace (the fields above are their sums,
    /// for readers that predate namespaces). Empty in older recordings.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_netns: Vec<NsTallyRecord>,
}

/// One namespace's part of a `TallyRecord`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NsTallyRecord {
    pub netns: u32,
    pub population: Population,
    pub ephemeral: (u16, u16),
    pub time_wait_by_peer: Vec<(String, u64)>,
    pub time_wait_by_local_addr: Vec<(IpAddr, u64)>,
    pub pressure: Vec<PressureRecord>,
}

/// Sockets of one destination on ephemeral local ports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PressureRecord {
    pub local_addr: IpAddr,
    pub remote_addr: IpAddr,
    pub remote_port: u16,
    #[serde(default)]
    pub time_wait: u64,
    #[serde(default)]
    pub established: u64,
    #[serde(default)]
    pub other: u64,
}

/// Every number the summary holds, each computed once from the snapshot and
/// the context (sock_diag, sysctls, names) read at report time.
pub fn build(snap: &Snapshot, ctx: &Context) -> Summary {
    let h = |i: u32| &snap.hists[i as usize];
    let flows = &snap.flows;
    Summary {
        schema: SCHEMA,
        duration_s: ctx.duration_s,
        filter: ctx.filter.clone(),
        active_handshake: Handshakes::new(h(hist_kind::ACTIVE), h(hist_kind::ACTIVE_RETRANS)),
        passive_handshake: Handshakes::new(h(hist_kind::PASSIVE), h(hist_kind::PASSIVE_RETRANS)),
        connects: Connects::of(snap),
        accepts: Accepts::of(snap),
        closes: Closes::of(snap),
        time_wait: TimeWait::of(snap, ctx),
        port_pressure: port_pressure(ctx),
        sysctls: ctx.sysctls.clone(),
        close_wait: CloseWait {
            threshold_s: ctx.close_wait_threshold_s,
            now: ctx.sockets.population().close_wait,
            leaks: ctx.close_wait_leaks.clone(),
        },
        connection_lifetime: Latency::from_hist(h(hist_kind::LIFETIME)),
        transitions: transition_counts(snap),
        top_peers: peer_rows(snap, ctx.sockets, ctx.top),
        flow_breakdown: flow_breakdown(snap),
        top_local_ports: port_rows(flows, ctx.top),
        top_processes: process_groups(flows, ctx.top)
            .into_iter()
            .map(|((pid, comm), stats)| ProcessRow { pid, comm, stats })
            .collect(),
        top_cgroups: cgroup_rows(flows, ctx),
        namespaces: namespace_rows(snap, ctx, &port_pressure_all(ctx)),
        netns_coverage: ctx.coverage.clone(),
        listen: ctx.listen.clone(),
        tracer: Health::of(snap),
    }
}

impl Connects {
    /// Connect outcomes; `failed` is every SYN_SENT -> CLOSE, and `other`
    /// what none of the named causes explains.
    pub fn of(snap: &Snapshot) -> Self {
        let k = |kind: u8| snap.closes(kind);
        let failed = snap.transition(state::SYN_SENT, state::CLOSE);
        let named = [
            close::CONNECT_REFUSED,
            close::CONNECT_TIMEOUT,
            close::CONNECT_UNREACHABLE,
            close::CONNECT_ABORTED,
            close::CONNECT_NO_LOCAL_PORT,
        ];
        Connects {
            attempts: snap.counter(counter::CONNECT_ATTEMPTS),
            established: snap.counter(counter::ACTIVE_ESTABLISHED),
            failed,
            refused: k(close::CONNECT_REFUSED),
            timed_out: k(close::CONNECT_TIMEOUT),
            unreachable: k(close::CONNECT_UNREACHABLE),
            aborted: k(close::CONNECT_ABORTED),
            no_local_port: k(close::CONNECT_NO_LOCAL_PORT),
            other: failed.saturating_sub(named.iter().map(|f| k(*f)).sum()),
        }
    }
}

impl Accepts {
    pub fn of(snap: &Snapshot) -> Self {
        Accepts {
            established: snap.counter(counter::PASSIVE_ESTABLISHED),
            failed: snap.closes(close::PASSIVE_FAILED),
        }
    }
}

impl Closes {
    pub fn of(snap: &Snapshot) -> Self {
        let c = |i: u32| snap.counter(i);
        let k = |kind: u8| snap.closes(kind);
        Closes {
            closed_here_first: c(counter::CLOSE_LOCAL_FIRST),
            closed_by_peer_first: c(counter::CLOSE_PEER_FIRST),
            simultaneous: c(counter::CLOSE_SIMULTANEOUS),
            passive_close_completed: k(close::LAST_ACK),
            resets_sent: k(close::RESET_SENT),
            resets_received: k(close::RESET_RECEIVED),
            timeouts: k(close::TIMEOUT),
        }
    }
}

impl TimeWait {
    /// Entries into the timewait table: TIME_WAIT directly, and orphans
    /// parked in FIN_WAIT2.
    pub fn entered(snap: &Snapshot) -> u64 {
        snap.closes(close::TIME_WAIT) + snap.closes(close::FIN_WAIT2_PARKED)
    }

    /// Entries counted in the kernel, sockets sock_diag sees now, and the
    /// 60 s model between them.
    fn of(snap: &Snapshot, ctx: &Context) -> Self {
        let c = |i: u32| snap.counter(i);
        let k = |kind: u8| snap.closes(kind);
        let entered = TimeWait::entered(snap);
        let last_60s = snap.time_wait_last_60s(ctx.now_sec);
        TimeWait {
            entered,
            direct: k(close::TIME_WAIT),
            via_fin_wait2: k(close::FIN_WAIT2_PARKED),
            entered_by_side: BySide {
                active_opened: c(counter::TIME_WAIT_BY_DIR + dir::ACTIVE as u32),
                passive_opened: c(counter::TIME_WAIT_BY_DIR + dir::PASSIVE as u32),
                unknown: c(counter::TIME_WAIT_BY_DIR + dir::UNKNOWN as u32),
            },
            now: ctx.sockets.population(),
            model: TimeWaitModel {
                entered_last_60s: last_60s,
                aged_out: entered.saturating_sub(last_60s),
            },
            by_local_addr: by_local_addr(snap, ctx.sockets, ctx.top),
            now_by_peer: now_by_peer(ctx.sockets, ctx.top),
        }
    }
}

impl Health {
    pub fn of(snap: &Snapshot) -> Self {
        let c = |i: u32| snap.counter(i);
        Health {
            transitions_counted: c(counter::TRANSITIONS),
            events_dropped: c(counter::RINGBUF_DROPS),
            inflight_missing: c(counter::INFLIGHT_MISSING),
            inflight_insert_failed: c(counter::INFLIGHT_INSERT_FAILED),
            flow_table_full: c(counter::FLOW_TABLE_FULL),
            filtered_out: c(counter::FILTERED_OUT)
                + c(counter::SYNACK_FILTERED_OUT)
                + c(counter::QUEUE_DROPS_FILTERED_OUT)
                + c(counter::HALF_OPEN_RESETS_FILTERED_OUT),
            non_tcp_ignored: c(counter::NON_TCP),
            skipped: c(counter::SKIPPED_OTHER) + c(counter::LISTENER_DROPS_UNREADABLE),
            skipped_no_offsets: c(counter::SKIPPED_NO_OFFSETS),
            tcp_sock_unavailable: c(counter::TCP_SOCK_UNAVAILABLE),
            listener_table_full: c(counter::LISTENER_TABLE_FULL),
            passive_rtt_unknown: c(counter::PASSIVE_RTT_UNKNOWN),
            listener_stats_full: c(counter::LISTENER_STATS_FULL)
                + c(counter::SYNACK_LISTENER_STATS_FULL),
            recursion_misses: snap.recursion_misses,
        }
    }
}

/// Every (from, to) pair seen, most frequent first.
fn transition_counts(snap: &Snapshot) -> Vec<TransitionCount> {
    let mut transitions: Vec<TransitionCount> = snap
        .transition_pairs()
        .map(|(o, n, count)| TransitionCount {
            from: state_name(o),
            to: state_name(n),
            count,
        })
        .collect();
    transitions.sort_by(|a, b| b.count.cmp(&a.count).then(a.from.cmp(b.from)));
    transitions
}

/// The top peers, each with its TIME_WAIT now and the volume it may miss.
fn peer_rows(snap: &Snapshot, tally: &SocketTally, top: usize) -> Vec<PeerRow> {
    let missing = peer_errors(snap);
    peer_groups_by_netns(&snap.flows, top)
        .into_iter()
        .map(|(netns, peer, d, stats)| PeerRow {
            time_wait_now: tally.time_wait_of_peer(netns, &peer),
            max_missing: missing.get(&(netns, peer.clone())).copied().unwrap_or(0),
            netns,
            peer,
            direction: dir_name(d),
            stats,
        })
        .collect()
}

/// The top local ports per namespace; outgoing (ephemeral) ports are one row.
fn port_rows(flows: &[(FlowKey, FlowStats)], top: usize) -> Vec<PortRow> {
    group_flows(
        flows,
        |k, _| (flow_netns(k), (k.dir != dir::ACTIVE).then_some(k.port)),
        top,
    )
    .into_iter()
    .map(|((netns, local_port), stats)| PortRow {
        netns,
        local_port,
        stats,
    })
    .collect()
}

fn cgroup_rows(flows: &[(FlowKey, FlowStats)], ctx: &Context) -> Vec<CgroupRow> {
    cgroup_groups(flows, ctx.top)
        .into_iter()
        .map(|(id, stats)| CgroupRow {
            cgroup_id: id,
            cgroup: ctx.cgroup_paths.get(&id).cloned(),
            stats,
        })
        .collect()
}

/// Volume each (namespace, peer label) may miss: its rows' errors summed.
fn peer_errors(snap: &Snapshot) -> BTreeMap<(Option<u32>, String), u64> {
    let mut out = BTreeMap::new();
    for (k, err) in &snap.flow_errors {
        let label = peer_label(k.dir, k.family, &k.raddr, k.port);
        *out.entry((flow_netns(k), label)).or_default() += err;
    }
    out
}

fn flow_breakdown(snap: &Snapshot) -> FlowBreakdown {
    FlowBreakdown {
        exact: snap.breakdown.rows_evicted == 0,
        bounds: snap.breakdown,
        other: crate::model::group_of(&snap.other_flow),
    }
}

/// Current TIME_WAIT population by (namespace, peer), top N.
fn now_by_peer(tally: &SocketTally, top: usize) -> Vec<PopulationRow> {
    let mut rows: Vec<PopulationRow> = tally
        .tw_by_peer
        .iter()
        .map(|((netns, peer), count)| PopulationRow {
            netns: *netns,
            peer: peer.clone(),
            count: *count,
        })
        .collect();
    rows.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then(a.peer.cmp(&b.peer))
            .then(a.netns.cmp(&b.netns))
    });
    rows.truncate(top);
    rows
}

/// TIME_WAIT entries (flows) and population (sock_diag) per local address.
/// Per namespace when every flow says its namespace; else per address
/// summed over namespaces, so entries and population meet on one row.
fn by_local_addr(snap: &Snapshot, tally: &SocketTally, top: usize) -> Vec<LocalAddrRow> {
    let flows_know_netns = snap.flows.iter().all(|(k, _)| flow_netns(k).is_some());
    let ns_key = |ns: Option<u32>| if flows_know_netns { ns } else { None };
    let mut rows: BTreeMap<(Option<u32>, IpAddr), (u64, u64)> = BTreeMap::new();
    for (k, f) in &snap.flows {
        if f.time_wait > 0 {
            let key = (ns_key(flow_netns(k)), ip_from_raw(k.family, &k.laddr));
            rows.entry(key).or_default().0 += f.time_wait;
        }
    }
    for ((ns, addr), n) in &tally.tw_by_laddr {
        rows.entry((ns_key(Some(*ns)), *addr)).or_default().1 += n;
    }
    let mut out: Vec<LocalAddrRow> = rows
        .into_iter()
        .map(|((netns, a), (entries, now))| LocalAddrRow {
            netns,
            local_addr: a.to_string(),
            time_wait_entries: entries,
            time_wait_now: now,
        })
        .collect();
    out.sort_by(|a, b| {
        (b.time_wait_now + b.time_wait_entries)
            .cmp(&(a.time_wait_now + a.time_wait_entries))
            .then(a.local_addr.cmp(&b.local_addr))
    });
    out.truncate(top);
    out
}

/// One row per namespace read, the largest population first, top N.
fn namespace_rows(snap: &Snapshot, ctx: &Context, pressure: &[PressureRow]) -> Vec<NamespaceRow> {
    let flows: BTreeMap<u32, GroupStats> =
        group_flows(&snap.flows, |k, _| flow_netns(k), usize::MAX)
            .into_iter()
            .filter_map(|(ns, g)| Some((ns?, g)))
            .collect();
    let flows_know_netns =
        !snap.flows.is_empty() && snap.flows.iter().all(|(k, _)| flow_netns(k).is_some());
    let mut rows: Vec<NamespaceRow> = ctx
        .sockets
        .namespaces()
        .iter()
        .map(|(ns, t)| {
            let meta = ctx.namespaces.iter().find(|m| m.netns == *ns);
            let w = meta.and_then(|m| m.workload.clone()).unwrap_or_default();
            let known_range = meta.is_none_or(|m| m.read_via != "proc");
            NamespaceRow {
                netns: *ns,
                names: meta.map(|m| m.names.clone()).unwrap_or_default(),
                pid: meta.and_then(|m| m.pid),
                workload: w.name(),
                container: w.container(),
                pod_uid: w.pod_uid,
                pod: w.pod,
                container_name: w.container_name,
                unit: w.unit,
                read_via: meta.map_or("own", |m| m.read_via),
                now: t.population.clone(),
                close_wait_leaks: ctx
                    .close_wait_leaks
                    .iter()
                    .filter(|l| l.netns == *ns)
                    .count() as u64,
                ip_local_port_range: known_range.then_some(t.ephemeral),
                port_pressure_max_pct: pressure
                    .iter()
                    .filter(|r| r.netns == *ns)
                    .map(|r| r.used_pct)
                    .fold(0.0, f64::max),
                flows: if flows_know_netns {
                    Some(flows.get(ns).cloned().unwrap_or_default())
                } else {
                    None
                },
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.now
            .total()
            .cmp(&a.now.total())
            .then(a.netns.cmp(&b.netns))
    });
    rows.truncate(ctx.top);
    rows
}

/// Every destination's port use, largest first.
fn port_pressure_all(ctx: &Context) -> Vec<PressureRow> {
    let ranges = ctx.sockets.namespaces();
    let mut rows: Vec<PressureRow> = ctx
        .sockets
        .pressure
        .iter()
        .map(|((netns, laddr, r, p), (tw, est, other))| {
            let (lo, hi) = ranges.get(netns).map_or(ctx.ephemeral, |n| n.ephemeral);
            let range_size = (hi as u64 + 1).saturating_sub(lo as u64).max(1);
            let total = tw + est + other;
            let used_pct = total as f64 * 100.0 / range_size as f64;
            PressureRow {
                netns: *netns,
                local_addr: laddr.to_string(),
                remote: endpoint(*r, *p),
                time_wait: *tw,
                established: *est,
                other: *other,
                total,
                range_size,
                used_pct,
                warning: used_pct >= ctx.pressure_warn_pct,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.used_pct
            .total_cmp(&a.used_pct)
            .then(a.remote.cmp(&b.remote))
            .then(a.netns.cmp(&b.netns))
    });
    rows
}

fn port_pressure(ctx: &Context) -> PortPressure {
    let mut rows = port_pressure_all(ctx);
    let warnings = rows
        .iter()
        .filter(|r| r.warning)
        .map(|r| {
            format!(
                "WARNING: {} -> {} holds {} of {} ephemeral ports ({:.1}% >= {}%): {} TIME_WAIT, {} ESTABLISHED, {} other; new connects to it will start failing with EADDRNOTAVAIL near 100% (netns {})",
                r.local_addr, r.remote, r.total, r.range_size, r.used_pct, ctx.pressure_warn_pct, r.time_wait, r.established, r.other, r.netns
            )
        })
        .collect();
    rows.truncate(ctx.top);
    PortPressure {
        warn_pct: ctx.pressure_warn_pct,
        destinations: rows,
        warnings,
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |us| format!("{:.3}", us / 1e3))
}

fn latency_line(out: &mut String, name: &str, l: &Latency) {
    let _ = writeln!(
        out,
        "  {:<24} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
        name,
        l.count,
        ms(l.p50_us),
        ms(l.p90_us),
        ms(l.p99_us),
        ms(l.max_us),
        ms(l.mean_us)
    );
}

fn group_header(out: &mut String, first: &str) {
    let _ = writeln!(
        out,
        "  {:<40} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7} {:>5} {:>6} {:>6} {:>4} {:>9} {:>7} {:>10} {:>10} {:>10}",
        first,
        "ESTAB",
        "FAILED",
        "TW_IN",
        "TW_NOW",
        "HERE1ST",
        "PEER1ST",
        "SIMUL",
        "RST_TX",
        "RST_RX",
        "FW2P",
        "HS_AVG_MS",
        "HS_RETX",
        "LIFE_AVG_MS",
        "RX_BYTES",
        "TX_BYTES"
    );
}

fn group_line(out: &mut String, name: &str, g: &GroupStats, tw_now: Option<u64>) {
    let _ = writeln!(
        out,
        "  {:<40} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7} {:>5} {:>6} {:>6} {:>4} {:>9} {:>7} {:>10} {:>10} {:>10}",
        name,
        g.established,
        g.connect_failed,
        g.time_wait_entries,
        tw_now.map_or("-".into(), |n| n.to_string()),
        g.closed_here_first,
        g.closed_by_peer_first,
        g.closed_simultaneously,
        g.resets_sent,
        g.resets_received,
        g.fin_wait2_parked,
        ms(g.handshake_mean_us),
        g.handshakes_with_retransmits,
        g.lifetime_mean_ms
            .map_or("-".into(), |v| format!("{v:.3}")),
        g.bytes_received,
        g.bytes_sent_acked
    );
}

/// "population: 3 network namespaces read (own + 2 via setns)...".
fn coverage_line(c: &Coverage) -> String {
    let mut line = format!(
        "population of {} of {} network namespaces found (own {}",
        c.read, c.found, c.own_netns
    );
    if c.via_setns > 0 {
        let _ = write!(line, ", {} via setns + sock_diag", c.via_setns);
    }
    if c.via_proc > 0 {
        let _ = write!(line, ", {} via /proc/PID/net/tcp", c.via_proc);
    }
    line.push(')');
    if c.vanished > 0 {
        let _ = write!(line, "; {} vanished while read", c.vanished);
    }
    for u in &c.unreadable {
        let name = u.names.first().map_or(String::new(), |n| format!(" ({n})"));
        let _ = write!(line, "\n    NOT READ: netns {}{name}: {}", u.netns, u.error);
    }
    if c.processes_denied > 0 {
        let _ = write!(
            line,
            "\n    NOT SEEN: the namespaces of {} processes (their /proc/PID/ns/net is not readable without CAP_SYS_PTRACE)",
            c.processes_denied
        );
    }
    line
}

/// " [blue]" / " [pod <uid>/<ctr>]" / " [4026532246]" after a row of a
/// namespace, when the report covers more than one.
/// The `other` row under the peer table, and how approximate the tables are.
fn render_breakdown(o: &mut String, b: &FlowBreakdown) {
    if b.other.volume() > 0 || b.other.connections_closed > 0 {
        group_line(o, "other (not in a row)", &b.other, None);
    }
    let r = &b.bounds;
    if b.exact {
        let _ = writeln!(
            o,
            "  (exact: {} rows of {} kept, none evicted)",
            r.rows, r.rows_capacity
        );
    } else {
        let _ = writeln!(
            o,
            "  (APPROXIMATE: {} rows kept, {} evicted into other; a row may miss up to {} of its volume (connections + TIME_WAIT entries + resets; per peer in JSON max_missing); every flow above 1/{} of the total volume {} has a row)",
            r.rows, r.rows_evicted, r.max_error, r.rows_capacity, r.total_volume
        );
    }
}

fn netns_tag(s: &Summary, netns: Option<u32>) -> String {
    let Some(ns) = netns else {
        return String::new();
    };
    if s.namespaces.len() < 2 {
        return String::new();
    }
    let row = s.namespaces.iter().find(|r| r.netns == ns);
    let name = row.map_or(ns.to_string(), |r| {
        namespace_name(ns, &r.names, r.workload.clone())
    });
    format!(" [{name}]")
}

/// What tables call a namespace: its /run/netns name, else its workload's
/// name, else its inode.
pub fn namespace_name(netns: u32, names: &[String], workload: Option<String>) -> String {
    (names.first().cloned().or(workload)).unwrap_or_else(|| netns.to_string())
}

impl NamespaceMeta {
    pub fn label(&self) -> String {
        let workload = self.workload.as_ref().and_then(|w| w.name());
        namespace_name(self.netns, &self.names, workload)
    }
}

fn render_namespaces(o: &mut String, s: &Summary) {
    if s.namespaces.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\nNetwork namespaces (sock_diag per namespace; top {})",
        s.namespaces.len()
    );
    let _ = writeln!(
        o,
        "  {:<11} {:<48} {:<6} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>6} {:>6} {:>6}",
        "NETNS",
        "NAME / WORKLOAD",
        "VIA",
        "TW",
        "FW2",
        "CW",
        "ESTAB",
        "LEAKS",
        "PORTS%",
        "CONN",
        "FAILED",
        "TW_IN"
    );
    for r in &s.namespaces {
        let mut name: Vec<String> = r.names.clone();
        name.extend(r.workload.clone());
        if name.is_empty() {
            name.extend(r.pid.map(|p| format!("pid {p}")));
        }
        let f =
            |v: fn(&GroupStats) -> u64| r.flows.as_ref().map_or("-".into(), |g| v(g).to_string());
        let _ = writeln!(
            o,
            "  {:<11} {:<48} {:<6} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7.2} {:>6} {:>6} {:>6}",
            r.netns,
            name.join(" "),
            r.read_via,
            r.now.time_wait,
            r.now.fin_wait2,
            r.now.close_wait,
            r.now.established,
            r.close_wait_leaks,
            r.port_pressure_max_pct,
            f(|g| g.established),
            f(|g| g.connect_failed),
            f(|g| g.time_wait_entries),
        );
    }
}

/// The human-readable report: one section after another, in this order.
pub fn render_text(s: &Summary) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "TCP state summary: {:.1} s, filter: {}",
        s.duration_s, s.filter
    );
    render_handshakes(&mut o, s);
    render_outcomes(&mut o, s);
    render_time_wait(&mut o, s);
    render_ports(&mut o, s);
    crate::host::listeners::render(&mut o, &s.listen);
    render_close_wait(&mut o, &s.close_wait);
    render_lifetime(&mut o, &s.connection_lifetime);
    render_namespaces(&mut o, s);
    render_top_groups(&mut o, s);
    o.push_str(&render_histograms(s));
    render_transitions(&mut o, &s.transitions);
    render_health(&mut o, &s.tracer);
    o
}

/// Handshake latency, active and passive, clean and retransmitted.
fn render_handshakes(o: &mut String, s: &Summary) {
    let _ = writeln!(
        o,
        "\nHandshake latency (ms; percentiles from a log-linear histogram, ±0.8%)"
    );
    let _ = writeln!(
        o,
        "  {:<24} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "", "COUNT", "P50", "P90", "P99", "MAX", "MEAN"
    );
    latency_line(o, "active (connect)", &s.active_handshake.all);
    latency_line(o, "  clean", &s.active_handshake.clean);
    latency_line(
        o,
        "  with SYN retransmits",
        &s.active_handshake.retransmitted,
    );
    latency_line(o, "passive (accept, SYN-ACK RTT)", &s.passive_handshake.all);
    latency_line(o, "  clean", &s.passive_handshake.clean);
    latency_line(
        o,
        "  with SYN-ACK retransmits",
        &s.passive_handshake.retransmitted,
    );
    if s.active_handshake.retransmitted.count + s.passive_handshake.retransmitted.count > 0 {
        let _ = writeln!(
            o,
            "  note: each retransmitted SYN/SYN-ACK adds >= 1 s (then 2 s, 4 s...): tails near 1 s / 3 s are retransmits"
        );
    }
}

/// How connections began and ended: connects, accepts, closes, resets.
fn render_outcomes(o: &mut String, s: &Summary) {
    let cn = &s.connects;
    let _ = writeln!(
        o,
        "\nConnects: {} attempted, {} established, {} failed (refused {}, timed out {}, unreachable {}, aborted {}, no local port {}, other {})",
        cn.attempts, cn.established, cn.failed, cn.refused, cn.timed_out, cn.unreachable, cn.aborted, cn.no_local_port, cn.other
    );
    let _ = writeln!(
        o,
        "Accepts:  {} established, {} failed before ESTABLISHED",
        s.accepts.established, s.accepts.failed
    );
    let cl = &s.closes;
    let _ = writeln!(
        o,
        "Closes:   {} closed here first, {} by peer first, {} simultaneous, {} passive closes completed",
        cl.closed_here_first, cl.closed_by_peer_first, cl.simultaneous, cl.passive_close_completed
    );
    let _ = writeln!(
        o,
        "Resets:   {} sent, {} received; {} connections timed out",
        cl.resets_sent, cl.resets_received, cl.timeouts
    );
}

/// TIME_WAIT: entered (by how and by side), now, per peer, the 60 s model,
/// per local address.
fn render_time_wait(o: &mut String, s: &Summary) {
    let tw = &s.time_wait;
    let _ = writeln!(
        o,
        "\nTIME_WAIT: {} entered ({} direct, {} via FIN_WAIT2); by side: {} on connections opened here, {} on accepted ones, {} unknown",
        tw.entered,
        tw.direct,
        tw.via_fin_wait2,
        tw.entered_by_side.active_opened,
        tw.entered_by_side.passive_opened,
        tw.entered_by_side.unknown
    );
    let _ = writeln!(
        o,
        "  now (sock_diag): {} TIME_WAIT, {} FIN_WAIT2, {} CLOSE_WAIT, {} ESTABLISHED",
        tw.now.time_wait, tw.now.fin_wait2, tw.now.close_wait, tw.now.established
    );
    let _ = writeln!(o, "  {}", coverage_line(&s.netns_coverage));
    let many_ns = s.namespaces.len() > 1;
    for r in &tw.now_by_peer {
        let peer = if many_ns {
            format!("{} [netns {}]", r.peer, r.netns)
        } else {
            r.peer.clone()
        };
        let _ = writeln!(o, "    {peer:<62} {:>8}", r.count);
    }
    let _ = writeln!(
        o,
        "  model: {} entered in the last 60 s (each stays 60 s), {} aged out",
        tw.model.entered_last_60s, tw.model.aged_out
    );
    if !tw.by_local_addr.is_empty() {
        let _ = writeln!(o, "  {:<44} {:>8} {:>8}", "LOCAL ADDRESS", "ENTERED", "NOW");
        for r in &tw.by_local_addr {
            let _ = writeln!(
                o,
                "    {:<42} {:>8} {:>8}",
                r.local_addr, r.time_wait_entries, r.time_wait_now
            );
        }
    }
}

/// Ephemeral ports: the sysctls, then each destination's port use.
fn render_ports(o: &mut String, s: &Summary) {
    let sc = &s.sysctls;
    let opt = |v: Option<String>| v.unwrap_or_else(|| "?".into());
    let _ = writeln!(
        o,
        "\nEphemeral ports: range {}-{} ({} ports); tcp_tw_reuse={} tcp_max_tw_buckets={} tcp_fin_timeout={}",
        sc.ip_local_port_range.0,
        sc.ip_local_port_range.1,
        (sc.ip_local_port_range.1 as u64 + 1).saturating_sub(sc.ip_local_port_range.0 as u64),
        opt(sc.tcp_tw_reuse.map(|v| v.to_string())),
        opt(sc.tcp_max_tw_buckets.map(|v| v.to_string())),
        opt(sc.tcp_fin_timeout.map(|v| v.to_string()))
    );
    let pp = &s.port_pressure;
    if !pp.destinations.is_empty() {
        let _ = writeln!(
            o,
            "  {:<11} {:<20} {:<46} {:>6} {:>6} {:>6} {:>7}",
            "NETNS", "LOCAL ADDRESS", "DESTINATION", "TW", "ESTAB", "OTHER", "USED%"
        );
        for r in &pp.destinations {
            let _ = writeln!(
                o,
                "  {:<11} {:<20} {:<46} {:>6} {:>6} {:>6} {:>7.2}",
                r.netns, r.local_addr, r.remote, r.time_wait, r.established, r.other, r.used_pct
            );
        }
    }
    for w in &pp.warnings {
        let _ = writeln!(o, "  {w}");
    }
}

/// CLOSE_WAIT now, and each socket older than the threshold.
fn render_close_wait(o: &mut String, cw: &CloseWait) {
    let _ = writeln!(
        o,
        "\nCLOSE_WAIT: {} now, {} older than {} s (the peer closed; the application never called close())",
        cw.now,
        cw.leaks.len(),
        cw.threshold_s
    );
    for l in &cw.leaks {
        let _ = writeln!(
            o,
            "  {:>9} s{} netns {:<10} {:>7}/{:<15} {} <- {}{}",
            format!("{:.1}", l.age_s),
            l.netns,
            if l.age_exact { " " } else { "+" },
            l.pid.map_or("-".into(), |p| p.to_string()),
            l.comm.as_deref().unwrap_or("-"),
            l.local,
            l.peer,
            l.cgroup
                .as_ref()
                .map_or(String::new(), |c| format!("  cgroup {c}"))
        );
    }
}

fn render_lifetime(o: &mut String, lt: &Latency) {
    let _ = writeln!(
        o,
        "\nConnection lifetime (ms): {} closed, p50 {}, p90 {}, p99 {}, max {}, mean {}",
        lt.count,
        ms(lt.p50_us),
        ms(lt.p90_us),
        ms(lt.p99_us),
        ms(lt.max_us),
        ms(lt.mean_us)
    );
}

/// The top tables (peers, local ports, processes, cgroups); none when no
/// connection was counted.
fn render_top_groups(o: &mut String, s: &Summary) {
    if s.top_peers.is_empty() {
        return;
    }
    let _ = writeln!(o, "\nTop peers");
    group_header(o, "PEER");
    for r in &s.top_peers {
        let name = format!("{}{}", r.peer, netns_tag(s, r.netns));
        group_line(o, &name, &r.stats, Some(r.time_wait_now));
    }
    render_breakdown(o, &s.flow_breakdown);
    let _ = writeln!(o, "\nTop local ports");
    group_header(o, "LOCAL PORT");
    for r in &s.top_local_ports {
        let name = r
            .local_port
            .map_or("(outgoing, ephemeral)".to_string(), |p| p.to_string());
        let name = format!("{name}{}", netns_tag(s, r.netns));
        group_line(o, &name, &r.stats, None);
    }
    let _ = writeln!(o, "\nTop processes");
    group_header(o, "PID/COMM");
    for r in &s.top_processes {
        let name = match r.pid {
            Some(p) => format!("{p}/{}", r.comm),
            None => r.comm.clone(),
        };
        group_line(o, &name, &r.stats, None);
    }
    let _ = writeln!(o, "\nTop cgroups");
    group_header(o, "CGROUP (id)");
    for r in &s.top_cgroups {
        let name = format!("{} ({})", r.cgroup.as_deref().unwrap_or("?"), r.cgroup_id);
        group_line(o, &name, &r.stats, None);
    }
    let _ = writeln!(
        o,
        "  (HERE1ST: this host sent the first FIN and pays TIME_WAIT; SIMUL: FINs crossed; FW2P: orphans parked in FIN_WAIT2; bytes are payload at close)"
    );
}

fn render_transitions(o: &mut String, transitions: &[TransitionCount]) {
    let _ = writeln!(o, "\nTransitions");
    for t in transitions {
        let _ = writeln!(
            o,
            "  {:<26} {:>10}",
            format!("{}->{}", t.from, t.to),
            t.count
        );
    }
}

/// The tracer's own line: every drop and skip counter, by `Health::entries`.
fn render_health(o: &mut String, h: &Health) {
    let health: Vec<String> = h
        .entries()
        .iter()
        .map(|(name, _, v)| format!("{name} {v}"))
        .collect();
    let _ = writeln!(o, "\nTracer: {}", health.join(", "));
}

/// Width of a histogram bar at its longest.
const BAR_WIDTH: usize = 40;

/// A duration in ns, three significant digits, in the unit that fits.
fn human_ns(ns: u64) -> String {
    let (v, unit) = match ns {
        0..1_000 => return format!("{ns} ns"),
        1_000..1_000_000 => (ns as f64 / 1e3, "us"),
        1_000_000..1_000_000_000 => (ns as f64 / 1e6, "ms"),
        _ => (ns as f64 / 1e9, "s"),
    };
    let prec = if v >= 100.0 {
        0
    } else if v >= 10.0 {
        1
    } else {
        2
    };
    format!("{v:.prec$} {unit}")
}

/// A latency's buckets regrouped into powers of two of nanoseconds, as
/// BCC's histograms are: (low ns, high ns, count) for every octave from
/// the lowest to the highest non-empty one. Exact: the kernel's buckets
/// split each such octave evenly, so none straddles two.
pub fn log2_buckets(l: &Latency) -> Vec<(u64, u64, u64)> {
    let mut by_octave: BTreeMap<u32, u64> = BTreeMap::new();
    for (lo_us, _, n) in &l.buckets {
        let lo_ns = (lo_us * 1e3).round() as u64;
        let octave = if lo_ns == 0 {
            0
        } else {
            64 - lo_ns.leading_zeros()
        };
        *by_octave.entry(octave).or_default() += n;
    }
    let (Some(first), Some(last)) = (
        by_octave.keys().next().copied(),
        by_octave.keys().last().copied(),
    ) else {
        return Vec::new();
    };
    // Octave k (k >= 1) holds [2^(k-1), 2^k); octave 0 holds only 0.
    let bounds = |k: u32| match k {
        0 => (0, 1),
        k => (1u64 << (k - 1), 1u64 << k.min(63)),
    };
    (first..=last)
        .map(|k| {
            let (lo, hi) = bounds(k);
            (lo, hi, by_octave.get(&k).copied().unwrap_or(0))
        })
        .collect()
}

/// One distribution as a bar chart, BCC style.
fn histogram_chart(out: &mut String, title: &str, l: &Latency) {
    let rows = log2_buckets(l);
    if rows.is_empty() {
        return;
    }
    let max = rows.iter().map(|r| r.2).max().unwrap_or(1).max(1);
    let _ = writeln!(out, "\n{title}: {} samples", l.count);
    let _ = writeln!(
        out,
        "  {:>10} -> {:<10} {:>8}  distribution",
        "from", "to", "count"
    );
    for (lo, hi, n) in rows {
        let len = (n as usize * BAR_WIDTH).div_ceil(max as usize);
        let _ = writeln!(
            out,
            "  {:>10} -> {:<10} {:>8}  |{:<BAR_WIDTH$}|",
            human_ns(lo),
            human_ns(hi),
            n,
            "*".repeat(len)
        );
    }
}

/// The handshake and lifetime distributions as bar charts (log2 buckets).
pub fn render_histograms(s: &Summary) -> String {
    let mut o = String::new();
    histogram_chart(
        &mut o,
        "Active handshake latency (connect)",
        &s.active_handshake.all,
    );
    histogram_chart(
        &mut o,
        "Passive handshake latency (accept, SYN-ACK RTT)",
        &s.passive_handshake.all,
    );
    histogram_chart(&mut o, "Connection lifetime", &s.connection_lifetime);
    o
}

/// ANSI colors for the text report: section titles bold, warnings yellow,
/// histogram bars cyan. The text is otherwise unchanged.
pub fn colorize(text: &str) -> String {
    let mut o = String::with_capacity(text.len() + text.len() / 8);
    for line in text.lines() {
        if line.trim_start().starts_with("WARNING:") {
            let _ = writeln!(o, "\x1b[1;33m{line}\x1b[0m");
        } else if let (Some(a), Some(b)) = (line.find("|*"), line.rfind('|')) {
            let _ = writeln!(
                o,
                "{}|\x1b[36m{}\x1b[0m{}",
                &line[..a],
                &line[a + 1..b],
                &line[b..]
            );
        } else if !line.is_empty() && !line.starts_with(' ') {
            let _ = writeln!(o, "\x1b[1m{line}\x1b[0m");
        } else {
            let _ = writeln!(o, "{line}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Replay;
    use tracer_common::state::*;

    fn ctx(sockets: &SocketTally) -> Context<'_> {
        Context::defaults(sockets)
    }

    #[test]
    fn summary_from_replayed_paths() {
        let mut r = Replay::default();
        // 3 clean connects to 10.0.0.1:80, closed here first (→ TIME_WAIT).
        for i in 0..3 {
            r.active_open(i, 10, [10, 0, 0, 1], 80, 1_000_000, 0);
            r.active_close_to_time_wait(i, true);
        }
        // 1 refused connect.
        r.refused(100, 10, [10, 0, 0, 1], 81);
        let snap = r.snapshot();
        let tw_sock = DiagSocket {
            cookie: 1,
            ..DiagSocket::test(TIME_WAIT, "10.0.0.9", 40000, "10.0.0.1", 80)
        };
        let tally = SocketTally::of(
            &snap,
            crate::DEFAULT_PORT_RANGE,
            std::slice::from_ref(&tw_sock),
        );
        let s = build(&snap, &ctx(&tally));
        assert_eq!(s.connects.attempts, 4);
        assert_eq!(s.connects.established, 3);
        assert_eq!(s.connects.failed, 1);
        assert_eq!(s.connects.refused, 1);
        assert_eq!(s.active_handshake.all.count, 3);
        assert_eq!(s.time_wait.entered, 3);
        assert_eq!(s.time_wait.entered_by_side.active_opened, 3);
        assert_eq!(s.time_wait.now.time_wait, 1);
        assert_eq!(s.time_wait.now_by_peer[0].peer, "10.0.0.1:80");
        assert_eq!(s.top_peers[0].peer, "10.0.0.1:80");
        assert_eq!(s.top_peers[0].stats.established, 3);
        assert_eq!(s.top_peers[0].stats.time_wait_entries, 3);
        assert_eq!(s.top_peers[1].peer, "10.0.0.1:81");
        assert_eq!(s.top_peers[1].stats.connect_failed, 1);
        assert_eq!(s.top_local_ports[0].local_port, None);
        assert_eq!(s.top_processes[0].pid, Some(10));
        let text = render_text(&s);
        assert!(
            text.contains("Connects: 4 attempted, 3 established, 1 failed (refused 1"),
            "{text}"
        );
        assert!(text.contains("TIME_WAIT: 3 entered"), "{text}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["schema"], SCHEMA);
        assert_eq!(json["time_wait"]["entered"], 3);
        assert_eq!(json["top_peers"][0]["established"], 3);
    }

    #[test]
    fn port_pressure_counts_ephemeral_sockets_per_destination() {
        let snap = Snapshot::empty();
        let sock =
            |state, sport, dport| DiagSocket::test(state, "10.0.0.9", sport, "10.0.0.1", dport);
        let mut socks = vec![
            sock(TIME_WAIT, 40000, 80),
            sock(TIME_WAIT, 40001, 80),
            sock(ESTABLISHED, 40002, 80),
            sock(SYN_SENT, 40003, 80),
            // A server-side socket (local port 80) is not ephemeral pressure.
            sock(ESTABLISHED, 80, 40004),
        ];
        socks.push(sock(CLOSE_WAIT, 40005, 443));
        let tally = SocketTally::of(&snap, (40000, 40009), &socks);
        assert_eq!(tally.close_wait.len(), 1);
        let mut c = ctx(&tally);
        c.ephemeral = (40000, 40009);
        c.pressure_warn_pct = 40.0;
        let s = build(&snap, &c);
        let pp = &s.port_pressure;
        assert_eq!(pp.destinations.len(), 2);
        let r = &pp.destinations[0];
        assert_eq!(r.remote, "10.0.0.1:80");
        assert_eq!((r.time_wait, r.established, r.other, r.total), (2, 1, 1, 4));
        assert_eq!(r.range_size, 10);
        assert_eq!(r.used_pct, 40.0);
        assert!(r.warning);
        assert!(!pp.destinations[1].warning);
        assert_eq!(pp.warnings.len(), 1);
        assert!(pp.warnings[0].starts_with("WARNING: 10.0.0.9 -> 10.0.0.1:80 holds 4 of 10"));
        assert_eq!(s.time_wait.now.time_wait, 2);
        assert_eq!(s.time_wait.now_by_peer[0].peer, "10.0.0.1:80");
    }

    #[test]
    fn histograms_group_exactly_into_octaves() {
        let mut h = Histogram::default();
        // 3 samples in [32.768, 65.536) us, 1 in [1.048576, 2.097152) ms.
        for v in [40_000u64, 50_000, 65_535, 1_500_000] {
            h.record(v);
        }
        let l = Latency::from_hist(&h);
        let rows = log2_buckets(&l);
        assert_eq!(rows.first(), Some(&(32_768, 65_536, 3)));
        assert_eq!(rows.last(), Some(&(1_048_576, 2_097_152, 1)));
        assert_eq!(rows.len(), 6, "empty octaves in between are shown");
        assert_eq!(rows.iter().map(|r| r.2).sum::<u64>(), 4);
        let mut s = String::new();
        histogram_chart(&mut s, "T", &l);
        assert!(s.contains("T: 4 samples"), "{s}");
        let full = format!("|{}|", "*".repeat(BAR_WIDTH));
        assert!(
            s.lines()
                .any(|x| x.contains("32.8 us -> 65.5 us") && x.contains(&full)),
            "{s}"
        );
        assert!(
            s.lines().any(|x| x.contains("1.05 ms -> 2.10 ms")
                && x.contains(&format!("|{:<40}|", "*".repeat(14)))),
            "{s}"
        );
        assert!(log2_buckets(&Latency::from_hist(&Histogram::default())).is_empty());
    }

    #[test]
    fn colorize_marks_warnings_and_keeps_text() {
        let c = colorize("Title\n  WARNING: x\n  a |**  |\n  plain\n");
        assert!(c.contains("\x1b[1mTitle\x1b[0m"));
        assert!(c.contains("\x1b[1;33m  WARNING: x\x1b[0m"));
        assert!(c.contains("|\x1b[36m**  \x1b[0m|"));
        assert!(c.contains("\n  plain\n"));
    }

    #[test]
    fn tally_survives_its_record() {
        let snap = Snapshot::empty();
        let sock = |state, sport| DiagSocket::test(state, "10.0.0.9", sport, "10.0.0.1", 80);
        let socks = [sock(TIME_WAIT, 40000), sock(ESTABLISHED, 40001)];
        let t = SocketTally::of(&snap, crate::DEFAULT_PORT_RANGE, &socks);
        let r = t.to_record();
        let json = serde_json::to_string(&r).unwrap();
        let back: TallyRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let t2 = SocketTally::from_record(&back);
        let a = build(&snap, &ctx(&t));
        let b = build(&snap, &ctx(&t2));
        assert_eq!(a, b);
    }

    #[test]
    fn two_namespaces_with_the_same_addresses_stay_apart() {
        let snap = Snapshot::empty();
        let sock =
            |state, sport, dport| DiagSocket::test(state, "127.0.0.1", sport, "127.0.0.1", dport);
        let mut t = SocketTally::new(&snap, (40000, 40009));
        // Namespace 1: 5 TIME_WAIT to :9000 on a 10-port range.
        t.begin_namespace(1, Some((40000, 40009)));
        for i in 0..5 {
            t.add(&sock(TIME_WAIT, 40000 + i, 9000));
        }
        t.add(&sock(CLOSE_WAIT, 9000, 40100));
        // Namespace 2: the same 4-tuples, 3 of them, on a 100-port range.
        t.begin_namespace(2, Some((40000, 40099)));
        for i in 0..3 {
            t.add(&sock(TIME_WAIT, 40000 + i, 9000));
        }
        // Namespace 3 failed half-way: nothing of it stays.
        t.begin_namespace(3, None);
        t.add(&sock(TIME_WAIT, 40000, 9000));
        t.forget_namespace(3);
        assert_eq!(t.population().time_wait, 8);
        assert_eq!(t.namespaces().len(), 2);
        assert_eq!(t.namespaces()[&1].population.time_wait, 5);
        assert_eq!(t.namespaces()[&1].population.close_wait, 1);
        assert_eq!(t.namespaces()[&2].population.time_wait, 3);
        assert_eq!(t.close_wait, vec![(1, sock(CLOSE_WAIT, 9000, 40100))]);
        assert_eq!(t.time_wait_of_peer(Some(2), "127.0.0.1:9000"), 3);
        assert_eq!(t.time_wait_of_peer(None, "127.0.0.1:9000"), 8);

        let metas = [NamespaceMeta {
            netns: 2,
            names: vec!["blue".into()],
            pid: Some(42),
            workload: Some(crate::host::cgroup::workload("/system.slice/blue.service")),
            read_via: "setns",
        }];
        let mut c = ctx(&t);
        c.namespaces = &metas;
        let s = build(&snap, &c);
        assert_eq!(s.time_wait.now.time_wait, 8);
        let pp = &s.port_pressure.destinations;
        assert_eq!(pp.len(), 2);
        assert_eq!((pp[0].netns, pp[0].time_wait, pp[0].range_size), (1, 5, 10));
        assert_eq!(
            (pp[1].netns, pp[1].time_wait, pp[1].range_size),
            (2, 3, 100)
        );
        let by_peer: Vec<(u32, u64)> = s
            .time_wait
            .now_by_peer
            .iter()
            .map(|r| (r.netns, r.count))
            .collect();
        assert_eq!(by_peer, [(1, 5), (2, 3)]);
        let ns: Vec<(u32, u64, &str)> = s
            .namespaces
            .iter()
            .map(|r| (r.netns, r.now.time_wait, r.read_via))
            .collect();
        assert_eq!(ns, [(1, 5, "own"), (2, 3, "setns")]);
        assert_eq!(s.namespaces[1].workload.as_deref(), Some("blue.service"));
        assert_eq!(s.namespaces[0].port_pressure_max_pct, 50.0);
        // Flows do not carry namespaces yet: no per-namespace flow counts.
        assert_eq!(s.namespaces[0].flows, None);
        let text = render_text(&s);
        assert!(text.contains("Network namespaces"), "{text}");
        assert!(text.contains("blue blue.service"), "{text}");
    }
}
