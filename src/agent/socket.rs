//! The listening socket: 0600 inside a 0700 directory, or handed over by systemd.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("{path}: directory is accessible by other users (mode {mode:o}); use a private directory (chmod 700) or omit --socket")]
    DirectoryNotPrivate { path: PathBuf, mode: u32 },
    #[error("{0}: directory is owned by another user; use a directory of your own")]
    DirectoryNotOwned(PathBuf),
    #[error("{0}: another agent is already listening there; stop it or choose another --socket")]
    InUse(PathBuf),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("systemd socket activation: {0}")]
    Activation(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SocketError + '_ {
    move |source| SocketError::Io { path: path.to_path_buf(), source }
}

/// The default socket path: `$XDG_RUNTIME_DIR/keytap/agent.sock`, else `/tmp/keytap-UID/agent.sock`.
pub fn default_socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => Path::new(&dir).join("keytap").join("agent.sock"),
        _ => PathBuf::from(format!("/tmp/keytap-{}", nix::unistd::geteuid())).join("agent.sock"),
    }
}

/// Create (or check) the socket's directory: ours, mode 0700.
fn prepare_directory(dir: &Path) -> Result<(), SocketError> {
    if !dir.exists() {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    }
    let meta = fs::symlink_metadata(dir).map_err(io_err(dir))?;
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(SocketError::DirectoryNotOwned(dir.to_path_buf()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(SocketError::DirectoryNotPrivate { path: dir.to_path_buf(), mode: meta.mode() & 0o777 });
    }
    Ok(())
}

/// Bind the agent socket at `path` with mode 0600 in a private directory. A stale socket
/// (nobody listening) is replaced; a live one is an error.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, SocketError> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    prepare_directory(dir)?;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse(path.to_path_buf()));
        }
        fs::remove_file(path).map_err(io_err(path))?;
    }
    // Tighten the umask around bind so the socket is never briefly reachable by others.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(io_err(path))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err(path))?;
    Ok(listener)
}

/// A socket passed by systemd (`LISTEN_FDS`), if any.
pub fn from_systemd() -> Result<Option<std::os::unix::net::UnixListener>, SocketError> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let listener = fds
        .take_unix_listener(0)
        .map_err(|e| SocketError::Activation(e.to_string()))?
        .ok_or_else(|| SocketError::Activation("LISTEN_FDS is set but fd 3 is not a Unix socket".into()))?;
    Ok(Some(listener))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_0600_in_0700_directory() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("keytap").join("agent.sock");
        let _listener = bind(&path).unwrap();
        assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::metadata(path.parent().unwrap()).unwrap().mode() & 0o777, 0o700);
        assert!(matches!(bind(&path), Err(SocketError::InUse(_))));
    }

    #[test]
    fn refuses_shared_directory_and_replaces_stale_socket() {
        let base = tempfile::tempdir().unwrap();
        let shared = base.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o755)).unwrap();
        let err = bind(&shared.join("a.sock")).unwrap_err();
        assert!(matches!(err, SocketError::DirectoryNotPrivate { .. }), "{err}");

        let private = base.path().join("private");
        let path = private.join("a.sock");
        drop(bind(&path).unwrap());
        assert!(path.exists(), "stale socket left behind");
        let _again = bind(&path).unwrap();
    }
}
