//! Making a proof: the slot's attestation, then a signature by the attested key over the
//! canonical bytes. Either through a running keytap agent (which owns the token) or with the
//! token opened directly; signing goes through the token owner in both cases.

use std::time::{SystemTime, UNIX_EPOCH};

use der::Decode;
use ssh_encoding::Encode as _;
use ssh_key::public::KeyData;
use x509_cert::Certificate;

use super::x509::{attested_key, challenge_algorithm, low_s, verify_challenge, yubico_extensions};
use super::{b64, canonical_bytes, AttestError, Proof, SignedFields, WorkerIdentity, PROOF_KIND};
use crate::agent::attest_ext::EXT_ATTEST;
use crate::agent::StatusReport;
use crate::client::{AgentClient, ClientError};
use crate::signature::{self, SSH_AGENT_RSA_SHA2_256};
use crate::token::owner::{Owner, SignContext};
use crate::token::{Attestation, KeyAlgorithm, Slot, TokenError};

/// What to prove.
#[derive(Clone, Debug)]
pub struct ProveRequest {
    pub slot: Slot,
    /// Only this token (when several are plugged in).
    pub serial: Option<u32>,
    pub nonce: String,
    pub worker: WorkerIdentity,
    /// Unix seconds; now when `None` (tests set it).
    pub timestamp: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the token's attestation is unusable: {0}")]
    Attest(#[from] AttestError),
    #[error("{0}")]
    Message(String),
}

/// Make a proof with a token opened by this process.
pub fn prove_with_owner(owner: &mut Owner, request: &ProveRequest) -> Result<Proof, ProveError> {
    let info = owner.token.info()?;
    if let Some(serial) = request.serial {
        if info.serial != serial {
            return Err(ProveError::Message(format!(
                "the token has serial {}, not {serial}; plug in the right one or drop --serial",
                info.serial
            )));
        }
    }
    let key = owner.token.keys()?.into_iter().find(|k| k.slot == request.slot).ok_or(TokenError::NoKey(request.slot))?;
    let attestation = owner.token.attest(request.slot)?;
    let scheme = signature::scheme_for(&key.public_key, SSH_AGENT_RSA_SHA2_256)
        .map_err(|e| ProveError::Message(e.to_string()))?;
    let context = SignContext {
        requester: format!("keytap attest (pid {})", std::process::id()),
        purpose: "prove this worker's identity (PIV attestation)".into(),
        ..Default::default()
    };
    assemble(&attestation, &key.public_key, request, |bytes| Ok(owner.sign(&key, scheme, bytes, &context)?))
}

/// Make a proof through a running keytap agent.
pub fn prove_with_agent(client: &mut AgentClient, status: &StatusReport, request: &ProveRequest) -> Result<Proof, ProveError> {
    if status.locked {
        return Err(ProveError::Message("the agent is locked; unlock it with `ssh-add -X`".into()));
    }
    let slot = request.slot.to_string();
    let key = status
        .tokens
        .iter()
        .flat_map(|t| t.keys.iter())
        .find(|k| k.slot == slot && request.serial.map_or(true, |s| s == k.serial))
        .ok_or_else(|| {
            ProveError::Message(format!(
                "the agent sees no key in slot {slot}{}; check `keytap list` or create one with `keytap setup --slot {slot}`",
                request.serial.map(|s| format!(" on token {s}")).unwrap_or_default()
            ))
        })?;
    let public_key = ssh_key::PublicKey::from_openssh(&key.authorized_key)
        .map_err(|e| ProveError::Message(format!("the agent listed an unreadable key: {e}")))?
        .key_data()
        .clone();
    let attestation = request_attestation(client, request.slot, key.serial).map_err(|e| match e {
        ClientError::Refused => ProveError::Message(format!(
            "the agent could not attest slot {slot} (an imported key cannot be attested; the agent's log says why)"
        )),
        other => other.into(),
    })?;
    let algorithm = attested_key_algorithm(&public_key)?;
    assemble(&attestation, &public_key, request, |bytes| {
        let flags = if algorithm == KeyAlgorithm::Rsa2048 { SSH_AGENT_RSA_SHA2_256 } else { 0 };
        let sig = client.sign(&public_key, bytes, flags)?;
        raw_signature(algorithm, &sig)
    })
}

/// Ask the agent for a slot's attestation (`keytap-attest@keytap.dev`).
pub fn request_attestation(client: &mut AgentClient, slot: Slot, serial: u32) -> Result<Attestation, ClientError> {
    let mut details = Vec::new();
    slot.to_string().encode(&mut details).expect("encoding to a vec");
    serial.encode(&mut details).expect("encoding to a vec");
    let answer = client.extension(EXT_ATTEST, details)?;
    let mut reader = answer.as_slice();
    let decode = |r: &mut &[u8]| <Vec<u8> as ssh_encoding::Decode>::decode(r).map_err(|e| ClientError::Protocol(e.to_string()));
    let slot_certificate_der = decode(&mut reader)?;
    let intermediate_der = decode(&mut reader)?;
    if !reader.is_empty() {
        return Err(ClientError::Protocol("trailing bytes after the attestation".into()));
    }
    Ok(Attestation { slot_certificate_der, intermediate_der })
}

fn attested_key_algorithm(key: &KeyData) -> Result<KeyAlgorithm, ProveError> {
    use ssh_key::{Algorithm, EcdsaCurve};
    match key.algorithm() {
        Algorithm::Ecdsa { curve: EcdsaCurve::NistP256 } => Ok(KeyAlgorithm::P256),
        Algorithm::Ecdsa { curve: EcdsaCurve::NistP384 } => Ok(KeyAlgorithm::P384),
        Algorithm::Ed25519 => Ok(KeyAlgorithm::Ed25519),
        Algorithm::Rsa { .. } => Ok(KeyAlgorithm::Rsa2048),
        other => Err(ProveError::Message(format!("key type {other} cannot be attested"))),
    }
}

/// An SSH signature from the agent, in the proof's (X.509) form.
fn raw_signature(algorithm: KeyAlgorithm, sig: &ssh_key::Signature) -> Result<Vec<u8>, ProveError> {
    let bad = |e: &dyn std::fmt::Display| ProveError::Message(format!("the agent returned an unusable signature: {e}"));
    match algorithm {
        KeyAlgorithm::P256 => p256::ecdsa::Signature::try_from(sig).map(|s| s.to_der().as_bytes().to_vec()).map_err(|e| bad(&e)),
        KeyAlgorithm::P384 => p384::ecdsa::Signature::try_from(sig).map(|s| s.to_der().as_bytes().to_vec()).map_err(|e| bad(&e)),
        KeyAlgorithm::Ed25519 => Ok(sig.as_bytes().to_vec()),
        KeyAlgorithm::Rsa2048 => {
            if sig.algorithm().as_str() != "rsa-sha2-256" {
                return Err(bad(&format!("{} instead of rsa-sha2-256", sig.algorithm())));
            }
            Ok(sig.as_bytes().to_vec())
        }
    }
}

/// Put a proof together and check it against the attested key before handing it out.
fn assemble(
    attestation: &Attestation,
    signing_key: &KeyData,
    request: &ProveRequest,
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, ProveError>,
) -> Result<Proof, ProveError> {
    let cert = Certificate::from_der(&attestation.slot_certificate_der).map_err(|e| AttestError::BadCertificate {
        which: "attestation",
        reason: e.to_string(),
    })?;
    let ext = yubico_extensions(&cert)?;
    let spki = der::Encode::to_der(&cert.tbs_certificate.subject_public_key_info)
        .map_err(|e| AttestError::BadCertificate { which: "attestation", reason: e.to_string() })?;
    let attested = attested_key(&spki)?;
    if &attested.ssh_key != signing_key {
        return Err(ProveError::Message(format!(
            "the attestation certificate for slot {} names a different key than the slot holds; the token answered inconsistently",
            request.slot
        )));
    }
    let timestamp = request
        .timestamp
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0));
    let slot = request.slot.to_string();
    let message = canonical_bytes(&SignedFields {
        nonce: &request.nonce,
        worker: &request.worker,
        timestamp,
        slot: &slot,
        serial: ext.serial,
        attestation_der: &attestation.slot_certificate_der,
    });
    // Tokens make high-S ECDSA signatures about half the time; verifiers accept only low-S.
    let signature = low_s(attested.algorithm, sign(&message)?);
    let algorithm = challenge_algorithm(attested.algorithm);
    verify_challenge(&attested, algorithm, &message, &signature)?;
    Ok(Proof {
        kind: PROOF_KIND.into(),
        slot,
        serial: ext.serial,
        firmware: ext.firmware_string(),
        pin_policy: ext.pin_policy,
        touch_policy: ext.touch_policy,
        attestation_certificate: b64(&attestation.slot_certificate_der),
        intermediate_certificate: b64(&attestation.intermediate_der),
        nonce: request.nonce.clone(),
        worker_pool: request.worker.worker_pool.clone(),
        worker_group: request.worker.worker_group.clone(),
        worker_id: request.worker.worker_id.clone(),
        timestamp,
        signature_algorithm: algorithm.into(),
        signature: b64(&signature),
    })
}
