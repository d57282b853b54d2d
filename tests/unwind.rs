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

/// The site whose stack contains `function`; panics with every stack seen otherwise.
fn site_through<'a>(snapshot: &'a Snapshot, symbolizer: &mut Symbolizer, function: &str) -> &'a SiteSample {
    let mut seen = Vec::new();
    for site in &snapshot.sites {
        let frames = symbolizer.frames(site.pid, &site.frames);
        if frames.iter().any(|f| f.function == function) {
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
    require_root();
    let binary = build_target("unwind-nofp");
    let mut target = Target::start_without_aslr("unwind-nofp");
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    for phase in ["strdup", "fopen", "getline"] {
        target.run(phase);
    }
    let snapshot = tracer.snapshot().unwrap();
    let mut symbolizer = Symbolizer::new();
    for (phase, function, stop_at) in [
        ("strdup", "copy_name", "malloc"),
        ("fopen", "open_config", "malloc"),
        ("getline", "leak_via_getline", "malloc"),
    ] {
        let expected = gdb_backtrace(&binary, &format!("{phase}\n"), function, stop_at);
        let site = site_through(&snapshot, &mut symbolizer, function);
        assert_eq!(
            site.frames.as_slice(),
            expected.as_slice(),
            "{phase}: memmon {:?} vs gdb {:?}",
            names(&mut symbolizer, site),
            expected
        );
        assert_eq!(site.truncated, Truncation::Complete, "{phase}: {:?}", names(&mut symbolizer, site));
        let names = names(&mut symbolizer, site);
        assert!(names.iter().any(|n| n == "main"), "{phase}: {names:?}");
    }
    let strdup = site_through(&snapshot, &mut symbolizer, "copy_name");
    assert_eq!((strdup.live_bytes(), strdup.live_count()), (330, 10));
    assert_no_garbage_frames(&snapshot, &mut symbolizer);
    assert_eq!(snapshot.total_losses(), 0, "{:?}", snapshot.losses);
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
