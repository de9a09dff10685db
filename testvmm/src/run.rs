//! Orchestrates a run: build the VM, start one named thread per vCPU, wait
//! out the start delay, then watch for the end, a stop request or the deadline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use vmm_sys_util::signal::Killable;

use crate::backend;
use crate::counts::Counts;
use crate::exitlog;
use crate::guest::{self, Round, MAX_HALTS, MAX_VCPUS};
use crate::pace;
use crate::ready::{Ready, ReadyVcpu};
use crate::vcpu::{self, Finished, Plan};
use crate::vm::{Irq0, Machine, Vcpu};
use crate::{StopHandle, Workload};

/// How often the watcher looks for a stop request or the deadline.
const POLL: Duration = Duration::from_millis(10);
/// How often a vCPU that should stop is kicked again.
const KICK_EVERY: Duration = Duration::from_millis(1);

struct VcpuThread {
    handle: JoinHandle<Result<Finished>>,
    go: Sender<()>,
}

pub(crate) fn run(w: &Workload, stop: &StopHandle) -> Result<Counts> {
    let plan = plan(w)?;
    vcpu::install_kick_handler()?;
    // Outlives the threads: they are joined below, or, on an early error,
    // see their `go` sender dropped and return without entering the guest.
    let halts = plan.round.halts > 0;
    let (machine, vcpus) = Machine::new(
        w.vcpus,
        guest::needs_irqchip(&plan.round),
        halts,
        &plan.round,
        plan.hypercall,
    )?;
    let halt = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let threads = vcpus
        .into_iter()
        .map(|v| spawn(v, plan, &halt, ready_tx.clone()))
        .collect::<Result<Vec<_>>>()?;
    drop(ready_tx);

    let mut ready_vcpus: Vec<ReadyVcpu> = ready_rx.iter().collect();
    ensure!(
        ready_vcpus.len() == threads.len(),
        "a vCPU thread died before the guest started"
    );
    ready_vcpus.sort_by_key(|v| v.index);
    if let Some(path) = &w.ready_file {
        let ready = Ready {
            pid: std::process::id(),
            start_delay_ms: w.start_delay_ms,
            vcpus: ready_vcpus,
        };
        ready.write(path)?;
    }

    pace::sleep_unless(Duration::from_millis(w.start_delay_ms), || {
        stop.is_requested()
    });
    if stop.is_requested() {
        halt.store(true, Ordering::Relaxed);
    }
    for t in &threads {
        // Fails only if the thread died; joining reports that.
        let _ = t.go.send(());
    }
    // A duration too long to represent means no deadline.
    let deadline = w
        .duration_ms
        .and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)));
    // With halts, the waker pulses IRQ0 until the vCPUs are done: a scoped thread, as it
    // borrows the VM, so it ends before the Machine (and the VM's RAM) goes.
    let ended = AtomicBool::new(false);
    let woke = thread::scope(|s| {
        let waker = halts
            .then(|| {
                let tick = Duration::from_micros(w.halt_tick_us);
                let (irq0, ended, halt) = (machine.irq0(), &ended, &*halt);
                thread::Builder::new()
                    .name("irq0 waker".into())
                    .spawn_scoped(s, move || {
                        let result = wake(&irq0, tick, ended);
                        if result.is_err() {
                            // vCPU 0 would halt for ever: bring the run down.
                            halt.store(true, Ordering::Relaxed);
                        }
                        result
                    })
                    .context("spawn the IRQ0 waker thread")
            })
            .transpose();
        if waker.is_err() {
            halt.store(true, Ordering::Relaxed);
        }
        watch(&threads, &halt, stop, deadline);
        ended.store(true, Ordering::Relaxed);
        match waker? {
            None => Ok(()),
            Some(waker) => waker
                .join()
                .map_err(|_| anyhow!("the IRQ0 waker thread panicked"))?,
        }
    });

    let finished = threads.into_iter().map(join).collect::<Result<Vec<_>>>()?;
    woke?;
    // The Machine (and with it the VM) lives until the end of this function.
    pace::sleep_unless(Duration::from_millis(w.end_delay_ms), || {
        stop.is_requested()
    });
    if let Some(path) = &w.exit_log {
        let logs: Vec<(u32, &[exitlog::Call])> = finished
            .iter()
            .map(|f| (f.counts.index, f.log.as_slice()))
            .collect();
        exitlog::write(path, &logs)?;
    }
    let started = finished.iter().map(|f| f.started).min();
    let ended = finished.iter().map(|f| f.ended).max();
    let wall = match (started, ended) {
        (Some(s), Some(e)) => e - s,
        _ => Duration::ZERO,
    };
    Ok(Counts::new(
        finished.into_iter().map(|f| f.counts).collect(),
        wall,
        (plan.round.hypercall > 0).then_some(plan.hypercall),
    ))
}

/// Checks `w` and turns it into what each vCPU runs.
fn plan(w: &Workload) -> Result<Plan> {
    plan_on(w, backend::detect)
}

/// [`plan`], asking `backend` which KVM backend runs the guest only if it makes hypercalls.
fn plan_on(w: &Workload, backend: impl FnOnce() -> backend::Backend) -> Result<Plan> {
    ensure!(
        (1..=MAX_VCPUS).contains(&w.vcpus),
        "vcpus must be 1..={MAX_VCPUS}, not {}",
        w.vcpus
    );
    ensure!(w.rate != Some(0), "rate must be at least 1 exit/s");
    let halts = u16::try_from(w.halts)
        .ok()
        .filter(|&n| u32::from(n) <= MAX_HALTS)
        .with_context(|| {
            format!(
                "halts = {} is more than one round can do ({MAX_HALTS}: the guest counts them in \
                 15 bits of ECX)",
                w.halts
            )
        })?;
    ensure!(
        !guest::protected_mode(w.hypercall_abi) || (halts == 0 && w.npf_pages == 0),
        "Hyper-V's hypercalls need the guest in protected mode, where its halts and page loop \
         cannot run: no --halts or --npf-pages with --hypercall-abi hyperv"
    );
    ensure!(
        halts == 0 || w.halt_tick_us > 0,
        "halt_tick must be at least 1 µs (the waker would spin)"
    );
    let count = |name: &str, n: u64| {
        u32::try_from(n)
            .with_context(|| format!("{name} = {n} is more than one round can do ({})", u32::MAX))
    };
    Ok(Plan {
        round: Round {
            pio_user: count("pio_user", w.pio_user)?,
            pio_kernel: count("pio_kernel", w.pio_kernel)?,
            mmio_user: count("mmio_user", w.mmio_user)?,
            pio_in: count("pio_in", w.pio_in)?,
            pio_device: count("pio_device", w.pio_device)?,
            mmio_mask: u16::try_from(w.mmio_span.wrapping_sub(1))
                .ok()
                .filter(|_| w.mmio_span.is_power_of_two())
                .with_context(|| {
                    format!(
                        "mmio_span {} is not a power of two up to 65536",
                        w.mmio_span
                    )
                })?,
            halts,
            msr_read: count("msr_read", w.msr_read)?,
            msr_write: count("msr_write", w.msr_write)?,
            cpuid: count("cpuid", w.cpuid)?,
            hypercall: count("hypercall", w.hypercall)?,
            npf_pages: u32::try_from(w.npf_pages)
                .ok()
                .filter(|&n| n <= guest::MAX_NPF_PAGES)
                .with_context(|| {
                    format!(
                        "npf_pages = {} is more than the guest's page loop can write ({})",
                        w.npf_pages,
                        guest::MAX_NPF_PAGES
                    )
                })?,
        },
        // Never executed without hypercalls: no need to ask then.
        hypercall: guest::Hypercall {
            insn: if w.hypercall > 0 {
                backend::hypercall(backend())?
            } else {
                guest::VMCALL
            },
            abi: w.hypercall_abi,
        },
        forever: w.forever,
        rate: w.rate,
        log: w.exit_log.is_some(),
        pio_in_delay: Duration::from_millis(w.pio_in_delay_ms),
    })
}

/// Starts the thread for `vcpu`, named like QEMU's. It reports its tid on
/// `ready`, then waits for `go` before entering the guest.
fn spawn(
    vcpu: Vcpu,
    plan: Plan,
    halt: &Arc<AtomicBool>,
    ready: Sender<ReadyVcpu>,
) -> Result<VcpuThread> {
    let (go, go_rx) = mpsc::channel();
    let halt = Arc::clone(halt);
    let name = format!("CPU {}/KVM", vcpu.index);
    let handle = thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            // SAFETY: gettid has no preconditions.
            let tid = unsafe { libc::gettid() };
            // Fails only if the VMM already gave up; `go` then fails too.
            let _ = ready.send(ReadyVcpu {
                index: vcpu.index,
                thread: name,
                tid,
            });
            // Dropped now so the VMM's collection of tids ends.
            drop(ready);
            go_rx
                .recv()
                .context("the VMM failed before the guest started")?;
            let result = vcpu::run(vcpu, &plan, &halt, tid);
            if result.is_err() {
                // Bring the other vCPUs down too: the run has failed.
                halt.store(true, Ordering::Relaxed);
            }
            result
        })
        .context("spawn a vCPU thread")?;
    Ok(VcpuThread { handle, go })
}

/// The waker: pulses IRQ0 every `tick` (on a fixed schedule, skipping ticks it is late
/// for) until `ended`, each pulse waking one `hlt` of vCPU 0's halt loop.
///
/// The guest counts the `hlt`s it executes, not the interrupts, so a pulse at the wrong
/// moment cannot change the count: the loop's only IF=1 instant is its `hlt` (`sti`'s
/// shadow covers the gap before it, `cli` follows the wake, and the end of the round, the
/// other loops and the next round's registers all have IF=0). A pulse while IF=0 stays
/// pending in the PIC's IRR (edge-triggered; lowering the line does not clear it) and
/// wakes the next `hlt` at once: KVM then does not block at all, so the times it really
/// blocked can be fewer than `halts`, but the `hlt`s executed are exactly `halts` per
/// round. Pulses while one is pending merge into it, so at most one spare wake is ever
/// owed; one pending at the end of the run is harmless. Pulses after vCPU 0's last round
/// (without `forever`) go nowhere.
fn wake(irq0: &Irq0, tick: Duration, ended: &AtomicBool) -> Result<()> {
    let mut next = Instant::now();
    loop {
        next = next.checked_add(tick).context("halt tick too long")?;
        pace::sleep_unless(next.saturating_duration_since(Instant::now()), || {
            ended.load(Ordering::Relaxed)
        });
        if ended.load(Ordering::Relaxed) {
            return Ok(());
        }
        irq0.pulse()?;
        // Behind (a descheduled waker): start afresh rather than pulse in a burst, which
        // the PIC would merge anyway.
        if let Some(late) = Instant::now().checked_sub(tick) {
            next = next.max(late);
        }
    }
}

/// Returns once every vCPU thread has ended, stopping them on request or at
/// the deadline.
fn watch(threads: &[VcpuThread], halt: &AtomicBool, stop: &StopHandle, deadline: Option<Instant>) {
    loop {
        let running: Vec<&VcpuThread> =
            threads.iter().filter(|t| !t.handle.is_finished()).collect();
        if running.is_empty() {
            return;
        }
        let now = Instant::now();
        if stop.is_requested() || deadline.is_some_and(|d| now >= d) {
            halt.store(true, Ordering::Relaxed);
        }
        if halt.load(Ordering::Relaxed) {
            // Kick again until each thread is out: a kick landing just before
            // a thread re-enters KVM_RUN is lost.
            for t in running {
                // Fails only for a thread that has just ended.
                let _ = t.handle.kill(vcpu::kick_signal());
            }
            thread::sleep(KICK_EVERY);
        } else {
            thread::sleep(deadline.map_or(POLL, |d| d.saturating_duration_since(now).min(POLL)));
        }
    }
}

fn join(t: VcpuThread) -> Result<Finished> {
    t.handle
        .join()
        .map_err(|_| anyhow!("a vCPU thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_takes_the_counts() {
        let w = Workload {
            vcpus: 2,
            pio_user: 1,
            pio_kernel: 2,
            mmio_user: 3,
            pio_in: 4,
            ..Workload::default()
        };
        let p = plan(&w).unwrap();
        assert_eq!(
            p.round,
            Round {
                pio_user: 1,
                pio_kernel: 2,
                mmio_user: 3,
                pio_in: 4,
                ..Round::default()
            }
        );
    }

    #[test]
    fn plan_patches_the_backends_hypercall_and_refuses_pvm() {
        use backend::Backend;
        let w = Workload {
            msr_read: 1,
            msr_write: 2,
            cpuid: 3,
            hypercall: 4,
            ..Workload::default()
        };
        let p = plan_on(&w, || Backend::Svm).unwrap();
        assert_eq!(
            (
                p.round.msr_read,
                p.round.msr_write,
                p.round.cpuid,
                p.round.hypercall
            ),
            (1, 2, 3, 4)
        );
        assert_eq!(p.hypercall.insn, guest::VMMCALL);
        assert_eq!(p.hypercall.nr(), guest::HYPERCALL_NR);
        assert_eq!(
            plan_on(&w, || Backend::Vmx).unwrap().hypercall.insn,
            guest::VMCALL
        );
        let xen = Workload {
            hypercall_abi: guest::Abi::Xen,
            ..w.clone()
        };
        let p = plan_on(&xen, || Backend::Vmx).unwrap();
        assert_eq!(p.hypercall.nr(), guest::XEN_SCHED_OP);
        // Hyper-V's need protected mode, where halts and the page loop cannot run.
        for (halts, npf_pages) in [(1, 0), (0, 1)] {
            let hv = Workload {
                hypercall_abi: guest::Abi::Hyperv,
                halts,
                npf_pages,
                ..w.clone()
            };
            let e = plan_on(&hv, || Backend::Svm).unwrap_err().to_string();
            assert!(e.contains("--hypercall-abi hyperv"), "{e}");
        }
        let e = plan_on(&w, || Backend::Pvm).unwrap_err().to_string();
        assert!(e.contains("PVM"), "{e}");
        // Without hypercalls the backend is not even asked.
        let none = Workload {
            hypercall: 0,
            ..w.clone()
        };
        let p = plan_on(&none, || panic!("asked")).unwrap();
        assert_eq!(p.round.cpuid, 3);
        let too_many = Workload {
            cpuid: u64::from(u32::MAX) + 1,
            ..Workload::default()
        };
        assert!(plan(&too_many).is_err());
    }

    #[test]
    fn plan_takes_up_to_max_halts() {
        let w = Workload {
            halts: u64::from(MAX_HALTS),
            ..Workload::default()
        };
        assert_eq!(plan(&w).unwrap().round.halts, 0x7fff);
        let e = plan(&Workload {
            halts: 40_000,
            ..Workload::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("halts = 40000"), "{e}");
    }

    #[test]
    fn plan_rejects_what_the_guest_cannot_do() {
        let bad = [
            Workload {
                vcpus: 0,
                ..Workload::default()
            },
            Workload {
                vcpus: MAX_VCPUS + 1,
                ..Workload::default()
            },
            Workload {
                rate: Some(0),
                ..Workload::default()
            },
            Workload {
                pio_kernel: u64::from(u32::MAX) + 1,
                ..Workload::default()
            },
            Workload {
                mmio_span: 3,
                ..Workload::default()
            },
            Workload {
                mmio_span: 0x2_0000,
                ..Workload::default()
            },
            Workload {
                halts: u64::from(MAX_HALTS) + 1,
                ..Workload::default()
            },
            Workload {
                halts: 1,
                halt_tick_us: 0,
                ..Workload::default()
            },
        ];
        for w in bad {
            assert!(plan(&w).is_err(), "{w:?}");
        }
    }
}
