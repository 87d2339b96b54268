//! Issue 17 item 3: remembered approvals (`confirm = "remember:DURATION"`), counted with a
//! scripted askpass against real ssh, sshd and ssh-keygen.

mod support;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use support::{exchange, frame, string, text, Agent, AgentOptions, Sshd};

/// An askpass that appends its prompt to `seen` and says yes.
fn counting_askpass(dir: &Path) -> (PathBuf, PathBuf) {
    let script = dir.join("askpass");
    let seen = dir.join("seen");
    std::fs::write(&script, format!("#!/bin/sh\nprintf '%s\\n' \"$1\" >> {}\nexit 0\n", seen.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (script, seen)
}

fn prompts(seen: &Path) -> Vec<String> {
    std::fs::read_to_string(seen).unwrap_or_default().lines().map(str::to_string).collect()
}

fn records(audit: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(audit).unwrap_or_default().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|r| r["event"] == "sign").collect()
}

fn sshsig(agent: &Agent, slot: &str, namespace: &str) -> Output {
    let msg = agent.dir.path().join("msg");
    std::fs::write(&msg, b"payload\n").unwrap();
    let _ = std::fs::remove_file(agent.dir.path().join("msg.sig"));
    agent.cmd("ssh-keygen").args(["-Y", "sign", "-U", "-n", namespace, "-f"]).arg(agent.key_file(slot)).arg(&msg).output().unwrap()
}

#[test]
fn one_yes_is_remembered_per_program_key_purpose_and_destination_until_cleared_or_locked() {
    let dir = tempfile::tempdir().unwrap();
    let (askpass, seen) = counting_askpass(dir.path());
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[defaults]\nconfirm = \"remember:1h\"\n").unwrap();
    let audit = dir.path().join("audit.jsonl");
    let args = ["--config", config.to_str().unwrap(), "--audit-log", audit.to_str().unwrap(), "--askpass", askpass.to_str().unwrap()];
    let agent = Agent::start_with(AgentOptions { args: args.iter().map(|s| s.to_string()).collect(), ..Default::default() });
    let sshd = Sshd::start(&[agent.key_line("9d"), agent.key_line("9e")], &[]);
    let login = |slot: &str| {
        let out = sshd.ssh(&agent).args(["-o", "IdentitiesOnly=yes", "-i"]).arg(agent.key_file(slot)).arg("true").output().unwrap();
        assert!(out.status.success(), "login with {slot}: {}\n{}", text(&out), agent.log_text());
    };

    // Five logins by the same program (ssh started by this test process): one prompt.
    for _ in 0..5 {
        login("9d");
    }
    assert_eq!(prompts(&seen).len(), 1, "{:?}", prompts(&seen));
    let decisions: Vec<String> = records(&audit).iter().map(|r| r["decision"].as_str().unwrap().to_string()).collect();
    assert_eq!(decisions, ["allow", "allow (remembered)", "allow (remembered)", "allow (remembered)", "allow (remembered)"]);

    // Another key: asked.
    login("9e");
    assert_eq!(prompts(&seen).len(), 2);

    // Another program: the same ssh binary under a new shell process.
    let wrapped = |slot: &str| {
        let ssh = sshd.ssh(&agent);
        let args: Vec<String> = ssh.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        let line = format!("ssh {} -o IdentitiesOnly=yes -i {} true", args.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" "), agent.key_file(slot).display());
        let out = agent.cmd("sh").arg("-c").arg(line).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
    };
    wrapped("9d");
    assert_eq!(prompts(&seen).len(), 3);

    // Another purpose (and program): ssh-keygen signing in two namespaces, then one again.
    assert!(sshsig(&agent, "9d", "file").status.success());
    assert!(sshsig(&agent, "9d", "git").status.success());
    assert_eq!(prompts(&seen).len(), 5);
    // ssh-keygen runs as a new process each time but from the same place in the tree.
    assert!(sshsig(&agent, "9d", "file").status.success());
    assert_eq!(prompts(&seen).len(), 5);

    // `keytap approvals` lists them; `keytap approvals clear` forgets them.
    let out = agent.keytap().arg("approvals").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let listing = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(listing.contains("ssh-auth to SHA256:") && listing.contains("sshsig:git"), "{listing}");
    let out = agent.keytap().args(["approvals", "clear"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("Forgot "), "{}", text(&out));
    login("9d");
    assert_eq!(prompts(&seen).len(), 6);
    login("9d");
    assert_eq!(prompts(&seen).len(), 6);

    // SIGUSR1 forgets them (OpenSSH 10's signal for forgetting).
    assert!(std::process::Command::new("kill").args(["-USR1", &agent.pid().to_string()]).status().unwrap().success());
    agent.wait_log("SIGUSR1: forgot 1 remembered approvals and 0 loaded sk keys; released the tokens");
    login("9d");
    assert_eq!(prompts(&seen).len(), 7);
    login("9d");
    assert_eq!(prompts(&seen).len(), 7);

    // A lock ends them.
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(exchange(&mut s, &frame(&[[22].as_slice(), &string(b"pw")].concat())).unwrap(), [6]);
    assert_eq!(exchange(&mut s, &frame(&[[23].as_slice(), &string(b"pw")].concat())).unwrap(), [6]);
    login("9d");
    assert_eq!(prompts(&seen).len(), 8);

    // Forwarded uses are asked every time.
    let remote_msg = dir.path().join("remote-msg");
    std::fs::write(&remote_msg, b"x").unwrap();
    for _ in 0..2 {
        let _ = std::fs::remove_file(dir.path().join("remote-msg.sig"));
        let out = sshd.sign_through_forwarded_agent(&agent, "9d", "9e", &remote_msg);
        assert!(out.status.success(), "{}\n{}", text(&out), agent.log_text());
    }
    let forwarded = prompts(&seen).iter().filter(|p| p.starts_with("FORWARDED agent:")).count();
    assert_eq!(forwarded, 2, "{:?}", prompts(&seen));
}

/// Issue 17 item 4: the `query` extension lists what keytap answers (RFC 9987: an extension
/// response named "query" followed by the names), and a locked agent still takes session-bind.
#[test]
fn query_lists_the_extensions_and_session_bind_is_accepted_while_locked() {
    let agent = Agent::start();
    let sshd = Sshd::start(&[agent.key_line("9a")], &[]);
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let reply = exchange(&mut s, &frame(&[[27].as_slice(), &string(b"query")].concat())).unwrap();
    assert_eq!(reply[0], 29, "SSH_AGENT_EXTENSION_RESPONSE");
    let mut rest = &reply[1..];
    let mut strings = Vec::new();
    while rest.len() >= 4 {
        let n = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        strings.push(String::from_utf8(rest[4..4 + n].to_vec()).unwrap());
        rest = &rest[4 + n..];
    }
    assert!(rest.is_empty());
    assert_eq!(strings[0], "query", "the reply names the extension first: {strings:?}");
    for name in ["query", "session-bind@openssh.com", "keytap-approvals@keytap.dev"] {
        assert!(strings[1..].iter().any(|s| s == name), "{name} missing from {strings:?}");
    }

    // Locked, then ssh connects: its session-bind is accepted (OpenSSH 10.5), no key is offered.
    assert_eq!(exchange(&mut s, &frame(&[[22].as_slice(), &string(b"pw")].concat())).unwrap(), [6]);
    let out = sshd.ssh(&agent).arg("true").output().unwrap();
    assert!(!out.status.success(), "logged in while locked: {}", text(&out));
    let log = agent.wait_log("session bound");
    assert!(!log.contains("session-bind refused"), "{log}");
}

#[test]
fn keytap_approvals_says_what_to_do_without_an_agent_and_when_nothing_is_remembered() {
    let dir = tempfile::tempdir().unwrap();
    let out = support::keytap_in(dir.path()).arg("approvals").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("`keytap approvals` works through the running keytap agent") && err.contains("eval $(keytap agent)"), "{err}");
    let agent = Agent::start();
    let out = agent.keytap().arg("approvals").output().unwrap();
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stdout).to_string()), (Some(0), "No approvals are remembered.\n".to_string()));
    let out = agent.keytap().args(["approvals", "clear"]).output().unwrap();
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stdout).to_string()), (Some(0), "Forgot 0 remembered approvals.\n".to_string()));
    let out = agent.keytap().args(["approvals", "--json"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "[]\n");
}
