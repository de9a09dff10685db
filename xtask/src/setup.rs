//! `cargo xtask setup`: installs what the build, the tests and the bench need, idempotently.
//! Every item prints one line: `ok: ...` when it is already there, `installing: ...` otherwise,
//! so a second run prints only `ok` lines. Each check is a local look-up (one dpkg-query for
//! all Debian packages); the network is used only for what is missing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::util::{display, output, run as run_cmd, which};
use crate::vm::{self, bochs, Series};

/// Debian packages the project needs (and `bochs::PACKAGES` for the VMX VM): LLVM 22 for
/// bpf-linker, QEMU and busybox for the SVM VM
/// (virtme-ng builds its initramfs with busybox), bpftool to inspect programs, bpftrace for
/// the bench, and the reference HdrHistogram (Java, with a runtime: the package does not
/// depend on one) that the tests in `tests/tests/hdr.rs` check kvmprof's files against, and
/// tmux to drive `kvmprof top` and prometheus to scrape `kvmprof serve` in the integration
/// tests (its promtool tests the alerting rules). `cargo xtask deb --check` installs the
/// package and reads what it installed with man-db (`man -w`), zsh and fish (syntax checks
/// of the completions) and systemd (`systemd-analyze verify` of the unit; PID 1 need not be
/// systemd); cargo-deb finds the package's dependencies with dpkg-dev's dpkg-shlibdeps.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "qemu-system-x86",
    "bpftool",
    "busybox-static",
    "bpftrace",
    "libhdrhistogram-java",
    "openjdk-17-jre-headless",
    "tmux",
    "prometheus",
    "man-db",
    "zsh",
    "fish",
    "systemd",
    "dpkg-dev",
];

/// Wanted but not required: `perf kvm stat` in the VM, the reference to compare kvmprof with.
const APT_OPTIONAL: &[&str] = &["linux-perf"];

/// The bpf-linker release known to build against Debian's LLVM 22.
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

const TRACEFS: &str = "/sys/kernel/tracing";

pub fn run() -> Result<()> {
    apt_packages()?;
    rust_toolchains()?;
    bpf_linker()?;
    virtme_ng()?;
    python_hdrh()?;
    tracefs()
}

/// Installed Debian packages and their versions, from one dpkg-query call.
fn installed_packages() -> Result<HashMap<String, String>> {
    let out =
        output(Command::new("dpkg-query").args(["-W", "-f=${Package}\t${Status}\t${Version}\n"]))?;
    Ok(out
        .lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let (name, status, version) = (fields.next()?, fields.next()?, fields.next()?);
            (status == "install ok installed").then(|| (name.to_string(), version.to_string()))
        })
        .collect())
}

/// The Debian packages, the Bochs backend's included, and the newest kernel of each series
/// vmtest boots: vng boots the host's root, so its kernels are installed like any other (Bochs
/// unpacks its own copy from the same package).
fn apt_packages() -> Result<()> {
    let installed = installed_packages()?;
    let mut wanted = Vec::new();
    let all: Vec<&str> = APT_PACKAGES
        .iter()
        .chain(bochs::PACKAGES)
        .copied()
        .collect();
    for (i, &pkg) in all.iter().enumerate() {
        if all[..i].contains(&pkg) {
            continue;
        }
        match installed.get(pkg) {
            Some(version) => println!("ok: {pkg} {version} present"),
            None => wanted.push(pkg.to_string()),
        }
    }
    // The archive's newest kernel of each series, as vmtest looks it up. apt's lists may be
    // empty on a fresh machine, or old enough to name a kernel the archive has dropped since
    // (a machine image's lists named 6.1.0-48 after the archive moved to 6.1.0-57, and the
    // install after the update then failed): whenever apt-get update runs, the kernels are
    // looked up again after it.
    let mut updated = false;
    let mut kernels = newest_kernels();
    let kernels_missing = |k: &Result<Vec<String>>| {
        k.as_ref()
            .map_or(true, |k| k.iter().any(|p| !installed.contains_key(p)))
    };
    if !wanted.is_empty() || kernels_missing(&kernels) {
        println!("running: apt-get update");
        run_cmd(apt_get().arg("update"))?;
        updated = true;
        kernels = newest_kernels();
    }
    for pkg in kernels? {
        if installed.contains_key(&pkg) {
            println!("ok: {pkg} present");
        } else {
            wanted.push(pkg);
        }
    }
    for &pkg in APT_OPTIONAL {
        if let Some(version) = installed.get(pkg) {
            println!("ok: {pkg} {version} present");
        } else if apt_has(pkg)? {
            wanted.push(pkg.to_string());
        } else {
            println!("skip: {pkg} (not available from apt)");
        }
    }
    if wanted.is_empty() {
        return Ok(());
    }
    // An update only when something is missing: it is the one slow, networked step.
    if !updated {
        println!("running: apt-get update");
        run_cmd(apt_get().arg("update"))?;
    }
    for pkg in &wanted {
        println!("installing: {pkg} (apt)");
    }
    // No recommends: the kernel's would pull in apparmor and firmware, none of which the VM uses.
    run_cmd(
        apt_get()
            .args(["install", "-y", "--no-install-recommends"])
            .args(&wanted),
    )
}

/// The package of each series' newest kernel in apt's lists, as vmtest boots it.
fn newest_kernels() -> Result<Vec<String>> {
    Series::ALL
        .iter()
        .map(|series| {
            let v = series.newest()?;
            let pkg = vm::package(&v);
            ensure!(
                apt_has(&pkg)?,
                "apt names {pkg} but has no candidate for it"
            );
            Ok(pkg)
        })
        .collect()
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.arg("-q").env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// Whether apt has an installation candidate for a package (a local look-up).
fn apt_has(pkg: &str) -> Result<bool> {
    let out = output(Command::new("apt-cache").args(["policy", pkg]))?;
    Ok(out
        .lines()
        .any(|l| l.trim().starts_with("Candidate:") && !l.contains("(none)")))
}

/// Nightly with rust-src builds the eBPF crate (`-Z build-std`); clippy and rustfmt on the
/// default toolchain run in `cargo xtask test`.
fn rust_toolchains() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if toolchains.lines().any(|l| l.starts_with("nightly-")) {
        println!("ok: rust nightly toolchain present");
    } else {
        println!("installing: rust nightly toolchain (rustup)");
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    rustup_component("rust-src", Some("nightly"))?;
    rustup_component("clippy", None)?;
    rustup_component("rustfmt", None)
}

fn rustup_component(component: &str, toolchain: Option<&str>) -> Result<()> {
    let mut list = Command::new("rustup");
    list.args(["component", "list", "--installed"]);
    let mut add = Command::new("rustup");
    add.args(["component", "add", component]);
    if let Some(t) = toolchain {
        list.args(["--toolchain", t]);
        add.args(["--toolchain", t]);
    }
    let which_toolchain = toolchain.unwrap_or("default toolchain");
    // Installed components are listed with their target triple, except rust-src.
    let installed = output(&mut list)?;
    if installed
        .lines()
        .any(|l| l == component || l.starts_with(&format!("{component}-")))
    {
        println!("ok: {component} ({which_toolchain}) present");
        return Ok(());
    }
    println!("installing: {component} ({which_toolchain}, rustup)");
    run_cmd(&mut add)
}

fn bpf_linker() -> Result<()> {
    if let Ok(version) = output(Command::new("bpf-linker").arg("--version")) {
        println!("ok: {} present", version.trim());
        return Ok(());
    }
    println!("installing: bpf-linker {BPF_LINKER_VERSION} (cargo install, a few minutes)");
    // llvm-sys finds LLVM through the prefix variable, but links only when llvm-config is also
    // first on PATH: with the prefix alone the link failed with `unable to find library -lLLVM`.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![Path::new(LLVM_PREFIX).join("bin")];
    dirs.extend(std::env::split_paths(&path));
    let mut cmd = Command::new("cargo");
    cmd.args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        "llvm-22",
    ])
    .env("PATH", std::env::join_paths(dirs)?)
    .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX);
    run_cmd(&mut cmd)?;
    output(Command::new("bpf-linker").arg("--version"))
        .map(|_| ())
        .context("bpf-linker was installed but is not on PATH (is ~/.cargo/bin on PATH?)")
}

/// virtme-ng's `vng` runs where pip put it. pip under pyenv only adds a shim on PATH after a
/// rehash, so look in the interpreter's scripts directory as well as on PATH.
pub fn find_vng() -> Option<PathBuf> {
    which("vng").or_else(|| {
        let scripts = output(Command::new("python3").args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ]))
        .ok()?;
        let vng = Path::new(scripts.trim()).join("vng");
        vng.is_file().then_some(vng)
    })
}

fn virtme_ng() -> Result<()> {
    if let Some(vng) = find_vng() {
        println!("ok: virtme-ng present ({})", vng.display());
        return Ok(());
    }
    println!("installing: virtme-ng (pip)");
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "--root-user-action=ignore",
        "virtme-ng",
    ]);
    run_cmd(&mut cmd)?;
    if find_vng().is_none() {
        bail!("`{}` succeeded but no `vng` can be found", display(&cmd));
    }
    Ok(())
}

/// Python's HdrHistogram (PyPI `hdrhistogram`, module `hdrh`): the second witness of the
/// tests in `tests/tests/hdr.rs`.
fn python_hdrh() -> Result<()> {
    let present = Command::new("python3")
        .args(["-c", "import hdrh"])
        .output()
        .is_ok_and(|o| o.status.success());
    if present {
        println!("ok: python hdrhistogram present");
        return Ok(());
    }
    println!("installing: hdrhistogram (pip)");
    run_cmd(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "--root-user-action=ignore",
        "hdrhistogram",
    ]))
}

/// kvmprof reads tracepoint ids and formats from tracefs, which this host does not mount.
fn tracefs() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/mounts").context("cannot read /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(TRACEFS))
    {
        println!("ok: tracefs mounted at {TRACEFS}");
        return Ok(());
    }
    println!("mounting: tracefs at {TRACEFS}");
    run_cmd(Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]))
}
