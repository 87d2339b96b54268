//! `keytap log`: print the audit log readably, filtered by time and key, and follow it.

use std::io::Write;
use std::time::Duration;

use crate::audit;
use crate::cli::LogArgs;
use crate::command::AppError;
use crate::paths::default_audit_path;
use crate::token::KeySelector;

/// Parse `--since`: RFC 3339 or an age like `10m`.
fn parse_since(text: &str) -> Result<std::time::SystemTime, AppError> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t);
    }
    let age = humantime::parse_duration(text).map_err(|_| {
        AppError::Message(format!("--since {text:?}: use RFC 3339 (2026-11-22T10:00:00Z) or an age (10m, 2h, 1d)"))
    })?;
    Ok(std::time::SystemTime::now() - age)
}

fn record_matches(r: &audit::Record, since: Option<std::time::SystemTime>, key: Option<&KeySelector>) -> bool {
    if let Some(since) = since {
        match humantime::parse_rfc3339_weak(&r.time) {
            Ok(t) if t >= since => {}
            _ => return false,
        }
    }
    if let Some(key) = key {
        let Some(k) = &r.key else { return false };
        if !key.matches(k.slot.parse().ok().map(|slot| (k.serial, slot)), &k.fingerprint) {
            return false;
        }
    }
    true
}

pub fn run(args: LogArgs) -> Result<(), AppError> {
    let path = args.file.clone().unwrap_or_else(default_audit_path);
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let key = args.key.as_deref().map(str::parse::<KeySelector>).transpose().map_err(|e| AppError::Message(format!("--key: {e}")))?;
    let files = audit::files_oldest_first(&path);
    if files.is_empty() && !args.follow {
        return Err(AppError::Message(format!(
            "no audit log at {}; the agent writes it once it has served a request (see --audit-log)",
            path.display()
        )));
    }
    let mut out = std::io::stdout().lock();
    let mut print = |line: &str| -> std::io::Result<()> {
        if line.trim().is_empty() {
            return Ok(());
        }
        match serde_json::from_str::<audit::Record>(line) {
            Ok(r) if record_matches(&r, since, key.as_ref()) => {
                if args.json {
                    writeln!(out, "{line}")
                } else {
                    writeln!(out, "{}", audit::format_record(&r))
                }
            }
            Ok(_) => Ok(()),
            Err(e) => writeln!(out, "(unreadable record: {e})"),
        }
    };
    for file in &files {
        for line in std::fs::read_to_string(file)?.lines() {
            print(line)?;
        }
    }
    if !args.follow {
        return Ok(());
    }
    // Follow the live file, starting at its current end; reopen when it is rotated.
    use std::io::{Read, Seek, SeekFrom};
    let mut offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let mut pending = String::new();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(mut file) = std::fs::File::open(&path) else { continue };
        let len = file.metadata()?.len();
        if len < offset {
            offset = 0;
        }
        if len == offset {
            continue;
        }
        file.seek(SeekFrom::Start(offset))?;
        let mut chunk = String::new();
        file.read_to_string(&mut chunk)?;
        offset += chunk.len() as u64;
        pending.push_str(&chunk);
        while let Some(newline) = pending.find('\n') {
            let line: String = pending.drain(..=newline).collect();
            print(line.trim_end())?;
        }
        out_flush();
    }
}

fn out_flush() {
    let _ = std::io::stdout().flush();
}
