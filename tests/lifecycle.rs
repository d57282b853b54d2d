//! A target's life under the agent: exec (into our own second program and into Debian's
//! /bin/sleep), a pid reused by a new process, and a target under a seccomp allowlist. Ground
//! truth: what the targets' commands allocate (tests/targets/lifecycle.c, lifecycle_second.c).

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use memmon_tests::{metric_line, Agent, Target, build_shared_library_linked, build_target, http, memmon_binary, require_root};
use serde_json::Value;

const FAST: &[&str] = &["--metrics-update-interval", "1", "--leak-check-interval", "1"];

/// Polls `status` until the agent has seen `execs` execs of its first target.
fn wait_for_execs(agent: &Agent, execs: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = agent.json("status");
        if status["targets"][0]["execs"].as_u64() == Some(execs) {
            return status;
        }
        assert!(Instant::now() < deadline, "the agent never saw exec {execs}: {status:#}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// Innermost function names of every site in a memory summary's top sites.
fn top_functions(summary: &Value) -> Vec<String> {
    summary["top_sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["site"]["frames"][0]["function"].as_str().map(str::to_string))
        .collect()
}


#[test]
fn exec_into_another_program_drops_the_old_image() {
    require_root();
    let dir = std::env::temp_dir().join(format!("memmon-lifecycle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut target = Target::start("lifecycle");
    let mut args = FAST.to_vec();
    args.extend(["--profiling-output-dir", dir.to_str().unwrap()]);
    let agent = Agent::start(target.pid(), &args);
    target.run("keep");
    let summary = agent.json("update-metrics");
    assert_eq!((summary["live_bytes"].as_u64(), summary["total_objects"].as_u64()), (Some(100_000), Some(100)), "{summary:#}");
    let started = agent.json("start-profiling");
    let profile_id = started["profile_id"].as_str().unwrap().to_string();

    let second = build_target("lifecycle_second");
    assert_eq!(target.request(&format!("exec {}", second.display())), "ready");
    let status = wait_for_execs(&agent, 1);
    target.run("keep");

    let summary = agent.json("update-metrics");
    assert_eq!((summary["live_bytes"].as_u64(), summary["total_objects"].as_u64()), (Some(21_000), Some(30)), "{summary:#}");
    assert_eq!(top_functions(&summary), ["second_image_keeps"], "{summary:#}");
    let process = &summary["processes"][0];
    assert_eq!(process["comm"], "lifecycle_secon"); // comm is 15 characters
    assert_eq!((process["discarded_at_exec_bytes"].as_u64(), process["discarded_at_exec_blocks"].as_u64()), (Some(100_000), Some(100)));
    let status_target = &status["targets"][0];
    assert_eq!(status_target["comm"], "lifecycle_secon", "{status:#}");
    assert_eq!(status_target["discarded_at_exec_bytes"], 100_000);
    assert_eq!(status_target["discarded_at_exec_blocks"], 100);
    assert_eq!(status_target["recent_execs"][0]["from_comm"], "lifecycle");
    assert!(status_target["recent_execs"][0]["allocator"].as_str().unwrap().starts_with("glibc allocator"), "{status:#}");
    let (_, text, _) = agent.command("status", &[]);
    assert!(text.contains("lifecycle_secon") && text.contains("discarded at exec: 100000 B in 100 blocks"), "{text}");
    let (_, text, _) = agent.command("memory-summary", &[]);
    assert!(text.contains("pid ") && text.contains("(lifecycle_secon)") && text.contains("discarded at exec"), "{text}");
    let (_, metrics) = http(&agent.url, "GET /metrics");
    let labels = format!("{{comm=\"lifecycle_secon\",pid=\"{}\"}}", target.pid());
    assert_eq!(metric_line(&metrics, &format!("memmon_heap_live_bytes{labels}")), Some(21_000.0), "{metrics}");
    assert_eq!(metric_line(&metrics, &format!("memmon_exec_discarded_bytes_total{labels}")), Some(100_000.0));
    assert_eq!(metric_line(&metrics, &format!("memmon_exec_discarded_blocks_total{labels}")), Some(100.0));
    assert_eq!(metric_line(&metrics, &format!("memmon_execs_total{labels}")), Some(1.0));
    assert!(!metrics.contains("comm=\"lifecycle\""), "the old name is gone from every label: {metrics}");

    // A few leak checks on the new image: nothing of the old one is ever a leak.
    thread::sleep(Duration::from_secs(3));
    let leaks = agent.json("check-leaks");
    let named: Vec<&str> = leaks["leak_indicators"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["site"]["frames"].as_array().into_iter().flatten())
        .filter_map(|f| f["function"].as_str())
        .collect();
    assert!(!named.contains(&"first_image_keeps"), "{leaks:#}");

    let (code, stdout, stderr) = agent.command("stop-profiling", &["--profile-id", &profile_id, "--format", "json"]);
    assert_eq!(code, 0, "{stderr}");
    let stopped: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(stopped["execs"][0]["discarded_bytes"], 100_000, "{stopped:#}");
    assert_eq!(stopped["execs"][0]["to_comm"], "lifecycle_secon");
    assert_eq!(stopped["live_bytes"], 21_000, "{stopped:#}");
    let file = dir.join(format!("{profile_id}.pb.gz"));
    let report = Command::new(memmon_binary()).args(["report", "summary"]).arg(&file).output().unwrap();
    let report = String::from_utf8_lossy(&report.stdout);
    assert!(report.contains("exec'ed at +") && report.contains("lifecycle → lifecycle_secon") && report.contains("100000 B in 100 blocks"), "{report}");
    let events_lost: u64 = agent.json("status")["events_lost"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(reason, _)| *reason != "stack_capture_failed") // the loader's first moments
        .map(|(_, n)| n.as_u64().unwrap())
        .sum();
    assert_eq!(events_lost, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same program exec'ed without address randomization gets the very addresses the old
/// image's blocks had: the new image's allocations and frees must never meet the old blocks.
#[test]
fn a_new_image_at_the_same_addresses_never_frees_old_blocks() {
    require_root();
    let mut target = Target::start_without_aslr("lifecycle");
    let agent = Agent::start(target.pid(), FAST);
    target.run("keep");
    let old_address = target.request("where");
    let binary = build_target("lifecycle");
    // Straight on, before the agent can have noticed the exec: the kernel keeps them apart.
    assert_eq!(target.request(&format!("exec {}", binary.display())), "ready");
    target.run("keep");
    assert_eq!(target.request("where"), old_address, "the test needs the new image to reuse the old addresses");
    wait_for_execs(&agent, 1);
    let summary = agent.json("update-metrics");
    assert_eq!((summary["live_bytes"].as_u64(), summary["total_objects"].as_u64()), (Some(100_000), Some(100)), "{summary:#}");
    target.run("free-kept");
    let summary = agent.json("update-metrics");
    assert_eq!((summary["live_bytes"].as_u64(), summary["total_objects"].as_u64()), (Some(0), Some(0)), "{summary:#}");
    let status = agent.json("status");
    assert_eq!(status["targets"][0]["discarded_at_exec_bytes"], 100_000, "{status:#}");
    assert_eq!(status["events_lost"]["missed_free"], 0, "{status:#}");
}

/// `memmon run`'s count of what Debian's sleep holds is the ground truth for what the agent
/// must show once the target has exec'ed into it.
#[test]
fn exec_into_debian_sleep() {
    require_root();
    let run = Command::new(memmon_binary()).args(["run", "--format", "json", "--", "/bin/sleep", "0"]).output().unwrap();
    let run: Value = serde_json::from_slice(&run.stderr).expect("memmon run printed its JSON report");
    let (bytes, blocks) = (run["in_use_at_exit"]["bytes"].as_u64().unwrap(), run["in_use_at_exit"]["blocks"].as_u64().unwrap());
    assert!(blocks > 0, "{run:#}");

    let mut target = Target::start("lifecycle");
    let agent = Agent::start(target.pid(), FAST);
    target.run("keep");
    target.send("exec /bin/sleep 60");
    let status = wait_for_execs(&agent, 1);
    assert_eq!(status["targets"][0]["comm"], "sleep", "{status:#}");
    assert_eq!(status["targets"][0]["discarded_at_exec_bytes"], 100_000);
    assert_eq!(status["targets"][0]["discarded_at_exec_blocks"], 100);
    // sleep allocates at start, then sleeps: once it is asleep its heap no longer moves.
    let deadline = Instant::now() + Duration::from_secs(20);
    let summary = loop {
        let summary = agent.json("update-metrics");
        if summary["total_objects"].as_u64() == Some(blocks) || Instant::now() > deadline {
            break summary;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!((summary["live_bytes"].as_u64(), summary["total_objects"].as_u64()), (Some(bytes), Some(blocks)), "{summary:#}");
    assert!(!top_functions(&summary).iter().any(|f| f == "first_image_keeps"), "{summary:#}");
    assert_eq!(summary["processes"][0]["comm"], "sleep");
}

/// Starts `program` with the pid `pid` (free again: its process has exited), by setting the
/// kernel's last pid just below it; other processes on the machine may take it first, so this
/// retries.
fn spawn_with_pid(pid: u32, program: &std::path::Path) -> Target {
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).expect("writing ns_last_pid (needs root)");
        let target = Target::start_program(program.to_str().unwrap(), &[]);
        if target.pid() == pid {
            return target;
        }
    }
    panic!("pid {pid} was never handed out again");
}

#[test]
fn a_reused_pid_is_never_the_target() {
    require_root();
    let mut target = Target::start("lifecycle");
    let pid = target.pid();
    let agent = Agent::start(pid, FAST);
    target.run("keep");
    let before = agent.json("update-metrics");
    let process = before["processes"][0].clone();
    target.send("exit");
    target.wait();
    // The newcomer maps its libraries and heap and allocates, under the target's pid.
    let mut newcomer = spawn_with_pid(pid, &build_target("lifecycle_second"));
    newcomer.run("keep");
    thread::sleep(Duration::from_millis(1500));
    let after = agent.json("update-metrics");
    assert_eq!(after["live_bytes"], 100_000, "{after:#}");
    assert_eq!(after["total_objects"], 100);
    let now = &after["processes"][0];
    assert_eq!(now["alive"], false, "{after:#}");
    assert_eq!(now["comm"], "lifecycle");
    for field in ["rss_bytes", "program_mapped_bytes", "allocator_mapped_bytes", "brk_heap_bytes"] {
        assert_eq!(now[field], process[field], "{field}: the newcomer's memory was counted as the target's: {after:#}");
    }
    let status = agent.json("status");
    assert_eq!(status["targets"][0]["alive"], false, "{status:#}");
    assert_eq!(status["targets"][0]["execs"], 0);
    let (code, health, _) = agent.command("health-check", &["--format", "json"]);
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!((code, health["status"].as_str()), (2, Some("failed")), "every target exited: {health:#}");
}

/// Return probes end with the `uretprobe` syscall on this kernel; a seccomp policy that does
/// not allow it must not get the target killed (6.18 lets it through seccomp; memmon checks
/// that on a child of its own before probing such a target, and refuses where it would kill).
#[test]
fn targets_under_seccomp_are_traced_unharmed() {
    require_root();
    let binary = build_target("seccomp");
    for (policy, described) in [("strict", "strict"), ("allowlist", "filter (1 installed)")] {
        let mut target = Target::start_program(binary.to_str().unwrap(), &[policy]);
        let status = std::fs::read_to_string(format!("/proc/{}/status", target.pid())).unwrap();
        let mode = if policy == "strict" { "1" } else { "2" };
        assert!(status.contains(&format!("Seccomp:\t{mode}\n")), "{status}");
        let agent = Agent::start(target.pid(), FAST);
        target.run("leak");
        target.run("leak"); // still alive, and answering, after its traced returns
        let summary = agent.json("update-metrics");
        assert_eq!((summary["live_bytes"].as_u64(), summary["total_objects"].as_u64()), (Some(200_000), Some(200)), "{policy}: {summary:#}");
        assert_eq!(top_functions(&summary), ["leak_under_seccomp"]);
        let status = agent.json("status");
        let seccomp = status["targets"][0]["seccomp"].as_str().unwrap_or_default().to_string();
        assert!(seccomp.starts_with(described) && seccomp.contains("return probes checked"), "{policy}: {status:#}");
        let (_, text, _) = agent.command("status", &[]);
        assert!(text.contains(&format!("seccomp: {described}")), "{text}");
        target.send("exit");
        target.wait();
    }
}

#[test]
fn a_library_with_its_own_allocator_loaded_after_attach_is_probed_within_one_interval() {
    require_root();
    let plugin = build_shared_library_linked("plugin_mimalloc", &["/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"]);
    let mut target = Target::start("dlopen");
    let agent = Agent::start(target.pid(), FAST);
    let probes = |agent: &Agent| agent.json("status")["targets"][0]["probes"].as_str().unwrap().to_string();
    assert!(!probes(&agent).contains("libmimalloc"), "{}", probes(&agent));

    target.run(&format!("load {}", plugin.display()));
    let loaded = Instant::now();
    while !probes(&agent).contains("libmimalloc.so.2") {
        assert!(loaded.elapsed() < Duration::from_secs(1), "libmimalloc not probed within one interval (1 s): {}", probes(&agent));
        thread::sleep(Duration::from_millis(10));
    }
    eprintln!("libmimalloc probed {:?} after the dlopen returned", loaded.elapsed());
    // glibc, the process' own allocator, stays probed beside it.
    assert!(probes(&agent).starts_with("libc.so.6: malloc"), "{}", probes(&agent));

    // 4242 bytes from mi_malloc, which glibc never sees: exact, at the plugin's call path.
    target.run("alloc");
    let summary = agent.json("update-metrics");
    let site = summary["top_sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["site"]["frames"][0]["function"] == "plugin_allocate")
        .unwrap_or_else(|| panic!("no site at plugin_allocate: {summary:#}"));
    assert_eq!((site["live_bytes"].as_u64(), site["live_allocations"].as_u64()), (Some(4242), Some(1)), "{site:#}");
    let path: Vec<&str> = site["site"]["frames"].as_array().unwrap().iter().take(4).map(|f| f["function"].as_str().unwrap()).collect();
    assert_eq!(path, ["plugin_allocate", "plugin_entry", "call_plugin", "main"], "{site:#}");
    assert_eq!(site["site"]["truncated"], false, "{site:#}");

    // mi_free through the same probes: nothing of it stays live.
    target.run("release");
    let summary = agent.json("update-metrics");
    let held: u64 = summary["top_sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["site"]["frames"][0]["function"] == "plugin_allocate")
        .map(|s| s["live_bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(held, 0, "{summary:#}");
    let (code, _, stderr) = agent.stop();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("mapped code with allocator functions; probing libmimalloc.so.2"), "{stderr}");
}
