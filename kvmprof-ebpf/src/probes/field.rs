//! Reading the fields of a classic tracepoint's record.
use aya_ebpf::{maps::Array, programs::TracePointContext, EbpfContext};

/// Reads a `T` of the record: at `FIXED` straight from the context when userspace found
/// every fixed offset right for this kernel (`Config::fixed_fields`, a constant to the
/// verifier, which drops the other branch), else through `bpf_probe_read` at `off` from
/// the format file. The verifier refuses context loads at computed offsets, so only an
/// offset known when compiling can be a direct load.
#[inline(always)]
pub fn field<T: Copy, const FIXED: u32>(ctx: &TracePointContext, off: u32) -> Option<T> {
    if crate::maps::config!(fixed_fields) != 0 {
        // SAFETY: userspace checked that this kernel's record has the field at FIXED.
        Some(unsafe {
            core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(FIXED as usize) as *const T)
        })
    } else {
        // SAFETY: `off` comes from this kernel's format file for this tracepoint.
        crate::maps::read(unsafe { ctx.read_at(off as usize) })
    }
}

/// Reads a `T` of the record at the offset userspace stored at index `f` of `offsets`, from
/// this kernel's format file: the tracepoints with no fixed fast path (halts, `--detail`).
#[inline(always)]
pub fn listed<T: Copy>(ctx: &TracePointContext, offsets: &Array<u32>, f: u32) -> Option<T> {
    let off = *offsets.get(f)?;
    // SAFETY: the offset comes from this kernel's format file for this tracepoint.
    crate::maps::read(unsafe { ctx.read_at::<T>(off as usize) })
}
