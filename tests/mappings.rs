//! mmap/munmap/mremap/brk from the raw syscall tracepoints, against exact ground truth.

use std::collections::HashMap;

use memmon::{
    snapshot::Snapshot,
    symbolize::Symbolizer,
    tracer::{Tracer, TracerOptions},
};
use memmon_tests::{Target, require_root};

const PAGE: u64 = 4096;

/// (live bytes, live mappings, mapped bytes) of program mapping sites whose stack passes
/// through each function of interest. mmap is called through glibc's wrapper (and our `anon`
/// helper), so the function is found in the stack, not at its top.
fn mapping_sites(snapshot: &Snapshot, functions: &[&str]) -> HashMap<String, (u64, u64, u64)> {
    let mut symbolizer = Symbolizer::new();
    let mut found = HashMap::new();
    for site in &snapshot.mapping_sites {
        let frames = symbolizer.frames(site.pid, &site.frames);
        let Some(function) = functions.iter().find(|f| frames.iter().any(|fr| fr.function == **f)) else {
            panic!("a mapping site outside the known functions: {frames:?}");
        };
        let entry = found.entry(function.to_string()).or_insert((0, 0, 0));
        entry.0 += site.live_bytes();
        entry.1 += site.live_count();
        entry.2 += site.stats.alloc_bytes;
    }
    found
}

#[test]
fn program_mappings_are_attributed_exactly() {
    require_root();
    let mut target = Target::start("mappings");
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    target.run("map");
    target.run("remap");
    let snapshot = tracer.snapshot().unwrap();
    let sites = mapping_sites(&snapshot, &["map_pages", "map_and_unmap", "map_and_trim_head", "remap_grows"]);
    assert_eq!(sites["map_pages"], (3 * PAGE, 1, 3 * PAGE), "{sites:?}");
    assert_eq!(sites["map_and_unmap"], (0, 0, 5 * PAGE), "{sites:?}");
    assert_eq!(sites["map_and_trim_head"], (3 * PAGE, 1, 4 * PAGE), "{sites:?}");
    assert_eq!(sites["remap_grows"], (6 * PAGE, 1, 6 * PAGE), "{sites:?}");
    let process = &snapshot.processes[0];
    assert_eq!(process.program_mapped_bytes(), 12 * PAGE, "{process:?}");
    assert_eq!(process.allocator_mapped_bytes(), 0, "{process:?}");
    assert_eq!(snapshot.total_losses(), 0, "{:?}", snapshot.losses);
}

#[test]
fn brk_heap_growth_is_exact() {
    require_root();
    let mut target = Target::start("mappings");
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    target.run("brk");
    let first = tracer.snapshot().unwrap().processes[0].brk_heap_bytes();
    target.run("brk");
    let second = tracer.snapshot().unwrap().processes[0].brk_heap_bytes();
    assert_eq!(second - first, 65_536);
}

#[test]
fn the_allocators_own_mappings_are_the_allocators() {
    require_root();
    let mut target = Target::start("mappings");
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    target.run("bigmalloc");
    let snapshot = tracer.snapshot().unwrap();
    assert!(snapshot.mapping_sites.is_empty(), "no program mapping: {:?}", snapshot.mapping_sites);
    let process = &snapshot.processes[0];
    // glibc maps 1 MiB plus its chunk header, rounded up to pages.
    assert_eq!(process.allocator_mapped_bytes(), (1 << 20) + PAGE, "{process:?}");
    assert_eq!(process.program_mapped_bytes(), 0);
    assert_eq!(snapshot.live_bytes(), 1 << 20, "the heap block itself");
    assert_eq!(snapshot.total_losses(), 0, "{:?}", snapshot.losses);
}
