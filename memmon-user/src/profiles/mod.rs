//! Profiles: heap profiles of traced processes, in formats the ecosystem reads.

pub mod id;
pub mod meta;
pub mod pprof;
pub mod report;
pub mod session;
pub mod store;

use std::{collections::BTreeSet, sync::Arc};

use memmon_common::Truncation;

use crate::{snapshot::Snapshot, symbolize::Symbolizer};

/// One site's numbers for a profile: [alloc_objects, alloc_space, inuse_objects, inuse_space].
#[derive(Clone, Debug)]
pub struct SiteValues {
    pub pid: u32,
    /// Return addresses, innermost first.
    pub frames: Arc<Vec<u64>>,
    pub truncated: Truncation,
    pub values: [u64; 4],
}

/// Everything tracked in `snapshot` since attach: per site, what was allocated and what is live.
pub fn since_attach(snapshot: &Snapshot) -> Vec<SiteValues> {
    snapshot
        .sites
        .iter()
        .filter(|site| site.stats.alloc_count > 0)
        .map(|site| SiteValues {
            pid: site.pid,
            frames: site.frames.clone(),
            truncated: site.truncated,
            values: [site.stats.alloc_count, site.stats.alloc_bytes, site.live_count(), site.live_bytes()],
        })
        .collect()
}

/// Symbolizes `sites` into a heap profile, with the mappings (and build ids) of their processes.
pub fn heap_profile(
    sites: &[SiteValues],
    symbolizer: &mut Symbolizer,
    time_nanos: i64,
    duration_nanos: i64,
    comments: Vec<String>,
) -> pprof::HeapProfile {
    let pids: BTreeSet<u32> = sites.iter().map(|s| s.pid).collect();
    let mut mappings = Vec::new();
    for pid in pids {
        if symbolizer.mappings(pid).is_empty() {
            symbolizer.observe(pid);
        }
        for (start, limit, file_offset, path) in symbolizer.mappings(pid) {
            mappings.push((
                pid,
                pprof::MappingInfo {
                    start,
                    limit,
                    file_offset,
                    build_id: symbolizer.build_id(&path).unwrap_or_default(),
                    path: path.to_string_lossy().into_owned(),
                },
            ));
        }
    }
    let mapping_of = |pid: u32, address: u64| {
        mappings.iter().position(|(owner, m)| *owner == pid && address >= m.start && address < m.limit)
    };
    let samples = sites
        .iter()
        .map(|site| {
            let frames = symbolizer
                .stack(site.pid, &site.frames, site.truncated)
                .into_iter()
                .map(|frame| pprof::FrameInfo {
                    mapping: mapping_of(site.pid, frame.address),
                    address: frame.address,
                    function: frame.function,
                    file: frame.file,
                    line: frame.line,
                })
                .collect();
            let values = site.values.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
            let truncated = (site.truncated != Truncation::Complete).then(|| site.truncated.name().to_string());
            pprof::SampleInfo { pid: site.pid, frames, values, truncated }
        })
        .collect();
    let mappings = mappings.into_iter().map(|(_, m)| m).collect();
    pprof::HeapProfile { time_nanos, duration_nanos, mappings, samples, comments }
}
