//! One line of `function_graph` text, as the kernel's `trace` file or `trace-cmd report`
//! prints it, turned into what it says. Pure: no state is carried between lines.
//!
//! The shapes understood (every column but CPU and the function is optional):
//!
//! ```text
//!   360.774522 |  144)  qemu-sys-1234  |   0.080 us    |    svm_prepare_guest_switch [kvm_amd]();
//!   144)               |  vcpu_enter_guest [kvm]() {
//!   144) ! 123.400 us  |  } /* vcpu_enter_guest */
//!   144)   ==========> |
//!   144)   qemu-123    =>   qemu-456
//!   qemu-1234  [001]  5678.123456: funcgraph_entry:        0.080 us   |  rcu_qs();
//! ```

/// A traced function: `kvm_set_cr8.part.119 [kvm]` is name `kvm_set_cr8.part.119`, module
/// `kvm` (module functions carry a `[module]` suffix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Func<'a> {
    pub name: &'a str,
    pub module: Option<&'a str>,
}

/// What a function_graph line records about a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call<'a> {
    /// `func() {`: a call whose children follow.
    Entry(Func<'a>),
    /// `func();`: a call without traced children, with its duration in ns.
    Leaf(Func<'a>, Option<u64>),
    /// `}`: the innermost open call returned after this many ns. The function name is
    /// there with `funcgraph-tail` (`} /* func */`).
    Exit(Option<&'a str>, Option<u64>),
}

/// A call line with its columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub cpu: u32,
    /// The task's pid from the process column (`qemu-sys-1234`); ftrace's pid is the
    /// thread's id.
    pub pid: Option<u32>,
    /// Trace time in ns (`funcgraph-abstime`, or trace-cmd's timestamp column).
    pub ts_ns: Option<u64>,
    /// Spaces before the function: its nesting depth, comparable between lines of a task.
    pub indent: usize,
    pub call: Call<'a>,
}

/// One line of input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Call(Record<'a>),
    /// `==========>` / `<==========`: an interrupt starts or ends. The handler's calls nest in
    /// the interrupted call's stack, so the marker itself carries nothing to keep.
    Irq,
    /// ` 0)  qemu-123  =>  qemu-456`: the CPU switched tasks.
    Switch {
        cpu: u32,
        prev: u32,
        next: u32,
    },
    /// Comments, headers, separators, blank lines and other trace events: expected, not data.
    Ignored,
    /// Anything else.
    Unknown,
}

pub fn parse_line(line: &str) -> Line<'_> {
    let text = line.trim();
    if text.is_empty() || is_header(text) {
        return Line::Ignored;
    }
    ftrace_line(line)
        .or_else(|| trace_cmd_line(line))
        .unwrap_or(Line::Unknown)
}

/// Lines both tools print around the data.
fn is_header(text: &str) -> bool {
    text.starts_with('#')
        // ftrace's frame around a context switch marker
        || text.bytes().all(|b| b == b'-')
        // trace-cmd report's preamble
        || text.starts_with("cpus=")
        || text.starts_with("version =")
        || (text.starts_with("CPU") && (text.ends_with(" is empty") || text.contains("[LOST")))
}

/// The kernel's own format: `[TIME |] CPU) [TASK |] DURATION | BODY`.
fn ftrace_line(line: &str) -> Option<Line<'_>> {
    let (ts_ns, rest) = match line.split_once('|') {
        Some((head, tail)) => match seconds_ns(head.trim()) {
            Some(ts) => (Some(ts), tail),
            None => (None, line),
        },
        None => (None, line),
    };
    let (cpu, rest) = cpu_column(rest)?;
    if !rest.contains('|') {
        let (prev, next) = rest.split_once("=>")?;
        return Some(match (task_pid(prev), task_pid(next)) {
            (Some(prev), Some(next)) => Line::Switch { cpu, prev, next },
            _ => Line::Unknown,
        });
    }
    Some(columns(cpu, None, ts_ns, rest).unwrap_or(Line::Unknown))
}

/// `trace-cmd report`: `COMM-PID [CPU] [FLAGS] SECS.USECS: EVENT: DATA`.
fn trace_cmd_line(line: &str) -> Option<Line<'_>> {
    let (head, rest) = line.split_once(" [")?;
    let (cpu, rest) = rest.split_once(']')?;
    let cpu = digits(cpu.trim())?;
    let pid = task_pid(head)?;
    let (stamp, rest) = rest.split_once(": ")?;
    // Optional latency flags (`d..1.`) come before the timestamp.
    let ts_ns = seconds_ns(stamp.split_whitespace().last()?)?;
    let (event, data) = rest.trim_start().split_once(':')?;
    Some(match event {
        "funcgraph_entry" | "funcgraph_exit" => {
            columns(cpu, Some(pid), Some(ts_ns), data).unwrap_or(Line::Unknown)
        }
        _ => Line::Ignored,
    })
}

/// ` 144)` → 144 and what follows the parenthesis.
fn cpu_column(text: &str) -> Option<(u32, &str)> {
    let text = text.trim_start();
    let end = text.find(|c: char| !c.is_ascii_digit())?;
    let rest = text[end..].strip_prefix(')')?;
    Some((digits(&text[..end])?, rest))
}

/// The `|`-separated columns after the CPU: an optional task, optional latency flags, then
/// the duration column; the function body follows its `|`.
fn columns(cpu: u32, mut pid: Option<u32>, ts_ns: Option<u64>, mut rest: &str) -> Option<Line<'_>> {
    loop {
        let (field, tail) = rest.split_once('|')?;
        rest = tail;
        if let Some(duration) = duration_column(field) {
            return body_line(cpu, pid, ts_ns, duration, rest);
        }
        if pid.is_none() {
            pid = Some(task_pid(field)?);
        } else if !is_latency_flags(field.trim()) {
            return None;
        }
    }
}

fn body_line(
    cpu: u32,
    pid: Option<u32>,
    ts_ns: Option<u64>,
    duration: Duration,
    body: &str,
) -> Option<Line<'_>> {
    let indent = body.len() - body.trim_start_matches(' ').len();
    let code = body.trim();
    let dur_ns = match duration {
        Duration::Ns(ns) => Some(ns),
        Duration::Irq if code.is_empty() => return Some(Line::Irq),
        Duration::Irq | Duration::Blank => None,
    };
    if code.starts_with("/*") {
        // trace_printk() text and events shown inline by the function_graph tracer
        return Some(Line::Ignored);
    }
    let call = if let Some(after) = code.strip_prefix('}') {
        Call::Exit(tail_name(after.trim()), dur_ns)
    } else {
        // `funcgraph-retval` appends `/* = 0x0 */` to leaves
        let code = match code.find("/*") {
            Some(at) => code[..at].trim_end(),
            None => code,
        };
        if let Some(sig) = code.strip_suffix('{') {
            Call::Entry(signature(sig)?)
        } else {
            Call::Leaf(signature(code.strip_suffix(';')?)?, dur_ns)
        }
    };
    Some(Line::Call(Record {
        cpu,
        pid,
        ts_ns,
        indent,
        call,
    }))
}

/// `} /* vcpu_enter_guest */` or, with `funcgraph-retval`, `} /* vcpu_enter_guest = 0x1 */`.
fn tail_name(after_brace: &str) -> Option<&str> {
    let inner = after_brace.strip_prefix("/*")?.strip_suffix("*/")?;
    let name = inner
        .split(|c: char| c.is_whitespace() || c == '=')
        .find(|s| !s.is_empty())?;
    is_symbol(name).then_some(name)
}

/// `vcpu_enter_guest [kvm]()`, possibly with arguments (`funcgraph-args`).
fn signature(sig: &str) -> Option<Func<'_>> {
    let (head, _args) = sig.split_once('(')?;
    let head = head.trim();
    let (name, module) = match head.split_once(" [") {
        Some((name, module)) => (name.trim_end(), Some(module.strip_suffix(']')?)),
        None => (head, None),
    };
    is_symbol(name).then_some(Func { name, module })
}

/// A kernel symbol, including compiler suffixes such as `.part.119` or `.cold`.
fn is_symbol(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// `qemu-system-x86-1234` → 1234: the pid is after the last dash (comms may contain
/// dashes).
fn task_pid(field: &str) -> Option<u32> {
    let (comm, pid) = field.trim().rsplit_once('-')?;
    if comm.is_empty() {
        return None;
    }
    digits(pid)
}

/// `d..1` / `dNh2.`: irq/preempt state columns of the latency format.
fn is_latency_flags(field: &str) -> bool {
    (3..=6).contains(&field.len())
        && field
            .bytes()
            .all(|b| b.is_ascii_digit() || b"dDNnhHsSzZbBX.".contains(&b))
}

enum Duration {
    /// Column present but empty: an entry, or an exit with `funcgraph-duration` off.
    Blank,
    /// An irq entry/exit marker in place of the duration.
    Irq,
    Ns(u64),
}

/// `0.080 us`, `+ 12.345 us`, `! 123.4 us`, `# 1234.5 us` and so on. The leading character
/// flags an overhead above a threshold (`+` 10us, `!` 100us, `#` 1ms, `*` 10ms, `@` 100ms,
/// `$` 1s); the number is in the unit that follows it.
fn duration_column(field: &str) -> Option<Duration> {
    let text = field.trim();
    if text.is_empty() {
        return Some(Duration::Blank);
    }
    if text.contains("==========>") || text.contains("<==========") {
        return Some(Duration::Irq);
    }
    let text = text.trim_start_matches(['+', '!', '#', '*', '@', '$']);
    let mut words = text.split_whitespace();
    let (number, unit, None) = (words.next()?, words.next()?, words.next()) else {
        return None;
    };
    let unit_ns = match unit {
        "ns" => 1,
        "us" => 1_000,
        "ms" => 1_000_000,
        "s" => 1_000_000_000,
        _ => return None,
    };
    decimal_ns(number, unit_ns).map(Duration::Ns)
}

/// `5678.123456` seconds → ns.
fn seconds_ns(text: &str) -> Option<u64> {
    text.contains('.')
        .then(|| decimal_ns(text, 1_000_000_000))
        .flatten()
}

/// A decimal number of `unit_ns` units → ns, in integers so that `3.206 us` is exactly
/// 3206 ns. Digits finer than a ns are dropped.
fn decimal_ns(text: &str, unit_ns: u64) -> Option<u64> {
    let (whole, frac) = text.split_once('.').unwrap_or((text, ""));
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut ns = digits::<u64>(whole)?.checked_mul(unit_ns)?;
    let mut scale = unit_ns;
    for digit in frac.bytes() {
        scale /= 10;
        ns = ns.checked_add(u64::from(digit - b'0') * scale)?;
    }
    Some(ns)
}

/// A non-empty run of ASCII digits (no sign, unlike `str::parse`).
fn digits<T: std::str::FromStr>(text: &str) -> Option<T> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(line: &str) -> Record<'_> {
        match parse_line(line) {
            Line::Call(record) => record,
            other => panic!("{line:?} parsed as {other:?}"),
        }
    }

    fn func<'a>(name: &'a str, module: Option<&'a str>) -> Func<'a> {
        Func { name, module }
    }

    #[test]
    fn function_graph_lines_parse_into_entries_leaves_and_exits() {
        let r = record(" 144)               |  vcpu_enter_guest [kvm]() {");
        assert_eq!(r.cpu, 144);
        assert_eq!(r.pid, None);
        assert_eq!(r.ts_ns, None);
        assert_eq!(r.indent, 2);
        assert_eq!(r.call, Call::Entry(func("vcpu_enter_guest", Some("kvm"))));

        let r = record(" 144)   0.080 us    |    svm_prepare_guest_switch [kvm_amd]();");
        assert_eq!(r.indent, 4);
        assert_eq!(
            r.call,
            Call::Leaf(func("svm_prepare_guest_switch", Some("kvm_amd")), Some(80))
        );

        let r = record(" 49)   3.816 us    |    }");
        assert_eq!((r.cpu, r.indent), (49, 4));
        assert_eq!(r.call, Call::Exit(None, Some(3816)));

        let r = record(" 144)               |        kvm_set_cr8.part.119 [kvm]() {");
        assert_eq!(
            r.call,
            Call::Entry(func("kvm_set_cr8.part.119", Some("kvm")))
        );

        let r = record(" 144)   0.080 us    |      fpregs_assert_state_consistent();");
        assert_eq!(
            r.call,
            Call::Leaf(func("fpregs_assert_state_consistent", None), Some(80))
        );
    }

    #[test]
    fn overhead_markers_and_units() {
        let cases = [
            ("+ 12.345 us", 12_345),
            ("! 123.4 us", 123_400),
            ("# 1234.5 us", 1_234_500),
            ("* 12345.67 us", 12_345_670),
            ("@ 123456.7 us", 123_456_700),
            ("$ 1234567 us", 1_234_567_000),
            ("2.5 ms", 2_500_000),
            ("1.000000001 s", 1_000_000_001),
            ("850 ns", 850),
            // finer than a ns: dropped, not rounded through a float
            ("0.0809 us", 80),
        ];
        for (column, ns) in cases {
            let line = format!(" 3) {column:>13} |  }}");
            assert_eq!(record(&line).call, Call::Exit(None, Some(ns)), "{line}");
        }
        assert_eq!(parse_line(" 3)  12.3 parsecs |  }"), Line::Unknown);
        assert_eq!(parse_line(" 3)  -1.0 us |  }"), Line::Unknown);
    }

    #[test]
    fn proc_abstime_tail_and_retval_columns_are_read() {
        let r = record(
            "  5678.123456 |   1)  qemu-sys-1234  |   7.915 us    |  } /* vcpu_enter_guest */",
        );
        assert_eq!(r.cpu, 1);
        assert_eq!(r.pid, Some(1234));
        assert_eq!(r.ts_ns, Some(5_678_123_456_000));
        assert_eq!(r.call, Call::Exit(Some("vcpu_enter_guest"), Some(7915)));

        // funcgraph-retval on an exit and on a leaf
        let r = record(" 0)   0.300 us    |  } /* kvm_fast_pio = 0x1 */");
        assert_eq!(r.call, Call::Exit(Some("kvm_fast_pio"), Some(300)));
        let r = record(" 0)   0.080 us    |  rcu_qs(); /* = 0x0 */");
        assert_eq!(r.call, Call::Leaf(func("rcu_qs", None), Some(80)));

        // latency-format flags between the task and the duration
        let r = record(" 0)  <idle>-0    |  d..2  |   0.080 us    |  rcu_qs();");
        assert_eq!(r.pid, Some(0));
    }

    #[test]
    fn trace_cmd_report_lines() {
        let r = record(
            "qemu-system-x86-1234  [001]  5678.123456: funcgraph_entry:                   |  vcpu_enter_guest() {",
        );
        assert_eq!(r.cpu, 1);
        assert_eq!(r.pid, Some(1234));
        assert_eq!(r.ts_ns, Some(5_678_123_456_000));
        assert_eq!(r.call, Call::Entry(func("vcpu_enter_guest", None)));

        let r = record(
            "  qemu-system-x86-1234  [001] d..1.  5678.123460: funcgraph_exit:         3.206 us   |  }",
        );
        assert_eq!(r.call, Call::Exit(None, Some(3206)));
        assert_eq!(r.ts_ns, Some(5_678_123_460_000));

        let r = record(
            "qemu-system-x86-1234  [001]  5678.123457: funcgraph_entry:        0.080 us   |    svm_vcpu_run [kvm_amd]();",
        );
        assert_eq!(
            r.call,
            Call::Leaf(func("svm_vcpu_run", Some("kvm_amd")), Some(80))
        );

        // other events of the same report are expected, not garbage
        assert_eq!(
            parse_line("qemu-1234 [001] 5678.123458: kvm_exit: reason IOIO rip 0xfff0"),
            Line::Ignored
        );
    }

    #[test]
    fn markers_comments_and_switches_are_recognised() {
        assert_eq!(parse_line(" 0)   ==========> |"), Line::Irq);
        assert_eq!(parse_line(" 0)   <========== |"), Line::Irq);
        // a marker sharing its line with the handler's entry keeps the entry
        let r = record(" 0)  ==========> |  smp_apic_timer_interrupt() {");
        assert_eq!(r.call, Call::Entry(func("smp_apic_timer_interrupt", None)));

        assert_eq!(
            parse_line(" 0)   qemu-123    =>   qemu-456  "),
            Line::Switch {
                cpu: 0,
                prev: 123,
                next: 456
            }
        );
        for ignored in [
            "# tracer: function_graph",
            "#",
            " ------------------------------------------",
            "",
            "cpus=2",
            "version = 6",
            "CPU 1 is empty",
            "CPU:0 [LOST 1234 EVENTS]",
            " 0)               |  /* kvm_exit: reason IOIO */",
        ] {
            assert_eq!(parse_line(ignored), Line::Ignored, "{ignored:?}");
        }
    }

    #[test]
    fn garbage_is_unknown() {
        for garbage in [
            "amd:",
            "```",
            "kvm_handle_invpcid : 3 : 15 : 37039.08889827342 : 231 : 1",
            " 144)   0.080 us    |    not a call",
            " 144)   0.080 us    |    bad name!();",
            " 144)   0.080 us    |    open_without_paren {",
            " 144) garbage",
            "x) 1 us | f();",
            "\u{fffd}\u{fffd}ELF",
        ] {
            assert_eq!(parse_line(garbage), Line::Unknown, "{garbage:?}");
        }
    }
}
