//! What `tracer top` shows, computed from successive snapshots and the event
//! stream. Pure: the run loop feeds it, the tests drive it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use tracer_common::{dir, flag, hist, state, Event, FlowKey, FlowStats};

use crate::{
    host::diag::Population,
    model::{
        comm_str, endpoint, flow_netns, group_flows, ip_from_raw, GroupStats, Histogram, Snapshot,
    },
    report::{
        cgroup_groups, peer_groups, port_groups, process_groups, Accepts, Closes, Connects, Health,
        TimeWait,
    },
    ReportInputs,
};

/// The tables `top` can show, in the order Tab cycles through them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    Peers,
    Ports,
    Processes,
    Cgroups,
    Namespaces,
}

/// How many tables there are.
const TABLES: usize = Table::ALL.len();

impl Table {
    pub const ALL: [Table; 5] = [
        Table::Peers,
        Table::Ports,
        Table::Processes,
        Table::Cgroups,
        Table::Namespaces,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Table::Peers => "Peers",
            Table::Ports => "Local ports",
            Table::Processes => "Processes",
            Table::Cgroups => "Cgroups",
            Table::Namespaces => "Namespaces",
        }
    }

    pub fn next(self) -> Table {
        let i = Table::ALL.iter().position(|t| *t == self).unwrap_or(0);
        Table::ALL[(i + 1) % Table::ALL.len()]
    }

    fn index(self) -> usize {
        Table::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

/// The columns, in display order; each has a sort key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Column {
    Name,
    ConnRate,
    Established,
    Failed,
    P50,
    P99,
    Retransmitted,
    TimeWaitIn,
    TimeWaitNow,
    Resets,
}

impl Column {
    pub const ALL: [Column; 10] = [
        Column::Name,
        Column::ConnRate,
        Column::Established,
        Column::Failed,
        Column::P50,
        Column::P99,
        Column::Retransmitted,
        Column::TimeWaitIn,
        Column::TimeWaitNow,
        Column::Resets,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Column::Name => "NAME",
            Column::ConnRate => "CONN/s",
            Column::Established => "EST",
            Column::Failed => "FAIL",
            Column::P50 => "P50ms",
            Column::P99 => "P99ms",
            Column::Retransmitted => "RETX",
            Column::TimeWaitIn => "TW_IN",
            Column::TimeWaitNow => "TWNOW",
            Column::Resets => "RST",
        }
    }

    /// The key that sorts by this column.
    pub fn key(self) -> char {
        match self {
            Column::Name => 'a',
            Column::ConnRate => 'c',
            Column::Established => 'e',
            Column::Failed => 'f',
            Column::P50 => '5',
            Column::P99 => '9',
            Column::Retransmitted => 'x',
            Column::TimeWaitIn => 'w',
            Column::TimeWaitNow => 'n',
            Column::Resets => 'r',
        }
    }

    pub fn from_key(c: char) -> Option<Column> {
        Column::ALL.into_iter().find(|col| col.key() == c)
    }

    /// The neighbour column (`step` = +1 right, -1 left), wrapping.
    pub fn step(self, step: isize) -> Column {
        let n = Column::ALL.len() as isize;
        let i = Column::ALL.iter().position(|c| *c == self).unwrap_or(0) as isize;
        Column::ALL[((i + step).rem_euclid(n)) as usize]
    }
}

/// One row of a table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row {
    pub name: String,
    /// Connections (established + failed) per second over the last interval.
    pub conn_rate: f64,
    pub established: u64,
    pub failed: u64,
    /// Handshake percentiles of this group, from the events (µs).
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    /// Handshakes that needed retransmits.
    pub retransmitted: u64,
    pub time_wait_in: u64,
    /// TIME_WAIT sockets now (sock_diag): peers and namespaces only.
    pub time_wait_now: Option<u64>,
    pub resets: u64,
}

impl Row {
    fn sort_key(&self, c: Column) -> f64 {
        let opt = |v: Option<f64>| v.unwrap_or(-1.0);
        match c {
            Column::Name => 0.0,
            Column::ConnRate => self.conn_rate,
            Column::Established => self.established as f64,
            Column::Failed => self.failed as f64,
            Column::P50 => opt(self.p50_us),
            Column::P99 => opt(self.p99_us),
            Column::Retransmitted => self.retransmitted as f64,
            Column::TimeWaitIn => self.time_wait_in as f64,
            Column::TimeWaitNow => opt(self.time_wait_now.map(|v| v as f64)),
            Column::Resets => self.resets as f64,
        }
    }
}

/// Sort `rows` by `col` (largest first unless `ascending`; names A→Z unless
/// `ascending` is false), ties by name.
pub fn sort_rows(rows: &mut [Row], col: Column, descending: bool) {
    rows.sort_by(|a, b| {
        let ord = if col == Column::Name {
            a.name.cmp(&b.name)
        } else {
            a.sort_key(col).total_cmp(&b.sort_key(col))
        };
        let ord = if descending { ord.reverse() } else { ord };
        ord.then_with(|| a.name.cmp(&b.name))
    });
}

/// Host-wide numbers of the header (rates per second over the last interval).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rates {
    pub connects: f64,
    pub accepts: f64,
    pub failed: f64,
    pub refused: f64,
    pub timed_out: f64,
    pub unreachable: f64,
    pub aborted: f64,
    pub time_wait_entries: f64,
    pub resets: f64,
    /// Populations now (sock_diag).
    pub time_wait_now: u64,
    pub close_wait_now: u64,
    pub established_now: u64,
    /// Totals since start: events the ring buffer dropped (they only thin
    /// the percentiles), flow-table overflows (rows miss them).
    pub ring_drops: u64,
    pub flow_table_full: u64,
}

impl Rates {
    /// Rates from `prev` to `snap`, `dt` seconds apart, of the totals the
    /// summary defines, and the population `pop` now.
    fn between(snap: &Snapshot, prev: &Snapshot, dt: f64, pop: &Population) -> Rates {
        let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / dt;
        let (cn, cb) = (Connects::of(snap), Connects::of(prev));
        let resets = |s: &Snapshot| {
            let c = Closes::of(s);
            c.resets_sent + c.resets_received
        };
        let accepts = |s: &Snapshot| Accepts::of(s).established;
        let health = Health::of(snap);
        Rates {
            connects: rate(cn.attempts, cb.attempts),
            accepts: rate(accepts(snap), accepts(prev)),
            failed: rate(cn.failed, cb.failed),
            refused: rate(cn.refused, cb.refused),
            timed_out: rate(cn.timed_out, cb.timed_out),
            unreachable: rate(cn.unreachable, cb.unreachable),
            aborted: rate(cn.aborted, cb.aborted),
            time_wait_entries: rate(TimeWait::entered(snap), TimeWait::entered(prev)),
            resets: rate(resets(snap), resets(prev)),
            time_wait_now: pop.time_wait,
            close_wait_now: pop.close_wait,
            established_now: pop.established,
            ring_drops: health.events_dropped,
            flow_table_full: health.flow_table_full,
        }
    }
}

/// Handshake samples of one group: sparse log-linear buckets, turned into a
/// `Histogram` for its percentiles.
#[derive(Clone, Debug, Default)]
struct Samples {
    buckets: BTreeMap<usize, u64>,
    count: u64,
    sum: u64,
    max: u64,
}

impl Samples {
    fn record(&mut self, ns: u64) {
        *self.buckets.entry(hist::bucket(ns)).or_default() += 1;
        self.count += 1;
        self.sum += ns;
        self.max = self.max.max(ns);
    }

    fn histogram(&self) -> Histogram {
        let mut h = Histogram::default();
        for (i, n) in &self.buckets {
            h.buckets[*i] = *n;
        }
        h.count = self.count;
        h.sum_ns = self.sum;
        h.max_ns = self.max;
        h
    }
}

/// Most groups whose handshakes are kept per table; later ones share "(other)".
pub const MAX_GROUPS: usize = 10_000;
const OTHER: &str = "(other)";
/// Samples kept for the sparklines by default (a minute at 1 s).
pub const HISTORY: usize = 60;

#[derive(Clone)]
pub struct Model {
    prev: Option<(f64, Snapshot)>,
    /// Per table: label → (established + failed) at the previous update.
    prev_conns: [HashMap<String, u64>; TABLES],
    samples: [HashMap<String, Samples>; TABLES],
    pub rates: Rates,
    pub tables: [Vec<Row>; TABLES],
    pub connects_history: VecDeque<u64>,
    pub time_wait_history: VecDeque<u64>,
    /// How many samples the histories keep.
    window: usize,
    /// cgroup id → path (from the report inputs), for labels.
    cgroup_paths: BTreeMap<u64, String>,
    /// netns inode → name (from the report inputs), for labels.
    netns_names: BTreeMap<u32, String>,
}

fn peer_label(ip: std::net::IpAddr, d: u8, port: u16) -> String {
    if d == dir::ACTIVE {
        endpoint(ip, port)
    } else {
        format!("{ip} -> :{port}")
    }
}

fn port_label(p: Option<u16>) -> String {
    p.map_or("(outgoing)".into(), |p| p.to_string())
}

fn process_label(pid: Option<u32>, comm: &str) -> String {
    match pid {
        Some(p) => format!("{p}/{comm}"),
        None => comm.to_string(),
    }
}

fn cgroup_label(paths: &BTreeMap<u64, String>, id: u64) -> String {
    match paths.get(&id) {
        Some(p) => p.clone(),
        None => format!("cgroup {id}"),
    }
}

fn netns_label(names: &BTreeMap<u32, String>, netns: Option<u32>) -> String {
    match netns {
        Some(ns) => names.get(&ns).cloned().unwrap_or_else(|| ns.to_string()),
        None => "(unknown namespace)".into(),
    }
}

impl Default for Model {
    fn default() -> Self {
        Model {
            prev: None,
            prev_conns: Default::default(),
            samples: Default::default(),
            rates: Rates::default(),
            tables: Default::default(),
            connects_history: VecDeque::with_capacity(HISTORY),
            time_wait_history: VecDeque::with_capacity(HISTORY),
            window: HISTORY,
            cgroup_paths: BTreeMap::new(),
            netns_names: BTreeMap::new(),
        }
    }
}

impl Model {
    /// A model whose first rates are measured from `t0` (seconds), when
    /// the counters were all zero.
    pub fn new(t0: f64) -> Self {
        Model {
            prev: Some((t0, Snapshot::empty())),
            ..Default::default()
        }
    }

    /// Keep `samples` samples for the sparklines (60 s / the interval).
    pub fn with_window(mut self, samples: usize) -> Self {
        self.window = samples.max(2);
        self
    }

    /// Take one event's handshake sample into its groups' percentiles.
    pub fn event(&mut self, e: &Event) {
        let established = e.newstate == state::ESTABLISHED
            && matches!(e.oldstate, state::SYN_SENT | state::SYN_RECV);
        if !established || e.handshake_ns == 0 {
            return;
        }
        let ip = ip_from_raw(e.family, &e.daddr);
        let active = e.dir == dir::ACTIVE;
        let port = if active { e.dport } else { e.sport };
        let known = e.flags & flag::OWNER_KNOWN != 0 && e.tgid != 0;
        let labels = [
            peer_label(ip, e.dir, port),
            port_label((!active).then_some(e.sport)),
            if known {
                process_label(Some(e.tgid), &comm_str(&e.comm))
            } else {
                process_label(None, "(unknown owner)")
            },
            cgroup_label(&self.cgroup_paths, e.cgroup_id),
            netns_label(&self.netns_names, (e.netns != 0).then_some(e.netns)),
        ];
        for (table, label) in self.samples.iter_mut().zip(labels) {
            let label = if table.len() >= MAX_GROUPS && !table.contains_key(&label) {
                OTHER.to_string()
            } else {
                label
            };
            table.entry(label).or_default().record(e.handshake_ns);
        }
    }

    /// Take a new snapshot (and the population with it) at time `t` (seconds).
    pub fn update(&mut self, t: f64, snap: &Snapshot, inputs: &ReportInputs) {
        self.cgroup_paths = inputs.cgroup_paths.clone();
        self.netns_names = inputs
            .namespaces
            .iter()
            .map(|m| (m.netns, m.label()))
            .collect();
        let (t_prev, prev) = self.prev.take().unwrap_or((t, Snapshot::empty()));
        let dt = (t - t_prev).max(1e-3);
        let pop = &inputs.sockets.population();
        self.rates = Rates::between(snap, &prev, dt, pop);
        let window = self.window;
        push(
            &mut self.connects_history,
            self.rates.connects.round() as u64,
            window,
        );
        push(&mut self.time_wait_history, pop.time_wait, window);
        let groups = self.groups(&snap.flows);
        let tw_now = inputs.sockets.time_wait_by_peer();
        let names = &self.netns_names;
        let tw_by_netns: BTreeMap<String, u64> = (inputs.sockets.namespaces().iter())
            .map(|(ns, t)| (netns_label(names, Some(*ns)), t.population.time_wait))
            .collect();
        for table in Table::ALL {
            let time_wait_now = match table {
                Table::Peers => Some(&tw_now),
                Table::Namespaces => Some(&tw_by_netns),
                _ => None,
            };
            self.update_table(table, &groups[table.index()], time_wait_now, dt);
        }
        self.prev = Some((t, snap.clone()));
    }

    /// Every table's groups of the flows, labelled as the table shows them.
    fn groups(&self, flows: &[(FlowKey, FlowStats)]) -> [Vec<(String, GroupStats)>; TABLES] {
        let (paths, names) = (&self.cgroup_paths, &self.netns_names);
        [
            peer_groups(flows, usize::MAX)
                .into_iter()
                .map(|(l, _, g)| (l, g))
                .collect(),
            labelled(port_groups(flows, usize::MAX), |p| port_label(*p)),
            labelled(process_groups(flows, usize::MAX), |(p, c)| {
                process_label(*p, c)
            }),
            labelled(cgroup_groups(flows, usize::MAX), |id| {
                cgroup_label(paths, *id)
            }),
            labelled(group_flows(flows, |k, _| flow_netns(k), usize::MAX), |ns| {
                netns_label(names, *ns)
            }),
        ]
    }

    /// One table's rows: the groups' figures, their connection rates since
    /// the last update, percentiles from the events' samples and, where the
    /// table has it, TIME_WAIT now by label.
    fn update_table(
        &mut self,
        table: Table,
        groups: &[(String, GroupStats)],
        time_wait_now: Option<&BTreeMap<String, u64>>,
        dt: f64,
    ) {
        let i = table.index();
        let mut conns = HashMap::new();
        let rows = groups
            .iter()
            .map(|(label, g)| {
                let total = g.established + g.connect_failed;
                let before = self.prev_conns[i].get(label).copied().unwrap_or(0);
                conns.insert(label.clone(), total);
                let h = self.samples[i].get(label).map(Samples::histogram);
                let q = |p| {
                    h.as_ref()
                        .and_then(|h| h.quantile(p))
                        .map(|ns| ns as f64 / 1e3)
                };
                Row {
                    name: label.clone(),
                    conn_rate: total.saturating_sub(before) as f64 / dt,
                    established: g.established,
                    failed: g.connect_failed,
                    p50_us: q(0.5),
                    p99_us: q(0.99),
                    retransmitted: g.handshakes_with_retransmits,
                    time_wait_in: g.time_wait_entries,
                    time_wait_now: time_wait_now.map(|m| m.get(label).copied().unwrap_or(0)),
                    resets: g.resets,
                }
            })
            .collect();
        self.tables[i] = rows;
        self.prev_conns[i] = conns;
    }

    pub fn rows(&self, table: Table) -> &[Row] {
        &self.tables[table.index()]
    }
}

fn labelled<K>(
    groups: Vec<(K, GroupStats)>,
    label: impl Fn(&K) -> String,
) -> Vec<(String, GroupStats)> {
    groups.into_iter().map(|(k, g)| (label(&k), g)).collect()
}

fn push(h: &mut VecDeque<u64>, v: u64, window: usize) {
    while h.len() >= window {
        h.pop_front();
    }
    h.push_back(v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{host::diag::DiagSocket, model::Replay, report::SocketTally};

    fn inputs(snap: &Snapshot, tw_socks: u16) -> ReportInputs {
        let socks: Vec<DiagSocket> = (0..tw_socks)
            .map(|i| DiagSocket::test(state::TIME_WAIT, "10.0.0.9", 40000 + i, "10.0.0.1", 80))
            .collect();
        ReportInputs {
            duration_s: 1.0,
            filter: String::new(),
            top: usize::MAX,
            sockets: SocketTally::of(snap, crate::DEFAULT_PORT_RANGE, &socks),
            sysctls: Default::default(),
            pressure_warn_pct: 50.0,
            close_wait_leaks: Vec::new(),
            close_wait_threshold_s: 30.0,
            now_sec: 0,
            cgroup_paths: BTreeMap::new(),
            namespaces: Vec::new(),
            coverage: Default::default(),
            listen: Default::default(),
        }
    }

    fn handshake_event(port: u16, ns: u64) -> Event {
        let mut e = Event {
            ts_ns: 0,
            cookie: 1,
            in_state_ns: 0,
            handshake_ns: ns,
            lifetime_ns: 0,
            bytes_received: 0,
            bytes_acked: 0,
            cgroup_id: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            tgid: 10,
            retrans: 0,
            comm: [0; 16],
            sport: 40000,
            dport: port,
            family: 2,
            sk_err: 0,
            oldstate: state::SYN_SENT,
            newstate: state::ESTABLISHED,
            close_kind: tracer_common::close::NONE,
            dir: dir::ACTIVE,
            flags: flag::OWNER_KNOWN,
            kind: 0,
            _pad: [0; 6],
            netns: 1,
        };
        e.daddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        e
    }

    #[test]
    fn rows_rates_and_percentiles() {
        let mut r = Replay::default();
        for i in 0..4 {
            r.active_open(i, 10, [10, 0, 0, 1], 80, 1_000_000, 0);
            r.active_close_to_time_wait(i, true);
        }
        r.refused(50, 10, [10, 0, 0, 1], 81);
        r.refused(51, 10, [10, 0, 0, 1], 81);
        let snap = r.snapshot();
        let mut m = Model::new(0.0);
        for ns in [1_000_000u64, 1_000_000, 1_000_000, 9_000_000] {
            m.event(&handshake_event(80, ns));
        }
        m.update(2.0, &snap, &inputs(&snap, 3));
        assert_eq!(m.rates.connects, 3.0, "6 connects in 2 s");
        assert_eq!(m.rates.failed, 1.0);
        assert_eq!(m.rates.refused, 1.0);
        assert_eq!(m.rates.time_wait_entries, 2.0);
        assert_eq!(m.rates.time_wait_now, 3);
        let peers = m.rows(Table::Peers);
        let busiest = peers.iter().find(|r| r.name == "10.0.0.1:80").unwrap();
        assert_eq!(busiest.established, 4);
        assert_eq!(busiest.time_wait_in, 4);
        assert_eq!(busiest.time_wait_now, Some(3));
        assert_eq!(busiest.conn_rate, 2.0);
        assert_eq!(busiest.p99_us, Some(9000.0), "top rank: exact max");
        let p50 = busiest.p50_us.unwrap();
        assert!((p50 - 1000.0).abs() < 10.0, "{p50}");
        let refused = peers.iter().find(|r| r.name == "10.0.0.1:81").unwrap();
        assert_eq!((refused.failed, refused.p50_us), (2, None));
        // Next interval: nothing new, rates drop to 0, totals stay.
        m.update(3.0, &snap, &inputs(&snap, 3));
        assert_eq!(m.rates.connects, 0.0);
        assert_eq!(m.rows(Table::Peers)[0].conn_rate, 0.0);
        assert_eq!(m.connects_history, [3, 0]);
        assert_eq!(m.time_wait_history, [3, 3]);
        let mut m = m.with_window(2);
        m.update(4.0, &snap, &inputs(&snap, 5));
        assert_eq!(m.time_wait_history, [3, 5], "the window slides");
        let procs = m.rows(Table::Processes);
        assert_eq!(procs.len(), 1);
        assert_eq!(procs[0].established, 4);
        assert_eq!(procs[0].time_wait_now, None);
        assert_eq!(m.rows(Table::Ports)[0].name, "(outgoing)");
        let namespaces = m.rows(Table::Namespaces);
        assert_eq!(namespaces.len(), 1);
        assert_eq!(
            (namespaces[0].name.as_str(), namespaces[0].established),
            ("1", 4)
        );
    }

    #[test]
    fn sorting_by_each_column() {
        let row = |name: &str, fail: u64, p99: Option<f64>| Row {
            name: name.into(),
            failed: fail,
            p99_us: p99,
            ..Default::default()
        };
        let mut rows = vec![
            row("b", 1, None),
            row("a", 5, Some(3.0)),
            row("c", 5, Some(9.0)),
        ];
        sort_rows(&mut rows, Column::Failed, true);
        let names: Vec<_> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["a", "c", "b"], "ties by name");
        sort_rows(&mut rows, Column::P99, true);
        assert_eq!(rows[0].name, "c");
        assert_eq!(rows[2].name, "b", "no sample sorts last");
        sort_rows(&mut rows, Column::Name, false);
        assert_eq!(rows[0].name, "a");
        for c in Column::ALL {
            assert_eq!(Column::from_key(c.key()), Some(c));
        }
        assert_eq!(Column::Name.step(-1), Column::Resets);
        assert_eq!(Table::Cgroups.next(), Table::Namespaces);
        assert_eq!(Table::Namespaces.next(), Table::Peers);
    }
}
