//! `memmon run [options] -- CMD [ARGS…]`: run a command with the probes in place before its
//! first allocation, and report what it still held when it exited, in valgrind's terms.
//!
//! How: the command is forked stopped and seized with ptrace (`child`). At its exec stop the
//! new image and its loader are mapped and nothing of the program has run; memmon asks the
//! loader which objects it will map (`objects`), finds the allocator among them, and attaches
//! by path (uprobes live on inodes, so they fire once the loader maps the library). While the
//! loader runs, memmon stops the child at each of its syscalls, so the unwind tables know every
//! library it maps before any of its code runs; at the first syscall from outside the loader
//! the child runs freely (code mapped later, dlopen, is picked up within 20 ms, as the agent
//! does). At the exit stop (PTRACE_O_TRACEEXIT) the process still exists: memmon reads the
//! final counters and the memory map then, so the report is symbolized after the process is
//! gone.
//!
//! Execs are followed: the report covers the image that exited (counters since its exec; what
//! the previous image held went with its address space). `--follow-forks` traces forked
//! children too (fork, vfork, posix_spawn), each with a report of its own; memmon waits for all
//! of them. Signals sent to memmon (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 from
//! kill(2)) are forwarded to the command; the ones a terminal sends to the whole foreground
//! group reach the command directly and are not sent twice. If memmon dies, the kernel kills
//! the command (PTRACE_O_EXITKILL): it is never left traced, stopped or orphaned.

pub mod child;
pub mod objects;
pub mod report;
pub mod suppressions;

use std::{
    collections::HashMap,
    ffi::OsString,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};
use memmon_common::SiteStats;

use crate::{
    allocator::Allocator,
    commands::Format,
    config::TableConfig,
    process::Process,
    profiles,
    symbolize::Symbolizer,
    tracer::Tracer,
};
use child::{EVENT_CLONE, EVENT_EXEC, EVENT_EXIT, EVENT_FORK, EVENT_STOP, EVENT_VFORK, PTRACE_CONT, PTRACE_LISTEN, PTRACE_SYSCALL, ptrace};
use report::{Capture, ExitReport, Outcome};
use suppressions::Suppressions;

#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Trace the command's forked children too (fork, vfork, posix_spawn); each gets a report.
    #[arg(long, env = "MEMMON_FOLLOW_FORKS")]
    pub follow_forks: bool,
    /// The report's format.
    #[arg(long, value_enum, default_value_t = Format::Text, env = "MEMMON_FORMAT")]
    pub format: Format,
    /// Write the report to FILE instead of stderr.
    #[arg(long, value_name = "FILE", env = "MEMMON_OUTPUT")]
    pub output: Option<PathBuf>,
    /// Also write a gzipped pprof heap profile of the run to FILE (alloc and in-use at exit).
    #[arg(long, value_name = "FILE", env = "MEMMON_PROFILE")]
    pub profile: Option<PathBuf>,
    /// Exit with N when more than --leak-threshold bytes are in use at exit after suppressions.
    #[arg(long, value_name = "N", env = "MEMMON_ERROR_EXITCODE", value_parser = clap::value_parser!(u8).range(1..))]
    pub error_exitcode: Option<u8>,
    /// Bytes in use at exit (after suppressions) tolerated before --error-exitcode applies.
    #[arg(long, value_name = "BYTES", env = "MEMMON_LEAK_THRESHOLD", default_value_t = 0)]
    pub leak_threshold: u64,
    /// LSan-style suppressions: `leak:PATTERN` lines (repeat, or comma-separate, for several files).
    #[arg(long = "suppressions", value_name = "FILE", env = "MEMMON_SUPPRESSIONS", value_delimiter = ',')]
    pub suppressions: Vec<PathBuf>,
    /// Sites shown per process (largest in use at exit first).
    #[arg(long, env = "MEMMON_TOP", default_value_t = 10)]
    pub top: usize,
    #[command(flatten)]
    pub tables: TableConfig,
    /// The command and its arguments (after `--`, or from the first word that is not an option).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// Runs the command and reports; the exit code is the command's (128+N if signal N killed
/// it), or `--error-exitcode` when it leaked over the threshold.
pub fn run(args: &RunArgs) -> Result<ExitCode> {
    let mut suppressions = Suppressions::default();
    for file in &args.suppressions {
        suppressions.extend(Suppressions::load(file)?);
    }
    let path = match child::resolve(&args.command[0]) {
        Ok(path) => path,
        Err(err) => {
            eprintln!("memmon: error: cannot run {err}");
            return Ok(ExitCode::from(err.exit_code));
        }
    };
    crate::tracer::require_privileges()?;
    let (signals, mask) = child::block_signals()?;
    let mut options = libc::PTRACE_O_EXITKILL | libc::PTRACE_O_TRACEEXEC | libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_TRACESYSGOOD;
    if args.follow_forks {
        options |= libc::PTRACE_O_TRACEFORK | libc::PTRACE_O_TRACEVFORK;
    }
    let spawned = child::spawn_seized(&path, &args.command, &mask, options)?;
    let mut run = Run {
        args,
        tracer: None,
        symbolizer: Symbolizer::new(),
        processes: vec![Traced::new(spawned.pid, args.command.iter().map(|a| a.to_string_lossy().into_owned()).collect())],
        main: spawned.pid,
        started: Instant::now(),
    };
    let result = run.supervise(signals);
    // SAFETY: our signalfd.
    unsafe { libc::close(signals) };
    if let Err(err) = result {
        for process in run.processes.iter().filter(|p| p.outcome.is_none()) {
            child::kill_and_reap(process.pid);
        }
        return Err(err);
    }
    let main = &run.processes[0];
    let Some(outcome) = main.outcome else { return Err(anyhow!("the command's end was not seen")) };
    if run.tracer.is_none() {
        // It never reached its exec.
        let why = spawned.exec_error().map_or_else(|| "its exec failed".to_string(), |err| err.to_string());
        eprintln!("memmon: error: cannot run {}: {why}", path.display());
        return Ok(ExitCode::from(if let Outcome::Exited(code) = outcome { code as u8 } else { 127 }));
    }
    let code = run.finish(outcome, &suppressions)?;
    if let Some(tracer) = run.tracer.take() {
        exit_leaving_teardown(tracer, code);
    }
    Ok(ExitCode::from(code))
}

/// Exits with `code` at once, leaving the detaching of the probes to a helper process.
///
/// The kernel detaches uprobes one at a time under its `event_mutex`, each waiting for RCU
/// grace periods: ~0.1 s per probe on these VMs, 2 s for glibc's set (measured; detaching from
/// parallel threads does not help). A test suite running hundreds of binaries under memmon
/// should not pay that: a forked copy of memmon, with /dev/null as its stdio, holds the last
/// references to the probes and drops them once memmon has exited. The command is gone by then
/// and the probes were bound to its pid, so nothing else is traced meanwhile.
fn exit_leaving_teardown(tracer: Tracer, code: u8) -> ! {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: memmon is single-threaded here; the helper calls only async-signal-safe
    // functions and never returns into Rust code.
    unsafe {
        let parent = libc::getpid();
        let helper = libc::fork();
        if helper == 0 {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            libc::setsid();
            // The last reference must be ours, or memmon's own exit would be the slow one.
            while libc::getppid() == parent {
                libc::usleep(1000);
            }
            libc::_exit(0);
        }
        if helper < 0 {
            drop(tracer);
        } else {
            std::mem::forget(tracer);
        }
    }
    std::process::exit(code.into())
}

/// One traced process.
struct Traced {
    pid: i32,
    command: Vec<String>,
    /// While its dynamic loader runs: the loader's code, where its syscalls come from.
    loader: Option<(u64, u64)>,
    /// Site counters at its last exec, subtracted from what the kernel counts (the report
    /// covers the image that exits).
    baseline: HashMap<u64, SiteStats>,
    /// Whether its allocator is probed.
    tracked: bool,
    capture: Option<Capture>,
    outcome: Option<Outcome>,
    /// Printed instead of a report when it could not be tracked.
    note: Option<String>,
}

impl Traced {
    fn new(pid: i32, command: Vec<String>) -> Self {
        Self { pid, command, loader: None, baseline: HashMap::new(), tracked: false, capture: None, outcome: None, note: None }
    }
}

struct Run<'a> {
    args: &'a RunArgs,
    tracer: Option<Tracer>,
    symbolizer: Symbolizer,
    /// The command first, then followed children in the order they appeared.
    processes: Vec<Traced>,
    main: i32,
    started: Instant,
}

impl Run<'_> {
    fn supervise(&mut self, signals: libc::c_int) -> Result<()> {
        let mut last_observe = Instant::now();
        loop {
            loop {
                let mut status = 0;
                // SAFETY: waitpid with a valid status pointer.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL | libc::WNOHANG) };
                if pid <= 0 {
                    break;
                }
                self.event(pid, status)?;
            }
            if self.processes.iter().all(|p| p.outcome.is_some()) {
                return Ok(());
            }
            let mut poll = libc::pollfd { fd: signals, events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            unsafe { libc::poll(&mut poll, 1, 20) };
            self.forward_signals(signals);
            if let Some(tracer) = self.tracer.as_mut() {
                // dlopen'ed code gets unwind tables within a tick.
                if let Err(err) = tracer.refresh_code_mappings() {
                    log::debug!("refreshing code mappings: {err:#}");
                }
                if last_observe.elapsed() >= Duration::from_millis(100) {
                    last_observe = Instant::now();
                    for process in self.processes.iter().filter(|p| p.outcome.is_none() && p.tracked) {
                        self.symbolizer.observe(process.pid as u32);
                    }
                }
            }
        }
    }

    /// Forwards the signals someone sent memmon itself; a terminal's reach the command directly.
    fn forward_signals(&mut self, signals: libc::c_int) {
        loop {
            // SAFETY: signalfd_siginfo is plain data; read fills at most its size.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            let read = unsafe { libc::read(signals, (&mut info as *mut libc::signalfd_siginfo).cast(), size) };
            if read != size as isize {
                return;
            }
            let signal = info.ssi_signo as i32;
            if signal == libc::SIGCHLD || info.ssi_code == libc::SI_KERNEL {
                continue;
            }
            if self.processes[0].outcome.is_none() {
                log::info!("forwarding {} to pid {}", child::signal_name(signal), self.main);
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(self.main, signal) };
            }
        }
    }

    fn event(&mut self, pid: i32, status: i32) -> Result<()> {
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            let outcome =
                if libc::WIFEXITED(status) { Outcome::Exited(libc::WEXITSTATUS(status)) } else { Outcome::Killed(libc::WTERMSIG(status)) };
            if let Some(index) = self.index(pid) {
                if self.processes[index].capture.is_none() && self.processes[index].tracked {
                    // No exit stop (SIGKILL): the counters are still in the kernel maps, and
                    // the map was last read at most 100 ms before.
                    self.capture(index)?;
                }
                self.processes[index].outcome = Some(outcome);
            }
            return Ok(());
        }
        if !libc::WIFSTOPPED(status) {
            return Ok(());
        }
        let signal = libc::WSTOPSIG(status);
        let event = status >> 16;
        let Some(index) = self.index(pid) else {
            // A new child (its first stop comes before or after its parent's fork event).
            return self.new_child(pid);
        };
        match event {
            EVENT_EXEC => {
                let syscalls = self.exec_stop(index)?;
                resume(pid, if syscalls { PTRACE_SYSCALL } else { PTRACE_CONT }, 0);
            }
            EVENT_EXIT => {
                if self.processes[index].tracked {
                    self.capture(index)?;
                }
                resume(pid, PTRACE_CONT, 0);
            }
            EVENT_FORK | EVENT_VFORK | EVENT_CLONE => resume(pid, self.restart(index), 0),
            EVENT_STOP => {
                if matches!(signal, libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU) {
                    // A group stop: it stays stopped (job control) until SIGCONT.
                    let _ = ptrace(PTRACE_LISTEN, pid, 0, 0);
                } else {
                    resume(pid, self.restart(index), 0);
                }
            }
            _ if signal == (libc::SIGTRAP | 0x80) => self.syscall_stop(index)?,
            // A signal on its way to the process: delivered as it would be without memmon.
            _ => resume(pid, self.restart(index), signal as u64),
        }
        Ok(())
    }

    fn index(&self, pid: i32) -> Option<usize> {
        self.processes.iter().position(|p| p.pid == pid && p.outcome.is_none())
    }

    /// How a process resumes: stopping at syscalls while its loader runs.
    fn restart(&self, index: usize) -> u32 {
        if self.processes[index].loader.is_some() { PTRACE_SYSCALL } else { PTRACE_CONT }
    }

    fn syscall_stop(&mut self, index: usize) -> Result<()> {
        let pid = self.processes[index].pid;
        match child::syscall_stop(pid) {
            Ok(stop) if stop.entry => {
                let (start, end) = self.processes[index].loader.unwrap_or((0, 0));
                if !(start..end).contains(&stop.instruction_pointer) {
                    // The loader is done: every object it maps is in the unwind tables.
                    self.processes[index].loader = None;
                }
            }
            Ok(_) => {
                if let Some(tracer) = self.tracer.as_mut() {
                    tracer.refresh_code_mappings()?;
                }
            }
            Err(err) => {
                log::debug!("pid {pid}: PTRACE_GET_SYSCALL_INFO: {err}");
                self.processes[index].loader = None;
            }
        }
        resume(pid, self.restart(index), 0);
        Ok(())
    }

    /// A followed child's first stop: it has its parent's map, so its allocator is found as
    /// the agent finds one.
    fn new_child(&mut self, pid: i32) -> Result<()> {
        let command = cmdline(pid);
        let mut traced = Traced::new(pid, command);
        match (Process::open(pid as u32), self.tracer.as_mut()) {
            (Ok(process), Some(tracer)) => match Allocator::find(&process, true) {
                Ok(allocator) => {
                    tracer.add_target(process, allocator).with_context(|| format!("tracing child pid {pid}"))?;
                    traced.tracked = true;
                    self.symbolizer.observe(pid as u32);
                }
                Err(err) => traced.note = Some(format!("not tracked: {err:#}")),
            },
            (Err(err), _) => traced.note = Some(format!("not tracked: {err:#}")),
            (_, None) => traced.note = Some("not tracked".into()),
        }
        self.processes.push(traced);
        resume(pid, PTRACE_CONT, 0);
        Ok(())
    }

    /// The process has a new image; returns whether to stop it at syscalls (its loader runs).
    fn exec_stop(&mut self, index: usize) -> Result<bool> {
        let pid = self.processes[index].pid;
        let first = self.tracer.is_none();
        let process = Process::open(pid as u32)?;
        if let Some(tracer) = self.tracer.as_mut()
            && self.processes[index].tracked
        {
            let snapshot = tracer.snapshot()?;
            self.processes[index].baseline =
                snapshot.sites.iter().filter(|s| s.pid == pid as u32).map(|s| (s.id, s.stats)).collect();
            tracer.image_replaced(pid as u32)?;
        }
        if !first {
            self.processes[index].command = cmdline(pid);
        }
        let found = objects::image(pid as u32).and_then(|image| {
            let names: Vec<&str> = image.objects.iter().map(String::as_str).collect();
            let allocator = Allocator::find_among(&process, &names, Some(&image.exe), true)?;
            Ok((image, allocator))
        });
        let (image, allocator) = match found {
            Ok(found) => found,
            Err(err) if first => {
                return Err(err.context(format!("`{}`: no allocator memmon can probe", self.processes[index].command.join(" "))));
            }
            Err(err) => {
                eprintln!("memmon: pid {pid}: the new image is not tracked: {err:#}");
                self.processes[index].tracked = false;
                self.processes[index].note = Some(format!("not tracked after its exec: {err:#}"));
                return Ok(false);
            }
        };
        log::info!("pid {pid}: {} allocator in {}", allocator.name, allocator.describe());
        match self.tracer.as_mut() {
            None => {
                self.tracer = Some(Tracer::attach_found(vec![(process, allocator)], self.args.tables.tracer_options())?);
            }
            // Objects probed in the previous image stay probed (see Tracer::add_target).
            Some(tracer) => tracer.add_target(process, allocator)?,
        }
        self.processes[index].tracked = true;
        self.symbolizer.observe(pid as u32);
        self.processes[index].loader = match image.loader {
            Some(_) => child::instruction_pointer(pid).ok().and_then(|ip| code_mapping_at(pid, ip)),
            None => None,
        };
        Ok(self.processes[index].loader.is_some())
    }

    /// Reads the process' counters (since its exec) and its map, while it still exists.
    fn capture(&mut self, index: usize) -> Result<()> {
        let Some(tracer) = self.tracer.as_mut() else { return Ok(()) };
        let pid = self.processes[index].pid as u32;
        self.symbolizer.observe(pid);
        let snapshot = tracer.snapshot()?;
        let baseline = &self.processes[index].baseline;
        let sites = snapshot
            .sites
            .into_iter()
            .filter(|s| s.pid == pid)
            .map(|mut site| {
                if let Some(before) = baseline.get(&site.id) {
                    site.stats = since(site.stats, before);
                }
                site
            })
            .filter(|site| site.stats.alloc_count > 0 || site.stats.free_count > 0)
            .collect();
        self.processes[index].capture =
            Some(Capture { pid, command: self.processes[index].command.clone(), sites, losses: snapshot.losses });
        Ok(())
    }

    fn finish(&mut self, outcome: Outcome, suppressions: &Suppressions) -> Result<u8> {
        let args = self.args;
        let mut reports = Vec::new();
        for process in &self.processes {
            match &process.capture {
                Some(capture) => {
                    reports.push(ExitReport::build(capture, process.outcome, &mut self.symbolizer, suppressions, args.top))
                }
                None => {
                    if let Some(note) = &process.note {
                        eprintln!("memmon: pid {} (`{}`): {note}", process.pid, process.command.join(" "));
                    }
                }
            }
        }
        if reports.is_empty() {
            return Err(anyhow!("no report: the command's allocations were not tracked"));
        }
        let mut report = reports.remove(0);
        report.children = reports;
        let rendered = match args.format {
            Format::Text => report.text(),
            Format::Json => serde_json::to_string_pretty(&report)? + "\n",
        };
        match &args.output {
            Some(file) => std::fs::write(file, rendered).with_context(|| format!("cannot write the report to {}", file.display()))?,
            None => eprint!("{rendered}"),
        }
        if let Some(file) = &args.profile {
            self.write_profile(file)?;
        }
        let leaked = report.leaked_total();
        if let Some(code) = args.error_exitcode
            && leaked.bytes > args.leak_threshold
        {
            eprintln!(
                "memmon: {} bytes in {} blocks in use at exit{}, over --leak-threshold {}: exit code {code}",
                report::commas(leaked.bytes),
                report::commas(leaked.blocks),
                if suppressions.is_empty() { "" } else { " after suppressions" },
                args.leak_threshold
            );
            return Ok(code);
        }
        Ok(match outcome {
            Outcome::Exited(code) => code as u8,
            Outcome::Killed(signal) => {
                eprintln!(
                    "memmon: `{}` was killed by signal {signal} ({}); exit code {}",
                    report.command.join(" "),
                    child::signal_name(signal),
                    128 + signal
                );
                (128 + signal) as u8
            }
        })
    }

    fn write_profile(&mut self, file: &std::path::Path) -> Result<()> {
        let values: Vec<profiles::SiteValues> = self
            .processes
            .iter()
            .filter_map(|p| p.capture.as_ref())
            .flat_map(|capture| &capture.sites)
            .map(|site| profiles::SiteValues {
                pid: site.pid,
                frames: site.frames.clone(),
                truncated: site.truncated,
                values: [site.stats.alloc_count, site.stats.alloc_bytes, site.live_count(), site.live_bytes()],
            })
            .collect();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let duration = self.started.elapsed();
        let start = now.saturating_sub(duration).as_nanos() as i64;
        let comments = vec![format!("memmon run: {}", self.processes[0].command.join(" "))];
        let profile = profiles::heap_profile(&values, &mut self.symbolizer, start, duration.as_nanos() as i64, comments);
        let bytes = profiles::pprof::encode_gzipped(&profile)?;
        std::fs::write(file, bytes).with_context(|| format!("cannot write the profile to {}", file.display()))
    }
}

/// Counters since `before` (the site's counters at the exec).
fn since(now: SiteStats, before: &SiteStats) -> SiteStats {
    SiteStats {
        alloc_bytes: now.alloc_bytes.saturating_sub(before.alloc_bytes),
        alloc_count: now.alloc_count.saturating_sub(before.alloc_count),
        free_bytes: now.free_bytes.saturating_sub(before.free_bytes),
        free_count: now.free_count.saturating_sub(before.free_count),
        live_birth_sum: now.live_birth_sum.wrapping_sub(before.live_birth_sum),
    }
}

fn resume(pid: i32, request: u32, signal: u64) {
    if let Err(err) = ptrace(request, pid, 0, signal) {
        // ESRCH: it died meanwhile (SIGKILL); its end is reported by waitpid.
        log::debug!("pid {pid}: resuming: {err}");
    }
}

fn cmdline(pid: i32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// The executable mapping of `pid` that holds `address`.
fn code_mapping_at(pid: i32, address: u64) -> Option<(u64, u64)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    maps.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (range, perms) = (fields.next()?, fields.next()?);
        let (start, end) = range.split_once('-')?;
        let (start, end) = (u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?);
        (perms.contains('x') && (start..end).contains(&address)).then_some((start, end))
    })
}
