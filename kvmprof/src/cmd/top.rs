//! `kvmprof top`: a live, top-style view of VM exits. Records like `kvmprof record` (through
//! a [`crate::live::Session`]) and, every `--delay`, shows each exit reason's rate over the
//! last interval, its total and its latencies since start, full-screen or, with `--batch`, as
//! plain-text frames on stdout.
//!
//! [`view`] turns the aggregate into rows, [`frame`] lays them out as text, [`screen`] owns
//! the terminal; only this file does I/O between them.
//!
//! [`view`]: crate::tui::view
//! [`frame`]: crate::tui::frame
//! [`screen`]: crate::tui::screen

use std::{
    cell::RefCell,
    collections::{btree_map::Entry, BTreeMap, VecDeque},
    io::{self, IsTerminal},
    ops::ControlFlow,
    time::Duration,
};

use anyhow::{bail, Result};

use crate::tui::{
    frame::{self, Slow, Summary},
    keys,
    screen::Screen,
    since,
    ui::{Action, Ui},
    view::{self, Context, Rates, Row},
    watch::Watch,
};
use crate::{
    cli::TopArgs,
    data::aggregate::{Aggregate, PortKey},
    data::model::Exit,
    data::slow::{self, SlowExits},
    data::target::Target,
    live::attach,
    live::target,
    live::{self, Counters, Outcome, Seen, Status, Stop},
    util::{output, units},
};

/// Shorter refreshes would mostly measure the refresh itself.
const MIN_DELAY: Duration = Duration::from_millis(100);

/// How often the full-screen view looks for keys (and redraws after one).
const KEY_POLL: Duration = Duration::from_millis(100);

/// Length of the aggregate's time-series intervals. `top` writes no interval log, and long
/// intervals keep closed ones from piling up while it runs for hours.
const SERIES_INTERVAL: Duration = Duration::from_secs(3600);

/// How many of the latest slow exits a frame lists (`--slow`).
const LATEST_SLOW: usize = 5;

pub async fn top(a: TopArgs) -> Result<()> {
    if a.delay < MIN_DELAY {
        bail!("--delay must be at least {} ms", MIN_DELAY.as_millis());
    }
    if !a.batch && !io::stdout().is_terminal() {
        bail!("standard output is not a terminal: use --batch for plain-text frames");
    }
    a.hooks.no_func("top")?;
    target::preflight()?;
    let targets = target::resolve_watched(&a.pids)?;
    let opts = live::Options {
        targets: targets.clone(),
        children: false,
        hooks: a.hooks.pref(),
        stages: a.hooks.deep(),
        debug_bpf: a.hooks.debug_bpf(),
        detail: a.hooks.detail(),
        funcs: Vec::new(),
        duration: None,
        tick: if a.batch {
            a.delay
        } else {
            a.delay.min(KEY_POLL)
        },
        interval: SERIES_INTERVAL,
        records: a
            .slow
            .as_ref()
            .map(attach::Records::over)
            .unwrap_or_default(),
        bpf_stats: a.bpf_stats.mode(),
        sleep_when_idle: false,
        histograms: true,
    };
    // Attach before taking the screen, so that loading errors print on a normal terminal.
    let mut session = live::Session::start(opts)?;
    // `-p NAME` also watches the processes of that name that start later.
    let filter = if !targets.is_empty() && !target::names(&a.pids).is_empty() {
        Some(session.pid_filter()?)
    } else {
        None
    };
    let output = if a.batch {
        Output::Batch
    } else {
        Output::Screen(Screen::open()?)
    };
    let top = RefCell::new(Top::new(&a, Watch::new(&a.pids, targets, filter), output));
    let result = session
        .run(
            |agg, st| top.borrow_mut().tick(agg, st),
            |seen| {
                if let Seen::Exit(e) = seen {
                    top.borrow_mut().offer(e);
                }
                Ok(())
            },
        )
        .await;
    top.into_inner().finish(result)
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
    watch: Watch,
    ui: Ui,
    rates: Rates,
    /// Rates of the rows' keys ([`keys`]).
    key_rates: Rates<PortKey>,
    /// `--detail`: `--batch` prints every row's keys and guest RIPs.
    detail: bool,
    /// Process names by pid, for rows grouped by process.
    names: BTreeMap<u32, String>,
    /// Refreshes so far.
    frames: u64,
    /// When the next refresh is due, in time since recording began.
    next: Duration,
    /// Whether the screen shows a frame yet.
    drawn: bool,
    /// The aggregate at the last reset (`z`): the table counts from there.
    base: Option<Aggregate>,
    /// What the display shows while paused.
    frozen: Option<Frozen>,
    /// What made `tick` stop the recording.
    error: Option<anyhow::Error>,
    /// `--slow`: the exits over its threshold since the start, and the latest of them.
    slow: Option<SlowExits>,
    latest_slow: VecDeque<Exit>,
}

/// The data of the frame on screen when the display was paused.
struct Frozen {
    agg: Aggregate,
    elapsed: Duration,
    counters: Counters,
}

impl Frozen {
    fn of(agg: &Aggregate, st: &Status) -> Frozen {
        Frozen {
            agg: agg.clone(),
            elapsed: st.elapsed,
            counters: st.counters,
        }
    }
}

impl Top {
    fn new(a: &TopArgs, watch: Watch, output: Output) -> Top {
        Top {
            output,
            delay: a.delay,
            iterations: a.iterations,
            names: watch
                .targets
                .iter()
                .map(|t| (t.pid, t.name.clone()))
                .collect(),
            watch,
            ui: Ui::default(),
            rates: Rates::default(),
            key_rates: Rates::default(),
            detail: a.hooks.detail(),
            frames: 0,
            next: a.delay,
            drawn: false,
            base: None,
            frozen: None,
            error: None,
            slow: a.slow.clone().map(SlowExits::new),
            latest_slow: VecDeque::with_capacity(LATEST_SLOW),
        }
    }

    /// The session's per-exit callback: keeps the slow exits.
    fn offer(&mut self, e: &Exit) {
        if self.slow.as_mut().is_some_and(|s| s.offer(e)) {
            if self.latest_slow.len() == LATEST_SLOW {
                self.latest_slow.pop_front();
            }
            self.latest_slow.push_back(e.clone());
        }
    }

    /// The session's tick callback: an error stops the recording and is kept for `finish`.
    fn tick(&mut self, agg: &mut Aggregate, st: &Status) -> ControlFlow<()> {
        self.step(agg, st).unwrap_or_else(|e| {
            self.error = Some(e);
            ControlFlow::Break(())
        })
    }

    fn step(&mut self, agg: &mut Aggregate, st: &Status) -> Result<ControlFlow<()>> {
        if self.done() {
            return Ok(ControlFlow::Break(()));
        }
        // Also while paused: new processes must be traced from their first exit.
        self.watch.follow()?;
        for t in &self.watch.targets {
            self.names.entry(t.pid).or_insert_with(|| t.name.clone());
        }
        self.watch.check(pids(agg), st.exited, st.elapsed);
        self.forget_gone(agg, st.elapsed);
        let agg: &Aggregate = agg;
        let mut redraw = !self.drawn;
        if let Output::Screen(screen) = &mut self.output {
            let events = screen.events()?;
            redraw |= events.resized;
            for k in events.keys {
                match self.ui.key(k, screen.page()) {
                    Action::Quit => return Ok(ControlFlow::Break(())),
                    Action::Redraw => redraw = true,
                    Action::Pause => {
                        self.frozen = self.ui.paused.then(|| Frozen::of(agg, st));
                        redraw = true;
                    }
                    Action::Reset => {
                        self.base = Some(agg.clone());
                        if self.frozen.is_some() {
                            self.frozen = Some(Frozen::of(agg, st));
                        }
                        redraw = true;
                    }
                    Action::Nothing => {}
                }
            }
        }
        let refresh = st.elapsed >= self.next && self.frozen.is_none();
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
        keys::sample(&mut self.key_rates, agg, at);
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

    /// Drops the statistics of processes gone for the grace period (no longer shown), so
    /// that memory follows the VMs still running however many came and went.
    fn forget_gone(&mut self, agg: &mut Aggregate, now: Duration) {
        let gone = self.watch.forget_gone(now);
        for &pid in &gone {
            agg.forget_pid(pid);
            if let Some(base) = &mut self.base {
                base.forget_pid(pid);
            }
            self.names.remove(&pid);
        }
        if !gone.is_empty() {
            crate::util::memory::give_back();
        }
    }

    /// Whether `-n` frames have been shown.
    fn done(&self) -> bool {
        self.iterations.is_some_and(|n| self.frames >= n)
    }

    /// Names the processes seen for the first time.
    fn learn_names(&mut self, agg: &Aggregate) {
        for pid in pids(agg) {
            if let Entry::Vacant(slot) = self.names.entry(pid) {
                if let Some(name) = target::process_name(pid) {
                    slot.insert(name);
                }
            }
        }
    }

    /// What a frame shows: the paused data while paused.
    fn snapshot(&self, agg: &Aggregate, st: &Status) -> Snapshot {
        let (agg, elapsed, counters) = match &self.frozen {
            Some(f) => (&f.agg, f.elapsed, f.counters),
            None => (agg, st.elapsed, st.counters),
        };
        let (exited, gone) = (self.watch.exited(elapsed), self.watch.gone(elapsed));
        let keys = since::shown(agg, self.base.as_ref(), &gone);
        let cx = Context {
            rates: &self.rates,
            names: &self.names,
            exited: &exited,
            filter: self.ui.filter.as_ref(),
        };
        let (targets, mut exited_list): (Vec<Target>, Vec<Target>) = self
            .watch
            .targets
            .iter()
            .filter(|t| !gone.contains(&t.pid))
            .cloned()
            .partition(|t| !exited.contains(&t.pid));
        // Without `-p` every VMM is watched, and one that exits is listed all the same.
        for &pid in &exited {
            if !exited_list.iter().any(|t| t.pid == pid) {
                let name = self.names.get(&pid).cloned().unwrap_or_default();
                exited_list.push(Target { pid, name });
            }
        }
        let exited = exited_list;
        let rows = view::rows(&keys, &cx, self.ui.view);
        let lines = |r: &Row| {
            keys::lines(
                agg,
                self.base.as_ref(),
                &keys,
                &self.key_rates,
                r.id,
                &r.label,
            )
        };
        let detail = match &self.output {
            Output::Batch if self.detail => rows.iter().flat_map(lines).collect(),
            // The panel is of the first row on screen.
            Output::Screen(screen) if self.ui.keys => rows
                .get(self.ui.scroll.min(rows.len().saturating_sub(screen.page())))
                .map(|r| (r.label.clone(), lines(r)))
                .into_iter()
                .flat_map(|(label, lines)| {
                    if lines.is_empty() {
                        vec![format!("{label}: no ports, addresses or --detail keys yet")]
                    } else {
                        lines
                    }
                })
                .collect(),
            _ => Vec::new(),
        };
        Snapshot {
            rows,
            detail,
            targets,
            exited,
            elapsed,
            total: keys.values().map(|s| s.count).sum(),
            lost: counters.lost,
        }
    }

    fn summary<'a>(&self, snap: &'a Snapshot, st: &'a Status) -> Summary<'a> {
        Summary {
            plan: st.plan,
            elapsed: snap.elapsed,
            total: snap.total,
            rate: self.rates.total(),
            lost: snap.lost,
            targets: &snap.targets,
            exited: &snap.exited,
            filtered: self.ui.filter.is_some(),
            own_cost: Some(st.own_cost.summary(snap.total, snap.elapsed)),
            slow: self.slow.as_ref().map(|s| {
                let mut latest: Vec<&Exit> = self.latest_slow.iter().collect();
                latest.sort_by_key(|e| e.ts_ns);
                Slow {
                    label: s.rule.label(),
                    count: s.count,
                    latest: latest.into_iter().map(slow::row).collect(),
                }
            }),
        }
    }

    /// Prints a `--batch` frame; stops quietly when stdout is closed (`| head`).
    fn print(&self, agg: &Aggregate, st: &Status) -> Result<ControlFlow<()>> {
        let snap = self.snapshot(agg, st);
        let lines = frame::frame(&self.summary(&snap, st), &snap.rows, self.ui.view);
        let mut text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        text.push('\n');
        if !snap.detail.is_empty() {
            text.extend(snap.detail.iter().map(|l| format!("{l}\n")));
            text.push('\n');
        }
        Ok(match output::stdout(text.as_bytes())? {
            true => ControlFlow::Continue(()),
            false => ControlFlow::Break(()),
        })
    }

    fn draw(&mut self, agg: &Aggregate, st: &Status) -> Result<()> {
        let snap = self.snapshot(agg, st);
        let refresh = units::ns(u64::try_from(self.delay.as_nanos()).unwrap_or(u64::MAX));
        let since = if self.base.is_some() {
            "reset"
        } else {
            "start"
        };
        let legend = format!("exits/s over {refresh}, latency since {since}");
        let summary = self.summary(&snap, st);
        if let Output::Screen(screen) = &mut self.output {
            screen.draw(&summary, &snap.rows, &snap.detail, &mut self.ui, &legend)?;
        }
        self.drawn = true;
        Ok(())
    }
}

/// The data of one frame.
struct Snapshot {
    rows: Vec<Row>,
    /// `--batch --detail`: every row's keys; on screen: those of the panel's row.
    detail: Vec<String>,
    /// Watched processes still running, and those that exited within the grace period.
    targets: Vec<Target>,
    exited: Vec<Target>,
    elapsed: Duration,
    total: u64,
    lost: u64,
}

/// The processes with exits in `agg`.
fn pids(agg: &Aggregate) -> impl Iterator<Item = u32> + '_ {
    let mut last = None;
    // Keys are sorted by pid.
    agg.keys().keys().filter_map(move |k| {
        let new = last != Some(k.pid);
        last = Some(k.pid);
        new.then_some(k.pid)
    })
}
