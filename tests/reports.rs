//! `memmon report` on a real profile of a target with known allocations: every view shows the
//! exact numbers, and headless Chromium draws the leaking function's frame in the flame graph.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use memmon::{
    profiles::{
        heap_profile,
        meta::{ProfileMeta, State, TargetMeta, TimelinePoint},
        pprof, since_attach,
    },
    symbolize::Symbolizer,
    tracer::{Tracer, TracerOptions},
};
use memmon_tests::{Target, memmon_binary, require_root, workspace_root};

const LEAK_BYTES: &str = "104950";
const CHURN_BYTES: u64 = 352_000;
/// The timeline written into the profile's metadata: RSS peaks at 7 MiB in the middle.
const PEAK_RSS: u64 = 7 * 1024 * 1024;

/// This test's files, under the workspace's target/: emptied when the test process starts and
/// left behind after it, to look at when a test fails (the SVG, Chromium's DOM).
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = workspace_root().join("target/test-reports");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

/// The ground-truth target's profile after its `leak` and `churn` phases, written once per test
/// process with memmon metadata (state, target, a memory timeline).
fn profile() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        require_root();
        let mut target = Target::start("ground_truth");
        let pid = target.pid();
        let mut tracer = Tracer::attach(&[pid], TracerOptions::default()).unwrap();
        target.run("leak");
        target.run("churn");
        let snapshot = tracer.snapshot().unwrap();
        let point = |seconds, rss_bytes, heap_live_bytes| TimelinePoint { pid, seconds, rss_bytes, heap_live_bytes };
        let meta = ProfileMeta {
            id: "reports-test".into(),
            state: State::Finished,
            reason: "phases done".into(),
            targets: vec![TargetMeta { pid, comm: "ground_truth".into() }],
            timeline: vec![point(0.0, 5_000_000, 0), point(1.0, PEAK_RSS, 104_950), point(2.0, 6_000_000, 104_950)],
            events_lost: Default::default(),
            execs: Vec::new(),
        };
        let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
        let profile =
            heap_profile(&since_attach(&snapshot), &mut Symbolizer::new(), start, 2_000_000_000, meta.to_comments());
        let path = scratch().join("ground_truth.pb.gz");
        std::fs::write(&path, pprof::encode_gzipped(&profile).unwrap()).unwrap();
        path
    })
}

/// Runs `memmon report ARGS`; returns (exit code, stdout, stderr).
fn report(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(memmon_binary()).arg("report").args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `report` that must succeed; its stdout.
fn view(args: &[&str]) -> String {
    let (code, stdout, stderr) = report(args);
    assert_eq!(code, 0, "memmon report {args:?} failed: {stderr}");
    stdout
}

/// A table's rows by allocating function, as their whitespace-separated fields:
/// [live, unit, live bytes, blocks, allocated, unit, alloc bytes, allocs, module, function, …].
fn table_rows<'a>(table: &'a str, function: &str) -> Vec<Vec<&'a str>> {
    table.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).filter(|f| f.get(9) == Some(&function)).collect()
}

#[test]
fn table_shows_exact_bytes_per_site() {
    let file = profile().to_str().unwrap();
    let live = view(&["table", file]);
    let first_row = live.lines().nth(3).unwrap_or_default();
    assert!(first_row.contains(" leak_exactly  ("), "the largest live site comes first: {live}");
    let leak = table_rows(&live, "leak_exactly");
    assert_eq!(leak.len(), 1, "{live}");
    assert_eq!(
        leak[0][2..10],
        [LEAK_BYTES, "100", "102.5", "KiB", LEAK_BYTES, "100", "ground_truth", "leak_exactly"],
        "{live}"
    );
    assert!(leak[0].iter().any(|f| f.contains("ground_truth.c:")), "file:line of the call: {live}");
    assert!(table_rows(&live, "churn_everything").is_empty(), "churn holds nothing live: {live}");

    let allocated = view(&["table", file, "--sample", "alloc"]);
    let churn = table_rows(&allocated, "churn_everything");
    assert_eq!(churn.len(), 5, "malloc, calloc, malloc, realloc, realloc: five sites: {allocated}");
    let bytes: u64 = churn.iter().map(|row| row[6].parse::<u64>().unwrap()).sum();
    let count: u64 = churn.iter().map(|row| row[7].parse::<u64>().unwrap()).sum();
    assert_eq!((bytes, count), (CHURN_BYTES, 5000), "{allocated}");
    assert!(churn.iter().all(|row| row[2] == "0"), "{allocated}");
    assert!(
        allocated.lines().nth(3).unwrap().contains(" churn_everything  ("),
        "128000 bytes of realloc first: {allocated}"
    );

    let top = view(&["table", file, "--sample", "alloc", "--top", "2"]);
    assert_eq!(top.lines().count(), 6, "title, totals, header, 2 rows, what was left out: {top}");
    assert!(top.lines().last().unwrap().contains("more sites with"), "{top}");
}

#[test]
fn tree_shows_self_and_inclusive_bytes() {
    let file = profile().to_str().unwrap();
    let tree = view(&["tree", file]);
    // [inclusive, unit, bytes, %, self, unit, bytes, %, connectors…, function]
    let node = |tree: &str, function: &str| -> Vec<u64> {
        let line = tree
            .lines()
            .find(|l| l.ends_with(&format!(" {function}")))
            .unwrap_or_else(|| panic!("no {function}: {tree}"));
        let fields: Vec<&str> = line.split_whitespace().collect();
        vec![fields[2].parse().unwrap(), fields[6].parse().unwrap()]
    };
    assert_eq!(node(&tree, "leak_exactly"), [104_950, 104_950], "{tree}");
    let main = node(&tree, "main");
    assert!(main[0] >= 104_950 && main[1] == 0, "{tree}");
    assert!(tree.contains("total 102.5 KiB (104950 bytes)"), "{tree}");
    let allocated = view(&["tree", file, "--sample", "alloc", "--min-percent", "0"]);
    assert_eq!(node(&allocated, "churn_everything"), [CHURN_BYTES, CHURN_BYTES], "{allocated}");
}

#[test]
fn summary_totals_peaks_and_top_functions_are_exact() {
    let file = profile().to_str().unwrap();
    let summary = view(&["summary", file]);
    for expected in [
        "memmon profile reports-test\n",
        "  state: finished (phases done)\n",
        " (ground_truth)\n",
        "  allocated during window: 446.2 KiB (456950 bytes) in 5100 allocations\n",
        "  live at end of window: 102.5 KiB (104950 bytes) in 100 blocks\n",
        "  peak over the window: RSS 7.0 MiB (7340032 bytes), live heap 102.5 KiB (104950 bytes)\n",
        ", 2.0 s\n",
        "  events lost: none\n",
    ] {
        assert!(summary.contains(expected), "{expected:?} in {summary}");
    }
    let row = |function: &str, after: &str| {
        let section = summary.split(after).nth(1).unwrap();
        section
            .lines()
            .find(|l| l.contains(&format!("  {function}  (")))
            .map(|l| l.split_whitespace().take(4).collect::<Vec<_>>())
    };
    assert_eq!(row("leak_exactly", "by live bytes"), Some(vec!["102.5", "KiB", LEAK_BYTES, "100"]), "{summary}");
    assert_eq!(
        row("churn_everything", "by bytes allocated"),
        Some(vec!["343.8", "KiB", "352000", "5000"]),
        "{summary}"
    );
    let library = summary.split("bytes by library").nth(1).unwrap();
    assert!(
        library.lines().any(|l| l.ends_with("  ground_truth") && l.contains(&format!(" {LEAK_BYTES} "))),
        "{summary}"
    );
}

#[test]
fn files_that_are_not_profiles_are_one_line_errors() {
    let missing = scratch().join("missing.pb.gz");
    let (code, stdout, stderr) = report(&["summary", missing.to_str().unwrap()]);
    assert_eq!((code, stdout.as_str()), (1, ""));
    assert_eq!(
        stderr,
        format!("memmon: error: cannot read profile {}: No such file or directory (os error 2)\n", missing.display())
    );
    let text = scratch().join("notes.txt");
    std::fs::write(&text, "not a profile\n").unwrap();
    let (code, _, stderr) = report(&["table", text.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    let expected =
        format!("memmon: error: cannot read profile {}: not a pprof profile (profile.proto): ", text.display());
    assert!(stderr.starts_with(&expected) && stderr.lines().count() == 1, "{stderr}");
}

/// Runs in the SVG after inferno's own `init` (its onload, which lays out labels in a 0 ms
/// timer): finds the leaking function's frame, measures its rectangle, reads its label as drawn,
/// and asks the browser which element is at the rectangle's centre. Test-only: injected into a
/// copy of the SVG, never part of memmon's output.
const PROBE: &str = r##"<script type="text/ecmascript"><![CDATA[
window.addEventListener("load", function () {
  setTimeout(function () {
    var result = { found: false };
    var frames = document.querySelectorAll("#frames > g");
    for (var i = 0; i < frames.length; i++) {
      var g = frames[i];
      if (g.querySelector("title").textContent.indexOf("leak_exactly ") !== 0) continue;
      var rect = g.querySelector("rect");
      var box = rect.getBBox();
      var screen = rect.getBoundingClientRect();
      var hit = document.elementFromPoint(screen.left + screen.width / 2, screen.top + screen.height / 2);
      result = { found: true, width: box.width, height: box.height,
                 label: g.querySelector("text").textContent, hit: hit !== null && g.contains(hit) };
    }
    var out = document.createElementNS("http://www.w3.org/2000/svg", "text");
    out.setAttribute("id", "memmon-probe");
    out.textContent = JSON.stringify(result);
    document.documentElement.appendChild(out);
  }, 200);
});
]]></script>"##;

#[test]
fn chromium_draws_the_leaking_functions_frame() {
    let svg_path = scratch().join("flame.svg");
    view(&["flamegraph", profile().to_str().unwrap(), "--output", svg_path.to_str().unwrap()]);
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.contains("memmon profile reports-test: live bytes at end of window (inuse_space)"), "{svg}");
    assert!(svg.contains("function search(") && svg.contains("function zoom("), "inferno's interactive script");
    let end = svg.rfind("</svg>").expect("an SVG");
    let probed = scratch().join("flame-probed.svg");
    std::fs::write(&probed, format!("{}{PROBE}{}", &svg[..end], &svg[end..])).unwrap();

    let dom = headless_chromium_dom(&probed);
    let json = dom
        .split("id=\"memmon-probe\">")
        .nth(1)
        .and_then(|rest| rest.split("</text>").next())
        .unwrap_or_else(|| panic!("the probe did not run; Chromium's DOM: {}", &dom[..dom.len().min(2000)]));
    let json = json.replace("&quot;", "\"").replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
    let result: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(result["found"], true, "no leak_exactly frame: {result}");
    let width = result["width"].as_f64().unwrap();
    assert!(width > 100.0, "the frame holds all live bytes and should span most of the graph: {result}");
    assert_eq!(result["height"].as_f64(), Some(15.0), "{result}");
    // inferno's script rewrites each label to what fits the frame's drawn width ("" or "lea..").
    assert_eq!(result["label"].as_str().map(str::trim), Some("leak_exactly"), "the whole name fits: {result}");
    assert_eq!(result["hit"], true, "the frame is what the browser shows at its centre: {result}");
}

/// The DOM of `svg` after Chromium loaded it and ran its scripts.
fn headless_chromium_dom(svg: &Path) -> String {
    let profile_dir = scratch().join("chromium-profile");
    // Into a file, not a pipe: nobody reads a pipe while we wait, and a full one would block it.
    let dom_path = scratch().join("chromium-dom.txt");
    let mut child = Command::new("/usr/bin/chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile_dir.display()))
        .args(["--window-size=1280,1024", "--virtual-time-budget=5000", "--dump-dom"])
        .arg(format!("file://{}", svg.display()))
        .stdout(std::fs::File::create(&dom_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium (Debian package chromium; cargo xtask setup installs it)");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("headless Chromium did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "chromium failed: {status}");
    std::fs::read_to_string(&dom_path).unwrap()
}
