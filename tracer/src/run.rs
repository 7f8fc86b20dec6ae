//! The two modes, on tokio: stream events, or aggregate and report.

use std::{
    io::{self, BufWriter, Write},
    time::Duration,
};

use tokio::signal::unix::{signal, Signal, SignalKind};
use tracer_common::counter;

use crate::{
    cli::{EventsArgs, SummaryArgs},
    event::{self, Clock, Transition},
    host::privs,
    report, Tracer,
};

/// SIGINT, SIGTERM and SIGHUP, listened for from the start of a run: one
/// that arrives while the programs load and attach (seconds on a busy
/// machine) is kept and ends the run, with its report, as soon as the
/// tracer is attached. (Installed after attach, such a signal killed the
/// tracer without a report, or, when it was started with SIGINT ignored as a
/// non-interactive shell's background jobs are, was lost: the run went on.)
pub(crate) struct StopSignals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl StopSignals {
    pub(crate) fn install() -> anyhow::Result<Self> {
        let on = |k: SignalKind, name: &str| {
            signal(k).map_err(|e| anyhow::anyhow!("installing the {name} handler: {e}"))
        };
        Ok(StopSignals {
            int: on(SignalKind::interrupt(), "SIGINT")?,
            term: on(SignalKind::terminate(), "SIGTERM")?,
            hup: on(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// Resolves on a stop signal (also one that came before this call), or
    /// after `duration`.
    pub(crate) async fn wait(&mut self, duration: Option<Duration>) {
        let timer = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
            _ = self.hup.recv() => {}
            _ = timer => {}
        }
    }
}

/// Drop the capabilities `mode` no longer needs, now that everything is
/// attached and open (see `privs`).
pub(crate) fn drop_privileges(t: &Tracer, mode: privs::Mode) -> anyhow::Result<()> {
    let d = privs::drop_after_attach(mode, || t.snapshot().is_ok())?;
    t.probe.harvest_follows_drop();
    log::info!(
        "capabilities after attach: {} (before: {})",
        privs::describe(&d.kept),
        privs::describe(&d.before)
    );
    Ok(())
}

/// The event rings, registered for polling.
pub(crate) type EventRing = crate::rings::EventRings;

/// What every streaming mode (events, top, record) starts with: the stop
/// signals first (so one that comes during attach is kept), then the
/// programs with events on (and the flow table if `flows`: top and record
/// show it, events does not), and their ring buffer registered for polling.
pub(crate) fn start_streaming(
    filter: &crate::cli::FilterArgs,
    ring_kib: u32,
    flows: bool,
) -> anyhow::Result<(StopSignals, Tracer, EventRing)> {
    let signals = StopSignals::install()?;
    let mut tracer = Tracer::start_with_btf(
        filter.spec()?,
        true,
        ring_kib * 1024,
        flows,
        filter.btf.clone(),
    )?;
    let rings = crate::rings::EventRings::new(tracer.probe.take_events())
        .map_err(|e| anyhow::anyhow!("polling the event rings: {e}"))?;
    Ok((signals, tracer, rings))
}

/// How often live mode drains the ring buffer between wake-ups: the most an
/// event waits before it is printed.
pub const DRAIN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);

pub async fn events(args: &EventsArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.from {
        return crate::record::run::replay_events(args, path);
    }
    let (mut signals, tracer, mut fd) = start_streaming(&args.filter, args.ring_kib, false)?;
    drop_privileges(&tracer, privs::Mode::Events)?;
    let clock = Clock::now();
    let mut cgroups = crate::host::cgroup::Resolver::new();
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    eprintln!(
        "Tracing TCP state transitions ({}). Ctrl-C to stop.",
        tracer.filter().describe()
    );
    if !args.json {
        writeln!(out, "{}", event::text_header_with(args.timestamps))?;
    }
    let color = !args.json && args.color.enabled();
    let mut printed: u64 = 0;
    let mut bad: u64 = 0;
    // Print (or count as undecodable) one event; `None` ends a drain: its
    // first write error (which stopped the printing), else a flush.
    let mut failed: Option<io::Error> = None;
    let mut print = |item: Option<Result<tracer_common::Event, event::DecodeError>>| {
        let Some(item) = item else {
            return match failed.take() {
                Some(e) => Err(e),
                None => out.flush(),
            };
        };
        if failed.is_some() {
            return Ok(());
        }
        match item {
            Ok(e) => match write_event(&mut out, &e, &clock, &mut cgroups, args, color) {
                Ok(true) => printed += 1,
                Ok(false) => {
                    bad += 1;
                    log::warn!("event of unknown kind {}", e.kind);
                }
                Err(e) => failed = Some(e),
            },
            Err(e) => {
                bad += 1;
                log::warn!("{e}");
            }
        }
        Ok(())
    };
    let stop = signals.wait(args.duration);
    tokio::pin!(stop);
    // The kernel side wakes us only once a quarter of the ring is pending
    // (one wake-up per burst); this timer drains what a quiet period leaves.
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    let result: io::Result<()> = async {
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {}
                r = fd.readable() => r?,
            }
            fd.drain(|i| drop(print(Some(i))));
            print(None)?;
        }
        // Whatever arrived before the stop.
        fd.drain_all(|i| drop(print(Some(i))));
        print(None)
    }
    .await;
    match result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    let snap = tracer.snapshot()?;
    let listener_drops = if tracer.probe.traces_listener_drops() {
        format!(
            ", {} queue drops, {} half-open resets ({} unreadable)",
            snap.counter(counter::QUEUE_DROPS),
            snap.counter(counter::HALF_OPEN_RESETS),
            snap.counter(counter::LISTENER_DROPS_UNREADABLE)
        )
    } else {
        String::new()
    };
    eprintln!(
        "{printed} events printed, {} dropped by the kernel ring buffer (try a larger --ring-kib), {bad} undecodable; {} transitions, {} SYN-ACK retransmits{listener_drops} counted in the kernel",
        snap.counter(counter::RINGBUF_DROPS),
        snap.counter(counter::TRANSITIONS),
        snap.counter(counter::SYNACK_RETRANSMITS)
    );
    Ok(())
}

/// Print one event (a transition, or a listener-side line of its own);
/// false for a kind this build does not know.
fn write_event(
    out: &mut impl Write,
    e: &tracer_common::Event,
    clock: &Clock,
    cgroups: &mut crate::host::cgroup::Resolver,
    args: &EventsArgs,
    color: bool,
) -> io::Result<bool> {
    if e.kind != tracer_common::event_kind::TRANSITION {
        let Some(mut l) = event::ListenerEvent::from_event(e, clock) else {
            return Ok(false);
        };
        l.cgroup = cgroups.path(e.cgroup_id);
        l.write(out, args.json, args.timestamps)?;
        return Ok(true);
    }
    let mut t = Transition::from_event(e, clock);
    t.cgroup = cgroups.path(e.cgroup_id);
    if args.json {
        event::write(out, &t, true)?;
    } else {
        let line = event::text_line_with(&t, args.timestamps);
        let line = if color { event::paint(&t, &line) } else { line };
        writeln!(out, "{line}")?;
    }
    Ok(true)
}

pub async fn summary(args: &SummaryArgs) -> anyhow::Result<()> {
    let mut signals = StopSignals::install()?;
    let tracer = Tracer::aggregating(&args.filter)?;
    drop_privileges(&tracer, privs::Mode::Summary)?;
    match args.duration {
        Some(d) => eprintln!(
            "Aggregating TCP state transitions ({}) for {}...",
            tracer.filter().describe(),
            humantime::format_duration(d)
        ),
        None => eprintln!(
            "Aggregating TCP state transitions ({}); Ctrl-C for the report...",
            tracer.filter().describe()
        ),
    }
    signals.wait(args.duration).await;
    let s = tracer.summary_with(&crate::SummaryOptions {
        top: args.top,
        pressure_warn_pct: args.port_pressure_warn,
        close_wait_threshold: args.close_wait_age,
        owners: true,
    })?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &s)?;
        writeln!(out)?;
    } else if args.color.enabled() {
        write!(out, "{}", report::colorize(&report::render_text(&s)))?;
    } else {
        write!(out, "{}", report::render_text(&s))?;
    }
    Ok(())
}

/// `tracer check`: exit 1 when any mode does not load.
pub fn check(args: &crate::cli::CheckArgs) -> anyhow::Result<()> {
    crate::probe::check_privileges()?;
    let c = crate::probe::check::run()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        print!("{}", crate::probe::check::render(&c));
    }
    if c.modes.iter().any(|m| !m.loaded) {
        anyhow::bail!("the kernel side does not load on Linux {}", c.kernel);
    }
    Ok(())
}
