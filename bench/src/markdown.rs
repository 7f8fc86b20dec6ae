//! The benchmark's report: markdown tables (printed and written to
//! docs/BENCHMARKS.md).

use std::fmt::Write as _;

use crate::harness::{CeilingRow, Results};

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".into(), |x| format!("{x:.digits$}"))
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |x| format!("{:.1} %", x * 100.0))
}

fn rate(v: Option<f64>) -> String {
    v.map_or_else(|| "max".into(), |x| format!("{}", x.round() as u64))
}

fn thousands(n: f64) -> String {
    let n = n.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// A target and whether the run met it.
pub struct Verdict {
    pub target: &'static str,
    pub measured: String,
    pub met: Option<bool>,
}

/// The highest transition rate with 0 drops, on the default ring.
pub fn zero_drop_ceiling(rows: &[CeilingRow]) -> Option<f64> {
    rows.iter()
        .filter(|r| r.ring_kib == 4096 && r.dropped == 0)
        .map(|r| r.transitions_per_s)
        .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
}

pub fn verdicts(r: &Results) -> Vec<Verdict> {
    let mut v = Vec::new();
    let churn = |label: &str| r.churn.iter().find(|c| c.setup == label);
    for (label, target) in [
        (
            "tracer summary",
            "churn with the tracer (summary) ≥ 97 % of nothing attached",
        ),
        (
            "tracer serve (exporter)",
            "churn with the exporter ≥ 97 % of nothing attached",
        ),
    ] {
        if let Some(c) = churn(label) {
            v.push(Verdict {
                target,
                measured: format!(
                    "{} by CPU per connection; {} by conn/s",
                    pct(c.cpu_vs_nothing),
                    pct(c.vs_nothing)
                ),
                met: c.cpu_vs_nothing.map(|x| x >= 0.97),
            });
        }
    }
    if let Some(k) = r.kernel.iter().find(|k| k.program == "tracer summary") {
        v.push(Verdict {
            target: "in-kernel ns/transition ≤ 1.5× the empty program",
            measured: k.vs_noop.map_or("–".into(), |x| format!("{x:.2}×")),
            met: k.vs_noop.map(|x| x <= 1.5),
        });
        v.push(Verdict {
            target: "in-kernel ns/transition ≤ 0.5× bpftrace's",
            measured: k.vs_bpftrace.map_or("–".into(), |x| format!("{x:.2}×")),
            met: k.vs_bpftrace.map(|x| x <= 0.5),
        });
    }
    let ceiling = zero_drop_ceiling(&r.ceiling);
    v.push(Verdict {
        target: "0 drops at 200 k transitions/s",
        measured: ceiling.map_or("–".into(), |c| {
            format!("0 drops up to {} transitions/s", thousands(c))
        }),
        met: ceiling.map(|c| c >= 200_000.0),
    });
    if let Some(f) = r
        .footprint
        .iter()
        .find(|f| f.mode == "tracer summary" && f.target_conn_s == Some(10_000.0))
    {
        v.push(Verdict {
            target: "collector ≤ 5 % of a core at 10 k conn/s (summary)",
            measured: format!("{:.2} %", f.cpu_pct),
            met: Some(f.cpu_pct <= 5.0),
        });
    }
    if let Some(f) = r
        .footprint
        .iter()
        .find(|f| f.mode.starts_with("tracer events") && f.target_conn_s.is_none())
    {
        v.push(Verdict {
            target: "collector ≤ 1 µs of CPU per event with --json (events, load at full speed)",
            measured: format!("{:.2} µs", f.cpu_us_per_transition),
            met: Some(f.cpu_us_per_transition <= 1.0),
        });
    }
    if let Some(s) = &r.scale {
        v.push(Verdict {
            target: "collector RSS ≤ 50 MB at 1 M sockets",
            measured: format!(
                "{:.1} MiB at {} sockets",
                s.peak_rss_mib,
                thousands(s.sockets as f64)
            ),
            met: Some(s.peak_rss_mib * 1.048_576 <= 50.0 && s.sockets >= 1_000_000),
        });
    }
    v
}

pub fn render(r: &Results) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(s, "# Benchmarks\n");
    let _ = writeln!(
        s,
        "Made by `cargo xtask bench` on {} in {:.0} s. Machine: Linux {}, {} cores ({}), {:.1} GiB RAM; {}. \
         Load average before/after: {} / {}.\n",
        r.date,
        r.wall_s,
        m.kernel,
        m.cores,
        m.cpu_model,
        m.memory_gib,
        m.bpftrace.as_deref().unwrap_or("bpftrace absent"),
        r.load_avg_before,
        r.load_avg_after
    );
    let others: Vec<&String> = r
        .foreign_programs
        .iter()
        .filter(|n| !n.is_empty())
        .collect();
    if !others.is_empty() {
        let _ = writeln!(
            s,
            "BPF programs loaded by others when the run started (they run on every transition too): {}.\n",
            others.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
        );
    }
    for n in &r.notes {
        let _ = writeln!(s, "- {n}");
    }
    if !r.notes.is_empty() {
        s.push('\n');
    }

    let _ = writeln!(
        s,
        "## Targets\n\n| target | measured | met |\n| --- | --- | --- |"
    );
    for v in verdicts(r) {
        let met = match v.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(s, "| {} | {} | {} |", v.target, v.measured, met);
    }

    let _ = writeln!(
        s,
        "\n## 1. Connection churn\n\nLoopback connections (connect, accept, client closes, server reads EOF and closes: \
         10 transitions each) per second, as fast as two threads go, in a private network namespace; \
         the setups interleaved round by round (rotated order). *vs nothing* is the median over rounds of \
         the run's rate divided by the same round's nothing-attached rate (the machine's speed drifts). \
         *CPU µs/conn* is the load process's own CPU time per connection (loopback TCP and the programs on the \
         tracepoint run in its system calls and softirqs); *by CPU* = nothing's CPU per connection over this \
         setup's, the throughput a CPU-bound host keeps, and robust to other work on the machine.\n\n\
         | setup | conn/s (median) | vs nothing (conn/s) | CPU µs/conn (median) | vs nothing (by CPU) | runs (conn/s) | per-round ratios |\n\
         | --- | ---: | ---: | ---: | ---: | --- | --- |"
    );
    for c in &r.churn {
        let runs: Vec<String> = c.rates.iter().map(|x| thousands(*x)).collect();
        let ratios: Vec<String> = c.ratios.iter().map(|x| format!("{x:.2}")).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            c.setup,
            c.median.map_or("–".into(), thousands),
            pct(c.vs_nothing),
            opt(c.cpu_median, 1),
            pct(c.cpu_vs_nothing),
            runs.join(", "),
            ratios.join(", ")
        );
    }

    let _ = writeln!(
        s,
        "\n## 2. In-kernel cost per transition\n\n`kernel.bpf_stats_enabled=1`; run time / run count of each \
         program on `inet_sock_set_state` under the same churn (invocations include other traffic on the machine). \
         Events mode is `tracer events`, which keeps no flow table (nothing it prints reads one).\n\n\
         | program | ns/run (median) | × noop | × bpftrace | invocations | rounds |\n| --- | ---: | ---: | ---: | ---: | --- |"
    );
    for k in &r.kernel {
        let runs: Vec<String> = k.ns_per_run.iter().map(|x| format!("{x:.0}")).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            k.program,
            opt(k.median, 0),
            opt(k.vs_noop, 2),
            opt(k.vs_bpftrace, 2),
            thousands(k.invocations as f64),
            runs.join(", ")
        );
    }
    verifier_table(&mut s, r);

    let _ = writeln!(
        s,
        "\n## 3. Throughput ceiling\n\n`tracer events --json --addr <load /16>` (stdout to /dev/null), the load paced at \
         each rate. *expected* = 10 × connections the load generator completed; *counted* = the kernel's transition \
         counter; *printed + dropped = counted* shows every event is either delivered or counted as dropped.\n\n\
         | ring KiB | conn/s asked | transitions/s | printed | dropped | counted | expected | exact | accounted |\n\
         | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"
    );
    for c in &r.ceiling {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.ring_kib,
            rate(c.target_conn_s),
            thousands(c.transitions_per_s),
            c.printed,
            c.dropped,
            c.counted,
            c.expected,
            if c.exact { "yes" } else { "**no**" },
            if c.accounted { "yes" } else { "**no**" },
        );
    }

    let _ = writeln!(
        s,
        "\n## 4. Collector footprint\n\nThe tracer process in the load's namespace; CPU = its user+system time over \
         wall time while the load ran (% of one core); peak RSS = `ru_maxrss` over its whole life, including the \
         final report. CPU is counted in clock ticks: 0.00 means no tick in the run (below 1 / (100 Hz × run \
         seconds), under 0.2 %). The exporter is scraped every second. *CPU µs per transition* = that CPU time over \
         the load's transitions (10 per connection): in events mode, the collector's cost per event printed.\n\n\
         | mode | conn/s asked | conn/s achieved | CPU % of a core | CPU µs per transition | peak RSS MiB |\n\
         | --- | ---: | ---: | ---: | ---: | ---: |"
    );
    for f in &r.footprint {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.2} | {:.2} | {:.1} |",
            f.mode,
            rate(f.target_conn_s),
            thousands(f.achieved_conn_s),
            f.cpu_pct,
            f.cpu_us_per_transition,
            f.peak_rss_mib
        );
    }
    if let Some(sc) = &r.scale {
        let _ = writeln!(
            s,
            "\n**Many sockets.** {} sockets open at once (established connections, both ends, held by loadgen \
             processes in a fresh namespace; `tracer summary` attached before they opened). Its report counted {} \
             ESTABLISHED sockets; opening took {:.1} s, the report {:.2} s. Peak RSS of the collector: **{:.1} MiB**. \
             Kernel memory of its maps (memlock): {:.1} MiB; kernel memory charged to the tracer's cgroup while \
             the sockets opened (their entries in the per-socket table), per socket: {}. Sockets that lost their state \
             (seen mid-life at a later transition): {}.",
            thousands(sc.sockets as f64),
            thousands(sc.reported_established as f64),
            sc.open_s,
            sc.report_s,
            sc.peak_rss_mib,
            sc.kernel_maps_mib,
            sc.kernel_bytes_per_socket
                .map_or("– (no memory controller)".into(), |b| format!("**{b:.0} B**")),
            sc.inflight_missing
        );
    }

    let runs: Vec<String> = r
        .startup
        .runs_ms
        .iter()
        .map(|x| format!("{x:.0}"))
        .collect();
    let _ = writeln!(
        s,
        "\n## 5. Start-up\n\nFrom exec of `tracer summary` to its \"Aggregating\" line, printed once the program is \
         loaded and attached and existing listeners are seeded: median **{} ms** (runs: {} ms).",
        opt(r.startup.median_ms, 0),
        runs.join(", ")
    );
    s
}

/// `tracer check`'s figures, before the cost table they bound.
fn verifier_table(s: &mut String, r: &Results) {
    let Some(v) = &r.verifier else { return };
    let modes: Vec<String> = v["modes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let mut line = format!(
                "{} {}",
                m["mode"].as_str().unwrap_or("?"),
                m["verified_insns"]
                    .as_u64()
                    .map_or("rejected".to_string(), |n| format!("{n} instructions"))
            );
            // The listener-side programs, each verified on its own.
            for (key, program) in [
                ("synack_verified_insns", tracer::probe::SYNACK_PROGRAM),
                (
                    "queue_drop_verified_insns",
                    tracer::probe::QUEUE_DROP_PROGRAM,
                ),
            ] {
                if let Some(n) = m[key].as_u64() {
                    line += &format!(" (+ {program} {n})");
                }
            }
            line
        })
        .collect();
    let _ = writeln!(
        s,
        "\nVerifier budget on Linux {} (`tracer check`): {}; stack {} of 512 bytes on the deepest call chain.\n",
        v["kernel"].as_str().unwrap_or("?"),
        modes.join(", "),
        v["stack_bytes"]
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::{ChurnRow, FootprintRow, KernelRow, ScaleRow};

    fn sample() -> Results {
        Results {
            churn: vec![
                ChurnRow {
                    setup: "nothing attached".into(),
                    rates: vec![100.0, 110.0],
                    median: Some(105.0),
                    ratios: vec![1.0, 1.0],
                    vs_nothing: Some(1.0),
                    cpu_us_per_conn: vec![50.0, 50.0],
                    cpu_median: Some(50.0),
                    cpu_vs_nothing: Some(1.0),
                },
                ChurnRow {
                    setup: "tracer summary".into(),
                    rates: vec![100.0],
                    median: Some(100.0),
                    ratios: vec![100.0 / 105.0],
                    vs_nothing: Some(100.0 / 105.0),
                    cpu_us_per_conn: vec![55.0],
                    cpu_median: Some(55.0),
                    cpu_vs_nothing: Some(50.0 / 55.0),
                },
            ],
            kernel: vec![KernelRow {
                program: "tracer summary".into(),
                ns_per_run: vec![300.0],
                median: Some(300.0),
                invocations: 1000,
                connections: 100,
                vs_noop: Some(3.0),
                vs_bpftrace: Some(0.4),
            }],
            ceiling: vec![
                CeilingRow {
                    ring_kib: 4096,
                    transitions_per_s: 150_000.0,
                    dropped: 0,
                    exact: true,
                    accounted: true,
                    ..Default::default()
                },
                CeilingRow {
                    ring_kib: 16,
                    transitions_per_s: 250_000.0,
                    dropped: 5,
                    exact: true,
                    accounted: true,
                    ..Default::default()
                },
            ],
            footprint: vec![FootprintRow {
                mode: "tracer summary".into(),
                target_conn_s: Some(10_000.0),
                achieved_conn_s: 9_990.0,
                cpu_pct: 0.4,
                cpu_us_per_transition: 0.04,
                peak_rss_mib: 9.0,
            }],
            scale: Some(ScaleRow {
                sockets: 1_000_000,
                peak_rss_mib: 60.0,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn verdicts_follow_the_numbers() {
        let v = verdicts(&sample());
        let get = |t: &str| v.iter().find(|v| v.target.contains(t)).unwrap().met;
        assert_eq!(get("97 %"), Some(false)); // 95.2 %
        assert_eq!(get("1.5×"), Some(false));
        assert_eq!(get("0.5×"), Some(true));
        // Only the default ring counts: 150 k < 200 k.
        assert_eq!(get("200 k"), Some(false));
        assert_eq!(get("5 %"), Some(true));
        assert_eq!(get("50 MB"), Some(false));
        assert_eq!(zero_drop_ceiling(&sample().ceiling), Some(150_000.0));
    }

    #[test]
    fn report_has_every_section_and_row() {
        let md = render(&sample());
        for needle in [
            "## Targets",
            "## 1. Connection churn",
            "| tracer summary | 100 | 95.2 % | 55.0 | 90.9 % | 100 | 0.95 |",
            "## 2. In-kernel",
            "## 3. Throughput ceiling",
            "| 16 | max | 250 000 |",
            "## 4. Collector footprint",
            "| tracer summary | 10000 | 9 990 | 0.40 | 0.04 | 9.0 |",
            "1 000 000 sockets",
            "## 5. Start-up",
        ] {
            assert!(md.contains(needle), "missing {needle:?} in\n{md}");
        }
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1_234_567.0), "1 234 567");
    }
}
