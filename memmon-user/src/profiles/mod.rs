//! Profiles: heap profiles of a traced process, in formats the ecosystem reads.

pub mod pprof;

use crate::{snapshot::Snapshot, symbolize::Symbolizer};

/// The heap profile of everything memmon tracked in `snapshot` since attach: per site, what was
/// allocated (alloc_*) and what is still live (inuse_*).
pub fn heap_profile(snapshot: &Snapshot, symbolizer: &mut Symbolizer, time_nanos: i64, duration_nanos: i64) -> pprof::HeapProfile {
    let samples = snapshot
        .sites
        .iter()
        .filter(|site| site.stats.alloc_count > 0)
        .map(|site| {
            let frames = symbolizer
                .frames(site.pid, &site.frames)
                .into_iter()
                .map(|frame| pprof::FrameInfo {
                    address: frame.address,
                    function: frame.function,
                    file: frame.file,
                    line: frame.line,
                    mapping: None,
                })
                .collect();
            let value = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            let values = [
                value(site.stats.alloc_count),
                value(site.stats.alloc_bytes),
                value(site.live_count()),
                value(site.live_bytes()),
            ];
            (frames, values)
        })
        .collect();
    pprof::HeapProfile { time_nanos, duration_nanos, mappings: Vec::new(), samples }
}
