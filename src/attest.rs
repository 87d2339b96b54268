//! PIV attestation: proofs that a key was generated on a token, and their verification.
//!
//! A proof (`"kind": "yubikey-piv-attestation/v1"`) carries the slot's attestation certificate
//! (PIV INS 0xF9), the device's f9 certificate that signed it, and a signature made by the
//! attested key over [`canonical_bytes`], which bind a verifier's nonce, the worker's identity
//! and a timestamp. [`verify_proof`] is what a worker manager calls; trust roots are always the
//! operator's (nothing is compiled in).

pub mod command;
pub mod mock;
pub mod prove;
pub mod x509;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ssh_encoding::Encode;

use crate::token::{KeyAlgorithm, PinPolicy, TouchPolicy};
pub use x509::{ParsedAttestation, YubicoExtensions};

/// The `kind` of every proof this module writes and accepts.
pub const PROOF_KIND: &str = "yubikey-piv-attestation/v1";
/// Domain separation: no SSH userauth request or SSHSIG blob starts with these bytes, so a
/// proof signature can never be replayed as a login or a git signature (nor the reverse).
pub const DOMAIN: &[u8] = b"keytap-attest-v1\0";
/// Longest accepted proof document; a real one is about 3 KiB.
pub const MAX_PROOF_BYTES: usize = 64 * 1024;
/// Longest accepted nonce or worker identity field.
pub const MAX_FIELD_BYTES: usize = 1024;
/// How far in the future a timestamp may be (clock skew between worker and manager).
pub const FUTURE_SKEW: Duration = Duration::from_secs(60);

/// Who the proof is for: the Taskcluster worker identity it binds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerIdentity {
    pub worker_pool: String,
    pub worker_group: String,
    pub worker_id: String,
}

/// The proof document, as written by `keytap attest` (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Proof {
    pub kind: String,
    /// "9a".
    pub slot: String,
    /// Informational copies of what the attestation certificate says; a verifier checks they
    /// agree and reports the certificate's values.
    pub serial: u32,
    pub firmware: String,
    pub pin_policy: PinPolicy,
    pub touch_policy: TouchPolicy,
    /// Base64 (standard) DER of the slot attestation certificate.
    pub attestation_certificate: String,
    /// Base64 (standard) DER of the device's f9 attestation certificate.
    pub intermediate_certificate: String,
    pub nonce: String,
    pub worker_pool: String,
    pub worker_group: String,
    pub worker_id: String,
    /// Unix seconds when the proof was made.
    pub timestamp: u64,
    /// `ecdsa-sha256` (P-256), `ecdsa-sha384` (P-384), `ed25519`, `rsa-pkcs1-sha256`.
    pub signature_algorithm: String,
    /// Base64 of the signature in its X.509 form: DER ECDSA, 64 raw Ed25519 bytes, PKCS#1 v1.5.
    pub signature: String,
}

/// The bytes the attested key signs. All integers big-endian; `string` is a u32 length then
/// the bytes (SSH wire encoding):
///
/// ```text
/// "keytap-attest-v1\0"          17 bytes, domain separation
/// string  nonce                 the verifier's challenge, UTF-8
/// string  worker_pool
/// string  worker_group
/// string  worker_id
/// uint64  timestamp             unix seconds
/// string  slot                  "9a"
/// uint32  serial                the token serial the attestation certificate names
/// string  sha256(attestation certificate DER)   32 bytes
/// ```
///
/// Hashing the attestation certificate in ties the signature to one attestation, so neither
/// half of a proof can be paired with the other half of another.
pub fn canonical_bytes(proof_fields: &SignedFields<'_>) -> Vec<u8> {
    let mut out = DOMAIN.to_vec();
    let f = proof_fields;
    for s in [f.nonce, &f.worker.worker_pool, &f.worker.worker_group, &f.worker.worker_id] {
        s.as_bytes().encode(&mut out).expect("encoding to a vec");
    }
    f.timestamp.encode(&mut out).expect("encoding to a vec");
    f.slot.as_bytes().encode(&mut out).expect("encoding to a vec");
    f.serial.encode(&mut out).expect("encoding to a vec");
    Sha256::digest(f.attestation_der).as_slice().encode(&mut out).expect("encoding to a vec");
    out
}

/// The inputs of [`canonical_bytes`].
#[derive(Clone, Debug)]
pub struct SignedFields<'a> {
    pub nonce: &'a str,
    pub worker: &'a WorkerIdentity,
    pub timestamp: u64,
    pub slot: &'a str,
    pub serial: u32,
    pub attestation_der: &'a [u8],
}

/// What a verifier demands. Roots come from the operator; there is no default.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// DER of the trusted roots (Yubico's PIV root, the U2F root, Yubico Attestation Root 1...).
    pub roots: Vec<Vec<u8>>,
    /// DER of extra intermediates (firmware 5.7.4+ chains).
    pub intermediates: Vec<Vec<u8>>,
    /// The nonce the verifier handed out for this registration.
    pub nonce: String,
    /// Accepted token serials; `None` accepts any token that chains to the roots.
    pub allow_serials: Option<Vec<u32>>,
    /// Weakest acceptable PIN policy (never < once < always).
    pub require_pin: Option<PinPolicy>,
    /// Weakest acceptable touch policy (never < cached < always).
    pub require_touch: Option<TouchPolicy>,
    /// Oldest acceptable proof.
    pub max_age: Duration,
    /// Each field given must equal the proof's.
    pub expect_worker_pool: Option<String>,
    pub expect_worker_group: Option<String>,
    pub expect_worker_id: Option<String>,
    /// The verifier's clock (tests pin it).
    pub now: SystemTime,
}

impl VerifyOptions {
    /// Options with the given roots and nonce, five minutes max age and no other demands.
    pub fn new(roots: Vec<Vec<u8>>, nonce: impl Into<String>) -> Self {
        VerifyOptions {
            roots,
            intermediates: Vec::new(),
            nonce: nonce.into(),
            allow_serials: None,
            require_pin: None,
            require_touch: None,
            max_age: Duration::from_secs(300),
            expect_worker_pool: None,
            expect_worker_group: None,
            expect_worker_id: None,
            now: SystemTime::now(),
        }
    }
}

/// What a verified proof establishes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub kind: String,
    pub serial: u32,
    pub firmware: String,
    /// Yubico form factor byte (None before firmware 5.x).
    pub form_factor: Option<u8>,
    pub fips: bool,
    pub slot: String,
    pub pin_policy: PinPolicy,
    pub touch_policy: TouchPolicy,
    pub key_algorithm: KeyAlgorithm,
    /// OpenSSH form of the attested public key.
    pub public_key: String,
    pub fingerprint: String,
    pub worker_pool: String,
    pub worker_group: String,
    pub worker_id: String,
    pub timestamp: u64,
    pub age_seconds: u64,
    /// Subjects from the attestation certificate up to the trusted root.
    pub chain: Vec<String>,
}

/// Why a proof was not accepted. Each message says what to check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestError {
    #[error("not a keytap attestation proof: {0}; pass the JSON file `keytap attest` wrote")]
    Malformed(String),
    #[error("unsupported proof kind {0:?}; this verifier understands {PROOF_KIND:?}")]
    UnsupportedKind(String),
    #[error("cannot parse the {which} certificate: {reason}")]
    BadCertificate { which: &'static str, reason: String },
    #[error("no trust roots given; pass the Yubico root certificate(s) with --roots")]
    NoRoots,
    #[error("the attestation certificate is not signed by the f9 certificate in the proof ({0}); the proof was altered or its certificates come from different devices")]
    NotIssuedByIntermediate(String),
    #[error("certificate {subject} cannot be in this chain: {reason}")]
    PathRule { subject: String, reason: String },
    #[error("the f9 certificate does not chain to any trusted root ({0}); check --roots (and --intermediates for firmware 5.7.4+)")]
    UntrustedChain(String),
    #[error("the {which} certificate is outside its validity period ({reason})")]
    Validity { which: &'static str, reason: String },
    #[error("the attestation certificate lacks the Yubico {0} extension; it is not a PIV attestation")]
    MissingExtension(&'static str),
    #[error("the attestation certificate's {which} extension is malformed: {reason}")]
    BadExtension { which: &'static str, reason: String },
    #[error("token serial {0} is not in the allow-list; add it to --allow-serial if this worker's YubiKey is trusted")]
    SerialNotAllowed(u32),
    #[error("the key's PIN policy is {have}, weaker than the required {need}; re-create the key with `keytap setup --pin-policy {need} --force`")]
    PinPolicyTooWeak { have: PinPolicy, need: PinPolicy },
    #[error("the key's touch policy is {have}, weaker than the required {need}; re-create the key with `keytap setup --touch {need} --force`")]
    TouchPolicyTooWeak { have: TouchPolicy, need: TouchPolicy },
    #[error("the proof answers a different nonce (replay?); ask the worker for a fresh proof with the current nonce")]
    NonceMismatch,
    #[error("the proof is {age}s old, more than the allowed {max}s; make a fresh proof (or check the worker's clock)")]
    TooOld { age: u64, max: u64 },
    #[error("the proof is dated {ahead}s in the future; check the worker's clock")]
    FromTheFuture { ahead: u64 },
    #[error("the proof is for {field} {got:?}, not {expected:?}")]
    BindingMismatch { field: &'static str, expected: String, got: String },
    #[error("the proof's {0} field disagrees with its attestation certificate; the proof was altered")]
    ClaimMismatch(&'static str),
    #[error("the attested key type is not supported: {0}")]
    UnsupportedKey(String),
    #[error("the challenge signature does not verify with the attested key ({0}); the proof was altered or not made by that key")]
    BadSignature(String),
}

/// Parse and verify a proof document. Checks, in order: shape, certificate chain (attestation
/// -> f9 -> intermediates -> an operator root, every issuer a CA; see [`x509::verify_chain`]),
/// validity periods, Yubico extensions, proof fields against the certificate, challenge
/// signature (ECDSA only in low-S form), nonce, worker binding, freshness, serial allow-list
/// and policies. A verified proof can still be replayed until `max_age` unless the caller
/// consumes its nonce once: nonces are single-use by contract.
pub fn verify_proof(proof_json: &[u8], options: &VerifyOptions) -> Result<Claims, AttestError> {
    if proof_json.len() > MAX_PROOF_BYTES {
        return Err(AttestError::Malformed(format!("{} bytes is far more than a proof", proof_json.len())));
    }
    let kind = serde_json::from_slice::<serde_json::Value>(proof_json)
        .map_err(|e| AttestError::Malformed(format!("invalid JSON: {e}")))?
        .get("kind")
        .and_then(|k| k.as_str().map(str::to_string))
        .ok_or_else(|| AttestError::Malformed("no \"kind\" field".into()))?;
    if kind != PROOF_KIND {
        return Err(AttestError::UnsupportedKind(kind));
    }
    let proof: Proof = serde_json::from_slice(proof_json).map_err(|e| AttestError::Malformed(e.to_string()))?;
    for (name, value) in [
        ("nonce", &proof.nonce),
        ("worker_pool", &proof.worker_pool),
        ("worker_group", &proof.worker_group),
        ("worker_id", &proof.worker_id),
    ] {
        if value.len() > MAX_FIELD_BYTES {
            return Err(AttestError::Malformed(format!("{name} is longer than {MAX_FIELD_BYTES} bytes")));
        }
    }
    let attestation_der = decode_b64("attestation_certificate", &proof.attestation_certificate)?;
    let intermediate_der = decode_b64("intermediate_certificate", &proof.intermediate_certificate)?;
    let signature = decode_b64("signature", &proof.signature)?;

    if options.roots.is_empty() {
        return Err(AttestError::NoRoots);
    }
    let parsed = x509::verify_chain(&attestation_der, &intermediate_der, options)?;
    let ext = &parsed.extensions;

    // The proof's informational fields must say what the certificate says.
    if proof.serial != ext.serial {
        return Err(AttestError::ClaimMismatch("serial"));
    }
    if proof.firmware != ext.firmware_string() {
        return Err(AttestError::ClaimMismatch("firmware"));
    }
    if proof.pin_policy != ext.pin_policy {
        return Err(AttestError::ClaimMismatch("pin_policy"));
    }
    if proof.touch_policy != ext.touch_policy {
        return Err(AttestError::ClaimMismatch("touch_policy"));
    }
    if parsed.slot.as_deref() != Some(proof.slot.as_str()) {
        return Err(AttestError::ClaimMismatch("slot"));
    }

    let worker = WorkerIdentity {
        worker_pool: proof.worker_pool.clone(),
        worker_group: proof.worker_group.clone(),
        worker_id: proof.worker_id.clone(),
    };
    let message = canonical_bytes(&SignedFields {
        nonce: &proof.nonce,
        worker: &worker,
        timestamp: proof.timestamp,
        slot: &proof.slot,
        serial: ext.serial,
        attestation_der: &attestation_der,
    });
    x509::verify_challenge(&parsed.public_key, &proof.signature_algorithm, &message, &signature)?;

    // The signature is genuine; now is it the answer the verifier asked for?
    if !bool::from(subtle::ConstantTimeEq::ct_eq(proof.nonce.as_bytes(), options.nonce.as_bytes())) {
        return Err(AttestError::NonceMismatch);
    }
    for (field, expected, got) in [
        ("worker pool", &options.expect_worker_pool, &proof.worker_pool),
        ("worker group", &options.expect_worker_group, &proof.worker_group),
        ("worker id", &options.expect_worker_id, &proof.worker_id),
    ] {
        if let Some(expected) = expected {
            if expected != got {
                return Err(AttestError::BindingMismatch { field, expected: expected.clone(), got: got.clone() });
            }
        }
    }
    let now = options.now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    if proof.timestamp > now + FUTURE_SKEW.as_secs() {
        return Err(AttestError::FromTheFuture { ahead: proof.timestamp - now });
    }
    let age = now.saturating_sub(proof.timestamp);
    if age > options.max_age.as_secs() {
        return Err(AttestError::TooOld { age, max: options.max_age.as_secs() });
    }
    if let Some(allowed) = &options.allow_serials {
        if !allowed.contains(&ext.serial) {
            return Err(AttestError::SerialNotAllowed(ext.serial));
        }
    }
    if let Some(need) = options.require_pin {
        if pin_strength(ext.pin_policy) < pin_strength(need) {
            return Err(AttestError::PinPolicyTooWeak { have: ext.pin_policy, need });
        }
    }
    if let Some(need) = options.require_touch {
        if touch_strength(ext.touch_policy) < touch_strength(need) {
            return Err(AttestError::TouchPolicyTooWeak { have: ext.touch_policy, need });
        }
    }

    let public_key = parsed.public_key.ssh_key.clone();
    let ssh = ssh_key::PublicKey::new(public_key.clone(), "");
    Ok(Claims {
        kind: PROOF_KIND.into(),
        serial: ext.serial,
        firmware: ext.firmware_string(),
        form_factor: ext.form_factor,
        fips: ext.form_factor.is_some_and(|f| f & 0x80 != 0),
        slot: proof.slot,
        pin_policy: ext.pin_policy,
        touch_policy: ext.touch_policy,
        key_algorithm: parsed.public_key.algorithm,
        public_key: ssh.to_openssh().map(|s| s.trim().to_string()).unwrap_or_default(),
        fingerprint: public_key.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
        worker_pool: proof.worker_pool,
        worker_group: proof.worker_group,
        worker_id: proof.worker_id,
        timestamp: proof.timestamp,
        age_seconds: age,
        chain: parsed.chain,
    })
}

fn pin_strength(p: PinPolicy) -> u8 {
    match p {
        PinPolicy::Never => 0,
        PinPolicy::Once => 1,
        PinPolicy::Always => 2,
    }
}

fn touch_strength(t: TouchPolicy) -> u8 {
    match t {
        TouchPolicy::Never => 0,
        TouchPolicy::Cached => 1,
        TouchPolicy::Always => 2,
    }
}

fn decode_b64(field: &str, value: &str) -> Result<Vec<u8>, AttestError> {
    base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|e| AttestError::Malformed(format!("{field} is not base64: {e}")))
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Parse "300", "300s", "5m", "2h", "1d" (for `--max-age`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (digits, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = digits.parse().map_err(|_| format!("invalid duration {text:?}: use e.g. 90s, 5m, 1h"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("invalid duration unit in {text:?}: use s, m, h or d")),
    };
    n.checked_mul(scale).map(Duration::from_secs).ok_or_else(|| format!("duration {text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_bytes_layout_is_pinned() {
        let worker = WorkerIdentity { worker_pool: "p".into(), worker_group: "g".into(), worker_id: "w".into() };
        let bytes = canonical_bytes(&SignedFields {
            nonce: "n1",
            worker: &worker,
            timestamp: 0x0102030405060708,
            slot: "9a",
            serial: 0x00bc614e,
            attestation_der: b"cert",
        });
        let mut expected = b"keytap-attest-v1\0".to_vec();
        expected.extend_from_slice(&[0, 0, 0, 2, b'n', b'1']);
        for s in [b"p", b"g", b"w"] {
            expected.extend_from_slice(&[0, 0, 0, 1, s[0]]);
        }
        expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        expected.extend_from_slice(&[0, 0, 0, 2, b'9', b'a']);
        expected.extend_from_slice(&[0x00, 0xbc, 0x61, 0x4e]);
        expected.extend_from_slice(&[0, 0, 0, 32]);
        expected.extend_from_slice(&Sha256::digest(b"cert"));
        assert_eq!(bytes, expected);
    }

    #[test]
    fn canonical_bytes_are_neither_userauth_nor_sshsig() {
        let worker = WorkerIdentity { worker_pool: "p".into(), worker_group: "g".into(), worker_id: "w".into() };
        let bytes = canonical_bytes(&SignedFields {
            nonce: "n",
            worker: &worker,
            timestamp: 1,
            slot: "9a",
            serial: 1,
            attestation_der: b"",
        });
        let key = ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519).unwrap();
        assert_eq!(crate::purpose::classify(&bytes, key.public_key().key_data()), Ok(crate::purpose::Purpose::Raw));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("m").is_err());
    }
}
