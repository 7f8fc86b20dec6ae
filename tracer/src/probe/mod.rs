//! Loading, attaching and reading the eBPF side.

pub mod check;
pub mod harvest;
pub mod offsets;

use std::sync::{Arc, Mutex};

use aya::{
    maps::{
        Array, ArrayOfMaps, HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuHashMap,
        RingBuf,
    },
    programs::BtfTracePoint,
    Btf, Ebpf, EbpfLoader,
};
use tracer_common::{
    hist::Hist, hist_kind, Filter, FlowKey, FlowStats, ListenerKey, ListenerStats, Owner, Stats,
    TwSlot, TW_SLOTS,
};

use crate::{
    host::diag_storage::SocketTables,
    model::{Breakdown, Histogram, Snapshot},
};
use harvest::{HarvestThread, Harvester};
use offsets::OffsetError;

/// The eBPF object built by build.rs (empty when bpf-linker was missing).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));
/// The embedded object, for `check`'s reading of it.
pub static OBJECT_BYTES: &[u8] = OBJECT;

/// Name of the program (and of its kernel tracepoint).
pub const PROGRAM: &str = "inet_sock_set_state";
/// The listener-side program, on `tcp:tcp_retransmit_synack` (its name too).
pub const SYNACK_PROGRAM: &str = "tcp_retransmit_synack";
/// The queue-drop program, on `skb:kfree_skb` (its name too): attached in
/// events mode where the kernel names the listener (`offsets::listen_overflow_reason`).
pub const QUEUE_DROP_PROGRAM: &str = "kfree_skb";
/// The empty program on the same tracepoint (benchmark floor).
pub const NOOP_PROGRAM: &str = "noop";

/// In-kernel run statistics of one program. Filled only while
/// `kernel.bpf_stats_enabled` is 1 (or a `aya::sys::enable_stats` fd is held).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    pub run_count: u64,
    pub run_time_ns: u64,
    /// Runs the kernel skipped because the program was already running on
    /// that CPU (`recursion_misses` in the program's fdinfo): transitions the
    /// tracer never saw. 0 where the kernel does not report it.
    pub recursion_misses: u64,
    /// Instructions the verifier processed when it loaded the program.
    pub verified_insns: Option<u32>,
}

impl RunStats {
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.run_count > 0).then(|| self.run_time_ns as f64 / self.run_count as f64)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "insufficient privileges: missing {0}. Run as root, or give the binary the \
         capabilities (e.g. `setcap cap_bpf,cap_perfmon+ep tracer`)"
    )]
    Privileges(String),
    #[error(
        "this tracer binary was built without its eBPF object (bpf-linker was not found at \
         build time); build it with `cargo xtask build`"
    )]
    NoObject,
    #[error(transparent)]
    Offsets(#[from] OffsetError),
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("reading kernel BTF for tp_btf: {0}")]
    Btf(#[from] aya::BtfError),
    #[error("program {PROGRAM}: {0}")]
    Program(#[from] aya::programs::ProgramError),
    #[error(
        "the kernel (Linux {kernel}) refused the tracer's program{hint}. The verifier said:\n{tail}\n\
         (the tracer needs Linux >= 5.12 with BTF: tp_btf, the BPF ring buffer and \
         bpf_get_socket_cookie from tracing programs; `tracer check` reports each mode)"
    )]
    Rejected {
        kernel: String,
        hint: String,
        tail: String,
    },
    #[error("map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("reading the CPU list ({0}): {1}")]
    Cpus(&'static str, std::io::Error),
    #[error("harvesting the flow table: {0:#}")]
    Harvest(anyhow::Error),
}

/// The CPU count the kernel may ever run (the per-CPU ring array's size).
fn possible_cpus() -> Result<u32, ProbeError> {
    aya::util::nr_cpus()
        .map(|n| n as u32)
        .map_err(|(path, e)| ProbeError::Cpus(path, e))
}

/// One ring of `bytes` for every online CPU, set in `EVENT_RINGS` at the
/// CPU's index (a CPU brought online later finds none: its events count as
/// ring-buffer drops).
fn make_rings(ebpf: &mut Ebpf, bytes: u32) -> Result<Vec<RingBuf<MapData>>, ProbeError> {
    const NAME: &str = "EVENT_RINGS";
    let map = ebpf.map_mut(NAME).ok_or(ProbeError::MissingMap(NAME))?;
    let mut outer: ArrayOfMaps<&mut MapData> =
        ArrayOfMaps::try_from(map).map_err(|e| ProbeError::Map(NAME, e))?;
    let cpus = aya::util::online_cpus().map_err(|(path, e)| ProbeError::Cpus(path, e))?;
    let mut rings = Vec::with_capacity(cpus.len());
    for cpu in cpus {
        let def = aya_obj::Map::new_from_params(
            aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_RINGBUF as u32,
            0,
            0,
            bytes,
            0,
        );
        let ring = MapData::create(def, &format!("events_cpu{cpu}"), None)
            .map_err(|e| ProbeError::Map(NAME, e))?;
        outer
            .set(cpu, &ring, 0)
            .map_err(|e| ProbeError::Map(NAME, e))?;
        let ring = RingBuf::try_from(Map::RingBuf(ring)).map_err(|e| ProbeError::Map(NAME, e))?;
        rings.push(ring);
    }
    Ok(rings)
}

fn program_stats(ebpf: &Ebpf, name: &str) -> Result<RunStats, ProbeError> {
    let prog = ebpf
        .program(name)
        .ok_or(ProbeError::MissingMap("program"))?;
    let info = prog.info()?;
    Ok(RunStats {
        run_count: info.run_count(),
        run_time_ns: info.run_time().as_nanos() as u64,
        recursion_misses: recursion_misses(prog).unwrap_or(0),
        verified_insns: info.verified_instruction_count(),
    })
}

/// `recursion_misses` from /proc/self/fdinfo of the program's fd (aya's
/// ProgramInfo does not expose it).
fn recursion_misses(prog: &aya::programs::Program) -> Option<u64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let fd = prog.fd().ok()?.as_fd().as_raw_fd();
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The empty `noop` program attached alone to the tracepoint, to measure
/// what any tp_btf program there costs. Dropping it detaches it.
pub struct NoopProbe {
    ebpf: Ebpf,
}

impl NoopProbe {
    pub fn attach() -> Result<Self, ProbeError> {
        check_privileges()?;
        if OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        let mut ebpf = EbpfLoader::new().load(OBJECT)?;
        let btf = Btf::from_sys_fs()?;
        let prog: &mut BtfTracePoint = ebpf
            .program_mut(NOOP_PROGRAM)
            .ok_or(ProbeError::MissingMap(NOOP_PROGRAM))?
            .try_into()?;
        prog.load(PROGRAM, &btf)?;
        prog.attach()?;
        Ok(NoopProbe { ebpf })
    }

    pub fn run_stats(&self) -> Result<RunStats, ProbeError> {
        program_stats(&self.ebpf, NOOP_PROGRAM)
    }
}

/// Give the heap the kernel BTF parse used (~20 MB, freed by now) back to
/// the system, so a long-running collector's resident set stays small.
#[cfg(target_env = "gnu")]
fn release_freed_memory() {
    // SAFETY: malloc_trim only releases free heap memory; no pointers change.
    unsafe { libc::malloc_trim(0) };
}

/// (musl's allocator returns freed memory by itself.)
#[cfg(not(target_env = "gnu"))]
fn release_freed_memory() {}

/// A verifier rejection as a message that says what is missing: the last
/// lines of the log (the error and the statistics), and the kernel release
/// when it is older than the features the program uses.
fn rejected(e: aya::programs::ProgramError) -> ProbeError {
    let aya::programs::ProgramError::LoadError { verifier_log, .. } = &e else {
        return ProbeError::Program(e);
    };
    let log = verifier_log.to_string();
    let tail: Vec<&str> = log.lines().rev().take(6).collect();
    let kernel = crate::probe::check::kernel_release();
    let too_old = kernel_older_than(&kernel, (5, 12));
    ProbeError::Rejected {
        hint: if too_old {
            format!(": Linux {kernel} is older than 5.12")
        } else {
            String::new()
        },
        kernel,
        tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    }
}

/// Is a kernel release ("6.1.0-57-cloud-amd64") older than `(major, minor)`?
pub fn kernel_older_than(release: &str, want: (u32, u32)) -> bool {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    match (it.next(), it.next()) {
        (Some(a), Some(b)) => (a, b) < want,
        _ => false,
    }
}

/// Check for the capabilities loading and attaching need, before touching
/// anything, so a failure leaves nothing half-attached.
pub fn check_privileges() -> Result<(), ProbeError> {
    use caps::{CapSet, Capability};
    let has = |c| caps::has_cap(None, CapSet::Effective, c).unwrap_or(false);
    if has(Capability::CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing: Vec<&str> = [
        (Capability::CAP_BPF, "CAP_BPF"),
        (Capability::CAP_PERFMON, "CAP_PERFMON"),
    ]
    .into_iter()
    .filter(|(c, _)| !has(*c))
    .map(|(_, n)| n)
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ProbeError::Privileges(format!(
            "{} (or CAP_SYS_ADMIN)",
            missing.join(" and ")
        )))
    }
}

#[derive(Clone, Debug)]
pub struct ProbeOptions {
    pub filter: Filter,
    /// Stream one event per transition to userspace (live mode).
    pub emit_events: bool,
    /// Keep the per-flow table (every mode that reports or exports flows).
    pub flows: bool,
    /// Each CPU's ring buffer size in bytes (power of two, multiple of the
    /// page size).
    pub ring_bytes: u32,
    /// Capacity of the per-flow breakdown table.
    pub flow_entries: u32,
    /// Kernel BTF to read instead of /sys/kernel/btf/vmlinux.
    pub btf_path: Option<std::path::PathBuf>,
}

/// Default size of each CPU's ring buffer (`--ring-kib`).
pub const DEFAULT_RING_BYTES: u32 = crate::DEFAULT_RING_KIB * 1024;
/// Default flow-table capacity.
pub const DEFAULT_FLOW_ENTRIES: u32 = 16_384;

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            filter: Filter::default(),
            emit_events: false,
            flows: true,
            ring_bytes: DEFAULT_RING_BYTES,
            flow_entries: DEFAULT_FLOW_ENTRIES,
            btf_path: None,
        }
    }
}

/// The loaded and attached programs, and the flow table's harvest.
/// Dropping it stops the harvest, detaches and unloads them.
pub struct Probe {
    harvest_thread: HarvestThread,
    harvest: Arc<Mutex<Harvester>>,
    ebpf: Ebpf,
    /// `QUEUE_DROP_PROGRAM` is attached.
    queue_drops: bool,
    /// Every online CPU's event ring (made before the programs attach, so
    /// no event finds its CPU without one), until `take_events`.
    rings: Vec<RingBuf<MapData>>,
}

impl Probe {
    pub fn attach(opts: &ProbeOptions) -> Result<Self, ProbeError> {
        check_privileges()?;
        if OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        let offsets = match &opts.btf_path {
            Some(p) => offsets::from_file(p)?,
            None => offsets::from_kernel()?,
        };
        let mut filter = opts.filter;
        filter.emit_events = opts.emit_events as u8;
        filter.flows = opts.flows as u8;
        // One parse of the kernel's BTF serves the loader and the program
        // (aya would otherwise read and parse it twice: start-up time).
        let btf = match &opts.btf_path {
            Some(p) => Btf::parse_file(p, aya::Endianness::default())?,
            None => Btf::from_sys_fs()?,
        };
        // Wake the reader once a quarter of the ring is pending (it also
        // drains on a timer): one wake-up per burst, not per event.
        let wake_bytes = u64::from(opts.ring_bytes / 4);
        // STATS: a rejection comes back with the verifier's error and
        // statistics only (a verbose log of a large program costs a full
        // second verification per retry under emulation).
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .verifier_log_level(aya::VerifierLogLevel::STATS)
            .override_global("OFFSETS", &offsets, true)
            .override_global("FILTER", &filter, true)
            .override_global("WAKE_BYTES", &wake_bytes, true)
            .map_max_entries("EVENT_RINGS", possible_cpus()?)
            .map_max_entries("FLOWS", opts.flow_entries)
            .load(OBJECT)?;
        let rings = if opts.emit_events {
            make_rings(&mut ebpf, opts.ring_bytes)?
        } else {
            Vec::new()
        };
        load_and_attach(&mut ebpf, PROGRAM, &btf)?;
        load_and_attach(&mut ebpf, SYNACK_PROGRAM, &btf)?;
        let queue_drops = opts.emit_events && offsets.listen_overflow_reason != 0;
        if queue_drops {
            load_and_attach(&mut ebpf, QUEUE_DROP_PROGRAM, &btf)?;
        }
        drop(btf);
        release_freed_memory();
        let harvest = Arc::new(Mutex::new(harvester(&mut ebpf, opts.flow_entries)?));
        let thread = HarvestThread::spawn(harvest.clone())
            .map_err(|e| ProbeError::Harvest(anyhow::anyhow!("starting its thread: {e}")))?;
        Ok(Probe {
            harvest_thread: thread,
            harvest,
            ebpf,
            queue_drops,
            rings,
        })
    }

    /// The harvest thread takes the capabilities the mode kept.
    pub fn harvest_follows_drop(&self) {
        self.harvest_thread.follow_drop();
    }

    /// Harvest the kernel flow table now (the background harvest does it
    /// once a quarter of the table is new, or every second).
    pub fn harvest(&self) -> Result<u64, ProbeError> {
        let mut h = self.harvest.lock().unwrap_or_else(|e| e.into_inner());
        h.harvest().map_err(|e| {
            h.stats.failures += 1;
            ProbeError::Harvest(e)
        })
    }

    /// Run statistics of the attached program.
    pub fn run_stats(&self) -> Result<RunStats, ProbeError> {
        program_stats(&self.ebpf, PROGRAM)
    }

    /// Whether refused final ACKs and half-open resets are traced
    /// (`QUEUE_DROP_PROGRAM` attached).
    pub fn traces_listener_drops(&self) -> bool {
        self.queue_drops
    }

    /// Run statistics of the listener-side program (`SYNACK_PROGRAM`).
    pub fn synack_run_stats(&self) -> Result<RunStats, ProbeError> {
        program_stats(&self.ebpf, SYNACK_PROGRAM)
    }

    /// Run statistics of `QUEUE_DROP_PROGRAM`, where it is attached.
    pub fn queue_drop_run_stats(&self) -> Result<Option<RunStats>, ProbeError> {
        self.queue_drops
            .then(|| program_stats(&self.ebpf, QUEUE_DROP_PROGRAM))
            .transpose()
    }

    /// Every CPU's event ring (none unless `emit_events` was set).
    pub fn take_events(&mut self) -> Vec<RingBuf<MapData>> {
        std::mem::take(&mut self.rings)
    }

    /// Tell the kernel side who owns listening sockets that predate the tracer.
    pub fn seed_listeners(&mut self, owners: &[(ListenerKey, Owner)]) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut("LISTENERS")
            .ok_or(ProbeError::MissingMap("LISTENERS"))?;
        let mut m: BpfHashMap<_, ListenerKey, Owner> =
            BpfHashMap::try_from(map).map_err(|e| ProbeError::Map("LISTENERS", e))?;
        for (key, owner) in owners {
            // BPF_NOEXIST: a listen() the program already saw wins.
            let _ = m.insert(key, owner, 1);
        }
        Ok(())
    }

    /// The per-socket state tables (`SOCKS`, `SOCKS_MORE`: socket cookie →
    /// state), read for the sockets sock_diag lists (`host::diag_storage`).
    pub fn socket_tables(&self) -> Result<SocketTables<'_>, ProbeError> {
        Ok(SocketTables {
            hot: self.hash_map_fd("SOCKS")?,
            more: self.hash_map_fd("SOCKS_MORE")?,
        })
    }

    fn hash_map_fd(&self, name: &'static str) -> Result<std::os::fd::BorrowedFd<'_>, ProbeError> {
        match self.ebpf.map(name) {
            Some(aya::maps::Map::HashMap(data)) => Ok(std::os::fd::AsFd::as_fd(data.fd())),
            _ => Err(ProbeError::MissingMap(name)),
        }
    }

    /// Harvest, then copy the breakdown's rows, their bounds and its
    /// `other` into `snap` (after the kernel's `other` went in with STATS).
    fn flows_into(&self, snap: &mut Snapshot) -> Result<(), ProbeError> {
        let mut h = self.harvest.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = h.harvest() {
            h.stats.failures += 1;
            return Err(ProbeError::Harvest(e));
        }
        let ledger = &h.ledger;
        snap.flows.reserve(ledger.len());
        for r in ledger.rows() {
            if r.err > 0 {
                snap.flow_errors.insert(r.key, r.err);
            }
            snap.flows.push((r.key, r.value));
        }
        snap.flows.sort_unstable_by_key(|f| f.0);
        crate::model::add_flow_stats(&mut snap.other_flow, ledger.other());
        let st = h.stats;
        snap.breakdown = Breakdown {
            rows: ledger.len() as u64,
            rows_capacity: ledger.capacity() as u64,
            rows_evicted: ledger.evicted(),
            max_error: ledger.max_error(),
            total_volume: ledger.total_weight(),
            kernel_table_capacity: u64::from(h.kernel_rows()),
            harvests: st.harvests,
            harvested_rows: st.rows,
            max_rows_per_harvest: st.max_rows,
            harvest_cpu_ns: st.cpu_ns,
            harvest_failures: st.failures,
        };
        Ok(())
    }

    /// Read every aggregate, summed over CPUs.
    pub fn snapshot(&self) -> Result<Snapshot, ProbeError> {
        let mut snap = Snapshot::empty();
        let map = |name: &'static str| self.ebpf.map(name).ok_or(ProbeError::MissingMap(name));
        let err = |name: &'static str| move |e| ProbeError::Map(name, e);

        let stats: PerCpuArray<_, Stats> =
            PerCpuArray::try_from(map("STATS")?).map_err(err("STATS"))?;
        for per_cpu in stats.get(&0, 0).map_err(err("STATS"))?.iter() {
            snap.add_stats(per_cpu);
        }
        let hists: PerCpuArray<_, Hist> =
            PerCpuArray::try_from(map("HISTS")?).map_err(err("HISTS"))?;
        for k in 0..hist_kind::COUNT {
            let mut h = Histogram::default();
            for per_cpu in hists.get(&k, 0).map_err(err("HISTS"))?.iter() {
                h.add_kernel(per_cpu);
            }
            snap.hists[k as usize] = h;
        }
        self.flows_into(&mut snap)?;
        let tw: PerCpuArray<_, TwSlot> =
            PerCpuArray::try_from(map("TW_SECONDS")?).map_err(err("TW_SECONDS"))?;
        let mut by_sec: std::collections::BTreeMap<u64, u64> = Default::default();
        for i in 0..TW_SLOTS {
            for slot in tw.get(&i, 0).map_err(err("TW_SECONDS"))?.iter() {
                if slot.count > 0 {
                    *by_sec.entry(slot.sec).or_default() += slot.count;
                }
            }
        }
        snap.time_wait_by_second = by_sec.into_iter().collect();
        let ls: PerCpuHashMap<_, ListenerKey, ListenerStats> =
            PerCpuHashMap::try_from(map("LISTENER_STATS")?).map_err(err("LISTENER_STATS"))?;
        for row in ls.iter() {
            let (key, per_cpu) = row.map_err(err("LISTENER_STATS"))?;
            let sum = snap.listener_stats.entry(key).or_default();
            for s in per_cpu.iter() {
                sum.synack_retransmits += s.synack_retransmits;
                sum.accepts += s.accepts;
            }
        }
        snap.recursion_misses = self.run_stats()?.recursion_misses;
        Ok(snap)
    }
}

/// Verify and attach one of the object's tp_btf programs.
fn load_and_attach(ebpf: &mut Ebpf, name: &'static str, btf: &Btf) -> Result<(), ProbeError> {
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or(ProbeError::MissingMap(name))?
        .try_into()?;
    prog.load(name, btf).map_err(rejected)?;
    prog.attach()?;
    Ok(())
}

/// Take the flow table and its generation out of the object, for the harvest.
fn harvester(ebpf: &mut Ebpf, kernel_rows: u32) -> Result<Harvester, ProbeError> {
    let mut take = |name: &'static str| ebpf.take_map(name).ok_or(ProbeError::MissingMap(name));
    let flows = PerCpuHashMap::<_, FlowKey, FlowStats>::try_from(take("FLOWS")?)
        .map_err(|e| ProbeError::Map("FLOWS", e))?;
    let gen =
        Array::<_, u32>::try_from(take("FLOW_GEN")?).map_err(|e| ProbeError::Map("FLOW_GEN", e))?;
    let new_rows = PerCpuArray::<_, u64>::try_from(take("FLOW_NEW")?)
        .map_err(|e| ProbeError::Map("FLOW_NEW", e))?;
    Harvester::new(flows, gen, new_rows, kernel_rows).map_err(ProbeError::Harvest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_compare_by_major_minor() {
        assert!(kernel_older_than("5.10.0-28-amd64", (5, 12)));
        assert!(!kernel_older_than("6.1.0-57-cloud-amd64", (5, 12)));
        assert!(!kernel_older_than("5.12.0", (5, 12)));
        assert!(!kernel_older_than("unknown", (5, 12)));
    }
}
