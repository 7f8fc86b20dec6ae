//! `tracer record` → `tracer report FILE` / `tracer events --from FILE`:
//! a recording of a known workload, made beside a live `tracer summary` of
//! the same run, must rebuild the same report; its events must be the
//! transitions the kernel counted; a damaged file must fail cleanly.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use integration_tests::{ss_time_wait, tracer_bin, wait_for, Subnet, Workload};
use serde_json::Value;

/// A /24 of 127.78.0.0/16 (this suite's share of loopback) for this run.
fn subnet(id: u8) -> Subnet {
    Subnet {
        a: 78,
        b: (std::process::id() % 60) as u8 * 4 + id,
    }
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("tracer-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tracer child, killed if the test fails before it is stopped.
struct Proc(Option<Child>);
impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Start `tracer ARGS` and wait for the stderr line that says it is attached
/// (starting with `ready`). Stdout is piped.
fn start(args: &[&str], ready: &str) -> Proc {
    let mut child = Command::new(tracer_bin())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tracer");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with(ready) => break,
            Some(Ok(_)) => continue,
            other => panic!("tracer {args:?} exited before attaching: {other:?}"),
        }
    }
    // Keep draining stderr so the child never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Proc(Some(child))
}

/// SIGINT, as Ctrl-C; then its output.
fn interrupt(mut p: Proc) -> Output {
    let child = p.0.take().unwrap();
    // SAFETY: kill has no memory effects; the pid is our own live child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    out
}

fn tracer(args: &[&str]) -> Output {
    Command::new(tracer_bin()).args(args).output().unwrap()
}

/// Drop the measured durations from the rows: two tracers attached side by
/// side each stamp the transitions with their own program's clock reads.
fn without_durations(mut v: Value) -> Value {
    for row in v.as_array_mut().into_iter().flatten() {
        if let Some(o) = row.as_object_mut() {
            o.retain(|k, _| !k.ends_with("_us") && !k.ends_with("_ms"));
        }
    }
    v
}

/// The parts of a summary that the events carry (and the population):
/// every count, no measured duration.
fn counts(s: &Value) -> BTreeMap<&'static str, Value> {
    let mut m = BTreeMap::new();
    for k in [
        "connects",
        "accepts",
        "closes",
        "transitions",
        "top_peers",
        "top_local_ports",
        "top_processes",
        "top_cgroups",
    ] {
        m.insert(k, without_durations(s[k].clone()));
    }
    let tw = &s["time_wait"];
    for (k, v) in [
        ("tw.entered", &tw["entered"]),
        ("tw.direct", &tw["direct"]),
        ("tw.via_fin_wait2", &tw["via_fin_wait2"]),
        ("tw.by_side", &tw["entered_by_side"]),
        ("tw.now", &tw["now"]),
        ("tw.now_by_peer", &tw["now_by_peer"]),
        ("active", &s["active_handshake"]["all"]["count"]),
        ("active.clean", &s["active_handshake"]["clean"]["count"]),
        ("passive", &s["passive_handshake"]["all"]["count"]),
        ("passive.clean", &s["passive_handshake"]["clean"]["count"]),
        ("lifetime", &s["connection_lifetime"]["count"]),
        ("transitions_counted", &s["tracer"]["transitions_counted"]),
    ] {
        m.insert(k, v.clone());
    }
    m
}

#[test]
fn a_report_from_a_recording_equals_the_live_summary() {
    let net = subnet(1);
    let dir = TempDir::new("record");
    let file = dir.0.join("run.rec");
    let cidr = net.cidr();
    let f = file.to_str().unwrap();
    let rec = start(&["record", "-o", f, "--addr", &cidr], "Recording");
    let live = start(&["summary", "--json", "--addr", &cidr], "Aggregating");
    let w = Workload {
        client_closes: 20,
        server_closes: 10,
        refused: 4,
        resets: 3,
    };
    w.run(net.client(), net.server());
    let tw = w.client_closes + w.server_closes;
    let settled = wait_for(Duration::from_secs(10), || {
        let n = ss_time_wait(&cidr);
        (n == tw, n)
    });
    assert_eq!(settled, tw);
    let rec_out = interrupt(rec);
    let live_out = interrupt(live);
    let live: Value = serde_json::from_slice(&live_out.stdout).expect("summary JSON");
    let report = tracer(&["report", "--json", f]);
    assert!(report.status.success(), "{report:?}");
    let from_file: Value = serde_json::from_slice(&report.stdout).expect("report JSON");

    // The workload's own numbers first, so equality is not of two empty reports.
    let conns = w.connections();
    assert_eq!(live["connects"]["attempts"], conns + w.refused);
    assert_eq!(live["connects"]["refused"], w.refused);
    assert_eq!(live["time_wait"]["entered"], tw);
    assert_eq!(live["time_wait"]["now"]["time_wait"], tw);
    assert_eq!(live["closes"]["resets_sent"], w.resets);
    let (a, b) = (counts(&live), counts(&from_file));
    for (k, v) in &a {
        assert_eq!(Some(v), b.get(k), "{k} differs between live and recorded");
    }
    assert_eq!(from_file["schema"], live["schema"]);

    // The events are every transition the kernel counted, matrix and all.
    let ev = tracer(&["events", "--json", "--from", f]);
    assert!(ev.status.success(), "{ev:?}");
    let mut matrix: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut active_us = Vec::new();
    for line in String::from_utf8_lossy(&ev.stdout).lines() {
        let e: Value = serde_json::from_str(line).unwrap();
        if e["direction"] == "active" && e["new_state"] == "ESTABLISHED" {
            active_us.push(e["handshake_us"].as_f64().unwrap());
        }
        let key = (
            e["old_state"].as_str().unwrap().to_string(),
            e["new_state"].as_str().unwrap().to_string(),
        );
        *matrix.entry(key).or_default() += 1;
    }
    let mut want = BTreeMap::new();
    for t in live["transitions"].as_array().unwrap() {
        let key = (
            t["from"].as_str().unwrap().to_string(),
            t["to"].as_str().unwrap().to_string(),
        );
        want.insert(key, t["count"].as_u64().unwrap());
    }
    assert_eq!(matrix, want);
    // The recording's latencies are those of its own events.
    let hs = &from_file["active_handshake"]["all"];
    assert_eq!(hs["count"].as_u64(), Some(active_us.len() as u64));
    let max = active_us.iter().copied().fold(0.0, f64::max);
    assert_eq!(hs["max_us"].as_f64(), Some(max));
    let mean = active_us.iter().sum::<f64>() / active_us.len() as f64;
    assert!(
        (hs["mean_us"].as_f64().unwrap() - mean).abs() < 0.002,
        "{hs} vs {mean}"
    );
    let total: u64 = matrix.values().sum();
    assert_eq!(Some(total), live["tracer"]["transitions_counted"].as_u64());
    assert!(rec_out.stdout.is_empty());
    let size = std::fs::metadata(&file).unwrap().len();
    eprintln!(
        "recording: {total} transitions in {size} bytes: {:.1} bytes each",
        size as f64 / total as f64
    );

    // The text report draws the distributions.
    let text = tracer(&["report", "--color", "never", f]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains(&format!(
            "Active handshake latency (connect): {conns} samples"
        )),
        "{text}"
    );
    assert!(text.contains("|****"), "{text}");
    damaged_copies_fail_cleanly(&file, &dir.0);
}

/// A cut or altered recording: exit 1 with a message, never a panic.
fn damaged_copies_fail_cleanly(file: &Path, dir: &Path) {
    let bytes = std::fs::read(file).unwrap();
    let cut = dir.join("cut.rec");
    std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
    let flipped = dir.join("flipped.rec");
    let mut b = bytes.clone();
    let mid = b.len() / 2;
    b[mid] ^= 0xff;
    std::fs::write(&flipped, &b).unwrap();
    let other = dir.join("other.rec");
    std::fs::write(&other, b"#!/bin/sh\necho not a recording\n").unwrap();
    for (path, want, what) in [
        (&cut, "truncated", "cut 5 bytes short"),
        (&flipped, "corrupt", "with one byte flipped"),
        (
            &other,
            "not a tracer recording",
            "replaced by a shell script",
        ),
    ] {
        for args in [&["report"][..], &["events", "--from"]] {
            let mut a: Vec<&str> = args.to_vec();
            a.push(path.to_str().unwrap());
            let out = tracer(&a);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{a:?}: {err}");
            assert!(
                err.contains(want) && !err.contains("panicked"),
                "{a:?}: {err}"
            );
            // A row of the fault suite's table (`cargo xtask soak`).
            println!(
                "FAULT | recording {what} (`tracer {}`) | exit 1, no panic | {}",
                args.join(" "),
                err.trim()
            );
        }
    }
}

#[test]
fn max_size_stops_the_recording_cleanly() {
    let net = subnet(2);
    let dir = TempDir::new("maxsize");
    let file = dir.0.join("small.rec");
    let f = file.to_str().unwrap();
    let mut g = start(
        &["record", "-o", f, "--addr", &net.cidr(), "--max-size", "8K"],
        "Recording",
    );
    let w = Workload {
        client_closes: 40,
        ..Default::default()
    };
    let stopped = wait_for(Duration::from_secs(60), || {
        w.run(net.client(), net.server());
        let done = g.0.as_mut().unwrap().try_wait().unwrap();
        (done.is_some(), done)
    });
    let status = stopped.expect("the recorder stopped by itself");
    assert!(status.success(), "{status:?}");
    // It stops at the first block that takes the file past the limit: after
    // that block come only blocks the same drain filled to the size that
    // forces one, and the last block with the end record.
    let blocks = block_table(&std::fs::read(&file).unwrap());
    let first_past = blocks
        .iter()
        .position(|&(end, _)| end >= 8192)
        .expect("no block reached the limit");
    let after = &blocks[first_past + 1..];
    assert!(!after.is_empty(), "no closing block: {blocks:?}");
    assert!(
        after[..after.len() - 1]
            .iter()
            .all(|&(_, raw)| raw >= tracer::record::BLOCK_TARGET),
        "blocks written after the limit was reached: {blocks:?}"
    );
    let report = tracer(&["report", f]);
    assert!(report.status.success(), "{report:?}");
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(text.contains("stopped by max_size"), "{text}");
}

/// Each block of a recording: (file offset where it ends, raw length), read
/// from the layout docs/RECORDING.md gives (magic, version, then per block
/// compressed length, raw length, CRC and the data).
fn block_table(file: &[u8]) -> Vec<(usize, usize)> {
    assert_eq!(&file[..8], tracer::record::MAGIC);
    let u32_at = |at: usize| u32::from_le_bytes(file[at..at + 4].try_into().unwrap()) as usize;
    let (mut at, mut blocks) = (12, Vec::new());
    while at < file.len() {
        let (clen, raw) = (u32_at(at), u32_at(at + 4));
        at += 12 + clen;
        blocks.push((at, raw));
    }
    assert_eq!(at, file.len(), "a block runs past the end of the file");
    blocks
}

#[test]
fn an_unwritable_output_fails_before_attaching() {
    let out = tracer(&["record", "-o", "/nonexistent/dir/x.rec"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("creating /nonexistent/dir/x.rec"), "{err}");
}

#[test]
fn replay_refuses_filters() {
    let out = tracer(&["events", "--from", "/nonexistent", "--port", "80"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("filters cannot be given"));
}
