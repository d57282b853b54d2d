//! Python frames in stacks: CPython 3.11's own frames read by the kernel walker, interleaved
//! with native ones at the eval loop, named by function, file and line.

use memmon::{
    snapshot::Snapshot,
    symbolize::{Frame, Symbolizer},
    tracer::{Tracer, TracerOptions},
};
use memmon_common::Truncation;
use memmon_tests::{Target, require_root};

/// A chain of three functions, the innermost keeping bytearrays of 50,000 bytes (CPython asks
/// realloc for 50,001: the buffer and its NUL).
const SCRIPT: &str = "\
import sys
kept = []
def keep_record(n):
    kept.append(bytearray(n))
def audit(n):
    keep_record(n)
def handle(n):
    for _ in range(100):
        audit(n)
print('ready', flush=True)
for line in sys.stdin:
    handle(50_000)
    print('done ' + line.strip(), flush=True)
";

fn python_frames(frames: &[Frame]) -> Vec<(String, Option<u32>)> {
    frames.iter().filter(|f| f.module == "<string>").map(|f| (f.function.clone(), f.line)).collect()
}

fn biggest(snapshot: &Snapshot) -> &memmon::snapshot::SiteSample {
    snapshot.sites.iter().max_by_key(|s| s.live_bytes()).expect("a site")
}

fn leak_site_of(python: &str) {
    require_root();
    let mut target = Target::start_program(python, &["-c", SCRIPT]);
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    let description = tracer.targets()[0].python.describe().unwrap_or_default();
    assert!(description.contains("Python frames"), "{description}");
    target.run("go");
    let snapshot = tracer.snapshot().unwrap();
    let mut symbolizer = Symbolizer::new();
    let site = biggest(&snapshot);
    let frames = symbolizer.frames(site.pid, &site.frames);
    let names: Vec<String> = frames.iter().map(|f| format!("{} ({})", f.function, f.location())).collect();
    assert_eq!((site.live_bytes(), site.live_count()), (100 * 50_001, 100), "{names:#?}");
    assert_eq!(
        python_frames(&frames),
        [
            ("keep_record".to_string(), Some(4)),
            ("audit".to_string(), Some(6)),
            ("handle".to_string(), Some(9)),
            ("<module>".to_string(), Some(12)),
        ],
        "{names:#?}"
    );
    // Native frames above the Python ones (the bytearray's allocation) and below (the
    // interpreter's main), and no eval-loop frame left in between.
    let first_python = frames.iter().position(|f| f.module == "<string>").unwrap();
    assert!(first_python > 0, "{names:#?}");
    assert!(!frames.iter().any(|f| f.function == "_PyEval_EvalFrameDefault"), "{names:#?}");
    assert!(frames.iter().any(|f| f.function == "Py_RunMain"), "{names:#?}");
    assert_eq!(site.truncated, Truncation::Complete, "{names:#?}");
}

#[test]
fn debian_python_names_the_leaking_chain_with_lines() {
    leak_site_of("/usr/bin/python3.11");
}

/// A second 3.11 build: the image's pyenv Python 3.11.7, whose interpreter is in
/// libpython3.11.so (with symbols), not in the executable.
#[test]
fn pyenv_python_with_a_shared_libpython_names_the_same_chain() {
    const PYENV: &str = "/root/.pyenv/versions/3.11.7/bin/python3.11";
    if !std::path::Path::new(PYENV).exists() {
        eprintln!("no pyenv Python 3.11.7 on this machine ({PYENV}); Debian's python3.11 is tested above");
        return;
    }
    leak_site_of(PYENV);
}
