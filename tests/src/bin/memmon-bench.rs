//! `cargo xtask bench`: the cost memmon adds, against baselines measured in the same run.
//! Configurations are interleaved round by round, so drift on a noisy machine hits them alike;
//! each is reported as the median of its rounds, with ratios.
//!
//! - per allocator (glibc, and jemalloc, tcmalloc, mimalloc by LD_PRELOAD): ns per malloc+free
//!   pair untraced, with empty programs on memmon's sites (the trap floor), with empty programs
//!   on every function's entry, and with memmon's exact tracking on its sites;
//! - Debian's redis-server (jemalloc) under redis-benchmark SET and GET: untraced, the trap
//!   floor on memmon's sites, memmon exact on its sites, and memmon exact with every probe at its
//!   entry (what memmon did before);
//! - per-call tracking: redis-benchmark SET and GET with `--track-function processCommand`
//!   against memmon exact without it and untraced, and the cost per tracked call;
//! - a /metrics scrape with 10,000 sites, and reading a live table of a million blocks.

use std::time::Instant;

use memmon::{
    tracer::{Programs, Tracer, TracerOptions},
    track::{Thresholds, TrackConfig},
};
use memmon_tests::{Agent, RedisServer, Target, http, median, requests_per_second};

const PAIRS: u64 = 200_000;
const ROUNDS: usize = 5;
const LIBDIR: &str = "/usr/lib/x86_64-linux-gnu";
/// The allocators benchmarked: glibc's, and the others by LD_PRELOAD.
const ALLOCATORS: [(&str, Option<&str>); 4] = [
    ("glibc", None),
    ("jemalloc", Some("libjemalloc.so.2")),
    ("tcmalloc", Some("libtcmalloc_minimal.so.4")),
    ("mimalloc", Some("libmimalloc.so.2")),
];

struct Config {
    name: &'static str,
    /// None: no tracing at all.
    options: Option<TracerOptions>,
}

fn tracing(programs: Programs, optimize_probe_sites: bool) -> Option<TracerOptions> {
    Some(TracerOptions { programs, optimize_probe_sites, ..TracerOptions::default() })
}

/// `memmon-bench [pairs] [programs] [redis] [track] [scrape] [live]`: the parts named, or all of them.
fn main() {
    let parts: Vec<String> = std::env::args().skip(1).collect();
    let run = |part: &str| parts.is_empty() || parts.iter().any(|p| p == part);
    let known = ["pairs", "programs", "redis", "track", "scrape", "live"];
    if let Some(unknown) = parts.iter().find(|p| !known.contains(&p.as_str())) {
        eprintln!("memmon-bench: unknown part {unknown:?}; parts: {}", known.join(", "));
        std::process::exit(2);
    }
    if run("pairs") {
        pairs_bench();
    }
    if run("programs") {
        programs_bench();
    }
    if run("redis") {
        redis_bench();
    }
    if run("track") {
        track_bench();
    }
    if run("scrape") {
        scrape_bench();
    }
    if run("live") {
        live_table_bench();
    }
}

/// Runs every configuration once per round, in turn, attached to `pid` for the duration of its
/// run; returns each configuration's median of `measure`'s results.
fn interleaved(configs: &[Config], rounds: usize, pid: u32, mut measure: impl FnMut(usize, usize) -> f64) -> Vec<f64> {
    let mut samples = vec![Vec::new(); configs.len()];
    for round in 0..rounds {
        for (index, config) in configs.iter().enumerate() {
            let tracer = config.options.map(|options| Tracer::attach(&[pid], options).expect("attach"));
            samples[index].push(measure(round, index));
            drop(tracer);
        }
    }
    samples.iter().map(|s| median(s)).collect()
}

/// malloc(64)+free pairs in bench_pairs, under each allocator.
fn pairs_bench() {
    let configs = [
        Config { name: "untraced", options: None },
        Config { name: "floor: empty programs, memmon's sites", options: tracing(Programs::Empty, true) },
        Config { name: "floor: empty programs, every probe at entry", options: tracing(Programs::Empty, false) },
        Config { name: "memmon exact, memmon's sites", options: tracing(Programs::Tracking, true) },
    ];
    println!("memmon bench: malloc(64)+free pairs, {PAIRS} per run, {ROUNDS} rounds, configurations interleaved");
    println!("{:<9} {:<46} {:>10} {:>12} {:>16}", "allocator", "configuration", "ns/pair", "× untraced", "× floor (sites)");
    for (allocator, library) in ALLOCATORS {
        let preload = library.map(|library| format!("{LIBDIR}/{library}"));
        let env: Vec<(&str, &str)> = preload.iter().map(|path| ("LD_PRELOAD", path.as_str())).collect();
        let mut target = Target::start_with("bench_pairs", &env);
        let sites = Tracer::attach(&[target.pid()], TracerOptions::default()).expect("attach").targets()[0].allocator.describe();
        let medians = interleaved(&configs, ROUNDS, target.pid(), |round, _| {
            if round == 0 {
                measure(&mut target, PAIRS / 10); // warm-up: page in, settle caches
            }
            measure(&mut target, PAIRS)
        });
        let (untraced, floor_sites, memmon_sites) = (medians[0], medians[1], medians[3]);
        for (config, &ns) in configs.iter().zip(&medians) {
            println!("{allocator:<9} {:<46} {ns:>10.0} {:>12.1} {:>16.2}", config.name, ns / untraced, ns / floor_sites);
        }
        println!(
            "{allocator:<9} memmon exact costs {:.0} ns per pair over untraced, {:.2}× the trap floor at the same sites (goal ≤ 1.3×); sites: {sites}",
            memmon_sites - untraced,
            memmon_sites / floor_sites
        );
    }
}

/// Where memmon's share of a pair goes: each probe program's own run time per hit (BPF run-time
/// statistics, which add two clock reads a run), under each allocator and on redis-server.
fn programs_bench() {
    statistics_cost();
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enable BPF run-time statistics");
    println!("\nmemmon exact: each program's run time per hit (BPF statistics), malloc(64)+free pairs and redis-server");
    println!("{:<9} {:<22} {:>10} {:>10}", "target", "program", "runs", "ns/run");
    let report = |target: &str, tracer: &Tracer| {
        for program in tracer.probe_program_counts() {
            let counts = program.stats;
            if counts.runs > 0 {
                println!("{target:<9} {:<22} {:>10} {:>10.0}", program.name, counts.runs, counts.run_time_ns as f64 / counts.runs as f64);
            }
        }
    };
    for (allocator, library) in ALLOCATORS {
        let preload = library.map(|library| format!("{LIBDIR}/{library}"));
        let env: Vec<(&str, &str)> = preload.iter().map(|path| ("LD_PRELOAD", path.as_str())).collect();
        let mut target = Target::start_with("bench_pairs", &env);
        let tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).expect("attach");
        measure(&mut target, PAIRS);
        report(allocator, &tracer);
    }
    let redis = RedisServer::start();
    let tracer = Tracer::attach(&[redis.pid()], TracerOptions::default()).expect("attach");
    redis.benchmark(&["-t", "set,get", "-n", "50000", "-r", "100000"]);
    report("redis", &tracer);
}

/// What BPF run-time statistics (the agent's overhead accounting) add to a malloc+free pair
/// under memmon exact: two clock reads per program run, on a VM a paravirtual clock each.
fn statistics_cost() {
    let mut target = Target::start("bench_pairs");
    let _tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).expect("attach");
    measure(&mut target, PAIRS / 10);
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        off.push(measure(&mut target, PAIRS));
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enable BPF run-time statistics");
        on.push(measure(&mut target, PAIRS));
        drop(stats);
    }
    let (off, on) = (median(&off), median(&on));
    println!("memmon exact (glibc): {off:.0} ns per pair, {on:.0} with BPF run-time statistics on (+{:.0} ns, {:.2}×)", on - off, on / off);
}

/// redis-benchmark SET and GET against Debian's redis-server, requests per second.
fn redis_bench() {
    const REQUESTS: &str = "50000";
    const ROUNDS: usize = 3;
    let configs = [
        Config { name: "untraced", options: None },
        Config { name: "floor: empty programs, memmon's sites", options: tracing(Programs::Empty, true) },
        Config { name: "memmon exact, memmon's sites", options: tracing(Programs::Tracking, true) },
        Config { name: "memmon exact, every probe at entry", options: tracing(Programs::Tracking, false) },
    ];
    let redis = RedisServer::start();
    redis.benchmark(&["-t", "set,get", "-n", "10000", "-r", "100000"]); // warm-up
    let mut gets = vec![Vec::new(); configs.len()];
    let sets = interleaved(&configs, ROUNDS, redis.pid(), |_, index| {
        let output = redis.benchmark(&["-t", "set,get", "-n", REQUESTS, "-r", "100000"]);
        gets[index].push(requests_per_second(&output, "GET"));
        requests_per_second(&output, "SET")
    });
    let gets: Vec<f64> = gets.iter().map(|g| median(g)).collect();
    println!("\nredis-server (jemalloc, Unix socket) under redis-benchmark -t set,get -n {REQUESTS} -r 100000, {ROUNDS} rounds, interleaved");
    println!("{:<46} {:>10} {:>12} {:>10} {:>12}", "configuration", "SET/s", "× untraced", "GET/s", "× untraced");
    for ((config, set), get) in configs.iter().zip(&sets).zip(&gets) {
        println!("{:<46} {set:>10.0} {:>12.2} {get:>10.0} {:>12.2}", config.name, set / sets[0], get / gets[0]);
    }
}

/// redis-benchmark SET and GET with processCommand tracked (one tracked call per command),
/// against memmon exact without tracking and untraced, interleaved round by round.
fn track_bench() {
    const REQUESTS: &str = "50000";
    const ROUNDS: usize = 3;
    let track = TrackConfig {
        specs: vec!["processCommand".parse().unwrap()],
        thresholds: Thresholds { slow_ns: 1_000_000_000, high_usage_bytes: 50 << 20 },
    };
    let configs: [(&str, Option<&TrackConfig>, bool); 3] = [
        ("untraced", None, false),
        ("memmon exact, memmon's sites", None, true),
        ("memmon exact + --track-function processCommand", Some(&track), true),
    ];
    let redis = RedisServer::start();
    redis.benchmark(&["-t", "set,get", "-n", "10000", "-r", "100000"]); // warm-up
    let (mut sets, mut gets) = (vec![Vec::new(); configs.len()], vec![Vec::new(); configs.len()]);
    let mut calls = 0;
    for _ in 0..ROUNDS {
        for (index, (_, tracked, traced)) in configs.iter().enumerate() {
            let tracer = traced.then(|| {
                let none = TrackConfig::none();
                Tracer::attach_tracking(&[redis.pid()], TracerOptions::default(), tracked.unwrap_or(&none)).expect("attach")
            });
            let output = redis.benchmark(&["-t", "set,get", "-n", REQUESTS, "-r", "100000"]);
            sets[index].push(requests_per_second(&output, "SET"));
            gets[index].push(requests_per_second(&output, "GET"));
            if let Some(mut tracer) = tracer.filter(|_| tracked.is_some()) {
                let snapshot = tracer.snapshot().expect("snapshot");
                let function = &snapshot.functions[0];
                assert_eq!(function.lost_calls(), 0, "{:?}", function.counters);
                calls += function.stats.calls();
            }
        }
    }
    let sets: Vec<f64> = sets.iter().map(|s| median(s)).collect();
    let gets: Vec<f64> = gets.iter().map(|g| median(g)).collect();
    println!("\nper-call tracking: redis-server under redis-benchmark -t set,get -n {REQUESTS} -r 100000, {ROUNDS} rounds, interleaved");
    println!("{:<48} {:>10} {:>12} {:>10} {:>12}", "configuration", "SET/s", "× untraced", "GET/s", "× untraced");
    for (((name, _, _), set), get) in configs.iter().zip(&sets).zip(&gets) {
        println!("{name:<48} {set:>10.0} {:>12.2} {get:>10.0} {:>12.2}", set / sets[0], get / gets[0]);
    }
    // One processCommand call per request: the extra server time per request is the cost of
    // a tracked call (its two probes, and the tracking work in each allocation inside it).
    let per_call = |rates: &[f64], from: usize| (1e9 / rates[2] - 1e9 / rates[from]) / 1000.0;
    println!(
        "redis: extra server time per request with processCommand tracked: SET {:.1} µs, GET {:.1} µs over memmon exact \
         (within this machine's noise when near 0); {calls} calls tracked, none lost",
        per_call(&sets, 1),
        per_call(&gets, 1),
    );
    tracked_call_cost();
}

/// The cost of one tracked call, measured where the noise is small: targets/track.c's
/// handle_request (2 mallocs and 2 frees a call) timed by the target itself, untraced, under
/// memmon exact, and under memmon exact with handle_request tracked.
fn tracked_call_cost() {
    const CALLS: u64 = 100_000;
    let mut target = Target::start("track");
    let track = TrackConfig {
        specs: vec!["handle_request".parse().unwrap()],
        thresholds: Thresholds { slow_ns: 1_000_000_000, high_usage_bytes: 50 << 20 },
    };
    let none = TrackConfig::none();
    let configs: [(&str, Option<&TrackConfig>); 3] =
        [("untraced", None), ("memmon exact", Some(&none)), ("memmon exact + --track-function handle_request", Some(&track))];
    let mut samples = vec![Vec::new(); configs.len()];
    for round in 0..ROUNDS {
        for (index, (_, tracked)) in configs.iter().enumerate() {
            let tracer = tracked.map(|track| Tracer::attach_tracking(&[target.pid()], TracerOptions::default(), track).expect("attach"));
            if round == 0 {
                time_calls(&mut target, CALLS / 10);
            }
            samples[index].push(time_calls(&mut target, CALLS));
            drop(tracer);
        }
    }
    let medians: Vec<f64> = samples.iter().map(|s| median(s)).collect();
    println!("\nhandle_request (2 mallocs + 2 frees a call), {CALLS} calls per run, {ROUNDS} rounds, interleaved");
    println!("{:<48} {:>10} {:>12}", "configuration", "ns/call", "× untraced");
    for ((name, _), ns) in configs.iter().zip(&medians) {
        println!("{name:<48} {ns:>10.0} {:>12.1}", ns / medians[0]);
    }
    println!(
        "cost per tracked call: {:.0} ns over memmon exact (its entry and return probes, and the tracking work of its 4 allocator calls)",
        medians[2] - medians[1]
    );
}

fn time_calls(target: &mut Target, calls: u64) -> f64 {
    let reply = target.request(&format!("time {calls}"));
    reply.strip_prefix("ns ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("bad reply {reply:?}"))
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
            let (status, _) = agent.api("POST /update-metrics");
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

