//! Reading a whole BPF hash map with BPF_MAP_LOOKUP_BATCH.
//!
//! aya 0.14 iterates a map with two syscalls per entry (next key, then lookup): about a second
//! for the million blocks the live table holds by default, which profiling checkpoints and
//! memory summaries would pay every time. The batch command copies thousands of entries per
//! syscall. aya has no wrapper for it, hence this one; where the kernel refuses it, callers
//! fall back to aya's iterator.

use std::{
    io,
    mem::{MaybeUninit, size_of},
    os::fd::{AsRawFd as _, BorrowedFd},
};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `union bpf_attr`'s member for the BPF_MAP_*_BATCH commands (linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Calls `each` with every (key, value) of the hash map `fd`, `chunk` entries per syscall.
/// Entries added or removed meanwhile may or may not be seen, as with any iteration.
///
/// `K` and `V` must be the map's exact key and value types (plain `#[repr(C)]` data).
pub fn for_each_entry<K: Copy, V: Copy>(fd: BorrowedFd, chunk: u32, mut each: impl FnMut(&K, &V)) -> io::Result<()> {
    let chunk = chunk.max(1);
    let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(chunk as usize);
    let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(chunk as usize);
    // The position token: a bucket index for hash maps; sized generously.
    let mut position = [0u64; 2];
    let mut next = [0u64; 2];
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { position.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the attr points at buffers of `chunk` keys and values of the map's types and
        // at position tokens larger than the kernel's (a u32 for hash maps); the kernel writes
        // at most `count` entries and sets `count` to how many it wrote.
        let result = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &mut attr as *mut BatchAttr, size_of::<BatchAttr>() as u32)
        };
        let error = (result < 0).then(io::Error::last_os_error);
        let done = match &error {
            None => false,
            Some(err) if err.raw_os_error() == Some(libc::ENOENT) => true, // the last batch
            Some(err) => return Err(io::Error::new(err.kind(), format!("BPF_MAP_LOOKUP_BATCH: {err}"))),
        };
        let filled = (attr.count as usize).min(chunk as usize);
        for i in 0..filled {
            // SAFETY: the kernel initialized the first `count` entries of both buffers.
            let (key, value) = unsafe { (keys.as_ptr().add(i).cast::<K>().read(), values.as_ptr().add(i).cast::<V>().read()) };
            each(&key, &value);
        }
        if done {
            return Ok(());
        }
        position = next;
        first = false;
    }
}
