//! The full-screen view: owns the terminal (raw mode, alternate screen) for its lifetime and
//! restores it on drop, so every way out of `top` (quit, error, panic) leaves a usable shell.
use anyhow::{Context, Result};
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::Paragraph,
    DefaultTerminal,
};

use crate::tui::{
    frame::{self, Summary, Tone},
    view::{GroupBy, Row, View},
};

pub struct Screen {
    term: DefaultTerminal,
}

/// What the keys pressed since the last look asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    Quit,
    /// The view changed or the terminal was resized: draw again.
    Redraw,
    Nothing,
}

impl Screen {
    pub fn open() -> Result<Screen> {
        // `try_init` also installs a panic hook that restores the terminal before the panic
        // message prints; on a failure half-way, undo what was done.
        let term = ratatui::try_init()
            .inspect_err(|_| ratatui::restore())
            .context("set up the terminal")?;
        Ok(Screen { term })
    }

    /// Applies every key pressed since the last call to `view`, without waiting.
    pub fn input(&mut self, view: &mut View) -> Result<Input> {
        let mut input = Input::Nothing;
        while event::poll(std::time::Duration::ZERO).context("poll the terminal")? {
            match event::read().context("read the terminal")? {
                Event::Key(k) if k.kind != KeyEventKind::Release => match key(k, *view) {
                    Some(Action::Quit) => return Ok(Input::Quit),
                    Some(Action::Show(v)) => {
                        *view = v;
                        input = Input::Redraw;
                    }
                    None => {}
                },
                Event::Resize(..) => input = Input::Redraw,
                _ => {}
            }
        }
        Ok(input)
    }

    pub fn draw(&mut self, s: &Summary, rows: &[Row], view: View, refresh: &str) -> Result<()> {
        self.term
            .draw(|f| render(f, s, rows, view, refresh))
            .context("draw the screen")?;
        Ok(())
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// What a key asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    Show(View),
}

/// What `k` does to `view`; `None` for keys that do nothing.
pub fn key(k: KeyEvent, view: View) -> Option<Action> {
    // `v` and `p` toggle back to the default grouping.
    let toggle = |g: GroupBy| if view.group == g { GroupBy::Reason } else { g };
    let group = |group| Some(Action::Show(View { group, ..view }));
    match k.code {
        // Raw mode turns Ctrl-C into a key instead of SIGINT.
        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Some(Action::Quit),
        KeyCode::Char('q') | KeyCode::Esc => Some(Action::Quit),
        KeyCode::Char('v') => group(toggle(GroupBy::Vcpu)),
        KeyCode::Char('p') => group(toggle(GroupBy::Pid)),
        KeyCode::Char('r') => group(GroupBy::Reason),
        KeyCode::Char('s') => Some(Action::Show(View {
            sort: view.sort.next(),
            ..view
        })),
        _ => None,
    }
}

fn render(f: &mut ratatui::Frame, s: &Summary, rows: &[Row], view: View, refresh: &str) {
    let [body, foot] =
        Layout::vertical([Constraint::Min(1), Constraint::Length(1)]).areas(f.area());
    let laid = frame::layout(s, rows, view, usize::from(body.width));
    let hidden_rows = laid.lines.len().saturating_sub(usize::from(body.height));
    let lines: Vec<Line> = laid.lines.into_iter().map(|l| line(l, body)).collect();
    f.render_widget(Paragraph::new(lines), body);
    f.render_widget(
        Paragraph::new(footer(view, refresh, laid.hidden_columns, hidden_rows)),
        foot,
    );
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

/// The keys, with the current grouping and sort lit, what did not fit, and how to read
/// the numbers.
fn footer(view: View, refresh: &str, hidden_columns: usize, hidden_rows: usize) -> Line<'static> {
    let key = |k: &'static str| Span::styled(k, Style::new().add_modifier(Modifier::BOLD));
    let pick = |label: &'static str, on: bool| {
        if on {
            Span::styled(
                label,
                Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
            )
        } else {
            Span::raw(label)
        }
    };
    let mut spans = vec![
        key(" q"),
        Span::raw(" quit  "),
        key("r"),
        pick(" reason  ", view.group == GroupBy::Reason),
        key("v"),
        pick(" vCPU  ", view.group == GroupBy::Vcpu),
        key("p"),
        pick(" process  ", view.group == GroupBy::Pid),
        key("s"),
        Span::raw(format!(" sort: {}   ", view.sort.name())),
    ];
    let more: Vec<String> = [(hidden_rows, "row"), (hidden_columns, "column")]
        .into_iter()
        .filter(|&(n, _)| n > 0)
        .map(|(n, what)| format!("+{n} {what}{}", if n == 1 { "" } else { "s" }))
        .collect();
    if !more.is_empty() {
        // Before the legend: on a narrow screen, this is what must not be cut off.
        let text = format!("{} off screen   ", more.join(", "));
        spans.push(Span::styled(text, style(Tone::Alert)));
    }
    spans.push(Span::styled(
        format!("exits/s over {refresh}, latency since start"),
        style(Tone::Dim),
    ));
    Line::from(spans)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::view::SortBy;

    fn press(c: char, view: View) -> Option<Action> {
        key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE), view)
    }

    #[test]
    fn keys() {
        let start = View::default();
        let by = |group| Some(Action::Show(View { group, ..start }));
        assert_eq!(press('v', start), by(GroupBy::Vcpu));
        assert_eq!(press('p', start), by(GroupBy::Pid));
        let vcpu = View {
            group: GroupBy::Vcpu,
            ..start
        };
        assert_eq!(press('v', vcpu), by(GroupBy::Reason), "v toggles back");
        assert_eq!(press('p', vcpu), by(GroupBy::Pid));
        assert_eq!(press('r', vcpu), by(GroupBy::Reason));
        let sorted = Some(Action::Show(View {
            sort: SortBy::Total,
            ..start
        }));
        assert_eq!(press('s', start), sorted);
        assert_eq!(press('q', start), Some(Action::Quit));
        assert_eq!(press('c', start), None, "c alone does nothing");
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(key(ctrl_c, start), Some(Action::Quit));
        let esc = KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE);
        assert_eq!(key(esc, start), Some(Action::Quit));
    }

    #[test]
    fn footer_says_what_is_off_screen() {
        let text = |l: Line| {
            l.spans
                .iter()
                .map(|s| s.content.to_string())
                .collect::<String>()
        };
        let f = text(footer(View::default(), "1.00s", 0, 0));
        assert!(
            f.ends_with("sort: exits/s   exits/s over 1.00s, latency since start"),
            "{f}"
        );
        let f = text(footer(View::default(), "1.00s", 2, 1));
        assert!(f.contains("+1 row, +2 columns off screen"), "{f}");
    }
}
