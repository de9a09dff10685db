//! Builds the eBPF programs (`kvmprof-ebpf`) for the BPF target and puts the object in
//! OUT_DIR, where `attach` embeds it (the aya-template layout).
fn main() -> anyhow::Result<()> {
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "kvmprof-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../kvmprof-ebpf"),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
