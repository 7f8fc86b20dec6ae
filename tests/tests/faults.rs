//! Faults, injected into the real binary: stop signals at random moments in
//! every mode, SIGKILL, missing or garbage kernel BTF, stdout full or
//! closed, the capabilities left after attach, ring-buffer, flow-table,
//! in-flight and ephemeral-port exhaustion storms. Each test prints its rows
//! of the fault table (`FAULT | fault | what the tracer did | figure`);
//! `cargo xtask soak` collects them. `FAULT_TRIES` sets the tries per mode
//! and signal (default 1; the soak runs 50).

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read},
    net::{SocketAddr, TcpListener},
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use integration_tests::{
    connect_from, ensure_debian_package, python_in, tracer_bin, wait_for, KillOnDrop, Subnet,
};

const MODES: [&str; 3] = ["events", "summary", "serve"];
/// A stop signal must end the run this soon after it is sent, or after the
/// tracer is attached when it was sent earlier.
const STOP_BUDGET: Duration = Duration::from_secs(2);

fn row(fault: &str, behaviour: &str, figure: &str) {
    println!("FAULT | {fault} | {behaviour} | {figure}");
}

fn tries() -> u32 {
    std::env::var("FAULT_TRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// The line each mode prints once attached (and after dropping privileges).
fn ready_line(mode: &str) -> &'static str {
    match mode {
        "events" => "Tracing TCP state transitions",
        "summary" => "Aggregating TCP state transitions",
        _ => "Serving Prometheus metrics",
    }
}

fn mode_args(mode: &str, net: &Subnet) -> Vec<String> {
    let mut a = vec![mode.to_string(), "--addr".into(), net.cidr()];
    if mode == "serve" {
        let l = TcpListener::bind(SocketAddr::new(net.server(), 0)).unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        a.extend(["--listen".into(), addr.to_string()]);
    }
    a
}

/// A running tracer whose stderr lines are stamped as they arrive, whose
/// stdout is collected, and whose BPF program and link ids (from
/// /proc/PID/fdinfo) are recorded while it lives.
struct Run {
    child: KillOnDrop,
    lines: Arc<Mutex<Vec<(Instant, String)>>>,
    stderr_closed: Arc<AtomicBool>,
    stdout: Option<std::thread::JoinHandle<String>>,
    ids: Arc<Mutex<BpfIds>>,
}

#[derive(Default, Debug, Clone)]
struct BpfIds {
    progs: BTreeSet<u32>,
    links: BTreeSet<u32>,
}

fn fdinfo_ids(pid: u32, into: &mut BpfIds) {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return;
    };
    for e in dir.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        for l in text.lines() {
            let mut kv = l.split(':').map(str::trim);
            match (kv.next(), kv.next().and_then(|v| v.parse::<u32>().ok())) {
                (Some("prog_id"), Some(id)) => {
                    into.progs.insert(id);
                }
                (Some("link_id"), Some(id)) => {
                    into.links.insert(id);
                }
                _ => {}
            }
        }
    }
}

impl Run {
    fn start(args: &[String], configure: impl FnOnce(&mut Command)) -> Run {
        let mut cmd = Command::new(tracer_bin());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("tracer");
        let pid = child.id();
        let lines: Arc<Mutex<Vec<(Instant, String)>>> = Default::default();
        let err = child.stderr.take().unwrap();
        let l = lines.clone();
        let stderr_closed = Arc::new(AtomicBool::new(false));
        let closed = stderr_closed.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l.lock().unwrap().push((Instant::now(), line));
            }
            closed.store(true, Ordering::SeqCst);
        });
        let stdout = child.stdout.take().map(|mut out| {
            std::thread::spawn(move || {
                let mut s = String::new();
                let _ = out.read_to_string(&mut s);
                s
            })
        });
        let ids: Arc<Mutex<BpfIds>> = Default::default();
        let i = ids.clone();
        std::thread::spawn(move || {
            while Path::new(&format!("/proc/{pid}/fdinfo")).exists() {
                fdinfo_ids(pid, &mut i.lock().unwrap());
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Run {
            child: KillOnDrop(child),
            lines,
            stderr_closed,
            stdout,
            ids,
        }
    }

    /// Wait until SIGINT, SIGTERM and SIGHUP are caught (SigCgt): from then
    /// on a stop signal is handled. Before, in the first milliseconds after
    /// exec, the default action applies (the process dies, nothing loaded).
    fn wait_handlers(&self) {
        let want = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP]
            .iter()
            .fold(0u64, |m, s| m | 1 << (s - 1));
        wait_for(Duration::from_secs(10), || {
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
            let cgt = status
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
                .unwrap_or(0);
            (cgt & want == want, ())
        });
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// When a line containing `needle` arrived: waits until it does or the
    /// stderr pipe closes (the verifier alone took 45 s on a loaded machine,
    /// so no fixed wait is long enough; `timeout` only bounds a hang).
    fn line_at(&self, needle: &str, timeout: Duration) -> Option<Instant> {
        wait_for(timeout, || {
            let at = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|(_, l)| l.contains(needle))
                .map(|(t, _)| *t);
            (
                at.is_some() || self.stderr_closed.load(Ordering::SeqCst),
                at,
            )
        })
    }

    fn stderr(&self) -> String {
        let l = self.lines.lock().unwrap();
        l.iter()
            .map(|(_, s)| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Wait for exit (up to `timeout`): status code (None: killed/still
    /// running), when. After an exit it also waits (within `timeout`) for
    /// the stderr reader to reach the pipe's end: on a busy machine the
    /// reader thread can run after the process is gone, and the tracer's
    /// last line (its accounting) would be missing from `stderr()`.
    fn wait_exit(&mut self, timeout: Duration) -> (Option<i32>, Instant) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.0.try_wait().unwrap() {
                let exited = Instant::now();
                while !self.stderr_closed.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                return (st.code(), exited);
            }
            if Instant::now() > deadline {
                return (None, Instant::now());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stdout(&mut self) -> String {
        self.stdout
            .take()
            .map_or_else(String::new, |h| h.join().unwrap())
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill() on our own child's pid; no memory is involved.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Program and link ids among `ids` that the kernel still has, after waiting
/// for it to free them (it does so after an RCU grace period), per bpftool.
fn left_behind(ids: &BpfIds) -> BpfIds {
    ensure_debian_package("bpftool", "bpftool").expect("bpftool");
    let alive = |kind: &str, id: u32| {
        Command::new("bpftool")
            .args([kind, "show", "id", &id.to_string()])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    wait_for(Duration::from_secs(10), || {
        let left = BpfIds {
            progs: ids
                .progs
                .iter()
                .copied()
                .filter(|i| alive("prog", *i))
                .collect(),
            links: ids
                .links
                .iter()
                .copied()
                .filter(|i| alive("link", *i))
                .collect(),
        };
        (left.progs.is_empty() && left.links.is_empty(), left)
    })
}

/// Loopback connections in `net`, one after another, until stopped: the
/// burst the signals land in.
fn churn(net: Subnet, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let l = TcpListener::bind(SocketAddr::new(net.server(), 0)).unwrap();
        let addr = l.local_addr().unwrap();
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let c = connect_from(net.client(), addr).unwrap();
            let (a, _) = l.accept().unwrap();
            drop(c);
            drop(a);
            n += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        n
    })
}

/// A cheap pseudo-random number (the moments need no crypto).
fn jitter(seed: &mut u64, max_ms: u64) -> Duration {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    Duration::from_millis((*seed >> 33) % max_ms)
}

/// What each mode leaves to show it stopped properly.
fn assert_report(mode: &str, stdout: &str, stderr: &str) {
    match mode {
        "summary" => assert!(stdout.contains("TCP state summary"), "{stdout}\n{stderr}"),
        "events" => assert!(stderr.contains("events printed"), "{stderr}"),
        _ => {}
    }
}

#[test]
fn stop_signals_at_random_moments_in_every_mode() {
    let net = Subnet::unique(50);
    let stop = Arc::new(AtomicBool::new(false));
    let load = churn(net, stop.clone());
    let mut seed = u64::from(std::process::id());
    for mode in MODES {
        for (sig, name) in [
            (libc::SIGINT, "SIGINT"),
            (libc::SIGTERM, "SIGTERM"),
            (libc::SIGHUP, "SIGHUP"),
        ] {
            let (mut worst, mut observed) = (Duration::ZERO, 0);
            for _ in 0..tries() {
                let mut run = Run::start(&mode_args(mode, &net), |_| {});
                run.wait_handlers();
                // Anywhere from during attach to well after it.
                std::thread::sleep(jitter(&mut seed, 1500));
                let sent = Instant::now();
                signal(run.pid(), sig);
                let ready = run.line_at(ready_line(mode), Duration::from_secs(600));
                let (code, exited) = run.wait_exit(Duration::from_secs(600));
                let stderr = run.stderr();
                assert_eq!(code, Some(0), "{mode} {name}: {stderr}");
                let from = ready.map_or(sent, |r| r.max(sent));
                let took = exited.saturating_duration_since(from);
                assert!(took <= STOP_BUDGET, "{mode} {name}: stopped {took:?} after");
                worst = worst.max(took);
                assert_report(mode, &run.stdout(), &stderr);
                let ids = run.ids.lock().unwrap().clone();
                observed += u32::from(!ids.progs.is_empty());
                let left = left_behind(&ids);
                assert!(left.progs.is_empty() && left.links.is_empty(), "{left:?}");
            }
            row(
                &format!("{name} at a random moment, {mode}"),
                "exit 0 with its report",
                &format!(
                    "{} tries, slowest stop {} ms, 0 programs/links left ({observed} runs' ids checked with bpftool)",
                    tries(),
                    worst.as_millis()
                ),
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
}

/// Started with SIGINT ignored (as a non-interactive shell starts background
/// jobs), a SIGINT sent while the programs load still stops the run.
#[test]
fn a_sigint_during_attach_is_kept_even_when_started_ignored() {
    let net = Subnet::unique(51);
    for mode in MODES {
        let mut run = Run::start(&mode_args(mode, &net), |c| {
            // SAFETY: the closure runs in the child between fork and exec and
            // only calls signal(), which is async-signal-safe.
            unsafe {
                c.pre_exec(|| {
                    libc::signal(libc::SIGINT, libc::SIG_IGN);
                    Ok(())
                });
            }
        });
        run.wait_handlers();
        let sent = Instant::now();
        signal(run.pid(), libc::SIGINT);
        let ready = run
            .line_at(ready_line(mode), Duration::from_secs(600))
            .expect("attached");
        let (code, exited) = run.wait_exit(Duration::from_secs(10));
        assert_eq!(code, Some(0), "{mode}: {}", run.stderr());
        assert!(sent < ready, "the signal was sent during attach");
        let took = exited.saturating_duration_since(ready);
        assert!(took <= STOP_BUDGET, "{mode}: stopped {took:?} after attach");
        row(
            &format!("SIGINT during attach, SIGINT ignored at exec, {mode}"),
            "kept; stops once attached",
            &format!("stopped {} ms after attach", took.as_millis()),
        );
    }
}

#[test]
fn sigkill_leaves_no_program_or_link() {
    let net = Subnet::unique(52);
    for mode in MODES {
        let mut run = Run::start(&mode_args(mode, &net), |_| {});
        run.line_at(ready_line(mode), Duration::from_secs(600))
            .expect("attached");
        let ids = wait_for(Duration::from_secs(5), || {
            let i = run.ids.lock().unwrap().clone();
            (!i.progs.is_empty() && !i.links.is_empty(), i)
        });
        assert!(!ids.progs.is_empty() && !ids.links.is_empty(), "{ids:?}");
        signal(run.pid(), libc::SIGKILL);
        assert_eq!(run.wait_exit(Duration::from_secs(10)).0, None);
        let left = left_behind(&ids);
        assert!(left.progs.is_empty() && left.links.is_empty(), "{left:?}");
        row(
            &format!("SIGKILL, {mode}"),
            "killed; the kernel frees what its fds held",
            &format!(
                "{} program(s) and {} link(s) before, 0 left (bpftool)",
                ids.progs.len(),
                ids.links.len()
            ),
        );
    }
}

#[test]
fn missing_or_garbage_kernel_btf_exits_1_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("tracer-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let garbage = dir.join("garbage.btf");
    std::fs::write(&garbage, vec![0x5au8; 4096]).unwrap();
    let truncated = dir.join("truncated.btf");
    let real = std::fs::read("/sys/kernel/btf/vmlinux").unwrap();
    std::fs::write(&truncated, &real[..real.len() / 50]).unwrap();
    let unreadable = dir.join("unreadable.btf");
    std::fs::write(&unreadable, &real).unwrap();
    let missing = dir.join("missing.btf");
    for (what, path) in [
        ("missing", &missing),
        ("garbage", &garbage),
        ("truncated", &truncated),
        ("unreadable (a directory)", &dir),
    ] {
        let before = integration_tests::tracer_program_ids();
        let out = Command::new(tracer_bin())
            .args(["summary", "--duration", "1s", "--btf"])
            .arg(path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        let want = format!("cannot read kernel BTF at {}", path.display());
        assert!(err.contains(&want), "{what}: {err}");
        assert!(integration_tests::tracer_program_ids().is_subset(&before));
        row(
            &format!("kernel BTF {what} (--btf)"),
            "exit 1 before loading anything",
            err.trim(),
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Events to a full disk end with a clear error; to a closed pipe, the run
/// ends (there is nobody to print to) and still accounts on stderr.
#[test]
fn stdout_full_or_closed_ends_the_run_clearly() {
    let net = Subnet::unique(53);
    let args = mode_args("events", &net);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut run = Run::start(&args, |c| {
        c.stdout(full);
    });
    run.line_at(ready_line("events"), Duration::from_secs(600))
        .expect("attached");
    let stop = Arc::new(AtomicBool::new(false));
    let load = churn(net, stop.clone());
    let (code, _) = run.wait_exit(Duration::from_secs(10));
    let err = run.stderr();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    row(
        "stdout full (/dev/full)",
        "exit 1",
        err.lines().last().unwrap_or_default(),
    );

    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader); // nobody will ever read
    let mut run = Run::start(&args, |c| {
        c.stdout(writer);
    });
    run.line_at(ready_line("events"), Duration::from_secs(600))
        .expect("attached");
    let (code, _) = run.wait_exit(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let err = run.stderr();
    assert_eq!(code, Some(0), "{err}");
    let summary = err.lines().last().unwrap_or_default().to_string();
    assert!(summary.contains("events printed"), "{err}");
    row(
        "stdout closed (pipe reader gone)",
        "exit 0, accounts on stderr",
        &summary,
    );
}

/// Capability sets of every thread of a running tracer.
fn thread_caps(pid: u32) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let fields: Vec<String> = status
            .lines()
            .filter(|l| l.starts_with("Cap") || l.starts_with("NoNewPrivs"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        out.insert(fields.join(", "));
    }
    out
}

/// CapEff of `pid` as soon as it runs the tracer (setpriv execs it in
/// turn): the tracer parses the kernel BTF and loads its programs before it
/// drops anything, far longer than this 1 ms poll.
fn caps_at_exec(pid: u32) -> String {
    let tracer = tracer_bin().canonicalize().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if std::fs::read_link(format!("/proc/{pid}/exe")).ok().as_ref() == Some(&tracer) {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            return status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .unwrap()
                .trim()
                .to_string();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("{pid} never ran the tracer")
}

#[test]
fn capabilities_after_attach_in_every_mode() {
    let net = Subnet::unique(54);
    // CAP_SYS_ADMIN (21) and CAP_SYS_PTRACE (19): every network namespace's
    // population, in summary and serve; CAP_DAC_READ_SEARCH (2): the
    // summary's CLOSE_WAIT owners. Nothing for events. CAP_BPF goes too:
    // this kernel (>= 6.5) reads maps through open fds without it, and the
    // ages are such reads.
    let ns = (1u64 << 21) | (1u64 << 19);
    let hex = |v: u64| format!("{v:016x}");
    let zero = hex(0);
    for (who, expect_summary, expect_serve) in [
        ("root", hex(ns | (1u64 << 2)), hex(ns)),
        ("nobody+BPF+PERFMON", zero.clone(), zero.clone()),
    ] {
        for mode in MODES {
            let args = mode_args(mode, &net);
            let mut run = Run::start(&args, |c| {
                if who != "root" {
                    let mut setpriv = Command::new("setpriv");
                    setpriv
                        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                        .args(["--inh-caps=+bpf,+perfmon", "--ambient-caps=+bpf,+perfmon"])
                        .arg(tracer_bin())
                        .args(&args)
                        .stdin(Stdio::null())
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped());
                    *c = setpriv;
                }
            });
            let before = caps_at_exec(run.pid());
            run.line_at(ready_line(mode), Duration::from_secs(600))
                .unwrap_or_else(|| panic!("{who} {mode}: {}", run.stderr()));
            if mode == "serve" {
                // A scrape, so the blocking pool's thread exists too.
                let listen = &args[args.len() - 1];
                let body = ureq::get(&format!("http://{listen}/metrics"))
                    .call()
                    .expect("scrape")
                    .body_mut()
                    .read_to_string()
                    .unwrap();
                assert!(body.contains("tcp_tracer_transitions_total"));
            }
            let sets = thread_caps(run.pid());
            let threads = std::fs::read_dir(format!("/proc/{}/task", run.pid()))
                .unwrap()
                .count();
            let want = match mode {
                "summary" => &expect_summary,
                "serve" => &expect_serve,
                _ => &zero,
            };
            for s in &sets {
                for set in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
                    let v = s
                        .split(", ")
                        .find_map(|f| f.strip_prefix(&format!("{set}: ")))
                        .unwrap();
                    let expect = if set == "CapEff" || set == "CapPrm" || set == "CapBnd" {
                        want
                    } else {
                        &zero
                    };
                    // The bounding set stays as it was without CAP_SETPCAP.
                    if set == "CapBnd" && who != "root" {
                        continue;
                    }
                    assert_eq!(v, expect, "{who} {mode} {set}: {s}");
                }
                assert!(s.contains("NoNewPrivs: 1"), "{who} {mode}: {s}");
            }
            signal(run.pid(), libc::SIGINT);
            assert_eq!(run.wait_exit(Duration::from_secs(10)).0, Some(0));
            assert_report(mode, &run.stdout(), &run.stderr());
            row(
                &format!("capabilities after attach, {mode}, as {who}"),
                "dropped all it no longer needs",
                &format!(
                    "CapEff {before} at exec, {want} after attach on all {threads} threads ({} distinct set)",
                    sets.len()
                ),
            );
        }
    }
}

/// The counts on an events run's closing line.
struct EventsAccounting {
    printed: u64,
    /// Dropped by the full ring.
    dropped: u64,
    undecodable: u64,
    /// What the kernel counted; with the two below, the events it emitted.
    transitions: u64,
    synack_retransmits: u64,
    /// Absent (0) on kernels whose kfree_skb names no listener, as is
    /// the next.
    queue_drops: u64,
    half_open_resets: u64,
}

fn events_accounting(stderr: &str) -> EventsAccounting {
    let line = stderr
        .lines()
        .find(|l| l.contains("events printed"))
        .unwrap_or_else(|| panic!("no accounting line: {stderr}"));
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    // Five figures, then queue drops, half-open resets and the packets of
    // neither that could not be read, where traced.
    assert!(n.len() == 5 || n.len() == 8, "{line}");
    EventsAccounting {
        printed: n[0],
        dropped: n[1],
        undecodable: n[2],
        transitions: n[3],
        synack_retransmits: n[4],
        queue_drops: n.get(5).copied().unwrap_or(0),
        half_open_resets: n.get(6).copied().unwrap_or(0),
    }
}

/// `n` loopback connections in `net` as fast as they go, each closed by the
/// client first.
fn burst(net: &Subnet, n: u64) {
    let l = TcpListener::bind(SocketAddr::new(net.server(), 0)).unwrap();
    let addr = l.local_addr().unwrap();
    for _ in 0..n {
        let c = connect_from(net.client(), addr).unwrap();
        let (a, _) = l.accept().unwrap();
        drop(c);
        drop(a);
    }
}

/// Wait until every TCP socket with `needle` in its `ss` line (in `ns`,
/// else here) is in TIME-WAIT or gone: on a loaded machine the burst's last
/// ACKs may be processed by ksoftirqd after the syscalls returned, and the
/// counts are read only once no transition is still to come.
fn wait_settled(needle: &str, ns: Option<&bench::netns::NetNs>) {
    let busy = wait_for(Duration::from_secs(30), || {
        let mut cmd = ns.map_or_else(|| Command::new("ss"), |n| n.command("ss"));
        let out = cmd.args(["-Htan"]).output().expect("ss");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let busy: Vec<String> = text
            .lines()
            .filter(|l| l.contains(needle) && !l.starts_with("TIME-WAIT"))
            .map(String::from)
            .collect();
        (busy.is_empty(), busy)
    });
    assert!(busy.is_empty(), "sockets still closing: {busy:#?}");
}

/// A ring buffer far too small for a burst, and a reader that cannot keep
/// up (stdout is a pipe nobody reads until the burst is over, so the tracer
/// blocks writing while the kernel keeps producing): every transition is
/// either printed or counted as dropped, and a second tracer (summary) that
/// watched the same burst counted the same transitions.
#[test]
fn ring_buffer_overflow_storm_loses_nothing_uncounted() {
    const CONNS: u64 = 3000;
    let net = Subnet::unique(55);
    let mut summary = Run::start(
        &[
            "summary".into(),
            "--json".into(),
            "--addr".into(),
            net.cidr(),
        ],
        |_| {},
    );
    let (mut reader, writer) = std::io::pipe().unwrap();
    let args = ["events", "--json", "--ring-kib", "4", "--addr", &net.cidr()].map(String::from);
    let mut events = Run::start(&args, |c| {
        c.stdout(writer);
    });
    for (r, mode) in [(&summary, "summary"), (&events, "events")] {
        let ready = r.line_at(ready_line(mode), Duration::from_secs(600));
        assert!(ready.is_some(), "{mode}: {}", r.stderr());
    }
    burst(&net, CONNS);
    let printed_out = std::thread::spawn(move || {
        let mut s = String::new();
        reader.read_to_string(&mut s).unwrap();
        s.lines().count() as u64
    });
    wait_settled(&format!("{}:", net.server()), None);
    for r in [&summary, &events] {
        signal(r.pid(), libc::SIGINT);
    }
    let (code, _) = events.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{}", events.stderr());
    assert!(
        summary.wait_exit(Duration::from_secs(60)).0 == Some(0),
        "{}",
        summary.stderr()
    );
    let lines = printed_out.join().unwrap();
    let EventsAccounting {
        printed,
        dropped,
        undecodable,
        transitions,
        synack_retransmits,
        queue_drops,
        half_open_resets,
    } = events_accounting(&events.stderr());
    let s: serde_json::Value = serde_json::from_str(&summary.stdout()).unwrap();
    let watched = s["tracer"]["transitions_counted"].as_u64().unwrap();
    assert_eq!(s["connects"]["attempts"], CONNS, "{s}");
    assert_eq!(lines, printed, "lines on stdout vs. the count printed");
    assert_eq!(undecodable, 0);
    assert!(
        dropped > 0,
        "the storm never overflowed the ring ({printed} printed)"
    );
    assert_eq!(
        printed + dropped,
        transitions + synack_retransmits + queue_drops + half_open_resets
    );
    assert_eq!(transitions, watched, "the summary saw another number");
    row(
        "ring-buffer overflow storm (events, --ring-kib 4, stdout unread during the burst)",
        "drops counted, run completes, exit 0",
        &format!("{CONNS} connections: {printed} printed + {dropped} dropped = {transitions} transitions (a second tracer counted {watched})"),
    );
}

/// Ephemeral ports exhausted: ten local ports, all left in TIME_WAIT, then a
/// storm of connects that fail with EADDRNOTAVAIL. Each is counted as a
/// failure of its own reason, globally and for its destination.
#[test]
fn ephemeral_port_exhaustion_storm_is_counted_by_reason() {
    const PORTS: u64 = 10;
    const STORM: u64 = 2000;
    let net = Subnet::unique(56);
    let ns = bench::netns::NetNs::create(&format!("webcfg-ports-{}", std::process::id()))
        .expect("netns");
    ns.sysctl(
        "net.ipv4.ip_local_port_range",
        &format!("40000 {}", 40000 + PORTS - 1),
    )
    .unwrap();
    ns.sysctl("net.ipv4.tcp_tw_reuse", "0").unwrap();
    let mut run = Run::start(
        &[
            "summary".into(),
            "--json".into(),
            "--addr".into(),
            net.cidr(),
        ],
        |_| {},
    );
    assert!(
        run.line_at(ready_line("summary"), Duration::from_secs(600))
            .is_some(),
        "{}",
        run.stderr()
    );
    let (server, port) = (net.server(), 9000);
    let script = format!(
        "import socket,errno\n\
         s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{server}',{port})); s.listen(64)\n\
         for _ in range({PORTS}):\n    c=socket.socket(); c.connect(('{server}',{port})); a,_=s.accept(); c.close(); a.recv(1); a.close()\n\
         f=0\n\
         for _ in range({STORM}):\n    c=socket.socket()\n    \
         try:\n        c.connect(('{server}',{port}))\n    \
         except OSError as e:\n        assert e.errno==errno.EADDRNOTAVAIL, e\n        f+=1\n    \
         c.close()\n\
         print(f)\n"
    );
    assert_eq!(
        python_in(&ns, &script),
        STORM.to_string(),
        "the kernel's own EADDRNOTAVAIL count"
    );
    wait_settled(&format!("{server}:"), Some(&ns));
    signal(run.pid(), libc::SIGINT);
    assert_eq!(
        run.wait_exit(Duration::from_secs(60)).0,
        Some(0),
        "{}",
        run.stderr()
    );
    let s: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    let c = &s["connects"];
    for (key, want) in [
        ("attempts", PORTS + STORM),
        ("established", PORTS),
        ("failed", STORM),
        ("no_local_port", STORM),
        ("refused", 0),
        ("other", 0),
    ] {
        assert_eq!(c[key], want, "connects.{key}: {c}");
    }
    let dest = format!("{server}:{port}");
    let peer = s["top_peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["peer"] == dest.as_str())
        .unwrap_or_else(|| panic!("no row for {dest}: {}", s["top_peers"]));
    assert_eq!(peer["connect_no_local_port"], STORM, "{peer}");
    assert_eq!(peer["connect_failed"], STORM, "{peer}");
    assert_eq!(s["time_wait"]["entered"], PORTS, "{}", s["time_wait"]);
    row(
        "ephemeral-port exhaustion storm (10 local ports in TIME_WAIT, tw_reuse 0)",
        "each EADDRNOTAVAIL connect counted as failed, reason no_local_port, and on its destination's row",
        &format!("{STORM} failed connects (the kernel's count): connects.no_local_port {STORM}, failed {STORM}, attempts {}, established {PORTS}; peer {dest} connect_no_local_port {STORM}", PORTS + STORM),
    );
}

/// Until every thread of `pid` is stopped (SIGSTOP delivered to all).
fn wait_stopped(pid: u32) {
    let all_stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .all(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
            })
    };
    assert!(
        wait_for(Duration::from_secs(10), || {
            let s = all_stopped();
            (s, s)
        }),
        "{pid} never stopped"
    );
}

/// Sum of `field` over the `top_peers` rows plus `flow_breakdown.other`.
fn rows_plus_other(s: &serde_json::Value, field: &str) -> u64 {
    let rows: u64 = s["top_peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[field].as_u64().unwrap())
        .sum();
    rows + s["flow_breakdown"]["other"][field].as_u64().unwrap()
}

/// The kernel flow table (16 384 rows) overflowed for real: the tracer is
/// stopped (SIGSTOP: its harvest cannot drain the table) while 9 000
/// connections to distinct loopback peers make 18 000 (peer, side) rows.
/// The connections with no row are counted (`flow_table_full`) and land in
/// the `other` row, so rows + other equal the kernel's totals, every figure.
#[test]
fn flow_table_overflow_storm_is_counted_and_totals_stay_exact() {
    const CONNS: u64 = 9000;
    let ns =
        bench::netns::NetNs::create(&format!("soak-flows-{}", std::process::id())).expect("netns");
    let args = ["summary", "--json", "--netns", ns.name(), "--top", "100000"].map(String::from);
    let mut run = Run::start(&args, |_| {});
    let ready = run.line_at(ready_line("summary"), Duration::from_secs(600));
    assert!(ready.is_some(), "{}", run.stderr());
    signal(run.pid(), libc::SIGSTOP);
    wait_stopped(run.pid());
    // Client sends its FIN first (TIME_WAIT there), the server reads to EOF
    // and closes (LAST_ACK): one connection at a time, never ahead of accept.
    let script = format!(
        "import socket\n\
         s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('0.0.0.0',9300)); s.listen(64)\n\
         for i in range({CONNS}):\n    \
         ip='127.1.%d.%d'%(i//250,i%250+1)\n    \
         c=socket.socket(); c.bind((ip,0)); c.connect((ip,9300)); a,_=s.accept()\n    \
         c.shutdown(socket.SHUT_WR); assert a.recv(8)==b''; a.close()\n    \
         assert c.recv(8)==b''; c.close()\n"
    );
    python_in(&ns, &script);
    wait_settled("127.1.", Some(&ns));
    signal(run.pid(), libc::SIGCONT);
    signal(run.pid(), libc::SIGINT);
    let code = run.wait_exit(Duration::from_secs(120)).0;
    assert_eq!(code, Some(0), "{}", run.stderr());
    let s: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    let (c, a) = (&s["connects"], &s["accepts"]);
    assert_eq!(
        (c["attempts"].as_u64(), c["established"].as_u64()),
        (Some(CONNS), Some(CONNS))
    );
    assert_eq!(a["established"], CONNS, "{a}");
    assert_eq!(s["time_wait"]["entered"], CONNS, "{}", s["time_wait"]);
    // The first 16 384 (peer, side) rows fit; each later one found the
    // table full twice: at ESTABLISHED and at CLOSE.
    let no_room = 2 * CONNS - u64::from(tracer::probe::DEFAULT_FLOW_ENTRIES);
    let full = s["tracer"]["flow_table_full"].as_u64().unwrap();
    let other = &s["flow_breakdown"]["other"];
    assert_eq!(full, 2 * no_room, "{}", s["flow_breakdown"]);
    assert_eq!(other["established"], no_room, "{other}");
    assert_eq!(rows_plus_other(&s, "established"), 2 * CONNS);
    assert_eq!(rows_plus_other(&s, "time_wait_entries"), CONNS);
    assert_eq!(rows_plus_other(&s, "connections_closed"), 2 * CONNS);
    row(
        "flow-table overflow storm (16 384 kernel rows, harvest stopped by SIGSTOP)",
        "rows with no room counted as flow_table_full, their figures in the other row; run completes, exit 0",
        &format!(
            "{CONNS} connections to distinct peers ({} rows): flow_table_full {full}, other row {} established; rows + other = {} established, {} TIME_WAIT entries, {} closed (kernel totals {}, {CONNS}, {})",
            2 * CONNS,
            other["established"],
            rows_plus_other(&s, "established"),
            rows_plus_other(&s, "time_wait_entries"),
            rows_plus_other(&s, "connections_closed"),
            2 * CONNS,
            2 * CONNS,
        ),
    );
}

/// An in-flight storm: 2 000 connections (4 000 sockets) already open when
/// the tracer attaches, all closed at once after. Socket storage has no
/// capacity to overflow (it lives with each socket); what the tracer cannot
/// know is each socket's past, so each is counted once as in-flight-missing
/// and its closing transitions still count exactly.
#[test]
fn inflight_storm_of_sockets_older_than_the_tracer_is_counted_exactly() {
    const CONNS: u64 = 2000;
    let net = Subnet::unique(57);
    let l = TcpListener::bind(SocketAddr::new(net.server(), 0)).unwrap();
    let addr = l.local_addr().unwrap();
    let pairs: Vec<_> = (0..CONNS)
        .map(|_| {
            let c = connect_from(net.client(), addr).unwrap();
            (c, l.accept().unwrap().0)
        })
        .collect();
    drop(l);
    let args = ["summary", "--json", "--addr", &net.cidr()].map(String::from);
    let mut run = Run::start(&args, |_| {});
    let ready = run.line_at(ready_line("summary"), Duration::from_secs(600));
    assert!(ready.is_some(), "{}", run.stderr());
    for (mut c, mut a) in pairs {
        let mut buf = [0u8; 8];
        c.shutdown(std::net::Shutdown::Write).unwrap();
        while a.read(&mut buf).unwrap() > 0 {}
        drop(a);
        while c.read(&mut buf).unwrap() > 0 {}
    }
    wait_settled(&format!("{}:", net.server()), None);
    signal(run.pid(), libc::SIGINT);
    let code = run.wait_exit(Duration::from_secs(60)).0;
    assert_eq!(code, Some(0), "{}", run.stderr());
    let s: serde_json::Value = serde_json::from_str(&run.stdout()).unwrap();
    let t = &s["tracer"];
    assert_eq!(t["inflight_missing"], 2 * CONNS, "{t}");
    assert_eq!(t["inflight_insert_failed"], 0, "{t}");
    assert_eq!(s["connects"]["attempts"], 0);
    let cl = &s["closes"];
    assert_eq!(cl["closed_here_first"], CONNS, "{cl}");
    assert_eq!(cl["closed_by_peer_first"], CONNS, "{cl}");
    assert_eq!(s["time_wait"]["entered"], CONNS, "{}", s["time_wait"]);
    let matrix: u64 = s["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["count"].as_u64().unwrap())
        .sum();
    assert_eq!(t["transitions_counted"], matrix, "{}", s["transitions"]);
    row(
        "in-flight storm (2 000 connections open before attach, closed together)",
        "each socket counted once as in-flight-missing; its closing transitions counted",
        &format!(
            "inflight_missing {} (= {} sockets), inflight_insert_failed 0; closed_here_first {CONNS}, closed_by_peer_first {CONNS}, TIME_WAIT entered {CONNS}; {matrix} transitions",
            2 * CONNS,
            2 * CONNS
        ),
    );
}
