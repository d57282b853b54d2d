//! `cargo xtask bench`: the cost memmon adds per malloc+free pair, against baselines measured
//! in the same run. Configurations are interleaved round by round, so drift on a noisy machine
//! hits them alike; each is reported as the median of its rounds, with ratios.

use std::time::Instant;

use memmon::tracer::{Programs, Tracer, TracerOptions};
use memmon_tests::{Agent, Target, http};

const PAIRS: u64 = 200_000;
const ROUNDS: usize = 5;

struct Config {
    name: &'static str,
    /// None: no tracing at all.
    options: Option<TracerOptions>,
}

fn main() {
    let tracing = |programs, optimize_probe_sites| {
        Some(TracerOptions { programs, optimize_probe_sites, ..TracerOptions::default() })
    };
    let configs = [
        Config { name: "untraced", options: None },
        Config { name: "floor: empty programs, every probe at entry", options: tracing(Programs::Empty, false) },
        Config { name: "floor: empty programs, memmon's sites", options: tracing(Programs::Empty, true) },
        Config { name: "memmon exact, every probe at entry", options: tracing(Programs::Tracking, false) },
        Config { name: "memmon exact, memmon's sites", options: tracing(Programs::Tracking, true) },
    ];
    let mut target = Target::start("bench_pairs");
    let mut samples = vec![Vec::new(); configs.len()];
    println!("memmon bench: malloc(64)+free pairs, {PAIRS} per run, {ROUNDS} rounds, configurations interleaved");
    for round in 0..ROUNDS {
        for (config, samples) in configs.iter().zip(&mut samples) {
            let tracer = config.options.map(|options| Tracer::attach(&[target.pid()], options).expect("attach"));
            if round == 0 {
                measure(&mut target, PAIRS / 10); // warm-up: page in, settle caches
            }
            samples.push(measure(&mut target, PAIRS));
            drop(tracer);
        }
    }
    let medians: Vec<f64> = samples.iter().map(|s| median(s)).collect();
    let (untraced, floor_sites, memmon_sites) = (medians[0], medians[2], medians[4]);
    println!("{:<46} {:>10} {:>12} {:>16}", "configuration", "ns/pair", "× untraced", "× floor (sites)");
    for (config, &ns) in configs.iter().zip(&medians) {
        println!("{:<46} {:>10.0} {:>12.1} {:>16.2}", config.name, ns, ns / untraced, ns / floor_sites);
    }
    println!(
        "memmon exact costs {:.0} ns per pair over untraced: {:.2}× the trap floor at the same sites (goal ≤ 1.3×)",
        memmon_sites - untraced,
        memmon_sites / floor_sites
    );
    scrape_bench();
    live_table_bench();
}

/// How long a scrape of /metrics takes with 10,000 sites tracked (goal: under 50 ms).
fn scrape_bench() {
    const SITES: u32 = 10_000;
    const SCRAPES: usize = 21;
    let mut target = Target::start("many_sites");
    let agent = Agent::start(target.pid(), &[]);
    target.run(&format!("sites {SITES}"));
    agent.json("update-metrics");
    http(&agent.url, "GET /metrics"); // warm the symbolizer cache, as a running agent has it
    let mut times: Vec<f64> = (0..SCRAPES)
        .map(|_| {
            let start = Instant::now();
            let (status, _) = http(&agent.url, "GET /metrics");
            assert_eq!(status, 200);
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    times.sort_by(f64::total_cmp);
    println!(
        "/metrics with {SITES} sites tracked: median {:.1} ms, max {:.1} ms over {SCRAPES} scrapes (goal < 50 ms)",
        times[SCRAPES / 2],
        times[SCRAPES - 1]
    );
    // A scrape renders the latest snapshot; the snapshot itself (read every site from the kernel,
    // plus the live table for size classes) runs on the agent's interval. Its cost, for scale:
    let mut snapshots: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            let (status, _) = http(&agent.url, "POST /update-metrics");
            assert_eq!(status, 200);
            start.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    snapshots.sort_by(f64::total_cmp);
    println!("snapshot + summary (POST /update-metrics) with {SITES} sites: median {:.0} ms", snapshots[2]);
}

/// Reading the live table with a million live blocks (profile checkpoints, memory summaries):
/// BPF_MAP_LOOKUP_BATCH against aya's entry-by-entry iterator, measured alternately.
fn live_table_bench() {
    const ROUNDS: usize = 5;
    let mut target = Target::start("ground_truth");
    let tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    target.run("million");
    let time = |read: &dyn Fn() -> usize| {
        let start = Instant::now();
        let blocks = read();
        assert!(blocks >= 1_000_000, "{blocks} live blocks read");
        start.elapsed().as_secs_f64() * 1000.0
    };
    let (mut batched, mut entry_by_entry) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        batched.push(time(&|| tracer.live_blocks_born_since(0).unwrap().len()));
        entry_by_entry.push(time(&|| tracer.live_blocks_entry_by_entry(|_| true).unwrap().len()));
    }
    let (batched, entry_by_entry) = (median(&batched), median(&entry_by_entry));
    println!(
        "live table with 1,000,000 blocks: batched {batched:.0} ms, entry by entry {entry_by_entry:.0} ms \
         ({:.1}× faster; medians of {ROUNDS})",
        entry_by_entry / batched
    );
}

fn measure(target: &mut Target, pairs: u64) -> f64 {
    let reply = target.request(&format!("run {pairs}"));
    reply.strip_prefix("ns ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("bad reply {reply:?}"))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}
