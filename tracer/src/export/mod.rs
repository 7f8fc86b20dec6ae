//! Prometheus exporter: the in-kernel aggregates and the sock_diag
//! population, read at each scrape and encoded with `prometheus-client`
//! (OpenMetrics text; the classic Prometheus text format is derived from it
//! for clients that do not ask for OpenMetrics).
//!
//! Every metric is named `tcp_tracer_*`; counters end in `_total`, durations
//! are in seconds. Per-peer (and per-namespace) series are bounded and
//! re-ranked at every scrape by recent activity: each label's score is its
//! volume since the last scrape plus half its previous score; the `top_peers`
//! labels with the highest scores have a series, a label whose score drops
//! to 0 (quiet for a few scrapes) or below a newcomer's gives its series up.
//! A series starts at its label's counts since the previous scrape, and
//! `peer="other"` is the total minus the labelled series: what leaves a
//! series moves into `other`, so every series is monotonic, the sum over the
//! label equals the host-wide total, and a host with a million peers exports
//! at most `top_peers + 1` series per per-peer metric.

pub mod serve;
pub mod webconfig;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::Mutex,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet},
    metrics::MetricType,
    registry::{Registry, Unit},
};
use tracer_common::{hist, hist_kind};

use crate::{
    host::diag::Population,
    model::{flow_netns, group_of, state_name, GroupStats, Histogram, Snapshot},
    probe::RunStats,
    report::{Coverage, Summary},
};

pub const PREFIX: &str = "tcp_tracer";

/// Handshake buckets (seconds): loopback (tens of µs) to SYN retransmits
/// (≈1 s per retransmit, then 3 s, 7 s, 15 s in total).
pub const HANDSHAKE_BOUNDS_S: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 1.5, 3.5, 7.5, 15.5, 31.5,
];

/// Connection lifetime buckets (seconds).
pub const LIFETIME_BOUNDS_S: &[f64] = &[
    0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0, 86400.0,
];

/// Cumulative Prometheus buckets from a kernel histogram. A kernel bucket
/// counts toward `le=b` when every value it can hold is ≤ b; the one
/// straddling b (kernel buckets are 1/64 of an octave) counts toward the next
/// bound. So a sample up to 1.6 % below a bound may show one bucket higher:
/// the rounding never under-reports a latency. `+Inf` holds the exact count.
pub fn prom_buckets(h: &Histogram, bounds_s: &[f64]) -> Vec<(f64, u64)> {
    let mut out = Vec::with_capacity(bounds_s.len() + 1);
    for &b in bounds_s {
        let b_ns = (b * 1e9).round() as u64;
        let n: u64 = h
            .buckets
            .iter()
            .enumerate()
            // The last bucket is open-ended: only +Inf holds it.
            .filter(|(i, _)| *i + 1 < hist::BUCKETS && hist::bucket_high(*i) <= b_ns + 1)
            .map(|(_, n)| n)
            .sum();
        out.push((b, n));
    }
    out.push((f64::INFINITY, h.count));
    out
}

/// The per-label counters the exporter exports and `other` absorbs.
const COUNTED: [fn(&mut GroupStats) -> &mut u64; 6] = [
    |g| &mut g.established,
    |g| &mut g.connect_failed,
    |g| &mut g.time_wait_entries,
    |g| &mut g.resets,
    |g| &mut g.handshakes_with_retransmits,
    |g| &mut g.retransmits,
];

/// `f(acc_field, g_field)` over the counted fields.
fn each_counted(acc: &mut GroupStats, g: &GroupStats, f: impl Fn(u64, u64) -> u64) {
    let mut g = g.clone();
    for field in COUNTED {
        let v = *field(&mut g);
        let a = field(acc);
        *a = f(*a, v);
    }
}

/// A group with only the `COUNTED` fields set.
fn from_counts(c: &[u64; COUNTED.len()]) -> GroupStats {
    let mut g = GroupStats::default();
    for (field, v) in COUNTED.iter().zip(c) {
        *field(&mut g) = *v;
    }
    g
}

/// Labels with their own series, re-ranked at each scrape by recent
/// activity (see the module doc): at most `max` labels, the rest in `other`.
#[derive(Debug, Default)]
pub struct PeerSlots {
    max: usize,
    /// Every label's cumulative counts at the previous scrape (the
    /// `COUNTED` fields only: one entry per breakdown row at most).
    prev: HashMap<String, [u64; COUNTED.len()]>,
    /// Recent activity: halved at each scrape, plus the scrape's volume.
    score: HashMap<String, u64>,
    /// Labels with a series, and the values exported for them.
    slots: BTreeMap<String, GroupStats>,
    /// `other` has been exported (it stays, so its counter never vanishes).
    other_shown: bool,
}

impl PeerSlots {
    pub fn new(max: usize) -> Self {
        PeerSlots {
            max,
            ..Default::default()
        }
    }

    /// One scrape: `groups` are the labels' cumulative counts, `other` what
    /// no label holds. Returns the series: (label, values), `other` last.
    pub fn fold(
        &mut self,
        groups: Vec<(String, GroupStats)>,
        other: &GroupStats,
    ) -> Vec<(String, GroupStats)> {
        let mut total = other.clone();
        let mut deltas: HashMap<String, GroupStats> = HashMap::with_capacity(groups.len());
        let mut score = HashMap::with_capacity(groups.len());
        for (label, g) in &groups {
            add_counts(&mut total, g);
            // Never more than the label's true activity since the last
            // scrape (a row evicted meanwhile only lowers it): that is
            // what keeps `other` monotonic.
            let mut d = g.clone();
            if let Some(p) = self.prev.get(label) {
                each_counted(&mut d, &from_counts(p), |now, before| {
                    now.saturating_sub(before)
                });
            }
            let recent = self.score.get(label).map_or(0, |s| s / 2) + d.volume();
            score.insert(label.clone(), recent);
            deltas.insert(label.clone(), d);
        }
        self.prev = groups
            .into_iter()
            .map(|(l, mut g)| (l, COUNTED.map(|f| *f(&mut g))))
            .collect();
        self.score = score;
        for (label, v) in self.slots.iter_mut() {
            if let Some(d) = deltas.get(label) {
                add_counts(v, d);
            }
        }
        self.rerank(&deltas);
        let mut out: Vec<(String, GroupStats)> = self
            .slots
            .iter()
            .map(|(l, v)| (l.clone(), v.clone()))
            .collect();
        let mut rest = total;
        for (_, v) in &out {
            each_counted(&mut rest, v, |t, v| t.saturating_sub(v));
        }
        self.other_shown |= rest.volume() > 0 || rest.retransmits > 0;
        if self.other_shown {
            out.push(("other".into(), rest));
        }
        out
    }

    /// The most active labels without a series take free slots, or the
    /// slot of a less active label (a quiet one, score 0, first). A label
    /// that gets a series starts at its activity of this scrape.
    fn rerank(&mut self, deltas: &HashMap<String, GroupStats>) {
        let score = |l: &String| self.score.get(l).copied().unwrap_or(0);
        // A label the breakdown no longer holds has nothing to count.
        self.slots.retain(|l, _| deltas.contains_key(l));
        let mut waiting: Vec<(&String, u64)> = self
            .score
            .iter()
            .filter(|(l, s)| **s > 0 && !self.slots.contains_key(*l))
            .map(|(l, s)| (l, *s))
            .collect();
        waiting.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        for (label, s) in waiting {
            if self.slots.len() >= self.max {
                let weakest = self
                    .slots
                    .keys()
                    .min_by(|a, b| score(a).cmp(&score(b)).then(b.cmp(a)))
                    .cloned();
                match weakest {
                    Some(w) if score(&w) < s => {
                        self.slots.remove(&w);
                    }
                    _ => break,
                }
            }
            if self.max > 0 {
                self.slots.insert(label.clone(), deltas[label].clone());
            }
        }
    }
}

/// Label slots of one exporter: peers, and network namespaces (with the
/// pod and container each namespace had when it was admitted, so a series'
/// labels never change).
#[derive(Debug, Default)]
pub struct Slots {
    pub peers: PeerSlots,
    pub netns: PeerSlots,
    netns_labels: BTreeMap<String, (String, String)>,
}

impl Slots {
    /// `top` peers and `top` namespaces get their own series.
    pub fn new(top: usize) -> Self {
        Slots {
            peers: PeerSlots::new(top),
            netns: PeerSlots::new(top),
            netns_labels: BTreeMap::new(),
        }
    }

    /// (netns, pod, container) labels of a namespace label value.
    fn netns_labels(&self, netns: &str) -> Labels {
        let (pod, container) = self.netns_labels.get(netns).cloned().unwrap_or_default();
        vec![
            ("netns", netns.to_string()),
            ("pod", pod),
            ("container", container),
        ]
    }
}

fn add_counts(acc: &mut GroupStats, g: &GroupStats) {
    each_counted(acc, g, |a, b| a + b);
}

/// Everything one scrape reads.
pub struct Scrape {
    pub snap: Snapshot,
    pub summary: Summary,
    /// In-kernel run statistics of the program (zero unless BPF stats are enabled).
    pub run_stats: RunStats,
    pub stats_enabled: bool,
}

type Labels = Vec<(&'static str, String)>;

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

fn counter_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (l, v) in series {
        if l.is_empty() {
            m.encode_counter::<NoLabelSet, _, u64>(v, None)?;
        } else {
            m.encode_family(l)?
                .encode_counter::<NoLabelSet, _, u64>(v, None)?;
        }
    }
    Ok(())
}

fn counter1(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    counter_family(enc, name, help, &[(Vec::new(), v)])
}

fn gauge_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, f64)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (l, v) in series {
        if l.is_empty() {
            m.encode_gauge(v)?;
        } else {
            m.encode_family(l)?.encode_gauge(v)?;
        }
    }
    Ok(())
}

fn histogram_series(
    m: &mut MetricEncoder,
    l: Option<&Labels>,
    h: &Histogram,
    bounds: &[f64],
) -> Result<(), std::fmt::Error> {
    // prometheus-client takes per-bucket counts and accumulates them itself.
    let cumulative = prom_buckets(h, bounds);
    let mut prev = 0;
    let per_bucket: Vec<(f64, u64)> = cumulative
        .iter()
        .map(|(b, n)| {
            let d = n - prev;
            prev = *n;
            (*b, d)
        })
        .collect();
    let (sum, count) = (h.sum_ns as f64 / 1e9, h.count);
    match l {
        Some(l) => {
            m.encode_family(l)?
                .encode_histogram::<NoLabelSet>(sum, count, &per_bucket, None)
        }
        None => m.encode_histogram::<NoLabelSet>(sum, count, &per_bucket, None),
    }
}

/// Encode one scrape. Pure: unit tests call it on synthetic snapshots.
/// Every total comes from the summary (the same figures the report shows);
/// the snapshot gives the histograms, the matrix and the flows to slot.
pub fn encode_scrape(
    s: &Scrape,
    slots: &mut Slots,
    mut enc: DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    encode_latencies(&s.snap, &mut enc)?;
    encode_state_machine(s, &mut enc)?;
    encode_population(&s.summary, &mut enc)?;
    encode_peers(&s.snap, slots, &mut enc)?;
    encode_namespaces(s, slots, &mut enc)?;
    encode_listeners(&s.summary.listen, &mut enc)?;
    encode_health(s, &mut enc)
}

/// The handshake and connection lifetime histograms.
fn encode_latencies(snap: &Snapshot, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let h = |kind: u32| &snap.hists[kind as usize];
    let mut handshakes = Vec::new();
    for (side, clean, retx) in [
        ("active", hist_kind::ACTIVE, hist_kind::ACTIVE_RETRANS),
        ("passive", hist_kind::PASSIVE, hist_kind::PASSIVE_RETRANS),
    ] {
        for (r, kind) in [("false", clean), ("true", retx)] {
            let l = labels(&[("side", side), ("retransmitted", r)]);
            handshakes.push((Some(l), h(kind)));
        }
    }
    histogram_family(
        enc,
        "handshake_duration",
        "TCP handshake latency: active = connect() to ESTABLISHED, passive = the server's SYN-ACK round trip; retransmitted = SYN/SYN-ACK retransmits were needed",
        HANDSHAKE_BOUNDS_S,
        &handshakes,
    )?;
    histogram_family(
        enc,
        "connection_lifetime",
        "Lifetime of established connections at close, from connect() / the final handshake ACK",
        LIFETIME_BOUNDS_S,
        &[(None, h(hist_kind::LIFETIME))],
    )
}

/// A histogram metric in seconds: one series per (labels, histogram).
fn histogram_family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    bounds: &[f64],
    series: &[(Option<Labels>, &Histogram)],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, Some(&Unit::Seconds), MetricType::Histogram)?;
    for (l, h) in series {
        histogram_series(&mut m, l.as_ref(), h, bounds)?;
    }
    Ok(())
}

/// Transitions, connects and their failures, resets, close paths.
fn encode_state_machine(s: &Scrape, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let transitions: Vec<(Labels, u64)> = s
        .snap
        .transition_pairs()
        .map(|(o, n, v)| (labels(&[("from", state_name(o)), ("to", state_name(n))]), v))
        .collect();
    counter_family(
        enc,
        "transitions",
        "TCP state transitions by old and new state",
        &transitions,
    )?;
    let sum = &s.summary;
    let cn = &sum.connects;
    counter1(
        enc,
        "connect_attempts",
        "connect() calls (CLOSE -> SYN_SENT)",
        cn.attempts,
    )?;
    counter_family(
        enc,
        "connections_established",
        "Handshakes completed, by side",
        &[
            (labels(&[("side", "active")]), cn.established),
            (labels(&[("side", "passive")]), sum.accepts.established),
        ],
    )?;
    counter_family(
        enc,
        "connect_failures",
        "Failed connects (SYN_SENT -> CLOSE) by reason",
        &[
            (labels(&[("reason", "refused")]), cn.refused),
            (labels(&[("reason", "timed_out")]), cn.timed_out),
            (labels(&[("reason", "unreachable")]), cn.unreachable),
            (labels(&[("reason", "aborted")]), cn.aborted),
            (labels(&[("reason", "no_local_port")]), cn.no_local_port),
            (labels(&[("reason", "other")]), cn.other),
        ],
    )?;
    let cl = &sum.closes;
    counter_family(
        enc,
        "resets",
        "Established connections ended by RST, by direction",
        &[
            (labels(&[("direction", "sent")]), cl.resets_sent),
            (labels(&[("direction", "received")]), cl.resets_received),
        ],
    )?;
    counter_family(
        enc,
        "closes",
        "Connection close paths: who sent the first FIN, simultaneous closes, completed passive closes, timeouts, orphans parked in FIN_WAIT2",
        &[
            (labels(&[("path", "closed_here_first")]), cl.closed_here_first),
            (labels(&[("path", "closed_by_peer_first")]), cl.closed_by_peer_first),
            (labels(&[("path", "simultaneous")]), cl.simultaneous),
            (labels(&[("path", "passive_close_completed")]), cl.passive_close_completed),
            (labels(&[("path", "timeout")]), cl.timeouts),
            (labels(&[("path", "fin_wait2_parked")]), sum.time_wait.via_fin_wait2),
        ],
    )
}

/// TIME_WAIT entries and the population now: sockets by state, leaks,
/// ephemeral port use per destination.
fn encode_population(sum: &Summary, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let tw = &sum.time_wait;
    let side = &tw.entered_by_side;
    counter_family(
        enc,
        "time_wait_entries",
        "Connections entering TIME_WAIT (incl. orphans parked in FIN_WAIT2), by the side that opened them",
        &[
            (labels(&[("side", "active")]), side.active_opened),
            (labels(&[("side", "passive")]), side.passive_opened),
            (labels(&[("side", "unknown")]), side.unknown),
        ],
    )?;
    gauge_family(
        enc,
        "time_wait_expected_sockets",
        "TIME_WAIT entries of the last 60 s: the population the entries predict",
        &[(Vec::new(), tw.model.entered_last_60s as f64)],
    )?;
    let now = &tw.now;
    gauge_family(
        enc,
        "sockets",
        "TCP sockets by state now (sock_diag, what ss shows)",
        &[
            (labels(&[("state", "TIME_WAIT")]), now.time_wait as f64),
            (labels(&[("state", "FIN_WAIT2")]), now.fin_wait2 as f64),
            (labels(&[("state", "CLOSE_WAIT")]), now.close_wait as f64),
            (labels(&[("state", "ESTABLISHED")]), now.established as f64),
        ],
    )?;
    gauge_family(
        enc,
        "close_wait_leaked_sockets",
        "Sockets in CLOSE_WAIT longer than the leak threshold (the application never called close())",
        &[(Vec::new(), sum.close_wait.leaks.len() as f64)],
    )?;
    gauge_family(
        enc,
        "port_pressure_ratio",
        "Share of the ephemeral port range one destination (local addr -> remote addr:port) holds, top N destinations",
        &sum.port_pressure.destinations
            .iter()
            .map(|r| {
                (
                    labels(&[("local_addr", &r.local_addr), ("destination", &r.remote)]),
                    r.used_pct / 100.0,
                )
            })
            .collect::<Vec<_>>(),
    )
}

/// Per peer, in bounded, re-ranked slots (see the module doc).
fn encode_peers(
    snap: &Snapshot,
    slots: &mut Slots,
    enc: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let groups = crate::report::peer_groups(&snap.flows, usize::MAX)
        .into_iter()
        .map(|(label, _, g)| (label, g))
        .collect();
    let peers = slots.peers.fold(groups, &group_of(&snap.other_flow));
    let per_peer = |f: fn(&GroupStats) -> u64| -> Vec<(Labels, u64)> {
        peers
            .iter()
            .map(|(p, g)| (labels(&[("peer", p)]), f(g)))
            .collect()
    };
    for (name, help, f) in PEER_SERIES {
        counter_family(enc, name, help, &per_peer(f))?;
    }
    Ok(())
}

/// A counter over groups: (name, help, the group's figure).
type GroupSeries = (&'static str, &'static str, fn(&GroupStats) -> u64);

/// The per-peer counters.
const PEER_SERIES: [GroupSeries; 5] = [
    (
        "peer_connections",
        "Established connections per peer (remote addr:port, or client addr -> :local port)",
        |g| g.established,
    ),
    ("peer_connect_failures", "Failed connects per peer", |g| {
        g.connect_failed
    }),
    (
        "peer_time_wait_entries",
        "TIME_WAIT entries per peer",
        |g| g.time_wait_entries,
    ),
    ("peer_resets", "Resets (sent + received) per peer", |g| {
        g.resets
    }),
    (
        "peer_handshake_retransmits",
        "Handshakes that needed SYN/SYN-ACK retransmits, per peer",
        |g| g.handshakes_with_retransmits,
    ),
];

/// The tracer's own health: the same list the text report prints, and the
/// kernel program's run statistics.
fn encode_health(s: &Scrape, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    for (name, help, value) in s.summary.tracer.entries() {
        counter1(enc, name, help, value)?;
    }
    counter1(
        enc,
        "bpf_runs",
        "Invocations of the kernel program (counted while BPF stats are enabled)",
        s.run_stats.run_count,
    )?;
    {
        let mut m = enc.encode_descriptor(
            "bpf_run_time",
            "Time spent in the kernel program (while BPF stats are enabled); divide by bpf_runs for the cost per transition",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?;
        m.encode_counter::<NoLabelSet, _, u64>(&(s.run_stats.run_time_ns as f64 / 1e9), None)?;
    }
    gauge_family(
        enc,
        "bpf_stats_enabled",
        "1 when the kernel collects BPF run-time statistics",
        &[(Vec::new(), if s.stats_enabled { 1.0 } else { 0.0 })],
    )
}

/// Every listening socket (bounded by the host's listeners, not by
/// traffic) and connects in flight per destination.
fn encode_listeners(
    l: &crate::host::listeners::Listeners,
    enc: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let key = |r: &crate::host::listeners::ListenerRow| {
        labels(&[("netns", &r.netns.to_string()), ("local", &r.local)])
    };
    let each = |f: fn(&crate::host::listeners::ListenerRow) -> f64| -> Vec<(Labels, f64)> {
        l.listeners.iter().map(|r| (key(r), f(r))).collect()
    };
    gauge_family(
        enc,
        "listener_accept_queue",
        "Connections waiting for accept() on a listening socket now (ss -ltn Recv-Q)",
        &each(|r| r.accept_queue as f64),
    )?;
    gauge_family(
        enc,
        "listener_accept_queue_limit",
        "A listening socket's accept queue limit: min(listen() backlog, net.core.somaxconn) (ss -ltn Send-Q)",
        &each(|r| r.accept_queue_limit as f64),
    )?;
    counter_family(
        enc,
        "listener_drops",
        "Packets a listening socket dropped since listen() (its sk_drops: SYNs and final ACKs a full queue refused, and packets refused for its half-open handshakes, such as clients' RSTs)",
        &l.listeners
            .iter()
            .map(|r| (key(r), r.drops))
            .collect::<Vec<_>>(),
    )?;
    counter1(
        enc,
        "synack_retransmits",
        "SYN-ACKs retransmitted on every listener while the tracer ran, under the filters (listeners closed since included)",
        l.synack_retransmits_total,
    )?;
    counter_family(
        enc,
        "listener_synack_retransmits",
        "SYN-ACKs retransmitted on a listening port while the tracer ran (tcp:tcp_retransmit_synack; per port and namespace, shown on each address of the port)",
        &l.listeners
            .iter()
            .map(|r| (key(r), r.synack_retransmits))
            .collect::<Vec<_>>(),
    )?;
    counter_family(
        enc,
        "listener_accepts",
        "Handshakes completed into a listening port's accept queue while the tracer ran (SYN_RECV -> ESTABLISHED; not accept() calls)",
        &l.listeners
            .iter()
            .map(|r| (key(r), r.accepts))
            .collect::<Vec<_>>(),
    )?;
    gauge_family(
        enc,
        "connects_in_flight",
        "Sockets in SYN_SENT now, per destination",
        &l.connects_in_flight
            .iter()
            .map(|r| {
                let l = labels(&[("netns", &r.netns.to_string()), ("destination", &r.peer)]);
                (l, r.connects as f64)
            })
            .collect::<Vec<_>>(),
    )
}

/// Per network namespace: populations and leaks of the `top` largest
/// namespaces this scrape (gauges), flow counters with re-ranked slots like
/// peers; everything else in `netns="other"`. And what the population covers.
fn encode_namespaces(
    s: &Scrape,
    slots: &mut Slots,
    enc: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    admit_netns_labels(&s.summary, slots);
    encode_netns_population(&s.summary, slots, enc)?;
    encode_netns_counters(&s.snap, slots, enc)?;
    encode_coverage(&s.summary.netns_coverage, enc)
}

/// The pod and container labels of each namespace among the `top` listed,
/// fixed when the namespace first gets a series.
fn admit_netns_labels(sum: &Summary, slots: &mut Slots) {
    for r in sum.namespaces.iter().take(slots.netns.max) {
        let pod = r.pod.clone().or(r.pod_uid.clone()).unwrap_or_default();
        let container = (r.container_name.clone().or(r.container.clone()))
            .or(r.unit.clone())
            .unwrap_or_default();
        slots
            .netns_labels
            .entry(r.netns.to_string())
            .or_insert((pod, container));
    }
}

/// Sockets by state and CLOSE_WAIT leaks of the `top` namespaces, the rest
/// in `netns="other"` once there are that many.
fn encode_netns_population(
    sum: &Summary,
    slots: &Slots,
    enc: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let top = slots.netns.max;
    let rows: Vec<_> = sum.namespaces.iter().take(top).collect();
    let with_other = sum.namespaces.len() >= top;
    let other_labels = slots.netns_labels("other");
    let mut sockets = Vec::new();
    for (state, total, of) in [
        (
            "TIME_WAIT",
            sum.time_wait.now.time_wait,
            (|p: &Population| p.time_wait) as fn(&Population) -> u64,
        ),
        ("FIN_WAIT2", sum.time_wait.now.fin_wait2, |p| p.fin_wait2),
        ("CLOSE_WAIT", sum.time_wait.now.close_wait, |p| p.close_wait),
        ("ESTABLISHED", sum.time_wait.now.established, |p| {
            p.established
        }),
    ] {
        let mut rest = total;
        for r in &rows {
            let mut l = slots.netns_labels(&r.netns.to_string());
            l.push(("state", state.to_string()));
            rest = rest.saturating_sub(of(&r.now));
            sockets.push((l, of(&r.now) as f64));
        }
        if with_other {
            let mut l = other_labels.clone();
            l.push(("state", state.to_string()));
            sockets.push((l, rest as f64));
        }
    }
    gauge_family(
        enc,
        "netns_sockets",
        "TCP sockets by state now, per network namespace (sock_diag inside each; top N namespaces, the rest in netns=\"other\")",
        &sockets,
    )?;
    let mut leaks: Vec<(Labels, f64)> = rows
        .iter()
        .map(|r| {
            (
                slots.netns_labels(&r.netns.to_string()),
                r.close_wait_leaks as f64,
            )
        })
        .collect();
    if with_other {
        let listed: u64 = rows.iter().map(|r| r.close_wait_leaks).sum();
        let all = sum.close_wait.leaks.len() as u64;
        leaks.push((other_labels, all.saturating_sub(listed) as f64));
    }
    gauge_family(
        enc,
        "netns_close_wait_leaked_sockets",
        "CLOSE_WAIT sockets older than the leak threshold, per network namespace (top N)",
        &leaks,
    )
}

/// Flow counters per namespace, in re-ranked slots like the peers'.
fn encode_netns_counters(
    snap: &Snapshot,
    slots: &mut Slots,
    enc: &mut DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let groups = crate::model::group_flows(&snap.flows, |k, _| flow_netns(k), usize::MAX)
        .into_iter()
        .map(|(ns, g)| (ns.map_or("unknown".into(), |n| n.to_string()), g))
        .collect();
    let per_ns = slots.netns.fold(groups, &group_of(&snap.other_flow));
    for (name, help, f) in NETNS_SERIES {
        let series: Vec<(Labels, u64)> = per_ns
            .iter()
            .map(|(ns, g)| (slots.netns_labels(ns), f(g)))
            .collect();
        counter_family(enc, name, help, &series)?;
    }
    Ok(())
}

/// The per-namespace counters.
const NETNS_SERIES: [GroupSeries; 3] = [
    (
        "netns_connections",
        "Established connections per network namespace (netns=\"unknown\" while the kernel side does not report namespaces)",
        |g| g.established,
    ),
    (
        "netns_connect_failures",
        "Failed connects per network namespace",
        |g| g.connect_failed,
    ),
    (
        "netns_time_wait_entries",
        "TIME_WAIT entries per network namespace",
        |g| g.time_wait_entries,
    ),
];

/// How many namespaces were read, and whether that is all of them.
fn encode_coverage(c: &Coverage, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    gauge_family(
        enc,
        "namespaces",
        "Network namespaces found, by whether their population was read (unreadable: no privilege to enter or read them)",
        &[
            (labels(&[("status", "read")]), c.read as f64),
            (labels(&[("status", "unreadable")]), c.unreadable.len() as f64),
        ],
    )?;
    gauge_family(
        enc,
        "namespaces_complete",
        "1 when every network namespace on the host was read (0: the population misses some; see the summary's netns_coverage)",
        &[(Vec::new(), if c.complete { 1.0 } else { 0.0 })],
    )
}

/// The collector `Registry` calls at each scrape.
pub struct LiveCollector {
    pub scrape: Box<dyn Fn() -> anyhow::Result<Scrape> + Send + Sync>,
    pub slots: Mutex<Slots>,
}

impl std::fmt::Debug for LiveCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveCollector")
    }
}

impl Collector for LiveCollector {
    fn encode(&self, enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = match (self.scrape)() {
            Ok(s) => s,
            Err(e) => {
                log::error!("scrape failed: {e:#}");
                return Err(std::fmt::Error);
            }
        };
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        encode_scrape(&s, &mut slots, enc)
    }
}

/// A registry with the tracer's collector under the `tcp_tracer` prefix.
pub fn registry(collector: impl Collector) -> Registry {
    let mut r = Registry::with_prefix(PREFIX);
    r.register_collector(Box::new(collector));
    r
}

/// OpenMetrics text of the registry.
pub fn openmetrics(r: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, r)?;
    Ok(out)
}

/// The classic Prometheus text format (0.0.4) from OpenMetrics text: no
/// `# EOF` / `# UNIT` lines, and counter families named with their `_total`
/// suffix, as that format expects.
pub fn classic_text(om: &str) -> String {
    let counters: BTreeSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// A scrape of `snap` alone: no sockets, no run statistics. For tests and
/// for listing the metric names.
pub fn offline_scrape(snap: Snapshot) -> Scrape {
    let tally = crate::report::SocketTally::new(&snap, crate::DEFAULT_PORT_RANGE);
    let summary = crate::report::build(&snap, &crate::report::Context::defaults(&tally));
    Scrape {
        snap,
        summary,
        run_stats: RunStats::default(),
        stats_enabled: false,
    }
}

/// Every sample name the exporter can emit (`_total` for counters,
/// `_bucket`/`_sum`/`_count` for histograms): what dashboards may query.
pub fn metric_names() -> BTreeSet<String> {
    #[derive(Debug)]
    struct Empty;
    impl Collector for Empty {
        fn encode(&self, enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode_scrape(&offline_scrape(Snapshot::empty()), &mut Slots::new(1), enc)
        }
    }
    let om = openmetrics(&registry(Empty)).expect("encoding to a String");
    let mut names = BTreeSet::new();
    for line in om.lines() {
        let Some((name, kind)) = line.strip_prefix("# TYPE ").and_then(|l| l.split_once(' '))
        else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for sfx in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{sfx}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// Metric family names (with prefix and suffixes as samples carry them) in
/// an OpenMetrics text: what dashboards may query.
pub fn sample_names(om: &str) -> BTreeSet<String> {
    om.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Replay;

    #[derive(Debug)]
    struct Fixed(Mutex<(Snapshot, Slots)>);
    impl Collector for Fixed {
        fn encode(&self, enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let mut g = self.0.lock().unwrap();
            let (snap, slots) = &mut *g;
            let mut s = offline_scrape(snap.clone());
            s.run_stats = RunStats {
                run_count: 10,
                run_time_ns: 2_000,
                ..RunStats::default()
            };
            s.stats_enabled = true;
            encode_scrape(&s, slots, enc)
        }
    }

    fn replay_peers(n: u32) -> Snapshot {
        let mut r = Replay::default();
        for i in 0..n {
            // Peer i gets i+1 connections, so the volumes are all different.
            for j in 0..=i {
                let sock = (i * 100 + j) as u64;
                r.active_open(sock, 7, [10, 0, 0, 1 + i as u8], 80, 2_000_000, 0);
                r.active_close_to_time_wait(sock, true);
            }
        }
        r.snapshot()
    }

    fn series<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .collect()
    }

    #[test]
    fn buckets_are_cumulative_and_never_under_report() {
        let mut h = Histogram::default();
        for v in [20_000u64, 40_000, 999_900, 1_000_000, 1_010_000_000] {
            h.record(v);
        }
        let b = prom_buckets(&h, HANDSHAKE_BOUNDS_S);
        let at = |le: f64| b.iter().find(|(x, _)| *x == le).unwrap().1;
        assert_eq!(at(0.000025), 1);
        assert_eq!(at(0.00005), 2);
        // 999.9 µs lies in the kernel bucket straddling 1 ms: it counts at 2.5 ms.
        assert_eq!(at(0.001), 2);
        assert_eq!(at(0.0025), 4);
        assert_eq!(at(1.0), 4);
        assert_eq!(at(1.5), 5);
        assert_eq!(b.last().unwrap(), &(f64::INFINITY, 5));
        assert!(b.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn more_peers_than_slots_give_exactly_n_plus_one_series() {
        let c = Fixed(Mutex::new((replay_peers(7), Slots::new(3))));
        let r = registry(c);
        let text = openmetrics(&r).unwrap();
        let conns = series(&text, "tcp_tracer_peer_connections_total");
        assert_eq!(conns.len(), 4, "{conns:#?}");
        // The three largest peers (7, 6, 5 connections) and the rest (1+2+3+4).
        for want in [
            "tcp_tracer_peer_connections_total{peer=\"10.0.0.7:80\"} 7",
            "tcp_tracer_peer_connections_total{peer=\"10.0.0.6:80\"} 6",
            "tcp_tracer_peer_connections_total{peer=\"10.0.0.5:80\"} 5",
            "tcp_tracer_peer_connections_total{peer=\"other\"} 10",
        ] {
            assert!(conns.contains(&want), "{want} not in {conns:#?}");
        }
        // No new traffic: a scrape later, the same series and no decrease.
        let again = openmetrics(&r).unwrap();
        assert_eq!(series(&again, "tcp_tracer_peer_connections_total"), conns);
    }

    #[test]
    fn fewer_peers_than_slots_have_no_other_series_until_full() {
        let mut slots = PeerSlots::new(5);
        let g = |n| GroupStats {
            established: n,
            ..Default::default()
        };
        let none = GroupStats::default();
        let out = slots.fold(vec![("a".into(), g(3)), ("b".into(), g(1))], &none);
        assert_eq!(out.len(), 2);
        // A later peer still gets a slot; counts never move between series.
        let out = slots.fold(
            vec![("a".into(), g(4)), ("b".into(), g(1)), ("c".into(), g(9))],
            &none,
        );
        let names: Vec<&str> = out.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
    }

    fn est(n: u64) -> GroupStats {
        GroupStats {
            established: n,
            ..Default::default()
        }
    }

    fn value(out: &[(String, GroupStats)], label: &str) -> Option<u64> {
        out.iter()
            .find(|(l, _)| l == label)
            .map(|(_, g)| g.established)
    }

    #[test]
    fn a_peer_that_turns_hot_gets_a_series_and_other_absorbs_the_one_it_displaces() {
        let mut slots = PeerSlots::new(2);
        let none = GroupStats::default();
        let out = slots.fold(
            vec![
                ("a".into(), est(10)),
                ("b".into(), est(5)),
                ("c".into(), est(1)),
            ],
            &none,
        );
        assert_eq!(value(&out, "a"), Some(10));
        assert_eq!(value(&out, "b"), Some(5));
        assert_eq!(value(&out, "other"), Some(1));
        // hot: 50 new connections in this window; b did 1, a did 1.
        let out = slots.fold(
            vec![
                ("a".into(), est(11)),
                ("b".into(), est(6)),
                ("c".into(), est(1)),
                ("hot".into(), est(50)),
            ],
            &none,
        );
        assert_eq!(
            value(&out, "hot"),
            Some(50),
            "its series starts at this window's count"
        );
        assert_eq!(value(&out, "a"), Some(11));
        assert_eq!(value(&out, "b"), None, "displaced");
        assert_eq!(
            value(&out, "other"),
            Some(6 + 1),
            "b's series moved into other"
        );
        assert_eq!(out.len(), 3);
        // Then hot goes on, a goes quiet: a keeps its series while its score lasts.
        let out = slots.fold(
            vec![
                ("a".into(), est(11)),
                ("b".into(), est(6)),
                ("c".into(), est(1)),
                ("hot".into(), est(80)),
            ],
            &none,
        );
        assert_eq!(value(&out, "hot"), Some(80));
        assert_eq!(value(&out, "a"), Some(11));
    }

    #[test]
    fn quiet_labels_go_back_to_other() {
        // One slot: a was busy once, then only b trickles along.
        let mut slots = PeerSlots::new(1);
        let none = GroupStats::default();
        let mut scrapes = 0u64;
        loop {
            scrapes += 1;
            let groups = vec![("a".into(), est(1000)), ("b".into(), est(scrapes))];
            let out = slots.fold(groups, &none);
            if value(&out, "a").is_none() {
                assert_eq!(value(&out, "b"), Some(1), "b starts at this scrape's count");
                assert_eq!(value(&out, "other"), Some(1000 + scrapes - 1));
                break;
            }
            assert!(
                scrapes < 20,
                "a quiet label is displaced within log2(score) scrapes"
            );
        }
    }

    /// Random cumulative streams (labels growing at random, rows sometimes
    /// evicted into `other`): at every scrape at most `max + 1` series, every
    /// series and `other` monotonic, the sum over the label = the total.
    #[test]
    fn reranking_keeps_series_bounded_monotonic_and_summing_to_the_total() {
        let mut rng = 0x1234_5678_9abc_def0u64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for max in [1usize, 3, 8] {
            let mut slots = PeerSlots::new(max);
            let mut cum: BTreeMap<String, u64> = BTreeMap::new();
            let mut evicted = 0u64;
            let mut last: BTreeMap<String, u64> = BTreeMap::new();
            for _ in 0..200 {
                for _ in 0..next(30) {
                    let l = format!("p{}", next(40));
                    *cum.entry(l).or_default() += 1 + next(5);
                }
                if next(4) == 0 && !cum.is_empty() {
                    let l = cum
                        .keys()
                        .nth(next(cum.len() as u64) as usize)
                        .unwrap()
                        .clone();
                    evicted += cum.remove(&l).unwrap();
                }
                let groups = cum.iter().map(|(l, n)| (l.clone(), est(*n))).collect();
                let out = slots.fold(groups, &est(evicted));
                let total: u64 = cum.values().sum::<u64>() + evicted;
                assert!(out.len() <= max + 1, "{out:?}");
                assert_eq!(out.iter().map(|(_, g)| g.established).sum::<u64>(), total);
                for (l, g) in &out {
                    if let Some(before) = last.get(l) {
                        assert!(g.established >= *before, "{l} went back: {before} -> {g:?}");
                    }
                }
                // A label without a series now starts afresh next time.
                last = out
                    .iter()
                    .map(|(l, g)| (l.clone(), g.established))
                    .collect();
            }
        }
    }

    #[test]
    fn metrics_carry_the_workload_and_follow_conventions() {
        let mut r = Replay::default();
        for i in 0..3 {
            r.active_open(i, 7, [10, 0, 0, 1], 443, 5_000_000, 0);
            r.active_close_to_time_wait(i, true);
        }
        r.refused(50, 7, [10, 0, 0, 1], 444);
        let c = Fixed(Mutex::new((r.snapshot(), Slots::new(10))));
        let text = openmetrics(&registry(c)).unwrap();
        for want in [
            "tcp_tracer_connect_attempts_total 4",
            "tcp_tracer_connections_established_total{side=\"active\"} 3",
            "tcp_tracer_connect_failures_total{reason=\"refused\"} 1",
            "tcp_tracer_time_wait_entries_total{side=\"active\"} 3",
            "tcp_tracer_transitions_total{from=\"SYN_SENT\",to=\"ESTABLISHED\"} 3",
            "tcp_tracer_handshake_duration_seconds_count{side=\"active\",retransmitted=\"false\"} 3",
            "tcp_tracer_handshake_duration_seconds_bucket{le=\"0.005\",side=\"active\",retransmitted=\"false\"} 0",
            "tcp_tracer_handshake_duration_seconds_bucket{le=\"0.01\",side=\"active\",retransmitted=\"false\"} 3",
            "tcp_tracer_handshake_duration_seconds_bucket{le=\"+Inf\",side=\"active\",retransmitted=\"false\"} 3",
            "tcp_tracer_connection_lifetime_seconds_count 0",
            "tcp_tracer_peer_time_wait_entries_total{peer=\"10.0.0.1:443\"} 3",
            "tcp_tracer_peer_connect_failures_total{peer=\"10.0.0.1:444\"} 1",
            "tcp_tracer_bpf_runs_total 10",
            "# TYPE tcp_tracer_handshake_duration_seconds histogram",
            "# UNIT tcp_tracer_handshake_duration_seconds seconds",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(want)),
                "{want} missing from\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
        let names = sample_names(&text);
        assert!(names.iter().all(|n| n.starts_with("tcp_tracer_")));
        // Classic text: counters are typed under their _total name, no EOF.
        let classic = classic_text(&text);
        assert!(classic.contains("# TYPE tcp_tracer_connect_attempts_total counter\n"));
        assert!(classic.contains("# TYPE tcp_tracer_handshake_duration_seconds histogram\n"));
        assert!(!classic.contains("# EOF") && !classic.contains("# UNIT"));
        assert_eq!(sample_names(&classic), names);
        assert!(names.is_subset(&metric_names()), "{names:?}");
    }
    #[test]
    fn namespace_series_are_top_n_plus_other() {
        use crate::host::diag::DiagSocket;
        let snap = Snapshot::empty();
        let mut tally = crate::report::SocketTally::new(&snap, crate::DEFAULT_PORT_RANGE);
        // Namespaces 1..=5 with 1..=5 TIME_WAIT sockets each.
        for ns in 1..=5u32 {
            tally.begin_namespace(ns, None);
            for i in 0..ns {
                tally.add(&DiagSocket::test(
                    tracer_common::state::TIME_WAIT,
                    "127.0.0.1",
                    40000 + i as u16,
                    "127.0.0.1",
                    9000,
                ));
            }
        }
        let mut ctx = crate::report::Context::defaults(&tally);
        ctx.top = 2;
        // And one full listener with drops, one connect in flight.
        ctx.listen
            .listeners
            .push(crate::host::listeners::ListenerRow {
                netns: 5,
                local: "127.0.0.1:7001".into(),
                accept_queue: 2,
                accept_queue_limit: 1,
                drops: 16,
                synack_retransmits: 3,
                accepts: 2,
                ..Default::default()
            });
        ctx.listen
            .connects_in_flight
            .push(crate::host::listeners::InFlightRow {
                netns: 5,
                peer: "127.0.0.1:7001".into(),
                connects: 4,
                ..Default::default()
            });
        let summary = crate::report::build(&snap, &ctx);
        let scrape = Scrape {
            snap,
            summary,
            run_stats: RunStats::default(),
            stats_enabled: false,
        };
        struct One(Mutex<(Scrape, Slots)>);
        impl std::fmt::Debug for One {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("One")
            }
        }
        impl Collector for One {
            fn encode(&self, enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                let mut g = self.0.lock().unwrap();
                let (s, slots) = &mut *g;
                encode_scrape(s, slots, enc)
            }
        }
        let text = openmetrics(&registry(One(Mutex::new((scrape, Slots::new(2)))))).unwrap();
        let tw: Vec<&str> = series(&text, "tcp_tracer_netns_sockets")
            .into_iter()
            .filter(|l| l.contains("state=\"TIME_WAIT\""))
            .collect();
        assert_eq!(tw.len(), 3, "{tw:#?}");
        for want in [
            "tcp_tracer_netns_sockets{netns=\"5\",pod=\"\",container=\"\",state=\"TIME_WAIT\"} 5.0",
            "tcp_tracer_netns_sockets{netns=\"4\",pod=\"\",container=\"\",state=\"TIME_WAIT\"} 4.0",
            "tcp_tracer_netns_sockets{netns=\"other\",pod=\"\",container=\"\",state=\"TIME_WAIT\"} 6.0",
        ] {
            assert!(tw.contains(&want), "{want} not in {tw:#?}");
        }
        for want in [
            "tcp_tracer_listener_accept_queue{netns=\"5\",local=\"127.0.0.1:7001\"} 2.0",
            "tcp_tracer_listener_accept_queue_limit{netns=\"5\",local=\"127.0.0.1:7001\"} 1.0",
            "tcp_tracer_listener_drops_total{netns=\"5\",local=\"127.0.0.1:7001\"} 16",
            "tcp_tracer_listener_synack_retransmits_total{netns=\"5\",local=\"127.0.0.1:7001\"} 3",
            "tcp_tracer_listener_accepts_total{netns=\"5\",local=\"127.0.0.1:7001\"} 2",
            "tcp_tracer_connects_in_flight{netns=\"5\",destination=\"127.0.0.1:7001\"} 4.0",
        ] {
            assert!(text.lines().any(|l| l == want), "{want} not in {text}");
        }
        // No flows: no per-namespace counter series; coverage is exported.
        assert!(series(&text, "tcp_tracer_netns_connections_total").is_empty());
        assert!(text.contains("tcp_tracer_namespaces_complete 0"), "{text}");
    }

    /// Every host-wide total of the summary is the same number in the text
    /// report, the JSON and /metrics. Each counter slot holds a different
    /// value, so a figure read from the wrong slot (or computed another
    /// way) cannot match by chance.
    #[test]
    fn every_total_is_the_same_in_text_json_and_metrics() {
        use tracer_common::{close, counter, state};
        let mut snap = Snapshot::empty();
        for (i, c) in snap.counters.iter_mut().enumerate() {
            *c = 1000 + 37 * i as u64;
        }
        let failed: u64 = [
            close::CONNECT_REFUSED,
            close::CONNECT_TIMEOUT,
            close::CONNECT_UNREACHABLE,
            close::CONNECT_ABORTED,
            close::CONNECT_NO_LOCAL_PORT,
        ]
        .iter()
        .map(|k| snap.closes(*k))
        .sum();
        snap.transitions[state::SYN_SENT as usize][state::CLOSE as usize] = failed + 11;
        snap.time_wait_by_second = vec![(90, 5), (99, 3)];
        let tally = crate::report::SocketTally::new(&snap, crate::DEFAULT_PORT_RANGE);
        let mut ctx = crate::report::Context::defaults(&tally);
        ctx.now_sec = 100;
        let summary = crate::report::build(&snap, &ctx);
        let text = crate::report::render_text(&summary);
        let json = serde_json::to_value(&summary).unwrap();
        let sum = &summary;
        let (cn, tw) = (&sum.connects, &sum.time_wait);
        assert_eq!(cn.other, 11);
        assert_eq!(cn.attempts, snap.counter(counter::CONNECT_ATTEMPTS));
        let scrape = Scrape {
            snap,
            summary: summary.clone(),
            run_stats: RunStats::default(),
            stats_enabled: false,
        };
        let om = openmetrics_of(scrape);
        let mut checked = 0;
        for (pointer, sample, fragment) in TOTALS {
            let v = json.pointer(pointer).and_then(|j| j.as_u64());
            let v = v.unwrap_or_else(|| panic!("{pointer} not in the JSON"));
            let line = format!("{PREFIX}_{sample} {v}");
            assert!(om.lines().any(|l| l == line), "{line} not in /metrics");
            let shown = fragment.replace("{}", &v.to_string());
            assert!(text.contains(&shown), "{shown:?} not in the text report");
            checked += 1;
        }
        let model = &tw.model;
        assert_eq!(model.entered_last_60s, 8);
        let line = format!(
            "{PREFIX}_time_wait_expected_sockets {}.0",
            model.entered_last_60s
        );
        assert!(om.lines().any(|l| l == line), "{line}");
        assert!(text.contains(&format!(
            "model: {} entered in the last 60 s",
            model.entered_last_60s
        )));
        for (name, _, v) in sum.tracer.entries() {
            let line = format!("{PREFIX}_{name}_total {v}");
            assert!(om.lines().any(|l| l == line), "{line} not in /metrics");
            assert!(
                text.contains(&format!("{name} {v}")),
                "{name} {v} not in the text report"
            );
            checked += 1;
        }
        assert_eq!(checked, 20 + 14);
    }

    /// Host-wide totals: (JSON pointer, /metrics sample, the text report's
    /// words around the value).
    const TOTALS: [(&str, &str, &str); 20] = [
        (
            "/connects/attempts",
            "connect_attempts_total",
            "Connects: {} attempted",
        ),
        (
            "/connects/established",
            r#"connections_established_total{side="active"}"#,
            "attempted, {} established",
        ),
        (
            "/accepts/established",
            r#"connections_established_total{side="passive"}"#,
            "Accepts:  {} established",
        ),
        (
            "/connects/refused",
            r#"connect_failures_total{reason="refused"}"#,
            "refused {}",
        ),
        (
            "/connects/timed_out",
            r#"connect_failures_total{reason="timed_out"}"#,
            "timed out {}",
        ),
        (
            "/connects/unreachable",
            r#"connect_failures_total{reason="unreachable"}"#,
            "unreachable {}",
        ),
        (
            "/connects/aborted",
            r#"connect_failures_total{reason="aborted"}"#,
            "aborted {}",
        ),
        (
            "/connects/no_local_port",
            r#"connect_failures_total{reason="no_local_port"}"#,
            "no local port {}",
        ),
        (
            "/connects/other",
            r#"connect_failures_total{reason="other"}"#,
            "other {})",
        ),
        (
            "/closes/resets_sent",
            r#"resets_total{direction="sent"}"#,
            "Resets:   {} sent",
        ),
        (
            "/closes/resets_received",
            r#"resets_total{direction="received"}"#,
            "sent, {} received",
        ),
        (
            "/closes/closed_here_first",
            r#"closes_total{path="closed_here_first"}"#,
            "Closes:   {} closed here first",
        ),
        (
            "/closes/closed_by_peer_first",
            r#"closes_total{path="closed_by_peer_first"}"#,
            "{} by peer first",
        ),
        (
            "/closes/simultaneous",
            r#"closes_total{path="simultaneous"}"#,
            "{} simultaneous",
        ),
        (
            "/closes/passive_close_completed",
            r#"closes_total{path="passive_close_completed"}"#,
            "{} passive closes completed",
        ),
        (
            "/closes/timeouts",
            r#"closes_total{path="timeout"}"#,
            "{} connections timed out",
        ),
        (
            "/time_wait/via_fin_wait2",
            r#"closes_total{path="fin_wait2_parked"}"#,
            "{} via FIN_WAIT2",
        ),
        (
            "/time_wait/entered_by_side/active_opened",
            r#"time_wait_entries_total{side="active"}"#,
            "{} on connections opened here",
        ),
        (
            "/time_wait/entered_by_side/passive_opened",
            r#"time_wait_entries_total{side="passive"}"#,
            "{} on accepted ones",
        ),
        (
            "/time_wait/entered_by_side/unknown",
            r#"time_wait_entries_total{side="unknown"}"#,
            "{} unknown",
        ),
    ];

    /// The OpenMetrics text of one scrape with fresh slots.
    fn openmetrics_of(scrape: Scrape) -> String {
        struct One(Mutex<(Scrape, Slots)>);
        impl std::fmt::Debug for One {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("One")
            }
        }
        impl Collector for One {
            fn encode(&self, enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
                let mut g = self.0.lock().unwrap();
                let (s, slots) = &mut *g;
                encode_scrape(s, slots, enc)
            }
        }
        openmetrics(&registry(One(Mutex::new((scrape, Slots::new(5)))))).unwrap()
    }
}
