//! FIDO security keys end to end: keytap (through the real libfido2) against a virtual FIDO2 key
//! (`examples/vfido.rs`: the Nitrokey 3 / Solo 2 FIDO app on trussed's virtual platform), with
//! the real OpenSSH tools (ssh-keygen, ssh-add, ssh, sshd) checking what keytap produces.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::{text, Agent, AgentOptions, Sshd};

const PIN: &str = "4321";

/// The vfido example binary, built on demand (`cargo test --test fido` does not build examples).
fn vfido_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("examples").join("vfido");
    static BUILT: Mutex<bool> = Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    // scripts/test.sh builds every example first; rebuild only a missing or older binary (a
    // build from inside the test run would recompile dependencies for a different environment).
    let stale = || {
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vfido.rs");
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        modified(&bin).map_or(true, |b| modified(&source).is_some_and(|s| s > b))
    };
    if !*built && stale() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--example", "vfido", "--quiet"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build --example vfido");
        assert!(status.success(), "building the vfido example failed");
        *built = true;
    }
    assert!(bin.exists(), "{} missing after build", bin.display());
    bin
}

/// One virtual security key with persistent state in a temp dir. Killed on drop.
struct VFido {
    dir: tempfile::TempDir,
    child: Option<Child>,
    up_timeout_ms: u32,
}

impl VFido {
    fn start() -> VFido {
        VFido::start_with_timeout(30_000)
    }

    fn start_with_timeout(up_timeout_ms: u32) -> VFido {
        let mut v = VFido { dir: tempfile::tempdir().unwrap(), child: None, up_timeout_ms };
        v.set_touch("approve");
        v.plug();
        v
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("vfido.sock")
    }

    fn device(&self) -> String {
        format!("unix:{}", self.socket().display())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vfido.log")).unwrap_or_default()
    }

    fn set_touch(&self, mode: &str) {
        std::fs::write(self.dir.path().join("touch"), mode).unwrap();
    }

    /// Start (or restart: "re-plug") the key on its state.
    fn plug(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let child = Command::new(vfido_binary())
            .arg("--socket")
            .arg(self.socket())
            .arg("--state")
            .arg(self.dir.path().join("state"))
            .arg("--touch-file")
            .arg(self.dir.path().join("touch"))
            .arg("--log")
            .arg(self.dir.path().join("vfido.log"))
            .args(["--up-timeout-ms", &self.up_timeout_ms.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting vfido");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(Instant::now() < deadline, "vfido did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn unplug(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `keytap setup --fido` against this key; returns the key file path.
    fn setup(&self, dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
        let out = dir.join(name);
        let result = support::keytap_in(dir)
            .args(["setup", "--fido", "--device", &self.device(), "--out"])
            .arg(&out)
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(result.status.success(), "setup --fido {extra:?}: {}", text(&result));
        out
    }

    /// Give the key a PIN (`keytap setup --fido --new-pin-file --no-key`).
    fn set_pin(&self, dir: &Path) -> PathBuf {
        let pin_file = support::secret_file(dir, "fido-pin", PIN);
        let result = support::keytap_in(dir)
            .args(["setup", "--fido", "--no-key", "--device", &self.device(), "--new-pin-file"])
            .arg(&pin_file)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(result.status.success(), "setting the PIN: {}", text(&result));
        pin_file
    }
}

impl Drop for VFido {
    fn drop(&mut self) {
        self.unplug();
    }
}

/// A keytap agent (mock PIV token beside) serving this virtual key.
fn agent(vfido: &VFido, extra: &[&str]) -> Agent {
    let mut args = vec!["--fido-device".to_string(), vfido.device()];
    args.extend(extra.iter().map(|s| s.to_string()));
    Agent::start_with(AgentOptions { args, ..AgentOptions::default() })
}

fn ssh_add(agent: &Agent, args: &[&str]) -> std::process::Output {
    agent.cmd("ssh-add").args(args).output().unwrap()
}

fn pub_line(key: &Path) -> String {
    std::fs::read_to_string(format!("{}.pub", key.display())).unwrap().trim().to_string()
}

fn audit_lines(agent: &Agent) -> Vec<serde_json::Value> {
    let path = agent.dir.path().join("state/keytap/audit.jsonl");
    std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn last_sign(agent: &Agent) -> serde_json::Value {
    audit_lines(agent).into_iter().rev().find(|r| r["event"] == "sign").expect("a sign record")
}

fn sign(agent: &Agent, line: &str, dir: &Path) -> Result<(), String> {
    support::sshsig_sign_and_verify(&agent.socket, dir, line, b"hello from a security key\n")
}

#[test]
fn setup_both_algorithms_then_ssh_add_sign_and_verify() {
    let vfido = VFido::start();
    let agent = agent(&vfido, &[]);
    let dir = agent.dir.path().to_path_buf();
    for (alg, kind) in [("ed25519", "sk-ssh-ed25519@openssh.com"), ("p256", "sk-ecdsa-sha2-nistp256@openssh.com")] {
        let key = vfido.setup(&dir, &format!("id_{alg}_sk"), &["--alg", alg]);
        let line = pub_line(&key);
        assert!(line.starts_with(kind), "{line}");
        // OpenSSH reads the key file keytap wrote: same public key.
        let y = Command::new("ssh-keygen").arg("-y").arg("-f").arg(&key).output().unwrap();
        assert!(y.status.success(), "{}", text(&y));
        let blob = |l: &str| l.split(' ').nth(1).unwrap().to_string();
        assert_eq!(blob(String::from_utf8_lossy(&y.stdout).trim()), blob(&line));
        let added = ssh_add(&agent, &[key.to_str().unwrap()]);
        assert!(added.status.success(), "ssh-add: {}", text(&added));
        assert!(agent.public_keys().iter().any(|l| blob(l) == blob(&line)), "listed after ssh-add");
        let list = agent.keytap().arg("list").output().unwrap();
        assert!(list.status.success() && String::from_utf8_lossy(&list.stdout).contains(&blob(&line)), "keytap list: {}", text(&list));
        sign(&agent, &line, &dir).unwrap_or_else(|e| panic!("{alg}: {e}\n{}", agent.log_text()));
        let record = last_sign(&agent);
        assert_eq!(record["decision"], "allow", "{record}");
        assert_eq!(record["purpose"], "sshsig:file", "{record}");
        assert_eq!(record["details"]["flags"], "0x01", "touched, not verified: {record}");
        assert_eq!(record["details"]["application"], "ssh:", "{record}");
        assert_eq!(record["details"]["device"], vfido.device(), "{record}");
        assert!(record["details"]["counter"].as_u64().is_some(), "{record}");
        assert_eq!(record["key"]["slot"], "fido", "{record}");
    }
    // One CBOR exchange per signature with the device held open (plus the enrolment and the
    // open of each client): the last signature needed only a getAssertion.
    let log = vfido.log();
    let tail: Vec<&str> = log.lines().rev().take_while(|l| *l != "cbor 0x02").collect();
    assert!(!tail.iter().any(|l| l.starts_with("cbor") || *l == "init"), "nothing after the last assertion: {tail:?}");

    let status = agent.keytap().arg("status").output().unwrap();
    assert!(status.status.success(), "keytap status: {}", text(&status));
    let log = agent.keytap().args(["log", "--key", last_sign(&agent)["key"]["fingerprint"].as_str().unwrap()]).output().unwrap();
    let log = String::from_utf8_lossy(&log.stdout).to_string();
    assert!(log.contains("allow") && log.contains("sshsig:file") && log.contains("0/fido"), "keytap log: {log}");

    // ssh-add -d removes one key; -D the rest; the mock token keys stay.
    let ed = dir.join("id_ed25519_sk.pub");
    let removed = ssh_add(&agent, &["-d", ed.to_str().unwrap()]);
    assert!(removed.status.success(), "{}", text(&removed));
    assert!(!agent.public_keys().iter().any(|l| l.starts_with("sk-ssh-ed25519")));
    assert!(sign(&agent, &pub_line(&dir.join("id_ed25519_sk")), &dir).is_err(), "a removed key signs nothing");
    let cleared = ssh_add(&agent, &["-D"]);
    assert!(cleared.status.success(), "{}", text(&cleared));
    assert!(!agent.public_keys().iter().any(|l| l.starts_with("sk-")));
    assert!(agent.public_keys().iter().any(|l| l.contains("keytap 12345678/9a")), "token keys stay");
}

#[test]
fn loaded_keys_survive_an_agent_restart() {
    let vfido = VFido::start();
    let mut first = agent(&vfido, &[]);
    let key = vfido.setup(first.dir.path(), "id_sk", &["--alg", "ed25519"]);
    assert!(ssh_add(&first, &[key.to_str().unwrap()]).status.success());
    first.stop();
    let dir = tempfile::tempdir().unwrap();
    let state = first.dir.path().join("state/keytap/fido-keys.json");
    let saved = std::fs::read_to_string(&state).unwrap();
    assert!(!saved.contains("PRIVATE"), "public data and key handles only");
    // A second agent on the same state directory.
    let second_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(second_dir.path().join("state/keytap")).unwrap();
    std::fs::copy(&state, second_dir.path().join("state/keytap/fido-keys.json")).unwrap();
    let second = Agent::start_with(AgentOptions {
        args: vec!["--fido-device".into(), vfido.device(), "--fido-keys".into(), second_dir.path().join("state/keytap/fido-keys.json").display().to_string()],
        ..AgentOptions::default()
    });
    sign(&second, &pub_line(&key), dir.path()).unwrap();
}

#[test]
fn software_keys_are_refused() {
    let vfido = VFido::start();
    let agent = agent(&vfido, &[]);
    let key = agent.dir.path().join("soft");
    let made = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap();
    assert!(made.success());
    let added = ssh_add(&agent, &[key.to_str().unwrap()]);
    assert!(!added.status.success(), "a software key must be refused: {}", text(&added));
    agent.wait_log("ssh-add refused: a software");
    // Nor are sk keys added while the agent is locked.
    let sk = vfido.setup(agent.dir.path(), "id_sk", &["--alg", "ed25519"]);
    let askpass = agent.dir.path().join("askpass");
    std::fs::write(&askpass, "#!/bin/sh\necho 'lock words'\n").unwrap();
    std::fs::set_permissions(&askpass, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let lock = agent.cmd("ssh-add").arg("-x").env("SSH_ASKPASS", &askpass).env("SSH_ASKPASS_REQUIRE", "force").output().unwrap();
    assert!(lock.status.success(), "lock: {}", text(&lock));
    assert!(!ssh_add(&agent, &[sk.to_str().unwrap()]).status.success(), "no adds while locked");
    agent.wait_log("ssh-add refused: the agent is locked");
}

#[test]
fn sshd_login_touch_required_and_verify_required() {
    let vfido = VFido::start();
    let dir = tempfile::tempdir().unwrap();
    let pin_file = vfido.set_pin(dir.path());
    let agent = agent(&vfido, &["--fido-pin-file", pin_file.to_str().unwrap()]);
    let touch = vfido.setup(dir.path(), "touch_sk", &["--alg", "ed25519"]);
    let verify = vfido.setup(dir.path(), "verify_sk", &["--alg", "p256", "--verify-required", "--pin-file", pin_file.to_str().unwrap()]);
    let untouched = vfido.setup(dir.path(), "untouched_sk", &["--alg", "ed25519", "--no-touch-required"]);
    for k in [&touch, &verify, &untouched] {
        let added = ssh_add(&agent, &[k.to_str().unwrap()]);
        assert!(added.status.success(), "{}", text(&added));
    }
    let ssh_true = |auth_line: String, key: &Path| {
        let sshd = Sshd::start(&[auth_line], &[]);
        let out = sshd.ssh(&agent).arg("-o").arg(format!("IdentityFile={}.pub", key.display())).args(["-o", "IdentitiesOnly=yes", "true"]).output().unwrap();
        (out, sshd.log_text())
    };
    // Default: touch required, and the signature carries UP. The touch comes after 1.5 s, so
    // keytap's notice (after ~1 s) names the program, the purpose and the destination.
    vfido.set_touch("delay:1500");
    let (out, log) = ssh_true(pub_line(&touch), &touch);
    vfido.set_touch("approve");
    let notice = agent.wait_log("Touch your security key to let ssh");
    assert!(notice.contains(&format!("log in over SSH as {} on SHA256:", support::user())), "{notice}");
    assert!(out.status.success(), "login with a touch: {}\n{log}\n{}", text(&out), agent.log_text());
    // OpenSSH binds the session, so the audit record (and any touch notice) names the host key.
    let record = last_sign(&agent);
    assert_eq!(record["purpose"], "ssh-auth", "{record}");
    assert!(record["details"]["host_key"].as_str().is_some_and(|h| h.starts_with("SHA256:")), "{record}");
    // verify-required in authorized_keys: keytap gives the PIN, the signature carries UV.
    let (out, log) = ssh_true(format!("verify-required {}", pub_line(&verify)), &verify);
    assert!(out.status.success(), "verify-required login: {}\n{log}\n{}", text(&out), agent.log_text());
    assert_eq!(last_sign(&agent)["details"]["flags"], "0x05", "touch and PIN");
    // A key made without touch signs without UP: sshd itself refuses it unless authorized_keys
    // says no-touch-required.
    let (out, log) = ssh_true(pub_line(&untouched), &untouched);
    assert!(!out.status.success(), "sshd must refuse a signature without touch");
    assert!(log.contains("user presence"), "sshd says why: {log}");
    assert_eq!(last_sign(&agent)["details"]["flags"], "0x00");
    let (out, _) = ssh_true(format!("no-touch-required {}", pub_line(&untouched)), &untouched);
    assert!(out.status.success(), "no-touch-required accepts it: {}", text(&out));
}

#[test]
fn no_touch_is_a_clean_refusal_and_the_agent_keeps_serving() {
    let vfido = VFido::start();
    let agent = agent(&vfido, &["--touch-timeout", "2"]);
    let dir = agent.dir.path().to_path_buf();
    let key = vfido.setup(&dir, "id_sk", &["--alg", "ed25519"]);
    assert!(ssh_add(&agent, &[key.to_str().unwrap()]).status.success());
    vfido.set_touch("never");
    let started = Instant::now();
    let err = sign(&agent, &pub_line(&key), &dir).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(20), "refused after the touch timeout, not the key's 30 s: {err}");
    let record = last_sign(&agent);
    assert_eq!(record["decision"], "error", "{record}");
    assert!(record["reason"].as_str().unwrap().contains("touch was not given in time"), "{record}");
    // The notice named the requester and the purpose while the key waited.
    let log = agent.wait_log("Touch your security key to let");
    assert!(log.contains("ssh-keygen"), "the notice names the program: {log}");
    assert!(vfido.log().contains("cancel"), "keytap cancelled the wait on the key");
    // A refusal on the key is clean too.
    vfido.set_touch("refuse");
    assert!(sign(&agent, &pub_line(&key), &dir).is_err());
    assert!(last_sign(&agent)["reason"].as_str().unwrap().contains("refused"));
    // The agent keeps serving.
    vfido.set_touch("approve");
    sign(&agent, &pub_line(&key), &dir).unwrap();
}

#[test]
fn a_client_that_hangs_up_cancels_the_wait_for_a_touch() {
    let vfido = VFido::start();
    let agent = agent(&vfido, &[]);
    let dir = agent.dir.path().to_path_buf();
    let key = vfido.setup(&dir, "id_sk", &["--alg", "ed25519"]);
    assert!(ssh_add(&agent, &[key.to_str().unwrap()]).status.success());
    vfido.set_touch("never");
    let waits = vfido.log().matches("up-wait").count();
    std::fs::write(dir.join("msg"), b"x").unwrap();
    let mut signer = agent.cmd("ssh-keygen").args(["-Y", "sign", "-n", "file", "-f"]).arg(format!("{}.pub", key.display())).arg(dir.join("msg")).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while vfido.log().matches("up-wait").count() == waits {
        assert!(Instant::now() < deadline, "the key never waited for a touch");
        std::thread::sleep(Duration::from_millis(20));
    }
    signer.kill().unwrap();
    signer.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !vfido.log().contains("up-cancelled") {
        assert!(Instant::now() < deadline, "the wait was not cancelled: {}", vfido.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.wait_log("the request was cancelled");
    vfido.set_touch("approve");
    sign(&agent, &pub_line(&key), &dir).unwrap();
}

#[test]
fn the_key_stopped_mid_signature_fails_cleanly_then_works_again() {
    let mut vfido = VFido::start();
    let agent = agent(&vfido, &[]);
    let dir = agent.dir.path().to_path_buf();
    let key = vfido.setup(&dir, "id_sk", &["--alg", "p256"]);
    assert!(ssh_add(&agent, &[key.to_str().unwrap()]).status.success());
    sign(&agent, &pub_line(&key), &dir).unwrap();
    vfido.set_touch("never");
    let waits = vfido.log().matches("up-wait").count();
    std::fs::write(dir.join("msg"), b"x").unwrap();
    let signer = agent.cmd("ssh-keygen").args(["-Y", "sign", "-n", "file", "-f"]).arg(format!("{}.pub", key.display())).arg(dir.join("msg")).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while vfido.log().matches("up-wait").count() == waits {
        assert!(Instant::now() < deadline, "the key never waited for a touch");
        std::thread::sleep(Duration::from_millis(20));
    }
    vfido.unplug();
    let out = signer.wait_with_output().unwrap();
    assert!(!out.status.success(), "no signature from a vanished key");
    let record = last_sign(&agent);
    assert_eq!(record["decision"], "error", "{record}");
    assert!(record["reason"].as_str().unwrap().contains("stopped answering"), "{record}");
    vfido.set_touch("approve");
    vfido.plug();
    sign(&agent, &pub_line(&key), &dir).unwrap_or_else(|e| panic!("after re-plugging: {e}\n{}", agent.log_text()));
    // Re-plugged between two signatures: the next one just works (the stale handle is noticed
    // before the request reaches any device, and the key reopened).
    vfido.unplug();
    vfido.plug();
    sign(&agent, &pub_line(&key), &dir).unwrap_or_else(|e| panic!("after a quiet re-plug: {e}\n{}", agent.log_text()));
}

/// A pinentry that always answers with the same (wrong) PIN, counting how often it was asked.
fn wrong_pinentry(dir: &Path) -> PathBuf {
    let script = dir.join("pinentry-wrong");
    let count = dir.join("pinentry-count");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho 'OK ready'\nwhile read -r cmd rest; do\n  case \"$cmd\" in\n    GETPIN) echo x >> {}; echo 'D 9999'; echo OK ;;\n    BYE) echo OK; exit 0 ;;\n    *) echo OK ;;\n  esac\ndone\n",
            count.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn device_retries(vfido: &VFido) -> u8 {
    let mut dev = keytap::fido::ffi::Device::open(&vfido.device()).unwrap();
    dev.pin_retries().unwrap()
}

#[test]
fn wrong_pins_are_counted_and_keytap_stops_at_two_in_a_row() {
    let mut vfido = VFido::start();
    let dir = tempfile::tempdir().unwrap();
    let pin_file = vfido.set_pin(dir.path());
    let key = vfido.setup(dir.path(), "verify_sk", &["--alg", "ed25519", "--verify-required", "--pin-file", pin_file.to_str().unwrap()]);
    assert_eq!(device_retries(&vfido), 8);
    let pinentry = wrong_pinentry(dir.path());
    let agent = agent(&vfido, &["--pinentry", pinentry.to_str().unwrap()]);
    assert!(ssh_add(&agent, &[key.to_str().unwrap()]).status.success());
    assert!(sign(&agent, &pub_line(&key), dir.path()).is_err());
    let record = last_sign(&agent);
    assert!(record["reason"].as_str().unwrap().contains("two wrong FIDO PINs in a row"), "{record}");
    agent.wait_log("wrong FIDO PIN");
    // Two retries spent, never the third (which would block the key until re-plugged).
    assert_eq!(device_retries(&vfido), 6);
    assert!(sign(&agent, &pub_line(&key), dir.path()).is_err());
    assert_eq!(device_retries(&vfido), 6, "no PIN is tried after two wrong in a row");
    drop(agent);

    // Down to 2 retries (re-plugging between pairs, as the key blocks at 3 in a row) ...
    for _ in 0..2 {
        vfido.unplug();
        vfido.plug();
        let a = self::agent(&vfido, &["--pinentry", pinentry.to_str().unwrap()]);
        assert!(ssh_add(&a, &[key.to_str().unwrap()]).status.success());
        assert!(sign(&a, &pub_line(&key), dir.path()).is_err());
    }
    assert_eq!(device_retries(&vfido), 2);
    // ... one more wrong PIN is allowed at 2, and at 1 keytap refuses to spend the last.
    vfido.unplug();
    vfido.plug();
    let a = self::agent(&vfido, &["--pinentry", pinentry.to_str().unwrap()]);
    assert!(ssh_add(&a, &[key.to_str().unwrap()]).status.success());
    assert!(sign(&a, &pub_line(&key), dir.path()).is_err());
    assert_eq!(device_retries(&vfido), 1);
    let record = last_sign(&a);
    assert!(record["reason"].as_str().unwrap().contains("only one FIDO PIN try is left"), "{record}");
    assert!(sign(&a, &pub_line(&key), dir.path()).is_err());
    assert_eq!(device_retries(&vfido), 1, "the last retry is never spent");
}

#[test]
fn resident_keys_load_round_trip() {
    let vfido = VFido::start();
    let dir = tempfile::tempdir().unwrap();
    let pin_file = vfido.set_pin(dir.path());
    let made = vfido.setup(dir.path(), "rk", &["--alg", "ed25519", "--resident", "--user", "alice", "--application", "ssh:work", "--pin-file", pin_file.to_str().unwrap()]);
    let agent = agent(&vfido, &[]);
    let out_dir = dir.path().join("loaded");
    let loaded = agent
        .keytap()
        .args(["fido", "load", "--device", &vfido.device(), "--pin-file", pin_file.to_str().unwrap(), "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(loaded.status.success(), "fido load: {}", text(&loaded));
    let blob = |l: &str| l.split(' ').nth(1).unwrap().to_string();
    let line = pub_line(&made);
    assert!(agent.public_keys().iter().any(|l| blob(l) == blob(&line)), "the resident key is in the agent");
    let file = out_dir.join("id_ed25519_sk_rk_work_alice");
    assert_eq!(blob(&pub_line(&file)), blob(&line), "and written like ssh-keygen -K");
    let y = Command::new("ssh-keygen").arg("-y").arg("-f").arg(&file).output().unwrap();
    assert!(y.status.success(), "{}", text(&y));
    sign(&agent, &line, dir.path()).unwrap();
    assert_eq!(last_sign(&agent)["details"]["application"], "ssh:work");
}

#[test]
fn a_key_limited_to_git_signing_refuses_a_login() {
    let vfido = VFido::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    // Lists unfiltered by destination (issue 17), so ssh offers the key and keytap's rule refuses.
    std::fs::write(&config, "list_by_destination = false\n[[key]]\nmatch = \"kind:fido\"\nallow = [\"sshsig:git\"]\n").unwrap();
    let agent = agent(&vfido, &["--config", config.to_str().unwrap()]);
    let key = vfido.setup(dir.path(), "git_sk", &["--alg", "ed25519"]);
    assert!(ssh_add(&agent, &[key.to_str().unwrap()]).status.success());
    let sshd = Sshd::start(&[pub_line(&key)], &[]);
    let out = sshd.ssh(&agent).arg("-o").arg(format!("IdentityFile={}.pub", key.display())).args(["-o", "IdentitiesOnly=yes", "true"]).output().unwrap();
    assert!(!out.status.success(), "login must be refused");
    let record = last_sign(&agent);
    assert_eq!((record["decision"].as_str(), record["purpose"].as_str()), (Some("deny"), Some("ssh-auth")), "{record}");
    assert!(record["reason"].as_str().unwrap().contains("sshsig:git"), "{record}");
    assert!(!vfido.log().contains("cbor 0x02"), "a refused request never reaches the key");
}

#[test]
fn with_two_keys_the_right_one_is_found_without_touching_the_other() {
    let a = VFido::start();
    let b = VFido::start();
    let dir = tempfile::tempdir().unwrap();
    let key = b.setup(dir.path(), "on_b", &["--alg", "ed25519"]);
    // Key A would never be touched: a touch request there would hang until the timeout.
    a.set_touch("never");
    let agent = Agent::start_with(AgentOptions {
        args: vec!["--fido-device".into(), a.device(), "--fido-device".into(), b.device(), "--touch-timeout".into(), "3".into()],
        ..AgentOptions::default()
    });
    assert!(ssh_add(&agent, &[key.to_str().unwrap()]).status.success());
    sign(&agent, &pub_line(&key), dir.path()).unwrap_or_else(|e| panic!("{e}\n{}", agent.log_text()));
    assert!(!a.log().contains("up-wait"), "never a touch request on the wrong key: {}", a.log());
    assert_eq!(last_sign(&agent)["details"]["device"], b.device());
    // Remembered: the next signature goes straight to B (no probe of A).
    let probes = a.log().matches("cbor 0x02").count();
    sign(&agent, &pub_line(&key), dir.path()).unwrap();
    assert_eq!(a.log().matches("cbor 0x02").count(), probes, "the device holding the key is remembered");
}

#[test]
fn an_sk_certificate_logs_in() {
    let vfido = VFido::start();
    let agent = agent(&vfido, &[]);
    let dir = agent.dir.path().to_path_buf();
    let key = vfido.setup(&dir, "id_sk", &["--alg", "p256"]);
    assert!(ssh_add(&agent, &[key.to_str().unwrap()]).status.success());
    let ca = dir.join("ca");
    let made = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&ca).status().unwrap();
    assert!(made.success());
    let signed = Command::new("ssh-keygen").arg("-q").arg("-s").arg(&ca).args(["-I", "sk-cert", "-V", "-1m:+1h", "-n", &support::user()]).arg(format!("{}.pub", key.display())).output().unwrap();
    assert!(signed.status.success(), "{}", text(&signed));
    let cert = dir.join("id_sk-cert.pub");
    let added = agent.keytap().args(["cert", "add"]).arg(&cert).output().unwrap();
    assert!(added.status.success(), "keytap cert add: {}", text(&added));
    assert!(agent.public_keys().iter().any(|l| l.starts_with("sk-ecdsa-sha2-nistp256-cert-v01@openssh.com ")));
    let sshd = Sshd::start(&[], &[&format!("TrustedUserCAKeys {}.pub", ca.display())]);
    let out = sshd.ssh(&agent).arg("true").output().unwrap();
    assert!(out.status.success(), "certificate login: {}\n{}", text(&out), sshd.log_text());
    assert!(sshd.log_text().contains("ID sk-cert"), "{}", sshd.log_text());
    assert_eq!(last_sign(&agent)["details"]["flags"], "0x01");
}

#[test]
fn no_fido_refuses_sk_keys() {
    let vfido = VFido::start();
    let agent = agent(&vfido, &["--no-fido"]);
    let key = vfido.setup(agent.dir.path(), "id_sk", &["--alg", "ed25519"]);
    let added = ssh_add(&agent, &[key.to_str().unwrap()]);
    assert!(!added.status.success(), "{}", text(&added));
    agent.wait_log("FIDO keys are off");
    assert!(!vfido.log().contains("cbor 0x02"));
}

/// The virtual key's CTAPHID layer, checked against the CTAP 2.1 spec (§11.2) with raw reports.
#[test]
fn vfido_speaks_ctaphid_as_the_spec_says() {
    use std::io::{Read, Write};
    let vfido = VFido::start();
    let mut s = std::os::unix::net::UnixStream::connect(vfido.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let packet = |cid: u32, cmd: u8, len: u16, data: &[u8]| {
        let mut p = [0u8; 64];
        p[..4].copy_from_slice(&cid.to_be_bytes());
        p[4] = cmd;
        p[5..7].copy_from_slice(&len.to_be_bytes());
        p[7..7 + data.len()].copy_from_slice(data);
        p
    };
    let read = |s: &mut std::os::unix::net::UnixStream| {
        let mut p = [0u8; 64];
        s.read_exact(&mut p).unwrap();
        p
    };
    // INIT on the broadcast channel: nonce echoed, a fresh channel, protocol 2, CBOR capable.
    let nonce = [1, 2, 3, 4, 5, 6, 7, 8];
    s.write_all(&packet(0xffff_ffff, 0x86, 8, &nonce)).unwrap();
    let r = read(&mut s);
    assert_eq!((&r[..4], r[4], u16::from_be_bytes([r[5], r[6]])), (&[0xff; 4][..], 0x86, 17));
    assert_eq!(&r[7..15], &nonce);
    let cid = u32::from_be_bytes([r[15], r[16], r[17], r[18]]);
    assert!(cid != 0 && cid != 0xffff_ffff);
    assert_eq!(r[19], 2, "CTAPHID protocol version");
    assert_eq!(r[23] & 0x04, 0x04, "CAPABILITY_CBOR");
    // PING of 100 bytes: one init and one continuation packet each way, echoed.
    let data: Vec<u8> = (0..100u8).collect();
    s.write_all(&packet(cid, 0x81, 100, &data[..57])).unwrap();
    let mut cont = [0u8; 64];
    cont[..4].copy_from_slice(&cid.to_be_bytes());
    cont[4] = 0;
    cont[5..5 + 43].copy_from_slice(&data[57..]);
    s.write_all(&cont).unwrap();
    let (a, b) = (read(&mut s), read(&mut s));
    assert_eq!((a[4], u16::from_be_bytes([a[5], a[6]])), (0x81, 100));
    assert_eq!(b[4], 0, "continuation sequence 0");
    assert_eq!([&a[7..64], &b[5..48]].concat(), data);
    // A continuation out of sequence: ERR_INVALID_SEQ.
    s.write_all(&packet(cid, 0x81, 100, &data[..57])).unwrap();
    cont[4] = 5;
    s.write_all(&cont).unwrap();
    let r = read(&mut s);
    assert_eq!((r[4], r[7]), (0xbf, 0x04));
    // A channel never allocated: ERR_INVALID_CHANNEL; a command the device lacks: ERR_INVALID_CMD.
    s.write_all(&packet(0x1234_5678, 0x81, 1, &[0])).unwrap();
    let r = read(&mut s);
    assert_eq!((r[4], r[7]), (0xbf, 0x0b));
    s.write_all(&packet(cid, 0xaa, 0, &[])).unwrap();
    let r = read(&mut s);
    assert_eq!((r[4], r[7]), (0xbf, 0x01));
    // WINK answers empty; CBOR authenticatorGetInfo answers status 0 and a CBOR map.
    s.write_all(&packet(cid, 0x88, 0, &[])).unwrap();
    let r = read(&mut s);
    assert_eq!((r[4], u16::from_be_bytes([r[5], r[6]])), (0x88, 0));
    s.write_all(&packet(cid, 0x90, 1, &[0x04])).unwrap();
    let r = read(&mut s);
    assert_eq!(r[4], 0x90);
    assert_eq!(r[7], 0x00, "CTAP2_OK");
    assert_eq!(r[8] & 0xe0, 0xa0, "a CBOR map follows");
}
