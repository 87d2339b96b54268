//! `keytap setup` on the mock token: directly and through a running agent.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const KEYTAP: &str = env!("CARGO_BIN_EXE_keytap");

fn run(args: &[&str], sock: Option<&Path>) -> Output {
    let mut c = Command::new(KEYTAP);
    c.args(args).env_remove("SSH_AUTH_SOCK");
    if let Some(s) = sock {
        c.env("SSH_AUTH_SOCK", s);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{:?}\n{}\n{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn mock_setup_creates_refuses_replacement_and_forces() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("mock");
    let state = state.to_str().unwrap();
    assert!(run(&["mock", "init", "--state-dir", state, "--serial", "4242"], None).status.success());
    let setup = |extra: &[&str]| {
        let mut a = vec!["setup", "--token", "mock", "--state-dir", state, "--slot", "82", "--alg", "ed25519", "--touch", "never"];
        a.extend_from_slice(extra);
        run(&a, None)
    };
    let out = setup(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let line = stdout.lines().last().unwrap();
    assert!(line.starts_with("ssh-ed25519 ") && line.ends_with("keytap 4242/82"), "{stdout}");

    let out = setup(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("slot 82 already holds a key; pass --force"), "{}", text(&out));

    let out = setup(&["--force"]);
    assert!(out.status.success(), "{}", text(&out));
    let replaced = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().to_string();
    assert_ne!(replaced, line);
    let listed = run(&["list", "--token", "mock", "--state-dir", state], None);
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
    let pin = dir.path().join("pin");
    std::fs::write(&pin, "123456\n").unwrap();
    std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(run(&["mock", "init", "--state-dir", state.to_str().unwrap(), "--serial", "4343"], None).status.success());
    let mut agent = Command::new(KEYTAP)
        .args(["agent", "--foreground", "--token", "mock", "--state-dir"])
        .arg(&state)
        .arg("--socket")
        .arg(&socket)
        .arg("--pin-file")
        .arg(&pin)
        .env_remove("SSH_AUTH_SOCK")
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
    let out = run(&["setup", "--slot", "83", "--alg", "p256", "--touch", "never"], Some(&socket));
    let ok = out.status.success();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let listed = Command::new("ssh-add").arg("-L").env("SSH_AUTH_SOCK", &socket).output().unwrap();
    let refused = run(&["setup", "--slot", "83", "--alg", "p256", "--touch", "never"], Some(&socket));
    let _ = nix_kill(agent.id());
    let _ = agent.wait();
    assert!(ok, "{}", text(&out));
    assert!(stdout.contains("through the agent"), "{stdout}");
    let line = stdout.lines().last().unwrap();
    assert!(String::from_utf8_lossy(&listed.stdout).contains(line.split_whitespace().nth(1).unwrap()));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("the agent refused: slot 83 already holds a key"), "{}", text(&refused));
}

fn nix_kill(pid: u32) -> nix::Result<()> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM)
}
