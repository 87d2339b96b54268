//! Reloading what the agent read at start, on SIGHUP and on `keytap reload` (the
//! `keytap-reload@keytap.dev` extension): the policy config is read again (a config that does
//! not parse keeps the policy already in force, and says why), a PIN file that gave a wrong PIN
//! is trusted again, the certificate directory is read again, and the tokens are let go so the
//! next use reconnects and verifies the PIN from the fixed source.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use ssh_agent_lib::proto::{Extension, Response};
use ssh_encoding::{Decode, Encode};

use super::{encode, event_record, Agent, Connection};
use crate::policy::{Policy, PolicyError};

pub const EXT_RELOAD: &str = "keytap-reload@keytap.dev";

/// Where the agent's policy comes from, so that a reload reads the same place.
#[derive(Clone, Debug, Default)]
pub struct PolicySource {
    /// `--config`; otherwise `$XDG_CONFIG_HOME/keytap/config.toml` when it exists.
    pub explicit: Option<PathBuf>,
}

impl PolicySource {
    pub fn new(explicit: Option<PathBuf>) -> PolicySource {
        PolicySource { explicit }
    }

    /// The file to read now; `None`: no config file, the built-in policy.
    pub fn path(&self) -> Option<PathBuf> {
        match &self.explicit {
            Some(p) => Some(p.clone()),
            None => Some(crate::paths::config_home().join("config.toml")).filter(|p| p.exists()),
        }
    }

    /// Read the policy, and the file it came from.
    pub fn load(&self) -> Result<(Policy, Option<PathBuf>), PolicyError> {
        match self.path() {
            Some(path) => Ok((Policy::load(&path)?, Some(path))),
            None => Ok((Policy::default(), None)),
        }
    }
}

/// What a reload did, as the log and `keytap reload` show it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ReloadReport {
    /// What was read again, one line each.
    pub reloaded: Vec<String>,
    /// What could not be, and what the agent kept instead.
    pub errors: Vec<String>,
}

fn describe_policy(path: Option<&Path>) -> String {
    match path {
        Some(p) => format!("policy: read {}", p.display()),
        None => format!("policy: built-in (no {})", crate::paths::config_home().join("config.toml").display()),
    }
}

impl Agent {
    /// Read the policy, PIN sources and certificates again, and release the tokens.
    pub async fn reload(&self) -> ReloadReport {
        let mut report = ReloadReport::default();
        match self.policy_source.clone() {
            Some(source) => {
                let loaded = tokio::task::spawn_blocking(move || source.load()).await;
                match loaded {
                    Ok(Ok((policy, path))) => {
                        *self.policy.write().expect("policy lock") = Arc::new(policy);
                        report.reloaded.push(describe_policy(path.as_deref()));
                    }
                    Ok(Err(e)) => report.errors.push(format!("{e}; the policy loaded before stays in force")),
                    Err(e) => report.errors.push(format!("reading the policy failed: {e}; the policy loaded before stays in force")),
                }
            }
            None => report.reloaded.push("policy: set by the program that started the agent; nothing to read".into()),
        }
        if let Some(prompter) = &self.prompter {
            prompter.reset();
            report.reloaded.push("PIN sources: a PIN file that gave a wrong PIN is read again at the next use".into());
        }
        if let Some(dir) = self.certs.rescan() {
            report.reloaded.push(format!("certificates: {} is read again at the next listing", dir.display()));
        }
        let tokens = self.tokens();
        for token in &tokens {
            token.release();
        }
        report.reloaded.push(format!("tokens: released {}; the next use reconnects and verifies the PIN again", tokens.len()));
        for line in &report.reloaded {
            tracing::info!("reload: {line}");
        }
        for line in &report.errors {
            tracing::error!("reload: {line}");
        }
        report
    }

    /// Answer `keytap-reload@keytap.dev`; never through a forwarded connection.
    pub(super) async fn reload_extension(&self, conn: &Connection) -> Vec<u8> {
        let report = if conn.forwarded() {
            tracing::warn!(peer = %conn.peer, "reload refused: the connection is a forwarded agent");
            ReloadReport { errors: vec!["refused through a forwarded agent; run `keytap reload` on the agent's machine".into()], ..Default::default() }
        } else {
            tracing::info!(peer = %conn.peer, "reload requested");
            self.reload().await
        };
        let decision = if conn.forwarded() { "deny" } else { "allow" };
        if !self.audit(event_record("reload", &conn.peer, decision, &report.errors.join("; "))).await {
            return super::failure();
        }
        let json = serde_json::to_vec(&report).expect("report serialises");
        let mut details = Vec::new();
        json.encode(&mut details).expect("encoding to a vec");
        encode(Response::ExtensionResponse(Extension { name: EXT_RELOAD.into(), details: details.into() }))
    }
}

/// Reload on every SIGHUP until the agent stops.
pub async fn on_hangup(agent: Arc<Agent>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        tracing::warn!("cannot install a SIGHUP handler; `keytap reload` still works");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading");
        agent.reload().await;
    }
}

/// `keytap reload`: ask the agent behind `SSH_AUTH_SOCK` (else the default socket) to reload,
/// print what it did; an error when something could not be reloaded.
pub fn command() -> Result<(), String> {
    use crate::client::{AgentClient, ClientError};
    let path = std::env::var_os("SSH_AUTH_SOCK")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(super::socket::default_socket_path);
    let mut client = AgentClient::connect(&path).map_err(|e| e.to_string())?;
    let details = match client.extension(EXT_RELOAD, Vec::new()) {
        Ok(details) => details,
        Err(ClientError::Refused) => {
            return Err(format!(
                "{} is not a keytap agent that can reload; point SSH_AUTH_SOCK at keytap's socket (or send the agent SIGHUP: `kill -HUP $SSH_AGENT_PID`)",
                path.display()
            ))
        }
        Err(e) => return Err(e.to_string()),
    };
    let report: ReloadReport = Vec::<u8>::decode(&mut &details[..])
        .map_err(|e| e.to_string())
        .and_then(|json| serde_json::from_slice(&json).map_err(|e| e.to_string()))
        .map_err(|e| format!("unexpected answer from the agent: {e}"))?;
    for line in &report.reloaded {
        println!("{line}");
    }
    if report.errors.is_empty() {
        Ok(())
    } else {
        Err(report.errors.join("\n"))
    }
}
