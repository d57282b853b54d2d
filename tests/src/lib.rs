//! Harness for memmon's integration tests: builds C targets from `targets/`, runs them through
//! phases driven over stdin, and sums what memmon observed per allocating function.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::Mutex,
};

use memmon::{snapshot::Snapshot, symbolize::Symbolizer};

pub mod real_programs;
pub mod soak;

/// Kernel tests load eBPF programs: without root they cannot run, and must not pass silently.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "memmon's integration tests load eBPF programs: run them as root (sudo cargo xtask test)");
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The `memmon` binary, rebuilt if stale: `cargo test` does not build other packages' binaries,
/// and a test of an old binary proves nothing.
pub fn memmon_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "--release", "--quiet", "--package", "memmon-user", "--bin", "memmon"])
                .current_dir(workspace_root())
                .status()
                .expect("cannot run cargo to build memmon");
            assert!(status.success(), "building the memmon binary failed");
            workspace_root().join("target/release/memmon")
        })
        .clone()
}

/// Compiles `targets/<name>.c` (or `.cpp`, or `.rs`) once per test process, with frame
/// pointers and debug info, and returns the executable. `<name>-static` links statically;
/// `<name>-nofp` builds without frame pointers, as distributions build (only CFI unwinds it).
pub fn build_target(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap();
    let out_dir = workspace_root().join("target/test-targets");
    let binary = out_dir.join(name);
    if built.iter().any(|b| b == name) {
        return binary;
    }
    std::fs::create_dir_all(&out_dir).unwrap();
    let (name_without_fp, frame_pointers) = match name.strip_suffix("-nofp") {
        Some(base) => (base, false),
        None => (name, true),
    };
    let (source_name, static_link) = match name_without_fp.strip_suffix("-static") {
        Some(base) => (base, true),
        None => (name_without_fp, name_without_fp == "no_allocator"),
    };
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("targets");
    let source = ["c", "cpp", "rs"]
        .iter()
        .map(|ext| dir.join(format!("{source_name}.{ext}")))
        .find(|path| path.exists())
        .unwrap_or_else(|| panic!("no target source for {source_name} in {}", dir.display()));
    let mut command = match source.extension().and_then(|e| e.to_str()) {
        Some("rs") => {
            let mut rustc = Command::new("rustc");
            let frame_pointers = if frame_pointers { "force-frame-pointers=yes" } else { "force-frame-pointers=no" };
            rustc.args(["--edition", "2021", "-O", "-g", "-C", frame_pointers, "-o"]);
            rustc
        }
        Some(ext) => {
            let mut cc = Command::new(if ext == "cpp" { "g++" } else { "gcc" });
            let frame_pointers = if frame_pointers { "-fno-omit-frame-pointer" } else { "-fomit-frame-pointer" };
            cc.args(["-O2", "-g", frame_pointers, "-pthread", "-o"]);
            cc
        }
        None => unreachable!(),
    };
    command.arg(&binary).arg(&source);
    if static_link {
        command.arg("-static");
    }
    if name == "no_allocator" {
        command.arg("-nostdlib");
    }
    let status = command.status().expect("cannot run the compiler");
    assert!(status.success(), "compiling {} failed", source.display());
    built.push(name.to_string());
    binary
}

/// Compiles `targets/<name>.c` into a shared library without frame pointers
/// (`lib<name>.so`), for targets that load code with dlopen.
pub fn build_shared_library(name: &str) -> PathBuf {
    build_shared_library_linked(name, &[])
}

/// `build_shared_library`, linked to the `libraries` given by path.
pub fn build_shared_library_linked(name: &str, libraries: &[&str]) -> PathBuf {
    let out_dir = workspace_root().join("target/test-targets");
    std::fs::create_dir_all(&out_dir).unwrap();
    let library = out_dir.join(format!("lib{name}.so"));
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("targets").join(format!("{name}.c"));
    let status = Command::new("gcc")
        .args(["-O2", "-g", "-fomit-frame-pointer", "-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .args(libraries)
        .status()
        .expect("cannot run gcc");
    assert!(status.success(), "compiling {} failed", source.display());
    library
}

/// A running target program that takes commands on stdin and answers "done <command>".
pub struct Target {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Target {
    /// Starts `targets/<name>` and waits until it says "ready".
    pub fn start(name: &str) -> Self {
        Self::start_with(name, &[])
    }

    /// Like `start`, with extra environment variables (e.g. LD_PRELOAD of an allocator).
    pub fn start_with(name: &str, env: &[(&str, &str)]) -> Self {
        let mut target = Self::spawn(name, &[], env);
        target.expect_line("ready");
        target
    }

    /// Like `start`, with command-line arguments.
    pub fn start_with_args(name: &str, args: &[&str]) -> Self {
        let mut target = Self::spawn(name, args, &[]);
        target.expect_line("ready");
        target
    }

    /// Like `start`, with address-space randomization off (`setarch -R`, as gdb runs
    /// programs): its code sits at the addresses a `gdb` run of the same binary shows.
    pub fn start_without_aslr(name: &str) -> Self {
        let binary = build_target(name);
        let mut target = Self::spawn_command(Command::new("setarch").args(["-R"]).arg(binary));
        target.expect_line("ready");
        target
    }

    /// Starts an installed program that speaks the ready/done protocol (a script run by an
    /// interpreter, say) and waits until it says "ready".
    pub fn start_program(program: &str, args: &[&str]) -> Self {
        let mut target = Self::spawn_command(Command::new(program).args(args));
        target.expect_line("ready");
        target
    }

    fn spawn(name: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::spawn_command(Command::new(build_target(name)).args(args).envs(env.iter().copied()))
    }

    fn spawn_command(command: &mut Command) -> Self {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start target");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Self { child, stdin, stdout }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs one phase and waits for it to finish.
    pub fn run(&mut self, command: &str) {
        self.send(command);
        self.expect_line(&format!("done {command}"));
    }

    /// Sends a command and returns the one line it answers.
    pub fn request(&mut self, command: &str) -> String {
        self.send(command);
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }

    pub fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
    }

    fn expect_line(&mut self, expected: &str) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim_end(), expected, "target said something else");
    }

    /// Starts a program that does not speak the ready/done protocol.
    pub fn start_silent(name: &str) -> Self {
        Self::start_args(name, &[])
    }

    /// Starts a program that does not speak the protocol, with arguments.
    pub fn start_args(name: &str, args: &[&str]) -> Self {
        Self::spawn(name, args, &[])
    }

    /// Waits for the target to exit by itself.
    pub fn wait(&mut self) {
        self.stdin.take();
        self.child.wait().unwrap();
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What memmon saw for one allocating function (summed over its sites).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub live_bytes: u64,
    pub live_count: u64,
    pub alloc_bytes: u64,
    pub alloc_count: u64,
    pub sites: u64,
}

/// Sums a snapshot per allocating function (the innermost symbolized frame).
pub fn by_function(snapshot: &Snapshot, symbolizer: &mut Symbolizer) -> HashMap<String, Observed> {
    let mut functions: HashMap<String, Observed> = HashMap::new();
    for site in &snapshot.sites {
        let frames = symbolizer.frames(site.pid, &site.frames);
        let function = frames.first().map_or("[unknown stack]".to_string(), |f| f.function.clone());
        let entry = functions.entry(function).or_default();
        entry.live_bytes += site.live_bytes();
        entry.live_count += site.live_count();
        entry.alloc_bytes += site.stats.alloc_bytes;
        entry.alloc_count += site.stats.alloc_count;
        entry.sites += 1;
    }
    functions
}

/// A `memmon agent` process with its control API on a free loopback port; stopped (SIGTERM)
/// when dropped.
pub struct Agent {
    child: Child,
    /// The TCP listener: /metrics and /health for anyone, the rest with a token.
    pub url: String,
    /// The control socket: every endpoint, for root and the agent's user.
    pub socket: PathBuf,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Agent {
    /// Starts `memmon agent --pid PID --listen 127.0.0.1:0 ARGS` and waits for its API.
    /// Profiling is off unless ARGS set it up (a profile directory, or enabled/disabled).
    pub fn start(pid: u32, args: &[&str]) -> Self {
        Self::start_as(Command::new(memmon_binary()), pid, args)
    }

    /// `start`, with `launcher` running the binary (e.g. `setpriv … memmon`: its arguments
    /// end with memmon's path); the agent arguments follow.
    pub fn start_as(mut launcher: Command, pid: u32, args: &[&str]) -> Self {
        let profiling = args.iter().any(|a| a.starts_with("--profiling"));
        let mut child = launcher
            .args(["agent", "--pid", &pid.to_string(), "--listen", "127.0.0.1:0", "--report-interval", "0"])
            .args(if profiling { &[][..] } else { &["--profiling-enabled", "false"][..] })
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start memmon agent");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        let mut socket = None;
        let url = loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0 {
                panic!("agent ended before serving: {seen}");
            }
            seen.push_str(&line);
            if let Some(rest) = line.trim().strip_prefix("memmon: control socket on ") {
                socket = rest.split(" (").next().map(PathBuf::from);
            }
            if let Some(url) = line.trim().strip_prefix("memmon: control API on ") {
                break url.to_string();
            }
        };
        let socket = socket.unwrap_or_else(|| panic!("the agent named no control socket: {seen}"));
        let stderr = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
            seen + &rest
        });
        Self { child, url, socket, stderr: Some(stderr) }
    }

    /// The TCP address the agent listens on (its MEMMON_LISTEN, resolved).
    pub fn address(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// One request over the control socket, as root: (status, body).
    pub fn api(&self, request_line: &str) -> (u16, String) {
        http_unix(&self.socket, request_line).unwrap_or_else(|err| panic!("{}: {err}", self.socket.display()))
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Runs `memmon COMMAND ARGS` with the agent's MEMMON_LISTEN, as an operator on the host
    /// would (the command finds the control socket from it); returns (exit code, stdout, stderr).
    pub fn command(&self, command: &str, args: &[&str]) -> (i32, String, String) {
        let output = Command::new(memmon_binary())
            .arg(command)
            .env("MEMMON_LISTEN", self.address())
            .args(args)
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    /// `command` with `--format json`, parsed; panics unless it succeeded.
    pub fn json(&self, command: &str) -> serde_json::Value {
        self.json_with(command, &[])
    }

    /// `json` with more arguments.
    pub fn json_with(&self, command: &str, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        let (code, stdout, stderr) = self.command(command, &all);
        assert_eq!(code, 0, "{command} failed: {stderr}");
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{command} printed no JSON ({e}): {stdout}"))
    }

    /// Stops the agent (SIGTERM) and returns (exit code, stdout, stderr).
    pub fn stop(mut self) -> (i32, String, String) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let mut stdout = String::new();
        let _ = std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut stdout);
        let status = self.child.wait().unwrap();
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (status.code().unwrap_or(-1), stdout, stderr)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.stderr.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A sample's value in a /metrics text for a series whose labels include `pid`.
pub fn metric(metrics: &str, name: &str, pid: u32) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&format!("pid=\"{pid}\"")))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// The value of the first sample in a /metrics text whose line starts with `line_start` (a
/// name with its labels, as the exporter writes them).
pub fn metric_line(metrics: &str, line_start: &str) -> Option<f64> {
    metrics.lines().find(|l| l.starts_with(line_start)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// One HTTP request over a plain socket (no client library: the tests check the wire).
/// Returns (status, body).
pub fn http(url: &str, request_line: &str) -> (u16, String) {
    try_http(url, request_line).unwrap_or_else(|err| panic!("{url}: {err}"))
}

/// `http`, for a server that may not be listening yet.
pub fn try_http(url: &str, request_line: &str) -> std::io::Result<(u16, String)> {
    try_http_with(url, request_line, &[])
}

/// `try_http` with extra header lines (`Authorization: Bearer …`).
pub fn try_http_with(url: &str, request_line: &str, headers: &[&str]) -> std::io::Result<(u16, String)> {
    let address = url.trim_start_matches("http://");
    exchange(std::net::TcpStream::connect(address)?, address, request_line, headers)
}

/// One HTTP request over a Unix socket (an agent's control socket).
pub fn http_unix(socket: &Path, request_line: &str) -> std::io::Result<(u16, String)> {
    exchange(std::os::unix::net::UnixStream::connect(socket)?, "localhost", request_line, &[])
}

fn exchange(mut stream: impl std::io::Read + std::io::Write, host: &str, request_line: &str, headers: &[&str]) -> std::io::Result<(u16, String)> {
    let headers: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    // HTTP/1.0: the answer comes whole (no chunked encoding to undo), then the connection closes.
    write!(stream, "{request_line} HTTP/1.0\r\nHost: {host}\r\n{headers}Content-Length: 0\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// `go tool pprof -top` of one sample type of a profile file, in exact units (bytes as "…B",
/// counts as they are).
pub fn pprof_top(file: &Path, sample_index: &str) -> String {
    let unit = if sample_index.ends_with("space") { "-unit=B" } else { "-unit=minimum" };
    let output = Command::new("go")
        .args(["tool", "pprof", "-top", unit, &format!("-sample_index={sample_index}")])
        .arg(file)
        .env("HOME", std::env::temp_dir())
        .output()
        .expect("go (Debian package golang-go; cargo xtask setup installs it)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Whether a `pprof -top` listing has `function`'s row with exactly `value` in its first column.
pub fn has_top_row(top: &str, value: &str, function: &str) -> bool {
    top.lines().any(|l| l.trim_start().starts_with(&format!("{value} ")) && l.trim_end().ends_with(&format!(" {function}")))
}

/// gdb's backtrace (past main) at the first call of `stop_at` after `after` is entered, in
/// `binary` fed `input` on stdin and run with gdb's defaults (no address randomization): the
/// return addresses of the machine frames from #1 on, innermost first — what memmon's stack at
/// `stop_at`'s return must be. The frames gdb synthesizes from debug info (inlined calls, and
/// tail calls reconstructed from call-site records) are left out: they are not on the stack.
pub fn gdb_backtrace(binary: &Path, input: &str, after: &str, stop_at: &str) -> Vec<u64> {
    let scratch = std::env::temp_dir().join(format!("memmon-gdb-{}-{after}", std::process::id()));
    std::fs::write(scratch.with_extension("in"), input).unwrap();
    std::fs::write(
        scratch.with_extension("py"),
        "frame = gdb.newest_frame()\n\
         while frame is not None and frame.type() != gdb.NORMAL_FRAME:\n    frame = frame.older()\n\
         frame = frame.older()\n\
         while frame is not None:\n\
         \x20   if frame.type() not in (gdb.INLINE_FRAME, gdb.TAILCALL_FRAME):\n\
         \x20       print('machine frame 0x%x %s' % (frame.pc(), frame.name()))\n\
         \x20   frame = frame.older()\n",
    )
    .unwrap();
    let output = Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "set debuginfod enabled off", "-ex", "set pagination off"])
        .args(["-ex", "set backtrace past-main on", "-ex", "set backtrace past-entry on"])
        .args(["-ex", &format!("break {after}"), "-ex", &format!("run < {}", scratch.with_extension("in").display())])
        .args(["-ex", &format!("break {stop_at}"), "-ex", "continue"])
        .args(["-ex", &format!("source {}", scratch.with_extension("py").display()), "-ex", "kill"])
        .arg(binary)
        .output()
        .expect("gdb (Debian package gdb; cargo xtask setup installs it)");
    let _ = std::fs::remove_file(scratch.with_extension("in"));
    let _ = std::fs::remove_file(scratch.with_extension("py"));
    let text = String::from_utf8_lossy(&output.stdout);
    let frames: Vec<u64> = text
        .lines()
        .filter_map(|line| line.strip_prefix("machine frame 0x")?.split_whitespace().next())
        .filter_map(|address| u64::from_str_radix(address, 16).ok())
        .collect();
    assert!(frames.len() >= 2, "gdb gave no backtrace:\n{text}\n{}", String::from_utf8_lossy(&output.stderr));
    frames
}

/// Debian's `redis-server` (jemalloc) on a Unix socket of its own (no TCP port another test
/// could be answering on), without persistence; killed when dropped. `cargo xtask setup`
/// installs the package (with redis-tools' `redis-benchmark`).
pub struct RedisServer {
    child: Child,
    pub socket: PathBuf,
}

impl RedisServer {
    /// Starts it and waits until it answers PING.
    pub fn start() -> Self {
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = std::env::temp_dir().join(format!("memmon-redis-{}-{n}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let child = Command::new("/usr/bin/redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&socket)
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; cargo xtask setup installs it)");
        let server = Self { child, socket };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !server.command("PING").is_ok_and(|reply| reply == "+PONG") {
            assert!(std::time::Instant::now() < deadline, "redis-server did not answer on {}", server.socket.display());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One inline command; returns the first line of the reply (e.g. "+PONG", ":42").
    pub fn command(&self, command: &str) -> std::io::Result<String> {
        use std::io::{Read as _, Write as _};
        let mut stream = std::os::unix::net::UnixStream::connect(&self.socket)?;
        stream.write_all(format!("{command}\r\n").as_bytes())?;
        let mut reply = Vec::new();
        let mut byte = [0u8];
        while !reply.ends_with(b"\r\n") && stream.read(&mut byte)? == 1 {
            reply.push(byte[0]);
        }
        Ok(String::from_utf8_lossy(&reply).trim_end().to_string())
    }

    /// `redis-benchmark -s SOCKET -q ARGS`; returns its output (one "TEST: N requests per
    /// second" line per test).
    pub fn benchmark(&self, args: &[&str]) -> String {
        let output = Command::new("redis-benchmark")
            .arg("-s")
            .arg(&self.socket)
            .arg("-q")
            .args(args)
            .output()
            .expect("redis-benchmark (Debian package redis-tools; cargo xtask setup installs it)");
        assert!(output.status.success(), "redis-benchmark failed: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The requests per second `redis-benchmark -q` printed for `test` ("SET: 51234.56 requests per
/// second"; the last such line, past the progress lines it rewrites with \r).
pub fn requests_per_second(output: &str, test: &str) -> f64 {
    output
        .split(['\n', '\r'])
        .filter_map(|line| line.trim().strip_prefix(&format!("{test}: ")))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .last()
        .unwrap_or_else(|| panic!("no {test} result in {output:?}"))
}

/// The median of a benchmark's rounds.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}
