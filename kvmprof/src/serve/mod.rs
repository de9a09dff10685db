//! The pieces of `kvmprof serve` ([`crate::cmd::serve`]), a daemon that records like `kvmprof
//! record` (through a [`crate::live::Session`]) and serves exit counts and latency histograms
//! of every VM on `/metrics` for Prometheus.
//!
//! Without `--pid` the in-kernel pid filter is off: KVM's tracepoints fire only in threads
//! that run vCPUs and the KVM_RUN ioctl hook rejects other ioctls before it looks at the
//! filter, so tracing "everything" is tracing every VMM, at no extra cost to other
//! processes, and a VMM that starts later is counted from its very first exit (a /proc scan
//! each tick would miss the exits made before the scan saw it). VMs are labelled by pid when
//! their first exit arrives and dropped after `--grace` once their process is gone.
//!
//! [`snapshot`] turns the aggregate into plain rows at each tick, [`exporter`] encodes them,
//! [`http`] serves them, [`vms`] names and expires VMs; [`crate::cmd::serve`] wires them
//! together.
mod buckets;
pub mod exporter;
pub mod http;
pub mod snapshot;
pub mod vms;
