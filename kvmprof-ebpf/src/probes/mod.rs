//! Program entry points, one module per kind of hook.
mod btf;
mod detail;
mod field;
mod func;
mod halt;
mod kvm;
mod sched;
mod stages;
mod syscall;
mod task;
