//! `keytap doctor` output and exit status, pinned on the mock token.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{text, Agent, KEYTAP, MOCK_SERIAL};

fn absolute(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(program)).find(|p| p.is_file()))
        .unwrap_or_else(|| panic!("{program} not found on PATH"))
}

/// A pinentry that answers the doctor's handshake (and nothing is ever shown).
fn fake_pinentry(dir: &Path) -> PathBuf {
    let path = dir.join("pinentry-fake");
    std::fs::write(
        &path,
        "#!/bin/sh\necho 'OK ready'\nwhile read -r line; do\n  case $line in\n    'GETINFO version') echo 'D 9.9.9'; echo OK;;\n    BYE) echo OK; exit 0;;\n    *) echo OK;;\n  esac\ndone\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// `keytap doctor` in a session without a terminal, so nothing depends on where the tests run.
fn doctor(cmd: &mut Command, args: &[&str]) -> Output {
    cmd.arg(KEYTAP).arg("doctor").args(args).env_remove("WAYLAND_DISPLAY").env_remove("CREDENTIALS_DIRECTORY").output().unwrap()
}

/// The report with this run's paths and pid replaced, and the machine-dependent FIDO line
/// reduced to its start.
fn normalise(stdout: &[u8], replacements: &[(&str, &str)]) -> String {
    let mut text = String::from_utf8_lossy(stdout).into_owned();
    for (from, to) in replacements {
        text = text.replace(from, to);
    }
    text.lines()
        .map(|l| if l.starts_with("info     fido       ") { "info     fido       ..." } else { l })
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn a_healthy_setup_passes_and_an_unplugged_token_is_a_problem_with_its_fix() {
    let agent = Agent::start();
    let pinentry = fake_pinentry(agent.dir.path());
    let dir = agent.dir.path().to_str().unwrap().to_string();
    let run = |args: &[&str]| {
        let mut cmd = agent.cmd("setsid");
        cmd.env("DISPLAY", ":42");
        doctor(&mut cmd, args)
    };
    let args = ["--token", "mock", "--pinentry", pinentry.to_str().unwrap()];
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let pid = agent.pid().to_string();
    let version = env!("CARGO_PKG_VERSION");
    let replacements = [(dir.as_str(), "$DIR"), (pid.as_str(), "$PID"), (version, "$VERSION")];
    assert_eq!(
        normalise(&out.stdout, &replacements),
        [
            "ok       config     no $DIR/config/keytap/config.toml: the built-in policy applies (docs/policy.md)",
            "ok       agent      keytap $VERSION (pid $PID) answers at $DIR/sock/agent.sock",
            "ok       socket     $DIR/sock/agent.sock is yours, mode 600, in a 700 directory",
            "info     pcscd      not needed for the mock token",
            "ok       pin entry  $DIR/pinentry-fake 9.9.9 on the desktop",
            &format!("ok       tokens     mock: serial {MOCK_SERIAL}, keytap mock token (TEST), 4 keys"),
            "info     fido       ...",
            "info     audit log  $DIR/state/keytap/audit.jsonl (read it with `keytap log`)",
            "Everything keytap needs is in place.",
            "",
        ]
        .join("\n")
    );

    agent.mock(&["unplug"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let out = loop {
        // The agent notices within its 2 s refresh.
        let out = run(&args);
        if out.status.code() != Some(0) || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = normalise(&out.stdout, &replacements);
    assert!(
        report.contains(
            "PROBLEM  tokens     mock is not present\n                    fix: plug it in; the agent picks it up within a few seconds\n"
        ),
        "{report}"
    );
    assert!(report.ends_with("1 problem found.\n"), "{report}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "keytap: 1 problem found; each says what to do above\n");
}

#[test]
fn a_first_time_setup_gets_a_fix_for_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("config/keytap")).unwrap();
    std::fs::write(d.join("config/keytap/config.toml"), "[[key]]\nmatch = 12\n").unwrap();
    std::fs::create_dir_all(d.join("empty-path")).unwrap();
    let mut cmd = Command::new(absolute("setsid"));
    cmd.env_remove("SSH_AUTH_SOCK")
        .env("XDG_RUNTIME_DIR", d.join("run"))
        .env("XDG_CONFIG_HOME", d.join("config"))
        .env("XDG_STATE_HOME", d.join("state"))
        .env("DISPLAY", ":42")
        // No pinentry anywhere.
        .env("PATH", d.join("empty-path"));
    let state = d.join("no-mock");
    let out = doctor(&mut cmd, &["--token", "mock", "--state-dir", state.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = normalise(&out.stdout, &[(d.to_str().unwrap(), "$DIR")]);
    let lines: Vec<&str> = report.lines().collect();
    assert!(lines[0].starts_with("PROBLEM  config     $DIR/config/keytap/config.toml"), "{report}");
    assert_eq!(
        lines[1..].join("\n"),
        [
            "                    fix: correct $DIR/config/keytap/config.toml (docs/policy.md describes it); the agent refuses to start with it",
            "PROBLEM  agent      SSH_AUTH_SOCK is not set: ssh and git cannot reach keytap",
            "                    fix: start it: `eval \"$(keytap agent)\"`, or with systemd `systemctl --user enable --now keytap.socket` (docs/setup-maintainer.md)",
            "info     pcscd      not needed for the mock token",
            "PROBLEM  pin entry  no pinentry program found",
            "                    fix: install pinentry (e.g. `sudo apt install pinentry-gnome3`), or pass --pinentry PROGRAM",
            "PROBLEM  tokens     cannot open the token",
            "                    fix: token not present: no mock token in $DIR/no-mock; create one with `keytap mock init --state-dir $DIR/no-mock`; plug it in and retry",
            "info     fido       ...",
            "info     audit log  $DIR/state/keytap/audit.jsonl (read it with `keytap log`)",
            "4 problems found.",
        ]
        .join("\n"),
        "{report}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "keytap: 4 problems found; each says what to do above\n");
}

#[test]
fn without_a_terminal_or_desktop_the_pin_prompt_is_a_problem() {
    let agent = Agent::start();
    let mut cmd = agent.cmd("setsid");
    let out = doctor(&mut cmd, &["--token", "mock"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(
            "PROBLEM  pin entry  no terminal or desktop here for a PIN prompt\n                    fix: run programs that use the keys from a terminal or a desktop session, or give the agent --pin-file (mode 0600) for unattended use\n"
        ),
        "{report}"
    );
}

#[test]
fn status_says_what_to_do_about_a_missing_token_or_agent() {
    let agent = Agent::start();
    agent.mock(&["unplug"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = agent.keytap().arg("status").output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let stdout = String::from_utf8(out.stdout).unwrap();
        if stdout.ends_with("locked: no\ntoken mock: not present; plug it in\n") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{stdout}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let missing = agent.dir.path().join("nothing.sock");
    let out = support::keytap_in(agent.dir.path()).arg("status").env("SSH_AUTH_SOCK", &missing).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.ends_with("start it with `keytap agent` or check SSH_AUTH_SOCK (`keytap doctor` checks the whole set-up)\n"), "{stderr}");
}
