//! Encodes the latest [`Snapshot`] and kvmprof's own cost as OpenMetrics, through
//! prometheus-client's encoder (a custom collector: the bucket counts come from HDR
//! histograms, which the crate's own `Histogram` type cannot be fed).
use std::{
    fmt,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Unit,
};

use crate::{
    data::cost::{BpfStats, OwnCost},
    live::selfcost::{self, CpuTime},
};

use super::{
    buckets,
    snapshot::{Snapshot, Vm},
};

type Labels = Vec<(&'static str, String)>;

/// The collector registered with the registry; the session's tick replaces its snapshot.
#[derive(Debug, Default, Clone)]
pub struct Exporter {
    pub snapshot: Arc<Mutex<Snapshot>>,
}

impl prometheus_client::collector::Collector for Exporter {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        // A poisoned lock means a tick panicked mid-update: better no scrape than a wrong one.
        let s = self.snapshot.lock().map_err(|_| fmt::Error)?;
        encode_exits(&s, &mut enc)?;
        encode_detail(&s, &mut enc)?;
        encode_latency(&s, &mut enc)?;
        let mut m = enc.encode_descriptor(
            "kvmprof_lost_exits",
            "Exits kvmprof could not record (its ring buffer was full); not in any other series",
            None,
            MetricType::Counter,
        )?;
        m.encode_counter::<NoLabelSet, _, f64>(&s.lost, None)?;
        let mut family = enc.encode_descriptor(
            "kvmprof_self_exits",
            "kvmprof's own cost: exits of every VM since the start, by how they reached \
             kvmprof: tallied in kernel maps, or one by one as records (each costs more: \
             --slow, or all 512 tally slots in use at once)",
            None,
            MetricType::Counter,
        )?;
        let c = &s.own_cost;
        for (path, n) in [("tallied", c.tallied), ("one_by_one", c.one_by_one)] {
            family
                .encode_family(&[("path", path)])?
                .encode_counter::<NoLabelSet, _, f64>(&(n as f64), None)?;
        }
        encode_bpf_cost(&s.own_cost, &mut enc)?;
        drop(s);
        encode_cost(selfcost::cpu_time(), &mut enc)
    }
}

fn vm_labels(vm: &Vm) -> Labels {
    vec![
        ("pid", vm.pid.to_string()),
        ("process", vm.name.process.clone()),
        ("guest", vm.name.guest.clone()),
    ]
}

fn encode_exits(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    let mut family = enc.encode_descriptor(
        "kvmprof_exits",
        "VM exits by VM, vCPU and exit reason",
        None,
        MetricType::Counter,
    )?;
    for e in &s.exits {
        let Some(vm) = s.vms.get(&e.pid) else {
            continue;
        };
        let mut labels = vm_labels(vm);
        if let Some(vcpu) = e.vcpu {
            labels.push(("vcpu", vcpu.map_or("unknown".into(), |v| v.to_string())));
        }
        labels.push(("reason", e.reason.clone()));
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, f64>(&e.count, None)?;
    }
    Ok(())
}

/// `--detail`: exits by key, the top keys of each VM and the rest as `other`
/// ([`super::snapshot::DetailSeries`]).
fn encode_detail(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    if s.detail.is_empty() {
        return Ok(());
    }
    let mut family = enc.encode_descriptor(
        "kvmprof_exit_detail",
        "VM exits by VM, exit reason and key (--detail): port, MMIO address, MSR and \
         direction, CPUID leaf/subleaf, hypercall number; a VM's first --detail-top keys \
         seen (the largest first) have a series, key=\"other\" counts the reason's other \
         exits, so a reason's series add up to its exits",
        None,
        MetricType::Counter,
    )?;
    for d in &s.detail {
        let Some(vm) = s.vms.get(&d.pid) else {
            continue;
        };
        let mut labels = vm_labels(vm);
        labels.push(("reason", d.reason.clone()));
        match &d.key {
            Some((space, key, dir)) => {
                labels.push(("space", space.to_string()));
                labels.push(("key", key.clone()));
                labels.push(("dir", dir.to_string()));
            }
            None => labels.push(("key", "other".into())),
        }
        family
            .encode_family(&labels)?
            .encode_counter::<NoLabelSet, _, f64>(&d.count, None)?;
    }
    Ok(())
}

fn encode_latency(s: &Snapshot, enc: &mut DescriptorEncoder) -> fmt::Result {
    let help = format!(
        "Time spent in each stage of VM exits ({}), by VM and exit reason; bounds on the HDR \
         histograms' bucket edges, counts exact",
        kvmprof_common::stage::NAMES.join(", ")
    );
    let mut family = enc.encode_descriptor(
        "kvmprof_exit_latency",
        &help,
        Some(&Unit::Seconds),
        MetricType::Histogram,
    )?;
    let bounds: Vec<f64> = buckets::bounds_ns()
        .iter()
        .map(|&ns| ns as f64 / 1e9)
        .chain([f64::INFINITY])
        .collect();
    for l in &s.latency {
        let Some(vm) = s.vms.get(&l.pid) else {
            continue;
        };
        let mut labels = vm_labels(vm);
        labels.push(("reason", l.reason.clone()));
        labels.push(("stage", l.stage.name().to_string()));
        let counts: Vec<(f64, u64)> = bounds.iter().copied().zip(l.buckets).collect();
        family
            .encode_family(&labels)?
            .encode_histogram::<NoLabelSet>(l.sum_ns as f64 / 1e9, l.count, &counts, None)?;
    }
    Ok(())
}

fn encode_cost(cpu: Option<CpuTime>, enc: &mut DescriptorEncoder) -> fmt::Result {
    let Some(cpu) = cpu else {
        return Ok(());
    };
    let mut family = enc.encode_descriptor(
        "kvmprof_self_cpu",
        "kvmprof's own cost: CPU time of the kvmprof process (its eBPF programs run in the \
         VMMs' threads and are not included)",
        Some(&Unit::Seconds),
        MetricType::Counter,
    )?;
    for (mode, ns) in [("user", cpu.user_ns), ("system", cpu.system_ns)] {
        family
            .encode_family(&[("mode", mode)])?
            .encode_counter::<NoLabelSet, _, f64>(&(ns as f64 / 1e9), None)?;
    }
    Ok(())
}

/// The kernel's run time of kvmprof's eBPF programs. They run in the VMMs' threads, on the
/// path of every exit, so this is the cost kvmprof adds to the VMs. The run-time statistics
/// are on only in samples by default (`--bpf-stats sampled`: they cost the VMs ~5 % of their
/// exit rate while on), so the run time and the exits it is divided by are both those of the
/// samples (docs/serve.md).
fn encode_bpf_cost(cost: &OwnCost, enc: &mut DescriptorEncoder) -> fmt::Result {
    if cost.programs.is_empty() {
        return Ok(());
    }
    let mut family = enc.encode_descriptor(
        "kvmprof_self_bpf",
        "kvmprof's own cost: run time of its eBPF programs (in the VMMs' threads, on each \
         exit's path), per program, as the kernel's BPF run-time statistics count it while \
         kvmprof has them on (--bpf-stats: sampled 1 s in 10 by default, or throughout)",
        Some(&Unit::Seconds),
        MetricType::Counter,
    )?;
    for p in &cost.programs {
        family
            .encode_family(&[("program", p.name.as_str())])?
            .encode_counter::<NoLabelSet, _, f64>(&(p.run_ns as f64 / 1e9), None)?;
    }
    let mut family = enc.encode_descriptor(
        "kvmprof_self_bpf_runs",
        "kvmprof's own cost: times each of its eBPF programs ran while the run-time \
         statistics were on",
        None,
        MetricType::Counter,
    )?;
    for p in &cost.programs {
        family
            .encode_family(&[("program", p.name.as_str())])?
            .encode_counter::<NoLabelSet, _, f64>(&p.runs, None)?;
    }
    // Every exit the programs ran for: the traced VMs' and, under a process filter, the
    // others' (`OwnCost::untraced_exits`).
    let Some(exits) = cost
        .measured_exits
        .map(|n| n + cost.untraced_exits.unwrap_or(0))
        .filter(|&n| n > 0)
    else {
        return Ok(());
    };
    let mut m = enc.encode_descriptor(
        "kvmprof_self_bpf_measured_exits",
        "kvmprof's own cost: the VM exits counted while the run-time statistics were on, \
         those of untraced processes among them (the programs ran for them too), which \
         kvmprof_self_bpf_seconds_total is divided by for the run time per exit",
        None,
        MetricType::Counter,
    )?;
    m.encode_counter::<NoLabelSet, _, f64>(&exits, None)?;
    let mut family = enc.encode_descriptor(
        "kvmprof_self_bpf_per_exit",
        "kvmprof's own cost: run time of its eBPF programs per VM exit, over every period \
         the run-time statistics were on since kvmprof started; bpf_stats says when they \
         were: sampled (1 s in 10) or on (throughout)",
        Some(&Unit::Seconds),
        MetricType::Gauge,
    )?;
    let mode = match cost.bpf_stats {
        BpfStats::Sampled => "sampled",
        BpfStats::On => "on",
        BpfStats::Off => "off",
    };
    let ns: u64 = cost.programs.iter().map(|p| p.run_ns).sum();
    family
        .encode_family(&[("bpf_stats", mode)])?
        .encode_gauge(&(ns as f64 / exits as f64 / 1e9))?;
    Ok(())
}

/// The whole exposition, as served on `/metrics`.
pub fn render(registry: &prometheus_client::registry::Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        data::cost::ProgramCost,
        data::model::Stage,
        live::vmname::VmName,
        serve::snapshot::{DetailCount, ExitCount, Latency},
    };

    fn text(s: Snapshot) -> String {
        let exporter = Exporter::default();
        *exporter.snapshot.lock().unwrap() = s;
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(exporter));
        render(&registry).unwrap()
    }

    #[test]
    fn openmetrics_with_vm_labels_and_cumulative_exact_buckets() {
        let vm = Vm {
            pid: 42,
            name: VmName {
                process: "qemu-system-x86".into(),
                guest: "web1".into(),
            },
        };
        let mut buckets = [0; buckets::BUCKETS];
        buckets[3] = 5; // ≤ 1 µs
        buckets[5] = 2; // ≤ 5.003 µs
        buckets[buckets::BUCKETS - 1] = 1; // above 50 ms
        let snap = Snapshot {
            vms: BTreeMap::from([(42, vm)]),
            exits: vec![ExitCount {
                pid: 42,
                vcpu: Some(Some(1)),
                reason: "io".into(),
                count: 8,
            }],
            latency: vec![Latency {
                pid: 42,
                reason: "io".into(),
                stage: Stage::Cycle,
                buckets,
                count: 8,
                sum_ns: 1_500_000_000,
            }],
            detail: vec![
                DetailCount {
                    pid: 42,
                    reason: "msr".into(),
                    key: Some(("msr", "0x1b".into(), "read")),
                    count: 6,
                },
                DetailCount {
                    pid: 42,
                    reason: "msr".into(),
                    key: None,
                    count: 2,
                },
            ],
            lost: 3,
            own_cost: OwnCost {
                programs: vec![ProgramCost {
                    name: "kvm_pio".into(),
                    run_ns: 2_500_000_000,
                    runs: 40,
                }],
                measured_exits: Some(50_000_000),
                samples: 3,
                tallied: 7,
                one_by_one: 2,
                ..OwnCost::default()
            },
        };
        let t = text(snap);
        let vm = r#"pid="42",process="qemu-system-x86",guest="web1""#;
        let has = |line: String| assert!(t.lines().any(|l| l == line), "{line} not in\n{t}");
        has(format!(
            r#"kvmprof_exits_total{{{vm},vcpu="1",reason="io"}} 8"#
        ));
        let h = "kvmprof_exit_latency_seconds";
        let l = format!(r#"{vm},reason="io",stage="cycle""#);
        has(format!(r#"{h}_bucket{{le="5e-7",{l}}} 0"#));
        has(format!(r#"{h}_bucket{{le="0.000001",{l}}} 5"#));
        has(format!(r#"{h}_bucket{{le="0.000002",{l}}} 5"#));
        has(format!(r#"{h}_bucket{{le="0.000005003",{l}}} 7"#));
        has(format!(r#"{h}_bucket{{le="0.050003967",{l}}} 7"#));
        has(format!(r#"{h}_bucket{{le="+Inf",{l}}} 8"#));
        has(format!(r#"{h}_count{{{l}}} 8"#));
        has(format!(r#"{h}_sum{{{l}}} 1.5"#));
        has(format!(
            r#"kvmprof_exit_detail_total{{{vm},reason="msr",space="msr",key="0x1b",dir="read"}} 6"#
        ));
        has(format!(
            r#"kvmprof_exit_detail_total{{{vm},reason="msr",key="other"}} 2"#
        ));
        has("kvmprof_lost_exits_total 3".into());
        has(r#"kvmprof_self_exits_total{path="tallied"} 7.0"#.into());
        has(r#"kvmprof_self_exits_total{path="one_by_one"} 2.0"#.into());
        has(r#"kvmprof_self_bpf_seconds_total{program="kvm_pio"} 2.5"#.into());
        has(r#"kvmprof_self_bpf_runs_total{program="kvm_pio"} 40"#.into());
        // 2.5 s of run time over the samples' 50 million exits: 50 ns per exit.
        has("kvmprof_self_bpf_measured_exits_total 50000000".into());
        has(r#"kvmprof_self_bpf_per_exit_seconds{bpf_stats="sampled"} 5e-8"#.into());
        assert!(t.contains("# TYPE kvmprof_exit_latency_seconds histogram"));
        assert!(t.contains(r#"kvmprof_self_cpu_seconds_total{mode="user"} "#));
        assert!(t.ends_with("# EOF\n"));
    }

    #[test]
    fn a_vm_without_a_name_yet_is_not_served() {
        let snap = Snapshot {
            exits: vec![ExitCount {
                pid: 7,
                vcpu: None,
                reason: "io".into(),
                count: 1,
            }],
            ..Snapshot::default()
        };
        assert!(!text(snap).contains("pid=\"7\""));
    }

    #[test]
    fn no_bpf_cost_series_before_a_sample_when_off_or_refused() {
        let t = text(Snapshot::default());
        assert!(!t.contains("kvmprof_self_bpf"), "{t}");
        assert!(t.contains("kvmprof_self_cpu_seconds_total"), "{t}");
    }
}
