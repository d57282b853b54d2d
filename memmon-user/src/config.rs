//! The agent's configuration: every option is a flag with a `MEMMON_*` environment fallback
//! (DESIGN.md's table), validated at start with errors that name the variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Result, bail};

use crate::{
    durations,
    leaks::Thresholds,
    tracer::{Capacity, TracerOptions},
    track::{self, Spec, TrackConfig},
};

const MIB: f64 = 1024.0 * 1024.0;

/// How much the agent traces (see `agent::state::capture`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Every allocation, from attach to exit: the allocator probes stay attached.
    Exact,
    /// No allocator probes: RSS, mappings and brk from /proc and the memory syscalls'
    /// tracepoints; growth opens a capture window with the allocator probes for
    /// MEMMON_CAPTURE_WINDOW seconds.
    AlwaysOn,
}

impl Tier {
    pub fn name(self) -> &'static str {
        match self {
            Tier::Exact => "exact",
            Tier::AlwaysOn => "always-on",
        }
    }
}

/// Named sets of defaults, as the original design's deployment configurations; an explicit
/// flag or MEMMON_* variable overrides what the preset says.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// The node agent: always-on tier, capture windows under a 1% overhead budget, leak checks
    /// every 10 minutes.
    Production,
    /// A developer's machine: exact tracking, snapshots and leak checks every second.
    Development,
}

#[derive(clap::Args, Clone, Debug)]
pub struct AgentConfig {
    /// Defaults for a deployment: production or development (explicit options override them).
    #[arg(long, env = "MEMMON_PRESET", value_enum)]
    pub preset: Option<Preset>,
    /// exact: allocator probes from attach on; always-on: none until growth opens a capture
    /// window.
    #[arg(long, env = "MEMMON_TIER", value_enum, default_value = "exact")]
    pub tier: Tier,
    /// Seconds a capture window keeps the allocator probes attached (always-on tier).
    #[arg(long, env = "MEMMON_CAPTURE_WINDOW", default_value = "60", value_parser = seconds("MEMMON_CAPTURE_WINDOW"))]
    pub capture_window: u64,
    /// Seconds after a capture window closes before growth may open the next one (0: none);
    /// an operator's start-profiling is never held back.
    #[arg(long, env = "MEMMON_CAPTURE_COOLDOWN", default_value = "300", value_parser = seconds_or_none("MEMMON_CAPTURE_COOLDOWN"))]
    pub capture_cooldown: u64,
    /// Share of the targets' CPU time the allocator probes may cost (0.01 = 1%), averaged over
    /// 10 minutes; capture windows shrink or wait to stay under it.
    #[arg(long, env = "MEMMON_OVERHEAD_BUDGET", default_value = "0.01", allow_negative_numbers = true, value_parser = fraction("MEMMON_OVERHEAD_BUDGET"))]
    pub overhead_budget: f64,
    /// Process to trace (repeat, or comma-separate in MEMMON_PID, for several).
    #[arg(long = "pid", env = "MEMMON_PID", value_delimiter = ',', required = true, value_name = "PID")]
    pub pids: Vec<u32>,
    /// TCP address of /metrics and /health (and of the rest of the API, with
    /// MEMMON_API_TOKEN_FILE). Loopback unless you mean otherwise.
    #[arg(long, env = "MEMMON_LISTEN", default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,
    /// The control socket, serving every endpoint to root and the agent's user (default:
    /// /run/memmon/control-PORT.sock, PORT the one MEMMON_LISTEN bound).
    #[arg(long, env = "MEMMON_CONTROL_SOCKET", value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// File with a bearer token (one line, ≥ 16 characters, mode 0600, owned by root or the
    /// agent's user): with it, TCP serves the whole API to requests that carry the token.
    #[arg(long, env = "MEMMON_API_TOKEN_FILE", value_name = "PATH")]
    pub api_token_file: Option<PathBuf>,
    /// Seconds between snapshots of the kernel tables and /proc.
    #[arg(long, env = "MEMMON_METRICS_UPDATE_INTERVAL", default_value = "15", value_parser = seconds("MEMMON_METRICS_UPDATE_INTERVAL"))]
    pub metrics_update_interval: u64,
    /// Seconds between leak checks.
    #[arg(long, env = "MEMMON_LEAK_CHECK_INTERVAL", default_value = "60", value_parser = seconds("MEMMON_LEAK_CHECK_INTERVAL"))]
    pub leak_check_interval: u64,
    /// Serve Prometheus metrics on /metrics.
    #[arg(long, env = "MEMMON_PROMETHEUS_METRICS_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub prometheus_metrics_enabled: bool,
    /// How many sites (by live bytes) get their own series in /metrics.
    #[arg(long, env = "MEMMON_METRICS_TOP_SITES", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub metrics_top_sites: u64,
    /// Run the leak detector.
    #[arg(long, env = "MEMMON_LEAK_DETECTION_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub leak_detection_enabled: bool,
    /// Growth ratio of a process' RSS or heap over the window that counts as growth (0.2 = +20%).
    #[arg(long, env = "MEMMON_LEAK_GROWTH_THRESHOLD", default_value = "0.2", allow_negative_numbers = true, value_parser = non_negative("MEMMON_LEAK_GROWTH_THRESHOLD"))]
    pub leak_growth_threshold: f64,
    /// Level (MiB) above which sustained growth is critical.
    #[arg(long, env = "MEMMON_LEAK_MEMORY_THRESHOLD_MB", default_value = "100", allow_negative_numbers = true, value_parser = non_negative("MEMMON_LEAK_MEMORY_THRESHOLD_MB"))]
    pub leak_memory_threshold_mb: f64,
    /// Growth ratio of one site over its growth streak that counts as a leak (1.0 = doubled).
    #[arg(long, env = "MEMMON_LEAK_SITE_GROWTH_THRESHOLD", default_value = "1.0", allow_negative_numbers = true, value_parser = non_negative("MEMMON_LEAK_SITE_GROWTH_THRESHOLD"))]
    pub leak_site_growth_threshold: f64,
    /// RSS (MiB) above which a process is reported at info level.
    #[arg(long, env = "MEMMON_HIGH_USAGE_THRESHOLD_MB", default_value = "50", allow_negative_numbers = true, value_parser = non_negative("MEMMON_HIGH_USAGE_THRESHOLD_MB"))]
    pub high_usage_threshold_mb: f64,
    /// Seconds between live reports on stdout; 0 prints only the final report.
    #[arg(long, env = "MEMMON_REPORT_INTERVAL", default_value_t = 5)]
    pub report_interval: u64,
    /// Sites per report and per memory summary.
    #[arg(long, env = "MEMMON_TOP", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub top: u64,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub duration: Option<u64>,
    /// Measure every call of this function: bytes allocated, freed and kept (net), allocations
    /// and duration per call (repeat, or comma-separate in MEMMON_TRACK_FUNCTIONS). SYMBOL is
    /// looked up in the main binary and every loaded library; SYMBOL@OBJECT picks the object.
    #[arg(long = "track-function", env = "MEMMON_TRACK_FUNCTIONS", value_delimiter = ',', value_name = "SYMBOL[@OBJECT]",
          value_parser = track_spec)]
    pub track_functions: Vec<Spec>,
    /// A tracked call that takes longer than this (seconds) is counted as slow.
    #[arg(long, env = "MEMMON_SLOW_CALL_SECONDS", default_value = "1", allow_negative_numbers = true, value_parser = positive("MEMMON_SLOW_CALL_SECONDS"))]
    pub slow_call_seconds: f64,
    #[command(flatten)]
    pub tables: TableConfig,
    /// Trace the targets' forked children too (fork, vfork, posix_spawn), each from the moment
    /// memmon attaches to it, within 20 ms of the fork.
    #[arg(long, env = "MEMMON_FOLLOW_FORKS")]
    pub follow_forks: bool,
    /// Followed children traced at once (`--follow-forks`); forks beyond are counted, not followed.
    #[arg(long, env = "MEMMON_MAX_FOLLOWED", default_value_t = crate::forks::DEFAULT_MAX_FOLLOWED,
          value_parser = clap::value_parser!(u32).range(1..=512))]
    pub max_followed: u32,
    /// Move each allocator function's probes past instructions the kernel would single-step, to
    /// the first one it emulates, when provably equivalent (false: probe every function at its
    /// entry).
    #[arg(long, env = "MEMMON_OPTIMIZE_PROBE_SITES", default_value_t = true, action = clap::ArgAction::Set)]
    pub optimize_probe_sites: bool,
    /// Once attached, keep only the capabilities the rest needs (README "Privileges"); false
    /// keeps whatever the agent started with.
    #[arg(long, env = "MEMMON_DROP_CAPABILITIES", default_value_t = true, action = clap::ArgAction::Set)]
    pub drop_capabilities: bool,
    /// Directory for profiles (created 0700 if missing; must be writable).
    #[arg(long, env = "MEMMON_PROFILING_OUTPUT_DIR", default_value = "/var/lib/memmon/profiles")]
    pub profiling_output_dir: PathBuf,
    /// Allow on-demand profiling sessions.
    #[arg(long, env = "MEMMON_PROFILING_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub profiling_enabled: bool,
    /// Largest profile file (MiB): a session whose next checkpoint would exceed it ends truncated.
    #[arg(long, env = "MEMMON_MAX_PROFILE_SIZE_MB", default_value = "100", allow_negative_numbers = true, value_parser = positive("MEMMON_MAX_PROFILE_SIZE_MB"))]
    pub max_profile_size_mb: f64,
    /// Longest profiling session a client may ask for (minutes); sessions default to 10.
    #[arg(long, env = "MEMMON_MAX_PROFILE_DURATION_MINUTES", default_value = "60", allow_negative_numbers = true, value_parser = span("MEMMON_MAX_PROFILE_DURATION_MINUTES", "minutes", 60.0, Zero::Refused))]
    pub max_profile_duration_minutes: f64,
    /// `cleanup-profiles` (and the agent, hourly) removes profiles older than this (days).
    #[arg(long, env = "MEMMON_PROFILING_CLEANUP_DAYS", default_value = "7", allow_negative_numbers = true, value_parser = span("MEMMON_PROFILING_CLEANUP_DAYS", "days", 86_400.0, Zero::Allowed))]
    pub profiling_cleanup_days: f64,
}

/// `AgentConfig` as a command of its own, for `AgentConfig::from_args`.
#[derive(clap::Parser)]
struct AgentArgs {
    #[command(flatten)]
    config: AgentConfig,
}

impl AgentConfig {
    /// The options alone, as a clap command (what `from_args` parses).
    pub fn command() -> clap::Command {
        <AgentArgs as clap::CommandFactory>::command()
    }

    /// The configuration from these arguments (`argv[0]` first) and the MEMMON_* environment,
    /// preset applied, as `memmon agent` reads it: for tests and the fuzz targets, which must
    /// see the very parsing the agent does.
    pub fn from_args<I, T>(argv: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(argv)?;
        let mut config = <AgentArgs as clap::FromArgMatches>::from_arg_matches(&matches)?.config;
        config.apply_preset(|id| matches.value_source(id) == Some(clap::parser::ValueSource::DefaultValue));
        Ok(config)
    }

    /// Applies the preset to every option still at its default: `is_default(id)` says whether
    /// the option with that clap id was left to its default (neither given nor in the
    /// environment).
    pub fn apply_preset(&mut self, is_default: impl Fn(&str) -> bool) {
        let Some(preset) = self.preset else { return };
        let (tier, leak_check, snapshot) = match preset {
            Preset::Production => (Tier::AlwaysOn, 600, None),
            Preset::Development => (Tier::Exact, 1, Some(1)),
        };
        if is_default("tier") {
            self.tier = tier;
        }
        if is_default("leak_check_interval") {
            self.leak_check_interval = leak_check;
        }
        if let Some(seconds) = snapshot.filter(|_| is_default("metrics_update_interval")) {
            self.metrics_update_interval = seconds;
        }
    }

    /// Checks what clap cannot: relations between options and the file system.
    pub fn validate(&self) -> Result<()> {
        if self.profiling_enabled {
            let dir = &self.profiling_output_dir;
            if let Err(err) = ensure_private_dir(dir) {
                bail!(
                    "MEMMON_PROFILING_OUTPUT_DIR (--profiling-output-dir) {} is not a usable directory: \
                     {err}; choose a writable directory or set MEMMON_PROFILING_ENABLED=false",
                    dir.display()
                );
            }
        }
        Ok(())
    }

    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            growth_ratio: self.leak_growth_threshold,
            memory_bytes: (self.leak_memory_threshold_mb * MIB) as u64,
            site_growth_ratio: self.leak_site_growth_threshold,
            high_usage_bytes: (self.high_usage_threshold_mb * MIB) as u64,
        }
    }

    /// The functions to track, and the thresholds that make a call slow or high-usage
    /// (MEMMON_HIGH_USAGE_THRESHOLD_MB: allocated bytes per call).
    pub fn track_config(&self) -> TrackConfig {
        TrackConfig {
            specs: self.track_functions.clone(),
            thresholds: track::Thresholds {
                slow_ns: (self.slow_call_seconds * 1e9) as u64,
                high_usage_bytes: (self.high_usage_threshold_mb * MIB) as u64,
            },
        }
    }

    pub fn tracer_options(&self) -> TracerOptions {
        TracerOptions {
            optimize_probe_sites: self.optimize_probe_sites,
            allocator_probes: self.tier == Tier::Exact,
            follow_forks: self.follow_forks,
            max_followed: self.max_followed,
            ..self.tables.tracer_options()
        }
    }

    pub fn capture_window_length(&self) -> Duration {
        Duration::from_secs(self.capture_window)
    }

    pub fn capture_cooldown(&self) -> Duration {
        Duration::from_secs(self.capture_cooldown)
    }

    pub fn metrics_update_period(&self) -> Duration {
        Duration::from_secs(self.metrics_update_interval)
    }

    pub fn leak_check_period(&self) -> Duration {
        Duration::from_secs(self.leak_check_interval)
    }

    pub fn max_profile_bytes(&self) -> u64 {
        (self.max_profile_size_mb * MIB) as u64
    }

    pub fn max_profile_duration(&self) -> Duration {
        durations::of(self.max_profile_duration_minutes, 60.0).expect("bounded by its value parser")
    }

    pub fn profiling_cleanup_age(&self) -> Duration {
        durations::of(self.profiling_cleanup_days, 86_400.0).expect("bounded by its value parser")
    }
}

/// The kernel tables' sizes (`memmon agent` and `memmon run`).
#[derive(clap::Args, Clone, Debug)]
pub struct TableConfig {
    /// Capacity of the kernel's live-allocation table.
    #[arg(long, env = "MEMMON_MAX_LIVE_ALLOCATIONS", default_value_t = memmon_common::DEFAULT_MAX_LIVE_ALLOCATIONS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_live_allocations: u32,
    /// Capacity of the kernel's site (distinct stack) tables.
    #[arg(long, env = "MEMMON_MAX_SITES", default_value_t = memmon_common::DEFAULT_MAX_SITES,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sites: u32,
    /// Kernel memory (MiB) for the unwind tables that stacks are walked with (the compiled CFI
    /// of every object the targets map); an object that does not fit gets truncated stacks,
    /// and status says which.
    #[arg(long, env = "MEMMON_UNWIND_TABLE_MAX_MB", default_value_t = memmon_common::unwind::DEFAULT_TABLE_MAX_MB,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub unwind_table_max_mb: u32,
}

impl TableConfig {
    pub fn tracer_options(&self) -> TracerOptions {
        TracerOptions {
            capacity: Capacity { max_live_allocations: self.max_live_allocations, max_sites: self.max_sites },
            unwind_table_max_mb: self.unwind_table_max_mb,
            ..TracerOptions::default()
        }
    }
}

/// Creates `dir` (0700) if missing and proves it writable by creating and removing a file.
fn ensure_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    crate::profiles::store::ProfileDir::open(dir)?;
    let probe = dir.join(format!(".memmon-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// A `--track-function` value: SYMBOL or SYMBOL@OBJECT.
fn track_spec(text: &str) -> Result<Spec, String> {
    text.parse::<Spec>().map_err(|why| format!("{why} (MEMMON_TRACK_FUNCTIONS)"))
}

/// A whole number of seconds, at least 1 (and at most `durations::MAX_SECONDS`).
fn seconds(variable: &'static str) -> impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync + 'static {
    move |text| match text.trim().parse::<u64>() {
        Ok(0) => Err(format!("must be at least 1 second ({variable})")),
        Ok(value) if value > durations::MAX_SECONDS => Err(too_long(variable)),
        Ok(value) => Ok(value),
        Err(_) => Err(format!("must be a whole number of seconds ({variable})")),
    }
}

/// Whole seconds, 0 meaning "none".
fn seconds_or_none(variable: &'static str) -> impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync + 'static {
    move |text| match text.trim().parse::<u64>() {
        Ok(value) if value > durations::MAX_SECONDS => Err(too_long(variable)),
        Ok(value) => Ok(value),
        Err(_) => Err(format!("must be a whole number of seconds, 0 for none ({variable})")),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Zero {
    Allowed,
    Refused,
}

/// A number of `unit`s, ≥ 0 (or > 0), at most `durations::MAX_SECONDS` long.
fn span(
    variable: &'static str,
    unit: &'static str,
    unit_seconds: f64,
    zero: Zero,
) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    let least = if zero == Zero::Allowed { "≥ 0" } else { "> 0" };
    move |text| match text.trim().parse::<f64>() {
        Ok(value) if value == 0.0 && zero == Zero::Refused => Err(format!("must be a number of {unit} {least} ({variable})")),
        Ok(value) if durations::of(value, unit_seconds).is_some() => Ok(value),
        Ok(value) if value.is_finite() && value > 0.0 => Err(too_long(variable)),
        _ => Err(format!("must be a number of {unit} {least} ({variable})")),
    }
}

fn too_long(variable: &str) -> String {
    format!("must be at most {} ({variable})", durations::MAX_DESCRIBED)
}

/// A finite number > 0.
fn positive(variable: &'static str) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |text| match text.trim().parse::<f64>() {
        Ok(value) if value.is_finite() && value > 0.0 => Ok(value),
        Ok(_) => Err(format!("must be a number > 0 ({variable})")),
        Err(_) => Err(format!("must be a number ({variable})")),
    }
}

/// A share: a number > 0 and ≤ 1.
fn fraction(variable: &'static str) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |text| match text.trim().parse::<f64>() {
        Ok(value) if value > 0.0 && value <= 1.0 => Ok(value),
        Ok(_) => Err(format!("must be a fraction > 0 and ≤ 1, e.g. 0.01 for 1% ({variable})")),
        Err(_) => Err(format!("must be a number ({variable})")),
    }
}

/// A finite number ≥ 0.
fn non_negative(variable: &'static str) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |text| match text.trim().parse::<f64>() {
        Ok(value) if value.is_finite() && value >= 0.0 => Ok(value),
        Ok(_) => Err(format!("must be a number ≥ 0 ({variable})")),
        Err(_) => Err(format!("must be a number ({variable})")),
    }
}

/// clap's own value checks (types, ranges, choices) name the flag, but the value may have come
/// from the flag's MEMMON_* variable: the error then names the variable too, so an operator who
/// set it in a unit file finds it.
pub fn name_the_variable(mut err: clap::Error, command: &clap::Command) -> clap::Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(err.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation) {
        return err;
    }
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else { return err };
    let Some(long) = arg.split_whitespace().next().and_then(|flag| flag.strip_prefix("--")) else { return err };
    let long = long.to_string();
    let variable = std::iter::once(command)
        .chain(command.get_subcommands())
        .flat_map(|command| command.get_arguments())
        .find(|argument| argument.get_long() == Some(long.as_str()))
        .and_then(|argument| argument.get_env())
        .map(|env| env.to_string_lossy().into_owned());
    if let Some(variable) = variable {
        err.insert(ContextKind::Suggested, ContextValue::StyledStrs(vec![format!("the value comes from --{long} or {variable}").into()]));
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<AgentConfig, String> {
        let mut argv = vec!["memmon", "--profiling-enabled", "false"];
        argv.extend_from_slice(args);
        AgentConfig::from_args(argv).map_err(|e| e.to_string())
    }

    #[test]
    fn presets_set_defaults_and_explicit_options_win() {
        let production = parse(&["--pid", "1", "--preset", "production"]).unwrap();
        assert_eq!((production.tier, production.leak_check_interval, production.metrics_update_interval), (Tier::AlwaysOn, 600, 15));
        assert_eq!((production.overhead_budget, production.capture_window), (0.01, 60));
        let development = parse(&["--pid", "1", "--preset", "development"]).unwrap();
        assert_eq!((development.tier, development.leak_check_interval, development.metrics_update_interval), (Tier::Exact, 1, 1));
        let overridden = parse(&["--pid", "1", "--preset", "production", "--leak-check-interval", "30", "--tier", "exact"]).unwrap();
        assert_eq!((overridden.tier, overridden.leak_check_interval), (Tier::Exact, 30));
        let none = parse(&["--pid", "1"]).unwrap();
        assert_eq!((none.tier, none.leak_check_interval), (Tier::Exact, 60));
        let err = parse(&["--pid", "1", "--preset", "staging"]).unwrap_err();
        assert!(err.contains("production") && err.contains("development"), "{err}");
    }

    #[test]
    fn the_budget_is_a_fraction() {
        for bad in ["0", "1.5", "-0.1", "lots"] {
            let err = parse(&["--pid", "1", "--overhead-budget", bad]).unwrap_err();
            assert!(err.contains("MEMMON_OVERHEAD_BUDGET"), "{bad}: {err}");
        }
        assert_eq!(parse(&["--pid", "1", "--overhead-budget", "0.05"]).unwrap().overhead_budget, 0.05);
        let err = parse(&["--pid", "1", "--capture-window", "0"]).unwrap_err();
        assert!(err.contains("MEMMON_CAPTURE_WINDOW"), "{err}");
    }

    #[test]
    fn the_cooldown_is_whole_seconds_and_may_be_none() {
        assert_eq!(parse(&["--pid", "1"]).unwrap().capture_cooldown(), Duration::from_secs(300));
        assert_eq!(parse(&["--pid", "1", "--capture-cooldown", "0"]).unwrap().capture_cooldown(), Duration::ZERO);
        for bad in ["1.5", "soon", "5m"] {
            let err = parse(&["--pid", "1", "--capture-cooldown", bad]).unwrap_err();
            assert!(err.contains("MEMMON_CAPTURE_COOLDOWN"), "{bad}: {err}");
        }
    }

    #[test]
    fn defaults_follow_the_design_table() {
        let config = parse(&["--pid", "1"]).unwrap();
        assert_eq!(config.metrics_update_interval, 15);
        assert_eq!(config.leak_check_interval, 60);
        assert_eq!(config.listen.to_string(), "127.0.0.1:9464");
        let thresholds = config.thresholds();
        assert_eq!(thresholds.growth_ratio, 0.2);
        assert_eq!(thresholds.memory_bytes, 100 * 1024 * 1024);
        assert_eq!(thresholds.site_growth_ratio, 1.0);
        assert_eq!(thresholds.high_usage_bytes, 50 * 1024 * 1024);
        assert_eq!(config.max_profile_bytes(), 100 * 1024 * 1024);
        assert_eq!(config.max_profile_duration(), Duration::from_secs(3600));
        assert_eq!(config.profiling_cleanup_age(), Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn durations_past_a_hundred_years_are_refused() {
        for (option, variable) in [
            ("--max-profile-duration-minutes=1e300", "MEMMON_MAX_PROFILE_DURATION_MINUTES"),
            ("--profiling-cleanup-days=36501", "MEMMON_PROFILING_CLEANUP_DAYS"),
            ("--capture-cooldown=18446744073709551615", "MEMMON_CAPTURE_COOLDOWN"),
            ("--capture-window=3153600001", "MEMMON_CAPTURE_WINDOW"),
        ] {
            let err = parse(&["--pid", "1", option]).unwrap_err();
            assert!(err.contains(&format!("must be at most 100 years ({variable})")), "{option}: {err}");
        }
        let longest = parse(&["--pid", "1", "--max-profile-duration-minutes", "52560000"]).unwrap();
        assert_eq!(longest.max_profile_duration(), Duration::from_secs(crate::durations::MAX_SECONDS));
        let err = parse(&["--pid", "1", "--max-profile-duration-minutes", "0"]).unwrap_err();
        assert!(err.contains("minutes > 0 (MEMMON_MAX_PROFILE_DURATION_MINUTES)"), "{err}");
        assert_eq!(parse(&["--pid", "1", "--profiling-cleanup-days", "0"]).unwrap().profiling_cleanup_age(), Duration::ZERO);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = parse(&["--pid", "1", "--leak-growth-threshold", "-0.5"]).unwrap_err();
        assert!(err.contains("MEMMON_LEAK_GROWTH_THRESHOLD"), "{err}");
        let err = parse(&["--pid", "1", "--leak-check-interval", "0"]).unwrap_err();
        assert!(err.contains("at least 1 second (MEMMON_LEAK_CHECK_INTERVAL)"), "{err}");
        let err = parse(&["--pid", "1", "--metrics-update-interval", "1.5"]).unwrap_err();
        assert!(err.contains("MEMMON_METRICS_UPDATE_INTERVAL"), "{err}");
        let err = parse(&["--pid", "1", "--max-profile-size-mb", "0"]).unwrap_err();
        assert!(err.contains("> 0 (MEMMON_MAX_PROFILE_SIZE_MB)"), "{err}");
        let err = parse(&["--pid", "1", "--profiling-cleanup-days", "-1"]).unwrap_err();
        assert!(err.contains("MEMMON_PROFILING_CLEANUP_DAYS"), "{err}");
        let err = parse(&["--pid", "1", "--max-profile-duration-minutes", "soon"]).unwrap_err();
        assert!(err.contains("MEMMON_MAX_PROFILE_DURATION_MINUTES"), "{err}");
    }

    #[test]
    fn tracked_functions_and_their_thresholds() {
        let config = parse(&["--pid", "1", "--track-function", "processCommand", "--track-function", "handle@libfoo.so"]).unwrap();
        let track = config.track_config();
        assert_eq!(track.specs.iter().map(ToString::to_string).collect::<Vec<_>>(), ["processCommand", "handle@libfoo.so"]);
        assert_eq!(track.thresholds.slow_ns, 1_000_000_000);
        assert_eq!(track.thresholds.high_usage_bytes, 50 << 20);
        let err = parse(&["--pid", "1", "--track-function", "a b"]).unwrap_err();
        assert!(err.contains("MEMMON_TRACK_FUNCTIONS"), "{err}");
        let err = parse(&["--pid", "1", "--slow-call-seconds", "0"]).unwrap_err();
        assert!(err.contains("MEMMON_SLOW_CALL_SECONDS"), "{err}");
    }

    #[test]
    fn one_second_intervals_are_accepted() {
        let config = parse(&["--pid", "1,2", "--metrics-update-interval", "1", "--leak-check-interval", "1"]).unwrap();
        assert_eq!(config.pids, [1, 2]);
        assert_eq!(config.leak_check_period(), Duration::from_secs(1));
    }

    #[test]
    fn unwritable_profile_directory_names_the_variable() {
        let mut config = parse(&["--pid", "1"]).unwrap();
        config.profiling_enabled = true;
        config.profiling_output_dir = PathBuf::from("/proc/memmon-cannot-be-here");
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("MEMMON_PROFILING_OUTPUT_DIR"), "{err}");
        config.profiling_enabled = false;
        config.validate().unwrap();
    }

    #[test]
    fn clap_value_errors_name_the_variable_too() {
        let command = AgentConfig::command();
        let err = command.clone().try_get_matches_from(["memmon", "--pid", "1", "--metrics-top-sites", "0"]).unwrap_err();
        let text = name_the_variable(err, &command).to_string();
        assert!(text.contains("--metrics-top-sites") && text.contains("MEMMON_METRICS_TOP_SITES"), "{text}");
        let err = command.clone().try_get_matches_from(["memmon", "--pid", "1", "--tier", "fast"]).unwrap_err();
        assert!(name_the_variable(err, &command).to_string().contains("MEMMON_TIER"));
    }
}
