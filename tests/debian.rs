//! Stacks on Debian's own packages, built as the distribution builds them: no frame pointers,
//! stripped or not. Only the CFI walk can find their callers.

use memmon::{
    snapshot::{SiteSample, Snapshot},
    symbolize::{Frame, Symbolizer},
    tracer::{Tracer, TracerOptions},
};
use memmon_common::Truncation;
use memmon_tests::{RedisServer, Target, require_root};

fn assert_no_garbage_frames(snapshot: &Snapshot, symbolizer: &mut Symbolizer) {
    for site in &snapshot.sites {
        for frame in symbolizer.frames(site.pid, &site.frames) {
            assert!(!frame.module.is_empty(), "a frame outside every object: {frame:?} in {:x?}", site.frames);
        }
    }
}

fn top_live<'a>(snapshot: &'a Snapshot, count: usize) -> Vec<&'a SiteSample> {
    let mut sites: Vec<&SiteSample> = snapshot.sites.iter().filter(|s| s.live_bytes() > 0).collect();
    sites.sort_by_key(|s| std::cmp::Reverse(s.live_bytes()));
    sites.truncate(count);
    sites
}

fn describe(frames: &[Frame]) -> String {
    frames.iter().map(|f| f.function.as_str()).collect::<Vec<_>>().join(" ← ")
}

#[test]
fn redis_set_path_is_named_down_to_main() {
    require_root();
    let redis = RedisServer::start();
    let mut tracer = Tracer::attach(&[redis.pid()], TracerOptions::default()).unwrap();
    redis.benchmark(&["-t", "set", "-n", "3000", "-r", "100000000", "-c", "2"]);
    let snapshot = tracer.snapshot().unwrap();
    let mut symbolizer = Symbolizer::new();
    let stacks: Vec<Vec<Frame>> =
        top_live(&snapshot, 10).into_iter().map(|s| symbolizer.frames(s.pid, &s.frames)).collect();
    let named = |f: &[Frame], name: &str| f.iter().any(|frame| frame.function == name);
    let set_path = snapshot.sites.iter().find(|site| {
        let frames = symbolizer.frames(site.pid, &site.frames);
        ["setCommand", "call", "processCommand", "main"].iter().all(|name| named(&frames, name))
    });
    let set_path = set_path.unwrap_or_else(|| {
        panic!("no stack names SET's path; top stacks:\n{}", stacks.iter().map(|s| describe(s)).collect::<Vec<_>>().join("\n"))
    });
    assert_eq!(set_path.truncated, Truncation::Complete);
    // The keyspace the SETs built dominates the live heap: its top sites are SET's.
    let top_set_sites = stacks.iter().filter(|frames| named(frames, "setCommand") && named(frames, "main")).count();
    assert!(top_set_sites >= 2, "top stacks:\n{}", stacks.iter().map(|s| describe(s)).collect::<Vec<_>>().join("\n"));
    assert_no_garbage_frames(&snapshot, &mut symbolizer);
}

#[test]
fn python_path_reaches_the_bottom_through_its_python_frames() {
    require_root();
    let script = "\
import sys
kept = []
def leak():
    for i in range(200):
        kept.append(bytearray(100_000))
print('ready', flush=True)
for line in sys.stdin:
    leak()
    print('done ' + line.strip(), flush=True)
";
    let mut python = Target::start_program("/usr/bin/python3.11", &["-c", script]);
    let mut tracer = Tracer::attach(&[python.pid()], TracerOptions::default()).unwrap();
    python.run("leak");
    let snapshot = tracer.snapshot().unwrap();
    let mut symbolizer = Symbolizer::new();
    let site = top_live(&snapshot, 1)[0];
    let frames = symbolizer.frames(site.pid, &site.frames);
    assert!(site.live_bytes() >= 200 * 100_000 && site.live_count() >= 200, "{} bytes: {}", site.live_bytes(), describe(&frames));
    assert_eq!(site.truncated, Truncation::Complete, "{}", describe(&frames));
    // The eval loop's native frames are replaced by the Python frames they run.
    for name in ["leak", "<module>", "Py_RunMain", "__libc_start_call_main"] {
        assert!(frames.iter().any(|f| f.function == name), "no {name} in {}", describe(&frames));
    }
    assert_no_garbage_frames(&snapshot, &mut symbolizer);
}
