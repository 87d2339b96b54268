//! The docs' command blocks run as written (issue 19): every fenced block whose info string is
//! `sh test` is extracted, and the blocks of one document run in order as one `sh -e` script
//! in a fresh home, so a doc cannot drift from the binary again.
//!
//! The docs are written for YubiKeys and for Taskcluster; the test stands in for those two and
//! nothing else, with programs first on PATH:
//! - `keytap`: the binary under test; commands that open a token (`agent`, `setup`, `list`,
//!   `authorized-key`, `attest` but not `attest verify`) get `--token mock --state-dir DIR`
//!   unless the snippet names a token itself;
//! - `curl`: answers the worker-manager endpoints of docs/static-worker.md (a nonce, then the
//!   registration, whose body it keeps for the checks below); any other URL fails as curl
//!   does for an HTTP error.
//!
//! The environment is what the docs tell the reader to set: `$PIN`, and the static worker's
//! unit (`ROOT_URL`, `WORKER_*`, `RUNTIME_DIRECTORY`, `CREDENTIALS_DIRECTORY/keytap-pin`).

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use support::{text, KEYTAP, MOCK_SERIAL};

const NONCE: &str = "doc-nonce-7Qx2";

/// The `sh test` blocks of a markdown file, in order, with the fence's indentation removed.
fn test_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, Vec<String>)> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match &mut current {
            None => {
                if trimmed.starts_with("```") && trimmed.trim_start_matches('`').split_whitespace().collect::<Vec<_>>() == ["sh", "test"] {
                    current = Some((indent, Vec::new()));
                }
            }
            Some((fence_indent, lines)) => {
                if trimmed.starts_with("```") {
                    blocks.push(lines.join("\n") + "\n");
                    current = None;
                } else {
                    let cut = line.len().min(*fence_indent);
                    assert!(line[..cut].trim().is_empty(), "a line of a `sh test` block is indented less than its fence: {line:?}");
                    lines.push(line[cut..].to_string());
                }
            }
        }
    }
    assert!(current.is_none(), "unterminated `sh test` block");
    blocks
}

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A fresh home with the stand-ins on PATH and a mock token.
struct DocEnv {
    dir: tempfile::TempDir,
}

impl DocEnv {
    fn new() -> DocEnv {
        let dir = tempfile::tempdir().unwrap();
        let env = DocEnv { dir };
        let shims = env.path("shims");
        std::fs::create_dir_all(&shims).unwrap();
        std::fs::create_dir_all(env.path("shim-log")).unwrap();
        write_exec(
            &shims.join("keytap"),
            &format!(
                r#"#!/bin/sh
real='{KEYTAP}'
case "${{1:-}}" in
  agent|setup|list|authorized-key|attest)
    if [ "$1" = attest ] && [ "${{2:-}}" = verify ]; then exec "$real" "$@"; fi
    for a in "$@"; do case "$a" in --token|--token=*) exec "$real" "$@";; esac; done
    sub=$1; shift
    exec "$real" "$sub" --token mock --state-dir "$KEYTAP_DOC_MOCK" "$@";;
esac
exec "$real" "$@"
"#
            ),
        );
        write_exec(
            &shims.join("curl"),
            &format!(
                r#"#!/bin/sh
url=""
for a in "$@"; do case "$a" in http://*|https://*) url=$a;; esac; done
echo "$url" >> "$DOC_SHIM_LOG/curl.log"
case "$url" in
  "$ROOT_URL/api/worker-manager/v1/worker/attest-nonce") echo '{{"nonce": "{NONCE}"}}';;
  "$ROOT_URL/api/worker-manager/v1/worker/register")
    cat > "$DOC_SHIM_LOG/register.json"
    echo '{{"expires": "2099-01-01T00:00:00.000Z", "credentials": {{"clientId": "doc-test"}}}}';;
  *) echo "curl: (22) The requested URL returned error: 404 ($url)" >&2; exit 22;;
esac
"#
            ),
        );
        for private in ["runtime-attest", "credentials"] {
            std::fs::create_dir_all(env.path(private)).unwrap();
            std::fs::set_permissions(env.path(private), std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        support::secret_file(&env.path("credentials"), "keytap-pin", "123456");
        let out = support::keytap_in(env.dir.path())
            .args(["mock", "init", "--serial", &MOCK_SERIAL.to_string(), "--state-dir"])
            .arg(env.path("mock"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The home directory the snippets run in (`support::isolate`'s).
    fn home(&self) -> PathBuf {
        self.path("home")
    }

    /// Run the `sh test` blocks of `doc` as one script, then `epilogue` (the test's own
    /// checks, while an agent the doc started still runs); stops any agent it started.
    fn run_doc(&self, doc: &str, epilogue: &str) -> Output {
        let markdown = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(doc)).unwrap();
        let blocks = test_blocks(&markdown);
        assert!(!blocks.is_empty(), "{doc} has no `sh test` blocks");
        let script = format!(
            "trap 'if [ -n \"${{SSH_AGENT_PID:-}}\" ]; then kill \"$SSH_AGENT_PID\"; fi' EXIT\n{}{epilogue}",
            blocks.concat()
        );
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![self.path("shims")];
        paths.extend(std::env::split_paths(&path));
        let mut cmd = std::process::Command::new("sh");
        support::isolate(&mut cmd, self.dir.path());
        cmd.arg("-ec")
            .arg(script)
            .current_dir(self.home())
            .env("PATH", std::env::join_paths(paths).unwrap())
            .env("KEYTAP_DOC_MOCK", self.path("mock"))
            .env("DOC_SHIM_LOG", self.path("shim-log"))
            .env("PIN", "123456")
            .env("ROOT_URL", "https://tc.example.com")
            .env("WORKER_POOL", "proj-releng/linux-signing")
            .env("WORKER_GROUP", "mdc1")
            .env("WORKER_ID", "signer-07")
            .env("RUNTIME_DIRECTORY", self.path("runtime-attest"))
            .env("CREDENTIALS_DIRECTORY", self.path("credentials"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }
}

#[test]
fn blocks_are_found_with_their_indentation_removed() {
    let md = "text\n```sh\nnot this\n```\n1. step\n\n   ```sh test\n   echo one\n     two\n   ```\n```sh test\nthree\n```\n";
    assert_eq!(test_blocks(md), vec!["echo one\n  two\n".to_string(), "three\n".to_string()]);
}

#[test]
fn static_worker_snippets_run_as_written() {
    let env = DocEnv::new();
    let out = env.run_doc("docs/static-worker.md", "");
    assert!(out.status.success(), "{}", text(&out));
    // register-worker asked for a nonce, then registered with a proof for that nonce, and kept
    // the manager's answer for worker-runner.
    let calls = std::fs::read_to_string(env.path("shim-log").join("curl.log")).unwrap();
    assert_eq!(
        calls,
        "https://tc.example.com/api/worker-manager/v1/worker/attest-nonce\nhttps://tc.example.com/api/worker-manager/v1/worker/register\n"
    );
    let credentials = std::fs::read_to_string(env.path("runtime-attest").join("credentials.json")).unwrap();
    assert!(credentials.contains("\"clientId\": \"doc-test\""), "{credentials}");
    let register: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(env.path("shim-log").join("register.json")).unwrap()).unwrap();
    assert_eq!(register["providerId"], "static");
    assert_eq!(register["workerId"], "signer-07");
    let proof = env.path("proof-sent.json");
    std::fs::write(&proof, serde_json::to_vec(&register["workerIdentityProof"]["yubikeyPivAttestation"]).unwrap()).unwrap();
    let verify = |nonce: &str| {
        support::keytap_in(env.dir.path())
            .args(["attest", "verify", "--proof"])
            .arg(&proof)
            .arg("--roots")
            .arg(env.path("mock").join("attestation-root.pem"))
            .args(["--nonce", nonce, "--allow-serial", &MOCK_SERIAL.to_string(), "--require-pin", "once"])
            .args(["--worker-pool", "proj-releng/linux-signing", "--worker-group", "mdc1", "--worker-id", "signer-07"])
            .output()
            .unwrap()
    };
    let out = verify(NONCE);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!verify("another-nonce").status.success());
}

#[test]
fn the_register_worker_script_says_what_is_missing() {
    let env = DocEnv::new();
    let markdown = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/static-worker.md")).unwrap();
    let script = test_blocks(&markdown).into_iter().find(|b| b.starts_with("#!/bin/sh")).expect("the register-worker block");
    let path = env.path("register-worker");
    write_exec(&path, &script);
    let out = std::process::Command::new(&path)
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", env.path("shims").display()))
        .env("WORKER_POOL", "p")
        .env("WORKER_GROUP", "g")
        .env("WORKER_ID", "w")
        .env("RUNTIME_DIRECTORY", env.path("runtime-attest"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ROOT_URL: set it in the unit: Environment=ROOT_URL=..."), "{}", text(&out));
}

#[test]
fn chain_of_trust_worker_setup_runs_as_written_and_limits_the_key() {
    let env = DocEnv::new();
    // With the doc's agent still running: the 9c key refuses an SSH signature (policy `raw`).
    let epilogue = format!(
        r#"
ssh-add -L | grep ' keytap {MOCK_SERIAL}/9c$' > 9c.pub
echo data > message
if ssh-keygen -Y sign -n file -f 9c.pub message 2>/dev/null; then echo "9c made an sshsig:file signature" >&2; exit 1; fi
keytap log --key 9c
"#
    );
    let out = env.run_doc("docs/chain-of-trust.md", &epilogue);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("deny   sign     sshsig:file key=12345678/9c") && stdout.contains("not allowed for this key (allowed: raw)"), "{stdout}");
    // `keytap cot pubkey` printed the 9c key as base64 of its 32 raw bytes.
    let pubkey = stdout.lines().find(|l| l.len() == 44 && !l.contains(' ')).unwrap_or_default();
    use base64::Engine;
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(pubkey).map(|k| k.len()).ok(), Some(32), "{stdout}");
    // The PIN file is private to the worker's user, and keytap accepted it.
    let pin = env.path("config").join("keytap/pin");
    assert_eq!(std::fs::metadata(&pin).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&pin).unwrap(), "123456\n");
}
