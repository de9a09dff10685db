//! kvmprof: an eBPF profiler of KVM VM exits.
mod model;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "kvmprof", version, about = "eBPF profiler of KVM VM exits")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {}

fn main() {
    let _cli = Cli::parse();
}
