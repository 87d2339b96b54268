//! Reaching the keys a command works on: the running keytap agent when SSH_AUTH_SOCK is
//! keytap's (it owns the tokens then), else the tokens themselves.

use std::path::PathBuf;

use super::AppError;
use crate::agent::KeyReport;
use crate::cli::TokenArgs;
use crate::client;
use crate::paths;
use crate::token::mock::MockToken;
use crate::token::{piv, Token, TokenKind};

/// The mock token's state directory: `--state-dir`, else the default.
pub fn mock_dir(state_dir: Option<PathBuf>) -> PathBuf {
    state_dir.unwrap_or_else(paths::default_mock_dir)
}

/// `--state-dir` names a mock token; with `--token piv` it cannot apply.
pub fn check_token_args(args: &TokenArgs) -> Result<(), AppError> {
    if args.kind() == TokenKind::Piv && args.state_dir.is_some() {
        return Err(AppError::Message("--state-dir is for the mock token and cannot apply to --token piv; drop one of them".into()));
    }
    Ok(())
}

/// Open the tokens a command names, directly (no agent in between).
pub fn open_tokens(args: &TokenArgs) -> Result<Vec<Box<dyn Token>>, AppError> {
    check_token_args(args)?;
    let opened = match args.kind() {
        TokenKind::Mock => MockToken::open(&mock_dir(args.state_dir.clone())).map(|t| vec![Box::new(t) as Box<dyn Token>]),
        TokenKind::Piv => piv::open_all(),
    };
    opened.map_err(|e| match client::keytap_agent() {
        // A running agent owns the cards: say so instead of a bare PC/SC error.
        Some(_) if args.kind() == TokenKind::Piv => AppError::Message(format!(
            "{e} (a keytap agent is running and may hold the YubiKey: drop --token to go through it, or release the card with `ssh-add -D`)"
        )),
        _ => e.into(),
    })
}

/// The running keytap agent for a command that did not name a token; else `None`, after saying
/// on stderr why an agent at SSH_AUTH_SOCK is not used (a foreign agent, or none listening).
pub fn agent_for(args: &TokenArgs) -> Option<(client::AgentClient, crate::agent::StatusReport)> {
    if args.explicit() {
        return None;
    }
    let path = std::env::var_os("SSH_AUTH_SOCK").filter(|p| !p.is_empty())?;
    let mut agent = match client::AgentClient::connect(std::path::Path::new(&path)) {
        Ok(agent) => agent,
        Err(e) => {
            eprintln!("keytap: note: {e}; opening the token directly");
            return None;
        }
    };
    match agent.status() {
        Ok(status) => Some((agent, status)),
        Err(_) => {
            eprintln!(
                "keytap: note: SSH_AUTH_SOCK ({}) is an agent, but not keytap; opening the token directly",
                std::path::Path::new(&path).display()
            );
            None
        }
    }
}

pub fn reports_from_tokens(tokens: Vec<Box<dyn Token>>) -> Result<Vec<KeyReport>, AppError> {
    let mut keys = Vec::new();
    for mut token in tokens {
        keys.extend(token.keys()?.iter().map(KeyReport::from));
    }
    Ok(keys)
}

/// The token keys, through the running keytap agent when SSH_AUTH_SOCK is keytap's and no
/// token was named, else from the tokens themselves.
pub fn key_reports(token: &TokenArgs) -> Result<Vec<KeyReport>, AppError> {
    match agent_for(token) {
        Some((_, status)) if status.locked => {
            Err(AppError::Message("the agent is locked; unlock it with `ssh-add -X`".into()))
        }
        Some((_, status)) => Ok(status.tokens.into_iter().flat_map(|t| t.keys).collect()),
        None => reports_from_tokens(open_tokens(token)?),
    }
}
