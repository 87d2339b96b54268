//! Dispatch: each `keytap` command (parsed in `cli`) to the module that owns it. `main.rs`
//! only parses arguments and calls in here; nothing below imports this module.

use crate::cli::{Cli, Command};
use crate::command::AppError;

pub fn run(cli: Cli) -> Result<(), AppError> {
    match cli.command {
        Command::Agent(args) => crate::daemon::run(args),
        Command::List(args) => crate::status::list(args),
        Command::Status(args) => crate::status::status(args),
        Command::Doctor(args) => crate::doctor::run(args),
        Command::Mock(cmd) => crate::mock::run(cmd),
        Command::Setup(args) => crate::setup::run(args),
        Command::Cert(cmd) => crate::cert::command::run(cmd),
        Command::Git(crate::cli::GitCommand::Setup(args)) => crate::git_signing::setup(args),
        Command::AuthorizedKey(args) => crate::git_signing::authorized_key(args),
        Command::Log(args) => crate::log::run(args),
        Command::Attest(args) => crate::attest::command::run(*args),
        Command::Cot(cmd) => Ok(crate::cot::command::run(cmd)?),
        Command::Reload => crate::agent::reload::command().map_err(AppError::Message),
        Command::Completions(args) => crate::completions::completions(args),
        Command::Approvals(args) => crate::remembered::command::run(args),
        Command::Buildkite(cmd) => Ok(crate::buildkite::command::run(cmd)?),
        Command::Fido(cmd) => crate::fido::command::run(cmd),
    }
}
