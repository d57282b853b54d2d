//! The `memmon` binary as an operator runs it: reports, stopping, and errors on bad input.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use memmon_tests::{Target, memmon_binary, require_root};

/// Starts `memmon agent ARGS`, waits until it has attached, runs `during`, then collects output.
fn agent_around(args: &[&str], during: impl FnOnce()) -> (Output, String) {
    let mut child = Command::new(memmon_binary())
        .arg("agent")
        .args(["--listen", "127.0.0.1:0", "--profiling-enabled", "false"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    while !first.contains("memmon: attached to pid") {
        let before = first.len();
        stderr.read_line(&mut first).unwrap();
        assert!(first.len() > before, "agent ended without attaching: {first}");
    }
    let rest = thread::spawn(move || {
        let mut rest = String::new();
        stderr.read_to_string(&mut rest).unwrap();
        rest
    });
    during();
    let output = child.wait_with_output().unwrap();
    (output, first + &rest.join().unwrap())
}

#[test]
fn agent_names_the_leaking_function_with_exact_bytes() {
    require_root();
    let mut target = Target::start("ground_truth");
    let pid = target.pid().to_string();
    let (output, stderr) = agent_around(&["--pid", &pid, "--duration", "2", "--report-interval", "0"], || {
        target.run("leak");
        target.run("churn");
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("stopping (duration reached)"), "{stdout}");
    assert!(
        stdout.contains("largest live site: leak_exactly (") && stdout.contains("(104950 bytes) in 100 blocks"),
        "{stdout}"
    );
    assert!(stdout.contains("events lost: none"), "{stdout}");
    assert!(!stdout.contains("churn_everything"), "churn has nothing live: {stdout}");
    assert!(stderr.contains("glibc allocator") && stderr.contains("probes detached"), "{stderr}");
}

#[test]
fn agent_keeps_its_report_when_the_target_exits() {
    require_root();
    let mut target = Target::start("ground_truth");
    let agent = memmon_tests::Agent::start(target.pid(), &[]);
    target.run("leak");
    target.send("exit");
    target.wait();
    thread::sleep(Duration::from_secs(1));
    // Still serving, with what it captured.
    assert_eq!(agent.json("memory-summary")["live_bytes"], 104_950);
    let (code, stdout, stderr) = agent.stop();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("memmon: every target exited; final report"), "{stdout}");
    // Symbolized after the process is gone, from the map memmon saw while it ran.
    assert!(stdout.contains("largest live site: leak_exactly ("), "{stdout}\n{stderr}");
    assert!(stdout.contains("(104950 bytes) in 100 blocks"), "{stdout}");
    assert!(stderr.contains("probes detached"), "{stderr}");
}

/// Runs memmon expecting failure; returns its one-line error.
fn error_of(command: &mut Command) -> String {
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line, no backtrace: {stderr}");
    assert!(stderr.starts_with("memmon: error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

fn agent(pid: &str) -> Command {
    let mut command = Command::new(memmon_binary());
    command.args(["agent", "--pid", pid]);
    command
}

#[test]
fn no_such_process() {
    let error = error_of(&mut agent("999999"));
    assert!(error.contains("no process with pid 999999"), "{error}");
}

#[test]
fn kernel_thread() {
    require_root();
    // pid 2 is kthreadd on Linux.
    let error = error_of(&mut agent("2"));
    assert!(error.contains("is a kernel thread"), "{error}");
}

#[test]
fn process_that_already_exited() {
    // A child that exited but was not reaped yet is a zombie: present in /proc, yet gone.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap().contains(") Z ") {
        assert!(Instant::now() < deadline, "child never became a zombie");
        thread::sleep(Duration::from_millis(10));
    }
    let error = error_of(&mut agent(&pid.to_string()));
    assert!(error.contains("has exited"), "{error}");
    child.wait().unwrap();
    let error = error_of(&mut agent(&pid.to_string()));
    assert!(error.contains(&format!("no process with pid {pid}")), "{error}");
}

#[test]
fn without_privileges() {
    require_root();
    let target = Target::start("ground_truth");
    // A copy any user can execute, wherever the checkout lives.
    let dir = std::env::temp_dir().join(format!("memmon-unprivileged-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let binary = dir.join("memmon");
    std::fs::copy(memmon_binary(), &binary).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all"])
        .arg(&binary)
        .args(["agent", "--pid", &target.pid().to_string()]);
    let error = error_of(&mut command);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(error.contains("needs root"), "{error}");
}

#[test]
fn bad_arguments_are_refused_by_clap() {
    let output = Command::new(memmon_binary()).args(["agent", "--pid", "abc"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid value 'abc'"));
}

#[test]
fn process_without_an_allocator() {
    require_root();
    let target = Target::start_silent("no_allocator");
    thread::sleep(Duration::from_millis(100));
    let error = error_of(&mut agent(&target.pid().to_string()));
    assert!(error.contains("no allocator found in pid"), "{error}");
    assert!(error.contains("defines both malloc and free"), "{error}");
    assert!(error.contains("target/test-targets/no_allocator"), "names what was searched: {error}");
}
