//! `tracer-bench`: the full benchmark (run by `cargo xtask bench`). Prints
//! the markdown report and writes it (and the raw numbers as JSON) to disk.

use std::{path::PathBuf, process::ExitCode};

use bench::harness::{self, Config};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "tracer-bench",
    about = "Benchmark the TCP state tracer (needs root)"
)]
struct Args {
    /// The tracer binary to measure.
    #[arg(long)]
    tracer: PathBuf,
    /// An earlier tracer binary to measure beside it (summary mode, in the
    /// churn and kernel phases): before/after figures from one run.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// The load generator (default: `loadgen` next to this binary).
    #[arg(long)]
    loadgen: Option<PathBuf>,
    /// bpftrace binary (default: `bpftrace` on PATH; leave out with --no-bpftrace).
    #[arg(long)]
    bpftrace: Option<PathBuf>,
    #[arg(long)]
    no_bpftrace: bool,
    /// Where to write the markdown report.
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    out: PathBuf,
    /// Tiny counts: checks the harness end to end in seconds.
    #[arg(long)]
    quick: bool,
    /// Interleaved rounds of the churn comparison.
    #[arg(long)]
    rounds: Option<usize>,
    /// Interleaved rounds of the in-kernel cost (two by default: more to
    /// tell apart builds a few per cent apart on a noisy machine).
    #[arg(long)]
    kernel_rounds: Option<usize>,
    /// Sockets to hold open for the memory-at-scale figure (0 skips it).
    #[arg(long)]
    sockets: Option<u64>,
    /// Only these phases (comma-separated: churn, kernel, ceiling, footprint, scale, startup).
    #[arg(long, value_delimiter = ',')]
    phases: Vec<String>,
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn main() -> ExitCode {
    let a = Args::parse();
    let loadgen = a.loadgen.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("loadgen")))
            .unwrap_or_else(|| PathBuf::from("loadgen"))
    });
    let mut cfg = if a.quick {
        Config::quick(a.tracer.clone(), loadgen)
    } else {
        Config::full(a.tracer.clone(), loadgen)
    };
    if !a.no_bpftrace {
        cfg.bpftrace = a.bpftrace.or_else(|| find_on_path("bpftrace"));
    }
    if harness::tracer_has_serve(&a.tracer) {
        cfg.serve = true;
    }
    cfg.baseline = a.baseline;
    if let Some(r) = a.rounds {
        cfg.rounds = r.max(1);
    }
    if let Some(r) = a.kernel_rounds {
        cfg.kernel_rounds = r.max(1);
    }
    cfg.phases = a.phases;
    if let Some(s) = a.sockets {
        cfg.hold_sockets = s;
    }
    let res = match harness::run_all(cfg) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tracer-bench: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let md = bench::markdown::render(&res);
    println!("{md}");
    let write = || -> anyhow::Result<()> {
        if let Some(d) = a.out.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(&a.out, &md)?;
        std::fs::write(
            a.out.with_extension("json"),
            serde_json::to_string_pretty(&res)?,
        )?;
        Ok(())
    };
    if let Err(e) = write() {
        eprintln!("tracer-bench: error: writing {}: {e:#}", a.out.display());
        return ExitCode::FAILURE;
    }
    eprintln!("tracer-bench: wrote {}", a.out.display());
    ExitCode::SUCCESS
}
