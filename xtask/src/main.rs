//! Build, run and test automation: `cargo xtask <verb>`.
//!
//! - `setup`: nightly `rust-src` and a bpf-linker built against nightly's own
//!   LLVM, into target/tools (see ../shared/TOOLCHAIN.md for why).
//! - `build`: setup, then the release binary with the eBPF object embedded.
//! - `run [-- ARGS]`: build, then run the tracer (as root).
//! - `test`: build, unit tests, then the root integration tests one at a time.
//! - `lint`: rustfmt check, and clippy on the host crates and (nightly, BPF
//!   target) the kernel crate.
//! - `guest [--binary PATH] [--kernel RELEASE] [--keep]`: boot Debian 12's
//!   Linux 6.1 under qemu and run the tracer and a known workload in it
//!   (tests/src/guest; the root test tests/tests/guest.rs does the same).
//! - `bench`: build, install bpftrace if absent, run the full benchmark
//!   (bench/, about five minutes) and write docs/BENCHMARKS.md.
//! - `dist`: static (musl) x86_64 + aarch64 binaries, tarballs, .debs and
//!   their checks in target/dist/ (`dist.rs`).
//! - `image`: the container image(s) from `Containerfile` with podman, and
//!   the check of their root filesystem (`image.rs`).
//! - `install`: the static binary, man pages and completions under /usr/local
//!   (`--systemd`: the unit too).
//! - `deb-test`: the .deb installed, run and removed in a fresh debootstrap
//!   root filesystem.
//! - `guest-arm64`: the aarch64 binary in Debian's arm64 Linux 6.1 under
//!   qemu-system-aarch64 (software emulation; `guest_arm64.rs`).
//! - `test --under-load`: `test` three times in a row with stress-ng on
//!   every CPU; `soak`: the fault suite with 50 tries per fault, then a long
//!   run at a fixed connection rate (both outside CI; soak.rs).

mod soak;

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

mod deb_test;
mod dist;
mod guest_arm64;
mod image;
mod install;
mod live;

const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(Parser)]
#[command(name = "xtask", about = "tcp state tracer automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building the eBPF object needs (idempotent).
    Setup,
    /// Build the release binary (target/release/tracer).
    Build,
    /// Build and run the tracer; arguments after `--` go to it (default: live events).
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: unit tests, then root integration tests.
    Test {
        /// Only the tests whose name contains this (passed to both runs).
        filter: Option<String>,
        /// Run the suite `--rounds` times in a row with every CPU busy
        /// (stress-ng, installed from Debian's packages when missing).
        #[arg(long)]
        under_load: bool,
        #[arg(long, default_value_t = 3, requires = "under_load")]
        rounds: u32,
    },
    /// As root, outside CI: the fault suite with 50 tries per fault, then
    /// `tracer summary` under `--rate` conn/s for `--minutes`; prints the
    /// fault table.
    Soak {
        /// Tries per signal and mode in the fault suite.
        #[arg(long, default_value_t = 50)]
        tries: u32,
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        #[arg(long, default_value_t = 5000)]
        rate: u64,
    },
    /// rustfmt --check; clippy --all-targets on the host crates and, with
    /// nightly for the BPF target, on the kernel crate.
    Lint,
    /// Boot Debian 12's Linux 6.1 under qemu (TCG), run the tracer's modes
    /// on a known workload inside, print the results, timings and mismatches.
    Guest {
        /// The tracer binary to test (default: build target/release/tracer).
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Another Debian kernel (`linux-image-RELEASE`) than the newest 6.1.
        #[arg(long)]
        kernel: Option<String>,
        /// Keep the initramfs and print the qemu command that boots it.
        #[arg(long)]
        keep: bool,
    },
    /// Run the benchmark (as root) and write docs/BENCHMARKS.md; arguments
    /// after `--` go to tracer-bench (e.g. `-- --quick`).
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Static release binaries, tarballs and .debs in target/dist/, checked.
    Dist {
        /// Architectures (x86_64, aarch64); default both.
        #[arg(long, value_delimiter = ',')]
        arch: Vec<String>,
    },
    /// Build the container image with podman (after `dist`) and check its
    /// root filesystem; `--push REF` pushes the multi-arch manifest.
    Image {
        /// Architectures (x86_64, aarch64); default both.
        #[arg(long, value_delimiter = ',')]
        arch: Vec<String>,
        /// Where to push, e.g. docker://registry.example/tcp-tracer:0.1.0.
        #[arg(long)]
        push: Option<String>,
    },
    /// Install the static binary, man pages and completions (as root).
    Install {
        /// Installation prefix.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Stage below this directory instead of / (packaging, tests).
        #[arg(long)]
        destdir: Option<PathBuf>,
        /// Also install the systemd unit into /etc/systemd/system.
        #[arg(long)]
        systemd: bool,
    },
    /// Install the host's .deb in a fresh Debian root filesystem
    /// (debootstrap), run it, remove it (as root).
    DebTest,
    /// Run the aarch64 static binary in Debian's arm64 Linux 6.1 under
    /// qemu-system-aarch64 (software emulation, several minutes).
    GuestArm64,
    /// Run a static binary on this host through the exact-count check.
    LiveCheck {
        /// The binary (default: target/dist/linux-<host>/tracer).
        binary: Option<PathBuf>,
    },
    /// The live check's workload (run inside its network namespace).
    #[command(hide = true)]
    LiveLoad {
        #[arg(long)]
        connects: u32,
        #[arg(long)]
        refused: u32,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let root = workspace_root()?;
    match cli.cmd {
        Cmd::Setup => setup(&root),
        Cmd::Build => build(&root),
        Cmd::Run { args } => {
            build(&root)?;
            let bin = root.join("target/release/tracer");
            let mut cmd = if is_root() {
                Command::new(&bin)
            } else {
                eprintln!("xtask: not root; running the tracer through sudo");
                let mut c = Command::new("sudo");
                c.arg("-E").arg(&bin);
                c
            };
            status(cmd.args(&args))
        }
        Cmd::Test {
            filter,
            under_load: false,
            ..
        } => test(&root, filter.as_deref()),
        Cmd::Test { filter, rounds, .. } => {
            soak::under_load(rounds, || test(&root, filter.as_deref()))
        }
        Cmd::Soak {
            tries,
            minutes,
            rate,
        } => {
            if !is_root() {
                bail!(
                    "the soak loads eBPF programs and creates network namespaces: run it as root"
                );
            }
            build(&root)?;
            status(cargo(&root).args(["build", "--release", "--package", "bench", "--bins"]))?;
            soak::soak(&root, cargo(&root), tries, minutes, rate)
        }
        Cmd::Bench { args } => bench(&root, &args),
        Cmd::Dist { arch } => dist::dist(&root, &arches(&arch)?).map(drop),
        Cmd::Image { arch, push } => image::image(&root, &arches(&arch)?, push.as_deref()),
        Cmd::Install {
            prefix,
            destdir,
            systemd,
        } => install::install(&root, &prefix, destdir.as_deref(), systemd),
        Cmd::GuestArm64 => guest_arm64::run(&root),
        Cmd::DebTest => deb_test::run(&root),
        Cmd::LiveCheck { binary } => {
            let bin = match binary {
                Some(b) => b,
                None => dist::static_binary(&root, dist::Arch::host()?)?,
            };
            live::check(&bin)
        }
        Cmd::LiveLoad { connects, refused } => live::load(connects, refused),
        Cmd::Guest {
            binary,
            kernel,
            keep,
        } => guest(&root, binary, kernel, keep),
        Cmd::Lint => {
            status(cargo(&root).args(["fmt", "--all", "--", "--check"]))?;
            status(cargo(&root).args([
                "clippy",
                "--workspace",
                "--exclude",
                "tracer-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))?;
            // The kernel crate builds only for the BPF target, with nightly.
            status(
                Command::new("cargo")
                    .current_dir(root.join("tracer-ebpf"))
                    .args(["+nightly", "clippy", "--target", "bpfel-unknown-none"])
                    .args(["-Z", "build-std=core", "--release", "--", "-D", "warnings"]),
            )
        }
    }
}

/// `--arch` values, default every architecture the release is built for.
fn arches(names: &[String]) -> Result<Vec<&'static dist::Arch>> {
    if names.is_empty() {
        return Ok(dist::ARCHES.iter().collect());
    }
    names.iter().map(|n| dist::Arch::by_name(n)).collect()
}

/// Install from Debian's packages the `(binary, package)` pairs whose
/// binary is missing (`binary --version` fails to run).
pub fn ensure_tools(tools: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(bin, _)| Command::new(bin).arg("--version").output().is_err())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {missing:?} (apt-get)");
    status(Command::new("apt-get").arg("update"))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// bpftrace's classic tracepoints need tracefs, which a fresh machine lacks.
fn ensure_tracefs() -> Result<()> {
    if Path::new("/sys/kernel/tracing/events").exists() {
        return Ok(());
    }
    eprintln!("xtask: mounting tracefs at /sys/kernel/tracing (bpftrace's tracepoints need it)");
    status(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))
}

fn bench(root: &Path, args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the benchmark loads eBPF programs and creates network namespaces: run it as root");
    }
    build(root)?;
    status(cargo(root).args(["build", "--release", "--package", "bench", "--bins"]))?;
    let no_bpftrace = args.iter().any(|a| a == "--no-bpftrace");
    if !no_bpftrace {
        ensure_tools(&[("bpftrace", "bpftrace")])?;
        ensure_tracefs()?;
    }
    let release = root.join("target/release");
    let mut cmd = Command::new(release.join("tracer-bench"));
    cmd.current_dir(root)
        .arg("--tracer")
        .arg(release.join("tracer"))
        .arg("--loadgen")
        .arg(release.join("loadgen"));
    if !args.iter().any(|a| a == "--out") {
        cmd.args(["--out", "docs/BENCHMARKS.md"]);
    }
    status(cmd.args(args))
}

fn guest(root: &Path, binary: Option<PathBuf>, kernel: Option<String>, keep: bool) -> Result<()> {
    let binary = match binary {
        Some(b) => b,
        None => {
            build(root)?;
            root.join("target/release/tracer")
        }
    };
    status(cargo(root).args([
        "build",
        "--release",
        "--package",
        "integration-tests",
        "--bin",
        "tracer-guest",
    ]))?;
    let mut cmd = Command::new(root.join("target/release/tracer-guest"));
    cmd.arg("--binary").arg(binary);
    if let Some(k) = kernel {
        cmd.arg("--kernel").arg(k);
    }
    if keep {
        cmd.arg("--keep");
    }
    status(&mut cmd)
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("xtask has a parent")?
        .to_path_buf())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn tools_bin(root: &Path) -> PathBuf {
    root.join("target/tools/bin")
}

/// PATH with the project's tools first.
fn tool_path(root: &Path) -> Result<OsString> {
    let mut dirs = vec![tools_bin(root)];
    dirs.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    Ok(env::join_paths(dirs)?)
}

fn cargo(root: &Path) -> Command {
    let mut c = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(root);
    if let Ok(p) = tool_path(root) {
        c.env("PATH", p);
    }
    c
}

fn status(cmd: &mut Command) -> Result<()> {
    let s = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !s.success() {
        bail!("{cmd:?} failed: {s}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let o = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !o.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn setup(root: &Path) -> Result<()> {
    // Nightly is what the image ships; its rust-src is needed by -Z build-std=core.
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("the `nightly` rustup toolchain is required to build the eBPF object")?;
    let sysroot = PathBuf::from(sysroot.trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        eprintln!("xtask: installing rust-src for nightly");
        status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    let linker = tools_bin(root).join("bpf-linker");
    // Rebuild when nightly's LLVM changed underneath a previous build.
    let lib = sysroot.join("lib");
    let llvm_so = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM-") && n.contains("-rust-") && n.ends_with(".so"))
        .context("nightly ships no libLLVM-*-rust-*.so")?;
    let stamp = tools_bin(root).join(".bpf-linker-llvm");
    if linker.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(&llvm_so) {
        return Ok(());
    }
    let llvm_lib = llvm_so.trim_start_matches("lib").trim_end_matches(".so");
    let version = output(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV has no LLVM version")?
        .to_string();
    eprintln!("xtask: building bpf-linker {BPF_LINKER_VERSION} against nightly's {llvm_so} (about a minute)");
    let rustflags = format!(
        "-L native={l} -l dylib={llvm_lib} -C link-arg=-Wl,-rpath,{l}",
        l = lib.display()
    );
    status(
        Command::new("cargo")
            .current_dir(root)
            .env("RUSTFLAGS", rustflags)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major},no-llvm-linking"))
            .arg("--root")
            .arg(root.join("target/tools")),
    )?;
    std::fs::write(stamp, &llvm_so)?;
    Ok(())
}

fn build(root: &Path) -> Result<()> {
    setup(root)?;
    status(cargo(root).args([
        "build",
        "--release",
        "--package",
        "tracer",
        "--bin",
        "tracer",
    ]))?;
    // The build script writes an empty object when it could not build one.
    Ok(())
}

/// Run a `cargo test`, streaming its output, and add its `test result:`
/// lines to `tally` (passed, failed).
fn run_tests(cmd: &mut Command, tally: &mut (u64, u64)) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let stdout = child.stdout.take().context("piped stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let num = |word: &str| {
                rest.split(';')
                    .find_map(|part| {
                        part.trim()
                            .trim_start_matches("ok. ")
                            .trim_start_matches("FAILED. ")
                            .strip_suffix(word)
                    })
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            tally.0 += num(" passed");
            tally.1 += num(" failed");
        }
    }
    let s = child.wait()?;
    if !s.success() {
        bail!("{cmd:?} failed: {s}");
    }
    Ok(())
}

fn test(root: &Path, filter: Option<&str>) -> Result<()> {
    build(root)?;
    // The benchmark harness's tests drive the real load generator binary.
    status(cargo(root).args(["build", "--release", "--package", "bench", "--bins"]))?;
    let mut failures = Vec::new();
    let mut tally = (0u64, 0u64);

    let mut unit = cargo(root);
    unit.args([
        "test",
        "--release",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--exclude",
        "integration-tests",
        "--lib",
        "--bins",
        "--tests",
    ]);
    if let Some(f) = filter {
        unit.arg(f);
    }
    if let Err(e) = run_tests(&mut unit, &mut tally) {
        failures.push(format!("unit tests: {e:#}"));
    }

    // The release artifacts: static binaries, tarballs, .debs, checksums;
    // as root, the host's static binary also runs the live exact-count check.
    if filter.is_none_or(|f| "dist".contains(f)) {
        // As root: the live check of the host's static binary, and the
        // aarch64 one in the arm64 6.1 guest (about a minute of emulation).
        let dist_result = dist::dist(root, &arches(&[])?).and_then(|_| {
            if is_root() {
                live::check(&dist::Arch::host()?.binary(root))?;
                guest_arm64::run(root)?;
            }
            Ok(())
        });
        match dist_result {
            Ok(()) => tally.0 += 1,
            Err(e) => {
                tally.1 += 1;
                failures.push(format!("dist: {e:#}"));
            }
        }
    }

    if !is_root() {
        failures.push(
            "integration tests need root (they load eBPF programs and create network namespaces): \
             run `sudo -E cargo xtask test`"
                .into(),
        );
    } else {
        let mut it = cargo(root);
        it.args([
            "test",
            "--release",
            "--package",
            "integration-tests",
            "--tests",
            // Every test binary runs, so one failure does not hide the rest.
            "--no-fail-fast",
            "--",
        ])
        .arg("--test-threads=1");
        if let Some(f) = filter {
            it.arg(f);
        }
        // The 6.1 guest runs the static binary, as a host without our libc would.
        let static_bin = dist::Arch::host()?.binary(root);
        if static_bin.is_file() {
            it.env("TRACER_GUEST_BINARY", &static_bin);
        }
        if let Err(e) = run_tests(&mut it, &mut tally) {
            failures.push(format!("integration tests: {e:#}"));
        }
    }
    println!("tests: {} passed, {} failed", tally.0, tally.1);
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{}", failures.join("\n"))
    }
}
