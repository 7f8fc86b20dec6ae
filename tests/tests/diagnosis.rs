//! Root integration tests for the diagnosis numbers: TIME_WAIT per side,
//! local address and peer, close paths per peer, port pressure, the TIME_WAIT
//! model against sock_diag, CLOSE_WAIT leaks, lifetimes, bytes and cgroups.
//! Real program, real loopback traffic, exact expectations.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    os::unix::fs::MetadataExt,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use integration_tests::{settle_with, ss_time_wait, Subnet, Workload};
use tracer::{
    filter::FilterSpec,
    report::{PeerRow, Summary},
    SummaryOptions, Tracer,
};

fn subnet_filter(net: &Subnet) -> FilterSpec {
    FilterSpec {
        addr: Some(net.cidr().parse().unwrap()),
        ..Default::default()
    }
}

fn third(net: &Subnet) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, net.a, net.b, 3))
}

fn peer<'a>(s: &'a Summary, label: &str) -> &'a PeerRow {
    s.top_peers
        .iter()
        .find(|p| p.peer == label)
        .unwrap_or_else(|| panic!("no peer row {label}: {:#?}", s.top_peers))
}

/// Two clients (.2, .3) and one server (.1) with known closes: TIME_WAIT is
/// attributed to the side that closed first, per local address and per
/// peer; every close path is counted per peer; the ports the TIME_WAITs hold
/// show as port pressure with a warning under a lowered threshold.
#[test]
fn time_wait_by_side_local_address_peer_and_port_pressure() {
    let net = Subnet::unique(10);
    let t = Tracer::start(subnet_filter(&net), false, 4096).expect("attach");
    let (c2, c3, server) = (net.client(), third(&net), net.server());
    let w2 = Workload {
        client_closes: 7,
        server_closes: 4,
        refused: 2,
        resets: 3,
    };
    let port = w2.run(c2, server);
    // The second client reuses the same server port: a listener on it again.
    let w3 = Workload {
        client_closes: 5,
        ..Default::default()
    };
    let port3 = w3.run(c3, server);

    let opts = SummaryOptions {
        top: 20,
        // 7 TIME_WAITs of 28232 ports is 0.025 %: lower the bar below it.
        pressure_warn_pct: 0.02,
        ..Default::default()
    };
    let tw_total = 7 + 4 + 5;
    let s = settle_with(&t, &opts, |s| s.time_wait.now.time_wait == tw_total);

    // Entries and population agree, with ss, and the model predicts them.
    assert_eq!(s.time_wait.entered, tw_total);
    assert_eq!(s.time_wait.now.time_wait, tw_total);
    assert_eq!(ss_time_wait(&net.cidr()), tw_total);
    assert_eq!(s.time_wait.model.entered_last_60s, tw_total);
    assert_eq!(s.time_wait.model.aged_out, 0);
    assert_eq!(s.time_wait.entered_by_side.active_opened, 7 + 5);
    assert_eq!(s.time_wait.entered_by_side.passive_opened, 4);

    // Per local address: the clients pay for their closes, the server for its.
    let laddr = |a: IpAddr| {
        s.time_wait
            .by_local_addr
            .iter()
            .find(|r| r.local_addr == a.to_string())
            .unwrap_or_else(|| panic!("no row for {a}: {:?}", s.time_wait.by_local_addr))
    };
    assert_eq!(
        (laddr(c2).time_wait_entries, laddr(c2).time_wait_now),
        (7, 7)
    );
    assert_eq!(
        (laddr(c3).time_wait_entries, laddr(c3).time_wait_now),
        (5, 5)
    );
    assert_eq!(
        (laddr(server).time_wait_entries, laddr(server).time_wait_now),
        (4, 4)
    );

    // Per peer, active side (this host connected): who closed first, how.
    let out = peer(&s, &format!("{server}:{port}"));
    assert_eq!(out.direction, "active");
    assert_eq!(out.stats.established, 7 + 4 + 3);
    assert_eq!(out.stats.time_wait_entries, 7);
    assert_eq!(out.time_wait_now, 7);
    assert_eq!(out.stats.closed_here_first, 7);
    assert_eq!(out.stats.closed_by_peer_first, 4);
    assert_eq!(out.stats.closed_simultaneously, 0);
    assert_eq!((out.stats.resets_sent, out.stats.resets_received), (3, 0));
    let out3 = peer(&s, &format!("{server}:{port3}"));
    assert_eq!((out3.stats.time_wait_entries, out3.time_wait_now), (5, 5));
    assert_eq!(out3.stats.closed_here_first, 5);
    // Refused connects belong to their own (dead) port's peer row.
    let failed: u64 = s.top_peers.iter().map(|p| p.stats.connect_failed).sum();
    assert_eq!(failed, 2);

    // Passive side (accepted from .2 on `port`): the server closed first 4
    // times (orphans parked in FIN_WAIT2 until the client's FIN), received 3 RSTs.
    let inb = peer(&s, &format!("{c2} -> :{port}"));
    assert_eq!(inb.direction, "passive");
    assert_eq!(inb.stats.established, 7 + 4 + 3);
    assert_eq!(inb.stats.time_wait_entries, 4);
    assert_eq!(inb.time_wait_now, 4);
    assert_eq!(inb.stats.closed_here_first, 4);
    assert_eq!(inb.stats.closed_by_peer_first, 7);
    assert_eq!((inb.stats.resets_sent, inb.stats.resets_received), (0, 3));
    // Whether a close passed through a parked FIN_WAIT2 depends on ACK timing;
    // the per-peer split adds up to the total.
    let parked: u64 = s.top_peers.iter().map(|p| p.stats.fin_wait2_parked).sum();
    assert_eq!(parked, s.time_wait.via_fin_wait2);

    // Port pressure: TIME_WAIT + live sockets per (local addr, destination).
    let pp = &s.port_pressure;
    let (lo, hi) = s.sysctls.ip_local_port_range;
    let range = hi as u64 - lo as u64 + 1;
    let row = |l: IpAddr, p: u16| {
        pp.destinations
            .iter()
            .find(|r| r.local_addr == l.to_string() && r.remote == format!("{server}:{p}"))
            .unwrap_or_else(|| panic!("no pressure row {l} -> {p}: {:?}", pp.destinations))
    };
    let r2 = row(c2, port);
    assert_eq!((r2.time_wait, r2.established, r2.other), (7, 0, 0));
    assert_eq!(r2.range_size, range);
    assert!((r2.used_pct - 700.0 / range as f64).abs() < 1e-9);
    assert!(r2.warning);
    let r3 = row(c3, port3);
    assert_eq!(r3.total, 5);
    assert_eq!(r3.warning, 5.0 * 100.0 / range as f64 >= 0.02);
    let warned = pp
        .warnings
        .iter()
        .filter(|w| w.contains(&format!("{c2} -> {server}:{port} holds 7 of {range}")))
        .count();
    assert_eq!(warned, 1, "{:?}", pp.warnings);
    // The sysctls an operator acts on are in the report.
    assert!(s.sysctls.tcp_tw_reuse.is_some());
    assert!(s.sysctls.tcp_max_tw_buckets.is_some());
    assert!(s.sysctls.tcp_fin_timeout.is_some());
    // With the default 50 % threshold nothing here warns.
    let quiet = t.summary_with(&SummaryOptions::default()).unwrap();
    assert!(quiet.port_pressure.warnings.is_empty());
    let text = tracer::report::render_text(&s);
    assert!(
        text.contains(&format!(
            "WARNING: {c2} -> {server}:{port} holds 7 of {range}"
        )),
        "{text}"
    );
    assert!(text.contains("tcp_tw_reuse="), "{text}");
}

/// TIME_WAIT lives the kernel's fixed 60 s: entries of a first batch age out
/// of the model and of sock_diag together, while a second batch stays.
/// (About 70 s long: it waits for the kernel's timer.)
#[test]
fn time_wait_population_follows_entries_minus_expiries() {
    let net = Subnet::unique(11);
    let t = Tracer::start(subnet_filter(&net), false, 4096).expect("attach");
    let opts = SummaryOptions::default();
    let first = Workload {
        client_closes: 6,
        ..Default::default()
    };
    let t0 = Instant::now();
    first.run(net.client(), net.server());
    let s = settle_with(&t, &opts, |s| s.time_wait.now.time_wait == 6);
    assert_eq!(
        (
            s.time_wait.model.entered_last_60s,
            s.time_wait.now.time_wait
        ),
        (6, 6)
    );

    std::thread::sleep(Duration::from_secs(20).saturating_sub(t0.elapsed()));
    let second = Workload {
        client_closes: 4,
        ..Default::default()
    };
    second.run(net.client(), net.server());
    let s = settle_with(&t, &opts, |s| s.time_wait.now.time_wait == 10);
    assert_eq!(
        (
            s.time_wait.model.entered_last_60s,
            s.time_wait.now.time_wait
        ),
        (10, 10)
    );

    // The first batch expires at ~60 s (the timer wheel may fire up to a few
    // seconds late); the second one is 40 s younger.
    std::thread::sleep(Duration::from_secs(66).saturating_sub(t0.elapsed()));
    let s = settle_with(&t, &opts, |s| s.time_wait.now.time_wait == 4);
    assert_eq!(s.time_wait.entered, 10);
    assert_eq!(s.time_wait.model.entered_last_60s, 4);
    assert_eq!(s.time_wait.model.aged_out, 6);
    assert_eq!(s.time_wait.now.time_wait, 4);
    assert_eq!(ss_time_wait(&net.cidr()), 4);
}

/// Sockets whose application never calls close() after the peer's FIN stay
/// in CLOSE_WAIT: those older than the threshold are listed with the process
/// holding them, the peer and the age; younger ones are not.
#[test]
fn close_wait_leaks_are_listed_with_owner_peer_and_age() {
    let net = Subnet::unique(12);
    let t = Tracer::start(subnet_filter(&net), false, 4096).expect("attach");
    let listener = TcpListener::bind(SocketAddr::new(net.server(), 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    let mut leak = |n: usize| {
        let mut clients = Vec::new();
        for _ in 0..n {
            let c = integration_tests::connect_from(net.client(), addr).unwrap();
            let (a, _) = listener.accept().unwrap();
            clients.push(c.local_addr().unwrap());
            drop(c); // FIN: the accepted socket goes to CLOSE_WAIT, and stays.
            held.push(a);
        }
        clients
    };
    let old_clients = leak(3);
    let leaked_at = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    leak(1);

    let opts = SummaryOptions {
        close_wait_threshold: Duration::from_secs(1),
        ..Default::default()
    };
    let s = settle_with(&t, &opts, |s| s.close_wait.now == 4);
    let waited = leaked_at.elapsed().as_secs_f64();
    assert_eq!(s.close_wait.now, 4);
    assert_eq!(s.close_wait.threshold_s, 1.0);
    assert_eq!(s.close_wait.leaks.len(), 3, "{:#?}", s.close_wait.leaks);
    let mut peers: Vec<String> = s.close_wait.leaks.iter().map(|l| l.peer.clone()).collect();
    peers.sort();
    let mut want: Vec<String> = old_clients.iter().map(|a| a.to_string()).collect();
    want.sort();
    assert_eq!(peers, want);
    for l in &s.close_wait.leaks {
        assert_eq!(l.pid, Some(std::process::id()));
        assert_eq!(l.local, addr.to_string());
        assert!(l.age_exact);
        assert!(
            l.age_s >= 1.5 && l.age_s <= waited + 0.5,
            "age {} s, leaked {waited:.3} s ago",
            l.age_s
        );
    }
    let text = tracer::report::render_text(&s);
    assert!(
        text.contains("CLOSE_WAIT: 4 now, 3 older than 1 s"),
        "{text}"
    );
    drop(held);
}

/// cgroup v2 hierarchy root (hybrid hosts mount it at /sys/fs/cgroup/unified).
fn cgroup2_root() -> PathBuf {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    tracer::host::cgroup::cgroup2_mount_in(&mi).expect("a cgroup2 mount")
}

/// Removes the test's cgroup even if the test fails.
struct TempCgroup(PathBuf);
impl Drop for TempCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A client in its own cgroup sends 5 bytes, receives 7, lives ≥ 300 ms:
/// the tracer reports the lifetime and payload bytes per side, and tells the
/// client's cgroup (id and path) apart from the server's.
#[test]
fn lifetimes_bytes_and_cgroups() {
    let net = Subnet::unique(13);
    let name = format!("tcp-tracer-test-{}", std::process::id());
    let cg = TempCgroup(cgroup2_root().join(&name));
    std::fs::create_dir(&cg.0).expect("create cgroup");
    let cg_id = std::fs::metadata(&cg.0).unwrap().ino();

    let listener = TcpListener::bind(SocketAddr::new(net.server(), 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    // bash's client connects from 127.0.0.1: filter on the port.
    let filter = FilterSpec {
        port: Some(addr.port()),
        ..Default::default()
    };
    let t = Tracer::start(filter, false, 4096).expect("attach");
    // bash's /dev/tcp: a client that moves itself into the cgroup first.
    let script = format!(
        "echo $$ > {procs} && exec 3<>/dev/tcp/{ip}/{port} && printf hello >&3 && read -r -N 7 reply <&3 && sleep 0.3 && exec 3>&-",
        procs = cg.0.join("cgroup.procs").display(),
        ip = addr.ip(),
        port = addr.port()
    );
    let mut child = Command::new("bash").arg("-c").arg(&script).spawn().unwrap();
    let (mut a, _) = listener.accept().unwrap();
    let mut buf = [0u8; 5];
    a.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    a.write_all(b"goodbye").unwrap();
    let mut rest = Vec::new();
    a.read_to_end(&mut rest).unwrap(); // the client's FIN
    drop(a);
    assert!(child.wait().unwrap().success());

    let s = settle_with(&t, &SummaryOptions::default(), |s| {
        s.connection_lifetime.count == 2
    });
    // Both ends closed with a known lifetime; the client lived ≥ 300 ms.
    assert_eq!(s.connection_lifetime.count, 2);
    let max_ms = s.connection_lifetime.max_us.unwrap() / 1e3;
    assert!(
        (300.0..5000.0).contains(&max_ms),
        "lifetime max {max_ms} ms"
    );
    let out = peer(&s, &addr.to_string());
    assert_eq!(out.stats.connections_closed, 1);
    assert_eq!(
        (out.stats.bytes_sent_acked, out.stats.bytes_received),
        (5, 7)
    );
    assert!(out.stats.lifetime_mean_ms.unwrap() >= 300.0);
    let inb = peer(&s, &format!("127.0.0.1 -> :{}", addr.port()));
    assert_eq!(
        (inb.stats.bytes_received, inb.stats.bytes_sent_acked),
        (5, 7)
    );

    // The client's connection is in its own cgroup, resolved to its path.
    let row = s
        .top_cgroups
        .iter()
        .find(|r| r.cgroup_id == cg_id)
        .unwrap_or_else(|| panic!("no cgroup {cg_id}: {:#?}", s.top_cgroups));
    assert_eq!(row.cgroup.as_deref(), Some(format!("/{name}").as_str()));
    assert_eq!(row.stats.established, 1);
    assert_eq!(row.stats.bytes_sent_acked, 5);
    let others: u64 = s
        .top_cgroups
        .iter()
        .filter(|r| r.cgroup_id != cg_id)
        .map(|r| r.stats.established)
        .sum();
    assert_eq!(others, 1, "the accepting side is in the test's own cgroup");
}
