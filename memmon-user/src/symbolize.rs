//! Turning return addresses into function, module and file:line, with blazesym.
//!
//! Addresses are translated to (object file, file offset) through the process' memory map, and
//! the object files are symbolized directly. So symbolization keeps working after the process
//! exits, as long as we saw its map while it ran (`observe`). One long-lived blazesym
//! symbolizer caches parsed ELF/DWARF per file; our own cache maps (pid, address) to a frame, so
//! a site's frames are symbolized once however many snapshots show them.

use std::{
    collections::{BTreeMap, HashMap},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer as Blazesym,
    source::{Elf, Source},
};
use serde::{Deserialize, Serialize};

/// One symbolized stack frame (the contract's `site.frames[]` element).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub function: String,
    pub module: String,
    pub file: Option<String>,
    pub line: Option<u32>,
    #[serde(skip)]
    pub address: u64,
}

impl Frame {
    /// `file:line`, or the module when there is no line information.
    pub fn location(&self) -> String {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => format!("{file}:{line}"),
            (Some(file), None) => file.clone(),
            _ => self.module.clone(),
        }
    }

    fn unknown(address: u64, module: String) -> Self {
        Self { function: format!("{address:#x}"), module, file: None, line: None, address }
    }
}

/// A file-backed executable mapping from /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    offset: u64,
    /// Where to read the object: the host path if it is the mapped file, else through
    /// /proc/PID/root (a container's file).
    object: PathBuf,
    module: String,
}

pub struct Symbolizer {
    blazesym: Blazesym,
    maps: HashMap<u32, Vec<Mapping>>,
    cache: HashMap<(u32, u64), Frame>,
    build_ids: HashMap<PathBuf, Option<String>>,
    pub hits: u64,
    pub misses: u64,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Self::new()
    }
}

impl Symbolizer {
    pub fn new() -> Self {
        Self { blazesym: Blazesym::new(), maps: HashMap::new(), cache: HashMap::new(), build_ids: HashMap::new(), hits: 0, misses: 0 }
    }

    /// Reads the process' current memory map; kept if the process has already exited.
    pub fn observe(&mut self, pid: u32) {
        if let Ok(maps) = fs::read_to_string(format!("/proc/{pid}/maps")) {
            let mappings = parse_maps(pid, &maps);
            log::debug!("pid {pid}: {} executable mappings", mappings.len());
            if !mappings.is_empty() {
                self.maps.insert(pid, mappings);
            }
        }
    }

    /// Symbolizes a stack of return addresses captured in `pid`.
    pub fn frames(&mut self, pid: u32, addresses: &[u64]) -> Vec<Frame> {
        let missing: Vec<u64> =
            addresses.iter().copied().filter(|&a| !self.cache.contains_key(&(pid, a))).collect();
        self.hits += (addresses.len() - missing.len()) as u64;
        self.misses += missing.len() as u64;
        if !missing.is_empty() {
            if !self.maps.contains_key(&pid) || missing.iter().any(|&a| self.mapping(pid, a).is_none()) {
                self.observe(pid);
            }
            self.resolve(pid, &missing);
        }
        addresses.iter().map(|a| self.cache[&(pid, *a)].clone()).collect()
    }

    fn mapping(&self, pid: u32, address: u64) -> Option<&Mapping> {
        self.maps.get(&pid)?.iter().find(|m| address >= m.start && address < m.end)
    }

    /// The executable mappings seen for `pid`, as (start, end, file offset, object path).
    pub fn mappings(&self, pid: u32) -> Vec<(u64, u64, u64, PathBuf)> {
        self.maps
            .get(&pid)
            .map(|maps| maps.iter().map(|m| (m.start, m.end, m.offset, m.object.clone())).collect())
            .unwrap_or_default()
    }

    /// The GNU build id of an object file, in hex (what pprof and symbol servers match binaries
    /// by); read once per file.
    pub fn build_id(&mut self, object: &Path) -> Option<String> {
        self.build_ids.entry(object.to_path_buf()).or_insert_with(|| read_build_id(object)).clone()
    }

    fn resolve(&mut self, pid: u32, addresses: &[u64]) {
        // Group by object; a return address points after the call, and the call instruction
        // (one byte before) is the line a person wants to see.
        let mut by_object: BTreeMap<(PathBuf, String), Vec<(u64, u64)>> = BTreeMap::new();
        for &address in addresses {
            match self.mapping(pid, address) {
                Some(m) => by_object
                    .entry((m.object.clone(), m.module.clone()))
                    .or_default()
                    .push((address, address - 1 - m.start + m.offset)),
                None => {
                    self.cache.insert((pid, address), Frame::unknown(address, String::new()));
                }
            }
        }
        for ((object, module), entries) in by_object {
            let offsets: Vec<u64> = entries.iter().map(|&(_, offset)| offset).collect();
            let source = Source::Elf(Elf::new(&object));
            let resolved = self.blazesym.symbolize(&source, Input::FileOffset(&offsets)).unwrap_or_default();
            for (i, &(address, _)) in entries.iter().enumerate() {
                let frame = match resolved.get(i) {
                    Some(Symbolized::Sym(sym)) => {
                        let (file, line) = match &sym.code_info {
                            Some(info) => (Some(info.to_path().display().to_string()), info.line),
                            None => (None, None),
                        };
                        Frame { function: sym.name.to_string(), module: module.clone(), file, line, address }
                    }
                    _ => Frame::unknown(address, module.clone()),
                };
                self.cache.insert((pid, address), frame);
            }
        }
    }
}

fn parse_maps(pid: u32, maps: &str) -> Vec<Mapping> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms, offset) = (fields.next()?, fields.next()?, fields.next()?);
            let _device = fields.next()?;
            let inode: u64 = fields.next()?.parse().ok()?;
            let path = fields.next()?;
            if !perms.contains('x') || !path.starts_with('/') {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let host = Path::new(path);
            let object = if fs::metadata(host).is_ok_and(|m| m.ino() == inode) {
                host.to_path_buf()
            } else {
                PathBuf::from(format!("/proc/{pid}/root{path}"))
            };
            Some(Mapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                object,
                module: host.file_name()?.to_string_lossy().into_owned(),
            })
        })
        .collect()
}

fn read_build_id(path: &Path) -> Option<String> {
    use object::Object as _;
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let id = file.build_id().ok()??;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_keep_executable_file_mappings_only() {
        let maps = "\
00400000-00401000 r--p 00000000 fe:01 1 /nonexistent/app
00401000-00402000 r-xp 00001000 fe:01 1 /nonexistent/app
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0 [vdso]
";
        let mappings = parse_maps(42, maps);
        assert_eq!(mappings.len(), 1);
        assert_eq!(mappings[0].start, 0x401000);
        assert_eq!(mappings[0].offset, 0x1000);
        assert_eq!(mappings[0].module, "app");
        assert_eq!(mappings[0].object, PathBuf::from("/proc/42/root/nonexistent/app"));
    }

    #[test]
    fn symbolizes_this_test_binary_by_file_offset() {
        let mut symbolizer = Symbolizer::new();
        let pid = std::process::id();
        let address = maps_keep_executable_file_mappings_only as fn() as usize as u64 + 1;
        let frames = symbolizer.frames(pid, &[address]);
        assert!(frames[0].function.contains("maps_keep_executable_file_mappings_only"), "{frames:?}");
        symbolizer.frames(pid, &[address]);
        assert_eq!((symbolizer.hits, symbolizer.misses), (1, 1));
    }
}
