//! `keytap doctor`: checks what a first-time user needs, one line each, and says what to do
//! about every problem: the config file, the agent and `SSH_AUTH_SOCK`, the socket's
//! permissions, pcscd, the PIN prompt, tokens and keys, FIDO devices, the audit log.
//!
//! The checks gather facts (environment, files, the agent's status) into [`Check`]s; printing
//! and the exit status are decided from those alone.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::agent::{socket, StatusReport};
use crate::command::AppError;
use crate::cli::DoctorArgs;
use crate::client::{AgentClient, ClientError};
use crate::paths;
use crate::policy::Policy;
use crate::prompt::{self, PinPlace, Terminal};
use crate::token::mock::MockToken;
use crate::token::{piv, Token, TokenKind};

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Ok,
    /// Worth knowing, not wrong.
    Info,
    Problem,
}

/// One line of the report, with what to do when it is a problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub area: &'static str,
    pub state: State,
    pub detail: String,
    pub fix: Option<String>,
}

impl Check {
    fn ok(area: &'static str, detail: impl Into<String>) -> Check {
        Check { area, state: State::Ok, detail: detail.into(), fix: None }
    }
    fn info(area: &'static str, detail: impl Into<String>) -> Check {
        Check { area, state: State::Info, detail: detail.into(), fix: None }
    }
    fn problem(area: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { area, state: State::Problem, detail: detail.into(), fix: Some(fix.into()) }
    }
}

/// The report as printed: one line per check, a `fix:` line under each problem, a summary.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let state = match c.state {
            State::Ok => "ok",
            State::Info => "info",
            State::Problem => "PROBLEM",
        };
        out.push_str(&format!("{state:<8} {:<10} {}\n", c.area, c.detail));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("{:<8} {:<10} fix: {fix}\n", "", ""));
        }
    }
    match checks.iter().filter(|c| c.state == State::Problem).count() {
        0 => out.push_str("Everything keytap needs is in place.\n"),
        1 => out.push_str("1 problem found.\n"),
        n => out.push_str(&format!("{n} problems found.\n")),
    }
    out
}

/// `keytap doctor`.
pub fn run(args: DoctorArgs) -> Result<(), AppError> {
    let checks = checks(&args);
    print!("{}", render(&checks));
    let problems = checks.iter().filter(|c| c.state == State::Problem).count();
    if problems > 0 {
        return Err(AppError::Message(format!(
            "{problems} problem{} found; each says what to do above",
            if problems == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

fn checks(args: &DoctorArgs) -> Vec<Check> {
    let mut checks = vec![config(args.config.as_deref())];
    let (agent_check, agent) = agent();
    checks.push(agent_check);
    checks.extend(socket_permissions(agent.as_ref().map(|(path, _)| path.as_path())));
    checks.push(pcscd(args.token.kind()));
    checks.push(pin_entry(args.pinentry.as_deref()));
    checks.extend(tokens(args, agent.as_ref().map(|(_, report)| report)));
    checks.push(fido());
    checks.push(Check::info(
        "audit log",
        format!("{} (read it with `keytap log`)", paths::state_home().join("audit.jsonl").display()),
    ));
    checks
}

fn config(explicit: Option<&Path>) -> Check {
    let path = explicit.map(Path::to_path_buf).unwrap_or_else(|| paths::config_home().join("config.toml"));
    if explicit.is_none() && !path.exists() {
        return Check::ok("config", format!("no {}: the built-in policy applies (docs/policy.md)", path.display()));
    }
    match Policy::load(&path) {
        Ok(_) => Check::ok("config", format!("{} is valid", path.display())),
        Err(e) => Check::problem("config", e.to_string(), format!("correct {} (docs/policy.md describes it); the agent refuses to start with it", path.display())),
    }
}

/// How to start an agent, for fixes.
const START: &str = "start it: `eval \"$(keytap agent)\"`, or with systemd `systemctl --user enable --now keytap.socket` (docs/setup-maintainer.md)";

/// The agent behind `SSH_AUTH_SOCK`, and its status when it is keytap.
fn agent() -> (Check, Option<(PathBuf, StatusReport)>) {
    let default = socket::default_socket_path();
    let Some(path) = std::env::var_os("SSH_AUTH_SOCK").filter(|p| !p.is_empty()).map(PathBuf::from) else {
        let fix = match AgentClient::connect(&default).and_then(|mut c| c.status()) {
            Ok(_) => format!("a keytap agent listens at {0}: `export SSH_AUTH_SOCK={0}` (in your shell profile too)", default.display()),
            Err(_) => START.to_string(),
        };
        return (Check::problem("agent", "SSH_AUTH_SOCK is not set: ssh and git cannot reach keytap", fix), None);
    };
    match AgentClient::connect(&path).and_then(|mut c| c.status()) {
        Ok(report) if report.locked => {
            let detail = format!("keytap {} (pid {}) at {} is locked", report.version, report.pid, path.display());
            (Check::problem("agent", detail, "unlock it with `ssh-add -X`"), Some((path, report)))
        }
        Ok(report) => {
            let detail = format!("keytap {} (pid {}) answers at {}", report.version, report.pid, path.display());
            (Check::ok("agent", detail), Some((path, report)))
        }
        Err(ClientError::Refused) => (
            Check::problem(
                "agent",
                format!("SSH_AUTH_SOCK={} is another agent, not keytap", path.display()),
                format!("point SSH_AUTH_SOCK at keytap's socket ({}) once keytap runs; {START}", default.display()),
            ),
            None,
        ),
        Err(e) => (
            Check::problem("agent", format!("nothing answers at SSH_AUTH_SOCK={}: {}", path.display(), short_error(&e)), START),
            None,
        ),
    }
}

fn short_error(e: &ClientError) -> String {
    match e {
        ClientError::Connect(_, io) => io.to_string(),
        other => other.to_string(),
    }
}

/// The agent's socket: ours, 0600 (or stricter), in a directory only we can enter.
fn socket_permissions(path: Option<&Path>) -> Option<Check> {
    let path = path?;
    let meta = std::fs::metadata(path).ok()?;
    let me = nix::unistd::geteuid().as_raw();
    let dir_mode = path.parent().and_then(|d| std::fs::metadata(d).ok()).map(|m| (m.mode() & 0o777, m.uid()));
    let fix = "stop the agent and start it again: it creates its socket 0600 in a 0700 directory";
    if !meta.file_type().is_socket() {
        return Some(Check::problem("socket", format!("{} is not a socket", path.display()), fix));
    }
    if meta.uid() != me {
        return Some(Check::problem("socket", format!("{} belongs to uid {}, not you", path.display(), meta.uid()), fix));
    }
    if meta.mode() & 0o077 != 0 {
        return Some(Check::problem("socket", format!("{} has mode {:o}: other users may connect", path.display(), meta.mode() & 0o777), fix));
    }
    match dir_mode {
        Some((mode, uid)) if mode & 0o077 == 0 && uid == me => {
            Some(Check::ok("socket", format!("{} is yours, mode {:o}, in a {mode:o} directory", path.display(), meta.mode() & 0o777)))
        }
        // systemd's socket units put it in $XDG_RUNTIME_DIR (0700) or a private directory.
        Some((mode, _)) => Some(Check::info("socket", format!("{} is yours, mode {:o}; its directory has mode {mode:o}", path.display(), meta.mode() & 0o777))),
        None => None,
    }
}

fn pcscd(kind: TokenKind) -> Check {
    if kind == TokenKind::Mock {
        return Check::info("pcscd", "not needed for the mock token");
    }
    match pcsc::Context::establish(pcsc::Scope::User) {
        Ok(ctx) => {
            let readers = ctx.list_readers_owned().map(|r| r.len()).unwrap_or(0);
            Check::ok("pcscd", format!("running, {readers} reader{}", if readers == 1 { "" } else { "s" }))
        }
        Err(e) => Check::problem(
            "pcscd",
            format!("the PC/SC service does not answer: {e}"),
            "install and start it: `sudo apt install pcscd && sudo systemctl enable --now pcscd.socket`",
        ),
    }
}

/// Where a PIN prompt for a program run here would go, and whether that pinentry works.
fn pin_entry(configured: Option<&str>) -> Check {
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
        if Path::new(&dir).join("keytap-pin").exists() {
            return Check::ok("pin entry", "the systemd credential keytap-pin");
        }
    }
    let own = Terminal::own();
    let Some(place) = prompt::pin_place(prompt::desktop_session(), own.as_ref(), None) else {
        return Check::problem(
            "pin entry",
            "no terminal or desktop here for a PIN prompt",
            "run programs that use the keys from a terminal or a desktop session, or give the agent --pin-file (mode 0600) for unattended use",
        );
    };
    let Some(program) = prompt::pinentry_program(configured, &place) else {
        let wanted = match place {
            PinPlace::Desktop => "pinentry (e.g. `sudo apt install pinentry-gnome3`)",
            PinPlace::Terminal(_) | PinPlace::Configured => "pinentry-curses (`sudo apt install pinentry-curses`)",
        };
        return Check::problem("pin entry", "no pinentry program found", format!("install {wanted}, or pass --pinentry PROGRAM"));
    };
    match prompt::pinentry_check(&program, &place) {
        Ok(version) => {
            let version = if version.is_empty() { String::new() } else { format!(" {version}") };
            Check::ok("pin entry", format!("{}{version} on {}", program.display(), prompt::describe_place(&place)))
        }
        Err(e) => Check::problem("pin entry", e.to_string(), "install pinentry-curses (`sudo apt install pinentry-curses`) or pass a working --pinentry PROGRAM"),
    }
}

/// Tokens and keys: the running agent's view, else the tokens opened directly.
fn tokens(args: &DoctorArgs, agent: Option<&StatusReport>) -> Vec<Check> {
    let no_keys = "create one with `keytap setup --slot 9a` (docs/setup-maintainer.md)";
    let Some(report) = agent else {
        return direct_tokens(args, no_keys);
    };
    if report.tokens.is_empty() {
        return vec![Check::problem(
            "tokens",
            "the agent serves no token",
            "plug in your YubiKey (the agent picks it up), or start the agent with --token mock to try keytap",
        )];
    }
    report
        .tokens
        .iter()
        .map(|t| match (t.present, t.serial) {
            (true, Some(serial)) if t.keys.is_empty() && !report.locked => {
                Check::problem("tokens", format!("{}: serial {serial}, no keys", t.label), no_keys)
            }
            (true, Some(serial)) => Check::ok(
                "tokens",
                format!("{}: serial {serial}, {}, {} key{}", t.label, t.model.as_deref().unwrap_or("?"), t.keys.len(), if t.keys.len() == 1 { "" } else { "s" }),
            ),
            _ => Check::problem("tokens", format!("{} is not present", t.label), "plug it in; the agent picks it up within a few seconds"),
        })
        .collect()
}

fn direct_tokens(args: &DoctorArgs, no_keys: &str) -> Vec<Check> {
    let opened: Result<Vec<Box<dyn Token>>, crate::token::TokenError> = match args.token.kind() {
        TokenKind::Mock => {
            let dir = args.token.state_dir.clone().unwrap_or_else(paths::default_mock_dir);
            MockToken::open(&dir).map(|t| vec![Box::new(t) as Box<dyn Token>])
        }
        TokenKind::Piv => piv::open_present(&piv::Claimed::default()).map(|found| found.into_iter().map(|(_, t)| t).collect()),
    };
    let tokens = match opened {
        Ok(tokens) if tokens.is_empty() => {
            return vec![Check::problem("tokens", "no YubiKey found", "plug it in (`keytap list` then shows its keys)")]
        }
        Ok(tokens) => tokens,
        Err(e) => return vec![Check::problem("tokens", "cannot open the token", e.to_string())],
    };
    tokens
        .into_iter()
        .map(|mut token| {
            let info = token.info();
            match (info, token.keys()) {
                (Ok(info), Ok(keys)) if keys.is_empty() => Check::problem("tokens", format!("serial {}: no keys", info.serial), no_keys),
                (Ok(info), Ok(keys)) => Check::ok(
                    "tokens",
                    format!("serial {}, {}, {} key{} (read directly: no keytap agent)", info.serial, info.model, keys.len(), if keys.len() == 1 { "" } else { "s" }),
                ),
                (Err(e), _) | (_, Err(e)) => Check::problem("tokens", "cannot read the token", e.to_string()),
            }
        })
        .collect()
}

/// FIDO security keys show up as /dev/hidraw*; keytap does not serve them yet.
fn fido() -> Check {
    let count = std::fs::read_dir("/dev")
        .map(|entries| entries.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().starts_with("hidraw")).count())
        .unwrap_or(0);
    match count {
        0 => Check::info("fido", "no /dev/hidraw* devices (FIDO2 keys are not served yet)"),
        n => Check::info("fido", format!("{n} /dev/hidraw* device{} (FIDO2 keys are not served yet)", if n == 1 { "" } else { "s" })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_carry_their_fix_and_are_counted() {
        let checks = vec![
            Check::ok("config", "none"),
            Check::problem("agent", "SSH_AUTH_SOCK is not set", "start it"),
            Check::info("fido", "none"),
        ];
        let expected = [
            "ok       config     none",
            "PROBLEM  agent      SSH_AUTH_SOCK is not set",
            "                    fix: start it",
            "info     fido       none",
            "1 problem found.",
            "",
        ];
        assert_eq!(render(&checks), expected.join("\n"));
        assert!(render(&checks[..1]).ends_with("Everything keytap needs is in place.\n"));
    }
}
