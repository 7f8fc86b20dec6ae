//! The benchmark phases. Every tool under test runs as its own process (the
//! real `tracer` binary, `bpftrace`), so CPU time, memory and start-up are
//! the process's own; the load runs as `loadgen` processes inside a private
//! network namespace.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

use crate::{
    child::{self, ReadyOn, Running},
    loadgen::{Mode, Report, TRANSITIONS_PER_CONNECTION},
    netns::NetNs,
    stats::{median, ratio, rotated},
    sys,
};

/// What is attached to the tracepoint while the load runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Setup {
    /// No program on the tracepoint.
    Nothing,
    /// `tracer summary`: in-kernel aggregation only.
    TracerSummary,
    /// `tracer summary` of the `--baseline` binary (an earlier build), for
    /// before/after figures from one interleaved run.
    BaselineSummary,
    /// `tracer events --json` to /dev/null: every transition through the ring buffer.
    TracerEvents,
    /// `tracer serve` (the Prometheus exporter), when the binary has it.
    TracerServe,
    /// bpftrace running bench/scripts/tcpstates-agg.bt.
    Bpftrace,
    /// The tracer's empty `noop` program (the floor), attached in-process.
    Noop,
}

impl Setup {
    pub fn label(self) -> &'static str {
        match self {
            Setup::Nothing => "nothing attached",
            Setup::TracerSummary => "tracer summary",
            Setup::BaselineSummary => "baseline tracer summary (--baseline)",
            Setup::TracerEvents => "tracer events (JSON to /dev/null)",
            Setup::TracerServe => "tracer serve (exporter)",
            Setup::Bpftrace => "bpftrace (equivalent script)",
            Setup::Noop => "empty tp_btf program (noop)",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub tracer: PathBuf,
    /// An earlier tracer binary measured beside `tracer` (summary mode).
    pub baseline: Option<PathBuf>,
    pub loadgen: PathBuf,
    /// bpftrace binary; None leaves bpftrace out.
    pub bpftrace: Option<PathBuf>,
    pub bpftrace_script: PathBuf,
    /// Measure the exporter (`tracer serve`), scraped every `scrape_interval`.
    pub serve: bool,
    pub scrape_interval: Duration,
    /// Interleaved rounds of the churn comparison.
    pub rounds: usize,
    pub churn_seconds: f64,
    /// Rounds and seconds per program for the in-kernel cost.
    pub kernel_rounds: usize,
    pub kernel_seconds: f64,
    /// Connection rates (None: as fast as possible) of the throughput ladder.
    pub ceiling_rates: Vec<Option<f64>>,
    pub ceiling_seconds: f64,
    /// The ring buffer size that shows what happens above the ceiling.
    pub small_ring_kib: u32,
    pub footprint_rates: Vec<Option<f64>>,
    pub footprint_seconds: f64,
    /// Sockets to hold for the memory-at-scale measurement (0: skip).
    pub hold_sockets: u64,
    pub startup_runs: usize,
    /// Second octet of the loopback /16 the load uses.
    pub net: u8,
    pub threads: usize,
    /// Prefix of the network namespaces created.
    pub netns_prefix: String,
    /// Phases to run (churn, kernel, ceiling, footprint, scale, startup); empty: all.
    pub phases: Vec<String>,
}

impl Config {
    pub fn wants(&self, phase: &str) -> bool {
        self.phases.is_empty() || self.phases.iter().any(|p| p == phase)
    }
}

impl Config {
    /// The full benchmark (about five minutes on two cores).
    pub fn full(tracer: PathBuf, loadgen: PathBuf) -> Config {
        Config {
            tracer,
            baseline: None,
            loadgen,
            bpftrace: None,
            bpftrace_script: PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/tcpstates-agg.bt"
            )),
            serve: false,
            scrape_interval: Duration::from_secs(1),
            rounds: 7,
            churn_seconds: 3.0,
            kernel_rounds: 2,
            kernel_seconds: 3.0,
            ceiling_rates: vec![
                Some(2_000.0),
                Some(5_000.0),
                Some(10_000.0),
                Some(15_000.0),
                Some(20_000.0),
                None,
            ],
            ceiling_seconds: 3.0,
            small_ring_kib: 16,
            footprint_rates: vec![Some(1_000.0), Some(10_000.0), None],
            footprint_seconds: 5.0,
            hold_sockets: 1_000_000,
            startup_runs: 5,
            net: 240,
            threads: 2,
            netns_prefix: format!("tsbench{}", std::process::id()),
            phases: Vec::new(),
        }
    }

    /// Tiny counts, for the harness's own tests.
    pub fn quick(tracer: PathBuf, loadgen: PathBuf) -> Config {
        Config {
            rounds: 1,
            churn_seconds: 0.3,
            kernel_rounds: 1,
            kernel_seconds: 0.3,
            ceiling_rates: vec![Some(1_000.0), None],
            ceiling_seconds: 0.3,
            footprint_rates: vec![Some(1_000.0)],
            footprint_seconds: 0.5,
            hold_sockets: 2_000,
            startup_runs: 1,
            ..Config::full(tracer, loadgen)
        }
    }
}

/// A tool attached to the tracepoint.
pub enum Attached {
    Nothing,
    Process(Running),
    /// `tracer serve` and the thread scraping it.
    Exporter(Running, Scraper),
    Noop(tracer::probe::NoopProbe),
}

impl Attached {
    pub fn running(&self) -> Option<&Running> {
        match self {
            Attached::Process(r) | Attached::Exporter(r, _) => Some(r),
            _ => None,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.running().map(|r| r.pid)
    }

    /// In-kernel run statistics of the tool's program on the tracepoint.
    pub fn run_stats(&self) -> Result<Option<(u64, u64)>> {
        Ok(match self {
            Attached::Nothing => None,
            Attached::Process(r) | Attached::Exporter(r, _) => {
                sys::busiest_program(r.pid)?.map(|f| (f.run_cnt, f.run_time_ns))
            }
            Attached::Noop(n) => {
                let s = n.run_stats()?;
                Some((s.run_count, s.run_time_ns))
            }
        })
    }

    pub fn stop(self) -> Result<Option<child::Finished>> {
        match self {
            Attached::Process(r) => Ok(Some(r.stop()?)),
            Attached::Exporter(r, scraper) => {
                let scrapes = scraper.stop();
                let f = r.stop()?;
                if scrapes == 0 {
                    bail!("the exporter answered no scrape; stderr:\n{}", f.stderr);
                }
                Ok(Some(f))
            }
            _ => Ok(None),
        }
    }
}

/// Scrapes an exporter's /metrics every `interval` (from inside the
/// exporter's network namespace), like Prometheus would.
pub struct Scraper {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl Scraper {
    pub fn start(addr: std::net::SocketAddr, netns_fd: Option<i32>, interval: Duration) -> Scraper {
        use std::{
            io::{Read, Write},
            sync::atomic::Ordering,
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            if let Some(fd) = netns_fd {
                // SAFETY: setns on this thread only, with a namespace fd the
                // caller keeps open while the scraper runs.
                if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
                    return 0;
                }
            }
            let mut ok = 0u64;
            let mut next = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                if Instant::now() >= next {
                    next += interval;
                    let scrape = || -> std::io::Result<usize> {
                        let mut c = std::net::TcpStream::connect(addr)?;
                        c.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")?;
                        let mut body = Vec::new();
                        c.read_to_end(&mut body)?;
                        Ok(body.len())
                    };
                    if scrape().is_ok_and(|n| n > 0) {
                        ok += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            ok
        });
        Scraper { stop, handle }
    }

    /// Stop scraping; returns how many scrapes were answered.
    pub fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}

pub struct Bench {
    pub cfg: Config,
    /// The namespace the load runs in (and the tracer, where its report
    /// should see the load's sockets).
    pub ns: NetNs,
    serial: u32,
    /// The memory cgroup the tracer is started in, while one is measured.
    cgroup: Option<sys::MemCgroup>,
}

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between the end of a load and reading counts.
const SETTLE: Duration = Duration::from_millis(300);

impl Bench {
    pub fn new(cfg: Config) -> Result<Bench> {
        let ns = NetNs::create(&format!("{}-load", cfg.netns_prefix))?;
        Ok(Bench {
            cfg,
            ns,
            serial: 0,
            cgroup: None,
        })
    }

    fn tracer_cmd(&self, ns: Option<&NetNs>) -> Command {
        self.binary_cmd(&self.cfg.tracer, ns)
    }

    fn binary_cmd(&self, bin: &Path, ns: Option<&NetNs>) -> Command {
        let mut c = match ns {
            Some(ns) => ns.command(bin),
            None => Command::new(bin),
        };
        if let Some(cg) = &self.cgroup {
            cg.enter(&mut c);
        }
        c
    }

    /// Start `setup`; `in_ns` runs a tracer inside the load's namespace (its
    /// report then sees the load's sockets); `filter` is an `--addr` CIDR.
    pub fn attach(&self, setup: Setup, ns: Option<&NetNs>, extra: &[&str]) -> Result<Attached> {
        let cfg = &self.cfg;
        Ok(match setup {
            Setup::Nothing => Attached::Nothing,
            Setup::Noop => Attached::Noop(tracer::probe::NoopProbe::attach()?),
            Setup::TracerSummary | Setup::BaselineSummary => {
                let bin = match setup {
                    Setup::BaselineSummary => cfg.baseline.as_ref().context("no --baseline")?,
                    _ => &cfg.tracer,
                };
                let mut c = self.binary_cmd(bin, ns);
                c.arg("summary").arg("--json").args(extra);
                Attached::Process(child::start(
                    c,
                    ReadyOn::Stderr,
                    "Aggregating",
                    true,
                    READY_TIMEOUT,
                )?)
            }
            Setup::TracerEvents => {
                let mut c = self.tracer_cmd(ns);
                c.arg("events").arg("--json").args(extra);
                Attached::Process(child::start(
                    c,
                    ReadyOn::Stderr,
                    "Tracing",
                    false,
                    READY_TIMEOUT,
                )?)
            }
            Setup::TracerServe => {
                if !cfg.serve {
                    bail!("this tracer binary has no `serve` subcommand");
                }
                let addr: std::net::SocketAddr =
                    format!("127.0.0.1:{}", 19_000 + (std::process::id() % 500) * 2)
                        .parse()
                        .expect("address");
                let mut c = self.tracer_cmd(ns);
                c.args(["serve", "--listen", &addr.to_string()]).args(extra);
                let run = child::start(c, ReadyOn::Stderr, "Serving", false, READY_TIMEOUT)?;
                let scraper = Scraper::start(addr, ns.map(NetNs::fd), cfg.scrape_interval);
                Attached::Exporter(run, scraper)
            }
            Setup::Bpftrace => {
                let b = cfg.bpftrace.as_ref().context("bpftrace is not installed")?;
                let mut c = Command::new(b);
                c.args(["-B", "none"]).arg(&cfg.bpftrace_script);
                // BEGIN prints "ready" once every probe is attached.
                Attached::Process(child::start(
                    c,
                    ReadyOn::Stdout,
                    "ready",
                    true,
                    READY_TIMEOUT,
                )?)
            }
        })
    }

    fn loadgen_cmd(&mut self, ns: Option<&NetNs>, mode: Mode, rate: Option<f64>) -> Command {
        // Listeners on fixed ports below the ephemeral range, a new block
        // per run so a run never waits for the last one's sockets.
        self.serial += 1;
        let base = 10_000 + (self.serial % 100) * 64;
        let mut c = ns.unwrap_or(&self.ns).command(&self.cfg.loadgen);
        c.args(["--net", &self.cfg.net.to_string()])
            .args(["--threads", &self.cfg.threads.to_string()])
            .args(["--servers", "4", "--sources", "32", "--ports", "4"])
            .args(["--port-base", &base.to_string()]);
        if mode == Mode::Refused {
            c.arg("--refused");
        }
        if let Some(r) = rate {
            c.args(["--rate", &r.to_string()]);
        }
        c
    }

    /// Run the load for `seconds` (or `count` connections) in `ns` (default:
    /// the load namespace) and return what it did.
    pub fn load(
        &mut self,
        ns: Option<&NetNs>,
        mode: Mode,
        rate: Option<f64>,
        seconds: Option<f64>,
        count: Option<u64>,
    ) -> Result<Report> {
        let mut c = self.loadgen_cmd(ns, mode, rate);
        if let Some(s) = seconds {
            c.args(["--seconds", &s.to_string()]);
        }
        if let Some(n) = count {
            c.args(["--count", &n.to_string()]);
        }
        let o = c
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("running {c:?}"))?;
        if !o.status.success() {
            bail!("loadgen failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        let r: Report = serde_json::from_slice(&o.stdout).context("loadgen's report")?;
        if r.errors > 0 {
            bail!(
                "loadgen: {} of {} connections failed: {:?}",
                r.errors,
                r.errors + r.connections,
                r.error_samples
            );
        }
        Ok(r)
    }
}

// ---------------------------------------------------------------- results

#[derive(Clone, Debug, Default, Serialize)]
pub struct ChurnRow {
    pub setup: String,
    /// Connections per second, one per round.
    pub rates: Vec<f64>,
    pub median: Option<f64>,
    /// Each round's rate over the same round's "nothing attached" rate.
    pub ratios: Vec<f64>,
    /// Median of `ratios`.
    pub vs_nothing: Option<f64>,
    /// CPU time of the load process per connection (µs), one per round.
    pub cpu_us_per_conn: Vec<f64>,
    pub cpu_median: Option<f64>,
    /// Median over rounds of (nothing's CPU per connection / this one's):
    /// the throughput ratio a CPU-bound host would see, robust to time
    /// other work on the machine takes from the load.
    pub cpu_vs_nothing: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct KernelRow {
    pub program: String,
    /// ns per invocation, one per round.
    pub ns_per_run: Vec<f64>,
    pub median: Option<f64>,
    pub invocations: u64,
    /// Connections the load made while the program was measured.
    pub connections: u64,
    pub vs_noop: Option<f64>,
    pub vs_bpftrace: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct CeilingRow {
    pub ring_kib: u32,
    /// Requested connections/s (None: as fast as possible).
    pub target_conn_s: Option<f64>,
    pub connections: u64,
    pub transitions_per_s: f64,
    pub expected: u64,
    pub counted: u64,
    pub printed: u64,
    pub dropped: u64,
    /// counted == expected (the in-kernel aggregate is exact).
    pub exact: bool,
    /// printed + dropped == counted (every transition accounted for).
    pub accounted: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FootprintRow {
    pub mode: String,
    pub target_conn_s: Option<f64>,
    pub achieved_conn_s: f64,
    /// CPU time over wall time while the load ran, percent of one core.
    pub cpu_pct: f64,
    /// The collector's CPU time per transition the load made (events
    /// mode: per event printed), µs.
    pub cpu_us_per_transition: f64,
    pub peak_rss_mib: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ScaleRow {
    /// Sockets open (both ends of held connections) when the report was made.
    pub sockets: u64,
    /// ESTABLISHED sockets the tracer's report counted.
    pub reported_established: u64,
    pub open_s: f64,
    /// From SIGINT to exit: the report over all those sockets.
    pub report_s: f64,
    pub peak_rss_mib: f64,
    /// Kernel memory of the tracer's maps (memlock).
    pub kernel_maps_mib: f64,
    pub inflight_missing: u64,
    /// Kernel memory charged to the tracer's cgroup while the sockets
    /// opened (their entries in the per-socket table), per socket; None without a
    /// memory controller.
    pub kernel_bytes_per_socket: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct StartupRow {
    pub runs_ms: Vec<f64>,
    pub median_ms: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Results {
    pub machine: sys::Machine,
    pub date: String,
    pub load_avg_before: String,
    pub load_avg_after: String,
    /// BPF programs of others that were loaded when the run started.
    pub foreign_programs: Vec<String>,
    pub notes: Vec<String>,
    pub churn: Vec<ChurnRow>,
    pub kernel: Vec<KernelRow>,
    pub ceiling: Vec<CeilingRow>,
    pub footprint: Vec<FootprintRow>,
    pub scale: Option<ScaleRow>,
    pub startup: StartupRow,
    /// `tracer check --json` on this machine's kernel: verified instructions
    /// per mode and the stack of the deepest call chain (the guest runs,
    /// `cargo xtask guest`, print the same for Linux 6.1).
    pub verifier: Option<serde_json::Value>,
    pub wall_s: f64,
}

// ---------------------------------------------------------------- phases

/// (1) Connections/s with each setup, interleaved over rounds.
pub fn churn(b: &mut Bench, setups: &[Setup]) -> Result<Vec<ChurnRow>> {
    let mut rows: Vec<ChurnRow> = setups
        .iter()
        .map(|s| ChurnRow {
            setup: s.label().into(),
            ..Default::default()
        })
        .collect();
    // Warm up: fill the namespace's TIME_WAIT table to its steady state.
    b.load(None, Mode::Churn, None, Some(b.cfg.churn_seconds), None)?;
    for round in 0..b.cfg.rounds {
        for (i, s) in rotated(
            &setups.iter().copied().enumerate().collect::<Vec<_>>(),
            round,
        ) {
            let a = b.attach(s, None, &[])?;
            let r = b.load(None, Mode::Churn, None, Some(b.cfg.churn_seconds), None);
            a.stop()?;
            let r = r?;
            rows[i].rates.push(r.rate());
            rows[i]
                .cpu_us_per_conn
                .push(r.cpu_s * 1e6 / r.connections.max(1) as f64);
        }
    }
    // The machine's speed drifts (other work on it): compare each run with
    // the baseline run of the same round, and take the median of those ratios.
    let base: Vec<f64> = rows[0].rates.clone();
    let base_cpu: Vec<f64> = rows[0].cpu_us_per_conn.clone();
    for r in &mut rows {
        r.median = median(&r.rates);
        r.ratios = r.rates.iter().zip(&base).map(|(x, b)| x / b).collect();
        r.vs_nothing = median(&r.ratios);
        r.cpu_median = median(&r.cpu_us_per_conn);
        let cpu_ratios: Vec<f64> = r
            .cpu_us_per_conn
            .iter()
            .zip(&base_cpu)
            .map(|(x, b)| b / x)
            .collect();
        r.cpu_vs_nothing = median(&cpu_ratios);
    }
    Ok(rows)
}

/// (2) ns per invocation with kernel.bpf_stats_enabled=1.
pub fn kernel_cost(b: &mut Bench, setups: &[Setup]) -> Result<Vec<KernelRow>> {
    let _stats = sys::SysctlGuard::set("kernel.bpf_stats_enabled", "1")?;
    let mut rows: Vec<KernelRow> = setups
        .iter()
        .map(|s| KernelRow {
            program: s.label().into(),
            ..Default::default()
        })
        .collect();
    for round in 0..b.cfg.kernel_rounds {
        for (i, s) in rotated(
            &setups.iter().copied().enumerate().collect::<Vec<_>>(),
            round,
        ) {
            let a = b.attach(s, None, &[])?;
            let before = a.run_stats()?.unwrap_or_default();
            let r = b.load(None, Mode::Churn, None, Some(b.cfg.kernel_seconds), None);
            let after = a.run_stats()?.unwrap_or_default();
            a.stop()?;
            let (n, t) = (after.0 - before.0, after.1 - before.1);
            rows[i].connections += r?.connections;
            if n > 0 {
                rows[i].ns_per_run.push(t as f64 / n as f64);
                rows[i].invocations += n;
            }
        }
    }
    let find = |rows: &[KernelRow], s: Setup| {
        setups
            .iter()
            .position(|x| *x == s)
            .and_then(|i| median(&rows[i].ns_per_run))
    };
    let noop = find(&rows, Setup::Noop);
    let bt = find(&rows, Setup::Bpftrace);
    for r in &mut rows {
        r.median = median(&r.ns_per_run);
        r.vs_noop = ratio(r.median, noop);
        r.vs_bpftrace = ratio(r.median, bt);
    }
    Ok(rows)
}

/// The events mode's closing line: printed, dropped, counted.
pub fn parse_events_tally(stderr: &str) -> Option<(u64, u64, u64)> {
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.contains("events printed"))?;
    let num_before = |word: &str| -> Option<u64> {
        let idx = line.find(word)?;
        line[..idx].split_whitespace().last()?.parse().ok()
    };
    // "...; N transitions and M SYN-ACK retransmits counted in the kernel":
    // both kinds are events of the ring.
    Some((
        num_before("events printed")?,
        num_before("dropped")?,
        num_before(" transitions")? + num_before(" SYN-ACK retransmits counted").unwrap_or(0),
    ))
}

/// (3) One step of the throughput ladder: `tracer events` filtered to the
/// load's addresses, the load at `rate`, then the kernel's counts against
/// the known workload.
pub fn ceiling_step(b: &mut Bench, ring_kib: u32, rate: Option<f64>) -> Result<CeilingRow> {
    let cidr = format!("127.{}.0.0/16", b.cfg.net);
    let ring = ring_kib.to_string();
    let a = b.attach(
        Setup::TracerEvents,
        None,
        &["--addr", &cidr, "--ring-kib", &ring],
    )?;
    let r = b.load(None, Mode::Churn, rate, Some(b.cfg.ceiling_seconds), None);
    // The last connections' final transitions may still sit in a softirq
    // backlog (ksoftirqd) when the load generator exits: let them land.
    std::thread::sleep(SETTLE);
    let f = a.stop()?.context("tracer output")?;
    let r = r?;
    let (printed, dropped, counted) = parse_events_tally(&f.stderr)
        .with_context(|| format!("no tally in the tracer's stderr:\n{}", f.stderr))?;
    let expected = r.connections * TRANSITIONS_PER_CONNECTION;
    Ok(CeilingRow {
        ring_kib,
        target_conn_s: rate,
        connections: r.connections,
        transitions_per_s: counted as f64 / r.elapsed_s,
        expected,
        counted,
        printed,
        dropped,
        exact: counted == expected,
        accounted: printed + dropped == counted,
    })
}

pub fn ceiling(b: &mut Bench) -> Result<Vec<CeilingRow>> {
    let mut rows = Vec::new();
    for rate in b.cfg.ceiling_rates.clone() {
        rows.push(ceiling_step(b, 4096, rate)?);
    }
    // Above the ceiling on purpose: a ring too small to keep up.
    let small = b.cfg.small_ring_kib;
    rows.push(ceiling_step(b, small, None)?);
    Ok(rows)
}

/// (4) CPU and peak RSS of the collector under a given load, the tracer
/// running in a fresh namespace with the load (its report sees the load's
/// sockets, as on a real host).
pub fn footprint_step(b: &mut Bench, setup: Setup, rate: Option<f64>) -> Result<FootprintRow> {
    b.serial += 1;
    let ns = NetNs::create(&format!("{}-fp{}", b.cfg.netns_prefix, b.serial))?;
    let a = b.attach(setup, Some(&ns), &[])?;
    let Some(run) = a.running() else {
        bail!("{setup:?} is not a process");
    };
    let t0 = run.cpu_ticks()?;
    let w0 = Instant::now();
    let r = b.load(
        Some(&ns),
        Mode::Churn,
        rate,
        Some(b.cfg.footprint_seconds),
        None,
    );
    let t1 = run.cpu_ticks()?;
    let wall = w0.elapsed().as_secs_f64();
    let f = a.stop()?.context("collector output")?;
    let r = r?;
    Ok(FootprintRow {
        mode: setup.label().into(),
        target_conn_s: rate,
        achieved_conn_s: r.rate(),
        cpu_pct: (t1 - t0) as f64 / sys::clock_ticks_per_s() / wall * 100.0,
        cpu_us_per_transition: (t1 - t0) as f64 / sys::clock_ticks_per_s() * 1e6
            / (r.connections * TRANSITIONS_PER_CONNECTION).max(1) as f64,
        peak_rss_mib: f.max_rss_kib as f64 / 1024.0,
    })
}

/// (4b) Peak RSS with `hold_sockets` sockets open: established connections
/// held by loadgen processes (each below the open-files limit) in a fresh
/// namespace, the tracer attached before they open; then its report.
pub fn scale(b: &mut Bench) -> Result<ScaleRow> {
    let target_conns = b.cfg.hold_sockets.div_ceil(2);
    // Two fds per connection; stay under a 20 000 open-files hard limit.
    let per_proc: u64 = 9_000;
    let procs = target_conns.div_ceil(per_proc);
    let ns = NetNs::create(&format!("{}-scale", b.cfg.netns_prefix))?;
    let inode = ns.inode()?;
    b.cgroup = sys::MemCgroup::create(&format!("{}-scale", b.cfg.netns_prefix));
    let a = b.attach(Setup::TracerSummary, Some(&ns), &[])?;
    let kmem0 = b.cgroup.as_ref().and_then(sys::MemCgroup::kernel_bytes);
    let pid = a.pid().context("tracer pid")?;
    let w0 = Instant::now();
    let mut holders = Vec::new();
    let mut held: u64 = 0;
    let result = (|| -> Result<()> {
        for p in 0..procs {
            let n = per_proc.min(target_conns - p * per_proc);
            let mut c = ns.command(&b.cfg.loadgen);
            c.args(["--net", &b.cfg.net.to_string()])
                .args([
                    "--threads",
                    "1",
                    "--servers",
                    "4",
                    "--sources",
                    "32",
                    "--ports",
                    "2",
                ])
                .args(["--port-base", &(10_000 + p * 8).to_string()])
                .args(["--count", &n.to_string(), "--hold"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            let mut child = c.spawn().context("starting loadgen --hold")?;
            let mut line = String::new();
            let out = child.stdout.take().context("stdout")?;
            std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
            let v: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("loadgen --hold said {line:?}"))?;
            held += v["held"].as_u64().context("held count")?;
            holders.push(child);
        }
        Ok(())
    })();
    let open_s = w0.elapsed().as_secs_f64();
    let kernel_maps = sys::bpf_map_memlock(pid).unwrap_or(0);
    let kmem1 = b.cgroup.as_ref().and_then(sys::MemCgroup::kernel_bytes);
    let r0 = Instant::now();
    let f = a.stop();
    b.cgroup = None;
    let report_s = r0.elapsed().as_secs_f64();
    for mut h in holders {
        drop(h.stdin.take());
        let _ = h.wait();
    }
    drop(ns);
    result?;
    let f = f?.context("tracer output")?;
    let v: serde_json::Value = serde_json::from_str(&f.stdout).with_context(|| {
        format!(
            "tracer summary JSON (stderr: {})",
            f.stderr.lines().last().unwrap_or("")
        )
    })?;
    Ok(ScaleRow {
        sockets: held * 2,
        // The held sockets' namespace row: the host-wide total also counts
        // whatever else is connected on the machine meanwhile.
        reported_established: namespace_row(&v, inode)["now"]["established"]
            .as_u64()
            .unwrap_or(0),
        open_s,
        report_s,
        peak_rss_mib: f.max_rss_kib as f64 / 1024.0,
        kernel_maps_mib: kernel_maps as f64 / (1024.0 * 1024.0),
        inflight_missing: v["tracer"]["inflight_missing"].as_u64().unwrap_or(0),
        kernel_bytes_per_socket: kmem0
            .zip(kmem1)
            .filter(|_| held > 0)
            .map(|(k0, k1)| k1.saturating_sub(k0) as f64 / (held * 2) as f64),
    })
}

/// The report's row for the namespace `inode` (null when absent).
fn namespace_row(report: &serde_json::Value, inode: u64) -> &serde_json::Value {
    report["namespaces"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["netns"].as_u64() == Some(inode)))
        .unwrap_or(&serde_json::Value::Null)
}

/// (5) From exec to "probes attached" (the line the tracer prints right
/// after attaching), in the host namespace.
pub fn startup(b: &mut Bench) -> Result<StartupRow> {
    let mut runs = Vec::new();
    for _ in 0..b.cfg.startup_runs {
        let a = b.attach(Setup::TracerSummary, None, &[])?;
        if let Some(r) = a.running() {
            runs.push(r.startup.as_secs_f64() * 1e3);
        }
        a.stop()?;
    }
    Ok(StartupRow {
        median_ms: median(&runs),
        runs_ms: runs,
    })
}

/// Whether the tracer binary has a `serve` subcommand.
pub fn tracer_has_serve(tracer: &std::path::Path) -> bool {
    Command::new(tracer)
        .args(["serve", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn log(msg: &str) {
    eprintln!("bench: {msg}");
    let _ = std::io::stderr().flush();
}

/// Every phase, in order.
pub fn run_all(cfg: Config) -> Result<Results> {
    let t0 = Instant::now();
    let mut res = Results {
        machine: sys::Machine::collect(cfg.bpftrace.as_deref()),
        date: humantime_now(),
        load_avg_before: load_avg(),
        foreign_programs: sys::loaded_program_names(),
        ..Default::default()
    };
    let mut b = Bench::new(cfg)?;
    let has_bt = b.cfg.bpftrace.is_some();
    let has_serve = b.cfg.serve;
    if !has_serve {
        res.notes.push(
            "exporter mode not measured: this tracer binary has no `serve` subcommand".into(),
        );
    }
    if !has_bt {
        res.notes
            .push("bpftrace not measured: not installed".into());
    }

    let baseline: &[Setup] = match b.cfg.baseline {
        Some(_) => &[Setup::BaselineSummary],
        None => &[],
    };
    let mut churn_setups = vec![Setup::Nothing, Setup::TracerSummary];
    churn_setups.extend(baseline);
    if has_serve {
        churn_setups.push(Setup::TracerServe);
    }
    if has_bt {
        churn_setups.push(Setup::Bpftrace);
    }
    res.verifier = verifier(&b.cfg.tracer);
    if b.cfg.wants("churn") {
        log("1/5 connection churn, interleaved");
        res.churn = churn(&mut b, &churn_setups)?;
    }

    let mut kernel_setups = vec![Setup::Noop, Setup::TracerSummary, Setup::TracerEvents];
    kernel_setups.extend(baseline);
    if has_bt {
        kernel_setups.push(Setup::Bpftrace);
    }
    if b.cfg.wants("kernel") {
        log("2/5 in-kernel ns per transition");
        res.kernel = kernel_cost(&mut b, &kernel_setups)?;
    }

    if b.cfg.wants("ceiling") {
        log("3/5 throughput ceiling");
        res.ceiling = ceiling(&mut b)?;
    }

    if b.cfg.wants("footprint") {
        log("4/5 collector footprint");
        let mut fp_setups = vec![Setup::TracerSummary, Setup::TracerEvents];
        if has_serve {
            fp_setups.push(Setup::TracerServe);
        }
        for s in fp_setups {
            for rate in b.cfg.footprint_rates.clone() {
                res.footprint.push(footprint_step(&mut b, s, rate)?);
            }
        }
    }
    if b.cfg.hold_sockets > 0 && b.cfg.wants("scale") {
        log("4/5 memory with many sockets open");
        res.scale = Some(scale(&mut b)?);
    }

    if b.cfg.wants("startup") {
        log("5/5 start-up");
        res.startup = startup(&mut b)?;
    }
    res.load_avg_after = load_avg();
    res.wall_s = t0.elapsed().as_secs_f64();
    Ok(res)
}

/// The tracer's own account of its verifier budget on this kernel.
fn verifier(tracer: &std::path::Path) -> Option<serde_json::Value> {
    let out = Command::new(tracer)
        .args(["check", "--json"])
        .output()
        .ok()?;
    serde_json::from_slice(&out.stdout).ok()
}

fn humantime_now() -> String {
    let o = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output();
    o.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_tally_is_parsed() {
        let s = "Tracing TCP state transitions (all). Ctrl-C to stop.\n\
                 120 events printed, 30 dropped by the kernel ring buffer (try a larger --ring-kib), 0 undecodable; 150 transitions counted in the kernel\n";
        assert_eq!(parse_events_tally(s), Some((120, 30, 150)));
        let s = "Tracing TCP state transitions (all). Ctrl-C to stop.\n\
                 120 events printed, 32 dropped by the kernel ring buffer (try a larger --ring-kib), 0 undecodable; 150 transitions and 2 SYN-ACK retransmits counted in the kernel\n";
        assert_eq!(parse_events_tally(s), Some((120, 32, 152)));
        assert_eq!(parse_events_tally("nothing here"), None);
    }
}
