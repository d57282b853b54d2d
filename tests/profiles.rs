//! Profiles read by the ecosystem's own tools.

use memmon::{
    profiles::{heap_profile, pprof, since_attach},
    symbolize::Symbolizer,
    tracer::{Tracer, TracerOptions},
};
use memmon_tests::{Target, has_top_row, pprof_top, require_root};

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

    let inuse = pprof_top(&path, "inuse_space");
    assert!(has_top_row(&inuse, "104950B", "leak_exactly"), "exact live bytes: {inuse}");
    let objects = pprof_top(&path, "inuse_objects");
    assert!(has_top_row(&objects, "100", "leak_exactly"), "{objects}");
    let allocated = pprof_top(&path, "alloc_space");
    assert!(has_top_row(&allocated, "352000B", "churn_everything"), "{allocated}");
    std::fs::remove_file(&path).unwrap();
}
