//! X.509 for PIV attestation: the Yubico extensions, the chain to an operator's root, and the
//! signatures involved (certificate signatures and the proof's challenge signature).

use std::time::{SystemTime, UNIX_EPOCH};

use der::asn1::ObjectIdentifier;
use der::{Decode, Encode, Header, Reader, SliceReader};
use sha2::{Digest, Sha256, Sha384, Sha512};
use ssh_key::public::KeyData;
use x509_cert::Certificate;

use super::{AttestError, VerifyOptions};
use crate::token::{KeyAlgorithm, PinPolicy, TouchPolicy};

/// Yubico's PIV attestation extensions (raw extnValue contents, see ci-trust.md).
pub const OID_FIRMWARE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.3");
pub const OID_SERIAL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.7");
pub const OID_POLICY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.8");
pub const OID_FORM_FACTOR: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3.9");

const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_SHA256_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11");
const OID_SHA384_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.12");
const OID_SHA512_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.13");
const OID_EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
pub const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
const OID_ECDSA_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// Longest chain above the f9 certificate (Yubico's 5.7.4+ chains have two intermediates).
const MAX_INTERMEDIATES: usize = 4;

/// The Yubico extensions of one attestation certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct YubicoExtensions {
    pub serial: u32,
    pub firmware: (u8, u8, u8),
    pub pin_policy: PinPolicy,
    pub touch_policy: TouchPolicy,
    pub form_factor: Option<u8>,
}

impl YubicoExtensions {
    pub fn firmware_string(&self) -> String {
        format!("{}.{}.{}", self.firmware.0, self.firmware.1, self.firmware.2)
    }
}

/// The attested public key, in forms the verifier needs.
#[derive(Clone, Debug)]
pub struct AttestedKey {
    pub algorithm: KeyAlgorithm,
    pub spki_der: Vec<u8>,
    pub ssh_key: KeyData,
}

/// An attestation certificate that chains to a trusted root.
#[derive(Clone, Debug)]
pub struct ParsedAttestation {
    pub extensions: YubicoExtensions,
    /// "9a", from the subject `CN=YubiKey PIV Attestation 9a`.
    pub slot: Option<String>,
    pub public_key: AttestedKey,
    pub chain: Vec<String>,
}

fn parse(which: &'static str, der: &[u8]) -> Result<Certificate, AttestError> {
    Certificate::from_der(der).map_err(|e| AttestError::BadCertificate { which, reason: e.to_string() })
}

/// The exact to-be-signed bytes inside a certificate's DER (never re-encoded, so a
/// certificate that is not perfectly DER still verifies as its issuer signed it).
fn tbs_bytes(cert_der: &[u8]) -> der::Result<&[u8]> {
    let mut reader = SliceReader::new(cert_der)?;
    let _outer = Header::decode(&mut reader)?;
    let start = usize::try_from(reader.position())?;
    let tbs = Header::decode(&mut reader)?;
    let len = usize::try_from((tbs.encoded_len()? + tbs.length)?)?;
    cert_der.get(start..start + len).ok_or_else(|| der::Tag::Sequence.length_error())
}

/// Check that `cert_der` was signed by the key in `issuer`.
fn check_signed_by(cert_der: &[u8], cert: &Certificate, issuer: &Certificate) -> Result<(), String> {
    let tbs = tbs_bytes(cert_der).map_err(|e| e.to_string())?;
    let sig = cert.signature.as_bytes().ok_or("signature has unused bits")?;
    let spki = issuer.tbs_certificate.subject_public_key_info.to_der().map_err(|e| e.to_string())?;
    verify_x509_signature(&cert.signature_algorithm.oid, &spki, tbs, sig)
}

/// A certificate signature: RSA PKCS#1 v1.5 (SHA-256/384/512), ECDSA P-256/P-384 (SHA-256/384)
/// or Ed25519; the algorithms Yubico and the mock use.
fn verify_x509_signature(alg: &ObjectIdentifier, issuer_spki: &[u8], tbs: &[u8], sig: &[u8]) -> Result<(), String> {
    use signature::hazmat::PrehashVerifier;
    use signature::Verifier;
    use spki::DecodePublicKey;
    let bad = |e: &dyn std::fmt::Display| format!("signature check failed: {e}");
    match *alg {
        a if a == OID_SHA256_RSA || a == OID_SHA384_RSA || a == OID_SHA512_RSA => {
            let key = rsa::RsaPublicKey::from_public_key_der(issuer_spki).map_err(|e| format!("issuer key is not RSA: {e}"))?;
            let sig = rsa::pkcs1v15::Signature::try_from(sig).map_err(|e| bad(&e))?;
            if a == OID_SHA256_RSA {
                rsa::pkcs1v15::VerifyingKey::<Sha256>::new(key).verify(tbs, &sig).map_err(|e| bad(&e))
            } else if a == OID_SHA384_RSA {
                rsa::pkcs1v15::VerifyingKey::<Sha384>::new(key).verify(tbs, &sig).map_err(|e| bad(&e))
            } else {
                rsa::pkcs1v15::VerifyingKey::<Sha512>::new(key).verify(tbs, &sig).map_err(|e| bad(&e))
            }
        }
        a if a == OID_ECDSA_SHA256 || a == OID_ECDSA_SHA384 => {
            let digest: Vec<u8> =
                if a == OID_ECDSA_SHA256 { Sha256::digest(tbs).to_vec() } else { Sha384::digest(tbs).to_vec() };
            if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_der(issuer_spki) {
                let sig = p256::ecdsa::Signature::from_der(sig).map_err(|e| bad(&e))?;
                key.verify_prehash(&digest, &sig).map_err(|e| bad(&e))
            } else if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_der(issuer_spki) {
                let sig = p384::ecdsa::Signature::from_der(sig).map_err(|e| bad(&e))?;
                key.verify_prehash(&digest, &sig).map_err(|e| bad(&e))
            } else {
                Err("issuer key is not a P-256 or P-384 key".into())
            }
        }
        a if a == OID_ED25519 => {
            let key = ed25519_dalek::VerifyingKey::from_public_key_der(issuer_spki)
                .map_err(|e| format!("issuer key is not Ed25519: {e}"))?;
            let sig = ed25519_dalek::Signature::from_slice(sig).map_err(|e| bad(&e))?;
            key.verify(tbs, &sig).map_err(|e| bad(&e))
        }
        other => Err(format!("unsupported signature algorithm {other}")),
    }
}

fn check_validity(which: &'static str, cert: &Certificate, now: SystemTime) -> Result<(), AttestError> {
    let v = &cert.tbs_certificate.validity;
    let now_unix = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    if now_unix < v.not_before.to_unix_duration() {
        return Err(AttestError::Validity { which, reason: format!("not valid before {}", v.not_before) });
    }
    if now_unix > v.not_after.to_unix_duration() {
        return Err(AttestError::Validity { which, reason: format!("expired {}", v.not_after) });
    }
    Ok(())
}

/// Verify attestation cert -> f9 cert -> (intermediates) -> root and parse the extensions.
///
/// Tolerated on purpose (real Yubico chains need it): the f9 certificate need not say CA=true
/// (some lack basicConstraints), and no pathLenConstraint is enforced (the old U2F root says
/// pathlen 0 yet sits two levels above attestation certificates). Trust comes only from the
/// operator's roots and the signatures; names are matched only to choose candidates.
pub fn verify_chain(
    attestation_der: &[u8],
    intermediate_der: &[u8],
    options: &VerifyOptions,
) -> Result<ParsedAttestation, AttestError> {
    let leaf = parse("attestation", attestation_der)?;
    let f9 = parse("f9 intermediate", intermediate_der)?;
    let roots = options
        .roots
        .iter()
        .map(|d| parse("root", d).map(|c| (d.as_slice(), c)))
        .collect::<Result<Vec<_>, _>>()?;
    let extra = options
        .intermediates
        .iter()
        .map(|d| parse("intermediate", d).map(|c| (d.as_slice(), c)))
        .collect::<Result<Vec<_>, _>>()?;

    // Link 1: the attestation certificate must be signed by the f9 key in the proof.
    if leaf.tbs_certificate.issuer != f9.tbs_certificate.subject {
        return Err(AttestError::NotIssuedByIntermediate(format!(
            "issuer {} is not the f9 subject {}",
            leaf.tbs_certificate.issuer, f9.tbs_certificate.subject
        )));
    }
    check_signed_by(attestation_der, &leaf, &f9).map_err(AttestError::NotIssuedByIntermediate)?;

    // Then from the f9 certificate up to a root, through the operator's intermediates.
    let mut chain = vec![leaf.tbs_certificate.subject.to_string(), f9.tbs_certificate.subject.to_string()];
    let mut current: (&[u8], Certificate) = (intermediate_der, f9.clone());
    let mut reasons = Vec::new();
    let mut anchored = false;
    'walk: for _ in 0..=MAX_INTERMEDIATES {
        let (cur_der, cur) = &current;
        // The current certificate may itself be a configured root (same bytes).
        if roots.iter().any(|(d, _)| d == cur_der) {
            anchored = true;
            break;
        }
        for (root_der, root) in &roots {
            if root.tbs_certificate.subject != cur.tbs_certificate.issuer {
                continue;
            }
            match check_signed_by(cur_der, cur, root) {
                Ok(()) => {
                    check_validity("root", root, options.now)?;
                    let _ = root_der;
                    chain.push(root.tbs_certificate.subject.to_string());
                    anchored = true;
                    break 'walk;
                }
                Err(e) => reasons.push(format!("root {}: {e}", root.tbs_certificate.subject)),
            }
        }
        let next = extra.iter().find(|(d, c)| {
            c.tbs_certificate.subject == cur.tbs_certificate.issuer && *d != *cur_der && check_signed_by(cur_der, cur, c).is_ok()
        });
        match next {
            Some((d, c)) => {
                check_validity("intermediate", c, options.now)?;
                chain.push(c.tbs_certificate.subject.to_string());
                current = (d, c.clone());
            }
            None => break,
        }
    }
    if !anchored {
        let why = if reasons.is_empty() {
            format!("no root or intermediate named {}", current.1.tbs_certificate.issuer)
        } else {
            reasons.join("; ")
        };
        return Err(AttestError::UntrustedChain(why));
    }
    check_validity("f9 intermediate", &f9, options.now)?;
    check_validity("attestation", &leaf, options.now)?;

    let extensions = yubico_extensions(&leaf)?;
    let slot = leaf
        .tbs_certificate
        .subject
        .to_string()
        .strip_prefix("CN=YubiKey PIV Attestation ")
        .map(|s| s.to_ascii_lowercase());
    let spki_der = leaf
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| AttestError::BadCertificate { which: "attestation", reason: e.to_string() })?;
    let public_key = attested_key(&spki_der)?;
    Ok(ParsedAttestation { extensions, slot, public_key, chain })
}

/// Read the Yubico extensions of an attestation certificate.
pub fn yubico_extensions(cert: &Certificate) -> Result<YubicoExtensions, AttestError> {
    let exts = cert.tbs_certificate.extensions.as_deref().unwrap_or(&[]);
    let raw = |oid: ObjectIdentifier| exts.iter().find(|e| e.extn_id == oid).map(|e| e.extn_value.as_bytes());
    let bad = |which: &'static str, reason: String| AttestError::BadExtension { which, reason };

    let serial_raw = raw(OID_SERIAL).ok_or(AttestError::MissingExtension("serial (1.3.6.1.4.1.41482.3.7)"))?;
    // A DER INTEGER; Uint refuses negative values and drops the sign byte.
    let serial = der::asn1::Uint::from_der(serial_raw)
        .map_err(|e| bad("serial", e.to_string()))
        .and_then(|i| match i.as_bytes() {
            b if b.len() <= 4 => Ok(b.iter().fold(0u32, |acc, x| (acc << 8) | u32::from(*x))),
            _ => Err(bad("serial", "not a 32-bit unsigned integer".into())),
        })?;

    let fw = raw(OID_FIRMWARE).ok_or(AttestError::MissingExtension("firmware (1.3.6.1.4.1.41482.3.3)"))?;
    let firmware = match fw {
        [a, b, c] => (*a, *b, *c),
        _ => return Err(bad("firmware", format!("{} bytes, expected 3", fw.len()))),
    };

    let policy = raw(OID_POLICY).ok_or(AttestError::MissingExtension("PIN/touch policy (1.3.6.1.4.1.41482.3.8)"))?;
    let (pin_policy, touch_policy) = match policy {
        [p, t, ..] => (
            PinPolicy::from_yubico_byte(*p).ok_or_else(|| bad("policy", format!("unknown PIN policy byte {p:#04x}")))?,
            TouchPolicy::from_yubico_byte(*t).ok_or_else(|| bad("policy", format!("unknown touch policy byte {t:#04x}")))?,
        ),
        _ => return Err(bad("policy", format!("{} bytes, expected 2", policy.len()))),
    };

    let form_factor = match raw(OID_FORM_FACTOR) {
        None => None,
        Some([f]) => Some(*f),
        Some(other) => return Err(bad("form factor", format!("{} bytes, expected 1", other.len()))),
    };
    Ok(YubicoExtensions { serial, firmware, pin_policy, touch_policy, form_factor })
}

/// The attested key from its SubjectPublicKeyInfo: P-256, P-384, Ed25519 or RSA-2048+.
pub fn attested_key(spki_der: &[u8]) -> Result<AttestedKey, AttestError> {
    use spki::{DecodePublicKey, SubjectPublicKeyInfoRef};
    let unsupported = |e: &dyn std::fmt::Display| AttestError::UnsupportedKey(e.to_string());
    let info = SubjectPublicKeyInfoRef::from_der(spki_der).map_err(|e| unsupported(&e))?;
    let oid = info.algorithm.oid;
    let (algorithm, ssh_key): (KeyAlgorithm, KeyData) = if oid == OID_EC {
        let curve = info.algorithm.parameters_oid().map_err(|e| unsupported(&e))?;
        if curve == OID_P256 {
            let k = p256::ecdsa::VerifyingKey::from_public_key_der(spki_der).map_err(|e| unsupported(&e))?;
            (KeyAlgorithm::P256, ssh_key::public::EcdsaPublicKey::from(k).into())
        } else if curve == OID_P384 {
            let k = p384::ecdsa::VerifyingKey::from_public_key_der(spki_der).map_err(|e| unsupported(&e))?;
            (KeyAlgorithm::P384, ssh_key::public::EcdsaPublicKey::from(k).into())
        } else {
            return Err(AttestError::UnsupportedKey(format!("EC curve {curve}")));
        }
    } else if oid == OID_ED25519 {
        let k = ed25519_dalek::VerifyingKey::from_public_key_der(spki_der).map_err(|e| unsupported(&e))?;
        (KeyAlgorithm::Ed25519, ssh_key::public::Ed25519PublicKey::from(k).into())
    } else if oid == OID_RSA {
        let k = rsa::RsaPublicKey::from_public_key_der(spki_der).map_err(|e| unsupported(&e))?;
        if rsa::traits::PublicKeyParts::size(&k) < 256 {
            return Err(AttestError::UnsupportedKey("RSA keys under 2048 bits".into()));
        }
        (KeyAlgorithm::Rsa2048, ssh_key::public::RsaPublicKey::try_from(k).map_err(|e| unsupported(&e))?.into())
    } else {
        return Err(AttestError::UnsupportedKey(format!("key algorithm {oid}")));
    };
    Ok(AttestedKey { algorithm, spki_der: spki_der.to_vec(), ssh_key })
}

/// The `signature_algorithm` a key's proof signature uses.
pub fn challenge_algorithm(algorithm: KeyAlgorithm) -> &'static str {
    match algorithm {
        KeyAlgorithm::P256 => "ecdsa-sha256",
        KeyAlgorithm::P384 => "ecdsa-sha384",
        KeyAlgorithm::Ed25519 => "ed25519",
        KeyAlgorithm::Rsa2048 => "rsa-pkcs1-sha256",
    }
}

/// Verify the proof's challenge signature with the attested key.
pub fn verify_challenge(key: &AttestedKey, algorithm: &str, message: &[u8], sig: &[u8]) -> Result<(), AttestError> {
    use signature::Verifier;
    use spki::DecodePublicKey;
    let expected = challenge_algorithm(key.algorithm);
    if algorithm != expected {
        return Err(AttestError::BadSignature(format!("algorithm {algorithm:?} does not fit a {} key (expected {expected:?})", key.algorithm)));
    }
    let bad = |e: &dyn std::fmt::Display| AttestError::BadSignature(e.to_string());
    let spki = key.spki_der.as_slice();
    match key.algorithm {
        KeyAlgorithm::P256 => {
            let k = p256::ecdsa::VerifyingKey::from_public_key_der(spki).map_err(|e| bad(&e))?;
            let s = p256::ecdsa::Signature::from_der(sig).map_err(|e| bad(&e))?;
            k.verify(message, &s).map_err(|e| bad(&e))
        }
        KeyAlgorithm::P384 => {
            let k = p384::ecdsa::VerifyingKey::from_public_key_der(spki).map_err(|e| bad(&e))?;
            let s = p384::ecdsa::Signature::from_der(sig).map_err(|e| bad(&e))?;
            k.verify(message, &s).map_err(|e| bad(&e))
        }
        KeyAlgorithm::Ed25519 => {
            let k = ed25519_dalek::VerifyingKey::from_public_key_der(spki).map_err(|e| bad(&e))?;
            let s = ed25519_dalek::Signature::from_slice(sig).map_err(|e| bad(&e))?;
            k.verify_strict(message, &s).map_err(|e| bad(&e))
        }
        KeyAlgorithm::Rsa2048 => {
            let k = rsa::RsaPublicKey::from_public_key_der(spki).map_err(|e| bad(&e))?;
            let s = rsa::pkcs1v15::Signature::try_from(sig).map_err(|e| bad(&e))?;
            rsa::pkcs1v15::VerifyingKey::<Sha256>::new(k).verify(message, &s).map_err(|e| bad(&e))
        }
    }
}
