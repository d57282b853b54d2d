//! A decoded pprof heap profile reduced to what the report views need: one stack per sample
//! with its four values and pid, memmon's metadata, and the window.
//!
//! pprof spreads a stack over ids (sample → locations → lines → functions → strings, and
//! locations → mappings); the views only want frames with names. Resolving the ids once, here,
//! keeps every view a plain function over this model. Sample types are looked up by name, so a
//! heap profile from another producer (Go, jemalloc's pprof output, …) reads the same way.

use std::{
    borrow::Cow,
    collections::{BTreeSet, HashMap},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    profiles::{meta::ProfileMeta, pprof},
    symbolize::Frame,
};

/// The four Go heap sample types, by the names the views read.
const SAMPLE_TYPES: [&str; 4] = ["alloc_objects", "alloc_space", "inuse_objects", "inuse_space"];

/// One stack's numbers. Negative pprof values (a diff of two profiles) count as zero; sums
/// saturate, since a file may hold any value.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Values {
    /// Allocations made during the window.
    pub alloc_objects: u64,
    /// Bytes allocated during the window.
    pub alloc_space: u64,
    /// Blocks still live at the window's end.
    pub inuse_objects: u64,
    /// Bytes still live at the window's end.
    pub inuse_space: u64,
}

impl std::ops::AddAssign for Values {
    fn add_assign(&mut self, other: Self) {
        self.alloc_objects = self.alloc_objects.saturating_add(other.alloc_objects);
        self.alloc_space = self.alloc_space.saturating_add(other.alloc_space);
        self.inuse_objects = self.inuse_objects.saturating_add(other.inuse_objects);
        self.inuse_space = self.inuse_space.saturating_add(other.inuse_space);
    }
}

/// One allocation site: a call stack of one process and its values.
#[derive(Clone, Debug, PartialEq)]
pub struct Stack {
    /// The `pid` label; profiles from other producers have none.
    pub pid: Option<u32>,
    /// Innermost first, as everywhere else in memmon: `frames[0]` is the allocating function
    /// (the allocator's caller), the last frame is the root (`_start`, `main`, a thread start).
    pub frames: Vec<Frame>,
    pub values: Values,
}

impl Stack {
    /// The function that called the allocator.
    pub fn allocating_frame(&self) -> Option<&Frame> {
        self.frames.first()
    }
}

/// The window a profile covers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// Start, in nanoseconds since the Unix epoch; 0 when the producer did not say.
    pub start_unix_nanos: i64,
    pub duration_nanos: i64,
}

/// A profile as the report views see it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Model {
    /// memmon's own metadata; all default for a profile from another producer.
    pub meta: ProfileMeta,
    pub window: Window,
    pub stacks: Vec<Stack>,
}

impl Model {
    /// Reads a decoded pprof profile; fails on one that is not a heap profile or whose ids do
    /// not resolve.
    pub fn from_pprof(profile: &pprof::Profile) -> Result<Self> {
        let strings = Strings(&profile.string_table);
        let columns = sample_columns(profile, &strings)?;
        let functions: HashMap<u64, &pprof::Function> = profile.function.iter().map(|f| (f.id, f)).collect();
        let modules: HashMap<u64, String> = profile
            .mapping
            .iter()
            .map(|m| Ok((m.id, basename(strings.get(m.filename)?).to_string())))
            .collect::<Result<_>>()?;
        let locations: HashMap<u64, Vec<Frame>> = profile
            .location
            .iter()
            .map(|location| {
                let module = modules.get(&location.mapping_id).cloned().unwrap_or_default();
                Ok((location.id, location_frames(location, module, &functions, &strings)?))
            })
            .collect::<Result<_>>()?;
        let pid_key = profile.string_table.iter().position(|s| s == "pid").map(|i| i as i64);
        let stacks = profile
            .sample
            .iter()
            .map(|sample| {
                let mut frames = Vec::new();
                for id in &sample.location_id {
                    let location = locations.get(id).with_context(|| format!("malformed pprof: no location {id}"))?;
                    frames.extend(location.iter().cloned());
                }
                let value = |column: usize| sample.value.get(column).map_or(0, |&v| u64::try_from(v).unwrap_or(0));
                let values = Values {
                    alloc_objects: value(columns[0]),
                    alloc_space: value(columns[1]),
                    inuse_objects: value(columns[2]),
                    inuse_space: value(columns[3]),
                };
                let pid = sample
                    .label
                    .iter()
                    .find(|label| Some(label.key) == pid_key)
                    .and_then(|label| u32::try_from(label.num).ok());
                Ok(Stack { pid, frames, values })
            })
            .collect::<Result<_>>()?;
        let comments: Vec<&str> = profile.comment.iter().map(|&c| strings.get(c)).collect::<Result<_>>()?;
        Ok(Model {
            meta: ProfileMeta::from_comments(comments),
            window: Window { start_unix_nanos: profile.time_nanos, duration_nanos: profile.duration_nanos },
            stacks,
        })
    }

    /// Whether the profile carries memmon's metadata (a foreign profile has none to show).
    pub fn has_meta(&self) -> bool {
        self.meta != ProfileMeta::default()
    }

    /// Every value summed over all stacks.
    pub fn totals(&self) -> Values {
        let mut totals = Values::default();
        for stack in &self.stacks {
            totals += stack.values;
        }
        totals
    }

    /// The processes the samples belong to.
    pub fn pids(&self) -> BTreeSet<u32> {
        self.stacks.iter().filter_map(|s| s.pid).collect()
    }

    /// Whether stacks of different processes must be told apart.
    pub fn has_several_processes(&self) -> bool {
        self.pids().len() > 1
    }

    /// Names for the stack's frames from the root down, with a first frame naming the process
    /// if `process_roots` (`has_several_processes`, so that their stacks do not merge).
    pub fn call_path<'a>(&self, stack: &'a Stack, process_roots: bool) -> Vec<Cow<'a, str>> {
        let mut path = Vec::with_capacity(stack.frames.len() + 1);
        if let Some(pid) = stack.pid.filter(|_| process_roots) {
            path.push(Cow::Owned(self.process_name(pid)));
        }
        path.extend(stack.frames.iter().rev().map(|f| Cow::Borrowed(f.function.as_str())));
        path
    }

    /// "pid N (comm)", or "pid N" when the metadata does not name it.
    pub fn process_name(&self, pid: u32) -> String {
        match self.meta.targets.iter().find(|t| t.pid == pid) {
            Some(target) => format!("pid {pid} ({})", target.comm),
            None => format!("pid {pid}"),
        }
    }

    /// What the profile calls itself in a heading.
    pub fn name(&self) -> String {
        match self.meta.id.is_empty() {
            true => "heap profile".into(),
            false => format!("memmon profile {}", self.meta.id),
        }
    }
}

/// The column of each of `SAMPLE_TYPES` in the sample values.
fn sample_columns(profile: &pprof::Profile, strings: &Strings) -> Result<[usize; 4]> {
    let names: Vec<&str> = profile.sample_type.iter().map(|t| strings.get(t.r#type)).collect::<Result<_>>()?;
    let mut columns = [0; 4];
    for (column, wanted) in columns.iter_mut().zip(SAMPLE_TYPES) {
        match names.iter().position(|name| *name == wanted) {
            Some(index) => *column = index,
            None if names.is_empty() => bail!("not a heap profile: it has no sample types"),
            None => bail!(
                "not a heap profile: its sample types are {}, a heap profile has {}",
                names.join(", "),
                SAMPLE_TYPES.join(", ")
            ),
        }
    }
    Ok(columns)
}

/// A location's frames, innermost first: pprof lists functions inlined at the address first.
fn location_frames(
    location: &pprof::Location,
    module: String,
    functions: &HashMap<u64, &pprof::Function>,
    strings: &Strings,
) -> Result<Vec<Frame>> {
    if location.line.is_empty() {
        let unknown = Frame {
            function: format!("{:#x}", location.address),
            module,
            address: location.address,
            ..Frame::default()
        };
        return Ok(vec![unknown]);
    }
    location
        .line
        .iter()
        .map(|line| {
            let function = functions
                .get(&line.function_id)
                .with_context(|| format!("malformed pprof: no function {}", line.function_id))?;
            let name = match strings.get(function.name)? {
                "" => strings.get(function.system_name)?,
                name => name,
            };
            let file = strings.get(function.filename)?;
            Ok(Frame {
                function: if name.is_empty() { format!("{:#x}", location.address) } else { name.to_string() },
                module: module.clone(),
                file: (!file.is_empty()).then(|| file.to_string()),
                line: u32::try_from(line.line).ok().filter(|&l| l > 0),
                python: location.address & memmon_common::python::FRAME_TAG != 0,
                address: location.address,
            })
        })
        .collect()
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The profile's string table, with out-of-range indexes as errors rather than panics.
struct Strings<'a>(&'a [String]);

impl<'a> Strings<'a> {
    fn get(&self, index: i64) -> Result<&'a str> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.0.get(i))
            .map(String::as_str)
            .with_context(|| format!("malformed pprof: string index {index} out of range"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::report::fixtures;

    #[test]
    fn samples_become_stacks_with_named_values_and_pids() {
        let model = fixtures::model();
        let leak = &model.stacks[0];
        assert_eq!(leak.pid, Some(7));
        assert_eq!(
            leak.values,
            Values { alloc_objects: 100, alloc_space: 104_950, inuse_objects: 100, inuse_space: 104_950 }
        );
        let names: Vec<&str> = leak.frames.iter().map(|f| f.function.as_str()).collect();
        assert_eq!(names, ["leak_exactly", "handle", "main"]);
        let frame = leak.allocating_frame().unwrap();
        assert_eq!((frame.file.as_deref(), frame.line, frame.module.as_str()), (Some("app.c"), Some(10), "app"));
        assert_eq!(model.meta.id, "p1");
        assert_eq!(model.window, Window { start_unix_nanos: fixtures::START_NANOS, duration_nanos: 60_000_000_000 });
    }

    #[test]
    fn sample_types_are_found_by_name_in_any_order() {
        let mut profile = pprof::build(&fixtures::heap_profile());
        profile.sample_type.reverse();
        for sample in &mut profile.sample {
            sample.value.reverse();
        }
        assert_eq!(Model::from_pprof(&profile).unwrap(), fixtures::model());
    }

    #[test]
    fn profiles_that_are_not_heap_profiles_are_refused() {
        let error = Model::from_pprof(&pprof::Profile::default()).unwrap_err();
        assert_eq!(error.to_string(), "not a heap profile: it has no sample types");
        let mut cpu = pprof::build(&fixtures::heap_profile());
        cpu.string_table.extend(["samples".into(), "cpu".into()]);
        cpu.sample_type = vec![
            pprof::ValueType { r#type: cpu.string_table.len() as i64 - 2, unit: 0 },
            pprof::ValueType { r#type: cpu.string_table.len() as i64 - 1, unit: 0 },
        ];
        assert_eq!(
            Model::from_pprof(&cpu).unwrap_err().to_string(),
            "not a heap profile: its sample types are samples, cpu, a heap profile has alloc_objects, alloc_space, inuse_objects, inuse_space"
        );
        let mut profile = pprof::build(&fixtures::heap_profile());
        profile.sample[0].location_id.push(999);
        assert_eq!(Model::from_pprof(&profile).unwrap_err().to_string(), "malformed pprof: no location 999");
    }

    #[test]
    fn foreign_profiles_have_no_meta_and_no_pids() {
        let mut profile = pprof::build(&fixtures::heap_profile());
        profile.comment.clear();
        for sample in &mut profile.sample {
            sample.label.clear();
        }
        let model = Model::from_pprof(&profile).unwrap();
        assert!(!model.has_meta());
        assert!(model.pids().is_empty());
        assert_eq!(model.name(), "heap profile");
        assert!(!model.has_several_processes());
        assert_eq!(model.call_path(&model.stacks[0], false), ["main", "handle", "leak_exactly"]);
    }

    #[test]
    fn several_processes_get_a_root_frame_each() {
        let model = fixtures::two_process_model();
        assert!(model.has_several_processes());
        let path = model.call_path(&model.stacks[0], true);
        assert_eq!(path, ["pid 7 (app)", "main", "handle", "leak_exactly"]);
        assert_eq!(model.process_name(8), "pid 8");
    }
}
