//! Loading, attaching and reading the eBPF side.

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::BtfTracePoint,
    Btf, Ebpf, EbpfLoader,
};
use tracer_common::{
    hist::Hist, hist_kind, Filter, FlowKey, FlowStats, ListenerKey, Owner, Stats, TwSlot, TW_SLOTS,
};

use crate::{
    model::{sum_flow_stats, Histogram, Snapshot},
    offsets::{self, OffsetError},
};

/// The eBPF object built by build.rs (empty when bpf-linker was missing).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));
/// The embedded object, for `check`'s reading of it.
pub static OBJECT_BYTES: &[u8] = OBJECT;

/// Name of the program (and of its kernel tracepoint).
pub const PROGRAM: &str = "inet_sock_set_state";
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
    #[error("map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
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
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Capacity of the per-flow breakdown table.
    pub flow_entries: u32,
}

/// Default ring buffer size (4 MiB; `--ring-kib`).
pub const DEFAULT_RING_BYTES: u32 = 1 << 22;
/// Default flow-table capacity.
pub const DEFAULT_FLOW_ENTRIES: u32 = 16_384;

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            filter: Filter::default(),
            emit_events: false,
            ring_bytes: DEFAULT_RING_BYTES,
            flow_entries: DEFAULT_FLOW_ENTRIES,
        }
    }
}

/// The loaded and attached programs. Dropping it detaches and unloads them.
pub struct Probe {
    ebpf: Ebpf,
}

impl Probe {
    pub fn attach(opts: &ProbeOptions) -> Result<Self, ProbeError> {
        check_privileges()?;
        if OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        let offsets = offsets::from_kernel()?;
        let mut filter = opts.filter;
        filter.emit_events = opts.emit_events as u8;
        // One parse of the kernel's BTF serves the loader and the program
        // (aya would otherwise read and parse it twice: start-up time).
        let btf = Btf::from_sys_fs()?;
        // Wake the reader once a quarter of the ring is pending (it also
        // drains on a timer): one wake-up per burst, not per event.
        let wake_bytes = u64::from(opts.ring_bytes / 4);
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("OFFSETS", &offsets, true)
            .override_global("FILTER", &filter, true)
            .override_global("WAKE_BYTES", &wake_bytes, true)
            .map_max_entries("EVENTS", opts.ring_bytes)
            .map_max_entries("FLOWS", opts.flow_entries)
            .load(OBJECT)?;
        let prog: &mut BtfTracePoint = ebpf
            .program_mut(PROGRAM)
            .ok_or(ProbeError::MissingMap(PROGRAM))?
            .try_into()?;
        prog.load(PROGRAM, &btf)?;
        prog.attach()?;
        drop(btf);
        release_freed_memory();
        Ok(Probe { ebpf })
    }

    /// Run statistics of the attached program.
    pub fn run_stats(&self) -> Result<RunStats, ProbeError> {
        program_stats(&self.ebpf, PROGRAM)
    }

    /// The event ring buffer (only fills when `emit_events` was set).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or(ProbeError::MissingMap("EVENTS"))?;
        RingBuf::try_from(map).map_err(|e| ProbeError::Map("EVENTS", e))
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

    /// The socket-storage map (per-socket state), for sock_diag's
    /// INET_DIAG_REQ_SK_BPF_STORAGES requests.
    pub fn socket_storage_fd(&self) -> Result<std::os::fd::BorrowedFd<'_>, ProbeError> {
        let map = self
            .ebpf
            .map("SOCKS")
            .ok_or(ProbeError::MissingMap("SOCKS"))?;
        match map {
            aya::maps::Map::SkStorage(data) => Ok(std::os::fd::AsFd::as_fd(data.fd())),
            _ => Err(ProbeError::MissingMap("SOCKS")),
        }
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
        let flows: PerCpuHashMap<_, FlowKey, FlowStats> =
            PerCpuHashMap::try_from(map("FLOWS")?).map_err(err("FLOWS"))?;
        for item in flows.iter() {
            let (k, v) = item.map_err(err("FLOWS"))?;
            snap.flows.push((k, sum_flow_stats(v.iter())));
        }
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
        snap.recursion_misses = self.run_stats()?.recursion_misses;
        Ok(snap)
    }
}
