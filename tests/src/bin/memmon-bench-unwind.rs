//! `cargo xtask bench`, stack-walk part: what the CFI walk costs per allocation at 5 and 15
//! frames of code without frame pointers (against the trap floor and untraced, measured
//! interleaved in the same run), and what building the unwind tables costs for real objects.
//!
//! The loop allocates from one place over and over, which the walk memo recalls after the
//! first walk: the walk's own cost is measured with memoizing off, and the memoized row shows
//! what such a loop pays.

use std::time::Instant;

use memmon::{
    snapshot::Snapshot,
    tracer::{Programs, Tracer, TracerOptions},
    unwind::cfi,
};
use memmon_tests::{Target, median};

const PAIRS: u64 = 100_000;
const ROUNDS: usize = 5;
const DEPTHS: [u32; 2] = [5, 15];

fn main() {
    walk_cost();
    table_cost();
}

fn walk_cost() {
    // (name, Some((programs, memoized walks))).
    let configs: [(&str, Option<(Programs, bool)>); 4] = [
        ("untraced", None),
        ("floor: empty programs", Some((Programs::Empty, false))),
        ("memmon exact (CFI walk)", Some((Programs::Tracking, false))),
        ("memmon exact (memoized)", Some((Programs::Tracking, true))),
    ];
    let mut target = Target::start("bench_pairs-nofp");
    let mut samples = vec![vec![Vec::new(); configs.len()]; DEPTHS.len()];
    let mut frames = vec![0usize; DEPTHS.len()];
    println!("memmon bench (stack walk): malloc(64)+free pairs D calls deep, no frame pointers, {PAIRS} per run, {ROUNDS} rounds interleaved");
    for round in 0..ROUNDS {
        for (c, (_, config)) in configs.iter().enumerate() {
            let mut tracer = config.map(|(programs, memoize_walks)| {
                Tracer::attach(&[target.pid()], TracerOptions { programs, memoize_walks, ..TracerOptions::default() })
                    .expect("attach")
            });
            for (d, &depth) in DEPTHS.iter().enumerate() {
                if round == 0 {
                    measure(&mut target, PAIRS / 10, depth);
                }
                samples[d][c].push(measure(&mut target, PAIRS, depth));
                if let (Some(tracer), Some((Programs::Tracking, false))) = (tracer.as_mut(), config) {
                    frames[d] = frames[d].max(deepest(&tracer.snapshot().expect("snapshot")));
                }
            }
        }
    }
    println!(
        "{:<8} {:>7} {:>12} {:>12} {:>14} {:>18} {:>16}",
        "depth", "frames", "untraced", "floor", "memmon exact", "walk (exact−floor)", "memoized exact"
    );
    let mut walk = Vec::new();
    for (d, &depth) in DEPTHS.iter().enumerate() {
        let medians: Vec<f64> = samples[d].iter().map(|s| median(s)).collect();
        walk.push(medians[2] - medians[1]);
        println!(
            "{depth:<8} {:>7} {:>9.0} ns {:>9.0} ns {:>11.0} ns {:>15.0} ns {:>13.0} ns",
            frames[d],
            medians[0],
            medians[1],
            medians[2],
            medians[2] - medians[1],
            medians[3]
        );
    }
    let per_frame = (walk[1] - walk[0]) / (frames[1] as f64 - frames[0] as f64).max(1.0);
    println!(
        "CFI walk: {per_frame:.0} ns per extra frame; {:.0} ns more at {} frames than at {} (goal: ≤ 1 µs extra for 15 frames)",
        walk[1] - walk[0],
        frames[1],
        frames[0]
    );
}

/// The deepest stack of the target's sites (frames the walk stored).
fn deepest(snapshot: &Snapshot) -> usize {
    snapshot.sites.iter().map(|s| s.frames.len()).max().unwrap_or(0)
}

fn table_cost() {
    let memmon = std::env::current_exe().ok().and_then(|p| Some(p.parent()?.join("memmon"))).filter(|p| p.exists());
    let mut objects: Vec<(String, std::path::PathBuf)> = [
        ("libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
        ("libpython3.11 (python3.11)", "/usr/bin/python3.11"),
        ("redis-server", "/usr/bin/redis-check-rdb"),
        ("libstdc++.so.6", "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"),
    ]
    .iter()
    .map(|(name, path)| (name.to_string(), std::path::PathBuf::from(path)))
    .collect();
    objects.extend(memmon.map(|path| ("memmon".to_string(), path)));
    println!("\nunwind tables (compiled CFI; median of 3 builds):");
    println!("{:<28} {:>10} {:>10} {:>12} {:>10}", "object", "rows", "pages", "kernel KiB", "build ms");
    for (name, path) in objects {
        let Ok(data) = std::fs::read(&path) else {
            println!("{name:<28} (not installed: {})", path.display());
            continue;
        };
        let mut times = Vec::new();
        let mut table = None;
        for _ in 0..3 {
            let start = Instant::now();
            table = Some(cfi::compile(&data).expect("compile"));
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        let table = table.unwrap();
        let kib = (table.rows.len() * 8 + table.pages.len() * 8) as f64 / 1024.0;
        println!("{name:<28} {:>10} {:>10} {:>12.0} {:>10.1}", table.rows.len(), table.pages.len(), kib, median(&times));
    }
}

fn measure(target: &mut Target, pairs: u64, depth: u32) -> f64 {
    let reply = target.request(&format!("run {pairs} {depth}"));
    reply.strip_prefix("ns ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("bad reply {reply:?}"))
}

