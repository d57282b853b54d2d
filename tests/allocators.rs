//! Other allocators and languages: each must be found, probed, and exact.

use memmon::{
    allocator::Allocator,
    symbolize::Symbolizer,
    tracer::{Tracer, TracerOptions},
};
use memmon_tests::{Target, by_function, require_root};

const LIBDIR: &str = "/usr/lib/x86_64-linux-gnu";

/// Runs ground_truth's leak, calloc, realloc and churn phases in `target`; checks allocator and
/// exact numbers.
/// `moved` are functions whose probes must sit past their entry, on an emulated instruction:
/// the numbers are then exact at the cheap sites.
fn leak_and_churn_are_exact(mut target: Target, allocator: &str, object: &str, moved: &[&str]) {
    require_root();
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    let found = &tracer.targets()[0].allocator;
    assert_eq!(found.name, allocator, "{found:?}");
    assert!(found.object().contains(object), "{found:?}");
    assert_moved(found, moved);
    for phase in ["leak", "calloc", "realloc", "churn"] {
        target.run(phase);
    }
    let snapshot = tracer.snapshot().unwrap();
    let functions = by_function(&snapshot, &mut Symbolizer::new());
    let leak = functions.get("leak_exactly").copied().unwrap_or_default();
    assert_eq!((leak.live_bytes, leak.live_count, leak.alloc_count), (104_950, 100, 100), "{functions:?}");
    let calloc = functions.get("leak_calloc").copied().unwrap_or_default();
    assert_eq!((calloc.live_bytes, calloc.live_count), (10_000, 10), "{functions:?}");
    // malloc(10) -> realloc 100 -> realloc 5000: each realloc released the block before it.
    let realloc = functions.get("leak_realloc").copied().unwrap_or_default();
    assert_eq!((realloc.live_bytes, realloc.live_count, realloc.alloc_bytes), (5_000, 1, 5_110), "{functions:?}");
    let churn = functions.get("churn_everything").copied().unwrap_or_default();
    assert_eq!((churn.live_bytes, churn.alloc_bytes, churn.alloc_count), (0, 352_000, 5_000), "{functions:?}");
    assert_eq!(snapshot.total_losses(), 0, "{:?}", snapshot.losses);
}

fn assert_moved(allocator: &Allocator, moved: &[&str]) {
    for symbol in moved {
        let site = allocator.objects.iter().flat_map(|o| &o.sites).find(|s| s.function.symbol == *symbol);
        assert!(site.is_some_and(|s| s.moved_by > 0 && s.emulated), "{symbol} not at a cheap site: {site:?}");
    }
}

fn preloaded(library: &str) -> Target {
    Target::start_with("ground_truth", &[("LD_PRELOAD", &format!("{LIBDIR}/{library}"))])
}

#[test]
fn jemalloc() {
    leak_and_churn_are_exact(preloaded("libjemalloc.so.2"), "jemalloc", "libjemalloc.so.2", &["malloc", "free"]);
}

#[test]
fn tcmalloc() {
    let library = "libtcmalloc_minimal.so.4";
    leak_and_churn_are_exact(preloaded(library), "tcmalloc", library, &["malloc", "free"]);
}

#[test]
fn mimalloc() {
    // mimalloc's malloc, calloc and realloc copy their arguments aside before their first
    // branch: their entry programs read the copies (the attach cookie says where).
    let moved = ["malloc", "calloc", "realloc", "free"];
    leak_and_churn_are_exact(preloaded("libmimalloc.so.2"), "mimalloc", "libmimalloc.so.2", &moved);
}

#[test]
fn static_binary() {
    leak_and_churn_are_exact(Target::start("ground_truth-static"), "static", "ground_truth-static", &["free"]);
}

/// operator new is probed in the C++ runtime, so its caller is the site's function.
fn cxx_is_exact(mut target: Target, moved: &[&str]) {
    require_root();
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    assert_moved(&tracer.targets()[0].allocator, moved);
    target.run("leak");
    target.run("churn");
    let snapshot = tracer.snapshot().unwrap();
    let functions = by_function(&snapshot, &mut Symbolizer::new());
    let leak = functions.get("cxx_leak_objects()").copied().unwrap_or_default();
    assert_eq!((leak.live_bytes, leak.live_count), (5_400, 15), "{functions:?}");
    assert_eq!((leak.alloc_bytes, leak.alloc_count), (5_400, 15), "{functions:?}");
    assert_eq!(snapshot.live_bytes(), 5_400, "nothing else live: {functions:?}");
    assert_eq!(snapshot.total_losses(), 0, "{:?}", snapshot.losses);
}

#[test]
fn cxx_with_libstdcxx() {
    cxx_is_exact(Target::start("cxx_new"), &["_Znwm", "free"]);
}

#[test]
fn cxx_with_jemalloc_operator_new() {
    let jemalloc = format!("{LIBDIR}/libjemalloc.so.2");
    cxx_is_exact(Target::start_with("cxx_new", &[("LD_PRELOAD", &jemalloc)]), &["_Znwm", "_ZdlPvm", "free"]);
}

#[test]
fn rust_system_allocator() {
    require_root();
    let mut target = Target::start("rust_leak");
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    target.run("leak");
    target.run("churn");
    let snapshot = tracer.snapshot().unwrap();
    let mut symbolizer = Symbolizer::new();
    // Rust's std has no frame pointers, so the allocating function may sit a frame or two
    // below the top: attribute by "the stack passes through".
    let (mut leak, mut churn, mut other) = ((0, 0), (0, 0), 0);
    for site in &snapshot.sites {
        let frames = symbolizer.frames(site.pid, &site.frames);
        let through = |name: &str| frames.iter().any(|f| f.function.contains(name));
        if through("rust_leak_boxes") {
            leak = (leak.0 + site.live_bytes(), leak.1 + site.live_count());
        } else if through("rust_churn") {
            churn = (churn.0 + site.live_bytes(), churn.1 + site.stats.alloc_count);
        } else {
            other += site.live_bytes();
        }
    }
    assert_eq!(leak, (13_240, 21));
    assert_eq!(churn.0, 0, "churn leaves nothing live");
    assert!(churn.1 > 0, "churn's allocations were seen");
    assert_eq!(other, 0);
    assert_eq!(snapshot.total_losses(), 0, "{:?}", snapshot.losses);
}
