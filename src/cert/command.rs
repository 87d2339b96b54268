//! `keytap cert add|list|remove`: talk to the running agent over `keytap-cert@keytap.dev`.

use std::path::Path;

use crate::agent::cert_ext::{decode_reply, CertOp, CertReply, CertReport, EXT_CERT};
use crate::cert::{self, Selector};
use crate::cli::CertCommand;
use crate::client::{self, AgentClient};
use crate::command::AppError;

pub fn run(cmd: CertCommand) -> Result<(), AppError> {
    match cmd {
        CertCommand::Add { file } => add(&file),
        CertCommand::List { json } => list(json),
        CertCommand::Remove { target } => remove(&target),
    }
}

fn agent() -> Result<AgentClient, AppError> {
    client::keytap_agent().map(|(c, _)| c).ok_or_else(|| {
        AppError::Message(format!(
            "`keytap cert` works through the running keytap agent, and SSH_AUTH_SOCK does not point at one; \
             start it with `eval $(keytap agent)`, or put the certificate in {} where the agent picks it up",
            cert::scan::default_dir().display()
        ))
    })
}

fn ask(op: CertOp) -> Result<CertReply, AppError> {
    let details = agent()?.extension(EXT_CERT, op.encode())?;
    let reply = decode_reply(&details).map_err(|e| AppError::Message(format!("unexpected answer from the agent: {e}")))?;
    match reply.error {
        Some(e) => Err(AppError::Message(e)),
        None => Ok(reply),
    }
}

fn read_cert(file: &Path) -> Result<ssh_key::Certificate, AppError> {
    let name = file.display().to_string();
    let text = std::fs::read_to_string(file).map_err(|e| AppError::Message(format!("{name}: cannot read it: {e}")))?;
    cert::parse(&text, &name).map_err(|e| AppError::Message(e.to_string()))
}

fn add(file: &Path) -> Result<(), AppError> {
    let certificate = read_cert(file)?;
    let blob = certificate.to_bytes().map_err(|e| AppError::Message(e.to_string()))?;
    let reply = ask(CertOp::Add { blob, name: file.display().to_string() })?;
    for c in &reply.certs {
        println!("added certificate {:?} for {}", c.key_id, c.key_fingerprint);
        println!("  principals: {}; {}", principals(c), window(c, cert::unix_now()));
    }
    Ok(())
}

fn list(json: bool) -> Result<(), AppError> {
    let reply = ask(CertOp::List)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply.certs).expect("certs serialise"));
        return Ok(());
    }
    if reply.certs.is_empty() {
        println!("no certificates; add one with `keytap cert add FILE-cert.pub`");
    }
    let now = cert::unix_now();
    for c in &reply.certs {
        println!(
            "{:?} serial {} {} [{}]{}",
            c.key_id,
            c.serial,
            c.key_fingerprint,
            c.status,
            if c.offered { "" } else { " (not offered)" }
        );
        println!("  principals: {}; {}; from {}", principals(c), window(c, now), c.source);
    }
    Ok(())
}

fn remove(target: &str) -> Result<(), AppError> {
    let path = Path::new(target);
    let selector = if path.is_file() {
        Selector::Blob(read_cert(path)?.to_bytes().map_err(|e| AppError::Message(e.to_string()))?)
    } else {
        Selector::KeyId(target.to_string())
    };
    let reply = ask(CertOp::Remove(selector))?;
    if reply.removed > 0 {
        println!("removed {} certificate{}", reply.removed, if reply.removed == 1 { "" } else { "s" });
    }
    for file in &reply.in_directory {
        println!("still offered from {file}: delete that file to stop offering it");
    }
    if reply.removed == 0 && reply.in_directory.is_empty() {
        return Err(AppError::Message(format!("no certificate matches {target:?}; see `keytap cert list`")));
    }
    Ok(())
}

fn principals(c: &CertReport) -> String {
    if c.principals.is_empty() {
        "(any)".into()
    } else {
        c.principals.join(",")
    }
}

/// "valid for 4m59s more", "expired 3s ago", "valid in 10s".
pub fn window(c: &CertReport, now: u64) -> String {
    if now < c.valid_after {
        format!("valid in {}", duration(c.valid_after - now))
    } else if now >= c.valid_before {
        format!("expired {} ago", duration(now - c.valid_before))
    } else if c.valid_before == u64::MAX {
        "valid forever".into()
    } else {
        format!("valid for {} more", duration(c.valid_before - now))
    }
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s if s < 86400 * 2 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(after: u64, before: u64) -> CertReport {
        CertReport {
            key_id: "id".into(),
            serial: 1,
            principals: vec![],
            valid_after: after,
            valid_before: before,
            status: String::new(),
            offered: true,
            key_fingerprint: String::new(),
            source: "added".into(),
            certificate: String::new(),
        }
    }

    #[test]
    fn windows_read_naturally() {
        assert_eq!(window(&report(100, 400), 101), "valid for 4m59s more");
        assert_eq!(window(&report(100, 400), 403), "expired 3s ago");
        assert_eq!(window(&report(100, 400), 90), "valid in 10s");
        assert_eq!(window(&report(0, u64::MAX), 90), "valid forever");
        assert_eq!(window(&report(0, 100 + 7200), 100), "valid for 2h00m more");
    }
}
