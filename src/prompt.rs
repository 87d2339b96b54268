//! The seam for talking to the person at the keyboard: PIN entry, confirmations, notices.
//!
//! The agent never reads a terminal itself. PINs come from a PIN file or systemd credential
//! (headless workers), or from `pinentry`: a desktop one in a graphical session, else one drawn
//! on the requesting program's terminal (the way `ssh` asks for a passphrase), else on the
//! agent's own terminal when it runs in the foreground. Confirmations use the `SSH_ASKPASS`
//! protocol; notices go to `notify-send` where present and always to the log. Tests script all
//! of it.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use zeroize::Zeroizing;

use crate::text::ensure_safe;
use crate::token::Pin;

/// What a PIN prompt shows, and where.
#[derive(Clone, Debug)]
pub struct PinRequest {
    pub serial: u32,
    pub retries: u8,
    /// Who asked and what for, e.g. "git (pid 4242) sign with sshsig:git".
    pub reason: String,
    /// Set when the previous PIN was wrong.
    pub error: Option<String>,
    /// The requesting program's terminal, when it has one.
    pub terminal: Option<Terminal>,
}

/// A terminal a pinentry can draw on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Terminal {
    /// The device, e.g. /dev/pts/3.
    pub path: PathBuf,
    /// Its type (TERM), when known.
    pub term: Option<String>,
}

impl Terminal {
    /// This process's own controlling terminal (a foreground agent's, a command's).
    pub fn own() -> Option<Terminal> {
        crate::peer::controlling_terminal(std::process::id() as i32, nix::unistd::geteuid().as_raw())
    }
}

/// Where a PIN prompt is shown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PinPlace {
    /// A graphical pinentry on the desktop session (DISPLAY or WAYLAND_DISPLAY).
    Desktop,
    /// A terminal pinentry on this terminal.
    Terminal(Terminal),
    /// Neither is known, but a pinentry was named with --pinentry: it runs as it is, told no
    /// terminal (a script, or a program that knows where to ask).
    Configured,
}

/// Pinentry's "Operation cancelled" (GPG_ERR_CANCELED from the pinentry source): the user said no.
pub const ASSUAN_CANCELLED: u32 = 83_886_179;

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("no way to ask for the PIN: configure --pin-file, a systemd credential `keytap-pin`, or install pinentry (`apt install pinentry-curses`)")]
    NoPinSource,
    #[error("no terminal or desktop to show the PIN prompt on: run the program that wants the key in a terminal, start `keytap agent --foreground` in one, or give the agent --pin-file")]
    NoPinPlace,
    #[error("PIN file {0}: {1}")]
    PinFile(PathBuf, String),
    #[error("{0} failed: {1}")]
    Program(String, String),
}

/// Whether this process runs in a graphical session.
pub fn desktop_session() -> bool {
    ["DISPLAY", "WAYLAND_DISPLAY"].iter().any(|v| std::env::var_os(v).is_some_and(|d| !d.is_empty()))
}

/// Where to ask: the desktop in a graphical session; else the requester's terminal; else our own.
pub fn pin_place(desktop: bool, requester: Option<&Terminal>, own: Option<&Terminal>) -> Option<PinPlace> {
    if desktop {
        return Some(PinPlace::Desktop);
    }
    requester.or(own).cloned().map(PinPlace::Terminal)
}

/// [`pin_place`], or [`PinPlace::Configured`] when no place is known but a pinentry was named.
fn place_or_configured(place: Option<PinPlace>, configured: Option<&str>) -> Option<PinPlace> {
    place.or(configured.map(|_| PinPlace::Configured))
}

/// The pinentry for a place: the configured one, else pinentry-curses (then -tty, then plain
/// `pinentry`) for a terminal, else `pinentry` (the desktop's choice) for the desktop.
pub fn pinentry_program(configured: Option<&str>, place: &PinPlace) -> Option<PathBuf> {
    if let Some(program) = configured {
        return Some(PathBuf::from(program));
    }
    let candidates: &[&str] = match place {
        PinPlace::Desktop => &["pinentry"],
        PinPlace::Terminal(_) => &["pinentry-curses", "pinentry-tty", "pinentry"],
        PinPlace::Configured => &[],
    };
    candidates.iter().find_map(|p| which(p))
}

/// PIN entry, confirmation and notification. Implementations block; they run on token owner
/// threads, never on the async runtime. Messages carry text from peers (user names, process
/// names): callers escape it with `crate::text::escape`, and implementations that show text to a
/// person pass it through `crate::text::ensure_safe` as a second guard.
pub trait Prompter: Send + Sync {
    /// Ask for the PIN. `Ok(None)` means the user cancelled.
    fn pin(&self, request: &PinRequest) -> Result<Option<Pin>, PromptError>;
    /// Ask the user to allow something. `false` on "no", cancel or any failure.
    fn confirm(&self, message: &str) -> bool;
    /// Tell the user something (e.g. "touch your YubiKey"); best effort.
    fn notify(&self, message: &str);
    /// Forget earlier failures, e.g. a PIN file that gave a wrong PIN (reload: the operator
    /// fixed it).
    fn reset(&self) {}
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
    /// This process's terminal (an agent in the foreground, a command), for requesters without one.
    own_terminal: Option<Terminal>,
    /// Asking for a FIDO security key's PIN (systemd credential `keytap-fido-pin`).
    fido: bool,
}

impl SystemPrompter {
    pub fn new(pin_file: Option<PathBuf>, pinentry: Option<String>, askpass: Option<String>) -> Self {
        SystemPrompter { pin_file, pinentry, askpass, file_pin_rejected: AtomicBool::new(false), own_terminal: Terminal::own(), fido: false }
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
        let mut rejected_file = None;
        if let Some(path) = self.pin_file_path() {
            if request.error.is_none() && !self.file_pin_rejected.load(Ordering::SeqCst) {
                return read_pin_file(&path).map(Some);
            }
            // The file's PIN was wrong: never replay it; fall through to an interactive source.
            self.file_pin_rejected.store(true, Ordering::SeqCst);
            tracing::error!(file = %path.display(), "the PIN from this file was wrong; fix the file, then run `keytap reload` (or send the agent SIGHUP)");
            rejected_file = Some(path);
        }
        let no_source = |rejected_file: Option<PathBuf>, otherwise: PromptError| match rejected_file {
            Some(path) => PromptError::PinFile(path, "its PIN is wrong; fix the file (for a running agent, then `keytap reload`)".into()),
            None => otherwise,
        };
        let place = pin_place(desktop_session(), request.terminal.as_ref(), self.own_terminal.as_ref());
        let Some(place) = place_or_configured(place, self.pinentry.as_deref()) else {
            return Err(no_source(rejected_file, PromptError::NoPinPlace));
        };
        let Some(program) = pinentry_program(self.pinentry.as_deref(), &place) else {
            return Err(no_source(rejected_file, PromptError::NoPinSource));
        };
        // The reason names a peer; its text is escaped so it cannot add lines or hide ours.
        let mut desc = if self.fido {
            format!("Enter the FIDO PIN of your security key ({} tries left).\n{}", request.retries, ensure_safe(&request.reason))
        } else {
            format!("Enter the PIN of YubiKey {} ({} tries left).\n{}", request.serial, request.retries, ensure_safe(&request.reason))
        };
        if let Some(error) = &request.error {
            desc = format!("{}\n{desc}", ensure_safe(error));
        }
        tracing::info!(serial = request.serial, pinentry = %program.display(), place = %describe_place(&place), "asking for the PIN");
        pinentry_ask(&program.to_string_lossy(), &place, &desc, "PIN:")
    }

    fn confirm(&self, message: &str) -> bool {
        let Some(program) = self.askpass.clone().or_else(|| std::env::var("SSH_ASKPASS").ok()) else {
            tracing::warn!("confirmation needed but no askpass program is set (SSH_ASKPASS); refusing");
            return false;
        };
        askpass_confirm(&program, &ensure_safe(message))
    }

    fn reset(&self) {
        self.file_pin_rejected.store(false, Ordering::SeqCst);
    }

    fn notify(&self, message: &str) {
        let message: &str = &ensure_safe(message);
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

/// "the desktop" or "terminal /dev/pts/3".
pub fn describe_place(place: &PinPlace) -> String {
    match place {
        PinPlace::Desktop => "the desktop".into(),
        PinPlace::Terminal(t) => format!("terminal {}", t.path.display()),
        PinPlace::Configured => "wherever the configured pinentry asks".into(),
    }
}

/// Ask for a secret (PIN, PUK) with `pinentry` (or the given program) on this command's own
/// terminal or desktop; `Ok(None)` if cancelled.
pub fn ask_with_pinentry(pinentry: Option<&str>, description: &str, prompt: &str) -> Result<Option<Pin>, PromptError> {
    let own = Terminal::own();
    let place = place_or_configured(pin_place(desktop_session(), None, own.as_ref()), pinentry).ok_or(PromptError::NoPinPlace)?;
    let program = pinentry_program(pinentry, &place).ok_or(PromptError::NoPinSource)?;
    pinentry_ask(&program.to_string_lossy(), &place, description, prompt)
}

/// An Assuan ERR line, "ERR 83886179 Operation cancelled <Pinentry>": (code, text).
fn assuan_error(line: &str) -> Option<(u32, String)> {
    let rest = line.trim_end().strip_prefix("ERR")?.trim_start();
    let (code, text) = rest.split_once(' ').unwrap_or((rest, ""));
    Some((code.parse().ok()?, text.trim().to_string()))
}

/// Start an Assuan server (pinentry) with its stdin and stdout piped to us.
fn spawn_assuan(program: &Path) -> std::io::Result<(Child, ChildStdin, BufReader<ChildStdout>)> {
    let mut child = Command::new(program).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?;
    let stdin = child.stdin.take().expect("piped");
    let stdout = BufReader::new(child.stdout.take().expect("piped"));
    Ok((child, stdin, stdout))
}

/// Ask for a secret through the pinentry Assuan protocol, on `place`.
fn pinentry_ask(program: &str, place: &PinPlace, description: &str, prompt: &str) -> Result<Option<Pin>, PromptError> {
    let fail = |e: String| PromptError::Program(program.to_string(), e);
    let (mut child, mut stdin, mut stdout) = spawn_assuan(program.as_ref()).map_err(|e| fail(e.to_string()))?;
    let mut line = String::new();
    let expect_ok = |stdout: &mut BufReader<_>, line: &mut String| -> Result<(), PromptError> {
        line.clear();
        stdout.read_line(line).map_err(|e| fail(e.to_string()))?;
        if line.starts_with("OK") {
            Ok(())
        } else if let Some((code, text)) = assuan_error(line) {
            Err(fail(format!("ERR {code} {text}")))
        } else if line.is_empty() {
            Err(fail("exited without answering".into()))
        } else {
            Err(fail(format!("unexpected answer {:?}", line.trim())))
        }
    };
    expect_ok(&mut stdout, &mut line)?;
    // A terminal pinentry draws on the terminal named here, not on its own standard streams
    // (they are our pipe), as gpg-agent tells it.
    let mut commands = Vec::new();
    if let PinPlace::Terminal(terminal) = place {
        commands.push(format!("OPTION ttyname={}", assuan_escape(&terminal.path.to_string_lossy())));
        let term = terminal.term.clone().or_else(|| std::env::var("TERM").ok()).unwrap_or_else(|| "xterm".into());
        commands.push(format!("OPTION ttytype={}", assuan_escape(&term)));
    }
    commands.extend([
        "SETTITLE keytap".to_string(),
        format!("SETDESC {}", assuan_escape(description)),
        format!("SETPROMPT {}", assuan_escape(prompt)),
    ]);
    for command in commands {
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
            let _ = writeln!(stdin, "BYE");
            drop(stdin);
            let _ = child.wait();
            return match assuan_error(&reply) {
                // The user cancelled: no PIN, and no failure.
                Some((ASSUAN_CANCELLED, _)) => Ok(None),
                // Anything else (no terminal, no display, a timeout) is the pinentry failing.
                Some((code, text)) => Err(fail(format!("ERR {code} {text}"))),
                None => Err(fail(format!("unexpected answer {:?}", reply.trim()))),
            };
        }
    }
    let _ = writeln!(stdin, "BYE");
    drop(stdin);
    let _ = child.wait();
    Ok(pin)
}

/// Check that `program` runs and speaks the pinentry protocol for `place`, without showing
/// anything: greeting, the terminal options, `GETINFO version`. Returns its version.
pub fn pinentry_check(program: &Path, place: &PinPlace) -> Result<String, PromptError> {
    let name = program.display().to_string();
    let fail = |e: String| PromptError::Program(name.clone(), e);
    let (mut child, mut stdin, mut stdout) = spawn_assuan(program).map_err(|e| fail(e.to_string()))?;
    let mut commands = Vec::new();
    if let PinPlace::Terminal(terminal) = place {
        commands.push(format!("OPTION ttyname={}", assuan_escape(&terminal.path.to_string_lossy())));
    }
    commands.push("GETINFO version".to_string());
    let mut version = String::new();
    let result = (|| {
        // The greeting first, then one answer per command.
        for command in std::iter::once(None).chain(commands.iter().map(Some)) {
            if let Some(command) = command {
                writeln!(stdin, "{command}").map_err(|e| fail(e.to_string()))?;
            }
            loop {
                let mut line = String::new();
                if stdout.read_line(&mut line).map_err(|e| fail(e.to_string()))? == 0 {
                    return Err(fail("exited without answering".into()));
                }
                if let Some(data) = line.strip_prefix("D ") {
                    version = assuan_unescape(data.trim_end()).to_string();
                } else if line.starts_with("OK") {
                    break;
                } else if let Some((code, text)) = assuan_error(&line) {
                    return Err(fail(format!("ERR {code} {text}")));
                } else if !line.starts_with('#') && !line.starts_with("S ") {
                    return Err(fail(format!("unexpected answer {:?}", line.trim())));
                }
            }
        }
        Ok(())
    })();
    let _ = writeln!(stdin, "BYE");
    drop(stdin);
    let _ = child.wait();
    result.map(|()| version)
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
    fn assuan_errors_are_parsed() {
        assert_eq!(assuan_error("ERR 83886179 Operation cancelled <Pinentry>\n"), Some((ASSUAN_CANCELLED, "Operation cancelled <Pinentry>".into())));
        assert_eq!(assuan_error("ERR 83918950 Inappropriate ioctl for device"), Some((83918950, "Inappropriate ioctl for device".into())));
        assert_eq!(assuan_error("ERR 5"), Some((5, String::new())));
        assert_eq!(assuan_error("OK"), None);
        assert_eq!(assuan_error("ERR x"), None);
    }

    #[test]
    fn the_prompt_goes_to_the_desktop_else_the_requesters_terminal_else_ours() {
        let tty = |n: u32| Terminal { path: PathBuf::from(format!("/dev/pts/{n}")), term: None };
        assert_eq!(pin_place(true, Some(&tty(1)), Some(&tty(2))), Some(PinPlace::Desktop));
        assert_eq!(pin_place(false, Some(&tty(1)), Some(&tty(2))), Some(PinPlace::Terminal(tty(1))));
        assert_eq!(pin_place(false, None, Some(&tty(2))), Some(PinPlace::Terminal(tty(2))));
        assert_eq!(pin_place(false, None, None), None);
        assert!(PromptError::NoPinPlace.to_string().contains("--foreground"));
    }

    /// A fake pinentry: a shell script speaking just enough Assuan; GETPIN answers `reply`.
    /// It logs the commands it gets to `dir/log`.
    fn fake_pinentry(dir: &Path, reply: &[&str]) -> PathBuf {
        let path = dir.join("pinentry-fake");
        let replies = dir.join("reply");
        std::fs::write(&replies, reply.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        let script = format!(
            "#!/bin/sh\necho 'OK hello'\nwhile read -r line; do\n  echo \"$line\" >> '{log}'\n  case $line in\n    GETPIN) cat '{replies}';;\n    BYE) echo OK; exit 0;;\n    *) echo OK;;\n  esac\ndone\n",
            log = dir.join("log").display(),
            replies = replies.display()
        );
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn pinentry_is_told_the_terminal_and_its_answers_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let place = PinPlace::Terminal(Terminal { path: "/dev/pts/77".into(), term: Some("screen".into()) });
        let ok = fake_pinentry(dir.path(), &["D 12%2534", "OK"]);
        let pin = pinentry_ask(ok.to_str().unwrap(), &place, "desc", "PIN:").unwrap();
        assert_eq!(pin.as_deref().map(String::as_str), Some("12%34"));
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert!(log.starts_with("OPTION ttyname=/dev/pts/77\nOPTION ttytype=screen\n"), "{log}");

        let dir = tempfile::tempdir().unwrap();
        let cancelled = fake_pinentry(dir.path(), &["ERR 83886179 Operation cancelled <Pinentry>"]);
        assert_eq!(pinentry_ask(cancelled.to_str().unwrap(), &place, "d", "PIN:").unwrap(), None);

        let dir = tempfile::tempdir().unwrap();
        let broken = fake_pinentry(dir.path(), &["ERR 83918950 Inappropriate ioctl for device <Pinentry>"]);
        let err = pinentry_ask(broken.to_str().unwrap(), &place, "d", "PIN:").unwrap_err().to_string();
        assert!(err.contains("ERR 83918950 Inappropriate ioctl for device"), "{err}");

        let err = pinentry_ask("/bin/false", &place, "d", "PIN:").unwrap_err().to_string();
        assert!(err.contains("/bin/false failed: exited without answering"), "{err}");
    }

    #[test]
    fn a_pinentry_is_checked_without_asking_anything() {
        let dir = tempfile::tempdir().unwrap();
        let place = PinPlace::Terminal(Terminal { path: "/dev/pts/9".into(), term: None });
        let fake = fake_pinentry(dir.path(), &["ERR 1 must not be asked"]);
        // The fake answers GETINFO with OK only: an empty version.
        assert_eq!(pinentry_check(&fake, &place).unwrap(), "");
        let log = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert_eq!(log, "OPTION ttyname=/dev/pts/9\nGETINFO version\nBYE\n");
        let err = pinentry_check(Path::new("/bin/false"), &PinPlace::Desktop).unwrap_err().to_string();
        assert!(err.contains("exited without answering"), "{err}");
        let err = pinentry_check(&dir.path().join("missing"), &PinPlace::Desktop).unwrap_err().to_string();
        assert!(err.contains("missing failed"), "{err}");
    }

    #[test]
    fn assuan_round_trip() {
        assert_eq!(assuan_escape("a%b\nc"), "a%25b%0Ac");
        assert_eq!(assuan_unescape("12%2534").as_str(), "12%34");
        assert_eq!(assuan_unescape("abc%").as_str(), "abc%");
    }
}
