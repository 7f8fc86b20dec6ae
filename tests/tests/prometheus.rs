//! The exporter as Prometheus sees it: a real Prometheus server (Debian's
//! package, installed when absent) scrapes `tracer serve` every second while
//! a known workload runs; its HTTP API must then return the workload's
//! numbers, over plain HTTP and over TLS with basic auth
//! (`--web.config.file`). And the per-peer label bound holds on a live
//! exporter.

use std::{
    net::{SocketAddr, TcpListener},
    process::{Command, Stdio},
    time::Duration,
};

use integration_tests::{
    connect_from, ensure_debian_package, free_port, scrape, start_exporter, tracer_bin, wait_for,
    KillOnDrop, Subnet, Workload,
};

/// `tracer serve` on a free loopback port, filtered to `cidr`.
fn exporter(cidr: &str, top_peers: u16) -> (KillOnDrop, u16) {
    start_exporter(&["--addr", cidr, "--top-peers", &top_peers.to_string()])
}

/// One instant query: the value of the single result (None: no result).
fn query(prom_port: u16, q: &str) -> Option<f64> {
    let body = ureq::get(&format!("http://127.0.0.1:{prom_port}/api/v1/query"))
        .query("query", q)
        .call()
        .ok()?
        .body_mut()
        .read_to_string()
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    assert_eq!(v["status"], "success", "{q}: {body}");
    let r = v["data"]["result"].as_array()?;
    assert!(r.len() <= 1, "{q}: more than one series: {body}");
    r.first()?["value"][1].as_str()?.parse().ok()
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Debian's Prometheus with `scrape_configs` (YAML list items, indented by
/// two), scraping every second; its storage and config live in `dir`.
fn prometheus(dir: &TempDir, scrape_configs: &str) -> (KillOnDrop, u16) {
    ensure_debian_package("prometheus", "prometheus").expect("prometheus installed");
    let config = dir.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!("global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n{scrape_configs}"),
    )
    .unwrap();
    let prom_port = free_port();
    let prom = KillOnDrop(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus"),
    );
    (prom, prom_port)
}

impl TempDir {
    fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("tcp-tracer-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

/// Wait until Prometheus has scraped `job` successfully.
fn wait_up(prom_port: u16, job: &str) {
    wait_scraped(prom_port, job, 1.0);
}

/// Wait until Prometheus has scraped `job` and stored `up` = `want` (0: the
/// scrape was made and failed).
fn wait_scraped(prom_port: u16, job: &str, want: f64) {
    let q = format!("up{{job=\"{job}\"}}");
    let up = wait_for(Duration::from_secs(60), || {
        let v = query(prom_port, &q);
        (v == Some(want), v)
    });
    assert_eq!(up, Some(want), "Prometheus never scraped {job}");
}

/// Run a known workload on `net`, wait for a scrape after its last close,
/// then check every number Prometheus stored for it.
fn workload_numbers_reach_prometheus(prom_port: u16, net: &Subnet) {
    let w = Workload {
        client_closes: 8,
        server_closes: 5,
        refused: 3,
        resets: 2,
    };
    w.run(net.client(), net.server());
    let conns = w.connections() as f64;

    // Wait for a scrape after the last close, then check every number.
    let tw = (w.client_closes + w.server_closes) as f64;
    let seen = wait_for(Duration::from_secs(30), || {
        let v = query(prom_port, "sum(tcp_tracer_sockets{state=\"TIME_WAIT\"})");
        (v == Some(tw), v)
    });
    assert_eq!(seen, Some(tw));
    let checks = [
        ("sum(tcp_tracer_connect_attempts_total)", conns + 3.0),
        (
            "sum(tcp_tracer_connections_established_total{side=\"active\"})",
            conns,
        ),
        (
            "sum(tcp_tracer_connections_established_total{side=\"passive\"})",
            conns,
        ),
        (
            "sum(tcp_tracer_connect_failures_total{reason=\"refused\"})",
            3.0,
        ),
        ("sum(tcp_tracer_time_wait_entries_total)", tw),
        (
            "sum(tcp_tracer_time_wait_entries_total{side=\"active\"})",
            8.0,
        ),
        (
            "sum(tcp_tracer_time_wait_entries_total{side=\"passive\"})",
            5.0,
        ),
        ("sum(tcp_tracer_resets_total{direction=\"sent\"})", 2.0),
        ("sum(tcp_tracer_resets_total{direction=\"received\"})", 2.0),
        (
            "sum(tcp_tracer_handshake_duration_seconds_count{side=\"active\"})",
            conns,
        ),
        (
            "sum(tcp_tracer_handshake_duration_seconds_count{side=\"passive\"})",
            conns,
        ),
        (
            "sum(tcp_tracer_handshake_duration_seconds_bucket{side=\"active\",le=\"+Inf\"})",
            conns,
        ),
        ("sum(tcp_tracer_peer_connections_total)", 2.0 * conns),
        ("sum(tcp_tracer_peer_time_wait_entries_total)", tw),
        ("count(tcp_tracer_peer_connections_total)", 3.0),
        ("sum(tcp_tracer_events_dropped_total)", 0.0),
    ];
    let mut report = String::new();
    for (q, want) in checks {
        let got = query(prom_port, q);
        report.push_str(&format!("{q} = {got:?} (want {want})\n"));
        assert_eq!(got, Some(want), "{q}\n{report}");
    }
    println!("{report}");
}

#[test]
fn a_real_prometheus_scrapes_the_workloads_numbers() {
    let net = Subnet::unique(20);
    let (_exporter, port) = exporter(&net.cidr(), 5);
    let dir = TempDir::new("prom");
    let jobs = format!(
        "  - job_name: tcp-tracer\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
    );
    let (_prom, prom_port) = prometheus(&dir, &jobs);
    wait_up(prom_port, "tcp-tracer");
    workload_numbers_reach_prometheus(prom_port, &net);
}

/// `--web.config.file` with TLS and basic auth, as node_exporter takes it:
/// a Prometheus with the CA and the password gets the workload's exact
/// numbers; a job with a wrong password gets 401s and stores no sample;
/// plain HTTP to the TLS port is answered 400, and a request without a
/// password 401 with a Basic challenge and the configured header.
#[test]
fn a_real_prometheus_scrapes_over_tls_with_basic_auth() {
    let net = Subnet::unique(23);
    let dir = TempDir::new("prom-tls");
    let (ca, cert, key) = integration_tests::test_pki();
    for (name, pem) in [("ca.crt", &ca), ("srv.crt", &cert), ("srv.key", &key)] {
        std::fs::write(dir.0.join(name), pem).unwrap();
    }
    let hash = bcrypt::hash("s3cret", bcrypt::DEFAULT_COST).unwrap();
    let web = dir.0.join("web.yml");
    std::fs::write(
        &web,
        format!("tls_server_config:\n  cert_file: srv.crt\n  key_file: srv.key\nhttp_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\nbasic_auth_users:\n  prometheus: '{hash}'\n"),
    )
    .unwrap();
    let port = free_port();
    let _exporter = KillOnDrop(
        Command::new(tracer_bin())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--addr", &net.cidr(), "--top-peers", "5"])
            .arg("--web.config.file")
            .arg(&web)
            .stdout(Stdio::null())
            .spawn()
            .expect("tracer serve"),
    );
    // Plain HTTP is answered, and told it is on the TLS port: that is also
    // the sign the exporter is up.
    let plain = wait_for(Duration::from_secs(20), || {
        let r = ureq::get(&format!("http://127.0.0.1:{port}/metrics")).call();
        let done = matches!(r, Err(ureq::Error::StatusCode(400)));
        (done, format!("{r:?}"))
    });
    assert!(plain.contains("StatusCode(400)"), "plain HTTP: {plain}");
    direct_answers_over_tls(port, &ca);

    let job = |name: &str, password: &str| {
        format!("  - job_name: {name}\n    scheme: https\n    tls_config:\n      ca_file: {}\n    basic_auth:\n      username: prometheus\n      password: {password}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n", dir.0.join("ca.crt").display())
    };
    let jobs = job("tls-auth", "s3cret") + &job("tls-wrong", "guess");
    let (_prom, prom_port) = prometheus(&dir, &jobs);
    wait_up(prom_port, "tls-auth");
    // Both jobs start together but each on its own schedule: the wrong
    // password's first scrape may come after the right one's.
    wait_scraped(prom_port, "tls-wrong", 0.0);
    workload_numbers_reach_prometheus(prom_port, &net);
    // The wrong password's job: every scrape failed, nothing stored.
    for (q, want) in [
        ("max_over_time(up{job=\"tls-wrong\"}[10m])", Some(0.0)),
        (
            "max_over_time(scrape_samples_scraped{job=\"tls-wrong\"}[10m])",
            Some(0.0),
        ),
        (
            "count({job=\"tls-wrong\",__name__=~\"tcp_tracer_.*\"})",
            None,
        ),
    ] {
        assert_eq!(query(prom_port, q), want, "{q}");
    }
}

/// What a client that trusts the CA is answered, by password.
fn direct_answers_over_tls(port: u16, ca: &str) {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let roots = RootCerts::new_with_certs(&[Certificate::from_pem(ca.as_bytes()).unwrap()]);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(TlsConfig::builder().root_certs(roots).build())
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("https://127.0.0.1:{port}/metrics");
    let basic = |p: &str| {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::STANDARD.encode(format!("prometheus:{p}"));
        format!("Basic {b}")
    };
    let none = agent.get(&url).call().unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(
        none.headers()["www-authenticate"],
        "Basic realm=\"tcp state tracer\""
    );
    let wrong = agent
        .get(&url)
        .header("Authorization", basic("guess"))
        .call();
    assert_eq!(wrong.unwrap().status(), 401);
    let mut right = agent
        .get(&url)
        .header("Authorization", basic("s3cret"))
        .call()
        .unwrap();
    assert_eq!(right.status(), 200);
    assert_eq!(right.headers()["x-content-type-options"], "nosniff");
    let text = right.body_mut().read_to_string().unwrap();
    assert!(text.contains("tcp_tracer_connect_attempts_total"), "{text}");
}

/// A web configuration the exporter cannot honour stops it at once, with
/// the file and the reason named and no program attached.
#[test]
fn a_bad_web_config_file_fails_before_attaching() {
    let dir = TempDir::new("bad-web");
    let web = dir.0.join("web.yml");
    std::fs::write(&web, "tls_server_config:\n  cert_file: srv.crt\n").unwrap();
    let before = integration_tests::tracer_program_ids();
    let out = Command::new(tracer_bin())
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--web.config.file")
        .arg(&web)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&web.display().to_string()) && err.contains("missing one of key or key_file"),
        "{err}"
    );
    assert!(integration_tests::tracer_program_ids().is_subset(&before));
}

/// Ten peers (five remote services, five client→port pairs) and a bound of
/// three: exactly four series per per-peer metric, the largest three and
/// "other", and nothing lost in the sum.
#[test]
fn peer_labels_are_bounded_to_n_plus_other() {
    let net = Subnet::unique(21);
    let (_exporter, port) = exporter(&net.cidr(), 3);
    let listeners: Vec<TcpListener> = (0..5)
        .map(|_| TcpListener::bind(SocketAddr::new(net.server(), 0)).unwrap())
        .collect();
    let mut total = 0;
    for (i, l) in listeners.iter().enumerate() {
        let addr = l.local_addr().unwrap();
        for _ in 0..=i {
            let c = connect_from(net.client(), addr).unwrap();
            let (a, _) = l.accept().unwrap();
            drop((c, a));
            total += 1;
        }
    }
    let text = wait_for(Duration::from_secs(10), || {
        let t = scrape(port).unwrap_or_default();
        let sum: u64 = t
            .lines()
            .filter(|l| l.starts_with("tcp_tracer_peer_connections_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        (sum == 2 * total, t)
    });
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("tcp_tracer_peer_connections_total{"))
        .collect();
    assert_eq!(series.len(), 4, "{series:#?}");
    let port_of = |i: usize| listeners[i].local_addr().unwrap().port();
    let server = net.server();
    for want in [
        format!(
            "tcp_tracer_peer_connections_total{{peer=\"{server}:{}\"}} 5",
            port_of(4)
        ),
        format!(
            "tcp_tracer_peer_connections_total{{peer=\"{server}:{}\"}} 4",
            port_of(3)
        ),
        format!(
            "tcp_tracer_peer_connections_total{{peer=\"{server}:{}\"}} 3",
            port_of(2)
        ),
        format!(
            "tcp_tracer_peer_connections_total{{peer=\"other\"}} {}",
            2 * total - 12
        ),
    ] {
        assert!(series.contains(&want.as_str()), "{want} not in {series:#?}");
    }
    for m in [
        "peer_time_wait_entries",
        "peer_resets",
        "peer_connect_failures",
    ] {
        let n = text
            .lines()
            .filter(|l| l.starts_with(&format!("tcp_tracer_{m}_total{{")))
            .count();
        assert_eq!(n, 4, "{m}");
    }
}

/// The capabilities the systemd unit and the DaemonSet grant are enough, and
/// each is needed: as `nobody` with CAP_BPF + CAP_PERFMON the exporter serves
/// the workload's numbers; without either it exits 1 naming the missing one.
#[test]
fn the_deployed_capabilities_are_enough_and_each_is_needed() {
    let net = Subnet::unique(22);
    let run = |caps: &str| {
        let port = free_port();
        let child = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(format!("--inh-caps={caps}"))
            .arg(format!("--ambient-caps={caps}"))
            .arg(tracer_bin())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--addr", &net.cidr(), "--duration", "20s"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("setpriv");
        (KillOnDrop(child), port)
    };
    for (caps, missing) in [("+bpf", "CAP_PERFMON"), ("+perfmon", "CAP_BPF")] {
        let (mut guard, _) = run(caps);
        let status = guard.0.wait().unwrap();
        let mut err = String::new();
        std::io::Read::read_to_string(guard.0.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(1), "{caps}: {err}");
        assert!(err.contains(&format!("missing {missing}")), "{caps}: {err}");
    }
    let (_guard, port) = run("+bpf,+perfmon");
    let up = wait_for(Duration::from_secs(20), || {
        let ok = scrape(port).is_some();
        (ok, ok)
    });
    assert!(up, "the exporter as nobody never answered");
    let w = Workload {
        client_closes: 3,
        refused: 1,
        ..Default::default()
    };
    w.run(net.client(), net.server());
    let text = wait_for(Duration::from_secs(10), || {
        let t = scrape(port).unwrap_or_default();
        (t.contains("tcp_tracer_sockets{state=\"TIME_WAIT\"} 3"), t)
    });
    for want in [
        "tcp_tracer_connect_attempts_total 4",
        "tcp_tracer_connect_failures_total{reason=\"refused\"} 1",
        "tcp_tracer_time_wait_entries_total{side=\"active\"} 3",
        "tcp_tracer_sockets{state=\"TIME_WAIT\"} 3",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(want)),
            "{want} missing:\n{text}"
        );
    }
}

/// A busy listen address fails before anything is attached.
#[test]
fn a_taken_listen_address_fails_clearly() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let before = integration_tests::tracer_program_ids();
    let out = Command::new(tracer_bin())
        .args(["serve", "--listen", &addr.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("listening on {addr}")), "{err}");
    assert!(integration_tests::tracer_program_ids().is_subset(&before));
}
