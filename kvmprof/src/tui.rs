//! `kvmprof top`: a live, top-style view of VM exits. Records like `kvmprof record` (through
//! a [`live::Session`]) and, every `--delay`, shows each exit reason's rate over the last interval,
//! its total and its latencies since start, full-screen or, with `--batch`, as plain-text
//! frames on stdout.
//!
//! [`view`] turns the aggregate into rows, [`frame`] lays them out as text, [`screen`] owns
//! the terminal; only this file does I/O between them.
mod frame;
mod screen;
mod view;

use std::{
    collections::BTreeMap,
    io::{self, IsTerminal, Write},
    ops::ControlFlow,
    time::Duration,
};

use anyhow::{bail, Result};

use crate::{
    aggregate::Aggregate,
    cli::TopArgs,
    live::{self, Outcome, Status, Stop},
    target::{self, Target},
    units,
};
use frame::Summary;
use screen::{Input, Screen};
use view::{Rates, View};

/// Shorter refreshes would mostly measure the refresh itself.
const MIN_DELAY: Duration = Duration::from_millis(100);

/// How often the full-screen view looks for keys (and redraws after one).
const KEY_POLL: Duration = Duration::from_millis(100);

/// Length of the aggregate's time-series intervals. `top` writes no interval log, and long
/// intervals keep closed ones from piling up while it runs for hours.
const SERIES_INTERVAL: Duration = Duration::from_secs(3600);

pub async fn top(a: TopArgs) -> Result<()> {
    if a.delay < MIN_DELAY {
        bail!("--delay must be at least {} ms", MIN_DELAY.as_millis());
    }
    if !a.batch && !io::stdout().is_terminal() {
        bail!("standard output is not a terminal: use --batch for plain-text frames");
    }
    target::preflight()?;
    let targets = target::resolve(&a.pids)?;
    let opts = live::Options {
        targets: targets.clone(),
        hooks: a.hooks.hooks,
        duration: None,
        tick: if a.batch {
            a.delay
        } else {
            a.delay.min(KEY_POLL)
        },
        interval: SERIES_INTERVAL,
    };
    // Attach before taking the screen, so that loading errors print on a normal terminal.
    let session = live::Session::start(opts)?;
    let output = if a.batch {
        Output::Batch
    } else {
        Output::Screen(Screen::open()?)
    };
    let mut top = Top::new(&a, targets, output);
    let result = session.run(|agg, st| top.tick(agg, st), |_| Ok(())).await;
    top.finish(result)
}

enum Output {
    Batch,
    Screen(Screen),
}

/// The state of `top` between ticks.
struct Top {
    output: Output,
    delay: Duration,
    iterations: Option<u64>,
    targets: Vec<Target>,
    view: View,
    rates: Rates,
    /// Process names by pid, for rows grouped by process.
    names: BTreeMap<u32, String>,
    /// Refreshes so far.
    frames: u64,
    /// When the next refresh is due, in time since recording began.
    next: Duration,
    /// Whether the screen shows a frame yet.
    drawn: bool,
    /// What made `tick` stop the recording.
    error: Option<anyhow::Error>,
}

impl Top {
    fn new(a: &TopArgs, targets: Vec<Target>, output: Output) -> Top {
        Top {
            output,
            delay: a.delay,
            iterations: a.iterations,
            names: targets.iter().map(|t| (t.pid, t.name.clone())).collect(),
            targets,
            view: View::default(),
            rates: Rates::default(),
            frames: 0,
            next: a.delay,
            drawn: false,
            error: None,
        }
    }

    /// The session's tick callback: an error stops the recording and is kept for `finish`.
    fn tick(&mut self, agg: &Aggregate, st: &Status) -> ControlFlow<()> {
        self.step(agg, st).unwrap_or_else(|e| {
            self.error = Some(e);
            ControlFlow::Break(())
        })
    }

    fn step(&mut self, agg: &Aggregate, st: &Status) -> Result<ControlFlow<()>> {
        if self.done() {
            return Ok(ControlFlow::Break(()));
        }
        let mut redraw = !self.drawn;
        if let Output::Screen(screen) = &mut self.output {
            match screen.input(&mut self.view)? {
                Input::Quit => return Ok(ControlFlow::Break(())),
                Input::Redraw => redraw = true,
                Input::Nothing => {}
            }
        }
        let refresh = st.elapsed >= self.next;
        if refresh {
            self.refresh(agg, st.elapsed);
            // After a stall, resume the rhythm instead of catching up in a burst.
            self.next = (self.next + self.delay).max(st.elapsed + self.delay / 2);
        }
        let flow = match self.output {
            Output::Batch if refresh => self.print(agg, st)?,
            Output::Screen(_) if refresh || redraw => {
                self.draw(agg, st)?;
                ControlFlow::Continue(())
            }
            _ => ControlFlow::Continue(()),
        };
        Ok(if self.done() {
            ControlFlow::Break(())
        } else {
            flow
        })
    }

    /// Ends the interval of the next frame.
    fn refresh(&mut self, agg: &Aggregate, at: Duration) {
        self.rates.sample(agg, at);
        self.learn_names(agg);
        self.frames += 1;
    }

    /// Gives the terminal back, then reports how recording ended.
    fn finish(mut self, result: Result<Outcome>) -> Result<()> {
        let batch = matches!(self.output, Output::Batch);
        // Dropping the screen restores the terminal, before anything is printed.
        self.output = Output::Batch;
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        let out = result?;
        if out.stop == Stop::TargetsExited {
            // Without a last frame, `--batch` would not show the exits since the previous
            // one, or anything at all of a target that lived less than `--delay`.
            if batch && !self.done() {
                self.refresh(&out.aggregate, out.elapsed);
                let st = Status {
                    plan: &out.plan,
                    elapsed: out.elapsed,
                    counters: out.counters,
                    exited: &out.exited,
                    own_cost: out.own_cost.clone(),
                };
                // Whether stdout was closed no longer matters: this is the last frame.
                let _ = self.print(&out.aggregate, &st)?;
            }
            eprintln!("kvmprof: every watched process exited");
        }
        Ok(())
    }

    /// Whether `-n` frames have been shown.
    fn done(&self) -> bool {
        self.iterations.is_some_and(|n| self.frames >= n)
    }

    /// Names the processes seen for the first time (keys are sorted by pid).
    fn learn_names(&mut self, agg: &Aggregate) {
        let mut last = None;
        for key in agg.keys().keys() {
            if last != Some(key.pid) && !self.names.contains_key(&key.pid) {
                if let Some(name) = target::process_name(key.pid) {
                    self.names.insert(key.pid, name);
                }
            }
            last = Some(key.pid);
        }
    }

    /// Prints a `--batch` frame; stops quietly when stdout is closed (`| head`).
    fn print(&self, agg: &Aggregate, st: &Status) -> Result<ControlFlow<()>> {
        let rows = view::rows(agg, &self.rates, &self.names, self.view);
        let summary = summary(&self.targets, &self.rates, agg, st);
        let lines = frame::frame(&summary, &rows, self.view);
        let mut out = io::stdout().lock();
        let written = lines
            .iter()
            .try_for_each(|l| writeln!(out, "{l}"))
            .and_then(|()| writeln!(out))
            .and_then(|()| out.flush());
        match written {
            Ok(()) => Ok(ControlFlow::Continue(())),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ControlFlow::Break(())),
            Err(e) => Err(anyhow::Error::new(e).context("write to stdout")),
        }
    }

    fn draw(&mut self, agg: &Aggregate, st: &Status) -> Result<()> {
        let rows = view::rows(agg, &self.rates, &self.names, self.view);
        let summary = summary(&self.targets, &self.rates, agg, st);
        let refresh = units::ns(u64::try_from(self.delay.as_nanos()).unwrap_or(u64::MAX));
        if let Output::Screen(screen) = &mut self.output {
            screen.draw(&summary, &rows, self.view, &refresh)?;
        }
        self.drawn = true;
        Ok(())
    }
}

fn summary<'a>(
    targets: &'a [Target],
    rates: &Rates,
    agg: &Aggregate,
    st: &'a Status,
) -> Summary<'a> {
    Summary {
        plan: st.plan,
        elapsed: st.elapsed,
        total: agg.total_exits(),
        rate: rates.total(),
        lost: st.counters.lost,
        targets,
        exited: st.exited,
        own_cost: Some(st.own_cost.summary(agg.total_exits(), st.elapsed)),
    }
}
