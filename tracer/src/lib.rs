//! TCP state tracer: userspace library.
//!
//! Data flows one way: kernel maps/ring buffer (`probe`) → plain data
//! (`model`, `event`) → outputs (`report`, text/JSON lines). `Tracer` ties the
//! probe to the sock_diag population so the binary and the integration tests
//! produce reports through the same path.

pub mod cli;
pub mod event;
pub mod export;
pub mod filter;
pub mod host;
pub mod manual;
pub mod model;
pub mod probe;
pub mod record;
pub mod report;
pub mod rings;
pub mod run;
pub mod top;

use std::{collections::BTreeMap, time::Instant};

use anyhow::Context as _;
use tracer_common::{flag, state};

use crate::{
    filter::FilterSpec,
    host::{cgroup, diag, diag::DiagSocket, listeners, netns, population, procs},
    model::Snapshot,
    probe::{Probe, ProbeOptions},
    report::{CloseWaitLeak, Summary},
};

/// Knobs of the summary report.
#[derive(Clone, Debug)]
pub struct SummaryOptions {
    /// Rows in each top-N table.
    pub top: usize,
    /// Port-pressure warning threshold, percent of the ephemeral port range.
    pub pressure_warn_pct: f64,
    /// CLOSE_WAIT sockets older than this are listed as leaks.
    pub close_wait_threshold: std::time::Duration,
    /// Name the process holding each CLOSE_WAIT leak (a /proc/*/fd walk) and
    /// resolve cgroup paths (a walk of the cgroup tree). The exporter's
    /// metrics need neither, so its scrapes skip both.
    pub owners: bool,
}

impl Default for SummaryOptions {
    fn default() -> Self {
        SummaryOptions {
            top: 10,
            pressure_warn_pct: 50.0,
            close_wait_threshold: std::time::Duration::from_secs(30),
            owners: true,
        }
    }
}

/// CLOCK_MONOTONIC now, in ns: the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// `clock` now, in ns.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// An attached tracer.
pub struct Tracer {
    pub probe: Probe,
    filter: FilterSpec,
    started: Instant,
}

impl Tracer {
    /// Validate the filter, load and attach the programs, and tell them who
    /// owns the listening sockets that already exist.
    pub fn start(filter: FilterSpec, emit_events: bool, ring_bytes: u32) -> anyhow::Result<Self> {
        Self::start_with_btf(filter, emit_events, ring_bytes, true, None)
    }

    /// Attached with events off, for the modes that only aggregate
    /// (summary, serve): the ring buffer stays at its one-page minimum.
    pub fn aggregating(filter: &cli::FilterArgs) -> anyhow::Result<Self> {
        Self::start_with_btf(
            filter.spec()?,
            false,
            IDLE_RING_BYTES,
            true,
            filter.btf.clone(),
        )
    }

    /// `start`, keeping the per-flow table only if `flows` (the modes that
    /// never read it save its updates) and reading kernel BTF from
    /// `btf_path` when given (`--btf`).
    pub fn start_with_btf(
        filter: FilterSpec,
        emit_events: bool,
        ring_bytes: u32,
        flows: bool,
        btf_path: Option<std::path::PathBuf>,
    ) -> anyhow::Result<Self> {
        filter.validate()?;
        let opts = ProbeOptions {
            filter: filter.to_kernel(),
            emit_events,
            flows,
            ring_bytes,
            btf_path,
            ..Default::default()
        };
        let mut probe = Probe::attach(&opts)?;
        if let Err(e) = seed_listeners(&mut probe) {
            log::warn!("could not look up existing listeners' owners: {e:#}");
        }
        Ok(Tracer {
            probe,
            filter,
            started: Instant::now(),
        })
    }

    pub fn filter(&self) -> &FilterSpec {
        &self.filter
    }

    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        Ok(self.probe.snapshot()?)
    }

    /// Sockets in the states the report counts, filtered like the trace.
    pub fn sockets(&self) -> anyhow::Result<Vec<DiagSocket>> {
        let mut all = diag::dump(diag::population_states())?;
        all.retain(|s| self.filter.matches_socket(s));
        Ok(all)
    }

    /// The report, as of now, with default options and `top` rows per table.
    pub fn summary(&self, top: usize) -> anyhow::Result<Summary> {
        self.summary_with(&SummaryOptions {
            top,
            ..Default::default()
        })
    }

    /// The report, as of now.
    pub fn summary_with(&self, opts: &SummaryOptions) -> anyhow::Result<Summary> {
        self.summary_of(&self.snapshot()?, opts)
    }

    /// The report on a snapshot taken earlier, with the population as of now.
    pub fn summary_of(&self, snap: &Snapshot, opts: &SummaryOptions) -> anyhow::Result<Summary> {
        Ok(self.report_inputs(snap, opts)?.build(snap))
    }

    /// Everything besides the snapshot that the report is built from, read
    /// now (sock_diag, /proc, sysctls, cgroup paths): what a recording keeps
    /// beside each snapshot so `tracer report` rebuilds the same report.
    pub fn report_inputs(
        &self,
        snap: &Snapshot,
        opts: &SummaryOptions,
    ) -> anyhow::Result<ReportInputs> {
        let sysctls = report::Sysctls::read();
        // Streamed into the tally: no list of every socket on the host.
        let mut tally = report::SocketTally::new(snap, sysctls.ip_local_port_range);
        let found = population::namespaces(&self.filter)?;
        let socks = self.probe.socket_tables();
        let read = population::read_all(
            &found,
            &self.filter,
            &sysctls,
            socks.as_ref().ok().copied(),
            &mut tally,
        )?;
        let now_ns = monotonic_ns();
        let mut listen = listeners::of(&read.listen, &self.filter, now_ns);
        listeners::add_kernel_stats(
            &mut listen,
            &snap.listener_stats,
            snap.counter(tracer_common::counter::SYNACK_RETRANSMITS),
        );
        if let (Err(e), false) = (&socks, tally.close_wait.is_empty()) {
            log::warn!("CLOSE_WAIT ages unavailable (the per-socket table): {e:#}");
        }
        let mut cgroups = cgroup::Resolver::new();
        let leaks = self.close_wait_leaks(
            &tally.close_wait,
            &read.close_wait_states,
            now_ns,
            opts.close_wait_threshold,
            opts.owners.then_some(&mut cgroups),
        )?;
        let mut cgroup_paths = BTreeMap::new();
        for (_, f) in snap.flows.iter().filter(|_| opts.owners) {
            if let Some(p) = cgroups.path(f.cgroup_id) {
                cgroup_paths.insert(f.cgroup_id, p);
            }
        }
        Ok(ReportInputs {
            duration_s: self.started.elapsed().as_secs_f64(),
            filter: self.filter.describe(),
            top: opts.top,
            sockets: tally,
            sysctls,
            pressure_warn_pct: opts.pressure_warn_pct,
            close_wait_leaks: leaks,
            close_wait_threshold_s: opts.close_wait_threshold.as_secs_f64(),
            now_sec: now_ns / 1_000_000_000,
            cgroup_paths,
            namespaces: read.namespaces,
            coverage: read.coverage,
            listen,
        })
    }

    /// CLOSE_WAIT sockets older than `threshold`, oldest first. The age comes
    /// from the kernel side's time of the ESTABLISHED → CLOSE_WAIT transition;
    /// for sockets that entered CLOSE_WAIT before the tracer started it is
    /// the tracer's uptime, a lower bound (also where `states`, the kernel
    /// side's state by cookie, has none: a namespace read without cookies).
    /// The owner is the process holding the socket's fd now (/proc), else
    /// the one the kernel side captured; without `cgroups` (owners not
    /// wanted) only the captured one, no paths.
    fn close_wait_leaks(
        &self,
        sockets: &[(u32, DiagSocket)],
        states: &std::collections::HashMap<u64, tracer_common::SockState>,
        now_ns: u64,
        threshold: std::time::Duration,
        mut cgroups: Option<&mut cgroup::Resolver>,
    ) -> anyhow::Result<Vec<CloseWaitLeak>> {
        let uptime_ns = self.started.elapsed().as_nanos() as u64;
        let mut old = Vec::new();
        for (netns, s) in sockets.iter().filter(|(_, s)| s.state == state::CLOSE_WAIT) {
            let st = states.get(&s.cookie).copied();
            let (age_ns, exact) = match st {
                Some(st) if st.ts_state != 0 => (now_ns.saturating_sub(st.ts_state), true),
                _ => (uptime_ns, false),
            };
            if age_ns >= threshold.as_nanos() as u64 {
                old.push((*netns, s, st, age_ns, exact));
            }
        }
        let inodes: Vec<u32> = old
            .iter()
            .map(|(_, s, ..)| s.inode)
            .filter(|i| *i != 0)
            .collect();
        let holders = if inodes.is_empty() || cgroups.is_none() {
            Default::default()
        } else {
            procs::socket_owners(&inodes)
        };
        let mut leaks: Vec<CloseWaitLeak> = old
            .into_iter()
            .map(|(netns, s, st, age_ns, exact)| {
                let captured = st.filter(|st| st.flags & flag::OWNER_KNOWN != 0);
                let (pid, comm) = match (holders.get(&s.inode), captured) {
                    (Some(o), _) => (Some(o.tgid), Some(model::comm_str(&o.comm))),
                    (None, Some(st)) => (Some(st.tgid), Some(model::comm_str(&st.comm))),
                    (None, None) => (None, None),
                };
                let cgroup_id = captured.map_or(0, |st| st.cgroup_id);
                CloseWaitLeak {
                    netns,
                    local: model::endpoint(s.src, s.sport),
                    peer: model::endpoint(s.dst, s.dport),
                    pid,
                    comm,
                    age_s: age_ns as f64 / 1e9,
                    age_exact: exact,
                    cgroup_id,
                    cgroup: cgroups.as_mut().and_then(|c| c.path(cgroup_id)),
                }
            })
            .collect();
        leaks.sort_by(|a, b| b.age_s.total_cmp(&a.age_s).then(a.local.cmp(&b.local)));
        Ok(leaks)
    }
}

/// This process's network namespace inode (sock_diag answers for it).
pub fn own_netns() -> u32 {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata("/proc/self/ns/net").map_or(0, |m| m.ino() as u32)
}

/// The owned inputs of `report::build` besides the snapshot (see
/// `Tracer::report_inputs`).
#[derive(Clone, Debug)]
pub struct ReportInputs {
    pub duration_s: f64,
    pub filter: String,
    pub top: usize,
    pub sockets: report::SocketTally,
    pub sysctls: report::Sysctls,
    pub pressure_warn_pct: f64,
    pub close_wait_leaks: Vec<CloseWaitLeak>,
    pub close_wait_threshold_s: f64,
    pub now_sec: u64,
    pub cgroup_paths: BTreeMap<u64, String>,
    /// The namespaces read and what the population covers.
    pub namespaces: Vec<report::NamespaceMeta>,
    pub coverage: report::Coverage,
    /// Listeners and connects in flight (sock_diag at report time).
    pub listen: listeners::Listeners,
}

impl ReportInputs {
    /// The report on `snap` with these inputs.
    pub fn build(&self, snap: &Snapshot) -> Summary {
        report::build(
            snap,
            &report::Context {
                duration_s: self.duration_s,
                filter: self.filter.clone(),
                top: self.top,
                sockets: &self.sockets,
                ephemeral: self.sysctls.ip_local_port_range,
                sysctls: self.sysctls.clone(),
                pressure_warn_pct: self.pressure_warn_pct,
                close_wait_leaks: self.close_wait_leaks.clone(),
                close_wait_threshold_s: self.close_wait_threshold_s,
                now_sec: self.now_sec,
                cgroup_paths: &self.cgroup_paths,
                namespaces: &self.namespaces,
                coverage: self.coverage.clone(),
                listen: self.listen.clone(),
            },
        )
    }
}

fn seed_listeners(probe: &mut Probe) -> anyhow::Result<()> {
    let found = netns::discover().context("finding network namespaces")?;
    let listeners = population::listeners(&found);
    let inodes: Vec<u32> = listeners.iter().map(|l| l.2).collect();
    let owners = procs::socket_owners(&inodes);
    // Listeners keyed by (netns, port), with their socket count.
    let mut seeds: BTreeMap<tracer_common::ListenerKey, tracer_common::Owner> = BTreeMap::new();
    for (netns, port, inode) in &listeners {
        let key = tracer_common::ListenerKey {
            netns: *netns,
            port: *port,
            _pad: 0,
        };
        let seed = seeds.entry(key).or_default();
        if let Some(o) = owners.get(inode) {
            *seed = tracer_common::Owner {
                sockets: seed.sockets,
                ..*o
            };
        }
        seed.sockets += 1;
    }
    probe.seed_listeners(&seeds.into_iter().collect::<Vec<_>>())?;
    Ok(())
}

/// Linux's default net.ipv4.ip_local_port_range.
pub const DEFAULT_PORT_RANGE: (u16, u16) = (32768, 60999);

/// Each CPU's event ring size (KiB) when no `--ring-kib` is given.
pub const DEFAULT_RING_KIB: u32 = 1024;

/// `tracer record`'s default ring size per CPU (KiB): larger, since the
/// recorder does more per event than printing it.
pub const RECORD_RING_KIB: u32 = 4096;

/// The ring buffer's size (bytes) when no events are sent: one page, the
/// kernel's minimum.
pub const IDLE_RING_BYTES: u32 = 4096;

/// net.ipv4.ip_local_port_range (`DEFAULT_PORT_RANGE` if unreadable).
pub fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>());
            Some((it.next()?.ok()?, it.next()?.ok()?))
        })
        .unwrap_or(DEFAULT_PORT_RANGE)
}
