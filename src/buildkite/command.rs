//! `keytap buildkite sign | jwks | verify`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ssh_agent_lib::proto::PublicCredential;
use ssh_key::public::KeyData;
use ssh_key::HashAlg;

use crate::cli::{BuildkiteCommand, BuildkiteJwksArgs, BuildkiteSignArgs, BuildkiteVerifyArgs};
use crate::client::{AgentClient, ClientError};
use crate::token::{KeySelector, Slot};

use super::jws::{self, Alg, Jwks};
use super::pipeline::{self, StepSignature, ENV_PREFIX, REQUIRED_FIELDS};
use super::yaml::{self, Node, Parsed};
use super::BuildkiteError;

pub fn run(cmd: BuildkiteCommand) -> Result<(), BuildkiteError> {
    match cmd {
        BuildkiteCommand::Sign(args) => sign(args),
        BuildkiteCommand::Jwks(args) => jwks(args),
        BuildkiteCommand::Verify(args) => verify(args),
    }
}

/// An agent identity.
#[derive(Clone, Debug)]
pub struct AgentKey {
    pub key: KeyData,
    pub comment: String,
}

impl AgentKey {
    fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    fn describe(&self) -> String {
        format!("{} {} ({})", self.key.algorithm(), self.fingerprint(), self.comment)
    }

    /// (serial, slot) from keytap's comment `keytap SERIAL/SLOT`.
    fn location(&self) -> Option<(u32, Slot)> {
        let (serial, slot) = self.comment.strip_prefix("keytap ")?.split_once('/')?;
        Some((serial.parse().ok()?, slot.parse().ok()?))
    }
}

fn connect() -> Result<AgentClient, BuildkiteError> {
    Ok(AgentClient::from_env().ok_or(BuildkiteError::NoAgent)??)
}

fn agent_keys(client: &mut AgentClient) -> Result<Vec<AgentKey>, BuildkiteError> {
    Ok(client
        .identities()?
        .into_iter()
        .map(|(cred, comment)| {
            let key = match cred {
                PublicCredential::Key(k) => k,
                PublicCredential::Cert(c) => c.public_key().clone(),
            };
            AgentKey { key, comment }
        })
        .collect())
}

/// The key for `selector`, or by default the first Ed25519 key, else the first ECDSA key.
pub fn select_key(keys: &[AgentKey], selector: Option<&str>) -> Result<AgentKey, BuildkiteError> {
    let Some(selector) = selector else {
        return keys
            .iter()
            .find(|k| k.key.algorithm() == ssh_key::Algorithm::Ed25519)
            .or_else(|| keys.iter().find(|k| jws::alg_for(&k.key).is_ok()))
            .cloned()
            .ok_or_else(|| {
                BuildkiteError::Key("the agent holds no Ed25519, P-256 or P-384 key; create one on the token (e.g. `keytap setup --slot 9c --alg ed25519`)".into())
            });
    };
    let parsed: KeySelector = selector.parse().map_err(|e| BuildkiteError::Input(format!("--key: {e}")))?;
    // The same key can be listed twice (plain and with a certificate).
    let mut matches: Vec<&AgentKey> = Vec::new();
    for k in keys.iter().filter(|k| parsed.matches(k.location(), &k.fingerprint())) {
        if !matches.iter().any(|m| m.key == k.key) {
            matches.push(k);
        }
    }
    match matches.as_slice() {
        [] => Err(BuildkiteError::Key(format!("no agent key matches {selector}; list the keys with `keytap list`"))),
        [one] => {
            jws::alg_for(&one.key).map_err(|e| BuildkiteError::Key(format!("{} {e}", one.describe())))?;
            Ok((*one).clone())
        }
        many => Err(BuildkiteError::Key(format!(
            "{} agent keys match {selector} ({}); name one as SERIAL/SLOT or by SHA256 fingerprint",
            many.len(),
            many.iter().map(|k| k.comment.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

fn read_input(file: Option<&Path>) -> Result<String, BuildkiteError> {
    match file {
        None => read_stdin(),
        Some(p) if p == Path::new("-") => read_stdin(),
        Some(p) => std::fs::read_to_string(p).map_err(|source| BuildkiteError::Io { path: p.to_path_buf(), source }),
    }
}

fn read_stdin() -> Result<String, BuildkiteError> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .map_err(|source| BuildkiteError::Io { path: PathBuf::from("<stdin>"), source })?;
    Ok(text)
}

fn parse_pipeline(text: &str) -> Result<Parsed, BuildkiteError> {
    let parsed = yaml::parse_source(text).map_err(|e| BuildkiteError::Input(format!("the pipeline: {e}")))?;
    pipeline::check_pipeline(&parsed.root).map_err(BuildkiteError::Input)?;
    Ok(parsed)
}

/// Everything computed before the agent is asked for anything.
pub struct Prepared {
    pub parsed: Parsed,
    pub steps: Vec<(pipeline::StepRef, BTreeMap<String, serde_json::Value>)>,
}

/// Parse a pipeline and compute every command step's signed values (no signing).
pub fn prepare(text: &str, repo: &str) -> Result<Prepared, BuildkiteError> {
    let parsed = parse_pipeline(text)?;
    let env = pipeline::pipeline_env(&parsed.root).map_err(BuildkiteError::Input)?;
    let refs = pipeline::command_steps(&parsed.root).map_err(BuildkiteError::Input)?;
    let mut steps = Vec::with_capacity(refs.len());
    for r in refs {
        let step = pipeline::step_at(&parsed.root, &r.path);
        let values = pipeline::signed_values(step, repo, &env)
            .and_then(|v| pipeline::check_interpolation(&v).map(|()| v))
            .map_err(|message| BuildkiteError::Step { step: r.name.clone(), message })?;
        steps.push((r, values));
    }
    Ok(Prepared { parsed, steps })
}

/// Where `sign_pipeline` spent its time (the benchmark reads it; the command does not).
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    /// Canonical payloads and JWS signing inputs.
    pub encode: Duration,
    /// Raw signatures, the local check, the detached JWS values.
    pub check: Duration,
    /// Waiting for the agent's answers (the token's time not hidden by the work above).
    pub wait: Duration,
    /// Each step's signature text, made while the token signs the next step.
    pub write: Duration,
    /// The pipeline text put together at the end.
    pub finish: Duration,
}

/// Sign every prepared step through the agent and return the pipeline text with the
/// signatures written in. One request is in flight at a time (a refusal stops everything);
/// while the token signs step i, step i+1's signing input is built and step i-1's signature
/// checked, so keytap's own work hides behind the token's. (A failed check, which means a
/// broken token or agent, is thus noticed one signature late; that signature is dropped.)
pub fn sign_pipeline(
    client: &mut AgentClient,
    key: &AgentKey,
    alg: Alg,
    header_b64: &str,
    text: &str,
    prepared: &Prepared,
    timings: &mut Timings,
) -> Result<String, BuildkiteError> {
    let jwk = jws::jwk_for(&key.key, Some("check")).map_err(BuildkiteError::Key)?;
    let steps = &prepared.steps;
    let step_error = |i: usize, e: BuildkiteError| BuildkiteError::Step { step: steps[i].0.name.clone(), message: e.to_string() };
    let input = |i: usize| -> Result<String, BuildkiteError> {
        let payload = pipeline::payload(alg.name(), &steps[i].1).map_err(BuildkiteError::Input)?;
        Ok(jws::signing_input(header_b64, &payload))
    };
    let send = |client: &mut AgentClient, input: &str| client.send_sign(&key.key, input.as_bytes(), 0).map_err(BuildkiteError::Agent);
    let mut writer = pipeline::SignedText::new(text, &prepared.parsed);
    // Check step i's signature and make its text (while the token signs step i + 1).
    let mut finish_step = |i: usize, input: &str, sig: &ssh_key::Signature, timings: &mut Timings| -> Result<(), BuildkiteError> {
        let t = Instant::now();
        let signature = check(alg, &jwk, header_b64, input, sig, &steps[i].1).map_err(|e| step_error(i, e))?;
        let t2 = Instant::now();
        writer.add(&steps[i].0.path, signature);
        timings.check += t2 - t;
        timings.write += t2.elapsed();
        Ok(())
    };
    let mut pending: Option<(String, ssh_key::Signature)> = None;
    let mut current = if steps.is_empty() { None } else { Some(input(0).map_err(|e| step_error(0, e))?) };
    if let Some(first) = &current {
        send(client, first).map_err(|e| step_error(0, e))?;
    }
    for i in 0..steps.len() {
        // While the token works on step i.
        let t = Instant::now();
        let next = if i + 1 < steps.len() { Some(input(i + 1).map_err(|e| step_error(i + 1, e))?) } else { None };
        timings.encode += t.elapsed();
        if let Some((input, sig)) = pending.take() {
            finish_step(i - 1, &input, &sig, timings)?;
        }
        let t = Instant::now();
        let sig = client.receive_signature().map_err(|e| match e {
            ClientError::Refused => step_error(i, BuildkiteError::AgentRefused(key.describe())),
            other => step_error(i, BuildkiteError::Agent(other)),
        })?;
        timings.wait += t.elapsed();
        if let Some(next) = &next {
            send(client, next).map_err(|e| step_error(i + 1, e))?;
        }
        pending = Some((current.take().expect("the input sent for step i"), sig));
        current = next;
    }
    if let Some((input, sig)) = pending.take() {
        finish_step(steps.len() - 1, &input, &sig, timings)?;
    }
    let t = Instant::now();
    let out = writer.finish();
    timings.finish += t.elapsed();
    Ok(out)
}

/// The step's signature from the agent's answer, checked before it is ever printed.
fn check(
    alg: Alg,
    jwk: &jws::Jwk,
    header_b64: &str,
    input: &str,
    sig: &ssh_key::Signature,
    values: &BTreeMap<String, serde_json::Value>,
) -> Result<StepSignature, BuildkiteError> {
    let raw = jws::raw_signature(alg, sig).map_err(|e| BuildkiteError::Key(format!("the agent's signature is unusable: {e}; check the token and retry")))?;
    // Never print a signature that would not verify.
    jws::verify_raw(jwk, alg, input.as_bytes(), &raw)
        .map_err(|e| BuildkiteError::Key(format!("the agent's signature does not check out ({e}); check the token and retry")))?;
    Ok(StepSignature { algorithm: alg.name().to_string(), signed_fields: values.keys().cloned().collect(), value: jws::detached(header_b64, &raw) })
}

fn sign(args: BuildkiteSignArgs) -> Result<(), BuildkiteError> {
    let text = read_input(args.file.as_deref())?;
    // Find problems in the pipeline before the agent is asked to sign anything.
    let prepared = prepare(&text, &args.repo)?;
    let mut client = connect()?;
    let key = select_key(&agent_keys(&mut client)?, args.key.as_deref())?;
    let alg = jws::alg_for(&key.key).map_err(|e| BuildkiteError::Key(format!("{} {e}", key.describe())))?;
    let kid = match &args.key_id {
        Some(k) if k.is_empty() => return Err(BuildkiteError::Input("--key-id must not be empty (agents verifying with a JWKS need a kid)".into())),
        Some(k) => k.clone(),
        None => jws::thumbprint(&key.key).map_err(BuildkiteError::Key)?,
    };
    let header = jws::header_b64(alg, &kid);
    eprintln!("keytap: signing {} command step(s) with {} as {} (kid {kid})", prepared.steps.len(), key.describe(), alg.name());
    print!("{}", sign_pipeline(&mut client, &key, alg, &header, &text, &prepared, &mut Timings::default())?);
    Ok(())
}

fn jwks(args: BuildkiteJwksArgs) -> Result<(), BuildkiteError> {
    if args.key_id.is_some() && args.key.len() > 1 {
        return Err(BuildkiteError::Input("--key-id names one key; with several --key each key's kid is its thumbprint".into()));
    }
    let mut client = connect()?;
    let keys = agent_keys(&mut client)?;
    let chosen = if args.key.is_empty() {
        vec![select_key(&keys, None)?]
    } else {
        args.key.iter().map(|k| select_key(&keys, Some(k))).collect::<Result<Vec<_>, _>>()?
    };
    let mut set = Jwks::default();
    for k in &chosen {
        let jwk = jws::jwk_for(&k.key, args.key_id.as_deref()).map_err(|e| BuildkiteError::Key(format!("{} {e}", k.describe())))?;
        if !set.keys.iter().any(|j| j.kid == jwk.kid) {
            eprintln!("keytap: {} as {} (kid {})", k.describe(), jwk.alg.as_deref().unwrap_or("-"), jwk.kid.as_deref().unwrap_or("-"));
            set.keys.push(jwk);
        }
    }
    println!("{}", serde_json::to_string_pretty(&set).expect("serialises"));
    Ok(())
}

/// Why one command step does not verify.
pub fn verify_step(
    step: &Node,
    repo: &str,
    outer_env: &[(String, String)],
    set: &Jwks,
) -> Result<(), String> {
    let sig = pipeline::signature_of(step)?.ok_or("it has no signature")?;
    if sig.signed_fields.is_empty() {
        return Err("its signature covers no fields".into());
    }
    for required in REQUIRED_FIELDS {
        if !sig.signed_fields.iter().any(|f| f == required) {
            return Err(format!("its signature does not cover `{required}`"));
        }
    }
    if let Some(unknown) = sig.signed_fields.iter().find(|f| !REQUIRED_FIELDS.contains(&f.as_str()) && !f.starts_with(ENV_PREFIX)) {
        return Err(format!("its signature covers `{unknown}`, a field keytap does not verify"));
    }
    let values = pipeline::signed_values(step, repo, outer_env)?;
    let mut covered = BTreeMap::new();
    for field in &sig.signed_fields {
        let v = values.get(field).ok_or_else(|| match field.strip_prefix(ENV_PREFIX) {
            Some(name) => format!("it was signed with {name} in the pipeline env, which is no longer set"),
            None => format!("missing value for `{field}`"),
        })?;
        covered.insert(field.clone(), v.clone());
    }
    let payload = pipeline::payload(&sig.algorithm, &covered)?;
    jws::verify(set, &sig.value, &payload, &sig.algorithm)
}

fn verify(args: BuildkiteVerifyArgs) -> Result<(), BuildkiteError> {
    let jwks_text = std::fs::read(&args.jwks).map_err(|source| BuildkiteError::Io { path: args.jwks.clone(), source })?;
    let set: Jwks = serde_json::from_slice(&jwks_text)
        .map_err(|e| BuildkiteError::Input(format!("{}: not a JWKS ({{\"keys\": [...]}}): {e}", args.jwks.display())))?;
    if set.keys.is_empty() {
        return Err(BuildkiteError::Input(format!("{}: the JWKS holds no keys", args.jwks.display())));
    }
    let mut extra = Vec::new();
    for pair in &args.env {
        let (k, v) = pair.split_once('=').ok_or_else(|| BuildkiteError::Input(format!("--env {pair:?}: use NAME=VALUE")))?;
        extra.push((k.to_string(), v.to_string()));
    }
    let text = read_input(args.file.as_deref())?;
    let root = parse_pipeline(&text)?.root;
    let mut env = pipeline::pipeline_env(&root).map_err(BuildkiteError::Input)?;
    for (k, v) in extra {
        env.retain(|(ek, _)| *ek != k);
        env.push((k, v));
    }
    let steps = pipeline::command_steps(&root).map_err(BuildkiteError::Input)?;
    let mut failed = 0;
    for r in &steps {
        match verify_step(pipeline::step_at(&root, &r.path), &args.repo, &env, &set) {
            Ok(()) => println!("OK   {}", r.name),
            Err(why) => {
                failed += 1;
                println!("FAIL {}: {why}", r.name);
            }
        }
    }
    if failed > 0 {
        return Err(BuildkiteError::Rejected { failed, total: steps.len() });
    }
    eprintln!("keytap: all {} command step(s) verified", steps.len());
    Ok(())
}
