//! Code objects of a running CPython, read from its memory, and the location table (the same
//! format in 3.11, 3.12 and 3.13).

use std::{fs::File, os::unix::fs::FileExt as _};

use anyhow::{Result, bail};
use memmon_common::python::{Layout, identity};

/// What a frame's code object says about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CodeInfo {
    pub qualname: String,
    pub filename: String,
    pub first_line: u32,
    pub linetable: Vec<u8>,
    /// The identity the kernel folds into frames of this code object.
    pub identity: u32,
}

impl CodeInfo {
    /// The source line of the instruction at `offset` (code units).
    pub fn line(&self, offset: u32) -> Option<u32> {
        line_for(&self.linetable, self.first_line, offset)
    }
}

fn u64_at(memory: &File, address: u64) -> Result<u64> {
    let mut word = [0u8; 8];
    memory.read_exact_at(&mut word, address)?;
    Ok(u64::from_le_bytes(word))
}

/// Reads the code object at `code` of an interpreter laid out as `layout`.
pub fn read(memory: &File, layout: &Layout, code: u64) -> Result<CodeInfo> {
    let mut first_line = [0u8; 4];
    memory.read_exact_at(&mut first_line, code + layout.code_firstlineno as u64)?;
    let first_line = u32::from_le_bytes(first_line);
    let (qualname, filename, linetable) = (
        u64_at(memory, code + layout.code_qualname as u64)?,
        u64_at(memory, code + layout.code_filename as u64)?,
        u64_at(memory, code + layout.code_linetable as u64)?,
    );
    Ok(CodeInfo {
        qualname: read_str(memory, layout, qualname)?,
        filename: read_str(memory, layout, filename)?,
        first_line,
        linetable: read_bytes(memory, linetable)?,
        identity: identity(qualname, u64_at(memory, qualname + layout.str_hash as u64)?, filename, linetable, first_line),
    })
}

/// A `str` object: compact ASCII (characters after the `PyASCIIObject` header) or compact
/// with a kind of 1, 2 or 4 bytes a character (after the `PyCompactUnicodeObject` header).
/// The state bits (kind 2-4, compact 5, ascii 6) sit at the same place from 3.11 to 3.13.
pub fn read_str(memory: &File, layout: &Layout, object: u64) -> Result<String> {
    let length = u64_at(memory, object + 16)?;
    if length > 4096 {
        bail!("a {length}-character name");
    }
    let mut state = [0u8; 4];
    memory.read_exact_at(&mut state, object + 32)?;
    let state = u32::from_le_bytes(state);
    let (kind, compact, ascii) = ((state >> 2) & 7, state >> 5 & 1 != 0, state >> 6 & 1 != 0);
    if !compact {
        bail!("a non-compact str");
    }
    let (start, width) =
        if ascii { (layout.str_ascii_data as u64, 1) } else { (layout.str_compact_data as u64, kind as u64) };
    if !matches!(width, 1 | 2 | 4) {
        bail!("a str of kind {kind}");
    }
    let mut data = vec![0u8; (length * width) as usize];
    memory.read_exact_at(&mut data, object + start)?;
    Ok(match width {
        1 => data.iter().map(|&b| b as char).collect(),
        2 => char::decode_utf16(data.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])))
            .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
        _ => data
            .chunks(4)
            .map(|c| char::from_u32(u32::from_le_bytes([c[0], c[1], c[2], c[3]])).unwrap_or(char::REPLACEMENT_CHARACTER))
            .collect(),
    })
}

/// A `bytes` object's contents (ob_size at 16, data at 32).
pub fn read_bytes(memory: &File, object: u64) -> Result<Vec<u8>> {
    let length = u64_at(memory, object + 16)?;
    if length > 1 << 20 {
        bail!("a {length}-byte line table");
    }
    let mut data = vec![0u8; length as usize];
    memory.read_exact_at(&mut data, object + 32)?;
    Ok(data)
}

/// The line of the instruction at `offset` (code units) from a 3.11 location table
/// (`Objects/locations.md` in CPython): entries of `(first byte: 1, code: 4 bits, length - 1:
/// 3 bits)` and code-specific data; each moves the line by a delta and covers `length` units.
pub fn line_for(table: &[u8], first_line: u32, offset: u32) -> Option<u32> {
    let mut line = first_line as i64;
    let mut position = 0u32;
    let mut bytes = table.iter().copied().peekable();
    while let Some(head) = bytes.next() {
        if head & 0x80 == 0 {
            return None; // not at an entry's start: a malformed table
        }
        let code = (head >> 3) & 15;
        let length = (head & 7) as u32 + 1;
        let line_here = match code {
            15 => None,
            14 => {
                line += signed_varint(&mut bytes)?;
                for _ in 0..3 {
                    varint(&mut bytes)?;
                }
                Some(line)
            }
            13 => {
                line += signed_varint(&mut bytes)?;
                Some(line)
            }
            10..=12 => {
                line += (code - 10) as i64;
                bytes.next()?;
                bytes.next()?;
                Some(line)
            }
            _ => {
                bytes.next()?;
                Some(line)
            }
        };
        if offset < position + length {
            return line_here.and_then(|l| u32::try_from(l).ok());
        }
        position += length;
        while bytes.peek().is_some_and(|b| b & 0x80 == 0) {
            bytes.next(); // data this reader does not need
        }
    }
    None
}

fn varint(bytes: &mut impl Iterator<Item = u8>) -> Option<u64> {
    let mut value = 0u64;
    let mut shift = 0;
    loop {
        let byte = bytes.next()?;
        value |= ((byte & 63) as u64) << shift;
        if byte & 64 == 0 {
            return Some(value);
        }
        shift += 6;
        if shift > 60 {
            return None;
        }
    }
}

fn signed_varint(bytes: &mut impl Iterator<Item = u8>) -> Option<i64> {
    let value = varint(bytes)?;
    Some(if value & 1 != 0 { -((value >> 1) as i64) } else { (value >> 1) as i64 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_table_lines() {
        // Built by hand in 3.11's format: 2 units on the first line (short form, code 0),
        // 3 units one line down (one-line form, code 11), 1 unit with no location (code 15),
        // 2 units five lines down (no-column form, code 13, svarint 10 = +5).
        let table = [0x80 | 1, 0x00, 0x80 | (11 << 3) | 2, 4, 9, 0x80 | (15 << 3), 0x80 | (13 << 3) | 1, 10];
        let lines: Vec<Option<u32>> = (0..9).map(|offset| line_for(&table, 40, offset)).collect();
        assert_eq!(lines, [Some(40), Some(40), Some(41), Some(41), Some(41), None, Some(46), Some(46), None]);
    }

    #[test]
    fn long_form_and_negative_deltas() {
        // Long form (code 14): line delta -2 (svarint 5), end line, start and end column.
        let table = [0x80 | (14 << 3), 5, 0, 1, 2];
        assert_eq!(line_for(&table, 10, 0), Some(8));
    }

    #[test]
    fn reads_its_own_python() {
        // The real table of a real function: a python3.11 child prints its f.__code__ offsets
        // and lines via dis, and the decoder must agree on each instruction's line.
        let script = "import dis\n\
def f(a):\n    b = a + 1\n    if b:\n        return [b,\n                a]\n    return None\n\
print(f.__code__.co_firstlineno, f.__code__.co_linetable.hex())\n\
for i in dis.get_instructions(f):\n    print(i.offset // 2, i.positions.lineno)\n";
        let Ok(output) = std::process::Command::new("/usr/bin/python3.11").args(["-c", script]).output() else { return };
        let text = String::from_utf8_lossy(&output.stdout);
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap().split(' ').collect();
        let first: u32 = header[0].parse().unwrap();
        let table: Vec<u8> = (0..header[1].len()).step_by(2).map(|i| u8::from_str_radix(&header[1][i..i + 2], 16).unwrap()).collect();
        for line in lines {
            let (offset, expected) = line.split_once(' ').unwrap();
            let expected = expected.parse::<u32>().ok();
            assert_eq!(line_for(&table, first, offset.parse().unwrap()), expected, "offset {offset}");
        }
    }
}
