//! The certificate directory (`$XDG_CONFIG_HOME/keytap/certs/*-cert.pub`): read again when its
//! modification time changes, and at least every few seconds (a certificate rewritten in place
//! does not touch the directory's mtime).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::{parse, Entry, Source};

/// Re-read an unchanged directory at most this often.
pub const RESCAN_EVERY: Duration = Duration::from_secs(5);

/// The default certificate directory.
pub fn default_dir() -> PathBuf {
    crate::paths::config_home().join("certs")
}

/// When the directory was last read.
#[derive(Clone, Debug)]
pub struct DirWatch {
    pub path: PathBuf,
    last: Option<(Option<SystemTime>, Instant)>,
}

/// Should a directory with modification time `mtime` (None: missing) be read again at `now`,
/// given the last read? Pure, for tests.
pub fn needs_rescan(last: Option<(Option<SystemTime>, Instant)>, mtime: Option<SystemTime>, now: Instant) -> bool {
    match last {
        None => true,
        Some((seen, at)) => seen != mtime || now.saturating_duration_since(at) >= RESCAN_EVERY,
    }
}

/// One file that could not be used, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

impl DirWatch {
    pub fn new(path: PathBuf) -> DirWatch {
        DirWatch { path, last: None }
    }

    /// Read the directory at the next poll, whatever its modification time (reload).
    pub fn forget(&mut self) {
        self.last = None;
    }

    /// The directory's certificates if it is time to read them again, else `None`.
    pub fn poll(&mut self, now: Instant) -> Option<(Vec<Entry>, Vec<Skipped>)> {
        let mtime = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if !needs_rescan(self.last, mtime, now) {
            return None;
        }
        self.last = Some((mtime, now));
        Some(read_dir(&self.path))
    }
}

/// A certificate file is at most this big; a larger one is a mistake and is not read.
pub const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Read every `*-cert.pub` in `dir`; a missing directory is empty. Files that cannot be used
/// are reported, never fatal: one bad file must not hide the others. Blocking: the agent calls
/// this on a blocking thread, never on its event loop.
///
/// Only regular files are read, each opened without following a symbolic link and without
/// waiting (`O_NOFOLLOW | O_NONBLOCK`: a FIFO would otherwise block the open), checked with
/// fstat after opening (so what is read is what was checked), and read no further than
/// [`MAX_FILE_BYTES`]. At most [`super::MAX_DIR`] certificates are taken, by file name.
pub fn read_dir(dir: &Path) -> (Vec<Entry>, Vec<Skipped>) {
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    let Ok(listing) = std::fs::read_dir(dir) else { return (entries, skipped) };
    let mut paths: Vec<PathBuf> = listing
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with("-cert.pub")))
        .collect();
    paths.sort();
    for path in paths {
        let name = path.display().to_string();
        if entries.len() >= super::MAX_DIR {
            let reason = format!("{name}: the directory holds more than {} certificates; only the first {} by name are offered", super::MAX_DIR, super::MAX_DIR);
            skipped.push(Skipped { path, reason });
            continue;
        }
        match read_cert_file(&path).and_then(|t| parse(&t, &name).map_err(|e| e.to_string())) {
            Ok(cert) => entries.push(Entry::new(cert, Source::Dir(path), name)),
            Err(reason) => skipped.push(Skipped { path, reason }),
        }
    }
    (entries, skipped)
}

/// One certificate file's text, read safely (see [`read_dir`]).
fn read_cert_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.display();
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let file = std::fs::OpenOptions::new().read(true).custom_flags(flags.bits()).open(path).map_err(|e| {
        if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) {
            format!("{name}: is a symbolic link; keytap reads only regular files here, so copy the certificate into the directory")
        } else {
            format!("{name}: cannot read it: {e}")
        }
    })?;
    let meta = file.metadata().map_err(|e| format!("{name}: cannot read it: {e}"))?;
    if !meta.file_type().is_file() {
        return Err(format!("{name}: is not a regular file (a FIFO, device, socket or directory); keytap reads only regular certificate files"));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("{name}: larger than {} KiB; not a certificate", MAX_FILE_BYTES / 1024));
    }
    let mut text = String::new();
    // Bounded even if the file grows after the fstat.
    file.take(MAX_FILE_BYTES + 1).read_to_string(&mut text).map_err(|e| format!("{name}: cannot read it: {e}"))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("{name}: larger than {} KiB; not a certificate", MAX_FILE_BYTES / 1024));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use ssh_key::certificate::CertType;

    #[test]
    fn rescan_when_never_read_when_mtime_changes_or_after_the_interval() {
        let t0 = Instant::now();
        let m1 = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1));
        let m2 = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(2));
        assert!(needs_rescan(None, m1, t0));
        assert!(!needs_rescan(Some((m1, t0)), m1, t0 + Duration::from_secs(1)));
        assert!(needs_rescan(Some((m1, t0)), m2, t0 + Duration::from_secs(1)));
        assert!(needs_rescan(Some((m1, t0)), None, t0), "directory removed");
        assert!(needs_rescan(Some((None, t0)), m1, t0), "directory created");
        assert!(!needs_rescan(Some((None, t0)), None, t0 + Duration::from_secs(4)));
        assert!(needs_rescan(Some((m1, t0)), m1, t0 + RESCAN_EVERY));
    }

    #[test]
    fn reads_only_cert_files_and_reports_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let ca = key();
        let subject = key().public_key().key_data().clone();
        let c = cert(&ca, &subject, "good", 1, 2, CertType::User);
        std::fs::write(dir.path().join("good-cert.pub"), c.to_openssh().unwrap()).unwrap();
        std::fs::write(dir.path().join("bad-cert.pub"), "not a cert").unwrap();
        std::fs::write(dir.path().join("id_ed25519.pub"), "ignored").unwrap();
        let (entries, skipped) = read_dir(dir.path());
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].cert.key_id(), "good");
        assert_eq!(entries[0].source, Source::Dir(dir.path().join("good-cert.pub")));
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].path, dir.path().join("bad-cert.pub"));
        assert!(skipped[0].reason.contains("bad-cert.pub"), "{}", skipped[0].reason);
    }

    #[test]
    fn fifos_devices_symlinks_and_big_files_are_skipped_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let ca = key();
        let subject = key().public_key().key_data().clone();
        let c = cert(&ca, &subject, "good", 1, 2, CertType::User);
        let good = dir.path().join("good-cert.pub");
        std::fs::write(&good, c.to_openssh().unwrap()).unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo-cert.pub"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero-cert.pub")).unwrap();
        std::os::unix::fs::symlink(&good, dir.path().join("link-cert.pub")).unwrap();
        std::fs::create_dir(dir.path().join("dir-cert.pub")).unwrap();
        std::fs::write(dir.path().join("big-cert.pub"), vec![b'a'; MAX_FILE_BYTES as usize + 1]).unwrap();
        // Returns (a FIFO with no writer would block a plain open forever).
        let (entries, skipped) = read_dir(dir.path());
        assert_eq!(entries.len(), 1);
        let reason = |n: &str| skipped.iter().find(|s| s.path.ends_with(n)).map(|s| s.reason.clone()).unwrap_or_default();
        assert!(reason("fifo-cert.pub").contains("not a regular file"), "{skipped:?}");
        assert!(reason("zero-cert.pub").contains("symbolic link"), "{skipped:?}");
        assert!(reason("link-cert.pub").contains("symbolic link"), "{skipped:?}");
        assert!(reason("dir-cert.pub").contains("not a regular file"), "{skipped:?}");
        assert!(reason("big-cert.pub").contains("larger than 64 KiB"), "{skipped:?}");
        assert_eq!(skipped.len(), 5);
    }

    #[test]
    fn at_most_max_dir_certificates_are_taken() {
        let dir = tempfile::tempdir().unwrap();
        let ca = key();
        let subject = key().public_key().key_data().clone();
        for i in 0..super::super::MAX_DIR + 3 {
            let c = cert(&ca, &subject, &format!("c{i:03}"), 1, 2, CertType::User);
            std::fs::write(dir.path().join(format!("{i:03}-cert.pub")), c.to_openssh().unwrap()).unwrap();
        }
        let (entries, skipped) = read_dir(dir.path());
        assert_eq!(entries.len(), super::super::MAX_DIR);
        assert_eq!(entries[0].cert.key_id(), "c000");
        assert_eq!(skipped.len(), 3);
        assert!(skipped[0].reason.contains("more than 32 certificates"), "{skipped:?}");
    }

    #[test]
    fn missing_directory_is_empty_and_poll_respects_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let mut watch = DirWatch::new(dir.path().join("certs"));
        let t0 = Instant::now();
        assert_eq!(watch.poll(t0).map(|(e, s)| (e.len(), s.len())), Some((0, 0)));
        assert!(watch.poll(t0 + Duration::from_secs(1)).is_none());
        std::fs::create_dir(dir.path().join("certs")).unwrap();
        assert!(watch.poll(t0 + Duration::from_secs(1)).is_some(), "the directory appeared");
    }
}
