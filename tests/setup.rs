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
