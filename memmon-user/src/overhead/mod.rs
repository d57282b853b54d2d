//! What memmon's allocator probes cost the processes they trace, and the budget that bounds it.
//!
//! The cost of a probe hit is mostly the trap, which no BPF statistic sees: the kernel stops the
//! thread, emulates or single-steps the probed instruction, and (for a return probe) hijacks the
//! return address. So the estimate is `hits × (calibrated trap cost + the program's time per
//! run)`: the hits counted by the programs themselves, the trap costs measured at start on this
//! machine ([`calibrate`]), the time per run from BPF run-time statistics switched on for a
//! sample of the time ([`sampling`]). It is an estimate, and is labelled so wherever it is shown.
//!
//! The budget ([`Budget`]) holds memmon's estimated cost over the last [`HORIZON`] to
//! `fraction` of the targets' CPU time over the same span. The part of the horizon before
//! memmon attached is credited at the targets' average CPU rate since they started, so the first
//! window need not wait ten minutes, and a busy process affords more than an idle one. Windows
//! are shortened to what the allowance buys at the last window's cost rate, close early when it
//! runs out, and wait while it is spent.

pub mod calibrate;
pub mod sampling;

use std::{collections::VecDeque, time::Duration};

use serde::{Deserialize, Serialize};

/// The span the budget averages over: a burst may spend what `fraction` of this much CPU time
/// allows, then windows wait until the targets' CPU time has earned it back.
pub const HORIZON: Duration = Duration::from_secs(600);
/// The least CPU time the budget assumes the targets use per horizon: an idle process earns
/// next to nothing, but its windows cost next to nothing too (it allocates rarely), and a leak
/// in an idle process must still be attributable. 10 s per 10 minutes is 1.7% of one CPU.
pub const MIN_CPU_BASIS: Duration = Duration::from_secs(10);
/// Shorter windows attribute too little to be worth their attach and detach.
pub const MIN_WINDOW: Duration = Duration::from_secs(1);

/// The measured cost of one probe hit on this machine, by kind of site (ns).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HitCosts {
    /// An entry probe on an instruction the kernel emulates (`push`).
    pub entry_emulated_ns: f64,
    /// An entry probe on an instruction the kernel single-steps out of line.
    pub entry_single_stepped_ns: f64,
    /// A return probe (on top of its entry probe).
    pub return_ns: f64,
}

/// BPF run-time statistics of one program: runs and time in the program while they were on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramCounts {
    pub runs: u64,
    pub run_time_ns: u64,
}

/// What one probe program cost between two accountings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProgramCharge {
    pub kind: HitKind,
    pub hits: u64,
    /// The program's own time per run (sampled).
    pub ns_per_run: f64,
}

/// How a program's hits are charged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HitKind {
    EntryEmulated,
    /// Entry programs with at least one single-stepped site are charged as single-stepped (an
    /// upper bound: the kernel does not say which site a run came from).
    EntrySingleStepped,
    Return,
}

impl HitCosts {
    pub fn of(&self, kind: HitKind) -> f64 {
        match kind {
            HitKind::EntryEmulated => self.entry_emulated_ns,
            HitKind::EntrySingleStepped => self.entry_single_stepped_ns,
            HitKind::Return => self.return_ns,
        }
    }

    /// The estimated cost (ns) of what the programs did between two accountings.
    pub fn estimate_ns(&self, programs: &[ProgramCharge]) -> f64 {
        programs.iter().map(|p| p.hits as f64 * (self.of(p.kind) + p.ns_per_run)).sum()
    }
}

/// The overhead budget over a sliding horizon (see the module). Time is seconds since attach.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    /// MEMMON_OVERHEAD_BUDGET: memmon's share of the targets' CPU time.
    pub fraction: f64,
    /// The targets' CPU ns per second before attach (their lifetime average).
    prior_cpu_rate: f64,
    /// (at, the targets' CPU ns, estimated cost ns) per accounting, over the last horizon.
    samples: VecDeque<(f64, f64, f64)>,
    now: f64,
    /// Since attach.
    spent_ns: f64,
    target_cpu_ns: f64,
    /// The estimated cost per second of the last window (ns/s): how long the next may be.
    last_window_rate: Option<f64>,
}

impl Budget {
    pub fn new(fraction: f64, prior_cpu_rate: f64) -> Self {
        Self {
            fraction,
            prior_cpu_rate,
            samples: VecDeque::new(),
            now: 0.0,
            spent_ns: 0.0,
            target_cpu_ns: 0.0,
            last_window_rate: None,
        }
    }

    /// At `at` seconds since attach: the targets used `target_cpu_ns` of CPU time since the
    /// last accounting (memmon's traps included: they run on the targets' threads) while the
    /// probes cost an estimated `cost_ns`.
    pub fn account(&mut self, at: f64, target_cpu_ns: u64, cost_ns: f64) {
        self.now = self.now.max(at);
        self.samples.push_back((self.now, target_cpu_ns as f64, cost_ns));
        let horizon = HORIZON.as_secs_f64();
        while self.samples.front().is_some_and(|(t, _, _)| *t <= self.now - horizon) {
            self.samples.pop_front();
        }
        self.spent_ns += cost_ns;
        self.target_cpu_ns += target_cpu_ns as f64;
    }

    /// The targets' CPU time over the last horizon (the time before attach at the prior rate),
    /// at least [`MIN_CPU_BASIS`].
    fn horizon_cpu_ns(&self) -> f64 {
        let observed: f64 = self.samples.iter().map(|(_, cpu, _)| cpu).sum();
        let cpu = observed + self.prior_cpu_rate * (HORIZON.as_secs_f64() - self.now).max(0.0);
        cpu.max(MIN_CPU_BASIS.as_nanos() as f64)
    }

    fn horizon_cost_ns(&self) -> f64 {
        self.samples.iter().map(|(_, _, cost)| cost).sum()
    }

    /// What the probes may still cost over the horizon (ns; negative when overspent).
    pub fn allowance_ns(&self) -> f64 {
        self.fraction * self.horizon_cpu_ns() - self.horizon_cost_ns()
    }

    /// The estimated share of the targets' CPU the probes took over the last horizon.
    pub fn estimate(&self) -> f64 {
        let cpu = self.horizon_cpu_ns();
        if cpu > 0.0 { self.horizon_cost_ns() / cpu } else { 0.0 }
    }

    pub fn spent_ns(&self) -> f64 {
        self.spent_ns
    }

    pub fn target_cpu_ns(&self) -> f64 {
        self.target_cpu_ns
    }

    /// How long the next window may be, at most `wanted`: what the allowance buys at the last
    /// window's cost rate. None: not even [`MIN_WINDOW`] (or `wanted`, if shorter) — wait.
    pub fn window(&self, wanted: Duration) -> Option<Duration> {
        let allowance = self.allowance_ns();
        if allowance <= 0.0 {
            return None;
        }
        let allowed = match self.last_window_rate {
            Some(rate) if rate > 0.0 => Duration::from_secs_f64(allowance / rate).min(wanted),
            _ => wanted,
        };
        (allowed >= MIN_WINDOW.min(wanted)).then_some(allowed)
    }

    /// Whether an open window must close now to stay within the budget.
    pub fn exhausted(&self) -> bool {
        self.allowance_ns() <= 0.0
    }

    /// A window closed after `length`, having cost an estimated `cost_ns`.
    pub fn window_closed(&mut self, length: Duration, cost_ns: f64) {
        if length > Duration::ZERO {
            self.last_window_rate = Some(cost_ns / length.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn the_estimate_charges_traps_by_kind_and_adds_program_time() {
        let costs = HitCosts { entry_emulated_ns: 1000.0, entry_single_stepped_ns: 5000.0, return_ns: 1500.0 };
        let charge = |kind, hits, ns_per_run| ProgramCharge { kind, hits, ns_per_run };
        let programs = [
            charge(HitKind::EntryEmulated, 100, 50.0),
            charge(HitKind::EntrySingleStepped, 2, 25.0),
            charge(HitKind::Return, 100, 200.0),
        ];
        let expected = 100.0 * (1000.0 + 50.0) + 2.0 * (5000.0 + 25.0) + 100.0 * (1500.0 + 200.0);
        assert_eq!(costs.estimate_ns(&programs), expected);
    }

    /// A busy single-threaded target: one CPU second per second, before and after attach.
    fn busy() -> Budget {
        Budget::new(0.01, SECOND as f64)
    }

    #[test]
    fn the_horizon_before_attach_is_credited_at_the_prior_rate() {
        let budget = busy();
        assert!((budget.allowance_ns() - 6.0 * SECOND as f64).abs() < 1.0);
        assert_eq!(budget.window(Duration::from_secs(60)), Some(Duration::from_secs(60)));
        // An idle process is budgeted as if it used MIN_CPU_BASIS: 1% of 10 s.
        let idle = Budget::new(0.01, 0.0);
        assert!((idle.allowance_ns() - 0.1 * SECOND as f64).abs() < 1.0);
    }

    #[test]
    fn an_expensive_window_shrinks_the_next() {
        let mut budget = busy();
        // 10 s of window, half of the target's CPU in memmon's traps.
        for t in 1..=10 {
            budget.account(f64::from(t), SECOND, 0.5 * SECOND as f64);
        }
        budget.window_closed(Duration::from_secs(10), 5.0 * SECOND as f64);
        assert!((budget.estimate() - 5.0 / 600.0).abs() < 1e-9, "{}", budget.estimate());
        // 1% of 600 s is 6 s; 5 s spent: 1 s left, at 0.5 s per second of window: 2 s.
        let next = budget.window(Duration::from_secs(60)).unwrap();
        assert!((next.as_secs_f64() - 2.0).abs() < 1e-6, "{next:?}");
    }

    #[test]
    fn a_spent_budget_refuses_windows_until_the_cost_leaves_the_horizon() {
        let mut budget = busy();
        // A 7 s window in which memmon's traps took all of the target's CPU.
        for t in 1..=7 {
            budget.account(f64::from(t), SECOND, SECOND as f64);
        }
        assert!(budget.exhausted());
        budget.window_closed(Duration::from_secs(7), 7.0 * SECOND as f64);
        assert_eq!(budget.window(Duration::from_secs(60)), None);
        budget.account(300.0, 293 * SECOND, 0.0);
        assert_eq!(budget.window(Duration::from_secs(60)), None, "the cost is still within the horizon");
        budget.account(610.0, 310 * SECOND, 0.0);
        assert!(!budget.exhausted(), "ten minutes later the expensive window has left the horizon");
        let next = budget.window(Duration::from_secs(60)).unwrap();
        assert!((next.as_secs_f64() - 6.03).abs() < 1e-6, "{next:?}");
        assert!(budget.estimate() < 1e-9);
    }

    #[test]
    fn a_short_wanted_window_is_not_refused_for_being_short() {
        let budget = busy();
        let wanted = Duration::from_millis(500);
        assert_eq!(budget.window(wanted), Some(wanted));
    }
}
