//! The always-on tier and its capture windows, and the overhead budget over both tiers.
//!
//! In the always-on tier no allocator probe is attached: the leak detector's process-wide
//! analysis runs on RSS (/proc) and on the heap as the kernel sees it (brk and anonymous
//! mappings, from the memory syscalls' tracepoints), which cost nothing per allocation. When it
//! sees growth (a warning or worse), or an operator starts a profiling session, a *capture
//! window* opens: the allocator probes attach on an empty heap view for MEMMON_CAPTURE_WINDOW
//! seconds (or the session's length), the growth is attributed to the sites that allocated
//! during the window and still hold it, a profile of the window is written, and the probes
//! detach.
//!
//! When a window closes, the blocks still live in it are forgotten with the live table: their
//! frees can no longer be seen, so keeping them would report them as leaks forever. They are
//! what the window's record (`status`) and profile show, as "still live at the window's close".
//!
//! Every probe hit is charged to the overhead budget (see `overhead`); windows are shortened to
//! what the budget allows, close early when it runs dry, and wait while it is overdrawn. In the
//! exact tier the estimate is reported, and the health check degrades above the budget, but the
//! probes stay: the operator asked for every allocation.

use std::{
    collections::{BTreeMap, VecDeque},
    os::fd::OwnedFd,
    time::{Duration, Instant},
};

use super::{Agent, Refusal};
use crate::{
    config::Tier,
    tracer::ProbeProgramCounts,
    overhead::{
        Budget, HitCosts, ProgramCharge, ProgramCounts,
        sampling::{Due, RunTimeSampler},
    },
    profiles::id::ProfileId,
    wire,
};

/// Closed windows listed in `status`.
const CLOSED_KEPT: usize = 20;
/// Sites named in a window's record.
const WINDOW_TOP_SITES: usize = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Growth,
    Requested,
}

impl Trigger {
    fn name(self) -> &'static str {
        match self {
            Trigger::Growth => "growth",
            Trigger::Requested => "requested",
        }
    }
}

struct Window {
    trigger: Trigger,
    cause: String,
    pids: Vec<u32>,
    session: Option<ProfileId>,
    started_at: jiff::Timestamp,
    opened: Instant,
    planned: Duration,
    cost_ns: f64,
}

pub struct Capture {
    tier: Tier,
    costs: Option<HitCosts>,
    budget: Budget,
    window: Option<Window>,
    closed: VecDeque<wire::CaptureWindow>,
    opened: BTreeMap<String, u64>,
    refused: u64,
    last_refusal: Option<String>,
    /// The programs' counts and the targets' CPU time at the last accounting.
    counts_base: Vec<ProbeProgramCounts>,
    cpu_base_ns: u64,
    /// BPF run-time statistics are on while this is held: during a sample (`sampler`).
    stats: Option<OwnedFd>,
    sampler: RunTimeSampler,
    cooldown: Cooldown,
}

/// The quiet time after a window, in which growth opens no new one: a leak that goes on would
/// otherwise reopen a window at every leak check, attributing the same growth to the same sites
/// again at the probes' cost. Operators' requests are not held back.
struct Cooldown {
    length: Duration,
    until: Option<Instant>,
    /// Growth warnings that came while cooling down.
    deferred: u64,
}

impl Cooldown {
    fn start(&mut self, now: Instant) {
        self.until = Some(now + self.length);
    }

    fn remaining(&self, now: Instant) -> Duration {
        self.until.map_or(Duration::ZERO, |until| until.saturating_duration_since(now))
    }

    /// Whether growth seen at `now` must wait; counts it if so.
    fn defers(&mut self, now: Instant) -> bool {
        let waiting = !self.remaining(now).is_zero();
        self.deferred += u64::from(waiting);
        waiting
    }
}

impl Capture {
    /// `prior_cpu_rate`: the targets' CPU ns per second before attach (see `Budget`).
    pub fn new(tier: Tier, budget: f64, prior_cpu_rate: f64, costs: Option<HitCosts>, cooldown: Duration) -> Self {
        Self {
            tier,
            costs,
            budget: Budget::new(budget, prior_cpu_rate),
            window: None,
            closed: VecDeque::new(),
            opened: BTreeMap::new(),
            refused: 0,
            last_refusal: None,
            counts_base: Vec::new(),
            cpu_base_ns: 0,
            stats: None,
            sampler: RunTimeSampler::default(),
            cooldown: Cooldown { length: cooldown, until: None, deferred: 0 },
        }
    }

    /// Whether the estimate is above the budget (the health check's concern).
    pub fn over_budget(&self) -> bool {
        self.budget.estimate() > self.budget.fraction
    }
}

impl Agent {
    /// At start: the hit and CPU baselines.
    pub(super) fn start_overhead_accounting(&mut self) {
        self.capture.cpu_base_ns = self.targets_cpu_ns();
        self.capture.counts_base = self.tracer.probe_program_counts();
    }

    /// Charges what the probes did since the last accounting to the budget (and the open
    /// window), and credits the targets' CPU time.
    fn account_overhead(&mut self) {
        let cpu_now = self.targets_cpu_ns();
        let cpu = cpu_now.saturating_sub(self.capture.cpu_base_ns);
        let counts = self.tracer.probe_program_counts();
        let stats: Vec<(&'static str, ProgramCounts)> = counts.iter().map(|c| (c.name, c.stats)).collect();
        let cost = match self.capture.costs {
            Some(costs) => {
                let charges: Vec<ProgramCharge> = counts
                    .iter()
                    .map(|now| {
                        let before = self.capture.counts_base.iter().find(|c| c.name == now.name).map_or(now.hits, |c| c.hits);
                        let ns_per_run = self.capture.sampler.ns_per_run(now.name, &stats);
                        ProgramCharge { kind: now.kind, hits: now.hits.saturating_sub(before), ns_per_run }
                    })
                    .collect();
                costs.estimate_ns(&charges)
            }
            None => 0.0,
        };
        self.capture.budget.account(self.started.elapsed().as_secs_f64(), cpu, cost);
        if let Some(window) = self.capture.window.as_mut() {
            window.cost_ns += cost;
        }
        self.capture.cpu_base_ns = cpu_now;
        self.capture.counts_base = counts;
        self.sample_run_time(stats);
    }

    /// Switches the BPF run-time statistics on or off as the sampler wants (see
    /// `overhead::sampling`), while the allocator probes are attached.
    fn sample_run_time(&mut self, stats: Vec<(&'static str, ProgramCounts)>) {
        if !self.tracer.allocator_probes_attached() {
            return;
        }
        let now = Instant::now();
        match self.capture.sampler.due(now) {
            Due::Start => {
                self.capture.stats = enable_stats();
                self.capture.sampler.started(now, stats);
            }
            Due::Finish => {
                self.capture.sampler.finished(now, &stats);
                self.capture.stats = None;
            }
            Due::Nothing => {}
        }
    }

    fn targets_cpu_ns(&self) -> u64 {
        self.tracer.targets().iter().filter_map(|t| t.process.cpu_time_ns()).sum()
    }

    /// Plans a window of at most `wanted` under the budget and attaches the probes for it.
    pub(super) fn begin_window(&mut self, wanted: Duration) -> Result<Duration, Refusal> {
        if let Some(window) = &self.capture.window {
            return Err(Refusal::Conflict(format!(
                "a capture window ({}, {}) is open for another {:.0} s; profiles need the allocator probes, which \
                 it holds: wait for it or stop its profile",
                window.trigger.name(),
                window.cause,
                window.planned.saturating_sub(window.opened.elapsed()).as_secs_f64()
            )));
        }
        self.account_overhead();
        let Some(planned) = self.capture.budget.window(wanted) else {
            let message = format!(
                "the overhead budget (MEMMON_OVERHEAD_BUDGET={}) is spent: the allocator probes cost an estimated \
                 {:.2}% of the targets' CPU over the last 10 minutes, {:.3} s of allowance left; windows resume as \
                 the cost leaves the horizon",
                self.capture.budget.fraction,
                self.capture.budget.estimate() * 100.0,
                self.capture.budget.allowance_ns() / 1e9
            );
            self.capture.refused += 1;
            self.capture.last_refusal = Some(message.clone());
            return Err(Refusal::Conflict(message));
        };
        self.tracer
            .attach_allocator_probes()
            .map_err(|err| Refusal::Conflict(format!("attaching the allocator probes failed: {err:#}")))?;
        self.capture.counts_base = self.tracer.probe_program_counts();
        self.capture.sampler.restart();
        self.capture.cpu_base_ns = self.targets_cpu_ns();
        Ok(planned)
    }

    /// The window `begin_window` planned is open (with its session's profile, if any).
    pub(super) fn window_opened(
        &mut self,
        trigger: Trigger,
        cause: String,
        planned: Duration,
        pids: Vec<u32>,
        session: Option<ProfileId>,
    ) {
        log::info!("capture window opened ({}, {:.0} s): {cause}", trigger.name(), planned.as_secs_f64());
        *self.capture.opened.entry(trigger.name().to_string()).or_default() += 1;
        self.capture.window = Some(Window {
            trigger,
            cause,
            pids,
            session,
            started_at: jiff::Timestamp::now(),
            opened: Instant::now(),
            planned,
            cost_ns: 0.0,
        });
    }

    /// `begin_window` succeeded but the window could not start: the probes go again.
    pub(super) fn abort_window(&mut self) {
        if let Err(err) = self.tracer.detach_allocator_probes() {
            log::warn!("detaching the allocator probes failed: {err:#}");
        }
        self.capture.stats = None;
        self.capture.sampler.abandon();
    }

    /// The leak check saw the process grow: in the always-on tier, attribute it.
    pub(super) fn growth_seen(&mut self, cause: String, pid: u32) {
        if self.capture.tier != Tier::AlwaysOn || self.capture.window.is_some() {
            return;
        }
        if self.capture.cooldown.defers(Instant::now()) {
            log::debug!(
                "growth not attributed yet: the last window closed {:.0} s ago (MEMMON_CAPTURE_COOLDOWN={}): {cause}",
                (self.capture.cooldown.length - self.capture.cooldown.remaining(Instant::now())).as_secs_f64(),
                self.capture.cooldown.length.as_secs()
            );
            return;
        }
        let planned = match self.begin_window(self.config.capture_window_length()) {
            Ok(planned) => planned,
            Err(refusal) => {
                log::warn!("growth not attributed: {}", refusal.message());
                return;
            }
        };
        let session = match self.profiler_enabled() {
            true => match self.start_session(planned, &[]) {
                Ok(info) => ProfileId::parse(&info.profile_id).ok(),
                Err(refusal) => {
                    log::warn!("the capture window writes no profile: {}", refusal.message());
                    None
                }
            },
            false => None,
        };
        let pids = if session.is_some() { self.tracer.targets().iter().map(|t| t.process.pid).collect() } else { vec![pid] };
        self.window_opened(Trigger::Growth, cause, planned, pids, session);
    }

    /// Several times a second: accounting, and the end of a window that is due (its length
    /// reached, its profile ended, or the budget spent).
    pub(super) fn tick_capture(&mut self) {
        // Between windows this only credits the targets' CPU time.
        self.account_overhead();
        let Some(window) = &self.capture.window else { return };
        let session_ended = window.session.as_ref().is_some_and(|id| !self.session_running(id));
        let reason = if self.capture.budget.exhausted() {
            Some("overhead budget spent")
        } else if session_ended {
            Some("its profile ended")
        } else if window.opened.elapsed() >= window.planned {
            Some("window length reached")
        } else {
            None
        };
        if let Some(reason) = reason {
            self.close_window(reason);
        }
    }

    /// Closes the open window: records where its growth went, ends its profile, detaches the
    /// probes and forgets the blocks they tracked.
    pub(super) fn close_window(&mut self, reason: &'static str) {
        let Some(session) = self.capture.window.as_ref().map(|w| w.session.clone()) else { return };
        // One last snapshot, which the window's profile (when it has one) ends with too: the
        // record and the profile then show the same blocks, even while the target allocates.
        match session.filter(|id| self.session_running(id)) {
            Some(id) => self.end_sessions(|session| session.id == id, reason),
            None => {
                if let Err(err) = self.refresh() {
                    log::warn!("the capture window's last snapshot failed: {err:#}");
                }
            }
        }
        self.account_overhead();
        let window = self.capture.window.take().expect("checked above");
        let elapsed = window.opened.elapsed();
        let cost_ns = window.cost_ns;
        let top_sites = self.summarize_sites(WINDOW_TOP_SITES);
        let record = wire::CaptureWindow {
            trigger: window.trigger.name().into(),
            cause: window.cause,
            pids: window.pids,
            profile_id: window.session.as_ref().map(ToString::to_string),
            started_at: window.started_at.to_string(),
            planned_seconds: window.planned.as_secs_f64(),
            elapsed_seconds: elapsed.as_secs_f64(),
            reason: Some(reason.into()),
            estimated_cost_seconds: cost_ns / 1e9,
            live_bytes: self.snapshot.live_bytes(),
            live_allocations: self.snapshot.live_count(),
            top_sites,
        };
        log::info!(
            "capture window closed ({reason}) after {:.1} s: {} B live in {} blocks from it",
            elapsed.as_secs_f64(),
            record.live_bytes,
            record.live_allocations
        );
        self.capture.budget.window_closed(elapsed, cost_ns);
        self.capture.cooldown.start(Instant::now());
        self.capture.closed.push_front(record);
        self.capture.closed.truncate(CLOSED_KEPT);
        if self.capture.tier == Tier::AlwaysOn {
            self.abort_window();
            if let Err(err) = self.refresh() {
                log::warn!("snapshot after the capture window failed: {err:#}");
            }
        }
    }

    pub(super) fn capture_status(&self) -> wire::CaptureStatus {
        let open = self.capture.window.as_ref().map(|window| wire::CaptureWindow {
            trigger: window.trigger.name().into(),
            cause: window.cause.clone(),
            pids: window.pids.clone(),
            profile_id: window.session.as_ref().map(ToString::to_string),
            started_at: window.started_at.to_string(),
            planned_seconds: window.planned.as_secs_f64(),
            elapsed_seconds: window.opened.elapsed().as_secs_f64(),
            estimated_cost_seconds: window.cost_ns / 1e9,
            live_bytes: self.snapshot.live_bytes(),
            live_allocations: self.snapshot.live_count(),
            ..wire::CaptureWindow::default()
        });
        wire::CaptureStatus {
            tier: self.capture.tier.name().into(),
            allocator_probes_attached: self.tracer.allocator_probes_attached(),
            window_seconds: self.config.capture_window,
            open,
            closed: self.capture.closed.iter().cloned().collect(),
            opened: self.capture.opened.clone(),
            refused: self.capture.refused,
            last_refusal: self.capture.last_refusal.clone(),
            cooldown_seconds: self.capture.cooldown.length.as_secs(),
            cooldown_remaining_seconds: self.capture.cooldown.remaining(Instant::now()).as_secs_f64(),
            deferred: self.capture.cooldown.deferred,
        }
    }

    pub(super) fn overhead_status(&self) -> wire::OverheadStatus {
        let budget = &self.capture.budget;
        let estimate = budget.estimate();
        wire::OverheadStatus {
            budget: budget.fraction,
            estimate,
            estimated_cost_seconds: budget.spent_ns() / 1e9,
            target_cpu_seconds: budget.target_cpu_ns() / 1e9,
            allowance_seconds: budget.allowance_ns() / 1e9,
            hit_costs: self.capture.costs,
        }
    }

    pub(super) fn capture_over_budget(&self) -> bool {
        self.capture.over_budget()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_waits_out_the_cooldown_and_is_counted() {
        let start = Instant::now();
        let mut cooldown = Cooldown { length: Duration::from_secs(300), until: None, deferred: 0 };
        assert!(!cooldown.defers(start), "no window closed yet");
        cooldown.start(start);
        assert!(cooldown.defers(start + Duration::from_secs(10)));
        assert!(cooldown.defers(start + Duration::from_secs(299)));
        assert_eq!(cooldown.remaining(start + Duration::from_secs(200)), Duration::from_secs(100));
        assert!(!cooldown.defers(start + Duration::from_secs(300)));
        assert_eq!(cooldown.deferred, 2);
        let mut none = Cooldown { length: Duration::ZERO, until: None, deferred: 0 };
        none.start(start);
        assert!(!none.defers(start));
    }
}

/// BPF run-time statistics on, for as long as the descriptor lives (the kernel counts runs and
/// run time only while someone holds one).
fn enable_stats() -> Option<OwnedFd> {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => Some(fd),
        Err(err) => {
            // Sampled every 30 s: said once.
            if WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                return None;
            }
            log::warn!(
                "BPF run-time statistics unavailable ({err}): the overhead estimate charges the probes' traps only, \
                 not their programs' own time"
            );
            None
        }
    }
}
