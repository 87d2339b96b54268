//! What every command shares, below the command families: the error type a command reports
//! (each error says what to do next), opening the tokens a command names or reaching the
//! running agent, and printing results.
//!
//! The families (`setup`, `mock`, `status`, `log`, `daemon`, `attest::command`,
//! `cert::command`, `git_signing`, `cot::command`) import from here; nothing here imports a
//! family or `app`, the dispatch at the top.

mod error;
mod tokens;

pub use error::AppError;
pub use tokens::{agent_for, check_token_args, key_reports, mock_dir, open_tokens, reports_from_tokens};
