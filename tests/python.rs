//! Python frames in stacks: CPython's own frames (3.11, 3.12, 3.13) read by the kernel walker,
//! interleaved with native ones at the eval loop, named by function, file and line.

use memmon::{
    snapshot::Snapshot,
    symbolize::{Frame, Symbolizer},
    tracer::{Tracer, TracerOptions},
};
use memmon_common::{Truncation, python::FRAME_TAG};
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

/// The Python frames of a stack (their addresses carry the Python frame tag), as (function, line).
fn python_frames(frames: &[Frame]) -> Vec<(String, Option<u32>)> {
    frames.iter().filter(|f| f.address & FRAME_TAG != 0).map(|f| (f.function.clone(), f.line)).collect()
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
    let first_python = frames.iter().position(|f| f.address & FRAME_TAG != 0).unwrap();
    assert!(first_python > 0, "{names:#?}");
    assert!(!frames.iter().any(|f| f.function == "_PyEval_EvalFrameDefault"), "{names:#?}");
    assert!(frames.iter().any(|f| f.function == "Py_RunMain"), "{names:#?}");
    assert_eq!(site.truncated, Truncation::Complete, "{names:#?}");
}

#[test]
fn debian_python_names_the_leaking_chain_with_lines() {
    leak_site_of("/usr/bin/python3.11");
}

fn pyenv(version: &str, binary: &str) -> Option<String> {
    let path = format!("/root/.pyenv/versions/{version}/bin/{binary}");
    if std::path::Path::new(&path).exists() {
        Some(path)
    } else {
        eprintln!("no pyenv Python {version} on this machine ({path}); not tested");
        None
    }
}

/// A second 3.11 build: the image's pyenv Python 3.11.7, whose interpreter is in
/// libpython3.11.so (with symbols), not in the executable.
#[test]
fn pyenv_python_with_a_shared_libpython_names_the_same_chain() {
    if let Some(python) = pyenv("3.11.7", "python3.11") {
        leak_site_of(&python);
    }
}

/// 3.12: shim frames end each eval call's chain, the GIL's last holder is the running thread,
/// and str headers are 8 bytes shorter — the same chain must come out.
#[test]
fn python_3_12_names_the_same_chain() {
    if let Some(python) = pyenv("3.12.1", "python3.12") {
        leak_site_of(&python);
    }
}

/// 3.13: every offset from the `_Py_DebugOffsets` the interpreter publishes.
#[test]
fn python_3_13_names_the_same_chain_from_its_published_offsets() {
    if let Some(python) = pyenv("3.13.0", "python3.13") {
        leak_site_of(&python);
    }
}

/// A version memmon does not walk: native stacks, exact bytes, and one line in status saying so.
#[test]
fn an_unsupported_python_gets_native_stacks_and_says_so() {
    let Some(python) = pyenv("3.10.13", "python3.10") else { return };
    require_root();
    let mut target = Target::start_program(&python, &["-c", SCRIPT]);
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    let description = tracer.targets()[0].python.describe().unwrap_or_default();
    assert!(
        description.starts_with("CPython 3.10 (libpython3.10.so") && description.contains("not supported (memmon walks CPython 3.11, 3.12 and 3.13), native stacks only"),
        "{description}"
    );
    target.run("go");
    let snapshot = tracer.snapshot().unwrap();
    let site = biggest(&snapshot);
    let frames = Symbolizer::new().frames(site.pid, &site.frames);
    assert_eq!((site.live_bytes(), site.live_count()), (100 * 50_001, 100));
    assert!(python_frames(&frames).is_empty(), "{frames:?}");
    assert!(frames.iter().any(|f| f.function == "_PyEval_EvalFrameDefault"), "{frames:?}");
}

/// Runs `script` (which prints "ready", then runs its work on the first line of stdin and
/// prints "done …") under memmon on Debian's python3.11 and returns each live site's Python
/// frames with its live bytes and blocks.
fn python_sites(script: &str) -> Vec<(Vec<(String, Option<u32>)>, u64, u64)> {
    python_sites_with_stacks(script).into_iter().map(|(frames, bytes, blocks, _)| (frames, bytes, blocks)).collect()
}

/// `python_sites`, with each site's whole stack described and its truncation.
fn python_sites_with_stacks(script: &str) -> Vec<(Vec<(String, Option<u32>)>, u64, u64, String)> {
    require_root();
    let mut target = Target::start_program("/usr/bin/python3.11", &["-c", script]);
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    target.run("go");
    let snapshot = tracer.snapshot().unwrap();
    let mut symbolizer = Symbolizer::new();
    snapshot
        .sites
        .iter()
        .filter(|s| s.live_count() > 0)
        .map(|s| {
            let frames = symbolizer.frames(s.pid, &s.frames);
            let all: Vec<&str> = frames.iter().map(|f| f.function.as_str()).collect();
            let stack = format!("{} [{}]", all.join(" ← "), s.truncated.name());
            (python_frames(&frames), s.live_bytes(), s.live_count(), stack)
        })
        .collect()
}

#[test]
fn each_thread_has_its_own_python_stack() {
    let script = "\
import sys, threading
kept = []
barrier = threading.Barrier(2)
def grow_a():
    for _ in range(50):
        kept.append(bytearray(30_000))
def worker_a():
    barrier.wait()
    grow_a()
def grow_b():
    for _ in range(50):
        kept.append(bytearray(40_000))
def worker_b():
    barrier.wait()
    grow_b()
print('ready', flush=True)
for line in sys.stdin:
    threads = [threading.Thread(target=worker_a), threading.Thread(target=worker_b)]
    for t in threads: t.start()
    for t in threads: t.join()
    print('done ' + line.strip(), flush=True)
";
    let sites = python_sites_with_stacks(script);
    for (grow, worker, other, size) in [("grow_a", "worker_a", "worker_b", 30_001u64), ("grow_b", "worker_b", "worker_a", 40_001)] {
        // The bytearrays (not the list `kept` growing, which also happens in grow_*).
        let (frames, bytes, blocks, stack) = sites
            .iter()
            .find(|(frames, bytes, blocks, _)| frames.first().is_some_and(|f| f.0 == grow) && *bytes == blocks * size)
            .unwrap_or_else(|| panic!("no site of {grow}'s bytearrays: {sites:#?}"));
        assert_eq!((*bytes, *blocks), (50 * size, 50), "{stack}");
        assert_eq!(frames[1].0, worker, "{stack}");
        assert!(frames.iter().any(|f| f.0 == "Thread.run"), "a thread's stack: {stack}");
        assert!(!frames.iter().any(|f| f.0 == other || f.0 == "<module>"), "not another thread's frames: {frames:?}");
    }
}

#[test]
fn code_objects_freed_and_recreated_at_the_same_address_never_mislabel_a_site() {
    // 300 generated functions, each called once to keep a bytearray whose size names it, then
    // dropped: their code objects are freed, and new ones reuse their memory.
    let script = "\
import sys
kept = []
def generate(i):
    namespace = {}
    exec(f'def made_{i}(n):\\n    return bytearray(n)\\n', namespace)
    kept.append(namespace[f'made_{i}'](10_000 + i))
print('ready', flush=True)
for line in sys.stdin:
    for i in range(300):
        generate(i)
    print('done ' + line.strip(), flush=True)
";
    let sites = python_sites(script);
    let mut named = 0;
    for (frames, bytes, blocks) in &sites {
        let Some(made) = frames.first().and_then(|f| f.0.strip_prefix("made_")) else { continue };
        let i: u64 = made.parse().unwrap();
        assert_eq!(*bytes, blocks * (10_001 + i), "made_{i} labels a site that is not its own: {frames:?}");
        named += 1;
    }
    // Every generated function's bytearray, by its size (10,001 + i bytes), named or not.
    let generated: u64 = sites
        .iter()
        .filter(|(_, bytes, blocks)| (10_001..=10_300).contains(&(bytes / blocks)) && bytes % blocks == 0)
        .map(|(_, _, blocks)| blocks)
        .sum();
    assert_eq!(generated, 300, "every generated function's block, named or not: {sites:#?}");
    eprintln!("{named} of the generated functions' sites named (the others' code objects were gone)");
}
