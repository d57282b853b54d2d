//! Profile ids: made by the agent, checked whenever one comes back from a client.
//!
//! An id names a file in the profile directory, so a client's id is never used before it has
//! been proven to be exactly in the agent's own format: a UTC time and 32 random bits,
//! `20261127T031500Z-1a2b3c4d`. Nothing else — no `/`, no `..`, no NUL — can pass.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProfileId(String);

/// `YYYYMMDDTHHMMSSZ-` + 8 lowercase hex digits.
const LENGTH: usize = 16 + 1 + 8;
pub const EXAMPLE: &str = "20261127T031500Z-1a2b3c4d";
pub const FILE_SUFFIX: &str = ".pb.gz";

impl ProfileId {
    /// A fresh id for a session starting at `now`.
    pub fn generate(now: jiff::Timestamp) -> Self {
        let mut random = [0u8; 4];
        // SAFETY: getrandom(2) writes at most `len` bytes into the buffer.
        let filled = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
        if filled != random.len() as isize {
            // Never expected; the nanoseconds still make a collision within one agent unlikely.
            random = now.subsec_nanosecond().to_le_bytes();
        }
        let time = now.strftime("%Y%m%dT%H%M%SZ");
        Self(format!("{time}-{}", random.iter().map(|b| format!("{b:02x}")).collect::<String>()))
    }

    /// Accepts `text` only if it is in the agent's id format; the error says why not.
    pub fn parse(text: &str) -> Result<Self, String> {
        let why = if text.is_empty() {
            Some("it is empty")
        } else if text.contains('\0') {
            Some("it contains a NUL byte")
        } else if text.contains('/') {
            Some("it contains `/`")
        } else if text.contains("..") {
            Some("it contains `..`")
        } else if !is_well_formed(text) {
            Some("it is not in the id format")
        } else {
            None
        };
        match why {
            None => Ok(Self(text.to_string())),
            Some(why) => Err(format!(
                "invalid profile id {:?}: {why}; ids look like {EXAMPLE} (see `memmon status`)",
                text.chars().take(64).collect::<String>()
            )),
        }
    }

    /// The id of a profile file name (`<id>.pb.gz`), if it is one.
    pub fn from_file_name(name: &str) -> Option<Self> {
        Self::parse(name.strip_suffix(FILE_SUFFIX)?).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn file_name(&self) -> String {
        format!("{}{FILE_SUFFIX}", self.0)
    }
}

impl fmt::Display for ProfileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_well_formed(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == LENGTH
        && bytes.iter().enumerate().all(|(i, &b)| match i {
            0..=7 | 9..=14 => b.is_ascii_digit(),
            8 => b == b'T',
            15 => b == b'Z',
            16 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_differ() {
        let now: jiff::Timestamp = "2026-11-27T03:15:00Z".parse().unwrap();
        let a = ProfileId::generate(now);
        let b = ProfileId::generate(now);
        assert!(a.as_str().starts_with("20261127T031500Z-"), "{a}");
        assert_ne!(a, b);
        assert_eq!(ProfileId::parse(a.as_str()), Ok(a.clone()));
        assert_eq!(ProfileId::from_file_name(&a.file_name()), Some(a));
        assert!(ProfileId::parse(EXAMPLE).is_ok());
    }

    #[test]
    fn anything_else_is_refused_with_the_reason() {
        for (id, why) in [
            ("", "empty"),
            ("../etc/passwd", "`/`"),
            ("..", "`..`"),
            ("20261127T031500Z-1a2b3c4d/..", "`/`"),
            ("20261127T031500Z-1a2b\0c4d", "NUL"),
            ("20261127T031500Z-1A2B3C4D", "format"),
            ("20261127T031500Z-1a2b3c4", "format"),
            ("20261127T031500Z-1a2b3c4d.pb.gz", "format"),
            ("x0261127T031500Z-1a2b3c4d", "format"),
        ] {
            let err = ProfileId::parse(id).unwrap_err();
            assert!(err.contains(why) && err.contains(EXAMPLE), "{id:?}: {err}");
        }
        assert_eq!(ProfileId::from_file_name("20261127T031500Z-1a2b3c4d.pb.gz.tmp"), None);
        assert_eq!(ProfileId::from_file_name("notes.txt"), None);
    }
}
