//! Intel VMX: a stock Debian kernel in Bochs, whose Debian build emulates VMX, so `kvm_intel`
//! loads and real nested guests run through `/dev/kvm` (`../shared/PLATFORM.md`, "Intel VMX
//! live, in Bochs"; this is `../shared/tools/vmx-bochs.sh` in Rust).
//!
//! Bochs 2.7 cannot load a kernel itself: it boots an isolinux ISO holding the kernel and a
//! busybox initramfs. There is no shared filesystem, so the initramfs carries everything the
//! runner needs (the release binaries, bpftool and coreutils' `timeout` and `date`, each with
//! the libraries `ldd` lists, and the check scripts), and the runner prints each result file
//! on the serial console (gzip, then base64, between `@@FILE`/`@@END` lines); xtask rebuilds
//! the files from the console log, so the results directory looks as vng's does.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{package, Binaries};
use crate::util::{output, run as run_cmd, target_dir, which};

/// Debian packages this backend runs with (`cargo xtask setup` installs them).
pub const PACKAGES: &[&str] = &[
    "bochs",
    "bochsbios",
    "vgabios",
    "busybox-static",
    "isolinux",
    "syslinux-common",
    "xorriso",
    "cpio",
    "xz-utils",
];

/// Haswell: Skylake and later models declare a 3.5 GHz TSC in CPUID while Bochs' TSC ticks at
/// `ips`, and the guest's clocks then run ~70x slow; Haswell calibrates against the PIT.
const CPU_MODEL: &str = "corei7_haswell_4770";
/// Emulated instructions per guest second; with `clock: sync=none` the guest clock counts
/// exactly these, whatever the host's load.
const IPS: u64 = 50_000_000;

/// The kernel's command line: the console is the serial port the results come back on; only
/// emergencies may print there, since a kernel message inside a file block would be noise.
const CMDLINE: &str = "console=ttyS0,115200 loglevel=1 panic=0 mitigations=off";

/// What the runner starts with here: the binaries under /payload/bin, coreutils' `timeout`
/// and `date` by path (busybox's sh runs its own applets whatever PATH says, and those exit
/// 143 on a timeout and have no `%N`), and `publish`, which prints result files on the console.
pub fn prelude() -> String {
    "export PATH=/payload/bin:$PATH KVMPROF=/payload/bin/kvmprof TESTVMM=/payload/bin/kvmprof-testvmm\n\
     TIMEOUT=/payload/bin/timeout DATE=/payload/bin/date\n\
     publish() {\n\
     \tfor f; do\n\
     \t\t[ -e \"$OUT/$f\" ] || continue\n\
     \t\techo \"@@FILE $f\"; gzip -c \"$OUT/$f\" | base64; echo \"@@END $f\"\n\
     \tdone\n\
     }\n"
        .to_string()
}

/// /init: mounts what kvmprof needs (proc, sys, devtmpfs, debugfs, tracefs, bpffs, tmpfs on
/// /run), loads KVM for Intel, runs /payload/run.sh and powers off. busybox's insmod cannot
/// read `.ko.xz` (6.12), so the modules are decompressed when the initramfs is made.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp /run /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
echo "@@MARK init $(cut -d' ' -f1 /proc/uptime)"
for mod in irqbypass kvm kvm-intel; do
  insmod /lib/modules/$mod.ko || echo "@@INFO insmod $mod failed"
done
echo "@@MARK kvm-loaded $(cut -d' ' -f1 /proc/uptime)"
ulimit -l unlimited
echo "@@PAYLOAD-BEGIN"
cd /payload && sh /payload/run.sh
echo "@@PAYLOAD-END rc=$?"
echo "@@MARK end $(cut -d' ' -f1 /proc/uptime)"
sync
sleep 3
poweroff -f
"#;

/// The unpacked kernel package of `version`, downloaded and unpacked under the target dir on
/// first use (`/boot` and `/lib/modules` are not touched).
fn kernel(version: &str) -> Result<PathBuf> {
    let cache = target_dir().join("xtask/vm-cache");
    let dir = cache.join(format!("kernel-{version}"));
    if dir
        .join("boot")
        .join(format!("vmlinuz-{version}"))
        .is_file()
    {
        return Ok(dir);
    }
    let debs = cache.join("debs");
    fs::create_dir_all(&debs)?;
    let pkg = package(version);
    let find = || -> Option<PathBuf> {
        fs::read_dir(&debs)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
            })
    };
    let deb = match find() {
        Some(deb) => deb,
        None => {
            println!("downloading: {pkg} (apt-get download)");
            run_cmd(
                Command::new("apt-get")
                    // As root into a directory _apt cannot write: no sandbox user, no warning.
                    .args(["download", "-q", "-o", "APT::Sandbox::User=root", &pkg])
                    .current_dir(&debs),
            )?;
            find().with_context(|| format!("apt-get download left no {pkg}_*.deb"))?
        }
    };
    // Unpacked beside the final name and renamed, so an interrupted unpack is never used.
    let part = cache.join(format!("kernel-{version}.part"));
    let _ = fs::remove_dir_all(&part);
    run_cmd(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&part))?;
    fs::rename(&part, &dir)?;
    Ok(dir)
}

/// Host programs the runner calls, besides busybox.
fn tools(bins: &Binaries) -> Result<Vec<PathBuf>> {
    let mut list = vec![bins.kvmprof.clone(), bins.testvmm.clone()];
    for name in ["bpftool", "timeout", "date"] {
        let path = which(name)
            .or_else(|| {
                let sbin = Path::new("/usr/sbin").join(name);
                sbin.is_file().then_some(sbin)
            })
            .with_context(|| format!("`{name}` not found: run `cargo xtask setup`"))?;
        list.push(path);
    }
    Ok(list)
}

/// The shared libraries of `exe`, as `ldd` lists them (the loader included).
fn libraries(exe: &Path) -> Result<Vec<PathBuf>> {
    let out = output(Command::new("ldd").arg(exe))?;
    Ok(out
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

/// Copies `from` to `root` + `to`, following symlinks.
fn put(root: &Path, from: &Path, to: &Path) -> Result<()> {
    let dest = root.join(to.strip_prefix("/").unwrap_or(to));
    fs::create_dir_all(dest.parent().context("no parent")?)?;
    fs::copy(from, &dest)
        .with_context(|| format!("cannot copy {} to {}", from.display(), dest.display()))?;
    Ok(())
}

/// Writes `<work>/boot.iso`: isolinux, the kernel and an initramfs holding /init, busybox,
/// the KVM modules, and /payload (`run.sh`, `checks/`, `bin/` with the tools) from `payload`.
fn make_iso(
    kdir: &Path,
    version: &str,
    work: &Path,
    payload: &Path,
    bins: &Binaries,
) -> Result<PathBuf> {
    let root = work.join("initramfs");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("bin"))?;
    put(&root, Path::new("/bin/busybox"), Path::new("/bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh"))?;
    fs::write(root.join("init"), INIT)?;
    fs::set_permissions(
        root.join("init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let modules = kdir.join("lib/modules").join(version).join("kernel");
    fs::create_dir_all(root.join("lib/modules"))?;
    for (name, path) in [
        ("irqbypass", "virt/lib/irqbypass"),
        ("kvm", "arch/x86/kvm/kvm"),
        ("kvm-intel", "arch/x86/kvm/kvm-intel"),
    ] {
        let dest = root.join(format!("lib/modules/{name}.ko"));
        let ko = modules.join(format!("{path}.ko"));
        if ko.is_file() {
            put(&root, &ko, Path::new(&format!("/lib/modules/{name}.ko")))?;
        } else {
            let xz = modules.join(format!("{path}.ko.xz"));
            let text = Command::new("xz")
                .arg("-dc")
                .arg(&xz)
                .output()
                .with_context(|| format!("cannot run xz on {}", xz.display()))?;
            if !text.status.success() {
                bail!("no module {} (.ko or .ko.xz)", modules.join(path).display());
            }
            fs::write(&dest, text.stdout)
                .with_context(|| format!("cannot write {}", dest.display()))?;
        }
    }
    // The payload: the runner and the checks as written for this boot, and the tools.
    let run = Command::new("cp")
        .arg("-r")
        .arg(payload)
        .arg(root.join("payload"))
        .status()?;
    if !run.success() {
        bail!("cannot copy {}", payload.display());
    }
    for tool in tools(bins)? {
        let name = tool.file_name().context("tool without a name")?;
        put(&root, &tool, &Path::new("/payload/bin").join(name))?;
        for lib in libraries(&tool)? {
            put(&root, &lib, &lib)?;
        }
    }
    let iso_dir = work.join("iso");
    let _ = fs::remove_dir_all(&iso_dir);
    fs::create_dir_all(iso_dir.join("isolinux"))?;
    let cpio = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet | gzip -1 > \"$0\"")
        .arg(iso_dir.join("initrd.gz"))
        .current_dir(&root)
        .status()?;
    if !cpio.success() {
        bail!("cannot pack the initramfs");
    }
    for f in [
        "/usr/lib/ISOLINUX/isolinux.bin",
        "/usr/lib/syslinux/modules/bios/ldlinux.c32",
    ] {
        put(
            &iso_dir,
            Path::new(f),
            &Path::new("/isolinux").join(Path::new(f).file_name().unwrap_or_default()),
        )?;
    }
    put(
        &iso_dir,
        &kdir.join("boot").join(format!("vmlinuz-{version}")),
        Path::new("/vmlinuz"),
    )?;
    fs::write(
        iso_dir.join("isolinux/isolinux.cfg"),
        format!(
            "SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL /vmlinuz\n  APPEND initrd=/initrd.gz {CMDLINE}\n"
        ),
    )?;
    let iso = work.join("boot.iso");
    run_cmd(
        Command::new("xorriso")
            .args(["-as", "mkisofs", "-quiet", "-o"])
            .arg(&iso)
            .args([
                "-b",
                "isolinux/isolinux.bin",
                "-c",
                "isolinux/boot.cat",
                "-no-emul-boot",
                "-boot-load-size",
                "4",
                "-boot-info-table",
            ])
            .arg(&iso_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    Ok(iso)
}

/// The Bochs configuration, with the pitfalls of PLATFORM.md: Debian's build has no `nogui`
/// (rfb without waiting for a client instead), the speaker must be off and the sound drivers
/// dummies (else it aborts with "buffer overflow detected"), `ignore_bad_msrs` (else it dies
/// on an early RDMSR), and `sync=none` so the guest clock counts instructions.
fn bochsrc(iso: &Path, serial: &Path, log: &Path) -> String {
    format!(
        "megs: 1024\n\
         romimage: file=/usr/share/bochs/BIOS-bochs-latest\n\
         vgaromimage: file=/usr/share/vgabios/vgabios.bin\n\
         cpu: model={CPU_MODEL}, count=1, ips={IPS}, reset_on_triple_fault=0, ignore_bad_msrs=1\n\
         pci: enabled=1, chipset=i440fx\n\
         ata0-master: type=cdrom, path={iso}, status=inserted\n\
         boot: cdrom\n\
         com1: enabled=1, mode=file, dev={serial}\n\
         display_library: rfb, options=\"timeout=0\"\n\
         clock: sync=none, time0=local\n\
         mouse: enabled=0\n\
         speaker: enabled=0\n\
         sound: waveoutdrv=dummy, waveindrv=dummy, midioutdrv=dummy\n\
         log: {log}\n\
         panic: action=fatal\n\
         error: action=report, cpu0=ignore\n\
         info: action=report\n\
         debug: action=ignore\n",
        iso = iso.display(),
        serial = serial.display(),
        log = log.display()
    )
}

/// How a Bochs run ended.
pub enum End {
    /// The runner finished and the guest powered off.
    Done,
    /// Bochs stopped before the runner finished (a panic, or Bochs itself died).
    Stopped(String),
    /// Killed at the deadline.
    Hung,
}

/// Boots kernel `version` with `<work>/payload` (`run.sh` and `checks/`) as /payload and
/// waits for the runner to finish; the console is `<work>/vm.log`. The result files the
/// runner published are written into `out`.
pub fn run(
    version: &str,
    work: &Path,
    out: &Path,
    bins: &Binaries,
    deadline: Duration,
) -> Result<End> {
    let kdir = kernel(version)?;
    let iso = make_iso(&kdir, version, work, &work.join("payload"), bins)?;
    let serial = work.join("vm.log");
    fs::write(&serial, "")?;
    let rc = work.join("bochsrc");
    fs::write(&rc, bochsrc(&iso, &serial, &work.join("bochs.log")))?;
    // Debian's bochs-bin has the internal debugger, which waits for a command: `c` continues.
    fs::write(work.join("debugger"), "c\n")?;
    let start = Instant::now();
    let mut bochs = Command::new("bochs-bin")
        .arg("-q")
        .arg("-f")
        .arg(&rc)
        .arg("-rc")
        .arg(work.join("debugger"))
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(fs::File::create(work.join("bochs.stdout"))?)
        .stderr(fs::File::create(work.join("bochs.stderr"))?)
        .spawn()
        .context("cannot start bochs-bin (run `cargo xtask setup`)")?;
    let end = loop {
        std::thread::sleep(Duration::from_millis(500));
        let text = fs::read_to_string(&serial).unwrap_or_default();
        if text.lines().any(|l| l.starts_with("@@MARK end")) {
            break End::Done;
        }
        if text.contains("Kernel panic") {
            break End::Stopped("the guest kernel panicked".into());
        }
        if let Some(status) = bochs.try_wait()? {
            break End::Stopped(format!(
                "bochs exited ({status}) before the runner finished"
            ));
        }
        if start.elapsed() > deadline {
            break End::Hung;
        }
    };
    // After `end` the guest only syncs and powers off: Bochs is stopped rather than waited for.
    let _ = bochs.kill();
    let _ = bochs.wait();
    let text = fs::read(&serial)?;
    for (name, data) in parse_serial(&String::from_utf8_lossy(&text)) {
        if let Some(data) = data {
            let mut f = fs::File::create(out.join(&name))?;
            f.write_all(&gunzip(&data)?)?;
        }
    }
    Ok(end)
}

/// `--shell-cmd`: the payload's console output, once Bochs has ended, and its exit code
/// (`None` when it did not finish).
pub fn payload_output(work: &Path) -> (String, Option<u8>) {
    let text = fs::read_to_string(work.join("vm.log")).unwrap_or_default();
    let mut out = String::new();
    let mut rc = None;
    let lines = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .skip_while(|l| !l.starts_with("@@PAYLOAD-BEGIN"))
        .skip(1);
    for line in lines {
        if let Some(end) = line.strip_prefix("@@PAYLOAD-END rc=") {
            rc = end.trim().parse().ok();
            break;
        }
        out.push_str(line);
        out.push('\n');
    }
    (out, rc)
}

/// The files the runner published on the console: each name with its gzip data, or `None`
/// when the block was cut off (the VM stopped while printing it). Lines in a block that are
/// not base64 are the kernel's and are skipped.
pub fn parse_serial(text: &str) -> Vec<(String, Option<Vec<u8>>)> {
    let mut files = Vec::new();
    let mut open: Option<(String, String)> = None;
    for line in text.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(name) = line.strip_prefix("@@FILE ") {
            if let Some((cut, _)) = open.take() {
                files.push((cut, None));
            }
            open = Some((name.to_string(), String::new()));
        } else if let Some(name) = line.strip_prefix("@@END ") {
            match open.take() {
                Some((n, b64)) if n == name => files.push((n, decode_base64(&b64))),
                Some((n, _)) => files.push((n, None)),
                None => {}
            }
        } else if let Some((_, b64)) = open.as_mut() {
            if line
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
            {
                b64.push_str(line);
            }
        }
    }
    if let Some((cut, _)) = open {
        files.push((cut, None));
    }
    files
}

/// Standard base64 (RFC 4648, padded), as busybox's `base64` prints it.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = n << 6 | value(c)?;
        }
        n <<= 6 * pad as u32;
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    Some(out)
}

/// gzip data as the guest's busybox wrote it, decompressed by the host's gzip.
fn gunzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot run gzip")?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    let data = data.to_vec();
    // Written from a thread: a large file would fill the pipe while nobody reads stdout.
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    if !out.status.success() {
        bail!("a result file from the console is not valid gzip");
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(decode_base64("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(decode_base64("aGk="), Some(b"hi".to_vec()));
        assert_eq!(decode_base64("aGV5"), Some(b"hey".to_vec()));
        assert_eq!(decode_base64(""), Some(vec![]));
        assert_eq!(decode_base64("aGV"), None);
        assert_eq!(decode_base64("a*V5"), None);
    }

    #[test]
    fn serial_files_are_rebuilt_and_cut_blocks_are_said() {
        // "x\n" gzipped by busybox, wrapped over two lines, with the console's \r\n, a kernel
        // message inside the block and an unfinished block at the end.
        let text = "boot noise\r\n\
            @@FILE 00-vmx.rc\r\n\
            H4sIAAAAAAAAA6vgAgAf\r\n\
            [   12.345678] kvm: something\r\n\
            COpGAgAAAA==\r\n\
            @@END 00-vmx.rc\r\n\
            @@FILE 01-kvm_intel.out\r\n\
            H4sI\r\n";
        let files = parse_serial(text);
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].0, "00-vmx.rc");
        let data = files[0].1.as_ref().unwrap();
        assert_eq!(gunzip(data).unwrap(), b"x\n");
        assert_eq!(files[1], ("01-kvm_intel.out".to_string(), None));
    }

    #[test]
    fn payload_output_is_what_lies_between_the_markers() {
        let dir = std::env::temp_dir().join(format!("xtask-bochs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("vm.log"),
            "noise\r\n@@PAYLOAD-BEGIN\r\nhello\r\n@@PAYLOAD-END rc=0\r\n@@MARK end 1\r\n",
        )
        .unwrap();
        assert_eq!(payload_output(&dir), ("hello\n".to_string(), Some(0)));
        fs::remove_dir_all(&dir).unwrap();
    }
}
