//! Builds the eBPF programs (`kvmprof-ebpf`) for the BPF target and puts the object in
//! OUT_DIR, where `attach` embeds it (the aya-template layout); and sets KVMPROF_GIT_COMMIT
//! for `kvmprof --version`.
use std::path::Path;
use std::process::Command;

fn main() -> anyhow::Result<()> {
    git_commit();
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "kvmprof-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../kvmprof-ebpf"),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}

/// The short commit of the checkout being built, or "unknown" outside a git checkout (a
/// source tarball, or no git installed): a binary from a package then still says which
/// source it was built from.
fn git_commit() {
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KVMPROF_GIT_COMMIT={commit}");
    // Run again when HEAD moves: a commit changes the branch's ref file (or packed-refs), a
    // checkout changes HEAD. Only files that exist: cargo reruns a build script whose watched
    // file is missing on every build, and this one also builds the eBPF programs.
    let branch = git(&["rev-parse", "--symbolic-full-name", "HEAD"]);
    for name in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        let path = git(&["rev-parse", "--path-format=absolute", "--git-path", name]);
        if let Some(path) = path.filter(|p| Path::new(p).exists()) {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
