//! The server half of the handshake and connects still in flight, read from
//! sock_diag in every network namespace at report time:
//!
//! - every listening socket with its accept queue now (idiag_rqueue), its
//!   limit (idiag_wqueue: the listen() backlog capped by somaxconn), and the
//!   SYNs / final ACKs the kernel refused on it (`sk_drops`, which
//!   `tcp_listendrop()` increments on the listener itself and sock_diag
//!   reports as SK_MEMINFO_DROPS), with its owner from /proc;
//! - SYN_SENT sockets grouped per (namespace, destination), with the SYNs
//!   retransmitted so far (the retransmit timer's count).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tracer_common::{state, ListenerKey, ListenerStats};

use crate::{
    filter::FilterSpec,
    host::diag::{self, DiagDetail},
    host::procs,
    model,
};

/// The sysctls that bound a listener's queues, per namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListenSysctls {
    /// net.core.somaxconn: the cap on every listen() backlog.
    pub somaxconn: Option<u32>,
    /// net.ipv4.tcp_max_syn_backlog: the SYN (request) queue limit.
    pub tcp_max_syn_backlog: Option<u32>,
    /// net.ipv4.tcp_syncookies: 0 off, 1 when the SYN queue overflows, 2 always.
    pub tcp_syncookies: Option<u32>,
}

impl ListenSysctls {
    /// Read in the calling thread's network namespace.
    pub fn read() -> Self {
        let get = |path: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/{path}"))
                .ok()
                .and_then(|v| v.trim().parse().ok())
        };
        ListenSysctls {
            somaxconn: get("core/somaxconn"),
            tcp_max_syn_backlog: get("ipv4/tcp_max_syn_backlog"),
            tcp_syncookies: get("ipv4/tcp_syncookies"),
        }
    }
}

/// One listening socket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ListenerRow {
    pub netns: u32,
    pub local: String,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    /// Connections waiting for accept() now (`ss -ltn` Recv-Q).
    pub accept_queue: u32,
    /// The accept queue's limit (`ss -ltn` Send-Q): min(backlog, somaxconn).
    pub accept_queue_limit: u32,
    /// SYNs and final ACKs dropped on this listener since listen()
    /// (`sk_drops`; the host-wide ListenDrops counts the same events).
    pub drops: u64,
    /// SYN-ACKs retransmitted on this listening port while the tracer ran
    /// (`tcp:tcp_retransmit_synack`; the namespace's TcpExtTCPSynRetrans
    /// counts them with the SYN retransmits of its connects).
    pub synack_retransmits: u64,
    /// Handshakes completed into the accept queue on this port while the
    /// tracer ran (its children's SYN_RECV → ESTABLISHED; not the
    /// application's accept() calls, which no tracepoint shows).
    pub accepts: u64,
    #[serde(skip)]
    pub inode: u32,
    #[serde(skip)]
    pub port: u16,
}

impl ListenerRow {
    /// Full now, or refused something.
    pub fn in_trouble(&self) -> bool {
        self.drops > 0 || self.accept_queue > self.accept_queue_limit
    }
}

/// SYN_SENT sockets to one destination.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct InFlightRow {
    pub netns: u32,
    pub peer: String,
    /// Connects to it in SYN_SENT now.
    pub connects: u64,
    /// SYN retransmits so far, summed over them, and the most of any one.
    pub syn_retransmits: u64,
    pub syn_retransmits_max: u64,
    /// The soonest next retransmit (or timeout), ms.
    pub next_timer_ms: Option<u64>,
    /// Age of the oldest and youngest of them, s (since connect(), from the
    /// kernel side's per-socket birth time); null when none is known (the
    /// connect predates the tracer, or the namespace was read without it).
    pub oldest_s: Option<f64>,
    pub youngest_s: Option<f64>,
    /// How many of `connects` have a known age.
    pub ages_known: u64,
}

/// What the report shows of listeners and connects in flight.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Listeners {
    pub listeners: Vec<ListenerRow>,
    pub connects_in_flight: Vec<InFlightRow>,
    /// Per namespace read.
    pub listen_sysctls: BTreeMap<u32, ListenSysctls>,
    /// SYN-ACK retransmits on every listener while the tracer ran (those of
    /// listeners closed since included), under the filters.
    pub synack_retransmits_total: u64,
}

impl Listeners {
    /// One `WARNING:` line per listener that is full or dropped anything.
    pub fn warnings(&self) -> Vec<String> {
        self.listeners
            .iter()
            .filter(|l| l.in_trouble())
            .map(|l| warning(l, self.listen_sysctls.get(&l.netns)))
            .collect()
    }
}

fn opt(v: Option<u32>) -> String {
    v.map_or("?".into(), |v| v.to_string())
}

fn warning(l: &ListenerRow, s: Option<&ListenSysctls>) -> String {
    let s = s.cloned().unwrap_or_default();
    format!(
        "WARNING: listener {} ({}) accept queue {} of {}, {} packets dropped since listen() \
         (full queue, or refused for a half-open handshake): \
         listen() backlog {} (capped by net.core.somaxconn {}), tcp_max_syn_backlog {}, \
         tcp_syncookies {} (netns {})",
        l.local,
        l.comm.as_deref().unwrap_or("?"),
        l.accept_queue,
        l.accept_queue_limit,
        l.drops,
        l.accept_queue_limit,
        opt(s.somaxconn),
        opt(s.tcp_max_syn_backlog),
        opt(s.tcp_syncookies),
        l.netns,
    )
}

/// Socket cookie → age in ns of the connects whose birth the kernel side saw.
pub type Ages = HashMap<u64, u64>;

/// Fold one namespace's sock_diag answer in.
pub fn add_namespace(
    out: &mut Listeners,
    netns: u32,
    sockets: &[DiagDetail],
    ages: &Ages,
    f: &FilterSpec,
) {
    let mut flight: BTreeMap<String, InFlightRow> = BTreeMap::new();
    for d in sockets {
        let s = &d.socket;
        match s.state {
            state::LISTEN if listener_matches(f, d) => out.listeners.push(ListenerRow {
                netns,
                local: model::endpoint(s.src, s.sport),
                accept_queue: d.recv_queue,
                accept_queue_limit: d.send_queue,
                drops: d.drops.into(),
                inode: s.inode,
                port: s.sport,
                ..Default::default()
            }),
            state::SYN_SENT if f.matches_socket(s) => {
                let peer = model::endpoint(s.dst, s.dport);
                let row = flight.entry(peer.clone()).or_insert(InFlightRow {
                    netns,
                    peer,
                    ..Default::default()
                });
                row.connects += 1;
                row.syn_retransmits += u64::from(d.retransmits);
                row.syn_retransmits_max = row.syn_retransmits_max.max(d.retransmits.into());
                row.next_timer_ms = merge(row.next_timer_ms, d.timer_ms, u64::min);
                if let Some(age) = ages.get(&s.cookie).map(|ns| *ns as f64 / 1e9) {
                    row.ages_known += 1;
                    row.oldest_s = merge(row.oldest_s, Some(age), f64::max);
                    row.youngest_s = merge(row.youngest_s, Some(age), f64::min);
                }
            }
            _ => {}
        }
    }
    out.connects_in_flight.extend(flight.into_values());
}

fn merge<T>(a: Option<T>, b: Option<T>, pick: fn(T, T) -> T) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(pick(a, b)),
        (a, b) => a.or(b),
    }
}

fn listener_matches(f: &FilterSpec, d: &DiagDetail) -> bool {
    let port = d.socket.sport;
    let v6 = d.socket.src.is_ipv6();
    f.port.is_none_or(|p| p == port)
        && f.lport.is_none_or(|p| p == port)
        && f.rport.is_none()
        && f.family
            .is_none_or(|fam| (fam == crate::filter::Family::Ipv6) == v6)
}

/// Add the kernel side's per-port figures (`LISTENER_STATS`, summed over
/// CPUs) to the rows: every row of a port in its namespace (one per
/// address it listens on) shows that port's figures.
pub fn add_kernel_stats(
    out: &mut Listeners,
    stats: &BTreeMap<ListenerKey, ListenerStats>,
    synack_total: u64,
) {
    out.synack_retransmits_total = synack_total;
    for r in &mut out.listeners {
        let key = ListenerKey {
            netns: r.netns,
            port: r.port,
            _pad: 0,
        };
        if let Some(s) = stats.get(&key) {
            r.synack_retransmits = s.synack_retransmits;
            r.accepts = s.accepts;
        }
    }
}

/// The sock_diag states read.
pub fn states() -> u32 {
    diag::states(&[state::LISTEN, state::SYN_SENT])
}

/// One namespace's share of the population's sock_diag dump (see
/// `population::read_all`): its sockets in `states()`, with the kernel
/// side's state where it was readable, and its queue sysctls.
#[derive(Clone, Debug, Default)]
pub struct Namespace {
    pub netns: u32,
    pub sockets: Vec<DiagDetail>,
    pub sysctls: ListenSysctls,
}

/// The listeners and connects in flight of the namespaces read through
/// sock_diag; those that could not be (already in the population's
/// coverage) contribute no rows. `now_ns` is CLOCK_MONOTONIC.
pub fn of(read: &[Namespace], f: &FilterSpec, now_ns: u64) -> Listeners {
    let mut out = Listeners::default();
    for ns in read {
        add_namespace(
            &mut out,
            ns.netns,
            &ns.sockets,
            &ages(&ns.sockets, now_ns),
            f,
        );
        out.listen_sysctls.insert(ns.netns, ns.sysctls.clone());
    }
    resolve_owners(&mut out.listeners);
    sort(&mut out);
    out
}

/// Ages of the connects whose birth the kernel side saw.
fn ages(sockets: &[DiagDetail], now_ns: u64) -> Ages {
    sockets
        .iter()
        .filter(|d| d.socket.state == state::SYN_SENT)
        .filter_map(|d| Some((d.socket.cookie, d.kernel_state?.ts_birth)))
        .filter(|(_, birth)| *birth != 0)
        .map(|(c, birth)| (c, now_ns.saturating_sub(birth)))
        .collect()
}

fn resolve_owners(rows: &mut [ListenerRow]) {
    let inodes: Vec<u32> = rows.iter().map(|l| l.inode).filter(|i| *i != 0).collect();
    let owners = procs::socket_owners(&inodes);
    for l in rows {
        if let Some(o) = owners.get(&l.inode) {
            l.pid = Some(o.tgid);
            l.comm = Some(model::comm_str(&o.comm));
        }
    }
}

/// Troubled listeners and the most connects first.
fn sort(out: &mut Listeners) {
    out.listeners.sort_by(|a, b| {
        (b.drops, b.accept_queue, a.netns, &a.local).cmp(&(
            a.drops,
            a.accept_queue,
            b.netns,
            &b.local,
        ))
    });
    out.connects_in_flight
        .sort_by(|a, b| (b.connects, a.netns, &a.peer).cmp(&(a.connects, b.netns, &b.peer)));
}

/// The report's Listeners and Connects-in-flight sections.
pub fn render(o: &mut String, l: &Listeners) {
    use std::fmt::Write as _;
    let _ = writeln!(o, "\nListeners (queues and drops: sock_diag now; SYN-ACK retransmits, accepts: during the run)");
    if l.listeners.is_empty() {
        let _ = writeln!(o, "  none");
    }
    for r in &l.listeners {
        let owner = match (r.pid, &r.comm) {
            (Some(p), Some(c)) => format!("{c}/{p}"),
            _ => "?".into(),
        };
        let _ = writeln!(
            o,
            "  {:<28} {:<20} accept queue {:>5} of {:<5} drops {:>6}  synack retransmits {:>6}  accepts {:>6}  netns {}",
            r.local,
            owner,
            r.accept_queue,
            r.accept_queue_limit,
            r.drops,
            r.synack_retransmits,
            r.accepts,
            r.netns
        );
    }
    let _ = writeln!(
        o,
        "  SYN-ACK retransmits on every listener during the run: {}",
        l.synack_retransmits_total
    );
    for w in l.warnings() {
        let _ = writeln!(o, "  {w}");
    }
    let _ = writeln!(o, "\nConnects in flight (SYN_SENT now)");
    if l.connects_in_flight.is_empty() {
        let _ = writeln!(o, "  none");
    }
    for r in &l.connects_in_flight {
        let _ = writeln!(
            o,
            "  {} connects to {} in SYN_SENT{}, {} SYN retransmits (at most {} each), next timer in {} ms  netns {}",
            r.connects,
            r.peer,
            age_text(r),
            r.syn_retransmits,
            r.syn_retransmits_max,
            r.next_timer_ms.map_or("?".into(), |v| v.to_string()),
            r.netns
        );
    }
}

/// " for 3.2 s" (all of one age), " for 1.0-3.2 s", "" when unknown.
fn age_text(r: &InFlightRow) -> String {
    match (r.youngest_s, r.oldest_s) {
        (Some(y), Some(o)) if o - y < 0.05 => format!(" for {o:.1} s"),
        (Some(y), Some(o)) => format!(" for {y:.1}-{o:.1} s"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::diag::DiagSocket;
    use std::net::{IpAddr, Ipv4Addr};

    fn sock(state: u8, sport: u16, dport: u16, retrans: u8, q: (u32, u32, u32)) -> DiagDetail {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        DiagDetail {
            socket: DiagSocket {
                state,
                src: ip,
                sport,
                dst: ip,
                dport,
                cookie: 0,
                inode: 0,
                uid: 0,
            },
            recv_queue: q.0,
            send_queue: q.1,
            drops: q.2,
            retransmits: retrans,
            timer_ms: Some(1000 + u64::from(sport)),
            kernel_state: None,
        }
    }

    #[test]
    fn folds_listeners_and_groups_connects_per_destination() {
        let mut l = Listeners::default();
        let socks = [
            sock(state::LISTEN, 80, 0, 0, (2, 1, 16)),
            sock(state::LISTEN, 81, 0, 0, (0, 128, 0)),
            sock(state::SYN_SENT, 40000, 80, 2, (0, 0, 0)),
            sock(state::SYN_SENT, 40001, 80, 3, (0, 0, 0)),
            sock(state::SYN_SENT, 40002, 81, 0, (0, 0, 0)),
        ];
        let ages = Ages::from([(0, 3_200_000_000)]);
        add_namespace(&mut l, 7, &socks, &ages, &FilterSpec::default());
        sort(&mut l);
        assert_eq!(l.listeners.len(), 2);
        assert_eq!(
            (l.listeners[0].local.as_str(), l.listeners[0].drops),
            ("10.0.0.1:80", 16)
        );
        assert!(l.listeners[0].in_trouble() && !l.listeners[1].in_trouble());
        let f = &l.connects_in_flight[0];
        assert_eq!(
            (f.peer.as_str(), f.connects, f.syn_retransmits),
            ("10.0.0.1:80", 2, 5)
        );
        assert_eq!((f.syn_retransmits_max, f.next_timer_ms), (3, Some(41000)));
        assert_eq!(l.connects_in_flight[1].connects, 1);
        // Every test socket has cookie 0: each connect has the known age.
        assert_eq!(
            (f.ages_known, f.oldest_s, f.youngest_s),
            (2, Some(3.2), Some(3.2))
        );
        let mut text = String::new();
        render(&mut text, &l);
        assert!(text.contains("2 connects to 10.0.0.1:80 in SYN_SENT for 3.2 s, 5 SYN retransmits"));
        let w = l.warnings();
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("WARNING: listener 10.0.0.1:80 (?) accept queue 2 of 1, 16"));
        assert!(w[0].contains("somaxconn ?"));
    }

    #[test]
    fn kernel_figures_go_to_every_row_of_their_port_and_namespace() {
        let mut l = Listeners::default();
        let socks = [
            sock(state::LISTEN, 80, 0, 0, (0, 1, 0)),
            sock(state::LISTEN, 81, 0, 0, (0, 1, 0)),
        ];
        add_namespace(&mut l, 7, &socks, &Ages::new(), &FilterSpec::default());
        add_namespace(&mut l, 8, &socks[..1], &Ages::new(), &FilterSpec::default());
        let key = |netns, port| ListenerKey {
            netns,
            port,
            _pad: 0,
        };
        let stats = BTreeMap::from([
            (
                key(7, 80),
                ListenerStats {
                    synack_retransmits: 3,
                    accepts: 5,
                },
            ),
            (
                key(9, 80),
                ListenerStats {
                    synack_retransmits: 1,
                    accepts: 1,
                },
            ),
        ]);
        add_kernel_stats(&mut l, &stats, 4);
        let fig = |netns, port| {
            let r = l
                .listeners
                .iter()
                .find(|r| r.netns == netns && r.port == port)
                .unwrap();
            (r.synack_retransmits, r.accepts)
        };
        assert_eq!(
            (fig(7, 80), fig(7, 81), fig(8, 80)),
            ((3, 5), (0, 0), (0, 0))
        );
        assert_eq!(l.synack_retransmits_total, 4, "closed listeners' too");
        let mut text = String::new();
        render(&mut text, &l);
        assert!(
            text.contains("synack retransmits      3  accepts      5  netns 7"),
            "{text}"
        );
    }

    #[test]
    fn listener_filter_is_by_local_port() {
        let mut l = Listeners::default();
        let f = FilterSpec {
            lport: Some(81),
            ..Default::default()
        };
        let socks = [
            sock(state::LISTEN, 80, 0, 0, (0, 1, 0)),
            sock(state::LISTEN, 81, 0, 0, (0, 1, 0)),
        ];
        add_namespace(&mut l, 1, &socks, &Ages::new(), &f);
        assert_eq!(l.listeners.len(), 1);
        assert_eq!(l.listeners[0].local, "10.0.0.1:81");
    }
}
