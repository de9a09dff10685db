//! Program entry points, one module per kind of hook.
mod kvm;
mod stages;
mod syscall;
