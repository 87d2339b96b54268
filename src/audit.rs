//! The audit log: one JSON line per request, appended and on its way to disk before the
//! client gets its answer. Never the signed data, only its SHA-256.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::peer::PeerInfo;

/// One audit record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Record {
    /// RFC 3339, UTC.
    pub time: String,
    /// `sign`, `lock`, `unlock`, `refused-peer`.
    pub event: String,
    pub peer: PeerRecord,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key: Option<KeyRecord>,
    /// `ssh-auth`, `sshsig:git`, `raw`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub purpose: Option<String>,
    /// user@host, namespace, method...
    #[serde(skip_serializing_if = "serde_json::Map::is_empty", default)]
    pub details: serde_json::Map<String, serde_json::Value>,
    pub forwarded: bool,
    /// `allow`, `deny` or `error`.
    pub decision: String,
    pub reason: String,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub data_sha256: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct PeerRecord {
    pub pid: Option<i32>,
    pub uid: u32,
    pub exe: Option<String>,
    pub cmdline: Option<String>,
    pub chain: String,
}

impl From<&PeerInfo> for PeerRecord {
    fn from(p: &PeerInfo) -> Self {
        PeerRecord {
            pid: p.pid,
            uid: p.uid,
            exe: p.exe.as_ref().map(|e| e.display().to_string()),
            cmdline: p.cmdline.clone(),
            chain: p.chain(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KeyRecord {
    pub fingerprint: String,
    pub serial: u32,
    pub slot: String,
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Append-only JSON Lines file with size-based rotation (`audit.jsonl.1` ... `.N`).
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {source}; check that its directory is writable")]
pub struct AuditError {
    path: PathBuf,
    source: std::io::Error,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

impl AuditLog {
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> Result<AuditLog, AuditError> {
        let err = |source| AuditError { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = open_append(path).map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        Ok(AuditLog { inner: Arc::new(Mutex::new(Inner { path: path.to_path_buf(), file, size, max_bytes, keep })) })
    }

    /// Append one record with a single write(2) (so a killed agent never leaves half a line),
    /// then rotate if the file grew past its limit. Blocking: call from a blocking context.
    pub fn append(&self, record: &Record) -> Result<(), AuditError> {
        let mut line = serde_json::to_vec(record).expect("records serialise");
        line.push(b'\n');
        let mut inner = self.inner.lock().expect("audit lock");
        let path = inner.path.clone();
        let err = |source| AuditError { path: path.clone(), source };
        inner.file.write_all(&line).map_err(err)?;
        inner.size += line.len() as u64;
        if inner.size >= inner.max_bytes {
            inner.rotate().map_err(err)?;
        }
        Ok(())
    }
}

impl Inner {
    fn rotate(&mut self) -> std::io::Result<()> {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        let _ = std::fs::remove_file(numbered(self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(numbered(n), numbered(n + 1));
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

/// All log files, oldest first (rotated ones, then the live one).
pub fn files_oldest_first(path: &Path) -> Vec<PathBuf> {
    let mut files: Vec<(u32, PathBuf)> = Vec::new();
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let file_name = entry.file_name().to_string_lossy().into_owned();
                if let Some(n) = file_name.strip_prefix(&format!("{name}.")).and_then(|n| n.parse::<u32>().ok()) {
                    files.push((n, entry.path()));
                }
            }
        }
    }
    files.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut out: Vec<PathBuf> = files.into_iter().map(|(_, p)| p).collect();
    if path.exists() {
        out.push(path.to_path_buf());
    }
    out
}

/// One line of `keytap log`.
pub fn format_record(r: &Record) -> String {
    let key = r.key.as_ref().map(|k| format!("{}/{} {}", k.serial, k.slot, k.fingerprint)).unwrap_or_else(|| "-".into());
    let purpose = r.purpose.clone().unwrap_or_else(|| "-".into());
    let target = match (r.details.get("user"), r.details.get("host")) {
        (Some(u), Some(h)) => format!(" {}@{}", u.as_str().unwrap_or("?"), h.as_str().unwrap_or("?")),
        (Some(u), None) => format!(" {}", u.as_str().unwrap_or("?")),
        // A Buildkite step signature (purpose jws) names its repository.
        _ => r.details.get("repository").and_then(|v| v.as_str()).map(|repo| format!(" {repo}")).unwrap_or_default(),
    };
    let pid = r.peer.pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
    format!(
        "{} {:<6} {:<8} {}{}{} key={} by {} (pid {pid}) {}ms{}",
        r.time,
        r.decision,
        r.event,
        purpose,
        target,
        if r.forwarded { " [forwarded]" } else { "" },
        key,
        r.peer.chain,
        r.duration_ms,
        if r.reason.is_empty() { String::new() } else { format!(": {}", r.reason) }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u64) -> Record {
        Record {
            time: now_rfc3339(),
            event: "sign".into(),
            peer: PeerRecord { pid: Some(42), uid: 1000, exe: Some("/usr/bin/ssh".into()), cmdline: None, chain: "ssh <- zsh".into() },
            key: Some(KeyRecord { fingerprint: "SHA256:abc".into(), serial: 1, slot: "9a".into() }),
            purpose: Some("ssh-auth".into()),
            details: serde_json::Map::new(),
            forwarded: false,
            decision: "allow".into(),
            reason: String::new(),
            duration_ms: i,
            data_sha256: Some("00".into()),
        }
    }

    #[test]
    fn appends_lines_and_rotates_by_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, 1000, 2).unwrap();
        for i in 0..20 {
            log.append(&record(i)).unwrap();
        }
        let files = files_oldest_first(&path);
        assert_eq!(files.len(), 3, "{files:?}");
        assert!(files[0].ends_with("audit.jsonl.2") && files[1].ends_with("audit.jsonl.1"));
        let all: Vec<Record> = files
            .iter()
            .flat_map(|f| std::fs::read_to_string(f).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<_>>())
            .collect();
        // Oldest dropped beyond `keep`; what is kept is in order and complete.
        let durations: Vec<u64> = all.iter().map(|r| r.duration_ms).collect();
        assert!(durations.windows(2).all(|w| w[1] == w[0] + 1), "{durations:?}");
        assert_eq!(*durations.last().unwrap(), 19);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn formats_a_readable_line() {
        let mut r = record(3);
        r.time = "2026-11-22T10:00:00.000Z".into();
        r.details.insert("user".into(), "git".into());
        r.details.insert("host".into(), "github.com".into());
        assert_eq!(
            format_record(&r),
            "2026-11-22T10:00:00.000Z allow  sign     ssh-auth git@github.com key=1/9a SHA256:abc by ssh <- zsh (pid 42) 3ms"
        );
        let mut jws = record(3);
        jws.time = "2026-11-22T10:00:00.000Z".into();
        jws.purpose = Some("jws".into());
        jws.details.insert("repository".into(), "https://github.com/o/r.git".into());
        assert_eq!(
            format_record(&jws),
            "2026-11-22T10:00:00.000Z allow  sign     jws https://github.com/o/r.git key=1/9a SHA256:abc by ssh <- zsh (pid 42) 3ms"
        );
    }
}
