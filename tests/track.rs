//! Per-call memory of tracked functions (`--track-function`) against ground truth: our own
//! target (`targets/track.c`), whose `handle_request` allocates and keeps known bytes per call,
//! and Debian's redis-server with `processCommand` tracked, checked against redis' own
//! command statistics and keyspace.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use memmon::{
    symbolize::Symbolizer,
    tracer::{Tracer, TracerOptions},
    track::{FunctionSample, Thresholds, TrackConfig},
};
use memmon_tests::{Agent, RedisServer, Target, by_function, http, memmon_binary, require_root};

/// The target's per-call sizes (targets/track.c).
const SCRATCH_AND_REPLY: u64 = 300 + 200;
const OUTER: u64 = 1000;
const HANDOFF: u64 = 777;

fn tracer(target: &Target, specs: &[&str]) -> Tracer {
    let track = TrackConfig {
        specs: specs.iter().map(|s| s.parse().unwrap()).collect(),
        thresholds: Thresholds { slow_ns: 1_000_000_000, high_usage_bytes: 50 << 20 },
    };
    Tracer::attach_tracking(&[target.pid()], TracerOptions::default(), &track).unwrap()
}

/// Everything memmon measured of one function, as plain numbers that subtract.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Totals {
    calls: u64,
    net_bytes: u64,
    net_allocations: u64,
    allocated_bytes: u64,
    allocations: u64,
    freed_bytes: u64,
    frees: u64,
    nested: u64,
    started: u64,
    lost_unwound: u64,
    lost_thread_exit: u64,
    lost_other: u64,
    in_flight: u64,
    /// (le, cumulative count) of the net and allocated histograms.
    net_buckets: Vec<(u64, u64)>,
    allocated_buckets: Vec<(u64, u64)>,
}

impl Totals {
    fn of(sample: &FunctionSample) -> Self {
        let (s, c) = (&sample.stats, &sample.counters);
        Self {
            calls: s.calls(),
            net_bytes: s.net_bytes.sum,
            net_allocations: s.net_allocations,
            allocated_bytes: s.allocated_bytes.sum,
            allocations: s.allocations,
            freed_bytes: s.freed_bytes,
            frees: s.frees,
            nested: c.nested,
            started: c.started,
            lost_unwound: c.lost_unwound,
            lost_thread_exit: c.lost_thread_exit,
            lost_other: c.lost_event_dropped + c.lost_table_full,
            in_flight: sample.in_flight,
            net_buckets: s.net_bytes.cumulative(),
            allocated_buckets: s.allocated_bytes.cumulative(),
        }
    }

    fn minus(&self, before: &Self) -> Self {
        let buckets = |now: &[(u64, u64)], then: &[(u64, u64)]| now.iter().zip(then).map(|(n, t)| (n.0, n.1 - t.1)).collect();
        Self {
            calls: self.calls - before.calls,
            net_bytes: self.net_bytes - before.net_bytes,
            net_allocations: self.net_allocations - before.net_allocations,
            allocated_bytes: self.allocated_bytes - before.allocated_bytes,
            allocations: self.allocations - before.allocations,
            freed_bytes: self.freed_bytes - before.freed_bytes,
            frees: self.frees - before.frees,
            nested: self.nested - before.nested,
            started: self.started - before.started,
            lost_unwound: self.lost_unwound - before.lost_unwound,
            lost_thread_exit: self.lost_thread_exit - before.lost_thread_exit,
            lost_other: self.lost_other - before.lost_other,
            in_flight: self.in_flight,
            net_buckets: buckets(&self.net_buckets, &before.net_buckets),
            allocated_buckets: buckets(&self.allocated_buckets, &before.allocated_buckets),
        }
    }

    /// Calls with at most `bound` bytes (a histogram bound).
    fn net_at_most(&self, bound: u64) -> u64 {
        self.net_buckets.iter().find(|(le, _)| *le == bound).unwrap_or_else(|| panic!("no bound {bound}")).1
    }

    fn allocated_at_most(&self, bound: u64) -> u64 {
        self.allocated_buckets.iter().find(|(le, _)| *le == bound).unwrap_or_else(|| panic!("no bound {bound}")).1
    }

    /// Every started call is completed, lost or still in flight: none is unaccounted for.
    fn assert_accounted(&self) {
        assert_eq!(
            self.started,
            self.calls + self.lost_unwound + self.lost_thread_exit + self.lost_other + self.in_flight,
            "{self:#?}"
        );
    }
}

fn totals(tracer: &mut Tracer, label: &str) -> Totals {
    let snapshot = tracer.snapshot().unwrap();
    let sample = snapshot.functions.iter().find(|f| f.function.label == label).unwrap_or_else(|| panic!("{label} not tracked"));
    Totals::of(sample)
}

#[test]
fn every_call_is_counted_with_its_exact_net_delta() {
    require_root();
    let mut target = Target::start("track");
    let mut tracer = tracer(&target, &["handle_request"]);
    let site = &tracer.tracked_functions()[0].site;
    assert!(site.emulated, "handle_request starts with push %rbp: {site:?}");
    target.run("keep 3000 10");
    target.run("requests 1000");
    let t = totals(&mut tracer, "handle_request");
    // 1000 calls of 500 bytes allocated and freed; ids 9, 19, … 999 keep 3000 more.
    assert_eq!((t.calls, t.started, t.in_flight), (1000, 1000, 0), "{t:#?}");
    assert_eq!((t.net_bytes, t.net_allocations), (100 * 3000, 100), "{t:#?}");
    assert_eq!((t.allocated_bytes, t.allocations), (1000 * SCRATCH_AND_REPLY + 100 * 3000, 2100), "{t:#?}");
    assert_eq!((t.freed_bytes, t.frees), (1000 * SCRATCH_AND_REPLY, 2000), "{t:#?}");
    // The histograms, bucket by bucket: net 0 for 900 calls, 3000 (≤ 4096) for 100.
    assert_eq!(t.net_at_most(0), 900);
    assert_eq!(t.net_at_most(1024), 900);
    assert_eq!(t.net_at_most(4096), 1000);
    assert_eq!(t.allocated_at_most(256), 0);
    assert_eq!(t.allocated_at_most(1024), 900, "500 bytes");
    assert_eq!(t.allocated_at_most(4096), 1000, "3500 bytes");
    assert_eq!(t.lost_unwound + t.lost_thread_exit + t.lost_other, 0);
    t.assert_accounted();
    // The net deltas are exactly what the site tables hold live at keep(): another mechanism.
    let functions = by_function(&tracer.snapshot().unwrap(), &mut Symbolizer::new());
    assert_eq!((functions["keep"].live_bytes, functions["keep"].live_count), (300_000, 100));

    // Freed later, outside any call: the calls' net deltas (live at their return) stay.
    target.run("release");
    let after = totals(&mut tracer, "handle_request");
    assert_eq!((after.calls, after.net_bytes, after.freed_bytes), (1000, 300_000, t.freed_bytes));
}

#[test]
fn recursive_and_nested_calls_count_once_for_the_outermost() {
    require_root();
    let mut target = Target::start("track");
    let mut tracer = tracer(&target, &["outer_job", "handle_request"]);
    target.run("keep 3000 10");
    // Recursion 3 deep: one call of 4 levels, 500 bytes each, the innermost keeping on id 9.
    target.run("requests 10 3");
    let t = totals(&mut tracer, "handle_request");
    assert_eq!((t.calls, t.nested), (10, 30), "{t:#?}");
    assert_eq!((t.net_bytes, t.allocated_bytes), (3000, 10 * 4 * SCRATCH_AND_REPLY + 3000), "{t:#?}");
    assert_eq!(t.net_at_most(0), 9);
    // outer_job calls handle_request twice: the outer call has it all, handle_request none.
    let before = totals(&mut tracer, "handle_request");
    target.run("outer 20");
    let outer = totals(&mut tracer, "outer_job");
    let inner = totals(&mut tracer, "handle_request").minus(&before);
    assert_eq!((outer.calls, inner.calls, inner.nested), (20, 0, 40), "{outer:#?} {inner:#?}");
    // ids 9 and 19 keep twice each (two inner calls with the same id).
    assert_eq!(outer.net_bytes, 4 * 3000, "{outer:#?}");
    assert_eq!(outer.allocated_bytes, 20 * (OUTER + 2 * SCRATCH_AND_REPLY) + 4 * 3000, "{outer:#?}");
    assert_eq!((outer.net_at_most(0), outer.net_at_most(4096), outer.net_at_most(16384)), (18, 18, 20), "{outer:#?}");
    outer.assert_accounted();
    totals(&mut tracer, "handle_request").assert_accounted();
}

#[test]
fn threads_never_mix_and_frees_elsewhere_leave_the_net() {
    require_root();
    let mut target = Target::start("track");
    let mut tracer = tracer(&target, &["handle_request"]);
    target.run("keep 3000 10");
    // Two threads at once, 500 calls each: 50 keeps each.
    target.run("threads 500");
    let t = totals(&mut tracer, "handle_request");
    assert_eq!((t.calls, t.net_bytes, t.net_allocations), (1000, 100 * 3000, 100), "{t:#?}");
    // Had one thread's allocations leaked into the other's call, some call would hold more
    // than 3500 bytes or a net between 0 and 3000: every bucket is exact.
    assert_eq!((t.net_at_most(0), t.net_at_most(4096), t.net_at_most(1 << 30)), (900, 1000, 1000), "{t:#?}");
    assert_eq!((t.allocated_at_most(1024), t.allocated_at_most(4096)), (900, 1000), "{t:#?}");
    let snapshot = tracer.snapshot().unwrap();
    let stats = &snapshot.functions[0].stats;
    assert_eq!((stats.allocated_bytes.max, stats.net_bytes.max), (3500, 3000));

    // Each call hands a 777-byte block to a helper thread that frees it while the call waits:
    // not live at the return, so not in the net; freed by another thread, so not in this
    // thread's freed bytes.
    target.run("keep 0 0");
    let before = totals(&mut tracer, "handle_request");
    target.run("handoff 5");
    let d = totals(&mut tracer, "handle_request").minus(&before);
    assert_eq!((d.calls, d.net_bytes, d.net_allocations), (5, 0, 0), "{d:#?}");
    assert_eq!((d.allocated_bytes, d.allocations), (5 * (SCRATCH_AND_REPLY + HANDOFF), 15), "{d:#?}");
    assert_eq!((d.freed_bytes, d.frees), (5 * SCRATCH_AND_REPLY, 10), "{d:#?}");
    totals(&mut tracer, "handle_request").assert_accounted();
}

#[test]
fn calls_that_never_return_are_lost_not_measured() {
    require_root();
    let mut target = Target::start("track");
    let mut tracer = tracer(&target, &["handle_request"]);
    target.run("keep 0 0");
    // longjmp out of the call: seen as lost when the next call enters at the same depth.
    target.run("jump");
    target.run("requests 3");
    let t = totals(&mut tracer, "handle_request");
    assert_eq!((t.calls, t.lost_unwound, t.lost_thread_exit), (3, 1, 0), "{t:#?}");
    assert_eq!((t.net_bytes, t.allocated_bytes), (0, 3 * SCRATCH_AND_REPLY), "the lost call is in no number: {t:#?}");
    // A thread that exits inside the call.
    target.run("thread_exit");
    let t = totals(&mut tracer, "handle_request");
    assert_eq!((t.calls, t.lost_unwound, t.lost_thread_exit, t.in_flight), (3, 1, 1, 0), "{t:#?}");
    t.assert_accounted();
}

/// The value of the one series whose line contains all of `parts`.
fn value(metrics: &str, parts: &[&str]) -> f64 {
    let lines: Vec<&str> = metrics.lines().filter(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p))).collect();
    assert_eq!(lines.len(), 1, "{parts:?} matched {lines:?}");
    lines[0].rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn the_agent_shows_tracked_calls_in_metrics_status_and_summary() {
    require_root();
    let mut target = Target::start("track");
    let agent = Agent::start(target.pid(), &["--track-function", "handle_request", "--high-usage-threshold-mb", "0.003"]);
    target.run("keep 3000 10");
    target.run("jump"); // lost, seen so at the next call
    target.run("requests 1000");
    agent.json("update-metrics");
    let (status, metrics) = http(&agent.url, "GET /metrics");
    assert_eq!(status, 200, "{metrics}");
    let f = "function=\"handle_request\"";
    assert_eq!(value(&metrics, &["memmon_function_net_bytes_count{", f]), 1000.0);
    assert_eq!(value(&metrics, &["memmon_function_net_bytes_sum{", f]), 300_000.0);
    assert_eq!(value(&metrics, &["memmon_function_net_bytes_bucket{", f, "le=\"0\""]), 900.0);
    assert_eq!(value(&metrics, &["memmon_function_net_bytes_bucket{", f, "le=\"1024\""]), 900.0);
    assert_eq!(value(&metrics, &["memmon_function_net_bytes_bucket{", f, "le=\"4096\""]), 1000.0);
    assert_eq!(value(&metrics, &["memmon_function_net_bytes_bucket{", f, "le=\"+Inf\""]), 1000.0);
    assert_eq!(value(&metrics, &["memmon_function_allocated_bytes_bucket{", f, "le=\"1024\""]), 900.0);
    assert_eq!(value(&metrics, &["memmon_function_allocated_bytes_sum{", f]), 800_000.0);
    assert_eq!(value(&metrics, &["memmon_function_duration_seconds_count{", f]), 1000.0);
    assert_eq!(value(&metrics, &["memmon_function_lost_calls_total{", f, "reason=\"unwound\""]), 1.0);
    assert_eq!(value(&metrics, &["memmon_function_lost_calls_total{", f, "reason=\"thread_exit\""]), 0.0);
    // 0.003 MiB = 3145 bytes: the 100 calls that allocated 3500 are high-usage.
    assert_eq!(value(&metrics, &["memmon_function_high_usage_calls_total{", f]), 100.0);
    assert_eq!(value(&metrics, &["memmon_function_slow_calls_total{", f]), 0.0);
    assert_eq!(value(&metrics, &["memmon_function_calls_in_flight{", f]), 0.0);
    let keep_site = value(&metrics, &["memmon_function_site_allocated_bytes_total{", f, "site=\"keep ("]);
    assert_eq!(keep_site, 300_000.0);
    promtool_check_metrics(&metrics);

    let status = agent.json("status");
    let tracked = &status["tracked_functions"][0];
    assert_eq!((tracked["function"].as_str(), tracked["calls"].as_u64()), (Some("handle_request"), Some(1000)), "{status:#}");
    assert_eq!((tracked["lost_calls"].as_u64(), tracked["lost"]["unwound"].as_u64()), (Some(1), Some(1)), "{tracked:#}");
    assert_eq!(tracked["net_bytes"]["sum"], 300_000, "{tracked:#}");
    // Nearest-rank percentiles of 1000 calls, 100 of which keep 3000 bytes.
    assert_eq!((tracked["net_bytes"]["p50"].as_u64(), tracked["net_bytes"]["p90"].as_u64(), tracked["net_bytes"]["p99"].as_u64()), (Some(0), Some(0), Some(3000)));
    assert_eq!((tracked["allocated_bytes"]["p50"].as_u64(), tracked["allocated_bytes"]["max"].as_u64()), (Some(500), Some(3500)));
    assert!(tracked["duration_seconds"]["p50"].as_f64().unwrap() > 0.0, "{tracked:#}");
    let (code, text, _) = agent.command("status", &[]);
    assert_eq!(code, 0);
    assert!(text.contains("handle_request in track (pid") && text.contains("1000 calls, 1 lost (unwound=1)"), "{text}");

    let summary = agent.json("memory-summary");
    let tracked = &summary["tracked_functions"][0];
    let sites = tracked["top_sites"].as_array().unwrap();
    let keep = sites.iter().find(|s| s["site"]["frames"][0]["function"] == "keep").unwrap_or_else(|| panic!("{tracked:#}"));
    assert_eq!((keep["allocated_bytes"].as_u64(), keep["allocations"].as_u64()), (Some(300_000), Some(100)), "{keep:#}");
    assert_eq!(keep["site"]["frames"][1]["function"], "handle_request", "{keep:#}");
    let (_, text, _) = agent.command("memory-summary", &[]);
    assert!(text.contains("stacks allocating inside it:") && text.contains("keep  ("), "{text}");
}

fn promtool_check_metrics(metrics: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; cargo xtask setup installs it)");
    promtool.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    let complaints = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && complaints.trim().is_empty(), "promtool: {complaints}");
}

#[test]
fn symbols_that_are_not_one_function_are_refused_with_close_matches() {
    require_root();
    let target = Target::start("track");
    let pid = target.pid().to_string();
    let refuse = |spec: &str| {
        let output = Command::new(memmon_binary())
            .args(["agent", "--pid", &pid, "--listen", "127.0.0.1:0", "--profiling-enabled", "false", "--track-function", spec])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(1), "{spec}: {stderr}");
        assert!(!stderr.contains("attached to pid"), "{spec}: nothing may be attached: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        stderr
    };
    let missing = refuse("handle_requests");
    assert!(missing.contains("no function named handle_requests") && missing.contains("close matches: handle_request (track)"), "{missing}");
    let ambiguous = refuse("warn");
    assert!(ambiguous.contains("warn is defined in several objects") && ambiguous.contains("warn@track or warn@libc.so.6"), "{ambiguous}");
    let data = refuse("kept");
    assert!(data.contains("kept in ") && data.contains("is not a function"), "{data}");
    let object = refuse("handle_request@libfoo");
    assert!(object.contains("no mapped object matches \"libfoo\""), "{object}");
    // Named with its object, the ambiguous one is found.
    let agent = Agent::start(target.pid(), &["--track-function", "warn@libc"]);
    let status = agent.json("status");
    assert_eq!(status["tracked_functions"][0]["object"], "/usr/lib/x86_64-linux-gnu/libc.so.6", "{status:#}");
}

/// The sum of every command's calls in redis' INFO commandstats (rejected and failed included).
fn redis_commands(redis: &RedisServer) -> u64 {
    let mut stream = std::os::unix::net::UnixStream::connect(&redis.socket).unwrap();
    stream.write_all(b"INFO commandstats\r\n").unwrap();
    let mut reply = String::new();
    let mut buffer = [0u8; 65536];
    // A bulk reply: "$<len>\r\n<text>\r\n".
    loop {
        let n = std::io::Read::read(&mut stream, &mut buffer).unwrap();
        reply.push_str(&String::from_utf8_lossy(&buffer[..n]));
        let Some((header, rest)) = reply.split_once("\r\n") else { continue };
        if rest.len() >= header.trim_start_matches('$').parse::<usize>().unwrap() {
            break;
        }
    }
    let field = |stats: &str, name: &str| -> u64 {
        stats.split(',').find_map(|kv| kv.strip_prefix(&format!("{name}="))).map_or(0, |v| v.parse().unwrap())
    };
    reply
        .lines()
        .filter_map(|line| line.strip_prefix("cmdstat_"))
        .map(|line| {
            let stats = line.split_once(':').unwrap().1;
            field(stats, "calls") + field(stats, "rejected_calls") + field(stats, "failed_calls")
        })
        .sum()
}

/// processCommand in Debian's redis-server (7.0, jemalloc) under redis-benchmark.
///
/// What one command keeps, from redis' source: a SET of a new key adds a dictEntry (24 bytes)
/// and a copy of the key (an sds of a 16-character key: 18 bytes) to the keyspace; its value
/// object was allocated by the request parser before processCommand ran, so it is not the
/// call's. Every reply also puts the client on the pending-write list, a 24-byte list node
/// allocated inside processCommand and freed after it returns, when the reply is written. So
/// a SET of a new key keeps exactly 66 bytes at its return (more when it grows the keyspace's
/// hash table), an overwrite 24, and a GET 24: the reply's node, nothing in the keyspace.
#[test]
fn redis_process_command_net_matches_the_keyspace_growth() {
    require_root();
    let redis = RedisServer::start();
    let track = TrackConfig { specs: vec!["processCommand".parse().unwrap()], thresholds: Thresholds { slow_ns: 1_000_000_000, high_usage_bytes: 50 << 20 } };
    let mut tracer = Tracer::attach_tracking(&[redis.pid()], TracerOptions::default(), &track).unwrap();
    let function = &tracer.tracked_functions()[0];
    assert!(function.site.emulated, "{function:?}");

    // Each command's first call allocates its latency histogram: call each once beforehand.
    for command in ["SET warmup 1", "GET warmup", "DBSIZE", "CONFIG GET save", "INFO commandstats"] {
        redis.command(command).unwrap();
    }
    let keys_before: u64 = redis.command("DBSIZE").unwrap().trim_start_matches(':').parse().unwrap();
    let before = totals(&mut tracer, "processCommand");
    let commands_before = redis_commands(&redis);
    const SETS: u64 = 20_000;
    let output = redis.benchmark(&["-t", "set", "-n", &SETS.to_string(), "-r", "1000000000"]);
    assert!(output.contains("SET: "), "{output}");
    let commands = redis_commands(&redis) - commands_before;
    let keys = redis.command("DBSIZE").unwrap().trim_start_matches(':').parse::<u64>().unwrap() - keys_before;
    let sets = totals(&mut tracer, "processCommand").minus(&before);
    // Every command redis counted, plus the INFO that answered last (counted after it ran)
    // and the DBSIZE.
    assert_eq!(sets.calls, commands + 2, "{sets:#?}");
    assert_eq!(sets.lost_unwound + sets.lost_thread_exit + sets.lost_other, 0, "{sets:#?}");
    // Each new key's SET keeps more than 64 bytes (66, or a hash table), every other command
    // at most 64 (24, the reply's list node; 0 when the client was already waiting to be
    // written to, as for the second of redis-benchmark's two pipelined CONFIG GETs): as many
    // calls above 64 bytes as keys were made.
    assert!(keys > SETS * 99 / 100, "{keys} keys");
    assert_eq!(sets.calls - sets.net_at_most(64), keys, "{sets:#?}");
    assert!(sets.net_at_most(16) <= 2, "{sets:#?}");
    let reply_nodes = sets.net_at_most(64) - sets.net_at_most(16);
    let snapshot = tracer.snapshot().unwrap();
    let sample = &snapshot.functions[0];
    assert_eq!(sample.stats.net_percentiles().p50, 66, "a new key's SET keeps dictEntry + key + reply node");
    // The rest of the sum is the keyspace's hash tables: each expansion allocates 8 bytes per
    // bucket, a power of two, and the table ends with at least one bucket per key.
    let tables = sets.net_bytes - 66 * keys - 24 * reply_nodes;
    println!(
        "SET phase: {} processCommand calls (redis counted {commands}), {keys} new keys; net {} B in all, {} calls keep > 64 B, p50 66 B; hash tables {tables} B",
        sets.calls,
        sets.net_bytes,
        sets.calls - sets.net_at_most(64)
    );
    assert!(tables >= 8 * keys && tables % 64 == 0 && tables < 8 * 4 * keys, "{tables} bytes of tables for {keys} keys: {sets:#?}");

    let before = totals(&mut tracer, "processCommand");
    let output = redis.benchmark(&["-t", "get", "-n", "10000", "-r", "1000000000"]);
    assert!(output.contains("GET: "), "{output}");
    let gets = totals(&mut tracer, "processCommand").minus(&before);
    assert!(gets.calls >= 10_000, "{gets:#?}");
    // GET keeps nothing of its own: each call's net is its reply's pending-write node (24
    // bytes), or nothing when its client was already waiting to be written to.
    let with_node = gets.calls - gets.net_at_most(16);
    assert_eq!(gets.net_at_most(64), gets.calls, "no call keeps more than a node: {gets:#?}");
    assert!(with_node >= 10_000, "{gets:#?}");
    assert_eq!((gets.net_bytes, gets.net_allocations), (24 * with_node, with_node), "{gets:#?}");
    println!("GET phase: {} calls, net {} B = {with_node} reply nodes of 24 B, none above 64 B", gets.calls, gets.net_bytes);
}
