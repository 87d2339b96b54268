//! Issue 2: the agent on the mock token, driven by the real OpenSSH tools, git and sshd.

mod support;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use support::{exchange, frame, key_blob, sign_request, string, text, Agent, Sshd, MOCK_SERIAL};

const SLOTS: [&str; 4] = ["9a", "9c", "9d", "9e"];

#[test]
fn ssh_add_lists_the_four_mock_keys_matching_keytap_list() {
    let agent = Agent::start();
    let lines = agent.public_keys();
    assert_eq!(lines.len(), 4, "{lines:?}");
    let types: Vec<&str> = lines.iter().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(types, ["ecdsa-sha2-nistp256", "ssh-ed25519", "ecdsa-sha2-nistp384", "ssh-rsa"]);

    // keytap list (through the agent) prints the same authorized_keys lines and fingerprints.
    let out = agent.keytap().args(["list", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 4);
    for (line, key) in lines.iter().zip(listed) {
        assert_eq!(key["authorized_key"].as_str().unwrap(), line);
        assert_eq!(key["serial"], MOCK_SERIAL);
    }
    let fps = agent.cmd("ssh-add").arg("-l").output().unwrap();
    let fps = String::from_utf8(fps.stdout).unwrap();
    for (fp_line, key) in fps.lines().zip(listed) {
        let fp = fp_line.split(' ').nth(1).unwrap();
        assert_eq!(fp, key["fingerprint"].as_str().unwrap());
        assert!(fp_line.contains(&format!("keytap {MOCK_SERIAL}/{}", key["slot"].as_str().unwrap())));
    }

    // The same list without the agent, straight from the token.
    let direct = support::keytap_in(agent.dir.path())
        .args(["list", "--json", "--token", "mock", "--state-dir"])
        .arg(&agent.state_dir)
        .output()
        .unwrap();
    assert!(direct.status.success(), "{}", text(&direct));
    let direct: serde_json::Value = serde_json::from_slice(&direct.stdout).unwrap();
    assert_eq!(direct.as_array().unwrap(), listed);
}

#[test]
fn keytap_list_prints_slot_policy_fingerprint_and_key_line() {
    let agent = Agent::start();
    let out = agent.keytap().arg("list").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 8, "{stdout}");
    let heads: Vec<String> = lines.iter().step_by(2).map(|l| l.split(" SHA256:").next().unwrap().to_string()).collect();
    assert_eq!(
        heads,
        [
            "12345678/9a  p256     pin=once   touch=cached",
            "12345678/9c  ed25519  pin=always touch=always",
            "12345678/9d  p384     pin=once   touch=never ",
            "12345678/9e  rsa2048  pin=never  touch=never ",
        ]
    );
    for (i, slot) in SLOTS.iter().enumerate() {
        assert_eq!(lines[2 * i + 1], format!("  {}", agent.key_line(slot)));
    }
}

#[test]
fn status_reports_agent_token_and_lock() {
    let agent = Agent::start();
    let out = agent.keytap().arg("status").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let expected_tail = "locked: no\ntoken mock: serial 12345678, keytap mock token (TEST), firmware 5.4.3, 4 keys\n";
    assert!(stdout.starts_with(&format!("agent: running (keytap {}, pid {}) at ", env!("CARGO_PKG_VERSION"), agent.pid())), "{stdout}");
    assert!(stdout.ends_with(expected_tail), "{stdout}");

    // No agent: a clear error, exit status 1.
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing.sock");
    let out = support::keytap_in(dir.path()).arg("status").env("SSH_AUTH_SOCK", &missing).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.starts_with(&format!("keytap: cannot reach the agent at {}", missing.display())), "{stderr}");
    assert!(stderr.contains("start it with `keytap agent`"), "{stderr}");
}

fn sign_and_verify(agent: &Agent, slot: &str) {
    let dir = agent.dir.path();
    let pubkey = agent.key_file(slot);
    let msg = dir.join(format!("msg-{slot}"));
    std::fs::write(&msg, format!("hello from slot {slot}\n")).unwrap();
    let out = agent.cmd("ssh-keygen").args(["-Y", "sign", "-U", "-n", "git", "-f"]).arg(&pubkey).arg(&msg).output().unwrap();
    assert!(out.status.success(), "sign with {slot}: {}", text(&out));
    let allowed = dir.join(format!("allowed-{slot}"));
    std::fs::write(&allowed, format!("dev@example.com {}\n", agent.key_line(slot))).unwrap();
    let verify = |data: &[u8]| {
        let mut child = Command::new("ssh-keygen")
            .args(["-Y", "verify", "-n", "git", "-I", "dev@example.com", "-f"])
            .arg(&allowed)
            .arg("-s")
            .arg(msg.with_extension("sig").to_str().map(|s| s.to_string()).unwrap_or_default())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(data).unwrap();
        child.wait_with_output().unwrap()
    };
    // ssh-keygen writes msg.sig next to msg (msg-9a -> msg-9a.sig).
    let sig_path = dir.join(format!("msg-{slot}.sig"));
    assert!(sig_path.exists());
    std::fs::rename(&sig_path, msg.with_extension("sig")).unwrap();
    let good = verify(&std::fs::read(&msg).unwrap());
    assert!(good.status.success(), "verify {slot}: {}", text(&good));
    assert!(String::from_utf8_lossy(&good.stdout).contains("Good \"git\" signature for dev@example.com"), "{}", text(&good));
    let bad = verify(format!("hello from slot {slot}!\n").as_bytes());
    assert!(!bad.status.success(), "tampered message verified with {slot}");
}

#[test]
fn ssh_keygen_signatures_verify_for_every_key_type() {
    let agent = Agent::start();
    for slot in SLOTS {
        sign_and_verify(&agent, slot);
    }
    let log = agent.log_text();
    assert_eq!(log.matches("purpose=sshsig:git").count(), 4, "{log}");
}

#[test]
fn git_commit_signed_through_the_agent_verifies() {
    let agent = Agent::start();
    let repo = agent.dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let allowed = agent.dir.path().join("allowed_signers");
    std::fs::write(&allowed, format!("dev@example.com {}\n", agent.key_line("9a"))).unwrap();
    let git = |args: &[&str]| {
        let out = agent
            .cmd("git")
            .args(args)
            .current_dir(&repo)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", text(&out));
        String::from_utf8(out.stdout).unwrap() + &String::from_utf8(out.stderr).unwrap()
    };
    git(&["init", "-q"]);
    git(&["config", "user.email", "dev@example.com"]);
    git(&["config", "user.name", "Dev"]);
    git(&["config", "gpg.format", "ssh"]);
    git(&["config", "user.signingkey", &format!("key::{}", agent.key_line("9a"))]);
    git(&["config", "gpg.ssh.allowedSignersFile", allowed.to_str().unwrap()]);
    std::fs::write(repo.join("file"), "content\n").unwrap();
    git(&["add", "file"]);
    git(&["commit", "-q", "-S", "-m", "signed"]);
    let verified = git(&["verify-commit", "-v", "HEAD"]);
    assert!(verified.contains("Good \"git\" signature for dev@example.com with ECDSA key SHA256:"), "{verified}");
    // The agent saw who asked: ssh-keygen, started by git.
    agent.wait_log("chain=ssh-keygen <- git");
}

#[test]
fn sshd_accepts_logins_with_every_key_type_hostbound() {
    let agent = Agent::start();
    let keys: Vec<String> = SLOTS.iter().map(|s| agent.key_line(s)).collect();
    let sshd = Sshd::start(&keys, &["PubkeyAcceptedAlgorithms +ssh-rsa,rsa-sha2-256,rsa-sha2-512"]);
    for slot in SLOTS {
        let key = agent.key_file(slot);
        let out = sshd
            .ssh(&agent)
            .args(["-o", "IdentitiesOnly=yes", "-i"])
            .arg(&key)
            .args(["echo", "logged-in"])
            .output()
            .unwrap();
        assert!(out.status.success(), "login with {slot}: {}\nsshd:\n{}", text(&out), sshd.log_text());
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "logged-in");
    }
    let log = agent.log_text();
    // ssh bound every connection to its session (session-bind verified) before signing.
    assert!(log.matches("session bound").count() >= 4, "{log}");
    assert_eq!(log.matches("purpose=ssh-auth").count(), 4, "{log}");
    // OpenSSH 8.9+ uses the hostbound method when the server offers it.
    assert!(sshd.log_text().contains("publickey-hostbound-v00@openssh.com"), "{}", sshd.log_text());
}

fn askpass(agent: &Agent, name: &str, answer: &str) -> std::path::PathBuf {
    let path = agent.dir.path().join(name);
    std::fs::write(&path, format!("#!/bin/sh\necho '{answer}'\n")).unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    path
}

#[test]
fn lock_hides_and_refuses_until_the_right_passphrase() {
    let agent = Agent::start();
    let sshd = Sshd::start(&[agent.key_line("9d")], &[]);
    let ssh_add = |flag: &str, pass: &std::path::Path| {
        agent.cmd("ssh-add").arg(flag).env("SSH_ASKPASS", pass).env("SSH_ASKPASS_REQUIRE", "force").output().unwrap()
    };
    let right = askpass(&agent, "right", "correct horse");
    let wrong = askpass(&agent, "wrong", "battery staple");
    let out = ssh_add("-x", &right);
    assert!(out.status.success(), "lock: {}", text(&out));

    let listed = agent.cmd("ssh-add").arg("-L").output().unwrap();
    assert!(!listed.status.success(), "a locked agent listed keys: {}", text(&listed));
    assert_eq!(String::from_utf8_lossy(&listed.stdout).trim(), "The agent has no identities.");
    let login = sshd.ssh(&agent).arg("true").output().unwrap();
    assert!(!login.status.success(), "login through a locked agent: {}", text(&login));

    let out = ssh_add("-X", &wrong);
    assert!(!out.status.success(), "wrong passphrase unlocked: {}", text(&out));
    let still = agent.cmd("ssh-add").arg("-L").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&still.stdout).trim(), "The agent has no identities.");

    let out = ssh_add("-X", &right);
    assert!(out.status.success(), "unlock: {}", text(&out));
    assert_eq!(agent.public_keys().len(), 4);
    let login = sshd.ssh(&agent).arg("true").output().unwrap();
    assert!(login.status.success(), "login after unlock: {}", text(&login));
    let log = agent.log_text();
    assert!(log.contains("wrong unlock passphrase"), "{log}");
}

#[test]
fn add_and_remove_identity_are_refused_with_an_explanation() {
    let agent = Agent::start();
    let key = agent.dir.path().join("soft");
    let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status().unwrap();
    assert!(st.success());
    let out = agent.cmd("ssh-add").arg(&key).output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    let out = agent.cmd("ssh-add").arg("-d").arg(agent.key_file("9a")).output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    agent.wait_log("keys live on hardware tokens");
    assert_eq!(agent.public_keys().len(), 4);
}

// ---- raw protocol ----

fn connect(agent: &Agent) -> UnixStream {
    let s = UnixStream::connect(&agent.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

const FAILURE: &[u8] = &[5];

fn assert_served(agent: &Agent) {
    let mut s = connect(agent);
    let answer = exchange(&mut s, &frame(&[11])).expect("identities answer");
    assert_eq!(answer[0], 12);
    assert_eq!(&answer[1..5], &4u32.to_be_bytes());
}

#[test]
fn malformed_input_gets_failure_or_close_and_never_hurts_the_agent() {
    let agent = Agent::start();
    let blob = key_blob(&agent.key_line("9d"));
    let unknown_blob = key_blob(&support_keygen_line(&agent));

    // Each case: raw bytes, expected answer (Some(FAILURE)) or a closed connection (None).
    // (name, raw bytes, expected answer or None for a closed connection)
    type Case<'a> = (&'a str, Vec<u8>, Option<&'a [u8]>);
    let mut cases: Vec<Case> = vec![
        ("4 GiB length prefix", vec![0xff, 0xff, 0xff, 0xff, 11], None),
        ("just over 256 KiB", ((256 * 1024 + 1) as u32).to_be_bytes().to_vec(), None),
        ("zero length", vec![0, 0, 0, 0], None),
        ("unknown type", frame(&[200]), Some(FAILURE)),
        ("garbage after identities request", frame(&[11, 0xde, 0xad]), Some(FAILURE)),
        ("sign for an unknown key", frame(&sign_request(&unknown_blob, b"data", 0)), Some(FAILURE)),
        ("sign with a garbage key blob", frame(&sign_request(b"\0\0\0\x07ssh-foo", b"data", 0)), Some(FAILURE)),
        ("sign with trailing garbage", frame(&[sign_request(&blob, b"data", 0), vec![1, 2, 3]].concat()), Some(FAILURE)),
        ("rsa without sha2 flag", frame(&sign_request(&key_blob(&agent.key_line("9e")), b"data", 0)), Some(FAILURE)),
        ("unknown extension", frame(&[vec![27], string(b"nope@example.com")].concat()), Some(FAILURE)),
        ("lock with a non-string", frame(&[22, 0, 0]), Some(FAILURE)),
    ];
    // Truncated bodies and inner lengths that run past the frame, for every message type.
    let full_sign = sign_request(&blob, b"some data", 0);
    for cut in [1, 3, 5, 20, full_sign.len() - 1] {
        cases.push(("truncated sign request", frame(&full_sign[..cut]), Some(FAILURE)));
    }
    for msg_type in [13u8, 17, 18, 20, 21, 22, 23, 25, 26, 27] {
        cases.push(("inner length past the frame", frame(&[vec![msg_type], vec![0, 0, 0x10, 0], b"short".to_vec()].concat()), Some(FAILURE)));
        cases.push(("type only", frame(&[msg_type]), Some(FAILURE)));
    }
    // A session-bind whose signature does not verify.
    let bad_bind = {
        let host = key_blob(&agent.key_line("9c"));
        let mut sig = string(b"ssh-ed25519");
        sig.extend(string(&[0u8; 64]));
        [vec![27], string(b"session-bind@openssh.com"), string(&host), string(&[9u8; 32]), string(&sig), vec![0]].concat()
    };
    cases.push(("session-bind with a bad signature", frame(&bad_bind), Some(FAILURE)));

    for (name, bytes, expected) in cases {
        let mut s = connect(&agent);
        let answer = exchange(&mut s, &bytes);
        match expected {
            Some(want) => {
                assert_eq!(answer.as_deref(), Some(want), "{name}");
                // The connection stays usable after a FAILURE.
                let again = exchange(&mut s, &frame(&[11])).unwrap_or_else(|| panic!("{name}: connection dropped"));
                assert_eq!(again[0], 12, "{name}");
            }
            None => assert_eq!(answer, None, "{name}: expected the connection to be closed"),
        }
        assert_served(&agent);
    }

    // A frame cut off mid-way by a client that goes away.
    let mut s = connect(&agent);
    s.write_all(&[0, 0, 0, 50, 13, 0, 0]).unwrap();
    drop(s);
    assert_served(&agent);
    let log = agent.log_text();
    assert!(log.contains("exceeds the 256 KiB limit"), "{log}");
    assert!(log.contains("refusing SHA-1 `ssh-rsa` signature"), "{log}");
    assert!(log.contains("session-bind refused: host key signature does not verify"), "{log}");
}

fn support_keygen_line(agent: &Agent) -> String {
    let key = agent.dir.path().join("other");
    let st = Command::new("ssh-keygen").args(["-q", "-t", "ecdsa", "-N", "", "-f"]).arg(&key).status().unwrap();
    assert!(st.success());
    std::fs::read_to_string(key.with_extension("pub")).unwrap()
}

#[test]
fn query_extension_lists_supported_extensions() {
    let agent = Agent::start();
    let mut s = connect(&agent);
    let answer = exchange(&mut s, &frame(&[vec![27], string(b"query")].concat())).unwrap();
    assert_eq!(answer[0], 29);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("session-bind@openssh.com"), "{text}");
}

#[test]
fn hundreds_of_concurrent_clients_are_served() {
    let agent = Agent::start();
    let blob = key_blob(&agent.key_line("9e"));
    let socket = agent.socket.clone();
    let threads: Vec<_> = (0..300)
        .map(|i| {
            let socket = socket.clone();
            let blob = blob.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&socket).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let ids = exchange(&mut s, &frame(&[11])).unwrap();
                assert_eq!(ids[0], 12);
                if i % 10 == 0 {
                    let sig = exchange(&mut s, &frame(&sign_request(&blob, format!("data {i}").as_bytes(), 2))).unwrap();
                    assert_eq!(sig[0], 14, "client {i}");
                }
                s
            })
        })
        .collect();
    // All 300 connections are open at once before any is closed.
    let streams: Vec<UnixStream> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(streams.len(), 300);
    assert_served(&agent);
}

#[test]
fn peers_of_another_uid_are_refused() {
    if !nix_is_root() {
        eprintln!("SKIPPED: peers_of_another_uid_are_refused needs root to run a client as another uid");
        return;
    }
    let agent = Agent::start();
    // Open the socket's permissions so the other user reaches accept(): the uid check must refuse it.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(agent.socket.parent().unwrap(), std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&agent.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "ssh-add", "-L"])
        .env("SSH_AUTH_SOCK", &agent.socket)
        .output()
        .unwrap();
    assert!(!out.status.success(), "another uid listed keys: {}", text(&out));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ecdsa"), "{}", text(&out));
    agent.wait_log("refused a connection from another user (uid 65534");
    assert_served(&agent);
}

fn nix_is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false)
}

/// Issue 19: `ssh-add -D` is an ordinary request (keys stay on the tokens, which are released);
/// it logs no warning, though ssh-add follows it with SSH1's remove-all.
#[test]
fn ssh_add_d_succeeds_without_a_warning() {
    let agent = Agent::start();
    let warnings = |log: &str| log.lines().filter(|l| l.contains(" WARN ")).count();
    let before = warnings(&agent.log_text());
    let out = agent.cmd("ssh-add").arg("-D").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let log = agent.wait_log("ssh-add -D: keys live on tokens");
    // The SSH1 request comes after the answer to the first; wait for it to be handled.
    let log = if log.contains("SSH1 remove-all") { log } else { agent.wait_log("SSH1 remove-all") };
    assert_eq!(warnings(&log), before, "{log}");
    assert_eq!(agent.public_keys().len(), 4);
}
