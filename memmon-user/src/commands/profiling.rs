//! `start-profiling`, `stop-profiling`, `cleanup-profiles`, and the profiles in `status`.

use std::{fmt::Write as _, process::ExitCode};

use anyhow::Result;

use super::{Client, human_duration};
use crate::{
    profiles::id::ProfileId,
    report::human_bytes,
    wire::{Cleanup, ProfileInfo},
};

impl Client {
    pub fn start_profiling(&self, minutes: Option<f64>, pids: &[u32]) -> Result<ExitCode> {
        let mut query = Vec::new();
        if let Some(minutes) = minutes {
            query.push(format!("duration_minutes={minutes}"));
        }
        if !pids.is_empty() {
            query.push(format!("pids={}", pid_list(pids).replace(", ", ",")));
        }
        let path = match query.is_empty() {
            true => "/profiles".to_string(),
            false => format!("/profiles?{}", query.join("&")),
        };
        self.show("POST", &path, started_text)?;
        Ok(ExitCode::SUCCESS)
    }

    pub fn stop_profiling(&self, id: &str) -> Result<ExitCode> {
        // Checked here for a clear message; the agent checks again whatever reaches it.
        let id = ProfileId::parse(id).map_err(anyhow::Error::msg)?;
        self.show("POST", &format!("/profiles/{id}/stop"), stopped_text)?;
        Ok(ExitCode::SUCCESS)
    }

    pub fn cleanup_profiles(&self, days: Option<f64>) -> Result<ExitCode> {
        let path = match days {
            Some(days) => format!("/profiles/cleanup?older_than_days={days}"),
            None => "/profiles/cleanup".to_string(),
        };
        self.show("POST", &path, cleanup_text)?;
        Ok(ExitCode::SUCCESS)
    }
}

fn started_text(info: &ProfileInfo) -> String {
    format!(
        "profiling started: {id}\n  pids {pids}; ends by itself after {duration}, or: memmon stop-profiling --profile-id {id}\n  writing {file}\n",
        id = info.profile_id,
        pids = pid_list(&info.pids),
        duration = human_duration(info.duration_seconds),
        file = info.file,
    )
}

fn stopped_text(info: &ProfileInfo) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "profile {} {}{} after {:.1} s",
        info.profile_id,
        info.state,
        info.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(),
        info.elapsed_seconds
    );
    let _ = writeln!(
        out,
        "  allocated {} ({} bytes) in {} blocks; still live at its end: {} ({} bytes) in {} blocks",
        human_bytes(info.allocated_bytes),
        info.allocated_bytes,
        info.allocations,
        human_bytes(info.live_bytes),
        info.live_bytes,
        info.live_allocations
    );
    let _ = writeln!(out, "  {} ({})", info.file, human_bytes(info.size_bytes));
    let _ = writeln!(
        out,
        "  view it: memmon report summary|table|tree FILE, memmon report flamegraph FILE --output flame.svg, go tool pprof FILE"
    );
    out
}

/// The profiles section of `status`.
pub(super) fn profiles_text(out: &mut String, enabled: bool, profiles: &[ProfileInfo]) {
    if !enabled {
        out.push_str("  profiling: disabled (MEMMON_PROFILING_ENABLED=false)\n");
        return;
    }
    if profiles.is_empty() {
        out.push_str("  profiles: none yet (memmon start-profiling)\n");
        return;
    }
    out.push_str("  profiles:\n");
    for info in profiles {
        let _ = writeln!(
            out,
            "    {}  {:<9} {:>7} of {:<7} {:>10} allocated, {:>10} live  {}{}",
            info.profile_id,
            info.state,
            human_duration(info.elapsed_seconds),
            human_duration(info.duration_seconds),
            human_bytes(info.allocated_bytes),
            human_bytes(info.live_bytes),
            info.file,
            info.reason.as_deref().map(|r| format!("  ({r})")).unwrap_or_default()
        );
    }
}

fn cleanup_text(cleanup: &Cleanup) -> String {
    let mut out = String::new();
    let freed: u64 = cleanup.removed.iter().map(|r| r.size_bytes).sum();
    let _ = writeln!(
        out,
        "removed {} profile(s) older than {} days from {} ({} freed); kept {}",
        cleanup.removed.len(),
        cleanup.older_than_days,
        cleanup.directory,
        human_bytes(freed),
        cleanup.kept
    );
    for removed in &cleanup.removed {
        let _ = writeln!(out, "  removed {} ({}, {:.1} days old)", removed.file, human_bytes(removed.size_bytes), removed.age_days);
    }
    for skipped in &cleanup.skipped {
        let _ = writeln!(out, "  left alone {}: {}", skipped.file, skipped.reason);
    }
    out
}

fn pid_list(pids: &[u32]) -> String {
    pids.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}
