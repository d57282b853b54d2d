//! A point-in-time copy of the kernel's per-site aggregates: the input of every report.

use std::{collections::BTreeMap, sync::Arc};

use memmon_common::{Loss, ProcessMemory, SiteStats, Truncation};

use crate::process::HeapExtent;

/// One allocation site (a distinct user call stack in one process) and its counters.
#[derive(Clone, Debug)]
pub struct SiteSample {
    pub id: u64,
    pub pid: u32,
    /// Return addresses, innermost first; empty for the "unknown stack" site.
    pub frames: Arc<Vec<u64>>,
    /// Why the stack ends where it does (`Complete` when it reaches the bottom).
    pub truncated: Truncation,
    pub stats: SiteStats,
    /// The site belongs to an image its process has since replaced (execve): its blocks went
    /// with that address space (counted as discarded at exec), so nothing of it is live.
    pub image_gone: bool,
}

impl SiteSample {
    pub fn live_bytes(&self) -> u64 {
        if self.image_gone {
            return 0;
        }
        self.stats.alloc_bytes.saturating_sub(self.stats.free_bytes)
    }

    pub fn live_count(&self) -> u64 {
        if self.image_gone {
            return 0;
        }
        self.stats.alloc_count.saturating_sub(self.stats.free_count)
    }

    /// Mean age of the site's live blocks at `now_ns` (CLOCK_MONOTONIC), exact to ~1 ms;
    /// None when nothing is live.
    pub fn live_mean_age_seconds(&self, now_ns: u64) -> Option<f64> {
        let count = self.live_count();
        if count == 0 {
            return None;
        }
        let unit = (1u64 << memmon_common::BIRTH_UNIT_SHIFT) as f64;
        let mean_birth = self.stats.live_birth_sum as f64 / count as f64;
        let now = (now_ns >> memmon_common::BIRTH_UNIT_SHIFT) as f64;
        Some(((now - mean_birth) * unit / 1e9).max(0.0))
    }
}

/// CLOCK_MONOTONIC now, in ns: the clock of the kernel's allocation timestamps.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// One target's memory as the syscall tracepoints saw it since attach.
#[derive(Clone, Debug)]
pub struct ProcessSample {
    pub pid: u32,
    pub memory: ProcessMemory,
    pub heap_at_attach: HeapExtent,
}

impl ProcessSample {
    /// Anonymous mappings the program made itself since attach and still holds.
    pub fn program_mapped_bytes(&self) -> u64 {
        self.memory.program_mapped_bytes.saturating_sub(self.memory.program_unmapped_bytes)
    }

    /// Anonymous mappings the allocator made since attach and still holds.
    pub fn allocator_mapped_bytes(&self) -> u64 {
        self.memory.allocator_mapped_bytes.saturating_sub(self.memory.allocator_unmapped_bytes)
    }

    /// Size of the brk heap: exact once the process has called brk since attach, before that
    /// the [heap] segment as mapped at attach (page-rounded).
    pub fn brk_heap_bytes(&self) -> u64 {
        let end = if self.memory.brk != 0 { self.memory.brk } else { self.heap_at_attach.end };
        end.saturating_sub(self.heap_at_attach.start)
    }
}

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Tracked functions (`--track-function`), taken with the rest.
    pub functions: Vec<crate::track::FunctionSample>,
    /// Heap allocation sites.
    pub sites: Vec<SiteSample>,
    /// Sites of the anonymous mappings the program made itself (mmap outside the allocator).
    pub mapping_sites: Vec<SiteSample>,
    pub processes: Vec<ProcessSample>,
    /// Tracked allocations by size (all targets): counts per power-of-two bucket (bucket i:
    /// at most 2^i bytes; the last: larger), and the sum of the sizes.
    pub size_buckets: Vec<u64>,
    pub size_sum: u64,
    /// When the snapshot was taken (CLOCK_MONOTONIC ns).
    pub taken_at_ns: u64,
    /// Loss counters by reason (every reason present, zero included).
    pub losses: BTreeMap<&'static str, u64>,
}

impl Snapshot {
    /// Sites by live bytes, largest first (ties: more live blocks first, then id for stability).
    pub fn top_live(&self, limit: usize) -> Vec<&SiteSample> {
        let mut sites: Vec<_> = self.sites.iter().filter(|s| s.live_bytes() > 0).collect();
        sites.sort_by(|a, b| {
            (b.live_bytes(), b.live_count(), a.id).cmp(&(a.live_bytes(), a.live_count(), b.id))
        });
        sites.truncate(limit);
        sites
    }

    pub fn live_bytes(&self) -> u64 {
        self.sites.iter().map(SiteSample::live_bytes).sum()
    }

    pub fn live_count(&self) -> u64 {
        self.sites.iter().map(SiteSample::live_count).sum()
    }

    pub fn total_losses(&self) -> u64 {
        self.losses.values().sum()
    }

    pub fn loss(&self, reason: Loss) -> u64 {
        self.losses.get(reason.name()).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(id: u64, alloc: u64, freed: u64) -> SiteSample {
        SiteSample {
            id,
            pid: 1,
            frames: Arc::new(vec![id]),
            truncated: memmon_common::Truncation::Complete,
            stats: SiteStats { alloc_bytes: alloc, alloc_count: 2, free_bytes: freed, free_count: 1, live_birth_sum: 0 },
            image_gone: false,
        }
    }

    #[test]
    fn top_live_orders_by_live_bytes_and_skips_freed_sites() {
        let snapshot = Snapshot {
            sites: vec![site(1, 100, 100), site(2, 500, 100), site(3, 900, 0)],
            ..Snapshot::default()
        };
        let top: Vec<_> = snapshot.top_live(10).iter().map(|s| s.id).collect();
        assert_eq!(top, [3, 2]);
        assert_eq!(snapshot.live_bytes(), 1300);
        assert_eq!(snapshot.live_count(), 3);
    }
}

#[cfg(test)]
mod process_tests {
    use super::*;

    #[test]
    fn brk_heap_uses_the_kernel_break_once_known() {
        let mut process = ProcessSample {
            pid: 1,
            memory: ProcessMemory::default(),
            heap_at_attach: HeapExtent { start: 0x1000, end: 0x22000 },
        };
        assert_eq!(process.brk_heap_bytes(), 0x21000);
        process.memory.brk = 0x1000 + 70_000;
        assert_eq!(process.brk_heap_bytes(), 70_000);
        process.memory.program_mapped_bytes = 3 * 4096;
        process.memory.program_unmapped_bytes = 4096;
        assert_eq!(process.program_mapped_bytes(), 2 * 4096);
    }
}

#[cfg(test)]
mod age_tests {
    use super::*;

    #[test]
    fn mean_age_of_live_blocks() {
        let unit = 1u64 << memmon_common::BIRTH_UNIT_SHIFT;
        // Two live blocks born at 10 and 20 units; now is 40 units: mean age 25 units.
        let site = SiteSample {
            id: 1,
            pid: 1,
            frames: Arc::new(vec![]),
            truncated: memmon_common::Truncation::Complete,
            stats: SiteStats { alloc_bytes: 30, alloc_count: 3, free_bytes: 10, free_count: 1, live_birth_sum: 30 },
            image_gone: false,
        };
        let age = site.live_mean_age_seconds(40 * unit).unwrap();
        assert!((age - 25.0 * unit as f64 / 1e9).abs() < 1e-9, "{age}");
        let empty = SiteSample { stats: SiteStats::default(), ..site };
        assert_eq!(empty.live_mean_age_seconds(40 * unit), None);
    }
}
