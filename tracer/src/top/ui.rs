//! Drawing `tracer top` (ratatui): header with host-wide rates, two
//! sparklines, the table and a key line. Fits 80x24.

use ratatui::{
    layout::{Alignment, Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row as TRow, Sparkline, Table as TTable},
    Frame,
};

use super::model::{sort_rows, Column, Model, Row, Table};

/// What the operator chose: table, sort, filter, pause.
#[derive(Clone, Debug)]
pub struct View {
    pub table: Table,
    pub sort: Column,
    pub descending: bool,
    /// Rows whose name contains this (case-insensitive).
    pub filter: String,
    /// Typing the filter (after `/`).
    pub editing: bool,
    pub paused: bool,
    pub color: bool,
    /// Shown in the title line.
    pub describe: String,
    pub interval_s: f64,
    pub clock: String,
}

impl Default for View {
    fn default() -> Self {
        View {
            table: Table::Peers,
            sort: Column::ConnRate,
            descending: true,
            filter: String::new(),
            editing: false,
            paused: false,
            color: false,
            describe: String::new(),
            interval_s: 1.0,
            clock: String::new(),
        }
    }
}

impl View {
    fn style(&self, s: Style) -> Style {
        if self.color {
            s
        } else {
            Style::default()
        }
    }

    /// The rows of the chosen table, filtered and sorted.
    pub fn rows(&self, m: &Model) -> Vec<Row> {
        let needle = self.filter.to_lowercase();
        let mut rows: Vec<Row> = m
            .rows(self.table)
            .iter()
            .filter(|r| needle.is_empty() || r.name.to_lowercase().contains(&needle))
            .cloned()
            .collect();
        sort_rows(&mut rows, self.sort, self.descending);
        rows
    }
}

fn rate(v: f64) -> String {
    if v >= 100.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn ms(us: Option<f64>) -> String {
    match us {
        None => "-".into(),
        Some(us) => {
            let v = us / 1e3;
            if v < 10.0 {
                format!("{v:.3}")
            } else if v < 100.0 {
                format!("{v:.2}")
            } else if v < 1000.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        }
    }
}

fn header(m: &Model, v: &View) -> Vec<Line<'static>> {
    let r = &m.rates;
    let bold = v.style(Style::default().add_modifier(Modifier::BOLD));
    let warn = v.style(Style::default().fg(Color::Red));
    let title = format!(
        "tracer top  {}  every {}s  {}{}",
        v.clock,
        v.interval_s,
        v.describe,
        if v.paused { "  [PAUSED]" } else { "" }
    );
    let failed_style = if r.failed > 0.0 {
        warn
    } else {
        Style::default()
    };
    vec![
        Line::from(Span::styled(title, bold)),
        Line::from(format!(
            "connects/s {}  accepts/s {}  resets/s {}  drops {}",
            rate(r.connects),
            rate(r.accepts),
            rate(r.resets),
            r.ring_drops + r.flow_table_full
        )),
        Line::from(Span::styled(
            format!(
                "failed/s {}: refused {} timeout {} unreachable {} aborted {}",
                rate(r.failed),
                rate(r.refused),
                rate(r.timed_out),
                rate(r.unreachable),
                rate(r.aborted)
            ),
            failed_style,
        )),
        Line::from(format!(
            "TIME_WAIT in/s {} now {}  CLOSE_WAIT now {}  ESTABLISHED now {}",
            rate(r.time_wait_entries),
            r.time_wait_now,
            r.close_wait_now,
            r.established_now
        )),
    ]
}

fn sparkline(f: &mut Frame, area: Rect, title: String, data: Vec<u64>, style: Style) {
    let [t, s] = Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(area);
    f.render_widget(Paragraph::new(title), t);
    // The newest samples at the right edge.
    let skip = data.len().saturating_sub(s.width as usize);
    let data: Vec<u64> = data[skip..].to_vec();
    f.render_widget(Sparkline::default().data(&data).style(style), s);
}

fn tabs(v: &View) -> Line<'static> {
    let mut spans = Vec::new();
    for t in Table::ALL {
        let s = if t == v.table {
            v.style(Style::default().add_modifier(Modifier::REVERSED))
        } else {
            Style::default()
        };
        let name = if t == v.table {
            format!("[{}]", t.title())
        } else {
            t.title().to_string()
        };
        spans.push(Span::styled(name, s));
        spans.push(Span::raw(" "));
    }
    spans.push(Span::raw(format!(
        " sort {}{}",
        v.sort.title(),
        if v.descending { "▼" } else { "▲" }
    )));
    if v.editing || !v.filter.is_empty() {
        spans.push(Span::raw(format!(
            "  filter: {}{}",
            v.filter,
            if v.editing { "_" } else { "" }
        )));
    }
    Line::from(spans)
}

/// `name` cut to `width` columns, keeping its end (the port) visible.
fn fit(name: &str, width: usize) -> String {
    let n = name.chars().count();
    if n <= width || width < 2 {
        return name.to_string();
    }
    let tail: String = name.chars().skip(n - (width - 1)).collect();
    format!("…{tail}")
}

/// Columns the numeric columns and the spacing take.
const FIXED_WIDTH: u16 = 59;

fn cells(r: &Row, name_width: usize) -> [String; 10] {
    [
        fit(&r.name, name_width),
        rate(r.conn_rate),
        r.established.to_string(),
        r.failed.to_string(),
        ms(r.p50_us),
        ms(r.p99_us),
        r.retransmitted.to_string(),
        r.time_wait_in.to_string(),
        r.time_wait_now.map_or("-".into(), |n| n.to_string()),
        r.resets.to_string(),
    ]
}

const WIDTHS: [Constraint; 10] = [
    Constraint::Min(16),
    Constraint::Length(6),
    Constraint::Length(6),
    Constraint::Length(5),
    Constraint::Length(6),
    Constraint::Length(6),
    Constraint::Length(4),
    Constraint::Length(6),
    Constraint::Length(6),
    Constraint::Length(5),
];

fn table(f: &mut Frame, area: Rect, m: &Model, v: &View) {
    let head = Column::ALL.map(|c| {
        let mut s = Style::default().add_modifier(Modifier::BOLD);
        if c == v.sort {
            s = s.add_modifier(Modifier::UNDERLINED);
        }
        let line = Line::from(c.title());
        let line = if c == Column::Name {
            line
        } else {
            line.alignment(Alignment::Right)
        };
        Cell::from(line).style(v.style(s))
    });
    let rows = v.rows(m);
    let name_width = area.width.saturating_sub(FIXED_WIDTH).max(16) as usize;
    let body: Vec<TRow> = rows
        .iter()
        .map(|r| {
            let c = cells(r, name_width);
            let mut out = Vec::with_capacity(c.len());
            for (i, s) in c.into_iter().enumerate() {
                let line = Line::from(s);
                out.push(Cell::from(if i == 0 {
                    line
                } else {
                    line.alignment(Alignment::Right)
                }));
            }
            let style = if r.failed > 0 || r.resets > 0 {
                v.style(Style::default().fg(Color::Yellow))
            } else {
                Style::default()
            };
            TRow::new(out).style(style)
        })
        .collect();
    let empty = body.is_empty();
    f.render_widget(
        TTable::new(body, WIDTHS)
            .header(TRow::new(head))
            .column_spacing(1),
        area,
    );
    if empty && area.height > 2 {
        let msg = if v.filter.is_empty() {
            "(no connections seen yet)"
        } else {
            "(no row matches the filter)"
        };
        let [_, line, _] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Min(0),
        ])
        .areas(area);
        f.render_widget(Paragraph::new(msg), line);
    }
}

fn keys(v: &View) -> Line<'static> {
    if v.editing {
        return Line::from("filter: type text, Enter to apply, Esc to clear");
    }
    Line::from("q quit  Tab table  </> sort  i invert  / filter  p pause  keys: README")
}

/// Draw one frame.
pub fn draw(f: &mut Frame, m: &Model, v: &View) {
    let [head, spark, tab, body, foot] = Layout::vertical([
        Constraint::Length(4),
        Constraint::Length(2),
        Constraint::Length(1),
        Constraint::Min(2),
        Constraint::Length(1),
    ])
    .areas(f.area());
    f.render_widget(Paragraph::new(header(m, v)), head);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(spark);
    let cmax = m.connects_history.iter().max().copied().unwrap_or(0);
    let tmax = m.time_wait_history.iter().max().copied().unwrap_or(0);
    sparkline(
        f,
        left,
        format!(
            "connects/s, last {} samples (max {cmax})",
            m.connects_history.len()
        ),
        m.connects_history.iter().copied().collect(),
        v.style(Style::default().fg(Color::Green)),
    );
    sparkline(
        f,
        right.inner(ratatui::layout::Margin {
            horizontal: 1,
            vertical: 0,
        }),
        format!("TIME_WAIT now (max {tmax})"),
        m.time_wait_history.iter().copied().collect(),
        v.style(Style::default().fg(Color::Yellow)),
    );
    f.render_widget(Paragraph::new(tabs(v)), tab);
    table(f, body, m, v);
    f.render_widget(Paragraph::new(keys(v)), foot);
}

/// One frame as plain text lines (for --once and tests).
pub fn render_text(m: &Model, v: &View, width: u16, height: u16) -> String {
    let backend = ratatui::backend::TestBackend::new(width, height);
    let mut term = ratatui::Terminal::new(backend).expect("a test backend never fails");
    term.draw(|f| draw(f, m, v))
        .expect("a test backend never fails");
    let buf = term.backend().buffer();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let mut line = String::new();
        for x in 0..buf.area.width {
            line.push_str(buf[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        host::diag::DiagSocket,
        model::{Replay, Snapshot},
        report::SocketTally,
        ReportInputs,
    };

    fn model() -> Model {
        let mut r = Replay::default();
        for i in 0..7 {
            r.active_open(i, 10, [10, 0, 0, 1], 80, 1_000_000, 0);
            r.active_close_to_time_wait(i, true);
        }
        r.refused(50, 10, [10, 0, 0, 2], 81);
        for i in 0..3 {
            r.passive_open(100 + i, 11, [10, 0, 0, 3], 8080, 30_000, 0);
        }
        let snap: Snapshot = r.snapshot();
        let tw = DiagSocket::test(
            tracer_common::state::TIME_WAIT,
            "10.0.0.9",
            40000,
            "10.0.0.1",
            80,
        );
        let inputs = ReportInputs {
            duration_s: 1.0,
            filter: String::new(),
            top: usize::MAX,
            sockets: SocketTally::of(&snap, crate::DEFAULT_PORT_RANGE, &[tw]),
            sysctls: Default::default(),
            pressure_warn_pct: 50.0,
            close_wait_leaks: Vec::new(),
            close_wait_threshold_s: 30.0,
            now_sec: 0,
            cgroup_paths: Default::default(),
            namespaces: Vec::new(),
            coverage: Default::default(),
            listen: Default::default(),
        };
        let mut m = Model::new(0.0);
        m.update(1.0, &snap, &inputs);
        m
    }

    fn row<'a>(screen: &'a str, name: &str) -> Vec<&'a str> {
        screen
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no row {name} in\n{screen}"))
            .split_whitespace()
            .collect()
    }

    #[test]
    fn fits_80x24_with_every_column() {
        let v = View::default();
        let s = render_text(&model(), &v, 80, 24);
        assert_eq!(s.lines().count(), 24);
        assert!(s.lines().all(|l| l.chars().count() <= 80));
        assert!(s.contains("connects/s 8.0  accepts/s 3.0"), "{s}");
        assert!(s.contains("failed/s 1.0: refused 1.0 timeout 0"), "{s}");
        assert!(s.contains("TIME_WAIT in/s 7.0 now 1"), "{s}");
        let head = row(&s, "NAME");
        assert_eq!(
            head,
            ["NAME", "CONN/s", "EST", "FAIL", "P50ms", "P99ms", "RETX", "TW_IN", "TWNOW", "RST"]
        );
        // name, conn/s, est, fail, p50, p99, retx, tw_in, tw_now, rst
        assert_eq!(
            row(&s, "10.0.0.1:80"),
            ["10.0.0.1:80", "7.0", "7", "0", "-", "-", "0", "7", "1", "0"]
        );
        assert_eq!(row(&s, "10.0.0.2:81")[3], "1");
        assert!(s.contains("[Peers]"), "{s}");
        assert!(s.contains("q quit"), "{s}");
    }

    #[test]
    fn long_names_keep_their_port() {
        assert_eq!(fit("127.78.250.3 -> :57149", 21), "…7.78.250.3 -> :57149");
        assert_eq!(fit("10.0.0.1:80", 21), "10.0.0.1:80");
    }

    #[test]
    fn sort_filter_and_tables_change_the_screen() {
        let m = model();
        let mut v = View {
            sort: Column::Failed,
            ..View::default()
        };
        let s = render_text(&m, &v, 80, 24);
        let first = s
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("NAME"))
            .nth(1)
            .unwrap();
        assert!(first.starts_with("10.0.0.2:81"), "{s}");
        v.filter = "8080".into();
        let s = render_text(&m, &v, 80, 24);
        assert!(
            s.contains("10.0.0.3 -> :8080") && !s.contains("10.0.0.1:80"),
            "{s}"
        );
        v.filter = "nothing".into();
        assert!(render_text(&m, &v, 80, 24).contains("(no row matches the filter)"));
        v.filter.clear();
        v.table = Table::Processes;
        let s = render_text(&m, &v, 80, 24);
        assert!(s.contains("[Processes]"), "{s}");
        assert_eq!(row(&s, "10/")[1..4], ["8.0", "7", "1"], "{s}");
    }
}
