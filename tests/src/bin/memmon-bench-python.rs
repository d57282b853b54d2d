//! `cargo xtask bench`, Python part: what walking the Python frames costs per allocation, on
//! Debian's python3.11 allocating from a 10-deep Python stack (ten distinct functions), against
//! the same tracer with Python frames off (native stacks only) and untraced, measured
//! interleaved in the same run; and the memory of the symbolizer's code-object cache.
//!
//! A CPython target's walks are never memoized (they read interpreter frames), so the native
//! baseline the Python walk is measured against walks every stack too; the memoized native row
//! shows what a process without Python frames pays.

use memmon::{
    symbolize::Symbolizer,
    tracer::{Tracer, TracerOptions},
};
use memmon_tests::{Target, median};

const ALLOCATIONS: u64 = 100_000;
const ROUNDS: usize = 5;

/// level_1 … level_10 call each other; level_10 makes and drops a 1,000-byte bytearray per
/// iteration (past pymalloc's 512-byte limit, so a malloc and a free each) and reports the
/// nanoseconds per iteration.
fn script() -> String {
    let mut script = String::from("import sys, time\n");
    script.push_str("def level_10(n):\n    start = time.perf_counter_ns()\n    for _ in range(n):\n        bytearray(1000)\n    return (time.perf_counter_ns() - start) / n\n");
    for level in (1..10).rev() {
        script.push_str(&format!("def level_{level}(n):\n    return level_{}(n)\n", level + 1));
    }
    script.push_str("print('ready', flush=True)\nfor line in sys.stdin:\n    print(f'ns {level_1(int(line))}', flush=True)\n");
    script
}

fn main() {
    let mut target = Target::start_program("/usr/bin/python3.11", &["-c", &script()]);
    // (name, Some((Python frames, memoized walks))).
    let configs = [
        ("untraced", None),
        ("memmon exact, native stacks", Some((false, false))),
        ("memmon exact, Python frames", Some((true, false))),
        ("memmon exact, native, memoized", Some((false, true))),
    ];
    let mut samples = vec![Vec::new(); configs.len()];
    let mut python_frames = 0;
    let mut cache = (0, 0);
    println!(
        "memmon bench (Python frames): python3.11, bytearray(1000) made and dropped 10 Python calls deep, {ALLOCATIONS} per run, {ROUNDS} rounds interleaved"
    );
    measure(&mut target, ALLOCATIONS / 10);
    for _ in 0..ROUNDS {
        for (c, (_, python)) in configs.iter().enumerate() {
            let mut tracer = python.map(|(python_frames, memoize_walks)| {
                let options = TracerOptions { python_frames, memoize_walks, ..TracerOptions::default() };
                Tracer::attach(&[target.pid()], options).expect("attach")
            });
            samples[c].push(measure(&mut target, ALLOCATIONS));
            if let (Some(tracer), Some((true, _))) = (tracer.as_mut(), python) {
                let snapshot = tracer.snapshot().expect("snapshot");
                let mut symbolizer = Symbolizer::new();
                for site in &snapshot.sites {
                    let frames = symbolizer.frames(site.pid, &site.frames);
                    python_frames = python_frames.max(frames.iter().filter(|f| f.python).count());
                }
                cache = symbolizer.python_cache();
            }
        }
    }
    let medians: Vec<f64> = samples.iter().map(|s| median(s)).collect();
    println!("{:<32} {:>14}", "configuration", "ns per alloc");
    for ((name, _), value) in configs.iter().zip(&medians) {
        println!("{name:<32} {value:>11.0} ns");
    }
    println!(
        "Python walk: {:.0} ns per allocation for {python_frames} Python frames (goal: ≤ 1 µs); code-object cache: {} objects, {:.1} KiB",
        medians[2] - medians[1],
        cache.0,
        cache.1 as f64 / 1024.0
    );
}

fn measure(target: &mut Target, allocations: u64) -> f64 {
    let reply = target.request(&allocations.to_string());
    reply.strip_prefix("ns ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("bad reply {reply:?}"))
}
