//! Gzipped pprof profiles (github.com/google/pprof, proto/profile.proto), written with prost.
//!
//! The four Go heap sample types — alloc_objects, alloc_space, inuse_objects, inuse_space —
//! so that `go tool pprof`, Pyroscope and the rest of the ecosystem read memmon's profiles as
//! heap profiles. The message types below are the subset of profile.proto memmon writes, with
//! the field numbers of the schema.

use std::{collections::HashMap, io::Write as _};

use anyhow::{Context as _, Result};
use flate2::{Compression, write::GzEncoder};
use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct Profile {
    #[prost(message, repeated, tag = "1")]
    pub sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    pub sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    pub mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    pub location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    pub function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    pub string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    pub time_nanos: i64,
    #[prost(int64, tag = "10")]
    pub duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    pub period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    pub period: i64,
    #[prost(int64, repeated, tag = "13")]
    pub comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    pub default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct ValueType {
    #[prost(int64, tag = "1")]
    pub r#type: i64,
    #[prost(int64, tag = "2")]
    pub unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    pub location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    pub value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    pub label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(int64, tag = "1")]
    pub key: i64,
    #[prost(int64, tag = "2")]
    pub str: i64,
    #[prost(int64, tag = "3")]
    pub num: i64,
    #[prost(int64, tag = "4")]
    pub num_unit: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Mapping {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub memory_start: u64,
    #[prost(uint64, tag = "3")]
    pub memory_limit: u64,
    #[prost(uint64, tag = "4")]
    pub file_offset: u64,
    #[prost(int64, tag = "5")]
    pub filename: i64,
    #[prost(int64, tag = "6")]
    pub build_id: i64,
    #[prost(bool, tag = "7")]
    pub has_functions: bool,
    #[prost(bool, tag = "8")]
    pub has_filenames: bool,
    #[prost(bool, tag = "9")]
    pub has_line_numbers: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct Location {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(uint64, tag = "2")]
    pub mapping_id: u64,
    #[prost(uint64, tag = "3")]
    pub address: u64,
    #[prost(message, repeated, tag = "4")]
    pub line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Line {
    #[prost(uint64, tag = "1")]
    pub function_id: u64,
    #[prost(int64, tag = "2")]
    pub line: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Function {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(int64, tag = "2")]
    pub name: i64,
    #[prost(int64, tag = "3")]
    pub system_name: i64,
    #[prost(int64, tag = "4")]
    pub filename: i64,
}

/// One symbolized frame of a sample, innermost first.
#[derive(Clone, Debug, PartialEq)]
pub struct FrameInfo {
    pub address: u64,
    pub function: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// Index into `HeapProfile::mappings`, if the address is in a known object.
    pub mapping: Option<usize>,
}

/// An object mapped in the process, for pprof's mapping table.
#[derive(Clone, Debug, PartialEq)]
pub struct MappingInfo {
    pub start: u64,
    pub limit: u64,
    pub file_offset: u64,
    pub path: String,
    pub build_id: String,
}

/// One allocation site of one process and its values.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleInfo {
    pub pid: u32,
    /// Innermost first.
    pub frames: Vec<FrameInfo>,
    /// [alloc_objects, alloc_space, inuse_objects, inuse_space].
    pub values: [i64; 4],
    /// Why the stack walk stopped early (the `truncated` label); its last frame then says so.
    pub truncated: Option<String>,
}

/// What a heap profile holds, before encoding.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeapProfile {
    /// Start of the window (Unix ns) and its length.
    pub time_nanos: i64,
    pub duration_nanos: i64,
    pub mappings: Vec<MappingInfo>,
    pub samples: Vec<SampleInfo>,
    /// Free-text comments (`go tool pprof -comments`); memmon keeps its metadata there.
    pub comments: Vec<String>,
}

/// Builds the pprof message: strings, functions and locations deduplicated, ids from 1.
pub fn build(profile: &HeapProfile) -> Profile {
    let mut strings = Strings::default();
    let sample_type = ["alloc_objects:count", "alloc_space:bytes", "inuse_objects:count", "inuse_space:bytes"]
        .iter()
        .map(|pair| {
            let (kind, unit) = pair.split_once(':').expect("kind:unit");
            ValueType { r#type: strings.id(kind), unit: strings.id(unit) }
        })
        .collect();
    let mapping = profile
        .mappings
        .iter()
        .enumerate()
        .map(|(i, m)| Mapping {
            id: i as u64 + 1,
            memory_start: m.start,
            memory_limit: m.limit,
            file_offset: m.file_offset,
            filename: strings.id(&m.path),
            build_id: strings.id(&m.build_id),
            has_functions: true,
            has_filenames: true,
            has_line_numbers: true,
        })
        .collect();
    let mut functions: HashMap<(String, String), u64> = HashMap::new();
    let mut function_table = Vec::new();
    // By address; the pseudo-frames at address 0 (a truncated stack's end) by name as well.
    let mut locations: HashMap<(u64, String), u64> = HashMap::new();
    let mut location_table = Vec::new();
    let mut samples = Vec::new();
    let pid_key = strings.id("pid");
    let truncated_key = strings.id("truncated");
    for sample in &profile.samples {
        let mut ids = Vec::new();
        for frame in &sample.frames {
            let key = (frame.address, if frame.address == 0 { frame.function.clone() } else { String::new() });
            let id = *locations.entry(key).or_insert_with(|| {
                let file = frame.file.clone().unwrap_or_default();
                let function_id = *functions.entry((frame.function.clone(), file.clone())).or_insert_with(|| {
                    let id = function_table.len() as u64 + 1;
                    let name = strings.id(&frame.function);
                    function_table.push(Function { id, name, system_name: name, filename: strings.id(&file) });
                    id
                });
                let id = location_table.len() as u64 + 1;
                location_table.push(Location {
                    id,
                    mapping_id: frame.mapping.map_or(0, |m| m as u64 + 1),
                    address: frame.address,
                    line: vec![Line { function_id, line: i64::from(frame.line.unwrap_or(0)) }],
                });
                id
            });
            ids.push(id);
        }
        let mut label = vec![Label { key: pid_key, num: i64::from(sample.pid), ..Default::default() }];
        if let Some(reason) = &sample.truncated {
            label.push(Label { key: truncated_key, str: strings.id(reason), ..Default::default() });
        }
        samples.push(Sample { location_id: ids, value: sample.values.to_vec(), label });
    }
    let space = strings.id("space");
    let bytes = strings.id("bytes");
    let inuse_space = strings.id("inuse_space");
    let comment = profile.comments.iter().map(|c| strings.id(c)).collect();
    Profile {
        sample_type,
        sample: samples,
        mapping,
        location: location_table,
        function: function_table,
        time_nanos: profile.time_nanos,
        duration_nanos: profile.duration_nanos,
        period_type: Some(ValueType { r#type: space, unit: bytes }),
        period: 1,
        comment,
        default_sample_type: inuse_space,
        string_table: strings.table,
    }
}

/// The gzipped bytes of the profile, as `go tool pprof` reads them.
pub fn encode_gzipped(profile: &HeapProfile) -> Result<Vec<u8>> {
    let mut gzip = GzEncoder::new(Vec::new(), Compression::default());
    gzip.write_all(&build(profile).encode_to_vec())?;
    Ok(gzip.finish()?)
}

/// Reads a profile written by memmon or any other pprof producer, gzipped or not.
pub fn decode(bytes: &[u8]) -> Result<Profile> {
    let raw = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(bytes), &mut raw)
            .context("not a valid gzip stream")?;
        std::borrow::Cow::Owned(raw)
    } else {
        std::borrow::Cow::Borrowed(bytes)
    };
    Profile::decode(&*raw).context("not a pprof profile (profile.proto)")
}

/// pprof's string table: index 0 is the empty string.
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Default for Strings {
    fn default() -> Self {
        Self { table: vec![String::new()], index: HashMap::from([(String::new(), 0)]) }
    }
}

impl Strings {
    fn id(&mut self, text: &str) -> i64 {
        if let Some(&id) = self.index.get(text) {
            return id;
        }
        let id = self.table.len() as i64;
        self.table.push(text.to_string());
        self.index.insert(text.to_string(), id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(address: u64, function: &str, line: u32) -> FrameInfo {
        FrameInfo { address, function: function.into(), file: Some("app.c".into()), line: Some(line), mapping: Some(0) }
    }

    fn sample_profile() -> HeapProfile {
        HeapProfile {
            time_nanos: 1,
            duration_nanos: 2,
            mappings: vec![MappingInfo { start: 0x1000, limit: 0x9000, file_offset: 0, path: "/bin/app".into(), build_id: "abcd".into() }],
            samples: vec![
                SampleInfo {
                    pid: 7,
                    frames: vec![frame(0x1100, "leak", 10), frame(0x1200, "main", 20)],
                    values: [100, 104_950, 100, 104_950],
                    truncated: None,
                },
                SampleInfo {
                    pid: 7,
                    frames: vec![frame(0x1300, "churn", 30), frame(0x1200, "main", 20)],
                    values: [5000, 352_000, 0, 0],
                    truncated: None,
                },
            ],
            comments: vec!["memmon-profile: id=x".into()],
        }
    }

    #[test]
    fn a_truncated_stack_ends_in_a_named_pseudo_frame_and_is_labelled() {
        let mut profile = sample_profile();
        let marker = |reason: &str| FrameInfo {
            address: 0,
            function: format!("[truncated: {reason}]"),
            file: None,
            line: None,
            mapping: None,
        };
        profile.samples[0].frames = vec![frame(0x1100, "leak", 10), marker("outside_objects")];
        profile.samples[0].truncated = Some("outside_objects".into());
        profile.samples[1].frames = vec![frame(0x1300, "churn", 30), marker("no_unwind_info")];
        profile.samples[1].truncated = Some("no_unwind_info".into());
        let built = build(&profile);
        assert_eq!(built.location.len(), 4, "one pseudo-location per reason, though both are at address 0");
        let label = |sample: &Sample| {
            let label = sample.label.iter().find(|l| built.string_table[l.key as usize] == "truncated").unwrap();
            built.string_table[label.str as usize].clone()
        };
        assert_eq!(label(&built.sample[0]), "outside_objects");
        assert_eq!(label(&built.sample[1]), "no_unwind_info");
        assert!(built.location.iter().filter(|l| l.address == 0).all(|l| l.mapping_id == 0));
    }

    #[test]
    fn tables_are_deduplicated_with_ids_from_one() {
        let profile = build(&sample_profile());
        assert_eq!(profile.string_table[0], "");
        assert_eq!(profile.location.len(), 3, "main's location is shared");
        assert_eq!(profile.function.len(), 3);
        assert!(profile.location.iter().all(|l| l.id >= 1 && l.mapping_id == 1));
        assert_eq!(profile.sample[0].location_id, [1, 2]);
        assert_eq!(profile.sample[1].location_id, [3, 2]);
        let kinds: Vec<&str> = profile.sample_type.iter().map(|t| profile.string_table[t.r#type as usize].as_str()).collect();
        assert_eq!(kinds, ["alloc_objects", "alloc_space", "inuse_objects", "inuse_space"]);
        assert_eq!(profile.string_table[profile.default_sample_type as usize], "inuse_space");
        let label = &profile.sample[0].label[0];
        assert_eq!((profile.string_table[label.key as usize].as_str(), label.num), ("pid", 7));
        assert_eq!(profile.string_table[profile.comment[0] as usize], "memmon-profile: id=x");
    }

    #[test]
    fn gzipped_bytes_decode_back() {
        let bytes = encode_gzipped(&sample_profile()).unwrap();
        assert_eq!(&bytes[..2], &[0x1f, 0x8b], "gzip magic");
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded, build(&sample_profile()));
        assert_eq!(decode(&build(&sample_profile()).encode_to_vec()).unwrap(), decoded, "plain protobuf too");
        assert!(decode(b"\x1f\x8bnot gzip").is_err());
        assert_eq!(decoded.sample[0].value, [100, 104_950, 100, 104_950]);
    }
}
