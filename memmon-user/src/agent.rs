//! `memmon agent`: attach, then report live memory by site until stopped or the targets exit.

use std::time::Duration;

use anyhow::Result;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior, interval_at, sleep_until},
};

use crate::{
    report::{self, SiteView},
    snapshot::Snapshot,
    symbolize::Symbolizer,
    tracer::{Capacity, Tracer},
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
    pub capacity: Capacity,
}

/// Runs until SIGINT/SIGTERM, the duration, or every target exiting; then prints a final report.
pub async fn run(options: AgentOptions) -> Result<()> {
    let mut tracer = Tracer::attach(&options.pids, options.capacity)?;
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

/// Symbolized views of the `top` sites with the most live bytes.
pub fn views(snapshot: &Snapshot, symbolizer: &mut Symbolizer, top: usize) -> Vec<SiteView> {
    snapshot
        .top_live(top)
        .into_iter()
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
    let title = format!("memmon {} pid {}", time_of_day(), pids.join(", "));
    let losses: Vec<(&str, u64)> =
        snapshot.losses.iter().filter(|&(_, &n)| n > 0).map(|(&r, &n)| (r, n)).collect();
    let sites = views(snapshot, symbolizer, top);
    report::render(&title, &sites, snapshot.live_bytes(), snapshot.live_count(), &losses)
}

fn time_of_day() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{:02}:{:02}:{:02}Z", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}
