//! `cargo xtask test --under-load` (the suite with every CPU busy) and
//! `cargo xtask soak` (the fault suite with 50 tries per fault, then a long
//! run at a fixed connection rate): outside CI, as root.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

/// stress-ng keeping every CPU busy until dropped.
pub struct Stress(Child);

impl Stress {
    pub fn start() -> Result<Stress> {
        super::ensure_tools(&[("stress-ng", "stress-ng")])?;
        let child = Command::new("stress-ng")
            .args(["--cpu", "0", "--quiet"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting stress-ng")?;
        Ok(Stress(child))
    }
}

impl Drop for Stress {
    fn drop(&mut self) {
        // SIGTERM to our own child: stress-ng stops its workers on it.
        // SAFETY: kill() on a pid we spawned; no memory involved.
        unsafe { libc_kill(self.0.id() as i32, 15) };
        let _ = self.0.wait();
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// Run `suite` `rounds` times in a row with stress-ng on every CPU.
pub fn under_load(rounds: u32, mut suite: impl FnMut() -> Result<()>) -> Result<()> {
    let _stress = Stress::start()?;
    for r in 1..=rounds {
        eprintln!("xtask: round {r} of {rounds} under load (stress-ng --cpu 0)");
        suite().with_context(|| format!("round {r} of {rounds} under load"))?;
    }
    eprintln!("xtask: {rounds} rounds under load passed");
    Ok(())
}

/// The fault suite with `tries` per fault, and the recording suite (its
/// damaged-file checks are rows of the table); returns the table rows.
fn faults(root: &Path, cargo: &mut Command, tries: u32) -> Result<Vec<String>> {
    let out = cargo
        .current_dir(root)
        .args(["test", "--release", "--package", "integration-tests"])
        .args(["--test", "faults", "--test", "record"])
        .args(["--", "--test-threads=1", "--nocapture"])
        .env("FAULT_TRIES", tries.to_string())
        .stderr(Stdio::inherit())
        .output()
        .context("running the fault suite")?;
    let text = String::from_utf8_lossy(&out.stdout);
    print!("{text}");
    if !out.status.success() {
        bail!("the fault suite failed");
    }
    Ok(text
        .lines()
        .filter_map(|l| l.find("FAULT | ").map(|i| l[i + 8..].to_string()))
        .collect())
}

/// Resident set (KiB) and CPU time (clock ticks) of `pid`.
fn usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks))
}

fn netns(ns: &str, bin: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(bin);
    c
}

/// `tracer summary` in a private namespace while loadgen makes `rate`
/// connections a second for `minutes`; RSS and CPU sampled every minute,
/// counts checked against the generator's at the end. Table rows.
fn long_run(root: &Path, minutes: u64, rate: u64) -> Result<Vec<String>> {
    let release = root.join("target/release");
    let ns = format!("serve-soak{}", std::process::id());
    let ip = |args: &[&str]| super::status(Command::new("ip").args(args));
    ip(&["netns", "add", &ns])?;
    let _cleanup = NsGuard(ns.clone());
    ip(&["-n", &ns, "link", "set", "lo", "up"])?;
    let mut tracer = netns(&ns, &release.join("tracer"))
        .args(["summary", "--json", "--addr", "127.250.0.0/16"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("tracer")?;
    wait_line(&mut tracer, "Aggregating")?;
    let pid = tracer.id();
    let load = netns(&ns, &release.join("loadgen"))
        .args(["--net", "250", "--rate", &rate.to_string()])
        .args(["--seconds", &(minutes * 60).to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("loadgen")?;
    let mut samples = Vec::new();
    let start = Instant::now();
    if minutes == 0 {
        bail!("--minutes must be at least 1");
    }
    let mut last = usage(pid).context("tracer gone")?;
    for m in 1..=minutes {
        let until = Duration::from_secs(60 * m);
        std::thread::sleep(until.saturating_sub(start.elapsed()));
        let now = usage(pid).context("tracer died during the soak")?;
        let cpu_pct = (now.1 - last.1) as f64 / 100.0 / 60.0 * 100.0;
        println!("soak minute {m}: RSS {} KiB, CPU {cpu_pct:.1} %", now.0);
        samples.push((now.0, cpu_pct));
        last = now;
    }
    let report: serde_json::Value =
        serde_json::from_slice(&load.wait_with_output()?.stdout).context("loadgen's report")?;
    // SAFETY: kill() on our own child's pid (ip netns exec execs the tracer).
    unsafe { libc_kill(pid as i32, 2) };
    let out = tracer.wait_with_output()?;
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).context("tracer's report")?;
    let conns = report["connections"].as_u64().unwrap_or(0);
    let established = s["connects"]["established"].as_u64().unwrap_or(0);
    let transitions = s["tracer"]["transitions_counted"].as_u64().unwrap_or(0);
    let (rss_first, rss_last) = (samples[0].0, samples[samples.len() - 1].0);
    let cpu: Vec<f64> = samples.iter().map(|s| s.1).collect();
    let row = format!(
        "soak {minutes} min at {rate} conn/s (bench loadgen) | counts exact: {} | {conns} connections, {established} established, {transitions} transitions (want {}); RSS {rss_first} -> {rss_last} KiB; CPU per minute {:.1}..{:.1} %",
        established == conns && transitions == 10 * conns,
        10 * conns,
        cpu.iter().cloned().fold(f64::MAX, f64::min),
        cpu.iter().cloned().fold(0.0, f64::max),
    );
    if established != conns || transitions != 10 * conns {
        bail!("soak counts not exact: {row}");
    }
    Ok(vec![row])
}

struct NsGuard(String);
impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn wait_line(child: &mut Child, needle: &str) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let err = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(err).lines();
    for l in lines.by_ref() {
        if l?.contains(needle) {
            // Keep draining stderr so the tracer never blocks on it.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok(());
        }
    }
    bail!("the tracer exited before printing {needle:?}")
}

/// The whole soak: faults with `tries` per signal and mode, then the long
/// run; prints the table.
pub fn soak(root: &Path, cargo: Command, tries: u32, minutes: u64, rate: u64) -> Result<()> {
    let mut cargo = cargo;
    let mut rows = faults(root, &mut cargo, tries)?;
    rows.extend(long_run(root, minutes, rate)?);
    println!("\n| fault | what the tracer did | figure |\n|---|---|---|");
    for r in rows {
        println!("| {r} |");
    }
    Ok(())
}
