//! The mock token's simulated hardware, seen through a running agent: touch, PIN, unplug.

mod support;

use std::process::Output;
use std::time::{Duration, Instant};

use support::{text, Agent, AgentOptions};

fn sshsig(agent: &Agent, slot: &str) -> Output {
    // Reuse the key file written while the token was listed (it may be unplugged now).
    let existing = agent.dir.path().join(format!("{slot}.pub"));
    let pubkey = if existing.exists() { existing } else { agent.key_file(slot) };
    let msg = agent.dir.path().join("msg");
    std::fs::write(&msg, b"payload\n").unwrap();
    let _ = std::fs::remove_file(agent.dir.path().join("msg.sig"));
    agent.cmd("ssh-keygen").args(["-Y", "sign", "-U", "-n", "file", "-f"]).arg(&pubkey).arg(&msg).output().unwrap()
}

fn pin_retries(agent: &Agent) -> u64 {
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(agent.state_dir.join("mock-token.json")).unwrap()).unwrap();
    state["pin_retries"].as_u64().unwrap()
}

#[test]
fn touch_deny_timeout_and_delay() {
    let agent = Agent::start();
    agent.mock(&["touch", "deny"]);
    let out = sshsig(&agent, "9c");
    assert!(!out.status.success(), "denied touch signed: {}", text(&out));
    agent.wait_log("sign failed: touch was refused on the token");

    agent.mock(&["touch", "timeout"]);
    let out = sshsig(&agent, "9c");
    assert!(!out.status.success(), "timed-out touch signed: {}", text(&out));
    agent.wait_log("touch was not given in time");

    // A touch that takes a while is announced, naming the token, the program and the purpose.
    agent.mock(&["touch", "delay:1600"]);
    let out = sshsig(&agent, "9c");
    assert!(out.status.success(), "{}", text(&out));
    let log = agent.wait_log("Touch YubiKey 12345678 to let ssh-keygen (pid ");
    assert!(log.contains("make an SSH signature in namespace \"file\""), "{log}");

    // Touch policy never: no touch needed even when the sensor would refuse.
    agent.mock(&["touch", "deny"]);
    let out = sshsig(&agent, "9e");
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn unplugged_token_fails_cleanly_and_comes_back() {
    let agent = Agent::start();
    agent.key_file("9e");
    agent.mock(&["unplug"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = agent.cmd("ssh-add").arg("-L").output().unwrap();
        if !out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "The agent has no identities.");
            break;
        }
        assert!(Instant::now() < deadline, "unplugged token still listed");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = sshsig(&agent, "9e");
    assert!(!out.status.success());
    agent.mock(&["plug"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.cmd("ssh-add").arg("-L").output().unwrap().stdout.len() < 100 {
        assert!(Instant::now() < deadline, "token did not come back");
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = sshsig(&agent, "9e");
    assert!(out.status.success(), "{}", text(&out));
    let status = agent.keytap().arg("status").output().unwrap();
    assert!(String::from_utf8_lossy(&status.stdout).contains("4 keys"), "{}", text(&status));
}

#[test]
fn a_wrong_pin_file_spends_one_retry_and_is_not_replayed() {
    let agent = Agent::start_with(AgentOptions { pin: Some("000000".into()), ..Default::default() });
    let out = sshsig(&agent, "9a");
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(pin_retries(&agent), 2);
    let out = sshsig(&agent, "9a");
    assert!(!out.status.success());
    assert_eq!(pin_retries(&agent), 2, "the wrong PIN from the file was used again");
    let log = agent.log_text();
    assert!(log.contains("wrong PIN"), "{log}");
    assert!(log.contains("the PIN from this file was wrong"), "{log}");
    // A key whose PIN policy is never still signs.
    assert!(sshsig(&agent, "9e").status.success());
}

#[test]
fn without_a_pin_source_pin_keys_fail_and_pinless_keys_sign() {
    let agent = Agent::start_with(AgentOptions { no_pin_file: true, env: vec![("PATH".into(), "/usr/bin:/bin".into())], ..Default::default() });
    let out = sshsig(&agent, "9a");
    assert!(!out.status.success());
    agent.wait_log("no PIN was given");
    assert_eq!(pin_retries(&agent), 3, "no PIN was tried");
    assert!(sshsig(&agent, "9e").status.success());
}

#[test]
fn pin_from_a_systemd_credential() {
    let creds = tempfile::tempdir().unwrap();
    support::write_private(&creds.path().join("keytap-pin"), "123456\n");
    let agent = Agent::start_with(AgentOptions {
        no_pin_file: true,
        env: vec![("CREDENTIALS_DIRECTORY".into(), creds.path().to_str().unwrap().into())],
        ..Default::default()
    });
    let out = sshsig(&agent, "9a");
    assert!(out.status.success(), "{}\n{}", text(&out), agent.log_text());
}

#[test]
fn mock_init_output_files_and_refusal_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("m");
    let out = support::keytap_in(dir.path()).args(["mock", "init", "--serial", "7654321", "--state-dir"]).arg(&state).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!(
            "Created a mock TEST token (serial 7654321) in {0}/mock-token.json\n\
             Its private keys are stored there in plain text: never use them for anything real.\n\
             PIN 123456, PUK 12345678. Start an agent on it: keytap agent --token mock --state-dir {0}\n",
            state.display()
        )
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o700);
    for entry in std::fs::read_dir(&state).unwrap() {
        let entry = entry.unwrap();
        assert_eq!(entry.metadata().unwrap().mode() & 0o777, 0o600, "{:?}", entry.path());
    }
    let json = std::fs::read_to_string(state.join("mock-token.json")).unwrap();
    assert!(json.contains("\"WARNING\": \"TEST TOKEN"), "{json}");
    assert!(std::fs::read_to_string(state.join("THIS-IS-A-TEST-TOKEN.txt")).unwrap().starts_with("TEST TOKEN"));

    let again = support::keytap_in(dir.path()).args(["mock", "init", "--state-dir"]).arg(&state).output().unwrap();
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(again.stderr).unwrap(),
        format!("keytap: token error: a mock token already exists in {}; pass --force to replace it (its keys are lost)\n", state.display())
    );
    let forced = support::keytap_in(dir.path()).args(["mock", "init", "--force", "--state-dir"]).arg(&state).output().unwrap();
    assert!(forced.status.success());
    assert_ne!(std::fs::read_to_string(state.join("mock-token.json")).unwrap(), json);

    let bad = support::keytap_in(dir.path()).args(["mock", "touch", "sometimes", "--state-dir"]).arg(&state).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(bad.stderr).unwrap(),
        "keytap: unknown touch mode \"sometimes\": use approve, deny, timeout or delay:MS\n"
    );
    let missing = support::keytap_in(dir.path()).args(["list", "--token", "mock", "--state-dir"]).arg(dir.path().join("none")).output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("create one with `keytap mock init --state-dir"), "{}", text(&missing));
}
