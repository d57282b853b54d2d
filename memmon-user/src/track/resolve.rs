//! Finding the function `--track-function SYMBOL[@OBJECT]` names among a process' mapped
//! objects. The decision is pure (`resolve`, over symbol lists); `read_symbols` is the I/O.
//!
//! A name is a function when exactly one mapped object (or the one OBJECT names) defines a
//! function symbol of that name at one address: aliases at one address are one function; the
//! same name at two addresses (two static functions of that name) or in two objects is
//! ambiguous, and nothing is guessed. A missing name gets the closest function names.

use std::{collections::BTreeSet, fmt, path::Path};

use object::{Object as _, ObjectSymbol as _, SymbolKind};

use super::Spec;

/// One object's defined symbols.
#[derive(Clone, Debug, Default)]
pub struct ObjectSymbols {
    /// The object's path as the process maps it.
    pub path: String,
    /// Function symbols: name and address.
    pub functions: Vec<(String, u64)>,
    /// Names of defined symbols that are not functions (data objects, sections, files).
    pub others: BTreeSet<String>,
}

impl ObjectSymbols {
    pub fn file_name(&self) -> &str {
        file_name(&self.path)
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The function found: which object, and its address there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub object: usize,
    pub address: u64,
}

/// Why a spec names no single function; `Display` is the one-line error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unresolved {
    NoSuchObject { object: String, objects: Vec<String> },
    AmbiguousObject { object: String, matches: Vec<String> },
    Missing { symbol: String, searched: usize, close: Vec<String> },
    NotAFunction { symbol: String, object: String },
    InSeveralObjects { symbol: String, objects: Vec<String> },
    SeveralAddresses { symbol: String, object: String, addresses: Vec<u64> },
}

impl fmt::Display for Unresolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchObject { object, objects } => {
                write!(f, "no mapped object matches {object:?}; the process maps {}", objects.join(", "))
            }
            Self::AmbiguousObject { object, matches } => {
                write!(f, "{object:?} matches several mapped objects ({}); give its file name or path", matches.join(", "))
            }
            Self::Missing { symbol, searched, close } => {
                write!(f, "no function named {symbol} in the {searched} object(s) searched")?;
                match close.is_empty() {
                    true => write!(f, " (and none with a similar name)"),
                    false => write!(f, "; close matches: {}", close.join(", ")),
                }
            }
            Self::NotAFunction { symbol, object } => {
                write!(f, "{symbol} in {object} is not a function (a data object or another kind of symbol)")
            }
            Self::InSeveralObjects { symbol, objects } => {
                let choices: Vec<String> = objects.iter().map(|o| format!("{symbol}@{}", file_name(o))).collect();
                write!(f, "{symbol} is defined in several objects ({}); name one: {}", objects.join(", "), choices.join(" or "))
            }
            Self::SeveralAddresses { symbol, object, addresses } => {
                let at: Vec<String> = addresses.iter().map(|a| format!("{a:#x}")).collect();
                write!(f, "{symbol} names {} different functions in {object} (at {}); memmon cannot tell which one you mean", addresses.len(), at.join(", "))
            }
        }
    }
}

/// Whether `object` (from `SYMBOL@OBJECT`) names the object at `path`: its path, its file
/// name, or its file name up to a version or extension (`libc` for `libc.so.6`).
pub fn object_matches(object: &str, path: &str) -> bool {
    let name = file_name(path);
    path == object
        || name == object
        || name.strip_prefix(object).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('-'))
}

pub fn resolve(spec: &Spec, objects: &[ObjectSymbols]) -> Result<Found, Unresolved> {
    let candidates: Vec<usize> = match &spec.object {
        None => (0..objects.len()).collect(),
        Some(object) => {
            let exact: Vec<usize> = (0..objects.len()).filter(|&i| objects[i].path == *object || objects[i].file_name() == object).collect();
            let matching: Vec<usize> = if exact.is_empty() {
                (0..objects.len()).filter(|&i| object_matches(object, &objects[i].path)).collect()
            } else {
                exact
            };
            match matching.len() {
                0 => {
                    let objects = objects.iter().map(|o| o.file_name().to_string()).collect();
                    return Err(Unresolved::NoSuchObject { object: object.clone(), objects });
                }
                1 => matching,
                _ => {
                    let matches = matching.iter().map(|&i| objects[i].path.clone()).collect();
                    return Err(Unresolved::AmbiguousObject { object: object.clone(), matches });
                }
            }
        }
    };
    let mut defining = Vec::new();
    for &i in &candidates {
        let mut addresses: Vec<u64> =
            objects[i].functions.iter().filter(|(name, _)| *name == spec.symbol).map(|(_, address)| *address).collect();
        addresses.sort_unstable();
        addresses.dedup();
        if !addresses.is_empty() {
            defining.push((i, addresses));
        }
    }
    match defining.len() {
        0 => {
            if let Some(&i) = candidates.iter().find(|&&i| objects[i].others.contains(&spec.symbol)) {
                return Err(Unresolved::NotAFunction { symbol: spec.symbol.clone(), object: objects[i].path.clone() });
            }
            let pool: Vec<&ObjectSymbols> = candidates.iter().map(|&i| &objects[i]).collect();
            Err(Unresolved::Missing { symbol: spec.symbol.clone(), searched: candidates.len(), close: close_matches(&spec.symbol, &pool) })
        }
        1 => {
            let (object, addresses) = defining.remove(0);
            match addresses.as_slice() {
                [address] => Ok(Found { object, address: *address }),
                _ => Err(Unresolved::SeveralAddresses { symbol: spec.symbol.clone(), object: objects[object].path.clone(), addresses }),
            }
        }
        _ => Err(Unresolved::InSeveralObjects {
            symbol: spec.symbol.clone(),
            objects: defining.iter().map(|(i, _)| objects[*i].path.clone()).collect(),
        }),
    }
}

/// Up to five function names like `symbol`: by edit distance (case-insensitive), names that
/// contain it or that it contains coming first at equal distance; each as `name (object)`.
pub fn close_matches(symbol: &str, objects: &[&ObjectSymbols]) -> Vec<String> {
    let wanted = symbol.to_lowercase();
    let limit = (wanted.chars().count() / 3).max(2);
    let mut scored: Vec<(usize, bool, String)> = Vec::new();
    let mut seen = BTreeSet::new();
    for object in objects {
        for (name, _) in &object.functions {
            let lower = name.to_lowercase();
            let related = lower.contains(&wanted) || (lower.len() >= 4 && wanted.contains(&lower));
            let distance = edit_distance(&wanted, &lower);
            if (distance <= limit || related) && seen.insert((name.clone(), object.file_name().to_string())) {
                scored.push((distance, !related, format!("{name} ({})", object.file_name())));
            }
        }
    }
    scored.sort();
    scored.into_iter().take(5).map(|(_, _, shown)| shown).collect()
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// The defined symbols of the ELF file at `file` (read through the process' root), from
/// `.symtab` and `.dynsym`.
pub fn read_symbols(path: &str, file: &Path) -> anyhow::Result<ObjectSymbols> {
    let data = std::fs::read(file)?;
    let elf = object::File::parse(&*data)?;
    let mut symbols = ObjectSymbols { path: path.to_string(), ..Default::default() };
    for symbol in elf.symbols().chain(elf.dynamic_symbols()) {
        if !symbol.is_definition() {
            continue;
        }
        let Ok(name) = symbol.name() else { continue };
        if name.is_empty() {
            continue;
        }
        if symbol.kind() == SymbolKind::Text {
            symbols.functions.push((name.to_string(), symbol.address()));
        } else {
            symbols.others.insert(name.to_string());
        }
    }
    Ok(symbols)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(path: &str, functions: &[(&str, u64)], others: &[&str]) -> ObjectSymbols {
        ObjectSymbols {
            path: path.into(),
            functions: functions.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
            others: others.iter().map(|o| o.to_string()).collect(),
        }
    }

    fn objects() -> Vec<ObjectSymbols> {
        vec![
            object("/usr/bin/server", &[("handle_request", 0x1000), ("main", 0x2000), ("cleanup", 0x3000), ("cleanup", 0x3100)], &["request_count"]),
            object("/usr/lib/libc.so.6", &[("malloc", 0x10), ("__libc_malloc", 0x10), ("free", 0x20), ("cleanup", 0x40)], &[]),
            object("/usr/lib/libhelper.so.1", &[("handle_request", 0x500), ("malloc", 0x90)], &[]),
        ]
    }

    fn spec(text: &str) -> Spec {
        text.parse().unwrap()
    }

    #[test]
    fn a_unique_function_resolves_and_aliases_are_one() {
        let objects = objects();
        assert_eq!(resolve(&spec("main"), &objects), Ok(Found { object: 0, address: 0x2000 }));
        assert_eq!(resolve(&spec("free"), &objects), Ok(Found { object: 1, address: 0x20 }));
        assert_eq!(resolve(&spec("handle_request@server"), &objects), Ok(Found { object: 0, address: 0x1000 }));
        assert_eq!(resolve(&spec("handle_request@libhelper"), &objects), Ok(Found { object: 2, address: 0x500 }));
        assert_eq!(resolve(&spec("malloc@/usr/lib/libc.so.6"), &objects), Ok(Found { object: 1, address: 0x10 }));
    }

    #[test]
    fn ambiguity_is_an_error_that_says_how_to_choose() {
        let objects = objects();
        let err = resolve(&spec("handle_request"), &objects).unwrap_err();
        assert!(matches!(err, Unresolved::InSeveralObjects { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("handle_request@server or handle_request@libhelper.so.1"), "{text}");
        let err = resolve(&spec("cleanup@server"), &objects).unwrap_err();
        assert_eq!(err.to_string(), "cleanup names 2 different functions in /usr/bin/server (at 0x3000, 0x3100); memmon cannot tell which one you mean");
        let err = resolve(&spec("malloc@lib"), &objects).unwrap_err();
        assert!(matches!(err, Unresolved::NoSuchObject { .. }), "{err:?}");
    }

    #[test]
    fn missing_names_get_close_matches_and_data_is_not_a_function() {
        let objects = objects();
        let err = resolve(&spec("handle_requests@server"), &objects).unwrap_err();
        assert_eq!(err.to_string(), "no function named handle_requests in the 1 object(s) searched; close matches: handle_request (server)");
        let err = resolve(&spec("handle"), &objects).unwrap_err().to_string();
        assert!(err.contains("close matches: handle_request (libhelper.so.1), handle_request (server)"), "{err}");
        let err = resolve(&spec("zzzzzzzz"), &objects).unwrap_err().to_string();
        assert!(err.ends_with("(and none with a similar name)"), "{err}");
        let err = resolve(&spec("request_count"), &objects).unwrap_err();
        assert_eq!(err.to_string(), "request_count in /usr/bin/server is not a function (a data object or another kind of symbol)");
    }

    #[test]
    fn object_names_match_by_path_file_name_or_stem() {
        assert!(object_matches("libc", "/usr/lib/libc.so.6"));
        assert!(object_matches("libc.so.6", "/usr/lib/libc.so.6"));
        assert!(!object_matches("lib", "/usr/lib/libc.so.6"));
        assert!(object_matches("redis-server", "/usr/bin/redis-server"));
        assert!(object_matches("redis", "/usr/bin/redis-check-rdb"), "up to a dash");
        assert!(!object_matches("redi", "/usr/bin/redis-check-rdb"));
    }
}
