//! CPython targets: finding the interpreter in a process, and naming the Python frames the
//! kernel walker (`memmon-ebpf/src/python.rs`) puts into stacks.
//!
//! - `detect`: which loaded object is the interpreter (it exports `_PyRuntime`, `Py_Version`
//!   and `_PyEval_EvalFrameDefault`, even when stripped), and its version, read from the
//!   process. CPython 3.11 is walked; other versions get native stacks and say so in `status`.
//! - `code`: code objects read from the process' memory — qualified name, file, and the line of
//!   an instruction from the 3.11 location table.

pub mod code;

use std::{fs::File, os::unix::fs::FileExt as _};

use anyhow::{Context as _, Result};
use memmon_common::python::{PythonProcess, v3_11};
use object::{Object as _, ObjectSymbol as _};

use crate::unwind::maps;

/// What a process' interpreter is, if it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interpreter {
    None,
    /// CPython whose frames memmon walks.
    Walked { process: PythonProcess, version: String, object: String },
    /// CPython of a version memmon does not walk: native stacks only.
    Unsupported { version: String, object: String },
}

impl Interpreter {
    /// One line for `status`, if the process is a Python one.
    pub fn describe(&self) -> Option<String> {
        match self {
            Interpreter::None => None,
            Interpreter::Walked { version, object, .. } => {
                Some(format!("CPython {version} ({object}): Python frames in stacks"))
            }
            Interpreter::Unsupported { version, object } => Some(format!(
                "CPython {version} ({object}): not supported (memmon walks 3.11), native stacks only"
            )),
        }
    }
}

/// Finds the interpreter among `pid`'s code mappings.
pub fn detect(pid: u32) -> Result<Interpreter> {
    let memory = File::open(format!("/proc/{pid}/mem")).with_context(|| format!("opening /proc/{pid}/mem"))?;
    for mapping in maps::code_mappings(pid)? {
        let Ok(file) = File::open(&mapping.path) else { continue };
        // SAFETY: read-only mapping of an object file, for its symbols and program headers.
        let Ok(data) = (unsafe { memmap2::Mmap::map(&file) }) else { continue };
        let Ok(elf) = object::File::parse(&*data) else { continue };
        let symbol = |name: &str| {
            elf.dynamic_symbols().find(|s| s.name() == Ok(name)).map(|s| (s.address(), s.size()))
        };
        let (Some(runtime), Some(version), Some(eval)) =
            (symbol("_PyRuntime"), symbol("Py_Version"), symbol("_PyEval_EvalFrameDefault"))
        else {
            continue;
        };
        let segments = maps::load_segments(&data)?;
        let Some(bias) = maps::bias(mapping.start, mapping.offset, &segments) else { continue };
        let mut word = [0u8; 4];
        memory.read_exact_at(&mut word, version.0 + bias).context("reading Py_Version")?;
        let hex = u32::from_le_bytes(word);
        let version_text = format!("{}.{}.{}", hex >> 24, (hex >> 16) & 0xff, (hex >> 8) & 0xff);
        let object = mapping.name.rsplit('/').next().unwrap_or(&mapping.name).to_string();
        if hex >> 16 != 0x030b {
            return Ok(Interpreter::Unsupported { version: version_text, object });
        }
        let process = PythonProcess {
            tstate_current: runtime.0 + bias + v3_11::RUNTIME_TSTATE_CURRENT,
            eval_start: eval.0 + bias,
            eval_end: eval.0 + bias + eval.1.max(1),
            version: hex,
            _pad: 0,
        };
        return Ok(Interpreter::Walked { process, version: version_text, object });
    }
    Ok(Interpreter::None)
}
