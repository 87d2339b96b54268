//! SSH certificates for token keys and `keytap git setup`, with the real OpenSSH tools and git:
//! a real `keytap agent --token mock` and a loopback sshd that trusts only a CA
//! (`TrustedUserCAKeys`, no authorized keys).

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::{text, user, Agent, AgentOptions, Ca, Sshd};

/// Seconds since the epoch.
fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn keytap_ok(agent: &Agent, args: &[&str]) -> String {
    let out = agent.keytap().args(args).output().unwrap();
    assert!(out.status.success(), "keytap {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn keytap_err(agent: &Agent, args: &[&str]) -> String {
    let out = agent.keytap().args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "keytap {args:?} should fail: {}", text(&out));
    String::from_utf8(out.stderr).unwrap()
}

fn login(sshd: &Sshd, agent: &Agent, extra: &[&str]) -> std::process::Output {
    sshd.ssh(agent).args(extra).arg("true").output().unwrap()
}

#[test]
fn certificate_is_listed_logs_in_and_disappears_when_it_expires() {
    let agent = Agent::start();
    let ca = Ca::new();
    let sshd = ca.sshd();
    let key = agent.key_file("9d");
    let plain = agent.key_line("9d");

    // Without a certificate the CA-only server refuses the plain key.
    let out = login(&sshd, &agent, &[]);
    assert!(!out.status.success(), "{}", text(&out));

    let valid_for = 20;
    let cert = ca.sign(&key, "ci-worker", &user(), &format!("-1m:+{valid_for}s"));
    let signed_at = now();
    let out = keytap_ok(&agent, &["cert", "add", cert.to_str().unwrap()]);
    assert!(out.contains("added certificate \"ci-worker\""), "{out}");
    assert!(out.contains(&format!("principals: {}", user())), "{out}");

    let listed = agent.public_keys();
    assert!(listed[0].starts_with("ecdsa-sha2-nistp384-cert-v01@openssh.com "), "certificate first: {listed:?}");
    assert!(listed[0].contains("keytap cert ci-worker"), "{listed:?}");
    let plain_at = listed.iter().position(|l| *l == plain).expect("plain key still listed");
    assert!(plain_at > 0);

    let out = login(&sshd, &agent, &[]);
    assert!(out.status.success(), "login with the certificate: {}\n{}", text(&out), sshd.log_text());
    assert!(sshd.log_text().contains("ID ci-worker"), "sshd accepted the certificate: {}", sshd.log_text());

    let list = keytap_ok(&agent, &["cert", "list"]);
    assert!(list.contains("\"ci-worker\"") && list.contains("[valid]"), "{list}");

    // Wait out the certificate (ssh-keygen -V +Ns counts from its own clock second).
    let expires = signed_at + valid_for + 2;
    while now() < expires {
        std::thread::sleep(Duration::from_millis(200));
    }
    let listed = agent.public_keys();
    assert!(!listed.iter().any(|l| l.contains("-cert-v01@openssh.com")), "expired certificate still listed: {listed:?}");
    assert!(listed.contains(&plain));
    let out = login(&sshd, &agent, &[]);
    assert!(!out.status.success(), "login after expiry must fail: {}", text(&out));
    let list = keytap_ok(&agent, &["cert", "list"]);
    assert!(list.contains("no certificates"), "expired certificates are forgotten: {list}");
}

#[test]
fn gomote_shape_certificate_file_beside_the_agent_held_key() {
    let agent = Agent::start();
    let ca = Ca::new();
    let sshd = ca.sshd();
    let key = agent.key_file("9a");
    // gomote keeps the certificate in a file and never gives it to the agent.
    let cert = ca.sign(&key, "go_build", &format!("{},session@farmer.golang.org", user()), "-1m:+5m");
    let out = login(
        &sshd,
        &agent,
        &["-o", "IdentitiesOnly=yes", "-i", key.to_str().unwrap(), "-o", &format!("CertificateFile={}", cert.display())],
    );
    assert!(out.status.success(), "gomote-style login: {}\n{}", text(&out), sshd.log_text());
    assert!(sshd.log_text().contains("ID go_build"), "{}", sshd.log_text());
    agent.wait_log("signed");

    // gomote's own file layout (docs/gomote.md): the token's public key where gomote expects
    // its key pair, and the certificate beside it; ssh picks up `<key>-cert.pub` by itself.
    let gomote = tempfile::tempdir().unwrap();
    let id = gomote.path().join("id_ed25519");
    std::fs::copy(&key, &id).unwrap();
    std::fs::copy(&key, id.with_extension("pub")).unwrap();
    std::fs::copy(&cert, gomote.path().join("id_ed25519-cert.pub")).unwrap();
    let out = login(&sshd, &agent, &["-o", "IdentitiesOnly=yes", "-i", id.to_str().unwrap()]);
    assert!(out.status.success(), "gomote layout: {}\n{}", text(&out), sshd.log_text());

    // The same command with a certificate from another CA is refused by the server.
    let other = Ca::new();
    let wrong = other.sign(&key, "go_build", &user(), "-1m:+5m");
    let out = login(
        &sshd,
        &agent,
        &["-o", "IdentitiesOnly=yes", "-i", key.to_str().unwrap(), "-o", &format!("CertificateFile={}", wrong.display())],
    );
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn certs_only_hides_a_certified_key_and_rsa_certificates_sign_with_sha2() {
    let agent = Agent::start_with(AgentOptions { args: vec!["--certs-only".into()], ..Default::default() });
    let ca = Ca::new();
    let sshd = ca.sshd();
    let key = agent.key_file("9e");
    let plain = agent.key_line("9e");
    let cert = ca.sign(&key, "rsa-worker", &user(), "-1m:+5m");
    keytap_ok(&agent, &["cert", "add", cert.to_str().unwrap()]);
    let listed = agent.public_keys();
    assert!(listed[0].starts_with("ssh-rsa-cert-v01@openssh.com "), "{listed:?}");
    assert!(!listed.contains(&plain), "--certs-only hides the certified plain key: {listed:?}");
    assert!(listed.contains(&agent.key_line("9a")), "keys without a certificate stay listed: {listed:?}");
    // Only the certificate names the RSA key, so ssh's SIGN_REQUEST names the certificate blob.
    let out = login(&sshd, &agent, &[]);
    assert!(out.status.success(), "RSA certificate login: {}\n{}", text(&out), sshd.log_text());
    assert!(sshd.log_text().contains("ID rsa-worker"), "{}", sshd.log_text());

    // Removed: the plain key is listed again.
    let out = keytap_ok(&agent, &["cert", "remove", "rsa-worker"]);
    assert!(out.contains("removed 1 certificate"), "{out}");
    let listed = agent.public_keys();
    assert!(listed.contains(&plain) && !listed.iter().any(|l| l.contains("-cert-v01")), "{listed:?}");
    let err = keytap_err(&agent, &["cert", "remove", "rsa-worker"]);
    assert!(err.contains("no certificate matches \"rsa-worker\""), "{err}");
}

#[test]
fn bad_certificates_are_refused_with_a_clear_error_and_the_agent_carries_on() {
    let agent = Agent::start();
    let ca = Ca::new();
    let before = agent.public_keys();

    // A key that is on no token.
    let elsewhere = tempfile::tempdir().unwrap();
    let stranger = elsewhere.path().join("stranger");
    let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&stranger).output().unwrap();
    assert!(out.status.success());
    let cert = ca.sign(&stranger.with_extension("pub"), "stranger", &user(), "-1m:+5m");
    let err = keytap_err(&agent, &["cert", "add", cert.to_str().unwrap()]);
    assert!(err.contains("certificate \"stranger\" is for key SHA256:") && err.contains("which is on no token"), "{err}");
    assert!(err.contains(cert.to_str().unwrap()), "names the file: {err}");
    assert_eq!(agent.public_keys(), before);

    // A corrupt file.
    let corrupt = ca.dir.path().join("corrupt-cert.pub");
    std::fs::write(&corrupt, "ssh-ed25519-cert-v01@openssh.com AAAAdamaged== x\n").unwrap();
    let err = keytap_err(&agent, &["cert", "add", corrupt.to_str().unwrap()]);
    assert!(err.contains(&format!("{}: not an OpenSSH certificate", corrupt.display())), "{err}");
    assert_eq!(agent.public_keys(), before);

    // A certificate whose CA signature was tampered with still decodes but is refused.
    let key = agent.key_file("9a");
    let good = ca.sign(&key, "tamper", &user(), "-1m:+5m");
    let line = std::fs::read_to_string(&good).unwrap();
    let mut fields: Vec<String> = line.split_whitespace().map(str::to_string).collect();
    let mut blob = base64_decode(&fields[1]);
    let n = blob.len();
    blob[n - 5] ^= 0x01; // inside the signature
    fields[1] = base64_encode(&blob);
    let tampered = ca.dir.path().join("tampered-cert.pub");
    std::fs::write(&tampered, fields.join(" ")).unwrap();
    let err = keytap_err(&agent, &["cert", "add", tampered.to_str().unwrap()]);
    assert!(err.contains("the CA signature does not verify"), "{err}");

    // An expired certificate.
    let expired = ca.sign(&key, "old", &user(), "-2h:-1h");
    let err = keytap_err(&agent, &["cert", "add", expired.to_str().unwrap()]);
    assert!(err.contains("certificate \"old\" expired at"), "{err}");
    assert!(err.contains("ask the CA for a fresh one"), "{err}");

    // A missing file.
    let err = keytap_err(&agent, &["cert", "add", "/nonexistent/x-cert.pub"]);
    assert!(err.contains("/nonexistent/x-cert.pub: cannot read it"), "{err}");

    assert_eq!(agent.public_keys(), before, "the agent is unaffected");
    let list = keytap_ok(&agent, &["cert", "list"]);
    assert!(list.contains("no certificates"), "{list}");
}

#[test]
fn certificates_in_the_directory_are_offered_without_a_command() {
    let agent = Agent::start();
    let ca = Ca::new();
    let sshd = ca.sshd();
    let key = agent.key_file("9a");
    let cert = ca.sign(&key, "from-dir", &user(), "-1m:+5m");
    // The fixture's agent runs with XDG_CONFIG_HOME=<dir>/config.
    let certs = agent.dir.path().join("config/keytap/certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&cert, certs.join("worker-cert.pub")).unwrap();
    std::fs::write(certs.join("broken-cert.pub"), "garbage").unwrap();
    let listed = agent.public_keys();
    assert!(listed[0].starts_with("ecdsa-sha2-nistp256-cert-v01@openssh.com "), "{listed:?}");
    let out = login(&sshd, &agent, &[]);
    assert!(out.status.success(), "{}\n{}", text(&out), sshd.log_text());
    agent.wait_log("broken-cert.pub");
    // A certificate in the directory for a key on no token is logged with its file, not offered.
    let elsewhere = tempfile::tempdir().unwrap();
    let stranger = elsewhere.path().join("stranger");
    assert!(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&stranger).status().unwrap().success());
    let foreign = ca.sign(&stranger.with_extension("pub"), "foreign", &user(), "-1m:+5m");
    std::fs::copy(&foreign, certs.join("foreign-cert.pub")).unwrap();
    let listed = agent.public_keys();
    assert_eq!(listed.iter().filter(|l| l.contains("-cert-v01")).count(), 1, "{listed:?}");
    agent.wait_log("foreign-cert.pub: certificate \"foreign\" is for key SHA256:");
    // Removing the file (the directory mtime changes) stops the offer.
    std::fs::remove_file(certs.join("worker-cert.pub")).unwrap();
    let listed = agent.public_keys();
    assert!(!listed.iter().any(|l| l.contains("-cert-v01")), "{listed:?}");
}

#[test]
fn cert_commands_need_the_keytap_agent() {
    let dir = tempfile::tempdir().unwrap();
    let out = support::keytap_in(dir.path())
        .args(["cert", "list"])
        .env("XDG_CONFIG_HOME", "/nonexistent-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("works through the running keytap agent") && err.contains("/nonexistent-config/keytap/certs"), "{err}");
}

fn git(dir: &Path, home: &Path, agent: &Agent, args: &[&str]) -> std::process::Output {
    agent
        .cmd("git")
        .current_dir(dir)
        .env("HOME", home)
        .env("GIT_CONFIG_GLOBAL", home.join(".gitconfig"))
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn git_setup_then_signed_commit_verifies() {
    let agent = Agent::start();
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    let run = |args: &[&str]| git(&repo, home.path(), &agent, args);
    assert!(run(&["init", "-q"]).status.success());
    let setup = |extra: &[&str]| {
        agent
            .keytap()
            .current_dir(&repo)
            .env("HOME", home.path())
            .env("GIT_CONFIG_GLOBAL", home.path().join(".gitconfig"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("XDG_CONFIG_HOME", home.path().join(".config"))
            .args(["git", "setup"])
            .args(extra)
            .output()
            .unwrap()
    };

    // No user.email: refused with a hint, nothing set.
    let out = setup(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("git config --global user.email"), "{}", text(&out));
    assert!(!run(&["config", "--get", "gpg.format"]).status.success());

    assert!(run(&["config", "--global", "user.email", "dev@example.com"]).status.success());
    assert!(run(&["config", "--global", "user.name", "Dev"]).status.success());
    let out = setup(&[]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("slot 9c"), "9c is the default signing key: {stdout}");
    assert!(stdout.contains("git config --local gpg.format = ssh"), "{stdout}");
    assert!(stdout.contains("git config --local user.signingkey = key::ssh-ed25519 "), "{stdout}");
    let signers = home.path().join(".config/keytap/allowed_signers");
    let text_signers = std::fs::read_to_string(&signers).unwrap();
    assert!(text_signers.starts_with("dev@example.com namespaces=\"git\" ssh-ed25519 "), "{text_signers}");

    std::fs::write(repo.join("f"), "x").unwrap();
    assert!(run(&["add", "f"]).status.success());
    let out = run(&["commit", "-q", "-S", "-m", "signed by the token"]);
    assert!(out.status.success(), "git commit -S: {}\n{}", text(&out), agent.log_text());
    let out = run(&["verify-commit", "HEAD"]);
    assert!(out.status.success(), "git verify-commit: {}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Good \"git\" signature for dev@example.com"), "{stderr}");

    // Running it again changes nothing; --sign-commits adds commit.gpgsign.
    let out = setup(&[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing to change"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&signers).unwrap(), text_signers, "no duplicate allowed-signers line");
    let out = setup(&["--sign-commits"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("commit.gpgsign = true"), "{}", text(&out));
    std::fs::write(repo.join("f"), "y").unwrap();
    let out = run(&["commit", "-q", "-am", "signed without -S"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(run(&["verify-commit", "HEAD"]).status.success());

    // An unsigned commit does not verify (the check can fail).
    let out = run(&["-c", "commit.gpgsign=false", "commit", "-q", "--allow-empty", "-m", "unsigned"]);
    assert!(out.status.success());
    assert!(!run(&["verify-commit", "HEAD"]).status.success());
    // The global config was not touched by a --local setup.
    let global = std::fs::read_to_string(home.path().join(".gitconfig")).unwrap();
    assert!(!global.contains("signingkey"), "{global}");
}

#[test]
fn authorized_key_prints_the_slot_line_through_agent_or_token() {
    let agent = Agent::start();
    let through_agent = keytap_ok(&agent, &["authorized-key"]);
    assert_eq!(through_agent.trim(), agent.key_line("9a"));
    let signing = keytap_ok(&agent, &["authorized-key", "--key", "9c"]);
    assert_eq!(signing.trim(), agent.key_line("9c"));
    // Without the agent: straight from the mock token.
    let out = support::keytap_in(agent.dir.path())
        .args(["authorized-key", "--key", "9e", "--token", "mock", "--state-dir"])
        .arg(&agent.state_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), agent.key_line("9e"));
    let err = keytap_err(&agent, &["authorized-key", "--key", "SHA256:nope"]);
    assert!(err.contains("no key matches SHA256:nope"), "{err}");
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn sign_requests_naming_a_certificate_need_one_the_agent_offers() {
    use keytap::client::AgentClient;
    use ssh_agent_lib::proto::{PublicCredential, Request, Response, SignRequest};

    let agent = Agent::start();
    let ca = Ca::new();
    let key = agent.key_file("9e");
    let cert_path = ca.sign(&key, "rsa", &user(), "-1m:+5m");
    let cert = ssh_key::Certificate::read_file(&cert_path).unwrap();
    let sign = |flags: u32| {
        let mut client = AgentClient::connect(&agent.socket).unwrap();
        let request = SignRequest { credential: PublicCredential::Cert(Box::new(cert.clone())), data: b"raw data".to_vec(), flags };
        client.request(&Request::SignRequest(request)).unwrap()
    };
    assert_eq!(sign(0x04), Response::Failure, "a certificate the agent never got");
    agent.wait_log("was never given to this agent");
    keytap_ok(&agent, &["cert", "add", cert_path.to_str().unwrap()]);
    match sign(0x04) {
        Response::SignResponse(sig) => assert_eq!(sig.algorithm().as_str(), "rsa-sha2-512", "the RSA flag picks the hash"),
        other => panic!("{other:?}"),
    }
    match sign(0x02) {
        Response::SignResponse(sig) => assert_eq!(sig.algorithm().as_str(), "rsa-sha2-256"),
        other => panic!("{other:?}"),
    }
    assert_eq!(sign(0), Response::Failure, "SHA-1 is refused for certificates too");
    keytap_ok(&agent, &["cert", "remove", cert_path.to_str().unwrap()]);
    assert_eq!(sign(0x04), Response::Failure, "removed");
}
