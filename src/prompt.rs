//! The seam for talking to the person at the keyboard: PIN entry, confirmations, notices.
//!
//! The agent never reads a terminal. PINs come from a PIN file or systemd credential (headless
//! workers), or from `pinentry`; confirmations use the `SSH_ASKPASS` protocol; notices go to
//! `notify-send` where present and always to the log. Tests script all of it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use zeroize::Zeroizing;

use crate::token::Pin;

/// What a PIN prompt shows.
#[derive(Clone, Debug)]
pub struct PinRequest {
    pub serial: u32,
    pub retries: u8,
    /// Who asked and what for, e.g. "git (pid 4242) sign with sshsig:git".
    pub reason: String,
    /// Set when the previous PIN was wrong.
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("no way to ask for the PIN: configure --pin-file, a systemd credential `keytap-pin`, or install pinentry")]
    NoPinSource,
    #[error("PIN file {0}: {1}")]
    PinFile(PathBuf, String),
    #[error("{0} failed: {1}")]
    Program(String, String),
}

/// PIN entry, confirmation and notification. Implementations block; they run on token owner
/// threads, never on the async runtime.
pub trait Prompter: Send + Sync {
    /// Ask for the PIN. `Ok(None)` means the user cancelled.
    fn pin(&self, request: &PinRequest) -> Result<Option<Pin>, PromptError>;
    /// Ask the user to allow something. `false` on "no", cancel or any failure.
    fn confirm(&self, message: &str) -> bool;
    /// Tell the user something (e.g. "touch your YubiKey"); best effort.
    fn notify(&self, message: &str);
}

/// The prompter used by the real agent.
#[derive(Debug, Default)]
pub struct SystemPrompter {
    /// A file holding the PIN (mode 0600 or stricter, owned by us).
    pub pin_file: Option<PathBuf>,
    /// The pinentry program; `pinentry` on PATH when unset.
    pub pinentry: Option<String>,
    /// The askpass program for confirmations; `$SSH_ASKPASS` when unset.
    pub askpass: Option<String>,
    /// A PIN source that gave a wrong PIN is not used again: a second try would spend a retry.
    file_pin_rejected: AtomicBool,
    /// Asking for a FIDO security key's PIN (systemd credential `keytap-fido-pin`).
    fido: bool,
}

impl SystemPrompter {
    pub fn new(pin_file: Option<PathBuf>, pinentry: Option<String>, askpass: Option<String>) -> Self {
        SystemPrompter { pin_file, pinentry, askpass, file_pin_rejected: AtomicBool::new(false), fido: false }
    }

    /// The prompter for FIDO PINs: its own file and systemd credential (`keytap-fido-pin`).
    pub fn for_fido(pin_file: Option<PathBuf>, pinentry: Option<String>, askpass: Option<String>) -> Self {
        SystemPrompter { fido: true, ..SystemPrompter::new(pin_file, pinentry, askpass) }
    }

    fn pin_file_path(&self) -> Option<PathBuf> {
        self.pin_file.clone().or_else(|| {
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY")?;
            let path = Path::new(&dir).join(if self.fido { "keytap-fido-pin" } else { "keytap-pin" });
            path.exists().then_some(path)
        })
    }
}

impl Prompter for SystemPrompter {
    fn pin(&self, request: &PinRequest) -> Result<Option<Pin>, PromptError> {
        if let Some(path) = self.pin_file_path() {
            if request.error.is_none() && !self.file_pin_rejected.load(Ordering::SeqCst) {
                return read_pin_file(&path).map(Some);
            }
            // The file's PIN was wrong: never replay it; fall through to an interactive source.
            self.file_pin_rejected.store(true, Ordering::SeqCst);
            tracing::error!(file = %path.display(), "the PIN from this file was wrong; fix the file and send SIGHUP to keytap");
        }
        let program = self.pinentry.clone().unwrap_or_else(|| "pinentry".into());
        if self.pinentry.is_none() && which(&program).is_none() {
            return Err(PromptError::NoPinSource);
        }
        let mut desc = if self.fido {
            format!("Enter the FIDO PIN of your security key ({} tries left).\n{}", request.retries, request.reason)
        } else {
            format!("Enter the PIN of YubiKey {} ({} tries left).\n{}", request.serial, request.retries, request.reason)
        };
        if let Some(error) = &request.error {
            desc = format!("{error}\n{desc}");
        }
        pinentry_ask(&program, &desc, "PIN:")
    }

    fn confirm(&self, message: &str) -> bool {
        let Some(program) = self.askpass.clone().or_else(|| std::env::var("SSH_ASKPASS").ok()) else {
            tracing::warn!("confirmation needed but no askpass program is set (SSH_ASKPASS); refusing");
            return false;
        };
        askpass_confirm(&program, message)
    }

    fn notify(&self, message: &str) {
        tracing::warn!("{message}");
        if which("notify-send").is_some()
            && (std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some())
        {
            let _ = Command::new("notify-send")
                .args(["--app-name=keytap", "--urgency=critical", "keytap", message])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
        }
    }
}

impl SystemPrompter {
    /// Forget that the PIN file was wrong (SIGHUP: the operator fixed it).
    pub fn reset(&self) {
        self.file_pin_rejected.store(false, Ordering::SeqCst);
    }
}

/// Read a PIN file, refusing one that others could read.
pub fn read_pin_file(path: &Path) -> Result<Pin, PromptError> {
    let err = |m: String| PromptError::PinFile(path.to_path_buf(), m);
    let meta = std::fs::metadata(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    if meta.mode() & 0o077 != 0 {
        return Err(err(format!("mode {:o} lets others read it; run `chmod 600 {}`", meta.mode() & 0o777, path.display())));
    }
    if meta.uid() != nix::unistd::geteuid().as_raw() {
        return Err(err("it is owned by another user".into()));
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?);
    let pin = Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_string());
    if pin.is_empty() {
        return Err(err("it is empty".into()));
    }
    Ok(pin)
}

/// Find a program on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).exists().then(|| PathBuf::from(program));
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(program)).find(|p| p.is_file())
}

/// Percent-encode for an Assuan command argument.
fn assuan_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '%' | '\n' | '\r' => out.push_str(&format!("%{:02X}", c as u32)),
            _ => out.push(c),
        }
    }
    out
}

fn assuan_unescape(data: &str) -> Zeroizing<String> {
    let bytes = data.as_bytes();
    let mut out = Zeroizing::new(Vec::with_capacity(bytes.len()));
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&data[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    Zeroizing::new(String::from_utf8_lossy(&out).into_owned())
}

/// Ask for a secret (PIN, PUK) with `pinentry` (or the given program); `Ok(None)` if cancelled.
pub fn ask_with_pinentry(pinentry: Option<&str>, description: &str, prompt: &str) -> Result<Option<Pin>, PromptError> {
    let program = pinentry.unwrap_or("pinentry");
    if pinentry.is_none() && which(program).is_none() {
        return Err(PromptError::NoPinSource);
    }
    pinentry_ask(program, description, prompt)
}

/// Ask for a secret through the pinentry Assuan protocol.
fn pinentry_ask(program: &str, description: &str, prompt: &str) -> Result<Option<Pin>, PromptError> {
    let fail = |e: String| PromptError::Program(program.to_string(), e);
    let mut child = Command::new(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    let expect_ok = |stdout: &mut BufReader<_>, line: &mut String| -> Result<(), PromptError> {
        line.clear();
        stdout.read_line(line).map_err(|e| fail(e.to_string()))?;
        if line.starts_with("OK") {
            Ok(())
        } else {
            Err(fail(format!("unexpected answer {:?}", line.trim())))
        }
    };
    expect_ok(&mut stdout, &mut line)?;
    for command in [
        "SETTITLE keytap".to_string(),
        format!("SETDESC {}", assuan_escape(description)),
        format!("SETPROMPT {}", assuan_escape(prompt)),
    ] {
        writeln!(stdin, "{command}").map_err(|e| fail(e.to_string()))?;
        expect_ok(&mut stdout, &mut line)?;
    }
    writeln!(stdin, "GETPIN").map_err(|e| fail(e.to_string()))?;
    let mut pin = None;
    loop {
        let mut reply = Zeroizing::new(String::new());
        let n = stdout.read_line(&mut reply).map_err(|e| fail(e.to_string()))?;
        if n == 0 {
            return Err(fail("closed the connection".into()));
        }
        if let Some(data) = reply.strip_prefix("D ") {
            pin = Some(assuan_unescape(data.trim_end_matches(['\n', '\r'])));
        } else if reply.starts_with("OK") {
            break;
        } else if reply.starts_with("ERR") {
            // Cancelled (ERR 83886179) or any other failure: no PIN.
            pin = None;
            break;
        }
    }
    let _ = writeln!(stdin, "BYE");
    drop(stdin);
    let _ = child.wait();
    Ok(pin)
}

/// Ask yes/no through an SSH_ASKPASS program (exit status 0 = yes).
fn askpass_confirm(program: &str, message: &str) -> bool {
    let status = Command::new(program)
        .arg(message)
        .env("SSH_ASKPASS_PROMPT", "confirm")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .output();
    match status {
        Ok(out) => out.status.success(),
        Err(e) => {
            tracing::warn!(program, "askpass failed: {e}; refusing");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pin_file_must_be_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "123456\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_pin_file(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_pin_file(&path).unwrap().as_str(), "123456");
    }

    #[test]
    fn assuan_round_trip() {
        assert_eq!(assuan_escape("a%b\nc"), "a%25b%0Ac");
        assert_eq!(assuan_unescape("12%2534").as_str(), "12%34");
        assert_eq!(assuan_unescape("abc%").as_str(), "abc%");
    }
}
