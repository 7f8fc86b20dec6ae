//! Connection churn over loopback: open, accept, close, as fast as allowed.
//!
//! Every connection runs the same fixed sequence in one thread — connect()
//! from a source address (port picked by the kernel at connect time,
//! `IP_BIND_ADDRESS_NO_PORT`), accept() on the worker's own listener, the
//! client closes first, the server reads the FIN (EOF) and closes. So each
//! connection makes exactly ten TCP state transitions (five per side) and
//! leaves one TIME_WAIT socket on the client side, and no thread ever waits
//! on another.
//!
//! Two more modes: `Refused` connects to ports nothing listens on (two
//! transitions per attempt, CLOSE→SYN_SENT→CLOSE: the densest stream of
//! transitions loopback can make), and `hold` opens connections and keeps
//! both ends open (a population of established sockets).
//!
//! Ephemeral ports never run out: the kernel picks a source port per
//! 4-tuple, and connections rotate over `sources × servers × ports`
//! destinations, each of which has the whole ephemeral range to itself.

use std::{
    io::Read,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use socket2::{Domain, Socket, Type};

/// Transitions one connection makes: CLOSE→SYN_SENT, SYN_SENT→ESTABLISHED,
/// ESTABLISHED→FIN_WAIT1, FIN_WAIT1→FIN_WAIT2, FIN_WAIT2→CLOSE (client);
/// LISTEN→SYN_RECV, SYN_RECV→ESTABLISHED, ESTABLISHED→CLOSE_WAIT,
/// CLOSE_WAIT→LAST_ACK, LAST_ACK→CLOSE (server).
pub const TRANSITIONS_PER_CONNECTION: u64 = 10;

/// What each iteration does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mode {
    /// A full connection: open, accept, client closes first, server closes.
    #[default]
    Churn,
    /// connect() to a port nothing listens on: refused by RST.
    Refused,
}

impl Mode {
    /// Transitions one successful iteration makes.
    pub fn transitions(self) -> u64 {
        match self {
            Mode::Churn => TRANSITIONS_PER_CONNECTION,
            Mode::Refused => 2,
        }
    }
}

/// Where connections go and how many.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub mode: Mode,
    /// First two octets of the loopback /16 used: servers are 127.A.0.x,
    /// sources 127.A.1.x (A = `net`).
    pub net: u8,
    /// Server addresses (127.A.0.1 ..).
    pub servers: u8,
    /// Client source addresses (127.A.1.1 ..).
    pub sources: u8,
    /// Listening ports per server address and thread.
    pub ports: u16,
    /// First listening port (`None`: let the kernel pick free ports).
    pub port_base: Option<u16>,
    pub threads: usize,
    /// Connections per second over all threads (`None`: as fast as possible).
    pub rate: Option<f64>,
    /// Stop after this long ...
    pub duration: Option<Duration>,
    /// ... or after this many connections (the first reached).
    pub count: Option<u64>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            mode: Mode::Churn,
            net: 240,
            servers: 4,
            sources: 16,
            ports: 4,
            port_base: None,
            threads: 2,
            rate: None,
            duration: Some(Duration::from_secs(1)),
            count: None,
        }
    }
}

impl Plan {
    pub fn validate(&self) -> Result<()> {
        if self.servers == 0 || self.sources == 0 || self.ports == 0 || self.threads == 0 {
            bail!("servers, sources, ports and threads must be at least 1");
        }
        if self.servers == 255 || self.sources == 255 {
            bail!("at most 254 server and source addresses");
        }
        if self.duration.is_none() && self.count.is_none() {
            bail!("give a duration or a count (or both)");
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                bail!("rate must be a positive number of connections per second");
            }
        }
        if let Some(base) = self.port_base {
            let needed = self.ports as u32 * self.threads as u32;
            if base as u32 + needed > 65_536 || base == 0 {
                bail!("port base {base} leaves no room for {needed} ports");
            }
        }
        Ok(())
    }

    pub fn server_addr(&self, i: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.net, 0, i + 1))
    }

    pub fn source_addr(&self, i: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.net, 1, i + 1))
    }

    /// The CIDR holding every address of the plan (a tracer `--addr` filter).
    pub fn cidr(&self) -> String {
        format!("127.{}.0.0/16", self.net)
    }

    /// Distinct (source, destination) pairs the connections rotate over.
    pub fn destinations(&self) -> u64 {
        self.sources as u64 * self.servers as u64 * self.ports as u64 * self.threads as u64
    }

    /// The share of `count` one thread makes (the first threads take the remainder).
    fn thread_count(&self, thread: usize) -> Option<u64> {
        self.count.map(|n| {
            let t = self.threads as u64;
            n / t + u64::from((thread as u64) < n % t)
        })
    }
}

/// What a run did.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// Iterations that went through the whole sequence (for `Refused`:
    /// connects refused as expected).
    pub connections: u64,
    /// Connections that failed somewhere (each error is counted once).
    pub errors: u64,
    pub elapsed_s: f64,
    /// CPU time (user + system) of the whole load process: with loopback,
    /// the kernel's TCP work and the BPF programs on the tracepoint run in
    /// its system calls and the softirqs they raise.
    #[serde(default)]
    pub cpu_s: f64,
    /// First errors, for diagnosis.
    pub error_samples: Vec<String>,
}

impl Report {
    pub fn rate(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.connections as f64 / self.elapsed_s
        } else {
            0.0
        }
    }
}

/// User + system CPU time of this process so far, seconds.
pub fn process_cpu_s() -> f64 {
    // SAFETY: an all-zero rusage is valid; getrusage overwrites it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A client socket bound to `src` whose port the kernel picks at connect().
fn connect_from(src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(dst), Type::STREAM, None)?;
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    s.bind(&SocketAddr::new(src, 0).into())?;
    s.connect(&dst.into())?;
    Ok(s.into())
}

/// One connection, start to finish.
fn one_connection(src: IpAddr, listener: &TcpListener, dst: SocketAddr) -> Result<()> {
    let client = connect_from(src, dst).with_context(|| format!("connect {src} -> {dst}"))?;
    let (mut server, _) = listener.accept().context("accept")?;
    drop(client);
    // The server reads the client's FIN, then closes: passive close.
    let mut buf = [0u8; 16];
    loop {
        match server.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("read to EOF"),
        }
    }
    drop(server);
    Ok(())
}

/// One refused connect: `dst` is bound by nobody listening.
fn one_refused(src: IpAddr, dst: SocketAddr) -> Result<()> {
    match connect_from(src, dst) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
        Err(e) => Err(e).with_context(|| format!("connect {src} -> {dst}")),
        Ok(_) => bail!("connect {src} -> {dst} succeeded; expected a refusal"),
    }
}

struct Worker {
    listeners: Vec<(TcpListener, SocketAddr)>,
    sources: Vec<IpAddr>,
}

fn bind_listeners(plan: &Plan, thread: usize) -> Result<Worker> {
    let mut listeners = Vec::new();
    for s in 0..plan.servers {
        for p in 0..plan.ports {
            let port = plan
                .port_base
                .map_or(0, |b| b + (thread as u16) * plan.ports + p);
            let addr = SocketAddr::new(plan.server_addr(s), port);
            let sock = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            sock.set_reuse_address(true)?;
            sock.bind(&addr.into())
                .with_context(|| format!("bind listener {addr}"))?;
            // Refused mode: the port stays bound (nobody else takes it) but
            // never listens, so SYNs to it are answered with RST.
            if plan.mode == Mode::Churn {
                sock.listen(1024)?;
            }
            let l: TcpListener = sock.into();
            let local = l.local_addr()?;
            listeners.push((l, local));
        }
    }
    let sources = (0..plan.sources).map(|i| plan.source_addr(i)).collect();
    Ok(Worker { listeners, sources })
}

/// Run the plan; blocks until done. Listeners are opened before the clock
/// starts and closed after it stops.
pub fn run(plan: &Plan) -> Result<Report> {
    plan.validate()?;
    let workers: Vec<Worker> = (0..plan.threads)
        .map(|t| bind_listeners(plan, t))
        .collect::<Result<_>>()?;
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let deadline = plan.duration.map(|d| start + d);
    let per_thread_interval = plan
        .rate
        .map(|r| Duration::from_secs_f64(plan.threads as f64 / r));
    let handles: Vec<_> = workers
        .into_iter()
        .enumerate()
        .map(|(t, w)| {
            let stop = stop.clone();
            let quota = plan.thread_count(t);
            let mode = plan.mode;
            std::thread::spawn(move || {
                let mut r = Report::default();
                let mut n: u64 = 0;
                let nl = w.listeners.len() as u64;
                // Stagger threads so they do not pick the same source at once.
                let mut k: u64 = t as u64;
                loop {
                    if quota.is_some_and(|q| n >= q) || stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let now = Instant::now();
                    if deadline.is_some_and(|d| now >= d) {
                        break;
                    }
                    if let Some(iv) = per_thread_interval {
                        let due = start + iv.mul_f64(n as f64);
                        if due > now {
                            std::thread::sleep(due - now);
                            continue;
                        }
                    }
                    let (l, dst) = &w.listeners[(k % nl) as usize];
                    let src = w.sources[((k / nl) % w.sources.len() as u64) as usize];
                    k += 1;
                    n += 1;
                    let res = match mode {
                        Mode::Churn => one_connection(src, l, *dst),
                        Mode::Refused => one_refused(src, *dst),
                    };
                    match res {
                        Ok(()) => r.connections += 1,
                        Err(e) => {
                            r.errors += 1;
                            if r.error_samples.len() < 5 {
                                r.error_samples.push(format!("{e:#}"));
                            }
                            // A broken setup fails every connection: give up early.
                            if r.errors > 1000 && r.errors > r.connections {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                }
                r
            })
        })
        .collect();
    let mut total = Report::default();
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))?;
        total.connections += r.connections;
        total.errors += r.errors;
        total.error_samples.extend(r.error_samples);
    }
    total.elapsed_s = start.elapsed().as_secs_f64();
    total.cpu_s = process_cpu_s();
    total.error_samples.truncate(5);
    Ok(total)
}

/// Established connections kept open, both ends (two sockets each).
pub struct Held {
    pairs: Vec<(TcpStream, TcpStream)>,
    pub elapsed_s: f64,
}

impl Held {
    pub fn connections(&self) -> usize {
        self.pairs.len()
    }
}

/// Raise RLIMIT_NOFILE's soft limit to at least `n` (and the hard limit, as
/// root, up to fs.nr_open).
pub fn raise_nofile(n: u64) -> Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit");
    }
    if lim.rlim_cur >= n {
        return Ok(());
    }
    let want = libc::rlimit {
        rlim_cur: n,
        rlim_max: lim.rlim_max.max(n),
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("raising the open-files limit to {n} (fs.nr_open?)"));
    }
    Ok(())
}

/// Open `plan.count` connections and keep them, over `plan.threads` threads.
pub fn hold(plan: &Plan) -> Result<Held> {
    plan.validate()?;
    let total = plan.count.context("hold needs a count")?;
    raise_nofile(2 * total + 1024)?;
    let workers: Vec<Worker> = (0..plan.threads)
        .map(|t| bind_listeners(plan, t))
        .collect::<Result<_>>()?;
    let start = Instant::now();
    let handles: Vec<_> = workers
        .into_iter()
        .enumerate()
        .map(|(t, w)| {
            let quota = plan.thread_count(t).unwrap_or(0);
            std::thread::spawn(move || -> Result<Vec<(TcpStream, TcpStream)>> {
                let nl = w.listeners.len() as u64;
                let mut pairs = Vec::with_capacity(quota as usize);
                for k in 0..quota {
                    let (l, dst) = &w.listeners[(k % nl) as usize];
                    let src = w.sources[((k / nl) % w.sources.len() as u64) as usize];
                    let c = connect_from(src, *dst)
                        .with_context(|| format!("connect {src} -> {dst} (#{k})"))?;
                    let (a, _) = l.accept().context("accept")?;
                    pairs.push((c, a));
                }
                Ok(pairs)
            })
        })
        .collect();
    let mut pairs = Vec::with_capacity(total as usize);
    for h in handles {
        pairs.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("hold thread panicked"))??,
        );
    }
    Ok(Held {
        pairs,
        elapsed_s: start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_is_split_exactly_over_threads() {
        let p = Plan {
            threads: 3,
            count: Some(10),
            ..Plan::default()
        };
        let parts: Vec<u64> = (0..3).map(|t| p.thread_count(t).unwrap()).collect();
        assert_eq!(parts, vec![4, 3, 3]);
        assert_eq!(parts.iter().sum::<u64>(), 10);
    }

    #[test]
    fn addresses_stay_inside_the_plan_cidr() {
        let p = Plan {
            net: 250,
            servers: 3,
            sources: 200,
            ..Plan::default()
        };
        let net: ipnet::Ipv4Net = p.cidr().parse().unwrap();
        for i in 0..3 {
            let IpAddr::V4(a) = p.server_addr(i) else {
                panic!()
            };
            assert!(net.contains(&a));
        }
        for i in 0..200 {
            let IpAddr::V4(a) = p.source_addr(i) else {
                panic!()
            };
            assert!(net.contains(&a));
        }
        assert_ne!(p.server_addr(0), p.source_addr(0));
        assert_eq!(p.destinations(), 200 * 3 * 4 * 2);
    }

    #[test]
    fn bad_plans_are_refused() {
        for p in [
            Plan {
                threads: 0,
                ..Plan::default()
            },
            Plan {
                duration: None,
                count: None,
                ..Plan::default()
            },
            Plan {
                rate: Some(0.0),
                ..Plan::default()
            },
            Plan {
                port_base: Some(65_530),
                ports: 8,
                ..Plan::default()
            },
            Plan {
                sources: 255,
                ..Plan::default()
            },
        ] {
            assert!(p.validate().is_err(), "{p:?} should be refused");
        }
    }

    /// Real loopback churn, unprivileged: every connection completes and the
    /// count is exact.
    #[test]
    fn churns_an_exact_count_of_connections() {
        let p = Plan {
            net: 251,
            servers: 2,
            sources: 3,
            ports: 2,
            threads: 2,
            duration: None,
            count: Some(301),
            ..Plan::default()
        };
        let r = run(&p).unwrap();
        assert_eq!(r.errors, 0, "{:?}", r.error_samples);
        assert_eq!(r.connections, 301);
        assert!(r.elapsed_s > 0.0 && r.rate() > 0.0);
    }

    #[test]
    fn refused_mode_counts_refusals() {
        let p = Plan {
            mode: Mode::Refused,
            net: 251,
            servers: 1,
            sources: 2,
            ports: 2,
            threads: 2,
            duration: None,
            count: Some(50),
            ..Plan::default()
        };
        let r = run(&p).unwrap();
        assert_eq!((r.connections, r.errors), (50, 0), "{:?}", r.error_samples);
    }

    #[test]
    fn hold_keeps_both_ends_open() {
        let p = Plan {
            net: 251,
            servers: 1,
            sources: 2,
            ports: 3,
            threads: 2,
            duration: None,
            count: Some(21),
            ..Plan::default()
        };
        let h = hold(&p).unwrap();
        assert_eq!(h.connections(), 21);
        for (c, a) in &h.pairs {
            assert_eq!(c.local_addr().unwrap(), a.peer_addr().unwrap());
        }
    }

    /// A paced run does not run ahead of its rate.
    #[test]
    fn paced_run_keeps_to_its_rate() {
        let p = Plan {
            net: 251,
            servers: 1,
            sources: 2,
            ports: 1,
            threads: 2,
            rate: Some(400.0),
            duration: None,
            count: Some(100),
            ..Plan::default()
        };
        let r = run(&p).unwrap();
        assert_eq!(r.connections, 100);
        // 100 connections at 400/s take at least ~0.25 s (the first of each
        // thread goes at t = 0: 49 intervals of 5 ms per thread).
        assert!(r.elapsed_s >= 0.24, "took {} s", r.elapsed_s);
    }
}
