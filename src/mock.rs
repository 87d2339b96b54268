//! `keytap mock init|unplug|plug|touch|imported`: create and steer the mock TEST token (the
//! token itself is `token::mock`).

use std::path::PathBuf;

use crate::cli::MockCommand;
use crate::command::{mock_dir, AppError};
use crate::token::mock::{InitOptions, MockToken};
use crate::token::Token;

pub fn run(cmd: MockCommand) -> Result<(), AppError> {
    match cmd {
        MockCommand::Init { state_dir, force, serial } => {
            let dir = mock_dir(state_dir);
            let path = MockToken::init(&dir, &InitOptions { force, serial })?;
            let mut token = MockToken::open(&dir)?;
            let info = token.info()?;
            println!("Created a mock TEST token (serial {}) in {}", info.serial, path.display());
            println!("Its private keys are stored there in plain text: never use them for anything real.");
            println!("PIN 123456, PUK 12345678. Start an agent on it: keytap agent --token mock --state-dir {}", dir.display());
            Ok(())
        }
        MockCommand::Unplug { state_dir } => {
            let dir = existing_mock(state_dir)?;
            std::fs::write(dir.join("unplugged"), b"")?;
            println!("mock token unplugged");
            Ok(())
        }
        MockCommand::Plug { state_dir } => {
            let dir = existing_mock(state_dir)?;
            match std::fs::remove_file(dir.join("unplugged")) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            println!("mock token plugged in");
            Ok(())
        }
        MockCommand::Touch { mode, state_dir } => {
            mode.parse::<crate::token::mock::TouchMode>().map_err(AppError::Message)?;
            let dir = existing_mock(state_dir)?;
            std::fs::write(dir.join("touch"), format!("{mode}\n"))?;
            println!("mock touch: {mode}");
            Ok(())
        }
        MockCommand::Imported { slot, undo, state_dir } => {
            let dir = existing_mock(state_dir)?;
            MockToken::open(&dir)?.set_attestable(slot, undo)?;
            println!("slot {slot}: {}", if undo { "generated on the token (attestable)" } else { "imported (not attestable)" });
            Ok(())
        }
    }
}

fn existing_mock(state_dir: Option<PathBuf>) -> Result<PathBuf, AppError> {
    let dir = mock_dir(state_dir);
    MockToken::open(&dir)?;
    Ok(dir)
}
