//! Issue 12 (agent core): what a forwarded or otherwise remote peer can do, driven through
//! real `ssh -A`, sshd with a host certificate, paramiko on the forwarding hop and raw frames.

mod support;

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{agent_with_config, exchange, frame, key_blob, sign_request, string, text, Agent, Sshd};

const FAILURE: u8 = 5;
const SIGN_RESPONSE: u8 = 14;


fn records(audit: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(audit).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn events(audit: &Path, event: &str) -> Vec<serde_json::Value> {
    records(audit).into_iter().filter(|r| r["event"] == event).collect()
}

/// Wait until the audit log holds `n` records matching `pred` (records are written before the
/// answer, but other clients' answers may still be on their way).
fn wait_records(audit: &Path, n: usize, pred: impl Fn(&serde_json::Value) -> bool) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found: Vec<_> = records(audit).into_iter().filter(|r| pred(r)).collect();
        if found.len() >= n {
            return found;
        }
        assert!(Instant::now() < deadline, "only {} of {n} records: {:#?}", found.len(), records(audit));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// ssh to `sshd` through `agent` with exactly this client known_hosts text.
fn ssh(sshd: &Sshd, agent: &Agent, known_hosts: &str) -> Command {
    ssh_as(sshd, agent, known_hosts, support::user().as_ref())
}

fn ssh_as(sshd: &Sshd, agent: &Agent, known_hosts: &str, user: &std::ffi::OsStr) -> Command {
    let file = sshd.dir.path().join("client_known_hosts");
    std::fs::write(&file, known_hosts).unwrap();
    let mut cmd = agent.cmd("ssh");
    cmd.args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", file.display()))
        .args(["-o", "ConnectTimeout=10", "-p", &sshd.port.to_string(), "-l"])
        .arg(user)
        .arg("127.0.0.1");
    cmd
}

fn with_key(mut cmd: Command, agent: &Agent, slot: &str) -> Command {
    cmd.args(["-o", "IdentitiesOnly=yes", "-i"]).arg(agent.key_file(slot));
    cmd
}

fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let st = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"]).arg(&path).status().unwrap();
    assert!(st.success());
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap().trim().to_string();
    (path, public)
}

fn sshsig_data() -> Vec<u8> {
    [b"SSHSIG".to_vec(), string(b"file"), string(b""), string(b"sha512"), string(&[3u8; 64])].concat()
}

fn connect(agent: &Agent) -> UnixStream {
    let s = UnixStream::connect(&agent.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s
}

fn extension(name: &str, details: &[u8]) -> Vec<u8> {
    frame(&[vec![27], string(name.as_bytes()), details.to_vec()].concat())
}

/// Raw extension requests to `$SSH_AUTH_SOCK`, one connection each, run on the far side of
/// `ssh -A` (sshd runs on this machine). Prints `name=<answer type>[ <json error>]` lines.
const REMOTE_FRAMES: &str = r#"
import json, os, socket, struct, sys
def s(b):
    b = b.encode() if isinstance(b, str) else b
    return struct.pack(">I", len(b)) + b
def recv(c, n):
    out = b""
    while len(out) < n:
        chunk = c.recv(n - len(out))
        if not chunk:
            raise SystemExit("agent closed")
        out += chunk
    return out
def ask(body):
    c = socket.socket(socket.AF_UNIX)
    c.connect(os.environ["SSH_AUTH_SOCK"])
    c.sendall(struct.pack(">I", len(body)) + body)
    return recv(c, struct.unpack(">I", recv(c, 4))[0])
def ext(label, name, details):
    r = ask(b"\x1b" + s(name) + details)
    line = "%s=%d" % (label, r[0])
    if r[0] == 29:
        n = struct.unpack(">I", r[1:5])[0]
        rest = r[5 + n:]
        body = rest[4:4 + struct.unpack(">I", rest[:4])[0]]
        line += " " + json.dumps(json.loads(body))
    print(line)
cert = bytes.fromhex(sys.argv[1])
setup = {"serial": None, "slot": "9c", "algorithm": "p256", "pin_policy": "never", "touch_policy": "never",
         "force": True, "no_key": False, "change_pin": {"current": "000000", "new": "87654321"}}
ext("status", "keytap-status@keytap.dev", b"")
ext("setup", "keytap-setup@keytap.dev", s(json.dumps(setup)))
ext("cert-add", "keytap-cert@keytap.dev", s("add") + s(cert) + s("evil-cert.pub"))
ext("cert-remove", "keytap-cert@keytap.dev", s("remove") + s("key-id") + s("user-cert"))
ext("attest", "keytap-attest@keytap.dev", s("9a") + struct.pack(">I", 0))
print("remove-all=%d" % ask(b"\x13")[0])
"#;

/// Items 1 and 5: a host certificate is read and verified (logins work, `@cert-authority`
/// names a certificate host), so an `ssh -A` connection is known as forwarded: a key with
/// `forwarded = false` is refused there, and setup, certificate changes, attestation, status
/// and `ssh-add -D` are refused to the remote side.
#[test]
fn host_certificate_logins_work_and_a_forwarded_peer_gets_no_local_powers() {
    let ca_dir = tempfile::tempdir().unwrap();
    let (ca, ca_pub) = keygen(ca_dir.path(), "host-ca");
    let keytap_known_hosts = ca_dir.path().join("keytap_known_hosts");
    std::fs::write(&keytap_known_hosts, format!("@cert-authority *.example {ca_pub}\n")).unwrap();
    // Lists unfiltered by destination (issue 17), so ssh offers every key and keytap's own
    // signing rules are what refuses.
    let config = format!(
        "known_hosts = [\"{}\"]\nlist_by_destination = false\n\
         [[key]]\nmatch = \"slot:9a\"\nallow = [\"ssh-auth:certhost.example\"]\n\n\
         [[key]]\nmatch = \"slot:9c\"\nallow = [\"ssh-auth:other.example\"]\n\n\
         [[key]]\nmatch = \"slot:9d\"\nforwarded = false\n\n\
         [[key]]\nmatch = \"slot:9e\"\nforwarded = true\n",
        keytap_known_hosts.display()
    );
    let (agent, audit) = agent_with_config(&config, &[]);
    let keys: Vec<String> = ["9a", "9c", "9d", "9e"].iter().map(|s| agent.key_line(s)).collect();
    let sshd = Sshd::start_certified(&keys, &[], &ca, "127.0.0.1,certhost.example");
    let by_ca = format!("@cert-authority [127.0.0.1]:{} {ca_pub}\n", sshd.port);

    // Logins to a certificate host work, with the CA or the plain key in known_hosts.
    let out = with_key(ssh(&sshd, &agent, &by_ca), &agent, "9e").args(["echo", "in"]).output().unwrap();
    assert!(out.status.success(), "login to a certificate host: {}\n{}", text(&out), agent.log_text());
    let plain = format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key_pub);
    let out = with_key(ssh(&sshd, &agent, &plain), &agent, "9e").arg("true").output().unwrap();
    assert!(out.status.success(), "login with the plain host key known: {}", text(&out));

    // ssh-auth:HOST through @cert-authority: the certificate covers certhost.example, not
    // other.example, though the CA line's pattern matches both.
    let out = with_key(ssh(&sshd, &agent, &by_ca), &agent, "9a").arg("true").output().unwrap();
    assert!(out.status.success(), "9a to certhost.example: {}\n{}", text(&out), agent.log_text());
    let out = with_key(ssh(&sshd, &agent, &by_ca), &agent, "9c").arg("true").output().unwrap();
    assert!(!out.status.success(), "9c logged in to a host its policy does not name: {}", text(&out));
    let signs = events(&audit, "sign");
    let by_slot = |slot: &str| signs.iter().find(|r| r["key"]["slot"] == slot).unwrap_or_else(|| panic!("no record for {slot}: {signs:#?}")).clone();
    let a = by_slot("9a");
    assert_eq!((a["decision"].as_str(), a["details"]["host"].as_str()), (Some("allow"), Some("certhost.example")), "{a}");
    assert_eq!(a["details"]["host_cert_id"], "test-host", "{a}");
    let c = by_slot("9c");
    assert_eq!(c["decision"], "deny", "{c}");
    assert!(c["reason"].as_str().unwrap().starts_with("key is allowed ssh-auth only to other.example"), "{c}");

    // The remote side of `ssh -A`: a forwarded = false key, then the local-only extensions.
    let (evil_ca, _) = keygen(ca_dir.path(), "evil-ca");
    let subject = ca_dir.path().join("9e.pub");
    std::fs::write(&subject, format!("{}\n", agent.key_line("9e"))).unwrap();
    let st = Command::new("ssh-keygen").args(["-q", "-s"]).arg(&evil_ca).args(["-I", "evil", "-n", "root"]).arg(&subject).status().unwrap();
    assert!(st.success());
    let cert = std::fs::read_to_string(ca_dir.path().join("9e-cert.pub")).unwrap();
    let cert_hex: String = key_blob(cert.trim()).iter().map(|b| format!("{b:02x}")).collect();
    let script = ca_dir.path().join("frames.py");
    std::fs::write(&script, REMOTE_FRAMES).unwrap();
    let msg = ca_dir.path().join("msg");
    std::fs::write(&msg, "from the remote host\n").unwrap();
    let remote = format!(
        "ssh-keygen -Y sign -U -n file -f {key} {msg} >/dev/null 2>&1; echo sign9d=$?; \
         /usr/bin/python3 {script} {cert_hex}; {keytap} status >/dev/null 2>&1; echo status-cli=$?",
        key = agent.key_file("9d").display(),
        msg = msg.display(),
        script = script.display(),
        keytap = support::KEYTAP,
    );
    let out = with_key(ssh(&sshd, &agent, &by_ca), &agent, "9e").arg("-A").arg(remote).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let line = |name: &str| stdout.lines().find(|l| l.starts_with(&format!("{name}="))).unwrap_or_else(|| panic!("no {name} in {stdout}")).to_string();
    assert_ne!(line("sign9d"), "sign9d=0", "{stdout}");
    assert_eq!(line("status"), "status=5", "{stdout}");
    assert!(line("setup").starts_with("setup=29 {\"Refused\": \"keytap setup is refused over a forwarded agent"), "{stdout}");
    assert!(line("cert-add").contains("adding or removing certificates is refused on a forwarded"), "{stdout}");
    assert!(line("cert-remove").contains("adding or removing certificates is refused on a forwarded"), "{stdout}");
    assert_eq!(line("attest"), "attest=5", "{stdout}");
    assert_eq!(line("remove-all"), "remove-all=5", "{stdout}");
    assert_ne!(line("status-cli"), "status-cli=0", "{stdout}");

    // Nothing changed locally: same keys, no certificate, the PIN still works; all on record.
    let listed = agent.keytap().args(["cert", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("evil"), "{}", text(&listed));
    assert_eq!(agent.key_line("9c").split(' ').nth(1), keys[1].split(' ').nth(1));
    let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(agent.state_dir.join("mock-token.json")).unwrap()).unwrap();
    assert_eq!((state["pin"].as_str(), state["pin_retries"].as_u64()), (Some("123456"), Some(3)));
    let d = events(&audit, "sign").into_iter().find(|r| r["key"]["slot"] == "9d").expect("a 9d record");
    assert_eq!((d["forwarded"].as_bool(), d["decision"].as_str()), (Some(true), Some("deny")), "{d}");
    assert_eq!(d["reason"], "key may not be used through a forwarded agent (forwarded = false)");
    for event in ["status", "setup", "cert", "attest", "remove-all"] {
        let recs = events(&audit, event);
        assert!(!recs.is_empty() && recs.iter().all(|r| r["decision"] == "deny"), "{event}: {recs:#?}");
    }
}

/// Item 2: a login whose user name is not UTF-8 is still a login: a raw-only key is refused.
#[test]
fn a_raw_only_key_cannot_log_in_with_a_non_utf8_user_name() {
    // Lists unfiltered by destination (issue 17), so ssh offers every key and keytap's own
    // signing rules are what refuses.
    let (agent, audit) = agent_with_config("list_by_destination = false\n[[key]]\nmatch = \"slot:9d\"\nallow = [\"raw\"]\n", &[]);
    let sshd = Sshd::start(&[agent.key_line("9d")], &[]);
    let mut user = support::user().into_bytes();
    user.extend_from_slice(b":\xff");
    let known_hosts = format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key_pub);
    let out = with_key(ssh_as(&sshd, &agent, &known_hosts, std::ffi::OsStr::from_bytes(&user)), &agent, "9d").arg("true").output().unwrap();
    assert!(!out.status.success(), "a raw-only key logged in: {}", text(&out));
    let recs = events(&audit, "sign");
    assert!(!recs.is_empty());
    for r in &recs {
        assert_eq!((r["purpose"].as_str(), r["decision"].as_str()), (Some("ssh-auth"), Some("deny")), "{r}");
        assert_eq!(r["details"]["user"], format!("{}:\u{fffd}", support::user()), "{r}");
    }
    // The key still signs what it is for.
    let mut s = connect(&agent);
    let answer = exchange(&mut s, &frame(&sign_request(&key_blob(&agent.key_line("9d")), b"a raw document", 0))).unwrap();
    assert_eq!(answer[0], SIGN_RESPONSE);
}

/// paramiko on the forwarding hop: plain `publickey` through the forwarded agent.
const RELAY: &str = r#"
import sys, paramiko
port, user, want = int(sys.argv[1]), sys.argv[2], sys.argv[3]
key = next(k for k in paramiko.Agent().get_keys() if k.get_base64() == want)
client = paramiko.SSHClient()
client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
try:
    client.connect("127.0.0.1", port=port, username=user, pkey=key, allow_agent=False, look_for_keys=False, timeout=20)
except paramiko.SSHException:  # AuthenticationException, or "key cannot be used for signing"
    print("relay=refused")
    sys.exit(0)
print("relay=logged-in")
"#;

/// Item 3: on the forwarding hop, a key allowed only `ssh-auth:jump.example` cannot be relayed
/// to another host by a client that does not bind its session (paramiko); OpenSSH's ssh on
/// the hop binds its session and is judged by where it really goes.
#[test]
fn the_forwarding_hop_cannot_relay_a_host_restricted_key() {
    let jump = Sshd::start(&[], &[]);
    let other = Sshd::start(&[], &[]);
    let kh_dir = tempfile::tempdir().unwrap();
    let keytap_known_hosts = kh_dir.path().join("known_hosts");
    std::fs::write(&keytap_known_hosts, format!("jump.example {}\n", jump.host_key_pub)).unwrap();
    let config = format!(
        "known_hosts = [\"{}\"]\nlist_by_destination = false\n[[key]]\nmatch = \"slot:9d\"\nallow = [\"ssh-auth:jump.example\"]\nforwarded = true\n\n[[key]]\nmatch = \"slot:9e\"\nforwarded = true\n",
        keytap_known_hosts.display()
    );
    let (agent, audit) = agent_with_config(&config, &[]);
    std::fs::write(jump.dir.path().join("authorized_keys"), format!("{}\n{}\n", agent.key_line("9e"), agent.key_line("9d"))).unwrap();
    std::fs::write(other.dir.path().join("authorized_keys"), format!("{}\n", agent.key_line("9d"))).unwrap();
    let relay = kh_dir.path().join("relay.py");
    std::fs::write(&relay, RELAY).unwrap();
    let user = support::user();
    let hop_ssh = |port: u16| {
        format!(
            "ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes -i {} -p {port} {user}@127.0.0.1 true 2>/dev/null",
            agent.key_file("9d").display()
        )
    };
    let remote = format!(
        "/usr/bin/python3 {relay} {port} {user} {blob}; {to_other}; echo hop-to-other=$?; {to_jump}; echo hop-to-jump=$?",
        relay = relay.display(),
        port = other.port,
        blob = agent.key_line("9d").split(' ').nth(1).unwrap(),
        to_other = hop_ssh(other.port),
        to_jump = hop_ssh(jump.port),
    );
    let out = jump.ssh(&agent).args(["-A", "-o", "IdentitiesOnly=yes", "-i"]).arg(agent.key_file("9e")).arg(remote).output().unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out), agent.log_text());
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(stdout.contains("relay=refused"), "paramiko relayed the key: {stdout}\n{}", text(&out));
    assert!(!stdout.contains("hop-to-other=0"), "{stdout}");
    assert!(stdout.contains("hop-to-jump=0"), "OpenSSH on the hop to jump.example: {stdout}\n{}", agent.log_text());

    let recs: Vec<_> = events(&audit, "sign").into_iter().filter(|r| r["key"]["slot"] == "9d").collect();
    let reasons: Vec<&str> = recs.iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert!(reasons.iter().any(|r| r.starts_with("tried to sign on forwarding hop")), "{recs:#?}");
    assert!(reasons.iter().any(|r| r.starts_with("key is allowed ssh-auth only to jump.example")), "{recs:#?}");
    let allowed: Vec<_> = recs.iter().filter(|r| r["decision"] == "allow").collect();
    assert_eq!(allowed.len(), 1, "{recs:#?}");
    assert_eq!(allowed[0]["details"]["host"], "jump.example");
    assert!(recs.iter().all(|r| r["forwarded"] == true), "{recs:#?}");
}

/// Item 1: after a failed or malformed session-bind a connection never counts as local again.
#[test]
fn a_failed_session_bind_poisons_the_connection() {
    let (agent, audit) = agent_with_config("", &[]);
    let blob = key_blob(&agent.key_line("9e"));
    let host = key_blob(&agent.key_line("9c"));
    let bad_signature = {
        let sig = [string(b"ssh-ed25519"), string(&[0u8; 64])].concat();
        [string(b"session-bind@openssh.com"), string(&host), string(&[9u8; 32]), string(&sig), vec![0]].concat()
    };
    let truncated = [string(b"session-bind@openssh.com"), string(&host), string(&[9u8; 32])].concat();
    for bind in [bad_signature, truncated] {
        let mut s = connect(&agent);
        assert_eq!(exchange(&mut s, &frame(&[vec![27], bind].concat())), Some(vec![FAILURE]));
        // Listing still works; signing and the local-only extensions do not.
        assert_eq!(exchange(&mut s, &frame(&[11])).unwrap()[0], 12);
        assert_eq!(exchange(&mut s, &frame(&sign_request(&blob, &sshsig_data(), 4))), Some(vec![FAILURE]));
        assert_eq!(exchange(&mut s, &extension("keytap-status@keytap.dev", b"")), Some(vec![FAILURE]));
        // A fresh connection is not affected.
        let mut fresh = connect(&agent);
        assert_eq!(exchange(&mut fresh, &frame(&sign_request(&blob, &sshsig_data(), 4))).unwrap()[0], SIGN_RESPONSE);
        assert_eq!(exchange(&mut fresh, &extension("keytap-status@keytap.dev", b"")).unwrap()[0], 29);
    }
    let signs = events(&audit, "sign");
    let denied: Vec<_> = signs.iter().filter(|r| r["decision"] == "deny").collect();
    assert_eq!(denied.len(), 2, "{signs:#?}");
    for r in denied {
        assert!(r["reason"].as_str().unwrap().starts_with("a session-bind on this connection failed"), "{r}");
        assert_eq!(r["forwarded"], true);
    }
}

fn blocking_askpass(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let script = dir.join("askpass");
    let release = dir.join("release");
    let seen = dir.join("seen");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$1\" >> {seen}\nwhile [ ! -e {release} ]; do sleep 0.05; done\nexit 0\n",
            seen = seen.display(),
            release = release.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (script, release, seen)
}

fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|t| t.lines().count()).unwrap_or(0)
}

/// Item 6: confirmations are asked one at a time with a bounded queue; more are refused at
/// once, and other clients are served while a confirmation is on screen.
#[test]
fn a_flood_of_confirmations_is_bounded_and_blocks_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let (script, release, seen) = blocking_askpass(dir.path());
    let (agent, audit) = agent_with_config("[[key]]\nmatch = \"slot:9d\"\nconfirm = true\n", &["--askpass", script.to_str().unwrap()]);
    let confirm_key = key_blob(&agent.key_line("9d"));
    let request = frame(&sign_request(&confirm_key, &sshsig_data(), 0));
    let send = |agent: &Agent| {
        use std::io::Write;
        let mut s = connect(agent);
        s.write_all(&request).unwrap();
        s
    };
    let mut waiting = vec![send(&agent)];
    let deadline = Instant::now() + Duration::from_secs(30);
    while line_count(&seen) == 0 {
        assert!(Instant::now() < deadline, "no confirmation was asked: {}", agent.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    // 8 may queue behind the one on screen; the other 11 are refused at once.
    for _ in 0..19 {
        waiting.push(send(&agent));
    }
    let busy = wait_records(&audit, 11, |r| r["reason"].as_str().is_some_and(|s| s.starts_with("too many confirmations are already waiting")));
    assert_eq!(busy.len(), 11);
    // Meanwhile everybody else is served: listing, and a key that needs no confirmation.
    let listed = agent.cmd("ssh-add").arg("-l").output().unwrap();
    assert!(listed.status.success(), "{}", text(&listed));
    let mut other = connect(&agent);
    assert_eq!(exchange(&mut other, &frame(&sign_request(&key_blob(&agent.key_line("9e")), &sshsig_data(), 4))).unwrap()[0], SIGN_RESPONSE);
    assert_eq!(line_count(&seen), 1, "only one confirmation on screen at a time");

    std::fs::write(&release, "").unwrap();
    let mut answers = Vec::new();
    for mut s in waiting {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut body).unwrap();
        answers.push(body[0]);
    }
    assert_eq!(answers.iter().filter(|a| **a == SIGN_RESPONSE).count(), 9, "{answers:?}");
    assert_eq!(answers.iter().filter(|a| **a == FAILURE).count(), 11, "{answers:?}");
    assert_eq!(line_count(&seen), 9);
}

/// Item 11: a signature that was waiting for a touch when the agent got locked is withheld.
#[test]
fn a_signature_waiting_for_a_touch_is_withheld_once_the_agent_is_locked() {
    let (agent, audit) = agent_with_config("", &[]);
    // 9c needs a touch every time; the mock token takes 6 s to get it.
    std::fs::write(agent.state_dir.join("touch"), "delay:6000").unwrap();
    let mut s = connect(&agent);
    let request = frame(&sign_request(&key_blob(&agent.key_line("9c")), &sshsig_data(), 0));
    let signer = std::thread::spawn(move || exchange(&mut s, &request));
    agent.wait_log("Touch YubiKey");
    let pass = agent.dir.path().join("lockpass");
    std::fs::write(&pass, "#!/bin/sh\necho 'lock it now'\n").unwrap();
    std::fs::set_permissions(&pass, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let out = agent.cmd("ssh-add").arg("-x").env("SSH_ASKPASS", &pass).env("SSH_ASKPASS_REQUIRE", "force").output().unwrap();
    assert!(out.status.success(), "lock: {}", text(&out));
    assert_eq!(signer.join().unwrap(), Some(vec![FAILURE]));
    let last = events(&audit, "sign").pop().unwrap();
    assert_eq!(last["decision"], "deny", "{last}");
    assert!(last["reason"].as_str().unwrap().starts_with("the agent was locked while waiting for the token"), "{last}");
}

/// Item 11: at the per-uid connection cap a new client closes the longest-idle connection
/// instead of being turned away.
#[test]
fn at_the_connection_cap_the_longest_idle_connection_makes_room() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if hard < 5000 {
        eprintln!("SKIPPED: needs an open-file limit of 5000 (hard limit {hard})");
        return;
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(65536), hard).unwrap();
    let agent = Agent::start();
    let mut oldest = connect(&agent);
    assert_eq!(exchange(&mut oldest, &frame(&[11])).unwrap()[0], 12);
    let mut others = Vec::new();
    for _ in 1..4096 {
        let mut s = connect(&agent);
        assert_eq!(exchange(&mut s, &frame(&[11])).unwrap()[0], 12);
        others.push(s);
    }
    // The 4097th client is served; the first, idle longest, was closed for it.
    let listed = agent.cmd("ssh-add").arg("-l").output().unwrap();
    assert!(listed.status.success(), "{}\n{}", text(&listed), agent.log_text());
    assert_eq!(exchange(&mut oldest, &frame(&[11])), None, "the longest-idle connection is still open");
    let mut recent = others.pop().unwrap();
    assert_eq!(exchange(&mut recent, &frame(&[11])).unwrap()[0], 12);
    agent.wait_log("closed the longest-idle one");
}

/// Item 4: PIN and PUK changes through the agent never spend the last retry, and key
/// generation, secret changes, attestation and `ssh-add -D` are on record with the peer.
#[test]
fn setup_keeps_the_retry_floor_and_identity_operations_are_audited() {
    let (agent, audit) = agent_with_config("", &[]);
    let dir = agent.dir.path();
    let wrong = support::secret_file(dir, "wrong", "00000000");
    let new = support::secret_file(dir, "new", "86427531");
    let setup = |args: &[&str]| {
        let out = agent.keytap().arg("setup").args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (w, n) = (wrong.to_str().unwrap(), new.to_str().unwrap());
    let state = || -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(agent.state_dir.join("mock-token.json")).unwrap()).unwrap() };
    // Key generation is audited with the new key.
    let out = agent.keytap().args(["setup", "--slot", "82", "--alg", "ed25519", "--touch", "never"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let created = events(&audit, "setup").pop().unwrap();
    assert_eq!((created["decision"].as_str(), created["key"]["slot"].as_str()), (Some("allow"), Some("82")), "{created}");
    assert_eq!(created["details"]["generate"], "ed25519 pin=once touch=never", "{created}");

    for (flag, secret_flag, new_flag, counter, words) in
        [("--change-pin", "--pin-file", "--new-pin-file", "pin_retries", "wrong PIN"), ("--change-puk", "--puk-file", "--new-puk-file", "puk_retries", "wrong PUK")]
    {
        let args = ["--no-key", flag, secret_flag, w, new_flag, n];
        let (ok, err) = setup(&args);
        assert!(!ok && err.contains(&format!("{words}, 2 tries left")), "{err}");
        assert!(setup(&args).1.contains(&format!("{words}, 1 tries left")));
        let (ok, err) = setup(&args);
        assert!(!ok && err.contains("keytap will not spend it"), "{err}");
        assert_eq!(state()[counter], 1, "the last {counter} retry was spent");
    }
    let recs = events(&audit, "setup")[1..].to_vec();
    assert_eq!(recs.len(), 6, "{recs:#?}");
    assert!(recs.iter().all(|r| r["decision"] == "deny" && r["peer"]["pid"].is_number()), "{recs:#?}");
    assert_eq!((recs[0]["details"]["change_pin"].as_bool(), recs[3]["details"]["change_puk"].as_bool()), (Some(true), Some(true)));
    assert!(!std::fs::read_to_string(&audit).unwrap().contains("00000000"), "a secret reached the audit log");
    // ssh-add -D.
    let out = agent.cmd("ssh-add").arg("-D").output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(events(&audit, "remove-all").len(), 1);
    // An attestation handed out through the extension.
    let mut s = connect(&agent);
    let answer = exchange(&mut s, &extension("keytap-attest@keytap.dev", &[string(b"9a"), 0u32.to_be_bytes().to_vec()].concat())).unwrap();
    assert_eq!(answer[0], 29);
    let attest = events(&audit, "attest");
    assert_eq!((attest.len(), attest[0]["decision"].as_str(), attest[0]["key"]["slot"].as_str()), (1, Some("allow"), Some("9a")), "{attest:#?}");
}

/// Item 1: session-bind verifies every host key type sshd offers here, including ECDSA P-521
/// and RSA above 4096 bits (which the rsa crate refuses unless told otherwise).
#[test]
fn logins_bind_with_p384_p521_and_large_rsa_host_keys() {
    let (agent, audit) = agent_with_config("", &[]);
    let dir = tempfile::tempdir().unwrap();
    let mut host_keys = Vec::new();
    for (name, args, algorithm) in [
        ("p384", ["-t", "ecdsa", "-b", "384"], "ecdsa-sha2-nistp384"),
        ("p521", ["-t", "ecdsa", "-b", "521"], "ecdsa-sha2-nistp521"),
        ("rsa4608", ["-t", "rsa", "-b", "4608"], "rsa-sha2-512"),
    ] {
        let path = dir.path().join(name);
        let st = Command::new("ssh-keygen").arg("-q").args(args).args(["-N", "", "-f"]).arg(&path).status().unwrap();
        assert!(st.success());
        let public = std::fs::read_to_string(path.with_extension("pub")).unwrap().trim().to_string();
        host_keys.push((path, public, algorithm));
    }
    let extra: Vec<String> = host_keys.iter().map(|(p, _, _)| format!("HostKey {}", p.display())).collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let sshd = Sshd::start(&[agent.key_line("9e")], &extra);
    for (_, public, algorithm) in &host_keys {
        let known = format!("[127.0.0.1]:{} {public}\n", sshd.port);
        let mut cmd = with_key(ssh(&sshd, &agent, &known), &agent, "9e");
        let out = cmd.args(["-o", &format!("HostKeyAlgorithms={algorithm}"), "true"]).output().unwrap();
        assert!(out.status.success(), "login with a {algorithm} host key: {}\n{}", text(&out), agent.log_text());
    }
    let signs = events(&audit, "sign");
    assert_eq!(signs.len(), 3, "{signs:#?}");
    for (r, (_, public, _)) in signs.iter().zip(&host_keys) {
        assert_eq!(r["decision"], "allow", "{r}");
        assert_eq!(r["details"]["method"], "publickey-hostbound-v00@openssh.com", "{r}");
        let blob = key_blob(public);
        let fingerprint = ssh_key::PublicKey::from_bytes(&blob).unwrap().fingerprint(ssh_key::HashAlg::Sha256).to_string();
        assert_eq!(r["details"]["host_key"], fingerprint, "{r}");
    }
    assert_eq!(agent.log_text().matches("session-bind refused").count(), 0);
}
