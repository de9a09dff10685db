//! A real VMM: `kvmprof record --pid qemu` on `qemu-system-x86_64 -accel kvm` booting
//! SeaBIOS reports its port and MMIO exits with their addresses.
use std::{
    process::{Command, Stdio},
    thread::sleep,
    time::Duration,
};

use kvmprof_tests::{report_json, scratch, skip_without_kvm, stderr};

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
    // kvmprof says "recording" once every hook is attached, which on a loaded machine can
    // take seconds: only then may the BIOS run.
    let mut err_pipe = std::io::BufReader::new(rec.stderr.take().expect("stderr"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut err_pipe, &mut first).expect("kvmprof stderr");
    {
        use std::io::Write;
        let stdin = qemu.stdin.as_mut().expect("qmp stdin");
        let _ = stdin.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"cont\"}\n");
    }
    let mut out = rec.wait_with_output().expect("kvmprof");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err_pipe, &mut rest).expect("kvmprof stderr");
    out.stderr = format!("{first}{rest}").into_bytes();
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert!(out.status.success(), "{}", stderr(&out));
    let r = report_json(&data, "reason");
    assert!(stderr(&out).contains("qemu"), "{}", stderr(&out));
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
