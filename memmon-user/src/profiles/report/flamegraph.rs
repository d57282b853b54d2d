//! `memmon report flamegraph`: an interactive SVG flame graph (inferno), one tower per call
//! path, widths by the chosen measure.
//!
//! Frames are named by function alone: inferno merges equal names at each level, and a function
//! should be one frame whatever line called the next one. The place that matters — where the
//! allocating function called the allocator — is drawn as one more frame on top of it, named
//! `file:line`, so the allocating function still merges across its sites and each site can be
//! seen (and searched for) on its own. Several processes get a root frame each,
//! "pid N (comm)", so their stacks do not merge.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use inferno::flamegraph::{self, Options, Palette, color::BasicPalette};

use super::{measure::Measure, model::Model};
use crate::report::human_bytes;

/// The SVG, or, when no stack has any of `measure`, a small SVG that says so (inferno has
/// nothing to draw then and would only produce an error picture).
pub fn render(model: &Model, measure: Measure) -> Result<String> {
    let title = format!("{}: {} ({})", model.name(), measure.meaning(), measure.sample_type());
    let folded = folded_stacks(model, measure);
    if folded.is_empty() {
        let message = format!(
            "Nothing to draw: no stack has any {} in this profile (try another --sample or --by).",
            measure.meaning()
        );
        return Ok(message_svg(&title, &message));
    }
    let lines: Vec<String> = folded.iter().map(|(path, value)| format!("{path} {value}")).collect();
    let mut options = Options::default();
    options.title = title;
    options.subtitle = Some(subtitle(model));
    options.colors = Palette::Basic(BasicPalette::Mem);
    options.hash = true;
    options.count_name = measure.unit().into();
    options.name_type = "Function:".into();
    let mut svg = Vec::new();
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), &mut svg)
        .context("drawing the flame graph")?;
    String::from_utf8(svg).context("inferno wrote an SVG that is not UTF-8")
}

/// Drawn for a stack with no frames, which inferno would otherwise skip as a malformed line.
const UNKNOWN_STACK: &str = "[unknown stack]";
/// Drawn for a frame whose name is blank, likewise.
const BLANK_NAME: &str = "[no name]";

/// inferno's input: "root;…;leaf value", one line per distinct path, zero values left out.
fn folded_stacks(model: &Model, measure: Measure) -> BTreeMap<String, u64> {
    let mut folded = BTreeMap::new();
    let process_roots = model.has_several_processes();
    for stack in &model.stacks {
        let value = measure.of(&stack.values);
        if value == 0 {
            continue;
        }
        let mut names: Vec<String> =
            model.call_path(stack, process_roots).iter().map(|name| frame_name(name)).collect();
        if let Some(frame) = stack.allocating_frame().filter(|f| f.file.is_some()) {
            names.push(frame_name(&frame.location()));
        }
        if names.is_empty() {
            names.push(UNKNOWN_STACK.into());
        }
        let sum = folded.entry(names.join(";")).or_insert(0u64);
        *sum = sum.saturating_add(value);
    }
    folded
}

/// A name inferno's folded format can carry: `;` separates frames, a line ends the stack, and a
/// blank frame would be dropped.
fn frame_name(name: &str) -> String {
    match name.trim().is_empty() {
        true => BLANK_NAME.into(),
        false => name.replace(';', ",").replace(['\n', '\r'], " "),
    }
}

/// Both totals, whichever the graph shows.
fn subtitle(model: &Model) -> String {
    let totals = model.totals();
    format!(
        "live at end of window: {} ({} bytes) in {} blocks; allocated during window: {} ({} bytes) in {} allocations",
        human_bytes(totals.inuse_space),
        totals.inuse_space,
        totals.inuse_objects,
        human_bytes(totals.alloc_space),
        totals.alloc_space,
        totals.alloc_objects
    )
}

/// A minimal SVG with a title and one line of text.
fn message_svg(title: &str, message: &str) -> String {
    format!(
        r#"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="1200" height="90" viewBox="0 0 1200 90" xmlns="http://www.w3.org/2000/svg">
<rect x="0" y="0" width="100%" height="100%" fill="rgb(238,255,238)"/>
<text id="title" x="600" y="28" text-anchor="middle" font-family="Verdana" font-size="17">{}</text>
<text id="message" x="600" y="62" text-anchor="middle" font-family="Verdana" font-size="12">{}</text>
</svg>
"#,
        xml_escape(title),
        xml_escape(message)
    )
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profiles::report::{By, Sample, fixtures};

    #[test]
    fn stacks_fold_root_first_with_the_allocation_line_on_top() {
        let folded = folded_stacks(&fixtures::model(), Measure::default());
        let expected = BTreeMap::from([
            ("main;handle;leak_exactly;app.c:10".to_string(), 104_950),
            ("main;handle;strdup".to_string(), 800),
            ("main;leak_exactly;app.c:11".to_string(), 50),
        ]);
        assert_eq!(folded, expected, "churn has no live bytes; strdup has no line information");
        let by_process =
            folded_stacks(&fixtures::two_process_model(), Measure { sample: Sample::Alloc, by: By::Count });
        assert_eq!(by_process["pid 8;main;worker;grow;app.c:50"], 2);
        assert_eq!(by_process["pid 7 (app);main;churn;app.c:40"], 5000);
    }

    #[test]
    fn the_svg_is_interactive_and_names_every_frame() {
        let svg = render(&fixtures::model(), Measure::default()).unwrap();
        assert!(svg.starts_with("<?xml"), "{svg}");
        assert!(svg.contains("memmon profile p1: live bytes at end of window (inuse_space)"), "{svg}");
        assert!(svg.contains("live at end of window: 103.3 KiB (105800 bytes) in 105 blocks; allocated during window: 448.2 KiB (459000 bytes) in 5111 allocations"));
        for title in [
            "<title>all (105,800 bytes, 100%)</title>",
            "<title>main (105,800 bytes, 100.00%)</title>",
            "<title>handle (105,750 bytes, 99.95%)</title>",
            "<title>leak_exactly (104,950 bytes, 99.20%)</title>",
            "<title>app.c:10 (104,950 bytes, 99.20%)</title>",
            "<title>strdup (800 bytes, 0.76%)</title>",
        ] {
            assert!(svg.contains(title), "{title} in {svg}");
        }
        assert!(
            svg.contains("function search(") && svg.contains("function zoom("),
            "inferno's script for search and zoom"
        );
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn frame_names_cannot_break_the_folded_format() {
        assert_eq!(frame_name("drop<[u8; 8]>\n"), "drop<[u8, 8]> ");
        assert_eq!(frame_name(" \t"), BLANK_NAME);
    }

    #[test]
    fn a_stack_without_frames_is_drawn() {
        // Found by the pprof_report fuzz target: inferno refused the line " 4325376" with "No
        // stack counts found", so `memmon report flamegraph` failed on a valid profile.
        let mut model = fixtures::model();
        model.stacks.retain(|stack| stack.values.inuse_space > 0);
        for stack in &mut model.stacks {
            stack.frames.clear();
        }
        let svg = render(&model, Measure::default()).unwrap();
        assert!(svg.contains("<title>[unknown stack] (105,800 bytes, 100.00%)</title>"), "{svg}");
    }

    #[test]
    fn an_empty_profile_is_a_valid_svg_that_says_so() {
        let svg = render(&fixtures::empty_model(), Measure::default()).unwrap();
        assert!(svg.contains("Nothing to draw: no stack has any live bytes at end of window in this profile"), "{svg}");
        assert!(svg.contains(r#"<text id="title""#) && svg.trim_end().ends_with("</svg>"), "{svg}");
        assert_eq!(xml_escape("a<b>&\"c\""), "a&lt;b&gt;&amp;&quot;c&quot;");
    }
}
