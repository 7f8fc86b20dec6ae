//! Harvesting the kernel's flow table into a bounded userspace breakdown,
//! so the kernel table never fills for good.
//!
//! The kernel program writes each flow row under the generation in
//! `FLOW_GEN` (`FlowKey::gen`). A harvest:
//!
//! 1. sets `FLOW_GEN` to the next generation;
//! 2. waits until every program run that may have read the old value has
//!    returned: an update of an array-of-maps waits for an RCU grace period
//!    (`synchronize_rcu()` in the kernel's `maybe_wait_bpf_programs`), and
//!    tracepoint programs run inside an RCU read-side section;
//! 3. reads and deletes every row of an older generation. Nothing writes
//!    those rows any more, so read-then-delete loses nothing.
//!
//! The rows go into a Space-Saving table (`heavy`) keyed like the kernel
//! (generation cleared): rows + `other` equal everything harvested, for
//! every figure.

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{Array, MapData, PerCpuArray, PerCpuHashMap};
use tracer_common::{FlowKey, FlowStats};

use crate::{
    model::heavy::{SpaceSaving, Tally},
    model::{add_flow_stats, flow_volume, sum_flow_stats},
};

impl Tally for FlowStats {
    fn weight(&self) -> u64 {
        flow_volume(self)
    }
    fn absorb(&mut self, other: &Self) {
        add_flow_stats(self, other);
    }
}

/// Rows the userspace breakdown keeps (see `heavy` for what it guarantees).
pub const LEDGER_ROWS: usize = 16_384;
/// The longest pause between two background harvests. Rows of a
/// generation are new rows, so a flow seen in every interval costs an
/// insert per interval: long generations keep the program on its cheap
/// path (an existing row), short ones are only needed while rows arrive.
pub const HARVEST_INTERVAL: Duration = Duration::from_secs(1);
/// How often the thread reads the kernel's count of new rows: it harvests
/// as soon as a quarter of the table is new, so a burst must bring the
/// other three quarters (12 288 rows) between a poll and the end of that
/// harvest to overflow it (a loopback client with distinct peers made
/// 70 000 new rows a second here; a harvest of 4 096 rows takes ~11 ms
/// plus an RCU grace period).
pub const HARVEST_POLL: Duration = Duration::from_millis(10);

/// What the harvests did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HarvestStats {
    pub harvests: u64,
    /// Kernel rows read and deleted.
    pub rows: u64,
    /// The most rows one harvest found.
    pub max_rows: u64,
    /// CPU time of the harvesting thread (or caller) in the harvests, ns.
    pub cpu_ns: u64,
    /// Wall time spent waiting for in-flight programs, ns.
    pub barrier_ns: u64,
    /// Harvests that failed (logged): the rows wait for the next one.
    pub failures: u64,
}

/// The kernel flow table, its generation, and the userspace breakdown.
pub struct Harvester {
    flows: PerCpuHashMap<MapData, FlowKey, FlowStats>,
    gen_map: Array<MapData, u32>,
    /// Rows the program created, per CPU (`FLOW_NEW`), and their sum at
    /// the last harvest.
    new_rows: PerCpuArray<MapData, u64>,
    new_at_harvest: u64,
    barrier: RcuBarrier,
    gen: u32,
    kernel_rows: u32,
    pub ledger: SpaceSaving<FlowKey, FlowStats>,
    pub stats: HarvestStats,
}

impl Harvester {
    pub fn new(
        flows: PerCpuHashMap<MapData, FlowKey, FlowStats>,
        gen_map: Array<MapData, u32>,
        new_rows: PerCpuArray<MapData, u64>,
        kernel_rows: u32,
    ) -> anyhow::Result<Self> {
        Ok(Harvester {
            flows,
            gen_map,
            new_rows,
            new_at_harvest: 0,
            barrier: RcuBarrier::new()?,
            gen: 0,
            kernel_rows,
            ledger: SpaceSaving::new(LEDGER_ROWS),
            stats: HarvestStats::default(),
        })
    }

    /// Move every kernel row of a past generation into the ledger. Returns
    /// the rows moved.
    pub fn harvest(&mut self) -> anyhow::Result<u64> {
        let cpu0 = crate::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
        self.new_at_harvest = self.rows_created()?;
        let next = self.gen.wrapping_add(1);
        self.gen_map.set(0, next, 0)?;
        self.gen = next;
        let t = Instant::now();
        self.barrier.wait()?;
        self.stats.barrier_ns += t.elapsed().as_nanos() as u64;
        let current = next as u8;
        let old: Vec<FlowKey> = self
            .flows
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| k.gen != current)
            .collect();
        for k in &old {
            let v = sum_flow_stats(self.flows.get(k, 0)?.iter());
            self.flows.remove(k)?;
            self.ledger.add(FlowKey { gen: 0, ..*k }, &v);
        }
        let n = old.len() as u64;
        self.stats.harvests += 1;
        self.stats.rows += n;
        self.stats.max_rows = self.stats.max_rows.max(n);
        self.stats.cpu_ns += crate::clock_ns(libc::CLOCK_THREAD_CPUTIME_ID).saturating_sub(cpu0);
        Ok(n)
    }

    /// Capacity of the kernel table.
    pub fn kernel_rows(&self) -> u32 {
        self.kernel_rows
    }

    /// Rows the program created so far (every CPU).
    fn rows_created(&self) -> anyhow::Result<u64> {
        Ok(self.new_rows.get(&0, 0)?.iter().sum())
    }

    /// Whether the background harvest is due, `since` the last one: a
    /// quarter of the table is new rows, or the longest pause passed.
    fn due(&self, since: Duration) -> bool {
        since >= HARVEST_INTERVAL
            || self.rows_created().map_or(true, |n| {
                n.saturating_sub(self.new_at_harvest) >= u64::from(self.kernel_rows / 4)
            })
    }
}

/// The background harvest: a thread that harvests every interval until
/// dropped.
pub struct HarvestThread {
    /// Dropped to stop the thread; a message asks it to follow the
    /// capability drop now and answer on the enclosed sender.
    control: Option<mpsc::Sender<mpsc::Sender<()>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl HarvestThread {
    pub fn spawn(h: Arc<Mutex<Harvester>>) -> std::io::Result<Self> {
        let (control, requests) = mpsc::channel::<mpsc::Sender<()>>();
        let handle = std::thread::Builder::new()
            .name("flow-harvest".into())
            .spawn(move || {
                let mut last = Instant::now();
                loop {
                    match requests.recv_timeout(HARVEST_POLL) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Ok(ack) => {
                            // Started before the mode dropped its
                            // capabilities: keep no more than it does.
                            crate::host::privs::follow_drop();
                            let _ = ack.send(());
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                    let mut h = h.lock().unwrap_or_else(|e| e.into_inner());
                    if !h.due(last.elapsed()) {
                        continue;
                    }
                    last = Instant::now();
                    if let Err(e) = h.harvest() {
                        h.stats.failures += 1;
                        log::warn!("flow harvest failed (the rows wait for the next): {e:#}");
                    }
                }
            })?;
        Ok(HarvestThread {
            control: Some(control),
            handle: Some(handle),
        })
    }

    /// Make the thread take the capabilities the mode kept
    /// (`privs::drop_after_attach`), and wait until it has.
    pub fn follow_drop(&self) {
        let (ack, done) = mpsc::channel();
        if let Some(c) = &self.control {
            if c.send(ack).is_ok() {
                let _ = done.recv();
            }
        }
    }
}

impl Drop for HarvestThread {
    fn drop(&mut self) {
        drop(self.control.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Waits for every BPF program run in progress to return: updating an
/// array-of-maps makes the kernel wait for an RCU grace period before the
/// syscall returns. (aya 0.14 keeps the creation of a standalone
/// array-of-maps crate-private, so both maps are made here.)
struct RcuBarrier {
    inner: OwnedFd,
    outer: OwnedFd,
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;

/// The leading fields of `union bpf_attr` for BPF_MAP_CREATE.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
}

/// `union bpf_attr` for BPF_MAP_UPDATE_ELEM.
#[repr(C)]
struct MapUpdateAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, initialised bpf_attr prefix of its size;
    // the kernel zero-fills the rest and reads only what `cmd` defines.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl RcuBarrier {
    fn new() -> anyhow::Result<Self> {
        let create = |map_type, inner_map_fd| -> anyhow::Result<OwnedFd> {
            let attr = MapCreateAttr {
                map_type,
                key_size: 4,
                value_size: 4,
                max_entries: 1,
                map_flags: 0,
                inner_map_fd,
            };
            let fd = bpf(BPF_MAP_CREATE, &attr)
                .map_err(|e| anyhow::anyhow!("creating the harvest barrier map: {e}"))?;
            // SAFETY: the syscall returned a new fd that nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
        };
        let inner = create(BPF_MAP_TYPE_ARRAY, 0)?;
        let outer = create(BPF_MAP_TYPE_ARRAY_OF_MAPS, inner.as_raw_fd() as u32)?;
        Ok(RcuBarrier { inner, outer })
    }

    fn wait(&self) -> std::io::Result<()> {
        let key: u32 = 0;
        let value: u32 = self.inner.as_raw_fd() as u32;
        let attr = MapUpdateAttr {
            map_fd: self.outer.as_raw_fd() as u32,
            _pad: 0,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            flags: 0,
        };
        bpf(BPF_MAP_UPDATE_ELEM, &attr).map(|_| ())
    }
}
