use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand, parser::ValueSource};
use memmon::{agent, commands::Client, config::AgentConfig, profiles::report::ReportArgs};

/// memmon: where a running process' memory goes, and what leaks.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to processes, watch them, and serve the control API until stopped.
    Agent(AgentConfig),
    /// What the agent is attached to, its allocator probes, and lost events.
    Status(Client),
    /// Whether the agent works: exit code 0 healthy, 1 degraded, 2 failed.
    HealthCheck(Client),
    /// What is leaking, by severity, with evidence.
    CheckLeaks {
        #[command(flatten)]
        client: Client,
        /// Add the evidence and full stacks.
        #[arg(long)]
        verbose: bool,
    },
    /// Where memory is: totals, top sites, size classes, modules.
    MemorySummary(Client),
    /// Take a snapshot now and show the summary.
    UpdateMetrics(Client),
    /// Start a profiling session: a pprof heap profile of what is allocated from now on.
    StartProfiling {
        #[command(flatten)]
        client: Client,
        /// How long the session runs (minutes, fractions allowed; default 10, at most
        /// MEMMON_MAX_PROFILE_DURATION_MINUTES).
        #[arg(long, value_name = "MINUTES")]
        duration: Option<f64>,
        /// Profile only this traced process (repeat for several; default: all of them).
        #[arg(long = "pid", value_name = "PID")]
        pids: Vec<u32>,
    },
    /// End a profiling session now and write its profile.
    StopProfiling {
        #[command(flatten)]
        client: Client,
        /// The id start-profiling printed (also in `memmon status`).
        #[arg(long, value_name = "ID")]
        profile_id: String,
    },
    /// Remove profiles older than MEMMON_PROFILING_CLEANUP_DAYS from the profile directory.
    CleanupProfiles {
        #[command(flatten)]
        client: Client,
        /// Override the agent's MEMMON_PROFILING_CLEANUP_DAYS for this cleanup.
        #[arg(long, value_name = "DAYS")]
        older_than_days: Option<f64>,
    },
    /// Run a command under memmon from its first allocation and report what it still holds at
    /// exit (valgrind's HEAP SUMMARY, top sites); exit code: the command's, or --error-exitcode.
    Run(memmon::launch::RunArgs),
    /// Offline views of a saved profile: flamegraph (SVG), table, tree, summary.
    Report(ReportArgs),
}

fn run_agent(config: AgentConfig) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(agent::run(config)))
        .map(|()| ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,memmon::audit=info")).init();
    let matches = Cli::command()
        .try_get_matches()
        .unwrap_or_else(|err| memmon::config::name_the_variable(err, &Cli::command()).exit());
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|err| err.exit());
    let result = match cli.command {
        Command::Agent(mut config) => {
            let agent_matches = matches.subcommand_matches("agent").expect("the agent subcommand was parsed");
            config.apply_preset(|id| agent_matches.value_source(id) == Some(ValueSource::DefaultValue));
            run_agent(config)
        }
        Command::Status(client) => client.status(),
        Command::HealthCheck(client) => client.health_check(),
        Command::CheckLeaks { client, verbose } => client.check_leaks(verbose),
        Command::MemorySummary(client) => client.memory_summary(),
        Command::UpdateMetrics(client) => client.update_metrics(),
        Command::StartProfiling { client, duration, pids } => client.start_profiling(duration, &pids),
        Command::StopProfiling { client, profile_id } => client.stop_profiling(&profile_id),
        Command::CleanupProfiles { client, older_than_days } => client.cleanup_profiles(older_than_days),
        Command::Report(args) => memmon::profiles::report::run(&args),
        Command::Run(args) => memmon::launch::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("memmon: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
