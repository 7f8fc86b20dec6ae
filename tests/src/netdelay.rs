//! Known network delay without netem (not in this kernel): an iptables
//! `-j NFQUEUE` rule on loopback sends one server port's handshake packets to
//! a userspace verdict loop that holds them for a fixed time, or drops the
//! first SYN so the kernel retransmits it. The loop also records when it saw
//! and released each packet: the ground truth the tracer is checked against.
//!
//! nft's own `queue` statement is not built into this kernel; the xt NFQUEUE
//! target through iptables is. The verdicts go through the `nfq` crate.

use std::{
    collections::BTreeMap,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};

/// Run the calling thread real-time (SCHED_FIFO; as root, best effort), so
/// a busy machine does not delay its wakeups: the verdict loop's and the
/// test's own wakeup lag would otherwise be error in the ground truth.
pub fn realtime_thread() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: sets this thread's scheduling policy; `param` outlives the call.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
}

/// What the verdict loop does to the server port's traffic.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    /// Hold every SYN-ACK the server sends for this long (active-open latency).
    DelaySynAck(Duration),
    /// Hold each client's first packet after its SYN (the handshake's final
    /// ACK) for this long, keeping later packets of that connection behind
    /// it; SYN-ACKs pass at once but their time is recorded (the server's
    /// SYN-ACK round trip).
    DelayFinalAck(Duration),
    /// Drop each client's first SYN; its retransmission passes.
    DropFirstSyn,
}

/// Ground truth for one connection, keyed by the client's port.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// When the server's SYN-ACK reached the loop.
    pub synack_seen: Option<Instant>,
    /// When the held packet (SYN-ACK or final ACK) was released.
    pub released: Option<Instant>,
    /// SYNs dropped.
    pub syns_dropped: u32,
    /// SYN-ACKs the server sent to this client (counted by `DelayFinalAck`):
    /// all but the first are retransmits.
    pub synacks: u32,
}

/// An installed rule and its verdict loop. Dropping it removes the rules,
/// releases whatever is still held and stops the loop, even on panic.
pub struct NetDelay {
    rules: Vec<Vec<String>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    records: Arc<Mutex<BTreeMap<u16, Record>>>,
}

const SYN: u8 = 0x02;
const POLL: Duration = Duration::from_micros(20);
const ACK: u8 = 0x10;

/// Make sure `iptables` exists (a fresh machine may lack it).
pub fn ensure_iptables() -> anyhow::Result<()> {
    crate::ensure_debian_package("iptables", "iptables")
}

fn iptables(op: &str, rule: &[String]) -> anyhow::Result<()> {
    let out = Command::new("iptables")
        .args(["-w", op, "OUTPUT"])
        .args(rule)
        .output()
        .context("running iptables")?;
    if !out.status.success() {
        bail!(
            "iptables {op} OUTPUT {}: {}",
            rule.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// (source port, destination port, TCP flags) of an IPv4 TCP packet.
pub fn tcp_ports_flags(pkt: &[u8]) -> Option<(u16, u16, u8)> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 || pkt[9] != 6 {
        return None;
    }
    let ihl = (pkt[0] & 0x0f) as usize * 4;
    let tcp = pkt.get(ihl..ihl + 14)?;
    Some((
        u16::from_be_bytes([tcp[0], tcp[1]]),
        u16::from_be_bytes([tcp[2], tcp[3]]),
        tcp[13],
    ))
}

impl NetDelay {
    /// Apply `action` to loopback IPv4 TCP traffic of server port `port`.
    /// The NFQUEUE number is the port, so concurrent instances never share one.
    pub fn start(action: Action, port: u16) -> anyhow::Result<NetDelay> {
        ensure_iptables()?;
        let q = port.to_string();
        let rule = |dir: &str, flags: &[&str]| -> Vec<String> {
            let mut r: Vec<String> = ["-o", "lo", "-p", "tcp", dir, &q, "--tcp-flags"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            r.extend(flags.iter().map(|s| s.to_string()));
            // --queue-bypass: without a listener the packets pass, never vanish.
            r.extend(
                ["-j", "NFQUEUE", "--queue-num", &q, "--queue-bypass"]
                    .iter()
                    .map(|s| s.to_string()),
            );
            r
        };
        let synacks = rule("--sport", &["SYN,ACK", "SYN,ACK"]);
        let rules = match action {
            Action::DelaySynAck(_) => vec![synacks],
            Action::DelayFinalAck(_) => vec![synacks, rule("--dport", &["SYN", "NONE"])],
            Action::DropFirstSyn => vec![rule("--dport", &["SYN,ACK", "SYN"])],
        };

        // Bind the queue before any rule sends packets to it.
        let stop = Arc::new(AtomicBool::new(false));
        let records: Arc<Mutex<BTreeMap<u16, Record>>> = Default::default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, records) = (stop.clone(), records.clone());
            std::thread::spawn(move || verdict_loop(action, port, stop, records, ready_tx))
        };
        ready_rx
            .recv()
            .context("NFQUEUE verdict thread died")?
            .context("binding the NFQUEUE")?;
        let mut me = NetDelay {
            rules: Vec::new(),
            stop,
            thread: Some(thread),
            records,
        };
        for r in rules {
            iptables("-I", &r)?;
            me.rules.push(r);
        }
        Ok(me)
    }

    /// What the loop saw, per client port.
    pub fn records(&self) -> BTreeMap<u16, Record> {
        self.records.lock().unwrap().clone()
    }
}

impl Drop for NetDelay {
    fn drop(&mut self) {
        for r in &self.rules {
            let _ = iptables("-D", r);
        }
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn verdict_loop(
    action: Action,
    port: u16,
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<BTreeMap<u16, Record>>>,
    ready: std::sync::mpsc::Sender<anyhow::Result<()>>,
) {
    // The loop's own latency is error in the ground truth.
    realtime_thread();
    let mut queue = match nfq::Queue::open().and_then(|mut q| {
        q.bind(port)?;
        q.set_nonblocking(true);
        Ok(q)
    }) {
        Ok(q) => {
            let _ = ready.send(Ok(()));
            q
        }
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    // Held packets: (release time, arrival order) → message.
    let mut held: BTreeMap<(Instant, u64), nfq::Message> = BTreeMap::new();
    // Latest release time per client port, to keep a connection's packets in order.
    let mut port_release: BTreeMap<u16, Instant> = BTreeMap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while let Some(entry) = held.first_entry() {
            if entry.key().0 > now && !stop.load(Ordering::SeqCst) {
                break;
            }
            let mut msg = entry.remove();
            if let Some((sport, dport, _)) = tcp_ports_flags(msg.get_payload()) {
                let client = if sport == port { dport } else { sport };
                records
                    .lock()
                    .unwrap()
                    .entry(client)
                    .or_default()
                    .released
                    .get_or_insert(Instant::now());
            }
            msg.set_verdict(nfq::Verdict::Accept);
            let _ = queue.verdict(msg);
        }
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut msg = match queue.recv() {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Poll every 20 µs: how late a packet is seen or released.
                let wait = held.first_key_value().map_or(POLL, |((t, _), _)| {
                    t.saturating_duration_since(Instant::now())
                });
                std::thread::sleep(wait.min(POLL));
                continue;
            }
            Err(_) => return,
        };
        let seen = Instant::now();
        seq += 1;
        let Some((sport, dport, flags)) = tcp_ports_flags(msg.get_payload()) else {
            msg.set_verdict(nfq::Verdict::Accept);
            let _ = queue.verdict(msg);
            continue;
        };
        let synack = sport == port && flags & (SYN | ACK) == SYN | ACK;
        let client = if sport == port { dport } else { sport };
        let mut recs = records.lock().unwrap();
        let rec = recs.entry(client).or_default();
        match action {
            Action::DelaySynAck(d) if synack => {
                rec.synack_seen.get_or_insert(seen);
                held.insert((seen + d, seq), msg);
            }
            Action::DelayFinalAck(d) => {
                if synack {
                    rec.synack_seen.get_or_insert(seen);
                    rec.synacks += 1;
                    msg.set_verdict(nfq::Verdict::Accept);
                    let _ = queue.verdict(msg);
                } else {
                    // The first client packet after the SYN is the final ACK:
                    // hold it; later ones queue behind it.
                    let at = match port_release.get(&client) {
                        None => seen + d,
                        Some(prev) => (*prev).max(seen),
                    };
                    port_release.insert(client, at);
                    held.insert((at, seq), msg);
                }
            }
            Action::DropFirstSyn if flags & (SYN | ACK) == SYN => {
                if rec.syns_dropped == 0 {
                    rec.syns_dropped = 1;
                    msg.set_verdict(nfq::Verdict::Drop);
                } else {
                    msg.set_verdict(nfq::Verdict::Accept);
                }
                let _ = queue.verdict(msg);
            }
            _ => {
                msg.set_verdict(nfq::Verdict::Accept);
                let _ = queue.verdict(msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ipv4_tcp_headers() {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = 6;
        p[20..22].copy_from_slice(&8080u16.to_be_bytes());
        p[22..24].copy_from_slice(&40000u16.to_be_bytes());
        p[33] = SYN | ACK;
        assert_eq!(tcp_ports_flags(&p), Some((8080, 40000, SYN | ACK)));
        p[9] = 17;
        assert_eq!(tcp_ports_flags(&p), None);
        assert_eq!(tcp_ports_flags(&p[..10]), None);
    }
}
