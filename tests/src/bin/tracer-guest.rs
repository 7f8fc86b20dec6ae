//! `cargo xtask guest`: boot Debian 12's Linux 6.1 under qemu, run the
//! tracer and the known workload in it, print what happened.
//!
//! Usage: tracer-guest [--binary PATH] [--kernel RELEASE] [--keep] [--quiet]
//!   --binary  the tracer to test (default: target/release/tracer)
//!   --kernel  another Debian kernel (`linux-image-RELEASE`) than the newest 6.1
//!   --keep    keep target/guest/work (initramfs, console.log) and print
//!             the qemu command that boots it again
//!   --quiet   do not copy the console to stderr while it runs

use std::{path::PathBuf, process::ExitCode};

use integration_tests::guest::{self, check};

fn main() -> ExitCode {
    let mut binary = None;
    let mut kernel = None;
    let (mut keep, mut quiet) = (false, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--binary" => binary = args.next().map(PathBuf::from),
            "--kernel" => kernel = args.next(),
            "--keep" => keep = true,
            "--quiet" => quiet = true,
            _ => {
                eprintln!(
                    "usage: tracer-guest [--binary PATH] [--kernel RELEASE] [--keep] [--quiet]"
                );
                return ExitCode::from(2);
            }
        }
    }
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let binary = binary.unwrap_or_else(|| target.join("release/tracer"));
    if !binary.is_file() {
        eprintln!("tracer-guest: {} is not a file", binary.display());
        return ExitCode::from(2);
    }
    let mut opts = guest::Options::new(binary, &target);
    opts.echo = !quiet;
    opts.kernel = kernel;
    let boot = match guest::boot(&opts) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("tracer-guest: error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    for run in &opts.runs {
        for part in ["err", "out"] {
            let name = format!("{}.{part}", run.name);
            let text = boot.section(&name).unwrap_or("");
            println!("--- {name} ({} bytes, last 40 lines)", text.len());
            let lines: Vec<&str> = text.lines().collect();
            println!("{}", lines[lines.len().saturating_sub(40)..].join("\n"));
        }
    }
    println!("--- timings\n{}", check::timings(&boot));
    let findings = check::check(&boot, &opts.workload);
    println!("console: {}", opts.work.join("console.log").display());
    if keep {
        println!(
            "initramfs kept: {}",
            opts.work.join("initramfs.cpio").display()
        );
        println!(
            "boot it again: {}",
            guest::qemu_command_line(&opts, &boot.kernel)
        );
    } else {
        let _ = std::fs::remove_file(opts.work.join("initramfs.cpio"));
    }
    for n in &findings.notes {
        println!("note: {n}");
    }
    if findings.failures.is_empty() {
        println!("guest: every count matched ({:?})", opts.workload);
        ExitCode::SUCCESS
    } else {
        println!("guest: {} mismatches:", findings.failures.len());
        for f in &findings.failures {
            println!("  - {f}");
        }
        ExitCode::FAILURE
    }
}
