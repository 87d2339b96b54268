//! Issue 17 item 1: upstream agents. OpenSSH's own `ssh-agent` holds file keys behind keytap;
//! logins, SSH signatures, `ssh-add`, policy and audit go through keytap; a dead, silent or
//! lying upstream never stops keytap serving its own keys.

mod support;

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{exchange, frame, key_blob, sign_request, string, text, Agent, AgentOptions, Sshd, MOCK_SERIAL};

/// OpenSSH's ssh-agent in the foreground on its own socket. Killed on drop.
struct OpensshAgent {
    socket: PathBuf,
    child: Child,
}

impl OpensshAgent {
    fn start(socket: &Path) -> OpensshAgent {
        let _ = std::fs::remove_file(socket);
        let child = Command::new("ssh-agent").arg("-D").arg("-a").arg(socket).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(socket).is_err() {
            assert!(Instant::now() < deadline, "ssh-agent did not listen on {}", socket.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        OpensshAgent { socket: socket.to_path_buf(), child }
    }

    fn add(&self, key: &Path) {
        let out = self.ssh_add().arg(key).output().unwrap();
        assert!(out.status.success(), "ssh-add to ssh-agent: {}", text(&out));
    }

    fn ssh_add(&self) -> Command {
        let mut cmd = Command::new("ssh-add");
        cmd.env("SSH_AUTH_SOCK", &self.socket).env_remove("SSH_ASKPASS").stdin(Stdio::null());
        cmd
    }

    fn listed(&self) -> String {
        String::from_utf8(self.ssh_add().arg("-L").output().unwrap().stdout).unwrap()
    }
}

impl Drop for OpensshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A file key (no passphrase) `dir/name`; returns its public key line.
fn file_key(dir: &Path, name: &str) -> String {
    let path = dir.join(name);
    let out = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::fs::read_to_string(path.with_extension("pub")).unwrap().trim().to_string()
}

fn same_key(a: &str, b: &str) -> bool {
    a.split(' ').take(2).eq(b.split(' ').take(2))
}

/// keytap on the mock token with `upstream` sockets and a config; the audit log's path.
fn keytap_with(upstreams: &[&Path], config: &str) -> (Agent, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("config.toml");
    std::fs::write(&config_path, config).unwrap();
    let audit = dir.path().join("audit.jsonl");
    let mut args = vec!["--config".to_string(), config_path.display().to_string(), "--audit-log".into(), audit.display().to_string()];
    for u in upstreams {
        args.push("--upstream".into());
        args.push(u.display().to_string());
    }
    let agent = Agent::start_with(AgentOptions { args, ..Default::default() });
    std::mem::forget(dir);
    // The mock token's four keys are listed once its owner thread has read them.
    eventually("the token's keys are listed", || listed(&agent).is_ok_and(|l| token_key_count(&l) == 4));
    (agent, audit)
}

fn records(audit: &Path, event: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(audit).unwrap_or_default().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|r| r["event"] == event).collect()
}

/// Lines of `ssh-add -L` through keytap, or the failure.
fn listed(agent: &Agent) -> Result<Vec<String>, String> {
    let out = agent.cmd("ssh-add").arg("-L").output().unwrap();
    if !out.status.success() {
        return Err(text(&out));
    }
    Ok(String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect())
}

fn token_key_count(lines: &[String]) -> usize {
    lines.iter().filter(|l| l.contains(&format!("keytap {MOCK_SERIAL}/"))).count()
}

/// Poll `check` for up to 20 s (a generous bound: this asserts outcomes, not timing).
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn upstream_file_keys_are_listed_after_token_keys_and_serve_logins_and_signatures() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = OpensshAgent::start(&dir.path().join("upstream.sock"));
    let line = file_key(dir.path(), "filekey");
    upstream.add(&dir.path().join("filekey"));
    let (agent, audit) = keytap_with(&[&upstream.socket], "");

    let lines = listed(&agent).unwrap();
    let tokens = token_key_count(&lines);
    assert!(tokens >= 1, "{lines:?}");
    assert_eq!(lines.len(), tokens + 1, "{lines:?}");
    assert!(same_key(lines.last().unwrap(), &line), "the file key comes last: {lines:?}");
    assert!(lines.last().unwrap().ends_with(" filekey"), "its comment is the upstream's: {lines:?}");

    // A login through keytap with the file key, against a server that knows only that key.
    let sshd = Sshd::start(std::slice::from_ref(&line), &[]);
    let login = sshd.ssh(&agent).arg("true").output().unwrap();
    assert!(login.status.success(), "login: {}\n{}", text(&login), agent.log_text());

    // `ssh-keygen -Y sign` through keytap, verified by `ssh-keygen -Y verify`.
    support::sshsig_sign_and_verify(&agent.socket, dir.path(), &line, b"upstream payload\n").unwrap();

    let signs = records(&audit, "sign");
    assert_eq!(signs.len(), 2, "{signs:?}");
    for (record, purpose) in signs.iter().zip(["ssh-auth", "sshsig:file"]) {
        assert_eq!(record["decision"], "allow", "{record}");
        assert_eq!(record["purpose"], purpose, "{record}");
        assert_eq!(record["key"]["slot"], "upstream", "{record}");
        assert_eq!(record["details"]["upstream"], upstream.socket.display().to_string(), "{record}");
    }
}

#[test]
fn a_policy_limiting_an_upstream_key_to_git_refuses_a_login() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = OpensshAgent::start(&dir.path().join("upstream.sock"));
    let line = file_key(dir.path(), "gitkey");
    upstream.add(&dir.path().join("gitkey"));
    // Lists not filtered by destination, so ssh does offer the key (item 2 would hide it).
    let (agent, audit) = keytap_with(&[&upstream.socket], "list_by_destination = false\n[[key]]\nmatch = \"kind:upstream\"\nallow = [\"sshsig:git\"]\n");
    let sshd = Sshd::start(std::slice::from_ref(&line), &[]);
    let login = sshd.ssh(&agent).arg("true").output().unwrap();
    assert!(!login.status.success(), "a git-only upstream key logged in: {}", text(&login));
    let signs = records(&audit, "sign");
    let denied = signs.iter().find(|r| r["purpose"] == "ssh-auth").unwrap_or_else(|| panic!("no login record: {signs:?}"));
    assert_eq!(denied["decision"], "deny");
    assert_eq!(denied["reason"], "purpose ssh-auth is not allowed for this key (allowed: sshsig:git)");
    assert_eq!(denied["key"]["slot"], "upstream");

    // The same key matched by its fingerprint: git signing only, and nothing for another namespace.
    let fingerprint = String::from_utf8(Command::new("ssh-keygen").arg("-lf").arg(dir.path().join("gitkey.pub")).output().unwrap().stdout).unwrap();
    let fingerprint = fingerprint.split(' ').nth(1).unwrap().to_string();
    let (agent, _) = keytap_with(&[&upstream.socket], &format!("[[key]]\nmatch = \"{fingerprint}\"\nallow = [\"sshsig:git\"]\n"));
    assert!(support::sshsig_sign_and_verify(&agent.socket, dir.path(), &line, b"x\n").is_err(), "namespace file must be refused");
    assert!(sshd.ssh(&agent).arg("true").output().unwrap().status.code() != Some(0));
}

#[test]
fn ssh_add_through_keytap_lands_in_the_upstream_and_removals_reach_it() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = OpensshAgent::start(&dir.path().join("upstream.sock"));
    let line = file_key(dir.path(), "added");
    let (agent, audit) = keytap_with(&[&upstream.socket], "");

    let out = agent.cmd("ssh-add").arg(dir.path().join("added")).output().unwrap();
    assert!(out.status.success(), "ssh-add through keytap: {}\n{}", text(&out), agent.log_text());
    assert!(upstream.listed().lines().any(|l| same_key(l, &line)), "not in the upstream: {}", upstream.listed());
    assert!(listed(&agent).unwrap().iter().any(|l| same_key(l, &line)));
    let adds = records(&audit, "add-identity");
    assert_eq!(adds.len(), 1);
    assert_eq!(adds[0]["decision"], "allow");

    // `ssh-add -d` of the file key removes it upstream; token keys stay.
    let out = agent.cmd("ssh-add").arg("-d").arg(dir.path().join("added.pub")).output().unwrap();
    assert!(out.status.success(), "ssh-add -d: {}", text(&out));
    assert!(!upstream.listed().lines().any(|l| same_key(l, &line)));
    assert!(token_key_count(&listed(&agent).unwrap()) >= 1);

    // `ssh-add -D` empties the upstream too.
    upstream.add(&dir.path().join("added"));
    let out = agent.cmd("ssh-add").arg("-D").output().unwrap();
    assert!(out.status.success(), "ssh-add -D: {}", text(&out));
    assert!(upstream.listed().trim().is_empty() || !upstream.listed().contains("ssh-ed25519"), "{}", upstream.listed());
    let lines = listed(&agent).unwrap();
    assert_eq!(lines.len(), token_key_count(&lines), "{lines:?}");

    // Without an upstream, `ssh-add FILE` is refused and the log says what to do.
    let (alone, audit) = keytap_with(&[], "");
    let out = alone.cmd("ssh-add").arg(dir.path().join("added")).output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    alone.wait_log("no upstream agent is configured: start keytap with `--upstream SOCKET`");
    assert!(records(&audit, "sign").is_empty());
}

#[test]
fn lock_hides_and_refuses_upstream_keys() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = OpensshAgent::start(&dir.path().join("upstream.sock"));
    let line = file_key(dir.path(), "locked");
    upstream.add(&dir.path().join("locked"));
    let (agent, _) = keytap_with(&[&upstream.socket], "");
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let sign = frame(&sign_request(&key_blob(&line), b"data", 0));
    assert_eq!(exchange(&mut s, &sign).unwrap()[0], 14, "unlocked: the upstream signs");
    assert_eq!(exchange(&mut s, &frame(&[[22].as_slice(), &string(b"pass")].concat())).unwrap(), [6]);
    assert_eq!(exchange(&mut s, &frame(&[11])).unwrap(), [12, 0, 0, 0, 0], "locked: no keys listed");
    assert_eq!(exchange(&mut s, &sign).unwrap(), [5], "locked: the upstream key does not sign");
    assert_eq!(exchange(&mut s, &frame(&[[23].as_slice(), &string(b"pass")].concat())).unwrap(), [6]);
    assert_eq!(exchange(&mut s, &sign).unwrap()[0], 14, "unlocked again");
}

#[test]
fn a_killed_upstream_leaves_keytap_serving_and_is_picked_up_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("upstream.sock");
    let upstream = OpensshAgent::start(&socket);
    let line = file_key(dir.path(), "comeback");
    upstream.add(&dir.path().join("comeback"));
    let (agent, _) = keytap_with(&[&socket], "");
    let has_file_key = |lines: &[String]| lines.iter().any(|l| same_key(l, &line));
    assert!(has_file_key(&listed(&agent).unwrap()));

    drop(upstream);
    // keytap keeps listing and signing with its own keys (the file key may stay listed for a
    // short while from the last good answer, but it cannot sign).
    let lines = listed(&agent).unwrap();
    assert!(token_key_count(&lines) >= 1, "{lines:?}");
    let own = agent.key_line("9a");
    support::sshsig_sign_and_verify(&agent.socket, dir.path(), &own, b"own key\n").unwrap();
    assert!(support::sshsig_sign_and_verify(&agent.socket, dir.path(), &line, b"gone\n").is_err());

    let upstream = OpensshAgent::start(&socket);
    upstream.add(&dir.path().join("comeback"));
    eventually("the returned upstream signs through keytap", || support::sshsig_sign_and_verify(&agent.socket, dir.path(), &line, b"back\n").is_ok());
    assert!(has_file_key(&listed(&agent).unwrap()));
}

/// A fake upstream that accepts connections and answers with `reply` (nothing: stays silent).
fn fake_upstream(socket: &Path, reply: Option<Vec<u8>>) {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            if let Some(reply) = &reply {
                use std::io::{Read, Write};
                let mut header = [0u8; 4];
                if stream.read_exact(&mut header).is_ok() {
                    let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
                    let _ = stream.read_exact(&mut body);
                    let _ = stream.write_all(reply);
                }
            }
            held.push(stream);
        }
    });
}

#[test]
fn a_silent_or_lying_upstream_never_stops_keytap_listing_its_own_keys() {
    let dir = tempfile::tempdir().unwrap();
    let silent = dir.path().join("silent.sock");
    fake_upstream(&silent, None);
    let huge = dir.path().join("huge.sock");
    fake_upstream(&huge, Some(u32::MAX.to_be_bytes().to_vec()));
    let garbage = dir.path().join("garbage.sock");
    // An identities answer that promises a million keys in a few bytes.
    fake_upstream(&garbage, Some(frame(&[12, 0, 0x0f, 0x42, 0x40, 1, 2, 3])));
    let (agent, _) = keytap_with(&[&silent, &huge, &garbage], "");
    for _ in 0..3 {
        // Generous bound: ssh-add itself must not hit its own timeouts, and keytap answers.
        let started = Instant::now();
        let lines = listed(&agent).unwrap();
        assert!(token_key_count(&lines) >= 1 && lines.len() == token_key_count(&lines), "{lines:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "listing took {:?}", started.elapsed());
    }
    // Own keys still sign, and the agent is alive.
    let own = agent.key_line("9a");
    support::sshsig_sign_and_verify(&agent.socket, dir.path(), &own, b"still here\n").unwrap();
    let log = agent.log_text();
    assert!(log.contains("did not answer in time"), "{log}");
    assert!(log.contains("over the 262144-byte limit"), "{log}");
    assert!(log.contains("do not fit in the frame"), "{log}");
}

#[test]
fn keytap_refuses_itself_as_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sock").join("agent.sock");
    let state = dir.path().join("mock");
    let out = support::keytap_in(dir.path()).args(["mock", "init", "--state-dir"]).arg(&state).output().unwrap();
    assert!(out.status.success());
    let out = support::keytap_in(dir.path())
        .args(["agent", "--foreground", "--token", "mock", "--state-dir"])
        .arg(&state)
        .arg("--socket")
        .arg(&socket)
        .arg("--upstream")
        .arg(&socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("is keytap's own socket"), "{}", text(&out));
}

/// Issue 17 item 2: 8 keys (4 on the token, 4 in an upstream), a server that allows 3 tries
/// and knows only the last key, which policy restricts to that server.
#[test]
fn a_session_bound_list_holds_only_keys_that_could_log_in_there() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = OpensshAgent::start(&dir.path().join("upstream.sock"));
    let mut lines = Vec::new();
    for name in ["f1", "f2", "f3", "target"] {
        lines.push(file_key(dir.path(), name));
        upstream.add(&dir.path().join(name));
    }
    let target = lines.last().unwrap().clone();
    let sshd = Sshd::start(std::slice::from_ref(&target), &["MaxAuthTries 3"]);
    let known_hosts = dir.path().join("policy_known_hosts");
    std::fs::write(&known_hosts, format!("target.example {}\n", sshd.host_key_pub)).unwrap();
    let fingerprint = String::from_utf8(Command::new("ssh-keygen").arg("-lf").arg(dir.path().join("target.pub")).output().unwrap().stdout).unwrap();
    let fingerprint = fingerprint.split(' ').nth(1).unwrap().to_string();
    let config = |filtering: &str| {
        format!(
            "known_hosts = [\"{}\"]\n{filtering}\n[defaults]\nallow = [\"sshsig:git\", \"ssh-auth:elsewhere.example\"]\n\n[[key]]\nmatch = \"{fingerprint}\"\nallow = [\"ssh-auth:target.example\"]\n",
            known_hosts.display()
        )
    };

    let (agent, _) = keytap_with(&[&upstream.socket], &config(""));
    let all = listed(&agent).unwrap();
    assert_eq!(all.len(), 8, "an unbound connection sees every key: {all:?}");
    assert!(same_key(all.last().unwrap(), &target));
    let login = sshd.ssh(&agent).arg("true").output().unwrap();
    assert!(login.status.success(), "filtered login: {}\n{}", text(&login), agent.log_text());

    let (unfiltered, _) = keytap_with(&[&upstream.socket], &config("list_by_destination = false"));
    let login = sshd.ssh(&unfiltered).arg("true").output().unwrap();
    assert!(!login.status.success(), "{}", text(&login));
    assert!(text(&login).contains("Too many authentication failures"), "{}", text(&login));
}

/// keytap passes session-bind on, so a key the upstream holds with a destination constraint
/// (`ssh-add -h`) logs in only where that constraint allows.
#[test]
fn an_upstream_keys_own_destination_constraint_still_holds_through_keytap() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = OpensshAgent::start(&dir.path().join("upstream.sock"));
    let line = file_key(dir.path(), "constrained");
    let allowed = Sshd::start(std::slice::from_ref(&line), &[]);
    let other = Sshd::start(std::slice::from_ref(&line), &[]);
    let known_hosts = dir.path().join("constraint_known_hosts");
    std::fs::write(&known_hosts, format!("allowed.example {}\n", allowed.host_key_pub)).unwrap();
    let out = upstream.ssh_add().arg("-H").arg(&known_hosts).args(["-h", "allowed.example"]).arg(dir.path().join("constrained")).output().unwrap();
    assert!(out.status.success(), "ssh-add -h: {}", text(&out));
    let (agent, _) = keytap_with(&[&upstream.socket], "");
    let to_allowed = allowed.ssh(&agent).arg("true").output().unwrap();
    assert!(to_allowed.status.success(), "{}\n{}", text(&to_allowed), agent.log_text());
    let to_other = other.ssh(&agent).arg("true").output().unwrap();
    assert!(!to_other.status.success(), "the upstream's constraint was bypassed: {}", text(&to_other));
}

#[test]
fn sha1_rsa_signatures_are_refused_for_upstream_keys_too() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = OpensshAgent::start(&dir.path().join("upstream.sock"));
    let path = dir.path().join("rsakey");
    let out = Command::new("ssh-keygen").args(["-q", "-t", "rsa", "-b", "2048", "-N", "", "-f"]).arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let line = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    upstream.add(&path);
    let (agent, audit) = keytap_with(&[&upstream.socket], "");
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    assert_eq!(exchange(&mut s, &frame(&sign_request(&key_blob(&line), b"data", 0))).unwrap(), [5], "SHA-1 refused");
    assert_eq!(exchange(&mut s, &frame(&sign_request(&key_blob(&line), b"data", 2))).unwrap()[0], 14, "rsa-sha2-256 signed");
    let signs = records(&audit, "sign");
    assert_eq!(signs[0]["decision"], "deny");
    assert!(signs[0]["reason"].as_str().unwrap().starts_with("refusing SHA-1 `ssh-rsa` signature"), "{}", signs[0]);
}
