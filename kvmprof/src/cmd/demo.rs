//! `kvmprof demo` and the hidden `kvmprof guest` it records: the built-in test guest.
use std::{path::Path, time::Duration};

use anyhow::{bail, Context, Result};

use kvmprof_testvmm::Workload;

use crate::{
    cli::{DemoArgs, GuestArgs},
    cmd::record::{announce, finish, options, Recorder},
    data::cost::BpfStats,
    data::group::By,
    data::target::Target,
    live::attach,
    live::spawn::{self, spawn_held},
    live::target,
    live::Session,
    recording::hlog,
    sinks::report::{self, Format},
    util::output,
};

/// What the guest runs unless told otherwise: per vCPU, a few thousand exits of each kind.
const DEMO: Workload = Workload {
    vcpus: 2,
    pio_user: 1000,
    pio_kernel: 5000,
    mmio_user: 300,
    pio_in: 50,
    ..Workload::IDLE
};

/// Runs the built-in guest, records it from its first instruction to its end, and prints
/// the report next to the guest's own count of its exits: a first look and a self-check.
pub async fn demo(a: DemoArgs) -> Result<()> {
    target::preflight()?;
    let data = output::open(&a.output)?;
    let exe = std::env::current_exe().context("locate the kvmprof executable")?;
    // The guest's counts go to a scratch file of ours, never next to `-o` (which may be
    // /dev/null).
    let counts = std::env::temp_dir().join(format!("kvmprof-demo-{}.json", std::process::id()));
    let argv: Vec<String> = vec![
        exe.to_string_lossy().into_owned(),
        "guest".into(),
        "--vcpus".into(),
        a.vcpus.to_string(),
        "--counts".into(),
        counts.to_string_lossy().into_owned(),
    ];
    let held = spawn_held(&argv)?;
    let t = Target {
        pid: held.pid(),
        name: "kvmprof guest".into(),
    };
    let interval = Duration::from_secs(1);
    // The demo guest is not a VM anyone depends on, and it may end before the first sample
    // of the default `sampled`: its report shows the BPF cost measured throughout.
    let opts = options(
        vec![t.clone()],
        false,
        &a.hooks,
        None,
        interval,
        attach::Records::default(),
        BpfStats::On,
    );
    let session = Session::start(opts)?;
    let rec = Recorder::start(&session, data, None, std::slice::from_ref(&t), interval)?;
    announce(&session, std::slice::from_ref(&t), false);
    let mut child = held.release();
    let result = rec.run(session).await;
    let status = child.wait().context("wait for the demo guest");
    let guest = read_counts(&counts);
    let _ = std::fs::remove_file(&counts);
    let (status, (out, rec)) = (status?, result?);
    if !status.success() {
        bail!("the demo guest {}", spawn::describe(status));
    }
    let live = finish(&out, &[t], rec, None)?;
    let guest = guest?;
    // What was recorded, as `report` reads it back; a device or FIFO cannot be read back,
    // so then the recording itself.
    let (header, agg) = if std::fs::metadata(&a.output).is_ok_and(|m| m.is_file()) {
        hlog::open(&a.output)?
    } else {
        (live, out.aggregate)
    };
    let t = &guest.total;
    let text = format!(
        "{}\nThe guest counted its own exits: {} PIO out + {} PIO in to the VMM, {} PIO in the \
         kernel (ioeventfd), {} MMIO, {} HLT = {}; kvmprof saw {} ({} lost).\n",
        report::render_with(&header, &agg, By::Reason, Format::Table, Default::default()),
        t.pio_user,
        t.pio_in,
        t.pio_kernel,
        t.mmio_user,
        t.hlt,
        t.total(),
        agg.total_exits(),
        agg.lost()
    );
    output::stdout(text.as_bytes()).map(drop)
}

fn read_counts(path: &Path) -> Result<kvmprof_testvmm::Counts> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
}

/// The built-in test guest (`kvmprof-testvmm` as a library).
pub fn guest(a: &GuestArgs) -> Result<()> {
    let counts = kvmprof_testvmm::run(&a.workload.over(DEMO))?;
    let json = serde_json::to_string_pretty(&counts)?;
    match &a.counts {
        Some(p) => output::write_file(p, json.as_bytes()),
        None => output::stdout(format!("{json}\n").as_bytes()).map(drop),
    }
}
