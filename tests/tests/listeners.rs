//! Listeners and connects in flight (root), in network namespaces this test
//! creates (`listen-<pid>-*`) and deletes: a backlog-1 listener that never
//! accepts and 6 non-blocking connects (queue full, drops on that listener
//! only, 4 connects stuck in SYN_SENT), and a normal listener with a slow
//! acceptor. Every figure is checked against what the kernel says inside
//! the namespace: `ss -ltn` and the namespace's own /proc/net/netstat.

use std::{
    net::{SocketAddr, TcpListener},
    process::Command,
    time::Duration,
};

use integration_tests::{wait_for, TestNetns};
use socket2::{Domain, Socket, Type};
use tracer::{
    filter::FilterSpec,
    host::listeners::{InFlightRow, ListenerRow},
    report::Summary,
    Tracer,
};

/// The test's namespace, with `ss` and `nstat` run inside it.
struct Ns(TestNetns);

impl std::ops::Deref for Ns {
    type Target = TestNetns;
    fn deref(&self) -> &TestNetns {
        &self.0
    }
}

impl Ns {
    fn create(test: &str) -> Self {
        Ns(TestNetns::create("listen", test))
    }

    fn exec(&self, cmd: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .output()
            .expect("ip netns exec");
        assert!(out.status.success(), "{cmd:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ss -ltn` inside: (Recv-Q, Send-Q) of the listener on `port`.
    fn ss_listen(&self, port: u16) -> (u32, u32) {
        let out = self.exec(&["ss", "-Hltn"]);
        let line = out
            .lines()
            .find(|l| {
                l.split_whitespace()
                    .nth(3)
                    .is_some_and(|a| a.ends_with(&format!(":{port}")))
            })
            .unwrap_or_else(|| panic!("no listener on {port} in ss -ltn: {out}"));
        let f: Vec<&str> = line.split_whitespace().collect();
        (f[1].parse().unwrap(), f[2].parse().unwrap())
    }

    /// A TcpExt counter of this namespace (/proc/net/netstat inside it).
    fn tcpext(&self, name: &str) -> u64 {
        let text = self.exec(&["cat", "/proc/net/netstat"]);
        let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
        let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
        let i = names.split_whitespace().position(|n| n == name).unwrap();
        values.split_whitespace().nth(i).unwrap().parse().unwrap()
    }
}

fn listen(port: u16, backlog: i32) -> TcpListener {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    s.listen(backlog).unwrap();
    s.into()
}

/// A connect that does not wait for the handshake.
fn connect_nonblocking(port: u16) -> Socket {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_nonblocking(true).unwrap();
    match s.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into()) {
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        other => panic!("non-blocking connect: {other:?}"),
    }
    s
}

/// SYN retransmits to wait for: 4 (each stuck client's first, at 1 s)
/// unless `LISTEN_MIN_RETRANS` asks for more (each client resends once a second
/// while `net.ipv4.tcp_syn_linear_timeouts`, 4 by default, lasts: 12 at 3 s).
fn min_retrans() -> u64 {
    std::env::var("LISTEN_MIN_RETRANS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

fn listener(s: &Summary, netns: u32, port: u16) -> &ListenerRow {
    s.listen
        .listeners
        .iter()
        .find(|l| l.netns == netns && l.local == format!("127.0.0.1:{port}"))
        .unwrap_or_else(|| panic!("no listener row for {port} in {netns}: {:?}", s.listen))
}

fn in_flight(s: &Summary, netns: u32) -> Vec<&InFlightRow> {
    s.listen
        .connects_in_flight
        .iter()
        .filter(|r| r.netns == netns)
        .collect()
}

#[test]
fn full_accept_queue_drops_on_that_listener_and_connects_stay_in_flight() {
    let ns = Ns::create("full");
    let inode = ns.namespace().inode;
    let t = Tracer::start(FilterSpec::default(), false, 4096).expect("attach");
    let since = std::time::Instant::now();
    let (_full, _calm, _clients) = ns.run(|| {
        let full = listen(7001, 1);
        let calm = listen(7002, 128);
        let clients: Vec<Socket> = (0..6).map(|_| connect_nonblocking(7001)).collect();
        (full, calm, clients)
    });
    // Two handshakes complete (the queue holds backlog + 1); the other four
    // SYNs are dropped. Wait past the first SYN retransmit (1 s) and read
    // between kernel timers: the namespace's counters must not move while
    // the report is taken.
    let (s, drops, retrans) = wait_for(Duration::from_secs(20), || {
        let before = (ns.tcpext("ListenDrops"), ns.tcpext("TCPSynRetrans"));
        let s = t.summary(10).expect("summary");
        let after = (ns.tcpext("ListenDrops"), ns.tcpext("TCPSynRetrans"));
        let ready = before == after && after.1 >= min_retrans();
        (ready, (s, after.0, after.1))
    });
    assert!(retrans >= 4, "no SYN retransmits yet: {retrans}");
    let full = listener(&s, inode, 7001);
    assert_eq!(
        (full.accept_queue, full.accept_queue_limit),
        (2, 1),
        "{full:?}"
    );
    assert_eq!(ns.ss_listen(7001), (2, 1));
    assert!(full.drops > 0);
    assert_eq!(full.drops, drops, "sk_drops vs the namespace's ListenDrops");
    assert_eq!(full.pid, Some(std::process::id()), "{full:?}");
    let calm = listener(&s, inode, 7002);
    assert_eq!(
        (calm.accept_queue, calm.accept_queue_limit, calm.drops),
        (0, 128, 0)
    );
    assert_eq!(ns.ss_listen(7002), (0, 128));
    let flight = in_flight(&s, inode);
    assert_eq!(flight.len(), 1, "{flight:?}");
    assert_eq!(
        (flight[0].peer.as_str(), flight[0].connects),
        ("127.0.0.1:7001", 4)
    );
    assert_eq!(
        flight[0].syn_retransmits, retrans,
        "SYN retransmits vs TCPSynRetrans"
    );
    // Ages from the kernel side's birth time: past the first retransmit
    // (1 s), and no older than the test's own clock since the connects.
    let (oldest, youngest) = (flight[0].oldest_s.unwrap(), flight[0].youngest_s.unwrap());
    assert_eq!(flight[0].ages_known, 4);
    assert!(
        youngest >= 1.0 && oldest <= since.elapsed().as_secs_f64(),
        "{flight:?}"
    );
    let text = tracer::report::render_text(&s);
    let warning = "WARNING: listener 127.0.0.1:7001 ";
    let line = text.lines().find(|l| l.contains(warning)).expect(&text);
    assert!(
        line.contains("accept queue 2 of 1") && line.contains("somaxconn 4096"),
        "{line}"
    );
    assert!(!text.contains("WARNING: listener 127.0.0.1:7002 "));
    let json = serde_json::to_value(&s).unwrap();
    let rows = json["listeners"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r["netns"] == inode && r["local"] == "127.0.0.1:7001")
        .unwrap();
    assert_eq!(row["drops"], drops);
    assert_eq!(
        json["connects_in_flight"].as_array().unwrap().len(),
        s.listen.connects_in_flight.len()
    );
    if std::env::var_os("LISTEN_SHOW").is_some() {
        println!(
            "{text}\n{}",
            serde_json::to_string_pretty(&json["listeners"]).unwrap()
        );
        println!(
            "{}",
            serde_json::to_string_pretty(&json["connects_in_flight"]).unwrap()
        );
        println!("{}", ns.exec(&["ss", "-ltn"]));
        println!(
            "{}",
            ns.exec(&[
                "nstat",
                "-az",
                "TcpExtListenOverflows",
                "TcpExtListenDrops",
                "TcpExtTCPSynRetrans"
            ])
        );
    }
}

#[test]
fn slow_acceptor_queue_matches_ss() {
    let ns = Ns::create("slow");
    let inode = ns.namespace().inode;
    let t = Tracer::start(FilterSpec::default(), false, 4096).expect("attach");
    let (_l, _clients, _accepted) = ns.run(|| {
        let l = listen(7003, 16);
        let clients: Vec<std::net::TcpStream> = (0..5)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", 7003)).unwrap())
            .collect();
        let accepted: Vec<_> = (0..2).map(|_| l.accept().unwrap().0).collect();
        (l, clients, accepted)
    });
    let s = t.summary(10).expect("summary");
    let row = listener(&s, inode, 7003);
    assert_eq!(
        (row.accept_queue, row.accept_queue_limit, row.drops),
        (3, 16, 0)
    );
    assert_eq!(ns.ss_listen(7003), (3, 16));
    assert!(!row.in_trouble());
    assert!(in_flight(&s, inode).is_empty());
}

/// How long the handshake's final ACK is held: past the listener's first
/// SYN-ACK retransmit (1 s after the SYN-ACK) and well before its second
/// (1 s + 2 s), so each held handshake costs exactly one retransmit.
const FINAL_ACK_HOLD: Duration = Duration::from_secs(2);

#[test]
fn synack_retransmits_and_accepts_per_listener() {
    let ns = Ns::create("synack");
    let inode = ns.namespace().inode;
    let filter = FilterSpec {
        netns: Some(inode),
        ..Default::default()
    };
    let t = Tracer::start(filter, false, 4096).expect("attach");
    let (held, calm, _clients, records) = held_handshakes(&ns);
    let truth: u64 = records.values().map(|r| u64::from(r.synacks) - 1).sum();
    let s = t.summary(10).expect("summary");
    let nstat = ns.tcpext("TCPSynRetrans");
    let row = listener(&s, inode, 7011);
    assert_eq!(truth, 3, "one retransmit per held handshake: {records:?}");
    assert_eq!(row.synack_retransmits, truth, "{row:?}");
    assert_eq!(nstat, truth, "no SYN retransmits here: all SYN-ACKs passed");
    assert_eq!(row.accepts, 3, "{row:?}");
    assert_eq!((row.accept_queue, row.accept_queue_limit), (3, 16));
    assert_eq!(ns.ss_listen(7011), (3, 16));
    let other = listener(&s, inode, 7012);
    assert_eq!(
        (other.synack_retransmits, other.accepts),
        (0, 2),
        "{other:?}"
    );
    assert_eq!(s.listen.synack_retransmits_total, truth);
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["synack_retransmits_total"], truth);
    let rows = json["listeners"].as_array().unwrap();
    let r = rows
        .iter()
        .find(|r| r["local"] == "127.0.0.1:7011")
        .unwrap();
    assert_eq!(
        (r["synack_retransmits"].as_u64(), r["accepts"].as_u64()),
        (Some(3), Some(3))
    );
    let text = tracer::report::render_text(&s);
    assert!(
        text.contains("SYN-ACK retransmits on every listener during the run: 3"),
        "{text}"
    );
    drop((held, calm));
}

/// Listeners on 7011 and 7012 in `ns`, three connects to 7011 whose final
/// ACKs are held for `FINAL_ACK_HOLD` (one SYN-ACK retransmit each) and two
/// to 7012 that complete at once; returns once all are in the queues, with
/// the verdict loop's records of 7011's clients.
/// The NFQUEUE rule and its verdict loop live in the namespace (threads
/// and iptables started inside it); blocking connects return at the
/// SYN-ACK, while the listener waits for the held final ACKs.
fn held_handshakes(
    ns: &Ns,
) -> (
    TcpListener,
    TcpListener,
    Vec<std::net::TcpStream>,
    std::collections::BTreeMap<u16, integration_tests::netdelay::Record>,
) {
    use integration_tests::netdelay::{Action, NetDelay};
    ns.run(|| {
        let held = listen(7011, 16);
        let calm = listen(7012, 16);
        let delay = NetDelay::start(Action::DelayFinalAck(FINAL_ACK_HOLD), 7011).unwrap();
        let mut clients: Vec<_> = (0..3)
            .map(|_| std::net::TcpStream::connect(("127.0.0.1", 7011)).unwrap())
            .collect();
        clients.extend((0..2).map(|_| std::net::TcpStream::connect(("127.0.0.1", 7012)).unwrap()));
        // Every handshake complete: the three held ones in 7011's queue.
        wait_for(Duration::from_secs(20), || {
            let r = delay.records();
            let done = r.len() == 3 && r.values().all(|r| r.released.is_some());
            (done && queue_len(7011) == 3 && queue_len(7012) == 2, ())
        });
        let records = delay.records();
        drop(delay);
        (held, calm, clients, records)
    })
}

/// `tracer events ARGS` running until `stop`, its stdout read meanwhile.
struct EventsRun {
    child: std::process::Child,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl EventsRun {
    /// Started and attached (its "Tracing" line on stderr).
    fn start(args: &[&str]) -> Self {
        use std::io::{BufRead, Read};
        let mut child = Command::new(integration_tests::tracer_bin())
            .arg("events")
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("tracer events");
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while err.read_line(&mut line).unwrap() > 0 && !line.contains("Tracing TCP") {
            line.clear();
        }
        assert!(line.contains("Tracing TCP"), "tracer events did not start");
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        EventsRun {
            child,
            stdout: Some(stdout),
        }
    }

    /// SIGINT (it drains the ring and exits 0), and its stdout.
    fn stop(mut self) -> String {
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status:?}");
        self.stdout.take().unwrap().join().unwrap()
    }
}

impl Drop for EventsRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn synack_retransmits_are_event_lines_with_the_filters() {
    let ns = Ns::create("synackev");
    let inode = ns.namespace().inode.to_string();
    let all = EventsRun::start(&["--json", "--netns", &inode]);
    let text = EventsRun::start(&["--netns", &inode, "--lport", "7011"]);
    let other = EventsRun::start(&["--netns", &inode, "--lport", "7012"]);
    let (_held, _calm, _clients, records) = held_handshakes(&ns);
    let (all, text, other) = (all.stop(), text.stop(), other.stop());
    if std::env::var_os("LISTEN_SHOW").is_some() {
        println!("{text}\n{all}");
    }
    let mut seen = listener_events(&all, "synack_retransmit", "127.0.0.1:7011", &inode);
    let truth: usize = records.values().map(|r| r.synacks as usize - 1).sum();
    assert_eq!((seen.len(), truth), (3, 3), "{all}");
    seen.sort();
    let clients: Vec<u16> = records.keys().copied().collect();
    assert_eq!(seen, clients, "one per held client");
    // The same filters as transitions: by the listener's port.
    assert_eq!(text.matches("SYNACK_RETRANSMIT").count(), 3, "{text}");
    assert_eq!(other.matches("SYNACK_RETRANSMIT").count(), 0, "{other}");
    assert_eq!(other.matches("SYN_RECV->ESTABLISHED").count(), 2, "{other}");
}

/// The `--json` lines of listener-side `event` in `out`, each checked to be
/// on `local` in namespace `netns` and owned by this process (the
/// listener's owner): their clients' ports (remote 127.0.0.1:PORT).
fn listener_events(out: &str, event: &str, local: &str, netns: &str) -> Vec<u16> {
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect(l))
        .filter(|v| v["event"] == event)
        .map(|v| {
            assert_eq!(v["local"], local, "{v}");
            assert_eq!(v["pid"], std::process::id(), "the listener's owner: {v}");
            assert_eq!(v["netns"].to_string(), netns, "{v}");
            let remote = v["remote"].as_str().unwrap();
            let port = remote.strip_prefix("127.0.0.1:").expect(remote);
            port.parse().expect(remote)
        })
        .collect()
}

/// The accept queue of the listener on `port`, from sock_diag in the
/// calling thread's namespace.
fn queue_len(port: u16) -> u32 {
    let mut queue = 0;
    let listen = tracer::host::diag::states(&[tracer_common::state::LISTEN]);
    let none = tracer::host::diag::ExtensionFlags::empty();
    tracer::host::diag::dump_detail_each(listen, none, |d| {
        if d.socket.sport == port {
            queue = d.recv_queue;
        }
    })
    .unwrap();
    queue
}

/// A listener with backlog 4 and 4 connections in its queue; two more
/// clients' final ACKs are dropped by iptables until both sit in the
/// SYN queue, so when the listener resends its SYN-ACKs the answers find
/// room for one: the other's ACK is refused (`kfree_skb` with reason
/// TCP_LISTEN_OVERFLOW). Accepting everything then lets the next SYN-ACK
/// retransmit complete it, and the namespace's ListenOverflows is the
/// ground truth for the queue-drop lines.
#[test]
fn refused_final_acks_are_queue_drop_lines_on_that_listener() {
    if tracer::probe::offsets::from_kernel()
        .unwrap()
        .listen_overflow_reason
        == 0
    {
        eprintln!("this kernel's kfree_skb tracepoint names no socket; skipping");
        return;
    }
    integration_tests::netdelay::ensure_iptables().unwrap();
    let ns = Ns::create("qdrop");
    let inode = ns.namespace().inode.to_string();
    let all = EventsRun::start(&["--json", "--netns", &inode]);
    let text = EventsRun::start(&["--netns", &inode, "--lport", "7021"]);
    let other = EventsRun::start(&["--netns", &inode, "--lport", "7022"]);
    let held_ports = ns.run(|| overflow_once(&ns));
    let (all, text, other) = (all.stop(), text.stop(), other.stop());
    let overflows = ns.tcpext("ListenOverflows");
    if std::env::var_os("LISTEN_SHOW").is_some() {
        println!("{text}\n{all}\nListenOverflows {overflows}");
    }
    let drops = listener_events(&all, "queue_drop", "127.0.0.1:7021", &inode);
    assert!(overflows >= 1, "the scenario overflowed nothing");
    assert_eq!(drops.len() as u64, overflows, "{all}");
    for port in &drops {
        assert!(held_ports.contains(port), "{port} is not a held client");
    }
    assert_eq!(
        text.matches("QUEUE_DROP").count() as u64,
        overflows,
        "{text}"
    );
    assert_eq!(other.matches("QUEUE_DROP").count(), 0, "{other}");
}

/// The scenario above, run inside the namespace; returns the two held
/// clients' ports once all six connections are accepted.
fn overflow_once(ns: &Ns) -> Vec<u16> {
    let full = listen(7021, 4);
    let _calm = listen(7022, 16);
    let _calm_client = std::net::TcpStream::connect(("127.0.0.1", 7022)).unwrap();
    let first: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", 7021)).unwrap())
        .collect();
    let rule = [
        "INPUT",
        "-i",
        "lo",
        "-p",
        "tcp",
        "--dport",
        "7021",
        "--tcp-flags",
        "SYN,ACK,FIN,RST",
        "ACK",
        "-j",
        "DROP",
    ];
    let insert: Vec<&str> = ["iptables", "-I"].iter().chain(&rule).copied().collect();
    ns.exec(&insert);
    let held: Vec<Socket> = (0..2).map(|_| connect_nonblocking(7021)).collect();
    // Both in the SYN queue (their SYN-ACKs answered, the answers dropped).
    wait_for(Duration::from_secs(20), || {
        let n = ns.exec(&["ss", "-Htn", "state", "syn-recv", "sport", "= :7021"]);
        (n.lines().count() == 2, ())
    });
    let delete: Vec<&str> = ["iptables", "-D"].iter().chain(&rule).copied().collect();
    ns.exec(&delete);
    wait_for(Duration::from_secs(20), || {
        (ns.tcpext("ListenOverflows") >= 1, ())
    });
    full.set_nonblocking(true).unwrap();
    let mut accepted = 0;
    wait_for(Duration::from_secs(30), || {
        while full.accept().is_ok() {
            accepted += 1;
        }
        (accepted == 6, ())
    });
    drop(first);
    held.iter()
        .map(|s| s.local_addr().unwrap().as_socket().unwrap().port())
        .collect()
}

/// A bare SYN to 127.0.0.1:`port` from `sport`, through a raw socket: no
/// socket owns `sport`, so the kernel answers the listener's SYN-ACK with an
/// RST, and the listener drops the half-open request.
fn raw_syn(sport: u16, port: u16) {
    let raw = Socket::new(Domain::IPV4, Type::RAW, Some(socket2::Protocol::TCP)).unwrap();
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&port.to_be_bytes());
    tcp[4..8].copy_from_slice(&1000u32.to_be_bytes());
    tcp[12] = 5 << 4; // header length: 5 words
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    // Checksum over the pseudo-header (source, destination, protocol,
    // length) and the segment.
    let mut words = vec![0x7f00, 0x0001, 0x7f00, 0x0001, 6, tcp.len() as u32];
    words.extend(
        tcp.chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))),
    );
    let mut sum: u32 = words.iter().sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    tcp[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let to = SocketAddr::from(([127, 0, 0, 1], 0));
    raw.send_to(&tcp, &to.into()).unwrap();
}

/// SYN scans' half-open handshakes: each RST that ends one is a
/// HALF_OPEN_RESET line on that listener (checked against the namespace's
/// EmbryonicRsts), and is in the listener's `drops` (its `sk_drops`),
/// though no queue was full (ListenDrops stays 0).
#[test]
fn half_open_resets_are_lines_and_listener_drops() {
    if tracer::probe::offsets::from_kernel()
        .unwrap()
        .listen_overflow_reason
        == 0
    {
        eprintln!("this kernel's kfree_skb tracepoint names no socket; skipping");
        return;
    }
    const SCANS: u16 = 5;
    let ns = Ns::create("halfopen");
    let inode = ns.namespace().inode;
    let netns = inode.to_string();
    let t = Tracer::start(FilterSpec::default(), false, 4096).expect("attach");
    let all = EventsRun::start(&["--json", "--netns", &netns]);
    let other = EventsRun::start(&["--netns", &netns, "--lport", "7032"]);
    let _listeners = ns.run(|| {
        let pair = (listen(7031, 16), listen(7032, 16));
        for i in 0..SCANS {
            raw_syn(41000 + i, 7031);
        }
        pair
    });
    let resets = wait_for(Duration::from_secs(10), || {
        let n = ns.tcpext("EmbryonicRsts");
        (n >= u64::from(SCANS), n)
    });
    assert_eq!(resets, u64::from(SCANS));
    let s = t.summary(10).expect("summary");
    let (all, other) = (all.stop(), other.stop());
    if std::env::var_os("LISTEN_SHOW").is_some() {
        println!("{all}");
    }
    let mut ports = listener_events(&all, "half_open_reset", "127.0.0.1:7031", &netns);
    assert_eq!(ports.len() as u64, resets, "{all}");
    ports.sort();
    assert_eq!(ports, (41000..41000 + SCANS).collect::<Vec<_>>());
    assert_eq!(other.matches("HALF_OPEN_RESET").count(), 0, "{other}");
    let row = listener(&s, inode, 7031);
    assert_eq!((row.drops, row.accept_queue), (resets, 0), "{row:?}");
    assert_eq!(ns.tcpext("ListenDrops"), 0);
    assert_eq!(listener(&s, inode, 7032).drops, 0);
}
