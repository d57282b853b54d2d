//! Profiles: heap profiles of a traced process, in formats the ecosystem reads.

pub mod pprof;

use crate::{snapshot::Snapshot, symbolize::Symbolizer};

/// The heap profile of everything memmon tracked in `snapshot` since attach: per site, what was
/// allocated (alloc_*) and what is still live (inuse_*).
pub fn heap_profile(snapshot: &Snapshot, symbolizer: &mut Symbolizer, time_nanos: i64, duration_nanos: i64) -> pprof::HeapProfile {
    let pids: std::collections::BTreeSet<u32> = snapshot.sites.iter().map(|s| s.pid).collect();
    let mut mappings = Vec::new();
    for pid in pids {
        if symbolizer.mappings(pid).is_empty() {
            symbolizer.observe(pid);
        }
        for (start, limit, file_offset, path) in symbolizer.mappings(pid) {
            mappings.push(pprof::MappingInfo {
                start,
                limit,
                file_offset,
                build_id: build_id(&path).unwrap_or_default(),
                path: path.to_string_lossy().into_owned(),
            });
        }
    }
    let mapping_of = |address: u64| mappings.iter().position(|m| address >= m.start && address < m.limit);
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
                    mapping: mapping_of(frame.address),
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
    pprof::HeapProfile { time_nanos, duration_nanos, mappings, samples }
}

/// The GNU build id of an ELF file, in hex (what pprof and symbol servers match binaries by).
fn build_id(path: &std::path::Path) -> Option<String> {
    use object::Object as _;
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let id = file.build_id().ok()??;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}
