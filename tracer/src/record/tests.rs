use std::collections::BTreeSet;

use proptest::prelude::*;
use tracer_common::{close, dir, flag, state, Event};

use super::*;
use crate::{
    event::{epoch, Clock},
    host::diag::DiagSocket,
    model::Replay,
};

fn inputs(snap: &Snapshot) -> ReportInputs {
    let sock = |st, sport, dport| DiagSocket::test(st, "10.0.0.9", sport, "10.0.0.1", dport);
    let socks = [
        sock(state::TIME_WAIT, 40000, 80),
        sock(state::TIME_WAIT, 40001, 80),
        sock(state::ESTABLISHED, 40002, 80),
    ];
    ReportInputs {
        duration_s: 12.5,
        filter: "remote 10.0.0.0/8".into(),
        top: 10,
        sockets: SocketTally::of(snap, crate::DEFAULT_PORT_RANGE, &socks),
        sysctls: Sysctls {
            tcp_tw_reuse: Some(2),
            tcp_max_tw_buckets: Some(262144),
            ip_local_port_range: crate::DEFAULT_PORT_RANGE,
            tcp_fin_timeout: Some(60),
        },
        pressure_warn_pct: 50.0,
        close_wait_leaks: vec![CloseWaitLeak {
            netns: 0,
            local: "10.0.0.9:80".into(),
            peer: "10.0.0.1:5000".into(),
            pid: Some(7),
            comm: Some("srv".into()),
            age_s: 31.0,
            age_exact: true,
            cgroup_id: 3,
            cgroup: Some("/a".into()),
        }],
        close_wait_threshold_s: 30.0,
        now_sec: 100,
        cgroup_paths: [(3u64, "/a".to_string())].into_iter().collect(),
        namespaces: Vec::new(),
        coverage: Default::default(),
        listen: Default::default(),
    }
}

fn replayed() -> Snapshot {
    let mut r = Replay::default();
    for i in 0..5 {
        r.active_open(i, 10, [10, 0, 0, 1], 80, 1_000_000 + i * 1000, 0);
        r.active_close_to_time_wait(i, i % 2 == 0);
    }
    r.active_open(9, 10, [10, 0, 0, 1], 80, 1_020_000_000, 1);
    r.passive_open(20, 11, [10, 0, 0, 2], 8080, 25_000, 0);
    r.passive_close(20);
    r.refused(30, 10, [10, 0, 0, 1], 81);
    let mut s = r.snapshot();
    s.time_wait_by_second = vec![(95, 2), (99, 1)];
    s
}

#[test]
fn a_snapshot_survives_its_record() {
    let snap = replayed();
    let inp = inputs(&snap);
    let rec = RecSnapshot::new(&snap, &inp, "t".into(), 5);
    let json = serde_json::to_string(&Record::Snapshot(Box::new(rec.clone()))).unwrap();
    let Record::Snapshot(back) = serde_json::from_str(&json).unwrap() else {
        panic!("snapshot")
    };
    assert_eq!(*back, rec);
    let again = back.snapshot();
    assert_eq!(again.counters, snap.counters);
    assert_eq!(again.transitions, snap.transitions);
    assert_eq!(again.hists, snap.hists);
    assert_eq!(again.flows, snap.flows);
    assert_eq!(inp.build(&snap), back.inputs(10).build(&again));
}

#[test]
fn every_counter_and_histogram_has_one_name() {
    let mut names = BTreeSet::new();
    for i in 0..counter::COUNT {
        match counter_name(i) {
            Some(n) => assert!(names.insert(n.clone()), "{n} twice"),
            None => assert!(UNUSED_COUNTERS.contains(&i), "counter {i} has no name"),
        }
    }
    for i in 0..hist_kind::COUNT {
        assert!(hist_name(i).is_some(), "histogram {i} has no name");
    }
}

fn event(i: u64) -> Event {
    // Ten transitions per connection, as a loopback churn makes them.
    const PATH: [(u8, u8, u8); 10] = [
        (state::CLOSE, state::SYN_SENT, close::NONE),
        (state::SYN_SENT, state::ESTABLISHED, close::NONE),
        (state::LISTEN, state::SYN_RECV, close::NONE),
        (state::SYN_RECV, state::ESTABLISHED, close::NONE),
        (state::ESTABLISHED, state::FIN_WAIT1, close::NONE),
        (state::ESTABLISHED, state::CLOSE_WAIT, close::NONE),
        (state::FIN_WAIT1, state::FIN_WAIT2, close::NONE),
        (state::CLOSE_WAIT, state::LAST_ACK, close::NONE),
        (state::FIN_WAIT2, state::CLOSE, close::FIN_WAIT2_PARKED),
        (state::LAST_ACK, state::CLOSE, close::LAST_ACK),
    ];
    let (old, new, kind) = PATH[(i % 10) as usize];
    let conn = i / 10;
    let mut e = Event {
        ts_ns: 1_000_000_000 + i * 7_919,
        cookie: 4096 + conn * 2 + (i % 2),
        in_state_ns: 20_000 + (i * 37) % 5000,
        handshake_ns: if new == state::ESTABLISHED {
            40_000 + (i * 13) % 9000
        } else {
            0
        },
        lifetime_ns: if new == state::CLOSE {
            300_000 + (i * 101) % 50_000
        } else {
            0
        },
        bytes_received: if new == state::CLOSE { 100 } else { 0 },
        bytes_acked: if new == state::CLOSE { 1 } else { 0 },
        cgroup_id: 1,
        saddr: [0; 16],
        daddr: [0; 16],
        tgid: 4242,
        retrans: 0,
        comm: *b"loadgen\0\0\0\0\0\0\0\0\0",
        sport: 32768 + (conn % 28000) as u16,
        dport: 9000 + (conn % 16) as u16,
        family: 2,
        sk_err: 0,
        oldstate: old,
        newstate: new,
        close_kind: kind,
        dir: if i.is_multiple_of(2) {
            dir::ACTIVE
        } else {
            dir::PASSIVE
        },
        flags: flag::OWNER_KNOWN | flag::DURATION_KNOWN | flag::LIFETIME_KNOWN,
        kind: 0,
        _pad: [0; 6],
        netns: 1,
    };
    e.saddr[..4].copy_from_slice(&[127, 78, (conn % 4) as u8, 2]);
    e.daddr[..4].copy_from_slice(&[127, 78, (conn % 4) as u8, 1]);
    e
}

fn header() -> Header {
    Header {
        format: FORMAT.into(),
        version: VERSION,
        tracer_version: "0.1.0".into(),
        host: "h".into(),
        kernel: "6.18".into(),
        filter: "all TCP".into(),
        start_time: "2026-12-02T00:00:00.000000Z".into(),
        ..Default::default()
    }
}

/// A recording of `n` events and one snapshot, in memory.
fn recording(n: u64) -> (Vec<u8>, Vec<RecEvent>) {
    let clock = Clock::fixed(0, epoch(1_800_000_000));
    let mut w = Writer::new(Vec::new(), &header()).unwrap();
    let mut evs = Vec::new();
    for i in 0..n {
        let e = RecEvent::from_transition(&Transition::from_event(&event(i), &clock));
        w.push(&Record::Event(e.clone())).unwrap();
        evs.push(e);
    }
    let snap = replayed();
    let rec = RecSnapshot::new(&snap, &inputs(&snap), "t".into(), 1);
    w.push(&Record::Snapshot(Box::new(rec))).unwrap();
    let end = End {
        reason: "duration".into(),
        events: n,
        ..Default::default()
    };
    (w.finish(&end).unwrap(), evs)
}

#[test]
fn a_recording_reads_back_whole() {
    // Enough events for several blocks.
    let (bytes, evs) = recording(5000);
    let mut got = Vec::new();
    let c = read(&bytes[..], |e| {
        got.push(e.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!(got, evs);
    assert_eq!(c.header, header());
    assert_eq!((c.events, c.snapshots), (5000, 1));
    assert_eq!(c.end.reason, "duration");
    let last = c.last_snapshot.unwrap();
    assert_eq!(last.snapshot().flows, replayed().flows);
    // Printing a replayed event gives the live line.
    let clock = Clock::fixed(0, epoch(1_800_000_000));
    let live = Transition::from_event(&event(8), &clock);
    assert_eq!(got[8].to_transition(), live);
    assert_eq!(got[8].close.as_deref(), Some("fin_wait2_parked"));
}

#[test]
fn damage_is_an_error_never_a_panic() {
    let (bytes, _) = recording(300);
    for cut in (0..bytes.len()).step_by(7) {
        let e = read(&bytes[..cut], |_| Ok(())).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("truncated") || msg.contains("not a tracer recording"),
            "cut at {cut}: {msg}"
        );
    }
    let mut bad = bytes.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    let msg = read(&bad[..], |_| Ok(())).unwrap_err().to_string();
    assert!(msg.contains("corrupt") && msg.contains("checksum"), "{msg}");
    let mut newer = bytes.clone();
    newer[8] = 9;
    let msg = read(&newer[..], |_| Ok(())).unwrap_err().to_string();
    assert!(msg.contains("version 9"), "{msg}");
    assert!(matches!(
        read(&b"hello world, no recording"[..], |_| Ok(())),
        Err(RecordError::BadMagic)
    ));
}

/// One block holding `raw`, with a valid checksum.
fn block(raw: &[u8]) -> Vec<u8> {
    let z = miniz_oxide::deflate::compress_to_vec(raw, 6);
    let mut b = Vec::new();
    b.extend_from_slice(&(z.len() as u32).to_le_bytes());
    b.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    b.extend_from_slice(&crc32fast::hash(&z).to_le_bytes());
    b.extend_from_slice(&z);
    b
}

fn file_of(raw: &[u8]) -> Vec<u8> {
    let mut f = MAGIC.to_vec();
    f.extend_from_slice(&VERSION.to_le_bytes());
    f.extend_from_slice(&block(raw));
    f
}

#[test]
fn unknown_records_and_fields_are_skipped_missing_fields_default() {
    let raw = concat!(
        r#"{"type":"header","format":"tcp-state-tracer/recording","version":1,"future":1}"#,
        "\n",
        r#"{"type":"hologram","x":1}"#,
        "\n",
        r#"{"type":"event","old_state":"SYN_SENT","new_state":"ESTABLISHED","netns":4026531840}"#,
        "\n",
        r#"{"type":"end"}"#,
        "\n"
    );
    let mut evs = Vec::new();
    let c = read(&file_of(raw.as_bytes())[..], |e| {
        evs.push(e.clone());
        Ok(())
    })
    .unwrap();
    assert_eq!(c.events, 1);
    assert_eq!(evs[0].to_transition().new_state, "ESTABLISHED");
    assert_eq!(evs[0].pid, None);
    assert!(c.last_snapshot.is_none());
}

#[test]
fn structure_errors_are_named() {
    let cases: [(&str, &str); 4] = [
        ("{\"type\":\"event\"}\n", "first record is not the header"),
        ("{\"type\":\"header\"}\n", "no end record"),
        (
            "{\"type\":\"header\"}\n{\"type\":\"end\"}\n{\"type\":\"event\"}\n",
            "after the end",
        ),
        ("{\"type\":\"header\"}\nnot json\n", "record 2 of the block"),
    ];
    for (raw, want) in cases {
        let msg = read(&file_of(raw.as_bytes())[..], |_| Ok(()))
            .unwrap_err()
            .to_string();
        assert!(msg.contains(want), "{raw:?}: {msg}");
    }
}

/// Size of the compact format on a churn-like stream (reported in the README).
#[test]
fn size_per_million_transitions() {
    let n = 100_000;
    let (bytes, _) = recording(n);
    let per_million = bytes.len() as f64 * 1e6 / n as f64;
    eprintln!(
        "recording: {} bytes for {n} transitions = {:.1} MB per million",
        bytes.len(),
        per_million / 1e6
    );
    assert!(per_million < 60e6, "{per_million} bytes per million");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 3000,
        max_shrink_iters: 200,
        ..ProptestConfig::default()
    })]

    /// Arbitrary bytes, with and without a valid magic and version.
    #[test]
    fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..600), prefix in 0usize..3) {
        let mut f = match prefix {
            0 => Vec::new(),
            1 => MAGIC.to_vec(),
            _ => { let mut v = MAGIC.to_vec(); v.extend_from_slice(&VERSION.to_le_bytes()); v }
        };
        f.extend_from_slice(&tail);
        let _ = read(&f[..], |_| Ok(()));
    }

    /// Blocks that pass the checksum but hold arbitrary records.
    #[test]
    fn arbitrary_block_contents_never_panic(raw in proptest::collection::vec(any::<u8>(), 1..400)) {
        let _ = read(&file_of(&raw)[..], |_| Ok(()));
    }

    /// JSON-ish lines: valid types with fields of the wrong kinds.
    #[test]
    fn mangled_records_never_panic(
        kind in prop::sample::select(vec!["header", "event", "snapshot", "end", "x"]),
        body in "[{}\\[\\]\":,0-9a-z_ .-]{0,80}",
    ) {
        let raw = format!("{{\"type\":\"header\"}}\n{{\"type\":\"{kind}\",{body}\n{{\"type\":\"end\"}}\n");
        let _ = read(&file_of(raw.as_bytes())[..], |_| Ok(()));
    }

    /// A valid recording with one byte changed or cut short.
    #[test]
    fn damaged_recordings_never_panic(pos in any::<prop::sample::Index>(), xor in 1u8..=255, cut in any::<bool>()) {
        static FILE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let base = FILE.get_or_init(|| recording(50).0);
        let mut f = base.clone();
        let i = pos.index(f.len());
        if cut { f.truncate(i) } else { f[i] ^= xor }
        prop_assert!(read(&f[..], |_| Ok(())).is_err());
    }
}

/// A flow record's bytes are the format's (version 1): the key's fields,
/// then every figure under its name, comm as text; a record missing figures
/// reads them as 0.
#[test]
fn a_flow_record_is_written_as_the_format_has_it() {
    let mut f = FlowStats::default();
    let figures = [
        &mut f.established,
        &mut f.connect_failed,
        &mut f.connect_no_local_port,
        &mut f.time_wait,
        &mut f.fin_wait2_parked,
        &mut f.resets_sent,
        &mut f.resets_received,
        &mut f.close_local_first,
        &mut f.close_peer_first,
        &mut f.close_simultaneous,
        &mut f.handshake_count,
        &mut f.handshake_sum_ns,
        &mut f.handshake_max_ns,
        &mut f.handshake_retrans,
        &mut f.retrans_total,
        &mut f.closed,
        &mut f.lifetime_sum_ns,
        &mut f.lifetime_max_ns,
        &mut f.bytes_received,
        &mut f.bytes_acked,
    ];
    for (v, n) in figures.into_iter().zip(1..) {
        *v = n;
    }
    f.cgroup_id = 77;
    f.comm[..4].copy_from_slice(b"curl");
    let mut k = FlowKey {
        family: tracer_common::AF_INET,
        port: 443,
        tgid: 9,
        netns: 4026531840,
        dir: dir::ACTIVE,
        ..Default::default()
    };
    k.raddr[..4].copy_from_slice(&[10, 0, 0, 1]);
    k.laddr[..4].copy_from_slice(&[10, 0, 0, 9]);
    let rec = RecFlow::from_flow(&k, &f);
    let json = serde_json::to_string(&rec).unwrap();
    assert_eq!(
        json,
        concat!(
            r#"{"direction":"active","family":2,"remote":"10.0.0.1","local":"10.0.0.9","port":443,"pid":9,"netns":4026531840,"#,
            r#""comm":"curl","cgroup_id":77,"established":1,"connect_failed":2,"connect_no_local_port":3,"time_wait":4,"#,
            r#""fin_wait2_parked":5,"resets_sent":6,"resets_received":7,"close_local_first":8,"close_peer_first":9,"#,
            r#""close_simultaneous":10,"handshake_count":11,"handshake_sum_ns":12,"handshake_max_ns":13,"#,
            r#""handshake_retrans":14,"retrans_total":15,"closed":16,"lifetime_sum_ns":17,"lifetime_max_ns":18,"#,
            r#""bytes_received":19,"bytes_acked":20}"#
        )
    );
    let back: RecFlow = serde_json::from_str(&json).unwrap();
    assert_eq!(back.to_flow(), (k, f));
    let sparse: RecFlow =
        serde_json::from_str(r#"{"direction":"passive","established":3,"newer_field":1}"#).unwrap();
    let (key, stats) = sparse.to_flow();
    assert_eq!(key.dir, dir::PASSIVE);
    assert_eq!(
        stats,
        FlowStats {
            established: 3,
            ..Default::default()
        }
    );
}
