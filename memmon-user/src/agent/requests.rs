//! The control API's requests, read and checked without the agent: the query strings of
//! `GET /leaks`, `POST /profiles` and `POST /profiles/cleanup`, and the spans they ask for.
//!
//! These are the API's outside input, so they are pure functions over the request URI — the
//! handlers call them, and so do the fuzz targets (`crate::fuzzing`), which therefore exercise
//! exactly what a client reaches. Every error is a message for a 400 answer.

use std::time::Duration;

use axum::{extract::Query, http::Uri};
use serde::Deserialize;

use crate::durations;

/// `verbose` is accepted (the command sends it) but changes nothing here: the JSON always
/// carries every number and frame; only the command's text rendering differs.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LeaksQuery {
    #[serde(default, rename = "verbose")]
    _verbose: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartQuery {
    duration_minutes: Option<f64>,
    /// Comma-separated; every traced process when absent.
    pids: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CleanupQuery {
    older_than_days: Option<f64>,
}

/// What `POST /profiles` asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct StartRequest {
    /// The session's length (the agent's default when absent), not yet checked against
    /// MEMMON_MAX_PROFILE_DURATION_MINUTES: see `session_duration`.
    pub minutes: Option<f64>,
    /// The processes to profile; empty for all of the agent's.
    pub pids: Vec<u32>,
}

/// `GET /leaks?verbose=…`.
pub fn leaks(uri: &Uri) -> Result<(), String> {
    query::<LeaksQuery>(uri).map(|_| ())
}

/// `POST /profiles?duration_minutes=…&pids=…`.
pub fn start(uri: &Uri) -> Result<StartRequest, String> {
    let StartQuery { duration_minutes, pids } = query(uri)?;
    let pids: Result<Vec<u32>, _> =
        pids.iter().flat_map(|list| list.split(',')).map(|pid| pid.trim().parse::<u32>()).collect();
    let pids = pids.map_err(|_| "bad query: pids must be comma-separated process ids".to_string())?;
    Ok(StartRequest { minutes: duration_minutes, pids })
}

/// `POST /profiles/cleanup?older_than_days=…`: the days asked for, if any.
pub fn cleanup(uri: &Uri) -> Result<Option<f64>, String> {
    query::<CleanupQuery>(uri).map(|q| q.older_than_days)
}

/// A session of `minutes`, at least one second and at most `max_minutes`
/// (MEMMON_MAX_PROFILE_DURATION_MINUTES).
pub fn session_duration(minutes: f64, max_minutes: f64) -> Result<Duration, String> {
    if !minutes.is_finite() || minutes * 60.0 < 1.0 {
        return Err(format!("duration must be a number of minutes, at least 1 second (0.017); got {minutes}"));
    }
    if minutes > max_minutes {
        return Err(format!(
            "duration {minutes} minutes is longer than MEMMON_MAX_PROFILE_DURATION_MINUTES={max_minutes}"
        ));
    }
    durations::of(minutes, 60.0).ok_or_else(|| format!("duration must be at most {}; got {minutes} minutes", durations::MAX_DESCRIBED))
}

/// The age beyond which cleanup removes profiles: `days` ≥ 0, at most `durations::MAX_SECONDS`.
pub fn cleanup_age(days: f64) -> Result<Duration, String> {
    if !days.is_finite() || days < 0.0 {
        return Err(format!("older_than_days must be a number ≥ 0; got {days}"));
    }
    durations::of(days, 86_400.0)
        .ok_or_else(|| format!("older_than_days must be at most {}; got {days}", durations::MAX_DESCRIBED))
}

fn query<T: serde::de::DeserializeOwned>(uri: &Uri) -> Result<T, String> {
    Query::<T>::try_from_uri(uri).map(|Query(query)| query).map_err(|rejection| format!("bad query: {}", rejection.body_text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(text: &str) -> Uri {
        text.parse().unwrap()
    }

    #[test]
    fn queries_are_read_as_the_commands_send_them() {
        assert_eq!(leaks(&uri("/leaks?verbose=true")), Ok(()));
        assert!(leaks(&uri("/leaks?verbose=maybe")).unwrap_err().starts_with("bad query:"));
        assert!(leaks(&uri("/leaks?colour=red")).unwrap_err().contains("colour"));
        assert_eq!(
            start(&uri("/profiles?duration_minutes=2.5&pids=12,%2034")),
            Ok(StartRequest { minutes: Some(2.5), pids: vec![12, 34] })
        );
        assert_eq!(start(&uri("/profiles")), Ok(StartRequest { minutes: None, pids: vec![] }));
        assert!(start(&uri("/profiles?pids=12,x")).unwrap_err().contains("comma-separated"));
        assert_eq!(cleanup(&uri("/profiles/cleanup?older_than_days=0")), Ok(Some(0.0)));
        assert!(cleanup(&uri("/profiles/cleanup?older_than_days=old")).is_err());
    }

    #[test]
    fn spans_are_bounded_without_panicking() {
        assert_eq!(session_duration(0.5, 60.0), Ok(Duration::from_secs(30)));
        assert!(session_duration(0.01, 60.0).unwrap_err().contains("at least 1 second"));
        assert!(session_duration(61.0, 60.0).unwrap_err().contains("MEMMON_MAX_PROFILE_DURATION_MINUTES=60"));
        assert!(session_duration(1e300, 1e300).unwrap_err().contains("100 years"));
        assert_eq!(cleanup_age(1.0), Ok(Duration::from_secs(86_400)));
        assert!(cleanup_age(-1.0).is_err());
        assert!(cleanup_age(1e300).unwrap_err().contains("100 years"), "was a panic in Duration::from_secs_f64");
    }
}
