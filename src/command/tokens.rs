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

/// Open the tokens a command names, directly (no agent in between).
pub fn open_tokens(args: &TokenArgs) -> Result<Vec<Box<dyn Token>>, AppError> {
    match args.token {
        TokenKind::Mock => Ok(vec![Box::new(MockToken::open(&mock_dir(args.state_dir.clone()))?)]),
        TokenKind::Piv => Ok(piv::open_all()?),
    }
}

pub fn reports_from_tokens(tokens: Vec<Box<dyn Token>>) -> Result<Vec<KeyReport>, AppError> {
    let mut keys = Vec::new();
    for mut token in tokens {
        keys.extend(token.keys()?.iter().map(KeyReport::from));
    }
    Ok(keys)
}

/// The token keys, through the running keytap agent when SSH_AUTH_SOCK is keytap's, else from
/// the tokens themselves.
pub fn key_reports(token: &TokenArgs) -> Result<Vec<KeyReport>, AppError> {
    match client::keytap_agent() {
        Some((_, status)) if status.locked => {
            Err(AppError::Message("the agent is locked; unlock it with `ssh-add -X`".into()))
        }
        Some((_, status)) => Ok(status.tokens.into_iter().flat_map(|t| t.keys).collect()),
        None => reports_from_tokens(open_tokens(token)?),
    }
}
