//! Workloads with known counts for the root integration tests.
//!
//! Each test gets its own loopback subnet 127.A.B.0/24 (server .1, client .2)
//! so that TIME_WAIT sockets left by earlier tests or runs (they live 60 s)
//! never fall inside its filter.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use socket2::{Domain, Socket, Type};

pub mod guest;
pub mod netdelay;

/// A loopback /24 nobody else uses in this run.
#[derive(Clone, Copy, Debug)]
pub struct Subnet {
    pub a: u8,
    pub b: u8,
}

impl Subnet {
    /// `id` distinguishes tests; the pid distinguishes runs. The second
    /// octet can be pinned with `TRACER_TEST_NET` (e.g. `77` for 127.77.x.x),
    /// so runs sharing a machine can be kept apart; then the third is the
    /// first from the usual one on that has no socket at all (a run a minute
    /// earlier leaves TIME_WAITs behind) and that this process has not taken.
    pub fn unique(id: u8) -> Self {
        let pid = std::process::id();
        let b = id.wrapping_mul(7).wrapping_add((pid / 200 % 31) as u8);
        let pinned = std::env::var("TRACER_TEST_NET")
            .ok()
            .and_then(|v| v.parse::<u8>().ok());
        match pinned {
            Some(a) => Subnet {
                a,
                b: free_third_octet(a, b),
            },
            None => Subnet {
                a: 10 + (pid % 200) as u8,
                b,
            },
        }
    }
    pub fn server(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.a, self.b, 1))
    }
    pub fn client(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.a, self.b, 2))
    }
    pub fn cidr(&self) -> String {
        format!("127.{}.{}.0/24", self.a, self.b)
    }
}

/// Third octets handed out by `Subnet::unique` in this process.
static TAKEN: Mutex<BTreeSet<u8>> = Mutex::new(BTreeSet::new());

/// From `from` on, the first 127.`a`.B.0/24 with no TCP socket at either end
/// (sock_diag, every state) that this process has not handed out yet.
fn free_third_octet(a: u8, from: u8) -> u8 {
    let mut busy = BTreeSet::new();
    let all_states = (1u32 << 12) - 2;
    let _ = tracer::host::diag::dump_each(all_states, |s| {
        for ip in [s.src, s.dst] {
            if let IpAddr::V4(v4) = ip {
                let o = v4.octets();
                if o[0] == 127 && o[1] == a {
                    busy.insert(o[2]);
                }
            }
        }
    });
    let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
    (0..=255u8)
        .map(|k| from.wrapping_add(k))
        .find(|b| !busy.contains(b) && taken.insert(*b))
        .expect("a free /24 in 127.a.0.0/16")
}

/// Connect from `src` to `dst`, from a local port this process has never
/// connected from before (see `bind_fresh_port`).
pub fn connect_from(src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    Ok(connect_timed(src, dst)?.0)
}

/// `connect_from`, and when its connect() began (after the bind: the SYN
/// leaves within that system call).
pub fn connect_timed(src: IpAddr, dst: SocketAddr) -> std::io::Result<(TcpStream, Instant)> {
    let s = bind_fresh_port(src)?;
    let t0 = Instant::now();
    s.connect(&dst.into())?;
    Ok((s.into(), t0))
}

/// Local ports this test process has connected from, per source address.
static USED_PORTS: Mutex<BTreeMap<IpAddr, BTreeSet<u16>>> = Mutex::new(BTreeMap::new());

/// A socket bound to `src` on a port the kernel chose (bind to port 0) that
/// this process has not used before. Why: when the server closed first, the
/// server holds the connection's TIME_WAIT, and a later SYN from the same
/// client address *and port* ends that TIME_WAIT at once (the kernel accepts a
/// SYN with a newer timestamp or sequence number in TIME_WAIT and replaces it
/// with the new connection, RFC 6191; nothing fires on the tracepoint). bind()
/// picks a random free port, and the client's own socket of that connection is
/// already gone, so repeats happen: the mixed workload of `tracer.rs` repeated
/// a port in about 2 runs in 100, idle or loaded, and then had one TIME_WAIT
/// fewer than it created.
fn bind_fresh_port(src: IpAddr) -> std::io::Result<Socket> {
    let mut used = USED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
    let used = used.entry(src).or_default();
    // A repeated port stays bound here until a fresh one is found, so the
    // kernel cannot hand it out again meanwhile.
    let mut held = Vec::new();
    loop {
        let s = Socket::new(
            Domain::for_address(SocketAddr::new(src, 0)),
            Type::STREAM,
            None,
        )?;
        s.bind(&SocketAddr::new(src, 0).into())?;
        let port = s.local_addr()?.as_socket().map_or(0, |a| a.port());
        if used.insert(port) {
            return Ok(s);
        }
        held.push(s);
    }
}

/// Abort with RST on close (SO_LINGER 0).
pub fn abort(s: TcpStream) {
    let s = Socket::from(s);
    s.set_linger(Some(Duration::ZERO)).expect("SO_LINGER");
    drop(s);
}

fn read_to_eof(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) => panic!("waiting for the peer's FIN: {e}"),
        }
    }
}

/// Known numbers of each connection ending.
#[derive(Clone, Copy, Debug, Default)]
pub struct Workload {
    /// The client closes first: TIME_WAIT on the client (active-opened) side.
    pub client_closes: u64,
    /// The server closes first: TIME_WAIT on the server (accepted) side.
    pub server_closes: u64,
    /// Connects to a bound but not listening port: refused by RST.
    pub refused: u64,
    /// The client aborts with SO_LINGER 0: one RST sent, one received.
    pub resets: u64,
}

impl Workload {
    pub fn connections(&self) -> u64 {
        self.client_closes + self.server_closes + self.resets
    }

    /// Run it between `client` and a listener on `server` (port 0: any).
    /// Returns the listener's port. Every socket is closed when it returns.
    pub fn run(&self, client: IpAddr, server: IpAddr) -> u16 {
        let listener = TcpListener::bind(SocketAddr::new(server, 0)).expect("listen");
        let addr = listener.local_addr().unwrap();
        let pair = || {
            let c = connect_from(client, addr).expect("connect");
            let (a, _) = listener.accept().expect("accept");
            (c, a)
        };
        for _ in 0..self.client_closes {
            let (mut c, mut a) = pair();
            c.write_all(b"x").unwrap();
            drop(c);
            read_to_eof(&mut a);
            drop(a);
        }
        for _ in 0..self.server_closes {
            let (mut c, a) = pair();
            drop(a);
            read_to_eof(&mut c);
            drop(c);
        }
        for _ in 0..self.resets {
            let (c, mut a) = pair();
            abort(c);
            let mut buf = [0u8; 1];
            let r = a.read(&mut buf);
            assert!(r.is_err(), "the aborted peer reads ECONNRESET, got {r:?}");
            drop(a);
        }
        if self.refused > 0 {
            // Bound, not listening: SYNs to it are answered with RST.
            let holder = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
            holder.bind(&SocketAddr::new(server, 0).into()).unwrap();
            let dead = holder.local_addr().unwrap().as_socket().unwrap();
            for _ in 0..self.refused {
                let e = connect_from(client, dead).expect_err("refused");
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
            }
        }
        addr.port()
    }
}

/// Poll `f` until it returns Some or `timeout` passes; then the last value.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> (bool, T)) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let (done, v) = f();
        if done || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Install Debian package `pkg` when `bin` is not on PATH (CI machines are
/// fresh; tests install what they need, as root).
pub fn ensure_debian_package(bin: &str, pkg: &str) -> anyhow::Result<()> {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {bin}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Ok(());
    }
    let install = || {
        std::process::Command::new("apt-get")
            .args(["install", "-y", "-q", pkg])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
    };
    if !install().is_ok_and(|s| s.success()) {
        let _ = std::process::Command::new("apt-get")
            .args(["update", "-q"])
            .status();
        if !install()?.success() {
            anyhow::bail!("could not install {pkg} with apt-get");
        }
    }
    Ok(())
}

/// A port nobody listens on right now (bind to 0, read it, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills and reaps a child process when dropped (test servers).
pub struct KillOnDrop(pub std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Poll the summary until `done` holds (the last packets of a close are
/// processed in softirq a moment after the syscalls return), then return it.
pub fn settle(
    t: &tracer::Tracer,
    done: impl Fn(&tracer::report::Summary) -> bool,
) -> tracer::report::Summary {
    settle_with(t, &tracer::SummaryOptions::default(), done)
}

/// `settle` with report options.
pub fn settle_with(
    t: &tracer::Tracer,
    opts: &tracer::SummaryOptions,
    done: impl Fn(&tracer::report::Summary) -> bool,
) -> tracer::report::Summary {
    wait_for(Duration::from_secs(5), || {
        let s = t.summary_with(opts).expect("summary");
        (done(&s), s)
    })
}

/// TIME_WAIT sockets `ss` shows with a local address in `cidr`: an
/// independent count to compare the tracer's sock_diag population with.
pub fn ss_time_wait(cidr: &str) -> u64 {
    let out = std::process::Command::new("ss")
        .args(["-H", "-tan", "state", "time-wait", "src", cidr])
        .output()
        .expect("ss");
    assert!(out.status.success(), "ss failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as u64
}

/// The release binary `cargo xtask test` built.
pub fn tracer_bin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/tracer");
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask build`",
        p.display()
    );
    p
}

/// Ids of our programs currently loaded in the kernel (names are cut to 15
/// bytes). Tests compare id sets, so another tracer running on the machine
/// does not disturb them.
pub fn tracer_program_ids() -> std::collections::BTreeSet<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(&tracer::probe::PROGRAM[..15]))
        .map(|p| p.id())
        .collect()
}

/// Wait until none of `ids` is loaded any more (the kernel frees a dropped
/// tracer's programs asynchronously, after an RCU grace period); returns those
/// still loaded.
pub fn wait_until_unloaded(
    ids: &std::collections::BTreeSet<u32>,
) -> std::collections::BTreeSet<u32> {
    wait_for(Duration::from_secs(10), || {
        let left: std::collections::BTreeSet<u32> =
            tracer_program_ids().intersection(ids).copied().collect();
        (left.is_empty(), left)
    })
}

/// `tracer serve` on a free loopback port with `args` (filters,
/// `--top-peers`), once it answers; killed on drop.
pub fn start_exporter(args: &[&str]) -> (KillOnDrop, u16) {
    let port = free_port();
    let child = std::process::Command::new(tracer_bin())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("tracer serve");
    let guard = KillOnDrop(child);
    let up = wait_for(Duration::from_secs(20), || {
        let ok = scrape(port).is_some();
        (ok, ok)
    });
    assert!(up, "the exporter never answered on port {port}");
    (guard, port)
}

/// The exporter's /metrics on `port`, if it answers.
pub fn scrape(port: u16) -> Option<String> {
    ureq::get(&format!("http://127.0.0.1:{port}/metrics"))
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()
}

/// One network namespace `<prefix>-<pid>-<test>` with loopback up, deleted
/// on drop.
pub struct TestNetns {
    pub name: String,
}

impl TestNetns {
    pub fn create(prefix: &str, test: &str) -> Self {
        let name = format!("{prefix}-{}-{test}", std::process::id());
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(std::process::Stdio::null())
            .status();
        for args in [
            vec!["netns", "add", &name],
            vec!["-n", &name, "link", "set", "lo", "up"],
        ] {
            let out = std::process::Command::new("ip")
                .args(&args)
                .output()
                .expect("ip");
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        }
        TestNetns { name }
    }

    pub fn namespace(&self) -> tracer::host::netns::Namespace {
        let path = PathBuf::from("/run/netns").join(&self.name);
        tracer::host::netns::Namespace {
            inode: tracer::host::netns::inode_of(&path).expect("namespace inode"),
            mounts: vec![path],
            names: vec![self.name.clone()],
            ..Default::default()
        }
    }

    /// `f` run inside the namespace.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        tracer::host::netns::within(&self.namespace(), f).expect("entering the namespace")
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A throwaway PKI for the TLS tests: a CA and a server certificate for
/// 127.0.0.1 it signed, PEM: (CA certificate, server certificate, server key).
pub fn test_pki() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).expect("CA certificate").pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("server key");
    let srv = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("server params")
        .signed_by(&key, &issuer)
        .expect("server certificate");
    (ca_pem, srv.pem(), key.serialize_pem())
}

/// Run `script` with `python3 -c` inside `ns`; it must succeed (its stderr
/// is the failure message). Returns its standard output, trimmed.
pub fn python_in(ns: &bench::netns::NetNs, script: &str) -> String {
    let out = ns
        .command("python3")
        .args(["-c", script])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
