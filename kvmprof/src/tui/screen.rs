//! The full-screen view: owns the terminal (raw mode, alternate screen) for its lifetime and
//! restores it on drop, so every way out of `top` (quit, error, panic) leaves a usable shell.
use anyhow::{Context, Result};
use crossterm::event::{self, Event, KeyEvent, KeyEventKind};
use ratatui::{
    layout::{Constraint, Flex, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Clear, Paragraph},
    DefaultTerminal,
};

use crate::tui::{
    frame::{self, Detail, Part, Summary, Tone},
    ui::Ui,
    view::{Row, EXITED_MARK},
    watch::GRACE,
};

pub struct Screen {
    term: DefaultTerminal,
    /// Rows the last frame had room for: a page for PgUp/PgDn.
    page: usize,
}

/// What happened at the terminal since the last look.
#[derive(Debug, Default)]
pub struct Events {
    pub keys: Vec<KeyEvent>,
    pub resized: bool,
}

impl Screen {
    pub fn open() -> Result<Screen> {
        // `try_init` also installs a panic hook that restores the terminal before the panic
        // message prints; on a failure half-way, undo what was done.
        let term = ratatui::try_init()
            .inspect_err(|_| ratatui::restore())
            .context("set up the terminal")?;
        Ok(Screen { term, page: 1 })
    }

    /// The keys pressed since the last call, without waiting.
    pub fn events(&mut self) -> Result<Events> {
        let mut events = Events::default();
        while event::poll(std::time::Duration::ZERO).context("poll the terminal")? {
            match event::read().context("read the terminal")? {
                Event::Key(k) if k.kind != KeyEventKind::Release => events.keys.push(k),
                Event::Resize(..) => events.resized = true,
                _ => {}
            }
        }
        Ok(events)
    }

    pub fn page(&self) -> usize {
        self.page
    }

    /// Draws a frame; clamps `ui.scroll` to the rows there are.
    /// `keys`: the lines of the keys panel, if open.
    pub fn draw(
        &mut self,
        s: &Summary,
        rows: &[Row],
        keys: &[String],
        ui: &mut Ui,
        legend: &str,
    ) -> Result<()> {
        let mut page = self.page;
        self.term
            .draw(|f| page = render(f, s, rows, keys, ui, legend))
            .context("draw the screen")?;
        self.page = page;
        Ok(())
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Draws the frame; returns how many rows fit.
fn render(
    f: &mut ratatui::Frame,
    s: &Summary,
    rows: &[Row],
    keys: &[String],
    ui: &mut Ui,
    legend: &str,
) -> usize {
    let [body, foot] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(f.area());
    let laid = frame::layout(s, rows, ui.view, usize::from(body.width), Detail::Full);
    let height = usize::from(body.height);
    let mut lines = above_table(laid.summary, height, laid.header.len() + rows.len().max(1));
    lines.extend(laid.header);
    let page = height.saturating_sub(lines.len()).max(1);
    ui.scroll = ui.scroll.min(rows.len().saturating_sub(page));
    lines.extend(laid.rows.into_iter().skip(ui.scroll).take(page));
    lines.extend(laid.note);
    let lines: Vec<Line> = lines.into_iter().map(|l| line(l, body)).collect();
    f.render_widget(Paragraph::new(lines), body);
    let shown = Shown {
        first: ui.scroll,
        page,
        rows: rows.len(),
        hidden_columns: laid.hidden_columns,
    };
    let footer = footer(ui, &shown, legend, usize::from(foot.width));
    f.render_widget(Paragraph::new(footer), foot);
    if ui.keys && !keys.is_empty() {
        panel(f, keys);
    }
    if ui.help {
        help(f);
    }
    page
}

/// The keys panel ([`crate::tui::keys`]), in a box over the lower part of the table.
fn panel(f: &mut ratatui::Frame, keys: &[String]) {
    let width = keys.iter().map(|l| l.chars().count()).max().unwrap_or(0) + 2;
    let area = f.area();
    let height = (keys.len() as u16 + 2).min(area.height.saturating_sub(1));
    let [_, row, _] = Layout::vertical([
        Constraint::Min(0),
        Constraint::Length(height),
        Constraint::Length(1),
    ])
    .areas(area);
    let [cell] = Layout::horizontal([Constraint::Length((width as u16).min(area.width))])
        .flex(Flex::Center)
        .areas(row);
    let lines: Vec<Line> = keys.iter().map(|l| Line::raw(l.clone())).collect();
    f.render_widget(Clear, cell);
    let block = Block::bordered().title(bold(" keys of the first row shown (Esc closes) "));
    f.render_widget(Paragraph::new(lines).block(block), cell);
}

/// The summary lines that leave room for `table` lines in `height`, and a blank line
/// before the table if there is room for it: on a short screen the latest slow exits go
/// first, then the hooks, then the blank line, then the processes; the title stays.
fn above_table(summary: Vec<(Part, frame::Line)>, height: usize, table: usize) -> Vec<frame::Line> {
    let count = |part| summary.iter().filter(|(p, _)| *p == part).count();
    let mut used = count(Part::Title)
        + count(Part::Slow)
        + count(Part::Hooks)
        + 1
        + count(Part::Processes)
        + table;
    let mut keep = |lines: usize| {
        let fits = used <= height;
        if !fits {
            used -= lines;
        }
        fits
    };
    let slow = keep(count(Part::Slow));
    let hooks = keep(count(Part::Hooks));
    let blank = keep(1);
    let processes = keep(count(Part::Processes));
    let mut lines: Vec<frame::Line> = summary
        .into_iter()
        .filter(|(p, _)| match p {
            Part::Title => true,
            Part::Hooks => hooks,
            Part::Processes => processes,
            Part::Slow => slow,
        })
        .map(|(_, l)| l)
        .collect();
    if blank {
        lines.push(Vec::new());
    }
    lines
}

/// A frame line with its tones as styles; column headers become one bar across the screen.
fn line(segs: frame::Line, area: Rect) -> Line<'static> {
    let heading = segs
        .first()
        .is_some_and(|s| matches!(s.tone, Tone::Heading | Tone::Sorted));
    let used: usize = segs.iter().map(|s| s.text.chars().count()).sum();
    let mut spans: Vec<Span> = segs
        .into_iter()
        .map(|s| Span::styled(s.text, style(s.tone)))
        .collect();
    if heading {
        let pad = usize::from(area.width).saturating_sub(used);
        spans.push(Span::styled(" ".repeat(pad), style(Tone::Heading)));
    }
    Line::from(spans)
}

fn style(t: Tone) -> Style {
    let s = Style::new();
    match t {
        Tone::Plain => s,
        Tone::Title => s.fg(Color::Cyan).add_modifier(Modifier::BOLD),
        Tone::Heading => s.fg(Color::Black).bg(Color::Gray),
        Tone::Sorted => s
            .fg(Color::Black)
            .bg(Color::Cyan)
            .add_modifier(Modifier::BOLD),
        Tone::Alert => s.fg(Color::Red).add_modifier(Modifier::BOLD),
        Tone::Dim => s.fg(Color::DarkGray),
    }
}

/// Which part of the table is on screen.
struct Shown {
    first: usize,
    page: usize,
    rows: usize,
    hidden_columns: usize,
}

fn bold(text: impl Into<String>) -> Span<'static> {
    Span::styled(text.into(), Style::new().add_modifier(Modifier::BOLD))
}

/// The filter being typed; otherwise what the view is in (paused, filtered, sorted), where
/// the table goes on, how to get help, and how to read the numbers. Most important first:
/// a narrow screen cuts the end, and leaves out the legend unless it fits in `width` whole.
fn footer(ui: &Ui, shown: &Shown, legend: &str, width: usize) -> Line<'static> {
    if let Some(text) = &ui.typing {
        let mut spans = vec![
            bold(" filter (regex, any case): /"),
            Span::raw(text.clone()),
            Span::styled("█", Style::new().fg(Color::Cyan)),
        ];
        match &ui.error {
            Some(e) => spans.push(Span::styled(format!("   {e}"), style(Tone::Alert))),
            None => spans.push(Span::styled("   Enter apply  Esc cancel", style(Tone::Dim))),
        }
        return Line::from(spans);
    }
    let mut spans = Vec::new();
    if ui.paused {
        let paused = Style::new()
            .fg(Color::Black)
            .bg(Color::Yellow)
            .add_modifier(Modifier::BOLD);
        spans.push(Span::styled(" PAUSED ", paused));
        spans.push(Span::raw(" "));
    }
    if let Some(re) = &ui.filter {
        let filter = Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD);
        spans.push(Span::styled(format!("/{}/", re.as_str()), filter));
        spans.push(Span::raw("  "));
    }
    spans.extend([
        bold(" ?"),
        Span::raw(" help  "),
        bold("q"),
        Span::raw(" quit  "),
    ]);
    let order = if ui.view.reverse { "↑" } else { "↓" };
    spans.push(Span::raw(format!("sort {} {order}  ", ui.view.sort.name())));
    if shown.rows > shown.page {
        let last = (shown.first + shown.page).min(shown.rows);
        spans.push(Span::raw(format!(
            "rows {}-{last} of {}  ",
            shown.first + 1,
            shown.rows
        )));
    }
    if shown.hidden_columns > 0 {
        let n = shown.hidden_columns;
        let plural = if n == 1 { "" } else { "s" };
        spans.push(Span::styled(
            format!("+{n} column{plural} off screen  "),
            style(Tone::Alert),
        ));
    }
    let line = Line::from(spans);
    if line.width() + legend.chars().count() > width {
        return line;
    }
    let mut spans = line.spans;
    spans.push(Span::styled(legend.to_owned(), style(Tone::Dim)));
    Line::from(spans)
}

/// Every key, in a box over the table.
fn help(f: &mut ratatui::Frame) {
    let keys: [(&str, String); 16] = [
        ("↑ ↓  k j", "scroll one row".into()),
        ("PgUp PgDn", "scroll one page".into()),
        ("Home End  g G", "first / last row".into()),
        (
            "/",
            "filter rows by label (regex, any case); Enter applies".into(),
        ),
        ("", "an empty filter shows every row again".into()),
        ("space", "pause the display (recording goes on)".into()),
        ("s", "sort by the next column".into()),
        ("I", "reverse the sort order".into()),
        ("r v p", "rows by reason, vCPU, process".into()),
        ("z", "reset totals and latencies".into()),
        (
            "Enter d",
            "keys of the first row shown: ports, MMIO addresses and, with".into(),
        ),
        (
            "",
            "--detail, MSRs, CPUID leaves, hypercalls, guest RIPs".into(),
        ),
        ("? h", "show / hide this help".into()),
        (
            "Esc",
            "close help, else the keys, else clear the filter, else quit".into(),
        ),
        ("q  Ctrl-C", "quit".into()),
        (
            EXITED_MARK.trim(),
            format!(
                "a process that exited; it leaves after {} s",
                GRACE.as_secs()
            ),
        ),
    ];
    let lines: Vec<Line> = keys
        .iter()
        .map(|(k, what)| Line::from(vec![bold(format!(" {k:<15} ")), Span::raw(what.clone())]))
        .collect();
    let width = lines.iter().map(Line::width).max().unwrap_or(0) + 3;
    let area = centred(f.area(), width as u16, lines.len() as u16 + 2);
    f.render_widget(Clear, area);
    let block = Block::bordered().title(bold(" kvmprof top: keys (Esc closes) "));
    f.render_widget(Paragraph::new(lines).block(block), area);
}

/// A `width` × `height` area in the middle of `area`, cut to fit.
fn centred(area: Rect, width: u16, height: u16) -> Rect {
    let [row] = Layout::vertical([Constraint::Length(height.min(area.height))])
        .flex(Flex::Center)
        .areas(area);
    let [cell] = Layout::horizontal([Constraint::Length(width.min(area.width))])
        .flex(Flex::Center)
        .areas(row);
    cell
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::view::SortBy;

    fn text(l: Line) -> String {
        l.spans.iter().map(|s| s.content.to_string()).collect()
    }

    fn shown(first: usize, rows: usize, hidden_columns: usize) -> Shown {
        Shown {
            first,
            page: 10,
            rows,
            hidden_columns,
        }
    }

    #[test]
    fn footer_says_what_the_view_is_in_and_what_is_off_screen() {
        let legend = "exits/s over 1.00s, latency since start";
        let mut ui = Ui::default();
        let f = text(footer(&ui, &shown(0, 3, 0), legend, 100));
        assert_eq!(f, format!(" ? help  q quit  sort exits/s ↓  {legend}"));
        let f = text(footer(&ui, &shown(0, 3, 0), legend, 60));
        assert_eq!(f, " ? help  q quit  sort exits/s ↓  ", "no half legend");
        ui.paused = true;
        ui.filter = regex::Regex::new("vcpu 1").ok();
        ui.view.sort = SortBy::Total;
        ui.view.reverse = true;
        let f = text(footer(&ui, &shown(5, 32, 2), legend, 200));
        assert!(
            f.starts_with(" PAUSED  /vcpu 1/   ? help  q quit  sort total ↑  rows 6-15 of 32  +2 columns off screen"),
            "{f}"
        );
        ui.typing = Some("vcpu (".into());
        ui.error = Some("unclosed group".into());
        let f = text(footer(&ui, &shown(0, 3, 0), legend, 100));
        assert_eq!(f, " filter (regex, any case): /vcpu (█   unclosed group");
    }

    #[test]
    fn short_screens_drop_slow_exits_then_hooks_then_the_blank_line_then_processes() {
        let l = |t: &str| {
            vec![frame::Seg {
                text: t.into(),
                tone: Tone::Plain,
            }]
        };
        let summary = || {
            vec![
                (Part::Title, l("title")),
                (Part::Hooks, l("hooks 1")),
                (Part::Hooks, l("hooks 2")),
                (Part::Processes, l("pids")),
                (Part::Title, l("slow 3")),
                (Part::Slow, l("slow exit")),
            ]
        };
        let kept = |height, table| -> Vec<String> {
            above_table(summary(), height, table)
                .iter()
                .map(|l| l.iter().map(|s| s.text.as_str()).collect())
                .collect()
        };
        assert_eq!(
            kept(20, 10),
            [
                "title",
                "hooks 1",
                "hooks 2",
                "pids",
                "slow 3",
                "slow exit",
                ""
            ]
        );
        assert_eq!(
            kept(16, 10),
            ["title", "hooks 1", "hooks 2", "pids", "slow 3", ""]
        );
        assert_eq!(kept(15, 10), ["title", "pids", "slow 3", ""]);
        assert_eq!(kept(13, 10), ["title", "pids", "slow 3"]);
        assert_eq!(kept(12, 10), ["title", "slow 3"]);
        assert_eq!(kept(5, 10), ["title", "slow 3"], "the title stays");
    }
}
