//! Program entry points, one module per kind of hook.
mod btf;
mod kvm;
mod stages;
mod syscall;
