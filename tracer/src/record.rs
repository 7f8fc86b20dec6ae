//! Recordings: `tracer record` writes every event and periodic snapshots of
//! the in-kernel aggregates and the socket population to a file; `tracer
//! report FILE` and `tracer events --from FILE` read it back without root.
//!
//! The format (docs/RECORDING.md): an 8-byte magic and a little-endian u32
//! format version, then blocks `[compressed len u32][raw len u32][crc32 of the
//! compressed bytes u32][raw deflate stream]`; each block's raw bytes are JSON lines,
//! one `Record` each. Records hold decoded, userspace-level data (names, not
//! kernel indices or struct layouts), and every struct reads with serde
//! defaults, so fields added later leave old files readable and new files
//! readable by old readers (unknown fields and record types are skipped).

use std::{
    collections::BTreeMap,
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};
use tracer_common::{close, counter, dir, hist, hist_kind, state, FlowKey, FlowStats, AF_INET6};

use crate::{
    event::Transition,
    model::{close_kind_name, dir_name, state_name, Histogram, Snapshot},
    report::{CloseWaitLeak, SocketTally, Sysctls, TallyRecord},
    ReportInputs,
};

pub mod run;

/// First bytes of every recording.
pub const MAGIC: &[u8; 8] = b"TCPSTREC";
/// The format version this build writes and the newest it reads.
pub const VERSION: u32 = 1;
/// `Header::format`.
pub const FORMAT: &str = "tcp-state-tracer/recording";
/// The writer starts a new block once this many raw bytes are buffered.
pub const BLOCK_TARGET: usize = 256 << 10;
/// No block may claim more raw bytes than this (a corrupt length must not
/// make the reader allocate gigabytes).
pub const MAX_BLOCK: u32 = 16 << 20;
/// Deflate level of the blocks (miniz_oxide: 0-10; 6 is zlib's default).
const DEFLATE_LEVEL: u8 = 6;
const BLOCK_HEADER: usize = 12;
/// How every event record the writer emits begins.
const EVENT_PREFIX: &[u8] = b"{\"type\":\"event\",";

/// One line of a block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Header(Header),
    Event(RecEvent),
    Snapshot(Box<RecSnapshot>),
    End(End),
    /// A record type from a newer writer: skipped.
    #[serde(other)]
    Unknown,
}

/// The first record: what was recorded, where and when.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Header {
    /// `FORMAT`.
    pub format: String,
    /// The format version (`VERSION` when written).
    pub version: u32,
    pub tracer_version: String,
    /// Host name and kernel release (`uname -n`, `uname -r`).
    pub host: String,
    pub kernel: String,
    /// The filter, as the summary describes it, and as its fields.
    pub filter: String,
    pub filter_spec: serde_json::Value,
    /// Wall-clock start, RFC 3339 UTC.
    pub start_time: String,
    /// CLOCK_MONOTONIC at the start, ns (the kernel's event clock).
    pub start_mono_ns: u64,
    pub snapshot_every_s: f64,
}

/// The last record of a recording that stopped cleanly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct End {
    /// `duration`, `signal` or `max_size`.
    pub reason: String,
    /// Event records written.
    pub events: u64,
    /// Events the kernel's ring buffer had no room for (not in the file; the
    /// snapshots' counts include them).
    pub events_dropped: u64,
    /// Ring records that could not be decoded.
    pub undecodable: u64,
}

/// One transition: the fields of `tracer events --json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecEvent {
    pub time: String,
    pub cookie: u64,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub family: String,
    pub local: String,
    pub remote: String,
    pub old_state: String,
    pub new_state: String,
    pub in_old_state_us: Option<f64>,
    pub direction: String,
    pub handshake_us: Option<f64>,
    pub handshake_retransmits: Option<u32>,
    pub close: Option<String>,
    pub sk_err: Option<u16>,
    pub lifetime_ms: Option<f64>,
    pub bytes_received: Option<u64>,
    pub bytes_sent_acked: Option<u64>,
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    /// Network namespace inode (0 in recordings made before it existed).
    pub netns: u32,
}

/// The `&'static str` among `names` equal to `s`, else `fallback`.
fn intern(
    s: &str,
    names: impl IntoIterator<Item = &'static str>,
    fallback: &'static str,
) -> &'static str {
    names.into_iter().find(|n| *n == s).unwrap_or(fallback)
}

fn state_names() -> impl Iterator<Item = &'static str> {
    (0..state::COUNT as u8).map(state_name)
}

fn close_names() -> impl Iterator<Item = &'static str> {
    (1..close::COUNT as u8).map(close_kind_name)
}

impl RecEvent {
    pub fn from_transition(t: &Transition) -> Self {
        RecEvent {
            time: t.time.clone(),
            cookie: t.cookie,
            pid: t.pid,
            comm: t.comm.clone(),
            family: t.family.into(),
            local: t.local.clone(),
            remote: t.remote.clone(),
            old_state: t.old_state.into(),
            new_state: t.new_state.into(),
            in_old_state_us: t.in_old_state_us,
            direction: t.direction.into(),
            handshake_us: t.handshake_us,
            handshake_retransmits: t.handshake_retransmits,
            close: t.close.map(Into::into),
            sk_err: t.sk_err,
            lifetime_ms: t.lifetime_ms,
            bytes_received: t.bytes_received,
            bytes_sent_acked: t.bytes_sent_acked,
            cgroup_id: t.cgroup_id,
            cgroup: t.cgroup.clone(),
            netns: t.netns,
        }
    }

    /// Back to a `Transition` for printing. Names outside this build's
    /// vocabulary (a newer writer's) print as UNKNOWN / other.
    pub fn to_transition(&self) -> Transition {
        Transition {
            time: self.time.clone(),
            cookie: self.cookie,
            pid: self.pid,
            comm: self.comm.clone(),
            family: intern(&self.family, ["ipv4", "ipv6"], "ipv4"),
            local: self.local.clone(),
            remote: self.remote.clone(),
            old_state: intern(&self.old_state, state_names(), "UNKNOWN"),
            new_state: intern(&self.new_state, state_names(), "UNKNOWN"),
            in_old_state_us: self.in_old_state_us,
            direction: intern(&self.direction, (0..3).map(dir_name), "unknown"),
            handshake_us: self.handshake_us,
            handshake_retransmits: self.handshake_retransmits,
            close: self
                .close
                .as_deref()
                .map(|c| intern(c, close_names(), "other")),
            sk_err: self.sk_err,
            lifetime_ms: self.lifetime_ms,
            bytes_received: self.bytes_received,
            bytes_sent_acked: self.bytes_sent_acked,
            cgroup_id: self.cgroup_id,
            cgroup: self.cgroup.clone(),
            netns: self.netns,
        }
    }
}

/// A histogram by bucket lower bound (ns), so a change of the kernel's
/// bucket layout does not garble old files.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecHist {
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
    /// (bucket lower bound ns, count), non-empty buckets only.
    pub buckets: Vec<(u64, u64)>,
}

impl RecHist {
    fn from_hist(h: &Histogram) -> Self {
        RecHist {
            count: h.count,
            sum_ns: h.sum_ns,
            max_ns: h.max_ns,
            buckets: h.nonzero().map(|(lo, _, n)| (lo, n)).collect(),
        }
    }

    fn to_hist(&self) -> Histogram {
        let mut h = Histogram::default();
        for (lo, n) in &self.buckets {
            h.buckets[hist::bucket(*lo)] = h.buckets[hist::bucket(*lo)].saturating_add(*n);
        }
        h.count = self.count;
        h.sum_ns = self.sum_ns;
        h.max_ns = self.max_ns;
        h
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecTransition {
    pub from: String,
    pub to: String,
    pub count: u64,
}

/// One flow of the per-flow table, its key and counters by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecFlow {
    /// `active`, `passive` or `unknown`.
    pub direction: String,
    /// 2 (AF_INET) or 10 (AF_INET6); IPv6 addresses stay as the kernel had
    /// them (v4-mapped ones included).
    pub family: u16,
    pub remote: IpAddr,
    pub local: IpAddr,
    /// Remote port for active flows, local port otherwise.
    pub port: u16,
    pub pid: u32,
    /// Network namespace inode.
    pub netns: u32,
    /// The flow's figures, under `FlowStats`' own names (flattened: the
    /// record's fields follow the key's).
    #[serde(flatten, with = "RecFlowStats")]
    pub stats: FlowStats,
}

/// `FlowStats` as recordings write it: serde's remote derive reads and
/// writes the kernel's struct through this list (the owner's comm as text),
/// in the order the format has always had; a field added to `FlowStats`
/// fails to compile here until it is named.
#[derive(Serialize, Deserialize)]
#[serde(remote = "FlowStats", default = "FlowStats::default")]
struct RecFlowStats {
    #[serde(with = "comm_text")]
    comm: [u8; tracer_common::TASK_COMM_LEN],
    cgroup_id: u64,
    established: u64,
    connect_failed: u64,
    connect_no_local_port: u64,
    time_wait: u64,
    fin_wait2_parked: u64,
    resets_sent: u64,
    resets_received: u64,
    close_local_first: u64,
    close_peer_first: u64,
    close_simultaneous: u64,
    handshake_count: u64,
    handshake_sum_ns: u64,
    handshake_max_ns: u64,
    handshake_retrans: u64,
    retrans_total: u64,
    closed: u64,
    lifetime_sum_ns: u64,
    lifetime_max_ns: u64,
    bytes_received: u64,
    bytes_acked: u64,
}

/// The comm bytes as the text `comm_str` makes of them, and back.
mod comm_text {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        c: &[u8; tracer_common::TASK_COMM_LEN],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::model::comm_str(c))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<[u8; tracer_common::TASK_COMM_LEN], D::Error> {
        Ok(super::comm_bytes(&String::deserialize(d)?))
    }
}

impl Default for RecFlow {
    fn default() -> Self {
        RecFlow::from_flow(&FlowKey::default(), &FlowStats::default())
    }
}

fn raw_ip(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*raw))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

fn ip_raw(ip: IpAddr) -> [u8; 16] {
    let mut raw = [0u8; 16];
    match ip {
        IpAddr::V4(a) => raw[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => raw = a.octets(),
    }
    raw
}

fn comm_bytes(s: &str) -> [u8; tracer_common::TASK_COMM_LEN] {
    let mut c = [0u8; tracer_common::TASK_COMM_LEN];
    let b = s.as_bytes();
    let n = b.len().min(c.len() - 1);
    c[..n].copy_from_slice(&b[..n]);
    c
}

impl RecFlow {
    fn from_flow(k: &FlowKey, f: &FlowStats) -> Self {
        RecFlow {
            direction: dir_name(k.dir).into(),
            family: k.family,
            remote: raw_ip(k.family, &k.raddr),
            local: raw_ip(k.family, &k.laddr),
            port: k.port,
            pid: k.tgid,
            netns: k.netns,
            stats: *f,
        }
    }

    fn to_flow(&self) -> (FlowKey, FlowStats) {
        let dir = [dir::ACTIVE, dir::PASSIVE]
            .into_iter()
            .find(|d| dir_name(*d) == self.direction)
            .unwrap_or(dir::UNKNOWN);
        let key = FlowKey {
            raddr: ip_raw(self.remote),
            laddr: ip_raw(self.local),
            family: self.family,
            port: self.port,
            tgid: self.pid,
            netns: self.netns,
            dir,
            gen: 0,
            _pad: [0; 2],
        };
        (key, self.stats)
    }
}

/// Counter slots no counter uses.
#[cfg(test)]
const UNUSED_COUNTERS: &[u32] = &[22, 23];

/// The stable name of `COUNTERS` slot `i` (what recordings store).
pub fn counter_name(i: u32) -> Option<String> {
    let fixed = match i {
        counter::TRANSITIONS => "transitions",
        counter::RINGBUF_DROPS => "ringbuf_drops",
        counter::INFLIGHT_MISSING => "inflight_missing",
        counter::INFLIGHT_INSERT_FAILED => "inflight_insert_failed",
        counter::FLOW_TABLE_FULL => "flow_table_full",
        counter::CONNECT_ATTEMPTS => "connect_attempts",
        counter::ACTIVE_ESTABLISHED => "active_established",
        counter::PASSIVE_ESTABLISHED => "passive_established",
        counter::CLOSE_LOCAL_FIRST => "close_local_first",
        counter::CLOSE_PEER_FIRST => "close_peer_first",
        counter::CLOSE_SIMULTANEOUS => "close_simultaneous",
        counter::ACTIVE_HANDSHAKE_RETRANS => "active_handshake_retrans",
        counter::PASSIVE_HANDSHAKE_RETRANS => "passive_handshake_retrans",
        counter::FILTERED_OUT => "filtered_out",
        counter::NON_TCP => "non_tcp",
        counter::SKIPPED_OTHER => "skipped_other",
        counter::SKIPPED_NO_OFFSETS => "skipped_no_offsets",
        counter::TCP_SOCK_UNAVAILABLE => "tcp_sock_unavailable",
        counter::LISTENER_TABLE_FULL => "listener_table_full",
        counter::PASSIVE_RTT_UNKNOWN => "passive_rtt_unknown",
        counter::SYNACK_RETRANSMITS => "synack_retransmits",
        counter::LISTENER_STATS_FULL => "listener_stats_full",
        counter::SYNACK_FILTERED_OUT => "synack_filtered_out",
        counter::SYNACK_LISTENER_STATS_FULL => "synack_listener_stats_full",
        counter::QUEUE_DROPS => "queue_drops",
        counter::QUEUE_DROPS_FILTERED_OUT => "queue_drops_filtered_out",
        counter::LISTENER_DROPS_UNREADABLE => "listener_drops_unreadable",
        counter::HALF_OPEN_RESETS => "half_open_resets",
        counter::HALF_OPEN_RESETS_FILTERED_OUT => "half_open_resets_filtered_out",
        i if (counter::CLOSE_BASE..counter::TIME_WAIT_BY_DIR).contains(&i) => {
            let k = (i - counter::CLOSE_BASE) as u8;
            let name = if k == close::NONE {
                "none"
            } else {
                close_kind_name(k)
            };
            return Some(format!("close.{name}"));
        }
        i if (counter::TIME_WAIT_BY_DIR..counter::TIME_WAIT_BY_DIR_END).contains(&i) => {
            let d = (i - counter::TIME_WAIT_BY_DIR) as u8;
            return Some(format!("time_wait_by_side.{}", dir_name(d)));
        }
        _ => return None,
    };
    Some(fixed.into())
}

/// The stable name of `HISTS` slot `i`.
pub fn hist_name(i: u32) -> Option<&'static str> {
    Some(match i {
        hist_kind::ACTIVE => "active_handshake",
        hist_kind::ACTIVE_RETRANS => "active_handshake_retransmitted",
        hist_kind::PASSIVE => "passive_handshake",
        hist_kind::PASSIVE_RETRANS => "passive_handshake_retransmitted",
        hist_kind::LIFETIME => "lifetime",
        _ => return None,
    })
}

/// The aggregates and the report's other inputs at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecSnapshot {
    /// Wall-clock time, RFC 3339 UTC, and CLOCK_MONOTONIC ns.
    pub time: String,
    pub mono_ns: u64,
    /// Seconds since the recording started (the report's duration).
    pub elapsed_s: f64,
    pub counters: BTreeMap<String, u64>,
    pub transitions: Vec<RecTransition>,
    pub histograms: BTreeMap<String, RecHist>,
    pub flows: Vec<RecFlow>,
    /// What no flow row holds (evicted rows, the kernel table's overflow).
    pub other_flow: Option<RecFlow>,
    /// Volume each flow of `flows` may miss, by index, where it may miss any.
    pub flow_errors: Vec<(usize, u64)>,
    /// How exact `flows` is (absent in older recordings: read as exact).
    pub breakdown: crate::model::Breakdown,
    /// TIME_WAIT entries per CLOCK_MONOTONIC second.
    pub time_wait_by_second: Vec<(u64, u64)>,
    /// The sock_diag population, tallied as the report reads it.
    pub sockets: TallyRecord,
    pub sysctls: Sysctls,
    pub pressure_warn_pct: f64,
    pub close_wait_threshold_s: f64,
    pub close_wait_leaks: Vec<CloseWaitLeak>,
    /// CLOCK_MONOTONIC second the TIME_WAIT model was evaluated at.
    pub now_sec: u64,
    /// (cgroup id, path). A list: JSON map keys would be strings.
    pub cgroup_paths: Vec<(u64, String)>,
    pub filter: String,
}

impl RecSnapshot {
    pub fn new(snap: &Snapshot, inputs: &ReportInputs, time: String, mono_ns: u64) -> Self {
        let counters = (0..counter::COUNT)
            .filter_map(|i| Some((counter_name(i)?, snap.counter(i))))
            .filter(|(_, v)| *v > 0)
            .collect();
        let transitions = snap
            .transition_pairs()
            .map(|(o, n, count)| RecTransition {
                from: state_name(o).into(),
                to: state_name(n).into(),
                count,
            })
            .collect();
        let histograms = (0..hist_kind::COUNT)
            .filter_map(|i| {
                let h = snap.hists.get(i as usize)?;
                Some((hist_name(i)?.to_string(), RecHist::from_hist(h)))
            })
            .collect();
        RecSnapshot {
            time,
            mono_ns,
            elapsed_s: inputs.duration_s,
            counters,
            transitions,
            histograms,
            flows: snap
                .flows
                .iter()
                .map(|(k, f)| RecFlow::from_flow(k, f))
                .collect(),
            other_flow: Some(RecFlow::from_flow(&FlowKey::default(), &snap.other_flow)),
            flow_errors: snap
                .flows
                .iter()
                .enumerate()
                .filter_map(|(i, (k, _))| Some((i, *snap.flow_errors.get(k)?)))
                .collect(),
            breakdown: snap.breakdown,
            time_wait_by_second: snap.time_wait_by_second.clone(),
            sockets: inputs.sockets.to_record(),
            sysctls: inputs.sysctls.clone(),
            pressure_warn_pct: inputs.pressure_warn_pct,
            close_wait_threshold_s: inputs.close_wait_threshold_s,
            close_wait_leaks: inputs.close_wait_leaks.clone(),
            now_sec: inputs.now_sec,
            cgroup_paths: inputs
                .cgroup_paths
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect(),
            filter: inputs.filter.clone(),
        }
    }

    /// The kernel snapshot, in this build's layout. Names this build does
    /// not know (a newer writer's counters) are left out.
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::empty();
        for i in 0..counter::COUNT {
            if let Some(v) = counter_name(i).and_then(|n| self.counters.get(&n)) {
                s.counters[i as usize] = *v;
            }
        }
        let index = |name: &str| (0..state::COUNT).find(|i| state_name(*i as u8) == name);
        for t in &self.transitions {
            if let (Some(o), Some(n)) = (index(&t.from), index(&t.to)) {
                s.transitions[o][n] = s.transitions[o][n].saturating_add(t.count);
            }
        }
        for i in 0..hist_kind::COUNT {
            if let Some(h) = hist_name(i).and_then(|n| self.histograms.get(n)) {
                s.hists[i as usize] = h.to_hist();
            }
        }
        s.flows = self.flows.iter().map(RecFlow::to_flow).collect();
        if let Some(o) = &self.other_flow {
            s.other_flow = o.to_flow().1;
        }
        for (i, err) in &self.flow_errors {
            if let Some((k, _)) = s.flows.get(*i) {
                s.flow_errors.insert(*k, *err);
            }
        }
        s.breakdown = self.breakdown;
        s.time_wait_by_second = self.time_wait_by_second.clone();
        s
    }

    /// The report's other inputs, with `top` rows per table.
    pub fn inputs(&self, top: usize) -> ReportInputs {
        let sysctls = Sysctls {
            ip_local_port_range: if self.sysctls.ip_local_port_range == (0, 0) {
                self.sockets.ephemeral
            } else {
                self.sysctls.ip_local_port_range
            },
            ..self.sysctls.clone()
        };
        ReportInputs {
            duration_s: self.elapsed_s,
            filter: self.filter.clone(),
            top,
            sockets: SocketTally::from_record(&self.sockets),
            sysctls,
            pressure_warn_pct: self.pressure_warn_pct,
            close_wait_leaks: self.close_wait_leaks.clone(),
            close_wait_threshold_s: self.close_wait_threshold_s,
            now_sec: self.now_sec,
            cgroup_paths: self.cgroup_paths.iter().cloned().collect(),
            namespaces: Vec::new(),
            coverage: Default::default(),
            listen: Default::default(),
        }
    }
}

/// Why a recording could not be read. Offsets are in bytes from the start.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("reading the recording: {0}")]
    Io(#[from] io::Error),
    #[error("not a tracer recording (the file does not start with {MAGIC:?})")]
    BadMagic,
    #[error("recording format version {0} is newer than this tracer reads ({VERSION}); use a newer tracer")]
    Version(u32),
    #[error("recording truncated at byte {offset}: {what}")]
    Truncated { offset: u64, what: String },
    #[error("recording corrupt at byte {offset} (block {block}): {what}")]
    Corrupt {
        offset: u64,
        block: u64,
        what: String,
    },
}

/// Writes a recording: the magic and version, then blocks of records.
pub struct Writer<W: Write> {
    out: W,
    buf: Vec<u8>,
    written: u64,
}

impl<W: Write> Writer<W> {
    /// Start a recording with its header record.
    pub fn new(mut out: W, header: &Header) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        let mut w = Writer {
            out,
            buf: Vec::with_capacity(BLOCK_TARGET + 4096),
            written: (MAGIC.len() + 4) as u64,
        };
        w.push(&Record::Header(header.clone()))?;
        Ok(w)
    }

    /// Append a record; a block is written once enough is buffered.
    pub fn push(&mut self, r: &Record) -> io::Result<()> {
        serde_json::to_writer(&mut self.buf, r)?;
        self.buf.push(b'\n');
        if self.buf.len() >= BLOCK_TARGET {
            self.flush_block()?;
        }
        Ok(())
    }

    /// Write what is buffered as one block (nothing if empty).
    pub fn flush_block(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let raw_len = u32::try_from(self.buf.len())
            .ok()
            .filter(|n| *n <= MAX_BLOCK)
            .ok_or_else(|| io::Error::other("record larger than a block"))?;
        let z = miniz_oxide::deflate::compress_to_vec(&self.buf, DEFLATE_LEVEL);
        let mut head = [0u8; BLOCK_HEADER];
        head[..4].copy_from_slice(&(z.len() as u32).to_le_bytes());
        head[4..8].copy_from_slice(&raw_len.to_le_bytes());
        head[8..].copy_from_slice(&crc32fast::hash(&z).to_le_bytes());
        self.out.write_all(&head)?;
        self.out.write_all(&z)?;
        self.out.flush()?;
        self.written += (BLOCK_HEADER + z.len()) as u64;
        self.buf.clear();
        Ok(())
    }

    /// Bytes written to the file so far (buffered records not included).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Raw bytes buffered for the next block.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Write the end record and the last block.
    pub fn finish(mut self, end: &End) -> io::Result<W> {
        self.push(&Record::End(end.clone()))?;
        self.flush_block()?;
        Ok(self.out)
    }
}

/// Fill `buf` from `r`; the number of bytes read (less than `buf.len()` only at EOF).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Reads the records of a recording, one block at a time.
pub struct Reader<R: Read> {
    input: R,
    offset: u64,
    block: u64,
    lines: Vec<Vec<u8>>,
    next_line: usize,
}

impl<R: Read> Reader<R> {
    /// Check the magic and the version.
    pub fn new(mut input: R) -> Result<Self, RecordError> {
        let mut head = [0u8; 12];
        let n = read_full(&mut input, &mut head)?;
        if n < MAGIC.len() || &head[..8] != MAGIC {
            return Err(if n < MAGIC.len() && head[..n] == MAGIC[..n] {
                RecordError::Truncated {
                    offset: n as u64,
                    what: "inside the file header".into(),
                }
            } else {
                RecordError::BadMagic
            });
        }
        if n < head.len() {
            return Err(RecordError::Truncated {
                offset: n as u64,
                what: "inside the file header".into(),
            });
        }
        let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if version == 0 || version > VERSION {
            return Err(RecordError::Version(version));
        }
        Ok(Reader {
            input,
            offset: 12,
            block: 0,
            lines: Vec::new(),
            next_line: 0,
        })
    }

    fn corrupt(&self, what: impl Into<String>) -> RecordError {
        RecordError::Corrupt {
            offset: self.offset,
            block: self.block,
            what: what.into(),
        }
    }

    /// Read the next block into `lines`; false at a clean end of file.
    fn next_block(&mut self) -> Result<bool, RecordError> {
        let mut head = [0u8; BLOCK_HEADER];
        let n = read_full(&mut self.input, &mut head)?;
        if n == 0 {
            return Ok(false);
        }
        if n < BLOCK_HEADER {
            return Err(RecordError::Truncated {
                offset: self.offset + n as u64,
                what: format!("inside the header of block {}", self.block + 1),
            });
        }
        self.block += 1;
        let word = |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let (zlen, raw_len, crc) = (word(0), word(4), word(8));
        if raw_len == 0 || raw_len > MAX_BLOCK || zlen == 0 || zlen > MAX_BLOCK + (1 << 16) {
            return Err(self.corrupt(format!(
                "implausible block lengths ({zlen} compressed, {raw_len} raw)"
            )));
        }
        let mut z = vec![0u8; zlen as usize];
        let got = read_full(&mut self.input, &mut z)?;
        if got < z.len() {
            return Err(RecordError::Truncated {
                offset: self.offset + (BLOCK_HEADER + got) as u64,
                what: format!("block {} has {got} of its {zlen} bytes", self.block),
            });
        }
        if crc32fast::hash(&z) != crc {
            return Err(self.corrupt("checksum mismatch"));
        }
        let raw = miniz_oxide::inflate::decompress_to_vec_with_limit(&z, raw_len as usize)
            .map_err(|e| self.corrupt(format!("deflate: {e}")))?;
        if raw.len() != raw_len as usize {
            return Err(self.corrupt(format!(
                "block holds {} bytes, its header says {raw_len}",
                raw.len()
            )));
        }
        self.offset += (BLOCK_HEADER + z.len()) as u64;
        self.lines = raw
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        self.next_line = 0;
        Ok(true)
    }

    /// The next record, or None at the end of the file.
    pub fn next_record(&mut self) -> Result<Option<Record>, RecordError> {
        while self.next_line >= self.lines.len() {
            if !self.next_block()? {
                return Ok(None);
            }
        }
        let i = self.next_line;
        self.next_line += 1;
        let line = &self.lines[i];
        // Events are nearly all of a file and the writer puts their tag
        // first: read them straight into their struct (3x faster than
        // serde's buffering of internally tagged enums).
        let parsed = if line.starts_with(EVENT_PREFIX) {
            serde_json::from_slice(line).map(Record::Event)
        } else {
            serde_json::from_slice(line)
        };
        parsed
            .map(Some)
            .map_err(|e| self.corrupt(format!("record {} of the block: {e}", i + 1)))
    }
}

/// What a whole recording says, besides its events.
#[derive(Clone, Debug)]
pub struct Contents {
    pub header: Header,
    /// The last snapshot (the report's).
    pub last_snapshot: Option<RecSnapshot>,
    pub snapshots: u64,
    pub events: u64,
    pub end: End,
}

/// Read a whole recording, handing each event to `on_event`. A recording
/// must start with its header and end with its end record; anything else is
/// an error (after the events before the damage were handed over).
pub fn read(
    input: impl Read,
    mut on_event: impl FnMut(&RecEvent) -> io::Result<()>,
) -> Result<Contents, RecordError> {
    let mut r = Reader::new(input)?;
    let header = match r.next_record()? {
        Some(Record::Header(h)) => h,
        Some(_) => return Err(r.corrupt("the first record is not the header")),
        None => {
            return Err(RecordError::Truncated {
                offset: r.offset,
                what: "no records at all".into(),
            })
        }
    };
    let mut c = Contents {
        header,
        last_snapshot: None,
        snapshots: 0,
        events: 0,
        end: End::default(),
    };
    loop {
        match r.next_record()? {
            Some(Record::Event(e)) => {
                c.events += 1;
                on_event(&e)?;
            }
            Some(Record::Snapshot(s)) => {
                c.snapshots += 1;
                c.last_snapshot = Some(*s);
            }
            Some(Record::End(end)) => {
                c.end = end;
                if r.next_record()?.is_some() {
                    return Err(r.corrupt("records after the end record"));
                }
                return Ok(c);
            }
            Some(Record::Header(_)) => return Err(r.corrupt("a second header")),
            Some(Record::Unknown) => {}
            None => {
                return Err(RecordError::Truncated {
                    offset: r.offset,
                    what: format!(
                        "no end record (the recorder did not stop cleanly); {} events and {} snapshots were read",
                        c.events, c.snapshots
                    ),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests;
