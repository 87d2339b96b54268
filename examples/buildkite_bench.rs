//! Benchmark for `keytap buildkite sign`: the time per command step spent outside the token
//! (parse, signed values, canonical JSON, JWS encoding, signature conversion and local check,
//! writing the signatures into the text), by phase and by whether a signature overlaps it,
//! against the agent's signing round trip for the same steps run side by side.
//! A measurement, never a test. Run through `scripts/bench-buildkite.sh`, which starts a
//! mock-token agent; or by hand with SSH_AUTH_SOCK pointing at a keytap agent:
//!
//!   cargo run --release --example buildkite_bench -- [--steps 500] [--rounds 9] [--key 9c]

use std::time::{Duration, Instant};

use keytap::buildkite::command::{prepare, select_key, sign_pipeline, AgentKey, Timings};
use keytap::buildkite::{jws, pipeline, yaml};
use keytap::client::AgentClient;

// `pipeline_text(steps)`: the generated pipeline (the YAML reader's tests read it too).
include!("../tests/fixtures/buildkite/bench_pipeline.rs");

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

    let (mut parse_t, mut fast_t, mut rust2_t) = (vec![], vec![], vec![]);
    let (mut encode_t, mut check_t, mut wait_t, mut write_t, mut finish_t, mut sign_t, mut token_t) = (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut signed_steps = 0;
    for _ in 0..rounds {
        // What `keytap buildkite sign` does, timed by phase: parse and compute every step's
        // signed values, then sign through the agent (building the next input and checking the
        // last signature while the token works) and write the signatures into the text.
        let t = Instant::now();
        let prepared = prepare(&text, repo).expect("the pipeline prepares");
        parse_t.push(t.elapsed());
        signed_steps = prepared.steps.len();
        // Of that, reading the YAML; and what yaml-rust2 alone would take.
        let t = Instant::now();
        yaml::parse_source(&text).expect("the fast reader");
        fast_t.push(t.elapsed());
        let t = Instant::now();
        yaml::parse_source_yaml_rust2(&text).expect("yaml-rust2");
        rust2_t.push(t.elapsed());
        let mut timings = Timings::default();
        let t = Instant::now();
        let out = sign_pipeline(&mut client, &key, alg, &header, &text, &prepared, &mut timings).expect("the pipeline signs");
        sign_t.push(t.elapsed());
        assert!(out.len() > text.len());
        encode_t.push(timings.encode);
        check_t.push(timings.check);
        wait_t.push(timings.wait);
        write_t.push(timings.write);
        finish_t.push(timings.finish);

        // The token alone, through the agent: the same signing inputs, one after another.
        let inputs: Vec<String> = prepared
            .steps
            .iter()
            .map(|(_, values)| jws::signing_input(&header, &pipeline::payload(alg.name(), values).unwrap()))
            .collect();
        let t = Instant::now();
        for i in &inputs {
            client.sign(&key.key, i.as_bytes(), 0).expect("the agent signs");
        }
        token_t.push(t.elapsed());
    }
    let n = signed_steps;
    let [p, e, c, w, wr, f, s, k] = [parse_t, encode_t, check_t, wait_t, write_t, finish_t, sign_t, token_t].map(|v| per_step(median(v), n));
    let [fast, rust2] = [fast_t, rust2_t].map(|v| per_step(median(v), n));
    let outside = p + e + wr + f;
    let not_hidden = p + f;
    let added = p + s - k;
    println!("{n} command steps ({steps} pipeline steps), key {slot} {}, {rounds} rounds, medians per step:", alg.name());
    println!("  parse + signed values   {p:>9.2} us  (before the first signature)");
    println!("    of which YAML read    {fast:>9.2} us  (yaml-rust2 alone: {rust2:.2} us)");
    println!("  canonicalise + encode   {e:>9.2} us  (while the token signs the step before)");
    println!("  signature text          {wr:>9.2} us  (while the token signs the next step)");
    println!("  text put together       {f:>9.2} us  (after the last signature)");
    println!("  outside the token       {outside:>9.2} us  (the four above, CPU time)");
    println!("  signature check         {c:>9.2} us  (raw conversion + local verify, while the token signs the next step)");
    println!("  waiting for the agent   {w:>9.2} us");
    println!("  agent + token signing   {k:>9.2} us  (round trip per signature, signing alone)");
    println!("  outside / signing       {:>9.2} %", 100.0 * outside / k);
    println!("  not hidden / signing    {:>9.2} %  (parse + signed values + text put together: what no signature overlaps)", 100.0 * not_hidden / k);
    println!("  wall time added         {added:>9.2} us  ({:.2} % of signing; whole sign minus signing alone)", 100.0 * added / k);
}
