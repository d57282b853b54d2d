//! memmon's developer tasks: `cargo xtask setup|build|run|test`.

mod setup;

use std::{
    env,
    path::{Path, PathBuf},
    process::{Child, Command},
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "memmon developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain (LLVM 22, rust-src for nightly, bpf-linker); idempotent.
    Setup,
    /// Build everything in release mode (runs setup first if anything is missing).
    Build,
    /// Run `memmon agent ARGS`; with no ARGS, run the bundled leaking demo and attach to it.
    Run {
        /// Arguments for `memmon agent`, e.g. `-- --pid 1234`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure the cost per malloc+free pair: untraced, trap floor, memmon (needs root).
    Bench,
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
        Task::Setup => setup::run(),
        Task::Build => build(),
        Task::Run { args } => {
            build()?;
            if args.is_empty() { demo() } else { agent(&args) }
        }
        Task::Bench => {
            build()?;
            cargo(&["run", "--release", "--quiet", "--package", "memmon-tests", "--bin", "memmon-bench"], &[])
        }
        Task::Test { args } => {
            build()?;
            cargo(&["test", "--release"], &args)
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace").to_path_buf()
}

fn build() -> Result<()> {
    if !setup::is_complete() {
        setup::run()?;
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

/// Builds and starts the demo program, attaches memmon for 15 s, then stops both.
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
    let result = agent(&["--pid".into(), pid, "--duration".into(), "15".into(), "--report-interval".into(), "3".into()]);
    demo.0.kill().ok();
    demo.0.wait().ok();
    result
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
