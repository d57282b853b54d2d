//! `memmon run -- CMD`: the exit report against valgrind's memcheck on real programs from
//! Debian, against ground truth on `targets/launch.c`, execs, forks, signals, exit codes,
//! suppressions, the README's CI recipe, and bad input.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use memmon_tests::{build_target, memmon_binary, real_programs::real_program, require_root};
use serde_json::Value;

/// A scratch directory of this test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memmon-launch-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The environment of a command: ours plus `extra`, or (`Only`) exactly the given variables.
enum Env<'a> {
    Plus(&'a [(String, String)]),
    Only(&'a [(String, String)]),
}

impl Env<'_> {
    fn apply<'c>(&self, command: &'c mut Command) -> &'c mut Command {
        let (Env::Plus(vars) | Env::Only(vars)) = self;
        if let Env::Only(_) = self {
            command.env_clear();
        }
        command.envs(vars.iter().map(|(k, v)| (k, v)))
    }
}

/// `memmon run ARGS -- CMD` with extra environment, stdin from /dev/null; returns its output.
fn memmon_run(args: &[&str], command: &[&str], env: &[(String, String)], dir: &Path) -> Output {
    memmon_run_in(args, command, Env::Plus(env), dir)
}

fn memmon_run_in(args: &[&str], command: &[&str], env: Env, dir: &Path) -> Output {
    env.apply(&mut Command::new(memmon_binary()))
        .arg("run")
        .args(args)
        .arg("--")
        .args(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run memmon")
}

/// `memmon run --format json --output FILE ARGS -- CMD`: (output, the JSON report).
fn memmon_json(args: &[&str], command: &[&str], env: &[(String, String)], dir: &Path) -> (Output, Value) {
    memmon_json_in(args, command, Env::Plus(env), dir)
}

fn memmon_json_in(args: &[&str], command: &[&str], env: Env, dir: &Path) -> (Output, Value) {
    let report = dir.join(format!("report-{}.json", command.join("_").replace(['/', ' ', '\''], "")).chars().take(60).collect::<String>());
    let mut all = vec!["--format", "json", "--output", report.to_str().unwrap()];
    all.extend_from_slice(args);
    let output = memmon_run_in(&all, command, env, dir);
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|err| panic!("no report ({err}); memmon said: {}", String::from_utf8_lossy(&output.stderr)));
    (output, serde_json::from_str(&text).unwrap())
}

/// valgrind's HEAP SUMMARY: (in-use bytes, in-use blocks, allocs, frees, bytes allocated).
type Summary = (u64, u64, u64, u64, u64);

fn number(text: &str) -> u64 {
    text.replace(',', "").parse().unwrap_or_else(|_| panic!("not a number: {text}"))
}

fn valgrind(command: &[&str], env: Env, dir: &Path) -> Summary {
    let output = env
        .apply(&mut Command::new("valgrind"))
        .args(["--run-libc-freeres=no", "--run-cxx-freeres=no"])
        .args(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("valgrind (Debian package valgrind; cargo xtask setup installs it)");
    let text = String::from_utf8_lossy(&output.stderr);
    let field = |marker: &str| -> Vec<u64> {
        let line = text.lines().find(|l| l.contains(marker)).unwrap_or_else(|| panic!("valgrind said no {marker:?}:\n{text}"));
        let rest = &line[line.find(marker).unwrap() + marker.len()..];
        rest.split_whitespace().filter(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit())).map(number).collect()
    };
    let in_use = field("in use at exit:");
    let total = field("total heap usage:");
    (in_use[0], in_use[1], total[0], total[1], total[2])
}

fn summary_of(json: &Value) -> Summary {
    let n = |v: &Value| v.as_u64().unwrap();
    (
        n(&json["in_use_at_exit"]["bytes"]),
        n(&json["in_use_at_exit"]["blocks"]),
        n(&json["total_heap_usage"]["allocs"]),
        n(&json["total_heap_usage"]["frees"]),
        n(&json["total_heap_usage"]["bytes_allocated"]),
    )
}

/// The environment valgrind gives its program when started with `env` in `dir`, with LD_PRELOAD
/// (its own preloads, which must not load into a native run) replaced by a variable of the same
/// length: programs that copy their environment (perl's %ENV, git) allocate for each variable,
/// and allocate the same under memmon with this environment. valgrind also adds PWD, its working
/// directory, so this must run where the command will.
fn as_valgrind_gives_it(env: &[(String, String)], dir: &Path) -> Vec<(String, String)> {
    let output =
        Env::Only(env).apply(&mut Command::new("valgrind")).args(["-q", "/usr/bin/env"]).current_dir(dir).output().expect("valgrind");
    let given: Vec<(String, String)> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (if name == "LD_PRELOAD" { "XD_PRELOAD" } else { name }.to_string(), value.to_string()))
        .collect();
    let names: HashMap<&str, &str> = given.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for (name, _) in env {
        assert!(names.contains_key(name.as_str()), "valgrind dropped {name} from the environment");
    }
    given
}

/// A small, fixed environment for the comparisons (the test harness' own, with names such as
/// CARGO_BIN_EXE_memmon-bench that valgrind drops, would make the two runs differ).
fn comparison_environment(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = ["PATH", "HOME", "LANG", "LC_ALL", "TERM"]
        .iter()
        .filter_map(|name| std::env::var(name).ok().map(|value| (name.to_string(), value)))
        .collect();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// memmon's exit report equals valgrind's HEAP SUMMARY for the same command in the same
/// environment (valgrind's additions included): in use at exit, and every total.
fn same_as_valgrind(name: &str) {
    require_root();
    let program = real_program(name);
    let command = program.command();
    let dir = scratch(name);
    program.prepare(&dir);
    let env = comparison_environment(program.env);
    let oracle = valgrind(&command, Env::Only(&env), &dir);
    let native_env = as_valgrind_gives_it(&env, &dir);
    let (output, json) = memmon_json_in(&[], &command, Env::Only(&native_env), &dir);
    assert!(output.status.success(), "{name} under memmon: {:?}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    let lost: u64 = json["events_lost"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(lost, 0, "{name}: events lost: {}", json["events_lost"]);
    let memmon = summary_of(&json);
    eprintln!("{name}: valgrind {oracle:?}, memmon {memmon:?} (in use bytes, blocks; allocs, frees, bytes allocated)");
    assert_eq!(memmon, oracle, "{name}: memmon (left) against valgrind's HEAP SUMMARY (right)");
    assert!(oracle.1 > 0, "{name} leaves blocks in use at exit, or the comparison proves little");
    // Sites are symbolized after the process is gone, from the map read at its exit.
    let top = &json["top_sites"][0]["site"]["frames"];
    assert!(top.as_array().is_some_and(|f| f.iter().any(|f| f["module"].as_str().is_some_and(|m| !m.is_empty()))), "{top}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sort_numbers_as_valgrind_counts() {
    same_as_valgrind("sort");
}

/// Perl copies its environment into %ENV, so this one needs valgrind's environment exactly,
/// PWD included (see `as_valgrind_gives_it`).
#[test]
fn perl_hash_as_valgrind_counts() {
    same_as_valgrind("perl");
}

#[test]
fn python_script_as_valgrind_counts() {
    same_as_valgrind("python");
}

#[test]
fn tcl_dict_as_valgrind_counts() {
    same_as_valgrind("tcl");
}

#[test]
fn git_version_as_valgrind_counts() {
    same_as_valgrind("git");
}

/// launch.c's ground truth (see the target).
const LEAK: (u64, u64, u64, u64, u64) = (928, 5, 16, 11, 1312);

fn launch_target() -> String {
    build_target("launch").to_str().unwrap().to_string()
}

#[test]
fn ground_truth_report_text_and_json() {
    require_root();
    let dir = scratch("truth");
    let target = launch_target();
    let (output, json) = memmon_json(&["--top", "3"], &[&target, "leak", "3"], &[], &dir);
    assert_eq!(output.status.code(), Some(3), "the command's exit code passes through");
    assert_eq!(summary_of(&json), LEAK);
    assert_eq!(json["exit_code"], 3);
    assert_eq!(json["signal"], Value::Null);
    assert_eq!(json["leaked"], serde_json::json!({"bytes": 928, "blocks": 5}));
    let sites = json["top_sites"].as_array().unwrap();
    assert_eq!(sites.len(), 3);
    // gcc unrolls the loop of three malloc(100): five call sites, each its own site.
    assert_eq!(json["live_sites"], 5);
    assert_eq!((sites[0]["live_bytes"].as_u64(), sites[0]["live_allocations"].as_u64()), (Some(500), Some(1)));
    assert_eq!((sites[1]["live_bytes"].as_u64(), sites[1]["allocations"].as_u64()), (Some(128), Some(1)));
    assert_eq!((sites[2]["live_bytes"].as_u64(), sites[2]["live_allocations"].as_u64()), (Some(100), Some(1)));
    for site in sites {
        let frames = site["site"]["frames"].as_array().unwrap();
        assert_eq!(frames[0]["function"], "leak_here", "{site}");
        assert!(frames[0]["file"].as_str().unwrap().ends_with("launch.c"));
        assert!(frames.iter().any(|f| f["function"] == "main"), "{site}");
        assert_eq!(site["suppressed_by"], Value::Null);
    }
    // The same numbers in text, on stderr, as valgrind words them; and valgrind agrees.
    let output = memmon_run(&[], &[&target, "leak"], &[], &dir);
    let text = String::from_utf8_lossy(&output.stderr);
    let pid = text.split("==").nth(1).unwrap();
    assert!(text.contains(&format!("=={pid}==     in use at exit: 928 bytes in 5 blocks\n")), "{text}");
    assert!(text.contains(&format!("=={pid}==   total heap usage: 16 allocs, 11 frees, 1,312 bytes allocated\n")), "{text}");
    assert!(text.contains("500 bytes in 1 blocks still in use at exit"), "{text}");
    assert!(text.contains("    at leak_here (") && text.contains("    by main ("), "{text}");
    assert_eq!(valgrind(&[&target, "leak"], Env::Plus(&[]), &dir), LEAK, "valgrind sees the target's ground truth too");
}

#[test]
fn stdio_and_exit_code_pass_through() {
    require_root();
    let mut child = Command::new(memmon_binary())
        .args(["run", "--output", "/dev/null", "--", &launch_target(), "echo", "7"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut stdin = child.stdin.take().unwrap();
    let writer = {
        let input = input.clone();
        std::thread::spawn(move || stdin.write_all(&input).unwrap())
    };
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert_eq!(output.stdout, input, "stdin reaches the command and its stdout is memmon's, byte for byte");
    assert_eq!(output.status.code(), Some(7));
    assert!(output.stderr.is_empty(), "the report went to --output: {}", String::from_utf8_lossy(&output.stderr));
}

#[test]
fn a_command_killed_by_a_signal_still_gets_its_report() {
    require_root();
    let dir = scratch("segv");
    let (output, json) = memmon_json(&[], &[&launch_target(), "segv"], &[], &dir);
    assert_eq!(output.status.code(), Some(128 + 11));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("was killed by signal 11 (SIGSEGV); exit code 139"), "{stderr}");
    assert_eq!(json["signal"], "SIGSEGV");
    assert_eq!(json["exit_code"], Value::Null);
    assert_eq!(summary_of(&json), LEAK);
}

#[test]
fn execs_are_followed_and_the_report_covers_the_last_image() {
    require_root();
    let dir = scratch("exec");
    // dash allocates, then execs the target: only the target's heap is in the report.
    let script = format!("x=$(echo warm); exec {} leak", launch_target());
    let (output, json) = memmon_json(&[], &["/bin/sh", "-c", &script], &[], &dir);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(summary_of(&json), LEAK);
    assert_eq!(json["command"][1], "leak", "the command line of the image that exited: {}", json["command"]);
}

#[test]
fn forks_are_followed_on_request() {
    require_root();
    let dir = scratch("fork");
    let target = launch_target();
    let (_, json) = memmon_json(&["--follow-forks"], &[&target, "fork"], &[], &dir);
    assert_eq!(summary_of(&json).0, LEAK.0 + 1000, "the parent: leak_here and parent_leak");
    let children = json["children"].as_array().expect("a report for the forked child");
    assert_eq!(children.len(), 1);
    assert_eq!(children[0]["in_use_at_exit"], serde_json::json!({"bytes": 2000, "blocks": 1}), "what the child allocated itself");
    assert_eq!(children[0]["top_sites"][0]["site"]["frames"][0]["function"], "child_leak");
    assert_eq!(children[0]["exit_code"], 0);
    let (_, json) = memmon_json(&[], &[&target, "fork"], &[], &dir);
    assert_eq!(summary_of(&json).0, LEAK.0 + 1000);
    assert!(json.get("children").is_none(), "without --follow-forks the child is not traced");
}

#[test]
fn suppressions_and_the_error_exit_code() {
    require_root();
    let dir = scratch("suppress");
    let target = launch_target();
    let supp = dir.join("memmon.supp");
    std::fs::write(&supp, "# the calloc'd table is freed by the OS\nleak:^leak_here$\n").unwrap();
    let supp = supp.to_str().unwrap();
    let leaked = memmon_run(&["--error-exitcode", "42"], &[&target, "leak"], &[], &dir);
    assert_eq!(leaked.status.code(), Some(42));
    let stderr = String::from_utf8_lossy(&leaked.stderr);
    assert!(stderr.contains("memmon: 928 bytes in 5 blocks in use at exit, over --leak-threshold 0: exit code 42"), "{stderr}");
    let under = memmon_run(&["--error-exitcode", "42", "--leak-threshold", "928"], &[&target, "leak", "5"], &[], &dir);
    assert_eq!(under.status.code(), Some(5), "at the threshold: the command's own code");
    let (output, json) = memmon_json(&["--error-exitcode", "42", "--suppressions", supp], &[&target, "leak"], &[], &dir);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(json["suppressed"], serde_json::json!({"bytes": 928, "blocks": 5}));
    assert_eq!(json["leaked"], serde_json::json!({"bytes": 0, "blocks": 0}));
    assert_eq!(json["in_use_at_exit"]["bytes"], 928, "in use at exit is valgrind's number, suppressed or not");
    assert!(json["top_sites"][0]["suppressed_by"].as_str().unwrap().starts_with("leak:^leak_here$ ("));
    // By module: the target's file name.
    std::fs::write(dir.join("module.supp"), "leak:launch\n").unwrap();
    let by_module = memmon_run(&["--error-exitcode", "42", "--suppressions", dir.join("module.supp").to_str().unwrap()], &[&target, "leak"], &[], &dir);
    assert_eq!(by_module.status.code(), Some(0));
    std::fs::write(dir.join("bad.supp"), "leak:ok\nrace:foo\n").unwrap();
    let bad = memmon_run(&["--suppressions", dir.join("bad.supp").to_str().unwrap()], &[&target, "leak"], &[], &dir);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad.supp:2: unknown suppression kind \"race\""));
}

#[test]
fn the_pprof_profile_holds_the_leak() {
    require_root();
    let dir = scratch("pprof");
    let profile = dir.join("run.pb.gz");
    let output = memmon_run(&["--output", "/dev/null", "--profile", profile.to_str().unwrap()], &[&launch_target(), "leak"], &[], &dir);
    assert!(output.status.success());
    let top = memmon_tests::pprof_top(&profile, "inuse_space");
    assert!(memmon_tests::has_top_row(&top, "928B", "leak_here"), "{top}");
    let objects = memmon_tests::pprof_top(&profile, "alloc_objects");
    assert!(memmon_tests::has_top_row(&objects, "10", "churn"), "{objects}");
}

/// The README's CI recipe, on a leaking and a clean binary.
#[test]
fn the_readme_ci_recipe() {
    require_root();
    let dir = scratch("ci");
    let readme = std::fs::read_to_string(memmon_tests::workspace_root().join("README.md")).unwrap();
    let start = readme.find("<!-- ci-recipe -->").expect("README has the CI recipe") + "<!-- ci-recipe -->".len();
    let block = &readme[start..];
    let block = &block[block.find("```sh\n").unwrap() + 6..];
    let recipe = &block[..block.find("```").unwrap()];
    let run = |binary: &str| {
        Command::new("bash")
            .args(["-euo", "pipefail", "-c", recipe])
            .env("MEMMON", memmon_binary())
            .env("TEST_BINARY", binary)
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    let target = launch_target();
    let clean = dir.join("clean-test");
    std::fs::write(&clean, format!("#!/bin/sh\nexec {target} clean\n")).unwrap();
    std::fs::set_permissions(&clean, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let leaking = dir.join("leaking-test");
    std::fs::write(&leaking, format!("#!/bin/sh\nexec {target} leak\n")).unwrap();
    std::fs::set_permissions(&leaking, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let ok = run(clean.to_str().unwrap());
    assert_eq!(ok.status.code(), Some(0), "clean binary: {}", String::from_utf8_lossy(&ok.stderr));
    let bad = run(leaking.to_str().unwrap());
    assert_eq!(bad.status.code(), Some(99), "leaking binary: {}", String::from_utf8_lossy(&bad.stderr));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("in use at exit: 928 bytes in 5 blocks") && stderr.contains("at leak_here ("), "{stderr}");
}

#[test]
fn commands_that_cannot_run() {
    require_root();
    let dir = scratch("bad");
    let missing = memmon_run(&[], &["memmon-no-such-command"], &[], &dir);
    assert_eq!(missing.status.code(), Some(127));
    assert_eq!(String::from_utf8_lossy(&missing.stderr), "memmon: error: cannot run memmon-no-such-command: command not found\n");
    let not_executable = memmon_run(&[], &["/etc/passwd"], &[], &dir);
    assert_eq!(not_executable.status.code(), Some(126));
    assert!(String::from_utf8_lossy(&not_executable.stderr).contains("/etc/passwd: permission denied"));
    // A static binary with no allocator: refused before it runs, and not left behind.
    let static_binary = build_target("no_allocator");
    let refused = memmon_run(&[], &[static_binary.to_str().unwrap()], &[], &dir);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("no allocator memmon can probe") && stderr.contains("defines both malloc and free"), "{stderr}");
    assert!(!running(static_binary.file_name().unwrap().to_str().unwrap()), "the refused command is not left stopped");
}

/// Whether a process with this name runs.
fn running(comm: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()).any(|entry| {
        std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|c| c.trim() == comm.chars().take(15).collect::<String>())
            && std::fs::read_to_string(entry.path().join("stat")).is_ok_and(|s| !s.contains(") Z "))
    })
}

/// Starts `memmon run -- launch wait` and returns it with the command's pid once it leaked.
fn start_waiting(dir: &Path) -> (std::process::Child, i32, PathBuf) {
    let report = dir.join("report.json");
    let mut memmon = Command::new(memmon_binary())
        .args(["run", "--format", "json", "--output", report.to_str().unwrap(), "--", &launch_target(), "wait"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(memmon.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let pid = line.trim().strip_prefix("pid ").unwrap_or_else(|| panic!("target said {line:?}")).parse().unwrap();
    (memmon, pid, report)
}

fn gone_within(pid: i32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.is_empty() || state.contains(") Z ") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn memmon_terminated_forwards_the_signal_and_reports() {
    require_root();
    let dir = scratch("term");
    let (mut memmon, pid, report) = start_waiting(&dir);
    // Held open: the target ends by the signal, not by reading EOF.
    let stdin = memmon.stdin.take();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(memmon.id() as i32, libc::SIGTERM) };
    let output = memmon.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(output.status.code(), Some(128 + 15), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(gone_within(pid, Duration::from_secs(1)));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    assert_eq!(json["signal"], "SIGTERM");
    assert_eq!(summary_of(&json), LEAK);
}

#[test]
fn memmon_killed_takes_the_command_with_it() {
    require_root();
    let dir = scratch("kill");
    let (mut memmon, pid, _) = start_waiting(&dir);
    memmon.kill().unwrap();
    memmon.wait().unwrap();
    assert!(gone_within(pid, Duration::from_secs(2)), "pid {pid} outlived memmon: left traced or orphaned");
}

