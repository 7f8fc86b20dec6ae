//! The benchmark harness's own checks (`cargo xtask bench` runs the full
//! benchmark; these run each measuring path on small counts, against the
//! real tracer binary, and check what can be known exactly).

use std::path::PathBuf;

use bench::{
    harness::{self, Bench, Config, Setup},
    loadgen::TRANSITIONS_PER_CONNECTION,
};
use integration_tests::tracer_bin;

fn loadgen_bin() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/loadgen");
    assert!(
        p.exists(),
        "{} missing: run `cargo xtask test`",
        p.display()
    );
    p
}

/// A quick configuration on its own loopback /16 and namespaces.
fn bench(id: u8) -> Bench {
    let mut c = Config::quick(tracer_bin(), loadgen_bin());
    c.net = 200 + id;
    c.netns_prefix = format!("tsbt{}-{id}", std::process::id());
    Bench::new(c).expect("bench namespace")
}

/// The ladder's exactness proof holds: with a 4 MiB ring everything is
/// delivered; with the smallest ring events are dropped, yet the kernel's
/// count equals the load generator's known workload and every transition
/// is either printed or counted as dropped.
#[test]
fn ceiling_counts_are_exact_with_and_without_drops() {
    let mut b = bench(1);
    let paced = harness::ceiling_step(&mut b, 4096, Some(1_000.0)).unwrap();
    assert!(paced.connections > 0);
    assert_eq!(
        paced.expected,
        paced.connections * TRANSITIONS_PER_CONNECTION
    );
    assert_eq!(paced.counted, paced.expected, "{paced:?}");
    assert_eq!(paced.dropped, 0, "{paced:?}");
    assert_eq!(paced.printed, paced.counted, "{paced:?}");

    let flooded = harness::ceiling_step(&mut b, 4, None).unwrap();
    assert_eq!(flooded.counted, flooded.expected, "{flooded:?}");
    assert_eq!(
        flooded.printed + flooded.dropped,
        flooded.counted,
        "{flooded:?}"
    );
    assert!(flooded.exact && flooded.accounted);
}

/// bpf_stats figures come from the right programs: each saw at least the
/// load's own transitions (other traffic on the machine only adds).
#[test]
fn kernel_cost_reads_each_programs_own_run_stats() {
    let mut b = bench(2);
    let stats_before = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap();
    let rows = harness::kernel_cost(&mut b, &[Setup::Noop, Setup::TracerSummary]).unwrap();
    for r in &rows {
        assert_eq!(r.ns_per_run.len(), 1, "{r:?}");
        assert!(r.connections > 0, "{r:?}");
        assert!(
            r.invocations >= r.connections * TRANSITIONS_PER_CONNECTION,
            "{r:?}"
        );
        assert!(r.median.unwrap() > 0.0);
    }
    assert_eq!(rows[0].vs_noop, Some(1.0));
    assert!(rows[1].vs_noop.is_some());
    // bpf_stats_enabled is put back as it was.
    let v = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap();
    assert_eq!(v, stats_before);
}

/// The sockets-at-scale path: the tracer's report, made in the load's
/// namespace, counts exactly the established sockets the holders keep open.
#[test]
fn scale_report_counts_every_held_socket() {
    let mut b = bench(3);
    let s = harness::scale(&mut b).unwrap();
    assert_eq!(s.sockets, 2_000);
    assert_eq!(s.reported_established, s.sockets, "{s:?}");
    assert!(s.peak_rss_mib > 1.0 && s.kernel_maps_mib > 0.0, "{s:?}");
}

/// Churn and footprint produce rates near what was asked, and the churn
/// ratios are relative to "nothing attached".
#[test]
fn churn_and_footprint_measure_the_collector() {
    let mut b = bench(4);
    let rows = harness::churn(&mut b, &[Setup::Nothing, Setup::TracerSummary]).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].vs_nothing, Some(1.0));
    assert!(rows.iter().all(|r| r.rates.len() == 1 && r.rates[0] > 0.0));

    let f = harness::footprint_step(&mut b, Setup::TracerEvents, Some(1_000.0)).unwrap();
    // Paced at 1000/s for 0.5 s: the generator keeps to the rate.
    assert!(
        f.achieved_conn_s > 800.0 && f.achieved_conn_s < 1_100.0,
        "{f:?}"
    );
    assert!(f.cpu_pct.is_finite() && f.cpu_pct >= 0.0);
    assert!(f.peak_rss_mib > 1.0);

    let s = harness::startup(&mut b).unwrap();
    assert_eq!(s.runs_ms.len(), 1);
    assert!(s.median_ms.unwrap() > 0.0);
}
