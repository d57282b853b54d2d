//! Stacks of programs without frame pointers (ours built -fomit-frame-pointer, Debian's
//! glibc): walked from CFI in the kernel, checked frame for frame against gdb's `bt`, and
//! never a garbage frame where a walk cannot go on.

use memmon::{
    snapshot::{SiteSample, Snapshot},
    symbolize::Symbolizer,
    tracer::{Tracer, TracerOptions},
};
use memmon_common::Truncation;
use memmon_tests::{Target, build_shared_library, build_target, gdb_backtrace, require_root};

/// Whether a symbolized name is `function` (C++ names carry their parameters).
fn is_function(name: &str, function: &str) -> bool {
    name == function || name.strip_prefix(function).is_some_and(|rest| rest.starts_with('('))
}

/// The site whose stack contains `function`; panics with every stack seen otherwise.
fn site_through<'a>(snapshot: &'a Snapshot, symbolizer: &mut Symbolizer, function: &str) -> &'a SiteSample {
    let mut seen = Vec::new();
    for site in &snapshot.sites {
        let frames = symbolizer.frames(site.pid, &site.frames);
        if frames.iter().any(|f| is_function(&f.function, function)) {
            return site;
        }
        seen.push(frames.iter().map(|f| f.function.clone()).collect::<Vec<_>>().join(" ← "));
    }
    panic!("no stack through {function}; stacks: {seen:#?}")
}

fn names(symbolizer: &mut Symbolizer, site: &SiteSample) -> Vec<String> {
    symbolizer.frames(site.pid, &site.frames).into_iter().map(|f| f.function).collect()
}

/// Every frame of every site lies in a mapped object: never a bare address.
fn assert_no_garbage_frames(snapshot: &Snapshot, symbolizer: &mut Symbolizer) {
    for site in &snapshot.sites {
        for frame in symbolizer.frames(site.pid, &site.frames) {
            assert!(!frame.module.is_empty(), "a frame outside every object: {frame:?} in {:?}", site.frames);
        }
    }
}

#[test]
fn glibc_paths_match_gdb_frame_for_frame() {
    let (snapshot, mut symbolizer) = matches_gdb(
        "unwind-nofp",
        &[
            ("strdup", "copy_name", "malloc"),
            ("fopen", "open_config", "malloc"),
            ("getline", "leak_via_getline", "malloc"),
        ],
    );
    let strdup = site_through(&snapshot, &mut symbolizer, "copy_name");
    assert_eq!((strdup.live_bytes(), strdup.live_count()), (330, 10));
}

/// Runs `phases` of `target` under memmon (address randomization off), then checks that each
/// (phase, function, stop_at) site's stack equals gdb's machine frames at `stop_at` after
/// `function` is entered, and that it is complete down to `main` (or `start_thread`).
fn matches_gdb(target_name: &str, phases: &[(&str, &str, &str)]) -> (Snapshot, Symbolizer) {
    require_root();
    let binary = build_target(target_name);
    let mut target = Target::start_without_aslr(target_name);
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    for (phase, _, _) in phases {
        target.run(phase);
    }
    let snapshot = tracer.snapshot().unwrap();
    let mut symbolizer = Symbolizer::new();
    for (phase, function, stop_at) in phases {
        let expected = gdb_backtrace(&binary, &format!("{phase}\n"), function, stop_at);
        let Some(site) = snapshot.sites.iter().find(|s| s.frames.as_slice() == expected.as_slice()) else {
            let through = site_through(&snapshot, &mut symbolizer, function);
            let names = names(&mut symbolizer, through);
            panic!(
                "{phase}: no site has gdb's stack {expected:x?}; through {function}: {:x?} {names:?} ({})",
                through.frames,
                through.truncated.name()
            );
        };
        let names = names(&mut symbolizer, site);
        assert_eq!(site.truncated, Truncation::Complete, "{phase}: {names:?}");
        // Down to main, or for a thread to the start of the thread.
        assert!(names.iter().any(|n| n == "main" || n == "start_thread"), "{phase}: {names:?}");
    }
    assert_no_garbage_frames(&snapshot, &mut symbolizer);
    assert_eq!(snapshot.total_losses(), 0, "{:?}", snapshot.losses);
    (snapshot, symbolizer)
}

#[test]
fn libstdcxx_paths_match_gdb_frame_for_frame() {
    let (snapshot, mut symbolizer) =
        matches_gdb("unwind_cxx-nofp", &[("vector", "grow_vector", "_Znwm"), ("string", "fill_string", "_Znwm")]);
    let vector = site_through(&snapshot, &mut symbolizer, "grow_vector");
    assert_eq!((vector.live_bytes(), vector.live_count(), vector.stats.alloc_count), (4096, 1, 11));
    let string = site_through(&snapshot, &mut symbolizer, "fill_string");
    assert_eq!((string.live_bytes(), string.live_count()), (101, 1));
    let frames = symbolizer.frames(string.pid, &string.frames);
    assert!(frames[0].module.starts_with("libstdc++.so.6"), "allocated inside libstdc++: {frames:?}");
    assert!(frames[0].function.contains("basic_string"), "{frames:?}");
}

#[test]
fn rust_release_paths_match_gdb_frame_for_frame() {
    let (snapshot, mut symbolizer) = matches_gdb(
        "rust_leak-nofp",
        &[("leak", "rust_leak::rust_leak_boxes", "malloc"), ("string", "rust_leak::rust_leak_string", "malloc")],
    );
    let string = site_through(&snapshot, &mut symbolizer, "rust_leak::rust_leak_string");
    assert_eq!((string.live_bytes(), string.live_count()), (300, 1));
    let mut through: Vec<(u64, u64)> = Vec::new();
    for site in &snapshot.sites {
        if symbolizer.frames(site.pid, &site.frames).iter().any(|f| f.function == "rust_leak::rust_leak_boxes") {
            through.push((site.live_count(), site.live_bytes()));
        }
    }
    through.sort_unstable();
    assert_eq!(through, [(1, 3000), (20, 10_240)], "the 20 boxes share one stack, the Vec another");
}

#[test]
fn a_threads_stack_matches_gdb_and_ends_where_the_thread_does() {
    let (snapshot, mut symbolizer) = matches_gdb("unwind-nofp", &[("thread", "leak_in_thread", "malloc")]);
    let site = site_through(&snapshot, &mut symbolizer, "leak_in_thread");
    assert_eq!((site.live_bytes(), site.live_count()), (4321, 1));
    let names = names(&mut symbolizer, site);
    assert_eq!(&names[..2], ["leak_in_thread", "thread_body"], "{names:?}");
    assert!(names.iter().any(|n| n == "start_thread"), "{names:?}");
    assert!(!names.iter().any(|n| n == "main"), "a thread's own stack: {names:?}");
}

#[test]
fn unwalkable_stacks_are_truncated_never_garbage() {
    require_root();
    let mut target = Target::start("unwind-nofp");
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    target.run("jit");
    target.run("corrupt");
    let snapshot = tracer.snapshot().unwrap();
    let mut symbolizer = Symbolizer::new();
    for (function, bytes) in [("alloc_from_jit", 777), ("corrupt_and_alloc", 555)] {
        let site = site_through(&snapshot, &mut symbolizer, function);
        assert_eq!(names(&mut symbolizer, site), [function], "the walk stops at the frame it cannot leave");
        assert_eq!(site.truncated, Truncation::OutsideObjects);
        assert_eq!((site.live_bytes(), site.live_count()), (bytes, 1));
    }
    assert_no_garbage_frames(&snapshot, &mut symbolizer);
}

/// Builds a copy of `unwind-nofp` stripped of every symbol, its debug information in a
/// separate file: (stripped binary, debug file as /usr/lib/debug/.build-id/xx/rest.debug
/// would hold it, build id).
fn stripped_copy() -> (std::path::PathBuf, std::path::PathBuf, String) {
    let binary = build_target("unwind-nofp");
    let dir = binary.parent().unwrap().join("stripped");
    std::fs::create_dir_all(&dir).unwrap();
    let stripped = dir.join("unwind-stripped");
    let debug = dir.join("unwind-stripped.debug");
    let run = |args: &[&std::ffi::OsStr]| {
        let status = std::process::Command::new("objcopy").args(args).status().expect("objcopy (binutils)");
        assert!(status.success(), "objcopy {args:?}");
    };
    run(&["--only-keep-debug".as_ref(), binary.as_os_str(), debug.as_os_str()]);
    run(&["--strip-all".as_ref(), binary.as_os_str(), stripped.as_os_str()]);
    let link = format!("--add-gnu-debuglink={}", debug.display());
    run(&[link.as_ref(), stripped.as_os_str()]);
    let notes = std::process::Command::new("readelf").args(["-n"]).arg(&stripped).output().unwrap();
    let notes = String::from_utf8_lossy(&notes.stdout);
    let build_id = notes.lines().find_map(|l| l.trim().strip_prefix("Build ID: ")).expect("a build id").to_string();
    (stripped, debug, build_id)
}

/// Removes a file when dropped (a debug file installed for one test).
struct Installed(std::path::PathBuf);

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn stripped_binaries_get_names_from_build_id_debug_files_and_module_offsets_without() {
    require_root();
    let (stripped, debug, build_id) = stripped_copy();
    let mut target = Target::start_program(stripped.to_str().unwrap(), &[]);
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    target.run("strdup");
    let snapshot = tracer.snapshot().unwrap();
    let leak = |symbolizer: &mut Symbolizer| {
        let site = snapshot.sites.iter().find(|s| s.live_count() == 10 && s.live_bytes() == 330).expect("the strdup site");
        assert_eq!(site.truncated, Truncation::Complete);
        symbolizer.frames(site.pid, &site.frames)
    };
    // No debug file where a debugger looks: the executable's own frames are module+ELF address.
    let hidden = debug.with_extension("hidden");
    std::fs::rename(&debug, &hidden).unwrap();
    let frames = leak(&mut Symbolizer::new());
    let own: Vec<&str> = frames.iter().filter(|f| f.module == "unwind-stripped").map(|f| f.function.as_str()).collect();
    assert!(own.len() >= 3, "{frames:?}");
    for name in &own {
        let address = name.strip_prefix("unwind-stripped+0x").unwrap_or_else(|| panic!("{name} in {frames:?}"));
        u64::from_str_radix(address, 16).unwrap();
    }
    // The debug file where debuggers look for it by build id: names, files and lines.
    let (head, rest) = build_id.split_at(2);
    let by_build_id = std::path::PathBuf::from(format!("/usr/lib/debug/.build-id/{head}/{rest}.debug"));
    std::fs::create_dir_all(by_build_id.parent().unwrap()).unwrap();
    std::fs::rename(&hidden, &by_build_id).unwrap();
    let _installed = Installed(by_build_id);
    let frames = leak(&mut Symbolizer::new());
    let names: Vec<&str> = frames.iter().map(|f| f.function.as_str()).collect();
    assert_eq!(&names[1..4], ["copy_name", "leak_via_strdup", "main"], "{frames:?}");
    assert!(frames[1].file.as_deref().is_some_and(|f| f.ends_with("unwind.c")), "{frames:?}");
}

#[test]
fn code_loaded_after_attach_is_walked_once_its_table_is_built() {
    require_root();
    let library = build_shared_library("plugin");
    let mut target = Target::start("dlopen-nofp");
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    assert!(!tracer.unwind_stats().detail.iter().any(|o| o.object.ends_with("libplugin.so")));
    target.run(&format!("load {}", library.display()));
    // What the agent does every 250 ms: the kernel counted an executable mmap.
    tracer.refresh_code_mappings().unwrap();
    target.run("alloc");
    let snapshot = tracer.snapshot().unwrap();
    let mut symbolizer = Symbolizer::new();
    let site = snapshot.sites.iter().find(|s| s.live_bytes() == 4242).expect("the plugin's block");
    let names = names(&mut symbolizer, site);
    assert_eq!(
        names,
        ["plugin_allocate", "plugin_entry", "call_plugin", "main", "__libc_start_call_main", "__libc_start_main_impl", "_start"]
    );
    assert_eq!(site.truncated, Truncation::Complete);
    let stats = tracer.unwind_stats();
    let plugin = stats.detail.iter().find(|o| o.object.ends_with("libplugin.so")).expect("the plugin's table");
    assert!(plugin.rows > 0 && plugin.missing.is_none(), "{plugin:?}");
}
