//! The layout of a CPython version: measured constants for 3.11 and 3.12, and for 3.13 the
//! `_Py_DebugOffsets` the interpreter publishes at the start of `_PyRuntime` for out-of-process
//! tools.

use anyhow::{Result, bail, ensure};
use memmon_common::python::{Layout, NO_FIELD};

/// `_Py_DebugOffsets.cookie`.
const COOKIE: &[u8; 8] = b"xdebugpy";
/// Bytes of 3.13's `_Py_DebugOffsets` (73 words).
pub const DEBUG_OFFSETS_BYTES: usize = 73 * 8;

/// The layout of CPython `version` (`Py_Version`), given the first `DEBUG_OFFSETS_BYTES` of its
/// `_PyRuntime` (read from the process, or from the object file: they are static data).
pub fn layout(version: u32, runtime_start: &[u8]) -> Result<Layout> {
    let layout = match version >> 16 {
        0x030b => Layout::V3_11,
        0x030c => Layout::V3_12,
        0x030d => from_debug_offsets(version, runtime_start)?,
        _ => bail!("memmon walks CPython 3.11, 3.12 and 3.13"),
    };
    ensure!(layout.fits_windows(), "its frame or code object layout is outside what the walker reads");
    Ok(layout)
}

/// 3.13's `_Py_DebugOffsets` (`Include/internal/pycore_runtime.h`): sections of `u64` offsets in
/// a fixed order, each starting with its struct's size.
fn from_debug_offsets(version: u32, bytes: &[u8]) -> Result<Layout> {
    ensure!(bytes.len() >= DEBUG_OFFSETS_BYTES, "_PyRuntime too short for _Py_DebugOffsets");
    ensure!(&bytes[..8] == COOKIE, "_PyRuntime does not start with _Py_DebugOffsets");
    let word = |index: usize| u64::from_le_bytes(bytes[index * 8..index * 8 + 8].try_into().unwrap());
    ensure!(word(1) >> 16 == version as u64 >> 16, "_Py_DebugOffsets of version {:#x}, interpreter {version:#x}", word(1));
    ensure!(word(2) == 0, "a free-threaded build (no GIL to find the running thread by)");
    let offset = |index: usize| -> Result<u16> {
        let value = word(index);
        u16::try_from(value).map_err(|_| anyhow::anyhow!("offset {value} in _Py_DebugOffsets word {index}"))
    };
    let (runtime, interpreter, thread, frame, code, unicode) = (3, 6, 19, 28, 34, 67);
    let ascii_size = offset(unicode + 3)?;
    let layout = Layout {
        // interpreters.head, then its own GIL's last holder (`gil_runtime_state_holder` is an
        // offset in the interpreter state, not in the GIL's struct).
        tstate_chain: [offset(runtime + 2)?, offset(interpreter + 12)?, 0],
        tstate_chain_len: 2,
        tstate_native_thread_id: offset(thread + 6)?,
        tstate_cframe: NO_FIELD,
        current_frame: offset(thread + 4)?,
        frame_code: offset(frame + 2)?,
        frame_previous: offset(frame + 1)?,
        frame_instr: offset(frame + 3)?,
        frame_owner: offset(frame + 5)?,
        frame_is_entry: NO_FIELD,
        code_firstlineno: offset(code + 5)?,
        code_filename: offset(code + 1)?,
        code_qualname: offset(code + 3)?,
        code_linetable: offset(code + 4)?,
        // Not published. 3.13.0 keeps it 16 bytes before co_code_adaptive; trusted only when the
        // code object is laid out as in 3.13.0, otherwise frames not yet started are kept.
        code_firsttraceable: if offset(code + 9)? == 200 { 184 } else { NO_FIELD },
        code_adaptive: offset(code + 9)?,
        str_hash: offset(unicode + 2)? + 8,
        str_ascii_data: ascii_size,
        // PyCompactUnicodeObject: the ASCII header, then utf8_length and utf8.
        str_compact_data: ascii_size + 16,
        _pad: [0; 3],
    };
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

    /// The debug offsets of a real 3.13 (pyenv's), read from its object file's `.data`, give
    /// the layout gdb shows for its structs.
    #[test]
    fn pyenv_3_13_publishes_the_layout_gdb_shows() {
        let Ok(data) = std::fs::read("/root/.pyenv/versions/3.13.0/lib/libpython3.13.so.1.0") else { return };
        let elf = object::File::parse(&*data).unwrap();
        let runtime = elf.symbols().find(|s| s.name() == Ok("_PyRuntime")).unwrap();
        let section = elf.section_by_index(runtime.section_index().unwrap()).unwrap();
        let start = (runtime.address() - section.address()) as usize;
        let bytes = &section.data().unwrap()[start..start + DEBUG_OFFSETS_BYTES];
        let layout = layout(0x030d00f0, bytes).unwrap();
        assert_eq!((layout.tstate_chain, layout.tstate_chain_len), ([632, 7760, 0], 2));
        assert_eq!((layout.tstate_native_thread_id, layout.current_frame), (160, 72));
        assert_eq!((layout.frame_code, layout.frame_previous, layout.frame_instr, layout.frame_owner), (0, 8, 56, 70));
        assert_eq!(
            (layout.code_firstlineno, layout.code_filename, layout.code_qualname, layout.code_linetable),
            (68, 112, 128, 136)
        );
        assert_eq!((layout.code_firsttraceable, layout.code_adaptive), (184, 200));
        assert_eq!((layout.str_hash, layout.str_ascii_data, layout.str_compact_data), (24, 40, 56));
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let mut bytes = vec![0u8; DEBUG_OFFSETS_BYTES];
        assert!(layout(0x030d00f0, &bytes).unwrap_err().to_string().contains("does not start"));
        bytes[..8].copy_from_slice(COOKIE);
        bytes[8..16].copy_from_slice(&0x030d00f0u64.to_le_bytes());
        bytes[16] = 1;
        assert!(layout(0x030d00f0, &bytes).unwrap_err().to_string().contains("free-threaded"));
        assert!(layout(0x030a0df0, &bytes).unwrap_err().to_string().contains("3.11, 3.12 and 3.13"));
        assert!(layout(0x030e00f0, &bytes).is_err());
        assert!(Layout::V3_11.fits_windows() && Layout::V3_12.fits_windows());
    }
}
