//! `cargo xtask bench` (production part): what attaching costs a real service. Debian's
//! redis-server (jemalloc) under redis-benchmark SET and GET, untraced, with `memmon agent`
//! (exact tier), with `memmon agent --preset production` (always-on tier, no window open), and
//! with heaptrack attached by pid (`heaptrack -p`, which injects its LD_PRELOAD library through
//! gdb); with each tracer's own CPU time and peak RSS. memmon's configurations are interleaved
//! round by round, with the always-on tier's tracepoints alone (no agent) as a fourth; heaptrack,
//! which cannot be detached from a process, gets a fresh server and its own untraced baseline,
//! measured in the same run.

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use memmon::tracer::{Tracer, TracerOptions};
use memmon_tests::{Agent, RedisServer, median, requests_per_second, require_root};

const REQUESTS: &str = "50000";
const ROUNDS: usize = 5;

/// CPU seconds (user + system) a process used so far.
fn cpu_seconds(pid: u32) -> f64 {
    memmon::process::Process::open(pid).ok().and_then(|p| p.cpu_time_ns()).map_or(0.0, |ns| ns as f64 / 1e9)
}

/// Peak resident memory (VmHWM) of a process, bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}



#[derive(Default)]
struct Row {
    sets: Vec<f64>,
    gets: Vec<f64>,
    /// The tracer's CPU seconds per benchmark run, and its peak RSS.
    cpu: Vec<f64>,
    rss: u64,
}

impl Row {
    fn run(&mut self, redis: &RedisServer, tracer: Option<u32>) {
        let before = tracer.map(cpu_seconds);
        let output = redis.benchmark(&["-t", "set,get", "-n", REQUESTS, "-r", "100000"]);
        self.sets.push(requests_per_second(&output, "SET"));
        self.gets.push(requests_per_second(&output, "GET"));
        if let (Some(pid), Some(before)) = (tracer, before) {
            self.cpu.push(cpu_seconds(pid) - before);
            self.rss = self.rss.max(peak_rss(pid));
        }
    }
}

/// heaptrack attached to `pid`; its interpreter process does the tracer's work.
struct Heaptrack {
    script: Child,
    interpreter: u32,
}

impl Heaptrack {
    fn attach(pid: u32, dir: &Path) -> Self {
        let mut script = Command::new("heaptrack")
            .args(["-p", &pid.to_string()])
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("heaptrack (Debian package heaptrack; cargo xtask bench installs it)");
        let mut lines = BufReader::new(script.stdout.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        while let Some(Ok(line)) = lines.next() {
            if line.contains("injection finished") {
                break;
            }
            assert!(Instant::now() < deadline, "heaptrack did not attach");
        }
        std::thread::spawn(move || for _ in lines {});
        let interpreter = find_process("heaptrack_inter").expect("heaptrack_interpret runs while heaptrack is attached");
        Self { script, interpreter }
    }
}

impl Drop for Heaptrack {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.script.id() as i32, libc::SIGINT) };
        let _ = self.script.wait();
    }
}

fn find_process(comm: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()).find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
    })
}

/// What is attached to redis-server for a row.
enum Setup {
    Untraced,
    /// `memmon agent` with these arguments.
    Agent(&'static [&'static str]),
    /// The always-on tier's kernel side alone, without the agent's work: the memory syscalls'
    /// tracepoints (enabling one sends every syscall on the host through the slow entry path).
    Tracepoints,
}

fn main() {
    require_root();
    let configs: [(&str, Setup); 4] = [
        ("untraced", Setup::Untraced),
        ("memmon agent (exact tier)", Setup::Agent(&[])),
        ("memmon agent --preset production", Setup::Agent(&["--preset", "production"])),
        ("syscall tracepoints alone (no agent)", Setup::Tracepoints),
    ];
    let mut rows: Vec<Row> = configs.iter().map(|_| Row::default()).collect();
    let redis = RedisServer::start();
    redis.benchmark(&["-t", "set,get", "-n", "10000", "-r", "100000"]); // warm-up
    for _ in 0..ROUNDS {
        for ((_, setup), row) in configs.iter().zip(rows.iter_mut()) {
            match setup {
                Setup::Untraced => row.run(&redis, None),
                Setup::Agent(args) => {
                    let agent = Agent::start(redis.pid(), args);
                    row.run(&redis, Some(agent.pid()));
                }
                Setup::Tracepoints => {
                    let options = TracerOptions { allocator_probes: false, ..TracerOptions::default() };
                    let _tracer = Tracer::attach(&[redis.pid()], options).expect("attach");
                    row.run(&redis, None);
                }
            }
        }
    }
    drop(redis);
    let dir = std::env::temp_dir().join(format!("memmon-bench-heaptrack-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let redis = RedisServer::start();
    redis.benchmark(&["-t", "set,get", "-n", "10000", "-r", "100000"]);
    let mut untraced_again = Row::default();
    for _ in 0..ROUNDS {
        untraced_again.run(&redis, None);
    }
    let mut heaptrack_row = Row::default();
    {
        let heaptrack = Heaptrack::attach(redis.pid(), &dir);
        for _ in 0..ROUNDS {
            heaptrack_row.run(&redis, Some(heaptrack.interpreter));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "\nredis-server (jemalloc, Unix socket) under redis-benchmark -t set,get -n {REQUESTS} -r 100000: medians of {ROUNDS} rounds"
    );
    println!(
        "{:<36} {:>10} {:>11} {:>10} {:>11} {:>14} {:>12}",
        "configuration", "SET/s", "× untraced", "GET/s", "× untraced", "tracer CPU s", "tracer RSS"
    );
    let print = |name: &str, row: &Row, baseline: &Row| {
        let (set, get) = (median(&row.sets), median(&row.gets));
        let (set0, get0) = (median(&baseline.sets), median(&baseline.gets));
        let cpu = if row.cpu.is_empty() { "-".to_string() } else { format!("{:.3}", median(&row.cpu)) };
        let rss = if row.rss == 0 { "-".to_string() } else { format!("{:.1} MiB", row.rss as f64 / 1048576.0) };
        println!("{name:<36} {set:>10.0} {:>11.2} {get:>10.0} {:>11.2} {cpu:>14} {rss:>12}", set / set0, get / get0);
    };
    for ((name, _), row) in configs.iter().zip(&rows) {
        print(name, row, &rows[0]);
    }
    print("untraced (a fresh server)", &untraced_again, &untraced_again);
    print("heaptrack -p (same fresh server)", &heaptrack_row, &untraced_again);
}
