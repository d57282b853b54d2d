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

use memmon_common::{Truncation, python::FRAME_TAG};
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
    /// A Python frame (function, file and line from a code object) rather than a native one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub python: bool,
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

    /// A frame in `module` with no symbol: named by the ELF virtual address of its return
    /// address (what `objdump -d`, `addr2line -e` and gdb's `info symbol` take), never by the
    /// process' absolute address.
    fn unnamed(address: u64, module: String, elf_address: Option<u64>) -> Self {
        let function = match elf_address {
            Some(elf_address) => format!("{module}+{elf_address:#x}"),
            None => format!("{module}+?"),
        };
        Self { function, module, file: None, line: None, python: false, address }
    }

    /// A frame whose address no mapping we saw holds (the process and its map are gone).
    fn unmapped(address: u64) -> Self {
        Self { function: "[unmapped code]".into(), module: String::new(), file: None, line: None, python: false, address }
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

/// The pseudo-frame that ends a truncated stack in the views that show frames (text, pprof,
/// flame graphs): where the walk stopped and why. Never an address.
pub fn truncation_frame(truncated: Truncation) -> Option<Frame> {
    (truncated != Truncation::Complete).then(|| truncation_frame_for(truncated.name()))
}

/// The truncation pseudo-frame for a reason by name (as JSON carries it).
pub fn truncation_frame_for(reason: &str) -> Frame {
    Frame { function: format!("[truncated: {reason}]"), ..Frame::default() }
}

pub struct Symbolizer {
    blazesym: Blazesym,
    maps: HashMap<u32, Vec<Mapping>>,
    cache: HashMap<(u32, u64), Frame>,
    build_ids: HashMap<PathBuf, Option<String>>,
    /// Code objects of Python frames: (pid, address, identity) → what it was, or None if it was
    /// gone or replaced when first looked up.
    python_code: HashMap<(u32, u64, Option<u32>), Option<crate::python::code::CodeInfo>>,
    /// Each process' CPython layout, found once (None: not a walked interpreter).
    python_layouts: HashMap<u32, Option<memmon_common::python::Layout>>,
    /// Executable segments per object, to name unsymbolized frames by ELF address.
    segments: HashMap<PathBuf, Vec<(u64, u64, u64)>>,
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
        Self { blazesym: Blazesym::new(), maps: HashMap::new(), cache: HashMap::new(), build_ids: HashMap::new(), segments: HashMap::new(), python_code: HashMap::new(), python_layouts: HashMap::new(), hits: 0, misses: 0 }
    }

    /// Code objects cached for naming Python frames, and the bytes their names, files and line
    /// tables take.
    pub fn python_cache(&self) -> (usize, usize) {
        let bytes = self
            .python_code
            .values()
            .flatten()
            .map(|info| info.qualname.len() + info.filename.len() + info.linetable.len() + size_of::<crate::python::code::CodeInfo>())
            .sum();
        (self.python_code.len(), bytes)
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

    /// `pid` exec'ed: its old image's map and everything resolved through it are dropped (the
    /// new image may put other code at the same addresses), and the new map is read.
    pub fn image_replaced(&mut self, pid: u32) {
        self.forget(pid);
        self.observe(pid);
    }

    /// `pid` is no longer traced: everything kept for it goes.
    pub fn forget(&mut self, pid: u32) {
        self.maps.remove(&pid);
        self.cache.retain(|(cached, _), _| *cached != pid);
        self.python_code.retain(|(cached, _, _), _| *cached != pid);
    }

    /// Symbolizes a stack of return addresses captured in `pid`.
    /// Python frames (two slots each, see `memmon_common::python`) are named from the
    /// process' code objects.
    pub fn frames(&mut self, pid: u32, addresses: &[u64]) -> Vec<Frame> {
        let native = native_slots(addresses);
        self.resolve_native(pid, &native);
        let mut frames = Vec::with_capacity(addresses.len());
        let mut slots = addresses.iter().copied();
        while let Some(slot) = slots.next() {
            if slot & FRAME_TAG != 0 {
                let detail = slots.next();
                frames.push(self.python_frame(pid, slot & !FRAME_TAG, detail));
            } else {
                frames.push(self.cache[&(pid, slot)].clone());
            }
        }
        frames
    }

    fn resolve_native(&mut self, pid: u32, addresses: &[u64]) {
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
    }

    /// The Python frame of code object `code` at the instruction and identity in `detail`.
    /// A code object is read once per (pid, address, identity); if the object at that address
    /// is no longer the one the kernel saw (freed, address reused), the frame says so rather
    /// than borrowing the newcomer's name.
    fn python_frame(&mut self, pid: u32, code: u64, detail: Option<u64>) -> Frame {
        let identity = detail.map(|d| (d >> 32) as u32);
        let offset = detail.map(|d| d as u32);
        let key = (pid, code, identity);
        if !self.python_code.contains_key(&key) {
            let layout = *self.python_layouts.entry(pid).or_insert_with(|| match crate::python::detect(pid) {
                Ok(crate::python::Interpreter::Walked { process, .. }) => Some(process.layout),
                _ => None,
            });
            let info = fs::File::open(format!("/proc/{pid}/mem"))
                .ok()
                .zip(layout)
                .and_then(|(memory, layout)| crate::python::code::read(&memory, &layout, code).ok())
                .filter(|info| identity.is_none_or(|id| id == info.identity));
            self.python_code.insert(key, info);
        }
        let address = FRAME_TAG | code.wrapping_add(2 * offset.unwrap_or(0) as u64);
        match &self.python_code[&key] {
            Some(info) => Frame {
                function: info.qualname.clone(),
                module: info.filename.clone(),
                file: Some(info.filename.clone()),
                line: offset.and_then(|offset| info.line(offset)),
                python: true,
                address,
            },
            None => Frame {
                function: "[python code object gone]".into(),
                module: "python".into(),
                file: None,
                line: None,
                python: true,
                address,
            },
        }
    }

    /// A site's frames for display: symbolized, with the truncation frame last when its walk
    /// stopped early.
    pub fn stack(&mut self, pid: u32, addresses: &[u64], truncated: Truncation) -> Vec<Frame> {
        let mut frames = self.frames(pid, addresses);
        frames.extend(truncation_frame(truncated));
        frames
    }

    /// A site as the JSON contract shows it.
    pub fn site(&mut self, pid: u32, addresses: &[u64], truncated: Truncation) -> crate::wire::Site {
        crate::wire::Site::new(self.frames(pid, addresses), truncated)
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
                    self.cache.insert((pid, address), Frame::unmapped(address));
                }
            }
        }
        for ((object, module), entries) in by_object {
            let offsets: Vec<u64> = entries.iter().map(|&(_, offset)| offset).collect();
            let source = Source::Elf(Elf::new(&object));
            let resolved = self.blazesym.symbolize(&source, Input::FileOffset(&offsets)).unwrap_or_default();
            let frames: Vec<Option<Frame>> = entries
                .iter()
                .enumerate()
                .map(|(i, &(address, _))| match resolved.get(i) {
                    Some(Symbolized::Sym(sym)) => {
                        let (file, line) = match &sym.code_info {
                            Some(info) => (Some(info.to_path().display().to_string()), info.line),
                            None => (None, None),
                        };
                        Some(Frame { function: sym.name.to_string(), module: module.clone(), file, line, python: false, address })
                    }
                    _ => None,
                })
                .collect();
            for (frame, &(address, offset)) in frames.into_iter().zip(&entries) {
                let frame = frame.unwrap_or_else(|| {
                    // Named by the return address itself (the offset looked up is one byte before).
                    Frame::unnamed(address, module.clone(), self.elf_address(&object, offset + 1))
                });
                self.cache.insert((pid, address), frame);
            }
        }
    }
}

impl Symbolizer {
    /// The ELF virtual address of a file offset in an object's executable segments.
    fn elf_address(&mut self, object: &Path, file_offset: u64) -> Option<u64> {
        let segments = self.segments.entry(object.to_path_buf()).or_insert_with(|| {
            let file = fs::File::open(object).ok();
            // SAFETY: a read-only mapping of an object file, read once for its program headers.
            let data = file.and_then(|file| unsafe { memmap2::Mmap::map(&file) }.ok());
            data.and_then(|data| crate::unwind::maps::load_segments(&data).ok()).unwrap_or_default()
        });
        let &(offset, _, address) =
            segments.iter().find(|&&(offset, size, _)| offset <= file_offset && file_offset < offset + size)?;
        Some(file_offset - offset + address)
    }
}

/// The native return addresses of a stack (Python frames' two slots left out).
fn native_slots(addresses: &[u64]) -> Vec<u64> {
    let mut native = Vec::with_capacity(addresses.len());
    let mut slots = addresses.iter().copied();
    while let Some(slot) = slots.next() {
        if slot & FRAME_TAG != 0 {
            slots.next();
        } else {
            native.push(slot);
        }
    }
    native
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
