//! Fuzz targets for every parser of outside input: one function per target, taking the raw
//! bytes, running the parser exactly as memmon does and asserting what must hold of its answer.
//!
//! They live in the library, not in `fuzz/`, so that the cargo-fuzz binaries (`fuzz/`, nightly,
//! libFuzzer) and the in-suite replay below (stable, `cargo xtask test`) exercise the same code:
//! a panic — an assertion here or a crash in a parser — is a bug either way. Bytes that are not
//! UTF-8 are read lossily where memmon itself would receive text.

use std::time::{Instant, SystemTime};

use crate::{
    agent::requests,
    config::AgentConfig,
    control::token::Token,
    durations,
    launch::suppressions::{Suppressions, template_match},
    profiles::{
        id::{self, ProfileId},
        pprof,
        report::{self, By, Model, ReportArgs, Sample, View},
    },
    symbolize::Frame,
    track::Spec,
};

/// Every target by the name of its cargo-fuzz binary and its corpus folder (`fuzz/corpus/NAME`).
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("profile_id", profile_id),
    ("suppressions", suppressions),
    ("track_spec", track_spec),
    ("token", token),
    ("config", config),
    ("api_query", api_query),
    ("pprof_report", pprof_report),
];

/// A profile id from a client (`/profiles/{id}`, `memmon stop-profiling ID`, …).
pub fn profile_id(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match ProfileId::parse(&text) {
        Ok(id) => {
            let shown = id.to_string();
            assert_eq!(shown, text, "an accepted id is shown as given");
            assert!(!shown.contains('/') && !shown.contains("..") && !shown.contains('\0'), "{shown:?}");
            assert_eq!(shown.len(), id::EXAMPLE.len());
            assert_eq!(ProfileId::from_file_name(&id.file_name()), Some(id));
        }
        Err(why) => {
            assert!(why.contains(id::EXAMPLE), "the error shows the format: {why}");
            // 64 characters quoted, each at most 10 bytes escaped (`\u{10ffff}`), and the format.
            assert!(why.len() < 1024, "the error quotes a bounded part of the input: {} bytes", why.len());
        }
    }
}

/// A suppressions file (`memmon run --suppressions FILE`), then its patterns matched against
/// frames. The bytes after the first NUL (if any) are a name matched by the first line used
/// as a bare template, checked against a plain glob matcher.
pub fn suppressions(data: &[u8]) {
    let (file, name) = split_at_nul(data);
    let (file, name) = (String::from_utf8_lossy(file), String::from_utf8_lossy(name));
    match Suppressions::parse(&file, "fuzz.supp") {
        Ok(suppressions) => {
            let frame = Frame { function: name.to_string(), module: name.to_string(), file: Some(name.to_string()), ..Frame::default() };
            if let Some(matched) = suppressions.matching(&[frame]) {
                assert!(matched.starts_with("leak:") && matched.contains("(fuzz.supp:"), "{matched}");
            }
        }
        Err(err) => assert!(err.to_string().starts_with("fuzz.supp:"), "the error names the line: {err}"),
    }
    let template = file.lines().next().unwrap_or_default();
    assert_eq!(
        template_match(template, &name),
        glob_reference(template, &name),
        "template {template:?} on {name:?}"
    );
}

/// A `--track-function` / MEMMON_TRACK_FUNCTIONS item.
pub fn track_spec(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match text.parse::<Spec>() {
        Ok(spec) => {
            assert!(!spec.symbol.is_empty() && !spec.symbol.contains(char::is_whitespace) && !spec.symbol.contains('@'));
            assert!(spec.object.as_ref().is_none_or(|o| !o.is_empty() && !o.contains('@')), "{spec:?}");
            assert_eq!(spec.to_string().parse::<Spec>(), Ok(spec.clone()), "the label reads back as the same spec");
        }
        Err(why) => assert!(why.contains("SYMBOL@OBJECT"), "the error shows the format: {why}"),
    }
}

/// The text of MEMMON_API_TOKEN_FILE.
pub fn token(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Token::parse(&text) {
        Ok(token) => {
            let value = token.as_str();
            assert!(value.len() >= crate::control::token::MIN_TOKEN_LEN && value.bytes().all(|b| b.is_ascii_graphic()));
            assert!(token.matches(value) && !token.matches(&value[1..]));
        }
        Err(err) => assert!(err.to_string().starts_with("the token must"), "{err}"),
    }
}

/// One agent option given one value (`--OPTION=VALUE`): the first byte picks the option among
/// all of `memmon agent`'s, the rest is the value. An accepted configuration must yield spans
/// that can be added to the clock; a refusal must name the option, and never another option's
/// variable.
pub fn config(data: &[u8]) {
    let Some((&pick, value)) = data.split_first() else { return };
    let Ok(value) = std::str::from_utf8(value) else { return };
    let command = AgentConfig::command();
    let options: Vec<_> = command.get_arguments().filter(|arg| arg.get_long().is_some()).collect();
    let option = options[usize::from(pick) % options.len()];
    let long = option.get_long().expect("filtered");
    let variable = option.get_env().map(|v| v.to_string_lossy().into_owned());
    let mut argv = vec!["memmon".to_string(), "--profiling-enabled=false".to_string()];
    if long != "pid" {
        argv.push("--pid=1".into());
    }
    argv.push(format!("--{long}={value}"));
    match AgentConfig::from_args(&argv) {
        Ok(config) => {
            let now = Instant::now();
            for span in [
                config.capture_window_length(),
                config.capture_cooldown(),
                config.metrics_update_period(),
                config.leak_check_period(),
                config.max_profile_duration(),
                config.profiling_cleanup_age(),
            ] {
                assert!(span.as_secs() <= durations::MAX_SECONDS, "--{long}={value}: {span:?}");
                assert!(now.checked_add(span).is_some() && SystemTime::now().checked_sub(span).is_some());
            }
            let _ = (config.thresholds(), config.track_config(), config.tracer_options(), config.max_profile_bytes());
        }
        Err(err) => {
            let message = err.to_string();
            assert!(message.contains(&format!("--{long}")), "the error names --{long}: {message}");
            // The error quotes the value (clap drops its control characters), so a value that
            // itself says "MEMMON_…" proves nothing.
            let quotes_a_variable = value.chars().filter(|c| !c.is_control()).collect::<String>().contains("MEMMON_");
            if let Some(named) = message.split("(MEMMON_").nth(1).filter(|_| !quotes_a_variable) {
                let named = format!("MEMMON_{}", named.split(')').next().unwrap_or_default());
                assert_eq!(Some(named), variable, "--{long}'s error names another variable: {message}");
            }
        }
    }
}

/// A query string of the control API: the first byte picks `GET /leaks`, `POST /profiles` or
/// `POST /profiles/cleanup`, the rest follows `?`. What the agent accepts must be a span it can
/// schedule.
pub fn api_query(data: &[u8]) {
    let Some((&pick, query)) = data.split_first() else { return };
    let Ok(uri) = format!("/endpoint?{}", String::from_utf8_lossy(query)).parse::<axum::http::Uri>() else {
        return; // the HTTP server refuses a URI that does not parse before any handler runs.
    };
    let bad_query = |message: &str| assert!(message.starts_with("bad query: ") && message.len() > 11, "{message}");
    match pick % 3 {
        0 => {
            if let Err(message) = requests::leaks(&uri) {
                bad_query(&message);
            }
        }
        1 => match requests::start(&uri) {
            Ok(request) => {
                let Some(minutes) = request.minutes else { return };
                for max_minutes in [60.0, durations::MAX_SECONDS as f64 / 60.0] {
                    match requests::session_duration(minutes, max_minutes) {
                        Ok(span) => {
                            assert!(span.as_secs_f64() >= 1.0 - 1e-9 && span.as_secs_f64() <= max_minutes * 60.0 + 1e-6);
                            assert!(Instant::now().checked_add(span).is_some());
                        }
                        Err(message) => assert!(message.starts_with("duration "), "{message}"),
                    }
                }
            }
            Err(message) => bad_query(&message),
        },
        _ => match requests::cleanup(&uri) {
            Ok(Some(days)) => match requests::cleanup_age(days) {
                Ok(age) => assert!(SystemTime::now().checked_sub(age).is_some(), "{days} days"),
                Err(message) => assert!(message.starts_with("older_than_days must be"), "{message}"),
            },
            Ok(None) => {}
            Err(message) => bad_query(&message),
        },
    }
}

/// A file given to `memmon report`: decoded, read into the model, and rendered in every view
/// (the measure picked by the length, so that one input costs four renders, not sixteen).
pub fn pprof_report(data: &[u8]) {
    let model = match pprof::decode(data).and_then(|profile| Model::from_pprof(&profile)) {
        Ok(model) => model,
        Err(err) => {
            let message = format!("{err:#}");
            assert!(
                ["not a", "malformed pprof"].iter().any(|start| message.starts_with(start)),
                "one clear error: {message}"
            );
            return;
        }
    };
    let totals = model.totals();
    for stack in &model.stacks {
        assert!(stack.values.inuse_space <= totals.inuse_space && stack.values.alloc_objects <= totals.alloc_objects);
    }
    let (sample, by) = match data.len() % 4 {
        0 => (Sample::Inuse, By::Bytes),
        1 => (Sample::Inuse, By::Count),
        2 => (Sample::Alloc, By::Bytes),
        _ => (Sample::Alloc, By::Count),
    };
    for view in [View::Table, View::Tree, View::Summary, View::Flamegraph] {
        let args = ReportArgs { view, file: "fuzz.pb.gz".into(), sample, by, top: None, min_percent: 1.0, output: None };
        let text = report::render(&model, &args).unwrap_or_else(|err| panic!("{view:?} of a readable profile: {err:#}"));
        assert!(!text.is_empty(), "{view:?}");
    }
}

fn split_at_nul(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[]),
    }
}

/// LSan's template semantics restated as a glob: `*` is any run, an unanchored side has an
/// implicit `*`. Matched by dynamic programming, independently of `template_match`'s search.
fn glob_reference(template: &str, text: &str) -> bool {
    let (start, template) = template.strip_prefix('^').map_or((false, template), |rest| (true, rest));
    let (end, template) = template.strip_suffix('$').map_or((false, template), |rest| (true, rest));
    let glob = format!("{}{template}{}", if start { "" } else { "*" }, if end { "" } else { "*" });
    let (glob, text) = (glob.as_bytes(), text.as_bytes());
    // matches[j]: glob[..i] matches text[..j].
    let mut matches = vec![false; text.len() + 1];
    matches[0] = true;
    for &g in glob {
        if g == b'*' {
            for j in 1..=text.len() {
                matches[j] |= matches[j - 1];
            }
        } else {
            for j in (1..=text.len()).rev() {
                matches[j] = matches[j - 1] && text[j - 1] == g;
            }
            matches[0] = false;
        }
    }
    matches[text.len()]
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    /// Pseudo-random inputs per target on top of its corpus: enough to shake out a regression
    /// in seconds; the long runs are cargo-fuzz's (fuzz/README.md).
    const INPUTS_PER_TARGET: usize = 10_000;

    fn corpus_dir(target: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
    }

    fn corpus(target: &str) -> Vec<Vec<u8>> {
        let dir = corpus_dir(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        files.iter().map(|file| std::fs::read(file).unwrap()).collect()
    }

    /// xorshift64*: a fixed seed, so a failure reproduces.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    /// A corpus entry with a few byte flips, insertions, deletions or a splice of another entry;
    /// sometimes plain random bytes.
    fn mutated(rng: &mut Rng, corpus: &[Vec<u8>]) -> Vec<u8> {
        if corpus.is_empty() || rng.below(8) == 0 {
            let interesting = b"0123456789abcdefT-Z.:/@^$*, =&%\n\0\xff";
            return (0..rng.below(64)).map(|_| interesting[rng.below(interesting.len())]).collect();
        }
        let mut data = corpus[rng.below(corpus.len())].clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(data.len() + 1);
            match rng.below(5) {
                0 if at < data.len() => data[at] ^= 1 << rng.below(8),
                1 if at < data.len() => data[at] = rng.next() as u8,
                2 => data.insert(at, rng.next() as u8),
                3 if at < data.len() => {
                    data.remove(at);
                }
                _ => {
                    let other = &corpus[rng.below(corpus.len())];
                    let from = rng.below(other.len());
                    data.splice(at..at, other[from..(from + rng.below(16)).min(other.len())].iter().copied());
                }
            }
        }
        data
    }

    #[test]
    fn every_target_has_its_corpus_and_a_cargo_fuzz_binary() {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        for (name, _) in TARGETS {
            assert!(!corpus(name).is_empty(), "fuzz/corpus/{name} is empty");
            let binary = fuzz.join("fuzz_targets").join(format!("{name}.rs"));
            let source = std::fs::read_to_string(&binary).unwrap_or_else(|err| panic!("{}: {err}", binary.display()));
            assert!(source.contains(&format!("memmon::fuzzing::{name}(")), "{} calls another target", binary.display());
        }
    }

    #[test]
    fn corpora_and_mutations_of_them_pass_every_target() {
        for (name, target) in TARGETS {
            let corpus = corpus(name);
            for (index, data) in corpus.iter().enumerate() {
                let outcome = std::panic::catch_unwind(|| target(data));
                assert!(outcome.is_ok(), "{name}: corpus entry {index} ({} bytes) failed", data.len());
            }
            let mut rng = Rng(0x6d65_6d6d_6f6e ^ name.len() as u64);
            for round in 0..INPUTS_PER_TARGET {
                let data = mutated(&mut rng, &corpus);
                let outcome = std::panic::catch_unwind(|| target(&data));
                assert!(outcome.is_ok(), "{name}: mutated input {round} failed: {data:?}");
            }
        }
    }

    #[test]
    fn the_glob_reference_reads_templates_like_lsan() {
        assert!(glob_reference("strdup", "xstrdup") && !glob_reference("^strdup", "xstrdup"));
        assert!(glob_reference("^x*dup$", "xstrdup") && !glob_reference("^lib*.so$", "libpython3.11.so.1.0"));
        assert!(glob_reference("^abc$", "abc") && !glob_reference("^abc$", "abcd") && glob_reference("", "anything"));
    }

    #[test]
    fn targets_catch_what_they_claim_to() {
        // Inputs that failed before durations were bounded (`durations`): the first two gave
        // spans no clock can hold (the agent panicked on adding them), the last two panicked
        // in Duration::from_secs_f64 inside the agent.
        config(&[&[pick("max-profile-duration-minutes")], b"1e300".as_slice()].concat());
        config(&[&[pick("capture-cooldown")], b"18446744073709551615".as_slice()].concat());
        api_query(b"\x02older_than_days=1e300");
        api_query(b"\x01duration_minutes=1e300");
    }

    /// The `config` target's first byte that selects `--long`.
    fn pick(long: &str) -> u8 {
        let command = AgentConfig::command();
        let index = command.get_arguments().filter(|arg| arg.get_long().is_some()).position(|arg| arg.get_long() == Some(long));
        u8::try_from(index.expect(long)).unwrap()
    }
}
