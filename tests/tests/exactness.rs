//! Root tests of the counts the kernel side used to get quietly wrong:
//! connects that find no free local port, listeners of the same port in two
//! network namespaces, and a socket's filter verdict fixed once. Each runs
//! its traffic in network namespaces of its own, on a loopback /24 nobody
//! else uses, and asserts exact numbers.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
};

use bench::netns::NetNs;
use integration_tests::{python_in, settle, Subnet};
use tracer::{filter::FilterSpec, report::Summary, Tracer};
use tracer_common::dir;

/// A python TCP server in `ns` on `addr:port` that accepts `n` connections,
/// reads each to EOF and closes (the client closes first), then exits.
/// Returns once it listens.
fn server(ns: &NetNs, addr: &str, port: u16, n: u32) -> Child {
    let script = format!(
        "import socket,sys\n\
         s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{addr}',{port})); s.listen(64); print('ready',flush=True)\n\
         for _ in range({n}):\n    c,_=s.accept(); c.recv(1); c.close()\n"
    );
    let mut child = ns
        .command("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

/// `n` connects from `ns` to `addr:port` (from source address `src`, or
/// the route's), each closed by the client first; returns how many failed
/// with EADDRNOTAVAIL.
fn clients(ns: &NetNs, src: Option<&str>, addr: &str, port: u16, n: u32) -> u32 {
    let bind = src.map_or(String::new(), |a| {
        // 24 = IP_BIND_ADDRESS_NO_PORT: the port is still picked at connect().
        format!("c.setsockopt(socket.IPPROTO_IP, 24, 1); c.bind(('{a}',0)); ")
    });
    let script = format!(
        "import socket,errno\n\
         f=0\n\
         for _ in range({n}):\n    c=socket.socket()\n    \
         try:\n        {bind}c.connect(('{addr}',{port})); c.close()\n    \
         except OSError as e:\n        assert e.errno==errno.EADDRNOTAVAIL, e\n        f+=1; c.close()\n\
         print(f)\n"
    );
    python_in(ns, &script).parse().unwrap()
}

fn subnet_filter(net: &Subnet) -> FilterSpec {
    FilterSpec {
        addr: Some(net.cidr().parse().unwrap()),
        ..Default::default()
    }
}

fn ns(tag: &str) -> NetNs {
    NetNs::create(&format!("tt-{tag}-{}", std::process::id())).expect("netns")
}

#[test]
fn connects_without_a_free_local_port_are_their_own_reason() {
    let net = Subnet::unique(30);
    let n = ns("noport");
    // Two ephemeral ports, both left in TIME_WAIT, and no reuse of them.
    n.sysctl("net.ipv4.ip_local_port_range", "40000 40001")
        .unwrap();
    n.sysctl("net.ipv4.tcp_tw_reuse", "0").unwrap();
    let t = Tracer::start(subnet_filter(&net), false, 4096).expect("attach");
    let addr = net.server().to_string();
    let mut srv = server(&n, &addr, 9000, 2);
    assert_eq!(clients(&n, None, &addr, 9000, 2), 0);
    srv.wait().unwrap();
    assert_eq!(
        clients(&n, None, &addr, 9000, 3),
        3,
        "the kernel's own EADDRNOTAVAIL"
    );

    let s: Summary = settle(&t, |s| s.connects.attempts == 5 && s.time_wait.entered == 2);
    assert_eq!(s.connects.attempts, 5);
    assert_eq!(s.connects.established, 2);
    assert_eq!(s.connects.failed, 3);
    assert_eq!(s.connects.no_local_port, 3);
    assert_eq!(s.connects.aborted, 0);
    let peer = s
        .top_peers
        .iter()
        .find(|p| p.peer == format!("{addr}:9000"))
        .expect("the destination's row");
    assert_eq!(peer.stats.connect_no_local_port, 3);
    assert_eq!(peer.stats.connect_failed, 3);
}

#[test]
fn listeners_of_one_port_in_two_namespaces_keep_their_own_owner() {
    let net = Subnet::unique(31);
    let (a, b) = (ns("lsa"), ns("lsb"));
    let addr = net.server().to_string();
    let t = Tracer::start(subnet_filter(&net), false, 4096).expect("attach");
    // Same address and port in both namespaces, started after the tracer.
    let mut sa = server(&a, &addr, 9000, 5);
    let mut sb = server(&b, &addr, 9000, 3);
    let (pa, pb) = (sa.id(), sb.id());
    let src = net.client().to_string();
    clients(&a, Some(&src), &addr, 9000, 5);
    clients(&b, Some(&src), &addr, 9000, 3);
    sa.wait().unwrap();
    sb.wait().unwrap();

    let inode = |ns: &NetNs| ns.inode().unwrap() as u32;
    let (ia, ib) = (inode(&a), inode(&b));
    settle(&t, |s| {
        s.accepts.established == 8 && s.time_wait.entered == 8
    });
    let snap = t.snapshot().unwrap();
    let accepted = |ns: u32| -> Vec<(u32, u64)> {
        snap.flows
            .iter()
            .filter(|(k, _)| k.dir == dir::PASSIVE && k.netns == ns)
            .map(|(k, f)| (k.tgid, f.established))
            .collect()
    };
    assert_eq!(accepted(ia), vec![(pa, 5)], "namespace A's server");
    assert_eq!(accepted(ib), vec![(pb, 3)], "namespace B's server");
}

#[test]
fn a_socket_filtered_out_at_birth_is_not_counted_when_its_owner_appears() {
    let net = Subnet::unique(32);
    let n = ns("verdict");
    let addr = net.server().to_string();
    // The listener predates the tracer, and the tracer runs as nobody with
    // only CAP_BPF + CAP_PERFMON, so it cannot look the listener's owner up
    // (another user's /proc/PID/fd, another namespace): its accepted sockets
    // are born without an owner, which only appears at the server's close().
    let mut srv = server(&n, &addr, 9000, 4);
    let mut tracer = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(["--inh-caps=+bpf,+perfmon", "--ambient-caps=+bpf,+perfmon"])
        .arg(integration_tests::tracer_bin())
        .args(["summary", "--json", "--pid", &srv.id().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv");
    let mut err = BufReader::new(tracer.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("Aggregating") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "tracer exited early");
    }
    clients(&n, None, &addr, 9000, 4);
    srv.wait().unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(tracer.id() as i32, libc::SIGINT) };
    let out = tracer.wait_with_output().unwrap();
    assert!(out.status.success());
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let counted: Vec<(String, String, u64)> = s["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["from"].as_str().unwrap().to_string(),
                t["to"].as_str().unwrap().to_string(),
                t["count"].as_u64().unwrap(),
            )
        })
        .collect();
    // None of the 4 connections is half-counted from the close() on; only
    // the listener's own close, in the server's context, matches the filter.
    assert_eq!(counted, vec![("LISTEN".into(), "CLOSE".into(), 1)]);
    // Each connection's 10 transitions but the server's LAST_ACK -> CLOSE
    // (the client's last ACK, in softirq) have happened by now.
    assert!(s["tracer"]["filtered_out"].as_u64().unwrap() >= 4 * 9);
}
