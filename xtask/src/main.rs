//! memmon's developer tasks: `cargo xtask setup|build|run|test|bench|soak`.

mod setup;

use std::{
    env,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use setup::Scope;

#[derive(Parser)]
#[command(about = "memmon developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain (LLVM 22, rust-src for nightly, bpf-linker); idempotent.
    Setup {
        /// Also what the tests and benchmarks need (cargo xtask test/bench install it anyway).
        #[arg(long)]
        tests: bool,
    },
    /// Build everything in release mode (runs setup first if anything is missing).
    Build,
    /// Run `memmon agent ARGS`; with no ARGS, run the bundled leaking demo and attach to it.
    Run {
        /// Arguments for `memmon agent`, e.g. `-- --pid 1234`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure memmon's costs against baselines of the same run: allocation pairs, redis, scrapes,
    /// the stack walk, `memmon run` against valgrind (needs root).
    Bench,
    /// Soak: `memmon agent` on a target allocating ~100k blocks/s with churn and a slow leak,
    /// a second memmon on the agent; a row per sample, a verdict, non-zero exit on failure
    /// (needs root).
    Soak {
        /// How long to run.
        #[arg(long, default_value_t = 60.0)]
        minutes: f64,
        /// Seconds between samples.
        #[arg(long, default_value_t = 60)]
        sample_seconds: u64,
    },
    /// Run the unit and integration tests (integration tests need root: they load eBPF).
    Test {
        /// Extra arguments for `cargo test`, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() {
    if let Err(err) = run(Cli::parse().task) {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Setup { tests } => setup::run(if tests { Scope::Test } else { Scope::Build }),
        Task::Build => build(Scope::Build),
        Task::Run { args } => {
            build(Scope::Build)?;
            if args.is_empty() { demo() } else { agent(&args) }
        }
        Task::Bench => {
            build(Scope::Test)?;
            cargo(&["run", "--release", "--quiet", "--package", "memmon-tests", "--bin", "memmon-bench"], &[])?;
            cargo(&["run", "--release", "--quiet", "--package", "memmon-tests", "--bin", "memmon-bench-unwind"], &[])?;
            cargo(&["run", "--release", "--quiet", "--package", "memmon-tests", "--bin", "memmon-bench-python"], &[])?;
            cargo(&["run", "--release", "--quiet", "--package", "memmon-tests", "--bin", "memmon-bench-launch"], &[])?;
            cargo(&["run", "--release", "--quiet", "--package", "memmon-tests", "--bin", "memmon-bench-production"], &[])
        }
        Task::Soak { minutes, sample_seconds } => {
            build(Scope::Test)?;
            // The binary `cargo build --release` just built: `cargo run --package` would resolve
            // the workspace's features for that package alone and build the library again.
            let soak = workspace_root().join("target/release/memmon-soak");
            let status = Command::new(&soak)
                .args(["--minutes", &minutes.to_string(), "--sample-seconds", &sample_seconds.to_string()])
                .status()
                .with_context(|| format!("cannot run {}", soak.display()))?;
            if !status.success() {
                bail!("the soak failed ({status})");
            }
            Ok(())
        }
        Task::Test { args } => {
            build(Scope::Test)?;
            cargo(&["test", "--release"], &args)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_path_buf()
}

fn build(scope: Scope) -> Result<()> {
    if !setup::is_complete(scope) {
        setup::run(scope)?;
    }
    cargo(&["build", "--release"], &[])
}

fn cargo(args: &[&str], extra: &[String]) -> Result<()> {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(args)
        .args(extra)
        .current_dir(workspace_root())
        .status()
        .context("cannot run cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn memmon_binary() -> PathBuf {
    workspace_root().join("target/release/memmon")
}

fn agent(args: &[String]) -> Result<()> {
    let status = Command::new(memmon_binary()).arg("agent").args(args).status()?;
    if !status.success() {
        bail!("memmon agent exited with {status}");
    }
    Ok(())
}

/// Builds and starts the demo program, attaches memmon for 15 s, takes a 6-second profile of
/// it along the way, then stops both and shows the profile's summary and flame graph.
fn demo() -> Result<()> {
    let root = workspace_root();
    let out = root.join("target/demo");
    std::fs::create_dir_all(&out)?;
    let binary = out.join("leaky_server");
    let status = Command::new("gcc")
        .args(["-O2", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&binary)
        .arg(root.join("demo/leaky_server.c"))
        .status()
        .context("cannot run gcc")?;
    if !status.success() {
        bail!("compiling demo/leaky_server.c failed");
    }
    let mut demo = KillOnDrop(Command::new(&binary).spawn().context("cannot start the demo")?);
    thread::sleep(Duration::from_millis(300));
    println!("xtask: attaching memmon to the demo (pid {}) for 15 s; it leaks 1024 bytes every 100 ms in leak_session_buffer()", demo.0.id());
    let pid = demo.0.id().to_string();
    let profiles = out.join("profiles");
    let mut agent = KillOnDrop(
        Command::new(memmon_binary())
            .args(["agent", "--pid", &pid, "--duration", "15", "--report-interval", "3", "--listen", "127.0.0.1:0"])
            .arg("--profiling-output-dir")
            .arg(&profiles)
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start memmon agent")?,
    );
    let url = api_url(&mut agent.0)?;
    thread::sleep(Duration::from_secs(2));
    println!("xtask: profiling the demo for 6 s: memmon start-profiling --duration 0.1");
    // Over the agent's control socket, found from the same MEMMON_LISTEN (TCP serves only
    // /metrics and /health without a token).
    let address = url.trim_start_matches("http://");
    let started = memmon_with(&["start-profiling", "--duration", "0.1"], &[("MEMMON_LISTEN", address)])?;
    print!("{started}");
    let id = started
        .lines()
        .find_map(|line| line.strip_prefix("profiling started: "))
        .context("start-profiling printed no profile id")?
        .to_string();
    let status = agent.0.wait()?;
    demo.0.kill().ok();
    demo.0.wait().ok();
    if !status.success() {
        bail!("memmon agent exited with {status}");
    }
    let profile = profiles.join(format!("{id}.pb.gz"));
    let flamegraph = out.join("flamegraph.svg");
    println!("\nxtask: memmon report summary {}", profile.display());
    print!("{}", memmon(&["report", "summary", &profile.to_string_lossy()])?);
    memmon(&["report", "flamegraph", &profile.to_string_lossy(), "--output", &flamegraph.to_string_lossy()])?;
    println!("xtask: flame graph of the live bytes: {} (open it in a browser)", flamegraph.display());
    Ok(())
}

/// Forwards the agent's stderr and returns the control API's address once it says it.
fn api_url(agent: &mut Child) -> Result<String> {
    let stderr = BufReader::new(agent.stderr.take().context("agent stderr")?);
    let (found, url) = mpsc::channel();
    thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("{line}");
            if let Some(address) = line.strip_prefix("memmon: control API on ") {
                let _ = found.send(address.to_string());
            }
        }
    });
    url.recv_timeout(Duration::from_secs(60)).context("memmon agent did not start its control API")
}

/// Runs `memmon ARGS` and returns what it printed.
fn memmon(args: &[&str]) -> Result<String> {
    memmon_with(args, &[])
}

/// `memmon` with environment variables set.
fn memmon_with(args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let output = Command::new(memmon_binary()).args(args).envs(env.iter().copied()).output()?;
    if !output.status.success() {
        bail!("memmon {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
