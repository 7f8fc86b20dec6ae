//! `tracer top` in a real terminal: tmux (Debian's package, installed when
//! absent) runs it in an 80x24 pane; after a known workload the screen must
//! show the busiest peer's row with its exact counts, keys must re-sort the
//! table and `q` must quit. In a pipe it prints a message, or one frame with
//! `--once`.

use std::{net::SocketAddr, process::Command, time::Duration};

use integration_tests::{
    connect_from, ensure_debian_package, tracer_bin, wait_for, Subnet, Workload,
};

/// A /24 of 127.78.0.0/16 (this suite's share of loopback) for this run.
fn subnet(id: u8) -> Subnet {
    Subnet {
        a: 78,
        b: (std::process::id() % 60) as u8 * 4 + id,
    }
}

/// A detached tmux session, killed when dropped.
struct Tmux(String);

impl Tmux {
    fn start(cmd: &str) -> Self {
        let name = format!("tracer-top-{}", std::process::id());
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &name,
                "-x",
                "80",
                "-y",
                "24",
                cmd,
            ])
            .status()
            .expect("tmux")
            .success();
        assert!(ok, "tmux new-session failed");
        Tmux(name)
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.0])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let ok = Command::new("tmux")
            .args(["send-keys", "-t", &self.0, "-l", keys])
            .status()
            .unwrap()
            .success();
        assert!(ok, "tmux send-keys");
    }

    /// Wait until the screen satisfies `f`; the last screen either way.
    fn wait(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let s = wait_for(Duration::from_secs(30), || {
            let s = self.screen();
            (f(&s), s)
        });
        assert!(f(&s), "screen never showed {what}:\n{s}");
        s
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.0])
            .status();
    }
}

/// A table row split into its name and its nine numeric columns (the name
/// may hold spaces: "client -> :port").
fn row<'a>(screen: &'a str, name: &str) -> Option<Vec<&'a str>> {
    let line = screen
        .lines()
        .find(|l| l.starts_with(&format!("{name} ")))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    Some(fields[fields.len().checked_sub(9)?..].to_vec())
}

/// The first table row under the column header.
fn first_row(screen: &str) -> &str {
    screen
        .lines()
        .skip_while(|l| !l.starts_with("NAME"))
        .nth(1)
        .unwrap_or("")
}

#[test]
fn top_shows_the_busiest_peer_sorts_and_quits_in_a_terminal() {
    ensure_debian_package("tmux", "tmux").expect("tmux installed");
    let net = subnet(3);
    let cmd = format!(
        "{} top --addr {} --interval 1s; echo EXITED $?; sleep 60",
        tracer_bin().display(),
        net.cidr()
    );
    let t = Tmux::start(&cmd);
    t.wait("the table", |s| s.contains("[Peers]") && s.contains("NAME"));

    // The busiest peer: 30 connections closed here first (30 TIME_WAIT);
    // beside it 5 closed by the server and 4 refused connects.
    let busy = Workload {
        client_closes: 30,
        ..Default::default()
    };
    let port = busy.run(net.client(), net.server());
    let other = Workload {
        server_closes: 5,
        refused: 4,
        ..Default::default()
    };
    other.run(net.client(), net.server());
    let peer = SocketAddr::new(net.server(), port).to_string();
    // name: CONN/s EST FAIL P50 P99 RETX TW_IN TWNOW RST
    let s = t.wait("the busiest peer's counts", |s| {
        row(s, &peer).is_some_and(|r| r[1] == "30" && r[6] == "30" && r[7] == "30")
    });
    let r = row(&s, &peer).unwrap();
    assert_eq!(
        (r[2], r[5], r[8]),
        ("0", "0", "0"),
        "no failures, retransmits, resets:\n{s}"
    );
    for p in [r[3], r[4]] {
        let ms: f64 = p.parse().unwrap_or_else(|_| panic!("p50/p99 {p:?}:\n{s}"));
        assert!(ms > 0.0 && ms < 1000.0, "loopback handshake {ms} ms:\n{s}");
    }
    assert!(
        s.contains("TIME_WAIT in/s") && s.contains("connects/s"),
        "{s}"
    );

    // Sort by TIME_WAIT entries: the busiest peer on top.
    t.keys("w");
    t.wait("the busiest peer first", |s| {
        s.contains("sort TW_IN") && first_row(s).starts_with(&format!("{peer} "))
    });
    // By failures: the refused destination (4) on top.
    t.keys("f");
    let s = t.wait("the refused peer first", |s| {
        s.contains("sort FAIL") && !first_row(s).starts_with(&format!("{peer} "))
    });
    let first: Vec<&str> = first_row(&s).split_whitespace().collect();
    assert_eq!(first[3], "4", "4 refused connects:\n{s}");
    assert!(first[0].starts_with(&net.server().to_string()), "{s}");
    // The Namespaces table (four Tabs on): this host's namespace holds both
    // ends of the 35 established connections (70) and the 4 failures.
    t.keys("tttt");
    let s = t.wait("the namespaces table", |s| {
        s.contains("[Namespaces]") && !first_row(s).is_empty()
    });
    let ns: Vec<&str> = first_row(&s).split_whitespace().rev().take(9).collect();
    assert_eq!(
        (ns[7], ns[6]),
        ("70", "4"),
        "EST and FAIL of the namespace:\n{s}"
    );
    t.keys("t");
    t.wait("the peers table again", |s| s.contains("[Peers]"));
    // A text filter hides the other rows.
    t.keys(&format!("/{port}\r"));
    let s = t.wait("the filtered table", |s| {
        s.contains(&format!("filter: {port}"))
    });
    assert!(row(&s, &peer).is_some(), "{s}");
    assert!(
        !first_row(&s).is_empty() && first_row(&s).contains(&port.to_string()),
        "{s}"
    );
    // Quit: the terminal is given back and the exit status is 0.
    t.keys("q");
    let s = t.wait("the exit", |s| s.contains("EXITED"));
    assert!(s.contains("EXITED 0"), "{s}");
    assert!(
        !s.contains("[Peers]"),
        "the alternate screen was left:\n{s}"
    );
}

#[test]
fn top_in_a_pipe_prints_a_message_or_one_frame() {
    let net = subnet(3);
    let out = Command::new(tracer_bin())
        .args(["top", "--addr", &net.cidr()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs a terminal") && err.contains("--once"),
        "{err}"
    );

    // One frame after one interval, with a connection made meanwhile.
    let l = std::net::TcpListener::bind(SocketAddr::new(net.server(), 0)).unwrap();
    let addr = l.local_addr().unwrap();
    let child = Command::new(tracer_bin())
        .args(["top", "--once", "--interval", "3s", "--addr", &net.cidr()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The frame is taken 3 s after attaching; connect until it is printed
    // so at least one connection lands inside the interval.
    let out = std::thread::scope(|sc| {
        let h = sc.spawn(|| child.wait_with_output().unwrap());
        while !h.is_finished() {
            if let Ok(c) = connect_from(net.client(), addr) {
                let _ = l.accept();
                drop(c);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        h.join().unwrap()
    });
    assert!(out.status.success(), "{out:?}");
    let frame = String::from_utf8_lossy(&out.stdout);
    assert!(
        frame.contains("[Peers]") && frame.contains("NAME"),
        "{frame}"
    );
    assert!(frame.contains(&addr.to_string()), "{frame}");
    assert!(
        !frame.contains('\x1b'),
        "no escape codes in a pipe:\n{frame}"
    );
}
