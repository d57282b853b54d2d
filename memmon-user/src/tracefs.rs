//! tracefs, where the kernel lists its tracepoints: memmon attaches to the memory syscalls'
//! tracepoints by the ids tracefs gives. Most systems mount it; where it is not, memmon (root
//! already, to load eBPF) mounts it at its standard place, as perf and bpftrace do.

use std::{ffi::CString, path::Path};

use anyhow::{Result, bail};

const MOUNT_POINT: &str = "/sys/kernel/tracing";
/// Where older systems have it (aya looks in both places).
const DEBUGFS_MOUNT_POINT: &str = "/sys/kernel/debug/tracing";

/// Makes sure tracefs is reachable at one of its standard places.
pub fn ensure_mounted() -> Result<()> {
    if [MOUNT_POINT, DEBUGFS_MOUNT_POINT].iter().any(|dir| has_events(Path::new(dir))) {
        return Ok(());
    }
    let target = CString::new(MOUNT_POINT)?;
    let kind = CString::new("tracefs")?;
    // SAFETY: NUL-terminated strings that outlive the call; no mount data.
    let mounted = unsafe { libc::mount(kind.as_ptr(), target.as_ptr(), kind.as_ptr(), 0, std::ptr::null()) };
    // Another memmon may have mounted it meanwhile (EBUSY): what counts is that it is there.
    if !has_events(Path::new(MOUNT_POINT)) {
        bail!(
            "tracefs is not mounted and mounting it at {MOUNT_POINT} failed ({}); mount it \
             (`mount -t tracefs nodev {MOUNT_POINT}`) so that memmon can follow mmap, munmap, mremap and brk",
            std::io::Error::last_os_error()
        );
    }
    if mounted == 0 {
        log::info!("mounted tracefs at {MOUNT_POINT}");
    }
    Ok(())
}

fn has_events(dir: &Path) -> bool {
    dir.join("events/syscalls").is_dir()
}
