//! A small synthetic profile with known numbers, shared by the views' unit tests.
//!
//! pid 7 ("app"), window 2026-01-02 03:04:05 UTC + 60 s; four sites:
//!
//! | stack (innermost first)                   | alloc objs | alloc bytes | live objs | live bytes |
//! |-------------------------------------------|-----------:|------------:|----------:|-----------:|
//! | leak_exactly app.c:10 ← handle ← main     |        100 |     104 950 |       100 |    104 950 |
//! | churn app.c:40 ← main                     |      5 000 |     352 000 |         0 |          0 |
//! | strdup (libc.so.6) ← handle ← main        |         10 |       2 000 |         4 |        800 |
//! | leak_exactly app.c:11 ← main              |          1 |          50 |         1 |         50 |
//!
//! Totals: 5 111 allocations of 459 000 bytes; 105 blocks of 105 800 bytes live.

use std::collections::BTreeMap;

use super::model::Model;
use crate::profiles::{
    meta::{ProfileMeta, State, TargetMeta, TimelinePoint},
    pprof::{self, FrameInfo, HeapProfile, MappingInfo, SampleInfo},
};

/// 2026-01-02T03:04:05Z.
pub const START_NANOS: i64 = 1_767_323_045_000_000_000;

fn app(address: u64, function: &str, line: u32) -> FrameInfo {
    FrameInfo { address, function: function.into(), file: Some("app.c".into()), line: Some(line), mapping: Some(0) }
}

fn libc(address: u64, function: &str) -> FrameInfo {
    FrameInfo { address, function: function.into(), file: None, line: None, mapping: Some(1) }
}

pub fn meta() -> ProfileMeta {
    let point = |seconds, rss_bytes, heap_live_bytes| TimelinePoint { pid: 7, seconds, rss_bytes, heap_live_bytes };
    ProfileMeta {
        id: "p1".into(),
        state: State::Finished,
        reason: "duration reached".into(),
        targets: vec![TargetMeta { pid: 7, comm: "app".into() }],
        timeline: vec![point(0.0, 1_000_000, 0), point(30.0, 3_000_000, 200_000), point(60.0, 2_000_000, 105_800)],
        events_lost: BTreeMap::new(),
        execs: Vec::new(),
    }
}

pub fn heap_profile() -> HeapProfile {
    let sample = |frames, values| SampleInfo { pid: 7, frames, values, truncated: None };
    HeapProfile {
        time_nanos: START_NANOS,
        duration_nanos: 60_000_000_000,
        mappings: vec![
            MappingInfo {
                start: 0x1000,
                limit: 0x9000,
                file_offset: 0,
                path: "/usr/bin/app".into(),
                build_id: String::new(),
            },
            MappingInfo {
                start: 0x7000_0000,
                limit: 0x7010_0000,
                file_offset: 0,
                path: "/usr/lib/x86_64-linux-gnu/libc.so.6".into(),
                build_id: String::new(),
            },
        ],
        samples: vec![
            sample(
                vec![app(0x1100, "leak_exactly", 10), app(0x1200, "handle", 20), app(0x1300, "main", 30)],
                [100, 104_950, 100, 104_950],
            ),
            sample(vec![app(0x1400, "churn", 40), app(0x1310, "main", 31)], [5000, 352_000, 0, 0]),
            sample(
                vec![libc(0x7000_1000, "strdup"), app(0x1210, "handle", 21), app(0x1300, "main", 30)],
                [10, 2000, 4, 800],
            ),
            sample(vec![app(0x1110, "leak_exactly", 11), app(0x1320, "main", 32)], [1, 50, 1, 50]),
        ],
        comments: meta().to_comments(),
    }
}

pub fn model() -> Model {
    Model::from_pprof(&pprof::build(&heap_profile())).unwrap()
}

/// The same profile plus one site of a second process the metadata does not name, pid 8:
/// `grow` ← `worker` ← `main` holding 4096 bytes in 2 blocks.
pub fn two_process_model() -> Model {
    let mut profile = heap_profile();
    profile.samples.push(SampleInfo {
        pid: 8,
        frames: vec![app(0x1500, "grow", 50), app(0x1600, "worker", 60), app(0x1300, "main", 30)],
        values: [2, 4096, 2, 4096],
        truncated: None,
    });
    Model::from_pprof(&pprof::build(&profile)).unwrap()
}

/// The same metadata and window with no samples at all.
pub fn empty_model() -> Model {
    let mut profile = heap_profile();
    profile.samples.clear();
    Model::from_pprof(&pprof::build(&profile)).unwrap()
}
