//! CPython targets: finding the interpreter in a process, and naming the Python frames the
//! kernel walker (`memmon-ebpf/src/python.rs`) puts into stacks.
//!
//! - `detect`: which loaded object is the interpreter (it exports `_PyRuntime`, `Py_Version`
//!   and `_PyEval_EvalFrameDefault`, even when stripped), and its version, read from the
//!   process. CPython 3.11, 3.12 and 3.13 are walked; other versions get native stacks and say
//!   so in `status`.
//! - `offsets`: where each version keeps what is read (3.13's from `_Py_DebugOffsets`).
//! - `code`: code objects read from the process' memory — qualified name, file, and the line of
//!   an instruction from the location table (one format from 3.11 to 3.13).

pub mod code;
pub mod offsets;

use std::{fs::File, os::unix::fs::FileExt as _};

use anyhow::{Context as _, Result};
use memmon_common::python::PythonProcess;
use object::{Object as _, ObjectSymbol as _};

use crate::unwind::maps;

/// What a process' interpreter is, if it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interpreter {
    None,
    /// CPython whose frames memmon walks.
    Walked { process: PythonProcess, version: String, object: String },
    /// CPython of a version memmon does not walk: native stacks only, and why.
    Unsupported { version: String, object: String, reason: String },
}

impl Interpreter {
    /// One line for `status`, if the process is a Python one.
    pub fn describe(&self) -> Option<String> {
        match self {
            Interpreter::None => None,
            Interpreter::Walked { version, object, .. } => {
                Some(format!("CPython {version} ({object}): Python frames in stacks"))
            }
            Interpreter::Unsupported { version, object, reason } => Some(format!(
                "CPython {version} ({object}): not supported ({reason}), native stacks only"
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
        let (Some(runtime), Some(eval)) = (symbol("_PyRuntime"), symbol("_PyEval_EvalFrameDefault")) else {
            continue;
        };
        let object = mapping.name.rsplit('/').next().unwrap_or(&mapping.name).to_string();
        let Some(version) = symbol("Py_Version") else {
            // Before 3.11 (no Py_Version): the version the object's name says.
            let version = object.trim_start_matches("lib").trim_start_matches("python");
            let version = version.split(".so").next().unwrap_or_default().to_string();
            let reason = "memmon walks CPython 3.11, 3.12 and 3.13".to_string();
            return Ok(Interpreter::Unsupported { version, object, reason });
        };
        let segments = maps::load_segments(&data)?;
        let Some(bias) = maps::bias(mapping.start, mapping.offset, &segments) else { continue };
        let mut word = [0u8; 4];
        memory.read_exact_at(&mut word, version.0 + bias).context("reading Py_Version")?;
        let hex = u32::from_le_bytes(word);
        let version_text = format!("{}.{}.{}", hex >> 24, (hex >> 16) & 0xff, (hex >> 8) & 0xff);
        let mut runtime_start = vec![0u8; offsets::DEBUG_OFFSETS_BYTES];
        memory.read_exact_at(&mut runtime_start, runtime.0 + bias).context("reading _PyRuntime")?;
        let layout = match offsets::layout(hex, &runtime_start) {
            Ok(layout) => layout,
            Err(reason) => {
                return Ok(Interpreter::Unsupported { version: version_text, object, reason: format!("{reason:#}") });
            }
        };
        let process = PythonProcess {
            runtime: runtime.0 + bias,
            eval_start: eval.0 + bias,
            eval_end: eval.0 + bias + eval.1.max(1),
            version: hex,
            _pad: 0,
            layout,
        };
        return Ok(Interpreter::Walked { process, version: version_text, object });
    }
    Ok(Interpreter::None)
}
