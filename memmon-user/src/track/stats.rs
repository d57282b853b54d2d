//! Aggregates of completed calls, per tracked function: pure code over `CallEvent`s.
//!
//! Histograms have fixed bounds (so that Prometheus can sum and rate them) and count every
//! call exactly; sums are exact. Percentiles are exact too, over the most recent
//! `RECENT_CALLS` calls of the function (nearest rank), which is what an operator looking at
//! `status` wants to know: how calls behave now.

use std::collections::VecDeque;

use memmon_common::track::CallEvent;

/// Upper bounds (inclusive) of the byte histograms: 0, then powers of four from 16 B to 1 GiB.
pub const BYTE_BOUNDS: &[u64] = &[
    0,
    16,
    64,
    256,
    1 << 10,
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
    64 << 20,
    256 << 20,
    1 << 30,
];

/// Upper bounds (inclusive, ns) of the duration histogram: 1 µs to 1 min.
pub const DURATION_BOUNDS_NS: &[u64] = &[
    1_000,
    5_000,
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    50_000_000,
    100_000_000,
    500_000_000,
    1_000_000_000,
    5_000_000_000,
    10_000_000_000,
    60_000_000_000,
];

/// How many of a function's latest calls its percentiles are taken over.
pub const RECENT_CALLS: usize = 10_000;

/// Exact counts per bucket: `counts[i]` is the number of values ≤ `bounds[i]` and above the
/// previous bound; the last count is the values above every bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Histogram {
    pub bounds: &'static [u64],
    pub counts: Vec<u64>,
    pub sum: u64,
    pub max: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [u64]) -> Self {
        Self { bounds, counts: vec![0; bounds.len() + 1], sum: 0, max: 0 }
    }

    pub fn observe(&mut self, value: u64) {
        let bucket = self.bounds.partition_point(|&bound| bound < value);
        self.counts[bucket] += 1;
        self.sum = self.sum.saturating_add(value);
        self.max = self.max.max(value);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// (bound, values ≤ bound) for every bound, as Prometheus' `le` buckets.
    pub fn cumulative(&self) -> Vec<(u64, u64)> {
        let mut total = 0;
        self.bounds
            .iter()
            .zip(&self.counts)
            .map(|(&bound, &count)| {
                total += count;
                (bound, total)
            })
            .collect()
    }
}

/// What counts a call as notable.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// MEMMON_SLOW_CALL_SECONDS: calls that took longer are slow.
    pub slow_ns: u64,
    /// MEMMON_HIGH_USAGE_THRESHOLD_MB: calls that allocated more are high-usage.
    pub high_usage_bytes: u64,
}

/// One value of each measure of a call, for the recent window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Recent {
    net_bytes: u64,
    alloc_bytes: u64,
    duration_ns: u64,
}

/// A tracked function's completed calls.
#[derive(Clone, Debug)]
pub struct FunctionStats {
    pub net_bytes: Histogram,
    pub allocated_bytes: Histogram,
    pub duration_ns: Histogram,
    pub freed_bytes: u64,
    pub allocations: u64,
    pub frees: u64,
    /// Blocks allocated during calls and still live at their return.
    pub net_allocations: u64,
    pub slow_calls: u64,
    pub high_usage_calls: u64,
    recent: VecDeque<Recent>,
}

impl Default for FunctionStats {
    fn default() -> Self {
        Self {
            net_bytes: Histogram::new(BYTE_BOUNDS),
            allocated_bytes: Histogram::new(BYTE_BOUNDS),
            duration_ns: Histogram::new(DURATION_BOUNDS_NS),
            freed_bytes: 0,
            allocations: 0,
            frees: 0,
            net_allocations: 0,
            slow_calls: 0,
            high_usage_calls: 0,
            recent: VecDeque::new(),
        }
    }
}

/// Exact nearest-rank percentiles (and max) of the recent calls, for one measure.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl FunctionStats {
    /// Completed calls.
    pub fn calls(&self) -> u64 {
        self.net_bytes.count()
    }

    pub fn record(&mut self, call: &CallEvent, thresholds: &Thresholds) {
        self.net_bytes.observe(call.net_bytes);
        self.allocated_bytes.observe(call.alloc_bytes);
        self.duration_ns.observe(call.duration_ns);
        self.freed_bytes += call.freed_bytes;
        self.allocations += call.alloc_count;
        self.frees += call.free_count;
        self.net_allocations += call.net_count;
        if call.duration_ns > thresholds.slow_ns {
            self.slow_calls += 1;
        }
        if call.alloc_bytes > thresholds.high_usage_bytes {
            self.high_usage_calls += 1;
        }
        if self.recent.len() == RECENT_CALLS {
            self.recent.pop_front();
        }
        self.recent.push_back(Recent { net_bytes: call.net_bytes, alloc_bytes: call.alloc_bytes, duration_ns: call.duration_ns });
    }

    /// How many calls the percentiles are over.
    pub fn recent_calls(&self) -> usize {
        self.recent.len()
    }

    pub fn net_percentiles(&self) -> Percentiles {
        percentiles(self.recent.iter().map(|r| r.net_bytes).collect())
    }

    pub fn allocated_percentiles(&self) -> Percentiles {
        percentiles(self.recent.iter().map(|r| r.alloc_bytes).collect())
    }

    pub fn duration_percentiles(&self) -> Percentiles {
        percentiles(self.recent.iter().map(|r| r.duration_ns).collect())
    }
}

fn percentiles(mut values: Vec<u64>) -> Percentiles {
    if values.is_empty() {
        return Percentiles::default();
    }
    values.sort_unstable();
    // Nearest rank: the smallest value with at least p% of the values at or below it.
    let rank = |p: usize| values[(values.len() * p).div_ceil(100).max(1) - 1];
    Percentiles { p50: rank(50), p90: rank(90), p99: rank(99), max: values[values.len() - 1] }
}

/// Every tracked function's stats, by function index; the drain feeds it.
#[derive(Clone, Debug)]
pub struct Aggregate {
    pub thresholds: Thresholds,
    pub functions: Vec<FunctionStats>,
    /// Events naming no tracked function (never expected; counted rather than trusted).
    pub unknown_function_events: u64,
}

impl Aggregate {
    pub fn new(functions: usize, thresholds: Thresholds) -> Self {
        Self { thresholds, functions: vec![FunctionStats::default(); functions], unknown_function_events: 0 }
    }

    pub fn record(&mut self, call: &CallEvent) {
        match self.functions.get_mut(call.function as usize) {
            Some(stats) => stats.record(call, &self.thresholds),
            None => self.unknown_function_events += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THRESHOLDS: Thresholds = Thresholds { slow_ns: 1_000_000_000, high_usage_bytes: 50 << 20 };

    fn call(net_bytes: u64, alloc_bytes: u64, duration_ns: u64) -> CallEvent {
        CallEvent { net_bytes, alloc_bytes, duration_ns, alloc_count: 2, net_count: u64::from(net_bytes > 0), ..Default::default() }
    }

    #[test]
    fn buckets_are_inclusive_upper_bounds_and_exact() {
        let mut histogram = Histogram::new(BYTE_BOUNDS);
        for value in [0, 0, 1, 16, 17, 64, 1 << 30, (1 << 30) + 1] {
            histogram.observe(value);
        }
        let cumulative = histogram.cumulative();
        assert_eq!(cumulative[0], (0, 2));
        assert_eq!(cumulative[1], (16, 4));
        assert_eq!(cumulative[2], (64, 6));
        assert_eq!(cumulative.last(), Some(&(1 << 30, 7)));
        assert_eq!(histogram.count(), 8);
        assert_eq!(histogram.sum, 1 + 16 + 17 + 64 + (1 << 31) + 1);
        assert_eq!(histogram.max, (1 << 30) + 1);
    }

    #[test]
    fn calls_are_summed_counted_and_flagged() {
        let mut stats = FunctionStats::default();
        // Every 4th call keeps 3000 bytes of its 3500; the others free all of their 500.
        for i in 0..100u64 {
            let keeps = i % 4 == 3;
            stats.record(&call(if keeps { 3000 } else { 0 }, if keeps { 3500 } else { 500 }, 2_000), &THRESHOLDS);
        }
        stats.record(&call(0, 60 << 20, 2_000_000_000), &THRESHOLDS);
        assert_eq!(stats.calls(), 101);
        assert_eq!(stats.net_bytes.sum, 25 * 3000);
        assert_eq!(stats.net_bytes.cumulative()[0], (0, 76));
        assert_eq!(stats.net_bytes.cumulative()[5], (4096, 101));
        assert_eq!(stats.net_allocations, 25);
        assert_eq!((stats.slow_calls, stats.high_usage_calls), (1, 1));
        let net = stats.net_percentiles();
        assert_eq!((net.p50, net.p90, net.p99, net.max), (0, 3000, 3000, 3000));
        assert_eq!(stats.duration_percentiles().max, 2_000_000_000);
        assert_eq!(stats.allocated_percentiles().p50, 500);
    }

    #[test]
    fn percentiles_cover_the_recent_calls_only() {
        let mut stats = FunctionStats::default();
        for _ in 0..RECENT_CALLS {
            stats.record(&call(100, 100, 1), &THRESHOLDS);
        }
        for _ in 0..RECENT_CALLS {
            stats.record(&call(7, 7, 1), &THRESHOLDS);
        }
        assert_eq!(stats.recent_calls(), RECENT_CALLS);
        assert_eq!(stats.net_percentiles().max, 7);
        assert_eq!(stats.net_bytes.max, 100, "the histogram keeps every call");
        assert_eq!(percentiles(vec![5, 1, 3]), Percentiles { p50: 3, p90: 5, p99: 5, max: 5 });
    }

    #[test]
    fn events_of_unknown_functions_are_counted_not_recorded() {
        let mut aggregate = Aggregate::new(1, THRESHOLDS);
        aggregate.record(&CallEvent { function: 3, ..Default::default() });
        aggregate.record(&CallEvent { function: 0, ..Default::default() });
        assert_eq!((aggregate.unknown_function_events, aggregate.functions[0].calls()), (1, 1));
    }
}
