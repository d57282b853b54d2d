//! `memmon agent`: attach, then report live memory by site until stopped or the targets exit.

use std::time::Duration;

use anyhow::Result;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval_at, sleep_until},
};

use crate::{
    report::{self, ProcessLine, Report, SiteView},
    snapshot::{SiteSample, Snapshot},
    symbolize::Symbolizer,
    tracer::{Tracer, TracerOptions},
};

#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub pids: Vec<u32>,
    /// How often the live report is printed; `None` prints only the final one.
    pub report_interval: Option<Duration>,
    /// How many sites each report shows.
    pub top: usize,
    /// Stop by itself after this long.
    pub duration: Option<Duration>,
    pub tracer: TracerOptions,
}

/// Runs until SIGINT/SIGTERM, the duration, or every target exiting; then prints a final report.
pub async fn run(options: AgentOptions) -> Result<()> {
    let mut tracer = Tracer::attach(&options.pids, options.tracer)?;
    // Read the memory maps before announcing the attach, so a target that exits at once can
    // still be symbolized.
    let mut symbolizer = Symbolizer::new();
    for target in tracer.targets() {
        symbolizer.observe(target.process.pid);
    }
    for target in tracer.targets() {
        eprintln!(
            "memmon: attached to pid {} ({}): {} allocator in {}; probing {}",
            target.process.pid,
            target.process.comm,
            target.allocator.name,
            target.allocator.object(),
            target.allocator.describe()
        );
    }
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let far_future = Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    let deadline = options.duration.map_or(far_future, |d| Instant::now() + d);
    let period = options.report_interval.unwrap_or(Duration::from_secs(3600));
    let mut reports = interval_at(Instant::now() + period, period);
    reports.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut liveness = tokio::time::interval(Duration::from_millis(250));

    let reason = loop {
        tokio::select! {
            _ = interrupt.recv() => break "interrupted",
            _ = terminate.recv() => break "terminated",
            _ = sleep_until(deadline) => break "duration reached",
            _ = reports.tick(), if options.report_interval.is_some() => {
                let snapshot = tracer.snapshot()?;
                for target in tracer.targets() {
                    symbolizer.observe(target.process.pid);
                }
                print!("{}", render(&tracer, &snapshot, &mut symbolizer, options.top));
            }
            _ = liveness.tick() => {
                if tracer.targets().iter().all(|t| !t.process.is_alive()) {
                    break "every target exited";
                }
            }
        }
    };
    let snapshot = tracer.snapshot()?;
    println!("memmon: stopping ({reason}); final report:");
    print!("{}", render(&tracer, &snapshot, &mut symbolizer, options.top));
    if let Some(top) = views(&snapshot, &mut symbolizer, 1).first() {
        println!(
            "memmon: largest live site: {} ({}) holds {} ({} bytes) in {} blocks",
            top.function(),
            top.location(),
            report::human_bytes(top.live_bytes),
            top.live_bytes,
            top.live_count
        );
    }
    drop(tracer);
    eprintln!("memmon: probes detached");
    Ok(())
}

/// Symbolized views of the `top` heap sites with the most live bytes.
pub fn views(snapshot: &Snapshot, symbolizer: &mut Symbolizer, top: usize) -> Vec<SiteView> {
    site_views(&snapshot.top_live(top), symbolizer)
}

fn site_views(sites: &[&SiteSample], symbolizer: &mut Symbolizer) -> Vec<SiteView> {
    sites
        .iter()
        .map(|site| SiteView {
            pid: site.pid,
            live_bytes: site.live_bytes(),
            live_count: site.live_count(),
            alloc_bytes: site.stats.alloc_bytes,
            alloc_count: site.stats.alloc_count,
            frames: symbolizer.frames(site.pid, &site.frames),
        })
        .collect()
}

fn render(tracer: &Tracer, snapshot: &Snapshot, symbolizer: &mut Symbolizer, top: usize) -> String {
    let pids: Vec<String> = tracer
        .targets()
        .iter()
        .map(|t| format!("{} ({})", t.process.pid, t.process.comm))
        .collect();
    let mut mapping_sites: Vec<&SiteSample> =
        snapshot.mapping_sites.iter().filter(|s| s.live_bytes() > 0).collect();
    mapping_sites.sort_by_key(|s| std::cmp::Reverse(s.live_bytes()));
    mapping_sites.truncate(top);
    Report {
        title: format!("memmon {} pid {}", time_of_day(), pids.join(", ")),
        sites: views(snapshot, symbolizer, top),
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

fn time_of_day() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{:02}:{:02}:{:02}Z", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}
