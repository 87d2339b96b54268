//! `keytap cot`: signing through a real mock-token agent, checked by independent verifiers
//! (Python `cryptography`, `ssh-keygen -Y verify`), and keytap's verifier on good and bad input.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

const SERIAL: u32 = support::MOCK_SERIAL;

type MockAgent = support::Agent;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output) -> &Output {
    assert!(out.status.success(), "failed: stdout {} stderr {}", text(&out.stdout), text(&out.stderr));
    out
}

fn write(dir: &Path, rel: &str, bytes: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

const TASK: &str = r#"{"provisionerId": "proj-releng", "workerType": "static-linux", "schedulerId": "gecko-level-3",
 "taskGroupId": "Zb7Qn2yBRPGZ0ZIcn-HnwQ", "dependencies": ["Zb7Qn2yBRPGZ0ZIcn-HnwQ"], "requires": "all-completed",
 "routes": [], "priority": "lowest", "retries": 5, "created": "2026-11-22T20:00:00.000Z",
 "deadline": "2026-11-23T20:00:00.000Z", "scopes": ["queue:get-artifact:private/*"],
 "payload": {"command": [["make", "release"]], "maxRunTime": 3600}, "metadata": {"name": "build", "description": "b",
 "owner": "ci@example.org", "source": "https://example.org"}, "tags": {}, "extra": {}}"#;
const TASK_ID: &str = "VVv9ZC5uRNaCwi8r5p-uQA";

/// A task run's artifacts, a task file, and an output directory.
struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new() -> Run {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("artifacts");
        write(&a, "public/logs/certified.log", b"task log\n");
        write(&a, "public/logs/live.log", b"streaming, never listed");
        write(&a, "public/logs/live_backing.log", b"streaming, never listed");
        let tarball: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        write(&a, "public/build/target.tar.gz", &tarball);
        write(dir.path(), "task.json", TASK.as_bytes());
        write(dir.path(), "env.json", br#"{"publicIpAddress": "203.0.113.9", "region": "office"}"#);
        Run { dir }
    }
    fn artifacts(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }
    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }
    fn cot(&self) -> PathBuf {
        self.out().join("chain-of-trust.json")
    }
    fn sign(&self, agent: &MockAgent, extra: &[&str]) -> Output {
        agent
            .keytap()
            .args(["cot", "sign", "--artifacts"])
            .arg(self.artifacts())
            .arg("--task")
            .arg(self.dir.path().join("task.json"))
            .args(["--task-id", TASK_ID, "--run-id", "0", "--worker-group", "office", "--worker-id", "worker-1"])
            .arg("--environment")
            .arg(self.dir.path().join("env.json"))
            .arg("--out")
            .arg(self.out())
            .args(extra)
            .output()
            .unwrap()
    }
}

fn pubkey(agent: &MockAgent) -> String {
    let out = agent.keytap().args(["cot", "pubkey"]).output().unwrap();
    text(&ok(&out).stdout).trim().to_string()
}

fn verify(cot: &Path, args: &[&str]) -> Output {
    let home = tempfile::tempdir().unwrap();
    support::keytap_in(home.path()).args(["cot", "verify", "--cot"]).arg(cot).args(args).output().unwrap()
}

/// Verify a raw Ed25519 signature with Python's `cryptography` (an independent implementation).
fn python_verify(pubkey_b64: &str, data: &Path, sig: &Path) -> bool {
    let script = "import base64,sys\n\
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey\n\
k = Ed25519PublicKey.from_public_bytes(base64.b64decode(sys.argv[1]))\n\
k.verify(open(sys.argv[3], 'rb').read(), open(sys.argv[2], 'rb').read())\n";
    let out = Command::new("python3").args(["-c", script, pubkey_b64]).arg(data).arg(sig).output().unwrap();
    if !out.status.success() {
        assert!(text(&out.stderr).contains("InvalidSignature"), "python failed otherwise: {}", text(&out.stderr));
    }
    out.status.success()
}

#[test]
fn ed25519_signature_is_what_python_cryptography_and_keytap_verify() {
    let agent = MockAgent::start();
    let run = Run::new();
    let out = run.sign(&agent, &[]);
    ok(&out);
    assert!(text(&out.stderr).contains("signing with ssh-ed25519 SHA256:"), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains(&format!("(keytap {SERIAL}/9c)")), "{}", text(&out.stderr));
    let sig = run.out().join("chain-of-trust.json.sig");
    assert_eq!(std::fs::read(&sig).unwrap().len(), 64);

    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(run.cot()).unwrap()).unwrap();
    let names: Vec<&String> = doc["artifacts"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["public/build/target.tar.gz", "public/logs/certified.log"]);
    assert_eq!(doc["artifacts"]["public/logs/certified.log"]["sha256"], hex::encode(Sha256::digest(b"task log\n")));
    assert_eq!(doc["artifacts"]["public/logs/certified.log"].get("sha512"), None);
    assert_eq!((doc["chainOfTrustVersion"].as_u64(), doc["runId"].as_u64()), (Some(1), Some(0)));
    assert_eq!((doc["taskId"].as_str(), doc["workerGroup"].as_str(), doc["workerId"].as_str()), (Some(TASK_ID), Some("office"), Some("worker-1")));
    assert_eq!(doc["environment"]["region"], "office");
    assert_eq!(doc["task"]["workerType"], "static-linux");

    let key = pubkey(&agent);
    assert_eq!(base64_len(&key), 32);
    assert!(python_verify(&key, &run.cot(), &sig));
    // The same check fails on other bytes, so it is a real check.
    let altered = run.dir.path().join("altered.json");
    let mut bytes = std::fs::read(run.cot()).unwrap();
    bytes.push(b' ');
    std::fs::write(&altered, &bytes).unwrap();
    assert!(!python_verify(&key, &altered, &sig));

    let out = verify(&run.cot(), &["--trusted-key", &key, "--task-id", TASK_ID, "--artifacts", run.artifacts().to_str().unwrap(), "--strict"]);
    ok(&out);
    assert!(text(&out.stdout).starts_with(&format!("OK: task {TASK_ID} run 0 on office/worker-1, signed by trusted key {key}")), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("2 of 2 listed artifact(s) present and matching"));
}

fn base64_len(b64: &str) -> usize {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(b64).unwrap().len()
}

#[test]
fn sha512_digests_are_listed_on_request() {
    let agent = MockAgent::start();
    let run = Run::new();
    ok(&run.sign(&agent, &["--sha512", "--key", &format!("{SERIAL}/9c")]));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(run.cot()).unwrap()).unwrap();
    let log = &doc["artifacts"]["public/logs/certified.log"];
    assert_eq!(log["sha512"], hex::encode(sha2::Sha512::digest(b"task log\n")));
    assert!(log["sha256"].is_string());
    let key = pubkey(&agent);
    ok(&verify(&run.cot(), &["--trusted-key", &key, "--artifacts", run.artifacts().to_str().unwrap()]));
    // A sha512 that does not match is caught even though sha256 matches.
    let forged = String::from_utf8(std::fs::read(run.cot()).unwrap()).unwrap();
    let listed = log["sha512"].as_str().unwrap();
    let forged = forged.replace(listed, &"0".repeat(128));
    let (doc_path, sig_path, key) = python_sign(&run, "forged.json", forged.as_bytes());
    let out = verify(&doc_path, &["--sig", sig_path.to_str().unwrap(), "--trusted-key", &key, "--artifacts", run.artifacts().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("FAIL artifact public/logs/certified.log: sha512 mismatch"), "{}", text(&out.stdout));
}

#[test]
fn ecdsa_key_writes_sshsig_that_ssh_keygen_verifies() {
    let agent = MockAgent::start();
    let run = Run::new();
    let out = run.sign(&agent, &["--key", "9a"]);
    ok(&out);
    assert!(text(&out.stderr).contains("ecdsa-sha2-nistp256 SHA256:"), "{}", text(&out.stderr));
    let sshsig = run.out().join("chain-of-trust.json.sshsig");
    assert!(std::fs::read_to_string(&sshsig).unwrap().starts_with("-----BEGIN SSH SIGNATURE-----"));
    assert!(!run.out().join("chain-of-trust.json.sig").exists());

    let allowed = run.dir.path().join("allowed_signers");
    let line = agent.key_line("9a");
    let mut parts = line.split_whitespace();
    let (kind, b64) = (parts.next().unwrap(), parts.next().unwrap());
    std::fs::write(&allowed, format!("worker-1@office namespaces=\"chain-of-trust\" {kind} {b64}\n")).unwrap();
    let ssh_keygen = |data: &Path| {
        Command::new("ssh-keygen")
            .args(["-Y", "verify", "-f"])
            .arg(&allowed)
            .args(["-I", "worker-1@office", "-n", "chain-of-trust", "-s"])
            .arg(&sshsig)
            .stdin(std::fs::File::open(data).unwrap())
            .output()
            .unwrap()
    };
    let good = ssh_keygen(&run.cot());
    assert!(good.status.success(), "{}{}", text(&good.stdout), text(&good.stderr));
    assert!(text(&good.stdout).contains("Good \"chain-of-trust\" signature for worker-1@office"), "{}", text(&good.stdout));
    let altered = run.dir.path().join("altered.json");
    let mut bytes = std::fs::read(run.cot()).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&altered, &bytes).unwrap();
    assert!(!ssh_keygen(&altered).status.success());

    // keytap's verifier picks the .sshsig by default and checks it in-process.
    let out = verify(&run.cot(), &["--allowed-signers", allowed.to_str().unwrap(), "--artifacts", run.artifacts().to_str().unwrap()]);
    ok(&out);
    assert!(text(&out.stdout).contains("signed by worker-1@office (SHA256:"), "{}", text(&out.stdout));
    // An allowed_signers file without this key rejects it.
    let other = agent.key_line("9d");
    std::fs::write(&allowed, format!("someone {}\n", other.rsplit_once(' ').unwrap().0)).unwrap();
    let out = verify(&run.cot(), &["--allowed-signers", allowed.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("FAIL signature: the SSH signature was made by SHA256:"), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("which is not a trusted signer"));
}

/// Sign arbitrary bytes with a fresh Ed25519 key held only in Python's memory: a signer
/// independent of keytap. Returns (document, signature, base64 public key).
fn python_sign(run: &Run, name: &str, doc: &[u8]) -> (PathBuf, PathBuf, String) {
    let doc_path = run.dir.path().join(name);
    let sig_path = run.dir.path().join(format!("{name}.sig"));
    std::fs::write(&doc_path, doc).unwrap();
    let script = "import base64,sys\n\
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey\n\
from cryptography.hazmat.primitives import serialization as s\n\
k = Ed25519PrivateKey.generate()\n\
open(sys.argv[2], 'wb').write(k.sign(open(sys.argv[1], 'rb').read()))\n\
print(base64.b64encode(k.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)).decode())\n";
    let out = Command::new("python3").args(["-c", script]).arg(&doc_path).arg(&sig_path).output().unwrap();
    ok(&out);
    (doc_path, sig_path, text(&out.stdout).trim().to_string())
}

fn digest_hex(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

#[test]
fn verifies_generic_worker_and_scriptworker_layouts() {
    let run = Run::new();
    let a = run.artifacts();
    let log = digest_hex(&a.join("public/logs/certified.log"));
    let tar = digest_hex(&a.join("public/build/target.tar.gz"));
    // generic-worker: Go's json.MarshalIndent, 2 spaces, struct field order, `<>&` escaped.
    let generic_worker = format!(
        r#"{{
  "chainOfTrustVersion": 1,
  "artifacts": {{
    "public/build/target.tar.gz": {{
      "sha256": "{tar}"
    }},
    "public/logs/certified.log": {{
      "sha256": "{log}"
    }}
  }},
  "task": {{
    "provisionerId": "proj-releng",
    "workerType": "static-linux",
    "taskGroupId": "Zb7Qn2yBRPGZ0ZIcn-HnwQ",
    "dependencies": [
      "Zb7Qn2yBRPGZ0ZIcn-HnwQ"
    ],
    "scopes": [],
    "payload": {{
      "command": [
        "echo \u003cdone\u003e \u0026\u0026 true"
      ]
    }},
    "metadata": {{
      "name": "build"
    }}
  }},
  "taskId": "{TASK_ID}",
  "runId": 2,
  "workerGroup": "office",
  "workerId": "worker-1",
  "environment": {{
    "publicIpAddress": "203.0.113.9",
    "privateIpAddress": "10.0.0.9",
    "instanceId": "i-0123",
    "instanceType": "static",
    "region": "office"
  }}
}}"#
    );
    let (doc, sig, key) = python_sign(&run, "gw.json", generic_worker.as_bytes());
    let out = verify(&doc, &["--trusted-key", &key, "--task-id", TASK_ID, "--artifacts", a.to_str().unwrap(), "--strict"]);
    ok(&out);
    assert!(text(&out.stdout).contains("run 2 on office/worker-1"), "{}", text(&out.stdout));
    assert_eq!(sig, run.dir.path().join("gw.json.sig"));

    // scriptworker: json.dumps(indent=2, sort_keys=True).
    let script = "import json,sys\nd = json.load(open(sys.argv[1]))\nd['runId'] = 3\nopen(sys.argv[2], 'w').write(json.dumps(d, indent=2, sort_keys=True))\n";
    let sw_path = run.dir.path().join("sw-src.json");
    let out = Command::new("python3").args(["-c", script]).arg(&doc).arg(&sw_path).output().unwrap();
    ok(&out);
    let sw = std::fs::read(&sw_path).unwrap();
    assert!(text(&sw).starts_with("{\n  \"artifacts\": {"), "{}", text(&sw));
    let (doc, _, key) = python_sign(&run, "sw.json", &sw);
    let out = verify(&doc, &["--trusted-key", &key, "--task-id", TASK_ID, "--artifacts", a.to_str().unwrap(), "--json"]);
    ok(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["report"]["runId"], 3);
    assert_eq!(v["report"]["checked"], serde_json::json!(["public/build/target.tar.gz", "public/logs/certified.log"]));
}

/// A signed run, the trusted key, and the verify arguments that pass.
fn signed_run() -> (Run, String) {
    let agent = MockAgent::start();
    let run = Run::new();
    ok(&run.sign(&agent, &[]));
    let key = pubkey(&agent);
    (run, key)
}

fn expect_rejected(out: &Output, reason: &str) {
    assert_eq!(out.status.code(), Some(1), "stdout {} stderr {}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).lines().any(|l| l == reason), "wanted {reason:?}, got:\n{}", text(&out.stdout));
    assert!(text(&out.stderr).contains("chain of trust rejected"), "{}", text(&out.stderr));
}

#[test]
fn tampering_is_rejected_with_the_reason() {
    let (run, key) = signed_run();
    let a = run.artifacts();
    let dir = a.to_str().unwrap().to_string();
    let base = ["--trusted-key", key.as_str(), "--task-id", TASK_ID, "--artifacts", dir.as_str()];
    ok(&verify(&run.cot(), &base));

    // One byte of an artifact.
    let tar = a.join("public/build/target.tar.gz");
    let original = std::fs::read(&tar).unwrap();
    let listed = digest_hex(&tar);
    let mut bytes = original.clone();
    bytes[1000] ^= 0x01;
    std::fs::write(&tar, &bytes).unwrap();
    let actual = digest_hex(&tar);
    expect_rejected(
        &verify(&run.cot(), &base),
        &format!("FAIL artifact public/build/target.tar.gz: sha256 mismatch (listed {listed}, found {actual})"),
    );
    std::fs::write(&tar, &original).unwrap();

    // One byte of the JSON (still valid JSON: the signature alone must catch it).
    let doc = std::fs::read(run.cot()).unwrap();
    let edited = text(&doc).replace("\"worker-1\"", "\"worker-2\"").into_bytes();
    assert_ne!(edited, doc);
    std::fs::write(run.cot(), &edited).unwrap();
    expect_rejected(&verify(&run.cot(), &base), "FAIL signature: the Ed25519 signature does not verify with any trusted key");
    std::fs::write(run.cot(), &doc).unwrap();

    // One byte of the signature.
    let sig_path = run.out().join("chain-of-trust.json.sig");
    let sig = std::fs::read(&sig_path).unwrap();
    let mut bad = sig.clone();
    bad[5] ^= 0x80;
    std::fs::write(&sig_path, &bad).unwrap();
    expect_rejected(&verify(&run.cot(), &base), "FAIL signature: the Ed25519 signature does not verify with any trusted key");
    std::fs::write(&sig_path, &sig[..63]).unwrap();
    expect_rejected(
        &verify(&run.cot(), &base),
        "FAIL signature: signature file is 63 bytes; a raw Ed25519 signature is 64 bytes and an SSHSIG starts with -----BEGIN SSH SIGNATURE-----",
    );
    std::fs::write(&sig_path, &sig).unwrap();

    // A key that is not trusted.
    let (_, _, stranger) = python_sign(&run, "unused.json", b"{}");
    expect_rejected(
        &verify(&run.cot(), &["--trusted-key", &stranger, "--artifacts", &dir]),
        "FAIL signature: the Ed25519 signature does not verify with any trusted key",
    );

    // A wrong task id.
    expect_rejected(
        &verify(&run.cot(), &["--trusted-key", &key, "--task-id", "AAAAAAAAAAAAAAAAAAAAAA"]),
        &format!("FAIL taskId mismatch: the document is for {TASK_ID:?}, expected \"AAAAAAAAAAAAAAAAAAAAAA\""),
    );

    // An extra artifact the document does not list.
    write(&a, "public/extra.txt", b"smuggled");
    let mut strict = base.to_vec();
    strict.push("--strict");
    expect_rejected(
        &verify(&run.cot(), &strict),
        "FAIL unlisted artifact public/extra.txt: present in the artifact directory but not in the document",
    );
    std::fs::remove_file(a.join("public/extra.txt")).unwrap();

    // --strict: a listed artifact that was not downloaded; without --strict that is allowed.
    std::fs::remove_file(a.join("public/logs/certified.log")).unwrap();
    let out = verify(&run.cot(), &base);
    ok(&out);
    assert!(text(&out.stdout).contains("1 of 2 listed artifact(s) present and matching"), "{}", text(&out.stdout));
    expect_rejected(
        &verify(&run.cot(), &strict),
        "FAIL missing artifact public/logs/certified.log: listed in the document but not in the artifact directory",
    );

    // Every failure is named, and --json gives them codes.
    std::fs::write(&tar, b"x").unwrap();
    let out = verify(&run.cot(), &["--trusted-key", &key, "--task-id", "other", "--run-id", "7", "--artifacts", &dir, "--strict", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let codes: Vec<&str> = v["failures"].as_array().unwrap().iter().map(|f| f["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["task-id", "run-id", "digest-mismatch", "missing-artifact"]);
    assert_eq!(v["failures"][2]["artifact"], "public/build/target.tar.gz");
    assert!(v["failures"][0]["message"].as_str().unwrap().starts_with("taskId mismatch"));
    assert_eq!(v["failures"][1]["message"], "runId mismatch: the document is for run 0, expected 7");

    // With a signature that does not verify, nothing else is looked at: the same tampered
    // directory yields the signature failure alone (no parse, no hashing).
    let out = verify(&run.cot(), &["--trusted-key", &stranger, "--task-id", "other", "--artifacts", &dir, "--strict", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let codes: Vec<&str> = v["failures"].as_array().unwrap().iter().map(|f| f["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["signature"]);
}

#[test]
fn documents_missing_required_fields_are_rejected() {
    let run = Run::new();
    let (doc, _, key) = python_sign(
        &run,
        "thin.json",
        br#"{"chainOfTrustVersion": 1, "artifacts": {}, "task": {"payload": {}}, "taskId": "x", "runId": "0", "workerGroup": "g"}"#,
    );
    let out = verify(&doc, &["--trusted-key", &key]);
    for reason in [
        "FAIL document: field runId must be an integer from 0 to 1000",
        "FAIL document: required field workerId is missing",
        "FAIL document: required field environment is missing",
        "FAIL document: required field task.dependencies is missing",
        "FAIL document: required field task.workerType is missing",
    ] {
        expect_rejected(&out, reason);
    }
}

#[test]
fn symlink_leaving_the_directory_is_refused() {
    let agent = MockAgent::start();
    let run = Run::new();
    let outside = run.dir.path().join("secret.txt");
    std::fs::write(&outside, b"not an artifact").unwrap();
    std::os::unix::fs::symlink(&outside, run.artifacts().join("public/build/escape")).unwrap();
    let out = run.sign(&agent, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("keytap: public/build/escape: symlink points outside the artifact directory"),
        "{}",
        text(&out.stderr)
    );
    assert!(!run.cot().exists(), "nothing is written when hashing fails");
    // A symlink that stays inside is an ordinary artifact.
    std::fs::remove_file(run.artifacts().join("public/build/escape")).unwrap();
    std::os::unix::fs::symlink("target.tar.gz", run.artifacts().join("public/build/latest.tar.gz")).unwrap();
    ok(&run.sign(&agent, &[]));
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(run.cot()).unwrap()).unwrap();
    assert_eq!(doc["artifacts"]["public/build/latest.tar.gz"], doc["artifacts"]["public/build/target.tar.gz"]);
    // The verifier refuses an escaping symlink among downloaded artifacts too.
    std::os::unix::fs::symlink("/etc", run.artifacts().join("etc")).unwrap();
    let out = verify(&run.cot(), &["--trusted-key", &pubkey(&agent), "--artifacts", run.artifacts().to_str().unwrap()]);
    expect_rejected(
        &out,
        "FAIL artifacts: etc: symlink points outside the artifact directory (to /etc); copy the file into the directory instead of linking to it",
    );
}

#[test]
fn files_that_cannot_be_read_are_refused() {
    let agent = MockAgent::start();
    let run = Run::new();
    // A FIFO would block a reader forever; root reads any mode, so this is the unreadable case
    // a root-run test can make (the read-error path itself is covered by unit tests in cot::hash).
    nix::unistd::mkfifo(&run.artifacts().join("public/pipe"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let out = run.sign(&agent, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).lines().last().unwrap(),
        "keytap: public/pipe: not a regular file (a FIFO, socket or device); remove it from the artifact directory"
    );
    std::fs::remove_file(run.artifacts().join("public/pipe")).unwrap();
    if !nix::unistd::geteuid().is_root() {
        let f = run.artifacts().join("public/logs/certified.log");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o000)).unwrap();
        let out = run.sign(&agent, &[]);
        assert!(text(&out.stderr).contains("keytap: public/logs/certified.log: cannot read"), "{}", text(&out.stderr));
    }
}

#[test]
fn refusals_write_nothing_and_say_what_to_do() {
    let agent = MockAgent::start();
    let run = Run::new();
    // The token refuses the touch: the agent refuses, nothing is written.
    let touch = agent.keytap().args(["mock", "touch", "deny", "--state-dir"]).arg(&agent.state_dir).output().unwrap();
    ok(&touch);
    let out = run.sign(&agent, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("the agent refused to sign with ssh-ed25519"), "{}", text(&out.stderr));
    assert!(!run.cot().exists());

    // Keys that cannot serve, or do not exist.
    let out = run.sign(&agent, &["--key", "9e"]);
    assert!(text(&out.stderr).contains(&format!("keytap {SERIAL}/9e is a ssh-rsa key; chain of trust needs Ed25519")), "{}", text(&out.stderr));
    let out = run.sign(&agent, &["--key", "87654321/9c"]);
    assert!(text(&out.stderr).contains("no agent key matches 87654321/9c; list the keys with `keytap list`"), "{}", text(&out.stderr));
    let out = agent.keytap().args(["cot", "pubkey", "--key", "9a"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is not an Ed25519 key"), "{}", text(&out.stderr));

    // Without an agent there is nothing to sign with.
    let out = support::keytap_in(run.dir.path())
        .args(["cot", "sign", "--artifacts"])
        .arg(run.artifacts())
        .arg("--task")
        .arg(run.dir.path().join("task.json"))
        .args(["--task-id", TASK_ID, "--run-id", "0", "--worker-group", "g", "--worker-id", "w"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("SSH_AUTH_SOCK is not set; start the agent"), "{}", text(&out.stderr));

    // A task definition without what verifiers require is not signed.
    std::fs::write(run.dir.path().join("task.json"), br#"{"payload": {}}"#).unwrap();
    let touch = agent.keytap().args(["mock", "touch", "approve", "--state-dir"]).arg(&agent.state_dir).output().unwrap();
    ok(&touch);
    let out = run.sign(&agent, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("the document would not pass verification: required field task.dependencies is missing"), "{}", text(&out.stderr));
    assert!(!run.cot().exists());
}

#[test]
fn the_agents_purpose_policy_applies() {
    // A CoT key limited to `raw` signs Taskcluster's .sig; an SSHSIG in namespace
    // chain-of-trust is refused for a key limited to git signatures.
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("config.toml");
    std::fs::write(&cfg, "[[key]]\nmatch = \"slot:9c\"\nallow = [\"raw\"]\n\n[[key]]\nmatch = \"slot:9a\"\nallow = [\"sshsig:git\"]\n").unwrap();
    let agent = support::Agent::start_with(support::AgentOptions {
        args: vec!["--config".into(), cfg.to_str().unwrap().into()],
        ..Default::default()
    });
    let run = Run::new();
    ok(&run.sign(&agent, &["--key", "9c"]));
    let sig = std::fs::read(run.out().join("chain-of-trust.json.sig")).unwrap();
    let out = run.sign(&agent, &["--key", "9a"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("the agent refused to sign with ecdsa-sha2-nistp256"), "{}", text(&out.stderr));
    agent.wait_log("sshsig:chain-of-trust");
    // The refused run left the earlier signature alone and wrote no .sshsig.
    assert_eq!(std::fs::read(run.out().join("chain-of-trust.json.sig")).unwrap(), sig);
    assert!(!run.out().join("chain-of-trust.json.sshsig").exists());
}

#[test]
fn output_inside_the_artifact_directory_is_not_listed() {
    let agent = MockAgent::start();
    let run = Run::new();
    let out_dir = run.artifacts().join("public");
    let sign = |extra: &[&str]| {
        agent
            .keytap()
            .args(["cot", "sign", "--artifacts"])
            .arg(run.artifacts())
            .arg("--task")
            .arg(run.dir.path().join("task.json"))
            .args(["--task-id", TASK_ID, "--run-id", "1", "--worker-group", "office", "--worker-id", "worker-1", "--out"])
            .arg(&out_dir)
            .args(extra)
            .output()
            .unwrap()
    };
    ok(&sign(&[]));
    // Signing again (now with the ECDSA key) must neither list the first run's files nor keep
    // its stale .sig next to the new document.
    ok(&sign(&["--key", "9a"]));
    let cot = out_dir.join("chain-of-trust.json");
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&cot).unwrap()).unwrap();
    let names: Vec<&String> = doc["artifacts"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["public/build/target.tar.gz", "public/logs/certified.log"]);
    assert!(!out_dir.join("chain-of-trust.json.sig").exists());
    let allowed = run.dir.path().join("allowed_signers");
    // The principal pattern must match the document's workerId@workerGroup (worker-1@office).
    std::fs::write(&allowed, format!("*@office {}\n", agent.key_line("9a"))).unwrap();
    // The verifier skips the document and signature lying among the artifacts.
    let out = verify(&cot, &["--allowed-signers", allowed.to_str().unwrap(), "--task-id", TASK_ID, "--artifacts", run.artifacts().to_str().unwrap(), "--strict"]);
    ok(&out);
    assert!(text(&out.stdout).contains("2 of 2 listed artifact(s) present and matching"), "{}", text(&out.stdout));
}

/// A generic-worker style document over the run's artifacts, with extra listed entries.
fn document_listing(run: &Run, extra: &[(&str, String)], run_id: &str) -> String {
    let a = run.artifacts();
    let mut entries = vec![
        ("public/build/target.tar.gz".to_string(), digest_hex(&a.join("public/build/target.tar.gz"))),
        ("public/logs/certified.log".to_string(), digest_hex(&a.join("public/logs/certified.log"))),
    ];
    entries.extend(extra.iter().map(|(n, d)| (n.to_string(), d.clone())));
    let artifacts: Vec<String> = entries.iter().map(|(n, d)| format!("{n:?}: {{\"sha256\": \"{d}\"}}")).collect();
    format!(
        r#"{{"chainOfTrustVersion": 1, "artifacts": {{{}}}, "task": {TASK}, "taskId": "{TASK_ID}", "runId": {run_id},
 "workerGroup": "office", "workerId": "worker-1", "environment": {{}}}}"#,
        artifacts.join(", ")
    )
}

#[test]
fn listed_live_logs_are_checked_and_unlisted_ones_tolerated_only_at_their_names() {
    let run = Run::new();
    let a = run.artifacts();
    let dir = a.to_str().unwrap().to_string();
    let backing = a.join("public/logs/live_backing.log");
    let listed = digest_hex(&backing);
    // The document lists live_backing.log (generic-worker lists whatever it had uploaded).
    let (doc, _, key) = python_sign(&run, "live.json", document_listing(&run, &[("public/logs/live_backing.log", listed.clone())], "0").as_bytes());
    let args = ["--trusted-key", key.as_str(), "--task-id", TASK_ID, "--artifacts", dir.as_str(), "--strict"];
    let out = verify(&doc, &args);
    ok(&out);
    assert!(text(&out.stdout).contains("3 of 3 listed artifact(s) present and matching"), "{}", text(&out.stdout));
    // Tampered: caught like any artifact (it used to be skipped by name, and called missing).
    std::fs::write(&backing, b"rewritten log").unwrap();
    let actual = digest_hex(&backing);
    expect_rejected(
        &verify(&doc, &args),
        &format!("FAIL artifact public/logs/live_backing.log: sha256 mismatch (listed {listed}, found {actual})"),
    );
    // Unlisted live logs at Taskcluster's names are tolerated (Run::new writes both)...
    let (doc, _, key) = python_sign(&run, "plain.json", document_listing(&run, &[], "0").as_bytes());
    let args = ["--trusted-key", key.as_str(), "--task-id", TASK_ID, "--artifacts", dir.as_str(), "--strict"];
    ok(&verify(&doc, &args));
    // ...but a file of that name anywhere else is an artifact like any other.
    write(&a, "public/build/live.log", b"smuggled");
    expect_rejected(
        &verify(&doc, &args),
        "FAIL unlisted artifact public/build/live.log: present in the artifact directory but not in the document",
    );
}

#[test]
fn run_ids_must_be_integers_in_range_and_can_be_pinned() {
    let run = Run::new();
    for bad in ["-1", "1.5", "1e3", "18446744073709551616"] {
        let (doc, _, key) = python_sign(&run, "run.json", document_listing(&run, &[], bad).as_bytes());
        expect_rejected(&verify(&doc, &["--trusted-key", &key, "--task-id", TASK_ID]), "FAIL document: field runId must be an integer from 0 to 1000");
    }
    let (doc, _, key) = python_sign(&run, "run.json", document_listing(&run, &[], "3").as_bytes());
    let out = verify(&doc, &["--trusted-key", &key, "--task-id", TASK_ID, "--run-id", "3"]);
    ok(&out);
    assert!(!text(&out.stderr).contains("warning"), "{}", text(&out.stderr));
    expect_rejected(
        &verify(&doc, &["--trusted-key", &key, "--task-id", TASK_ID, "--run-id", "2"]),
        "FAIL runId mismatch: the document is for run 3, expected 2",
    );
    // Without --task-id a warning says what is not checked; --strict refuses to run without it.
    let out = verify(&doc, &["--trusted-key", &key]);
    ok(&out);
    assert!(
        text(&out.stderr).contains("keytap: warning: no --task-id: a genuine document for ANY task run by a trusted worker is accepted (replay)"),
        "{}",
        text(&out.stderr)
    );
    let out = verify(&doc, &["--trusted-key", &key, "--artifacts", run.artifacts().to_str().unwrap(), "--strict"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--strict needs --task-id"), "{}", text(&out.stderr));
    assert!(text(&out.stdout).is_empty());
}

#[test]
fn oversized_documents_and_signatures_are_refused_unread() {
    let run = Run::new();
    let (doc, sig, key) = python_sign(&run, "small.json", document_listing(&run, &[], "0").as_bytes());
    // A document just over the cap (a genuine signature over it would not matter).
    let big = run.dir.path().join("big.json");
    let mut bytes = std::fs::read(&doc).unwrap();
    bytes.resize(8 * 1024 * 1024 + 1, b' ');
    std::fs::write(&big, &bytes).unwrap();
    expect_rejected(
        &verify(&big, &["--sig", sig.to_str().unwrap(), "--trusted-key", &key, "--task-id", TASK_ID]),
        "FAIL document: 8388609 bytes or more, over the 8388608-byte limit for a chain-of-trust document",
    );
    let big_sig = run.dir.path().join("big.sig");
    std::fs::write(&big_sig, vec![b'A'; 100_000]).unwrap();
    expect_rejected(
        &verify(&doc, &["--sig", big_sig.to_str().unwrap(), "--trusted-key", &key, "--task-id", TASK_ID]),
        "FAIL signature: the signature file is 16385 bytes or more, over the 16384-byte limit",
    );
}

#[test]
fn a_link_chain_through_an_outside_pivot_is_refused() {
    let agent = MockAgent::start();
    let run = Run::new();
    // artifacts/public/build/latest -> <outside>/pivot -> artifacts/public/build/target.tar.gz:
    // the last hop lands inside, but the chain passes through a place anyone may repoint.
    let pivot = run.dir.path().join("pivot");
    std::os::unix::fs::symlink(run.artifacts().join("public/build/target.tar.gz"), &pivot).unwrap();
    std::os::unix::fs::symlink(&pivot, run.artifacts().join("public/build/latest")).unwrap();
    let out = run.sign(&agent, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).lines().last().unwrap(),
        format!(
            "keytap: public/build/latest: symlink points outside the artifact directory (to {}); copy the file into the directory instead of linking to it",
            pivot.display()
        )
    );
    assert!(!run.cot().exists());
}

/// Raw `.sig` and SSHSIG signatures against allowed_signers files, each decision checked
/// against `ssh-keygen -Y verify` on the same file where OpenSSH can check it (SSHSIG).
#[test]
fn allowed_signers_are_read_as_openssh_reads_them() {
    let agent = MockAgent::start();
    let run = Run::new();
    ok(&run.sign(&agent, &["--key", "9a"]));
    let sshsig = run.out().join("chain-of-trust.json.sshsig");
    let allowed = run.dir.path().join("allowed_signers");
    let key9a = agent.key_line("9a");
    let ssh_keygen_accepts = |principal: &str| {
        Command::new("ssh-keygen")
            .args(["-Y", "verify", "-f"])
            .arg(&allowed)
            .args(["-I", principal, "-n", "chain-of-trust", "-s"])
            .arg(&sshsig)
            .stdin(std::fs::File::open(run.cot()).unwrap())
            .output()
            .unwrap()
            .status
            .success()
    };
    let keytap = |extra: &[&str]| {
        let mut args = vec!["--allowed-signers", allowed.to_str().unwrap(), "--task-id", TASK_ID];
        args.extend_from_slice(extra);
        verify(&run.cot(), &args)
    };
    let untrusted = format!(
        "FAIL signature: the SSH signature was made by {}, which is not a trusted signer",
        ssh_key::PublicKey::from_openssh(&key9a).unwrap().fingerprint(ssh_key::HashAlg::Sha256)
    );
    // Lines OpenSSH refuses for namespace chain-of-trust: keytap refuses them too.
    for (line, ignored) in [
        (format!("worker-1@office namespaces=\"x,!x\" {key9a}"), false),
        (format!("worker-1@office namespaces=\"chain-of-trust,!chain-of-trust\" {key9a}"), false),
        (format!("worker-1@office namespaces=\" chain-of-trust\" {key9a}"), false),
        (format!("worker-1@office namespaces=\"git\",namespaces=\"chain-of-trust\" {key9a}"), true),
    ] {
        // Another key's good line keeps the file from being empty.
        std::fs::write(&allowed, format!("{line}\nsomeone@else {}\n", agent.key_line("9d"))).unwrap();
        assert!(!ssh_keygen_accepts("worker-1@office"), "ssh-keygen accepted {line}");
        let out = keytap(&[]);
        let expected = if ignored { format!("{untrusted} (1 allowed_signers line(s) ignored as malformed, see the warnings)") } else { untrusted.clone() };
        expect_rejected(&out, &expected);
        if ignored {
            assert!(
                text(&out.stderr).contains("keytap: warning: allowed signers line 1: multiple \"namespaces\" clauses; the line is ignored"),
                "{}",
                text(&out.stderr)
            );
        }
    }
    // A leading space before the principal is fine for both.
    std::fs::write(&allowed, format!("  worker-1@office namespaces=\"chain-of-trust\" {key9a}\n")).unwrap();
    assert!(ssh_keygen_accepts("worker-1@office"));
    ok(&keytap(&[]));
    // Principals are matched: by default against the document's workerId@workerGroup.
    std::fs::write(&allowed, format!("release@ci {key9a}\n")).unwrap();
    assert!(!ssh_keygen_accepts("worker-1@office"));
    assert!(ssh_keygen_accepts("release@ci"));
    let fp = ssh_key::PublicKey::from_openssh(&key9a).unwrap().fingerprint(ssh_key::HashAlg::Sha256);
    expect_rejected(
        &keytap(&[]),
        &format!("FAIL signer: the allowed_signers line(s) for {fp} name \"release@ci\", not \"worker-1@office\"; list the key for that principal or pass --principal"),
    );
    ok(&keytap(&["--principal", "release@ci"]));
    std::fs::write(&allowed, format!("!worker-2@*,worker-?@office {key9a}\n")).unwrap();
    assert!(ssh_keygen_accepts("worker-1@office"));
    ok(&keytap(&[]));

    // A raw .sig (no namespace inside) needs a line that names chain-of-trust explicitly:
    // a file meant for git signing does not vouch for it.
    let ed_run = Run::new();
    ok(&ed_run.sign(&agent, &["--key", "9c"]));
    let key9c = agent.key_line("9c");
    let raw_verify = |line: &str| {
        std::fs::write(&allowed, format!("{line}\n")).unwrap();
        verify(&ed_run.cot(), &["--allowed-signers", allowed.to_str().unwrap(), "--task-id", TASK_ID])
    };
    for git_line in [format!("worker-1@office {key9c}"), format!("worker-1@office namespaces=\"git\" {key9c}")] {
        expect_rejected(
            &raw_verify(&git_line),
            "FAIL signature: no key may vouch for a raw .sig: pass --trusted-key, or list the key in allowed_signers with namespaces=\"chain-of-trust\"",
        );
    }
    let out = raw_verify(&format!("worker-1@office namespaces=\"git,chain-of-trust\" {key9c}"));
    ok(&out);
    assert!(text(&out.stdout).contains("signed by worker-1@office (SHA256:"), "{}", text(&out.stdout));
}
