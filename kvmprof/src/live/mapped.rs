//! Read-only views of BPF arrays that the kernel lets userspace map (`BPF_F_MMAPABLE`):
//! reading an element is a load from shared memory, not a `bpf()` call. The reader looks at
//! every tally slot each tick; one call per slot cost ~512 system calls per tick, most of
//! kvmprof's cost per exit under an emulated CPU (docs/benchmarks.md).
//!
//! The kernel writes the elements while they are read, as it does while `bpf()` copies
//! them: a read may see an element mid-update, which the tally's readers allow for (the
//! next read takes the rest; `live/tally.rs`).
use std::{
    marker::PhantomData,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use anyhow::{bail, Result};
use aya::maps::MapData;

pub struct MappedArray<V> {
    base: NonNull<u8>,
    len: usize,
    entries: u32,
    _value: PhantomData<V>,
}

// SAFETY: a read-only shared mapping, valid until dropped; reads copy values out.
unsafe impl<V> Send for MappedArray<V> {}

impl<V: Copy> MappedArray<V> {
    /// The kernel lays elements out `round_up(size, 8)` bytes apart.
    const STRIDE: usize = std::mem::size_of::<V>().next_multiple_of(8);

    /// Maps the `entries` elements of array `map` (created with `BPF_F_MMAPABLE`).
    pub fn map(map: &MapData, entries: u32) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = (Self::STRIDE * entries as usize).next_multiple_of(page);
        // SAFETY: a new read-only shared mapping of the map's fd; the kernel checks the
        // length against the map's size.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!("mmap a BPF array: {}", std::io::Error::last_os_error());
        }
        let Some(base) = NonNull::new(p.cast::<u8>()) else {
            bail!("mmap a BPF array: null mapping");
        };
        Ok(MappedArray {
            base,
            len,
            entries,
            _value: PhantomData,
        })
    }

    /// Element `i` as it is now; `None` past the end.
    pub fn get(&self, i: u32) -> Option<V> {
        // SAFETY: a valid element (see `ptr`); volatile, since the kernel writes it.
        self.ptr(i).map(|p| unsafe { std::ptr::read_volatile(p) })
    }

    /// Where element `i` is, to read a field of it alone (volatile: the kernel writes it);
    /// `None` past the end. Valid while `self` is.
    pub fn ptr(&self, i: u32) -> Option<*const V> {
        if i >= self.entries {
            return None;
        }
        // SAFETY: in bounds of the mapping (checked above), aligned to 8 (page-aligned base,
        // stride a multiple of 8, and the values kvmprof maps need no more).
        Some(unsafe { self.base.as_ptr().add(i as usize * Self::STRIDE) }.cast::<V>())
    }
}

impl<V> Drop for MappedArray<V> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
