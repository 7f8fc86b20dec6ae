//! The summary report: built from a kernel snapshot and sock_diag
//! populations, rendered as text or as JSON (schema in README).

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use serde::Serialize;
use tracer_common::{close, counter, dir, hist_kind, state, FlowKey, FlowStats};

use crate::{
    diag::{DiagSocket, Population},
    model::{
        comm_str, dir_name, endpoint, group_flows, ip_from_raw, state_name, GroupStats, Histogram,
        Snapshot,
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
    /// Current TIME_WAIT population by peer, top N.
    pub now_by_peer: Vec<PopulationRow>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PopulationRow {
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
    #[serde(flatten)]
    pub stats: GroupStats,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PortRow {
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

/// The tracer's own health: every loss is counted here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Health {
    pub transitions_counted: u64,
    /// Events the ring buffer could not take (live mode). Aggregates stay exact.
    pub events_dropped: u64,
    /// Sockets whose earlier transitions were not seen: LRU evictions, or sockets
    /// older than the tracer. Their handshake latency / time-in-state is unknown.
    pub inflight_missing: u64,
    pub inflight_insert_failed: u64,
    /// Flow-table overflow: those transitions are in the totals but not in the top-N tables.
    pub flow_table_full: u64,
    pub filtered_out: u64,
    pub non_tcp_ignored: u64,
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
    pub transitions: Vec<TransitionCount>,
    pub top_peers: Vec<PeerRow>,
    pub top_local_ports: Vec<PortRow>,
    pub top_processes: Vec<ProcessRow>,
    pub tracer: Health,
}

/// Inputs besides the snapshot.
pub struct Context<'a> {
    pub duration_s: f64,
    pub filter: String,
    pub top: usize,
    /// Sockets from sock_diag, already filtered.
    pub sockets: &'a [DiagSocket],
    /// net.ipv4.ip_local_port_range.
    pub ephemeral: (u16, u16),
}

fn peer_label(k: &FlowKey) -> String {
    let ip = ip_from_raw(k.family, &k.raddr);
    if k.dir == dir::ACTIVE {
        endpoint(ip, k.port)
    } else {
        format!("{ip} -> :{}", k.port)
    }
}

/// How a TIME_WAIT socket is grouped: the remote service when the local port
/// is ephemeral (this host connected out), else client address → local port.
fn population_label(s: &DiagSocket, eph: (u16, u16)) -> String {
    let unmap = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let in_eph = |p: u16| p >= eph.0 && p <= eph.1;
    if in_eph(s.sport) && !in_eph(s.dport) {
        endpoint(unmap(s.dst), s.dport)
    } else {
        format!("{} -> :{}", unmap(s.dst), s.sport)
    }
}

pub fn build(snap: &Snapshot, ctx: &Context) -> Summary {
    let c = |i: u32| snap.counter(i);
    let k = |kind: u8| snap.closes(kind);
    let h = |i: u32| &snap.hists[i as usize];

    let mut population = Population::default();
    let mut by_peer: BTreeMap<String, u64> = BTreeMap::new();
    for s in ctx.sockets {
        population.add(s);
        if s.state == state::TIME_WAIT {
            *by_peer
                .entry(population_label(s, ctx.ephemeral))
                .or_default() += 1;
        }
    }
    let mut now_by_peer: Vec<PopulationRow> = by_peer
        .into_iter()
        .map(|(peer, count)| PopulationRow { peer, count })
        .collect();
    now_by_peer.sort_by(|a, b| b.count.cmp(&a.count).then(a.peer.cmp(&b.peer)));
    now_by_peer.truncate(ctx.top);

    let mut transitions = Vec::new();
    for (o, row) in snap.transitions.iter().enumerate() {
        for (n, count) in row.iter().enumerate() {
            if *count > 0 {
                transitions.push(TransitionCount {
                    from: state_name(o as u8),
                    to: state_name(n as u8),
                    count: *count,
                });
            }
        }
    }
    transitions.sort_by(|a, b| b.count.cmp(&a.count).then(a.from.cmp(b.from)));

    let flows = &snap.flows;
    let top_peers = group_flows(flows, |k, _| (k.dir, k.family, k.raddr, k.port), ctx.top)
        .into_iter()
        .map(|((d, family, raddr, port), stats)| PeerRow {
            peer: peer_label(&FlowKey {
                raddr,
                family,
                port,
                dir: d,
                ..Default::default()
            }),
            direction: dir_name(d),
            stats,
        })
        .collect();
    let top_local_ports = group_flows(
        flows,
        |k, _| (k.dir != dir::ACTIVE).then_some(k.port),
        ctx.top,
    )
    .into_iter()
    .map(|(local_port, stats)| PortRow { local_port, stats })
    .collect();
    let top_processes = group_flows(
        flows,
        |k: &FlowKey, f: &FlowStats| {
            (
                k.tgid,
                if k.tgid == 0 {
                    String::new()
                } else {
                    comm_str(&f.comm)
                },
            )
        },
        ctx.top,
    )
    .into_iter()
    .map(|((pid, comm), stats)| ProcessRow {
        pid: (pid != 0).then_some(pid),
        comm: if pid == 0 {
            "(unknown owner)".into()
        } else {
            comm
        },
        stats,
    })
    .collect();

    let failed = [
        close::CONNECT_REFUSED,
        close::CONNECT_TIMEOUT,
        close::CONNECT_UNREACHABLE,
        close::CONNECT_ABORTED,
    ];
    let connect_failed = snap.transition(state::SYN_SENT, state::CLOSE);
    Summary {
        schema: SCHEMA,
        duration_s: ctx.duration_s,
        filter: ctx.filter.clone(),
        active_handshake: Handshakes::new(h(hist_kind::ACTIVE), h(hist_kind::ACTIVE_RETRANS)),
        passive_handshake: Handshakes::new(h(hist_kind::PASSIVE), h(hist_kind::PASSIVE_RETRANS)),
        connects: Connects {
            attempts: c(counter::CONNECT_ATTEMPTS),
            established: c(counter::ACTIVE_ESTABLISHED),
            failed: connect_failed,
            refused: k(close::CONNECT_REFUSED),
            timed_out: k(close::CONNECT_TIMEOUT),
            unreachable: k(close::CONNECT_UNREACHABLE),
            aborted: k(close::CONNECT_ABORTED),
            other: connect_failed.saturating_sub(failed.iter().map(|f| k(*f)).sum()),
        },
        accepts: Accepts {
            established: c(counter::PASSIVE_ESTABLISHED),
            failed: k(close::PASSIVE_FAILED),
        },
        closes: Closes {
            closed_here_first: c(counter::CLOSE_LOCAL_FIRST),
            closed_by_peer_first: c(counter::CLOSE_PEER_FIRST),
            simultaneous: c(counter::CLOSE_SIMULTANEOUS),
            passive_close_completed: k(close::LAST_ACK),
            resets_sent: k(close::RESET_SENT),
            resets_received: k(close::RESET_RECEIVED),
            timeouts: k(close::TIMEOUT),
        },
        time_wait: TimeWait {
            entered: k(close::TIME_WAIT) + k(close::FIN_WAIT2_PARKED),
            direct: k(close::TIME_WAIT),
            via_fin_wait2: k(close::FIN_WAIT2_PARKED),
            entered_by_side: BySide {
                active_opened: c(counter::TIME_WAIT_BY_DIR + dir::ACTIVE as u32),
                passive_opened: c(counter::TIME_WAIT_BY_DIR + dir::PASSIVE as u32),
                unknown: c(counter::TIME_WAIT_BY_DIR + dir::UNKNOWN as u32),
            },
            now: population,
            now_by_peer,
        },
        transitions,
        top_peers,
        top_local_ports,
        top_processes,
        tracer: Health {
            transitions_counted: c(counter::TRANSITIONS),
            events_dropped: c(counter::RINGBUF_DROPS),
            inflight_missing: c(counter::INFLIGHT_MISSING),
            inflight_insert_failed: c(counter::INFLIGHT_INSERT_FAILED),
            flow_table_full: c(counter::FLOW_TABLE_FULL),
            filtered_out: c(counter::FILTERED_OUT),
            non_tcp_ignored: c(counter::NON_TCP),
        },
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
        "  {:<40} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7} {:>9} {:>6}",
        first, "ESTAB", "FAILED", "TW_IN", "RESETS", "HERE1ST", "PEER1ST", "HS_AVG_MS", "RETX"
    );
}

fn group_line(out: &mut String, name: &str, g: &GroupStats) {
    let _ = writeln!(
        out,
        "  {:<40} {:>6} {:>6} {:>6} {:>6} {:>7} {:>7} {:>9} {:>6}",
        name,
        g.established,
        g.connect_failed,
        g.time_wait_entries,
        g.resets,
        g.closed_here_first,
        g.closed_by_peer_first,
        ms(g.handshake_mean_us),
        g.handshakes_with_retransmits
    );
}

/// The human-readable report.
pub fn render_text(s: &Summary) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "TCP state summary: {:.1} s, filter: {}",
        s.duration_s, s.filter
    );
    let _ = writeln!(
        o,
        "\nHandshake latency (ms; percentiles from a log-linear histogram, ±1.6%)"
    );
    let _ = writeln!(
        o,
        "  {:<24} {:>8} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "", "COUNT", "P50", "P90", "P99", "MAX", "MEAN"
    );
    latency_line(&mut o, "active (connect)", &s.active_handshake.all);
    latency_line(&mut o, "  clean", &s.active_handshake.clean);
    latency_line(
        &mut o,
        "  with SYN retransmits",
        &s.active_handshake.retransmitted,
    );
    latency_line(
        &mut o,
        "passive (accept, SYN-ACK RTT)",
        &s.passive_handshake.all,
    );
    latency_line(&mut o, "  clean", &s.passive_handshake.clean);
    latency_line(
        &mut o,
        "  with SYN-ACK retransmits",
        &s.passive_handshake.retransmitted,
    );
    if s.active_handshake.retransmitted.count + s.passive_handshake.retransmitted.count > 0 {
        let _ = writeln!(
            o,
            "  note: each retransmitted SYN/SYN-ACK adds >= 1 s (then 2 s, 4 s...): tails near 1 s / 3 s are retransmits"
        );
    }
    let cn = &s.connects;
    let _ = writeln!(
        o,
        "\nConnects: {} attempted, {} established, {} failed (refused {}, timed out {}, unreachable {}, aborted {}, other {})",
        cn.attempts, cn.established, cn.failed, cn.refused, cn.timed_out, cn.unreachable, cn.aborted, cn.other
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
    for r in &tw.now_by_peer {
        let _ = writeln!(o, "    {:<46} {:>8}", r.peer, r.count);
    }
    if !s.top_peers.is_empty() {
        let _ = writeln!(o, "\nTop peers");
        group_header(&mut o, "PEER");
        for r in &s.top_peers {
            group_line(&mut o, &r.peer, &r.stats);
        }
        let _ = writeln!(o, "\nTop local ports");
        group_header(&mut o, "LOCAL PORT");
        for r in &s.top_local_ports {
            let name = r
                .local_port
                .map_or("(outgoing, ephemeral)".to_string(), |p| p.to_string());
            group_line(&mut o, &name, &r.stats);
        }
        let _ = writeln!(o, "\nTop processes");
        group_header(&mut o, "PID/COMM");
        for r in &s.top_processes {
            let name = match r.pid {
                Some(p) => format!("{p}/{}", r.comm),
                None => r.comm.clone(),
            };
            group_line(&mut o, &name, &r.stats);
        }
    }
    let _ = writeln!(o, "\nTransitions");
    for t in &s.transitions {
        let _ = writeln!(
            o,
            "  {:<26} {:>10}",
            format!("{}->{}", t.from, t.to),
            t.count
        );
    }
    let h = &s.tracer;
    let _ = writeln!(
        o,
        "\nTracer: {} transitions counted, {} events dropped, {} sockets seen mid-life, {} in-flight insert failures, {} flow-table overflows, {} filtered out",
        h.transitions_counted,
        h.events_dropped,
        h.inflight_missing,
        h.inflight_insert_failed,
        h.flow_table_full,
        h.filtered_out
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Replay;
    use tracer_common::state::*;

    fn ctx(sockets: &[DiagSocket]) -> Context<'_> {
        Context {
            duration_s: 1.0,
            filter: "all TCP".into(),
            top: 10,
            sockets,
            ephemeral: (32768, 60999),
        }
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
            state: TIME_WAIT,
            src: "10.0.0.9".parse().unwrap(),
            sport: 40000,
            dst: "10.0.0.1".parse().unwrap(),
            dport: 80,
            cookie: 1,
            inode: 0,
            uid: 0,
        };
        let s = build(&snap, &ctx(std::slice::from_ref(&tw_sock)));
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
}
