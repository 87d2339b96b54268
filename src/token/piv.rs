//! YubiKey PIV over PC/SC.
// PLACEHOLDER until the PIV backend (issue 3) lands.

use super::{Token, TokenError};

/// Open every connected YubiKey.
pub fn open_all() -> Result<Vec<Box<dyn Token>>, TokenError> {
    Err(TokenError::Unsupported(
        "the PIV backend is not built yet; use --token mock for the software TEST token".into(),
    ))
}
