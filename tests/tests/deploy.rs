//! The deployment files are valid and consistent with the exporter: the
//! Kubernetes manifest parses and asks for exactly the capabilities the
//! exporter needs, the systemd unit grants the same ones, and every query of
//! the Grafana dashboard names a metric the exporter really emits.

use std::{collections::BTreeSet, path::PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn deploy(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `tcp_tracer_*` identifiers in a PromQL expression.
fn metrics_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = expr;
    while let Some(i) = rest.find("tcp_tracer_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// What the host-namespace exporter needs (systemd unit).
const CAPS: [&str; 2] = ["BPF", "PERFMON"];
/// The DaemonSet also reads every pod's namespace: SYS_PTRACE finds them
/// (/proc/PID/ns/net), SYS_ADMIN enters them (setns); tests/tests/netns.rs
/// measures each road.
const DAEMONSET_CAPS: [&str; 4] = ["BPF", "PERFMON", "SYS_PTRACE", "SYS_ADMIN"];

#[test]
fn daemonset_is_valid_and_least_privileged() {
    let docs = YamlLoader::load_from_str(&deploy("kubernetes/daemonset.yaml")).unwrap();
    assert_eq!(docs.len(), 1);
    let d = &docs[0];
    assert_eq!(d["apiVersion"].as_str(), Some("apps/v1"));
    assert_eq!(d["kind"].as_str(), Some("DaemonSet"));
    let spec = &d["spec"]["template"]["spec"];
    assert_eq!(
        d["spec"]["selector"]["matchLabels"],
        d["spec"]["template"]["metadata"]["labels"]
    );
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true));
    let c = &spec["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(args[0], "serve");
    let sc = &c["securityContext"]["capabilities"];
    let add: Vec<&str> = sc["add"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert_eq!(add, DAEMONSET_CAPS);
    assert_eq!(sc["drop"][0].as_str(), Some("ALL"));
    assert_eq!(
        spec["hostPID"].as_bool(),
        Some(true),
        "namespaces are found through /proc"
    );
    assert_eq!(
        c["securityContext"]["allowPrivilegeEscalation"].as_bool(),
        Some(false)
    );
    // /run/netns from the host, read-only, seeing mounts made after start.
    let mounts = c["volumeMounts"].as_vec().unwrap();
    let netns = mounts
        .iter()
        .find(|m| m["mountPath"].as_str() == Some("/run/netns"))
        .expect("/run/netns mounted");
    assert_eq!(netns["readOnly"].as_bool(), Some(true));
    assert_eq!(netns["mountPropagation"].as_str(), Some("HostToContainer"));
    let vol = spec["volumes"]
        .as_vec()
        .unwrap()
        .iter()
        .find(|v| v["name"] == netns["name"])
        .expect("its volume");
    assert_eq!(vol["hostPath"]["path"].as_str(), Some("/run/netns"));
    assert_eq!(c["securityContext"]["privileged"], Yaml::BadValue);
    assert_eq!(
        c["ports"][0]["containerPort"].as_i64(),
        Some(9477),
        "the annotation's port"
    );
    assert_eq!(
        d["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"].as_str(),
        Some("9477")
    );
}

#[test]
fn systemd_unit_grants_only_the_measured_capabilities() {
    let unit = deploy("systemd/tcp-tracer.service");
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} missing"))
            .to_string()
    };
    assert!(value("ExecStart").contains(" serve --listen 127.0.0.1:"));
    let want: Vec<String> = CAPS.iter().map(|c| format!("CAP_{c}")).collect();
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        let caps: Vec<String> = value(key).split_whitespace().map(String::from).collect();
        assert_eq!(caps, want, "{key}");
    }
    assert_eq!(value("NoNewPrivileges"), "yes");
    for section in ["[Unit]", "[Service]", "[Install]"] {
        assert!(unit.contains(section), "{section}");
    }
}

#[test]
fn every_dashboard_query_names_an_emitted_metric() {
    let dash: serde_json::Value =
        serde_json::from_str(&deploy("grafana/tcp-tracer-dashboard.json")).unwrap();
    let emitted = tracer::export::metric_names();
    let panels = dash["panels"].as_array().unwrap();
    let mut used = BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().unwrap();
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            let names = metrics_in(expr);
            assert!(!names.is_empty(), "{title}: {expr} names no metric");
            for n in names {
                assert!(emitted.contains(&n), "{title}: {n} is not emitted");
                used.insert(n);
            }
        }
    }
    // The panels the operators asked for.
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for want in [
        "Handshake latency p50 / p99",
        "TIME_WAIT population",
        "TIME_WAIT entry rate by peer",
        "Failed connects",
        "Tracer health: drops",
        "TIME_WAIT population by pod",
        "Failed connects by pod",
    ] {
        assert!(
            titles.iter().any(|t| t.starts_with(want)),
            "no panel {want}"
        );
    }
    for m in [
        "tcp_tracer_handshake_duration_seconds_bucket",
        "tcp_tracer_peer_time_wait_entries_total",
        "tcp_tracer_events_dropped_total",
        "tcp_tracer_netns_sockets",
        "tcp_tracer_netns_connect_failures_total",
    ] {
        assert!(used.contains(m), "{m} not on the dashboard");
    }
}

#[test]
fn metric_extraction_finds_every_name() {
    let names = metrics_in("rate(tcp_tracer_a_total{x=\"y\"}[5m]) / tcp_tracer_b");
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["tcp_tracer_a_total", "tcp_tracer_b"]
    );
}

#[test]
fn daemonset_names_the_image_the_containerfile_builds() {
    let docs = YamlLoader::load_from_str(&deploy("kubernetes/daemonset.yaml")).unwrap();
    let c = &docs[0]["spec"]["template"]["spec"]["containers"][0];
    // `cargo xtask image` tags tcp-tracer:<workspace version>.
    let want = format!("tcp-tracer:{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(c["image"].as_str(), Some(want.as_str()));
    assert_eq!(c["imagePullPolicy"].as_str(), Some("IfNotPresent"));

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let containerfile = std::fs::read_to_string(root.join("Containerfile")).unwrap();
    let lines: Vec<&str> = containerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(lines[0], "FROM scratch", "nothing but the static binary");
    assert!(lines.contains(&"COPY target/dist/linux-${TARGETARCH}/tracer /tracer"));
    assert!(lines.contains(&"ENTRYPOINT [\"/tracer\"]"));
    assert!(
        !lines.iter().any(|l| l.starts_with("RUN")),
        "no RUN: the arm64 image builds without emulation"
    );
    let ignore = std::fs::read_to_string(root.join(".containerignore")).unwrap();
    for arch in ["amd64", "arm64"] {
        assert!(ignore.contains(&format!("!target/dist/linux-{arch}/tracer")));
    }
}

/// The README's metric table lists every metric the exporter emits (by its
/// name after `tcp_tracer_`, counters with `_total`, histograms bare).
#[test]
fn every_emitted_metric_is_in_the_readme() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let missing: Vec<String> = tracer::export::metric_names()
        .into_iter()
        .filter(|n| !n.ends_with("_sum") && !n.ends_with("_count"))
        .map(|n| {
            let short = n.trim_start_matches("tcp_tracer_");
            short.strip_suffix("_bucket").unwrap_or(short).to_string()
        })
        .filter(|short| !readme.contains(&format!("`{short}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in README's metric table: {missing:?}"
    );
}
