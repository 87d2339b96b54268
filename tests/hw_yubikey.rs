//! Opt-in tests against a real YubiKey: set `KEYTAP_TEST_YUBIKEY_SERIAL` (and optionally
//! `KEYTAP_TEST_YUBIKEY_PIN_FILE`). Read-only unless `KEYTAP_TEST_YUBIKEY_DESTRUCTIVE=1`, which
//! overwrites slot 95 only. Touch tests need a human. See docs/testing.md.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

fn serial() -> Option<String> {
    let s = std::env::var("KEYTAP_TEST_YUBIKEY_SERIAL").ok().filter(|s| !s.is_empty());
    if s.is_none() {
        eprintln!("skipping: set KEYTAP_TEST_YUBIKEY_SERIAL to run the hardware suite");
    }
    s
}

fn destructive() -> bool {
    std::env::var("KEYTAP_TEST_YUBIKEY_DESTRUCTIVE").map(|v| v == "1").unwrap_or(false)
}

fn pin_file(dir: &Path) -> PathBuf {
    if let Ok(p) = std::env::var("KEYTAP_TEST_YUBIKEY_PIN_FILE") {
        return PathBuf::from(p);
    }
    let p = dir.join("pin");
    std::fs::write(&p, "123456\n").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// keytap with its config, state and runtime directories under the test's `dir`.
fn keytap(dir: &Path, args: &[&str]) -> Output {
    support::keytap_in(dir).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{:?}\n{}\n{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
#[ignore = "needs a real YubiKey: KEYTAP_TEST_YUBIKEY_SERIAL=NNN cargo test --test hw_yubikey -- --ignored --test-threads 1"]
fn device_is_found_by_serial_and_lists_keys_with_metadata_policies() {
    let serial = serial().expect("set KEYTAP_TEST_YUBIKEY_SERIAL to the serial of the YubiKey to test");
    let dir = tempfile::tempdir().unwrap();
    let out = keytap(dir.path(), &["list", "--token", "piv", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for k in keys.as_array().unwrap() {
        if k["serial"].as_u64() == serial.parse::<u64>().ok() {
            assert!(["p256", "p384", "ed25519", "rsa2048"].contains(&k["algorithm"].as_str().unwrap()));
            assert!(["never", "once", "always"].contains(&k["pin_policy"].as_str().unwrap()));
            assert!(["never", "always", "cached"].contains(&k["touch_policy"].as_str().unwrap()));
            println!("{}/{} {} pin={} touch={}", k["serial"], k["slot"], k["algorithm"], k["pin_policy"], k["touch_policy"]);
        }
    }
}

struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

fn start_agent(dir: &Path, pin: &Path) -> Agent {
    let sock_dir = dir.join("sock");
    std::fs::create_dir_all(&sock_dir).unwrap();
    std::fs::set_permissions(&sock_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let socket = sock_dir.join("agent.sock");
    let child = support::keytap_in(dir)
        .args(["agent", "--foreground", "--token", "piv", "--socket"])
        .arg(&socket)
        .arg("--pin-file")
        .arg(pin)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "agent socket never appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    Agent { child, socket }
}

fn sign(agent: &Agent, dir: &Path, key_line: &str) -> Result<(), String> {
    support::sshsig_sign_and_verify(&agent.socket, dir, key_line, b"hardware test\n")
}

#[test]
#[ignore = "needs a real YubiKey: KEYTAP_TEST_YUBIKEY_SERIAL=NNN cargo test --test hw_yubikey -- --ignored --test-threads 1"]
fn destructive_setup_in_slot_95_and_touch_sign_through_the_agent() {
    let serial = serial().expect("set KEYTAP_TEST_YUBIKEY_SERIAL to the serial of the YubiKey to test");
    if !destructive() {
        eprintln!("skipping: set KEYTAP_TEST_YUBIKEY_DESTRUCTIVE=1 to let this test overwrite slot 95");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pin = pin_file(dir.path());
    let mut algs = vec!["p256"];
    let out = keytap(dir.path(), &["list", "--token", "piv", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    // Ed25519 needs firmware 5.7; setup says so otherwise, which is checked too.
    algs.push("ed25519");
    for alg in algs {
        let out = keytap(dir.path(), &[
            "setup", "--token", "piv", "--serial", &serial, "--slot", "95", "--alg", alg, "--touch", "always", "--pin-policy",
            "once", "--force", "--pin-file", pin.to_str().unwrap(),
        ]);
        if alg == "ed25519" && !out.status.success() {
            assert!(String::from_utf8_lossy(&out.stderr).contains("firmware 5.7"), "{}", text(&out));
            continue;
        }
        assert!(out.status.success(), "{}", text(&out));
        let line = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().to_string();
        let agent = start_agent(dir.path(), &pin);
        eprintln!(">>> touch the YubiKey now ({alg})");
        sign(&agent, dir.path(), &line).unwrap();
        eprintln!(">>> do NOT touch the YubiKey for 20 seconds");
        let err = sign(&agent, dir.path(), &line).unwrap_err();
        assert!(!err.is_empty());
    }
}
