//! The TCP API's bearer token: read from a file only root (or the agent's own user) can read,
//! and compared in constant time.

use std::{
    fs,
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::Path,
};

use anyhow::{Context as _, Result, bail};

/// Tokens shorter than this are refused: a token is a password a local attacker can try
/// against the loopback port at will.
pub const MIN_TOKEN_LEN: usize = 16;

/// A token the agent accepts, or the commands send.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Reads the token file (MEMMON_API_TOKEN_FILE): one line, surrounding whitespace ignored.
    /// Refused when anyone but its owner may read it, or its owner is neither root nor us.
    pub fn read(path: &Path) -> Result<Self> {
        let what = || format!("MEMMON_API_TOKEN_FILE (--api-token-file) {}", path.display());
        let metadata = fs::metadata(path).with_context(what)?;
        if !metadata.is_file() {
            bail!("{} is not a regular file", what());
        }
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!("{} is readable by group or others (mode {mode:03o}); make it private: chmod 600 {}", what(), path.display());
        }
        // SAFETY: geteuid cannot fail.
        let euid = unsafe { libc::geteuid() };
        if metadata.uid() != 0 && metadata.uid() != euid {
            bail!("{} belongs to uid {}, neither root nor this process' uid {euid}", what(), metadata.uid());
        }
        let text = fs::read_to_string(path).with_context(what)?;
        Self::parse(&text).with_context(what)
    }

    /// The token in a file's text: printable ASCII without spaces (it travels in a header).
    pub fn parse(text: &str) -> Result<Self> {
        let token = text.trim();
        if token.len() < MIN_TOKEN_LEN {
            bail!(
                "the token must be at least {MIN_TOKEN_LEN} characters (found {}); \
                 make one with `head -c 32 /dev/urandom | base64 > FILE`",
                token.len()
            );
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("the token must be one line of printable ASCII without spaces");
        }
        Ok(Self(token.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this token, in time that depends only on the lengths (the length of
    /// a token is not the secret; its bytes are).
    pub fn matches(&self, given: &str) -> bool {
        constant_time_eq(self.0.as_bytes(), given.as_bytes())
    }
}

/// Byte-wise equality whose running time does not depend on where the first difference is.
fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    if expected.len() != given.len() {
        return false;
    }
    let difference = expected.iter().zip(given).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    // black_box: keep the optimizer from turning the fold back into an early exit.
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_only_when_every_byte_is() {
        let token = Token::parse("0123456789abcdef0123").unwrap();
        assert!(token.matches("0123456789abcdef0123"));
        assert!(!token.matches("0123456789abcdef0124"));
        assert!(!token.matches("1123456789abcdef0123"));
        assert!(!token.matches("0123456789abcdef012"));
        assert!(!token.matches(""));
    }

    #[test]
    fn short_or_spaced_tokens_are_refused() {
        assert!(Token::parse("short").unwrap_err().to_string().contains("at least 16"));
        assert!(Token::parse("0123456789 abcdef0123").is_err());
        assert_eq!(Token::parse("  0123456789abcdef\n").unwrap().as_str(), "0123456789abcdef");
    }

    #[test]
    fn files_others_may_read_are_refused() {
        let dir = std::env::temp_dir().join(format!("memmon-token-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        fs::write(&file, "0123456789abcdef0123\n").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        let err = format!("{:#}", Token::read(&file).unwrap_err());
        assert!(err.contains("MEMMON_API_TOKEN_FILE") && err.contains("chmod 600"), "{err}");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Token::read(&file).unwrap().matches("0123456789abcdef0123"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
