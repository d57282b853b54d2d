//! Stacks of programs without frame pointers (ours built -fomit-frame-pointer, Debian's
//! glibc): walked from CFI in the kernel, checked frame for frame against gdb's `bt`, and
//! never a garbage frame where a walk cannot go on.

use memmon::{
    snapshot::{SiteSample, Snapshot},
    symbolize::Symbolizer,
    tracer::{Tracer, TracerOptions},
};
use memmon_common::Truncation;
use memmon_tests::{Target, build_target, gdb_backtrace, require_root};

/// Whether a symbolized name is `function` (C++ names carry their parameters).
fn is_function(name: &str, function: &str) -> bool {
    name == function || name.strip_prefix(function).is_some_and(|rest| rest.starts_with('('))
}

/// The site whose stack contains `function`; panics with every stack seen otherwise.
fn site_through<'a>(snapshot: &'a Snapshot, symbolizer: &mut Symbolizer, function: &str) -> &'a SiteSample {
    let mut seen = Vec::new();
    for site in &snapshot.sites {
        let frames = symbolizer.frames(site.pid, &site.frames);
        if frames.iter().any(|f| is_function(&f.function, function)) {
            return site;
        }
        seen.push(frames.iter().map(|f| f.function.clone()).collect::<Vec<_>>().join(" ← "));
    }
    panic!("no stack through {function}; stacks: {seen:#?}")
}

fn names(symbolizer: &mut Symbolizer, site: &SiteSample) -> Vec<String> {
    symbolizer.frames(site.pid, &site.frames).into_iter().map(|f| f.function).collect()
}

/// Every frame of every site lies in a mapped object: never a bare address.
fn assert_no_garbage_frames(snapshot: &Snapshot, symbolizer: &mut Symbolizer) {
    for site in &snapshot.sites {
        for frame in symbolizer.frames(site.pid, &site.frames) {
            assert!(!frame.module.is_empty(), "a frame outside every object: {frame:?} in {:?}", site.frames);
        }
    }
}

#[test]
fn glibc_paths_match_gdb_frame_for_frame() {
    let (snapshot, mut symbolizer) = matches_gdb(
        "unwind-nofp",
        &[("strdup", "copy_name", "malloc"), ("fopen", "open_config", "malloc"), ("getline", "leak_via_getline", "malloc")],
    );
    let strdup = site_through(&snapshot, &mut symbolizer, "copy_name");
    assert_eq!((strdup.live_bytes(), strdup.live_count()), (330, 10));
}

/// Runs `phases` of `target` under memmon (address randomization off), then checks that each
/// (phase, function, stop_at) site's stack equals gdb's machine frames at `stop_at` after
/// `function` is entered, and that it is complete down to `main`.
fn matches_gdb(target_name: &str, phases: &[(&str, &str, &str)]) -> (Snapshot, Symbolizer) {
    require_root();
    let binary = build_target(target_name);
    let mut target = Target::start_without_aslr(target_name);
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    for (phase, _, _) in phases {
        target.run(phase);
    }
    let snapshot = tracer.snapshot().unwrap();
    let mut symbolizer = Symbolizer::new();
    for (phase, function, stop_at) in phases {
        let expected = gdb_backtrace(&binary, &format!("{phase}\n"), function, stop_at);
        let Some(site) = snapshot.sites.iter().find(|s| s.frames.as_slice() == expected.as_slice()) else {
            let through = site_through(&snapshot, &mut symbolizer, function);
            let names = names(&mut symbolizer, through);
            panic!(
                "{phase}: no site has gdb's stack {expected:x?}; through {function}: {:x?} {names:?} ({})",
                through.frames,
                through.truncated.name()
            );
        };
        let names = names(&mut symbolizer, site);
        assert_eq!(site.truncated, Truncation::Complete, "{phase}: {names:?}");
        assert!(names.iter().any(|n| n == "main"), "{phase}: {names:?}");
    }
    assert_no_garbage_frames(&snapshot, &mut symbolizer);
    assert_eq!(snapshot.total_losses(), 0, "{:?}", snapshot.losses);
    (snapshot, symbolizer)
}

#[test]
fn libstdcxx_paths_match_gdb_frame_for_frame() {
    let (snapshot, mut symbolizer) =
        matches_gdb("unwind_cxx-nofp", &[("vector", "grow_vector", "_Znwm"), ("string", "fill_string", "_Znwm")]);
    let vector = site_through(&snapshot, &mut symbolizer, "grow_vector");
    assert_eq!((vector.live_bytes(), vector.live_count(), vector.stats.alloc_count), (4096, 1, 11));
    let string = site_through(&snapshot, &mut symbolizer, "fill_string");
    assert_eq!((string.live_bytes(), string.live_count()), (101, 1));
    let frames = symbolizer.frames(string.pid, &string.frames);
    assert!(frames[0].module.starts_with("libstdc++.so.6"), "allocated inside libstdc++: {frames:?}");
    assert!(frames[0].function.contains("basic_string"), "{frames:?}");
}

#[test]
fn rust_release_paths_match_gdb_frame_for_frame() {
    let (snapshot, mut symbolizer) =
        matches_gdb("rust_leak-nofp", &[("leak", "rust_leak::rust_leak_boxes", "malloc")]);
    let mut through: Vec<(u64, u64)> = Vec::new();
    for site in &snapshot.sites {
        if symbolizer.frames(site.pid, &site.frames).iter().any(|f| f.function == "rust_leak::rust_leak_boxes") {
            through.push((site.live_count(), site.live_bytes()));
        }
    }
    through.sort_unstable();
    assert_eq!(through, [(1, 3000), (20, 10_240)], "the 20 boxes share one stack, the Vec another");
}

#[test]
fn unwalkable_stacks_are_truncated_never_garbage() {
    require_root();
    let mut target = Target::start("unwind-nofp");
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    target.run("jit");
    target.run("corrupt");
    let snapshot = tracer.snapshot().unwrap();
    let mut symbolizer = Symbolizer::new();
    for (function, bytes) in [("alloc_from_jit", 777), ("corrupt_and_alloc", 555)] {
        let site = site_through(&snapshot, &mut symbolizer, function);
        assert_eq!(names(&mut symbolizer, site), [function], "the walk stops at the frame it cannot leave");
        assert_eq!(site.truncated, Truncation::OutsideObjects);
        assert_eq!((site.live_bytes(), site.live_count()), (bytes, 1));
    }
    assert_no_garbage_frames(&snapshot, &mut symbolizer);
}
