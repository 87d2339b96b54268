//! Benchmark for `keytap buildkite sign`: the time per command step spent outside the token
//! (parse, signed values, canonical JSON, JWS encoding, signature conversion and local check,
//! writing the YAML back) against the agent's signing round trip for the same step.
//! A measurement, never a test. Run through `scripts/bench-buildkite.sh`, which starts a
//! mock-token agent; or by hand with SSH_AUTH_SOCK pointing at a keytap agent:
//!
//!   cargo run --release --example buildkite_bench -- [--steps 500] [--rounds 5] [--key 9c]

use std::time::{Duration, Instant};

use keytap::buildkite::command::{prepare, select_key, AgentKey};
use keytap::buildkite::{jws, pipeline, yaml};
use keytap::client::AgentClient;

fn pipeline_text(steps: usize) -> String {
    let mut s = String::from("env:\n  DEPLOY_TARGET: staging\n  RETRIES: 3\nsteps:\n");
    for i in 0..steps {
        match i % 4 {
            0 => s.push_str(&format!("  - label: build {i}\n    command: make -j4 target-{i}\n    env:\n      RETRIES: 5\n      SHARD: {i}\n")),
            1 => s.push_str(&format!(
                "  - label: test {i}\n    commands:\n      - make test\n      - ./report.sh {i}\n    plugins:\n      - docker#v5.9.0:\n          image: golang:1.22\n          propagate-environment: true\n      - artifacts#v1.9.0\n"
            )),
            2 => s.push_str(&format!("  - label: matrix {i}\n    command: ./run.sh\n    matrix:\n      setup:\n        os: [linux, darwin]\n        arch: [amd64, arm64]\n")),
            _ => s.push_str(&format!("  - group: group {i}\n    steps:\n      - label: inner {i}\n        command: echo {i}\n        matrix: [a, b, c]\n")),
        }
    }
    s
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

fn per_step(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let steps: usize = arg(&args, "--steps", "500").parse().expect("--steps N");
    let rounds: usize = arg(&args, "--rounds", "5").parse().expect("--rounds N");
    let slot = arg(&args, "--key", "9c");
    let repo = "https://github.com/example/keytap-demo.git";
    let text = pipeline_text(steps);

    let mut client = AgentClient::from_env().expect("SSH_AUTH_SOCK is set").expect("the agent answers");
    let keys: Vec<AgentKey> = client
        .identities()
        .expect("identities")
        .into_iter()
        .filter_map(|(c, comment)| match c {
            ssh_agent_lib::proto::PublicCredential::Key(key) => Some(AgentKey { key, comment }),
            _ => None,
        })
        .collect();
    let key = select_key(&keys, Some(&slot)).expect("the key");
    let alg = jws::alg_for(&key.key).expect("a JWS key");
    let header = jws::header_b64(alg, &jws::thumbprint(&key.key).unwrap());
    let jwk = jws::jwk_for(&key.key, None).unwrap();

    let (mut parse_t, mut encode_t, mut check_t, mut emit_t, mut token_t) = (vec![], vec![], vec![], vec![], vec![]);
    let mut signed_steps = 0;
    for _ in 0..rounds {
        // Parse and compute every step's signed values.
        let t = Instant::now();
        let mut prepared = prepare(&text, repo).expect("the pipeline prepares");
        parse_t.push(t.elapsed());
        let steps_values = std::mem::take(&mut prepared.steps);
        signed_steps = steps_values.len();

        // Canonical payload and JWS signing input per step.
        let t = Instant::now();
        let inputs: Vec<String> = steps_values
            .iter()
            .map(|(_, values)| jws::signing_input(&header, &pipeline::payload(alg.name(), values).unwrap()))
            .collect();
        encode_t.push(t.elapsed());

        // The token, through the agent: one signature per step.
        let t = Instant::now();
        let sigs: Vec<ssh_key::Signature> = inputs.iter().map(|i| client.sign(&key.key, i.as_bytes(), 0).expect("the agent signs")).collect();
        token_t.push(t.elapsed());

        // Raw r||s or Ed25519 bytes, the local check before printing, the detached JWS.
        let t = Instant::now();
        let mut values = Vec::with_capacity(sigs.len());
        for (sig, input) in sigs.iter().zip(&inputs) {
            let raw = jws::raw_signature(alg, sig).unwrap();
            jws::verify_raw(&jwk, alg, input.as_bytes(), &raw).unwrap();
            values.push(jws::detached(&header, &raw));
        }
        check_t.push(t.elapsed());

        // Signatures into the document and the YAML back out.
        let t = Instant::now();
        for ((r, v), value) in steps_values.iter().zip(values) {
            let sig = pipeline::StepSignature { algorithm: alg.name().into(), signed_fields: v.keys().cloned().collect(), value };
            pipeline::set_signature(&mut prepared.root, &r.path, &sig);
        }
        let out = yaml::emit(&prepared.root);
        emit_t.push(t.elapsed());
        assert!(out.len() > text.len());
    }
    let n = signed_steps;
    let (p, e, c, w, k) = (median(parse_t), median(encode_t), median(check_t), median(emit_t), median(token_t));
    let outside = per_step(p, n) + per_step(e, n) + per_step(w, n);
    println!("{n} command steps ({steps} pipeline steps), key {slot} {}, {rounds} rounds, medians per step:", alg.name());
    println!("  parse + signed values   {:>9.2} us", per_step(p, n));
    println!("  canonicalise + encode   {:>9.2} us", per_step(e, n));
    println!("  emit YAML               {:>9.2} us", per_step(w, n));
    println!("  outside the token       {:>9.2} us  (the three above)", outside);
    println!("  signature check         {:>9.2} us  (raw conversion + local verify before printing)", per_step(c, n));
    println!("  agent + token signing   {:>9.2} us  (round trip per signature)", per_step(k, n));
    println!("  outside / signing       {:>9.2} %", 100.0 * outside / per_step(k, n));
}
