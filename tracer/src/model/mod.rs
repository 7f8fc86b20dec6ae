//! Plain data read from the kernel maps, and the arithmetic on it. No I/O,
//! no root: unit tests drive everything here.

pub mod heavy;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Serialize;
use tracer_common::{
    close, counter, dir, hist, state, FlowKey, FlowStats, ListenerKey, ListenerStats, AF_INET6,
};

/// Kernel TCP state names, as `ss` and the kernel print them.
pub fn state_name(s: u8) -> &'static str {
    match s {
        state::ESTABLISHED => "ESTABLISHED",
        state::SYN_SENT => "SYN_SENT",
        state::SYN_RECV => "SYN_RECV",
        state::FIN_WAIT1 => "FIN_WAIT1",
        state::FIN_WAIT2 => "FIN_WAIT2",
        state::TIME_WAIT => "TIME_WAIT",
        state::CLOSE => "CLOSE",
        state::CLOSE_WAIT => "CLOSE_WAIT",
        state::LAST_ACK => "LAST_ACK",
        state::LISTEN => "LISTEN",
        state::CLOSING => "CLOSING",
        state::NEW_SYN_RECV => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

/// Name of a `close::*` kind (stable: used in JSON and metrics).
pub fn close_kind_name(k: u8) -> &'static str {
    match k {
        close::NONE => "",
        close::TIME_WAIT => "time_wait",
        close::FIN_WAIT2_PARKED => "fin_wait2_parked",
        close::LAST_ACK => "passive_close",
        close::RESET_SENT => "reset_sent",
        close::RESET_RECEIVED => "reset_received",
        close::TIMEOUT => "timeout",
        close::CONNECT_REFUSED => "connect_refused",
        close::CONNECT_TIMEOUT => "connect_timeout",
        close::CONNECT_UNREACHABLE => "connect_unreachable",
        close::CONNECT_ABORTED => "connect_aborted",
        close::CONNECT_NO_LOCAL_PORT => "connect_no_local_port",
        close::PASSIVE_FAILED => "passive_failed",
        close::LISTENER_CLOSED => "listener_closed",
        _ => "other",
    }
}

pub fn dir_name(d: u8) -> &'static str {
    match d {
        dir::ACTIVE => "active",
        dir::PASSIVE => "passive",
        _ => "unknown",
    }
}

/// An address as the kernel stores it (IPv4 in the first 4 bytes).
pub fn ip_from_raw(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        let v6 = Ipv6Addr::from(*raw);
        match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        }
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

/// `addr:port`, with brackets for IPv6.
pub fn endpoint(ip: IpAddr, port: u16) -> String {
    let mut s = String::with_capacity(48);
    match ip {
        // The common case without the formatting machinery (events mode
        // writes two endpoints per event).
        IpAddr::V4(a) => {
            let mut digits = itoa::Buffer::new();
            for (i, o) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    s.push('.');
                }
                s.push_str(digits.format(o));
            }
        }
        IpAddr::V6(a) => {
            use std::fmt::Write as _;
            let _ = write!(s, "[{a}]");
        }
    }
    s.push(':');
    s.push_str(itoa::Buffer::new().format(port));
    s
}

/// A latency histogram merged over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    pub buckets: Vec<u64>,
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; hist::BUCKETS],
            count: 0,
            sum_ns: 0,
            max_ns: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        self.buckets[hist::bucket(v)] += 1;
        self.count += 1;
        self.sum_ns += v;
        self.max_ns = self.max_ns.max(v);
    }

    pub fn add_kernel(&mut self, h: &hist::Hist) {
        for (a, b) in self.buckets.iter_mut().zip(h.buckets.iter()) {
            *a += b;
        }
        self.count += h.count;
        self.sum_ns += h.sum;
        self.max_ns = self.max_ns.max(h.max);
    }

    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a += b;
        }
        self.count += o.count;
        self.sum_ns += o.sum_ns;
        self.max_ns = self.max_ns.max(o.max_ns);
    }

    /// The `q` quantile (0 < q ≤ 1): the midpoint of the bucket holding the
    /// sample of rank ⌈q·count⌉, capped by the exact maximum (and equal to it
    /// for the top rank). Error ≤ half a bucket: 1/128 (0.8 %) of the value
    /// above 64 ns.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        if rank == self.count {
            // The top-ranked sample is the maximum, which is kept exactly.
            return Some(self.max_ns);
        }
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let lo = hist::bucket_low(i);
                let hi = hist::bucket_high(i);
                let mid = if hi - lo <= 1 { lo } else { lo + (hi - lo) / 2 };
                return Some(mid.min(self.max_ns));
            }
        }
        Some(self.max_ns)
    }

    pub fn mean_ns(&self) -> Option<u64> {
        (self.count > 0).then(|| self.sum_ns / self.count)
    }

    /// Non-empty buckets as (lower bound ns, upper bound ns, count).
    pub fn nonzero(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (hist::bucket_low(i), hist::bucket_high(i), *n))
    }
}

/// Everything the kernel maps hold, summed over CPUs.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Indexed by `counter::*`.
    pub counters: Vec<u64>,
    /// `transitions[old][new]`.
    pub transitions: [[u64; state::COUNT]; state::COUNT],
    /// Indexed by `hist_kind::*`.
    pub hists: Vec<Histogram>,
    pub flows: Vec<(FlowKey, FlowStats)>,
    /// TIME_WAIT entries per CLOCK_MONOTONIC second, (second, count), for
    /// the last 64 seconds that had any.
    pub time_wait_by_second: Vec<(u64, u64)>,
    /// Flow figures of connections that found the kernel flow table full,
    /// and of rows the userspace breakdown evicted: with `flows`, they add
    /// up to the totals.
    pub other_flow: FlowStats,
    /// Program runs the kernel skipped (recursion on a CPU).
    pub recursion_misses: u64,
    /// Volume each row may miss (in `other_flow`), for rows that may miss any.
    pub flow_errors: std::collections::BTreeMap<FlowKey, u64>,
    /// How exact `flows` is, and what the harvests cost.
    pub breakdown: Breakdown,
    /// SYN-ACK retransmits and completed handshakes per listening port.
    pub listener_stats: std::collections::BTreeMap<ListenerKey, ListenerStats>,
}

/// The per-flow breakdown's bounds (see `heavy`): `flows` holds at most
/// `rows_capacity` rows; once a row was evicted (`rows_evicted` > 0) a
/// row's figures may miss up to `max_error` of volume, every key with more
/// than `total_volume / rows_capacity` has a row, and rows + other still
/// equal the totals exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Breakdown {
    pub rows: u64,
    pub rows_capacity: u64,
    pub rows_evicted: u64,
    /// The most volume (`flow_volume`) any row may miss; 0: exact.
    pub max_error: u64,
    pub total_volume: u64,
    /// Capacity of the kernel's flow table (rows between two harvests).
    pub kernel_table_capacity: u64,
    pub harvests: u64,
    pub harvested_rows: u64,
    pub max_rows_per_harvest: u64,
    pub harvest_cpu_ns: u64,
    pub harvest_failures: u64,
}

impl Snapshot {
    pub fn empty() -> Self {
        Snapshot {
            counters: vec![0; counter::COUNT as usize],
            transitions: [[0; state::COUNT]; state::COUNT],
            hists: vec![Histogram::default(); tracer_common::hist_kind::COUNT as usize],
            flows: Vec::new(),
            time_wait_by_second: Vec::new(),
            other_flow: FlowStats::default(),
            recursion_misses: 0,
            flow_errors: Default::default(),
            breakdown: Breakdown::default(),
            listener_stats: Default::default(),
        }
    }

    /// Add one CPU's stats block.
    pub fn add_stats(&mut self, st: &tracer_common::Stats) {
        for (a, b) in self.counters.iter_mut().zip(st.counters.iter()) {
            *a += b;
        }
        for (i, n) in st.transitions.iter().enumerate() {
            self.transitions[i / state::COUNT][i % state::COUNT] += n;
        }
        add_flow_stats(&mut self.other_flow, &st.other_flow);
    }

    /// TIME_WAIT entries in the 60 s before `now_sec` (inclusive): the
    /// population the timewait table should hold if every entry stays the
    /// kernel's fixed 60 s (TCP_TIMEWAIT_LEN). Entries of second
    /// `now_sec - 60` may or may not have expired, so this is exact only
    /// once a second boundary has passed quietly.
    pub fn time_wait_last_60s(&self, now_sec: u64) -> u64 {
        self.time_wait_by_second
            .iter()
            .filter(|(s, _)| *s <= now_sec && now_sec - *s < 60)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn counter(&self, idx: u32) -> u64 {
        self.counters.get(idx as usize).copied().unwrap_or(0)
    }

    pub fn closes(&self, kind: u8) -> u64 {
        self.counter(counter::CLOSE_BASE + kind as u32)
    }

    pub fn transition(&self, old: u8, new: u8) -> u64 {
        self.transitions[old as usize][new as usize]
    }

    /// Every (old, new, count) the matrix holds with a count, row by row.
    pub fn transition_pairs(&self) -> impl Iterator<Item = (u8, u8, u64)> + '_ {
        self.transitions.iter().enumerate().flat_map(|(o, row)| {
            row.iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(move |(n, count)| (o as u8, n as u8, *count))
        })
    }
}

/// What "volume" means for ranking flows, peers and series: connections
/// seen plus TIME_WAIT entries and resets. The one definition: groups
/// (`GroupStats::volume`) and the exporter's slots use it too.
pub fn flow_volume(f: &FlowStats) -> u64 {
    f.established + f.connect_failed + f.time_wait + f.resets_sent + f.resets_received
}

/// Sum per-CPU flow values into one.
pub fn sum_flow_stats<'a>(values: impl IntoIterator<Item = &'a FlowStats>) -> FlowStats {
    let mut acc = FlowStats::default();
    for v in values {
        add_flow_stats(&mut acc, v);
    }
    acc
}

pub fn add_flow_stats(acc: &mut FlowStats, v: &FlowStats) {
    acc.established += v.established;
    acc.connect_failed += v.connect_failed;
    acc.connect_no_local_port += v.connect_no_local_port;
    acc.time_wait += v.time_wait;
    acc.fin_wait2_parked += v.fin_wait2_parked;
    acc.resets_sent += v.resets_sent;
    acc.resets_received += v.resets_received;
    acc.close_local_first += v.close_local_first;
    acc.close_peer_first += v.close_peer_first;
    acc.close_simultaneous += v.close_simultaneous;
    acc.handshake_count += v.handshake_count;
    acc.handshake_sum_ns += v.handshake_sum_ns;
    acc.handshake_max_ns = acc.handshake_max_ns.max(v.handshake_max_ns);
    acc.handshake_retrans += v.handshake_retrans;
    acc.retrans_total += v.retrans_total;
    acc.closed += v.closed;
    acc.lifetime_sum_ns += v.lifetime_sum_ns;
    acc.lifetime_max_ns = acc.lifetime_max_ns.max(v.lifetime_max_ns);
    acc.bytes_received += v.bytes_received;
    acc.bytes_acked += v.bytes_acked;
    if v.comm[0] != 0 {
        acc.comm = v.comm;
        acc.cgroup_id = v.cgroup_id;
    }
}

/// A comm byte array as text.
pub fn comm_str(c: &[u8]) -> String {
    let end = c.iter().position(|b| *b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// Counts per group in the top-N tables.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GroupStats {
    pub established: u64,
    pub connect_failed: u64,
    /// Of those, connect() found no free local port (EADDRNOTAVAIL).
    pub connect_no_local_port: u64,
    /// Entries into the timewait table (TIME_WAIT, and orphans parked in FIN_WAIT2).
    pub time_wait_entries: u64,
    /// Of those, orphans parked in FIN_WAIT2 before the peer's FIN: each ends
    /// in TIME_WAIT when the FIN comes, or in a FIN_WAIT2 timeout.
    pub fin_wait2_parked: u64,
    /// `resets_sent + resets_received`.
    pub resets: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    /// Close paths: this host sent the first FIN (it pays TIME_WAIT), the peer
    /// did (CLOSE_WAIT → LAST_ACK here), or both crossed (CLOSING).
    pub closed_here_first: u64,
    pub closed_by_peer_first: u64,
    pub closed_simultaneously: u64,
    pub handshakes: u64,
    pub handshake_mean_us: Option<f64>,
    pub handshake_max_us: Option<f64>,
    pub handshakes_with_retransmits: u64,
    pub retransmits: u64,
    /// Established connections that ended (any path) with a known lifetime.
    pub connections_closed: u64,
    pub lifetime_mean_ms: Option<f64>,
    pub lifetime_max_ms: Option<f64>,
    /// Payload bytes at close, summed over the closed connections
    /// (`tcp_sock.bytes_received` / `bytes_acked`).
    pub bytes_received: u64,
    pub bytes_sent_acked: u64,
}

impl GroupStats {
    fn add(&mut self, f: &FlowStats, sums: &mut GroupSums) {
        self.established += f.established;
        self.connect_failed += f.connect_failed;
        self.connect_no_local_port += f.connect_no_local_port;
        self.time_wait_entries += f.time_wait;
        self.fin_wait2_parked += f.fin_wait2_parked;
        self.resets_sent += f.resets_sent;
        self.resets_received += f.resets_received;
        self.resets += f.resets_sent + f.resets_received;
        self.closed_here_first += f.close_local_first;
        self.closed_by_peer_first += f.close_peer_first;
        self.closed_simultaneously += f.close_simultaneous;
        self.handshakes += f.handshake_count;
        sums.handshake_ns += f.handshake_sum_ns;
        self.connections_closed += f.closed;
        sums.lifetime_ns += f.lifetime_sum_ns;
        if f.closed > 0 {
            let max = f.lifetime_max_ns as f64 / 1e6;
            self.lifetime_max_ms = Some(self.lifetime_max_ms.map_or(max, |m| m.max(max)));
        }
        self.bytes_received += f.bytes_received;
        self.bytes_sent_acked += f.bytes_acked;
        if f.handshake_count > 0 {
            let max = f.handshake_max_ns as f64 / 1e3;
            self.handshake_max_us = Some(self.handshake_max_us.map_or(max, |m| m.max(max)));
        }
        self.handshakes_with_retransmits += f.handshake_retrans;
        self.retransmits += f.retrans_total;
    }

    /// What "volume" means for the top-N ordering: `flow_volume` of the
    /// group's figures (`resets` holds both directions).
    pub fn volume(&self) -> u64 {
        flow_volume(&FlowStats {
            established: self.established,
            connect_failed: self.connect_failed,
            time_wait: self.time_wait_entries,
            resets_sent: self.resets,
            ..FlowStats::default()
        })
    }
}

/// Sums behind a group's means.
#[derive(Clone, Copy, Debug, Default)]
struct GroupSums {
    handshake_ns: u64,
    lifetime_ns: u64,
}

/// The network namespace (inode) a flow belongs to (None: not known, 0).
pub fn flow_netns(k: &FlowKey) -> Option<u32> {
    (k.netns != 0).then_some(k.netns)
}

/// One flow's figures as a group's (the `other` row's, say).
pub fn group_of(f: &FlowStats) -> GroupStats {
    group_flows(&[(FlowKey::default(), *f)], |_, _| (), 1)
        .pop()
        .map(|(_, g)| g)
        .unwrap_or_default()
}

/// Group flows by `key_of`, then keep the `top` largest by volume (ties by key).
pub fn group_flows<K: Ord + Clone>(
    flows: &[(FlowKey, FlowStats)],
    key_of: impl Fn(&FlowKey, &FlowStats) -> K,
    top: usize,
) -> Vec<(K, GroupStats)> {
    let mut groups: std::collections::BTreeMap<K, (GroupStats, GroupSums)> = Default::default();
    for (k, f) in flows {
        let (g, sums) = groups.entry(key_of(k, f)).or_default();
        g.add(f, sums);
    }
    let mut out: Vec<(K, GroupStats)> = groups
        .into_iter()
        .map(|(k, (mut g, sums))| {
            if g.handshakes > 0 {
                g.handshake_mean_us = Some(sums.handshake_ns as f64 / g.handshakes as f64 / 1e3);
            }
            if g.connections_closed > 0 {
                g.lifetime_mean_ms =
                    Some(sums.lifetime_ns as f64 / g.connections_closed as f64 / 1e6);
            }
            (k, g)
        })
        .collect();
    out.sort_by(|a, b| b.1.volume().cmp(&a.1.volume()).then(a.0.cmp(&b.0)));
    out.truncate(top);
    out
}

/// Replays synthetic transitions through the same `account::effects`,
/// `account::apply_flow` and `machine` rules the kernel program applies, with
/// the same per-socket state. Unit tests use it to pin down what every
/// counter means for each path of the TCP state machine.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct Replay {
    snap: Option<Snapshot>,
    socks: std::collections::HashMap<u64, ReplaySock>,
}

#[cfg(test)]
#[derive(Clone, Copy, Default)]
struct ReplaySock {
    st: tracer_common::SockState,
    raddr: [u8; 4],
    lport: u16,
    rport: u16,
}

#[cfg(test)]
impl Replay {
    fn snap(&mut self) -> &mut Snapshot {
        self.snap.get_or_insert_with(Snapshot::empty)
    }

    /// Apply one transition. `handshake_ns` is the latency the kernel would
    /// measure (None: unknown); `sk_err`/`sock_done` as read at → CLOSE.
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per field of a transition, as the tests write them"
    )]
    pub fn step(
        &mut self,
        sock: u64,
        old: u8,
        new: u8,
        sk_err: u16,
        sock_done: bool,
        retrans: u32,
        handshake_ns: Option<u64>,
    ) {
        use tracer_common::account::{apply_flow, effects, flow_point, Facts, FlowFacts, NONE};
        let mut s = *self.socks.entry(sock).or_default();
        s.st.decide(true);
        let facts = Facts {
            sk_err,
            sock_done,
            lport: s.lport,
            retrans,
            handshake_known: handshake_ns.is_some(),
        };
        let e = effects(old, new, s.st.dir, &facts);
        let snap = self.snap();
        snap.transitions[old as usize][new as usize] += 1;
        for c in e.counters {
            if c != NONE {
                snap.counters[c as usize] += 1;
            }
        }
        if e.hist != NONE {
            snap.hists[e.hist as usize].record(handshake_ns.unwrap_or(0));
        }
        if e.flow != flow_point::NONE {
            let ff = FlowFacts {
                handshake_ns: handshake_ns.unwrap_or(0),
                handshake_known: handshake_ns.is_some(),
                retrans,
                ..FlowFacts::default()
            };
            let key = Self::key(&s);
            let i = match snap.flows.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    snap.flows.push((key, FlowStats::default()));
                    snap.flows.len() - 1
                }
            };
            apply_flow(&mut snap.flows[i].1, &e, &s.st, &ff);
        }
        if new == state::CLOSE {
            self.socks.remove(&sock);
        } else {
            self.socks.insert(sock, s);
        }
    }

    fn key(s: &ReplaySock) -> FlowKey {
        let mut raddr = [0u8; 16];
        raddr[..4].copy_from_slice(&s.raddr);
        FlowKey {
            raddr,
            laddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            family: tracer_common::AF_INET,
            port: if s.st.dir == dir::ACTIVE {
                s.rport
            } else {
                s.lport
            },
            tgid: s.st.key_tgid,
            netns: 1,
            dir: s.st.dir,
            gen: 0,
            _pad: [0; 2],
        }
    }

    fn born(&mut self, sock: u64, dir: u8, tgid: u32, raddr: [u8; 4], lport: u16, rport: u16) {
        let mut st = tracer_common::SockState::default();
        st.born(dir, 1, true, 1);
        st.set_owner(&tracer_common::machine::OwnerFacts {
            tgid,
            ..Default::default()
        });
        self.socks.insert(
            sock,
            ReplaySock {
                st,
                raddr,
                lport,
                rport,
            },
        );
    }

    /// CLOSE → SYN_SENT → ESTABLISHED.
    pub fn active_open(
        &mut self,
        sock: u64,
        tgid: u32,
        raddr: [u8; 4],
        rport: u16,
        hs_ns: u64,
        retrans: u32,
    ) {
        self.born(sock, dir::ACTIVE, tgid, raddr, 40000, rport);
        self.step(sock, state::CLOSE, state::SYN_SENT, 0, false, 0, None);
        self.step(
            sock,
            state::SYN_SENT,
            state::ESTABLISHED,
            0,
            false,
            retrans,
            Some(hs_ns),
        );
    }

    /// LISTEN → SYN_RECV → ESTABLISHED (child socket).
    pub fn passive_open(
        &mut self,
        sock: u64,
        tgid: u32,
        raddr: [u8; 4],
        lport: u16,
        rtt_ns: u64,
        retrans: u32,
    ) {
        self.born(sock, dir::PASSIVE, tgid, raddr, lport, 50000);
        self.step(sock, state::LISTEN, state::SYN_RECV, 0, false, 0, None);
        self.step(
            sock,
            state::SYN_RECV,
            state::ESTABLISHED,
            0,
            false,
            retrans,
            Some(rtt_ns),
        );
    }

    /// ESTABLISHED → FIN_WAIT1 → FIN_WAIT2 → CLOSE. With `fin_received` the
    /// peer's FIN came first (SOCK_DONE: TIME_WAIT); without, the orphan is
    /// parked as a FIN_WAIT2 minisock.
    pub fn active_close_to_time_wait(&mut self, sock: u64, fin_received: bool) {
        use state::*;
        self.walk(
            sock,
            &[
                (ESTABLISHED, FIN_WAIT1, false),
                (FIN_WAIT1, FIN_WAIT2, false),
                (FIN_WAIT2, CLOSE, fin_received),
            ],
        );
    }

    /// ESTABLISHED → CLOSE_WAIT → LAST_ACK → CLOSE.
    pub fn passive_close(&mut self, sock: u64) {
        use state::*;
        self.walk(
            sock,
            &[
                (ESTABLISHED, CLOSE_WAIT, true),
                (CLOSE_WAIT, LAST_ACK, true),
                (LAST_ACK, CLOSE, true),
            ],
        );
    }

    /// ESTABLISHED → FIN_WAIT1 → CLOSING → CLOSE (both FINs crossed).
    pub fn simultaneous_close(&mut self, sock: u64) {
        use state::*;
        self.walk(
            sock,
            &[
                (ESTABLISHED, FIN_WAIT1, false),
                (FIN_WAIT1, CLOSING, true),
                (CLOSING, CLOSE, true),
            ],
        );
    }

    /// Transitions (old, new, FIN received) with no error, retransmit or
    /// handshake time.
    fn walk(&mut self, sock: u64, steps: &[(u8, u8, bool)]) {
        for &(old, new, fin) in steps {
            self.step(sock, old, new, 0, fin, 0, None);
        }
    }

    /// CLOSE → SYN_SENT → CLOSE with ECONNREFUSED.
    pub fn refused(&mut self, sock: u64, tgid: u32, raddr: [u8; 4], rport: u16) {
        self.born(sock, dir::ACTIVE, tgid, raddr, 40000, rport);
        self.step(sock, state::CLOSE, state::SYN_SENT, 0, false, 0, None);
        self.step(
            sock,
            state::SYN_SENT,
            state::CLOSE,
            tracer_common::errno::ECONNREFUSED,
            false,
            0,
            None,
        );
    }

    pub fn snapshot(&mut self) -> Snapshot {
        self.snap().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tracer_common::{close, counter, errno, hist_kind};

    const PEER: [u8; 4] = [10, 0, 0, 1];

    #[test]
    fn a_groups_volume_is_the_flow_volume_of_its_flows() {
        let mut r = Replay::default();
        for i in 0..4 {
            r.active_open(i, 10, PEER, 80, 1_000, 0);
            r.active_close_to_time_wait(i, true);
        }
        r.passive_open(10, 11, [10, 0, 0, 2], 8080, 1_000, 0);
        r.passive_close(10);
        r.refused(20, 10, PEER, 81);
        r.refused(21, 12, PEER, 81);
        let snap = r.snapshot();
        let groups = group_flows(&snap.flows, |k, _| k.port, usize::MAX);
        assert_eq!(groups.len(), 3);
        for (port, g) in groups {
            let flows = snap.flows.iter().filter(|(k, _)| k.port == port);
            let want: u64 = flows.map(|(_, f)| flow_volume(f)).sum();
            assert!(want > 0);
            assert_eq!(g.volume(), want, "port {port}");
        }
    }

    #[test]
    fn active_open_counts_and_times_the_handshake() {
        let mut r = Replay::default();
        r.active_open(1, 100, PEER, 80, 250_000, 0);
        let s = r.snapshot();
        assert_eq!(s.transition(state::CLOSE, state::SYN_SENT), 1);
        assert_eq!(s.transition(state::SYN_SENT, state::ESTABLISHED), 1);
        assert_eq!(s.counter(counter::CONNECT_ATTEMPTS), 1);
        assert_eq!(s.counter(counter::ACTIVE_ESTABLISHED), 1);
        assert_eq!(s.counter(counter::TRANSITIONS), 2);
        let h = &s.hists[hist_kind::ACTIVE as usize];
        assert_eq!((h.count, h.max_ns), (1, 250_000));
        assert_eq!(s.hists[hist_kind::ACTIVE_RETRANS as usize].count, 0);
        assert_eq!(s.flows.len(), 1);
        assert_eq!(
            s.flows[0].0.port, 80,
            "active flows are keyed by remote port"
        );
        assert_eq!(s.flows[0].1.established, 1);
    }

    #[test]
    fn retransmitted_handshakes_are_kept_apart() {
        let mut r = Replay::default();
        r.active_open(1, 100, PEER, 80, 1_020_000_000, 1);
        r.passive_open(2, 200, PEER, 8080, 3_036_000_000, 2);
        let s = r.snapshot();
        assert_eq!(s.hists[hist_kind::ACTIVE_RETRANS as usize].count, 1);
        assert_eq!(s.hists[hist_kind::ACTIVE as usize].count, 0);
        assert_eq!(s.hists[hist_kind::PASSIVE_RETRANS as usize].count, 1);
        assert_eq!(s.counter(counter::ACTIVE_HANDSHAKE_RETRANS), 1);
        assert_eq!(s.counter(counter::PASSIVE_HANDSHAKE_RETRANS), 1);
        let passive = s.flows.iter().find(|(k, _)| k.dir == dir::PASSIVE).unwrap();
        assert_eq!(
            passive.0.port, 8080,
            "passive flows are keyed by local port"
        );
        assert_eq!(passive.1.retrans_total, 2);
        assert_eq!(passive.1.handshake_retrans, 1);
    }

    #[test]
    fn passive_open_uses_the_synack_rtt() {
        let mut r = Replay::default();
        r.passive_open(1, 7, PEER, 8080, 25_000, 0);
        let s = r.snapshot();
        assert_eq!(s.transition(state::LISTEN, state::SYN_RECV), 1);
        assert_eq!(s.counter(counter::PASSIVE_ESTABLISHED), 1);
        assert_eq!(s.hists[hist_kind::PASSIVE as usize].max_ns, 25_000);
        assert_eq!(s.counter(counter::CONNECT_ATTEMPTS), 0);
    }

    #[test]
    fn active_close_enters_time_wait_on_the_closing_side() {
        let mut r = Replay::default();
        r.active_open(1, 1, PEER, 80, 1000, 0);
        r.active_close_to_time_wait(1, true);
        r.passive_open(2, 2, PEER, 8080, 1000, 0);
        r.active_close_to_time_wait(2, false);
        let s = r.snapshot();
        assert_eq!(s.counter(counter::CLOSE_LOCAL_FIRST), 2);
        assert_eq!(
            s.closes(close::TIME_WAIT),
            1,
            "FIN already received: TIME_WAIT"
        );
        assert_eq!(
            s.closes(close::FIN_WAIT2_PARKED),
            1,
            "orphan parked in FIN_WAIT2"
        );
        assert_eq!(s.counter(counter::TIME_WAIT_BY_DIR + dir::ACTIVE as u32), 1);
        assert_eq!(
            s.counter(counter::TIME_WAIT_BY_DIR + dir::PASSIVE as u32),
            1
        );
        assert_eq!(s.transition(state::FIN_WAIT2, state::CLOSE), 2);
        let tw: u64 = s.flows.iter().map(|(_, f)| f.time_wait).sum();
        assert_eq!(tw, 2);
    }

    #[test]
    fn passive_close_goes_through_last_ack_without_time_wait() {
        let mut r = Replay::default();
        r.passive_open(1, 1, PEER, 8080, 1000, 0);
        r.passive_close(1);
        let s = r.snapshot();
        assert_eq!(s.counter(counter::CLOSE_PEER_FIRST), 1);
        assert_eq!(s.closes(close::LAST_ACK), 1);
        assert_eq!(s.transition(state::CLOSE_WAIT, state::LAST_ACK), 1);
        assert_eq!(
            s.closes(close::TIME_WAIT) + s.closes(close::FIN_WAIT2_PARKED),
            0
        );
        assert_eq!(s.flows[0].1.close_peer_first, 1);
    }

    #[test]
    fn simultaneous_close_ends_in_time_wait_via_closing() {
        let mut r = Replay::default();
        r.active_open(1, 1, PEER, 80, 1000, 0);
        r.simultaneous_close(1);
        let s = r.snapshot();
        assert_eq!(s.counter(counter::CLOSE_SIMULTANEOUS), 1);
        assert_eq!(s.transition(state::CLOSING, state::CLOSE), 1);
        assert_eq!(s.closes(close::TIME_WAIT), 1);
        assert_eq!(s.counter(counter::TIME_WAIT_BY_DIR + dir::ACTIVE as u32), 1);
    }

    #[test]
    fn resets_are_split_by_direction() {
        let mut r = Replay::default();
        r.active_open(1, 1, PEER, 80, 1000, 0);
        r.passive_open(2, 2, PEER, 8080, 1000, 0);
        // Abort with SO_LINGER 0: the tracepoint fires before sk_err is set.
        r.step(1, state::ESTABLISHED, state::CLOSE, 0, false, 0, None);
        // The other side receives the RST.
        r.step(
            2,
            state::ESTABLISHED,
            state::CLOSE,
            errno::ECONNRESET,
            false,
            0,
            None,
        );
        let s = r.snapshot();
        assert_eq!(s.closes(close::RESET_SENT), 1);
        assert_eq!(s.closes(close::RESET_RECEIVED), 1);
        assert_eq!(s.transition(state::ESTABLISHED, state::CLOSE), 2);
        assert_eq!(s.closes(close::TIME_WAIT), 0);
        let sent: u64 = s.flows.iter().map(|(_, f)| f.resets_sent).sum();
        let received: u64 = s.flows.iter().map(|(_, f)| f.resets_received).sum();
        assert_eq!((sent, received), (1, 1));
    }

    #[test]
    fn refused_connect_is_a_failure_not_a_reset() {
        let mut r = Replay::default();
        r.refused(1, 1, PEER, 81);
        let s = r.snapshot();
        assert_eq!(s.counter(counter::CONNECT_ATTEMPTS), 1);
        assert_eq!(s.closes(close::CONNECT_REFUSED), 1);
        assert_eq!(s.transition(state::SYN_SENT, state::CLOSE), 1);
        assert_eq!(s.closes(close::RESET_RECEIVED), 0);
        assert_eq!(s.flows[0].1.connect_failed, 1);
        assert_eq!(s.flows[0].1.resets_received, 0);
        assert_eq!(s.hists.iter().map(|h| h.count).sum::<u64>(), 0);
    }

    #[test]
    fn connect_failures_by_errno() {
        use tracer_common::account::classify_close;
        use tracer_common::close::*;
        use tracer_common::errno::*;
        use tracer_common::state::*;
        // (old state, sk_err, FIN received, local port, close kind)
        let cases = [
            (SYN_SENT, ETIMEDOUT, false, 40000, CONNECT_TIMEOUT),
            (SYN_SENT, EHOSTUNREACH, false, 40000, CONNECT_UNREACHABLE),
            (SYN_SENT, 0, false, 40000, CONNECT_ABORTED),
            // No local port ever assigned: EADDRNOTAVAIL, not an abort.
            (SYN_SENT, 0, false, 0, CONNECT_NO_LOCAL_PORT),
            (ESTABLISHED, ETIMEDOUT, false, 40000, close::TIMEOUT),
            (CLOSE_WAIT, EPIPE, true, 40000, RESET_RECEIVED),
            (FIN_WAIT2, ECONNRESET, false, 40000, RESET_RECEIVED),
            (SYN_RECV, 0, false, 40000, PASSIVE_FAILED),
            (LISTEN, 0, false, 40000, LISTENER_CLOSED),
        ];
        for (old, err, fin, lport, want) in cases {
            assert_eq!(
                classify_close(old, err, fin, lport),
                want,
                "{} err {err} fin {fin} lport {lport}",
                state_name(old)
            );
        }
    }

    #[test]
    fn buckets_are_contiguous_and_narrow() {
        let mut prev_high = 0;
        for i in 0..hist::BUCKETS - 1 {
            let lo = hist::bucket_low(i);
            let hi = hist::bucket_high(i);
            assert_eq!(
                lo,
                prev_high,
                "bucket {i} starts where {} ended",
                i.max(1) - 1
            );
            assert_eq!(hist::bucket(lo), i);
            assert_eq!(hist::bucket(hi - 1), i);
            if lo >= 32 {
                assert!(
                    (hi - lo) * 32 <= lo,
                    "bucket {i} is at most 1/32 of its value wide"
                );
            }
            prev_high = hi;
        }
        assert_eq!(hist::bucket(u64::MAX), hist::BUCKETS - 1);
        assert_eq!(hist::bucket(0), 0);
    }

    #[test]
    fn msb_matches_leading_zeros() {
        for v in [1u64, 2, 3, 31, 32, 33, 1 << 20, (1 << 40) + 5, u64::MAX] {
            assert_eq!(hist::msb(v), 63 - v.leading_zeros());
        }
    }

    #[test]
    fn quantiles_within_half_a_bucket() {
        let mut h = Histogram::default();
        // 100 samples: 1 ms .. 100 ms.
        for i in 1..=100u64 {
            h.record(i * 1_000_000);
        }
        for (q, want) in [(0.5, 50_000_000u64), (0.9, 90_000_000), (0.99, 99_000_000)] {
            let got = h.quantile(q).unwrap();
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err <= 1.0 / 64.0 + 1e-9, "q{q}: got {got}, want {want}");
        }
        assert_eq!(h.quantile(1.0), Some(100_000_000));
        assert_eq!(h.max_ns, 100_000_000);
        assert_eq!(h.mean_ns(), Some(50_500_000));
        assert_eq!(Histogram::default().quantile(0.5), None);
    }

    #[test]
    fn quantile_is_capped_by_exact_max() {
        // A lone sample at the bottom of its bucket: the midpoint would
        // overshoot, the exact max caps it.
        let low = hist::bucket_low(hist::bucket(1_000_000));
        let mut h = Histogram::default();
        h.record(low);
        h.record(low);
        assert_eq!(h.quantile(0.5), Some(low));
        // At the top of its bucket the midpoint is below the value.
        let top = hist::bucket_high(hist::bucket(1_000_000)) - 1;
        let mut h = Histogram::default();
        h.record(top);
        h.record(top);
        let q = h.quantile(0.5).unwrap();
        assert!(q < top && q >= low, "{q}");
        assert_eq!(h.quantile(1.0), Some(top), "the top rank is the exact max");
    }

    #[test]
    fn merge_adds_counts_and_keeps_max() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(10);
        b.record(1000);
        b.record(20);
        a.merge(&b);
        assert_eq!(a.count, 3);
        assert_eq!(a.sum_ns, 1030);
        assert_eq!(a.max_ns, 1000);
        assert_eq!(a.nonzero().map(|(_, _, n)| n).sum::<u64>(), 3);
    }

    #[test]
    fn addresses_decode() {
        let mut raw = [0u8; 16];
        raw[..4].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(endpoint(ip_from_raw(2, &raw), 80), "127.0.0.1:80");
        for a in ["0.0.0.0", "255.255.255.255", "10.20.3.40"] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(endpoint(ip, 65535), format!("{a}:65535"));
        }
        let v6: Ipv6Addr = "::1".parse().unwrap();
        assert_eq!(endpoint(ip_from_raw(10, &v6.octets()), 443), "[::1]:443");
        let mapped: Ipv6Addr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(ip_from_raw(10, &mapped.octets()).to_string(), "10.1.2.3");
    }

    #[test]
    fn grouping_orders_by_volume_and_truncates() {
        let key = |port: u16| FlowKey {
            port,
            family: 2,
            dir: dir::ACTIVE,
            ..Default::default()
        };
        let stats = |est: u64, tw: u64| FlowStats {
            established: est,
            time_wait: tw,
            handshake_count: est,
            handshake_sum_ns: est * 2000,
            handshake_max_ns: 3000,
            ..Default::default()
        };
        let flows = vec![
            (key(1), stats(1, 0)),
            (key(2), stats(5, 5)),
            (key(3), stats(2, 1)),
            (key(2), stats(1, 0)),
        ];
        let g = group_flows(&flows, |k, _| k.port, 2);
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].0, 2);
        assert_eq!(g[0].1.established, 6);
        assert_eq!(g[0].1.time_wait_entries, 5);
        assert_eq!(g[0].1.handshake_mean_us, Some(2.0));
        assert_eq!(g[0].1.handshake_max_us, Some(3.0));
        assert_eq!(g[1].0, 3);
    }

    #[test]
    fn names() {
        assert_eq!(state_name(state::FIN_WAIT2), "FIN_WAIT2");
        assert_eq!(state_name(99), "UNKNOWN");
        assert_eq!(close_kind_name(close::TIME_WAIT), "time_wait");
        assert_eq!(comm_str(b"curl\0\0\0"), "curl");
    }

    #[test]
    fn payload_bytes_leave_out_syn_and_fin() {
        use tracer_common::account::payload_bytes;
        use tracer_common::close::*;
        use tracer_common::dir::{ACTIVE, PASSIVE};
        // (side, how it closed, FIN received, bytes_received, bytes_acked) →
        // (payload received, payload sent)
        let cases = [
            // Raw values read on a real loopback connection: the client sent
            // 100 bytes and got 50, closed first and was parked in FIN_WAIT2;
            // the server closed after the client's FIN (LAST_ACK → CLOSE).
            ((ACTIVE, FIN_WAIT2_PARKED, false, 50, 102), (50, 100)),
            ((PASSIVE, LAST_ACK, true, 101, 51), (100, 50)),
            // TIME_WAIT after the peer's FIN: both FINs in sequence space.
            ((ACTIVE, TIME_WAIT, true, 51, 102), (50, 100)),
            // Abort: no FIN was acked; the SYN still counts on the active side.
            ((ACTIVE, RESET_SENT, false, 7, 1), (7, 0)),
            ((PASSIVE, RESET_RECEIVED, false, 0, 0), (0, 0)),
        ];
        for ((d, kind, fin, received, acked), want) in cases {
            assert_eq!(
                payload_bytes(d, kind, fin, received, acked),
                want,
                "{}",
                close_kind_name(kind)
            );
        }
    }
}
