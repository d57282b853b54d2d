//! The walk memo (`memmon-ebpf/src/memo.rs`): a memoized stack walk is recalled only while
//! every stack word it read is unchanged, so the same malloc return address and stack pointer
//! reached through different callers never share a site, and a repeated path is recalled
//! rather than walked again. With and without frame pointers (rbp saved or not).

use memmon::{
    snapshot::{SiteSample, Snapshot},
    symbolize::Symbolizer,
    tracer::{Tracer, TracerOptions},
};
use memmon_common::Truncation;
use memmon_tests::{Target, require_root};

/// The innermost frames of `site`'s stack, from `allocate` on (malloc's own frame is not in
/// a stack: the walk starts at its caller).
fn frames(symbolizer: &mut Symbolizer, site: &SiteSample) -> Vec<String> {
    symbolizer.frames(site.pid, &site.frames).into_iter().map(|f| f.function).collect()
}

/// The one site holding blocks of `size` bytes, with its frames.
fn site_of_size<'a>(snapshot: &'a Snapshot, symbolizer: &mut Symbolizer, size: u64) -> (&'a SiteSample, Vec<String>) {
    let sites: Vec<&SiteSample> =
        snapshot.sites.iter().filter(|s| s.live_count() > 0 && s.live_bytes() == s.live_count() * size).collect();
    let described: Vec<Vec<String>> = sites.iter().map(|s| frames(symbolizer, s)).collect();
    assert_eq!(sites.len(), 1, "blocks of {size} bytes on one site each; found {described:#?}");
    (sites[0], described.into_iter().next().unwrap())
}

fn walks(tracer: &Tracer) -> (u64, u64, u64) {
    let stats = tracer.unwind_stats();
    (stats.walks_recalled, stats.walks_memoized, stats.walks_unmemoizable)
}

fn check(target_name: &str) {
    require_root();
    let mut target = Target::start(target_name);
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    let mut symbolizer = Symbolizer::new();

    target.run("alternate");
    target.run("deeper");
    let snapshot = tracer.snapshot().unwrap();
    for (size, path) in [(1000, ["allocate", "path_a", "run_phase"]), (2000, ["allocate", "path_b", "run_phase"])] {
        let (site, frames) = site_of_size(&snapshot, &mut symbolizer, size);
        assert_eq!((site.live_bytes(), site.live_count()), (1000 * size, 1000), "{frames:?}");
        assert_eq!(&frames[..3], path, "{frames:?}");
        assert_eq!(site.truncated, Truncation::Complete, "{frames:?}");
    }
    for (size, outer) in [(3000, "outer_a"), (4000, "outer_b")] {
        let (site, frames) = site_of_size(&snapshot, &mut symbolizer, size);
        assert_eq!((site.live_bytes(), site.live_count()), (1000 * size, 1000), "{frames:?}");
        assert_eq!(&frames[..4], ["allocate", "middle", outer, "run_phase"], "{frames:?}");
    }

    let before = walks(&tracer);
    target.run("repeat");
    let after = walks(&tracer);
    // The first allocation finds the memo `alternate` left at the same return address and stack
    // pointer, another path's: walked and memoized; the 4,999 after it are recalled.
    let made = (after.0 - before.0, after.1 - before.1, after.2 - before.2);
    assert_eq!(made, (4_999, 1, 0), "5,000 allocations from one place: (recalled, memoized, unmemoizable)");
    let snapshot = tracer.snapshot().unwrap();
    let repeated = snapshot
        .sites
        .iter()
        .filter(|s| frames(&mut symbolizer, s).get(1).is_some_and(|f| f == "path_c"))
        .collect::<Vec<_>>();
    assert_eq!(repeated.len(), 1, "one site for path_c");
    assert_eq!((repeated[0].stats.alloc_count, repeated[0].stats.alloc_bytes, repeated[0].live_count()), (5000, 80_000, 0));

    let before = walks(&tracer);
    target.run("recurse");
    let after = walks(&tracer);
    assert_eq!(after.2 - before.2, 10, "a walk deeper than a memo holds is walked every time ({before:?} → {after:?})");
    let snapshot = tracer.snapshot().unwrap();
    let (site, frames) = site_of_size(&snapshot, &mut symbolizer, 5000);
    assert_eq!((site.live_bytes(), site.live_count()), (50_000, 10));
    assert_eq!(frames.iter().filter(|f| *f == "recurse").count(), 81, "{frames:?}");
    assert_eq!(site.truncated, Truncation::Complete);
}

#[test]
fn one_return_address_and_stack_pointer_through_different_callers_never_share_a_site_without_frame_pointers() {
    check("memo-nofp");
}

#[test]
fn one_return_address_and_stack_pointer_through_different_callers_never_share_a_site_with_frame_pointers() {
    check("memo");
}

/// `TracerOptions::memoize_walks` off (the benchmarks' baseline): every allocation is walked,
/// none memoized, and the sites are the same.
#[test]
fn walks_are_not_memoized_when_memoizing_is_off() {
    require_root();
    let mut target = Target::start("memo-nofp");
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions { memoize_walks: false, ..TracerOptions::default() }).unwrap();
    target.run("repeat");
    assert_eq!(walks(&tracer), (0, 0, 0), "(recalled, memoized, unmemoizable)");
    let snapshot = tracer.snapshot().unwrap();
    let mut symbolizer = Symbolizer::new();
    let repeated: Vec<&SiteSample> =
        snapshot.sites.iter().filter(|s| frames(&mut symbolizer, s).get(1).is_some_and(|f| f == "path_c")).collect();
    assert_eq!(repeated.len(), 1, "one site for path_c");
    assert_eq!((repeated[0].stats.alloc_count, repeated[0].stats.alloc_bytes), (5000, 80_000));
}
