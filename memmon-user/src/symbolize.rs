//! Turning return addresses into function, module and file:line, with blazesym.
//!
//! One long-lived symbolizer (blazesym caches parsed ELF/DWARF per file) plus our own cache per
//! (pid, address): a site's frames are symbolized once, however many snapshots show them, and
//! stay readable after the process exits.

use std::{collections::HashMap, path::Path};

use blazesym::{
    Pid,
    symbolize::{
        Symbolized, Symbolizer as Blazesym,
        source::{Process, Source},
    },
};
use serde::Serialize;

/// One symbolized stack frame (the contract's `site.frames[]` element).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
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
}

pub struct Symbolizer {
    blazesym: Blazesym,
    cache: HashMap<(u32, u64), Frame>,
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
        Self { blazesym: Blazesym::new(), cache: HashMap::new(), hits: 0, misses: 0 }
    }

    /// Symbolizes a stack of return addresses captured in `pid`.
    pub fn frames(&mut self, pid: u32, addresses: &[u64]) -> Vec<Frame> {
        let missing: Vec<u64> = addresses
            .iter()
            .copied()
            .filter(|&a| !self.cache.contains_key(&(pid, a)))
            .collect();
        self.hits += (addresses.len() - missing.len()) as u64;
        self.misses += missing.len() as u64;
        if !missing.is_empty() {
            self.resolve(pid, &missing);
        }
        addresses.iter().map(|a| self.cache[&(pid, *a)].clone()).collect()
    }

    fn resolve(&mut self, pid: u32, addresses: &[u64]) {
        // Return addresses point after the call; the call instruction is one byte before, and
        // that is the line a person wants to see.
        let calls: Vec<u64> = addresses.iter().map(|a| a.saturating_sub(1)).collect();
        let source = Source::Process(Process::new(Pid::from(pid)));
        let resolved = self
            .blazesym
            .symbolize(&source, blazesym::symbolize::Input::AbsAddr(&calls))
            .unwrap_or_default();
        for (i, &address) in addresses.iter().enumerate() {
            let frame = match resolved.get(i) {
                Some(Symbolized::Sym(sym)) => {
                    let (file, line) = match &sym.code_info {
                        Some(info) => (
                            Some(info.to_path().display().to_string()),
                            info.line,
                        ),
                        None => (None, None),
                    };
                    Frame {
                        function: sym.name.to_string(),
                        module: sym.module.as_deref().map(module_name).unwrap_or_default(),
                        file,
                        line,
                        address,
                    }
                }
                _ => Frame {
                    function: format!("{address:#x}"),
                    module: String::new(),
                    file: None,
                    line: None,
                    address,
                },
            };
            self.cache.insert((pid, address), frame);
        }
    }
}

fn module_name(path: &std::ffi::OsStr) -> String {
    let path = Path::new(path);
    path.file_name().unwrap_or(path.as_os_str()).to_string_lossy().into_owned()
}
