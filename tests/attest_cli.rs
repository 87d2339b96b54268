//! `keytap attest` end to end: through a running `keytap agent --token mock` and directly
//! on the mock token, then `keytap attest verify` with the mock root (accept and deny).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::Command as Cmd;

mod support;

const SERIAL: &str = "44444444";

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let s = Setup { dir };
        s.keytap().args(["mock", "init", "--serial", SERIAL, "--state-dir"]).arg(s.mock()).assert().success();
        std::fs::write(s.pin(), "123456\n").unwrap();
        std::fs::set_permissions(s.pin(), std::fs::Permissions::from_mode(0o600)).unwrap();
        s
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn mock(&self) -> PathBuf {
        self.path("mock")
    }
    fn pin(&self) -> PathBuf {
        self.path("pin")
    }
    /// `keytap` with its config, state and runtime directories inside the test's directory.
    fn keytap(&self) -> Cmd {
        Cmd::from_std(support::keytap_in(self.dir.path()))
    }
    fn root(&self) -> PathBuf {
        self.mock().join("attestation-root.pem")
    }
}

/// A foreground agent on a temp socket, stopped (by its pid) on drop.
struct AgentProcess {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl AgentProcess {
    fn start(s: &Setup) -> AgentProcess {
        // The agent makes (and insists on) a private directory for its socket.
        let socket = s.path("run").join("agent.sock");
        let log = s.path("agent.log");
        let mut child = support::keytap_in(s.dir.path())
            .args(["agent", "-D", "--token", "mock", "--state-dir"])
            .arg(s.mock())
            .arg("--socket")
            .arg(&socket)
            .arg("--pin-file")
            .arg(s.pin())
            .env("KEYTAP_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while !socket.exists() {
            if started.elapsed() > Duration::from_secs(20) || child.try_wait().unwrap().is_some() {
                panic!("agent did not create its socket; its log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The owner thread lists the keys shortly after start.
        std::thread::sleep(Duration::from_millis(300));
        AgentProcess { child, socket, log }
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn attest_cmd(s: &Setup, worker_id: &str, out: &Path) -> Cmd {
    let mut cmd = s.keytap();
    cmd.args(["attest", "--slot", "9a", "--nonce", "n-123", "--worker-pool", "proj/pool", "--worker-group", "dc1"])
        .args(["--worker-id", worker_id, "--out"])
        .arg(out);
    cmd
}

fn verify_cmd(s: &Setup, proof: &Path) -> Cmd {
    let mut cmd = s.keytap();
    cmd.args(["attest", "verify", "--proof"]).arg(proof).arg("--roots").arg(s.root());
    cmd.args(["--nonce", "n-123", "--worker-pool", "proj/pool", "--worker-group", "dc1", "--max-age", "5m"]);
    cmd
}

fn claims(stdout: &[u8]) -> serde_json::Value {
    serde_json::from_slice(stdout).expect("claims JSON on stdout")
}

#[test]
fn attest_directly_then_verify() {
    let s = Setup::new();
    let proof = s.path("proof.json");
    let out = attest_cmd(&s, "w-1", &proof)
        .env_remove("SSH_AUTH_SOCK")
        .args(["--token", "mock", "--state-dir"])
        .arg(s.mock())
        .arg("--pin-file")
        .arg(s.pin())
        .assert()
        .success()
        .get_output()
        .clone();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("using the keytap agent"));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&proof).unwrap()).unwrap();
    assert_eq!(doc["kind"], "yubikey-piv-attestation/v1");

    let ok = verify_cmd(&s, &proof)
        .args(["--worker-id", "w-1", "--allow-serial", &format!("1,{SERIAL}"), "--require-pin", "once", "--require-touch", "cached"])
        .assert()
        .success()
        .code(0)
        .get_output()
        .clone();
    let c = claims(&ok.stdout);
    assert_eq!(c["serial"], 44444444);
    assert_eq!(c["slot"], "9a");
    assert_eq!(c["worker_id"], "w-1");
    assert_eq!(c["pin_policy"], "once");

    // Deny: bound to another worker id, serial not allowed, touch too weak, wrong nonce.
    for (extra, reason) in [
        (vec!["--worker-id", "w-2"], "worker id"),
        (vec!["--allow-serial", "1,2"], "not in the allow-list"),
        (vec!["--require-touch", "always"], "touch policy is cached"),
    ] {
        let denied = verify_cmd(&s, &proof).args(&extra).assert().failure().code(1).get_output().clone();
        assert!(denied.stdout.is_empty(), "no claims on denial");
        let err = String::from_utf8_lossy(&denied.stderr);
        assert!(err.contains("proof rejected") && err.contains(reason), "{extra:?}: {err}");
    }
    let denied = s
        .keytap()
        .args(["attest", "verify", "--proof"])
        .arg(&proof)
        .arg("--roots")
        .arg(s.root())
        .args(["--nonce", "old-nonce"])
        .assert()
        .failure()
        .get_output()
        .clone();
    assert!(String::from_utf8_lossy(&denied.stderr).contains("different nonce"));

    // The device's own f9 certificate is never a trust root (it would let a slot key vouch
    // for any key); the refusal says what to pass instead.
    use base64::Engine;
    let f9 = base64::engine::general_purpose::STANDARD.decode(doc["intermediate_certificate"].as_str().unwrap()).unwrap();
    std::fs::write(s.path("f9.der"), f9).unwrap();
    let denied = s
        .keytap()
        .args(["attest", "verify", "--proof"])
        .arg(&proof)
        .arg("--roots")
        .arg(s.path("f9.der"))
        .args(["--nonce", "n-123", "--allow-serial", SERIAL])
        .assert()
        .failure()
        .code(1)
        .get_output()
        .clone();
    assert!(denied.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains(
            "proof rejected: certificate CN=keytap MOCK PIV Attestation (TEST) cannot be in this chain: this device's f9 certificate is configured as a trust root; pass Yubico's root CA with --roots, never a device certificate"
        ),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );
}

#[test]
fn attest_through_the_agent_then_verify() {
    let s = Setup::new();
    let agent = AgentProcess::start(&s);
    let proof = s.path("proof.json");
    // A --state-dir with no mock token: only the agent can answer.
    let out = attest_cmd(&s, "w-9", &proof)
        .env("SSH_AUTH_SOCK", &agent.socket)
        .args(["--token", "mock", "--state-dir"])
        .arg(s.path("no-token-here"))
        .assert()
        .success()
        .get_output()
        .clone();
    assert!(String::from_utf8_lossy(&out.stderr).contains("using the keytap agent"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("note: --token, --state-dir and --pin-file are not used"));
    let ok = verify_cmd(&s, &proof).args(["--worker-id", "w-9", "--allow-serial", SERIAL]).assert().success().get_output().clone();
    assert_eq!(claims(&ok.stdout)["serial"], 44444444);
    let log = agent.log();
    assert!(log.contains("attestation handed out"), "agent log:\n{log}");
    assert!(log.contains("signed") && log.contains("purpose=raw"), "agent log:\n{log}");

    // An imported key cannot be attested, through the agent either.
    s.keytap().args(["mock", "imported", "9a", "--state-dir"]).arg(s.mock()).assert().success();
    let denied = attest_cmd(&s, "w-9", &s.path("proof2.json"))
        .env("SSH_AUTH_SOCK", &agent.socket)
        .assert()
        .failure()
        .get_output()
        .clone();
    let err = String::from_utf8_lossy(&denied.stderr);
    assert!(err.contains("could not attest slot 9a"), "{err}");
    assert!(!s.path("proof2.json").exists());
    assert!(agent.log().contains("attestation refused: this key cannot be attested"), "agent log:\n{}", agent.log());
}
