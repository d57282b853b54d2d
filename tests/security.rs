//! The control API's gates, least privilege and the audit trail, on a real agent attached to a
//! real target: TCP without a token changes nothing, the token and the control socket work,
//! other users are refused, capabilities after attaching are the documented set, an agent
//! running as nobody with ambient capabilities works, and the systemd unit verifies.

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::Command,
};

use memmon_tests::{Agent, Target, memmon_binary, require_root, try_http_with, workspace_root};
use serde_json::Value;

const NOBODY: u32 = 65534;

/// A fresh directory for one test, owned by `uid`.
fn scratch(test: &str, uid: u32) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("memmon-security-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
    dir
}

fn tcp(agent: &Agent, request: &str, headers: &[&str]) -> (u16, String) {
    try_http_with(&agent.url, request, headers).unwrap()
}

fn profiles_of(agent: &Agent) -> Vec<Value> {
    agent.json("status")["profiles"].as_array().unwrap().clone()
}

fn files_in(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

/// `memmon COMMAND --control-socket SOCKET ARGS` run as nobody, with `caps` (setpriv's
/// syntax, e.g. "+dac_override") ambient: (exit code, stderr).
fn as_nobody(caps: &str, socket: &Path, command: &[&str]) -> (i32, String) {
    let output = Command::new("setpriv")
        .args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into()])
        .args([format!("--inh-caps=-all{caps}"), format!("--ambient-caps=-all{caps}")])
        .arg(memmon_binary())
        .args(command)
        .arg("--control-socket")
        .arg(socket)
        .output()
        .unwrap();
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn tcp_without_a_token_serves_metrics_and_health_and_changes_nothing() {
    require_root();
    let dir = scratch("no-token", 0);
    let target = Target::start("ground_truth");
    let agent = Agent::start(target.pid(), &["--profiling-output-dir", dir.to_str().unwrap()]);
    for request in ["POST /profiles", "POST /profiles/cleanup", "POST /update-metrics", "GET /profiles", "GET /status", "GET /leaks"] {
        let (status, body) = tcp(&agent, request, &[]);
        assert_eq!(status, 403, "{request}: {body}");
        assert!(body.contains(&agent.socket.display().to_string()) && body.contains("MEMMON_API_TOKEN_FILE"), "{request}: {body}");
    }
    // Even a real profile's download: started over the socket, refused over TCP.
    let id = agent.json_with("start-profiling", &["--duration", "0.02"])["profile_id"].as_str().unwrap().to_string();
    let (status, body) = tcp(&agent, &format!("GET /profiles/{id}/pprof"), &[]);
    assert_eq!(status, 403, "{body}");
    assert_eq!(profiles_of(&agent).len(), 1, "only the socket's session exists");
    // A token sent to an agent that has none is no key either.
    let (status, _) = tcp(&agent, "POST /profiles", &["Authorization: Bearer 0123456789abcdef0123456789abcdef"]);
    assert_eq!(status, 403);
    assert_eq!(profiles_of(&agent).len(), 1);
    let written: Vec<String> = files_in(&dir).into_iter().filter(|f| f.ends_with(".pb.gz")).collect();
    assert_eq!(written, [format!("{id}.pb.gz")], "only the socket's session wrote a profile");
    let (status, metrics) = tcp(&agent, "GET /metrics", &[]);
    assert!(status == 200 && metrics.contains("memmon_"), "{status}");
    assert_eq!(tcp(&agent, "GET /health", &[]).0, 200);
    let (_, _, stderr) = agent.stop();
    let refused: Vec<&str> = stderr.lines().filter(|l| l.contains("audit: refused")).collect();
    assert!(refused.iter().any(|l| l.contains("start-profiling by no-token from=127.0.0.1:") && l.contains("status=403")), "{stderr}");
    assert!(refused.iter().any(|l| l.contains("download-profile profile=")), "{stderr}");
    assert!(stderr.contains(&format!("audit: done start-profiling by uid=0 pid=")) && stderr.contains(&format!("profile={id}")), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_token_opens_tcp_and_a_wrong_one_of_the_same_length_does_not() {
    require_root();
    let dir = scratch("token", 0);
    let token = "k3y-0123456789abcdef0123456789ab";
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let target = Target::start("ground_truth");
    // A token others can read is refused before anything is attached.
    let output = Command::new(memmon_binary())
        .args(["agent", "--pid", &target.pid().to_string(), "--listen", "127.0.0.1:0", "--profiling-enabled", "false"])
        .arg("--api-token-file")
        .arg(&token_file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("MEMMON_API_TOKEN_FILE") && stderr.contains("chmod 600") && !stderr.contains("attached"), "{stderr}");
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let profiles = dir.join("profiles");
    let agent = Agent::start(
        target.pid(),
        &["--profiling-output-dir", profiles.to_str().unwrap(), "--api-token-file", token_file.to_str().unwrap()],
    );
    let wrong = format!("Authorization: Bearer {}", token.replace('k', "K"));
    assert_eq!(wrong.len(), format!("Authorization: Bearer {token}").len());
    for headers in [&[][..], &[wrong.as_str()][..], &["Authorization: Basic a2V5"][..]] {
        let (status, body) = tcp(&agent, "POST /profiles?duration_minutes=0.02", headers);
        assert_eq!(status, 401, "{headers:?}: {body}");
    }
    assert!(profiles_of(&agent).is_empty(), "no session was started");
    let right = format!("Authorization: Bearer {token}");
    let (status, body) = tcp(&agent, "POST /profiles?duration_minutes=0.02", &[right.as_str()]);
    assert_eq!(status, 201, "{body}");
    assert_eq!(profiles_of(&agent).len(), 1);
    // The commands over TCP with the token file.
    let output = Command::new(memmon_binary())
        .args(["start-profiling", "--duration", "0.02", "--format", "json", "--agent", &agent.url])
        .arg("--api-token-file")
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(profiles_of(&agent).len(), 2);
    let (_, _, stderr) = agent.stop();
    assert_eq!(stderr.matches("audit: refused start-profiling").count(), 3, "{stderr}");
    assert!(stderr.contains("by wrong-token from=127.0.0.1:"), "{stderr}");
    assert_eq!(stderr.matches("audit: done start-profiling by token from=127.0.0.1:").count(), 2, "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_control_socket_is_private_to_root_and_the_agents_user() {
    require_root();
    let dir = scratch("socket", 0);
    let target = Target::start("ground_truth");
    let agent = Agent::start(target.pid(), &["--profiling-output-dir", dir.to_str().unwrap(), "--metrics-update-interval", "1"]);
    let socket = std::fs::metadata(&agent.socket).unwrap();
    assert_eq!((socket.permissions().mode() & 0o777, socket.uid()), (0o600, 0));
    let port = agent.address().rsplit(':').next().unwrap().to_string();
    assert_eq!(agent.socket, Path::new(&format!("/run/memmon/control-{port}.sock")), "derived from MEMMON_LISTEN's port");
    // memmon's own commands, with the agent's MEMMON_LISTEN and nothing else.
    let id = agent.json_with("start-profiling", &["--duration", "0.02"])["profile_id"].as_str().unwrap().to_string();
    assert_eq!(agent.json_with("stop-profiling", &["--profile-id", &id])["state"], "finished");
    agent.json_with("cleanup-profiles", &[]);
    agent.json_with("update-metrics", &[]);
    // nobody cannot connect (mode 0600) ...
    let (code, stderr) = as_nobody("", &agent.socket, &["start-profiling"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("Permission denied") && stderr.contains("for root and the agent's own user"), "{stderr}");
    // ... and nobody past the file's mode (CAP_DAC_OVERRIDE) is refused by its credentials.
    for command in [&["start-profiling"][..], &["cleanup-profiles"], &["status"]] {
        let (code, stderr) = as_nobody(",+dac_override", &agent.socket, command);
        assert_eq!(code, 1, "{command:?}");
        assert!(stderr.contains("403") && stderr.contains("uid 65534 may not drive this agent"), "{command:?}: {stderr}");
    }
    assert_eq!(profiles_of(&agent).len(), 1, "nobody started nothing");
    let (_, _, stderr) = agent.stop();
    for action in ["start-profiling", "stop-profiling profile=", "cleanup-profiles", "update-metrics"] {
        assert!(stderr.contains(&format!("audit: done {action}")) && stderr.contains("by uid=0 pid="), "{action}: {stderr}");
    }
    assert!(stderr.contains("audit: refused start-profiling by uid=65534 pid=") && stderr.contains("audit: refused cleanup-profiles by uid=65534"), "{stderr}");
    assert!(!Path::new(&agent_socket_path(&stderr)).exists(), "the socket is removed when the agent stops");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn agent_socket_path(stderr: &str) -> String {
    let line = stderr.lines().find_map(|l| l.strip_prefix("memmon: control socket on ")).unwrap();
    line.split(" (").next().unwrap().to_string()
}

/// The capability masks of every thread of a process: (CapEff, CapPrm, CapBnd, CapAmb, NoNewPrivs).
fn capabilities(pid: u32) -> Vec<[u64; 5]> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .map(|task| {
            let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
            let field = |name: &str| {
                let value = status.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim();
                u64::from_str_radix(value, if name == "NoNewPrivs:" { 10 } else { 16 }).unwrap()
            };
            [field("CapEff:"), field("CapPrm:"), field("CapBnd:"), field("CapAmb:"), field("NoNewPrivs:")]
        })
        .collect()
}

const CAP_DAC_READ_SEARCH: u64 = 1 << 2;
const CAP_SYS_PTRACE: u64 = 1 << 19;
const CAP_SYS_ADMIN: u64 = 1 << 21;

#[test]
fn after_attaching_the_agent_keeps_only_the_documented_capabilities() {
    require_root();
    let mut target = Target::start("ground_truth");
    for (tier, expected, names) in [
        ("exact", CAP_DAC_READ_SEARCH | CAP_SYS_PTRACE | CAP_SYS_ADMIN, "cap_dac_read_search, cap_sys_admin, cap_sys_ptrace"),
        ("always-on", CAP_DAC_READ_SEARCH | CAP_SYS_PTRACE | CAP_SYS_ADMIN, "cap_dac_read_search, cap_sys_admin, cap_sys_ptrace"),
    ] {
        let agent = Agent::start(target.pid(), &["--tier", tier, "--metrics-update-interval", "1"]);
        let threads = capabilities(agent.pid());
        assert!(threads.len() >= 2, "{threads:?}");
        // The main thread serves the API with none; the agent thread keeps the set.
        assert!(threads.iter().any(|t| t[0] == expected), "{tier}: {threads:x?}");
        for [effective, permitted, bounding, ambient, no_new_privs] in &threads {
            assert_eq!(effective & !expected, 0, "{tier}: {threads:x?}");
            assert_eq!((permitted, bounding & !expected, ambient, no_new_privs), (effective, 0, &0, &1), "{tier}: {threads:x?}");
        }
        // Still fully working: exact numbers of a leak made after the drop.
        if tier == "exact" {
            target.run("leak");
            std::thread::sleep(std::time::Duration::from_millis(1500));
            assert_eq!(agent.json("memory-summary")["live_bytes"], 104_950);
        }
        let (_, _, stderr) = agent.stop();
        assert!(stderr.contains(&format!("memmon: capabilities kept after attaching: {names}")), "{stderr}");
    }
}

/// The ambient capabilities the shipped systemd unit gives its non-root agent.
fn unit_ambient_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(workspace_root().join("deploy/memmon-agent.service")).unwrap();
    let line = unit.lines().find_map(|l| l.strip_prefix("AmbientCapabilities=")).expect("the unit sets AmbientCapabilities=");
    line.split_whitespace().map(|c| c.trim_start_matches("CAP_").to_lowercase()).collect()
}

#[test]
fn an_agent_running_as_nobody_with_the_units_ambient_capabilities_works() {
    require_root();
    let dir = scratch("nobody", NOBODY);
    let mut target = Target::start("ground_truth");
    let caps: String = unit_ambient_capabilities().iter().map(|c| format!(",+{c}")).collect();
    let mut setpriv = Command::new("setpriv");
    setpriv
        .args([format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into()])
        .args([format!("--inh-caps=-all{caps}"), format!("--ambient-caps=-all{caps}")])
        .arg(memmon_binary());
    let socket = dir.join("control.sock");
    let profiles = dir.join("profiles");
    let agent = Agent::start_as(
        setpriv,
        target.pid(),
        &[
            "--control-socket", socket.to_str().unwrap(), "--profiling-output-dir", profiles.to_str().unwrap(),
            "--metrics-update-interval", "1",
        ],
    );
    let owner = std::fs::metadata(&socket).unwrap();
    assert_eq!((owner.uid(), owner.permissions().mode() & 0o777), (NOBODY, 0o600));
    let command = |args: &[&str]| -> Value {
        let output = Command::new(memmon_binary()).args(args).args(["--format", "json", "--control-socket"]).arg(&socket).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    };
    assert_eq!(command(&["status"])["attached"], true);
    target.run("leak");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let summary = command(&["memory-summary"]);
    assert_eq!(summary["live_bytes"], 104_950, "{summary}");
    assert_eq!(summary["top_sites"][0]["site"]["frames"][0]["function"], "leak_exactly", "{summary}");
    let id = command(&["start-profiling", "--duration", "0.02"])["profile_id"].as_str().unwrap().to_string();
    command(&["stop-profiling", "--profile-id", &id]);
    let profile = std::fs::metadata(profiles.join(format!("{id}.pb.gz"))).unwrap();
    assert_eq!(profile.uid(), NOBODY);
    for [effective, ..] in capabilities(agent.pid()) {
        assert_eq!(effective & !(CAP_DAC_READ_SEARCH | CAP_SYS_PTRACE | CAP_SYS_ADMIN), 0);
    }
    let (code, _, stderr) = agent.stop();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("and uid 65534") && stderr.contains("audit: done start-profiling by uid=0"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_systemd_unit_verifies_and_is_rated_ok() {
    let unit = std::fs::read_to_string(workspace_root().join("deploy/memmon-agent.service")).unwrap();
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let dir = std::env::temp_dir().join(format!("memmon-security-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = dir.join("memmon-agent.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/memmon", memmon_binary().to_str().unwrap()).replace("EnvironmentFile=/", "EnvironmentFile=-/"),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze").arg("verify").arg(&copy).output().expect("systemd-analyze (Debian systemd)");
    let said = String::from_utf8_lossy(&verify.stderr).into_owned() + &String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success() && said.trim().is_empty(), "{said}");
    let security = Command::new("systemd-analyze").args(["security", "--offline=true"]).arg(&copy).output().unwrap();
    let report = String::from_utf8_lossy(&security.stdout);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for memmon-agent.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level: {report}"));
    assert!(score <= 4.0, "exposure {score} (systemd-analyze security): {report}");
    for setting in ["NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "RuntimeDirectory=memmon", "CapabilityBoundingSet="] {
        assert!(unit.contains(setting), "{setting}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
