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

/// Read every `*-cert.pub` in `dir`; a missing directory is empty. Files that do not parse are
/// reported, never fatal: one bad file must not hide the others.
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
        // Certificates are small; a huge file is a mistake and is not read whole.
        match std::fs::metadata(&path) {
            Ok(m) if m.len() > 64 * 1024 => {
                skipped.push(Skipped { path, reason: "larger than 64 KiB; not a certificate".into() });
                continue;
            }
            Err(e) => {
                skipped.push(Skipped { path, reason: e.to_string() });
                continue;
            }
            Ok(_) => {}
        }
        match std::fs::read_to_string(&path).map_err(|e| e.to_string()).and_then(|t| parse(&t, &name).map_err(|e| e.to_string())) {
            Ok(cert) => entries.push(Entry::new(cert, Source::Dir(path), name)),
            Err(reason) => skipped.push(Skipped { path, reason }),
        }
    }
    (entries, skipped)
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
