//! The live text report the agent prints on stdout (for the on-call engineer at a terminal).

use crate::{
    report::{ProcessLine, Report, SiteView},
    snapshot::{SiteSample, Snapshot},
    symbolize::Symbolizer,
};

use super::state::Agent;

/// Symbolized views of the `top` heap sites with the most live bytes.
pub fn views(snapshot: &Snapshot, symbolizer: &mut Symbolizer, top: usize) -> Vec<SiteView> {
    site_views(&snapshot.top_live(top), symbolizer)
}

fn site_views(sites: &[&SiteSample], symbolizer: &mut Symbolizer) -> Vec<SiteView> {
    sites
        .iter()
        .map(|site| SiteView {
            live_bytes: site.live_bytes(),
            live_count: site.live_count(),
            alloc_bytes: site.stats.alloc_bytes,
            alloc_count: site.stats.alloc_count,
            frames: symbolizer.stack(site.pid, &site.frames, site.truncated),
        })
        .collect()
}

pub fn render(agent: &mut Agent) -> String {
    let top = agent.config().top as usize;
    let pids: Vec<String> = agent
        .tracer()
        .targets()
        .iter()
        .map(|t| format!("{} ({})", t.process.pid, t.process.comm))
        .collect();
    let title = format!("memmon {} pid {}", time_of_day(), pids.join(", "));
    let snapshot = agent.snapshot().clone();
    let symbolizer = agent.symbolizer();
    let mut mapping_sites: Vec<&SiteSample> =
        snapshot.mapping_sites.iter().filter(|s| s.live_bytes() > 0).collect();
    mapping_sites.sort_by_key(|s| std::cmp::Reverse(s.live_bytes()));
    mapping_sites.truncate(top);
    Report {
        title,
        sites: views(&snapshot, symbolizer, top),
        live_sites: snapshot.sites.iter().filter(|s| s.live_bytes() > 0).count(),
        live_bytes: snapshot.live_bytes(),
        live_count: snapshot.live_count(),
        mapping_sites: site_views(&mapping_sites, symbolizer),
        processes: snapshot
            .processes
            .iter()
            .map(|p| ProcessLine {
                pid: p.pid,
                brk_heap_bytes: p.brk_heap_bytes(),
                program_mapped_bytes: p.program_mapped_bytes(),
                allocator_mapped_bytes: p.allocator_mapped_bytes(),
            })
            .collect(),
        losses: snapshot.losses.iter().filter(|&(_, &n)| n > 0).map(|(&r, &n)| (r, n)).collect(),
    }
    .render()
}

/// "memmon: largest live site: f (file:line) holds …" for the end of a run.
pub fn largest_site_line(agent: &mut Agent) -> Option<String> {
    let snapshot = agent.snapshot().clone();
    let top = views(&snapshot, agent.symbolizer(), 1).into_iter().next()?;
    Some(format!(
        "memmon: largest live site: {} ({}) holds {} ({} bytes) in {} blocks",
        top.function(),
        top.location(),
        crate::report::human_bytes(top.live_bytes),
        top.live_bytes,
        top.live_count
    ))
}

fn time_of_day() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{:02}:{:02}:{:02}Z", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}
