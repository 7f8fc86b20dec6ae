//! The tracer on another kernel: Debian 12's Linux 6.1 (what LTS production
//! hosts run), booted under qemu (TCG). One boot runs `tracer summary
//! --json`, `tracer events --json --rport 7001` and `tracer serve --addr
//! ::1/128` around a busybox nc workload with known counts, and every count
//! is compared with the workload and with the guest kernel's own counters
//! (/proc/net/snmp deltas, TIME_WAIT sockets in /proc/net/tcp*).
//!
//! Installs what it lacks (qemu-system-x86; the kernel and busybox-static
//! packages are downloaded into target/guest/cache). Takes a few minutes:
//! each program load is ~20 s or more of verifier time under emulation.
//! `TRACER_SKIP_GUEST=1` skips it (and says so); `TRACER_GUEST_BINARY=PATH`
//! tests another build of the tracer (e.g. a static one);
//! `TRACER_GUEST_KERNEL=RELEASE` boots another Debian kernel package.

use std::path::PathBuf;

use integration_tests::{
    guest::{self, check},
    tracer_bin,
};

#[test]
fn linux_6_1_guest_loads_attaches_and_counts_exactly() {
    if std::env::var_os("TRACER_SKIP_GUEST").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED: the Linux 6.1 guest test (TRACER_SKIP_GUEST=1)");
        return;
    }
    let binary = std::env::var_os("TRACER_GUEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(tracer_bin);
    let target = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target");
    let mut opts = guest::Options::new(binary, &target);
    opts.kernel = std::env::var("TRACER_GUEST_KERNEL").ok();
    let boot = guest::boot(&opts).expect("booting the 6.1 guest");
    let timings = check::timings(&boot);
    eprintln!("{timings}");
    let findings = check::check(&boot, &opts.workload);
    assert!(
        findings.failures.is_empty(),
        "{} mismatches on {} ({:?}):\n- {}\n\nnotes: {:?}\n{timings}\nconsole (full log: {}), last lines:\n{}",
        findings.failures.len(),
        boot.kernel.release,
        opts.workload,
        findings.failures.join("\n- "),
        findings.notes,
        opts.work.join("console.log").display(),
        boot.tail(60),
    );
    let _ = std::fs::remove_file(opts.work.join("initramfs.cpio"));
}
