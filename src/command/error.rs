//! The one error type of keytap's commands; `main` prints it as `keytap: <message>` and exits
//! with [`AppError::exit_code`].

use crate::agent::socket;
use crate::audit;
use crate::client;
use crate::policy::PolicyError;
use crate::token::TokenError;

/// Errors a command reports; each says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
    #[error(transparent)]
    Client(#[from] client::ClientError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Audit(#[from] audit::AuditError),
    #[error("{0}")]
    Message(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Cot(#[from] crate::cot::CotError),
    #[error(transparent)]
    Buildkite(#[from] crate::buildkite::BuildkiteError),
}

impl AppError {
    /// Exit status for this error.
    pub fn exit_code(&self) -> i32 {
        1
    }
}
