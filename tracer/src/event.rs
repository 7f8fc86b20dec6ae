//! Ring-buffer records → typed transitions → text or JSON lines.

use std::{
    io::{self, Write},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;
use tracer_common::{close, event_kind, flag, Event, AF_INET6};

use crate::model::{close_kind_name, comm_str, dir_name, endpoint, ip_from_raw, state_name};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event record is {got} bytes, expected {want}")]
    Length { got: usize, want: usize },
}

/// Copy an `Event` out of a ring-buffer record, checking its length.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let want = std::mem::size_of::<Event>();
    if bytes.len() < want {
        return Err(DecodeError::Length {
            got: bytes.len(),
            want,
        });
    }
    // SAFETY: the slice holds at least size_of::<Event>() bytes; Event is
    // repr(C) plain old data with no invalid bit patterns; read_unaligned
    // makes no alignment assumption about the ring buffer.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr() as *const Event) })
}

/// Maps the kernel's CLOCK_MONOTONIC (bpf_ktime_get_ns) to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    mono_ns: u64,
    wall: SystemTime,
}

impl Clock {
    pub fn now() -> Self {
        Clock {
            mono_ns: crate::monotonic_ns(),
            wall: SystemTime::now(),
        }
    }

    /// A fixed mapping, for tests.
    pub fn fixed(mono_ns: u64, wall: SystemTime) -> Self {
        Clock { mono_ns, wall }
    }

    pub fn wall(&self, ktime_ns: u64) -> SystemTime {
        if ktime_ns >= self.mono_ns {
            self.wall + Duration::from_nanos(ktime_ns - self.mono_ns)
        } else {
            self.wall - Duration::from_nanos(self.mono_ns - ktime_ns)
        }
    }
}

/// One transition, ready for output. Field names are the JSON schema.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Transition {
    /// Wall-clock time, RFC 3339 UTC with microseconds.
    pub time: String,
    /// Socket cookie: the same id sock_diag (`ss -e`) shows.
    pub cookie: u64,
    /// Owner process; null when the owner was never seen in its own context.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub family: &'static str,
    pub local: String,
    pub remote: String,
    pub old_state: &'static str,
    pub new_state: &'static str,
    /// Microseconds spent in `old_state`; null when the previous transition
    /// was not seen.
    pub in_old_state_us: Option<f64>,
    /// "active" (connect), "passive" (accept) or "unknown".
    pub direction: &'static str,
    /// Handshake latency in µs on → ESTABLISHED.
    pub handshake_us: Option<f64>,
    /// SYN / SYN-ACK retransmits during the handshake.
    pub handshake_retransmits: Option<u32>,
    /// How a → CLOSE transition ended the connection (see README).
    pub close: Option<&'static str>,
    /// `sk_err` at → CLOSE (errno), when non-zero.
    pub sk_err: Option<u16>,
    /// On the → CLOSE of an established connection: its lifetime in ms since
    /// its birth transition (CLOSE→SYN_SENT, or LISTEN→SYN_RECV for accepted
    /// ones); null if the birth was not seen.
    pub lifetime_ms: Option<f64>,
    /// On the same → CLOSE: payload bytes received and sent-and-acknowledged
    /// (`tcp_sock.bytes_received` / `bytes_acked`, as tcplife reports).
    pub bytes_received: Option<u64>,
    pub bytes_sent_acked: Option<u64>,
    /// cgroup v2 id of the owner (0: unknown), and its path when resolved.
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    /// The socket's network namespace inode (as `ls -l /proc/PID/ns/net` shows).
    pub netns: u32,
}

impl Transition {
    pub fn from_event(e: &Event, clock: &Clock) -> Self {
        let known = e.flags & flag::OWNER_KNOWN != 0;
        let established = e.newstate == tracer_common::state::ESTABLISHED
            && (e.oldstate == tracer_common::state::SYN_SENT
                || e.oldstate == tracer_common::state::SYN_RECV);
        Transition {
            time: rfc3339_micros(clock.wall(e.ts_ns)),
            cookie: e.cookie,
            pid: known.then_some(e.tgid),
            comm: known.then(|| comm_str(&e.comm)),
            family: if e.family == AF_INET6 { "ipv6" } else { "ipv4" },
            local: endpoint(ip_from_raw(e.family, &e.saddr), e.sport),
            remote: endpoint(ip_from_raw(e.family, &e.daddr), e.dport),
            old_state: state_name(e.oldstate),
            new_state: state_name(e.newstate),
            in_old_state_us: (e.flags & flag::DURATION_KNOWN != 0)
                .then(|| e.in_state_ns as f64 / 1e3),
            direction: dir_name(e.dir),
            handshake_us: (established && e.flags & flag::HANDSHAKE_KNOWN != 0)
                .then(|| e.handshake_ns as f64 / 1e3),
            handshake_retransmits: established.then_some(e.retrans),
            close: (e.close_kind != close::NONE).then(|| close_kind_name(e.close_kind)),
            sk_err: (e.sk_err != 0).then_some(e.sk_err),
            lifetime_ms: (e.flags & flag::LIFETIME_KNOWN != 0).then(|| e.lifetime_ns as f64 / 1e6),
            bytes_received: closed_established(e).then_some(e.bytes_received),
            bytes_sent_acked: closed_established(e).then_some(e.bytes_acked),
            cgroup_id: e.cgroup_id,
            cgroup: None,
            netns: e.netns,
        }
    }
}

/// `t` as RFC 3339 UTC with microseconds (`2026-12-02T16:10:00.123456Z`),
/// as humantime writes it; the date and time of day are formatted once per
/// second (events mode writes one per event).
pub fn rfc3339_micros(t: SystemTime) -> String {
    thread_local! {
        static SECOND: std::cell::RefCell<(u64, String)> = const {
            std::cell::RefCell::new((u64::MAX, String::new()))
        };
    }
    let Ok(since) = t.duration_since(SystemTime::UNIX_EPOCH) else {
        return humantime::format_rfc3339_micros(t).to_string();
    };
    SECOND.with_borrow_mut(|(sec, prefix)| {
        if *sec != since.as_secs() {
            *sec = since.as_secs();
            let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(*sec);
            *prefix = humantime::format_rfc3339_seconds(whole).to_string();
            prefix.pop(); // the 'Z'
        }
        let mut s = String::with_capacity(prefix.len() + 8);
        s.push_str(prefix);
        let mut digits = itoa::Buffer::new();
        // 1 000 000 + µs: seven digits, the last six zero-padded.
        s.push('.');
        s.push_str(&digits.format(1_000_000 + since.subsec_micros())[1..]);
        s.push('Z');
        s
    })
}

/// A listener-side event (`Event::kind` other than a transition): a line of
/// its own in events mode. Field names are the JSON schema.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListenerEvent {
    pub time: String,
    /// What happened: `listener_event_name` of the kind.
    pub event: &'static str,
    /// The listener's owner (the process that called listen()), when known.
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub family: &'static str,
    /// The listener's address and port.
    pub local: String,
    /// The client's.
    pub remote: String,
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    pub netns: u32,
}

/// The name of a listener-side event kind; None for a transition (or a
/// kind this build does not know).
pub fn listener_event_name(kind: u8) -> Option<&'static str> {
    match kind {
        event_kind::SYNACK_RETRANSMIT => Some("synack_retransmit"),
        event_kind::QUEUE_DROP => Some("queue_drop"),
        event_kind::HALF_OPEN_RESET => Some("half_open_reset"),
        _ => None,
    }
}

impl ListenerEvent {
    /// None for a transition.
    pub fn from_event(e: &Event, clock: &Clock) -> Option<Self> {
        let known = e.flags & flag::OWNER_KNOWN != 0;
        Some(ListenerEvent {
            time: rfc3339_micros(clock.wall(e.ts_ns)),
            event: listener_event_name(e.kind)?,
            pid: known.then_some(e.tgid),
            comm: known.then(|| comm_str(&e.comm)),
            family: if e.family == AF_INET6 { "ipv6" } else { "ipv4" },
            local: endpoint(ip_from_raw(e.family, &e.saddr), e.sport),
            remote: endpoint(ip_from_raw(e.family, &e.daddr), e.dport),
            cgroup_id: e.cgroup_id,
            cgroup: None,
            netns: e.netns,
        })
    }

    /// One text line, in the transitions' columns: the event's name where
    /// a transition has its states.
    pub fn text_line(&self, full_time: bool) -> String {
        let time = if full_time {
            &self.time
        } else {
            self.time.get(11..26).unwrap_or(&self.time)
        };
        let note = match self.event {
            "synack_retransmit" => "listener resent its SYN-ACK (final ACK not arrived)",
            "queue_drop" => "accept queue full: listener dropped the final ACK",
            "half_open_reset" => "client answered the SYN-ACK with RST: handshake abandoned",
            _ => "",
        };
        format!(
            "{:<w$} {:>7} {:<15} {:<46} {:<46} {:<25} {:>11}  {}",
            time,
            self.pid.map_or("-".to_string(), |p| p.to_string()),
            self.comm.as_deref().unwrap_or("-"),
            self.local,
            self.remote,
            self.event.to_uppercase(),
            "-",
            note,
            w = if full_time { 27 } else { 15 }
        )
    }

    /// As text or as a JSON line.
    pub fn write(&self, out: &mut impl Write, json: bool, full_time: bool) -> io::Result<()> {
        if json {
            serde_json::to_writer(&mut *out, self)?;
            out.write_all(b"\n")
        } else {
            writeln!(out, "{}", self.text_line(full_time))
        }
    }
}

/// Is this the → CLOSE of a connection that had been established?
fn closed_established(e: &Event) -> bool {
    use tracer_common::state::*;
    e.newstate == CLOSE && !matches!(e.oldstate, SYN_SENT | SYN_RECV | LISTEN | CLOSE)
}

/// Column header of the text format.
pub fn text_header() -> String {
    text_header_with(false)
}

/// Column header; `full_time`: the TIME column holds the whole RFC 3339 time.
pub fn text_header_with(full_time: bool) -> String {
    format!(
        "{:<w$} {:>7} {:<15} {:<46} {:<46} {:<25} {:>11}  {}",
        "TIME",
        "PID",
        "COMM",
        "LOCAL",
        "REMOTE",
        "TRANSITION",
        "MS_IN_OLD",
        "NOTE",
        w = if full_time { 27 } else { 15 }
    )
}

/// One aligned text line.
pub fn text_line(t: &Transition) -> String {
    text_line_with(t, false)
}

/// ANSI color for a text line by what happened: failed connects, resets and
/// timeouts red, entries into TIME_WAIT yellow, established connections green.
pub fn paint(t: &Transition, line: &str) -> String {
    let code = match t.close {
        Some(c) if c.starts_with("connect_") || c.starts_with("reset_") || c == "timeout" => "31",
        Some("time_wait" | "fin_wait2_parked") => "33",
        _ if t.new_state == "ESTABLISHED" => "32",
        _ => return line.to_string(),
    };
    format!("\x1b[{code}m{line}\x1b[0m")
}

/// One aligned text line; `full_time`: the whole RFC 3339 time, not only the time of day.
pub fn text_line_with(t: &Transition, full_time: bool) -> String {
    let time = if full_time {
        &t.time
    } else {
        t.time.get(11..26).unwrap_or(&t.time)
    };
    let pid = t.pid.map_or("-".to_string(), |p| p.to_string());
    let comm = t.comm.clone().unwrap_or_else(|| "-".into());
    let ms = t
        .in_old_state_us
        .map_or("-".to_string(), |us| format!("{:.3}", us / 1e3));
    let mut note = Vec::new();
    if let Some(h) = t.handshake_us {
        note.push(format!("handshake {:.3} ms", h / 1e3));
    }
    if let Some(r) = t.handshake_retransmits.filter(|r| *r > 0) {
        note.push(format!("{r} retransmit(s)"));
    }
    if let Some(c) = t.close {
        note.push(c.to_string());
    }
    if let Some(e) = t.sk_err {
        note.push(format!("sk_err {e}"));
    }
    if let Some(l) = t.lifetime_ms {
        note.push(format!("lived {l:.3} ms"));
    }
    if let (Some(rx), Some(tx)) = (t.bytes_received, t.bytes_sent_acked) {
        note.push(format!("rx {rx} B, tx {tx} B"));
    }
    if let Some(c) = &t.cgroup {
        if c != "/" {
            note.push(format!("cgroup {c}"));
        }
    }
    format!(
        "{:<w$} {:>7} {:<15} {:<46} {:<46} {:<25} {:>11}  {}",
        time,
        pid,
        comm,
        t.local,
        t.remote,
        format!("{}->{}", t.old_state, t.new_state),
        ms,
        note.join(", "),
        w = if full_time { 27 } else { 15 }
    )
}

/// Write one transition as text or as a JSON line.
pub fn write(out: &mut impl Write, t: &Transition, json: bool) -> io::Result<()> {
    if json {
        serde_json::to_writer(&mut *out, t)?;
        out.write_all(b"\n")
    } else {
        writeln!(out, "{}", text_line(t))
    }
}

/// Seconds since the epoch, for tests.
pub fn epoch(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::{dir, state};

    fn event() -> Event {
        let mut e = Event {
            ts_ns: 2_000_000_000,
            cookie: 77,
            in_state_ns: 1_500_000,
            handshake_ns: 1_500_000,
            lifetime_ns: 0,
            bytes_received: 0,
            bytes_acked: 0,
            cgroup_id: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            tgid: 4242,
            retrans: 1,
            comm: [0; 16],
            sport: 40000,
            dport: 80,
            family: 2,
            sk_err: 0,
            oldstate: state::SYN_SENT,
            newstate: state::ESTABLISHED,
            close_kind: close::NONE,
            netns: 4026531840,
            dir: dir::ACTIVE,
            flags: flag::OWNER_KNOWN | flag::DURATION_KNOWN | flag::RETRANS | flag::HANDSHAKE_KNOWN,
            kind: 0,
            _pad: [0; 6],
        };
        e.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        e.comm[..4].copy_from_slice(b"curl");
        e
    }

    fn bytes(e: &Event) -> Vec<u8> {
        // SAFETY: Event is plain old data without padding.
        unsafe {
            std::slice::from_raw_parts(e as *const Event as *const u8, size_of::<Event>()).to_vec()
        }
    }

    #[test]
    fn rfc3339_micros_is_humantimes() {
        for ns in [
            0u64,
            1_000,
            999_999_999,
            1_764_691_200_000_001_000,
            1_764_691_200_999_999_000,
        ] {
            for step in [0u64, 1_000, 1_000_000_000] {
                let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(ns + step);
                let want = humantime::format_rfc3339_micros(t).to_string();
                assert_eq!(rfc3339_micros(t), want);
            }
        }
    }

    #[test]
    fn listener_events_are_lines_of_their_own() {
        let mut e = event();
        let clock = Clock::fixed(0, epoch(1_700_000_000));
        assert_eq!(ListenerEvent::from_event(&e, &clock), None, "a transition");
        e.kind = event_kind::SYNACK_RETRANSMIT;
        (e.oldstate, e.newstate) = (0, 0);
        let l = ListenerEvent::from_event(&e, &clock).expect("listener event");
        assert_eq!(
            (l.event, l.local.as_str(), l.remote.as_str(), l.pid),
            (
                "synack_retransmit",
                "127.0.0.1:40000",
                "10.0.0.2:80",
                Some(4242)
            )
        );
        let line = l.text_line(false);
        assert!(line.contains("SYNACK_RETRANSMIT"), "{line}");
        assert_eq!(
            line.find("listener resent"),
            text_header().find("NOTE"),
            "the note in the NOTE column: {line}"
        );
        let mut json = Vec::new();
        l.write(&mut json, true, false).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["event"], "synack_retransmit");
        assert_eq!(v["netns"], 4026531840u32);
        e.kind = 200;
        assert_eq!(ListenerEvent::from_event(&e, &clock), None, "unknown kind");
    }

    #[test]
    fn decode_checks_length_and_roundtrips() {
        let e = event();
        let b = bytes(&e);
        assert_eq!(decode(&b), Ok(e));
        // Unaligned start.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&b);
        assert_eq!(decode(&shifted[1..]), Ok(e));
        assert_eq!(
            decode(&b[..10]),
            Err(DecodeError::Length { got: 10, want: 144 })
        );
    }

    #[test]
    fn transition_fields() {
        let clock = Clock::fixed(1_000_000_000, epoch(1_700_000_000));
        let t = Transition::from_event(&event(), &clock);
        assert_eq!(t.time, "2023-11-14T22:13:21.000000Z");
        assert_eq!(t.pid, Some(4242));
        assert_eq!(t.comm.as_deref(), Some("curl"));
        assert_eq!(t.local, "127.0.0.1:40000");
        assert_eq!(t.remote, "10.0.0.2:80");
        assert_eq!(t.old_state, "SYN_SENT");
        assert_eq!(t.new_state, "ESTABLISHED");
        assert_eq!(t.handshake_us, Some(1500.0));
        assert_eq!(t.handshake_retransmits, Some(1));
        assert_eq!(t.direction, "active");
        assert_eq!(t.close, None);
        let line = text_line(&t);
        assert!(line.contains("SYN_SENT->ESTABLISHED"), "{line}");
        assert!(
            line.contains("handshake 1.500 ms, 1 retransmit(s)"),
            "{line}"
        );
        let mut json = Vec::new();
        write(&mut json, &t, true).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["remote"], "10.0.0.2:80");
        assert_eq!(v["in_old_state_us"], 1500.0);
    }

    #[test]
    fn unknown_owner_and_close() {
        let mut e = event();
        e.flags = 0;
        e.oldstate = state::FIN_WAIT2;
        e.newstate = state::CLOSE;
        e.close_kind = close::TIME_WAIT;
        let t = Transition::from_event(&e, &Clock::fixed(0, epoch(0)));
        assert_eq!(t.pid, None);
        assert_eq!(t.in_old_state_us, None);
        assert_eq!(t.close, Some("time_wait"));
        assert_eq!(t.handshake_us, None);
        assert_eq!(t.lifetime_ms, None);
        assert_eq!(t.bytes_received, Some(0));
        assert!(text_line(&t).contains("FIN_WAIT2->CLOSE"));
    }

    #[test]
    fn close_carries_lifetime_bytes_and_cgroup() {
        let mut e = event();
        e.oldstate = state::LAST_ACK;
        e.newstate = state::CLOSE;
        e.close_kind = close::LAST_ACK;
        e.flags |= flag::LIFETIME_KNOWN;
        e.lifetime_ns = 2_500_000;
        e.bytes_received = 1000;
        e.bytes_acked = 20;
        e.cgroup_id = 9;
        let mut t = Transition::from_event(&e, &Clock::fixed(0, epoch(0)));
        t.cgroup = Some("/app.slice".into());
        assert_eq!(t.lifetime_ms, Some(2.5));
        assert_eq!(
            (t.bytes_received, t.bytes_sent_acked),
            (Some(1000), Some(20))
        );
        assert_eq!(t.handshake_retransmits, None);
        let line = text_line(&t);
        assert!(
            line.contains("passive_close, lived 2.500 ms, rx 1000 B, tx 20 B, cgroup /app.slice"),
            "{line}"
        );
        // A failed connect has no lifetime or bytes.
        e.oldstate = state::SYN_SENT;
        e.flags &= !flag::LIFETIME_KNOWN;
        let t = Transition::from_event(&e, &Clock::fixed(0, epoch(0)));
        assert_eq!((t.lifetime_ms, t.bytes_received), (None, None));
    }
}
