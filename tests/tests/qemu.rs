//! A real VMM: `kvmprof record --pid qemu` on `qemu-system-x86_64 -accel kvm` booting
//! SeaBIOS reports its port and MMIO exits with their addresses.
use std::{
    io::{BufRead, BufReader, Read},
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
    // Nothing counts until every hook is attached and kvmprof says "recording".
    let mut err = BufReader::new(rec.stderr.take().expect("kvmprof stderr"));
    let mut announced = String::new();
    err.read_line(&mut announced).expect("kvmprof stderr");
    {
        use std::io::Write;
        let stdin = qemu.stdin.as_mut().expect("qmp stdin");
        let _ = stdin.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"cont\"}\n");
    }
    let mut rest = String::new();
    err.read_to_string(&mut rest).expect("kvmprof stderr");
    let status = rec.wait().expect("kvmprof");
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert!(status.success(), "{announced}{rest}");
    let r = report_json(&data, "reason");
    assert!(announced.contains("qemu"), "{announced}");
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

/// Issue 18: a SeaBIOS boot writes ~20000 distinct VGA/BIOS addresses. Its exits are tallied
/// in the kernel all the same (an MMIO address is not part of a tally's kind), none is lost,
/// and the ports table's MMIO rows, with their `other` row, add up to the MMIO exits.
#[test]
fn a_seabios_boot_is_tallied_in_the_kernel_with_every_mmio_exit_in_the_address_rows() {
    let test = "a_seabios_boot_is_tallied_in_the_kernel_with_every_mmio_exit_in_the_address_rows";
    if skip_without_kvm(test) {
        return;
    }
    let Ok(mut qemu) = Command::new("qemu-system-x86_64")
        .args([
            "-accel", "kvm", "-cpu", "qemu64", "-m", "128", "-display", "none", "-net", "none",
        ])
        .args(["-serial", "none", "-monitor", "none", "-no-reboot", "-S"])
        .args(["-qmp", "stdio"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    else {
        eprintln!("skipped {test}: qemu-system-x86_64 not installed");
        return;
    };
    sleep(Duration::from_millis(500));
    let data = scratch("seabios").join("q.data");
    // By pid, not name: other QEMUs may run on this host.
    let mut rec = Command::new(kvmprof_tests::bin("kvmprof"))
        .args([
            "record",
            "--pid",
            &qemu.id().to_string(),
            "--duration",
            "7s",
        ])
        .arg("-o")
        .arg(&data)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kvmprof");
    let mut err = BufReader::new(rec.stderr.take().expect("kvmprof stderr"));
    let mut announced = String::new();
    err.read_line(&mut announced).expect("kvmprof stderr");
    {
        use std::io::Write;
        let stdin = qemu.stdin.as_mut().expect("qmp stdin");
        let _ = stdin.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"cont\"}\n");
    }
    let mut rest = String::new();
    err.read_to_string(&mut rest).expect("kvmprof stderr");
    let status = rec.wait().expect("kvmprof");
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert!(status.success(), "{announced}{rest}");
    let r = report_json(&data, "reason");
    let total = r["total_exits"].as_u64().expect("total_exits");
    let tallied = r["header"]["own_cost"]["tallied"]
        .as_u64()
        .expect("tallied");
    assert_eq!(r["lost"], 0, "{rest}");
    assert!(
        total > 10_000,
        "a SeaBIOS boot makes tens of thousands of exits: {total}"
    );
    assert!(tallied * 100 >= total * 99, "tallied {tallied} of {total}");
    let mmio_exits: u64 = r["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .filter(|g| {
            g["label"]
                .as_str()
                .is_some_and(|l| l.contains("MMIO") || l.contains("mmio"))
        })
        .map(|g| g["count"].as_u64().expect("count"))
        .sum();
    let rows: Vec<_> = r["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .filter(|p| p["space"] == "mmio")
        .collect();
    let by_addr: u64 = rows
        .iter()
        .map(|p| p["count"].as_u64().expect("count"))
        .sum();
    assert!(
        mmio_exits > 1000,
        "SeaBIOS writes VGA memory by MMIO: {mmio_exits}"
    );
    assert_eq!(
        by_addr, mmio_exits,
        "MMIO address rows (with `other`) against MMIO exits"
    );
    assert!(
        rows.iter().filter(|p| p["folded"] == false).count() >= 1000,
        "the kernel counts thousands of addresses apart"
    );
}
