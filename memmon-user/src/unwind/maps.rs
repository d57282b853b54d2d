//! A process' executable file mappings, and the load bias of each: the number that turns a
//! runtime address into the ELF virtual address the object's CFI speaks of.

use std::{fs, os::unix::fs::MetadataExt as _, path::PathBuf};

use anyhow::{Context as _, Result};
use object::{Object as _, ObjectSegment as _};

/// An executable, file-backed mapping from /proc/PID/maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeMapping {
    pub start: u64,
    pub end: u64,
    /// Offset in the file of the mapping's first byte.
    pub offset: u64,
    /// The file as the target sees it, read through /proc/PID/root (containers).
    pub path: PathBuf,
    /// The path inside the process' mount namespace, for messages.
    pub name: String,
    pub device: u64,
    pub inode: u64,
}

/// The executable file mappings of `pid`, sorted by start.
pub fn code_mappings(pid: u32) -> Result<Vec<CodeMapping>> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).with_context(|| format!("reading /proc/{pid}/maps"))?;
    Ok(parse(pid, &maps))
}

fn parse(pid: u32, maps: &str) -> Vec<CodeMapping> {
    let mut mappings: Vec<CodeMapping> = maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (range, perms, offset, device) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
            let inode: u64 = fields.next()?.parse().ok()?;
            let name = fields.collect::<Vec<_>>().join(" ");
            if !perms.contains('x') || !name.starts_with('/') || inode == 0 || name.ends_with(" (deleted)") {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let (major, minor) = device.split_once(':')?;
            let device = libc::makedev(u32::from_str_radix(major, 16).ok()?, u32::from_str_radix(minor, 16).ok()?);
            Some(CodeMapping {
                start: u64::from_str_radix(start, 16).ok()?,
                end: u64::from_str_radix(end, 16).ok()?,
                offset: u64::from_str_radix(offset, 16).ok()?,
                path: PathBuf::from(format!("/proc/{pid}/root{name}")),
                name,
                device,
                inode,
            })
        })
        .collect();
    mappings.sort_by_key(|m| m.start);
    mappings
}

/// The ELF's executable loadable segments as (file offset, file size, virtual address): where
/// an executable mapping's bytes come from.
pub fn load_segments(elf: &[u8]) -> Result<Vec<(u64, u64, u64)>> {
    const PF_X: u32 = 1;
    let file = object::File::parse(elf).context("not an ELF object")?;
    Ok(file
        .segments()
        .filter(|segment| match segment.flags() {
            object::SegmentFlags::Elf { p_flags } => p_flags & PF_X != 0,
            _ => true,
        })
        .map(|segment| {
            let (offset, size) = segment.file_range();
            (offset, size, segment.address())
        })
        .collect())
}

/// `runtime address - bias = ELF virtual address` for an executable mapping of `offset` in a
/// file with these (executable) segments; `None` if no segment holds the offset.
pub fn bias(mapping_start: u64, mapping_offset: u64, segments: &[(u64, u64, u64)]) -> Option<u64> {
    // Segments need not start on a page; their mappings do. Where a page holds the end of one
    // segment and the start of the next, the mapping is the later one's.
    let &(segment_offset, _, segment_address) = segments
        .iter()
        .filter(|&&(offset, size, _)| offset & !0xfff <= mapping_offset && mapping_offset < offset + size.max(1))
        .max_by_key(|&&(offset, _, _)| offset)?;
    Some(mapping_start.wrapping_sub(mapping_offset).wrapping_add(segment_offset).wrapping_sub(segment_address))
}

/// The identity of the file behind a mapping: it changes when the file is replaced.
pub fn file_identity(mapping: &CodeMapping) -> Result<(u64, u64, u64, i64)> {
    let metadata = fs::metadata(&mapping.path).with_context(|| format!("stat {}", mapping.path.display()))?;
    Ok((mapping.device, mapping.inode, metadata.size(), metadata.mtime()))
}

/// The load bias of this process' own executable code at `address` (tests).
pub fn load_bias_of_self(address: u64) -> u64 {
    let pid = std::process::id();
    let mapping = code_mappings(pid)
        .unwrap()
        .into_iter()
        .find(|m| m.start <= address && address < m.end)
        .expect("address in a code mapping");
    let data = fs::read(&mapping.path).unwrap();
    bias(mapping.start, mapping.offset, &load_segments(&data).unwrap()).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_executable_file_mappings_sorted() {
        let maps = "\
7f0000001000-7f0000002000 r-xp 00001000 fe:01 77 /usr/lib/libfoo.so
00401000-00402000 r-xp 00001000 fe:01 12 /usr/bin/app
00400000-00401000 r--p 00000000 fe:01 12 /usr/bin/app
7ffd00000000-7ffd00001000 r-xp 00000000 00:00 0 [vdso]
7f0000009000-7f000000a000 rwxp 00000000 00:00 0
7f0000005000-7f0000006000 r-xp 00000000 fe:01 78 /tmp/gone (deleted)
";
        let mappings = parse(42, maps);
        assert_eq!(mappings.len(), 2);
        assert_eq!((mappings[0].start, mappings[0].offset, mappings[0].inode), (0x401000, 0x1000, 12));
        assert_eq!(mappings[0].path, PathBuf::from("/proc/42/root/usr/bin/app"));
        assert_eq!(mappings[1].name, "/usr/lib/libfoo.so");
        assert_eq!(mappings[1].device, libc::makedev(0xfe, 1));
    }

    #[test]
    fn bias_maps_runtime_addresses_to_elf_addresses() {
        // A PIE's text segment: file offset 0x1000 at vaddr 0x1000, mapped at 0x5555_0000_1000.
        let segments = [(0, 0x800, 0), (0x1000, 0x3000, 0x1000), (0x4000, 0x100, 0x5000)];
        assert_eq!(bias(0x5555_0000_1000, 0x1000, &segments), Some(0x5555_0000_0000));
        // A non-PIE executable: the vaddr is the runtime address; bias 0.
        let segments = [(0, 0x1000, 0x400000), (0x1000, 0x2000, 0x401000)];
        assert_eq!(bias(0x401000, 0x1000, &segments), Some(0));
        assert_eq!(bias(0x401000, 0x9000, &segments), None);
        // Text that does not start on a page, one page further in memory than in the file (as
        // rustc's linker lays out): the mapping of page 0x13000 holds text from 0x13ca0.
        let segments = [(0, 0x13b8c, 0), (0x13ca0, 0x30000, 0x14ca0)];
        assert_eq!(bias(0x5555_5556_8000, 0x13000, &segments), Some(0x5555_5555_4000));
    }
}
