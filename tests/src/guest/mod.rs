//! Boot a second kernel — Debian 12's Linux 6.1, what LTS production hosts
//! run — under qemu, with the tracer and a known workload in an initramfs,
//! and read the results back from the serial console.
//!
//! Software emulation only (`-accel tcg -cpu max`): nested KVM fails on the
//! machines this runs on. The guest has busybox, the tracer binary (plus
//! every library `ldd` lists, none for a static build), the sock_diag
//! modules and a generated /init ([`script`]). Nothing goes over a network:
//! the guest has no NIC, all traffic is on its own loopback.

pub mod check;
pub mod cpio;
pub mod script;
pub mod setup;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

pub use script::{Run, Workload};

/// How to boot.
#[derive(Clone, Debug)]
pub struct Options {
    /// The tracer binary to run in the guest.
    pub tracer: PathBuf,
    /// Where the initramfs and the console log go.
    pub work: PathBuf,
    /// Where downloaded packages are unpacked (kept between runs).
    pub cache: PathBuf,
    /// A kernel release other than the newest 6.1 (`uname -r` of a Debian
    /// `linux-image-RELEASE` package, e.g. 6.12.117+deb12-cloud-amd64).
    pub kernel: Option<String>,
    pub workload: Workload,
    pub runs: Vec<Run>,
    /// qemu is killed after this long.
    pub timeout: Duration,
    /// How long the guest waits for every program to load and attach.
    pub ready_timeout: Duration,
    /// Copy the console to stderr as it arrives.
    pub echo: bool,
    pub cpus: u32,
    pub memory_mib: u32,
}

impl Options {
    /// The defaults for `tracer`, with work and cache folders under
    /// `target` (e.g. the workspace's target/).
    pub fn new(tracer: PathBuf, target: &Path) -> Self {
        Options {
            tracer,
            work: target.join("guest/work"),
            cache: target.join("guest/cache"),
            kernel: None,
            workload: Workload::default(),
            runs: script::runs(),
            timeout: Duration::from_secs(480),
            ready_timeout: Duration::from_secs(300),
            echo: false,
            cpus: 2,
            memory_mib: 2048,
        }
    }
}

/// One boot's console, split into the sections /init printed.
#[derive(Clone, Debug)]
pub struct Boot {
    pub kernel: setup::Kernel,
    pub console: String,
    pub sections: BTreeMap<String, String>,
    /// /init printed its last line (then powered off).
    pub completed: bool,
    pub timed_out: bool,
    /// From starting qemu to its exit.
    pub elapsed: Duration,
    pub initramfs_bytes: u64,
}

impl Boot {
    pub fn section(&self, name: &str) -> Option<&str> {
        self.sections.get(name).map(String::as_str)
    }

    /// The last `n` lines of the console (for failure messages).
    pub fn tail(&self, n: usize) -> String {
        tail(&self.console, n)
    }
}

/// Everything the boot needs, found or installed, then the boot itself.
pub fn boot(opts: &Options) -> Result<Boot> {
    let kernel = setup::kernel(&opts.cache, opts.kernel.as_deref())?;
    let busybox = setup::busybox(&opts.cache)?;
    let qemu = setup::qemu()?;
    std::fs::create_dir_all(&opts.work)?;
    let initrd = opts.work.join("initramfs.cpio");
    let image = initramfs(opts, &kernel, &busybox)?;
    std::fs::write(&initrd, &image).with_context(|| format!("writing {}", initrd.display()))?;
    let log = opts.work.join("console.log");
    let (console, timed_out, elapsed) = run_qemu(opts, &qemu, &kernel, &initrd, &log)?;
    let sections = sections(&console);
    Ok(Boot {
        kernel,
        completed: console.lines().any(|l| l == script::DONE),
        sections,
        console,
        timed_out,
        elapsed,
        initramfs_bytes: image.len() as u64,
    })
}

/// The initramfs: busybox, /init, the tracer and its libraries, the
/// diag modules, /dev/console.
pub fn initramfs(opts: &Options, kernel: &setup::Kernel, busybox: &Path) -> Result<Vec<u8>> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut c = cpio::Cpio::new();
    for d in ["proc", "sys", "dev", "tmp", "out", "usr/bin"] {
        c.dir(d);
    }
    c.char_dev("dev/console", 0o600, 5, 1);
    c.file("bin/busybox", 0o755, &read(busybox)?);
    c.symlink("bin/sh", "busybox");
    let secs = opts.ready_timeout.as_secs();
    c.file(
        "init",
        0o755,
        script::init(&opts.workload, &opts.runs, secs).as_bytes(),
    );
    c.file(script::TRACER_PATH, 0o755, &read(&opts.tracer)?);
    for lib in setup::shared_libs(&opts.tracer)? {
        let at = lib.to_string_lossy().into_owned();
        if !c.contains(&at) {
            // Follows symlinks: the file the loader will open, at its path.
            c.file(&at, 0o755, &read(&lib)?);
        }
    }
    for (name, m) in setup::DIAG_MODULES.iter().zip(kernel.diag_modules()) {
        let at = format!("{}/{name}", script::MODULES_DIR);
        c.file(&at, 0o644, &setup::Kernel::read_module(&m)?);
    }
    Ok(c.finish())
}

/// qemu's arguments: TCG (nested KVM fails here), no display, no NIC, the
/// serial console on stdout, no reboot (poweroff or a panic ends qemu).
pub fn qemu_args(opts: &Options, kernel: &setup::Kernel, initrd: &Path) -> Vec<String> {
    let mut a: Vec<String> = [
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-display",
        "none",
        "-no-reboot",
        "-nic",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(["-m".into(), opts.memory_mib.to_string()]);
    a.extend(["-smp".into(), opts.cpus.to_string()]);
    a.extend(["-kernel".into(), kernel.vmlinuz.display().to_string()]);
    a.extend(["-initrd".into(), initrd.display().to_string()]);
    a.extend(["-append".into(), "console=ttyS0 panic=-1 quiet".into()]);
    a
}

/// The command that boots the kept initramfs again, for a shell.
pub fn qemu_command_line(opts: &Options, kernel: &setup::Kernel) -> String {
    let initrd = opts.work.join("initramfs.cpio");
    let mut line = String::from("qemu-system-x86_64");
    for a in qemu_args(opts, kernel, &initrd) {
        if a.contains(' ') {
            line.push_str(&format!(" '{a}'"));
        } else {
            line.push(' ');
            line.push_str(&a);
        }
    }
    line
}

/// Run qemu until it exits or `opts.timeout`; returns the console (without
/// carriage returns), whether it was killed, and how long it ran.
fn run_qemu(
    opts: &Options,
    qemu: &Path,
    kernel: &setup::Kernel,
    initrd: &Path,
    log: &Path,
) -> Result<(String, bool, Duration)> {
    let mut cmd = Command::new(qemu);
    cmd.args(qemu_args(opts, kernel, initrd))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().context("qemu stdout")?;
    let err = child.stderr.take().context("qemu stderr")?;
    let tx2 = tx.clone();
    std::thread::spawn(move || forward(out, tx));
    std::thread::spawn(move || forward(err, tx2));
    let mut file = std::fs::File::create(log)?;
    let mut console = String::new();
    let deadline = started + opts.timeout;
    let mut timed_out = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(line) => {
                let line = line.trim_end_matches('\r');
                if opts.echo {
                    eprintln!("{line}");
                }
                writeln!(file, "{line}")?;
                console.push_str(line);
                console.push('\n');
            }
            // Both pipes closed: qemu exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                let _ = child.kill();
                break;
            }
        }
    }
    let status = child.wait()?;
    if !timed_out && !status.success() {
        bail!(
            "qemu exited with {status}; console:\n{}",
            tail(&console, 40)
        );
    }
    Ok((console, timed_out, started.elapsed()))
}

/// Lines of a pipe into the channel (lossy UTF-8: a console may carry junk).
fn forward(pipe: impl std::io::Read, tx: mpsc::Sender<String>) {
    let mut r = BufReader::new(pipe);
    let mut buf = Vec::new();
    while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
        let line = String::from_utf8_lossy(&buf);
        if tx.send(line.trim_end_matches('\n').to_string()).is_err() {
            return;
        }
        buf.clear();
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The text between `@@@BEGIN name` and `@@@END name` lines.
pub fn sections(console: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut open: Option<(String, String)> = None;
    for line in console.lines() {
        if let Some(name) = line.strip_prefix(script::BEGIN) {
            open = Some((name.trim().to_string(), String::new()));
        } else if let Some(name) = line.strip_prefix(script::END) {
            if let Some((n, body)) = open.take() {
                if n == name.trim() {
                    out.insert(n, body.trim_end_matches('\n').to_string());
                }
            }
        } else if let Some((_, body)) = open.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_split_at_markers_and_unterminated_ones_dropped() {
        let console = "boot noise\n@@@BEGIN a\none\ntwo\n\n@@@END a\n\
                       @@@BEGIN b\n{}\n@@@END b\n@@@BEGIN cut\npartial\n";
        let s = sections(console);
        assert_eq!(s["a"], "one\ntwo");
        assert_eq!(s["b"], "{}");
        assert!(!s.contains_key("cut"));
    }
}
