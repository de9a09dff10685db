//! The interactive state of the full-screen view and what each key does to it. Pure, so
//! every key is unit-tested without a terminal.
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use regex::{Regex, RegexBuilder};

use crate::{data::group::By, tui::view::View};

/// Longest filter accepted: the regex must stay cheap to build at every keystroke.
const FILTER_MAX: usize = 200;

#[derive(Debug, Default)]
pub struct Ui {
    pub view: View,
    /// Rows whose label matches are shown (`/`).
    pub filter: Option<Regex>,
    /// The filter being typed, while `/` is open.
    pub typing: Option<String>,
    /// Why the filter typed last was refused.
    pub error: Option<String>,
    /// Index of the first row shown; `usize::MAX` for the last page (clamped when drawn).
    pub scroll: usize,
    /// The display is frozen; recording goes on.
    pub paused: bool,
    pub help: bool,
    /// The panel of the first row shown: its keys and guest RIPs ([`super::keys`]).
    pub keys: bool,
}

/// What a key asks of `top`, beyond the state it changed.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Quit,
    /// Draw again.
    Redraw,
    /// Freeze or thaw the display (`ui.paused` says which).
    Pause,
    /// Count totals and latencies from now on.
    Reset,
    Nothing,
}

impl Ui {
    /// Applies `k`; `page` is how many rows the screen shows.
    pub fn key(&mut self, k: KeyEvent, page: usize) -> Action {
        // Raw mode turns Ctrl-C into a key instead of SIGINT.
        if k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL) {
            return Action::Quit;
        }
        if self.typing.is_some() {
            return self.type_filter(k);
        }
        let page = page.max(1);
        let group = |ui: &mut Ui, group: By| {
            // `v` and `p` toggle back to the default grouping.
            ui.view.group = if ui.view.group == group {
                By::Reason
            } else {
                group
            };
            ui.scroll = 0;
        };
        match k.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Esc if self.help => self.help = false,
            KeyCode::Esc if self.keys => self.keys = false,
            KeyCode::Esc if self.filter.is_some() => self.filter = None,
            KeyCode::Esc => return Action::Quit,
            KeyCode::Char('?' | 'h') => self.help = !self.help,
            KeyCode::Enter | KeyCode::Char('d') => self.keys = !self.keys,
            KeyCode::Up | KeyCode::Char('k') => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => self.scroll = self.scroll.saturating_add(1),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(page),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_add(page),
            KeyCode::Home | KeyCode::Char('g') => self.scroll = 0,
            KeyCode::End | KeyCode::Char('G') => self.scroll = usize::MAX,
            KeyCode::Char('/') => {
                self.typing = Some(
                    self.filter
                        .as_ref()
                        .map(|f| f.as_str().to_owned())
                        .unwrap_or_default(),
                );
            }
            KeyCode::Char(' ') => {
                self.paused = !self.paused;
                return Action::Pause;
            }
            KeyCode::Char('z') => return Action::Reset,
            KeyCode::Char('r') => {
                self.view.group = By::Reason;
                self.scroll = 0;
            }
            KeyCode::Char('v') => group(self, By::Vcpu),
            KeyCode::Char('p') => group(self, By::Pid),
            KeyCode::Char('s') => self.view.sort = self.view.sort.next(),
            KeyCode::Char('I') => self.view.reverse = !self.view.reverse,
            _ => return Action::Nothing,
        }
        Action::Redraw
    }

    /// A key while the filter is typed: Enter applies it (empty clears), Esc cancels.
    fn type_filter(&mut self, k: KeyEvent) -> Action {
        let Some(text) = &mut self.typing else {
            return Action::Nothing;
        };
        match k.code {
            KeyCode::Enter => {
                let text = std::mem::take(text);
                if text.is_empty() {
                    self.filter = None;
                } else {
                    match RegexBuilder::new(&text).case_insensitive(true).build() {
                        Ok(re) => self.filter = Some(re),
                        Err(e) => {
                            // One line: the regex crate's message spans several.
                            let why = e.to_string();
                            let why = why.lines().last().unwrap_or_default().trim();
                            self.error = Some(why.trim_start_matches("error: ").to_owned());
                            self.typing = Some(text);
                            return Action::Redraw;
                        }
                    }
                }
                self.typing = None;
                self.scroll = 0;
            }
            KeyCode::Esc => self.typing = None,
            KeyCode::Backspace => {
                text.pop();
            }
            KeyCode::Char(c) if text.chars().count() < FILTER_MAX => text.push(c),
            _ => return Action::Nothing,
        }
        self.error = None;
        Action::Redraw
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::view::SortBy;

    fn code(ui: &mut Ui, code: KeyCode) -> Action {
        ui.key(KeyEvent::new(code, KeyModifiers::NONE), 10)
    }

    fn press(ui: &mut Ui, c: char) -> Action {
        code(ui, KeyCode::Char(c))
    }

    fn typed(ui: &mut Ui, text: &str) {
        for c in text.chars() {
            press(ui, c);
        }
    }

    #[test]
    fn grouping_sorting_and_quitting() {
        let mut ui = Ui::default();
        assert_eq!(press(&mut ui, 'v'), Action::Redraw);
        assert_eq!(ui.view.group, By::Vcpu);
        press(&mut ui, 'v');
        assert_eq!(ui.view.group, By::Reason, "v toggles back");
        press(&mut ui, 'p');
        assert_eq!(ui.view.group, By::Pid);
        press(&mut ui, 'r');
        assert_eq!(ui.view.group, By::Reason);
        press(&mut ui, 's');
        assert_eq!(ui.view.sort, SortBy::Total);
        press(&mut ui, 'I');
        assert!(ui.view.reverse);
        assert_eq!(press(&mut ui, 'x'), Action::Nothing);
        assert_eq!(press(&mut ui, 'c'), Action::Nothing, "c alone does nothing");
        assert_eq!(press(&mut ui, 'q'), Action::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(ui.key(ctrl_c, 10), Action::Quit);
    }

    #[test]
    fn scrolling_by_row_page_and_ends() {
        let mut ui = Ui::default();
        code(&mut ui, KeyCode::Up);
        assert_eq!(ui.scroll, 0, "no scrolling above the first row");
        code(&mut ui, KeyCode::Down);
        press(&mut ui, 'j');
        assert_eq!(ui.scroll, 2);
        code(&mut ui, KeyCode::PageDown);
        assert_eq!(ui.scroll, 12);
        code(&mut ui, KeyCode::PageUp);
        press(&mut ui, 'k');
        assert_eq!(ui.scroll, 1);
        code(&mut ui, KeyCode::End);
        assert_eq!(ui.scroll, usize::MAX, "clamped to the last page when drawn");
        code(&mut ui, KeyCode::PageDown);
        assert_eq!(ui.scroll, usize::MAX);
        code(&mut ui, KeyCode::Home);
        assert_eq!(ui.scroll, 0);
        ui.scroll = 5;
        press(&mut ui, 'v');
        assert_eq!(ui.scroll, 0, "a new grouping starts at the top");
    }

    #[test]
    fn filter_is_typed_applied_refused_and_cleared() {
        let mut ui = Ui::default();
        press(&mut ui, '/');
        typed(&mut ui, "VCPU [12]x");
        code(&mut ui, KeyCode::Backspace);
        assert_eq!(ui.typing.as_deref(), Some("VCPU [12]"));
        assert_eq!(press(&mut ui, 'q'), Action::Redraw, "q is typed, not quit");
        code(&mut ui, KeyCode::Backspace);
        code(&mut ui, KeyCode::Enter);
        let re = ui.filter.as_ref().expect("filter");
        assert!(re.is_match("pid 7 vcpu 1") && !re.is_match("pid 7 vcpu 3"));
        assert_eq!(ui.typing, None);

        press(&mut ui, '/');
        assert_eq!(ui.typing.as_deref(), Some("VCPU [12]"), "edits the filter");
        code(&mut ui, KeyCode::Esc);
        assert!(
            ui.typing.is_none() && ui.filter.is_some(),
            "Esc cancels the edit"
        );

        press(&mut ui, '/');
        typed(&mut ui, "(");
        code(&mut ui, KeyCode::Enter);
        assert!(ui.error.as_deref().is_some_and(|e| e.contains("unclosed")));
        assert!(ui.typing.is_some(), "a bad regex stays open for editing");
        code(&mut ui, KeyCode::Backspace);
        assert_eq!(ui.error, None);
        ui.typing = Some(String::new());
        code(&mut ui, KeyCode::Enter);
        assert!(ui.filter.is_none(), "an empty filter clears it");

        press(&mut ui, '/');
        typed(&mut ui, "io");
        code(&mut ui, KeyCode::Enter);
        assert_eq!(code(&mut ui, KeyCode::Esc), Action::Redraw);
        assert!(ui.filter.is_none(), "Esc clears the filter before it quits");
        assert_eq!(code(&mut ui, KeyCode::Esc), Action::Quit);
    }

    #[test]
    fn help_pause_and_reset() {
        let mut ui = Ui::default();
        press(&mut ui, '?');
        assert!(ui.help);
        assert_eq!(code(&mut ui, KeyCode::Esc), Action::Redraw);
        assert!(!ui.help, "Esc closes the help");
        press(&mut ui, 'h');
        press(&mut ui, '?');
        assert!(!ui.help);
        assert_eq!(press(&mut ui, ' '), Action::Pause);
        assert!(ui.paused);
        assert_eq!(press(&mut ui, ' '), Action::Pause);
        assert!(!ui.paused);
        assert_eq!(press(&mut ui, 'z'), Action::Reset);
    }

    #[test]
    fn the_keys_panel_opens_with_enter_or_d_and_esc_closes_it_first() {
        let mut ui = Ui::default();
        code(&mut ui, KeyCode::Enter);
        assert!(ui.keys);
        press(&mut ui, 'd');
        assert!(!ui.keys);
        press(&mut ui, 'd');
        ui.filter = regex::Regex::new("io").ok();
        assert_eq!(code(&mut ui, KeyCode::Esc), Action::Redraw);
        assert!(
            !ui.keys && ui.filter.is_some(),
            "Esc closes the panel first"
        );
    }
}
