//! Per-call memory of tracked functions (`memmon agent --track-function SYMBOL`): for every
//! call of a function that handles one unit of work (a request, a command, a job), what it
//! allocated, freed and kept, and how long it took — on an unmodified binary.
//!
//! The kernel side (`memmon-ebpf/src/track.rs`) measures each call and sends one `CallEvent`
//! per completed call through a ring buffer; this module finds the functions and their probe
//! sites (`resolve`, before anything is attached), drains the ring (`drain`) into exact
//! aggregates (`stats`), and reads the kernel's per-function counters and allocation sites
//! for snapshots.

mod drain;
pub mod resolve;
pub mod stats;

use std::{
    fmt, fs,
    str::FromStr,
    sync::{Arc, Mutex},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, HashMap as BpfHashMap, MapData},
};
use memmon_common::track::{FunctionCounters, FunctionSiteKey, FunctionSiteStats, InFlightCall, MAX_TRACKED};

use crate::{
    allocator::{self, Function, ProbeSite},
    process::Process,
};
pub use stats::{Aggregate, FunctionStats, Thresholds};

/// `SYMBOL` or `SYMBOL@OBJECT`, as the operator wrote it (also the metrics' `function` label).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    pub symbol: String,
    pub object: Option<String>,
}

impl FromStr for Spec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let (symbol, object) = match text.split_once('@') {
            Some((symbol, object)) => (symbol, Some(object)),
            None => (text, None),
        };
        if symbol.is_empty() || symbol.contains(char::is_whitespace) {
            return Err(format!("{text:?} is not a function name (expected SYMBOL or SYMBOL@OBJECT)"));
        }
        if object.is_some_and(|o| o.is_empty() || o.contains('@')) {
            return Err(format!("{text:?}: expected SYMBOL@OBJECT, with OBJECT a file name or path"));
        }
        Ok(Self { symbol: symbol.to_string(), object: object.map(str::to_string) })
    }
}

impl fmt::Display for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.object {
            Some(object) => write!(f, "{}@{object}", self.symbol),
            None => write!(f, "{}", self.symbol),
        }
    }
}

/// What to track, and what makes a call notable.
#[derive(Clone, Debug)]
pub struct TrackConfig {
    pub specs: Vec<Spec>,
    pub thresholds: Thresholds,
}

impl TrackConfig {
    pub fn none() -> Self {
        Self { specs: Vec::new(), thresholds: Thresholds { slow_ns: u64::MAX, high_usage_bytes: u64::MAX } }
    }
}

/// A tracked function in one process, and where its probes go.
#[derive(Clone, Debug)]
pub struct TrackedFunction {
    /// Index in the kernel's tables (its probes' attach cookie).
    pub index: u32,
    pub pid: u32,
    /// The spec as given: the `function` label.
    pub label: String,
    pub symbol: String,
    /// The object defining it, as the process maps it.
    pub object: String,
    /// Its entry and return probes' site (`probe_site`: the first instruction the kernel
    /// emulates, when provably equivalent to the entry).
    pub site: ProbeSite,
}

/// Finds every spec in every process; any failure is an error naming the spec and the pid,
/// before anything is attached.
pub fn locate(processes: &[&Process], specs: &[Spec], optimize_sites: bool) -> Result<Vec<TrackedFunction>> {
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let wanted = processes.len() * specs.len();
    if wanted > MAX_TRACKED as usize {
        bail!("{wanted} tracked functions ({} per process × {} processes); memmon tracks at most {MAX_TRACKED}", specs.len(), processes.len());
    }
    let mut functions = Vec::new();
    for process in processes {
        let objects = process_symbols(process)?;
        for spec in specs {
            let found = resolve::resolve(spec, &objects)
                .map_err(|why| anyhow!("--track-function {spec} (MEMMON_TRACK_FUNCTIONS) in pid {} ({}): {why}; nothing attached", process.pid, process.comm))?;
            let object = &objects[found.object];
            let site = probe_site(process, &object.path, &spec.symbol, found.address, optimize_sites)
                .with_context(|| format!("--track-function {spec}: placing its probes in {}", object.path))?;
            functions.push(TrackedFunction {
                index: functions.len() as u32,
                pid: process.pid,
                label: spec.to_string(),
                symbol: spec.symbol.clone(),
                object: object.path.clone(),
                site,
            });
        }
    }
    Ok(functions)
}

/// The symbols of every executable object `process` maps.
fn process_symbols(process: &Process) -> Result<Vec<resolve::ObjectSymbols>> {
    let maps = fs::read_to_string(process.path("maps")).with_context(|| format!("cannot read /proc/{}/maps", process.pid))?;
    let mut objects = Vec::new();
    for path in allocator::mapped_objects(&maps) {
        match resolve::read_symbols(path, &process.root_path(path)) {
            Ok(symbols) => objects.push(symbols),
            Err(err) => log::debug!("pid {}: no symbols from {path}: {err:#}", process.pid),
        }
    }
    Ok(objects)
}

/// The probe site of the function at `address` in `object`: its entry and return probes
/// share it, and its entry program reads no argument.
fn probe_site(process: &Process, object: &str, symbol: &str, address: u64, optimize: bool) -> Result<ProbeSite> {
    // `Function` names allocator functions by static strings; a tracked one lives as long as
    // the agent, and there are at most MAX_TRACKED of them.
    let symbol: &'static str = Box::leak(symbol.to_string().into_boxed_str());
    let function = Function { symbol, entry_program: "track_enter", args_read: &[], returns_allocation: true };
    let sites = allocator::probe_sites(&process.root_path(object), &[function], optimize)?;
    let site = sites.into_iter().next().ok_or_else(|| anyhow!("{symbol} is not in a loadable segment of {object}"))?;
    // probe_sites looks the name up itself; it must be the function resolve found.
    let entry = address_of_offset(process, object, site.file_offset - site.moved_by)?;
    if entry != Some(address) {
        bail!("{symbol}: the symbol tables of {object} disagree about its address");
    }
    Ok(site)
}

/// The virtual address a file offset of `object` is loaded at (ELF, not the process').
fn address_of_offset(process: &Process, object: &str, offset: u64) -> Result<Option<u64>> {
    use object::{Object as _, ObjectSegment as _};
    let data = fs::read(process.root_path(object))?;
    let file = object::File::parse(&*data)?;
    Ok(file.segments().find_map(|segment| {
        let (start, size) = segment.file_range();
        (offset >= start && offset < start + size).then(|| segment.address() + (offset - start))
    }))
}

/// A tracked function's numbers at one moment.
#[derive(Clone, Debug)]
pub struct FunctionSample {
    pub function: TrackedFunction,
    pub stats: FunctionStats,
    pub counters: FunctionCounters,
    /// Calls in flight when the sample was taken.
    pub in_flight: u64,
    /// What each allocation site (stack) allocated inside the function, largest first.
    pub sites: Vec<(u64, FunctionSiteStats)>,
}

impl FunctionSample {
    /// Calls counted lost, by reason (stable names: metrics labels and JSON keys).
    pub fn lost(&self) -> [(&'static str, u64); 4] {
        let c = &self.counters;
        [
            ("unwound", c.lost_unwound),
            ("thread_exit", c.lost_thread_exit),
            ("event_dropped", c.lost_event_dropped),
            ("table_full", c.lost_table_full),
        ]
    }

    pub fn lost_calls(&self) -> u64 {
        self.lost().iter().map(|(_, n)| n).sum()
    }
}

/// The tracked functions of a tracer, and the drain of their completed calls.
pub struct Tracking {
    functions: Vec<TrackedFunction>,
    aggregate: Arc<Mutex<drain::Shared>>,
    drain: drain::Drain,
}

impl Tracking {
    /// Takes the event ring out of `ebpf` and starts draining it.
    pub fn start(ebpf: &mut Ebpf, functions: Vec<TrackedFunction>, thresholds: Thresholds) -> Result<Self> {
        let ring = ebpf.take_map("TRACK_EVENTS").context("TRACK_EVENTS map")?;
        let ring = aya::maps::RingBuf::try_from(ring)?;
        let aggregate = Aggregate::new(functions.len(), thresholds);
        let (shared, drain) = drain::Drain::start(ring, aggregate)?;
        Ok(Self { functions, aggregate: shared, drain })
    }

    pub fn functions(&self) -> &[TrackedFunction] {
        &self.functions
    }

    /// Every tracked function's numbers now: the ring drained first, so every call completed
    /// before this is in them.
    pub fn sample(&self, ebpf: &Ebpf) -> Result<Vec<FunctionSample>> {
        let aggregate = {
            let mut shared = self.aggregate.lock().map_err(|_| anyhow!("the tracked-call drain panicked"))?;
            shared.drain();
            shared.aggregate.clone()
        };
        if self.drain.is_finished() {
            bail!("the tracked-call drain thread stopped");
        }
        let counters: Array<&MapData, FunctionCounters> = Array::try_from(ebpf.map("TRACK_COUNTERS").context("TRACK_COUNTERS map")?)?;
        let calls: BpfHashMap<&MapData, u64, InFlightCall> = BpfHashMap::try_from(ebpf.map("TRACK_CALLS").context("TRACK_CALLS map")?)?;
        let mut in_flight = vec![0u64; self.functions.len()];
        for (_, call) in calls.iter().filter_map(|entry| entry.ok()) {
            if call.active != 0
                && let Some(n) = in_flight.get_mut(call.function as usize)
            {
                *n += 1;
            }
        }
        let site_map: BpfHashMap<&MapData, FunctionSiteKey, FunctionSiteStats> =
            BpfHashMap::try_from(ebpf.map("TRACK_SITES").context("TRACK_SITES map")?)?;
        let mut sites = vec![Vec::new(); self.functions.len()];
        for (key, stats) in site_map.iter().filter_map(|entry| entry.ok()) {
            if let Some(list) = sites.get_mut(key.function as usize) {
                list.push((key.site, stats));
            }
        }
        let mut samples = Vec::new();
        for (function, mut sites) in self.functions.iter().zip(sites) {
            let index = function.index as usize;
            sites.sort_by_key(|(site, stats)| (std::cmp::Reverse(stats.alloc_bytes), *site));
            samples.push(FunctionSample {
                function: function.clone(),
                stats: aggregate.functions.get(index).cloned().unwrap_or_default(),
                counters: counters.get(&function.index, 0)?,
                in_flight: in_flight[index],
                sites,
            });
        }
        Ok(samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_with_and_without_object() {
        assert_eq!("processCommand".parse(), Ok(Spec { symbol: "processCommand".into(), object: None }));
        let spec: Spec = "handle@libfoo.so.1".parse().unwrap();
        assert_eq!((spec.symbol.as_str(), spec.object.as_deref()), ("handle", Some("libfoo.so.1")));
        assert_eq!(spec.to_string(), "handle@libfoo.so.1");
        assert!("".parse::<Spec>().is_err());
        assert!("a b".parse::<Spec>().is_err());
        assert!("f@".parse::<Spec>().is_err());
        assert!("@lib".parse::<Spec>().is_err());
    }
}
