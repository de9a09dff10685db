//! The VMs `cargo xtask vmtest` boots: a backend (the emulator and the vendor it gives the
//! guest kernel) and a Debian kernel series. Both backends run the same runner script (see
//! `vmtest`) and leave the same result files in a host directory; only how the files get
//! there differs (a 9p share for vng, the serial console for Bochs).

pub mod bochs;
pub mod vng;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::checks::Vendor;
use crate::util::output;

/// Where a VM runs and which vendor's KVM its kernel drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Backend {
    /// AMD SVM in QEMU's software emulation (TCG), booted by virtme-ng on the host's root.
    Svm,
    /// Intel VMX in Bochs, booted from an ISO with a busybox initramfs.
    Vmx,
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Svm, Backend::Vmx];

    pub fn vendor(self) -> Vendor {
        match self {
            Backend::Svm => Vendor::Svm,
            Backend::Vmx => Vendor::Vmx,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Backend::Svm => "SVM (QEMU TCG)",
            Backend::Vmx => "VMX (Bochs)",
        }
    }

    /// A boot running `checks` checks may not take longer than this: a hung guest kernel
    /// must not hang CI. Per check, since a retry VM runs fewer. Measured on a loaded 2-core
    /// host (other builds and emulators beside): an SVM boot of 11 checks took 6 minutes;
    /// a Bochs boot took 6-10 minutes to reach /init and 45-60 s of guest clock per kvmprof
    /// check, and was cut at a 20-minute deadline after 7 of 11 checks.
    pub fn deadline(self, checks: usize) -> Duration {
        let (base, per_check) = match self {
            Backend::Svm => (3 * 60, 60),
            Backend::Vmx => (12 * 60, 3 * 60),
        };
        Duration::from_secs(base + per_check * checks as u64)
    }

    /// One check may not take longer than this, on the guest's clock (enforced there by
    /// `timeout`). Under TCG `perf kvm stat` timed out at 90 s and then took 80 s while the host
    /// was loaded (two emulators and other builds on two cores). In Bochs the guest clock counts emulated instructions and kvmprof takes
    /// 18-23 s to attach, so a recording check takes about a minute there.
    pub fn check_timeout_secs(self) -> u32 {
        match self {
            Backend::Svm => 150,
            Backend::Vmx => 300,
        }
    }
}

/// A Debian 12 kernel series the matrix runs; the newest package of each is looked up with
/// apt-cache at run time, since Debian moves the ABI numbers with every point release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Series {
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
}

impl Series {
    pub const ALL: [Series; 2] = [Series::V6_1, Series::V6_12];

    /// The apt-cache search pattern of the series' `-amd64-unsigned` images.
    fn pattern(self) -> &'static str {
        match self {
            Series::V6_1 => r"^linux-image-6\.1\.0-[0-9]+-amd64-unsigned$",
            Series::V6_12 => r"^linux-image-6\.12\.[0-9]+\+deb12-amd64-unsigned$",
        }
    }

    /// The number that orders a series' packages: the ABI of `6.1.0-<abi>-amd64`, the patch
    /// level of `6.12.<n>+deb12-amd64`.
    fn rank(self, version: &str) -> Option<u32> {
        let n = match self {
            Series::V6_1 => version.strip_prefix("6.1.0-")?.strip_suffix("-amd64")?,
            Series::V6_12 => version
                .strip_prefix("6.12.")?
                .strip_suffix("+deb12-amd64")?,
        };
        n.parse().ok()
    }

    /// The newest kernel version (`uname -r`) of this series among `apt-cache search` lines.
    pub fn newest_in(self, apt_cache_search: &str) -> Option<String> {
        apt_cache_search
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|p| p.strip_prefix("linux-image-")?.strip_suffix("-unsigned"))
            .filter_map(|v| Some((self.rank(v)?, v)))
            .max()
            .map(|(_, v)| v.to_string())
    }

    /// The newest kernel version of this series that apt offers.
    pub fn newest(self) -> Result<String> {
        let out =
            output(Command::new("apt-cache").args(["search", "--names-only", self.pattern()]))?;
        self.newest_in(&out).with_context(|| {
            format!("apt offers no {self} kernel (run apt-get update; is Debian 12 bookworm in the apt sources?)")
        })
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        })
    }
}

/// The package of kernel `version` (as `uname -r` says it).
pub fn package(version: &str) -> String {
    format!("linux-image-{version}-unsigned")
}

/// The release binaries and host tools a VM runs, by their host paths.
pub struct Binaries {
    pub kvmprof: PathBuf,
    pub testvmm: PathBuf,
}

impl Binaries {
    pub fn release(dir: &Path) -> Binaries {
        Binaries {
            kvmprof: dir.join("kvmprof"),
            testvmm: dir.join("kvmprof-testvmm"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as `apt-cache search --names-only` printed them (other flavours and an older
    /// ABI included: the pattern is only a first filter).
    const SEARCH: &str = "\
linux-image-6.1.0-9-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-57-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-56-amd64-unsigned - Linux 6.1 for 64-bit PCs
linux-image-6.1.0-58-cloud-amd64-unsigned - Linux 6.1 for x86-64 cloud
linux-image-6.12.115+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs
linux-image-6.12.117+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs
linux-image-6.12.117+deb12-rt-amd64-unsigned - Linux 6.12 for 64-bit PCs, PREEMPT_RT
linux-image-6.12.99+deb12-amd64-unsigned - Linux 6.12 for 64-bit PCs
";

    #[test]
    fn the_newest_kernel_of_each_series_is_found_by_number_not_by_text() {
        assert_eq!(
            Series::V6_1.newest_in(SEARCH).as_deref(),
            Some("6.1.0-57-amd64")
        );
        assert_eq!(
            Series::V6_12.newest_in(SEARCH).as_deref(),
            Some("6.12.117+deb12-amd64")
        );
        assert_eq!(Series::V6_12.newest_in("").as_deref(), None);
        assert_eq!(
            package("6.12.117+deb12-amd64"),
            "linux-image-6.12.117+deb12-amd64-unsigned"
        );
    }
}
