//! Leak suppressions, in LeakSanitizer's format: one `leak:PATTERN` per line, `#` comments and
//! blank lines ignored. A site is suppressed when any frame of its stack matches a pattern by
//! function name, module (file name or full path of the object) or source file. A pattern
//! matches anywhere in the name unless anchored (`^` at its start, `$` at its end); `*` matches
//! any run of characters. LSan's other kinds (`interceptor_via_fun:` …) mean nothing to memmon
//! and are refused rather than silently ignored.

use anyhow::{Result, bail};

use crate::symbolize::Frame;

#[derive(Clone, Debug, Default)]
pub struct Suppressions {
    patterns: Vec<Pattern>,
}

#[derive(Clone, Debug)]
struct Pattern {
    /// As written after `leak:` (what the report says a site was suppressed by).
    text: String,
    /// Where it came from: "FILE:LINE".
    origin: String,
}

impl Suppressions {
    pub fn parse(text: &str, source: &str) -> Result<Self> {
        let mut patterns = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let origin = format!("{source}:{}", number + 1);
            let Some((kind, pattern)) = line.split_once(':') else {
                bail!("{origin}: expected `leak:PATTERN`, found {line:?}");
            };
            if kind.trim() != "leak" {
                bail!("{origin}: unknown suppression kind {:?}; memmon knows `leak:PATTERN`", kind.trim());
            }
            let pattern = pattern.trim();
            if pattern.is_empty() || pattern.trim_matches(['^', '$', '*']).is_empty() {
                bail!("{origin}: empty pattern (it would suppress everything)");
            }
            patterns.push(Pattern { text: pattern.to_string(), origin });
        }
        Ok(Self { patterns })
    }

    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| anyhow::anyhow!("cannot read suppressions file {}: {err}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn extend(&mut self, other: Self) {
        self.patterns.extend(other.patterns);
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The first pattern matching a frame of `frames`, as "leak:PATTERN (FILE:LINE)".
    pub fn matching(&self, frames: &[Frame]) -> Option<String> {
        self.patterns.iter().find_map(|pattern| {
            frames
                .iter()
                .any(|frame| {
                    let mut names = vec![frame.function.as_str(), frame.module.as_str()];
                    names.extend(frame.file.as_deref());
                    names.iter().any(|name| !name.is_empty() && template_match(&pattern.text, name))
                })
                .then(|| format!("leak:{} ({})", pattern.text, pattern.origin))
        })
    }
}

/// LSan's TemplateMatch: `*` wildcards, `^`/`$` anchors, otherwise a match anywhere.
pub fn template_match(template: &str, text: &str) -> bool {
    let (anchored_start, template) = template.strip_prefix('^').map_or((false, template), |rest| (true, rest));
    let (anchored_end, template) = template.strip_suffix('$').map_or((false, template), |rest| (true, rest));
    let pieces: Vec<&str> = template.split('*').collect();
    if let [only] = pieces[..] {
        return match (anchored_start, anchored_end) {
            (true, true) => text == only,
            (true, false) => text.starts_with(only),
            (false, true) => text.ends_with(only),
            (false, false) => text.contains(only),
        };
    }
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    let mut position = if anchored_start {
        if !text.starts_with(first) {
            return false;
        }
        first.len()
    } else {
        match text.find(first) {
            Some(found) => found + first.len(),
            None => return false,
        }
    };
    for middle in &pieces[1..pieces.len() - 1] {
        match text[position..].find(middle) {
            Some(found) => position += found + middle.len(),
            None => return false,
        }
    }
    if anchored_end {
        text.len() >= position + last.len() && text.ends_with(last)
    } else {
        text[position..].contains(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, module: &str) -> Frame {
        Frame { function: function.into(), module: module.into(), file: Some("/src/app/parse.c".into()), line: Some(3), python: false, address: 0 }
    }

    #[test]
    fn templates_like_lsan() {
        assert!(template_match("xstrdup", "xstrdup"));
        assert!(template_match("strdup", "xstrdup"), "a match anywhere");
        assert!(!template_match("^strdup", "xstrdup"));
        assert!(template_match("^x*dup$", "xstrdup"));
        assert!(!template_match("dup$", "xstrdupe"));
        assert!(template_match("dup$", "xstrdup"));
        assert!(template_match("lib*.so", "libpython3.11.so.1.0"));
        assert!(!template_match("^lib*.so$", "libpython3.11.so.1.0"));
        assert!(template_match("^lib*.so*$", "libpython3.11.so.1.0"));
        assert!(template_match("^abc$", "abc"));
        assert!(!template_match("^abc$", "abcd"));
        assert!(!template_match("^abc$", "zabc"));
    }

    #[test]
    fn a_site_is_suppressed_by_function_module_or_file() {
        let text = "# known leaks\n\nleak:^init_tables$\nleak:libfoo.so\n  leak:parse.c  \n";
        let suppressions = Suppressions::parse(text, "supp.txt").unwrap();
        let by_function = [frame("malloc_wrapper", "app"), frame("init_tables", "app")];
        assert_eq!(suppressions.matching(&by_function).as_deref(), Some("leak:^init_tables$ (supp.txt:3)"));
        assert_eq!(suppressions.matching(&[frame("f", "libfoo.so.1")]).as_deref(), Some("leak:libfoo.so (supp.txt:4)"));
        let only_file = Frame { file: Some("/src/app/parse.c".into()), ..frame("g", "app") };
        assert_eq!(suppressions.matching(&[only_file]).as_deref(), Some("leak:parse.c (supp.txt:5)"));
        let unrelated = Frame { file: None, ..frame("init_tables_later", "app") };
        assert_eq!(suppressions.matching(&[unrelated]), None);
    }

    #[test]
    fn bad_lines_name_their_place() {
        let err = Suppressions::parse("leak:ok\ninterceptor_via_fun:x\n", "s").unwrap_err().to_string();
        assert!(err.contains("s:2: unknown suppression kind \"interceptor_via_fun\""), "{err}");
        let err = Suppressions::parse("just_a_function\n", "s").unwrap_err().to_string();
        assert!(err.contains("s:1: expected `leak:PATTERN`"), "{err}");
        let err = Suppressions::parse("leak:*\n", "s").unwrap_err().to_string();
        assert!(err.contains("s:1: empty pattern"), "{err}");
    }
}
