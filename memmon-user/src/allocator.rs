//! Finding the allocator a process actually calls, and where to probe it.
//!
//! A process may get malloc from glibc, from a preloaded or linked jemalloc/tcmalloc/mimalloc,
//! or from its own executable (static binaries). The dynamic linker binds malloc to the first
//! object in search order that defines it; we approximate that order as: a known third-party
//! allocator library, then the executable itself, then any other mapped object (libc last).

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{Context as _, Result, bail};
use object::{Object as _, ObjectSegment as _, ObjectSymbol as _};

use crate::process::Process;

/// An allocator function memmon probes, and the kernel program that decodes its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Function {
    pub symbol: &'static str,
    /// Name of the entry program in memmon-ebpf.
    pub entry_program: &'static str,
    /// Whether the return must be seen too (every allocating function; not the frees).
    pub returns_allocation: bool,
}

const fn allocating(symbol: &'static str, entry_program: &'static str) -> Function {
    Function { symbol, entry_program, returns_allocation: true }
}

const fn releasing(symbol: &'static str) -> Function {
    Function { symbol, entry_program: "free_enter", returns_allocation: false }
}

/// The C allocator family, plus jemalloc's own API (used directly by e.g. Rust's
/// jemallocator), which jemalloc serves without going through malloc/free.
pub const FAMILY: &[Function] = &[
    allocating("malloc", "malloc_enter"),
    allocating("calloc", "calloc_enter"),
    allocating("realloc", "realloc_enter"),
    allocating("reallocarray", "reallocarray_enter"),
    allocating("posix_memalign", "posix_memalign_enter"),
    allocating("aligned_alloc", "aligned_enter"),
    allocating("memalign", "aligned_enter"),
    allocating("valloc", "size_only_enter"),
    allocating("pvalloc", "size_only_enter"),
    allocating("mallocx", "malloc_enter"),
    // rallocx(ptr, size, flags) fails like realloc: NULL, and ptr stays valid.
    allocating("rallocx", "realloc_enter"),
    releasing("free"),
    releasing("dallocx"),
    releasing("sdallocx"),
];

/// C++ `operator new` in all its forms (size is always the first argument). Probed where the
/// runtime defines them: libstdc++ forwards to malloc, but probing the operator itself puts
/// its caller, not the operator, at the top of the stack (the C++ runtime has no frame
/// pointers). Allocators such as jemalloc and tcmalloc define their own, which bypass malloc.
pub const CXX_NEW: &[Function] = &[
    allocating("_Znwm", "malloc_enter"),
    allocating("_Znam", "malloc_enter"),
    allocating("_ZnwmRKSt9nothrow_t", "malloc_enter"),
    allocating("_ZnamRKSt9nothrow_t", "malloc_enter"),
    allocating("_ZnwmSt11align_val_t", "malloc_enter"),
    allocating("_ZnamSt11align_val_t", "malloc_enter"),
    allocating("_ZnwmSt11align_val_tRKSt9nothrow_t", "malloc_enter"),
    allocating("_ZnamSt11align_val_tRKSt9nothrow_t", "malloc_enter"),
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

/// A function found in an object, with the file offset the uprobe goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSite {
    pub function: Function,
    /// Where the probe goes: the function's entry, or a cheaper equivalent site after it
    /// (see `probe_site`).
    pub file_offset: u64,
    /// How far past the function's entry the probe is.
    pub moved_by: u64,
}

/// One object memmon probes, and where.
#[derive(Clone, Debug)]
pub struct ProbedObject {
    /// Path of the object as the target sees it.
    pub path: String,
    pub sites: Vec<ProbeSite>,
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
    /// The allocator's object first, then C++ runtimes whose operator new is probed.
    pub objects: Vec<ProbedObject>,
}

impl Allocator {
    /// Finds the allocator of `process` from its memory map and the mapped objects' symbols.
    /// With `optimize_sites`, entry-only probes may move to cheaper equivalent sites.
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
        let all: Vec<Function> = FAMILY.iter().chain(CXX_NEW).chain(CXX_DELETE).copied().collect();
        let mut searched = Vec::new();
        let mut allocator = None;
        for object in search_order(&objects, exe.as_deref()) {
            let Ok(sites) = probe_sites(&process.root_path(object), &all, optimize_sites) else { continue };
            searched.push(object.to_string());
            let has = |symbol| sites.iter().any(|s: &ProbeSite| s.function.symbol == symbol);
            if has("malloc") && has("free") {
                let name = classify(object, exe.as_deref());
                allocator = Some(Self { name, objects: vec![ProbedObject { path: object.to_string(), sites }] });
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
        let defines_new = allocator.objects[0].sites.iter().any(|s| s.function.symbol.starts_with("_Zn"));
        if !defines_new {
            for object in objects.iter().filter(|o| is_cxx_runtime(o, exe.as_deref())) {
                if *object == allocator.objects[0].path {
                    continue;
                }
                if let Ok(sites) = probe_sites(&process.root_path(object), CXX_NEW, optimize_sites)
                    && !sites.is_empty()
                {
                    allocator.objects.push(ProbedObject { path: object.to_string(), sites });
                }
            }
        }
        Ok(allocator)
    }

    pub fn object(&self) -> &str {
        &self.objects[0].path
    }

    pub fn describe(&self) -> String {
        self.objects.iter().map(ProbedObject::describe).collect::<Vec<_>>().join("; ")
    }
}

fn is_cxx_runtime(object: &str, exe: Option<&str>) -> bool {
    let name = object.rsplit('/').next().unwrap_or(object);
    name.starts_with("libstdc++") || name.starts_with("libc++.") || Some(object) == exe
}

/// Distinct file-backed objects with executable mappings, in map order.
fn mapped_objects(maps: &str) -> Vec<&str> {
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

/// The `functions` defined in the ELF file at `path`, as file offsets.
/// With `optimize`, entry-only probes may move past instructions the kernel would single-step.
pub fn probe_sites(path: &Path, functions: &[Function], optimize: bool) -> Result<Vec<ProbeSite>> {
    let data = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = object::File::parse(&*data)
        .with_context(|| format!("{} is not an object file memmon can read", path.display()))?;
    let mut defined: std::collections::HashMap<&[u8], u64> = std::collections::HashMap::new();
    for symbol in file.dynamic_symbols().chain(file.symbols()) {
        if symbol.is_definition() && let Ok(name) = symbol.name_bytes() {
            defined.entry(name).or_insert(symbol.address());
        }
    }
    let mut sites: Vec<ProbeSite> = Vec::new();
    for function in functions {
        let Some(&address) = defined.get(function.symbol.as_bytes()) else { continue };
        let Some(file_offset) = file_offset(&file, address) else { continue };
        // Aliases (glibc's aligned_alloc and memalign; tcmalloc's free and operator delete)
        // get one probe: two probes on one instruction would see every call twice.
        if sites.iter().any(|s| s.file_offset - s.moved_by == file_offset) {
            continue;
        }
        let moved_by = match (optimize, function.returns_allocation) {
            (true, false) => {
                let start = file_offset as usize;
                let code = data.get(start..(start + 32).min(data.len())).unwrap_or_default();
                crate::probe_site::entry_only_offset(code)
            }
            _ => 0,
        };
        sites.push(ProbeSite { function: *function, file_offset: file_offset + moved_by, moved_by });
    }
    Ok(sites)
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
        // Debian 12's free starts with `test %rdi,%rdi; je`: the probe moves to the je.
        let free = sites.iter().find(|s| s.function.symbol == "free").unwrap();
        assert_eq!(free.moved_by, 3, "{free:?}");
        let malloc = sites.iter().find(|s| s.function.symbol == "malloc").unwrap();
        assert_eq!(malloc.moved_by, 0, "allocating functions keep their entry: {malloc:?}");
    }
}
