//! `keytap cot sign|verify|pubkey`: the chain-of-trust commands over the library in `cot`.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::Value;

use super::hash::{self, Algorithms};
use super::sign::{self, AgentKey, SignedOutput};
use super::{document, trust, verify_cot, CotError, Failure, Report, VerifyOptions, COT_FILE};
use crate::cli::{CotCommand, CotPubkeyArgs, CotSignArgs, CotVerifyArgs};
use crate::client::AgentClient;
use crate::token::KeySelector;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CotError + '_ {
    move |source| CotError::Io { path: path.to_path_buf(), source }
}

pub fn run(cmd: CotCommand) -> Result<(), CotError> {
    match cmd {
        CotCommand::Sign(args) => sign_command(args),
        CotCommand::Verify(args) => verify_command(args),
        CotCommand::Pubkey(args) => pubkey_command(args),
    }
}

fn connect() -> Result<AgentClient, CotError> {
    AgentClient::from_env().ok_or(CotError::NoAgent)?.map_err(CotError::from)
}

fn parse_selector(key: Option<&str>) -> Result<Option<KeySelector>, CotError> {
    key.map(|k| k.parse::<KeySelector>().map_err(|e| CotError::Input(format!("--key: {e}")))).transpose()
}

fn read_json_object(path: &Path, what: &str) -> Result<Value, CotError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err(CotError::Input(format!("{}: the {what} must be a JSON object", path.display()))),
        Err(e) => Err(CotError::Input(format!("{}: the {what} is not valid JSON: {e}", path.display()))),
    }
}

/// Write through a temporary file so a reader never sees half a document.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), CotError> {
    let tmp = path.with_extension("tmp-keytap");
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

fn sign_command(args: CotSignArgs) -> Result<(), CotError> {
    let selector = parse_selector(args.key.as_deref())?;
    let task = read_json_object(&args.task, "task definition")?;
    let environment = match &args.environment {
        Some(path) => read_json_object(path, "environment")?,
        None => Value::Object(Default::default()),
    };
    // Find the key before hashing gigabytes, so a wrong --key fails at once.
    let mut client = connect()?;
    let key = sign::select_key(&sign::agent_keys(&mut client)?, selector.as_ref())?;
    eprintln!("keytap: signing with {}", key.describe());

    let out = args.out.clone().unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&out).map_err(io(&out))?;
    let out_real = out.canonicalize().map_err(io(&out))?;
    let cot_path = out.join(COT_FILE);
    let exclude: Vec<PathBuf> =
        ["", ".sig", ".sshsig"].iter().map(|ext| out_real.join(format!("{COT_FILE}{ext}"))).collect();

    let algorithms = if args.sha512 { Algorithms::BOTH } else { Algorithms::SHA256 };
    let artifacts = hash::hash_tree(&args.artifacts, &exclude, algorithms)?;
    let doc = document::CotDocument {
        chain_of_trust_version: document::CHAIN_OF_TRUST_VERSION,
        artifacts,
        task,
        task_id: args.task_id,
        run_id: args.run_id,
        worker_group: args.worker_group,
        worker_id: args.worker_id,
        environment,
    };
    let bytes = doc.to_bytes();
    // Never sign what a verifier would reject for its shape.
    let (_, problems) = document::parse(&bytes);
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(CotError::Input(format!(
            "the document would not pass verification: {}; pass the queue's full task definition with --task",
            list.join("; ")
        )));
    }
    // Hashing a big tree can outlast the agent's idle timeout: sign on a fresh connection.
    drop(client);
    let signature = sign::sign_document(&mut connect()?, &key, &bytes)?;
    write_file(&cot_path, &bytes)?;
    let sig_path = out.join(format!("{COT_FILE}.{}", signature.extension()));
    write_file(&sig_path, signature.bytes())?;
    // A signature of the other kind left from an earlier run no longer matches this document.
    let stale = out.join(format!("{COT_FILE}.{}", if matches!(signature, SignedOutput::RawEd25519(_)) { "sshsig" } else { "sig" }));
    match std::fs::remove_file(&stale) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&stale)(e)),
        _ => {}
    }
    println!("{}", cot_path.display());
    println!("{}", sig_path.display());
    eprintln!("keytap: {} artifact(s) listed", doc.artifacts.len());
    Ok(())
}

fn verify_command(args: CotVerifyArgs) -> Result<(), CotError> {
    let cot = std::fs::read(&args.cot).map_err(io(&args.cot))?;
    let sig_path = match &args.sig {
        Some(p) => p.clone(),
        None => {
            let sig = PathBuf::from(format!("{}.sig", args.cot.display()));
            let sshsig = PathBuf::from(format!("{}.sshsig", args.cot.display()));
            if !sig.exists() && sshsig.exists() {
                sshsig
            } else {
                sig
            }
        }
    };
    let signature = std::fs::read(&sig_path).map_err(io(&sig_path))?;
    let mut trusted = trust::TrustedKeys::default();
    for k in &args.trusted_key {
        trusted.add_raw_base64(k).map_err(CotError::Input)?;
    }
    if let Some(path) = &args.allowed_signers {
        let text = std::fs::read_to_string(path).map_err(io(path))?;
        trusted.add_allowed_signers(&text).map_err(|e| CotError::Input(format!("{}: {e}", path.display())))?;
    }
    if trusted.is_empty() {
        return Err(CotError::Input("no trusted keys given; pass --trusted-key or a non-empty --allowed-signers".into()));
    }
    // The document and signature may sit among downloaded artifacts; they are not artifacts.
    let exclude = [&args.cot, &sig_path].iter().filter_map(|p| p.canonicalize().ok()).collect();
    let opts = VerifyOptions { trusted, task_id: args.task_id, artifacts: args.artifacts, strict: args.strict, exclude };
    let result = verify_cot(&cot, &signature, &opts);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&json_result(&result)).expect("serialises"));
    } else {
        match &result {
            Ok(r) => {
                println!("OK: task {} run {} on {}/{}, signed by {}", r.task_id, r.run_id, r.worker_group, r.worker_id, r.signer);
                if opts.artifacts.is_some() {
                    println!("{} of {} listed artifact(s) present and matching", r.checked.len(), r.listed);
                }
            }
            Err(failures) => {
                for f in failures {
                    println!("FAIL {}", f);
                }
            }
        }
    }
    match result {
        Ok(_) => Ok(()),
        Err(failures) => Err(CotError::Rejected(failures.len())),
    }
}

/// `{"ok": true, "report": ...}` or `{"ok": false, "failures": [{"code", "message", ...}]}`.
pub fn json_result(result: &Result<Report, Vec<Failure>>) -> Value {
    match result {
        Ok(report) => serde_json::json!({"ok": true, "report": report}),
        Err(failures) => {
            let list: Vec<Value> = failures
                .iter()
                .map(|f| {
                    let mut v = serde_json::to_value(f).expect("failures serialise");
                    v["message"] = Value::String(f.to_string());
                    v
                })
                .collect();
            serde_json::json!({"ok": false, "failures": list})
        }
    }
}

fn pubkey_command(args: CotPubkeyArgs) -> Result<(), CotError> {
    let selector = parse_selector(args.key.as_deref())?;
    let mut client = connect()?;
    let keys = sign::agent_keys(&mut client)?;
    let key: AgentKey = match &selector {
        Some(_) => sign::select_key(&keys, selector.as_ref())?,
        None => keys
            .iter()
            .find(|k| k.key.ed25519().is_some())
            .cloned()
            .ok_or_else(|| CotError::NoKey("the agent holds no Ed25519 key; Taskcluster trusts raw Ed25519 keys only (use --allowed-signers for ECDSA)".into()))?,
    };
    let Some(ed) = key.key.ed25519() else {
        return Err(CotError::NoKey(format!(
            "{} is not an Ed25519 key; for ECDSA keys give verifiers an allowed_signers line (`keytap list` prints the key)",
            key.describe()
        )));
    };
    eprintln!("keytap: {}", key.describe());
    println!("{}", base64::engine::general_purpose::STANDARD.encode(ed.0));
    Ok(())
}
