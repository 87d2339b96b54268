//! Issue 4: purpose policy, host-bound and forwarded use, confirmations, the audit log, and
//! abuse resistance, against a real agent with a config file.

mod support;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use support::{agent_with_config, exchange, frame, key_blob, sign_request, text, Agent, AgentOptions, Sshd};


fn sshsig(agent: &Agent, slot: &str, namespace: &str) -> Output {
    let pubkey = agent.key_file(slot);
    let msg = agent.dir.path().join("msg");
    std::fs::write(&msg, b"payload\n").unwrap();
    let _ = std::fs::remove_file(agent.dir.path().join("msg.sig"));
    agent.cmd("ssh-keygen").args(["-Y", "sign", "-U", "-n", namespace, "-f"]).arg(&pubkey).arg(&msg).output().unwrap()
}

fn records(audit: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(audit).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn sign_records(audit: &Path) -> Vec<serde_json::Value> {
    records(audit).into_iter().filter(|r| r["event"] == "sign").collect()
}

#[test]
fn a_git_only_key_signs_commits_and_nothing_else() {
    // Unfiltered lists, so ssh offers the git-only key and the refusal is keytap's.
    let (agent, audit) = agent_with_config("list_by_destination = false\n[[key]]\nmatch = \"slot:9d\"\nallow = [\"sshsig:git\"]\n", &[]);
    assert!(sshsig(&agent, "9d", "git").status.success());
    let out = sshsig(&agent, "9d", "file");
    assert!(!out.status.success(), "{}", text(&out));
    let sshd = Sshd::start(&[agent.key_line("9d")], &[]);
    let login = sshd.ssh(&agent).args(["-o", "IdentitiesOnly=yes", "-i"]).arg(agent.key_file("9d")).arg("true").output().unwrap();
    assert!(!login.status.success(), "git-only key logged in: {}", text(&login));

    let recs = sign_records(&audit);
    let summary: Vec<(String, String, String)> = recs
        .iter()
        .map(|r| (r["purpose"].as_str().unwrap().into(), r["decision"].as_str().unwrap().into(), r["reason"].as_str().unwrap().into()))
        .collect();
    assert_eq!(
        summary,
        [
            ("sshsig:git".into(), "allow".into(), "".into()),
            ("sshsig:file".into(), "deny".into(), "purpose sshsig:file is not allowed for this key (allowed: sshsig:git)".into()),
            ("ssh-auth".into(), "deny".into(), "purpose ssh-auth is not allowed for this key (allowed: sshsig:git)".into()),
        ]
    );
    assert_eq!(recs[2]["details"]["user"], support::user());
    assert_eq!(recs[1]["details"]["namespace"], "file");
    // Never the data, only its hash.
    assert_eq!(recs[0]["data_sha256"].as_str().unwrap().len(), 64);
    // keytap log prints them readably and filters by key.
    let out = agent.keytap().args(["log", "--file"]).arg(&audit).args(["--key", "9d"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(printed.lines().count(), 3, "{printed}");
    assert!(printed.lines().nth(1).unwrap().contains(" deny   sign     sshsig:file key=12345678/9d SHA256:"), "{printed}");
    assert!(printed.lines().nth(1).unwrap().contains("by ssh-keygen <- "), "{printed}");
    let none = agent.keytap().args(["log", "--file"]).arg(&audit).args(["--key", "9a"]).output().unwrap();
    assert_eq!(String::from_utf8(none.stdout).unwrap(), "");
    // The same key forms as every other --key: SERIAL/SLOT, and a clear refusal of a typo.
    let by_serial = agent.keytap().args(["log", "--file"]).arg(&audit).args(["--key", "12345678/9d"]).output().unwrap();
    assert_eq!(String::from_utf8(by_serial.stdout).unwrap(), printed);
    let other_token = agent.keytap().args(["log", "--file"]).arg(&audit).args(["--key", "87654321/9d"]).output().unwrap();
    assert_eq!(String::from_utf8(other_token.stdout).unwrap(), "");
    let typo = agent.keytap().args(["log", "--file"]).arg(&audit).args(["--key", "9z"]).output().unwrap();
    assert_eq!(typo.status.code(), Some(1), "{}", text(&typo));
    assert!(text(&typo).contains("--key: invalid key \"9z\": use a slot (9a, 9c, 9d, 9e or 82-95), SERIAL/SLOT"), "{}", text(&typo));
    let future = agent.keytap().args(["log", "--since", "2999-01-01T00:00:00Z", "--file"]).arg(&audit).output().unwrap();
    assert_eq!(String::from_utf8(future.stdout).unwrap(), "");
    let recent = agent.keytap().args(["log", "--since", "1h", "--file"]).arg(&audit).output().unwrap();
    assert!(String::from_utf8(recent.stdout).unwrap().lines().count() >= 3);
}

#[test]
fn host_restricted_key_logs_in_only_where_known_hosts_says() {
    let sshd_a = Sshd::start(&[], &[]);
    let sshd_b = Sshd::start(&[], &[]);
    let kh_dir = tempfile::tempdir().unwrap();
    let known_hosts = kh_dir.path().join("known_hosts");
    std::fs::write(&known_hosts, format!("build-host.example {}\n", sshd_a.host_key_pub)).unwrap();
    let config = format!(
        "known_hosts = [\"{}\"]\nlist_by_destination = false\n[[key]]\nmatch = \"slot:9d\"\nallow = [\"ssh-auth:build-host.example\"]\n",
        known_hosts.display()
    );
    let (agent, audit) = agent_with_config(&config, &[]);
    for sshd in [&sshd_a, &sshd_b] {
        std::fs::write(sshd.dir.path().join("authorized_keys"), format!("{}\n", agent.key_line("9d"))).unwrap();
    }
    let login = |sshd: &Sshd| sshd.ssh(&agent).args(["-o", "IdentitiesOnly=yes", "-i"]).arg(agent.key_file("9d")).arg("true").output().unwrap();
    let a = login(&sshd_a);
    assert!(a.status.success(), "known host refused: {}\n{}", text(&a), agent.log_text());
    let b = login(&sshd_b);
    assert!(!b.status.success(), "unknown host accepted: {}", text(&b));
    let recs = sign_records(&audit);
    assert_eq!(recs[0]["decision"], "allow");
    assert_eq!(recs[0]["details"]["host"], "build-host.example");
    assert_eq!(recs[0]["details"]["method"], "publickey-hostbound-v00@openssh.com");
    let last = recs.last().unwrap();
    assert_eq!(last["decision"], "deny");
    assert!(last["reason"].as_str().unwrap().starts_with("key is allowed ssh-auth only to build-host.example; host key SHA256:"), "{last}");
    assert!(last["reason"].as_str().unwrap().ends_with("is known as nothing in known_hosts"), "{last}");
}

#[test]
fn forwarded_agent_uses_only_keys_allowed_to_be_forwarded() {
    let config = "[[key]]\nmatch = \"slot:9d\"\nforwarded = false\n\n[[key]]\nmatch = \"slot:9e\"\nforwarded = true\n";
    let (agent, audit) = agent_with_config(config, &[]);
    let sshd = Sshd::start(&[agent.key_line("9d"), agent.key_line("9e")], &[]);
    let remote_sign = |slot: &str| {
        let pubkey = agent.key_file(slot);
        let msg = agent.dir.path().join(format!("fwd-{slot}"));
        std::fs::write(&msg, b"remote payload\n").unwrap();
        // Inside the session SSH_AUTH_SOCK is sshd's forwarded socket, not keytap's.
        let remote = format!(
            "case \"$SSH_AUTH_SOCK\" in *agent.*) ;; *) echo not-forwarded; exit 9;; esac; ssh-keygen -Y sign -U -n file -f {} {}",
            pubkey.display(),
            msg.display()
        );
        sshd.ssh(&agent).args(["-A", "-o", "IdentitiesOnly=yes", "-i"]).arg(agent.key_file("9e")).arg(remote).output().unwrap()
    };
    let refused = remote_sign("9d");
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(!String::from_utf8_lossy(&refused.stdout).contains("not-forwarded"));
    let allowed = remote_sign("9e");
    assert!(allowed.status.success(), "{}\n{}", text(&allowed), agent.log_text());
    let recs = sign_records(&audit);
    let forwarded: Vec<(String, String)> = recs
        .iter()
        .filter(|r| r["forwarded"] == true)
        .map(|r| (r["key"]["slot"].as_str().unwrap().into(), r["decision"].as_str().unwrap().into()))
        .collect();
    assert_eq!(forwarded, [("9d".to_string(), "deny".to_string()), ("9e".to_string(), "allow".to_string())], "{recs:#?}");
    assert!(recs.iter().any(|r| r["reason"] == "key may not be used through a forwarded agent (forwarded = false)"));
}

#[test]
fn forwarded_use_of_a_silent_key_needs_a_confirmation_by_default() {
    let (agent, audit) = agent_with_config("", &[]);
    let sshd = Sshd::start(&[agent.key_line("9e")], &[]);
    let msg = agent.dir.path().join("fwd");
    std::fs::write(&msg, b"x").unwrap();
    let out = sshd.sign_through_forwarded_agent(&agent, "9e", "9d", &msg);
    assert!(!out.status.success(), "{}", text(&out));
    let last = sign_records(&audit).into_iter().last().unwrap();
    assert_eq!(last["forwarded"], true);
    assert_eq!(last["reason"], "the user did not confirm", "{last}");
}

fn scripted_askpass(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let script = dir.join("askpass");
    let answer = dir.join("answer");
    let seen = dir.join("seen");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nprintf '%s\\n' \"$1\" >> {}\n[ \"$(cat {})\" = yes ]\n", seen.display(), answer.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (script, answer, seen)
}

#[test]
fn confirm_asks_through_askpass_and_respects_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let (script, answer, seen) = scripted_askpass(dir.path());
    let (agent, audit) = agent_with_config("[[key]]\nmatch = \"slot:9d\"\nconfirm = true\n", &["--askpass", script.to_str().unwrap()]);
    std::fs::write(&answer, "yes").unwrap();
    assert!(sshsig(&agent, "9d", "file").status.success());
    std::fs::write(&answer, "no").unwrap();
    assert!(!sshsig(&agent, "9d", "file").status.success());
    let prompts = std::fs::read_to_string(&seen).unwrap();
    assert_eq!(prompts.lines().count(), 2, "{prompts}");
    let first = prompts.lines().next().unwrap();
    assert!(first.starts_with("Allow ssh-keygen (pid "), "{first}");
    assert!(first.contains("to make an SSH signature in namespace \"file\" with key 12345678/9d (SHA256:"), "{first}");
    let decisions: Vec<String> = sign_records(&audit).iter().map(|r| r["decision"].as_str().unwrap().to_string()).collect();
    assert_eq!(decisions, ["allow", "deny"]);
    // Keys without confirm are not asked about.
    assert!(sshsig(&agent, "9e", "file").status.success());
    assert_eq!(std::fs::read_to_string(&seen).unwrap().lines().count(), 2);
}

fn raw_sign(agent: &Agent, slot: &str) -> Vec<u8> {
    let body = sign_request(&key_blob(&agent.key_line(slot)), b"raw document", 2);
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    exchange(&mut s, &frame(&body)).expect("sign answer")
}

#[test]
fn audit_records_each_request_and_survives_sigkill() {
    let (mut agent, audit) = agent_with_config("", &[]);
    let answer = raw_sign(&agent, "9e");
    assert_eq!(answer[0], 14);
    // SIGKILL right after the answer: the record was written before the answer was sent.
    Command::new("kill").args(["-KILL", &agent.pid().to_string()]).status().unwrap();
    agent.stop();
    let recs = sign_records(&audit);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["peer"]["pid"], std::process::id());
    assert_eq!(recs[0]["decision"], "allow");
    assert_eq!(recs[0]["purpose"], "raw");
    assert_eq!(recs[0]["key"]["slot"], "9e");
    let expected_hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"raw document"));
    assert_eq!(recs[0]["data_sha256"], expected_hash.as_str());
    assert!(!std::fs::read_to_string(&audit).unwrap().contains("raw document"));
}

#[test]
fn a_bad_config_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[[key]]\nmatch = \"slot:9c\"\nallow = [\"sshsig\"]\n").unwrap();
    let out = support::keytap_in(dir.path())
        .args(["agent", "--foreground", "--token", "mock", "--state-dir"])
        .arg(dir.path().join("m"))
        .arg("--socket")
        .arg(dir.path().join("s/a.sock"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap().lines().last().unwrap(),
        format!(
            "keytap: {} line 3: unknown purpose \"sshsig\": use \"ssh-auth\", \"ssh-auth:HOST\", \"sshsig:NAMESPACE\", \"jws\", \"raw\" or \"*\"; see docs/policy.md",
            config.display()
        )
    );
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_thousand_idle_and_fifty_slowloris_connections_starve_nobody() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < 4096 {
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(8192), hard).unwrap();
    }
    let agent = Agent::start();
    let before = vm_rss_kib(agent.pid());
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(UnixStream::connect(&agent.socket).unwrap());
    }
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = UnixStream::connect(&agent.socket).unwrap();
        // One byte of a length prefix, then silence.
        s.write_all(&[0]).unwrap();
        slow.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    let out = agent.cmd("timeout").args(["10", "ssh-add", "-L"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 4);
    assert!(sshsig(&agent, "9e", "file").status.success());
    let during = vm_rss_kib(agent.pid());
    eprintln!("agent RSS: {before} KiB idle, {during} KiB with 1,050 open connections");
    assert!(during < 64 * 1024, "RSS {during} KiB with 1,050 connections");
    drop(idle);
    drop(slow);
}

fn reload(agent: &Agent) -> Output {
    agent.keytap().arg("reload").output().unwrap()
}

/// Issue 19: the policy is read again by `keytap reload` and on SIGHUP (the docs' order: start
/// the agent, then write the restriction); a config that does not parse keeps the policy in
/// force, and says why.
#[test]
fn reload_reads_the_policy_again_and_a_broken_one_keeps_the_old() {
    let agent = Agent::start();
    let config = agent.dir.path().join("config").join("keytap").join("config.toml");
    assert!(sshsig(&agent, "9d", "file").status.success());

    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "[[key]]\nmatch = \"slot:9d\"\nallow = [\"sshsig:git\"]\n").unwrap();
    let out = reload(&agent);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with(&format!("policy: read {}\n", config.display())), "{stdout}");
    assert!(stdout.contains("PIN sources: a PIN file that gave a wrong PIN is read again"), "{stdout}");
    assert!(stdout.contains(&format!("certificates: {} is read again", agent.dir.path().join("config/keytap/certs").display())), "{stdout}");
    assert!(!sshsig(&agent, "9d", "file").status.success(), "the new restriction is not enforced");
    assert!(sshsig(&agent, "9d", "git").status.success());

    std::fs::write(&config, "[[key]]\nmatch = \"slot:9d\"\nallow = [\"sshsig\"]\n").unwrap();
    let out = reload(&agent);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{} line 3: unknown purpose \"sshsig\"", config.display())) && stderr.contains("the policy loaded before stays in force"),
        "{stderr}"
    );
    assert!(agent.log_text().contains("reload: "), "{}", agent.log_text());
    assert!(!sshsig(&agent, "9d", "file").status.success(), "a broken config dropped the restriction");
    assert!(sshsig(&agent, "9d", "git").status.success());

    // SIGHUP does the same as `keytap reload`.
    std::fs::write(&config, "[[key]]\nmatch = \"slot:9d\"\nallow = [\"sshsig:file\"]\n").unwrap();
    let before = agent.log_text().matches("reload: policy: read").count();
    Command::new("kill").args(["-HUP", &agent.pid().to_string()]).status().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while agent.log_text().matches("reload: policy: read").count() == before {
        assert!(std::time::Instant::now() < deadline, "no reload after SIGHUP: {}", agent.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(sshsig(&agent, "9d", "file").status.success());
    assert!(!sshsig(&agent, "9d", "git").status.success());

    // Each reload is in the audit log.
    let audit = agent.dir.path().join("state").join("keytap").join("audit.jsonl");
    let reloads: Vec<_> = records(&audit).into_iter().filter(|r| r["event"] == "reload").collect();
    assert_eq!(reloads.len(), 2, "{reloads:?}");
    assert!(reloads[1]["reason"].as_str().unwrap().contains("unknown purpose"), "{reloads:?}");
}

/// Issue 19: troubleshooting.md's fix for a wrong PIN file (fix it, then reload) works; without
/// the reload the agent never replays a source that gave a wrong PIN.
#[test]
fn a_fixed_pin_file_is_read_again_after_a_reload() {
    let agent = Agent::start_with(AgentOptions { pin: Some("999999".into()), args: vec!["--pinentry".into(), "/bin/false".into()], ..Default::default() });
    assert!(!sshsig(&agent, "9a", "file").status.success());
    agent.wait_log("the PIN from this file was wrong");
    support::write_private(&agent.dir.path().join("pin"), "123456\n");
    assert!(!sshsig(&agent, "9a", "file").status.success(), "a rejected PIN file was read again without a reload");
    Command::new("kill").args(["-HUP", &agent.pid().to_string()]).status().unwrap();
    agent.wait_log("reload: PIN sources");
    let out = sshsig(&agent, "9a", "file");
    assert!(out.status.success(), "{}\n{}", text(&out), agent.log_text());
}

/// Issue 19: `keytap reload` is for the agent's own machine: refused through a forwarded agent.
#[test]
fn reload_is_refused_through_a_forwarded_agent() {
    let agent = Agent::start();
    let sshd = Sshd::start(&[agent.key_line("9e")], &[]);
    let remote = format!("case \"$SSH_AUTH_SOCK\" in *agent.*) ;; *) echo not-forwarded; exit 9;; esac; {} reload", support::KEYTAP);
    let out = sshd.ssh(&agent).args(["-A", "-o", "IdentitiesOnly=yes", "-i"]).arg(agent.key_file("9e")).arg(remote).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}\n{}", text(&out), agent.log_text());
    assert!(String::from_utf8_lossy(&out.stderr).contains("keytap: refused through a forwarded agent; run `keytap reload` on the agent's machine"), "{}", text(&out));
    agent.wait_log("reload refused: the connection is a forwarded agent");
}
