//! Program entry points, one module per kind of hook.
mod btf;
mod field;
mod halt;
mod kvm;
mod sched;
mod stages;
mod syscall;
mod task;
