//! Chain of trust for CI workers, compatible with Taskcluster: a worker signs each task run's
//! artifact digests with a token key through the agent; a release pipeline verifies.
//!
//! Library entry points: [`hash::hash_tree`], [`document::CotDocument`], [`sign::sign_document`],
//! [`verify::verify_cot`]. [`command::run`] is the `keytap cot` command.

pub mod command;
pub mod document;
pub mod hash;
pub mod sign;
pub mod trust;
pub mod verify;

use std::path::PathBuf;

use crate::client::ClientError;
use hash::HashError;
pub use verify::{verify_cot, Failure, Report, VerifyOptions};

/// The document's file name, as Taskcluster publishes it (under `public/`).
pub const COT_FILE: &str = "chain-of-trust.json";

#[derive(Debug, thiserror::Error)]
pub enum CotError {
    #[error("SSH_AUTH_SOCK is not set; start the agent (`eval $(keytap agent)`) so the worker can sign without holding the key")]
    NoAgent,
    #[error(transparent)]
    Agent(#[from] ClientError),
    #[error("the agent refused to sign with {0}; see the agent's log (PIN, touch or purpose policy) and retry")]
    AgentRefused(String),
    #[error("{0}")]
    NoKey(String),
    #[error("signing failed: {0}; check the token and retry")]
    BadSignature(String),
    #[error("{0}")]
    Hash(#[from] HashError),
    #[error("{0}")]
    Input(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("chain of trust rejected ({0} problem(s) above); do not trust these artifacts")]
    Rejected(usize),
}
