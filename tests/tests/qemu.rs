//! A real VMM: `kvmprof record --pid qemu` on `qemu-system-x86_64 -accel kvm` booting
//! SeaBIOS reports its port and MMIO exits with their addresses.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use kvmprof_tests::{report_json, scratch, skip_without_kvm};

#[test]
fn record_by_name_reports_qemu_port_and_mmio_exits() {
    if skip_without_kvm("record_by_name_reports_qemu_port_and_mmio_exits") {
        return;
    }
    let Ok(mut qemu) = Command::new("qemu-system-x86_64")
        .args([
            "-accel", "kvm", "-cpu", "qemu64", "-m", "128", "-display", "none",
        ])
        .args(["-serial", "none", "-monitor", "none", "-no-reboot", "-S"])
        .args(["-qmp", "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        eprintln!("skipped record_by_name_reports_qemu_port_and_mmio_exits: qemu-system-x86_64 not installed");
        return;
    };
    // QEMU starts paused (-S) and resumes on a QMP `cont`, so recording sees the BIOS boot.
    sleep(Duration::from_millis(500));
    let data = scratch("qemu").join("q.data");
    let mut rec = Command::new(kvmprof_tests::bin("kvmprof"))
        .args([
            "record",
            "--pid",
            "qemu",
            "--duration",
            "4s",
            "-o",
            data.to_str().unwrap(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kvmprof");
    // Resume the guest only once every hook is attached (kvmprof says "recording"): the
    // BIOS reads fw_cfg in its first milliseconds, and attaching takes a while on a loaded
    // machine.
    let mut err_lines = BufReader::new(rec.stderr.take().expect("kvmprof stderr")).lines();
    let mut err = String::new();
    for line in err_lines.by_ref() {
        let line = line.expect("kvmprof stderr");
        err.push_str(&line);
        err.push('\n');
        if line.contains("recording") {
            break;
        }
    }
    {
        use std::io::Write;
        let stdin = qemu.stdin.as_mut().expect("qmp stdin");
        let _ = stdin.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"cont\"}\n");
    }
    for line in err_lines {
        err.push_str(&line.expect("kvmprof stderr"));
        err.push('\n');
    }
    let status = rec.wait().expect("kvmprof");
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert!(status.success(), "{err}");
    let r = report_json(&data, "reason");
    assert!(err.contains("qemu"), "{err}");
    let ports = r["ports"].as_array().expect("ports");
    let pio: Vec<_> = ports.iter().filter(|p| p["space"] == "pio").collect();
    let mmio: Vec<_> = ports.iter().filter(|p| p["space"] == "mmio").collect();
    assert!(pio.len() >= 5, "SeaBIOS uses many ports; got {pio:?}");
    assert!(!mmio.is_empty(), "no MMIO exits in {r}");
    // fw_cfg (0x510/0x511) is how SeaBIOS reads its configuration from QEMU.
    assert!(
        pio.iter().any(|p| p["addr"] == 0x510 || p["addr"] == 0x511),
        "{pio:?}"
    );
    assert_eq!(r["lost"], 0);
}
