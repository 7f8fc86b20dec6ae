//! Top peers on a busy host (root): in a network namespace this test creates
//! (`heavy-<pid>-*`), 17 000 connections to distinct loopback peers
//! (127.1.x.y:9300, each from its own address), then 500 to one new peer
//! (127.2.0.9:9300). The kernel flow table (16 384 rows) must never fill
//! for good, the new peer must rank first with its exact count, and for
//! every figure the rows plus `other` must equal the host-wide totals. And
//! the exporter's bounded series re-rank as a peer turns hot.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use integration_tests::{connect_from, scrape, start_exporter, wait_for, KillOnDrop, TestNetns};
use tracer::{
    filter::FilterSpec,
    host::netns,
    model::{add_flow_stats, Snapshot},
    report::{peer_groups, Summary},
    Tracer,
};
use tracer_common::{close, counter, hist_kind, state, FlowStats};

const PORT: u16 = 9300;
const HOT: Ipv4Addr = Ipv4Addr::new(127, 2, 0, 9);

type Netns = TestNetns;

/// The i-th distinct peer: 127.1.x.y, never .0 or .255.
fn distinct(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8)
}

/// Inside the namespace: one connection per address in `peers`, each from
/// that same address to its port 9300; the client sends one byte and its FIN
/// first (TIME_WAIT here), the server reads to EOF and closes (LAST_ACK).
/// The client waits for the server's FIN before the next connect, so it
/// never runs ahead of accept(): the backlog cannot overflow (a dropped SYN
/// costs a 1 s retransmit) however the CPUs are shared.
fn connections(ns: &Netns, peers: &[Ipv4Addr]) {
    let peers = peers.to_vec();
    netns::within(&ns.namespace(), move || {
        let l = TcpListener::bind(("0.0.0.0", PORT)).expect("listen");
        let n = peers.len();
        let server = std::thread::spawn(move || {
            for _ in 0..n {
                let (mut s, _) = l.accept().expect("accept");
                let mut buf = [0u8; 8];
                while s.read(&mut buf).map(|r| r > 0).unwrap_or(false) {}
            }
        });
        for p in peers {
            let ip = IpAddr::V4(p);
            let mut c = connect_from(ip, SocketAddr::new(ip, PORT)).expect("connect");
            c.write_all(b"x").unwrap();
            c.shutdown(std::net::Shutdown::Write).unwrap();
            let mut buf = [0u8; 8];
            while c.read(&mut buf).map(|r| r > 0).unwrap_or(false) {}
        }
        server.join().unwrap();
    })
    .expect("entering the namespace");
}

/// Every flow figure summed over the rows, plus `other`.
fn rows_plus_other(snap: &Snapshot) -> FlowStats {
    let mut sum = snap.other_flow;
    for (_, f) in &snap.flows {
        add_flow_stats(&mut sum, f);
    }
    sum
}

/// The host-wide totals of the flow figures, from the kernel's counters
/// and histograms (independent of the flow table).
fn totals(s: &Snapshot) -> FlowStats {
    let h = |k: u32| &s.hists[k as usize];
    let handshakes = [
        hist_kind::ACTIVE,
        hist_kind::ACTIVE_RETRANS,
        hist_kind::PASSIVE,
        hist_kind::PASSIVE_RETRANS,
    ];
    FlowStats {
        established: s.counter(counter::ACTIVE_ESTABLISHED)
            + s.counter(counter::PASSIVE_ESTABLISHED),
        connect_failed: s.transition(state::SYN_SENT, state::CLOSE),
        connect_no_local_port: s.closes(close::CONNECT_NO_LOCAL_PORT),
        time_wait: s.closes(close::TIME_WAIT) + s.closes(close::FIN_WAIT2_PARKED),
        fin_wait2_parked: s.closes(close::FIN_WAIT2_PARKED),
        resets_sent: s.closes(close::RESET_SENT),
        resets_received: s.closes(close::RESET_RECEIVED),
        close_local_first: s.counter(counter::CLOSE_LOCAL_FIRST),
        close_peer_first: s.counter(counter::CLOSE_PEER_FIRST),
        close_simultaneous: s.counter(counter::CLOSE_SIMULTANEOUS),
        handshake_count: handshakes.iter().map(|k| h(*k).count).sum(),
        handshake_sum_ns: handshakes.iter().map(|k| h(*k).sum_ns).sum(),
        handshake_max_ns: handshakes.iter().map(|k| h(*k).max_ns).max().unwrap(),
        handshake_retrans: s.counter(counter::ACTIVE_HANDSHAKE_RETRANS)
            + s.counter(counter::PASSIVE_HANDSHAKE_RETRANS),
        closed: h(hist_kind::LIFETIME).count,
        lifetime_sum_ns: h(hist_kind::LIFETIME).sum_ns,
        lifetime_max_ns: h(hist_kind::LIFETIME).max_ns,
        ..FlowStats::default()
    }
}

/// The figures `totals` knows, of `f` (the others zeroed).
fn comparable(f: &FlowStats) -> FlowStats {
    FlowStats {
        retrans_total: 0,
        bytes_received: 0,
        bytes_acked: 0,
        cgroup_id: 0,
        comm: [0; 16],
        ..*f
    }
}

fn settled(t: &Tracer, n: u64) -> (Snapshot, Summary) {
    let done = |s: &Snapshot| {
        s.counter(counter::ACTIVE_ESTABLISHED) == n
            && s.counter(counter::PASSIVE_ESTABLISHED) == n
            && s.closes(close::TIME_WAIT) + s.closes(close::FIN_WAIT2_PARKED) == n
            && s.closes(close::LAST_ACK) == n
    };
    let snap = wait_for(Duration::from_secs(10), || {
        let s = t.snapshot().expect("snapshot");
        (done(&s), s)
    });
    assert!(
        done(&snap),
        "the workload's {n} connections never all closed"
    );
    let summary = t.summary_of(&snap, &Default::default()).expect("summary");
    (snap, summary)
}

#[test]
fn a_heavy_peer_after_17000_distinct_ones_ranks_first_with_its_exact_count() {
    let ns = Netns::create("heavy", "top");
    let filter = FilterSpec {
        netns: Some(ns.namespace().inode),
        ..Default::default()
    };
    let t = Tracer::start(filter, false, 4096).expect("attach");
    let started = Instant::now();
    let cold: Vec<Ipv4Addr> = (0..17_000).map(distinct).collect();
    connections(&ns, &cold);
    connections(&ns, &[HOT; 500]);
    eprintln!("17 500 connections in {:?}", started.elapsed());
    let (snap, s) = settled(&t, 17_500);
    assert_eq!(
        snap.counter(counter::ACTIVE_HANDSHAKE_RETRANS),
        0,
        "no SYN was dropped: the workload stayed in step"
    );

    assert_eq!(s.tracer.flow_table_full, 0, "the kernel table never filled");
    let top: Vec<(&str, u64, u64, u64)> = s
        .top_peers
        .iter()
        .take(3)
        .map(|p| {
            (
                p.peer.as_str(),
                p.stats.established,
                p.stats.time_wait_entries,
                p.max_missing,
            )
        })
        .collect();
    eprintln!("top peers: {top:?}");
    eprintln!("breakdown: {:?}", s.flow_breakdown);
    let first = &s.top_peers[0];
    assert_eq!(first.peer, format!("{HOT}:{PORT}"), "{top:?}");
    assert_eq!(first.stats.established, 500);
    assert_eq!(first.stats.time_wait_entries, 500);
    assert_eq!(first.stats.bytes_sent_acked, 500);
    let second = &s.top_peers[1];
    assert_eq!(second.peer, format!("{HOT} -> :{PORT}"), "{top:?}");
    assert_eq!(second.stats.established, 500);
    assert_eq!(second.stats.bytes_received, 500);

    // 34 002 (peer, side) rows do not fit in 16 384: approximate, and says so.
    let b = &s.flow_breakdown;
    assert!(!b.exact && b.bounds.rows_evicted > 0, "{b:?}");
    assert_eq!(b.bounds.rows, b.bounds.rows_capacity);
    assert!(b.bounds.max_error <= b.bounds.total_volume / b.bounds.rows_capacity);
    assert!(first.max_missing <= b.bounds.max_error);

    // Rows + other = totals, every figure (bytes: one per connection each way).
    let sum = rows_plus_other(&snap);
    assert_eq!(comparable(&sum), totals(&snap));
    assert_eq!((sum.bytes_acked, sum.bytes_received), (17_500, 17_500));
    assert_eq!(sum.established, 35_000);
    // And per peer as the report groups them.
    let mut by_peer = b.other.established;
    for (_, _, g) in peer_groups(&snap.flows, usize::MAX) {
        by_peer += g.established;
    }
    assert_eq!(by_peer, s.connects.established + s.accepts.established);
}

fn exporter(ns: &Netns, top_peers: u16) -> (KillOnDrop, u16) {
    start_exporter(&["--netns", &ns.name, "--top-peers", &top_peers.to_string()])
}

/// `tcp_tracer_peer_connections_total` by peer, and the established total.
fn peer_series(text: &str) -> (Vec<(String, u64)>, u64) {
    let mut peers = Vec::new();
    let mut total = 0;
    for line in text.lines() {
        let value = || line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64;
        if let Some(rest) = line.strip_prefix("tcp_tracer_peer_connections_total{peer=\"") {
            let peer = rest.split('"').next().unwrap().to_string();
            peers.push((peer, value()));
        } else if line.starts_with("tcp_tracer_connections_established_total{") {
            total += value();
        }
    }
    (peers, total)
}

#[test]
fn the_exporter_gives_a_peer_that_turns_hot_its_own_series() {
    let ns = Netns::create("heavy", "prom");
    let top = 3;
    let (_serve, port) = exporter(&ns, top);
    let mut last: Vec<(String, u64)> = Vec::new();
    // Scrape until the exporter has all `want` established connections
    // (both sides); every scrape must keep the bounds.
    let mut check = |what: &str, want: u64| {
        let peers = wait_for(Duration::from_secs(10), || {
            let (peers, total) = peer_series(&scrape(port).expect("scrape"));
            assert!(peers.len() <= top as usize + 1, "{peers:?}");
            assert_eq!(
                peers.iter().map(|(_, v)| v).sum::<u64>(),
                total,
                "{peers:?}"
            );
            for (p, v) in &peers {
                if let Some((_, before)) = last.iter().find(|(q, _)| q == p) {
                    assert!(v >= before, "{p} went back: {before} -> {v}");
                }
            }
            last = peers.clone();
            (total == want, (peers, total))
        });
        eprintln!(
            "after {what}: {:?} (established total {})",
            peers.0, peers.1
        );
        assert_eq!(peers.1, want, "the exporter never saw all {want}");
        peers.0
    };
    let warm: Vec<Ipv4Addr> = (1..=3)
        .flat_map(|i| std::iter::repeat_n(Ipv4Addr::new(127, 3, 0, i), 20))
        .collect();
    connections(&ns, &warm);
    let cold: Vec<Ipv4Addr> = (0..300).map(distinct).collect();
    connections(&ns, &cold);
    let peers = check("3 warm peers x 20, 300 cold ones", 2 * 360);
    assert!(peers.iter().all(|(p, _)| !p.starts_with("127.2.")));

    connections(&ns, &[HOT; 100]);
    let peers = check("100 to the hot peer", 2 * 460);
    let hot = |peers: &[(String, u64)]| {
        peers
            .iter()
            .find(|(p, _)| *p == format!("{HOT}:{PORT}"))
            .map(|(_, v)| *v)
    };
    assert_eq!(
        hot(&peers),
        Some(100),
        "a series from the next scrape on: {peers:?}"
    );

    connections(&ns, &[HOT; 100]);
    let peers = check("100 more", 2 * 560);
    assert_eq!(hot(&peers), Some(200), "{peers:?}");

    // Quiet now: the series stay (no one needs their slots), nothing moves.
    let again = check("a quiet scrape", 2 * 560);
    assert_eq!(again, peers);
}
