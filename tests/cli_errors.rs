//! The errors users meet most, pinned: exact output and exit status when no agent runs, when a
//! key selector names no key or is malformed, when the agent is locked, and when the command
//! line itself is wrong. Each message says what to do next.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::{text, Agent, MOCK_SERIAL};

/// A scratch home: XDG directories inside it, no agent in the environment.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Home {
        Home { dir: tempfile::tempdir().unwrap() }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn keytap(&self) -> Command {
        let mut cmd = support::keytap_in(self.dir.path());
        cmd.stdin(Stdio::null());
        cmd
    }

    /// A mock token with the usual four keys, in `<home>/mock`.
    fn mock(&self) -> PathBuf {
        let dir = self.path("mock");
        let out = self.keytap().args(["mock", "init", "--serial", &MOCK_SERIAL.to_string(), "--state-dir"]).arg(&dir).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        dir
    }
}

/// Run `cmd` and check its exit status, stdout and stderr exactly.
fn assert_output(cmd: &mut Command, code: i32, stdout: &str, stderr: &str) {
    let out = cmd.output().unwrap();
    let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
    assert_eq!(String::from_utf8_lossy(&out.stderr), stderr, "stderr of keytap {}", args.join(" "));
    assert_eq!(String::from_utf8_lossy(&out.stdout), stdout, "stdout of keytap {}", args.join(" "));
    assert_eq!(out.status.code(), Some(code), "exit status of keytap {}", args.join(" "));
}

const NO_SUCH_FILE: &str = "No such file or directory (os error 2)";

#[test]
fn no_agent_running() {
    let home = Home::new();
    // `status` asks the agent at the default socket when SSH_AUTH_SOCK is unset...
    let default_socket = home.path("run/keytap/agent.sock");
    assert_output(
        home.keytap().arg("status"),
        1,
        "",
        &format!(
            "keytap: cannot reach the agent at {}: {NO_SUCH_FILE}; start it with `keytap agent` or check SSH_AUTH_SOCK (`keytap doctor` checks the whole set-up)\n",
            default_socket.display()
        ),
    );
    // ...and at SSH_AUTH_SOCK when it is set.
    let stale = home.path("gone.sock");
    let reach = format!(
        "keytap: cannot reach the agent at {}: {NO_SUCH_FILE}; start it with `keytap agent` or check SSH_AUTH_SOCK\n",
        stale.display()
    );
    let hinted = reach.replace("SSH_AUTH_SOCK\n", "SSH_AUTH_SOCK (`keytap doctor` checks the whole set-up)\n");
    assert_output(home.keytap().arg("status").env("SSH_AUTH_SOCK", &stale), 1, "", &hinted);
    assert_output(home.keytap().args(["cot", "pubkey"]).env("SSH_AUTH_SOCK", &stale), 1, "", &reach);

    // Commands that only work through the agent say so, and what else to do.
    assert_output(
        home.keytap().args(["cert", "list"]),
        1,
        "",
        &format!(
            "keytap: `keytap cert` works through the running keytap agent, and SSH_AUTH_SOCK does not point at one; \
             start it with `eval $(keytap agent)`, or put the certificate in {} where the agent picks it up\n",
            home.path("config/keytap/certs").display()
        ),
    );
    assert_output(
        home.keytap().args(["cot", "pubkey"]),
        1,
        "",
        "keytap: SSH_AUTH_SOCK is not set; start the agent (`eval $(keytap agent)`) so the worker can sign without holding the key\n",
    );
    // Without an agent, token commands open the token; a missing mock token says how to make one.
    let missing = home.path("no-mock");
    assert_output(
        home.keytap().args(["list", "--token", "mock", "--state-dir"]).arg(&missing),
        1,
        "",
        &format!(
            "keytap: token not present: no mock token in {0}; create one with `keytap mock init --state-dir {0}`; plug it in and retry\n",
            missing.display()
        ),
    );
    // The audit log exists only once an agent has served something.
    assert_output(
        home.keytap().arg("log"),
        1,
        "",
        &format!(
            "keytap: no audit log at {}; the agent writes it once it has served a request (see --audit-log)\n",
            home.path("state/keytap/audit.jsonl").display()
        ),
    );
}

#[test]
fn wrong_key_selector() {
    let home = Home::new();
    let mock = home.mock();
    let authorized_key = |key: &str| {
        let mut cmd = home.keytap();
        cmd.args(["authorized-key", "--token", "mock", "--state-dir"]).arg(&mock).args(["--key", key]);
        cmd
    };
    let malformed = "invalid key \"9z\": use a slot (9a, 9c, 9d, 9e or 82-95), SERIAL/SLOT (12345678/9c) or a SHA256: fingerprint";
    assert_output(&mut authorized_key("9z"), 1, "", &format!("keytap: {malformed}\n"));
    assert_output(&mut authorized_key("82"), 1, "", "keytap: no key matches slot 82; `keytap list` shows the keys there are\n");
    assert_output(
        &mut authorized_key("99999999/9a"),
        1,
        "",
        "keytap: no key matches 99999999/9a; `keytap list` shows the keys there are\n",
    );
    assert_output(
        &mut authorized_key("SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        1,
        "",
        "keytap: no key matches SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA; `keytap list` shows the keys there are\n",
    );
    // The deny paths above are not the only answer: a right selector prints the key.
    let out = authorized_key(&format!("{MOCK_SERIAL}/9c")).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ssh-ed25519 "), "{}", text(&out));

    assert_output(home.keytap().args(["log", "--key", "9z"]), 1, "", &format!("keytap: --key: {malformed}\n"));
    // A malformed slot is a usage error (exit 2), found before anything runs.
    assert_output(
        home.keytap().args(["setup", "--token", "mock", "--state-dir"]).arg(&mock).args(["--slot", "9z"]),
        2,
        "",
        "error: invalid value '9z' for '--slot <SLOT>': invalid slot \"9z\": use 9a, 9c, 9d, 9e or 82-95\n\nFor more information, try '--help'.\n",
    );
}

fn askpass(dir: &Path, answer: &str) -> PathBuf {
    let path = dir.join("askpass");
    std::fs::write(&path, format!("#!/bin/sh\necho '{answer}'\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    path
}

#[test]
fn locked_agent() {
    let agent = Agent::start();
    let pass = askpass(agent.dir.path(), "correct horse");
    let lock = agent.cmd("ssh-add").arg("-x").env("SSH_ASKPASS", &pass).env("SSH_ASKPASS_REQUIRE", "force").output().unwrap();
    assert!(lock.status.success(), "lock: {}", text(&lock));

    let locked = "keytap: the agent is locked; unlock it with `ssh-add -X`\n";
    assert_output(agent.keytap().arg("list"), 1, "", locked);
    assert_output(agent.keytap().arg("authorized-key"), 1, "", locked);
    // A locked agent shows no keys, even in its status.
    assert_output(
        agent.keytap().arg("status"),
        0,
        &format!(
            "agent: running (keytap {}, pid {}) at {}\nlocked: yes (unlock with `ssh-add -X`)\n\
             token mock: serial {MOCK_SERIAL}, keytap mock token (TEST), firmware 5.4.3, 0 keys\n",
            env!("CARGO_PKG_VERSION"),
            agent.pid(),
            agent.socket.display()
        ),
        "",
    );

    // Unlocked, the same commands work again.
    let unlock = agent.cmd("ssh-add").arg("-X").env("SSH_ASKPASS", &pass).env("SSH_ASKPASS_REQUIRE", "force").output().unwrap();
    assert!(unlock.status.success(), "unlock: {}", text(&unlock));
    let out = agent.keytap().arg("authorized-key").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), agent.key_line("9a"));
}

#[test]
fn wrong_command_line() {
    let home = Home::new();
    assert_output(
        home.keytap().arg("frobnicate"),
        2,
        "",
        "error: unrecognized subcommand 'frobnicate'\n\nUsage: keytap <COMMAND>\n\nFor more information, try '--help'.\n",
    );
    assert_output(
        home.keytap().args(["cert", "add"]),
        2,
        "",
        "error: the following required arguments were not provided:\n  <FILE>\n\nUsage: keytap cert add <FILE>\n\nFor more information, try '--help'.\n",
    );
}

#[test]
fn the_agent_serves_the_mock_only_when_told_to() {
    let home = Home::new();
    let mock = home.mock();
    let refusal = "keytap: --state-dir is the mock TEST token's directory; to serve the mock token say so: keytap agent --token mock --state-dir DIR\n";
    // Neither in the foreground nor detached does a --state-dir alone start a software agent.
    assert_output(home.keytap().args(["agent", "--foreground", "--state-dir"]).arg(&mock), 1, "", refusal);
    assert_output(home.keytap().args(["agent", "--state-dir"]).arg(&mock), 1, "false;\n", refusal);
    assert!(!home.path("run/keytap/agent.sock").exists(), "no socket was created");
}
