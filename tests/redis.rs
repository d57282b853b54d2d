//! Debian's redis-server, which runs on jemalloc: memmon must probe it only where the kernel
//! emulates the probed instruction (single-stepping cost it 96% of its throughput) and stay
//! exact about what it cannot see.

use memmon::{
    allocator::Allocator,
    process::Process,
    tracer::{Tracer, TracerOptions},
};
use memmon_tests::{Agent, RedisServer, require_root};

#[test]
fn no_probed_jemalloc_function_is_single_stepped() {
    require_root();
    let redis = RedisServer::start();
    let allocator = Allocator::find(&Process::open(redis.pid()).unwrap(), true).unwrap();
    assert_eq!(allocator.name, "jemalloc", "{allocator:?}");
    let stepped: Vec<_> = allocator.single_stepped().collect();
    assert!(stepped.is_empty(), "single-stepped: {stepped:#?}");
    // The hot pair sits past its entry (jemalloc's malloc and free start with instructions the
    // kernel would single-step), and the allocating functions have their return probes there.
    let sites = &allocator.objects[0].sites;
    for symbol in ["malloc", "free"] {
        let site = sites.iter().find(|s| s.function.symbol == symbol).unwrap();
        assert!(site.moved_by > 0 && site.emulated, "{site:?}");
    }
    // The agent says the same in `status`.
    let agent = Agent::start(redis.pid(), &[]);
    let status = agent.json("status");
    let target = &status["targets"][0];
    assert_eq!(target["allocator"], "jemalloc", "{status:#}");
    assert_eq!(target["single_stepped"], serde_json::json!([]), "{status:#}");
    let probed = target["probe_sites"].as_array().unwrap();
    assert_eq!(probed.len(), sites.len(), "{status:#}");
    assert!(probed.iter().all(|s| s["emulated"] == true), "{status:#}");
}

#[test]
fn redis_benchmark_sets_are_counted_without_losses() {
    require_root();
    let redis = RedisServer::start();
    let mut tracer = Tracer::attach(&[redis.pid()], TracerOptions::default()).unwrap();
    const REQUESTS: u64 = 5_000;
    let output = redis.benchmark(&["-t", "set", "-n", &REQUESTS.to_string(), "-r", "100000"]);
    assert!(output.contains("SET: "), "{output}");
    let keys: u64 = redis.command("DBSIZE").unwrap().trim_start_matches(':').parse().unwrap();
    assert!(keys > REQUESTS * 9 / 10, "{keys} keys from {REQUESTS} SETs of random keys");
    let snapshot = tracer.snapshot().unwrap();
    let allocations: u64 = snapshot.sites.iter().map(|s| s.stats.alloc_count).sum();
    let live: u64 = snapshot.sites.iter().map(|s| s.live_count()).sum();
    assert!(allocations >= REQUESTS, "{allocations} allocations for {REQUESTS} SETs");
    // Every key created since attach holds blocks allocated since attach: at least its key's
    // string and its value object (and its dict entry).
    assert!(live >= 2 * keys, "{live} live blocks for {keys} keys");
    assert_eq!(snapshot.total_losses(), 0, "{:?}", snapshot.losses);
    // redis serves every SET through the same few paths from its event loop, without frame
    // pointers: the walk memo (memmon-ebpf/src/memo.rs) recalls nearly all of them (99.9%
    // measured under redis-benchmark -t set,get -n 50000).
    let stats = tracer.unwind_stats();
    let walks = stats.walks_recalled + stats.walks_memoized + stats.walks_unmemoizable;
    assert!(walks >= allocations, "{walks} stack captures for {allocations} allocations");
    assert!(
        stats.walks_recalled * 10 >= walks * 9,
        "{} of {walks} walks recalled ({} memoized, {} unmemoizable)",
        stats.walks_recalled,
        stats.walks_memoized,
        stats.walks_unmemoizable
    );
}

/// Attaching while redis-benchmark runs: its SETs of random keys overwrite values (jemalloc's
/// frees and reallocations in flight) as the probes go on, and nothing may read as lost.
#[test]
fn attaching_to_redis_under_load_loses_nothing() {
    require_root();
    let redis = RedisServer::start();
    std::thread::scope(|scope| {
        let load = scope.spawn(|| redis.benchmark(&["-t", "set", "-n", "300000", "-r", "1000", "-d", "100"]));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut tracer = Tracer::attach(&[redis.pid()], TracerOptions::default()).unwrap();
        let output = load.join().unwrap();
        assert!(output.contains("SET: "), "{output}");
        let snapshot = tracer.snapshot().unwrap();
        let allocations: u64 = snapshot.sites.iter().map(|s| s.stats.alloc_count).sum();
        assert!(allocations > 0, "the attach saw none of the load");
        assert_eq!(snapshot.total_losses(), 0, "{:?}", snapshot.losses);
    });
}
