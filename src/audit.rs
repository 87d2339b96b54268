//! The audit log: one JSON line per request, appended and on its way to disk before the
//! client gets its answer. Never the signed data, only its SHA-256.
//!
//! Anyone who can reach the socket can make requests that are refused, so refusals must not
//! be able to push other records out of the rotated files:
//!
//! - each peer process may write a burst of refusals in full; beyond it, its refusals are
//!   counted, with one record saying so when that starts and a summary with the count (and the
//!   last reason) at least once a minute while it lasts and when it ends;
//! - while the next rotation would delete records younger than the retention age (the log is
//!   full of recent records), every refusal is only counted, across all peers, in one summary
//!   a minute: then only uses of keys (`allow`) and those summaries can rotate the log;
//! - a rotation that does delete records younger than the retention age writes a record saying
//!   which file went and how recent it was.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

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

/// How the log keeps a flood of refusals from erasing it (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Records younger than this are not rotated away without a record saying so, and while the
    /// next rotation would do that, refusals are only counted.
    pub min_age: Duration,
    /// Refusals one peer process may write in full before they are counted instead.
    pub peer_burst: u32,
    /// One more full refusal record per peer per this interval.
    pub peer_refill: Duration,
    /// Counted refusals are summed up in one record at least this often while they go on.
    pub summary_every: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            min_age: Duration::from_secs(30 * 24 * 3600),
            peer_burst: 20,
            peer_refill: Duration::from_secs(3),
            summary_every: Duration::from_secs(60),
        }
    }
}

/// At most this many peers are rate-limited one by one; refusals of any more are counted
/// together (a fork loop makes a new pid per request).
const MAX_TRACKED_PEERS: usize = 256;

/// A count is written out once its peer has been quiet this long.
const QUIET: Duration = Duration::from_secs(10);

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
    retention: Retention,
    /// When the newest record in the file the next rotation deletes was written (None: no
    /// such file), for telling whether a rotation would drop young records.
    doomed_mtime: Option<SystemTime>,
    peers: HashMap<(u32, Option<i32>), PeerBudget>,
    /// Refusals counted across peers (under pressure, or beyond [`MAX_TRACKED_PEERS`]).
    overall: Counted,
}

/// One peer's refusal budget (a token bucket) and what it has not written in full.
struct PeerBudget {
    tokens: f64,
    refilled: Instant,
    /// Over budget: every refusal is counted until the peer has been quiet for a while.
    limited: bool,
    counted: Counted,
}

/// Refusals counted instead of written.
#[derive(Default)]
struct Counted {
    count: u64,
    /// When counting started (monotonic, for the summary interval) and its wall-clock time.
    since: Option<(Instant, String)>,
    /// When the last one was counted (a quiet peer's count is written out).
    latest: Option<Instant>,
    last: Option<Record>,
    peers: std::collections::HashSet<(u32, Option<i32>)>,
}

impl Counted {
    fn add(&mut self, record: &Record, now: Instant) {
        self.count += 1;
        self.since.get_or_insert_with(|| (now, record.time.clone()));
        self.latest = Some(now);
        if self.peers.len() < 10_000 {
            self.peers.insert((record.peer.uid, record.peer.pid));
        }
        self.last = Some(record.clone());
    }

    /// A summary record of what was counted, and a fresh start.
    fn take_summary(&mut self, several_peers: bool) -> Option<Record> {
        if self.count == 0 {
            return None;
        }
        let taken = std::mem::take(self);
        let last = taken.last.expect("counted records have a last one");
        let since = taken.since.map(|(_, t)| t).unwrap_or_default();
        let mut details = serde_json::Map::new();
        details.insert("count".into(), taken.count.into());
        details.insert("first".into(), since.clone().into());
        details.insert("last".into(), last.time.clone().into());
        details.insert("last_event".into(), last.event.clone().into());
        let (peer, scope) = if several_peers {
            details.insert("peers".into(), taken.peers.len().into());
            (PeerRecord { chain: format!("{} peer processes", taken.peers.len()), ..PeerRecord::default() }, "from any peer")
        } else {
            (last.peer.clone(), "from this peer")
        };
        Some(Record {
            time: now_rfc3339(),
            event: "refusals-counted".into(),
            peer,
            key: None,
            purpose: last.purpose.clone(),
            details,
            forwarded: last.forwarded,
            decision: last.decision.clone(),
            reason: format!(
                "{} refused requests {scope} since {since} were counted, not written one by one (audit rate limit); the last: {}",
                taken.count, last.reason
            ),
            duration_ms: 0,
            data_sha256: None,
        })
    }
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
        AuditLog::open_with(path, max_bytes, keep, Retention::default())
    }

    pub fn open_with(path: &Path, max_bytes: u64, keep: u32, retention: Retention) -> Result<AuditLog, AuditError> {
        let err = |source| AuditError { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = open_append(path).map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        let mut inner = Inner {
            path: path.to_path_buf(),
            file,
            size,
            max_bytes,
            keep,
            retention,
            doomed_mtime: None,
            peers: HashMap::new(),
            overall: Counted::default(),
        };
        inner.doomed_mtime = inner.mtime_of_doomed();
        Ok(AuditLog { inner: Arc::new(Mutex::new(inner)) })
    }

    /// Append one record with a single write(2) (so a killed agent never leaves half a line),
    /// then rotate if the file grew past its limit. A refusal beyond its peer's budget, or
    /// while the log is under pressure, is counted instead (see the module docs); `Ok` either
    /// way. Blocking: call from a blocking context.
    pub fn append(&self, record: &Record) -> Result<(), AuditError> {
        self.append_at(record, Instant::now(), SystemTime::now())
    }

    /// [`AuditLog::append`] with the clock passed in, for tests.
    fn append_at(&self, record: &Record, now: Instant, wall: SystemTime) -> Result<(), AuditError> {
        let mut inner = self.inner.lock().expect("audit lock");
        let path = inner.path.clone();
        let err = |source| AuditError { path: path.clone(), source };
        for due in inner.admit(record, now, wall) {
            inner.write(&due, wall).map_err(err)?;
        }
        Ok(())
    }
}

impl Inner {
    fn numbered(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}.{n}", self.path.display()))
    }

    fn mtime_of_doomed(&self) -> Option<SystemTime> {
        std::fs::metadata(self.numbered(self.keep)).and_then(|m| m.modified()).ok()
    }

    /// Would the next rotation delete records younger than the retention age?
    fn under_pressure(&self, wall: SystemTime) -> bool {
        self.doomed_mtime.is_some_and(|m| wall.duration_since(m).unwrap_or_default() < self.retention.min_age)
    }

    /// What to write for `record`, in order: due summaries, then the record itself unless it
    /// is a refusal to count.
    fn admit(&mut self, record: &Record, now: Instant, wall: SystemTime) -> Vec<Record> {
        let mut out = Vec::new();
        let every = self.retention.summary_every;
        let quiet = QUIET.min(every);
        let due = |c: &Counted| {
            c.since.as_ref().is_some_and(|(t, _)| now.saturating_duration_since(*t) >= every)
                || c.latest.is_some_and(|t| now.saturating_duration_since(t) >= quiet)
        };
        if due(&self.overall) {
            out.extend(self.overall.take_summary(true));
        }
        for budget in self.peers.values_mut() {
            if due(&budget.counted) {
                if budget.counted.latest.is_some_and(|t| now.saturating_duration_since(t) >= quiet) {
                    budget.limited = false;
                }
                out.extend(budget.counted.take_summary(false));
            }
        }
        if record.decision == "allow" {
            out.push(record.clone());
            return out;
        }
        if self.under_pressure(wall) {
            if self.overall.count == 0 {
                tracing::warn!("the audit log is full of records younger than its retention age; refusals are now counted, not written one by one");
            }
            self.overall.add(record, now);
            return out;
        }
        let peer = (record.peer.uid, record.peer.pid);
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_TRACKED_PEERS {
            // Forget the peers that have nothing counted and full budgets first; if none,
            // count this one with everybody else.
            let burst = f64::from(self.retention.peer_burst);
            let refill = self.retention.peer_refill.as_secs_f64().max(f64::MIN_POSITIVE);
            self.peers.retain(|_, b| {
                b.limited || b.counted.count > 0 || b.tokens + now.saturating_duration_since(b.refilled).as_secs_f64() / refill < burst
            });
            if self.peers.len() >= MAX_TRACKED_PEERS {
                self.overall.add(record, now);
                return out;
            }
        }
        let retention = self.retention.clone();
        let budget = self.peers.entry(peer).or_insert_with(|| PeerBudget {
            tokens: f64::from(retention.peer_burst),
            refilled: now,
            limited: false,
            counted: Counted::default(),
        });
        let refill = retention.peer_refill.as_secs_f64().max(f64::MIN_POSITIVE);
        budget.tokens = (budget.tokens + now.saturating_duration_since(budget.refilled).as_secs_f64() / refill)
            .min(f64::from(retention.peer_burst));
        budget.refilled = now;
        if !budget.limited && budget.tokens >= 1.0 {
            budget.tokens -= 1.0;
            out.push(record.clone());
        } else {
            if !budget.limited {
                budget.limited = true;
                let mut notice = record.clone();
                notice.event = "rate-limited".into();
                notice.reason = format!(
                    "this peer made more than {} refused requests in a burst; further ones are counted and summed up every {}s and when it stops ({})",
                    retention.peer_burst,
                    retention.summary_every.as_secs(),
                    record.reason
                );
                out.push(notice);
            }
            budget.counted.add(record, now);
        }
        out
    }

    fn write(&mut self, record: &Record, wall: SystemTime) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).expect("records serialise");
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        if self.size >= self.max_bytes {
            self.rotate(wall)?;
        }
        Ok(())
    }

    fn rotate(&mut self, wall: SystemTime) -> std::io::Result<()> {
        // Dropping the oldest file is fine when its newest record is past the retention age;
        // otherwise it is still done (the disk is bounded) but the log says so.
        let dropped_young = self.under_pressure(wall).then(|| (self.numbered(self.keep), self.doomed_mtime));
        let _ = std::fs::remove_file(self.numbered(self.keep));
        for n in (1..self.keep).rev() {
            let _ = std::fs::rename(self.numbered(n), self.numbered(n + 1));
        }
        std::fs::rename(&self.path, self.numbered(1))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        self.doomed_mtime = self.mtime_of_doomed();
        if let Some((file, Some(mtime))) = dropped_young {
            let newest = humantime::format_rfc3339_millis(mtime).to_string();
            let reason = format!(
                "rotation deleted {} whose newest record ({newest}) was younger than the {}-day retention; \
                 raise --audit-max-bytes, or look for a client flooding the agent",
                file.display(),
                self.retention.min_age.as_secs() / 86400
            );
            tracing::warn!("audit log: {reason}");
            let mut details = serde_json::Map::new();
            details.insert("deleted".into(), file.display().to_string().into());
            details.insert("newest_deleted".into(), newest.into());
            let record = Record {
                time: now_rfc3339(),
                event: "audit-rotated".into(),
                peer: PeerRecord { pid: Some(std::process::id() as i32), uid: nix::unistd::getuid().as_raw(), chain: "keytap".into(), ..PeerRecord::default() },
                key: None,
                purpose: None,
                details,
                forwarded: false,
                decision: "error".into(),
                reason,
                duration_ms: 0,
                data_sha256: None,
            };
            let mut line = serde_json::to_vec(&record).expect("records serialise");
            line.push(b'\n');
            self.file.write_all(&line)?;
            self.size += line.len() as u64;
        }
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Counts not yet written go out when the agent stops.
        let mut pending: Vec<Record> = self.peers.values_mut().filter_map(|b| b.counted.take_summary(false)).collect();
        pending.extend(self.overall.take_summary(true));
        for record in pending {
            let _ = self.write(&record, SystemTime::now());
        }
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
    // User names, namespaces, process names and reasons quoting them come from peers: the whole
    // line is escaped, so no field can move the cursor, erase or hide text, or start a new line.
    let line = format!(
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
    );
    crate::text::escape(&line).into_owned()
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

    fn all_records(path: &Path) -> Vec<Record> {
        files_oldest_first(path)
            .iter()
            .flat_map(|f| std::fs::read_to_string(f).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<_>>())
            .collect()
    }

    fn refusal(pid: i32, i: u64) -> Record {
        let mut r = record(i);
        r.peer.pid = Some(pid);
        r.decision = "deny".into();
        r.reason = "no token holds this key".into();
        r
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
        let all = all_records(&path);
        // Uses of keys rotated away while younger than the retention age are announced.
        assert!(all.iter().any(|r| r.event == "audit-rotated" && r.reason.contains("younger than the 30-day retention")), "{all:?}");
        let all: Vec<&Record> = all.iter().filter(|r| r.event == "sign").collect();
        // Oldest dropped beyond `keep`; what is kept is in order and complete.
        let durations: Vec<u64> = all.iter().map(|r| r.duration_ms).collect();
        assert!(durations.windows(2).all(|w| w[1] == w[0] + 1), "{durations:?}");
        assert_eq!(*durations.last().unwrap(), 19);
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_flood_of_refusals_from_one_peer_cannot_rotate_out_an_allow_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, 4096, 5).unwrap();
        let t0 = Instant::now();
        let wall = SystemTime::now();
        log.append_at(&record(1), t0, wall).unwrap();
        for i in 0..120_000 {
            log.append_at(&refusal(666, i), t0 + Duration::from_micros(i), wall).unwrap();
        }
        let all = all_records(&path);
        assert_eq!(all.iter().filter(|r| r.decision == "allow").count(), 1, "the allow record is still there");
        assert_eq!(all.iter().filter(|r| r.event == "sign").count(), 21, "the allow record and a burst of 20 refusals");
        let notices: Vec<_> = all.iter().filter(|r| r.event == "rate-limited").collect();
        assert_eq!(notices.len(), 1);
        assert!(notices[0].reason.contains("more than 20 refused requests"), "{}", notices[0].reason);
        assert!(files_oldest_first(&path).len() <= 3, "nothing rotated away");

        // The count is written once the peer is quiet (or a minute passes) at the next record.
        let later = t0 + Duration::from_secs(30);
        log.append_at(&record(2), later, wall).unwrap();
        let all = all_records(&path);
        let summaries: Vec<_> = all.iter().filter(|r| r.event == "refusals-counted").collect();
        let counted: u64 = summaries.iter().map(|r| r.details["count"].as_u64().unwrap()).sum();
        assert_eq!(counted + 20, 120_000, "every refusal is written or counted");
        assert!(summaries.iter().all(|r| r.peer.pid == Some(666) && r.reason.contains("from this peer")), "{summaries:?}");
        assert!(summaries.last().unwrap().reason.ends_with("the last: no token holds this key"));
    }

    #[test]
    fn a_busy_peer_is_summed_up_every_minute_and_gets_its_budget_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, 1 << 20, 5).unwrap();
        let t0 = Instant::now();
        let wall = SystemTime::now();
        // One refusal every 100 ms for 130 s: 20 in full, then counted, summed up each minute.
        for i in 0..1300u64 {
            log.append_at(&refusal(7, i), t0 + Duration::from_millis(100 * i), wall).unwrap();
        }
        let all = all_records(&path);
        assert_eq!(all.iter().filter(|r| r.event == "sign").count(), 20);
        assert_eq!(all.iter().filter(|r| r.event == "rate-limited").count(), 1, "one notice while it lasts");
        assert_eq!(all.iter().filter(|r| r.event == "refusals-counted").count(), 2, "a summary every minute");
        // Quiet for a while: the rest is summed up, and the peer gets its budget back.
        let back = t0 + Duration::from_secs(200);
        log.append_at(&refusal(7, 5000), back, wall).unwrap();
        let all = all_records(&path);
        let counted: u64 = all.iter().filter(|r| r.event == "refusals-counted").map(|r| r.details["count"].as_u64().unwrap()).sum();
        assert_eq!(counted, 1280);
        assert_eq!(all.last().unwrap().duration_ms, 5000, "written in full again");
    }

    #[test]
    fn under_pressure_refusals_from_any_number_of_peers_are_counted_together() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, 4096, 2).unwrap();
        let t0 = Instant::now();
        let wall = SystemTime::now();
        log.append_at(&record(1), t0, wall).unwrap();
        // A fork loop: every refusal from a new process.
        for i in 0..20_000u64 {
            log.append_at(&refusal(1000 + i as i32, i), t0 + Duration::from_micros(i), wall).unwrap();
        }
        let all = all_records(&path);
        assert_eq!(all.iter().filter(|r| r.decision == "allow").count(), 1, "the allow record survives");
        assert!(!all.iter().any(|r| r.event == "audit-rotated"), "no young records were dropped");
        log.append_at(&record(2), t0 + Duration::from_secs(61), wall).unwrap();
        let all = all_records(&path);
        let summary = all.iter().find(|r| r.event == "refusals-counted" && r.reason.contains("from any peer")).expect("one summary for all");
        assert!(summary.details["peers"].as_u64().unwrap() > 1000, "{summary:?}");
    }

    #[test]
    fn old_records_rotate_away_without_pressure() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let retention = Retention { min_age: Duration::from_secs(3600), ..Retention::default() };
        let log = AuditLog::open_with(&path, 1000, 2, retention).unwrap();
        let t0 = Instant::now();
        // Files written "two hours ago": rotating them away is fine.
        let later = SystemTime::now() + Duration::from_secs(7200);
        for i in 0..40u64 {
            log.append_at(&record(i), t0, later).unwrap();
        }
        let all = all_records(&path);
        assert!(!all.iter().any(|r| r.event == "audit-rotated"), "{all:?}");
        // Refusals are written in full (per-peer budget only): no pressure.
        for i in 0..5 {
            log.append_at(&refusal(9, i), t0, later).unwrap();
        }
        assert_eq!(all_records(&path).iter().filter(|r| r.decision == "deny" && r.event == "sign").count(), 5);
    }

    #[test]
    fn a_log_line_escapes_what_peers_chose() {
        let mut r = record(3);
        r.time = "2026-11-22T10:00:00.000Z".into();
        r.decision = "deny".into();
        r.details.insert("user".into(), "x\r\x1b[2K2026-11-22T10:00:01.000Z allow  sign\x1b[8m".into());
        r.peer.chain = "ssh\u{202e}hsz <- zsh".into();
        let line = format_record(&r);
        assert!(!line.chars().any(crate::text::needs_escape), "{line}");
        assert!(line.starts_with("2026-11-22T10:00:00.000Z deny "), "{line}");
        assert!(line.contains("x\\r\\x1b[2K2026"), "{line}");
        assert!(line.contains("ssh\\u{202e}hsz"), "{line}");
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
