//! Network namespaces (root): namespaces this test creates (`netns-<pid>-*`),
//! the same address and port (127.0.0.1:9000) serving in two of them, a veth
//! pair (10.201.N.0/24) carrying traffic from one to the other. The tracer
//! runs in the host namespace; every namespace's population must equal what
//! `ss` run inside it reports, per state, on every road (setns + sock_diag,
//! /proc/PID/net/tcp, and none without privileges — stated, not silent).

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use integration_tests::{connect_from, tracer_bin, wait_for, KillOnDrop};
use tracer::{
    filter::FilterSpec,
    host::netns::{self, Namespace},
    report::{NamespaceRow, Summary},
    SummaryOptions, Tracer,
};

/// Namespaces created for one test, deleted on drop.
struct Netns {
    names: Vec<String>,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
}

impl Netns {
    /// `netns-<pid>-<test>-<x>` for each suffix, loopback up.
    fn create(test: &str, suffixes: &[&str]) -> Self {
        let names: Vec<String> = suffixes
            .iter()
            .map(|s| format!("netns-{}-{test}-{s}", std::process::id()))
            .collect();
        for n in &names {
            // A leftover of an earlier run with this pid.
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
            ip(&["netns", "add", n]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        Netns { names }
    }

    /// A veth pair between namespaces `a` and `b`: 10.201.`net`.1 and .2.
    fn link(&self, a: usize, b: usize, net: u8) -> (IpAddr, IpAddr) {
        let (va, vb) = (
            format!("nsv{}a", std::process::id()),
            format!("nsv{}b", std::process::id()),
        );
        let (na, nb) = (&self.names[a], &self.names[b]);
        ip(&[
            "link", "add", &va, "netns", na, "type", "veth", "peer", "name", &vb, "netns", nb,
        ]);
        for (ns, dev, host) in [(na, &va, 1), (nb, &vb, 2)] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.201.{net}.{host}/24"),
                "dev",
                dev,
            ]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        (
            format!("10.201.{net}.1").parse().unwrap(),
            format!("10.201.{net}.2").parse().unwrap(),
        )
    }

    fn namespace(&self, i: usize) -> Namespace {
        let path = PathBuf::from("/run/netns").join(&self.names[i]);
        Namespace {
            inode: netns::inode_of(&path).expect("namespace inode"),
            mounts: vec![path],
            names: vec![self.names[i].clone()],
            ..Default::default()
        }
    }

    /// Run `f` in namespace `i` (a thread of this process inside it).
    fn run<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
        netns::within(&self.namespace(i), f).expect("entering the namespace")
    }

    /// Sockets in `state` (an `ss` state name) that `ss` inside namespace `i` shows.
    fn ss(&self, i: usize, state: &str) -> u64 {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.names[i],
                "ss",
                "-H",
                "-tan",
                "state",
                state,
            ])
            .output()
            .expect("ss");
        assert!(out.status.success(), "ss: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count() as u64
    }

    fn delete(&mut self, i: usize) {
        ip(&["netns", "del", &self.names[i]]);
        self.names[i].clear();
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in self.names.iter().filter(|n| !n.is_empty()) {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Sockets a namespace's workload keeps open (its ESTABLISHED and
/// CLOSE_WAIT sockets live as long as this).
#[derive(Default)]
struct Held(Vec<TcpStream>, Vec<TcpListener>);

/// Known populations: `tw` client-closed connections (TIME_WAIT on the
/// client), `est` held pairs (2 ESTABLISHED each), `cw` connections the
/// client closed and the server never does (CLOSE_WAIT on the server,
/// FIN_WAIT2 on the client).
#[derive(Clone, Copy, Debug)]
struct Load {
    tw: u64,
    est: u64,
    cw: u64,
}

fn read_eof(s: &mut TcpStream) {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 16];
    while s.read(&mut b).expect("read to EOF") > 0 {}
}

impl Load {
    /// Listen on `server` and run the load from `client`.
    fn run(&self, client: IpAddr, server: SocketAddr, held: &mut Held) {
        self.run_on(TcpListener::bind(server).expect("listen"), client, held);
    }

    /// Run the load on listener `l` from `client`.
    fn run_on(&self, l: TcpListener, client: IpAddr, held: &mut Held) {
        let server = l.local_addr().unwrap();
        for _ in 0..self.tw {
            let mut c = connect_from(client, server).unwrap();
            let (mut a, _) = l.accept().unwrap();
            c.write_all(b"x").unwrap();
            drop(c);
            read_eof(&mut a);
        }
        for _ in 0..self.est {
            held.0.push(connect_from(client, server).unwrap());
            held.0.push(l.accept().unwrap().0);
        }
        for _ in 0..self.cw {
            let c = connect_from(client, server).unwrap();
            let (mut a, _) = l.accept().unwrap();
            drop(c);
            read_eof(&mut a);
            held.0.push(a);
        }
        held.1.push(l);
    }
}

/// The `ss` state names and the population fields they must equal.
fn populations(r: &NamespaceRow) -> [(&'static str, u64); 4] {
    [
        ("time-wait", r.now.time_wait),
        ("fin-wait-2", r.now.fin_wait2),
        ("close-wait", r.now.close_wait),
        ("established", r.now.established),
    ]
}

fn row(s: &Summary, inode: u32) -> Option<&NamespaceRow> {
    s.namespaces.iter().find(|r| r.netns == inode)
}

/// Summaries until `done`, every row kept (other namespaces on the host may
/// have many more destinations than ours), CLOSE_WAIT
/// leaks from age 0.
fn settle(t: &Tracer, done: impl Fn(&Summary) -> bool) -> Summary {
    let opts = SummaryOptions {
        top: usize::MAX,
        close_wait_threshold: Duration::from_nanos(1),
        ..Default::default()
    };
    wait_for(Duration::from_secs(10), || {
        let s = t.summary_with(&opts).expect("summary");
        (done(&s), s)
    })
}

/// Two namespaces with the same loopback server, plus traffic from A to B
/// over a veth pair; the host-namespace tracer reads both.
fn two_namespace_workload(ns: &Netns, net: u8) -> (Held, Held, [Load; 3]) {
    let (a_ip, b_ip) = ns.link(0, 1, net);
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let loads = [
        Load {
            tw: 5,
            est: 2,
            cw: 1,
        }, // A, 127.0.0.1:9000
        Load {
            tw: 3,
            est: 1,
            cw: 2,
        }, // B, 127.0.0.1:9000
        Load {
            tw: 4,
            est: 1,
            cw: 0,
        }, // A -> B over the veth, B's 10.201.N.2:9001
    ];
    let mut held_a = ns.run(0, || {
        let mut h = Held::default();
        loads[0].run(lo, SocketAddr::new(lo, 9000), &mut h);
        h
    });
    let mut held_b = ns.run(1, || {
        let mut h = Held::default();
        loads[1].run(lo, SocketAddr::new(lo, 9000), &mut h);
        h
    });
    // Listener in B, clients in A: both run in one thread each, so the
    // accepting side runs in B while A connects.
    let listener = ns.run(1, || {
        TcpListener::bind(SocketAddr::new(b_ip, 9001)).unwrap()
    });
    let server = SocketAddr::new(b_ip, 9001);
    let cross = loads[2];
    std::thread::scope(|sc| {
        let acc = sc.spawn(|| {
            let mut kept = Vec::new();
            for i in 0..cross.tw + cross.est {
                let (mut a, _) = listener.accept().unwrap();
                if i < cross.tw {
                    read_eof(&mut a);
                } else {
                    kept.push(a);
                }
            }
            kept
        });
        ns.run(0, || {
            for _ in 0..cross.tw {
                let mut c = connect_from(a_ip, server).unwrap();
                c.write_all(b"x").unwrap();
                drop(c);
            }
            for _ in 0..cross.est {
                held_a.0.push(connect_from(a_ip, server).unwrap());
            }
        });
        held_b.0.extend(acc.join().unwrap());
    });
    held_b.1.push(listener);
    // TIME_WAIT follows the server's FIN by a softirq: wait for what ss shows.
    let want = [(0, loads[0].tw + cross.tw), (1, loads[1].tw)];
    wait_for(Duration::from_secs(10), || {
        (want.iter().all(|(i, n)| ns.ss(*i, "time-wait") == *n), ())
    });
    (held_a, held_b, loads)
}

#[test]
fn population_per_namespace_equals_ss_inside_each() {
    let ns = Netns::create("pop", &["a", "b"]);
    let (ia, ib) = (ns.namespace(0).inode, ns.namespace(1).inode);
    let t = Tracer::start(FilterSpec::default(), false, 4096).expect("attach");
    let (held_a, held_b, [a, b, x]) = two_namespace_workload(&ns, 1);
    // A: its own clients' TIME_WAIT, FIN_WAIT2 and ESTABLISHED + the
    // veth clients'; B: its own + the veth server side.
    let want_a = [a.tw + x.tw, a.cw, a.cw, 2 * a.est + x.est];
    let want_b = [b.tw, b.cw, b.cw, 2 * b.est + x.est];
    let got = |s: &Summary, i| row(s, i).map(|r| populations(r).map(|(_, n)| n));
    let s = settle(&t, |s| {
        got(s, ia) == Some(want_a) && got(s, ib) == Some(want_b)
    });
    for (i, inode, want) in [(0, ia, want_a), (1, ib, want_b)] {
        let r = row(&s, inode).unwrap_or_else(|| panic!("no row for {inode}: {:#?}", s.namespaces));
        assert_eq!(populations(r).map(|(_, n)| n), want, "{}", ns.names[i]);
        for (state, n) in populations(r) {
            assert_eq!(n, ns.ss(i, state), "{} {state}: tracer vs ss", ns.names[i]);
        }
        assert_eq!(r.read_via, "setns");
        assert_eq!(r.names, [ns.names[i].clone()]);
        assert_eq!(r.close_wait_leaks, [a.cw, b.cw][i]);
        assert_eq!(r.ip_local_port_range, Some((32768, 60999)));
    }
    // The totals include both (and whatever else runs on the host).
    assert!(s.time_wait.now.time_wait >= want_a[0] + want_b[0]);
    assert!(s
        .netns_coverage
        .unreadable
        .iter()
        .all(|u| u.netns != ia && u.netns != ib));
    // Port pressure: the same destination in two namespaces is two rows.
    let pressure = |inode: u32, dest: &str| {
        s.port_pressure
            .destinations
            .iter()
            .find(|r| r.netns == inode && r.remote == dest)
            .map(|r| (r.time_wait, r.established, r.other))
    };
    assert_eq!(pressure(ia, "127.0.0.1:9000"), Some((a.tw, a.est, a.cw)));
    assert_eq!(pressure(ib, "127.0.0.1:9000"), Some((b.tw, b.est, b.cw)));
    assert_eq!(pressure(ia, "10.201.1.2:9001"), Some((x.tw, x.est, 0)));
    assert_eq!(pressure(ib, "10.201.1.2:9001"), None);
    // CLOSE_WAIT leaks: each in its namespace, held by this process.
    for (inode, n) in [(ia, a.cw), (ib, b.cw)] {
        let leaks: Vec<_> = s
            .close_wait
            .leaks
            .iter()
            .filter(|l| l.netns == inode)
            .collect();
        assert_eq!(leaks.len() as u64, n, "{:#?}", s.close_wait.leaks);
        for l in leaks {
            assert_eq!(l.local, "127.0.0.1:9000");
            assert_eq!(l.pid, Some(std::process::id()));
            assert!(l.age_exact, "the tracer saw the transition: {l:?}");
        }
    }
    // TIME_WAIT by peer, per namespace.
    let by_peer = |inode| {
        s.time_wait
            .now_by_peer
            .iter()
            .find(|r| r.netns == inode && r.peer == "127.0.0.1:9000")
            .map(|r| r.count)
    };
    assert_eq!((by_peer(ia), by_peer(ib)), (Some(a.tw), Some(b.tw)));
    let json = serde_json::to_value(&s).unwrap();
    assert!(json["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["netns"] == ia));
    drop((held_a, held_b));
}

#[test]
fn netns_filter_reads_only_that_namespace() {
    let ns = Netns::create("flt", &["a", "b"]);
    let (ia, ib) = (ns.namespace(0).inode, ns.namespace(1).inode);
    let (held_a, held_b, [a, _, x]) = two_namespace_workload(&ns, 2);
    let filter = FilterSpec {
        netns: Some(ib),
        ..Default::default()
    };
    let t = Tracer::start(filter, false, 4096).expect("attach");
    let s = settle(&t, |s| row(s, ib).is_some_and(|r| r.now.time_wait == 3));
    assert_eq!(s.namespaces.len(), 1, "{:#?}", s.namespaces);
    assert!(row(&s, ia).is_none());
    assert_eq!(s.time_wait.now.time_wait, ns.ss(1, "time-wait"));
    assert_eq!(s.netns_coverage.found, 1);
    assert!(s.filter.contains(&format!("netns {ib}")), "{}", s.filter);
    // The kernel counts only B's transitions: 2 connections in A, 1 in B.
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let one = Load {
        tw: 2,
        est: 0,
        cw: 0,
    };
    ns.run(0, || {
        one.run(lo, SocketAddr::new(lo, 9100), &mut Held::default())
    });
    let one = Load { tw: 1, ..one };
    ns.run(1, || {
        one.run(lo, SocketAddr::new(lo, 9100), &mut Held::default())
    });
    let s = settle(&t, |s| s.time_wait.entered >= 1);
    assert_eq!((s.connects.attempts, s.accepts.established), (1, 1));
    assert_eq!(s.time_wait.entered, 1);
    assert!(
        s.top_peers.iter().all(|p| p.netns == Some(ib)),
        "{:#?}",
        s.top_peers
    );
    assert_eq!(row(&s, ib).unwrap().flows.as_ref().unwrap().established, 2);
    drop(t);
    // The binary resolves a /run/netns name and pid:PID to the same inode.
    let holder = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &ns.names[0], "sleep", "60"])
            .spawn()
            .unwrap(),
    );
    let pid = holder.0.id();
    wait_for(Duration::from_secs(5), || {
        (netns::Selector::Pid(pid).resolve() == Ok(ia), ())
    });
    for sel in [ns.names[0].clone(), format!("pid:{pid}"), ia.to_string()] {
        let s = summary_json(&["--netns", &sel], &[]);
        let rows = s["namespaces"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "{sel}: {rows:#?}");
        assert_eq!(rows[0]["netns"], ia, "{sel}");
        // + the 2 connections just made in A.
        assert_eq!(rows[0]["now"]["time_wait"], a.tw + x.tw + 2, "{sel}");
    }
    let bad = Command::new(tracer_bin())
        .args(["summary", "--netns", "netns-none-such", "--duration", "1s"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no such namespace"));
    drop((held_a, held_b));
}

/// `tracer summary --json --duration 1s ARGS`, run through `prefix` (e.g.
/// setpriv), parsed.
fn summary_json(args: &[&str], prefix: &[&str]) -> serde_json::Value {
    let bin = tracer_bin();
    let mut cmd = match prefix.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    let out = cmd
        .args(["summary", "--json", "--duration", "1s"])
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

/// Capabilities for `setpriv`: only these, for a root process.
fn only_caps(caps: &str) -> Vec<String> {
    vec![
        "setpriv".into(),
        format!("--inh-caps=-all,{caps}"),
        format!("--ambient-caps=-all,{caps}"),
        format!("--bounding-set=-all,{caps}"),
    ]
}

#[test]
fn every_road_reports_what_it_read_and_what_it_could_not() {
    let ns = Netns::create("road", &["a", "b"]);
    let (ia, ib) = (ns.namespace(0).inode, ns.namespace(1).inode);
    let (held_a, held_b, _) = two_namespace_workload(&ns, 3);
    // A process in A only: B is reachable by its /run/netns mount alone.
    let holder = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &ns.names[0], "sleep", "60"])
            .spawn()
            .unwrap(),
    );
    wait_for(Duration::from_secs(5), || {
        (netns::Selector::Pid(holder.0.id()).resolve() == Ok(ia), ())
    });
    let ss_a: Vec<u64> = ["time-wait", "fin-wait-2", "close-wait", "established"]
        .iter()
        .map(|st| ns.ss(0, st))
        .collect();
    let pops = |r: &serde_json::Value| -> Vec<u64> {
        ["time_wait", "fin_wait2", "close_wait", "established"]
            .iter()
            .map(|k| r["now"][k].as_u64().unwrap())
            .collect()
    };
    let find = |s: &serde_json::Value, inode: u32| {
        s["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["netns"] == inode)
            .cloned()
    };
    let unreadable = |s: &serde_json::Value, inode: u32| {
        s["netns_coverage"]["unreadable"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["netns"] == inode)
    };
    let top = ["--top", "1000"];

    // Full privileges (root): both via setns.
    let s = summary_json(&top, &[]);
    let ra = find(&s, ia).expect("A read");
    assert_eq!(
        (ra["read_via"].as_str(), pops(&ra)),
        (Some("setns"), ss_a.clone())
    );
    assert_eq!(find(&s, ib).unwrap()["read_via"], "setns");

    // CAP_SYS_PTRACE without CAP_SYS_ADMIN: A through /proc/PID/net/tcp,
    // same numbers; B has no process, so it is listed as not read.
    let caps = only_caps("+bpf,+perfmon,+sys_ptrace");
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    let s = summary_json(&top, &caps);
    let ra = find(&s, ia).expect("A read via /proc");
    assert_eq!(
        (ra["read_via"].as_str(), pops(&ra)),
        (Some("proc"), ss_a.clone())
    );
    assert!(ra["ip_local_port_range"].is_null());
    assert!(
        find(&s, ib).is_none() && unreadable(&s, ib),
        "{:#}",
        s["netns_coverage"]
    );
    assert_eq!(s["netns_coverage"]["complete"], false);

    // CAP_SYS_ADMIN without CAP_SYS_PTRACE: processes' namespace links are
    // hidden, but both bind mounts can be entered.
    let caps = only_caps("+bpf,+perfmon,+sys_admin");
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    let s = summary_json(&top, &caps);
    let ra = find(&s, ia).expect("A read via its mount");
    assert_eq!(
        (ra["read_via"].as_str(), pops(&ra)),
        (Some("setns"), ss_a.clone())
    );
    assert_eq!(find(&s, ib).unwrap()["read_via"], "setns");
    assert!(s["netns_coverage"]["processes_denied"].as_u64().unwrap() > 0);

    // CAP_BPF + CAP_PERFMON only: the own namespace; A and B are listed as
    // not read (their /run/netns mounts are visible), and the processes
    // whose namespaces could not be seen are counted.
    let caps = only_caps("+bpf,+perfmon");
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();
    let s = summary_json(&top, &caps);
    let rows = s["namespaces"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["read_via"], "own");
    assert!(
        unreadable(&s, ia) && unreadable(&s, ib),
        "{:#}",
        s["netns_coverage"]
    );
    assert!(s["netns_coverage"]["processes_denied"].as_u64().unwrap() > 0);
    drop((held_a, held_b, holder));
}

#[test]
fn a_namespace_torn_down_while_traced_leaves_no_row() {
    let mut ns = Netns::create("gone", &["a", "b"]);
    let (ia, ib) = (ns.namespace(0).inode, ns.namespace(1).inode);
    let t = Tracer::start(FilterSpec::default(), false, 4096).expect("attach");
    let (held_a, held_b, [a, b, x]) = two_namespace_workload(&ns, 4);
    let s = settle(&t, |s| {
        row(s, ia).is_some_and(|r| r.now.time_wait == a.tw + x.tw)
            && row(s, ib).is_some_and(|r| r.now.time_wait == b.tw)
    });
    assert!(row(&s, ia).is_some());
    // Close A's sockets and delete A while tracing; B keeps its sockets
    // (the veth goes with A).
    drop(held_a);
    ns.delete(0);
    // The kernel frees a namespace asynchronously; until then it may still
    // be listed by an fd somewhere, never as a stale row of its old numbers.
    let s = settle(&t, |s| row(s, ia).is_none());
    assert!(row(&s, ia).is_none(), "{:#?}", s.namespaces);
    assert!(s.netns_coverage.unreadable.iter().all(|u| u.netns != ia));
    let rb = row(&s, ib).expect("B still read");
    assert_eq!(rb.now.time_wait, ns.ss(1, "time-wait"));
    drop(held_b);
}

/// Run by `owners_and_flows_per_namespace` inside a namespace (through
/// `ip netns exec`): a server on 127.0.0.1:9000 and its own clients, so the
/// namespace's connections all belong to this process. Does nothing when
/// run without the variable.
#[test]
#[ignore = "a helper process of owners_and_flows_per_namespace"]
fn netns_helper_server() {
    let Ok(n) = std::env::var("NETNS_HELPER_CONNECTIONS") else {
        return;
    };
    let n: u64 = n.parse().unwrap();
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let l = TcpListener::bind(SocketAddr::new(lo, 9000)).expect("listen");
    println!("listening");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).unwrap();
    let mut held = Held::default();
    Load {
        tw: n,
        est: 0,
        cw: 0,
    }
    .run_on(l, lo, &mut held);
    println!("done");
    line.clear();
    std::io::stdin().read_line(&mut line).unwrap();
}

/// One helper server process in namespace `name`, waiting for "go".
struct Helper {
    child: KillOnDrop,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Helper {
    fn spawn(name: &str, n: u64) -> Self {
        let mut child = Command::new("ip")
            .args(["netns", "exec", name])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "netns_helper_server",
                "--ignored",
                "--nocapture",
                "-q",
            ])
            .env("NETNS_HELPER_CONNECTIONS", n.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut h = Helper {
            child: KillOnDrop(child),
            out,
        };
        h.expect("listening");
        h
    }

    fn expect(&mut self, word: &str) {
        use std::io::BufRead as _;
        let mut line = String::new();
        while !line.contains(word) {
            line.clear();
            assert!(
                self.out.read_line(&mut line).unwrap() > 0,
                "helper exited before {word}"
            );
        }
    }

    fn go(&mut self) {
        let stdin = self.child.0.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
        self.expect("done");
    }
}

#[test]
fn owners_and_flows_per_namespace() {
    let ns = Netns::create("own", &["a", "b"]);
    let (ia, ib) = (ns.namespace(0).inode, ns.namespace(1).inode);
    let (na, nb) = (5u64, 3u64);
    // A's server listens before the tracer starts (its owner is seeded from
    // sock_diag + /proc), B's after (captured at listen()).
    let mut ha = Helper::spawn(&ns.names[0], na);
    let t = Tracer::start(FilterSpec::default(), false, 4096).expect("attach");
    let mut hb = Helper::spawn(&ns.names[1], nb);
    ha.go();
    hb.go();
    let (pa, pb) = (ha.child.0.id(), hb.child.0.id());
    let tw_in = |s: &Summary, i| {
        row(s, i)
            .and_then(|r| r.flows.as_ref())
            .map(|g| g.time_wait_entries)
    };
    let s = settle(&t, |s| tw_in(s, ia) == Some(na) && tw_in(s, ib) == Some(nb));
    for (inode, n, pid) in [(ia, na, pa), (ib, nb, pb)] {
        let r = row(&s, inode).unwrap();
        let f = r.flows.as_ref().unwrap();
        // Both ends are in the namespace: n connects + n accepts.
        assert_eq!(
            (f.established, f.time_wait_entries, f.connect_failed),
            (2 * n, n, 0),
            "{inode}"
        );
        assert_eq!(r.now.time_wait, n);
        // The accepted side, per (netns, local port), owned by that
        // namespace's server process.
        let port = s
            .top_local_ports
            .iter()
            .find(|p| p.netns == Some(inode) && p.local_port == Some(9000))
            .unwrap_or_else(|| panic!("no :9000 row for {inode}: {:#?}", s.top_local_ports));
        assert_eq!(port.stats.established, n);
        let peer = s
            .top_peers
            .iter()
            .find(|p| p.netns == Some(inode) && p.peer == "127.0.0.1:9000")
            .unwrap();
        assert_eq!(
            (peer.stats.established, peer.stats.time_wait_entries),
            (n, n)
        );
        assert_eq!(peer.time_wait_now, n);
        // Rows are per (pid, comm): the thread name at connect() and at
        // listen() may differ (a seeded listener has the process's name).
        let owned: u64 = s
            .top_processes
            .iter()
            .filter(|p| p.pid == Some(pid))
            .map(|p| p.stats.established)
            .sum();
        assert_eq!(
            owned,
            2 * n,
            "pid {pid} owns both ends: {:#?}",
            s.top_processes
        );
    }
    drop((ha, hb));
}

#[test]
fn namespaces_coming_and_going_during_reads_never_fail_a_report() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let t = Tracer::start(FilterSpec::default(), false, 4096).expect("attach");
    let stop = AtomicBool::new(false);
    // Stops the churn even when an assertion below fails.
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|sc| {
        let churn = sc.spawn(|| {
            let mut made = 0u32;
            while !stop.load(Ordering::Relaxed) {
                // A namespace with a process and sockets, deleted at once.
                let ns = Netns::create("churn", &[&made.to_string()]);
                let lo: IpAddr = "127.0.0.1".parse().unwrap();
                let load = Load {
                    tw: 2,
                    est: 1,
                    cw: 1,
                };
                let held = ns.run(0, || {
                    let mut h = Held::default();
                    load.run(lo, SocketAddr::new(lo, 9000), &mut h);
                    h
                });
                let holder = Command::new("ip")
                    .args(["netns", "exec", &ns.names[0], "sleep", "5"])
                    .spawn()
                    .map(KillOnDrop);
                drop((held, holder, ns));
                made += 1;
            }
            made
        });
        let _stop = Stop(&stop);
        let mut reports = 0;
        while reports < 50 {
            t.summary_with(&SummaryOptions::default())
                .expect("a report while namespaces come and go");
            reports += 1;
        }
        drop(_stop);
        assert!(
            churn.join().unwrap() > 0,
            "namespaces were created and deleted meanwhile"
        );
    });
}

/// Made for one test, removed on drop (innermost first): directories that
/// did not exist before.
struct Dirs(Vec<PathBuf>);

impl Dirs {
    fn create(&mut self, path: &std::path::Path) {
        let mut missing: Vec<PathBuf> = path
            .ancestors()
            .take_while(|p| !p.exists())
            .map(PathBuf::from)
            .collect();
        std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {path:?}: {e}"));
        missing.reverse();
        self.0.extend(missing);
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// A namespace whose process sits in a Kubernetes pod's cgroup (as the
/// kubelet + containerd lay it out) on a node whose kubelet log directories
/// name that pod: the summary names the namespace `shop/web-0/app`.
#[test]
fn a_pods_namespace_is_named_after_its_pod_and_container() {
    let cgroup2 = tracer::host::cgroup::Resolver::new()
        .root()
        .map(PathBuf::from)
        .expect("a cgroup v2 mount");
    let ns = Netns::create("pod", &["a"]);
    let uid = format!("5f0b9c2e-7d1a-4b8e-9f3c-{:012x}", std::process::id());
    let id = format!("{:064x}", std::process::id());
    let mut dirs = Dirs(Vec::new());
    let slice = cgroup2
        .join("kubepods.slice/kubepods-besteffort.slice")
        .join(format!(
            "kubepods-besteffort-pod{}.slice",
            uid.replace('-', "_")
        ))
        .join(format!("cri-containerd-{id}.scope"));
    dirs.create(&slice);
    dirs.create(&PathBuf::from(format!(
        "/var/log/pods/shop_web-0_{uid}/app"
    )));
    dirs.create(std::path::Path::new("/var/log/containers"));
    let link = PathBuf::from(format!("/var/log/containers/web-0_shop_app-{id}.log"));
    std::os::unix::fs::symlink(format!("/var/log/pods/shop_web-0_{uid}/app/0.log"), &link).unwrap();
    struct Unlink(PathBuf);
    impl Drop for Unlink {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _link = Unlink(link);

    let mut h = Helper::spawn(&ns.names[0], 2);
    std::fs::write(slice.join("cgroup.procs"), h.child.0.id().to_string()).unwrap();
    let t = Tracer::start(FilterSpec::default(), false, 4096).expect("attach");
    h.go();
    let inode = ns.namespace(0).inode;
    let s = settle(&t, |s| row(s, inode).is_some_and(|r| r.now.time_wait == 2));
    let r = row(&s, inode).unwrap();
    assert_eq!(r.pod_uid.as_deref(), Some(uid.as_str()));
    assert_eq!(
        (r.pod.as_deref(), r.container_name.as_deref()),
        (Some("shop/web-0"), Some("app"))
    );
    assert_eq!(r.workload.as_deref(), Some("shop/web-0/app"));
    assert_eq!(r.container, Some(format!("containerd://{id}")));
    drop(h);
    // The process must leave the cgroup before it can be removed.
    wait_for(Duration::from_secs(10), || {
        let procs = std::fs::read_to_string(slice.join("cgroup.procs")).unwrap_or_default();
        (procs.trim().is_empty(), ())
    });
}
