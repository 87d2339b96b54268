//! Buildkite signed pipelines: sign each command step with a token key through the agent (a
//! JWS that buildkite-agent verifies), publish the JWKS, verify signed pipelines.
//!
//! [`yaml`] reads the pipeline as Buildkite's parser does and writes it back; [`pipeline`]
//! computes each command step's signed values; [`jcs`] is RFC 8785; [`jws`] is JWS/JWK/JWKS.
//! `command` is the `keytap buildkite` command.

pub mod command;
pub mod jcs;
pub mod jws;
pub mod pipeline;
pub mod yaml;

use std::path::PathBuf;

use crate::client::ClientError;

#[derive(Debug, thiserror::Error)]
pub enum BuildkiteError {
    #[error("SSH_AUTH_SOCK is not set; start the agent (`eval $(keytap agent)`) so the pipeline is signed without the key leaving the token")]
    NoAgent,
    #[error(transparent)]
    Agent(#[from] ClientError),
    #[error("the agent refused to sign with {0}; see the agent's log (`keytap log`): PIN, touch or purpose policy (the key needs `jws` allowed)")]
    AgentRefused(String),
    #[error("{0}")]
    Key(String),
    #[error("{0}")]
    Input(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{step}: {message}")]
    Step { step: String, message: String },
    #[error("{failed} of {total} command step(s) failed verification (listed above); do not run this pipeline")]
    Rejected { failed: usize, total: usize },
}
