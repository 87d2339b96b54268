//! `keytap attest` and `keytap attest verify`.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use der::{Decode, Encode};
use x509_cert::Certificate;

use super::prove::{prove_with_agent, prove_with_owner, ProveError, ProveRequest};
use super::{verify_proof, VerifyOptions, WorkerIdentity, MAX_PROOF_BYTES};
use crate::cli::{AttestArgs, AttestCommand, AttestVerifyArgs};
use crate::command::{open_tokens, AppError};
use crate::prompt::SystemPrompter;
use crate::token::owner::Owner;
use crate::token::TokenError;

pub fn run(args: AttestArgs) -> Result<(), AppError> {
    match args.command {
        Some(AttestCommand::Verify(v)) => verify(v),
        None => prove(args),
    }
}

fn prove_error(e: ProveError) -> AppError {
    match e {
        ProveError::Token(t) => AppError::Token(t),
        ProveError::Client(c) => AppError::Client(c),
        other => AppError::Message(other.to_string()),
    }
}

fn prove(args: AttestArgs) -> Result<(), AppError> {
    let missing = |name: &str| AppError::Message(format!("--{name} is required"));
    let request = ProveRequest {
        slot: args.slot,
        serial: args.serial,
        nonce: args.nonce.clone().ok_or_else(|| missing("nonce"))?,
        worker: WorkerIdentity {
            worker_pool: args.worker_pool.clone().ok_or_else(|| missing("worker-pool"))?,
            worker_group: args.worker_group.clone().ok_or_else(|| missing("worker-group"))?,
            worker_id: args.worker_id.clone().ok_or_else(|| missing("worker-id"))?,
        },
        timestamp: None,
    };
    // Project rule: when a keytap agent runs, it owns the token; go through it. Flags for
    // opening the token directly cannot apply then, and the user is told so.
    let proof = match crate::client::keytap_agent() {
        Some((mut agent, status)) => {
            eprintln!("keytap attest: using the keytap agent (pid {})", status.pid);
            if args.token.explicit() || args.pin_file.is_some() {
                eprintln!("keytap attest: note: --token, --state-dir and --pin-file are not used: the running agent owns the tokens and asks for the PIN itself (unset SSH_AUTH_SOCK to open a token directly)");
            }
            prove_with_agent(&mut agent, &status, &request).map_err(prove_error)?
        }
        None => prove_directly(&args, &request)?,
    };
    let mut json = serde_json::to_string_pretty(&proof).expect("a proof serialises");
    json.push('\n');
    match &args.out {
        Some(path) => std::fs::write(path, json)
            .map_err(|e| AppError::Message(format!("cannot write {}: {e}", path.display())))?,
        None => std::io::stdout().write_all(json.as_bytes())?,
    }
    Ok(())
}

fn prove_directly(args: &AttestArgs, request: &ProveRequest) -> Result<super::Proof, AppError> {
    let prompter = Arc::new(SystemPrompter::new(args.pin_file.clone(), None, None));
    let mut last = None;
    for token in open_tokens(&args.token)? {
        let mut owner = Owner::new(token, prompter.clone());
        let fits = owner.token.info().is_ok_and(|i| request.serial.map_or(true, |s| s == i.serial))
            && owner.token.keys().is_ok_and(|keys| keys.iter().any(|k| k.slot == request.slot));
        if !fits {
            continue;
        }
        match prove_with_owner(&mut owner, request) {
            Ok(proof) => return Ok(proof),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map(prove_error).unwrap_or_else(|| AppError::Token(TokenError::NoKey(request.slot))))
}

/// Certificates from PEM (any number) or a single DER file.
fn load_certificates(path: &Path) -> Result<Vec<Vec<u8>>, AppError> {
    let bytes = std::fs::read(path).map_err(|e| AppError::Message(format!("cannot read {}: {e}", path.display())))?;
    let parsed = if bytes.starts_with(b"-----BEGIN") || bytes.iter().take(64).all(|b| b.is_ascii()) {
        Certificate::load_pem_chain(&bytes)
    } else {
        Certificate::from_der(&bytes).map(|c| vec![c])
    };
    let certs = parsed.map_err(|e| {
        AppError::Message(format!("{} holds no readable certificate ({e}); pass PEM or DER certificates", path.display()))
    })?;
    if certs.is_empty() {
        return Err(AppError::Message(format!("{} holds no certificate", path.display())));
    }
    certs.iter().map(|c| c.to_der().map_err(|e| AppError::Message(e.to_string()))).collect()
}

fn verify(args: AttestVerifyArgs) -> Result<(), AppError> {
    let mut proof = Vec::new();
    let limit = MAX_PROOF_BYTES as u64 + 1;
    if args.proof.as_os_str() == "-" {
        std::io::stdin().take(limit).read_to_end(&mut proof)?;
    } else {
        std::fs::File::open(&args.proof)
            .and_then(|f| f.take(limit).read_to_end(&mut proof))
            .map_err(|e| AppError::Message(format!("cannot read the proof {}: {e}", args.proof.display())))?;
    }
    let mut roots = Vec::new();
    for path in &args.roots {
        roots.extend(load_certificates(path)?);
    }
    let mut intermediates = Vec::new();
    for path in &args.intermediates {
        intermediates.extend(load_certificates(path)?);
    }
    if args.allow_serial.is_empty() {
        eprintln!("keytap attest verify: no --allow-serial: any token that chains to the roots is accepted");
    }
    let options = VerifyOptions {
        intermediates,
        allow_serials: (!args.allow_serial.is_empty()).then_some(args.allow_serial),
        require_pin: args.require_pin,
        require_touch: args.require_touch,
        max_age: args.max_age,
        expect_worker_pool: args.worker_pool,
        expect_worker_group: args.worker_group,
        expect_worker_id: args.worker_id,
        ..VerifyOptions::new(roots, args.nonce)
    };
    let claims = verify_proof(&proof, &options).map_err(|e| AppError::Message(format!("proof rejected: {e}")))?;
    println!("{}", serde_json::to_string_pretty(&claims).expect("claims serialise"));
    Ok(())
}
