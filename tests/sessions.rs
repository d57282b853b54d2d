//! Profiling sessions through the real agent and commands: the window, durations, several at
//! once, the size cap, a full disk, cleanup, refusal when disabled, and bad ids.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use memmon::profiles::{meta::ProfileMeta, pprof};
use memmon_tests::{Agent, Target, has_top_row, http, pprof_top, require_root};
use serde_json::Value;

/// A fresh profile directory for one test.
fn profile_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memmon-sessions-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn start_agent(target: &Target, dir: &Path, extra: &[&str]) -> Agent {
    let mut args = vec!["--profiling-output-dir", dir.to_str().unwrap(), "--metrics-update-interval", "1"];
    args.extend_from_slice(extra);
    Agent::start(target.pid(), &args)
}

fn json_command(agent: &Agent, command: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--format", "json"]);
    let (code, stdout, stderr) = agent.command(command, &all);
    assert_eq!(code, 0, "{command} {args:?} failed: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{command}: no JSON ({e}): {stdout}"))
}

fn start_profiling(agent: &Agent, args: &[&str]) -> String {
    let started = json_command(agent, "start-profiling", args);
    assert_eq!(started["state"], "running", "{started}");
    started["profile_id"].as_str().unwrap().to_string()
}

fn session(agent: &Agent, id: &str) -> Value {
    let status = agent.json("status");
    status["profiles"].as_array().unwrap().iter().find(|p| p["profile_id"] == id).cloned().unwrap_or_else(|| panic!("{id} not in {status}"))
}

/// Polls `status` until the session has ended.
fn wait_ended(agent: &Agent, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let info = session(agent, id);
        if info["state"] != "running" {
            return info;
        }
        assert!(Instant::now() < deadline, "{id} still running after {within:?}: {info}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn read_meta(file: &Path) -> ProfileMeta {
    let profile = pprof::decode(&std::fs::read(file).unwrap()).unwrap();
    ProfileMeta::from_comments(profile.comment.iter().map(|&i| profile.string_table[i as usize].as_str()))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_session_profiles_exactly_its_window() {
    require_root();
    let dir = profile_dir("window");
    let mut target = Target::start("ground_truth");
    let agent = start_agent(&target, &dir, &[]);
    target.run("leak"); // before the session: not in its profile
    let id = start_profiling(&agent, &[]);
    let file = dir.join(format!("{id}.pb.gz"));
    assert_eq!(session(&agent, &id)["file"], file.to_str().unwrap());
    assert!(file.exists(), "the first checkpoint is written at start");
    target.run("leak");
    target.run("churn");
    let (code, stdout, stderr) = agent.command("stop-profiling", &["--profile-id", &id]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(&format!("profile {id} finished (stopped on request)")), "{stdout}");
    let info = session(&agent, &id);
    assert_eq!(info["state"], "finished");
    assert_eq!(info["reason"], "stopped on request");
    assert_eq!((mode(&dir), mode(&file)), (0o700, 0o600));
    assert_eq!(info["size_bytes"], std::fs::metadata(&file).unwrap().len());

    // Only the second leak is the window's: 100 blocks, not 200.
    assert!(has_top_row(&pprof_top(&file, "inuse_space"), "104950B", "leak_exactly"), "{}", pprof_top(&file, "inuse_space"));
    assert!(has_top_row(&pprof_top(&file, "inuse_objects"), "100", "leak_exactly"));
    assert!(has_top_row(&pprof_top(&file, "alloc_space"), "104950B", "leak_exactly"));
    let allocated = pprof_top(&file, "alloc_space");
    assert!(has_top_row(&allocated, "352000B", "churn_everything"), "{allocated}");
    assert!(!pprof_top(&file, "inuse_space").contains("churn_everything"), "churn leaves nothing live");

    let meta = read_meta(&file);
    assert_eq!((meta.id.as_str(), meta.state.name(), meta.reason.as_str()), (id.as_str(), "finished", "stopped on request"));
    assert_eq!(meta.targets[0].pid, target.pid());
    assert!(!meta.timeline.is_empty() && meta.peaks().0 > 0, "a memory timeline with RSS: {meta:?}");
    // The live heap holds both leaks at the end; a timeline point taken mid-churn may add the
    // few blocks churn_everything holds at once (64 + 64 + 128 bytes at most).
    let heap_peak = meta.peaks().1;
    assert!((2 * 104_950..=2 * 104_950 + 256).contains(&heap_peak), "the live heap includes both leaks: {meta:?}");

    // Stopping again changes nothing; the status text lists the session.
    let again = json_command(&agent, "stop-profiling", &["--profile-id", &id]);
    assert_eq!(again["state"], "finished");
    let (_, status, _) = agent.command("status", &[]);
    assert!(status.contains(&id) && status.contains("finished"), "{status}");
    let (code, metrics) = http(&agent.url, "GET /metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("memmon_profiling_sessions{state=\"finished\"} 1"), "{metrics}");
    assert!(metrics.contains("memmon_profiling_sessions{state=\"running\"} 0"), "{metrics}");
    drop(agent);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_session_can_cover_one_of_the_agents_processes() {
    require_root();
    let dir = profile_dir("pids");
    let mut first = Target::start("ground_truth");
    let mut second = Target::start("ground_truth");
    let second_pid = second.pid().to_string();
    let agent = start_agent(&first, &dir, &["--pid", &second_pid]);
    let only_second = start_profiling(&agent, &["--pid", &second_pid]);
    let both = start_profiling(&agent, &[]);
    first.run("leak");
    second.run("calloc");
    for id in [&only_second, &both] {
        json_command(&agent, "stop-profiling", &["--profile-id", id]);
    }
    let file = dir.join(format!("{only_second}.pb.gz"));
    let inuse = pprof_top(&file, "inuse_space");
    assert!(has_top_row(&inuse, "10000B", "leak_calloc") && !inuse.contains("leak_exactly"), "{inuse}");
    assert_eq!(read_meta(&file).targets.iter().map(|t| t.pid).collect::<Vec<_>>(), [second.pid()]);
    let inuse = pprof_top(&dir.join(format!("{both}.pb.gz")), "inuse_space");
    assert!(has_top_row(&inuse, "10000B", "leak_calloc") && has_top_row(&inuse, "104950B", "leak_exactly"), "{inuse}");
    // A pid the agent does not trace is refused.
    let (code, _, stderr) = agent.command("start-profiling", &["--pid", "1"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("400") && stderr.contains("pid 1 is not traced by this agent"), "{stderr}");
    drop(agent);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sessions_end_at_their_duration_and_run_side_by_side() {
    require_root();
    let dir = profile_dir("duration");
    let mut target = Target::start("ground_truth");
    let agent = start_agent(&target, &dir, &[]);
    let short = start_profiling(&agent, &["--duration", "0.05"]); // 3 s
    let long = start_profiling(&agent, &[]);
    assert_eq!(session(&agent, &long)["duration_seconds"], 600.0, "10 minutes by default");
    assert_ne!(short, long);
    target.run("leak");
    let ended = wait_ended(&agent, &short, Duration::from_secs(10));
    assert_eq!(ended["state"], "finished");
    assert_eq!(ended["reason"], "duration reached");
    let window = ended["elapsed_seconds"].as_f64().unwrap();
    assert!((3.0..4.5).contains(&window), "a 3 s session covers 3 s (ticks are 250 ms): {window}");
    assert_eq!(ended["live_bytes"], 104_950, "{ended}");
    assert_eq!(session(&agent, &long)["state"], "running");

    target.run("calloc");
    // The agent stopping ends the running session with a last checkpoint.
    let (code, _, _) = agent.stop();
    assert_eq!(code, 0);
    let meta = read_meta(&dir.join(format!("{long}.pb.gz")));
    assert_eq!((meta.state.name(), meta.reason.as_str()), ("finished", "the agent stopped"));
    let long_file = dir.join(format!("{long}.pb.gz"));
    assert!(has_top_row(&pprof_top(&long_file, "inuse_space"), "10000B", "leak_calloc"));
    assert!(has_top_row(&pprof_top(&long_file, "inuse_space"), "104950B", "leak_exactly"));
    assert!(!pprof_top(&dir.join(format!("{short}.pb.gz")), "inuse_space").contains("leak_calloc"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_target_exiting_mid_session_ends_it_with_what_it_held() {
    require_root();
    let dir = profile_dir("exit");
    let mut target = Target::start("ground_truth");
    let agent = start_agent(&target, &dir, &[]);
    let id = start_profiling(&agent, &[]);
    target.run("leak");
    target.send("exit");
    target.wait();
    let ended = wait_ended(&agent, &id, Duration::from_secs(10));
    assert_eq!((ended["state"].as_str(), ended["reason"].as_str()), (Some("finished"), Some("every target exited")), "{ended}");
    assert_eq!(ended["live_bytes"], 104_950, "what was live when it exited: {ended}");
    let file = dir.join(format!("{id}.pb.gz"));
    assert!(has_top_row(&pprof_top(&file, "inuse_space"), "104950B", "leak_exactly"), "symbolized after exit too");
    // Nothing left to profile: a new session is refused.
    let (code, _, stderr) = agent.command("start-profiling", &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("409") && stderr.contains("every target has exited"), "{stderr}");
    drop(agent);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_size_cap_is_never_exceeded() {
    require_root();
    let dir = profile_dir("cap");
    let mut target = Target::start("many_sites");
    let cap = 16 * 1024;
    let agent = start_agent(&target, &dir, &["--max-profile-size-mb", &(cap as f64 / 1048576.0).to_string()]);
    let id = start_profiling(&agent, &[]);
    target.run("sites 10000"); // 10,000 distinct stacks: far more than 16 KiB of profile
    let ended = wait_ended(&agent, &id, Duration::from_secs(10));
    assert_eq!(ended["state"], "truncated", "{ended}");
    assert!(ended["reason"].as_str().unwrap().contains("MEMMON_MAX_PROFILE_SIZE_MB"), "{ended}");
    let file = dir.join(format!("{id}.pb.gz"));
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size <= cap, "{size} bytes > the {cap} byte cap");
    drop(agent);
    // A cap too small for even the first, empty, checkpoint: the session is refused outright.
    let agent = start_agent(&target, &dir, &["--max-profile-size-mb", "0.0001"]);
    let (code, _, stderr) = agent.command("start-profiling", &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("507") && stderr.contains("MEMMON_MAX_PROFILE_SIZE_MB"), "{stderr}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "nothing written");
    let meta = read_meta(&file);
    assert_eq!(meta.state.name(), "truncated", "the file says so too: {meta:?}");
    pprof_top(&file, "inuse_space"); // and is still a valid profile
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_full_disk_ends_the_session_cleanly() {
    require_root();
    let dir = profile_dir("full");
    std::fs::create_dir_all(&dir).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"]).arg(&dir).status().unwrap();
    assert!(mounted.success(), "mount tmpfs");
    let unmount = Unmount(dir.clone());
    let mut target = Target::start("ground_truth");
    let agent = start_agent(&target, &dir, &[]);
    let id = start_profiling(&agent, &[]);
    let first = std::fs::read(dir.join(format!("{id}.pb.gz"))).unwrap();
    // Fill the file system to the last byte.
    let filler = std::fs::File::create(dir.join("filler")).unwrap();
    let mut filler = std::io::BufWriter::new(filler);
    while std::io::Write::write_all(&mut filler, &[0u8; 4096]).is_ok() {}
    let _ = std::io::Write::flush(&mut filler);
    drop(filler);
    target.run("leak");
    let ended = wait_ended(&agent, &id, Duration::from_secs(10));
    assert_eq!(ended["state"], "failed", "{ended}");
    assert!(ended["reason"].as_str().unwrap().contains("No space left on device"), "{ended}");
    assert_eq!(std::fs::read(dir.join(format!("{id}.pb.gz"))).unwrap(), first, "the last checkpoint is intact");
    let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "no temporary file left behind: {leftovers:?}");
    // A new session cannot even write its first checkpoint: refused, nothing left behind.
    let (code, _, stderr) = agent.command("start-profiling", &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("507") && stderr.contains("No space left on device"), "{stderr}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
    assert_eq!(agent.json("status")["profiles"].as_array().unwrap().len(), 1);
    let (code, health, _) = agent.command("health-check", &["--format", "json"]);
    assert_eq!(code, 1, "degraded: {health}");
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["checks"].as_array().unwrap().iter().find(|c| c["name"] == "profile_directory").unwrap()["status"], "degraded");
    drop(agent);
    drop(unmount);
}

struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sets a file's (or a link's own) modification time `days` ago.
fn age(path: &Path, days: u64) {
    let status = Command::new("touch").args(["-h", "-d", &format!("{days} days ago")]).arg(path).status().unwrap();
    assert!(status.success());
}

#[test]
fn cleanup_removes_old_profiles_and_follows_no_link() {
    require_root();
    let dir = profile_dir("cleanup");
    std::fs::create_dir_all(&dir).unwrap();
    let name = |n: u32| format!("20261101T000000Z-{n:08x}.pb.gz");
    // Old already when the agent starts: its first tick cleans them up by itself.
    std::fs::write(dir.join(name(1)), b"old").unwrap();
    age(&dir.join(name(1)), 30);
    let target = Target::start("ground_truth");
    let agent = start_agent(&target, &dir, &[]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while dir.join(name(1)).exists() {
        assert!(Instant::now() < deadline, "the agent did not clean up at start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let outside = profile_dir("cleanup-outside");
    std::fs::write(&outside, b"precious").unwrap();
    age(&outside, 30);
    for n in [2, 3] {
        std::fs::write(dir.join(name(n)), b"old").unwrap();
        age(&dir.join(name(n)), 8);
    }
    std::fs::write(dir.join(name(4)), b"recent").unwrap();
    age(&dir.join(name(4)), 6);
    std::os::unix::fs::symlink(&outside, dir.join(name(5))).unwrap();
    age(&dir.join(name(5)), 30);
    std::fs::write(dir.join("notes.txt"), b"not a profile").unwrap();
    age(&dir.join("notes.txt"), 30);

    let (code, stdout, stderr) = agent.command("cleanup-profiles", &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("removed 2 profile(s) older than 7 days"), "{stdout}");
    assert!(stdout.contains(&format!("left alone {}: a symbolic link", name(5))), "{stdout}");
    assert!(!dir.join(name(2)).exists() && !dir.join(name(3)).exists());
    assert!(dir.join(name(4)).exists() && dir.join("notes.txt").exists());
    assert_eq!(std::fs::read(&outside).unwrap(), b"precious", "the link's target is untouched");

    let cleanup = json_command(&agent, "cleanup-profiles", &["--older-than-days", "5"]);
    assert_eq!(cleanup["removed"][0]["file"], name(4), "{cleanup}");
    assert_eq!(cleanup["removed"].as_array().unwrap().len(), 1);
    std::fs::remove_file(&outside).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn at_most_eight_sessions_run_at_once() {
    require_root();
    let dir = profile_dir("many");
    let target = Target::start("ground_truth");
    let agent = start_agent(&target, &dir, &[]);
    let ids: Vec<String> = (0..8).map(|_| start_profiling(&agent, &[])).collect();
    let (code, _, stderr) = agent.command("start-profiling", &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("429") && stderr.contains("8 profiling sessions are already running"), "{stderr}");
    json_command(&agent, "stop-profiling", &["--profile-id", &ids[0]]);
    start_profiling(&agent, &[]); // room again
    drop(agent);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn profiling_disabled_is_refused_clearly() {
    require_root();
    let target = Target::start("ground_truth");
    let agent = Agent::start(target.pid(), &["--profiling-enabled", "false"]);
    let (code, _, stderr) = agent.command("start-profiling", &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains("403") && stderr.contains("MEMMON_PROFILING_ENABLED=false"), "{stderr}");
    let (status, body) = agent.api("POST /profiles/cleanup");
    assert_eq!(status, 403, "{body}");
    let (code, status, _) = agent.command("status", &[]);
    assert_eq!(code, 0);
    assert!(status.contains("profiling: disabled"), "{status}");
}

#[test]
fn bad_ids_are_refused_and_nothing_is_read_or_deleted() {
    require_root();
    let dir = profile_dir("ids");
    let target = Target::start("ground_truth");
    let agent = start_agent(&target, &dir, &[]);
    // A profile-looking file just outside the directory, that a traversal would reach.
    let outside = dir.parent().unwrap().join("20261101T000000Z-00000001.pb.gz");
    std::fs::write(&outside, b"secret").unwrap();
    for (request, expected) in [
        ("POST /profiles/..%2F20261101T000000Z-00000001/stop", 400),
        ("GET /profiles/..%2F20261101T000000Z-00000001/pprof", 400),
        ("GET /profiles/%2e%2e/pprof", 400),
        ("GET /profiles/20261101T000000Z%0000000001/pprof", 400),
        ("POST /profiles/20261101T000000Z-0000000G/stop", 400),
        ("GET /profiles/not-an-id", 400),
        ("GET /profiles/%FF%FE/pprof", 400),
        ("GET /profiles/../20261101T000000Z-00000001.pb.gz", 404),
        ("POST /profiles/20261101T000000Z-00000001/stop", 404),
        ("GET /profiles/20261101T000000Z-00000001/pprof", 404),
    ] {
        let (status, body) = agent.api(request);
        assert_eq!(status, expected, "{request}: {body}");
        assert!(!body.contains("secret"), "{request}: {body}");
        let error: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{request}: not JSON: {body}"));
        assert!(error["error"].is_string(), "{request}: {body}");
    }
    let (status, body) = agent.api("GET /profiles/..%2Fx/pprof");
    assert!(body.contains("invalid profile id") && body.contains("`/`"), "{status} {body}");
    let (code, _, stderr) = agent.command("stop-profiling", &["--profile-id", "../../etc/passwd"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("invalid profile id") && stderr.contains("`/`"), "{stderr}");
    assert_eq!(std::fs::read(&outside).unwrap(), b"secret", "nothing deleted");
    // A good id works end to end, download included.
    let id = start_profiling(&agent, &["--duration", "1"]);
    let (status, body) = agent.api(&format!("GET /profiles/{id}"));
    assert_eq!(status, 200, "{body}");
    let (status, _) = agent.api(&format!("GET /profiles/{id}/pprof"));
    assert_eq!(status, 200);
    std::fs::remove_file(&outside).unwrap();
    drop(agent);
    std::fs::remove_dir_all(&dir).unwrap();
}
