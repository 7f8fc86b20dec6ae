//! The exact-count check a release binary must pass where it is installed:
//! in a network namespace of its own, `tracer summary --json` filtered to
//! one loopback subnet watches a known workload (N connections that the
//! client closes first, M refused connects), and the report must count
//! exactly that. Used on the dist binary, the image's and the .deb's.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
};

use anyhow::{bail, ensure, Context as _, Result};

use super::{is_root, status};

/// The workload's server address; the tracer is filtered to its /24. Other
/// tests on the machine use other 127.x subnets (and other namespaces).
pub const SERVER: Ipv4Addr = Ipv4Addr::new(127, 231, 77, 1);
pub const FILTER: &str = "127.231.77.0/24";
const CONNECTS: u32 = 20;
const REFUSED: u32 = 5;

/// A network namespace deleted on drop.
struct Netns(String);

impl Netns {
    fn new() -> Result<Netns> {
        let name = format!("dist-live-{}", std::process::id());
        status(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns(name);
        status(Command::new("ip").args(["-n", &ns.0, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    fn exec(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Run `binary` through the check; `Ok` when every count is exact.
pub fn check(binary: &Path) -> Result<()> {
    ensure!(
        is_root(),
        "the live check loads eBPF programs and creates a network namespace: run it as root"
    );
    let ns = Netns::new()?;
    let mut tracer = ns
        .exec(binary)
        .args(["summary", "--json", "--addr", FILTER])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let (tx, rx) = mpsc::channel();
    let stderr = tracer.stderr.take().context("stderr")?;
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("  tracer: {line}");
            let _ = tx.send(line);
        }
    });
    // Until it says it is attached, or exits (closing stderr) because it cannot.
    let attached = rx.iter().any(|l| l.starts_with("Aggregating"));
    if !attached {
        let s = tracer.wait()?;
        bail!("{} exited before attaching: {s}", binary.display());
    }
    let me = std::env::current_exe()?;
    let load = ns
        .exec(&me)
        .args([
            "live-load",
            "--connects",
            &CONNECTS.to_string(),
            "--refused",
            &REFUSED.to_string(),
        ])
        .status();
    // SIGINT: the tracer prints the report and exits.
    status(Command::new("kill").args(["-INT", &tracer.id().to_string()]))?;
    let mut json = String::new();
    tracer
        .stdout
        .take()
        .context("stdout")?
        .read_to_string(&mut json)?;
    let exit = tracer.wait()?;
    ensure!(load?.success(), "the workload failed");
    ensure!(exit.success(), "{} exited {exit}", binary.display());
    verify(&json)?;
    eprintln!(
        "xtask: live check passed: {} counted {CONNECTS} connections, {REFUSED} refused connects, {CONNECTS} TIME_WAIT entries exactly",
        binary.display()
    );
    Ok(())
}

/// The report's counts against the workload's.
fn verify(json: &str) -> Result<()> {
    verify_counts(
        json,
        &[
            ("/connects/attempts", CONNECTS + REFUSED),
            ("/connects/established", CONNECTS),
            ("/connects/refused", REFUSED),
            ("/closes/closed_here_first", CONNECTS),
            ("/time_wait/entered", CONNECTS),
        ],
    )
}

/// The connect counts alone (a workload whose close order is not fixed).
pub fn verify_connects(json: &str, connects: u32, refused: u32) -> Result<()> {
    verify_counts(
        json,
        &[
            ("/connects/attempts", connects + refused),
            ("/connects/established", connects),
            ("/connects/refused", refused),
        ],
    )
}

/// Every (JSON pointer, count) of `expect` is exactly so in the report.
fn verify_counts(json: &str, expect: &[(&str, u32)]) -> Result<()> {
    let r: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("report is not JSON: {json:?}"))?;
    let n = |path: &str| r.pointer(path).and_then(|v| v.as_u64());
    let wrong: Vec<String> = expect
        .iter()
        .filter(|(p, want)| n(p) != Some(u64::from(*want)))
        .map(|(p, want)| format!("{p}: {:?}, expected {want}", n(p)))
        .collect();
    ensure!(wrong.is_empty(), "counts differ: {}", wrong.join("; "));
    Ok(())
}

/// The workload (`xtask live-load`, inside the namespace): `connects`
/// connections to [`SERVER`], each closed by the client first, then
/// `refused` connects to a port nobody listens on.
pub fn load(connects: u32, refused: u32) -> Result<()> {
    let listener = TcpListener::bind((SERVER, 0))?;
    let addr = listener.local_addr()?;
    for _ in 0..connects {
        let client = TcpStream::connect(addr)?;
        let (mut server, _) = listener.accept()?;
        client.shutdown(Shutdown::Both)?;
        drop(client);
        // EOF from the client's FIN, then close: the client ends in TIME_WAIT.
        let mut buf = [0u8; 16];
        while server.read(&mut buf)? > 0 {}
        drop(server);
    }
    let closed: SocketAddr = {
        let l = TcpListener::bind((SERVER, 0))?;
        l.local_addr()?
    };
    for _ in 0..refused {
        match TcpStream::connect(closed) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            other => bail!("connect to the closed port {closed}: {other:?}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_accepts_exact_counts_only() {
        let report = |established: u32| {
            serde_json::json!({
                "connects": {"attempts": CONNECTS + REFUSED, "established": established, "refused": REFUSED},
                "closes": {"closed_here_first": CONNECTS},
                "time_wait": {"entered": CONNECTS},
            })
            .to_string()
        };
        verify(&report(CONNECTS)).unwrap();
        let err = verify(&report(CONNECTS - 1)).unwrap_err().to_string();
        assert!(err.contains("/connects/established"), "{err}");
        assert!(verify("not json").is_err());
    }
}
