//! The kernel's unwind tables, kept in step with the targets' code mappings.
//!
//! Objects (executables and libraries) are compiled once and shared by every process that maps
//! them: by file identity (device, inode, size, mtime) and by GNU build id, so a library seen
//! through two containers' paths is one table. Rows and page indexes are written in place
//! through shared mappings of the kernel arrays; an object's table entry is published after its
//! rows, and a process' mapping range after its mappings, so the walker never sees half a table.
//! An object no process maps stays cached until its space is needed.

use std::{
    collections::HashMap,
    fs::File,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray};
use memmon_common::{
    memo::{MEMO_HITS, MEMO_MISSES, MEMO_UNCACHEABLE},
    unwind::{
        ExecMapping, MAPPING_TABLE_ENTRIES, MAX_EXEC_MAPPINGS, MAX_OBJECTS, MappingRange, NO_OBJECT, Object, PageRows,
        Row,
    },
};
use serde::{Deserialize, Serialize};

use super::{
    cfi,
    maps::{self, CodeMapping},
    ranges::Ranges,
};

pub use memmon_common::unwind::capacities;

/// Figures for `status` and `/metrics`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct UnwindStats {
    /// Objects with a table in the kernel.
    pub objects: u64,
    pub rows: u64,
    /// Kernel memory the loaded rows and page indexes take.
    pub bytes: u64,
    /// Capacity of the row table (`MEMMON_UNWIND_TABLE_MAX_MB`).
    pub capacity_bytes: u64,
    /// Time spent compiling tables, in total.
    pub build_seconds: f64,
    /// Objects left without a table because the budget was exhausted.
    pub dropped_objects: u64,
    /// Objects with no usable CFI, or that could not be read or parsed.
    pub objects_without_cfi: u64,
    /// Code mappings beyond the per-process limit, left out (their frames end walks).
    pub dropped_mappings: u64,
    /// Stack walks the kernel skipped because a memoized walk from the same place still held
    /// (`memmon-ebpf/src/memo.rs`).
    pub walks_recalled: u64,
    /// Walks made and memoized for next time.
    pub walks_memoized: u64,
    /// Walks made that could not be memoized (Python threads, deep stacks, failed reads).
    pub walks_unmemoizable: u64,
    /// Allocation sites whose stacks end early, by reason (`outside_objects`, …).
    pub truncated_sites: std::collections::BTreeMap<String, u64>,
    /// Each object memmon has looked at, with its table or the reason it has none.
    pub detail: Vec<ObjectDetail>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct ObjectDetail {
    pub object: String,
    pub rows: u64,
    pub bytes: u64,
    pub build_ms: u64,
    pub users: u32,
    /// Why there is no table, when there is none.
    pub missing: Option<String>,
}

type FileKey = (u64, u64, u64, i64);

/// A typed view of a `BPF_F_MMAPABLE` array map's values.
struct SharedArray<T> {
    _map: Map,
    base: NonNull<T>,
    len: usize,
    bytes: usize,
}

impl<T: Copy> SharedArray<T> {
    fn new(map: Map, len: u32) -> Result<Self> {
        let Map::Array(data) = &map else { bail!("expected an array map") };
        // Array values are laid out at a stride of their size rounded up to 8 bytes.
        assert_eq!(std::mem::size_of::<T>() % 8, 0, "values of shared arrays must be 8-byte multiples");
        let bytes = (len as usize * std::mem::size_of::<T>()).next_multiple_of(page_size());
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: a shared, writable mapping of the map's value area, as the kernel offers it for
        // BPF_F_MMAPABLE arrays; it lives as long as `self`, which also keeps the map.
        let address = unsafe {
            libc::mmap(std::ptr::null_mut(), bytes, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if address == libc::MAP_FAILED {
            return Err(anyhow!(std::io::Error::last_os_error()).context("mapping an unwind table"));
        }
        Ok(Self { _map: map, base: NonNull::new(address.cast()).expect("mmap result"), len: len as usize, bytes })
    }

    fn write(&mut self, start: u32, values: &[T]) {
        let start = start as usize;
        assert!(start + values.len() <= self.len);
        // SAFETY: in bounds (checked above) of a mapping we own; the kernel reads these words
        // only after the entry pointing at them is published.
        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), self.base.as_ptr().add(start), values.len()) };
    }
}

impl<T> Drop for SharedArray<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as usize }
}

struct LoadedObject {
    name: String,
    build_id: Option<Vec<u8>>,
    /// Loadable segments (offset, size, vaddr): what a mapping's bias is computed from.
    segments: Vec<(u64, u64, u64)>,
    /// Table slot in UNWIND_OBJECTS, if the object has a table.
    slot: Option<u32>,
    entry: Object,
    pages: u32,
    build_time: Duration,
    users: u32,
    missing: Option<String>,
    over_budget: bool,
}

struct ProcessTables {
    range: MappingRange,
    objects: Vec<FileKey>,
}

pub struct UnwindTables {
    rows: SharedArray<Row>,
    pages: SharedArray<PageRows>,
    mappings: SharedArray<ExecMapping>,
    objects_map: Array<MapData, Object>,
    targets_map: BpfHashMap<MapData, u32, MappingRange>,
    generation: Array<MapData, u64>,
    memo_counters: PerCpuArray<MapData, u64>,
    row_space: Ranges,
    page_space: Ranges,
    mapping_space: Ranges,
    free_slots: Vec<u32>,
    objects: HashMap<FileKey, LoadedObject>,
    by_build_id: HashMap<Vec<u8>, FileKey>,
    processes: HashMap<u32, ProcessTables>,
    dropped_objects: u64,
    dropped_mappings: u64,
}

impl UnwindTables {
    /// Takes the unwind maps out of the loaded programs; `max_mb` is what they were sized for.
    pub fn new(ebpf: &mut aya::Ebpf, max_mb: u32) -> Result<Self> {
        let (row_capacity, page_capacity) = capacities(max_mb);
        let mut take = |name: &str| ebpf.take_map(name).ok_or_else(|| anyhow!("{name} map missing from the programs"));
        Ok(Self {
            rows: SharedArray::new(take("UNWIND_ROWS")?, row_capacity)?,
            pages: SharedArray::new(take("UNWIND_PAGES")?, page_capacity)?,
            mappings: SharedArray::new(take("EXEC_MAPPINGS")?, MAPPING_TABLE_ENTRIES)?,
            objects_map: Array::try_from(take("UNWIND_OBJECTS")?)?,
            targets_map: BpfHashMap::try_from(take("TARGET_MAPPINGS")?)?,
            generation: Array::try_from(take("WALK_GENERATION")?)?,
            memo_counters: PerCpuArray::try_from(take("MEMO_COUNTERS")?)?,
            row_space: Ranges::new(row_capacity),
            page_space: Ranges::new(page_capacity),
            mapping_space: Ranges::new(MAPPING_TABLE_ENTRIES),
            free_slots: (0..MAX_OBJECTS).rev().collect(),
            objects: HashMap::new(),
            by_build_id: HashMap::new(),
            processes: HashMap::new(),
            dropped_objects: 0,
            dropped_mappings: 0,
        })
    }

    /// Brings the kernel's view of `pid`'s code mappings (and the tables of the objects they
    /// map) up to date.
    pub fn sync_process(&mut self, pid: u32) -> Result<()> {
        let code = maps::code_mappings(pid)?;
        let mut entries = Vec::with_capacity(code.len());
        let mut used = Vec::new();
        for mapping in &code {
            let key = match self.object(mapping) {
                Ok(key) => key,
                Err(err) => {
                    log::debug!("pid {pid}: {}: {err:#}", mapping.name);
                    continue;
                }
            };
            let object = &self.objects[&key];
            let Some(bias) = maps::bias(mapping.start, mapping.offset, &object.segments) else { continue };
            entries.push(ExecMapping {
                start: mapping.start,
                end: mapping.end,
                bias,
                object: object.slot.unwrap_or(NO_OBJECT),
                _pad: 0,
            });
            used.push(key);
        }
        if entries.len() > MAX_EXEC_MAPPINGS as usize {
            self.dropped_mappings += (entries.len() - MAX_EXEC_MAPPINGS as usize) as u64;
            entries.truncate(MAX_EXEC_MAPPINGS as usize);
        }
        let count = entries.len() as u32;
        let first = self
            .mapping_space
            .allocate(count)
            .ok_or_else(|| anyhow!("the executable-mapping table is full ({MAPPING_TABLE_ENTRIES} entries)"))?;
        self.mappings.write(first, &entries);
        let range = MappingRange { first, count };
        if let Err(err) = self.targets_map.insert(pid, range, 0) {
            self.mapping_space.release(first, count);
            return Err(anyhow!(err).context("publishing the process' code mappings"));
        }
        used.sort_unstable();
        used.dedup();
        for key in &used {
            if let Some(object) = self.objects.get_mut(key) {
                object.users += 1;
            }
        }
        if let Some(old) = self.processes.insert(pid, ProcessTables { range, objects: used }) {
            self.release_process(old);
        }
        self.invalidate_memos();
        Ok(())
    }

    /// Makes every memoized walk stale (`memmon-ebpf/src/memo.rs`). Called after the tables,
    /// a process' mappings or its interpreter change, and before sites are removed: a walk
    /// memoized under the old generation is never recalled again.
    pub fn invalidate_memos(&mut self) {
        let current = self.generation.get(&0, 0).unwrap_or(0);
        if let Err(err) = self.generation.set(0, current.wrapping_add(1), 0) {
            log::warn!("invalidating memoized stack walks failed: {err}");
        }
    }

    /// Drops what only `pid` used (its mapping range; objects stay cached until space is needed).
    pub fn forget_process(&mut self, pid: u32) {
        if let Some(old) = self.processes.remove(&pid) {
            let _ = self.targets_map.remove(&pid);
            self.release_process(old);
            self.invalidate_memos();
        }
    }

    fn release_process(&mut self, old: ProcessTables) {
        self.mapping_space.release(old.range.first, old.range.count);
        for key in old.objects {
            if let Some(object) = self.objects.get_mut(&key) {
                object.users = object.users.saturating_sub(1);
            }
        }
    }

    /// The object behind a mapping, compiled and loaded on first sight.
    fn object(&mut self, mapping: &CodeMapping) -> Result<FileKey> {
        let key = maps::file_identity(mapping)?;
        if self.objects.contains_key(&key) {
            return Ok(key);
        }
        let file = File::open(&mapping.path).with_context(|| format!("opening {}", mapping.path.display()))?;
        // SAFETY: a read-only private mapping of a file we only read; a concurrent truncation
        // could fault, which the file-identity check makes unlikely for installed objects.
        let data = unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("mapping {}", mapping.path.display()))?;
        let segments = maps::load_segments(&data)?;
        let build_id = read_build_id(&data);
        if let Some(shared) = build_id.as_ref().and_then(|id| self.by_build_id.get(id)).copied() {
            let object = &self.objects[&shared];
            let alias = LoadedObject {
                name: mapping.name.clone(),
                build_id: build_id.clone(),
                segments,
                slot: object.slot,
                entry: object.entry,
                pages: 0,
                build_time: Duration::ZERO,
                users: 0,
                missing: object.missing.clone(),
                over_budget: object.over_budget,
            };
            self.objects.insert(key, alias);
            return Ok(key);
        }
        let started = Instant::now();
        let compiled = cfi::compile(&data);
        let build_time = started.elapsed();
        let mut object = LoadedObject {
            name: mapping.name.clone(),
            build_id: build_id.clone(),
            segments,
            slot: None,
            entry: Object::default(),
            pages: 0,
            build_time,
            users: 0,
            missing: None,
            over_budget: false,
        };
        match compiled {
            Ok(table) if !table.rows.is_empty() => match self.load(&table) {
                Some((slot, entry)) => {
                    object.slot = Some(slot);
                    object.entry = entry;
                    object.pages = table.pages.len() as u32;
                    log::debug!("unwind table for {}: {} rows in {:?}", mapping.name, table.rows.len(), build_time);
                }
                None => {
                    self.dropped_objects += 1;
                    object.over_budget = true;
                    object.missing = Some(format!(
                        "unwind table budget exhausted ({} rows needed); raise MEMMON_UNWIND_TABLE_MAX_MB",
                        table.rows.len()
                    ));
                    log::warn!("{}: {}", mapping.name, object.missing.as_deref().unwrap_or_default());
                }
            },
            Ok(_) => object.missing = Some("no CFI (.eh_frame or .debug_frame)".into()),
            Err(err) => object.missing = Some(format!("{err:#}")),
        }
        if let Some(id) = build_id {
            self.by_build_id.insert(id, key);
        }
        self.objects.insert(key, object);
        Ok(key)
    }

    /// Copies a table into the kernel arrays and publishes it; evicts unused objects for room.
    fn load(&mut self, table: &cfi::CompiledTable) -> Option<(u32, Object)> {
        let (rows, pages) = (table.rows.len() as u32, table.pages.len() as u32);
        let (rows_start, pages_start) = loop {
            let rows_start = self.row_space.allocate(rows);
            let pages_start = self.page_space.allocate(pages);
            match (rows_start, pages_start) {
                (Some(r), Some(p)) => break (r, p),
                (r, p) => {
                    if let Some(r) = r {
                        self.row_space.release(r, rows);
                    }
                    if let Some(p) = p {
                        self.page_space.release(p, pages);
                    }
                    if !self.evict_one_unused() {
                        return None;
                    }
                }
            }
        };
        let Some(slot) = self.free_slots.pop() else {
            self.row_space.release(rows_start, rows);
            self.page_space.release(pages_start, pages);
            return None;
        };
        self.rows.write(rows_start, &table.rows);
        self.pages.write(pages_start, &table.pages);
        let entry = Object { base: table.base, rows_start, row_count: rows, pages_start, page_count: pages };
        if self.objects_map.set(slot, entry, 0).is_err() {
            self.free_slots.push(slot);
            self.row_space.release(rows_start, rows);
            self.page_space.release(pages_start, pages);
            return None;
        }
        Some((slot, entry))
    }

    /// Frees the table of one object no process maps (and of every alias sharing it).
    fn evict_one_unused(&mut self) -> bool {
        let in_use: std::collections::HashSet<u32> =
            self.objects.values().filter(|o| o.users > 0).filter_map(|o| o.slot).collect();
        let Some(slot) = self.objects.values().filter_map(|o| o.slot).find(|slot| !in_use.contains(slot)) else {
            return false;
        };
        let owners: Vec<FileKey> = self.objects.iter().filter(|(_, o)| o.slot == Some(slot)).map(|(k, _)| *k).collect();
        let mut freed = None;
        for key in owners {
            if let Some(object) = self.objects.remove(&key) {
                if let Some(id) = &object.build_id {
                    self.by_build_id.remove(id);
                }
                if object.pages > 0 {
                    freed = Some((object.entry, object.pages));
                }
            }
        }
        if let Some((entry, pages)) = freed {
            let _ = self.objects_map.set(slot, Object::default(), 0);
            self.row_space.release(entry.rows_start, entry.row_count);
            self.page_space.release(entry.pages_start, pages);
        }
        self.free_slots.push(slot);
        true
    }

    pub fn stats(&self) -> UnwindStats {
        let mut stats = UnwindStats {
            capacity_bytes: (self.row_space.capacity() as u64 + self.page_space.capacity() as u64)
                * std::mem::size_of::<Row>() as u64,
            dropped_objects: self.dropped_objects,
            dropped_mappings: self.dropped_mappings,
            walks_recalled: self.memo_counter(MEMO_HITS),
            walks_memoized: self.memo_counter(MEMO_MISSES),
            walks_unmemoizable: self.memo_counter(MEMO_UNCACHEABLE),
            ..UnwindStats::default()
        };
        for object in self.objects.values() {
            stats.build_seconds += object.build_time.as_secs_f64();
            let owns_table = object.pages > 0;
            let (rows, bytes) = if owns_table {
                let bytes = object.entry.row_count as u64 * 8 + object.pages as u64 * 8;
                (object.entry.row_count as u64, bytes)
            } else {
                (0, 0)
            };
            if owns_table {
                stats.objects += 1;
                stats.rows += rows;
                stats.bytes += bytes;
            } else if object.missing.is_some() && !object.over_budget {
                stats.objects_without_cfi += 1;
            }
            stats.detail.push(ObjectDetail {
                object: object.name.clone(),
                rows,
                bytes,
                build_ms: object.build_time.as_millis() as u64,
                users: object.users,
                missing: object.missing.clone(),
            });
        }
        stats.detail.sort_by(|a, b| a.object.cmp(&b.object));
        stats
    }
}

impl UnwindTables {
    fn memo_counter(&self, index: u32) -> u64 {
        self.memo_counters.get(&index, 0).map_or(0, |per_cpu| per_cpu.iter().sum())
    }
}

fn read_build_id(data: &[u8]) -> Option<Vec<u8>> {
    use object::Object as _;
    object::File::parse(data).ok()?.build_id().ok()?.map(<[u8]>::to_vec)
}
