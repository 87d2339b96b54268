//! Issue 12, the agent's edges: text from peers shown escaped (log, prompts), an audit log a
//! client cannot flush, the certificate store bounded and its directory read safely, and
//! known_hosts matched as OpenSSH matches it. Real agent, real OpenSSH tools.

mod support;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use support::{Ca, agent_with_config, exchange, frame, key_blob, sign_request, string, text, user, Agent, Sshd};


fn records(audit: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(audit.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("audit.jsonl"))
        .collect();
    // audit.jsonl.N (oldest = highest N) ... audit.jsonl
    files.sort_by_key(|p| std::cmp::Reverse(p.extension().and_then(|e| e.to_str()).and_then(|e| e.parse::<u32>().ok()).unwrap_or(0)));
    files.iter().flat_map(|f| std::fs::read_to_string(f).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<_>>()).collect()
}

/// An askpass that answers from a file and appends each message it was shown to another.
fn scripted_askpass(dir: &Path, answer: &str) -> (PathBuf, PathBuf) {
    let script = dir.join("askpass");
    let seen = dir.join("seen");
    std::fs::write(&script, format!("#!/bin/sh\nprintf '%s\\0' \"$1\" >> {}\n[ {answer} = yes ]\n", seen.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (script, seen)
}

/// Characters a terminal acts on instead of showing: C0 (but the newlines between lines), DEL, C1.
fn terminal_controls(s: &str) -> Vec<char> {
    s.chars().filter(|&c| c != '\n' && (c.is_control() || ('\u{200b}'..='\u{200f}').contains(&c) || ('\u{202a}'..='\u{202e}').contains(&c))).collect()
}

#[test]
fn keytap_log_shows_a_hostile_namespace_escaped() {
    let (agent, audit) = agent_with_config("[[key]]\nmatch = \"slot:9d\"\nallow = [\"sshsig:git\"]\n", &[]);
    // A namespace that, printed raw, returns the cursor, erases the line, forges an `allow`
    // record and hides the rest; plus a C1 CSI and a bidi override.
    let namespace = "x\r\x1b[2K2026-11-30T10:00:00.000Z allow  sign     sshsig:git key=12345678/9d\x1b[8m\u{9b}\u{202e}";
    let pubkey = agent.key_file("9d");
    let msg = agent.dir.path().join("msg");
    std::fs::write(&msg, b"payload\n").unwrap();
    let out = agent.cmd("ssh-keygen").args(["-Y", "sign", "-U", "-n", namespace, "-f"]).arg(&pubkey).arg(&msg).output().unwrap();
    assert!(!out.status.success(), "refused by policy: {}", text(&out));
    let recs = records(&audit);
    let refused = recs.iter().find(|r| r["event"] == "sign").expect("a sign record");
    assert_eq!(refused["decision"], "deny");
    assert_eq!(refused["details"]["namespace"], namespace, "the record keeps the exact text");

    let out = agent.keytap().args(["log", "--file"]).arg(&audit).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(terminal_controls(&printed), Vec::<char>::new(), "{printed:?}");
    let line = printed.lines().find(|l| l.contains(" deny ")).expect("the refusal");
    assert!(line.contains("sshsig:x\\r\\x1b[2K2026-11-30T10:00:00.000Z allow"), "{line}");
    assert!(line.contains("\\u{009b}\\u{202e}"), "{line}");
    let decisions: Vec<&str> = printed.lines().filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert_eq!(decisions, ["deny"], "no forged allow line: {printed}");

    // --json prints lines that parse to the same record, with nothing a terminal acts on.
    let out = agent.keytap().args(["log", "--json", "--file"]).arg(&audit).output().unwrap();
    let json = String::from_utf8(out.stdout).unwrap();
    assert_eq!(terminal_controls(&json), Vec::<char>::new(), "{json:?}");
    let parsed: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(parsed.iter().any(|r| r["details"]["namespace"] == namespace));
}

/// A userauth request (RFC 4252 section 7) as a client signs it, for user `user`.
fn userauth_data(user: &[u8], key_line: &str) -> Vec<u8> {
    let algorithm = key_line.split(' ').next().unwrap();
    [
        string(&[7u8; 32]),
        vec![50],
        string(user),
        string(b"ssh-connection"),
        string(b"publickey"),
        vec![1],
        string(algorithm.as_bytes()),
        string(&key_blob(key_line)),
    ]
    .concat()
}

#[test]
fn a_confirmation_shows_a_hostile_user_name_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (script, seen) = scripted_askpass(dir.path(), "no");
    let (agent, audit) = agent_with_config("[[key]]\nmatch = \"slot:9d\"\nconfirm = true\n", &["--askpass", script.to_str().unwrap()]);
    let user_name = format!("alice{}pretend this is all", "\n".repeat(40));
    let line = agent.key_line("9d");
    let flags = if line.starts_with("ssh-rsa ") { 2 } else { 0 };
    let body = sign_request(&key_blob(&line), &userauth_data(user_name.as_bytes(), &line), flags);
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    let answer = exchange(&mut s, &frame(&body)).expect("an answer");
    assert_eq!(answer, [5], "refused: the askpass said no");
    let shown = std::fs::read_to_string(&seen).unwrap();
    let message = shown.trim_end_matches('\0');
    assert!(!message.contains('\n'), "{message:?}");
    assert!(message.starts_with("Allow "), "{message}");
    assert!(message.contains(&format!("log in over SSH as alice{}pretend this is all with key 12345678/9d", "\\n".repeat(40))), "{message}");
    let recs = records(&audit);
    assert_eq!(recs.last().unwrap()["details"]["user"], user_name.as_str());
}

#[test]
fn a_forwarded_confirmation_says_so_first() {
    let dir = tempfile::tempdir().unwrap();
    let (script, seen) = scripted_askpass(dir.path(), "no");
    let (agent, _audit) = agent_with_config("", &["--askpass", script.to_str().unwrap()]);
    let sshd = Sshd::start(&[agent.key_line("9e")], &[]);
    let msg = agent.dir.path().join("fwd");
    std::fs::write(&msg, b"x").unwrap();
    let out = sshd.sign_through_forwarded_agent(&agent, "9e", "9d", &msg);
    assert!(!out.status.success(), "{}", text(&out));
    let shown = std::fs::read_to_string(&seen).unwrap();
    // The peer on this agent's socket is the ssh client that forwards it.
    assert!(shown.starts_with("FORWARDED agent: Allow ssh (pid "), "{shown:?}");
    assert!(shown.contains("to make an SSH signature in namespace \"file\""), "{shown:?}");
}

#[test]
fn a_flood_of_refusals_cannot_rotate_an_earlier_use_out_of_the_audit_log() {
    let (agent, audit) = agent_with_config("", &["--audit-max-bytes", "4096"]);
    // A use of a key, on record.
    let body = sign_request(&key_blob(&agent.key_line("9e")), b"the record to keep", 2);
    let mut s = UnixStream::connect(&agent.socket).unwrap();
    assert_eq!(exchange(&mut s, &frame(&body)).unwrap()[0], 14);
    // Then 5,000 cheap refusals on one connection (a key on no token): about 2 MB of records,
    // enough to rotate six 4 KiB files hundreds of times over if each were written.
    let stranger = ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519).unwrap();
    let refused = frame(&sign_request(&stranger.public_key().key_data().encode_blob(), b"junk", 0));
    let mut flood = UnixStream::connect(&agent.socket).unwrap();
    let batch: Vec<u8> = refused.iter().copied().cycle().take(refused.len() * 100).collect();
    for _ in 0..50 {
        flood.write_all(&batch).unwrap();
        for _ in 0..100 {
            let mut answer = [0u8; 5];
            std::io::Read::read_exact(&mut flood, &mut answer).unwrap();
            assert_eq!(answer, [0, 0, 0, 1, 5]);
        }
    }
    let recs = records(&audit);
    assert!(recs.iter().any(|r| r["decision"] == "allow" && r["purpose"] == "raw"), "the allow record was rotated out");
    let limited: Vec<_> = recs.iter().filter(|r| r["event"] == "rate-limited").collect();
    assert_eq!(limited.len(), 1, "{limited:?}");
    assert!(limited[0]["reason"].as_str().unwrap().contains("further ones are counted"), "{:?}", limited[0]);
    assert!(recs.iter().filter(|r| r["decision"] == "deny").count() < 60, "the flood was not written one by one");
    let out = agent.keytap().args(["log", "--file"]).arg(&audit).output().unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().lines().any(|l| l.contains(" allow ") && l.contains(" raw ")));
}

trait EncodeBlob {
    fn encode_blob(&self) -> Vec<u8>;
}

impl EncodeBlob for ssh_key::public::KeyData {
    fn encode_blob(&self) -> Vec<u8> {
        let mut out = Vec::new();
        ssh_encoding::Encode::encode(self, &mut out).unwrap();
        out
    }
}

fn certs_dir(agent: &Agent) -> PathBuf {
    // The fixture's agent runs with XDG_CONFIG_HOME=<dir>/config.
    let certs = agent.dir.path().join("config/keytap/certs");
    std::fs::create_dir_all(&certs).unwrap();
    certs
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_fifo_and_a_dev_zero_link_in_the_certificate_directory_do_not_stop_the_agent() {
    let agent = Agent::start();
    let ca = Ca::new();
    let certs = certs_dir(&agent);
    nix::unistd::mkfifo(&certs.join("stuck-cert.pub"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    std::os::unix::fs::symlink("/dev/zero", certs.join("zero-cert.pub")).unwrap();
    let good = ca.sign(&agent.key_file("9a"), "good", &user(), "-1m:+1h");
    std::fs::copy(&good, certs.join("good-cert.pub")).unwrap();
    for _ in 0..3 {
        let out = agent.cmd("timeout").args(["10", "ssh-add", "-L"]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out));
        let listed = String::from_utf8(out.stdout).unwrap();
        assert_eq!(listed.lines().filter(|l| l.contains("-cert-v01@openssh.com")).count(), 1, "{listed}");
        assert_eq!(listed.lines().count(), 5, "{listed}");
    }
    agent.wait_log("stuck-cert.pub: is not a regular file");
    agent.wait_log("zero-cert.pub: is a symbolic link");
    assert!(vm_rss_kib(agent.pid()) < 64 * 1024, "RSS {} KiB", vm_rss_kib(agent.pid()));
}

#[test]
fn many_large_certificates_still_give_an_identities_answer_under_the_frame_limit() {
    let agent = Agent::start();
    let ca = Ca::new();
    let certs = certs_dir(&agent);
    // About 14 KiB each (under the 16 KiB cap); 24 of them make some 330 KiB.
    let principals: Vec<String> = (0..200).map(|i| format!("principal-{i:04}-{}", "p".repeat(50))).collect();
    let principals = principals.join(",");
    let key = agent.key_file("9a");
    for i in 0..24 {
        let cert = ca.sign(&key, &format!("big{i:02}"), &principals, "-1m:+1h");
        std::fs::copy(&cert, certs.join(format!("big{i:02}-cert.pub"))).unwrap();
    }
    let out = agent.cmd("ssh-add").arg("-l").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let listed = String::from_utf8(out.stdout).unwrap();
    let listed_certs = listed.lines().filter(|l| l.contains("keytap cert big")).count();
    assert!(listed_certs > 0 && listed_certs < 24, "{listed}");
    assert_eq!(listed.lines().filter(|l| l.contains("keytap 12345678/")).count(), 4, "every plain key is listed: {listed}");
    agent.wait_log("not listed: the identities answer would exceed the 256 KiB frame limit");
    // `keytap cert list` answers too, saying what it left out.
    let out = agent.keytap().args(["cert", "list"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let list = String::from_utf8(out.stdout).unwrap();
    assert!(list.contains("more certificates not shown"), "{list}");

    // One certificate over the size cap is refused with what to do.
    // (ssh-keygen takes at most 256 principals.)
    let huge: Vec<String> = (0..250).map(|i| format!("principal-{i:04}-{}", "p".repeat(80))).collect();
    let huge = ca.sign(&agent.key_file("9c"), "huge", &huge.join(","), "-1m:+1h");
    let out = agent.keytap().args(["cert", "add"]).arg(&huge).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("over keytap's limit of 16384 bytes"), "{}", text(&out));
}

#[test]
fn known_hosts_rules_match_as_openssh_does() {
    // Five servers; the key may log in to jump.example and build.test only.
    let servers: Vec<Sshd> = (0..5).map(|_| Sshd::start(&[], &[])).collect();
    let kh_dir = tempfile::tempdir().unwrap();
    let known_hosts = kh_dir.path().join("known_hosts");
    let key = |i: usize| servers[i].host_key_pub.clone();
    std::fs::write(
        &known_hosts,
        format!(
            "*.example,!jump.example {}\n[build.test]:2222 {}\njump.example {}\n@revoked other.example {}\n@cert-authority jump.example {}\njump.example,build.test {}\n",
            key(0),
            key(1),
            key(2),
            key(2),
            key(3),
            key(4)
        ),
    )
    .unwrap();
    let config = format!(
        "known_hosts = [\"{}\"]\n[[key]]\nmatch = \"slot:9d\"\nallow = [\"ssh-auth:jump.example\", \"ssh-auth:build.test\"]\n",
        known_hosts.display()
    );
    let (agent, audit) = agent_with_config(&config, &[]);
    for sshd in &servers {
        std::fs::write(sshd.dir.path().join("authorized_keys"), format!("{}\n", agent.key_line("9d"))).unwrap();
    }
    let login = |sshd: &Sshd| sshd.ssh(&agent).args(["-o", "IdentitiesOnly=yes", "-i"]).arg(agent.key_file("9d")).arg("true").output().unwrap();
    let outcomes: Vec<bool> = servers.iter().map(|s| login(s).status.success()).collect();
    assert_eq!(
        outcomes,
        [
            false, // `*.example,!jump.example`: negated
            false, // `[build.test]:2222` is port 2222, not build.test
            false, // its key is @revoked (on another host's line)
            false, // an @cert-authority line is not a host key
            true,  // plainly listed
        ],
        "{}",
        agent.log_text()
    );
    let recs: Vec<serde_json::Value> = records(&audit).into_iter().filter(|r| r["event"] == "sign").collect();
    let allowed: Vec<&serde_json::Value> = recs.iter().filter(|r| r["decision"] == "allow").collect();
    assert_eq!(allowed.len(), 1);
    assert_eq!(allowed[0]["details"]["host"], "build.test,jump.example");
    assert!(recs.iter().filter(|r| r["decision"] == "deny").all(|r| r["reason"].as_str().unwrap().contains("is known as nothing in known_hosts")
        || r["reason"].as_str().unwrap().contains("is known as [build.test]:2222")), "{recs:#?}");
}

/// A client that hangs up while its request waits behind another's touch gets nothing signed:
/// the request is dropped before it reaches the token (no PIN, no touch, no signature), and
/// the audit log says so. The client still there is served.
#[test]
fn a_request_whose_client_hung_up_while_queued_never_reaches_the_token() {
    let (agent, audit) = agent_with_config("", &[]);
    agent.mock(&["touch", "delay:1500"]);
    let blob = key_blob(&agent.key_line("9c"));
    let mut first = UnixStream::connect(&agent.socket).unwrap();
    first.write_all(&frame(&sign_request(&blob, b"the first request", 0))).unwrap();
    // The token is now waiting for the first request's touch (announced after a second).
    agent.wait_log("Touch YubiKey");
    let mut second = UnixStream::connect(&agent.socket).unwrap();
    second.write_all(&frame(&sign_request(&blob, b"the second request", 0))).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    drop(second);
    let mut len = [0u8; 4];
    std::io::Read::read_exact(&mut first, &mut len).unwrap();
    let mut answer = vec![0u8; u32::from_be_bytes(len) as usize];
    std::io::Read::read_exact(&mut first, &mut answer).unwrap();
    assert_eq!(answer[0], 14, "the first request is signed");
    agent.wait_log("hung up before its turn");
    // The record follows the log line.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut recs = records(&audit);
    while recs.iter().filter(|r| r["event"] == "sign").count() < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        recs = records(&audit);
    }
    let signs: Vec<_> = recs.iter().filter(|r| r["event"] == "sign").collect();
    assert_eq!(signs.len(), 2, "{recs:#?}");
    assert_eq!(signs.iter().filter(|r| r["decision"] == "allow").count(), 1, "{recs:#?}");
    let dropped = signs.iter().find(|r| r["decision"] == "error").unwrap();
    assert!(dropped["reason"].as_str().unwrap().contains("the client hung up before its turn; nothing was signed"), "{dropped:?}");
    // Only one touch was ever asked for.
    assert_eq!(agent.log_text().matches("Touch YubiKey").count(), 1, "{}", agent.log_text());
}
