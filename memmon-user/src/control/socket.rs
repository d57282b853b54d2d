//! The control socket's place and creation. The agent binds it 0600 (under a 0700 directory
//! when it creates the directory), so only root and the agent's own user can connect; the
//! agent then checks each peer's kernel credentials (SO_PEERCRED) as well.

use std::{
    io::ErrorKind,
    os::unix::{
        fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};

/// Where the default sockets live (systemd's RuntimeDirectory=memmon).
pub const RUNTIME_DIR: &str = "/run/memmon";

/// The socket of the agent whose TCP listener is on `port`: several agents on one host (one
/// per MEMMON_LISTEN) get one each, and a command finds its agent's from the same MEMMON_LISTEN.
pub fn default_path(port: u16) -> PathBuf {
    Path::new(RUNTIME_DIR).join(format!("control-{port}.sock"))
}

/// A bound control socket; its file is removed when this drops (if it is still ours).
pub struct ControlSocket {
    pub listener: UnixListener,
    pub path: PathBuf,
    inode: u64,
}

impl ControlSocket {
    /// Binds `path` with mode 0600 from the first instant (umask), creating its directory 0700
    /// if missing. A stale socket left by a dead agent is replaced; a live one is an error.
    pub fn bind(path: &Path) -> Result<Self> {
        let what = || format!("control socket {} (MEMMON_CONTROL_SOCKET / --control-socket)", path.display());
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(parent).with_context(|| {
            format!("cannot create the directory {} of the {}", parent.display(), what())
        })?;
        remove_stale(path).with_context(what)?;
        // The agent is single-threaded here (it binds before attaching), so the process-wide
        // umask change cannot affect another thread's files.
        // SAFETY: umask cannot fail.
        let previous = unsafe { libc::umask(0o177) };
        let bound = UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(previous) };
        let listener = bound.with_context(|| format!("cannot bind the {}", what()))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).with_context(what)?;
        let metadata = std::fs::symlink_metadata(path).with_context(what)?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener, path: path.to_path_buf(), inode: metadata.ino() })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Removes a socket nobody serves any more; refuses to touch anything else.
fn remove_stale(path: &Path) -> Result<()> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err.into()),
    };
    if !metadata.file_type().is_socket() {
        bail!("{} exists and is not a socket; remove it or choose another path", path.display());
    }
    match UnixStream::connect(path) {
        Ok(_) => bail!("another agent serves {} already; give this one its own --listen port or --control-socket", path.display()),
        Err(err) if err.kind() == ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).with_context(|| format!("cannot remove the stale socket {}", path.display()))
        }
        Err(err) => Err(err).with_context(|| format!("cannot tell whether {} is in use", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_paths_differ_by_port() {
        assert_eq!(default_path(9464), Path::new("/run/memmon/control-9464.sock"));
        assert_ne!(default_path(9464), default_path(9465));
    }

    #[test]
    fn binds_0600_whatever_the_umask_and_replaces_only_stale_sockets() {
        let dir = std::env::temp_dir().join(format!("memmon-socket-test-{}", std::process::id()));
        let path = dir.join("sub/control.sock");
        // SAFETY: umask cannot fail.
        let previous = unsafe { libc::umask(0) };
        let socket = ControlSocket::bind(&path).unwrap();
        unsafe { libc::umask(previous) };
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        let err = ControlSocket::bind(&path).err().expect("a live socket is not replaced").to_string();
        assert!(err.contains("control socket"), "{err}");
        drop(socket);
        assert!(!path.exists(), "an agent removes its socket when it stops");
        // A dead agent's socket (its listener closed, the file left) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        drop(ControlSocket::bind(&path).unwrap());
        std::fs::write(dir.join("plain"), b"").unwrap();
        assert!(format!("{:#}", ControlSocket::bind(&dir.join("plain")).err().unwrap()).contains("not a socket"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
