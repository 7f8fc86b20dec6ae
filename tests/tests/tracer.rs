//! Root integration tests: the real eBPF program, real loopback traffic with
//! known counts, exact assertions. Run by `cargo xtask test` (one at a time).

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv6Addr},
    process::{Command, Stdio},
};

use integration_tests::{
    settle, ss_time_wait, tracer_bin, tracer_program_ids, wait_until_unloaded, Subnet, Workload,
};
use tracer::{
    event,
    filter::{Family, FilterSpec},
    report::Summary,
    Tracer,
};
use tracer_common::{flag, state};

fn subnet_filter(net: &Subnet) -> FilterSpec {
    FilterSpec {
        addr: Some(net.cidr().parse().unwrap()),
        ..Default::default()
    }
}

fn transition(s: &Summary, from: &str, to: &str) -> u64 {
    s.transitions
        .iter()
        .find(|t| t.from == from && t.to == to)
        .map_or(0, |t| t.count)
}

#[test]
fn exact_counts_for_a_mixed_ipv4_workload() {
    let net = Subnet::unique(1);
    let t = Tracer::start(subnet_filter(&net), false, 4096).expect("attach");
    let w = Workload {
        client_closes: 20,
        server_closes: 15,
        refused: 6,
        resets: 5,
    };
    w.run(net.client(), net.server());
    let (n, m, k, r) = (w.client_closes, w.server_closes, w.refused, w.resets);
    let conns = w.connections();

    let s = settle(&t, |s| s.time_wait.now.time_wait == n + m);

    // The state machine, transition by transition.
    assert_eq!(transition(&s, "CLOSE", "SYN_SENT"), conns + k);
    assert_eq!(transition(&s, "SYN_SENT", "ESTABLISHED"), conns);
    assert_eq!(transition(&s, "SYN_SENT", "CLOSE"), k);
    assert_eq!(transition(&s, "LISTEN", "SYN_RECV"), conns);
    assert_eq!(transition(&s, "SYN_RECV", "ESTABLISHED"), conns);
    assert_eq!(transition(&s, "ESTABLISHED", "FIN_WAIT1"), n + m);
    assert_eq!(transition(&s, "FIN_WAIT1", "FIN_WAIT2"), n + m);
    assert_eq!(transition(&s, "FIN_WAIT2", "CLOSE"), n + m);
    assert_eq!(transition(&s, "ESTABLISHED", "CLOSE_WAIT"), n + m);
    assert_eq!(transition(&s, "CLOSE_WAIT", "LAST_ACK"), n + m);
    assert_eq!(transition(&s, "LAST_ACK", "CLOSE"), n + m);
    assert_eq!(transition(&s, "ESTABLISHED", "CLOSE"), 2 * r);

    // Connects and accepts.
    assert_eq!(s.connects.attempts, conns + k);
    assert_eq!(s.connects.established, conns);
    assert_eq!(s.connects.failed, k);
    assert_eq!(s.connects.refused, k);
    assert_eq!(s.accepts.established, conns);
    assert_eq!(s.active_handshake.all.count, conns);
    assert_eq!(s.passive_handshake.all.count, conns);
    assert_eq!(s.active_handshake.retransmitted.count, 0);
    let p50 = s.active_handshake.all.p50_us.unwrap();
    assert!(
        p50 > 0.0 && p50 < 100_000.0,
        "loopback handshake p50 {p50} µs"
    );

    // Closes, resets and TIME_WAIT per side.
    assert_eq!(s.closes.closed_here_first, n + m);
    assert_eq!(s.closes.closed_by_peer_first, n + m);
    assert_eq!(s.closes.passive_close_completed, n + m);
    assert_eq!(s.closes.resets_sent, r);
    assert_eq!(s.closes.resets_received, r);
    assert_eq!(s.time_wait.entered, n + m);
    assert_eq!(s.time_wait.direct + s.time_wait.via_fin_wait2, n + m);
    assert_eq!(s.time_wait.entered_by_side.active_opened, n);
    assert_eq!(s.time_wait.entered_by_side.passive_opened, m);

    // Population: sock_diag, checked against `ss`.
    assert_eq!(s.time_wait.now.time_wait, n + m);
    assert_eq!(ss_time_wait(&net.cidr()), n + m);
    assert_eq!(s.time_wait.now.close_wait, 0);

    // Breakdown: the client's TIME_WAITs are at server:port, the server's
    // belong to its listening port.
    let server = net.server();
    let port_row = s
        .top_local_ports
        .iter()
        .find(|p| p.local_port.is_some())
        .unwrap();
    assert_eq!(port_row.stats.established, conns);
    assert_eq!(port_row.stats.time_wait_entries, m);
    let out_peer = s
        .top_peers
        .iter()
        .find(|p| {
            p.direction == "active"
                && p.peer.starts_with(&server.to_string())
                && p.stats.established > 0
        })
        .unwrap();
    assert_eq!(out_peer.stats.established, conns);
    assert_eq!(out_peer.stats.time_wait_entries, n);
    assert_eq!(out_peer.stats.resets, r);
    let me = s
        .top_processes
        .iter()
        .find(|p| p.pid == Some(std::process::id()))
        .expect("this test process owns the sockets");
    assert_eq!(me.stats.established, 2 * conns, "both ends are ours");
    assert_eq!(me.stats.connect_failed, k);

    // Nothing lost.
    assert_eq!(s.tracer.events_dropped, 0);
    assert_eq!(s.tracer.inflight_missing, 0);
    assert_eq!(s.tracer.flow_table_full, 0);
}

#[test]
fn ipv6_connections_are_traced() {
    let loopback6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    // Pick a free port, then trace IPv6 on that port only.
    let listener = std::net::TcpListener::bind("[::1]:0").expect("IPv6 loopback");
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let t = Tracer::start(
        FilterSpec {
            family: Some(Family::Ipv6),
            port: Some(port),
            ..Default::default()
        },
        false,
        4096,
    )
    .expect("attach");
    let w = Workload {
        client_closes: 12,
        ..Default::default()
    };
    run_on_port(&w, loopback6, port);
    let s = settle(&t, |s| s.time_wait.now.time_wait == 12);
    assert_eq!(s.connects.established, 12);
    assert_eq!(s.accepts.established, 12);
    assert_eq!(s.time_wait.entered, 12);
    assert_eq!(s.time_wait.entered_by_side.active_opened, 12);
    assert_eq!(s.time_wait.now.time_wait, 12);
    assert_eq!(s.closes.passive_close_completed, 12);
    assert!(s
        .top_peers
        .iter()
        .any(|p| p.peer == format!("[::1]:{port}")));
}

/// Client closes on a fixed port (the IPv6 test filters on it).
fn run_on_port(w: &Workload, ip: IpAddr, port: u16) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind((ip, port)).expect("re-listen");
    for _ in 0..w.client_closes {
        let mut c = std::net::TcpStream::connect((ip, port)).unwrap();
        let (mut a, _) = listener.accept().unwrap();
        c.write_all(b"x").unwrap();
        drop(c);
        let mut buf = [0u8; 8];
        while a.read(&mut buf).unwrap() > 0 {}
    }
}

#[test]
fn events_carry_the_owner_even_in_softirq() {
    let net = Subnet::unique(2);
    let mut t = Tracer::start(subnet_filter(&net), true, 1 << 20).expect("attach");
    let mut rings = t.probe.take_events();
    let w = Workload {
        client_closes: 3,
        server_closes: 2,
        ..Default::default()
    };
    let port = w.run(net.client(), net.server());
    settle(&t, |s| s.time_wait.now.time_wait == 5);
    let mut events = Vec::new();
    for item in records(&mut rings) {
        events.push(event::decode(&item).expect("decodes"));
    }
    let me = std::process::id();
    let count = |o: u8, n: u8| {
        events
            .iter()
            .filter(|e| e.oldstate == o && e.newstate == n)
            .count()
    };
    assert_eq!(count(state::CLOSE, state::SYN_SENT), 5);
    assert_eq!(count(state::SYN_SENT, state::ESTABLISHED), 5);
    assert_eq!(count(state::SYN_RECV, state::ESTABLISHED), 5);
    assert_eq!(count(state::FIN_WAIT2, state::CLOSE), 5);
    assert_eq!(count(state::LAST_ACK, state::CLOSE), 5);
    for e in &events {
        assert_eq!(
            e.flags & flag::OWNER_KNOWN,
            flag::OWNER_KNOWN,
            "owner known for {e:?}"
        );
        assert_eq!(
            e.tgid, me,
            "owner is this process, not the softirq's victim: {e:?}"
        );
        assert!(e.sport != 0 || e.oldstate == state::CLOSE, "{e:?}");
    }
    // Passive-side transitions (run in softirq) carry the listener's owner.
    let passive: Vec<_> = events.iter().filter(|e| e.sport == port).collect();
    assert_eq!(
        passive.len(),
        5 * 2 + 3 * 3 + 2 * 3,
        "accepted sockets' transitions"
    );
    // Handshakes are timed; the close classification is set.
    for e in events.iter().filter(|e| e.newstate == state::ESTABLISHED) {
        assert!(e.handshake_ns > 0, "{e:?}");
    }
    for e in events.iter().filter(|e| e.oldstate == state::FIN_WAIT2) {
        assert!(
            e.close_kind == tracer_common::close::TIME_WAIT
                || e.close_kind == tracer_common::close::FIN_WAIT2_PARKED,
            "{e:?}"
        );
    }
    // Time in the previous state is known for every non-birth transition.
    for e in events
        .iter()
        .filter(|e| e.oldstate != state::CLOSE && e.oldstate != state::LISTEN)
    {
        assert_ne!(e.flags & flag::DURATION_KNOWN, 0, "{e:?}");
    }
}

/// `tracer events` attaches without the flow table (nothing it prints
/// reads it): the kernel skips every flow update, and everything else
/// stays exact.
#[test]
fn events_without_the_flow_table_count_exactly() {
    let net = Subnet::unique(6);
    let mut t =
        Tracer::start_with_btf(subnet_filter(&net), true, 1 << 20, false, None).expect("attach");
    let mut rings = t.probe.take_events();
    let w = Workload {
        client_closes: 4,
        server_closes: 3,
        ..Default::default()
    };
    w.run(net.client(), net.server());
    let s = settle(&t, |s| s.time_wait.now.time_wait == 7);
    let mut events = 0;
    for item in records(&mut rings) {
        event::decode(&item).expect("decodes");
        events += 1;
    }
    assert_eq!(events, 7 * 10, "ten transitions per connection");
    assert_eq!(transition(&s, "SYN_SENT", "ESTABLISHED"), 7);
    assert_eq!(transition(&s, "LAST_ACK", "CLOSE"), 7);
    assert_eq!(s.active_handshake.all.count, 7);
    assert_eq!(s.passive_handshake.all.count, 7);
    assert_eq!(s.time_wait.entered, 7);
    assert_eq!(s.time_wait.entered_by_side.active_opened, 4);
    assert!(s.top_peers.is_empty(), "no flow rows: {:?}", s.top_peers);
    assert!(s.top_local_ports.is_empty(), "{:?}", s.top_local_ports);
    assert_eq!(s.tracer.flow_table_full, 0);
    assert_eq!(s.tracer.events_dropped, 0);
}

#[test]
fn ring_overflow_is_counted_and_aggregates_stay_exact() {
    let net = Subnet::unique(3);
    // 4 KiB holds ~30 events; nobody reads it during the run.
    let mut t = Tracer::start(subnet_filter(&net), true, 4096).expect("attach");
    let mut rings = t.probe.take_events();
    let w = Workload {
        client_closes: 60,
        ..Default::default()
    };
    w.run(net.client(), net.server());
    let s = settle(&t, |s| s.time_wait.now.time_wait == 60);
    let mut received = 0u64;
    received += records(&mut rings).len() as u64;
    assert!(s.tracer.events_dropped > 0, "a 4 KiB ring must overflow");
    assert_eq!(
        received + s.tracer.events_dropped,
        s.tracer.transitions_counted,
        "every transition is either delivered or counted as dropped"
    );
    assert_eq!(s.connects.established, 60);
    assert_eq!(s.time_wait.entered, 60);
    assert_eq!(s.active_handshake.all.count, 60);
}

#[test]
fn comm_filter_is_applied_in_the_kernel() {
    let net = Subnet::unique(4);
    let t = Tracer::start(
        FilterSpec {
            comm: Some("tw-alpha".into()),
            addr: Some(net.cidr().parse().unwrap()),
            ..Default::default()
        },
        false,
        4096,
    )
    .expect("attach");
    // The owner's comm is the thread's name at connect()/listen() time.
    let run = |name: &str, n: u64| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                Workload {
                    client_closes: n,
                    ..Default::default()
                }
                .run(net.client(), net.server())
            })
            .unwrap()
            .join()
            .unwrap()
    };
    run("tw-alpha", 4);
    run("tw-beta", 7);
    let s = settle(&t, |s| s.time_wait.entered == 4);
    assert_eq!(s.connects.established, 4);
    assert_eq!(s.accepts.established, 4, "the listener was alpha's too");
    assert_eq!(s.time_wait.entered, 4);
    assert!(s.tracer.filtered_out > 0);
    assert_eq!(s.top_processes[0].comm, "tw-alpha");
}

#[test]
fn nothing_stays_attached_after_the_tracer_is_dropped() {
    let before = tracer_program_ids();
    let t = Tracer::start(FilterSpec::default(), false, 4096).expect("attach");
    let ours: BTreeSet<u32> = tracer_program_ids().difference(&before).copied().collect();
    assert_eq!(ours.len(), 1, "one program loaded");
    drop(t);
    assert!(
        wait_until_unloaded(&ours).is_empty(),
        "program unloaded with the tracer"
    );
}

#[test]
fn unprivileged_run_fails_clearly_and_attaches_nothing() {
    let before = tracer_program_ids();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(tracer_bin())
        .args(["summary", "--duration", "1s"])
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("CAP_BPF") && stderr.contains("CAP_PERFMON"),
        "{stderr}"
    );
    assert!(
        tracer_program_ids().difference(&before).next().is_none(),
        "nothing loaded"
    );
}

#[test]
fn bad_flags_are_rejected() {
    let before = tracer_program_ids();
    let out = Command::new(tracer_bin())
        .arg("--frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected argument"));
    let out = Command::new(tracer_bin())
        .args(["summary", "--comm", "a-command-name-too-long"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("15-byte"));
    assert!(
        tracer_program_ids().difference(&before).next().is_none(),
        "nothing loaded"
    );
}

#[test]
fn the_binary_reports_the_workload_as_json() {
    let net = Subnet::unique(5);
    let mut child = Command::new(tracer_bin())
        .args([
            "summary",
            "--json",
            "--duration",
            "4s",
            "--addr",
            &net.cidr(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Attached once it says it is aggregating.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.starts_with("Aggregating"), "{line}");
    let w = Workload {
        client_closes: 8,
        server_closes: 4,
        refused: 3,
        resets: 2,
    };
    w.run(net.client(), net.server());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["schema"], "tcp-state-tracer/summary/v1");
    assert_eq!(v["connects"]["attempts"], 17);
    assert_eq!(v["connects"]["established"], 14);
    assert_eq!(v["connects"]["refused"], 3);
    assert_eq!(v["accepts"]["established"], 14);
    assert_eq!(v["closes"]["resets_sent"], 2);
    assert_eq!(v["closes"]["resets_received"], 2);
    assert_eq!(v["time_wait"]["entered"], 12);
    assert_eq!(v["time_wait"]["entered_by_side"]["active_opened"], 8);
    assert_eq!(v["time_wait"]["entered_by_side"]["passive_opened"], 4);
    assert_eq!(v["time_wait"]["now"]["time_wait"], 12);
    assert_eq!(v["active_handshake"]["all"]["count"], 14);
    assert_eq!(v["tracer"]["events_dropped"], 0);
}

/// Every record the per-CPU rings hold now, ring after ring.
fn records(rings: &mut [aya::maps::RingBuf<aya::maps::MapData>]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for r in rings {
        while let Some(item) = r.next() {
            out.push(item.to_vec());
        }
    }
    out
}
