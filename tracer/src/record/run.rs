//! The commands around recordings: `record`, `report FILE`, `events --from FILE`.

use std::{
    fs::File,
    io::{self, BufReader, BufWriter, Write},
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use tracer_common::counter;

use super::{End, Header, RecEvent, RecSnapshot, Record, Writer, FORMAT, VERSION};
use crate::{
    cli::{EventsArgs, RecordArgs, ReportArgs},
    event::{self, Clock, Transition},
    report, SummaryOptions, Tracer,
};

/// `uname -n` and `uname -r`.
fn uname() -> (String, String) {
    // SAFETY: utsname is plain old data; uname fills it in.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return ("?".into(), "?".into());
    }
    let s = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (s(&u.nodename), s(&u.release))
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// The recording's header for a tracer that just started.
fn header(tracer: &Tracer, args: &RecordArgs) -> Header {
    let (host, kernel) = uname();
    Header {
        format: FORMAT.into(),
        version: VERSION,
        tracer_version: env!("CARGO_PKG_VERSION").into(),
        host,
        kernel,
        filter: tracer.filter().describe(),
        filter_spec: serde_json::to_value(tracer.filter()).unwrap_or_default(),
        start_time: rfc3339(SystemTime::now()),
        start_mono_ns: crate::monotonic_ns(),
        snapshot_every_s: args.snapshot_every.as_secs_f64(),
    }
}

fn snapshot_record(tracer: &Tracer, opts: &SummaryOptions) -> anyhow::Result<Record> {
    let snap = tracer.snapshot()?;
    let inputs = tracer.report_inputs(&snap, opts)?;
    Ok(Record::Snapshot(Box::new(RecSnapshot::new(
        &snap,
        &inputs,
        rfc3339(SystemTime::now()),
        crate::monotonic_ns(),
    ))))
}

/// What stopped a recording.
enum Stop {
    Signal,
    Duration,
    MaxSize,
}

pub async fn record(args: &RecordArgs) -> anyhow::Result<()> {
    // A bad filter or an unwritable path fails before anything is loaded.
    args.filter.spec()?.validate()?;
    let file = File::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let (mut signals, tracer, mut fd) =
        crate::run::start_streaming(&args.filter, args.ring_kib, true)?;
    let mut w = Writer::new(BufWriter::new(file), &header(&tracer, args))?;
    let opts = SummaryOptions {
        top: usize::MAX,
        pressure_warn_pct: args.port_pressure_warn,
        close_wait_threshold: args.close_wait_age,
        ..SummaryOptions::default()
    };
    crate::run::drop_privileges(&tracer, crate::host::privs::Mode::Summary)?;
    eprintln!(
        "Recording TCP state transitions ({}) to {}. Ctrl-C to stop.",
        tracer.filter().describe(),
        args.output.display()
    );
    let mut sink = EventSink {
        clock: Clock::now(),
        cgroups: crate::host::cgroup::Resolver::new(),
        events: 0,
        bad: 0,
        listener_events: 0,
    };
    let rec = Recording {
        args,
        tracer: &tracer,
        opts: &opts,
    };
    let reason = rec
        .until_stop(&mut signals, &mut fd, &mut w, &mut sink)
        .await?;
    sink.drain(&mut fd, &mut w, true)?;
    w.push(&snapshot_record(&tracer, &opts)?)?;
    rec.finish(w, reason, &sink)
}

/// Writes the ring's events to the recording and counts them.
struct EventSink {
    clock: Clock,
    cgroups: crate::host::cgroup::Resolver,
    /// Event records written.
    events: u64,
    /// Ring records that could not be decoded.
    bad: u64,
    /// Listener-side events (SYN-ACK retransmits): counted, not recorded.
    listener_events: u64,
}

impl EventSink {
    /// Write what the rings hold (`all`: at the stop, nothing held back);
    /// the first write error stops the writing and is returned.
    fn drain(
        &mut self,
        rings: &mut crate::run::EventRing,
        w: &mut Writer<BufWriter<File>>,
        all: bool,
    ) -> io::Result<()> {
        let mut failed = None;
        let take = |item| {
            if failed.is_none() {
                failed = self.take(item, w).err();
            }
        };
        if all {
            rings.drain_all(take);
        } else {
            rings.drain(take);
        }
        failed.map_or(Ok(()), Err)
    }

    fn take(
        &mut self,
        item: Result<tracer_common::Event, event::DecodeError>,
        w: &mut Writer<BufWriter<File>>,
    ) -> io::Result<()> {
        match item {
            // Recordings keep transitions only (counted, not written).
            Ok(e) if e.kind != tracer_common::event_kind::TRANSITION => {
                self.listener_events += 1;
            }
            Ok(e) => {
                let mut t = Transition::from_event(&e, &self.clock);
                t.cgroup = self.cgroups.path(e.cgroup_id);
                w.push(&Record::Event(RecEvent::from_transition(&t)))?;
                self.events += 1;
            }
            Err(e) => {
                self.bad += 1;
                log::warn!("{e}");
            }
        }
        Ok(())
    }
}

/// One `tracer record` run: what it was asked and what it reads.
struct Recording<'a> {
    args: &'a RecordArgs,
    tracer: &'a Tracer,
    opts: &'a SummaryOptions,
}

impl Recording<'_> {
    /// Drain events, flush blocks and write snapshots until a signal, the
    /// duration or the size limit stops the recording.
    async fn until_stop(
        &self,
        signals: &mut crate::run::StopSignals,
        fd: &mut crate::run::EventRing,
        w: &mut Writer<BufWriter<File>>,
        sink: &mut EventSink,
    ) -> anyhow::Result<Stop> {
        let args = self.args;
        let full = |w: &Writer<_>| args.max_size.is_some_and(|m| w.written() >= m);
        let stop = signals.wait(None);
        tokio::pin!(stop);
        let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
        let mut flush = tokio::time::interval(Duration::from_secs(1));
        let mut drain_tick = tokio::time::interval(crate::run::DRAIN_INTERVAL);
        let mut snap_tick = tokio::time::interval(args.snapshot_every);
        loop {
            tokio::select! {
                _ = &mut stop => return Ok(Stop::Signal),
                _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() => return Ok(Stop::Duration),
                // The kernel side wakes us only once a quarter of the ring is
                // pending: drain on a short timer too, so blocks stay small.
                _ = drain_tick.tick() => sink.drain(fd, w, false)?,
                _ = flush.tick() => w.flush_block()?,
                _ = snap_tick.tick() => w.push(&snapshot_record(self.tracer, self.opts)?)?,
                r = fd.readable() => {
                    r?;
                    sink.drain(fd, w, false)?;
                }
            }
            if full(w) {
                return Ok(Stop::MaxSize);
            }
        }
    }

    /// The end record, then what was recorded, on stderr.
    fn finish(
        &self,
        w: Writer<BufWriter<File>>,
        reason: Stop,
        sink: &EventSink,
    ) -> anyhow::Result<()> {
        let snap = self.tracer.snapshot()?;
        let end = End {
            reason: match reason {
                Stop::Signal => "signal",
                Stop::Duration => "duration",
                Stop::MaxSize => "max_size",
            }
            .into(),
            events: sink.events,
            events_dropped: snap.counter(counter::RINGBUF_DROPS),
            undecodable: sink.bad,
        };
        let size = {
            let mut out = w.finish(&end)?;
            out.flush()?;
            out.get_ref().metadata().map(|m| m.len()).unwrap_or(0)
        };
        if let Stop::MaxSize = reason {
            eprintln!(
                "Stopped: {} reached --max-size ({} bytes).",
                self.args.output.display(),
                size
            );
        }
        eprintln!(
            "{} events recorded ({} bytes), {} dropped by the kernel ring buffer (try a larger --ring-kib), {} undecodable, {} listener-side events (SYN-ACK retransmits) not recorded; {} transitions counted in the kernel",
            sink.events,
            size,
            end.events_dropped,
            sink.bad,
            sink.listener_events,
            snap.counter(counter::TRANSITIONS)
        );
        Ok(())
    }
}

fn open(path: &Path) -> anyhow::Result<BufReader<File>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(BufReader::with_capacity(1 << 16, f))
}

/// `tracer report FILE`: the summary of the recording's last snapshot.
pub fn report(args: &ReportArgs) -> anyhow::Result<()> {
    let c = super::read(open(&args.file)?, |_| Ok(()))
        .with_context(|| format!("{}", args.file.display()))?;
    let last = c.last_snapshot.as_ref().with_context(|| {
        format!(
            "{}: the recording holds no snapshot to report on",
            args.file.display()
        )
    })?;
    let s = last.inputs(args.top).build(&last.snapshot());
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &s)?;
        writeln!(out)?;
    } else {
        let h = &c.header;
        writeln!(
            out,
            "Recording {}: host {}, kernel {}, started {}, tracer {}; {} events, {} snapshots, stopped by {}",
            args.file.display(),
            h.host,
            h.kernel,
            h.start_time,
            h.tracer_version,
            c.events,
            c.snapshots,
            c.end.reason
        )?;
        let text = report::render_text(&s);
        if args.color.enabled() {
            write!(out, "{}", report::colorize(&text))?;
        } else {
            write!(out, "{text}")?;
        }
    }
    Ok(())
}

/// `tracer events --from FILE`: the recorded event lines, as `events` printed them.
pub fn replay_events(args: &EventsArgs, path: &Path) -> anyhow::Result<()> {
    let f = &args.filter;
    if f.spec()? != crate::filter::FilterSpec::default() {
        anyhow::bail!(
            "--from replays a recording as it was filtered when recorded; filters cannot be given with it"
        );
    }
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if !args.json {
        writeln!(out, "{}", event::text_header_with(args.timestamps))?;
    }
    let color = !args.json && args.color.enabled();
    let result = super::read(open(path)?, |e| {
        let t = e.to_transition();
        if args.json {
            event::write(&mut out, &t, true)
        } else {
            let line = event::text_line_with(&t, args.timestamps);
            let line = if color { event::paint(&t, &line) } else { line };
            writeln!(out, "{line}")
        }
    });
    match out.flush() {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        other => other?,
    }
    match result {
        Err(super::RecordError::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => {
            other.with_context(|| format!("{}", path.display()))?;
            Ok(())
        }
    }
}
