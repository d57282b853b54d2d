//! Profiles read by the ecosystem's own tools.

use std::process::Command;

use memmon::{
    profiles::{heap_profile, pprof, since_attach},
    symbolize::Symbolizer,
    tracer::{Tracer, TracerOptions},
};
use memmon_tests::{Target, require_root};

#[test]
fn go_tool_pprof_reads_exact_bytes_of_the_leaking_function() {
    require_root();
    let mut target = Target::start("ground_truth");
    let mut tracer = Tracer::attach(&[target.pid()], TracerOptions::default()).unwrap();
    target.run("leak");
    target.run("churn");
    let snapshot = tracer.snapshot().unwrap();
    let profile = heap_profile(&since_attach(&snapshot), &mut Symbolizer::new(), 0, 0, Vec::new());
    // Mappings carry the objects' build ids (the test target and libc have GNU build ids).
    let target_mapping = profile.mappings.iter().find(|m| m.path.ends_with("/ground_truth")).expect("target mapped");
    assert_eq!(target_mapping.build_id.len(), 40, "a SHA-1 build id in hex: {target_mapping:?}");
    assert!(profile.samples.iter().flat_map(|s| &s.frames).any(|f| f.mapping.is_some()));
    let path = std::env::temp_dir().join(format!("memmon-test-{}.pb.gz", std::process::id()));
    std::fs::write(&path, pprof::encode_gzipped(&profile).unwrap()).unwrap();

    let top = |index: &str| {
        // Bytes in plain bytes, so that the comparison is exact; counts as they are.
        let unit = if index.ends_with("space") { "-unit=B" } else { "-unit=minimum" };
        let output = Command::new("go")
            .args(["tool", "pprof", "-top", unit, &format!("-sample_index={index}")])
            .arg(&path)
            .env("HOME", std::env::temp_dir())
            .output()
            .expect("go (Debian package golang-go; cargo xtask setup installs it)");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let inuse = top("inuse_space");
    let leak = inuse.lines().find(|l| l.trim_end().ends_with(" leak_exactly")).unwrap_or_else(|| panic!("{inuse}"));
    assert!(leak.trim_start().starts_with("104950B "), "exact live bytes: {inuse}");
    let objects = top("inuse_objects");
    assert!(objects.lines().any(|l| l.trim_start().starts_with("100 ") && l.trim_end().ends_with(" leak_exactly")), "{objects}");
    let allocated = top("alloc_space");
    assert!(allocated.lines().any(|l| l.trim_start().starts_with("352000B ") && l.trim_end().ends_with(" churn_everything")), "{allocated}");
    std::fs::remove_file(&path).unwrap();
}
