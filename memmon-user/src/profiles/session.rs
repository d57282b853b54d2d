//! A profiling session: a window of time over the traced processes, written as a pprof heap
//! profile at start, at every checkpoint while it runs, and at its end.
//!
//! The window's numbers come from two kernel sources. What was allocated during it (alloc_*) is
//! each site's counters at the checkpoint minus the same counters at the start. What is still
//! live from it (inuse_*) is the live blocks whose allocation time falls inside the window —
//! blocks allocated before the session are not its doing, even if still live. Both are exact
//! when the process is quiet at the edges; an allocation racing with the reading of the tables
//! (a few milliseconds) lands on one side of the edge or the other.
//!
//! Checkpoints make the limits safe: a checkpoint that would exceed MEMMON_MAX_PROFILE_SIZE_MB
//! is not written and the session ends *truncated* with the previous one; one that cannot be
//! written (a full disk) ends it *failed*, the previous file intact.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use memmon_common::SiteStats;

use super::{
    SiteValues, heap_profile,
    id::ProfileId,
    meta::{ExecMeta, ProfileMeta, State, TargetMeta, TimelinePoint},
    pprof::{self, HeapProfile},
    store::ProfileDir,
};
use crate::{report::human_bytes, snapshot::Snapshot, symbolize::Symbolizer};

/// Room kept under the size cap for the final state comment, so that marking the last
/// checkpoint truncated never takes it over the cap.
const STATE_COMMENT_ROOM: usize = 1024;

/// A live block, as read from the kernel's live table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveBlock {
    pub pid: u32,
    pub site: u64,
    pub size: u64,
    /// CLOCK_MONOTONIC ns at allocation.
    pub born_ns: u64,
}

/// What the agent hands a checkpoint.
pub struct CheckpointInput<'a> {
    pub snapshot: &'a Snapshot,
    /// Live blocks born at or after the session's start (more is fine: filtered here).
    pub born: &'a [LiveBlock],
    pub symbolizer: &'a mut Symbolizer,
    pub dir: &'a ProfileDir,
    pub max_bytes: u64,
}

/// The last checkpoint on disk.
#[derive(Clone, Debug)]
pub struct Written {
    pub profile: HeapProfile,
    pub meta: ProfileMeta,
    pub size_bytes: u64,
    pub allocated_bytes: u64,
    pub allocations: u64,
    pub live_bytes: u64,
    pub live_allocations: u64,
}

pub struct Session {
    pub id: ProfileId,
    pub started_at: jiff::Timestamp,
    pub duration: Duration,
    pub state: State,
    pub reason: String,
    pub checkpoints: u64,
    pub written: Option<Written>,
    targets: Vec<TargetMeta>,
    start_ns: u64,
    last_checkpoint_ns: u64,
    baseline: HashMap<u64, SiteStats>,
    losses_at_start: BTreeMap<&'static str, u64>,
    timeline: Vec<TimelinePoint>,
    execs: Vec<ExecMeta>,
}

impl Session {
    /// Opens a session on `snapshot` (its start) and writes its first, empty, profile. Fails,
    /// leaving nothing behind, if that cannot be written.
    pub fn start(
        id: ProfileId,
        targets: Vec<TargetMeta>,
        duration: Duration,
        memory: &HashMap<u32, u64>,
        mut input: CheckpointInput,
    ) -> std::io::Result<Self> {
        let snapshot = input.snapshot;
        let mut session = Self {
            id,
            started_at: jiff::Timestamp::now(),
            duration,
            state: State::Running,
            reason: String::new(),
            checkpoints: 0,
            written: None,
            targets,
            start_ns: snapshot.taken_at_ns,
            last_checkpoint_ns: snapshot.taken_at_ns,
            baseline: snapshot.sites.iter().map(|s| (s.id, s.stats)).collect(),
            losses_at_start: snapshot.losses.clone(),
            timeline: Vec::new(),
            execs: Vec::new(),
        };
        session.record(snapshot, memory);
        let (profile, meta) = session.build(&mut input, State::Running, "");
        let bytes = pprof::encode_gzipped(&profile).map_err(std::io::Error::other)?;
        if (bytes.len() + STATE_COMMENT_ROOM) as u64 > input.max_bytes {
            return Err(std::io::Error::other(format!(
                "even an empty profile of these processes ({}, their mappings) does not fit under the {} of \
                 MEMMON_MAX_PROFILE_SIZE_MB",
                human_bytes(bytes.len() as u64),
                human_bytes(input.max_bytes)
            )));
        }
        input.dir.write(&session.id, &bytes)?;
        session.remember(profile, meta, bytes.len(), snapshot.taken_at_ns);
        Ok(session)
    }

    /// One of the session's processes exec'ed (`lifecycle`), at `now_ns` (CLOCK_MONOTONIC).
    pub fn note_exec(&mut self, pid: u32, exec: &crate::lifecycle::Exec, now_ns: u64) {
        if !self.is_running() || !self.pids().contains(&pid) {
            return;
        }
        self.execs.push(ExecMeta {
            pid,
            seconds: now_ns.saturating_sub(self.start_ns) as f64 / 1e9,
            discarded_bytes: exec.discarded_bytes,
            discarded_blocks: exec.discarded_blocks,
            from_comm: exec.from_comm.clone(),
            to_comm: exec.to_comm.clone(),
        });
    }

    /// Execs of its processes during the window.
    pub fn execs(&self) -> &[ExecMeta] {
        &self.execs
    }

    pub fn is_running(&self) -> bool {
        self.state == State::Running
    }

    pub fn pids(&self) -> Vec<u32> {
        self.targets.iter().map(|t| t.pid).collect()
    }

    /// The monotonic time the window started.
    pub fn start_ns(&self) -> u64 {
        self.start_ns
    }

    pub fn elapsed(&self, now_ns: u64) -> Duration {
        Duration::from_nanos(now_ns.saturating_sub(self.start_ns))
    }

    /// The part of the window the file on disk covers (up to its last checkpoint).
    pub fn written_window(&self) -> Duration {
        self.elapsed(self.last_checkpoint_ns)
    }

    pub fn expired(&self, now_ns: u64) -> bool {
        self.elapsed(now_ns) >= self.duration
    }

    pub fn checkpoint_due(&self, now_ns: u64, period: Duration) -> bool {
        Duration::from_nanos(now_ns.saturating_sub(self.last_checkpoint_ns)) >= period
    }

    /// Adds the processes' memory at `snapshot` to the timeline (RSS by pid from /proc).
    pub fn record(&mut self, snapshot: &Snapshot, rss_by_pid: &HashMap<u32, u64>) {
        let seconds = self.elapsed(snapshot.taken_at_ns).as_secs_f64();
        for target in &self.targets {
            let heap_live_bytes = snapshot.sites.iter().filter(|s| s.pid == target.pid).map(|s| s.live_bytes()).sum();
            let rss_bytes = rss_by_pid.get(&target.pid).copied().unwrap_or(0);
            self.timeline.push(TimelinePoint { pid: target.pid, seconds, rss_bytes, heap_live_bytes });
        }
    }

    /// Writes the window so far. With `ending`, the session ends with that reason (finished,
    /// unless the last write runs into the size cap or the disk).
    pub fn checkpoint(&mut self, mut input: CheckpointInput, ending: Option<&str>) {
        if !self.is_running() {
            return;
        }
        let (state, reason) = match ending {
            Some(reason) => (State::Finished, reason),
            None => (State::Running, ""),
        };
        let (profile, meta) = self.build(&mut input, state, reason);
        let bytes = match pprof::encode_gzipped(&profile) {
            Ok(bytes) => bytes,
            Err(err) => return self.fail(input.dir, format!("encoding the profile failed: {err:#}")),
        };
        if (bytes.len() + STATE_COMMENT_ROOM) as u64 > input.max_bytes {
            return self.truncate(
                input.dir,
                format!(
                    "size cap reached: the next checkpoint would have been {} over the {} of MEMMON_MAX_PROFILE_SIZE_MB",
                    human_bytes(bytes.len() as u64),
                    human_bytes(input.max_bytes)
                ),
            );
        }
        if let Err(err) = input.dir.write(&self.id, &bytes) {
            return self.fail(input.dir, format!("writing the profile failed: {err}"));
        }
        self.remember(profile, meta, bytes.len(), input.snapshot.taken_at_ns);
        if ending.is_some() {
            self.state = State::Finished;
            self.reason = reason.to_string();
            self.release();
        }
    }

    /// An ended session keeps its numbers, not its samples (they are in the file).
    fn release(&mut self) {
        if let Some(written) = &mut self.written {
            written.profile = HeapProfile::default();
        }
        self.baseline = HashMap::new();
    }

    /// Ends the session keeping the last checkpoint, marked truncated.
    fn truncate(&mut self, dir: &ProfileDir, reason: String) {
        self.state = State::Truncated;
        self.reason = self.with_kept_window(reason);
        self.rewrite_last(dir);
        self.release();
    }

    /// Ends the session on an error; the last checkpoint stays as it is on disk.
    pub fn fail(&mut self, dir: &ProfileDir, reason: String) {
        log::warn!("profile {}: {reason}", self.id);
        self.state = State::Failed;
        self.reason = self.with_kept_window(reason);
        self.rewrite_last(dir); // fails too on a full disk: the file then still says "running"
        self.release();
    }

    fn with_kept_window(&self, reason: String) -> String {
        match &self.written {
            Some(_) => format!("{reason}; the file holds the first {:.1} s", self.written_window().as_secs_f64()),
            None => reason,
        }
    }

    /// Rewrites the last checkpoint with the session's final state.
    fn rewrite_last(&mut self, dir: &ProfileDir) {
        let Some(written) = &mut self.written else { return };
        written.meta.state = self.state;
        written.meta.reason = self.reason.clone();
        written.profile.comments = written.meta.to_comments();
        let rewritten = pprof::encode_gzipped(&written.profile)
            .map_err(std::io::Error::other)
            .and_then(|bytes| dir.write(&self.id, &bytes).map(|()| bytes.len()));
        match rewritten {
            Ok(size) => written.size_bytes = size as u64,
            Err(err) => log::warn!("profile {}: could not mark the last checkpoint {}: {err}", self.id, self.state.name()),
        }
    }

    fn build(&self, input: &mut CheckpointInput, state: State, reason: &str) -> (HeapProfile, ProfileMeta) {
        let snapshot = input.snapshot;
        let sites = self.window(snapshot, input.born);
        let meta = ProfileMeta {
            id: self.id.to_string(),
            state,
            reason: reason.to_string(),
            targets: self.targets.clone(),
            timeline: self.timeline.clone(),
            execs: self.execs.clone(),
            events_lost: snapshot
                .losses
                .iter()
                .map(|(reason, n)| (reason.to_string(), n.saturating_sub(self.losses_at_start.get(reason).copied().unwrap_or(0))))
                .filter(|(_, n)| *n > 0)
                .collect(),
        };
        let window_ns = snapshot.taken_at_ns.saturating_sub(self.start_ns);
        let start_unix_ns = i64::try_from(self.started_at.as_nanosecond()).unwrap_or(0);
        let profile = heap_profile(
            &sites,
            input.symbolizer,
            start_unix_ns,
            i64::try_from(window_ns).unwrap_or(i64::MAX),
            meta.to_comments(),
        );
        (profile, meta)
    }

    fn remember(&mut self, profile: HeapProfile, meta: ProfileMeta, size: usize, at_ns: u64) {
        let total = |index: usize| profile.samples.iter().map(|s| s.values[index].max(0) as u64).sum::<u64>();
        self.written = Some(Written {
            allocations: total(0),
            allocated_bytes: total(1),
            live_allocations: total(2),
            live_bytes: total(3),
            size_bytes: size as u64,
            profile,
            meta,
        });
        self.checkpoints += 1;
        self.last_checkpoint_ns = at_ns;
    }

    /// Per site: allocated during the window (counter deltas) and live from it (blocks born in
    /// it), for the session's processes. Sites with neither are left out.
    pub fn window(&self, snapshot: &Snapshot, born: &[LiveBlock]) -> Vec<SiteValues> {
        let end_ns = snapshot.taken_at_ns;
        let mut live: HashMap<u64, (u64, u64)> = HashMap::new();
        for block in born.iter().filter(|b| b.born_ns >= self.start_ns && b.born_ns <= end_ns) {
            let entry = live.entry(block.site).or_default();
            entry.0 += 1;
            entry.1 += block.size;
        }
        let pids = self.pids();
        snapshot
            .sites
            .iter()
            // An image exec'ed away: its code is gone, so its stacks cannot be named (the
            // session's metadata records the exec).
            .filter(|site| pids.contains(&site.pid) && !site.image_gone)
            .filter_map(|site| {
                let before = self.baseline.get(&site.id).copied().unwrap_or_default();
                let allocations = site.stats.alloc_count.saturating_sub(before.alloc_count);
                let allocated = site.stats.alloc_bytes.saturating_sub(before.alloc_bytes);
                let (live_count, live_bytes) = live.get(&site.id).copied().unwrap_or_default();
                (allocations > 0 || live_count > 0).then(|| SiteValues {
                    truncated: site.truncated,
                    pid: site.pid,
                    frames: site.frames.clone(),
                    values: [allocations, allocated, live_count, live_bytes],
                })
            })
            .collect()
    }

}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::snapshot::SiteSample;

    fn site(id: u64, alloc_count: u64, alloc_bytes: u64) -> SiteSample {
        SiteSample {
            id,
            pid: 7,
            frames: Arc::new(vec![0x1000 + id]),
            truncated: memmon_common::Truncation::Complete,
            stats: SiteStats { alloc_bytes, alloc_count, ..SiteStats::default() },
            image_gone: false,
        }
    }

    fn session(baseline: &Snapshot) -> Session {
        Session {
            id: ProfileId::parse(super::super::id::EXAMPLE).unwrap(),
            started_at: jiff::Timestamp::UNIX_EPOCH,
            duration: Duration::from_secs(60),
            state: State::Running,
            reason: String::new(),
            checkpoints: 0,
            written: None,
            targets: vec![TargetMeta { pid: 7, comm: "app".into() }],
            start_ns: baseline.taken_at_ns,
            last_checkpoint_ns: baseline.taken_at_ns,
            baseline: baseline.sites.iter().map(|s| (s.id, s.stats)).collect(),
            losses_at_start: BTreeMap::new(),
            timeline: Vec::new(),
            execs: Vec::new(),
        }
    }

    #[test]
    fn the_window_counts_only_what_happened_inside_it() {
        let start = Snapshot { sites: vec![site(1, 10, 1000)], taken_at_ns: 100, ..Snapshot::default() };
        let session = session(&start);
        let end = Snapshot {
            sites: vec![site(1, 15, 1500), site(2, 3, 300), site(3, 0, 0)],
            taken_at_ns: 200,
            ..Snapshot::default()
        };
        let born = [
            LiveBlock { pid: 7, site: 1, size: 100, born_ns: 50 },  // before the window: not its doing
            LiveBlock { pid: 7, site: 1, size: 100, born_ns: 150 }, // inside
            LiveBlock { pid: 7, site: 2, size: 100, born_ns: 100 }, // at the start: inside
            LiveBlock { pid: 7, site: 2, size: 100, born_ns: 250 }, // after the checkpoint's read
        ];
        let mut window = session.window(&end, &born);
        window.sort_by_key(|s| s.frames[0]);
        let values: Vec<[u64; 4]> = window.iter().map(|s| s.values).collect();
        assert_eq!(values, [[5, 500, 1, 100], [3, 300, 1, 100]]);
    }

    #[test]
    fn expiry_and_checkpoint_cadence() {
        let start = Snapshot { taken_at_ns: 1_000_000_000, ..Snapshot::default() };
        let session = session(&start);
        assert!(!session.expired(30_000_000_000));
        assert!(session.expired(61_000_000_000));
        assert!(!session.checkpoint_due(1_500_000_000, Duration::from_secs(1)));
        assert!(session.checkpoint_due(2_000_000_000, Duration::from_secs(1)));
    }
}
