//! Processes under measurement: start, wait until they say they are ready,
//! sample CPU time, stop with SIGINT, and collect their output and peak RSS
//! (from wait4's rusage, so it covers the very end of the run too).

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

pub struct Running {
    child: Child,
    pub pid: u32,
    /// From spawn() to the readiness line.
    pub startup: Duration,
    stdout: Option<std::thread::JoinHandle<String>>,
    stderr: Option<std::thread::JoinHandle<String>>,
    reaped: bool,
}

impl Drop for Running {
    /// A run abandoned on an error path: do not leave the process behind.
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Debug, Default)]
pub struct Finished {
    pub stdout: String,
    pub stderr: String,
    /// Peak resident set size over the whole life of the process, KiB.
    pub max_rss_kib: u64,
    /// User + system CPU time over the whole life, seconds.
    pub cpu_s: f64,
    pub exit_code: Option<i32>,
}

/// Which stream says "ready".
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ReadyOn {
    Stdout,
    Stderr,
}

/// Spawn `cmd` and wait until a line of `on` contains `ready`. With
/// `keep_stdout` false, stdout goes to /dev/null (event streams).
pub fn start(
    mut cmd: Command,
    on: ReadyOn,
    ready: &str,
    keep_stdout: bool,
    timeout: Duration,
) -> Result<Running> {
    cmd.stdin(Stdio::null()).stderr(Stdio::piped());
    if keep_stdout || on == ReadyOn::Stdout {
        cmd.stdout(Stdio::piped());
    } else {
        cmd.stdout(Stdio::null());
    }
    let t0 = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel::<()>();
    let reader =
        |stream: Box<dyn Read + Send>, watch: bool, tx: mpsc::Sender<()>, ready: String| {
            std::thread::spawn(move || {
                let mut all = String::new();
                let mut signalled = !watch;
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if !signalled && line.contains(&ready) {
                        let _ = tx.send(());
                        signalled = true;
                    }
                    all.push_str(&line);
                    all.push('\n');
                }
                all
            })
        };
    let stderr = reader(
        Box::new(child.stderr.take().context("stderr")?),
        on == ReadyOn::Stderr,
        tx.clone(),
        ready.to_string(),
    );
    let stdout = child.stdout.take().map(|s| {
        reader(
            Box::new(s),
            on == ReadyOn::Stdout,
            tx.clone(),
            ready.to_string(),
        )
    });
    drop(tx);
    let mut running = Running {
        child,
        pid,
        startup: Duration::ZERO,
        stdout,
        stderr: Some(stderr),
        reaped: false,
    };
    match rx.recv_timeout(timeout) {
        Ok(()) => {
            running.startup = t0.elapsed();
            Ok(running)
        }
        Err(_) => {
            let f = running.stop()?;
            bail!(
                "{cmd:?} did not print {ready:?} within {timeout:?}; stderr:\n{}",
                f.stderr
            )
        }
    }
}

impl Running {
    pub fn cpu_ticks(&self) -> Result<u64> {
        crate::sys::cpu_ticks(self.pid)
    }

    /// SIGINT (the tools' Ctrl-C: report and exit), then reap with rusage.
    pub fn stop(mut self) -> Result<Finished> {
        // SAFETY: signalling our own child, not yet reaped.
        unsafe { libc::kill(self.pid as i32, libc::SIGINT) };
        let mut status: libc::c_int = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // Give it 60 s to report (a summary over a million sockets), then kill.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // SAFETY: wait4 on our own child's pid, writing into locals.
            let r = unsafe { libc::wait4(self.pid as i32, &mut status, libc::WNOHANG, &mut ru) };
            if r == self.pid as i32 {
                self.reaped = true;
                break;
            }
            if r < 0 {
                return Err(std::io::Error::last_os_error()).context("wait4");
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Ok(Finished {
            stdout,
            stderr,
            max_rss_kib: ru.ru_maxrss as u64,
            cpu_s: tv(ru.ru_utime) + tv(ru.ru_stime),
            exit_code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        })
    }
}
