//! `tracer top`: a full-screen live view (ratatui on crossterm).
//!
//! Every `--interval` it reads the kernel aggregates and the sock_diag
//! population (the same inputs as the summary) and redraws. Per-group
//! handshake p50/p99 come from the event stream in userspace (the kernel's
//! flow table keeps only count, sum and max per flow); the counts come from
//! the aggregates, exact even when the ring buffer drops events.

pub mod model;
pub mod ui;

use std::{io::IsTerminal, time::Instant};

use ratatui::crossterm::event::{self as ct, Event as TermEvent, KeyCode, KeyEvent, KeyModifiers};
use tokio::sync::mpsc;

use self::{
    model::{Column, Model},
    ui::View,
};
use crate::{cli::TopArgs, SummaryOptions, Tracer};

/// What a key does to the view; true: quit.
pub fn key(v: &mut View, k: KeyEvent) -> bool {
    if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('c') {
        return true;
    }
    if v.editing {
        match k.code {
            KeyCode::Enter => v.editing = false,
            KeyCode::Esc => {
                v.editing = false;
                v.filter.clear();
            }
            KeyCode::Backspace => {
                v.filter.pop();
            }
            KeyCode::Char(c) => v.filter.push(c),
            _ => {}
        }
        return false;
    }
    match k.code {
        KeyCode::Char('q') | KeyCode::Esc => return true,
        KeyCode::Tab | KeyCode::Char('t') => v.table = v.table.next(),
        KeyCode::Char('<') | KeyCode::Left => v.sort = v.sort.step(-1),
        KeyCode::Char('>') | KeyCode::Right => v.sort = v.sort.step(1),
        KeyCode::Char('i') => v.descending = !v.descending,
        KeyCode::Char('/') => v.editing = true,
        KeyCode::Char('p') | KeyCode::Char(' ') => v.paused = !v.paused,
        KeyCode::Char(c) => {
            if let Some(col) = Column::from_key(c) {
                // Names sort A→Z by default, numbers largest first.
                v.descending = if v.sort == col {
                    !v.descending
                } else {
                    col != Column::Name
                };
                v.sort = col;
            }
        }
        _ => {}
    }
    false
}

fn clock() -> String {
    let t = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    t.get(11..19).unwrap_or(&t).to_string() + " UTC"
}

/// Reads the aggregates and the population into the model.
struct Source {
    tracer: Tracer,
    opts: SummaryOptions,
    t0: Instant,
}

impl Source {
    fn update(&self, m: &mut Model) -> anyhow::Result<()> {
        let snap = self.tracer.snapshot()?;
        let inputs = self.tracer.report_inputs(&snap, &self.opts)?;
        m.update(self.t0.elapsed().as_secs_f64(), &snap, &inputs);
        Ok(())
    }
}

pub async fn run(args: &TopArgs) -> anyhow::Result<()> {
    let tty = std::io::stdout().is_terminal();
    if !tty && !args.once {
        anyhow::bail!(
            "tracer top needs a terminal on stdout; use `tracer top --once` for one frame as text, or `tracer summary`"
        );
    }
    let (mut signals, tracer, mut fd) =
        crate::run::start_streaming(&args.filter, args.ring_kib, true)?;
    crate::run::drop_privileges(&tracer, crate::host::privs::Mode::Serve)?;
    let view = View {
        color: tty && args.color.enabled() || args.color == crate::cli::ColorChoice::Always,
        describe: tracer.filter().describe(),
        interval_s: args.interval.as_secs_f64(),
        clock: clock(),
        ..View::default()
    };
    let src = Source {
        tracer,
        opts: SummaryOptions {
            top: usize::MAX,
            ..Default::default()
        },
        t0: Instant::now(),
    };
    // A minute of history for the sparklines.
    let window = (60.0 / args.interval.as_secs_f64()).ceil() as usize;
    let mut model = Model::new(0.0).with_window(window.min(3600));
    let drain = |rings: &mut crate::run::EventRing, m: &mut Model| {
        rings.drain(|item| {
            if let Ok(e) = item {
                m.event(&e);
            }
        });
    };
    if args.once {
        tokio::time::sleep(args.interval).await;
        // One frame: everything so far, nothing held back for order.
        fd.drain_all(|item| {
            if let Ok(e) = item {
                model.event(&e);
            }
        });
        src.update(&mut model)?;
        let (w, h) = ratatui::crossterm::terminal::size().unwrap_or((80, 24));
        let v = View {
            clock: clock(),
            ..view
        };
        print!("{}", ui::render_text(&model, &v, w.max(80), h.max(24)));
        return Ok(());
    }
    let mut term = ratatui::try_init()?;
    let result = interactive(
        &mut term,
        &mut fd,
        &src,
        &mut model,
        view,
        args,
        &mut signals,
        drain,
    )
    .await;
    ratatui::restore();
    result
}

/// Forward terminal input from a blocking thread.
fn spawn_input() -> mpsc::UnboundedReceiver<TermEvent> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        while let Ok(e) = ct::read() {
            if tx.send(e).is_err() {
                break;
            }
        }
    });
    rx
}

#[expect(
    clippy::too_many_arguments,
    reason = "the loop's state, each owned by run(); a struct would only rename them"
)]
async fn interactive(
    term: &mut ratatui::DefaultTerminal,
    fd: &mut crate::run::EventRing,
    src: &Source,
    model: &mut Model,
    mut view: View,
    args: &TopArgs,
    signals: &mut crate::run::StopSignals,
    drain: impl Fn(&mut crate::run::EventRing, &mut Model),
) -> anyhow::Result<()> {
    let mut input = spawn_input();
    let mut tick = tokio::time::interval(args.interval);
    let stop = signals.wait(args.duration);
    tokio::pin!(stop);
    // The model shown while paused.
    let mut shown: Option<Model> = None;
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tick.tick() => {
                // The kernel side wakes us only once a quarter of the ring
                // is pending: take what a quieter second left first.
                drain(fd, model);
                src.update(model)?;
                view.clock = clock();
            }
            r = fd.readable() => {
                r?;
                drain(fd, model);
                continue;
            }
            e = input.recv() => match e {
                Some(TermEvent::Key(k)) if k.kind != ct::KeyEventKind::Release => {
                    if key(&mut view, k) {
                        return Ok(());
                    }
                }
                Some(_) => {}
                None => return Ok(()),
            },
        }
        if view.paused {
            shown.get_or_insert_with(|| model.clone());
        } else {
            shown = None;
        }
        let m = shown.as_ref().unwrap_or(model);
        term.draw(|f| ui::draw(f, m, &view))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::crossterm::event::KeyEventState;

    fn press(v: &mut View, code: KeyCode) -> bool {
        key(
            v,
            KeyEvent {
                code,
                modifiers: KeyModifiers::NONE,
                kind: ct::KeyEventKind::Press,
                state: KeyEventState::NONE,
            },
        )
    }

    #[test]
    fn keys_sort_switch_filter_pause_and_quit() {
        let mut v = View::default();
        assert!(!press(&mut v, KeyCode::Char('f')));
        assert_eq!((v.sort, v.descending), (Column::Failed, true));
        press(&mut v, KeyCode::Char('f'));
        assert!(!v.descending, "the same key again inverts");
        press(&mut v, KeyCode::Char('a'));
        assert_eq!((v.sort, v.descending), (Column::Name, false));
        press(&mut v, KeyCode::Char('>'));
        assert_eq!(v.sort, Column::ConnRate);
        press(&mut v, KeyCode::Tab);
        assert_eq!(v.table, model::Table::Ports);
        press(&mut v, KeyCode::Char('/'));
        for c in "q80".chars() {
            assert!(!press(&mut v, KeyCode::Char(c)), "q is text while editing");
        }
        press(&mut v, KeyCode::Backspace);
        press(&mut v, KeyCode::Enter);
        assert_eq!((v.filter.as_str(), v.editing), ("q8", false));
        press(&mut v, KeyCode::Char('p'));
        assert!(v.paused);
        assert!(press(&mut v, KeyCode::Char('q')));
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert!(key(&mut View::default(), ctrl_c));
    }
}
