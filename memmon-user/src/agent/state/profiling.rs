//! The agent's profiling sessions: start, stop, the once-a-second tick that records their
//! timelines, writes their checkpoints and ends them, and cleanup of old profiles.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant, SystemTime},
};

use super::Agent;
use crate::{
    agent::requests,
    profiles::{
        id::ProfileId,
        meta::TargetMeta,
        session::{CheckpointInput, LiveBlock, Session},
        store::ProfileDir,
    },
    wire,
};

/// Sessions running at once; each costs a checkpoint's work.
const MAX_RUNNING_SESSIONS: usize = 8;
/// Ended sessions listed in `status` (their files stay until cleanup).
const ENDED_SESSIONS_KEPT: usize = 100;
const DEFAULT_DURATION: Duration = Duration::from_secs(10 * 60);
const CLEANUP_PERIOD: Duration = Duration::from_secs(3600);
/// Resolution of the sessions' memory timelines, unless a snapshot is costly: each point takes
/// one (the site table read), and points are spaced at least `TIMELINE_COST_FACTOR` times its
/// cost apart, so that timelines never take more than ~5% of a core.
const TIMELINE_PERIOD: Duration = Duration::from_secs(1);
const TIMELINE_COST_FACTOR: u32 = 20;

/// Why a profiling request is refused; the API turns each into its HTTP status.
#[derive(Debug)]
pub enum Refusal {
    BadRequest(String),
    /// Profiling is disabled.
    Forbidden(String),
    NotFound(String),
    Conflict(String),
    TooManySessions(String),
    /// The profile directory cannot take the file.
    Storage(String),
}

impl Refusal {
    pub fn message(&self) -> &str {
        match self {
            Refusal::BadRequest(m)
            | Refusal::Forbidden(m)
            | Refusal::NotFound(m)
            | Refusal::Conflict(m)
            | Refusal::TooManySessions(m)
            | Refusal::Storage(m) => m,
        }
    }
}

#[derive(Default)]
pub struct Profiler {
    /// None when MEMMON_PROFILING_ENABLED=false.
    dir: Option<ProfileDir>,
    /// Newest last.
    sessions: Vec<Session>,
    last_cleanup: Option<Instant>,
    /// When the running sessions' timelines last got a point (CLOCK_MONOTONIC ns), and how
    /// long until the next.
    last_record_ns: u64,
    timeline_period: Duration,
}

impl Profiler {
    pub fn new(dir: Option<ProfileDir>) -> Self {
        Self { dir, ..Self::default() }
    }
}

impl Agent {
    fn profile_dir(&self) -> Result<&ProfileDir, Refusal> {
        self.profiler.dir.as_ref().ok_or_else(|| {
            Refusal::Forbidden(
                "profiling is disabled on this agent (MEMMON_PROFILING_ENABLED=false); restart it with \
                 MEMMON_PROFILING_ENABLED=true to take profiles"
                    .into(),
            )
        })
    }

    /// Starts a session over `pids` (every traced process when empty). In the always-on tier
    /// it opens a capture window for the session, which the overhead budget may shorten.
    pub fn start_profiling(&mut self, minutes: Option<f64>, pids: &[u32]) -> Result<wire::ProfileInfo, Refusal> {
        self.profile_dir()?;
        let duration = self.requested_duration(minutes)?;
        if self.config.tier == crate::config::Tier::Exact {
            return self.start_session(duration, pids);
        }
        self.check_pids(pids)?;
        let planned = self.begin_window(duration)?;
        match self.start_session(planned, pids) {
            Ok(info) => {
                let id = ProfileId::parse(&info.profile_id).ok();
                self.window_opened(super::capture::Trigger::Requested, "start-profiling".into(), planned, info.pids.clone(), id);
                Ok(info)
            }
            Err(refusal) => {
                self.abort_window();
                Err(refusal)
            }
        }
    }

    pub(super) fn profiler_enabled(&self) -> bool {
        self.profiler.dir.is_some()
    }

    pub(super) fn session_running(&self, id: &ProfileId) -> bool {
        self.profiler.sessions.iter().any(|s| &s.id == id && s.is_running())
    }

    fn check_pids(&self, pids: &[u32]) -> Result<(), Refusal> {
        let traced: Vec<u32> = self.tracer.targets().iter().map(|t| t.process.pid).collect();
        if let Some(stranger) = pids.iter().find(|pid| !traced.contains(pid)) {
            return Err(Refusal::BadRequest(format!(
                "pid {stranger} is not traced by this agent (it traces {})",
                traced.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(())
    }

    /// Starts a session of `duration` over `pids` with the probes as they are.
    pub(super) fn start_session(&mut self, duration: Duration, pids: &[u32]) -> Result<wire::ProfileInfo, Refusal> {
        self.profile_dir()?;
        let traced: Vec<u32> = self.tracer.targets().iter().map(|t| t.process.pid).collect();
        if let Some(stranger) = pids.iter().find(|pid| !traced.contains(pid)) {
            return Err(Refusal::BadRequest(format!(
                "pid {stranger} is not traced by this agent (it traces {})",
                traced.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
            )));
        }
        let wanted = |pid: u32| pids.is_empty() || pids.contains(&pid);
        if self.profiler.sessions.iter().filter(|s| s.is_running()).count() >= MAX_RUNNING_SESSIONS {
            return Err(Refusal::TooManySessions(format!(
                "{MAX_RUNNING_SESSIONS} profiling sessions are already running; stop one first (memmon status lists them)"
            )));
        }
        self.refresh().map_err(|err| Refusal::Storage(format!("taking the first snapshot failed: {err:#}")))?;
        let targets: Vec<TargetMeta> = self
            .tracer
            .targets()
            .iter()
            .filter(|t| wanted(t.process.pid) && self.alive.get(&t.process.pid).copied().unwrap_or(false))
            .map(|t| TargetMeta { pid: t.process.pid, comm: t.process.comm.clone() })
            .collect();
        if targets.is_empty() {
            let which = if pids.is_empty() { "every target has" } else { "the requested targets have" };
            return Err(Refusal::Conflict(format!("{which} exited: there is nothing left to profile")));
        }
        let rss = self.rss_by_pid();
        let dir = self.profiler.dir.as_ref().expect("checked above");
        let id = ProfileId::generate(jiff::Timestamp::now());
        let input = CheckpointInput {
            snapshot: &self.snapshot,
            born: &[],
            symbolizer: &mut self.symbolizer,
            dir,
            max_bytes: self.config.max_profile_bytes(),
        };
        let session = Session::start(id, targets, duration, &rss, input).map_err(|err| {
            Refusal::Storage(format!("cannot write the profile in {}: {err}", dir.path().display()))
        })?;
        log::info!("profile {} started for {:?}", session.id, session.duration);
        let info = self.profile_info(&session);
        self.profiler.sessions.push(session);
        Ok(info)
    }

    fn requested_duration(&self, minutes: Option<f64>) -> Result<Duration, Refusal> {
        let longest = self.config.max_profile_duration();
        let Some(minutes) = minutes else { return Ok(DEFAULT_DURATION.min(longest)) };
        requests::session_duration(minutes, self.config.max_profile_duration_minutes).map_err(Refusal::BadRequest)
    }

    pub fn stop_profiling(&mut self, id: &str) -> Result<wire::ProfileInfo, Refusal> {
        let index = self.session_index(id)?;
        if self.profiler.sessions[index].is_running() {
            self.end_sessions(|session| session.id.as_str() == id, "stopped on request");
        }
        Ok(self.profile_info(&self.profiler.sessions[index]))
    }

    /// Ends every running session (the agent is stopping).
    pub fn stop_all_profiling(&mut self, reason: &'static str) {
        self.end_sessions(|_| true, reason);
    }

    pub fn profile(&self, id: &str) -> Result<wire::ProfileInfo, Refusal> {
        let index = self.session_index(id)?;
        Ok(self.profile_info(&self.profiler.sessions[index]))
    }

    pub fn profiles(&self) -> Vec<wire::ProfileInfo> {
        self.profiler.sessions.iter().rev().map(|s| self.profile_info(s)).collect()
    }

    /// The bytes of a profile in the directory: one of this agent's, or an earlier agent's.
    pub fn profile_bytes(&self, id: &str) -> Result<Vec<u8>, Refusal> {
        let dir = self.profile_dir()?;
        let id = ProfileId::parse(id).map_err(Refusal::BadRequest)?;
        dir.read(&id).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => Refusal::NotFound(format!("no profile {id} in {}", dir.path().display())),
            _ => Refusal::Conflict(format!("profile {id} cannot be read: {err}")),
        })
    }

    /// Removes profiles older than `days` (default MEMMON_PROFILING_CLEANUP_DAYS), never a
    /// running session's.
    pub fn cleanup_profiles(&mut self, days: Option<f64>) -> Result<wire::Cleanup, Refusal> {
        let dir = self.profile_dir()?;
        let days = days.unwrap_or(self.config.profiling_cleanup_days);
        let older_than = requests::cleanup_age(days).map_err(Refusal::BadRequest)?;
        let running: HashSet<ProfileId> =
            self.profiler.sessions.iter().filter(|s| s.is_running()).map(|s| s.id.clone()).collect();
        let cleanup = dir
            .cleanup(older_than, SystemTime::now(), &running)
            .map_err(|err| Refusal::Storage(format!("cleaning {} failed: {err}", dir.path().display())))?;
        let report = wire::Cleanup {
            directory: dir.path().display().to_string(),
            older_than_days: days,
            removed: cleanup
                .removed
                .into_iter()
                .map(|(file, size_bytes, age_days)| wire::RemovedProfile { file, size_bytes, age_days })
                .collect(),
            kept: cleanup.kept as u64,
            skipped: cleanup.skipped.into_iter().map(|(file, reason)| wire::SkippedEntry { file, reason }).collect(),
        };
        self.profiler.last_cleanup = Some(Instant::now());
        Ok(report)
    }

    /// Several times a second: hourly cleanup; for running sessions, once a second a fresh
    /// snapshot on their timelines and checkpoints when due, and as soon as it is time, the end
    /// of those past their duration or whose targets have all exited.
    pub fn tick_profiles(&mut self) {
        self.tick_capture();
        if self.profiler.dir.is_some() && self.profiler.last_cleanup.is_none_or(|at| at.elapsed() >= CLEANUP_PERIOD) {
            match self.cleanup_profiles(None) {
                Ok(cleanup) if !cleanup.removed.is_empty() => {
                    log::info!("removed {} profile(s) older than {} days", cleanup.removed.len(), cleanup.older_than_days)
                }
                Ok(_) => {}
                Err(refusal) => log::warn!("{}", refusal.message()),
            }
        }
        let now = crate::snapshot::monotonic_ns();
        let running = || self.profiler.sessions.iter().filter(|s| s.is_running());
        let since_record = Duration::from_nanos(now.saturating_sub(self.profiler.last_record_ns));
        let record_due = since_record >= self.profiler.timeline_period.max(TIMELINE_PERIOD);
        if running().next().is_none() || !(record_due || running().any(|s| s.expired(now))) {
            return;
        }
        self.profiler.last_record_ns = now;
        let cost = Instant::now();
        if let Err(err) = self.refresh() {
            log::warn!("snapshot for the profiling sessions failed: {err:#}");
            return;
        }
        self.profiler.timeline_period = cost.elapsed() * TIMELINE_COST_FACTOR;
        let rss = self.rss_by_pid();
        let now = self.snapshot.taken_at_ns;
        let period = self.config.metrics_update_period();
        let alive = &self.alive;
        let mut due: HashMap<ProfileId, Option<&'static str>> = HashMap::new();
        for session in self.profiler.sessions.iter_mut().filter(|s| s.is_running()) {
            session.record(&self.snapshot, &rss);
            let ending = if session.pids().iter().all(|pid| !alive.get(pid).copied().unwrap_or(false)) {
                Some("every target exited")
            } else if session.expired(now) {
                Some("duration reached")
            } else {
                None
            };
            if ending.is_some() || session.checkpoint_due(now, period) {
                due.insert(session.id.clone(), ending);
            }
        }
        self.checkpoint(&due);
    }

    /// Ends the running sessions `which` selects, with a last checkpoint on a fresh snapshot.
    pub(super) fn end_sessions(&mut self, which: impl Fn(&Session) -> bool, reason: &'static str) {
        if let Err(err) = self.refresh() {
            log::warn!("final snapshot for the profiling sessions failed: {err:#}; ending them with their last checkpoint");
        }
        let rss = self.rss_by_pid();
        let mut due = HashMap::new();
        for session in self.profiler.sessions.iter_mut().filter(|s| s.is_running() && which(s)) {
            session.record(&self.snapshot, &rss);
            due.insert(session.id.clone(), Some(reason));
        }
        self.checkpoint(&due);
    }

    /// Writes a checkpoint of each session in `due` (ending those with a reason), reading the
    /// live table once for all of them.
    fn checkpoint(&mut self, due: &HashMap<ProfileId, Option<&'static str>>) {
        let Some(dir) = self.profiler.dir.as_ref() else { return };
        let Some(since) = self.profiler.sessions.iter().filter(|s| due.contains_key(&s.id)).map(Session::start_ns).min()
        else {
            return;
        };
        let born: Vec<LiveBlock> = match self.tracer.live_blocks_born_since(since) {
            Ok(born) => born,
            Err(err) => {
                // Sessions that had to end now end failed (their last checkpoint kept); the
                // others try again at their next checkpoint.
                log::warn!("reading the live table for the profiles failed: {err:#}");
                let ending = self.profiler.sessions.iter_mut().filter(|s| due.get(&s.id).is_some_and(Option::is_some));
                for session in ending {
                    session.fail(dir, format!("reading the live table failed: {err:#}"));
                }
                return;
            }
        };
        for session in self.profiler.sessions.iter_mut().filter(|s| due.contains_key(&s.id)) {
            let input = CheckpointInput {
                snapshot: &self.snapshot,
                born: &born,
                symbolizer: &mut self.symbolizer,
                dir,
                max_bytes: self.config.max_profile_bytes(),
            };
            session.checkpoint(input, due[&session.id]);
            if !session.is_running() {
                log::info!("profile {} {}: {}", session.id, session.state.name(), session.reason);
            }
        }
        self.forget_old_sessions();
    }

    fn forget_old_sessions(&mut self) {
        let ended = self.profiler.sessions.iter().filter(|s| !s.is_running()).count();
        let mut excess = ended.saturating_sub(ENDED_SESSIONS_KEPT);
        self.profiler.sessions.retain(|s| {
            let forget = excess > 0 && !s.is_running();
            excess -= usize::from(forget);
            !forget
        });
    }

    fn session_index(&self, id: &str) -> Result<usize, Refusal> {
        let dir = self.profile_dir()?;
        let id = ProfileId::parse(id).map_err(Refusal::BadRequest)?;
        self.profiler.sessions.iter().position(|s| s.id == id).ok_or_else(|| {
            Refusal::NotFound(format!(
                "no profiling session {id} on this agent (its file, if any, is {})",
                dir.path_of(&id).display()
            ))
        })
    }

    fn rss_by_pid(&self) -> HashMap<u32, u64> {
        self.memory.iter().map(|(pid, memory)| (*pid, memory.rss_bytes)).collect()
    }

    fn profile_info(&self, session: &Session) -> wire::ProfileInfo {
        let written = session.written.as_ref();
        let file = self.profiler.dir.as_ref().map(|dir| dir.path_of(&session.id).display().to_string()).unwrap_or_default();
        let elapsed = match session.is_running() {
            true => session.elapsed(crate::snapshot::monotonic_ns()),
            false => session.written_window(),
        };
        wire::ProfileInfo {
            profile_id: session.id.to_string(),
            state: session.state.name().into(),
            reason: (!session.reason.is_empty()).then(|| session.reason.clone()),
            file,
            pids: session.pids(),
            started_at: session.started_at.to_string(),
            duration_seconds: session.duration.as_secs_f64(),
            elapsed_seconds: elapsed.as_secs_f64(),
            size_bytes: written.map_or(0, |w| w.size_bytes),
            checkpoints: session.checkpoints,
            allocated_bytes: written.map_or(0, |w| w.allocated_bytes),
            allocations: written.map_or(0, |w| w.allocations),
            live_bytes: written.map_or(0, |w| w.live_bytes),
            live_allocations: written.map_or(0, |w| w.live_allocations),
            execs: session.execs().to_vec(),
        }
    }

    /// A target exec'ed: the running sessions that profile it record it.
    pub(super) fn note_exec_in_profiles(&mut self, pid: u32, exec: &crate::lifecycle::Exec) {
        let now = crate::snapshot::monotonic_ns();
        for session in &mut self.profiler.sessions {
            session.note_exec(pid, exec, now);
        }
    }
}
