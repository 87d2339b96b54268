//! `keytap setup` on the mock token: directly and through a running agent.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::text;

/// keytap isolated in `root`, through the agent at `sock` when given.
fn run(root: &Path, args: &[&str], sock: Option<&Path>) -> Output {
    let mut c = support::keytap_in(root);
    c.args(args);
    if let Some(s) = sock {
        c.env("SSH_AUTH_SOCK", s);
    }
    c.output().unwrap()
}

/// The authorized_keys line setup printed.
fn key_line(stdout: &str) -> String {
    stdout.lines().find(|l| l.starts_with("ssh-") || l.starts_with("ecdsa-")).unwrap_or_else(|| panic!("no key line in {stdout}")).to_string()
}

const OFFER: &str = "This token still uses the factory default PIN (123456), so anyone holding it can use its keys. \
Change the PIN and PUK now: keytap setup --no-key --change-pin --change-puk";

fn secret_file(dir: &Path, name: &str, value: &str) -> String {
    support::secret_file(dir, name, value).to_str().unwrap().to_string()
}

fn mock_state(state: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(Path::new(state).join("mock-token.json")).unwrap()).unwrap()
}

#[test]
fn mock_setup_creates_refuses_replacement_and_forces() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("mock");
    let state = state.to_str().unwrap();
    let pin = secret_file(dir.path(), "pin", "123456");
    assert!(run(dir.path(), &["mock", "init", "--state-dir", state, "--serial", "4242"], None).status.success());
    let setup = |extra: &[&str]| {
        let mut a = vec!["setup", "--token", "mock", "--state-dir", state, "--slot", "82", "--alg", "ed25519", "--touch", "never", "--pin-file", &pin];
        a.extend_from_slice(extra);
        run(dir.path(), &a, None)
    };
    let out = setup(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let line = key_line(&stdout);
    let line = line.as_str();
    assert!(line.starts_with("ssh-ed25519 ") && line.ends_with("keytap 4242/82"), "{stdout}");
    // First-time setup offers to change the factory PIN and PUK.
    assert_eq!(stdout.lines().last().unwrap(), OFFER, "{stdout}");

    let out = setup(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("slot 82 already holds a key; pass --force"), "{}", text(&out));

    let out = setup(&["--force"]);
    assert!(out.status.success(), "{}", text(&out));
    let replaced = key_line(&String::from_utf8_lossy(&out.stdout));
    assert_ne!(replaced, line);
    let listed = run(dir.path(), &["list", "--token", "mock", "--state-dir", state], None);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(replaced.split_whitespace().nth(1).unwrap()));
}

#[test]
fn mock_setup_through_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("mock");
    let sock_dir = dir.path().join("sock");
    std::fs::create_dir(&sock_dir).unwrap();
    std::fs::set_permissions(&sock_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let socket = sock_dir.join("agent.sock");
    let pin = std::path::PathBuf::from(secret_file(dir.path(), "pin", "123456"));
    assert!(run(dir.path(), &["mock", "init", "--state-dir", state.to_str().unwrap(), "--serial", "4343"], None).status.success());
    let mut agent = support::keytap_in(dir.path())
        .args(["agent", "--foreground", "--token", "mock", "--state-dir"])
        .arg(&state)
        .arg("--socket")
        .arg(&socket)
        .arg("--pin-file")
        .arg(&pin)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    let out = run(dir.path(), &["setup", "--slot", "83", "--alg", "p256", "--touch", "never"], Some(&socket));
    let ok = out.status.success();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let listed = Command::new("ssh-add").arg("-L").env("SSH_AUTH_SOCK", &socket).output().unwrap();
    let refused = run(dir.path(), &["setup", "--slot", "83", "--alg", "p256", "--touch", "never"], Some(&socket));
    // Changing the PIN through the agent: the command reads the secrets, the agent's owner
    // thread changes them on the token.
    let new_pin = secret_file(dir.path(), "new-pin", "24681357");
    let changed = run(dir.path(), &["setup", "--no-key", "--change-pin", "--pin-file", pin.to_str().unwrap(), "--new-pin-file", &new_pin], Some(&socket));
    let _ = nix_kill(agent.id());
    let _ = agent.wait();
    assert!(ok, "{}", text(&out));
    assert!(stdout.contains("through the agent"), "{stdout}");
    assert_eq!(stdout.lines().last().unwrap(), OFFER, "{stdout}");
    let line = key_line(&stdout);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(line.split_whitespace().nth(1).unwrap()));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("the agent refused: slot 83 already holds a key"), "{}", text(&refused));
    assert!(changed.status.success(), "{}", text(&changed));
    assert_eq!(String::from_utf8_lossy(&changed.stdout), "PIN changed.\n");
    assert_eq!(mock_state(state.to_str().unwrap())["pin"], "24681357");
}

#[test]
fn mock_setup_changes_pin_and_puk_and_counts_wrong_puks() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("mock");
    let state = state.to_str().unwrap();
    assert!(run(dir.path(), &["mock", "init", "--state-dir", state], None).status.success());
    let pin = secret_file(dir.path(), "pin", "123456");
    let puk = secret_file(dir.path(), "puk", "12345678");
    let new_pin = secret_file(dir.path(), "new-pin", "86427531");
    let new_puk = secret_file(dir.path(), "new-puk", "97531864");
    let base = ["setup", "--token", "mock", "--state-dir", state, "--no-key"];
    let with = |extra: &[&str]| {
        let mut a = base.to_vec();
        a.extend_from_slice(extra);
        run(dir.path(), &a, None)
    };
    // A new PIN that is too short is refused before the token is touched.
    let short = secret_file(dir.path(), "short", "1234");
    let out = with(&["--pin-file", &pin, "--change-pin", "--new-pin-file", &short]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stderr), "keytap: a PIN must be 6 to 8 ASCII characters; choose another\n");
    // A wrong PUK spends one PUK retry and changes nothing.
    let wrong = secret_file(dir.path(), "wrong-puk", "00000000");
    let out = with(&["--pin-file", &pin, "--change-puk", "--puk-file", &wrong, "--new-puk-file", &new_puk]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong PUK, 2 tries left"), "{}", text(&out));
    assert_eq!(mock_state(state)["puk"], "12345678");
    assert_eq!(mock_state(state)["puk_retries"], 2);

    let out = with(&["--pin-file", &pin, "--change-pin", "--new-pin-file", &new_pin, "--change-puk", "--puk-file", &puk, "--new-puk-file", &new_puk]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "PUK changed.\nPIN changed.\n");
    let after = mock_state(state);
    assert_eq!((after["pin"].as_str(), after["puk"].as_str(), after["puk_retries"].as_u64()), (Some("86427531"), Some("97531864"), Some(3)));
    // With its own PIN the token is no longer offered a change.
    let out = with(&["--pin-file", &new_pin]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}

fn nix_kill(pid: u32) -> nix::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)
}

/// A pinentry stand-in: answers every GETPIN with `PIN` and appends each SETDESC to `LOG`.
fn fake_pinentry(dir: &Path) -> String {
    let path = dir.join("pinentry");
    std::fs::write(
        &path,
        "#!/bin/sh\necho 'OK ready'\nwhile read -r cmd rest; do\n  case \"$cmd\" in\n    SETDESC) echo \"$rest\" >> \"$LOG\"; echo OK;;\n    GETPIN) echo \"D $PIN\"; echo OK;;\n    BYE) echo OK; exit 0;;\n    *) echo OK;;\n  esac\ndone\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.to_str().unwrap().to_string()
}

fn slot_9a(root: &Path, state: &str) -> String {
    let out = run(root, &["authorized-key", "--key", "9a", "--token", "mock", "--state-dir", state], None);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Issue 19: an operation that cannot finish fails before it destroys anything, and says so.
#[test]
fn protecting_a_missing_management_key_fails_before_the_key_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("mock");
    let state = state.to_str().unwrap();
    let pin = secret_file(dir.path(), "pin", "123456");
    assert!(run(dir.path(), &["mock", "init", "--state-dir", state], None).status.success());
    let before = slot_9a(dir.path(), state);
    let out = run(dir.path(), &["setup", "--token", "mock", "--state-dir", state, "--force", "--protect-management-key", "--pin-file", &pin], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "keytap: this token has no management key, so --protect-management-key cannot apply; drop it. Nothing on the token was changed\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
    assert_eq!(slot_9a(dir.path(), state), before, "the 9a key was replaced");
    assert_eq!(mock_state(state)["pin_retries"], 3);

    // A wrong PUK stops a PIN and PUK change before the key is created, and says so.
    let wrong_puk = secret_file(dir.path(), "wrong-puk", "00000000");
    let new_puk = secret_file(dir.path(), "new-puk", "97531864");
    let out = run(
        dir.path(),
        &["setup", "--token", "mock", "--state-dir", state, "--force", "--pin-file", &pin, "--change-puk", "--puk-file", &wrong_puk, "--new-puk-file", &new_puk],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("keytap: changing the PUK: wrong PUK, 2 tries left"), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).ends_with("; nothing on the token was changed\n"), "{}", text(&out));
    assert_eq!(slot_9a(dir.path(), state), before, "the 9a key was replaced");
}

/// Issue 19: a wrong PIN from a file says so (and that a retry was spent); the current PIN of
/// a PIN change is asked once; the prompt says what setup is about to do.
#[test]
fn setup_pin_messages_say_what_happened() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("mock");
    let state = state.to_str().unwrap();
    assert!(run(dir.path(), &["mock", "init", "--state-dir", state], None).status.success());
    let wrong = secret_file(dir.path(), "wrong", "999999");
    let out = run(dir.path(), &["setup", "--token", "mock", "--state-dir", state, "--no-key", "--pin-file", &wrong, "--pinentry", "/bin/false"], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("keytap: wrong PIN (2 tries left; one was spent), and no other PIN was given"), "{stderr}");
    assert!(!stderr.contains("cancelled"), "{stderr}");

    let pinentry = fake_pinentry(dir.path());
    let log = dir.path().join("prompts");
    let new_pin = secret_file(dir.path(), "new-pin", "86427531");
    let out = support::keytap_in(dir.path())
        .args(["setup", "--token", "mock", "--state-dir", state, "--no-key", "--change-pin", "--new-pin-file", &new_pin, "--pinentry", &pinentry])
        .env("LOG", &log)
        .env("PIN", "123456")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "PIN changed.\n");
    let prompts = std::fs::read_to_string(&log).unwrap();
    assert_eq!(prompts, "Enter the CURRENT PIN of the YubiKey.\n", "asked more than once, or something else");

    std::fs::remove_file(&log).unwrap();
    let out = support::keytap_in(dir.path())
        .args(["setup", "--token", "mock", "--state-dir", state, "--no-key", "--pinentry", &pinentry])
        .env("LOG", &log)
        .env("PIN", "86427531")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let prompts = std::fs::read_to_string(&log).unwrap();
    assert!(prompts.contains("keytap setup wants to check the PIN") && !prompts.contains("create a key"), "{prompts}");
}

/// Issue 19: an explicit token choice opens that token even when an agent runs, and a flag
/// the agent cannot honour says so; `list` says why an agent at SSH_AUTH_SOCK is not used.
#[test]
fn explicit_token_flags_are_not_overridden_by_a_running_agent() {
    let agent = support::Agent::start();
    let other = agent.dir.path().join("other-mock");
    let other = other.to_str().unwrap();
    let out = agent.keytap().args(["mock", "init", "--serial", "5151", "--state-dir", other]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let listed = agent.keytap().args(["list", "--token", "mock", "--state-dir", other]).output().unwrap();
    assert!(listed.status.success(), "{}", text(&listed));
    let stdout = String::from_utf8_lossy(&listed.stdout);
    assert!(stdout.contains("5151/9a") && !stdout.contains("12345678/"), "{stdout}");
    let key = agent.keytap().args(["authorized-key", "--state-dir", other]).output().unwrap();
    assert!(String::from_utf8_lossy(&key.stdout).trim_end().ends_with("keytap 5151/9a"), "{}", text(&key));
    // Through the agent (no token named): --pin-file cannot apply, and the note says so.
    let pin = secret_file(agent.dir.path(), "setup-pin", "123456");
    let out = agent.keytap().args(["setup", "--slot", "85", "--touch", "never", "--pin-file", &pin]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("note: --pin-file is not used: the running agent asks for the PIN"), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("through the agent"), "{}", text(&out));
    // --state-dir with --token piv cannot apply.
    let out = agent.keytap().args(["list", "--token", "piv", "--state-dir", other]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--state-dir is for the mock token and cannot apply to --token piv"), "{}", text(&out));

    // SSH_AUTH_SOCK at another agent (OpenSSH's): `keytap list` says it is not using it.
    let ssh_sock = agent.dir.path().join("ssh-agent.sock");
    let mut ssh_agent = std::process::Command::new("ssh-agent").arg("-D").arg("-a").arg(&ssh_sock).stdout(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ssh_sock.exists() {
        assert!(Instant::now() < deadline, "ssh-agent did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = agent.keytap().arg("list").env("SSH_AUTH_SOCK", &ssh_sock).output().unwrap();
    let _ = ssh_agent.kill();
    let _ = ssh_agent.wait();
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with(&format!("keytap: note: SSH_AUTH_SOCK ({}) is an agent, but not keytap; opening the token directly\n", ssh_sock.display())),
        "{}",
        text(&out)
    );
}
