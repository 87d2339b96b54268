//! `keytap list` and `keytap status`: the keys on the tokens and the running agent's state,
//! through the agent when SSH_AUTH_SOCK is keytap's.

use std::path::PathBuf;

use crate::agent::{socket, StatusReport};
use crate::cli::{ListArgs, StatusArgs};
use crate::client;
use crate::command::{open_tokens, reports_from_tokens, AppError};

pub fn list(args: ListArgs) -> Result<(), AppError> {
    let keys = match crate::command::agent_for(&args.token) {
        Some((_, status)) => {
            if status.locked {
                return Err(AppError::Message("the agent is locked; unlock it with `ssh-add -X`".into()));
            }
            status.tokens.into_iter().flat_map(|t| t.keys).collect()
        }
        None => reports_from_tokens(open_tokens(&args.token)?)?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&keys).expect("keys serialise"));
        return Ok(());
    }
    if keys.is_empty() {
        println!("no keys on any token; create one with `keytap setup --slot 9a`");
    }
    for k in &keys {
        println!(
            "{}/{}  {:<8} pin={:<6} touch={:<6} {}",
            k.serial, k.slot, k.algorithm, k.pin_policy, k.touch_policy, k.fingerprint
        );
        println!("  {}", k.authorized_key);
    }
    Ok(())
}

pub fn status(args: StatusArgs) -> Result<(), AppError> {
    let from_env = std::env::var_os("SSH_AUTH_SOCK").filter(|p| !p.is_empty()).map(PathBuf::from);
    let path = from_env.clone().unwrap_or_else(socket::default_socket_path);
    let report: Result<StatusReport, client::ClientError> =
        client::AgentClient::connect(&path).and_then(|mut c| c.status());
    let report = match report {
        Ok(r) => r,
        Err(client::ClientError::Refused) => {
            return Err(AppError::Message(format!(
                "{} is an agent, but not keytap; point SSH_AUTH_SOCK at keytap's socket",
                path.display()
            )))
        }
        Err(e @ client::ClientError::Connect(..)) => {
            return Err(AppError::Message(format!("{e} (`keytap doctor` checks the whole set-up)")))
        }
        Err(e) => return Err(e.into()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).expect("status serialises"));
        return Ok(());
    }
    println!("agent: running (keytap {}, pid {}) at {}", report.version, report.pid, path.display());
    if from_env.is_none() {
        println!("SSH_AUTH_SOCK: not set, so ssh and git do not use keytap; `export SSH_AUTH_SOCK={}`", path.display());
    }
    println!("locked: {}", if report.locked { "yes (unlock with `ssh-add -X`)" } else { "no" });
    if report.tokens.is_empty() {
        println!("tokens: none; plug in your YubiKey (the agent picks it up)");
    }
    for t in &report.tokens {
        match (t.present, t.serial) {
            (true, Some(serial)) => println!(
                "token {}: serial {serial}, {}, firmware {}, {} keys{}",
                t.label,
                t.model.as_deref().unwrap_or("?"),
                t.firmware.as_deref().unwrap_or("?"),
                t.keys.len(),
                if t.keys.is_empty() && !report.locked { "; create one with `keytap setup --slot 9a`" } else { "" }
            ),
            _ => println!("token {}: not present; plug it in", t.label),
        }
    }
    Ok(())
}
