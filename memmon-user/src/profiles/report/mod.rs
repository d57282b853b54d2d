//! `memmon report flamegraph|table|tree|summary FILE`: offline views of a saved heap profile.
//!
//! A profile file is decoded once into a `Model` (stacks with their four values, memmon's
//! metadata, the window); each view is a pure function from the model to text, so it is tested
//! on synthetic profiles without a kernel. Reading the file and writing the output happen only
//! in `run`, the edge the CLI calls.

mod flamegraph;
mod measure;
mod model;
mod summary;
mod table;
mod tree;

#[cfg(test)]
mod fixtures;

use std::{
    io::{IsTerminal as _, Write as _},
    path::PathBuf,
    process::ExitCode,
};

use anyhow::{Context as _, Result, bail};

pub use self::{
    measure::{By, Measure, Sample},
    model::{Model, Stack, Values, Window},
};
use crate::profiles::pprof;

/// Sites listed by `table` unless `--top` says otherwise.
const TABLE_TOP: usize = 20;
/// Functions per list in `summary` unless `--top` says otherwise.
const SUMMARY_TOP: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    /// Interactive SVG flame graph (inferno): search, zoom, tooltips.
    Flamegraph,
    /// One row per allocation site, largest first.
    Table,
    /// Call tree from the roots down to the allocating functions, inclusive and self values.
    Tree,
    /// Window, totals, peaks, memory timeline, top functions, bytes by library, lost events.
    Summary,
}

#[derive(clap::Args, Clone, Debug)]
pub struct ReportArgs {
    /// Which view of the profile.
    #[arg(value_enum)]
    pub view: View,
    /// A gzipped (or plain) pprof heap profile: memmon's `<profile_id>.pb.gz`, or another
    /// producer's with the sample types alloc_objects, alloc_space, inuse_objects, inuse_space.
    pub file: PathBuf,
    /// Live at the end of the window (inuse), or allocated during it (alloc).
    #[arg(long, value_enum, default_value_t = Sample::Inuse)]
    pub sample: Sample,
    /// Weigh by bytes, or by blocks/allocations.
    #[arg(long, value_enum, default_value_t = By::Bytes)]
    pub by: By,
    /// Rows of `table` (default 20) or functions per list in `summary` (default 10).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub top: Option<u64>,
    /// `tree`: fold nodes holding less than this percentage of the total.
    #[arg(long, value_name = "P", default_value_t = 1.0, value_parser = min_percent)]
    pub min_percent: f64,
    /// Write the view to this file instead of standard output.
    #[arg(long, short, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

/// Reads the profile, renders the view, writes it out.
pub fn run(args: &ReportArgs) -> Result<ExitCode> {
    let model = load(&args.file)?;
    if args.view == View::Flamegraph && args.output.is_none() && std::io::stdout().is_terminal() {
        bail!("the flame graph is an SVG: give --output FILE.svg, or redirect standard output to a file");
    }
    let text = render(&model, args)?;
    match &args.output {
        Some(path) => std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?,
        None => std::io::stdout().lock().write_all(text.as_bytes()).context("cannot write to standard output")?,
    }
    Ok(ExitCode::SUCCESS)
}

/// The view `args` asks for, as text (pure: `run` does the reading and writing).
pub fn render(model: &Model, args: &ReportArgs) -> Result<String> {
    let measure = Measure { sample: args.sample, by: args.by };
    let top = |default| args.top.map_or(default, |n| usize::try_from(n).unwrap_or(usize::MAX));
    Ok(match args.view {
        View::Flamegraph => flamegraph::render(model, measure)?,
        View::Table => table::render(model, measure, top(TABLE_TOP)),
        View::Tree => tree::render(model, measure, args.min_percent),
        View::Summary => summary::render(model, top(SUMMARY_TOP)),
    })
}

/// Reads and decodes a profile file.
pub fn load(path: &std::path::Path) -> Result<Model> {
    let read = || Model::from_pprof(&pprof::decode(&std::fs::read(path)?)?);
    read().with_context(|| format!("cannot read profile {}", path.display()))
}

/// "1 site", "3 sites": the noun's last word takes the plural.
fn counted(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        _ => format!("{n} {noun}s"),
    }
}

fn min_percent(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{text} is not a percentage from 0 to 100")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_are_not_profiles_get_one_clear_error() {
        let dir = std::env::temp_dir().join(format!("memmon-report-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pb.gz");
        let error = format!("{:#}", load(&missing).unwrap_err());
        assert!(error.starts_with(&format!("cannot read profile {}: No such file", missing.display())), "{error}");
        let text = dir.join("notes.txt");
        std::fs::write(&text, "hello\n").unwrap();
        let error = format!("{:#}", load(&text).unwrap_err());
        assert!(error.starts_with(&format!("cannot read profile {}: not a pprof profile", text.display())), "{error}");
        let written = dir.join("p.pb.gz");
        std::fs::write(&written, pprof::encode_gzipped(&fixtures::heap_profile()).unwrap()).unwrap();
        assert_eq!(load(&written).unwrap(), fixtures::model());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn counts_read_as_words() {
        assert_eq!(
            (counted(1, "site"), counted(0, "site"), counted(2, "more site")),
            ("1 site".into(), "0 sites".into(), "2 more sites".into())
        );
        assert!(min_percent("101").is_err() && min_percent("x").is_err());
        assert_eq!(min_percent("0.5"), Ok(0.5));
    }
}
