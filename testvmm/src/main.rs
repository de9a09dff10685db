//! CLI: runs one workload and prints its counts as one JSON line on stdout.

use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::Parser;
use kvmprof_common::duration::{self, Bare};
use kvmprof_testvmm::{cli::WorkloadArgs, StopHandle, Workload};
use vmm_sys_util::signal::create_sigset;

/// Runs tiny real-mode guests on /dev/kvm that make an exact number of VM
/// exits of each kind, then prints the counts as one JSON object on stdout.
///
/// Each vCPU runs in a thread named "CPU <n>/KVM" and, per round: `out`s to
/// port 0x3f8 (userspace exit), `out`s to port 0x700+<n> (an ioeventfd keeps
/// these in the kernel; its counter proves them), writes to MMIO 0xd0000
/// (userspace exit), `in`s from port 0x3fd (userspace exit), makes the exits KVM
/// handles without telling the VMM (--msr-read, --msr-write, --cpuid, --hypercall;
/// reported as told, outside the totals), runs the device loop, on vCPU 0 `hlt`s --halts times with interrupts on (kept in the kernel,
/// woken by the VMM's IRQ0 every --halt-tick), then `hlt`s (userspace exit; an
/// `out` to 0x2f9 with --pio-device or --halts). All counts are per vCPU and per
/// round.
///
/// The JSON holds per-vCPU and total counts (in-kernel `out`s read from the
/// ioeventfd counters; "halts", not exits, outside the totals), the ports used,
/// wall_ns and exits_per_sec.
///
/// SIGINT/SIGTERM stop the vCPUs cleanly; the counts so far are printed.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Exits per round; one vCPU and none of each kind unless given.
    #[command(flatten)]
    workload: WorkloadArgs,
    /// The VMM takes this long to answer each `in` (e.g. 200ms; bare number = ms).
    #[arg(long, value_parser = parse_millis, default_value = "0")]
    pio_in_delay: Duration,
    /// With --halts, the VMM pulses IRQ0 this often, waking one halt each time
    /// (e.g. 1ms, 200us; bare number = ms; at least 1us): a round takes about
    /// halts × this.
    #[arg(long, value_parser = parse_millis, default_value = "1")]
    halt_tick: Duration,
    /// Cap on each vCPU's average exits/s. The VMM sleeps at userspace exits;
    /// in-kernel exits still come in bursts of up to --pio-kernel.
    #[arg(long)]
    rate: Option<u64>,
    /// Wait this long after creating the VM and vCPU threads before the first
    /// KVM_RUN, so a profiler can attach (e.g. 500ms, 2s; bare number = ms).
    #[arg(long, value_parser = parse_millis, default_value = "0")]
    start_delay: Duration,
    /// Keep the VM this long after the guest stopped, before destroying it, so a
    /// reader of KVM's per-VM debugfs counters sees their final values (bare number
    /// = ms).
    #[arg(long, value_parser = parse_millis, default_value = "0")]
    end_delay: Duration,
    /// Start a new round after each `hlt` until stopped or --duration ends.
    #[arg(long)]
    forever: bool,
    /// Stop the guest this long after it starts (e.g. 10, 1.5s, 500ms; bare
    /// number = seconds).
    #[arg(long, value_parser = parse_secs)]
    duration: Option<Duration>,
    /// Once the vCPU threads exist, before --start-delay, write one JSON line
    /// here: {"pid", "start_delay_ms", "vcpus": [{"index", "thread", "tid"}]}.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// When the run ends (also on SIGINT/SIGTERM), write one line per KVM_RUN
    /// call here: "<vcpu> <call_ns> <return_ns> <outcome>", times on
    /// CLOCK_MONOTONIC just before the call and just after its return;
    /// outcome is pio_user, pio_in, mmio_user, hlt, interrupted or other.
    #[arg(long)]
    exit_log: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let stop = StopHandle::new();
    stop_on_signals(&stop)?;
    let workload = Workload {
        pio_in_delay_ms: millis(args.pio_in_delay),
        halt_tick_us: u64::try_from(args.halt_tick.as_micros()).unwrap_or(u64::MAX),
        rate: args.rate,
        start_delay_ms: millis(args.start_delay),
        end_delay_ms: millis(args.end_delay),
        forever: args.forever,
        duration_ms: args.duration.map(millis),
        ready_file: args.ready_file,
        exit_log: args.exit_log,
        ..args.workload.over(Workload::default())
    };
    let counts = kvmprof_testvmm::run_until(&workload, &stop)?;
    println!(
        "{}",
        serde_json::to_string(&counts).context("serialize counts")?
    );
    Ok(())
}

/// Turns SIGINT and SIGTERM into a stop request. They are blocked in this
/// thread before any other exists, so every thread inherits the block and
/// only the sigwait below ever takes them.
fn stop_on_signals(stop: &StopHandle) -> Result<()> {
    let set = create_sigset(&[libc::SIGINT, libc::SIGTERM]).context("sigset")?;
    // SAFETY: `set` is initialised; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc)).context("block SIGINT/SIGTERM");
    }
    let stop = stop.clone();
    thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: `set` is initialised and `sig` is a valid out pointer.
            if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
                stop.request();
            }
        })
        .context("spawn the signal thread")?;
    Ok(())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn parse_millis(s: &str) -> Result<Duration> {
    parse_duration(s, Bare::Millis)
}

fn parse_secs(s: &str) -> Result<Duration> {
    parse_duration(s, Bare::Secs)
}

/// "500ms", "1.5s", "2m", or a bare number in `bare` units (`kvmprof_common::duration`).
fn parse_duration(s: &str, bare: Bare) -> Result<Duration> {
    duration::parse(s, bare).map_err(|e| anyhow!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn durations_take_units_or_a_default() {
        assert_eq!(parse_millis("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_millis("500").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_millis("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_secs("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_secs("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
        assert!(parse_secs("NaN").is_err());
    }
}
