//! When BPF run-time statistics are on: a sample of the time, not all of it.
//!
//! While anyone holds the statistics on, the kernel reads the clock twice around every run of
//! every BPF program on the machine — memmon's and every other tool's. On a VM each read is a
//! paravirtual clock read: measured here, +500 ns on a 6.7 µs malloc+free pair under memmon
//! exact (`memmon-bench programs`). The hits themselves are counted exactly by the programs
//! (`memmon_common::probe_hits`), so only the time per run is sampled: the statistics go on
//! for [`SAMPLE_LENGTH`] every [`SAMPLE_PERIOD`], and again at once when the probes are
//! attached (a new window is a new workload). Between samples, each program's hits are charged
//! at its last sample's time per run.

use std::time::{Duration, Instant};

use super::ProgramCounts;

/// How often the statistics are sampled.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(30);
/// How long a sample keeps them on.
pub const SAMPLE_LENGTH: Duration = Duration::from_secs(1);

/// What the sampler wants done with the statistics now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    Nothing,
    /// Switch them on and call [`RunTimeSampler::started`].
    Start,
    /// Read the programs, call [`RunTimeSampler::finished`], switch them off.
    Finish,
}

#[derive(Clone, Debug)]
struct Sample {
    since: Instant,
    base: Vec<(&'static str, ProgramCounts)>,
}

/// The sampling schedule and each program's last measured time per run.
#[derive(Clone, Debug)]
pub struct RunTimeSampler {
    period: Duration,
    length: Duration,
    running: Option<Sample>,
    /// When the next sample is due; None: at once.
    next: Option<Instant>,
    ns_per_run: Vec<(&'static str, f64)>,
}

impl Default for RunTimeSampler {
    fn default() -> Self {
        Self::new(SAMPLE_PERIOD, SAMPLE_LENGTH)
    }
}

impl RunTimeSampler {
    pub fn new(period: Duration, length: Duration) -> Self {
        Self { period, length, running: None, next: None, ns_per_run: Vec::new() }
    }

    pub fn due(&self, now: Instant) -> Due {
        match &self.running {
            Some(sample) if now.duration_since(sample.since) >= self.length => Due::Finish,
            Some(_) => Due::Nothing,
            None if self.next.is_none_or(|next| now >= next) => Due::Start,
            None => Due::Nothing,
        }
    }

    /// The statistics went on at `now`; `counts` are the programs' statistics then.
    pub fn started(&mut self, now: Instant, counts: Vec<(&'static str, ProgramCounts)>) {
        self.running = Some(Sample { since: now, base: counts });
    }

    /// The sample ends at `now` with the programs' statistics `counts` (the statistics go off).
    /// Programs that did not run keep their earlier time per run.
    pub fn finished(&mut self, now: Instant, counts: &[(&'static str, ProgramCounts)]) {
        let Some(sample) = self.running.take() else { return };
        for (name, ns) in per_run(&sample.base, counts) {
            match self.ns_per_run.iter_mut().find(|(n, _)| *n == name) {
                Some(entry) => entry.1 = ns,
                None => self.ns_per_run.push((name, ns)),
            }
        }
        self.next = Some(now + self.period);
    }

    /// The probes were attached anew: sample at the next chance.
    pub fn restart(&mut self) {
        if self.running.is_none() {
            self.next = None;
        }
    }

    /// The statistics were switched off before the sample finished (the probes detached).
    pub fn abandon(&mut self) {
        self.running = None;
    }

    pub fn sampling(&self) -> bool {
        self.running.is_some()
    }

    /// The time per run of `program`: its last sample's; before any finished, the running
    /// sample's so far (`counts`: the statistics now); 0 if it has not run under statistics.
    pub fn ns_per_run(&self, program: &str, counts: &[(&'static str, ProgramCounts)]) -> f64 {
        if let Some((_, ns)) = self.ns_per_run.iter().find(|(n, _)| *n == program) {
            return *ns;
        }
        let Some(sample) = &self.running else { return 0.0 };
        per_run(&sample.base, counts).into_iter().find(|(n, _)| *n == program).map_or(0.0, |(_, ns)| ns)
    }
}

/// Time per run of each program that ran between two readings.
fn per_run(before: &[(&'static str, ProgramCounts)], after: &[(&'static str, ProgramCounts)]) -> Vec<(&'static str, f64)> {
    after
        .iter()
        .filter_map(|(name, now)| {
            let base = before.iter().find(|(n, _)| n == name).map_or(ProgramCounts::default(), |(_, c)| *c);
            let runs = now.runs.saturating_sub(base.runs);
            (runs > 0).then(|| (*name, now.run_time_ns.saturating_sub(base.run_time_ns) as f64 / runs as f64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(runs: u64, run_time_ns: u64) -> ProgramCounts {
        ProgramCounts { runs, run_time_ns }
    }

    #[test]
    fn samples_one_length_every_period_and_keeps_each_programs_time_per_run() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut sampler = RunTimeSampler::new(10 * second, second);
        assert_eq!(sampler.due(t0), Due::Start, "the first sample starts at once");
        sampler.started(t0, vec![("malloc_enter", counts(100, 1_000)), ("alloc_exit", counts(7, 7_000))]);
        assert_eq!(sampler.due(t0 + second / 2), Due::Nothing);
        // Before the first sample ends, its ratio so far stands in.
        let halfway = [("malloc_enter", counts(200, 31_000)), ("alloc_exit", counts(7, 7_000))];
        assert_eq!(sampler.ns_per_run("malloc_enter", &halfway), 300.0);
        assert_eq!(sampler.ns_per_run("alloc_exit", &halfway), 0.0, "no run yet");
        assert_eq!(sampler.due(t0 + second), Due::Finish);
        sampler.finished(t0 + second, &[("malloc_enter", counts(300, 51_000)), ("alloc_exit", counts(17, 17_000))]);
        assert!(!sampler.sampling());
        assert_eq!(sampler.ns_per_run("malloc_enter", &[]), 250.0);
        assert_eq!(sampler.ns_per_run("alloc_exit", &[]), 1_000.0);
        assert_eq!(sampler.due(t0 + 10 * second), Due::Nothing);
        assert_eq!(sampler.due(t0 + 11 * second), Due::Start);
        // A program idle through the next sample keeps its earlier time per run.
        sampler.started(t0 + 11 * second, vec![("malloc_enter", counts(300, 51_000)), ("alloc_exit", counts(17, 17_000))]);
        sampler.finished(t0 + 12 * second, &[("malloc_enter", counts(400, 61_000)), ("alloc_exit", counts(17, 17_000))]);
        assert_eq!(sampler.ns_per_run("malloc_enter", &[]), 100.0);
        assert_eq!(sampler.ns_per_run("alloc_exit", &[]), 1_000.0);
    }

    #[test]
    fn attaching_anew_samples_at_once_and_an_abandoned_sample_leaves_no_value() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut sampler = RunTimeSampler::new(30 * second, second);
        sampler.started(t0, vec![]);
        sampler.finished(t0 + second, &[("free_enter", counts(10, 5_000))]);
        assert_eq!(sampler.due(t0 + 2 * second), Due::Nothing);
        sampler.restart();
        assert_eq!(sampler.due(t0 + 2 * second), Due::Start);
        sampler.started(t0 + 2 * second, vec![("free_enter", counts(0, 0))]);
        sampler.abandon();
        assert_eq!(sampler.ns_per_run("free_enter", &[]), 500.0, "the earlier sample stands");
        assert_eq!(sampler.due(t0 + 2 * second), Due::Start, "an abandoned sample is retried");
    }
}
