//! The profile directory: private (0700), files private (0600), written whole or not at all.
//!
//! The agent usually runs as root and the directory may be reachable by others, so nothing here
//! follows a symbolic link: files are created with O_EXCL|O_NOFOLLOW and renamed into place
//! (a rename replaces a link rather than writing through it), and cleanup looks at entries with
//! lstat and only ever removes regular files named like memmon's profiles.

use std::{
    collections::HashSet,
    fs,
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use super::id::ProfileId;

const TEMPORARY_SUFFIX: &str = ".tmp";

#[derive(Clone, Debug)]
pub struct ProfileDir {
    path: PathBuf,
}

/// What a cleanup did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Cleanup {
    /// (file name, bytes, age in days) of every profile removed.
    pub removed: Vec<(String, u64, f64)>,
    /// Profiles younger than the limit, or still being written.
    pub kept: usize,
    /// (file name, why) of entries named like profiles that were left alone.
    pub skipped: Vec<(String, String)>,
}

impl ProfileDir {
    /// Creates the directory (0700) if missing; an existing one open to others is made private.
    pub fn open(path: &Path) -> io::Result<Self> {
        if !path.is_dir() {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
        }
        let mode = fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            log::warn!("profile directory {} was mode {:o}; making it 0700", path.display(), mode & 0o777);
            fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
        }
        Ok(Self { path: path.to_path_buf() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn path_of(&self, id: &ProfileId) -> PathBuf {
        self.path.join(id.file_name())
    }

    /// Replaces the profile `id` with `bytes`, atomically: readers see the old file or the new
    /// one, never a part. On failure (a full disk, say) the old file is left as it was.
    pub fn write(&self, id: &ProfileId, bytes: &[u8]) -> io::Result<()> {
        let final_path = self.path_of(id);
        let temporary = self.path.join(format!("{}{TEMPORARY_SUFFIX}", id.file_name()));
        let _ = fs::remove_file(&temporary); // a leftover of a crash; ids are never reused otherwise
        let written = (|| {
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&temporary)?;
            file.write_all(bytes)?;
            file.sync_data()
        })();
        match written.and_then(|()| fs::rename(&temporary, &final_path)) {
            Ok(()) => Ok(()),
            Err(err) => {
                let _ = fs::remove_file(&temporary);
                Err(err)
            }
        }
    }

    /// The bytes of profile `id`, if it is a regular file here (a link is not followed).
    pub fn read(&self, id: &ProfileId) -> io::Result<Vec<u8>> {
        let mut file = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(self.path_of(id))?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut file, &mut bytes)?;
        Ok(bytes)
    }

    /// Removes the profiles (and leftover temporary files) last written more than `older_than`
    /// before `now`, except those in `keep` (running sessions).
    pub fn cleanup(&self, older_than: Duration, now: SystemTime, keep: &HashSet<ProfileId>) -> io::Result<Cleanup> {
        let mut cleanup = Cleanup::default();
        for entry in fs::read_dir(&self.path)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let id = ProfileId::from_file_name(name.strip_suffix(TEMPORARY_SUFFIX).unwrap_or(&name));
            let Some(id) = id else { continue }; // not ours: left alone, not even reported
            let metadata = entry.path().symlink_metadata()?;
            if metadata.file_type().is_symlink() {
                cleanup.skipped.push((name, "a symbolic link (never followed)".into()));
                continue;
            }
            if !metadata.is_file() {
                cleanup.skipped.push((name, "not a regular file".into()));
                continue;
            }
            let modified = SystemTime::UNIX_EPOCH + Duration::from_secs(metadata.mtime().max(0) as u64);
            let age = now.duration_since(modified).unwrap_or_default();
            if keep.contains(&id) || age <= older_than {
                cleanup.kept += 1;
                continue;
            }
            fs::remove_file(entry.path())?;
            cleanup.removed.push((name, metadata.len(), age.as_secs_f64() / 86_400.0));
        }
        cleanup.removed.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(cleanup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("memmon-store-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn id(n: u32) -> ProfileId {
        ProfileId::parse(&format!("20261127T031500Z-{n:08x}")).unwrap()
    }

    #[test]
    fn directory_and_files_are_private_and_writes_replace_whole_files() {
        let path = temp_dir("private");
        fs::create_dir_all(&path).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let dir = ProfileDir::open(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o700);
        dir.write(&id(1), b"first").unwrap();
        dir.write(&id(1), b"second").unwrap();
        assert_eq!(dir.read(&id(1)).unwrap(), b"second");
        assert_eq!(fs::metadata(dir.path_of(&id(1))).unwrap().permissions().mode() & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(&path).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
        fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn a_planted_link_is_replaced_not_written_through_and_never_read() {
        let path = temp_dir("link");
        let dir = ProfileDir::open(&path).unwrap();
        let outside = temp_dir("link-outside");
        fs::write(&outside, b"precious").unwrap();
        std::os::unix::fs::symlink(&outside, dir.path_of(&id(2))).unwrap();
        assert!(dir.read(&id(2)).is_err(), "a link is not read");
        dir.write(&id(2), b"profile").unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"precious");
        assert!(!dir.path_of(&id(2)).symlink_metadata().unwrap().file_type().is_symlink());
        fs::remove_file(&outside).unwrap();
        fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn cleanup_removes_only_old_regular_profiles() {
        let path = temp_dir("cleanup");
        let dir = ProfileDir::open(&path).unwrap();
        for n in 1..=4 {
            dir.write(&id(n), b"x").unwrap();
        }
        fs::write(path.join("notes.txt"), b"not ours").unwrap();
        let outside = temp_dir("cleanup-outside");
        fs::write(&outside, b"precious").unwrap();
        std::os::unix::fs::symlink(&outside, dir.path_of(&id(5))).unwrap();
        let day = Duration::from_secs(86_400);
        // Files were written now; seen from 10 days ahead they are 10 days old.
        let later = SystemTime::now() + 10 * day;
        let keep = HashSet::from([id(4)]);
        let cleanup = dir.cleanup(7 * day, later, &keep).unwrap();
        let removed: Vec<&str> = cleanup.removed.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(removed, [id(1).file_name(), id(2).file_name(), id(3).file_name()]);
        assert!(cleanup.removed.iter().all(|r| r.1 == 1 && r.2 > 9.9));
        assert_eq!(cleanup.kept, 1, "the running session's file");
        assert_eq!(cleanup.skipped, [(id(5).file_name(), "a symbolic link (never followed)".to_string())]);
        assert_eq!(fs::read(&outside).unwrap(), b"precious");
        assert!(path.join("notes.txt").exists());
        // Nothing is old yet seen from now.
        dir.write(&id(6), b"x").unwrap();
        assert_eq!(dir.cleanup(7 * day, SystemTime::now(), &HashSet::new()).unwrap().removed, []);
        fs::remove_file(&outside).unwrap();
        fs::remove_dir_all(&path).unwrap();
    }
}
