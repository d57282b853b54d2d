//! What a memmon profile says about itself beyond the samples: its id, how it ended, its
//! targets, the process memory over its window and the events lost during it.
//!
//! Kept in the pprof `comment` strings, one fact per comment, so that a profile is one
//! self-contained file that `go tool pprof -comments` also shows. A profile from another
//! producer simply has no such comments: every field is then empty.

use std::collections::BTreeMap;

/// How a session ended (or that it has not yet).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    #[default]
    Running,
    /// Ended at its duration, on request, or because its targets exited.
    Finished,
    /// Ended early because the next checkpoint would have exceeded MEMMON_MAX_PROFILE_SIZE_MB;
    /// the file holds the window up to the last checkpoint that fitted.
    Truncated,
    /// Ended because the profile could not be written (a full disk, say); the file holds the
    /// last checkpoint that was written, if any.
    Failed,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Running => "running",
            State::Finished => "finished",
            State::Truncated => "truncated",
            State::Failed => "failed",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [State::Running, State::Finished, State::Truncated, State::Failed].into_iter().find(|s| s.name() == text)
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TargetMeta {
    pub pid: u32,
    pub comm: String,
}

/// A process of the session replaced its image (execve) during the window: the old image's
/// blocks were discarded and its allocations are not in the profile (their code is gone).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExecMeta {
    pub pid: u32,
    /// Seconds since the start of the window.
    pub seconds: f64,
    pub discarded_bytes: u64,
    pub discarded_blocks: u64,
    pub from_comm: String,
    pub to_comm: String,
}

/// One point of a process' memory during the window.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TimelinePoint {
    pub pid: u32,
    /// Seconds since the start of the window.
    pub seconds: f64,
    /// Resident set size (/proc/PID/status VmRSS).
    pub rss_bytes: u64,
    /// Bytes live in tracked heap blocks (all of them, not only those born in the window).
    pub heap_live_bytes: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProfileMeta {
    pub id: String,
    pub state: State,
    /// Why the session ended ("duration reached", …); empty while running.
    pub reason: String,
    pub targets: Vec<TargetMeta>,
    pub timeline: Vec<TimelinePoint>,
    /// Execs of the session's processes during the window.
    pub execs: Vec<ExecMeta>,
    /// Events lost during the window, by reason (only reasons with losses).
    pub events_lost: BTreeMap<String, u64>,
}

const ID: &str = "memmon-profile: id=";
const STATE: &str = "memmon-state: ";
const TARGET: &str = "memmon-target: ";
const TIMELINE: &str = "memmon-timeline: ";
const LOST: &str = "memmon-events-lost: ";
const EXEC: &str = "memmon-exec: ";

impl ProfileMeta {
    pub fn to_comments(&self) -> Vec<String> {
        let mut comments = vec![format!("{ID}{}", self.id)];
        comments.push(match self.reason.is_empty() {
            true => format!("{STATE}{}", self.state.name()),
            false => format!("{STATE}{} ({})", self.state.name(), self.reason),
        });
        for target in &self.targets {
            comments.push(format!("{TARGET}pid={} comm={}", target.pid, target.comm));
        }
        for point in &self.timeline {
            comments.push(format!(
                "{TIMELINE}pid={} t={:.3} rss_bytes={} heap_live_bytes={}",
                point.pid, point.seconds, point.rss_bytes, point.heap_live_bytes
            ));
        }
        for exec in &self.execs {
            // The names are last (they may hold spaces): from=A to=B.
            comments.push(format!(
                "{EXEC}pid={} t={:.3} discarded_bytes={} discarded_blocks={} from={} to={}",
                exec.pid, exec.seconds, exec.discarded_bytes, exec.discarded_blocks, exec.from_comm, exec.to_comm
            ));
        }
        if !self.events_lost.is_empty() {
            let lost: Vec<String> = self.events_lost.iter().map(|(reason, n)| format!("{reason}={n}")).collect();
            comments.push(format!("{LOST}{}", lost.join(" ")));
        }
        comments
    }

    /// Reads the comments back; comments that are not memmon's, or malformed, are skipped.
    pub fn from_comments<'a>(comments: impl IntoIterator<Item = &'a str>) -> Self {
        let mut meta = ProfileMeta::default();
        for comment in comments {
            if let Some(id) = comment.strip_prefix(ID) {
                meta.id = id.to_string();
            } else if let Some(rest) = comment.strip_prefix(STATE) {
                let (state, reason) = match rest.split_once(" (") {
                    Some((state, reason)) => (state, reason.strip_suffix(')').unwrap_or(reason)),
                    None => (rest, ""),
                };
                if let Some(state) = State::parse(state) {
                    meta.state = state;
                    meta.reason = reason.to_string();
                }
            } else if let Some(rest) = comment.strip_prefix(TARGET) {
                // comm is last and may hold spaces.
                let parsed = rest.strip_prefix("pid=").and_then(|rest| rest.split_once(" comm=")).and_then(
                    |(pid, comm)| Some(TargetMeta { pid: pid.parse().ok()?, comm: comm.to_string() }),
                );
                meta.targets.extend(parsed);
            } else if let Some(rest) = comment.strip_prefix(TIMELINE) {
                let fields = pairs(rest);
                let point = (|| {
                    Some(TimelinePoint {
                        pid: fields.get("pid")?.parse().ok()?,
                        seconds: fields.get("t")?.parse().ok()?,
                        rss_bytes: fields.get("rss_bytes")?.parse().ok()?,
                        heap_live_bytes: fields.get("heap_live_bytes")?.parse().ok()?,
                    })
                })();
                meta.timeline.extend(point);
            } else if let Some(rest) = comment.strip_prefix(EXEC) {
                let exec = rest.split_once(" from=").and_then(|(numbers, names)| {
                    let (from_comm, to_comm) = names.split_once(" to=")?;
                    let fields = pairs(numbers);
                    Some(ExecMeta {
                        pid: fields.get("pid")?.parse().ok()?,
                        seconds: fields.get("t")?.parse().ok()?,
                        discarded_bytes: fields.get("discarded_bytes")?.parse().ok()?,
                        discarded_blocks: fields.get("discarded_blocks")?.parse().ok()?,
                        from_comm: from_comm.to_string(),
                        to_comm: to_comm.to_string(),
                    })
                });
                meta.execs.extend(exec);
            } else if let Some(rest) = comment.strip_prefix(LOST) {
                for (reason, n) in pairs(rest) {
                    if let Ok(n) = n.parse() {
                        meta.events_lost.insert(reason.to_string(), n);
                    }
                }
            }
        }
        meta
    }

    /// The highest RSS and the highest live heap seen in the window, over all targets.
    pub fn peaks(&self) -> (u64, u64) {
        let rss = self.timeline.iter().map(|p| p.rss_bytes).max().unwrap_or(0);
        let heap = self.timeline.iter().map(|p| p.heap_live_bytes).max().unwrap_or(0);
        (rss, heap)
    }
}

fn pairs(text: &str) -> BTreeMap<&str, &str> {
    text.split_whitespace().filter_map(|pair| pair.split_once('=')).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ProfileMeta {
        ProfileMeta {
            id: "20261127T031500Z-1a2b3c4d".into(),
            state: State::Truncated,
            reason: "size cap reached (MEMMON_MAX_PROFILE_SIZE_MB=1)".into(),
            targets: vec![TargetMeta { pid: 42, comm: "my server".into() }],
            timeline: vec![
                TimelinePoint { pid: 42, seconds: 0.0, rss_bytes: 1000, heap_live_bytes: 10 },
                TimelinePoint { pid: 42, seconds: 1.5, rss_bytes: 3000, heap_live_bytes: 5 },
            ],
            events_lost: BTreeMap::from([("live_table_full".into(), 3)]),
            execs: vec![ExecMeta {
                pid: 42,
                seconds: 0.75,
                discarded_bytes: 100_000,
                discarded_blocks: 100,
                from_comm: "old name".into(),
                to_comm: "sleep".into(),
            }],
        }
    }

    #[test]
    fn comments_round_trip() {
        let comments = meta().to_comments();
        assert_eq!(comments[1], "memmon-state: truncated (size cap reached (MEMMON_MAX_PROFILE_SIZE_MB=1))");
        let read = ProfileMeta::from_comments(comments.iter().map(String::as_str));
        assert_eq!(read, meta());
        assert_eq!(read.peaks(), (3000, 10));
    }

    #[test]
    fn foreign_and_malformed_comments_are_skipped() {
        let read = ProfileMeta::from_comments(["written by go", "memmon-timeline: pid=x t=1", "memmon-state: bogus"]);
        assert_eq!(read, ProfileMeta::default());
    }
}
