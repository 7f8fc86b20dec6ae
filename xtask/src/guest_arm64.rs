//! `cargo xtask guest-arm64`: the static aarch64 binary where an arm64 user
//! would run it: Debian 12's arm64 Linux 6.1 (`linux-image-*-cloud-arm64`)
//! under `qemu-system-aarch64` with software emulation (TCG), with a root
//! filesystem of busybox and the tracer only (no libc). The guest's /init
//! runs `tracer --version`, then `tracer summary --json` on a known loopback
//! workload, and the counts must be exact.
//!
//! The kernel and busybox packages come from Debian's registry through a
//! private apt state for arm64 (target/guest-arm64/apt), so the host's apt
//! configuration stays as it was (no `dpkg --add-architecture`), and are
//! unpacked, never installed. The whole boot takes about a minute of
//! emulation (verifying the program is most of it), so `cargo xtask test`
//! runs it as root.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use super::{dist, output, status};
use crate::live;

const KERNEL_META: &str = "linux-image-cloud-arm64";
const DIAG_MODULES: [&str; 2] = ["inet_diag.ko", "tcp_diag.ko"];
/// Connections the guest workload opens (busybox nc, server closes first).
const CONNECTS: u32 = 20;
const REFUSED: u32 = 5;
const PORT: u16 = 7777;
/// Emulating arm64 on a busy x86 host is slow; the guest powers itself off
/// when done, this only bounds a guest that hangs.
const GUEST_TIMEOUT: Duration = Duration::from_secs(45 * 60);

fn work_dir(root: &Path) -> PathBuf {
    root.join("target/guest-arm64")
}

pub fn run(root: &Path) -> Result<()> {
    super::ensure_tools(&[("qemu-system-aarch64", "qemu-system-arm"), ("cpio", "cpio")])?;
    let dir = work_dir(root);
    let (kernel, modules) = kernel(&dir)?;
    let busybox = busybox(&dir)?;
    let aarch64 = dist::Arch::by_name("aarch64")?;
    let tracer = dist::static_binary(root, aarch64)?;
    let initrd = initramfs(&dir, &busybox, &tracer, &modules)?;
    let console = dir.join("console.log");
    eprintln!(
        "xtask: booting {} under qemu-system-aarch64 (TCG); console in {}",
        kernel.display(),
        console.display()
    );
    let started = Instant::now();
    boot(&kernel, &initrd, &console)?;
    let log = fs::read_to_string(&console)?;
    eprintln!("xtask: guest ran {:.0} s", started.elapsed().as_secs_f64());
    report(&log, &dist::git_commit(root), aarch64)
}

/// apt-get/apt-cache with a private state for arm64 packages.
fn apt(dir: &Path, tool: &str) -> Result<Command> {
    let state = dir.join("apt");
    for d in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(state.join(d))?;
    }
    let mut c = Command::new(tool);
    c.args([
        "-o",
        "APT::Architecture=arm64",
        "-o",
        "APT::Architectures::=arm64",
    ])
    .arg("-o")
    .arg(format!(
        "Dir::State::Lists={}",
        state.join("lists").display()
    ))
    .arg("-o")
    .arg(format!("Dir::Cache={}", state.join("cache").display()))
    .args(["-o", "Dir::State::status=/dev/null"]);
    Ok(c)
}

/// Download `pkg` (arm64) and unpack it into `dest`.
fn fetch(dir: &Path, pkg: &str, dest: &Path) -> Result<()> {
    let debs = dir.join("debs");
    fs::create_dir_all(&debs)?;
    status(
        apt(dir, "apt-get")?
            .current_dir(&debs)
            .args(["download", pkg]),
    )?;
    let deb = fs::read_dir(&debs)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{pkg}_")))
        })
        .with_context(|| format!("{pkg} was not downloaded"))?;
    status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dest))
}

/// The kernel image and the module folder holding the sock_diag modules.
fn kernel(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let unpacked = dir.join("linux");
    if let Some(found) = find_kernel(&unpacked)? {
        return Ok(found);
    }
    status(apt(dir, "apt-get")?.arg("update"))?;
    let deps = output(apt(dir, "apt-cache")?.args(["depends", KERNEL_META]))?;
    let pkg = deps
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-6.1."))
        .with_context(|| format!("{KERNEL_META} depends on no 6.1 kernel: {deps}"))?
        .to_string();
    eprintln!("xtask: fetching {pkg} (arm64)");
    fetch(dir, &pkg, &unpacked)?;
    find_kernel(&unpacked)?.with_context(|| format!("{pkg} has no vmlinuz or diag modules"))
}

fn find_kernel(unpacked: &Path) -> Result<Option<(PathBuf, PathBuf)>> {
    let Ok(entries) = fs::read_dir(unpacked.join("boot")) else {
        return Ok(None);
    };
    for e in entries {
        let name = e?.file_name().to_string_lossy().into_owned();
        if let Some(release) = name.strip_prefix("vmlinuz-") {
            let modules = unpacked
                .join("lib/modules")
                .join(release)
                .join("kernel/net/ipv4");
            if DIAG_MODULES.iter().all(|m| modules.join(m).is_file()) {
                return Ok(Some((unpacked.join("boot").join(&name), modules)));
            }
        }
    }
    Ok(None)
}

fn busybox(dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("busybox/bin/busybox");
    if !bin.is_file() {
        status(apt(dir, "apt-get")?.arg("update"))?;
        fetch(dir, "busybox-static", &dir.join("busybox"))?;
    }
    ensure!(bin.is_file(), "busybox-static has no bin/busybox");
    Ok(bin)
}

/// The guest's /init: mounts, the diag modules, the tracer and the workload,
/// results between `@@` markers on the console, then power off.
fn init_script() -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t cgroup2 cgroup2 /sys/fs/cgroup; mount -t bpf bpf /sys/fs/bpf; mount -t tmpfs tmp /tmp
ip link set lo up
for m in {modules}; do insmod /modules/$m; done
echo "@@ uname $(uname -r -m)"
echo "@@ rootfs $(ls /bin/busybox /tracer /modules/*; ls /lib /usr/lib /lib64 2>&1 | head -3 | tr '\n' ' ')"
echo "@@ version $(/tracer --version 2>&1)"
/tracer summary --json --addr {filter} >/tmp/report.json 2>/tmp/tracer.err &
T=$!
# Until the tracer is attached (verification takes long under emulation) or exits.
while kill -0 $T 2>/dev/null && ! grep -q Aggregating /tmp/tracer.err; do sleep 1; done
if grep -q Aggregating /tmp/tracer.err; then
  echo "@@ attached"
  nc -ll -p {port} -e /bin/true &
  S=$!
  # Until it listens (on :: when the kernel has IPv6, so either table).
  w=0; while ! grep -qs ':{port_hex} [0-9A-F]*:0000 0A' /proc/net/tcp /proc/net/tcp6; do
    w=$((w+1)); [ $w -gt 120 ] && echo "@@ no listener" && break; sleep 1; done
  i=0; while [ $i -lt {connects} ]; do nc {server} {port} </dev/null >/dev/null; i=$((i+1)); done
  i=0; while [ $i -lt {refused} ]; do nc {server} {closed} </dev/null 2>/dev/null; i=$((i+1)); done
  kill -INT $T
  kill $S
fi
wait $T; echo "@@ exit $?"
echo "@@ stderr-begin"; cat /tmp/tracer.err; echo "@@ stderr-end"
echo "@@ report-begin"; cat /tmp/report.json; echo; echo "@@ report-end"
poweroff -f
"#,
        modules = DIAG_MODULES.join(" "),
        filter = live::FILTER,
        server = live::SERVER,
        port = PORT,
        port_hex = format_args!("{PORT:04X}"),
        closed = PORT + 1,
        connects = CONNECTS,
        refused = REFUSED,
    )
}

/// A cpio (newc) initramfs: busybox, the tracer, the two modules, /init.
fn initramfs(dir: &Path, busybox: &Path, tracer: &Path, modules: &Path) -> Result<PathBuf> {
    let tree = dir.join("rootfs");
    let _ = fs::remove_dir_all(&tree);
    for d in ["bin", "modules", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(tree.join(d))?;
    }
    let put = |from: &Path, to: &str, mode: u32| -> Result<()> {
        fs::copy(from, tree.join(to)).with_context(|| format!("copying {}", from.display()))?;
        fs::set_permissions(tree.join(to), fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put(busybox, "bin/busybox", 0o755)?;
    put(tracer, "tracer", 0o755)?;
    for m in DIAG_MODULES {
        put(&modules.join(m), &format!("modules/{m}"), 0o644)?;
    }
    fs::write(tree.join("init"), init_script())?;
    fs::set_permissions(tree.join("init"), fs::Permissions::from_mode(0o755))?;
    let out = dir.join("initrd.cpio");
    status(
        Command::new("sh")
            .current_dir(&tree)
            .arg("-c")
            .arg("find . | sort | cpio --quiet -o -H newc --owner=0:0 > \"$1\"")
            .arg("sh")
            .arg(&out),
    )?;
    Ok(out)
}

fn boot(kernel: &Path, initrd: &Path, console: &Path) -> Result<()> {
    let mut qemu = Command::new("qemu-system-aarch64")
        .args([
            "-M", "virt", "-cpu", "max", "-accel", "tcg", "-m", "2048", "-smp", "1",
        ])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyAMA0 panic=-1 quiet rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(console)?)
        .stderr(fs::File::create(console.with_extension("err"))?)
        .spawn()
        .context("starting qemu-system-aarch64")?;
    let started = Instant::now();
    loop {
        if let Some(s) = qemu.try_wait()? {
            ensure!(
                s.success(),
                "qemu-system-aarch64 exited {s}: {}\nthe console's last lines:\n{}",
                fs::read_to_string(console.with_extension("err")).unwrap_or_default(),
                console_tail(console)
            );
            return Ok(());
        }
        if started.elapsed() > GUEST_TIMEOUT {
            let _ = qemu.kill();
            bail!(
                "the guest did not power off within {GUEST_TIMEOUT:?}; console in {}",
                console.display()
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The console log's last 30 lines, for an error.
fn console_tail(console: &Path) -> String {
    let log = fs::read_to_string(console).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// The text between `@@ NAME-begin` and `@@ NAME-end`.
fn section<'a>(log: &'a str, name: &str) -> Option<&'a str> {
    let start = log.find(&format!("@@ {name}-begin"))?;
    let rest = &log[start..];
    let body = &rest[rest.find('\n')? + 1..];
    Some(body[..body.find(&format!("@@ {name}-end"))?].trim())
}

fn marker<'a>(log: &'a str, name: &str) -> Option<&'a str> {
    log.lines()
        .map(|l| l.trim_end_matches('\r'))
        .find_map(|l| l.strip_prefix(&format!("@@ {name} ")))
}

fn report(log: &str, commit: &str, arch: &dist::Arch) -> Result<()> {
    let uname = marker(log, "uname").context("the guest printed no uname: did /init run?")?;
    println!("guest kernel: {uname}");
    println!("guest rootfs: {}", marker(log, "rootfs").unwrap_or("?"));
    let version = marker(log, "version").unwrap_or("");
    println!("tracer --version in the guest: {version}");
    ensure!(
        version == arch.version_line(commit),
        "the static aarch64 binary did not run: {version:?}"
    );
    let stderr = section(log, "stderr").unwrap_or("").replace('\r', "");
    if !log.contains("@@ attached") {
        bail!("the tracer started in the guest but could not attach:\n{stderr}");
    }
    let json = section(log, "report").unwrap_or("").replace('\r', "");
    live::verify_connects(&json, CONNECTS, REFUSED)?;
    println!(
        "guest check passed: {CONNECTS} connections and {REFUSED} refused connects counted exactly"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_markers_and_sections_parse() {
        let log = "boot noise\r\n@@ uname 6.1.0-57-cloud-arm64 aarch64\r\n@@ stderr-begin\r\nerror: x\r\n@@ stderr-end\r\n";
        assert_eq!(marker(log, "uname"), Some("6.1.0-57-cloud-arm64 aarch64"));
        assert_eq!(section(log, "stderr").map(|s| s.trim()), Some("error: x"));
        assert_eq!(section(log, "report"), None);
    }

    #[test]
    fn init_waits_for_the_listener_it_starts() {
        let s = init_script();
        assert!(s.contains("nc -ll -p 7777"));
        assert!(
            s.contains(":1E61 [0-9A-F]*:0000 0A"),
            "port 7777 in /proc/net/tcp hex"
        );
        assert!(s.contains("--addr 127.231.77.0/24"));
    }
}
