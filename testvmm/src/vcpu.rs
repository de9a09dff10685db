//! One vCPU thread's work: enter the guest, count every exit by kind, pace,
//! and stop when asked.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kvm_ioctls::VcpuExit;
use libc::{c_int, c_void, siginfo_t};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use crate::counts::{ExitCounts, VcpuCounts};
use crate::exitlog::{self, Call, Outcome};
use crate::guest::{self, Round};
use crate::pace::{self, Pacer};
use crate::vm::Vcpu;

/// What every vCPU runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub round: Round,
    /// Start a new round after each `hlt` instead of finishing.
    pub forever: bool,
    pub rate: Option<u64>,
    /// Keep an [`exitlog`] entry per KVM_RUN call.
    pub log: bool,
    /// The VMM's time to answer each `in`.
    pub pio_in_delay: Duration,
    /// The hypercall instruction (see `backend`) and number patched into the guest's code.
    pub hypercall: guest::Hypercall,
}

/// A vCPU's counts and when it was in the guest.
pub(crate) struct Finished {
    pub counts: VcpuCounts,
    pub started: Instant,
    pub ended: Instant,
    /// Every KVM_RUN call, when `Plan::log` is set.
    pub log: Vec<Call>,
}

/// Sent to a vCPU thread to get it out of KVM_RUN (which then fails with EINTR).
pub fn kick_signal() -> c_int {
    SIGRTMIN()
}

/// The kick must interrupt KVM_RUN without killing the process, so it needs
/// a handler; the handler has nothing to do. Installing it twice is harmless.
pub(crate) fn install_kick_handler() -> Result<()> {
    extern "C" fn ignore(_: c_int, _: *mut siginfo_t, _: *mut c_void) {}
    register_signal_handler(kick_signal(), ignore).context("install the vCPU kick signal handler")
}

/// Runs the guest on `vcpu` until its round ends (or forever), `stop` is set
/// or the guest does something unexpected.
pub(crate) fn run(mut vcpu: Vcpu, plan: &Plan, stop: &AtomicBool, tid: i32) -> Result<Finished> {
    let regs = guest::round_regs(&plan.round, vcpu.index);
    // The first round's page loop, vCPU 0's only: its pages are counted when it ends.
    let mut npf_pages = u64::from(guest::round_npf_pages(&plan.round, vcpu.index));
    // The `hlt`s a completed round has made (in the kernel, so never seen here).
    let round_halts = u64::from(guest::round_halts(&plan.round, vcpu.index));
    // Likewise the detail section's exits: KVM handles them without telling the VMM.
    let detail = ExitCounts {
        msr_read: plan.round.msr_read.into(),
        msr_write: plan.round.msr_write.into(),
        cpuid: [plan.round.cpuid.into(); 2],
        hypercall: plan.round.hypercall.into(),
        ..ExitCounts::default()
    };
    let first = guest::first_round_regs(&plan.round, vcpu.index);
    vcpu.fd.set_regs(&first).context("KVM_SET_REGS")?;
    let mut exits = ExitCounts::default();
    let mut other_reasons = BTreeMap::new();
    let started = Instant::now();
    let pacer = plan.rate.map(|rate| Pacer::new(rate, started));
    let mut log = Vec::new();
    // Device-loop `in`s of the round so far: the exits the in-kernel pairs fall between.
    let mut round_mixed_in = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let call_ns = if plan.log { exitlog::monotonic_ns() } else { 0 };
        let result = vcpu.fd.run();
        let return_ns = if plan.log { exitlog::monotonic_ns() } else { 0 };
        let exit = match result {
            Ok(exit) => classify(exit),
            // A signal (our kick) interrupted KVM_RUN, or KVM asks for a retry:
            // no guest exit happened.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Interrupted,
            Err(e) => return Err(e).with_context(|| format!("KVM_RUN on vCPU {}", vcpu.index)),
        };
        if plan.log {
            log.push(Call {
                call_ns,
                return_ns,
                outcome: exit.outcome(),
            });
        }
        match exit {
            Exit::PioUser => exits.pio_user += 1,
            Exit::PioIn => {
                exits.pio_in += 1;
                pace::sleep_unless(plan.pio_in_delay, || stop.load(Ordering::Relaxed));
            }
            Exit::MmioUser => exits.mmio_user += 1,
            Exit::MixedIn => {
                // The previous iteration's pair on the second device port came before it.
                exits.pio_device += 2 * u64::from(round_mixed_in > 0);
                round_mixed_in += 1;
                exits.pio_mixed_in += 1;
            }
            Exit::MixedOut => {
                // The pair on the first device port came right before it.
                exits.pio_device += 2;
                exits.pio_mixed_out += 1;
            }
            Exit::Interrupted => continue,
            Exit::Hlt | Exit::Done => {
                if exit == Exit::Hlt {
                    exits.hlt += 1;
                } else {
                    exits.done += 1;
                    // The last iteration's pair on the second device port.
                    exits.pio_device += 2 * u64::from(round_mixed_in > 0);
                    // The halt loop comes right before the end: all of it ran.
                    exits.halts += round_halts;
                }
                // Both ends come after the detail section and the page loop: all of it ran.
                exits.add(&detail);
                exits.npf_pages += std::mem::take(&mut npf_pages);
                round_mixed_in = 0;
                if !plan.forever {
                    break;
                }
                vcpu.fd.set_regs(&regs).context("KVM_SET_REGS")?;
            }
            Exit::Other(reason) => {
                exits.other += 1;
                *other_reasons.entry(reason).or_insert(0) += 1;
                // The guest is off script; what it would do next is unknown.
                break;
            }
        }
        if let Some(pacer) = &pacer {
            exits.pio_kernel += drain(&vcpu.ioeventfd)?;
            pace::sleep_unless(pacer.delay(exits.total(), Instant::now()), || {
                stop.load(Ordering::Relaxed)
            });
        }
    }
    let ended = Instant::now();
    exits.pio_kernel += drain(&vcpu.ioeventfd)?;
    let counts = VcpuCounts {
        index: vcpu.index,
        thread: thread::current().name().unwrap_or_default().to_string(),
        tid,
        pio_kernel_port: vcpu.kernel_port,
        exits,
        other_reasons,
        run_ns: u64::try_from((ended - started).as_nanos()).unwrap_or(u64::MAX),
    };
    Ok(Finished {
        counts,
        started,
        ended,
        log,
    })
}

#[derive(Debug, PartialEq, Eq)]
enum Exit {
    PioUser,
    PioIn,
    MmioUser,
    MixedIn,
    MixedOut,
    Hlt,
    Done,
    Interrupted,
    Other(String),
}

impl Exit {
    fn outcome(&self) -> Outcome {
        match self {
            Exit::PioUser => Outcome::PioUser,
            Exit::PioIn => Outcome::PioIn,
            Exit::MmioUser => Outcome::MmioUser,
            Exit::MixedIn => Outcome::PioIn,
            Exit::MixedOut | Exit::Done => Outcome::PioUser,
            Exit::Hlt => Outcome::Hlt,
            Exit::Interrupted => Outcome::Interrupted,
            Exit::Other(_) => Outcome::Other,
        }
    }
}

/// Sorts an exit into the kinds the guest makes on purpose. Answers `in`s
/// on the way, as KVM completes the instruction on the next KVM_RUN.
fn classify(exit: VcpuExit) -> Exit {
    match exit {
        VcpuExit::IoOut(guest::PIO_USER_PORT, _) => Exit::PioUser,
        VcpuExit::IoIn(guest::PIO_IN_PORT, data) => {
            data.fill(guest::PIO_IN_VALUE);
            Exit::PioIn
        }
        VcpuExit::MmioWrite(addr, _) if guest::in_mmio_span(addr) => Exit::MmioUser,
        VcpuExit::IoIn(guest::PIO_MIXED_IN_PORT, data) => {
            data.fill(guest::PIO_IN_VALUE);
            Exit::MixedIn
        }
        VcpuExit::IoOut(guest::PIO_MIXED_OUT_PORT, _) => Exit::MixedOut,
        VcpuExit::IoOut(guest::PIO_DONE_PORT, _) => Exit::Done,
        VcpuExit::Hlt => Exit::Hlt,
        VcpuExit::Intr => Exit::Interrupted,
        // Keep the reason short but specific: where the guest went astray.
        VcpuExit::IoOut(port, _) => Exit::Other(format!("IoOut({port:#x})")),
        VcpuExit::IoIn(port, _) => Exit::Other(format!("IoIn({port:#x})")),
        VcpuExit::MmioWrite(addr, _) => Exit::Other(format!("MmioWrite({addr:#x})")),
        VcpuExit::MmioRead(addr, _) => Exit::Other(format!("MmioRead({addr:#x})")),
        other => Exit::Other(format!("{other:?}")),
    }
}

/// Takes the ioeventfd's count (and resets it): `out`s KVM handled in the kernel.
fn drain(eventfd: &EventFd) -> Result<u64> {
    match eventfd.read() {
        Ok(n) => Ok(n),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e).context("read ioeventfd"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_the_guest_exits() {
        assert_eq!(
            classify(VcpuExit::IoOut(guest::PIO_USER_PORT, &[0])),
            Exit::PioUser
        );
        assert_eq!(
            classify(VcpuExit::MmioWrite(guest::MMIO_ADDR, &[0])),
            Exit::MmioUser
        );
        assert_eq!(classify(VcpuExit::Hlt), Exit::Hlt);
        assert_eq!(classify(VcpuExit::Intr), Exit::Interrupted);
    }

    #[test]
    fn pio_in_is_answered_with_the_known_value() {
        let mut data = [0u8];
        assert_eq!(
            classify(VcpuExit::IoIn(guest::PIO_IN_PORT, &mut data)),
            Exit::PioIn
        );
        assert_eq!(data, [guest::PIO_IN_VALUE]);
    }

    #[test]
    fn names_unexpected_exits() {
        fn other(exit: VcpuExit) -> String {
            match classify(exit) {
                Exit::Other(reason) => reason,
                e => panic!("{e:?} is not Other"),
            }
        }
        assert_eq!(other(VcpuExit::IoOut(0x80, &[0])), "IoOut(0x80)");
        assert_eq!(
            other(VcpuExit::MmioRead(0xd0000, &mut [0])),
            "MmioRead(0xd0000)"
        );
        assert_eq!(other(VcpuExit::Shutdown), "Shutdown");
        assert_eq!(other(VcpuExit::Unsupported(99)), "Unsupported(99)");
    }

    #[test]
    fn drain_counts_and_resets() {
        let efd = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        assert_eq!(drain(&efd).unwrap(), 0);
        efd.write(3).unwrap();
        efd.write(2).unwrap();
        assert_eq!(drain(&efd).unwrap(), 5);
        assert_eq!(drain(&efd).unwrap(), 0);
    }
}
