//! Handing freed memory back to the system, for the long-running sessions (`serve`, `top`).

/// Hands the memory of VMs just forgotten back to the system. glibc keeps freed memory for
/// reuse, so without a trim a `serve` running for months would keep the peak of the VMs that
/// came and went (its resident size swung between 79 and 203 MiB across rounds of the same
/// VMMs); with it, it follows what the VMs still running hold.
pub fn give_back() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim has no preconditions; it only returns free heap memory.
    unsafe {
        libc::malloc_trim(0);
    }
}
