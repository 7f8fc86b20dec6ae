//! What the guest printed, parsed, and compared with what the workload must
//! produce: first the kernel's own view (busybox's results, /proc/net/snmp
//! deltas, TIME_WAIT sockets in /proc/net/tcp*), then every tracer run.

use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::Value;

use super::{
    script::{self, Workload},
    Boot,
};

/// Mismatches, each one line saying what was expected.
#[derive(Default, Debug)]
pub struct Findings {
    pub failures: Vec<String>,
    /// What happened that the workload did not plan, but is no failure.
    pub notes: Vec<String>,
}

impl Findings {
    fn eq(&mut self, what: &str, got: impl Into<Option<i64>>, want: i64) {
        let got = got.into();
        if got != Some(want) {
            let got = got.map_or("nothing".into(), |g| g.to_string());
            self.failures
                .push(format!("{what}: {got}, expected {want}"));
        }
    }
    fn fail(&mut self, msg: String) {
        self.failures.push(msg);
    }
}

/// `key=value` lines of a `meta.NAME` section.
pub fn meta(boot: &Boot, run: &str) -> BTreeMap<String, String> {
    boot.section(&format!("meta.{run}"))
        .unwrap_or("")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// A number from a meta section (seconds, exit code).
pub fn meta_f64(boot: &Boot, run: &str, key: &str) -> Option<f64> {
    meta(boot, run).get(key)?.parse().ok()
}

/// `Tcp:` counters of /proc/net/snmp (a header line, then a value line).
pub fn snmp_tcp(text: &str) -> BTreeMap<String, i64> {
    mib(text, "Tcp:")
}

/// The counters of one `prefix` block of /proc/net/snmp or netstat.
pub fn mib(text: &str, prefix: &str) -> BTreeMap<String, i64> {
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with(prefix))
        .map(|l| l.split_whitespace().skip(1).collect())
        .collect();
    match rows.as_slice() {
        [names, values, ..] => names
            .iter()
            .zip(values)
            .filter_map(|(n, v)| Some((n.to_string(), v.parse().ok()?)))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// (local port, remote port) of every TIME_WAIT (st 06) line of
/// /proc/net/tcp and tcp6.
pub fn time_wait_ports(text: &str) -> Vec<(u16, u16)> {
    let port = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(3) == Some(&"06")).then_some(())?;
            Some((port(f.get(1)?)?, port(f.get(2)?)?))
        })
        .collect()
}

/// The transition matrix the workload makes, by (from, to), when every
/// socket of it is traced.
pub fn expected_transitions(w: &Workload) -> BTreeMap<(String, String), i64> {
    let c = w.connections() as i64;
    let k = w.refused as i64;
    [
        ("CLOSE", "SYN_SENT", c + k),
        ("SYN_SENT", "ESTABLISHED", c),
        ("SYN_SENT", "CLOSE", k),
        ("LISTEN", "SYN_RECV", c),
        ("SYN_RECV", "ESTABLISHED", c),
        ("ESTABLISHED", "FIN_WAIT1", c),
        ("FIN_WAIT1", "FIN_WAIT2", c),
        ("FIN_WAIT2", "CLOSE", c),
        ("ESTABLISHED", "CLOSE_WAIT", c),
        ("CLOSE_WAIT", "LAST_ACK", c),
        ("LAST_ACK", "CLOSE", c),
    ]
    .into_iter()
    .filter(|(_, _, n)| *n > 0)
    .map(|(f, t, n)| ((f.to_string(), t.to_string()), n))
    .collect()
}

/// The client side of `n` client-closed connections only (what `--rport`
/// of their server port sees).
pub fn client_side_transitions(n: i64) -> BTreeMap<(String, String), i64> {
    [
        ("CLOSE", "SYN_SENT"),
        ("SYN_SENT", "ESTABLISHED"),
        ("ESTABLISHED", "FIN_WAIT1"),
        ("FIN_WAIT1", "FIN_WAIT2"),
        ("FIN_WAIT2", "CLOSE"),
    ]
    .into_iter()
    .map(|(f, t)| ((f.to_string(), t.to_string()), n))
    .collect()
}

fn matrix(
    f: &mut Findings,
    what: &str,
    got: &BTreeMap<(String, String), i64>,
    want: &BTreeMap<(String, String), i64>,
) {
    if got != want {
        f.fail(format!("{what}: transitions {got:?}, expected {want:?}"));
    }
}

/// Everything: ground truth, then each run that `boot` was asked to make.
pub fn check(boot: &Boot, w: &Workload) -> Findings {
    let mut f = Findings::default();
    if !boot.completed {
        f.fail(if boot.timed_out {
            "the guest did not finish before the timeout".into()
        } else {
            "the guest powered off before printing its results".into()
        });
    }
    ground_truth(&mut f, boot, w);
    let names: Vec<&str> = script::runs().iter().map(|r| r.name).collect();
    for name in names {
        if !boot.sections.contains_key(&format!("meta.{name}")) {
            continue;
        }
        let m = meta(boot, name);
        // `check` exits by itself; the others run until stopped.
        let want = if name == "check" { "exited" } else { "ready" };
        if m.get("state").map(String::as_str) != Some(want)
            || m.get("rc").map(String::as_str) != Some("0")
        {
            let err = boot.section(&format!("{name}.err")).unwrap_or("");
            f.fail(format!(
                "tracer {name}: state {:?}, exit code {:?}; its stderr (end):\n{}",
                m.get("state"),
                m.get("rc"),
                last_chars(err, 3000)
            ));
            continue;
        }
        let out = boot.section(&format!("{name}.out")).unwrap_or("");
        match name {
            "check" => check_run(&mut f, out, boot),
            "summary" => summary_all(&mut f, out, boot, w),
            "events" => events(&mut f, out, boot, w),
            "serve" => serve(&mut f, boot, w),
            _ => {}
        }
    }
    f
}

/// `tracer check --json`: every mode loaded, on the booted kernel.
fn check_run(f: &mut Findings, out: &str, boot: &Boot) {
    let Some(v) = json(f, "check", out) else {
        return;
    };
    if v["kernel"].as_str() != Some(boot.kernel.release.as_str()) {
        f.fail(format!(
            "check ran on {:?}, not {}",
            v["kernel"], boot.kernel.release
        ));
    }
    let modes = v["modes"].as_array().cloned().unwrap_or_default();
    if modes.is_empty() {
        f.fail(format!("check reported no modes: {}", last_chars(out, 500)));
    }
    for m in modes {
        if m["loaded"].as_bool() != Some(true) {
            f.fail(format!(
                "check: mode {} did not load: {}",
                m["mode"], m["error"]
            ));
        }
    }
}

/// Verified instructions per mode and the deepest stack, from `check`'s JSON.
pub fn check_figures(boot: &Boot) -> Option<String> {
    let v: Value = serde_json::from_str(boot.section("check.out")?).ok()?;
    let mut parts: Vec<String> = v["modes"]
        .as_array()?
        .iter()
        .map(|m| {
            format!(
                "{} {} insns verified",
                m["mode"].as_str().unwrap_or("?"),
                m["verified_insns"]
            )
        })
        .collect();
    parts.push(format!(
        "stack {} bytes {}",
        v["stack_bytes"], v["stack_frames"]
    ));
    Some(parts.join(", "))
}

fn last_chars(s: &str, n: usize) -> &str {
    let mut at = s.len().saturating_sub(n);
    while !s.is_char_boundary(at) {
        at += 1;
    }
    &s[at..]
}

/// The kernel's and busybox's own accounts of the workload.
fn ground_truth(f: &mut Findings, boot: &Boot, w: &Workload) {
    let lines = |name: &str, pred: &dyn Fn(&str) -> bool| {
        boot.section(name)
            .map(|s| s.lines().filter(|l| pred(l)).count() as i64)
    };
    let (n, m, k, l) = (
        w.client_closes as i64,
        w.server_closes as i64,
        w.refused as i64,
        w.ipv6 as i64,
    );
    f.eq(
        "echoes from the client-closed server",
        lines("echo.client_closes", &|l| l == "hi"),
        n,
    );
    f.eq(
        "server-closed clients that exited 0",
        lines("rc.server_closes", &|l| l == "0"),
        m,
    );
    f.eq(
        "refused connects (nc exit code 1)",
        lines("rc.refused", &|l| l == "1"),
        k,
    );
    f.eq("echoes over IPv6", lines("echo.ipv6", &|l| l == "hi"), l);
    let before = snmp_tcp(boot.section("snmp.before").unwrap_or(""));
    let after = snmp_tcp(boot.section("snmp.after").unwrap_or(""));
    let delta = |key: &str| Some(after.get(key)? - before.get(key)?);
    f.eq(
        "/proc/net/snmp ActiveOpens delta",
        delta("ActiveOpens"),
        n + m + k + l,
    );
    f.eq(
        "/proc/net/snmp PassiveOpens delta",
        delta("PassiveOpens"),
        n + m + l,
    );
    f.eq(
        "/proc/net/snmp AttemptFails delta",
        delta("AttemptFails"),
        k,
    );
    f.eq("/proc/net/snmp EstabResets delta", delta("EstabResets"), 0);
    // TcpExt "TW" counts TIME_WAIT (and parked FIN_WAIT2) timewait socks
    // as they are scheduled: the kernel's count of TIME_WAIT entries.
    let ext = |when: &str| {
        mib(
            boot.section(&format!("netstat.{when}")).unwrap_or(""),
            "TcpExt:",
        )
    };
    let (ext0, ext1) = (ext("before"), ext("after"));
    let tw_entries = ext1.get("TW").zip(ext0.get("TW")).map(|(a, b)| a - b);
    f.eq("/proc/net/netstat TcpExt TW delta", tw_entries, n + m + l);
    // RSTs beyond the refused connects' are no transition of a full socket
    // (none is expected): one that kills a TIME_WAIT socket (RFC 1337
    // assassination, seen once under emulation) lowers the population
    // below the entries, so the population is then checked as a range.
    let extra_rsts = delta("OutRsts").map_or(0, |d| d - k);
    let tw = time_wait_ports(boot.section("sockets.after").unwrap_or(""));
    let count = |p: &dyn Fn(&(u16, u16)) -> bool| tw.iter().filter(|x| p(x)).count() as i64;
    let populations = [
        (
            "TIME_WAIT sockets in /proc/net/tcp*",
            tw.len() as i64,
            n + m + l,
        ),
        (
            "TIME_WAIT clients of :7001",
            count(&|x| x.1 == script::PORT_CLIENT_CLOSES),
            n,
        ),
        (
            "TIME_WAIT servers of :7002",
            count(&|x| x.0 == script::PORT_SERVER_CLOSES),
            m,
        ),
        (
            "TIME_WAIT IPv6 clients of :7004",
            count(&|x| x.1 == script::PORT_IPV6),
            l,
        ),
    ];
    if extra_rsts <= 0 {
        f.eq("/proc/net/snmp OutRsts delta", delta("OutRsts"), k);
        for (what, got, want) in populations {
            f.eq(what, got, want);
        }
        return;
    }
    f.notes.push(format!(
        "{extra_rsts} RST(s) beyond the refused connects' (TcpExt deltas: {}); \
         TIME_WAIT population checked as a range",
        mib_deltas(boot, "netstat", "TcpExt:")
    ));
    for (what, got, want) in populations {
        if got > want || got < want - extra_rsts {
            f.fail(format!(
                "{what}: {got}, expected {} ..= {want}",
                want - extra_rsts
            ));
        }
    }
}

/// Counters of `prefix` that changed between `NAME.before` and `NAME.after`.
fn mib_deltas(boot: &Boot, name: &str, prefix: &str) -> String {
    let get = |when: &str| {
        mib(
            boot.section(&format!("{name}.{when}")).unwrap_or(""),
            prefix,
        )
    };
    let (before, after) = (get("before"), get("after"));
    after
        .iter()
        .filter_map(|(k, a)| {
            let d = a - before.get(k).copied().unwrap_or(0);
            (d != 0).then(|| format!("{k} +{d}"))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn json(f: &mut Findings, what: &str, out: &str) -> Option<Value> {
    match serde_json::from_str(out) {
        Ok(v) => Some(v),
        Err(e) => {
            f.fail(format!("{what}: not JSON ({e}): {}", last_chars(out, 500)));
            None
        }
    }
}

fn num(v: &Value, path: &str) -> Option<i64> {
    path.split('.').try_fold(v, |v, k| v.get(k))?.as_i64()
}

fn summary_transitions(v: &Value) -> BTreeMap<(String, String), i64> {
    v["transitions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let (from, to) = (t["from"].as_str()?, t["to"].as_str()?);
            Some(((from.to_string(), to.to_string()), t["count"].as_i64()?))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// The unfiltered summary: every socket of the workload, compared with the
/// workload and with /proc/net/snmp and /proc/net/tcp*.
fn summary_all(f: &mut Findings, out: &str, boot: &Boot, w: &Workload) {
    let Some(v) = json(f, "summary", out) else {
        return;
    };
    let (n, m, k, l) = (
        w.client_closes as i64,
        w.server_closes as i64,
        w.refused as i64,
        w.ipv6 as i64,
    );
    let c = n + m + l;
    matrix(
        f,
        "summary",
        &summary_transitions(&v),
        &expected_transitions(w),
    );
    let before = snmp_tcp(boot.section("snmp.before").unwrap_or(""));
    let after = snmp_tcp(boot.section("snmp.after").unwrap_or(""));
    let delta = |key: &str| after.get(key).zip(before.get(key)).map(|(a, b)| a - b);
    if let (Some(got), Some(kernel)) = (num(&v, "connects.attempts"), delta("ActiveOpens")) {
        f.eq("summary connects.attempts vs ActiveOpens", got, kernel);
    }
    if let (Some(got), Some(kernel)) = (num(&v, "accepts.established"), delta("PassiveOpens")) {
        f.eq("summary accepts.established vs PassiveOpens", got, kernel);
    }
    let tw_now = time_wait_ports(boot.section("sockets.after").unwrap_or("")).len() as i64;
    let ext = |when: &str| {
        mib(
            boot.section(&format!("netstat.{when}")).unwrap_or(""),
            "TcpExt:",
        )
    };
    let kernel_tw = ext("after")
        .get("TW")
        .zip(ext("before").get("TW"))
        .map(|(a, b)| a - b);
    if let (Some(got), Some(kernel)) = (num(&v, "time_wait.entered"), kernel_tw) {
        f.eq("summary time_wait.entered vs TcpExt TW", got, kernel);
    }
    for (path, want) in [
        ("connects.attempts", c + k),
        ("connects.established", c),
        ("connects.failed", k),
        ("connects.refused", k),
        ("connects.timed_out", 0),
        ("connects.unreachable", 0),
        ("connects.aborted", 0),
        ("connects.no_local_port", 0),
        ("connects.other", 0),
        ("accepts.established", c),
        ("accepts.failed", 0),
        ("closes.closed_here_first", c),
        ("closes.closed_by_peer_first", c),
        ("closes.simultaneous", 0),
        ("closes.passive_close_completed", c),
        ("closes.resets_sent", 0),
        ("closes.resets_received", 0),
        ("closes.timeouts", 0),
        ("time_wait.entered", c),
        ("time_wait.entered_by_side.active_opened", n + l),
        ("time_wait.entered_by_side.passive_opened", m),
        ("time_wait.entered_by_side.unknown", 0),
        ("time_wait.now.time_wait", tw_now),
        ("time_wait.now.close_wait", 0),
        ("time_wait.now.established", 0),
        ("active_handshake.all.count", c),
        ("active_handshake.clean.count", c),
        ("active_handshake.retransmitted.count", 0),
        ("passive_handshake.all.count", c),
        ("passive_handshake.clean.count", c),
        ("tracer.transitions_counted", 10 * c + 2 * k),
        ("tracer.events_dropped", 0),
        ("tracer.inflight_missing", 0),
        ("tracer.inflight_insert_failed", 0),
        ("tracer.flow_table_full", 0),
    ] {
        f.eq(&format!("summary {path}"), num(&v, path), want);
    }
    let split = num(&v, "time_wait.direct").zip(num(&v, "time_wait.via_fin_wait2"));
    f.eq(
        "summary time_wait.direct + via_fin_wait2",
        split.map(|(a, b)| a + b),
        c,
    );
}

/// `events --json --rport 7001`: one line per transition of the clients of
/// the client-closed server, nothing of the other traffic.
fn events(f: &mut Findings, out: &str, boot: &Boot, w: &Workload) {
    let mut got = BTreeMap::new();
    let mut closes: BTreeMap<String, i64> = BTreeMap::new();
    let mut lines = 0;
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        lines += 1;
        let Some(e) = json(f, "events line", line) else {
            return;
        };
        let (Some(from), Some(to)) = (e["old_state"].as_str(), e["new_state"].as_str()) else {
            f.fail(format!("event without old_state/new_state: {line}"));
            return;
        };
        *got.entry((from.to_string(), to.to_string())).or_insert(0) += 1;
        if let Some(kind) = e["close"].as_str() {
            *closes.entry(kind.to_string()).or_insert(0) += 1;
        }
        let remote_port = e["remote"].as_str().and_then(|r| r.rsplit(':').next());
        if remote_port != Some(&script::PORT_CLIENT_CLOSES.to_string()) {
            f.fail(format!(
                "event outside --rport {}: {line}",
                script::PORT_CLIENT_CLOSES
            ));
        }
    }
    let n = w.client_closes as i64;
    f.eq("events: JSON lines", lines, 5 * n);
    matrix(
        f,
        "events (--rport 7001)",
        &got,
        &client_side_transitions(n),
    );
    f.eq(
        "events close=time_wait",
        closes.get("time_wait").copied().unwrap_or(0),
        n,
    );
    f.eq("events with a close kind", closes.values().sum::<i64>(), n);
    let err = boot.section("events.err").unwrap_or("");
    let want = format!("{} events printed, 0 dropped", 5 * n);
    if !err.contains(&want) {
        f.fail(format!(
            "events stderr lacks {want:?}: {}",
            last_chars(err, 500)
        ));
    }
}

/// Prometheus text lines `name{labels} value` (comments skipped).
pub fn metrics(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.trim_matches('"').to_string()))
                })
                .collect();
            Some((name.to_string(), labels, value.parse().ok()?))
        })
        .collect()
}

/// `serve --addr ::1/128`, scraped once after the workload: both ends of
/// the IPv6 connections, nothing else.
fn serve(f: &mut Findings, boot: &Boot, w: &Workload) {
    let text = boot.section("metrics").unwrap_or("");
    f.eq(
        "wget exit code",
        boot.section("metrics.rc")
            .and_then(|s| s.trim().parse().ok()),
        0,
    );
    let all = metrics(text);
    let tw = time_wait_ports(boot.section("sockets.after").unwrap_or(""));
    let tw_ipv6 = tw.iter().filter(|x| x.1 == script::PORT_IPV6).count() as i64;
    let sum = |name: &str, labels: &[(&str, &str)]| {
        let full = format!("tcp_tracer_{name}");
        let hits: Vec<f64> = all
            .iter()
            .filter(|(n, l, _)| {
                *n == full
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|x| x.2)
            .collect();
        (!hits.is_empty()).then(|| hits.iter().sum::<f64>() as i64)
    };
    let l = w.ipv6 as i64;
    for (what, got, want) in [
        (
            "connect_attempts_total",
            sum("connect_attempts_total", &[]),
            l,
        ),
        (
            "connections_established_total{side=active}",
            sum("connections_established_total", &[("side", "active")]),
            l,
        ),
        (
            "connections_established_total{side=passive}",
            sum("connections_established_total", &[("side", "passive")]),
            l,
        ),
        (
            "connect_failures_total (all reasons)",
            sum("connect_failures_total", &[]),
            0,
        ),
        (
            "transitions_total (all)",
            sum("transitions_total", &[]),
            10 * l,
        ),
        (
            "transitions_total{ESTABLISHED->CLOSE_WAIT}",
            sum(
                "transitions_total",
                &[("from", "ESTABLISHED"), ("to", "CLOSE_WAIT")],
            ),
            l,
        ),
        (
            "time_wait_entries_total{side=active}",
            sum("time_wait_entries_total", &[("side", "active")]),
            l,
        ),
        (
            "time_wait_entries_total (all sides)",
            sum("time_wait_entries_total", &[]),
            l,
        ),
        (
            "sockets{state=TIME_WAIT} vs /proc/net/tcp6",
            sum("sockets", &[("state", "TIME_WAIT")]),
            tw_ipv6,
        ),
        (
            "handshake_duration_seconds_count{side=active}",
            sum("handshake_duration_seconds_count", &[("side", "active")]),
            l,
        ),
        (
            "closes_total{path=passive_close_completed}",
            sum("closes_total", &[("path", "passive_close_completed")]),
            l,
        ),
    ] {
        f.eq(&format!("serve {what}"), got, want);
    }
}

/// Timings of one boot, for people: boot to /init, each program's load
/// (wall time from exec to its attached line, and the CPU time it had used
/// by then, nearly all of it in the verifier), the workload, the whole run.
pub fn timings(boot: &Boot) -> String {
    let times: BTreeMap<String, f64> = boot
        .section("times")
        .unwrap_or("")
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        .collect();
    let t = |k: &str| times.get(k).map_or("?".into(), |v| format!("{v:.1} s"));
    let mut s = format!(
        "kernel {}, initramfs {:.1} MiB; qemu ran {:.1} s; /init at {}, workload {} .. {}, done at {}\n",
        boot.kernel.release,
        boot.initramfs_bytes as f64 / (1 << 20) as f64,
        boot.elapsed.as_secs_f64(),
        t("init_start"),
        t("workload_start"),
        t("workload_end"),
        t("end"),
    );
    for r in script::runs() {
        let m = meta(boot, r.name);
        if m.is_empty() {
            continue;
        }
        let g = |k: &str| m.get(k).and_then(|v| v.parse::<f64>().ok());
        let load = g("t1")
            .zip(g("t0"))
            .map_or("?".into(), |(a, b)| format!("{:.1} s", a - b));
        let _ = writeln!(
            s,
            "  {:<9} {:<8} load {load} wall, {} s CPU by then; exit {}",
            r.name,
            m.get("state").map_or("?", String::as_str),
            m.get("cpu").map_or("?", String::as_str),
            m.get("rc").map_or("?", String::as_str),
        );
        let err = boot.section(&format!("{}.err", r.name)).unwrap_or("");
        if let Some(v) = verifier_stats(err) {
            let _ = writeln!(s, "            verifier: {v}");
        }
        if r.name == "check" {
            if let Some(c) = check_figures(boot) {
                let _ = writeln!(s, "            {c}");
            }
        }
    }
    s
}

/// The verifier's statistics lines (`verification time N usec`,
/// `processed N insns ...`), last occurrence, when the tracer printed them.
pub fn verifier_stats(stderr: &str) -> Option<String> {
    let last = |prefix: &str| {
        stderr
            .lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::trim))
    };
    let time = last("verification time ")
        .and_then(|t| t.strip_suffix("usec")?.trim().parse::<f64>().ok())
        .map(|us| format!("{:.1} s verification time", us / 1e6));
    let insns = last("processed ").map(|p| format!("processed {p}"));
    match (time, insns) {
        (None, None) => None,
        (t, i) => Some([t, i].into_iter().flatten().collect::<Vec<_>>().join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_statistics_from_a_rejection() {
        let err = "tracer: error: ... Too large\nverification time 118209051 usec\n\
                   stack depth 416+0+96\nprocessed 992609 insns (limit 1000000) max_states_per_insn 105\n";
        assert_eq!(
            verifier_stats(err).unwrap(),
            "118.2 s verification time, processed 992609 insns (limit 1000000) max_states_per_insn 105"
        );
        assert_eq!(verifier_stats("Aggregating ..."), None);
    }

    /// A boot whose console has the ground-truth sections of `w` with
    /// `rsts` RSTs sent and `tw` TIME_WAIT servers of :7002.
    fn fake_boot(w: &Workload, rsts: i64, tw_servers: u64) -> Boot {
        let snmp = |a: u64, p: u64, f: u64, r: i64| {
            format!("Tcp: ActiveOpens PassiveOpens AttemptFails EstabResets OutRsts\nTcp: {a} {p} {f} 0 {r}")
        };
        let c = w.connections();
        let mut tcp = String::new();
        let mut line = |local: u16, remote: u16| {
            tcp.push_str(&format!(
                "0: 0100007F:{local:04X} 0100007F:{remote:04X} 06\n"
            ));
        };
        for j in 0..w.client_closes as u16 {
            line(40000 + j, 7001);
        }
        for j in 0..tw_servers as u16 {
            line(7002, 41000 + j);
        }
        for j in 0..w.ipv6 as u16 {
            line(42000 + j, 7004);
        }
        let mut console = String::new();
        let mut section = |name: &str, body: &str| {
            console.push_str(&format!("@@@BEGIN {name}\n{body}\n@@@END {name}\n"));
        };
        section("snmp.before", &snmp(0, 0, 0, 0));
        section("snmp.after", &snmp(c + w.refused, c, w.refused, rsts));
        section("netstat.before", "TcpExt: SyncookiesSent TW\nTcpExt: 0 5");
        section(
            "netstat.after",
            &format!("TcpExt: SyncookiesSent TW\nTcpExt: 0 {}", 5 + c),
        );
        section("sockets.after", &tcp);
        section(
            "echo.client_closes",
            &"hi\n".repeat(w.client_closes as usize),
        );
        section("rc.server_closes", &"0\n".repeat(w.server_closes as usize));
        section("rc.refused", &"1\n".repeat(w.refused as usize));
        section("echo.ipv6", &"hi\n".repeat(w.ipv6 as usize));
        console.push_str("@@@DONE\n");
        Boot {
            kernel: super::super::setup::Kernel {
                release: "test".into(),
                vmlinuz: "/nonexistent".into(),
                modules: "/nonexistent".into(),
            },
            sections: super::super::sections(&console),
            completed: true,
            console,
            timed_out: false,
            elapsed: std::time::Duration::ZERO,
            initramfs_bytes: 0,
        }
    }

    #[test]
    fn ground_truth_is_exact_unless_an_extra_rst_killed_a_time_wait() {
        let w = Workload::default();
        let k = w.refused as i64;
        let mut f = Findings::default();
        ground_truth(&mut f, &fake_boot(&w, k, w.server_closes), &w);
        assert!(f.failures.is_empty() && f.notes.is_empty(), "{f:?}");
        // One TIME_WAIT short without an extra RST: a failure.
        let mut f = Findings::default();
        ground_truth(&mut f, &fake_boot(&w, k, w.server_closes - 1), &w);
        assert_eq!(f.failures.len(), 2, "{f:?}");
        // With one extra RST: a note, no failure; two short: a failure.
        let mut f = Findings::default();
        ground_truth(&mut f, &fake_boot(&w, k + 1, w.server_closes - 1), &w);
        assert!(f.failures.is_empty(), "{f:?}");
        assert_eq!(f.notes.len(), 1);
        let mut f = Findings::default();
        ground_truth(&mut f, &fake_boot(&w, k + 1, w.server_closes - 2), &w);
        assert_eq!(f.failures.len(), 2, "{f:?}");
    }

    #[test]
    fn snmp_counters_by_name() {
        let text = "Ip: Forwarding\nIp: 1\nTcp: RtoAlgorithm ActiveOpens PassiveOpens\nTcp: 1 7 6\nUdp: x\nUdp: 1\n";
        let t = snmp_tcp(text);
        assert_eq!(t["ActiveOpens"], 7);
        assert_eq!(t["PassiveOpens"], 6);
    }

    #[test]
    fn time_wait_lines_of_both_tables() {
        let text = "  sl  local_address rem_address   st\n\
                    0: 0100007F:D4EA 0100007F:1B59 06 00000000:00000000\n\
                    1: 00000000000000000000000000000000:1B59 00000000000000000000000000000000:0000 0A\n\
                    2: 0000000000000000FFFF00000100007F:1B5A 0000000000000000FFFF00000100007F:A254 06\n";
        assert_eq!(time_wait_ports(text), [(0xD4EA, 7001), (7002, 0xA254)]);
    }

    #[test]
    fn expected_matrix_counts_ten_transitions_per_connection_and_two_per_refusal() {
        let w = Workload::default();
        let m = expected_transitions(&w);
        let total: i64 = m.values().sum();
        assert_eq!(total, 10 * w.connections() as i64 + 2 * w.refused as i64);
        assert_eq!(client_side_transitions(3).values().sum::<i64>(), 15);
    }

    #[test]
    fn prometheus_lines_with_and_without_labels() {
        let text = "# TYPE x counter\ntcp_tracer_connect_attempts_total 2\n\
                    tcp_tracer_transitions_total{from=\"CLOSE\",to=\"SYN_SENT\"} 3\n";
        let m = metrics(text);
        assert_eq!(m[0].0, "tcp_tracer_connect_attempts_total");
        assert_eq!(m[0].2, 2.0);
        assert_eq!(m[1].1["to"], "SYN_SENT");
        assert_eq!(m[1].2, 3.0);
    }
}
