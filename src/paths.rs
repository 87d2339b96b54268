//! Default locations (XDG base directories).

use std::path::PathBuf;

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/"))
}

fn xdg(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => home().join(fallback),
    }
}

/// `$XDG_STATE_HOME/keytap`.
pub fn state_home() -> PathBuf {
    xdg("XDG_STATE_HOME", ".local/state").join("keytap")
}

/// `$XDG_CONFIG_HOME/keytap`.
pub fn config_home() -> PathBuf {
    xdg("XDG_CONFIG_HOME", ".config").join("keytap")
}

/// The mock token's default state directory.
pub fn default_mock_dir() -> PathBuf {
    state_home().join("mock")
}

/// The audit log's default file, which the agent writes and `keytap log` reads.
pub fn default_audit_path() -> PathBuf {
    state_home().join("audit.jsonl")
}
