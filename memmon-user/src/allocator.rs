//! Finding the allocator a process actually calls, and where to probe it.
//!
//! A process may get malloc from glibc, from a preloaded or linked jemalloc/tcmalloc/mimalloc,
//! or from its own executable (static binaries). The dynamic linker binds malloc to the first
//! object in search order that defines it; we approximate that order as: a known third-party
//! allocator library, then the executable itself, then any other mapped object (libc last).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fs,
    os::unix::fs::MetadataExt as _,
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use iced_x86::Register;
use object::{Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _, SectionKind, SymbolKind};

use crate::{
    probe_site::{self, Code, Needs, Obstacle, Probed},
    process::Process,
};

/// An allocator function memmon probes, and the kernel program that decodes its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    pub symbol: &'static str,
    /// Name of the entry program in memmon-ebpf.
    pub entry_program: &'static str,
    /// The arguments (by index) that program reads from their registers: a probe may move only
    /// past instructions that leave them alone (see `probe_site`).
    pub args_read: &'static [usize],
    /// Whether the return must be seen too (every allocating function; not the frees).
    pub returns_allocation: bool,
}

impl Function {
    pub fn needs(&self) -> Needs {
        Needs { args: self.args_read, returns: self.returns_allocation }
    }

    /// Whether its entry takes a block out of the live table (free, realloc and their kin).
    pub fn releases_a_block(&self) -> bool {
        [FREE_ENTER.0, REALLOC_ENTER.0, REALLOCARRAY_ENTER.0].contains(&self.entry_program)
    }
}

/// An entry program of memmon-ebpf/src/main.rs and the arguments it reads; keep each list equal
/// to the `arg(&ctx, n)` calls of its program.
struct Program(&'static str, &'static [usize]);

const MALLOC_ENTER: Program = Program("malloc_enter", &[0]);
const SIZE_ONLY_ENTER: Program = Program("size_only_enter", &[0]);
const ALIGNED_ENTER: Program = Program("aligned_enter", &[1]);
const CALLOC_ENTER: Program = Program("calloc_enter", &[0, 1]);
const REALLOC_ENTER: Program = Program("realloc_enter", &[0, 1]);
const REALLOCARRAY_ENTER: Program = Program("reallocarray_enter", &[0, 1, 2]);
const POSIX_MEMALIGN_ENTER: Program = Program("posix_memalign_enter", &[0, 2]);
const FREE_ENTER: Program = Program("free_enter", &[0]);

const fn allocating(symbol: &'static str, program: Program) -> Function {
    Function { symbol, entry_program: program.0, args_read: program.1, returns_allocation: true }
}

const fn releasing(symbol: &'static str) -> Function {
    Function { symbol, entry_program: FREE_ENTER.0, args_read: FREE_ENTER.1, returns_allocation: false }
}

/// The C allocator family, plus jemalloc's own API (used directly by e.g. Rust's
/// jemallocator), which jemalloc serves without going through malloc/free.
pub const FAMILY: &[Function] = &[
    allocating("malloc", MALLOC_ENTER),
    allocating("calloc", CALLOC_ENTER),
    allocating("realloc", REALLOC_ENTER),
    allocating("reallocarray", REALLOCARRAY_ENTER),
    allocating("posix_memalign", POSIX_MEMALIGN_ENTER),
    allocating("aligned_alloc", ALIGNED_ENTER),
    allocating("memalign", ALIGNED_ENTER),
    allocating("valloc", SIZE_ONLY_ENTER),
    allocating("pvalloc", SIZE_ONLY_ENTER),
    allocating("mallocx", MALLOC_ENTER),
    // rallocx(ptr, size, flags) fails like realloc: NULL, and ptr stays valid.
    allocating("rallocx", REALLOC_ENTER),
    releasing("free"),
    releasing("dallocx"),
    releasing("sdallocx"),
];

/// C++ `operator new` in all its forms (size is always the first argument). Probed where the
/// runtime defines them: libstdc++ forwards to malloc, but probing the operator itself puts
/// its caller, not the operator, at the top of the stack (the C++ runtime has no frame
/// pointers). Allocators such as jemalloc and tcmalloc define their own, which bypass malloc.
pub const CXX_NEW: &[Function] = &[
    allocating("_Znwm", MALLOC_ENTER),
    allocating("_Znam", MALLOC_ENTER),
    allocating("_ZnwmRKSt9nothrow_t", MALLOC_ENTER),
    allocating("_ZnamRKSt9nothrow_t", MALLOC_ENTER),
    allocating("_ZnwmSt11align_val_t", MALLOC_ENTER),
    allocating("_ZnamSt11align_val_t", MALLOC_ENTER),
    allocating("_ZnwmSt11align_val_tRKSt9nothrow_t", MALLOC_ENTER),
    allocating("_ZnamSt11align_val_tRKSt9nothrow_t", MALLOC_ENTER),
];

/// C++ `operator delete` in all its forms. Probed only in an allocator that defines them
/// (jemalloc's sized delete frees without calling free); libstdc++'s call free.
pub const CXX_DELETE: &[Function] = &[
    releasing("_ZdlPv"),
    releasing("_ZdaPv"),
    releasing("_ZdlPvm"),
    releasing("_ZdaPvm"),
    releasing("_ZdlPvRKSt9nothrow_t"),
    releasing("_ZdaPvRKSt9nothrow_t"),
    releasing("_ZdlPvSt11align_val_t"),
    releasing("_ZdaPvSt11align_val_t"),
    releasing("_ZdlPvmSt11align_val_t"),
    releasing("_ZdaPvmSt11align_val_t"),
];

/// Every program an attach may use (each is loaded once).
pub fn entry_programs() -> impl Iterator<Item = &'static str> {
    FAMILY.iter().chain(CXX_NEW).chain(CXX_DELETE).map(|f| f.entry_program)
}

/// A function found in an object, with the file offset its probes go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSite {
    pub function: Function,
    /// Where the probes go (the entry probe, and the return probe of an allocating function):
    /// the function's entry, or a cheaper equivalent site after it (see `probe_site`).
    pub file_offset: u64,
    /// How far past the function's entry the probes are.
    pub moved_by: u64,
    /// Whether the kernel emulates the probed instruction; if not, every hit is single-stepped
    /// (tens of microseconds on these VMs instead of about one).
    pub emulated: bool,
    /// Why a single-stepped probe could not move to an emulated instruction.
    pub kept: Option<Obstacle>,
    /// Arguments (by index) the entry program must read from another register at this site.
    pub relocated: Vec<(usize, Register)>,
}

impl ProbeSite {
    /// The register each argument the entry program reads is in at the site, in argument order.
    pub fn argument_registers(&self) -> Vec<Register> {
        let at = |arg: usize| {
            let relocated = self.relocated.iter().find(|(moved, _)| *moved == arg).map(|(_, register)| *register);
            relocated.unwrap_or(probe_site::ARGUMENT_REGISTERS[arg])
        };
        self.function.args_read.iter().map(|&arg| at(arg)).collect()
    }

    /// The entry probe's attach cookie, which tells the entry program where its arguments are
    /// (memmon-ebpf/src/main.rs, `Args`): byte n is 0 when argument n is in its ABI register,
    /// else 1 + the x86-64 number of the register holding it (rax 0, rcx 1, rdx 2, rbx 3, rsp 4,
    /// rbp 5, rsi 6, rdi 7, r8–r15 8–15).
    pub fn cookie(&self) -> u64 {
        self.relocated.iter().fold(0, |cookie, &(arg, register)| {
            let number = X86_REGISTERS.iter().position(|&r| r == register).expect("a general-purpose register");
            cookie | ((1 + number as u64) << (8 * arg))
        })
    }
}

/// The x86-64 general-purpose registers in encoding order.
const X86_REGISTERS: [Register; 16] = [
    Register::RAX, Register::RCX, Register::RDX, Register::RBX, Register::RSP, Register::RBP, Register::RSI, Register::RDI,
    Register::R8, Register::R9, Register::R10, Register::R11, Register::R12, Register::R13, Register::R14, Register::R15,
];

/// One object memmon probes, and where.
#[derive(Clone, Debug)]
pub struct ProbedObject {
    /// Path of the object as the target sees it.
    pub path: String,
    pub sites: Vec<ProbeSite>,
}

impl ProbedObject {
    /// The file's (device, inode) as `process` maps it: uprobes live on inodes, so an object
    /// probed once in a process stays probed in every image of it that maps the same file.
    pub fn identity(&self, process: &Process) -> (u64, u64) {
        fs::metadata(process.root_path(&self.path)).map_or((0, 0), |m| (m.dev(), m.ino()))
    }
}

impl ProbedObject {
    /// "libc.so.6: malloc, calloc, …" with C++ operators shown as counts.
    pub fn describe(&self) -> String {
        let name = self.path.rsplit('/').next().unwrap_or(&self.path);
        let plain: Vec<String> = self
            .sites
            .iter()
            .filter(|s| !s.function.symbol.starts_with("_Z"))
            .map(|s| match s.moved_by {
                0 => s.function.symbol.to_string(),
                moved => format!("{}+{moved}", s.function.symbol),
            })
            .collect();
        let mut names: Vec<&str> = plain.iter().map(String::as_str).collect();
        let news = self.sites.iter().filter(|s| s.function.symbol.starts_with("_Zn")).count();
        let deletes = self.sites.iter().filter(|s| s.function.symbol.starts_with("_Zd")).count();
        let news = format!("operator new ({news} forms)");
        let deletes = format!("operator delete ({deletes} forms)");
        if self.sites.iter().any(|s| s.function.symbol.starts_with("_Zn")) {
            names.push(&news);
        }
        if self.sites.iter().any(|s| s.function.symbol.starts_with("_Zd")) {
            names.push(&deletes);
        }
        format!("{name}: {}", names.join(", "))
    }
}

/// The objects that serve a process' allocations.
#[derive(Clone, Debug)]
pub struct Allocator {
    /// "glibc", "jemalloc", "tcmalloc", "mimalloc", "static" (the executable's own) or "other".
    pub name: &'static str,
    /// The allocator's object first, then other objects with an allocator of their own and C++
    /// runtimes whose operator new is probed.
    pub objects: Vec<ProbedObject>,
    /// Every mapped object already looked at (paths as the target sees them), so that code the
    /// target maps later (dlopen) is examined once.
    examined: BTreeSet<String>,
}

impl Allocator {
    /// Finds the allocator of `process` from its memory map and the mapped objects' symbols.
    /// With `optimize_sites`, probes move to cheaper equivalent sites (`probe_site`).
    pub fn find(process: &Process, optimize_sites: bool) -> Result<Self> {
        let maps = fs::read_to_string(process.path("maps")).map_err(|err| {
            let hint = if err.kind() == std::io::ErrorKind::PermissionDenied {
                " (reading another user's process needs root or CAP_SYS_PTRACE, and no \
                 stricter ptrace policy such as Yama or a sandbox)"
            } else {
                ""
            };
            anyhow::anyhow!("cannot read /proc/{}/maps: {err}{hint}", process.pid)
        })?;
        let exe = fs::read_link(process.path("exe"))
            .map(|p| p.to_string_lossy().trim_end_matches(" (deleted)").to_string())
            .ok();
        let objects = mapped_objects(&maps);
        if objects.is_empty() {
            bail!("pid {} has no mapped executable files; is it still starting?", process.pid);
        }
        Self::find_among(process, &objects, exe.as_deref(), optimize_sites)
    }

    /// Finds the allocator among `objects` (paths as `process` sees them, in load order), for a
    /// process whose map does not list them yet (`memmon run`, stopped at its exec).
    pub fn find_among(process: &Process, objects: &[&str], exe: Option<&str>, optimize_sites: bool) -> Result<Self> {
        let mut searched = Vec::new();
        let mut allocator = None;
        for object in search_order(objects, exe) {
            let Ok(sites) = probe_sites(&process.root_path(object), ALL_FUNCTIONS, optimize_sites) else { continue };
            searched.push(object.to_string());
            if defines_allocator(&sites) {
                let name = classify(object, exe);
                allocator = Some(Self {
                    name,
                    objects: vec![ProbedObject { path: object.to_string(), sites }],
                    examined: BTreeSet::from([object.to_string()]),
                });
                break;
            }
        }
        let Some(mut allocator) = allocator else {
            bail!(
                "no allocator found in pid {}: none of its objects defines both malloc and free \
                 (searched {})",
                process.pid,
                searched.join(", ")
            )
        };
        allocator.examine(process, objects, exe, optimize_sites);
        Ok(allocator)
    }

    /// Probes what the objects `process` mapped since the allocator was found (dlopen) add: an
    /// allocator of their own, or a C++ runtime. Returns the objects to attach probes to; each
    /// object is examined once.
    pub fn examine_new_objects(&mut self, process: &Process, optimize_sites: bool) -> Result<Vec<ProbedObject>> {
        let maps = fs::read_to_string(process.path("maps"))
            .with_context(|| format!("cannot read /proc/{}/maps", process.pid))?;
        let exe = fs::read_link(process.path("exe")).ok().map(|p| p.to_string_lossy().into_owned());
        let known = self.objects.len();
        self.examine(process, &mapped_objects(&maps), exe.as_deref(), optimize_sites);
        Ok(self.objects[known..].to_vec())
    }

    /// Adds, among `objects` not examined yet, the ones with an allocator of their own and the
    /// C++ runtimes whose operator new memmon probes.
    ///
    /// A second allocator serves whoever calls it by name: a plugin linked to mimalloc calling
    /// `mi_malloc`, a library loaded with RTLD_DEEPBIND that binds `malloc` to its own. Its
    /// probes cost nothing while nothing calls it, and calls nested in another probed one are
    /// counted once (the kernel's entry path). glibc is the exception: once another allocator
    /// interposes its malloc, nothing reaches it, so it is probed only as the allocator.
    fn examine(&mut self, process: &Process, objects: &[&str], exe: Option<&str>, optimize_sites: bool) {
        let defines_new = self.objects[0].sites.iter().any(|s| s.function.symbol.starts_with("_Zn"));
        for &object in objects {
            if !self.examined.insert(object.to_string()) {
                continue;
            }
            let path = process.root_path(object);
            // One file may go by two paths (/lib and /usr/lib, a loader's name and the map's):
            // probed twice, every call would be seen twice.
            if let Ok(metadata) = fs::metadata(&path)
                && self.objects.iter().any(|o| o.identity(process) == (metadata.dev(), metadata.ino()))
            {
                continue;
            }
            let Ok(sites) = probe_sites(&path, ALL_FUNCTIONS, optimize_sites) else { continue };
            if classify(object, exe) != "glibc" && defines_allocator(&sites) {
                self.objects.push(ProbedObject { path: object.to_string(), sites });
            } else if !defines_new && is_cxx_runtime(object, exe) {
                let news: Vec<ProbeSite> = sites.into_iter().filter(|s| CXX_NEW.contains(&s.function)).collect();
                if !news.is_empty() {
                    self.objects.push(ProbedObject { path: object.to_string(), sites: news });
                }
            }
        }
    }

    pub fn object(&self) -> &str {
        &self.objects[0].path
    }

    pub fn describe(&self) -> String {
        self.objects.iter().map(ProbedObject::describe).collect::<Vec<_>>().join("; ")
    }

    /// The probes the kernel must single-step on every hit: the expensive ones.
    pub fn single_stepped(&self) -> impl Iterator<Item = &ProbeSite> {
        self.objects.iter().flat_map(|object| &object.sites).filter(|site| !site.emulated)
    }
}

/// Every function memmon probes in an allocator's object.
const ALL_FUNCTIONS: &[Function] = &concat_functions();

const fn concat_functions() -> [Function; FAMILY.len() + CXX_NEW.len() + CXX_DELETE.len()] {
    let mut all = [FAMILY[0]; FAMILY.len() + CXX_NEW.len() + CXX_DELETE.len()];
    let mut i = 0;
    while i < all.len() {
        all[i] = match i {
            i if i < FAMILY.len() => FAMILY[i],
            i if i < FAMILY.len() + CXX_NEW.len() => CXX_NEW[i - FAMILY.len()],
            i => CXX_DELETE[i - FAMILY.len() - CXX_NEW.len()],
        };
        i += 1;
    }
    all
}

/// Whether an object's probe sites make an allocator: both malloc and free.
fn defines_allocator(sites: &[ProbeSite]) -> bool {
    let has = |symbol| sites.iter().any(|s| s.function.symbol == symbol);
    has("malloc") && has("free")
}

fn is_cxx_runtime(object: &str, exe: Option<&str>) -> bool {
    let name = object.rsplit('/').next().unwrap_or(object);
    name.starts_with("libstdc++") || name.starts_with("libc++.") || Some(object) == exe
}

/// Distinct file-backed objects with executable mappings, in map order.
pub(crate) fn mapped_objects(maps: &str) -> Vec<&str> {
    let mut seen = BTreeMap::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_range), Some(perms)) = (fields.next(), fields.next()) else { continue };
        let path = fields.nth(3).map(str::trim).unwrap_or("");
        if perms.contains('x') && path.starts_with('/') {
            let next = seen.len();
            seen.entry(path).or_insert(next);
        }
    }
    let mut objects: Vec<_> = seen.into_iter().collect();
    objects.sort_by_key(|&(_, order)| order);
    objects.into_iter().map(|(path, _)| path).collect()
}

const THIRD_PARTY: &[(&str, &str)] =
    &[("libjemalloc", "jemalloc"), ("libtcmalloc", "tcmalloc"), ("libmimalloc", "mimalloc")];

fn search_order<'a>(objects: &[&'a str], exe: Option<&str>) -> Vec<&'a str> {
    let file_name = |path: &str| path.rsplit('/').next().unwrap_or(path).to_string();
    let rank = |object: &&str| {
        let name = file_name(object);
        if THIRD_PARTY.iter().any(|(prefix, _)| name.starts_with(prefix)) {
            0
        } else if Some(*object) == exe {
            1
        } else if name.starts_with("libc.so") || name.starts_with("libc-") {
            3
        } else {
            2
        }
    };
    let mut ordered = objects.to_vec();
    ordered.sort_by_key(rank);
    ordered
}

fn classify(object: &str, exe: Option<&str>) -> &'static str {
    let name = object.rsplit('/').next().unwrap_or(object);
    if let Some((_, allocator)) = THIRD_PARTY.iter().find(|(prefix, _)| name.starts_with(prefix)) {
        return allocator;
    }
    if Some(object) == exe {
        return "static";
    }
    if name.starts_with("libc.so") || name.starts_with("libc-") {
        return "glibc";
    }
    "other"
}

/// The `functions` defined in the ELF file at `path`, with the file offsets of their probes.
/// With `optimize`, each probe moves to the function's first instruction the kernel emulates
/// where that is provably equivalent (`probe_site`, given all the object's code, whose branches
/// must not land past an entry).
pub fn probe_sites(path: &Path, functions: &[Function], optimize: bool) -> Result<Vec<ProbeSite>> {
    let data = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = object::File::parse(&*data)
        .with_context(|| format!("{} is not an object file memmon can read", path.display()))?;
    // Dynamic symbols first: an exported name wins over a local one of the same name.
    let mut defined: HashMap<&[u8], (u64, u64)> = HashMap::new();
    let mut starts: Vec<u64> = Vec::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        if !symbol.is_definition() {
            continue;
        }
        if let Ok(name) = symbol.name_bytes() {
            defined.entry(name).or_insert((symbol.address(), symbol.size()));
        }
        if symbol.kind() == SymbolKind::Text {
            starts.push(symbol.address());
        }
    }
    let mut found: Vec<(Function, u64, Probed)> = Vec::new();
    for function in functions {
        let Some(&(address, size)) = defined.get(function.symbol.as_bytes()) else { continue };
        let Some(entry) = file_offset(&file, address) else { continue };
        // Aliases (glibc's aligned_alloc and memalign; tcmalloc's free and operator delete)
        // get one probe: two probes on one instruction would see every call twice.
        if found.iter().any(|(_, offset, _)| *offset == entry) {
            continue;
        }
        // Without a size, only the first instructions are read (and the probe stays put).
        let whole = size > 0;
        let length = if whole { size } else { (probe_site::WINDOW * 15) as u64 };
        let Some(bytes) = bytes_at(&file, &data, address, length) else { continue };
        found.push((*function, entry, Probed { code: Code { address, bytes }, whole, needs: function.needs() }));
    }
    let sites: Vec<probe_site::Site> = if optimize {
        let probed: Vec<Probed> = found.iter().map(|(_, _, probed)| *probed).collect();
        probe_site::choose_sites(&probed, &executable_code(&file, &mut starts))
    } else {
        found.iter().map(|(_, _, probed)| probe_site::entry_site(probed.code.bytes)).collect()
    };
    Ok(found
        .into_iter()
        .zip(sites)
        .map(|((function, entry, _), site)| ProbeSite {
            function,
            file_offset: entry + site.offset,
            moved_by: site.offset,
            emulated: site.emulated,
            kept: site.kept,
            relocated: site.relocated,
        })
        .collect())
}

/// All of the object's executable sections, in pieces that start at each function symbol: the
/// code `probe_site` looks through for branches. Decoding starts afresh at every function (so
/// that bytes between functions cannot derail it), and covers what no symbol names — local
/// functions of a stripped library, the `.cold` parts that jump back into their function.
fn executable_code<'d>(file: &object::File<'d>, starts: &mut Vec<u64>) -> Vec<Code<'d>> {
    starts.sort_unstable();
    starts.dedup();
    let mut pieces = Vec::new();
    for section in file.sections().filter(|s| s.kind() == SectionKind::Text) {
        let Ok(bytes) = section.data() else { continue };
        let (start, end) = (section.address(), section.address() + bytes.len() as u64);
        let inside = starts.partition_point(|&a| a <= start)..starts.partition_point(|&a| a < end);
        let mut cuts: Vec<u64> = std::iter::once(start).chain(starts[inside].iter().copied()).collect();
        cuts.push(end);
        for piece in cuts.windows(2) {
            let range = (piece[0] - start) as usize..(piece[1] - start) as usize;
            pieces.push(Code { address: piece[0], bytes: &bytes[range] });
        }
    }
    pieces
}

/// The `length` bytes of the file mapped at `address`, if one loadable segment holds them all.
fn bytes_at<'d>(file: &object::File, data: &'d [u8], address: u64, length: u64) -> Option<&'d [u8]> {
    file.segments().find_map(|segment| {
        let (offset, size) = segment.file_range();
        let start = segment.address();
        let end = start.checked_add(size)?;
        if address < start || address >= end {
            return None;
        }
        let length = length.min(end - address);
        let from = usize::try_from(address - start + offset).ok()?;
        data.get(from..from.checked_add(usize::try_from(length).ok()?)?)
    })
}

/// Translates a virtual address to a file offset through the loadable segment containing it.
fn file_offset(file: &object::File, address: u64) -> Option<u64> {
    file.segments().find_map(|segment| {
        let (offset, size) = segment.file_range();
        let start = segment.address();
        (address >= start && address < start + size).then(|| address - start + offset)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_functions_that_release_a_block_are_the_frees_and_the_reallocs() {
        let releasing: Vec<&str> =
            FAMILY.iter().chain(CXX_NEW).chain(CXX_DELETE).filter(|f| f.releases_a_block()).map(|f| f.symbol).collect();
        let mut expected = vec!["realloc", "reallocarray", "rallocx", "free", "dallocx", "sdallocx"];
        expected.extend(CXX_DELETE.iter().map(|f| f.symbol));
        assert_eq!(releasing, expected);
    }

    const MAPS: &str = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 123 /usr/bin/app
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 123 /usr/bin/app
7f0000000000-7f0000020000 r-xp 00028000 fe:01 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000100000-7f0000120000 r-xp 00010000 fe:01 789 /usr/lib/x86_64-linux-gnu/libjemalloc.so.2
7f0000200000-7f0000201000 rw-p 00000000 00:00 0 [heap]
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0 [vdso]
";

    #[test]
    fn objects_are_executable_file_mappings_in_order() {
        assert_eq!(
            mapped_objects(MAPS),
            ["/usr/bin/app", "/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"]
        );
    }

    #[test]
    fn third_party_allocator_wins_then_executable_then_libc() {
        let objects = mapped_objects(MAPS);
        let order = search_order(&objects, Some("/usr/bin/app"));
        assert_eq!(order[0], "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2");
        assert_eq!(order[1], "/usr/bin/app");
        assert_eq!(order[2], "/usr/lib/x86_64-linux-gnu/libc.so.6");
        assert_eq!(classify(order[0], Some("/usr/bin/app")), "jemalloc");
        assert_eq!(classify(order[1], Some("/usr/bin/app")), "static");
        assert_eq!(classify(order[2], Some("/usr/bin/app")), "glibc");
    }

    #[test]
    fn glibc_exports_the_family() {
        let libc = Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6");
        let sites = probe_sites(libc, FAMILY, true).unwrap();
        for symbol in ["malloc", "calloc", "realloc", "free"] {
            assert!(sites.iter().any(|s| s.function.symbol == symbol), "{symbol} missing");
        }
        let offsets: std::collections::HashSet<_> = sites.iter().map(|s| s.file_offset).collect();
        assert!(offsets.len() >= 4, "distinct functions at distinct offsets");
        // Debian 12's glibc (probe_site's tests have its bytes): free starts with `test
        // %rdi,%rdi; je`, posix_memalign with a RIP-relative cmpb then a push; malloc with a push.
        let site = |symbol| sites.iter().find(|s| s.function.symbol == symbol).unwrap();
        let entry = |symbol| site(symbol).file_offset - site(symbol).moved_by;
        assert_eq!((site("free").moved_by, site("free").emulated), (3, true), "{:?}", site("free"));
        let memalign = site("posix_memalign");
        assert_eq!((memalign.moved_by, memalign.emulated), (7, true), "{memalign:?}");
        assert_eq!(memalign.file_offset, entry("posix_memalign") + 7);
        assert_eq!((site("malloc").moved_by, site("malloc").emulated), (0, true), "{:?}", site("malloc"));
        let reallocarray = site("reallocarray");
        assert_eq!((reallocarray.moved_by, reallocarray.emulated), (0, false), "{reallocarray:?}");
        assert!(reallocarray.kept.is_some());
    }

    #[test]
    fn the_cookie_names_each_relocated_argument_register() {
        let site = |relocated| ProbeSite {
            function: *FAMILY.iter().find(|f| f.symbol == "realloc").unwrap(),
            file_offset: 20,
            moved_by: 20,
            emulated: true,
            kept: None,
            relocated,
        };
        assert_eq!(site(vec![]).cookie(), 0);
        // realloc's ptr (argument 0) in rsi (6), its size (argument 1) in rdx (2).
        let moved = site(vec![(0, Register::RSI), (1, Register::RDX)]);
        assert_eq!(moved.cookie(), 0x0307);
        assert_eq!(moved.argument_registers(), [Register::RSI, Register::RDX]);
        assert_eq!(site(vec![(1, Register::R15)]).cookie(), 16 << 8);
        assert_eq!(site(vec![(1, Register::R15)]).argument_registers(), [Register::RDI, Register::R15]);
    }

    #[test]
    fn without_optimization_every_probe_is_at_its_entry() {
        let libc = Path::new("/usr/lib/x86_64-linux-gnu/libc.so.6");
        let sites = probe_sites(libc, FAMILY, false).unwrap();
        assert!(sites.iter().all(|s| s.moved_by == 0), "{sites:?}");
        let free = sites.iter().find(|s| s.function.symbol == "free").unwrap();
        assert_eq!((free.emulated, free.kept.clone()), (false, Some(Obstacle::Disabled)));
    }
}
