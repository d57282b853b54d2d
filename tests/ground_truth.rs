//! memmon against programs whose allocations are known exactly: every byte must match.

use memmon::{symbolize::Symbolizer, tracer::{Tracer, TracerOptions}};
use memmon_tests::{Observed, Target, by_function, require_root};

fn observed(function: &str, functions: &std::collections::HashMap<String, Observed>) -> Observed {
    functions.get(function).copied().unwrap_or_else(|| {
        panic!("memmon saw no allocation from {function}; it saw {:?}", functions.keys().collect::<Vec<_>>())
    })
}

#[test]
fn leak_is_exact_and_churn_is_zero() {
    require_root();
    let mut target = Target::start("ground_truth");
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    target.run("leak");
    target.run("churn");
    target.run("freenull");
    let snapshot = tracer.snapshot().unwrap();
    let functions = by_function(&snapshot, &mut Symbolizer::new());

    let leak = observed("leak_exactly", &functions);
    assert_eq!((leak.live_bytes, leak.live_count), (104_950, 100), "{leak:?}");
    assert_eq!((leak.alloc_bytes, leak.alloc_count), (104_950, 100), "{leak:?}");
    assert_eq!(leak.sites, 1, "one call site, one stack");

    let churn = observed("churn_everything", &functions);
    assert_eq!((churn.live_bytes, churn.live_count), (0, 0), "{churn:?}");
    assert_eq!((churn.alloc_bytes, churn.alloc_count), (352_000, 5_000), "{churn:?}");

    assert_eq!(snapshot.live_bytes(), 104_950, "nothing else is live: {functions:?}");
    assert_eq!(snapshot.total_losses(), 0, "{:?}", snapshot.losses);
}

#[test]
fn calloc_and_realloc_chains_are_exact() {
    require_root();
    let mut target = Target::start("ground_truth");
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    target.run("calloc");
    target.run("realloc");
    let snapshot = tracer.snapshot().unwrap();
    let functions = by_function(&snapshot, &mut Symbolizer::new());

    let calloc = observed("leak_calloc", &functions);
    assert_eq!((calloc.live_bytes, calloc.live_count), (10_000, 10), "{calloc:?}");

    let realloc = observed("leak_realloc", &functions);
    assert_eq!((realloc.live_bytes, realloc.live_count), (5_000, 1), "{realloc:?}");
    assert_eq!((realloc.alloc_bytes, realloc.alloc_count), (5_110, 3), "{realloc:?}");
    assert_eq!(realloc.sites, 3, "malloc, first realloc and second realloc are three sites");
    assert_eq!(snapshot.total_losses(), 0, "{:?}", snapshot.losses);
}

#[test]
fn allocations_before_attach_are_not_counted_and_their_frees_are_harmless() {
    require_root();
    let mut target = Target::start("ground_truth");
    target.run("leak");
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    target.run("churn");
    target.run("freenull");
    target.run("release"); // frees the 100 blocks leak_exactly made before attach
    let snapshot = tracer.snapshot().unwrap();
    let functions = by_function(&snapshot, &mut Symbolizer::new());
    assert!(!functions.contains_key("leak_exactly"), "allocated before attach: {functions:?}");
    assert_eq!(snapshot.live_bytes(), 0);
    assert_eq!(snapshot.total_losses(), 0, "{:?}", snapshot.losses);
    // Counted as frees of untracked blocks, exactly (free(NULL) is not one), credited to no site.
    assert_eq!(snapshot.processes[0].memory.untracked_frees, 100);
    assert!(snapshot.sites.iter().all(|s| s.stats.free_count <= s.stats.alloc_count));
}

#[test]
fn a_million_live_allocations_fit_the_default_table() {
    require_root();
    let mut target = Target::start("ground_truth");
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    target.run("million");
    let snapshot = tracer.snapshot().unwrap();
    let functions = by_function(&snapshot, &mut Symbolizer::new());
    let million = observed("leak_a_million", &functions);
    assert_eq!((million.live_bytes, million.live_count), (16_000_000, 1_000_000), "{million:?}");
    assert_eq!(snapshot.total_losses(), 0, "{:?}", snapshot.losses);
}

/// The programs count their own hits (the overhead estimate charges each one, without BPF
/// run-time statistics on): exactly the calls churn_everything makes.
#[test]
fn probe_hits_are_counted_exactly() {
    require_root();
    let mut target = Target::start("ground_truth");
    let tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    target.run("leak"); // stdio's buffers are allocated by now
    let hits = |tracer: &Tracer| -> std::collections::BTreeMap<&str, u64> {
        tracer.probe_program_counts().iter().map(|p| (p.name, p.hits)).collect()
    };
    let before = hits(&tracer);
    target.run("churn");
    let after = hits(&tracer);
    let delta = |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    // 1000 × (malloc + free, calloc + free, malloc + realloc + realloc + free).
    let expected = [("malloc_enter", 2000), ("calloc_enter", 1000), ("realloc_enter", 2000), ("free_enter", 3000), ("alloc_exit", 5000)];
    for (name, calls) in expected {
        assert_eq!(delta(name), calls, "{name}: before {before:?}, after {after:?}");
    }
}
