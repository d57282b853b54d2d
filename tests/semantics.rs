//! Allocator semantics against exact ground truth (see targets/semantics.c for each phase).

use std::collections::HashMap;

use memmon::{
    symbolize::Symbolizer,
    tracer::{Capacity, Tracer, TracerOptions},
};
use memmon_common::Loss;
use memmon_tests::{Observed, Target, by_function, require_root};

/// Attaches to a fresh semantics target, runs `phases`, and returns what memmon saw.
fn observe(phases: &[&str], capacity: TracerOptions) -> (HashMap<String, Observed>, memmon::snapshot::Snapshot) {
    require_root();
    let mut target = Target::start("semantics");
    let mut tracer = Tracer::attach(&[target.pid()], capacity).unwrap();
    for phase in phases {
        target.run(phase);
    }
    let snapshot = tracer.snapshot().unwrap();
    (by_function(&snapshot, &mut Symbolizer::new()), snapshot)
}

/// (live bytes, live blocks, allocated bytes, allocations) of one function.
fn totals(functions: &HashMap<String, Observed>, function: &str) -> (u64, u64, u64, u64) {
    let o = functions
        .get(function)
        .unwrap_or_else(|| panic!("nothing from {function}; saw {:?}", functions.keys().collect::<Vec<_>>()));
    (o.live_bytes, o.live_count, o.alloc_bytes, o.alloc_count)
}

#[test]
fn realloc_semantics() {
    let (functions, snapshot) =
        observe(&["realloc_null", "realloc_zero", "realloc_fail", "reallocarray"], TracerOptions::default());
    assert_eq!(totals(&functions, "realloc_from_null"), (300, 1, 300, 1), "realloc(NULL, n) is malloc");
    assert_eq!(totals(&functions, "realloc_to_zero"), (0, 0, 400, 1), "realloc(p, 0) frees p");
    assert_eq!(totals(&functions, "realloc_fails"), (500, 1, 500, 1), "a failed realloc keeps p live");
    assert_eq!(totals(&functions, "reallocarray_grows"), (600, 1, 900, 2), "overflowing reallocarray fails");
    assert_eq!(snapshot.live_bytes(), 1400);
    assert_eq!(snapshot.total_losses(), 0, "{:?}", snapshot.losses);
    // realloc(p, 0)'s own inner free of p is the allocator's, not a free of an untracked block.
    assert_eq!(snapshot.processes[0].memory.untracked_frees, 0);
}

#[test]
fn failed_calloc_is_never_live() {
    let (functions, snapshot) = observe(&["calloc_overflow"], TracerOptions::default());
    assert!(!functions.contains_key("calloc_overflows"), "{functions:?}");
    assert_eq!(snapshot.live_bytes(), 0);
    assert_eq!(snapshot.total_losses(), 0, "{:?}", snapshot.losses);
}

#[test]
fn memalign_family_is_counted_once_each() {
    let (functions, snapshot) = observe(&["aligned"], TracerOptions::default());
    // memalign(8, n) calls malloc inside glibc: that inner call must not count twice.
    assert_eq!(totals(&functions, "aligned_family"), (10_344, 6, 10_344, 6));
    assert_eq!(snapshot.total_losses(), 0, "{:?}", snapshot.losses);
}

#[test]
fn frees_on_another_thread_are_credited_to_the_allocating_site() {
    let (functions, snapshot) = observe(&["cross_thread"], TracerOptions::default());
    assert_eq!(totals(&functions, "alloc_for_other_thread"), (10_240, 40, 25_600, 100));
    assert!(!functions.contains_key("free_from_main"), "free_from_main allocates nothing: {functions:?}");
    assert_eq!(snapshot.total_losses(), 0, "{:?}", snapshot.losses);
}

#[test]
fn forked_child_is_not_traced() {
    let (functions, snapshot) = observe(&["fork", "leak_more"], TracerOptions::default());
    assert!(!functions.contains_key("fork_child_leaks"), "child's allocations counted: {functions:?}");
    assert_eq!(totals(&functions, "leak_more_blocks"), (6_400, 100, 6_400, 100));
    assert_eq!(snapshot.total_losses(), 0, "{:?}", snapshot.losses);
}

#[test]
fn a_full_live_table_is_counted_not_hidden() {
    let capacity = TracerOptions {
        capacity: Capacity { max_live_allocations: 50, ..Capacity::default() },
        ..TracerOptions::default()
    };
    let (functions, snapshot) = observe(&["leak_more"], capacity);
    assert_eq!(totals(&functions, "leak_more_blocks"), (3_200, 50, 3_200, 50));
    assert_eq!(snapshot.loss(Loss::LiveTableFull), 50, "{:?}", snapshot.losses);
    assert_eq!(snapshot.total_losses(), 50, "{:?}", snapshot.losses);
}
