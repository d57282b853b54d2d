use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use memmon::{
    agent::{self, AgentOptions},
    tracer::{Capacity, TracerOptions},
};

/// memmon: where a running process' memory goes, and what leaks.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to processes and report live memory by allocation site until stopped.
    Agent(AgentArgs),
}

#[derive(clap::Args)]
struct AgentArgs {
    /// Process to trace (repeat for several).
    #[arg(long = "pid", required = true, value_name = "PID")]
    pids: Vec<u32>,
    /// Seconds between live reports on stdout; 0 prints only the final report.
    #[arg(long, env = "MEMMON_REPORT_INTERVAL", default_value_t = 5)]
    report_interval: u64,
    /// Sites per report.
    #[arg(long, env = "MEMMON_TOP", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    top: u64,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM or the targets exit).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    duration: Option<u64>,
    /// Capacity of the kernel's live-allocation table.
    #[arg(long, env = "MEMMON_MAX_LIVE_ALLOCATIONS", default_value_t = memmon_common::DEFAULT_MAX_LIVE_ALLOCATIONS,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_live_allocations: u32,
    /// Capacity of the kernel's site (distinct stack) tables.
    #[arg(long, env = "MEMMON_MAX_SITES", default_value_t = memmon_common::DEFAULT_MAX_SITES,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_sites: u32,
    /// Move free-type probes past instructions the kernel would single-step, when provably
    /// equivalent (false: probe every function at its entry).
    #[arg(long, env = "MEMMON_OPTIMIZE_PROBE_SITES", default_value_t = true, action = clap::ArgAction::Set)]
    optimize_probe_sites: bool,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent(args) => {
            let options = AgentOptions {
                pids: args.pids,
                report_interval: (args.report_interval > 0)
                    .then(|| Duration::from_secs(args.report_interval)),
                top: args.top as usize,
                duration: args.duration.map(Duration::from_secs),
                tracer: TracerOptions {
                    capacity: Capacity {
                        max_live_allocations: args.max_live_allocations,
                        max_sites: args.max_sites,
                    },
                    optimize_probe_sites: args.optimize_probe_sites,
                    ..TracerOptions::default()
                },
            };
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(agent::run(options)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("memmon: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
