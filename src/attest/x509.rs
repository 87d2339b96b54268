//! X.509 for PIV attestation: the Yubico extensions, the chain to an operator's root, and the
//! signatures involved (certificate signatures and the proof's challenge signature).

use std::time::{SystemTime, UNIX_EPOCH};

use der::asn1::ObjectIdentifier;
use der::{Decode, Encode, Header, Reader, SliceReader};
use sha2::{Digest, Sha256, Sha384, Sha512};
use ssh_key::public::KeyData;
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage};
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
/// The path has an exact shape: the slot certificate (the only end entity) is signed by the
/// proof's f9 certificate, which is signed by an operator root, directly or through at most
/// [`MAX_INTERMEDIATES`] operator intermediates. Every issuer must be able to issue
/// ([`check_issuer`]): basicConstraints CA:TRUE, keyCertSign where keyUsage is present,
/// pathLenConstraint respected. Two Yubico quirks are tolerated, both only at the f9 level,
/// which is known by its position (it signed the certificate carrying the slot extensions):
/// an f9 certificate without basicConstraints, and path lengths counted with the f9 as the
/// last certificate of the CA path (so the old U2F root's `pathlen:0` holds directly above
/// an f9). That leniency grants nothing, because the f9 can only ever sign the end entity
/// here. A certificate with Yubico's slot extensions or a `YubiKey PIV Attestation` subject
/// never issues, and no device certificate is accepted as a root or an intermediate.
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

    check_extensions("attestation", &leaf)?;
    // Link 1: the attestation certificate must be signed by the f9 key in the proof.
    if leaf.tbs_certificate.issuer != f9.tbs_certificate.subject {
        return Err(AttestError::NotIssuedByIntermediate(format!(
            "issuer {} is not the f9 subject {}",
            leaf.tbs_certificate.issuer, f9.tbs_certificate.subject
        )));
    }
    check_signed_by(attestation_der, &leaf, &f9).map_err(AttestError::NotIssuedByIntermediate)?;
    check_f9(&f9, &roots)?;

    // Then from the f9 certificate up to a root, through the operator's intermediates. The
    // f9 is level 1; an issuer at level n has n - 2 CA certificates between it and the f9.
    let mut chain = vec![leaf.tbs_certificate.subject.to_string(), f9.tbs_certificate.subject.to_string()];
    let mut current: (&[u8], Certificate) = (intermediate_der, f9.clone());
    let mut reasons = Vec::new();
    let mut anchored = false;
    'walk: for level in 2..=MAX_INTERMEDIATES + 2 {
        let cas_below = level - 2;
        let (cur_der, cur) = &current;
        for (_, root) in &roots {
            if root.tbs_certificate.subject != cur.tbs_certificate.issuer {
                continue;
            }
            match check_signed_by(cur_der, cur, root) {
                Ok(()) => {
                    check_issuer("root", root, cas_below)?;
                    check_validity("root", root, options.now)?;
                    chain.push(root.tbs_certificate.subject.to_string());
                    anchored = true;
                    break 'walk;
                }
                Err(e) => reasons.push(format!("root {}: {e}", root.tbs_certificate.subject)),
            }
        }
        if level == MAX_INTERMEDIATES + 2 {
            reasons.push(format!("more than {MAX_INTERMEDIATES} intermediates above the f9 certificate"));
            break;
        }
        let next = extra.iter().find(|(d, c)| {
            c.tbs_certificate.subject == cur.tbs_certificate.issuer
                && *d != *cur_der
                && *d != intermediate_der
                && check_signed_by(cur_der, cur, c).is_ok()
        });
        match next {
            Some((d, c)) => {
                check_issuer("intermediate", c, cas_below)?;
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

const OID_BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const OID_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
/// Yubico's PIV attestation arc (1.3.6.1.4.1.41482.3.*): only device certificates carry it.
const OID_YUBICO_ATTESTATION_ARC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.41482.3");
/// The subject prefix of every slot attestation certificate.
const SLOT_SUBJECT: &str = "CN=YubiKey PIV Attestation";

fn exts(cert: &Certificate) -> &[x509_cert::ext::Extension] {
    cert.tbs_certificate.extensions.as_deref().unwrap_or(&[])
}

fn subject_of(cert: &Certificate) -> String {
    cert.tbs_certificate.subject.to_string()
}

fn path_error(cert: &Certificate, reason: impl Into<String>) -> AttestError {
    AttestError::PathRule { subject: subject_of(cert), reason: reason.into() }
}

/// No extension twice, and no critical extension this verifier does not process (RFC 5280
/// 4.2: a certificate with an unrecognised critical extension must be rejected).
fn check_extensions(which: &'static str, cert: &Certificate) -> Result<(), AttestError> {
    let list = exts(cert);
    for (i, e) in list.iter().enumerate() {
        if list[..i].iter().any(|o| o.extn_id == e.extn_id) {
            return Err(AttestError::BadCertificate { which, reason: format!("extension {} appears twice", e.extn_id) });
        }
        if e.critical && e.extn_id != OID_BASIC_CONSTRAINTS && e.extn_id != OID_KEY_USAGE {
            return Err(AttestError::BadCertificate {
                which,
                reason: format!("it has a critical extension {} this verifier does not understand", e.extn_id),
            });
        }
    }
    Ok(())
}

fn basic_constraints(cert: &Certificate) -> Result<Option<BasicConstraints>, AttestError> {
    exts(cert)
        .iter()
        .find(|e| e.extn_id == OID_BASIC_CONSTRAINTS)
        .map(|e| BasicConstraints::from_der(e.extn_value.as_bytes()))
        .transpose()
        .map_err(|e| path_error(cert, format!("its basicConstraints extension is malformed ({e})")))
}

fn key_usage(cert: &Certificate) -> Result<Option<KeyUsage>, AttestError> {
    exts(cert)
        .iter()
        .find(|e| e.extn_id == OID_KEY_USAGE)
        .map(|e| KeyUsage::from_der(e.extn_value.as_bytes()))
        .transpose()
        .map_err(|e| path_error(cert, format!("its keyUsage extension is malformed ({e})")))
}

/// A slot attestation certificate (or anything dressed as one): Yubico's serial or policy
/// extension, or the `YubiKey PIV Attestation` subject. Such a certificate speaks for a slot
/// key, which anyone using the slot can sign with, so it must never issue.
fn is_slot_certificate(cert: &Certificate) -> bool {
    exts(cert).iter().any(|e| e.extn_id == OID_SERIAL || e.extn_id == OID_POLICY)
        || subject_of(cert).split(',').any(|rdn| rdn.trim().starts_with(SLOT_SUBJECT))
}

fn has_yubico_attestation_extension(cert: &Certificate) -> bool {
    exts(cert).iter().any(|e| e.extn_id.parent() == Some(OID_YUBICO_ATTESTATION_ARC))
}

/// keyCertSign where keyUsage is present.
fn check_key_cert_sign(cert: &Certificate) -> Result<(), AttestError> {
    match key_usage(cert)? {
        Some(ku) if !ku.key_cert_sign() => Err(path_error(cert, "its keyUsage lacks keyCertSign, so it may not sign certificates")),
        _ => Ok(()),
    }
}

/// The certificate in the f9 position (it signed the slot certificate).
fn check_f9(f9: &Certificate, roots: &[(&[u8], Certificate)]) -> Result<(), AttestError> {
    if is_slot_certificate(f9) {
        return Err(path_error(
            f9,
            "it is a slot attestation certificate (Yubico slot extensions or a \"YubiKey PIV Attestation\" subject), and a slot key can never issue attestations",
        ));
    }
    check_extensions("f9 intermediate", f9)?;
    // Yubico quirk: some f9 certificates have no basicConstraints; one that has it must say CA.
    if let Some(bc) = basic_constraints(f9)? {
        if !bc.ca {
            return Err(path_error(f9, "its basicConstraints say CA:FALSE, so it may not issue the slot certificate"));
        }
    }
    check_key_cert_sign(f9)?;
    let f9_spki = &f9.tbs_certificate.subject_public_key_info;
    if roots.iter().any(|(_, r)| &r.tbs_certificate.subject_public_key_info == f9_spki) {
        return Err(path_error(
            f9,
            "this device's f9 certificate is configured as a trust root; pass Yubico's root CA with --roots, never a device certificate",
        ));
    }
    Ok(())
}

/// A root or intermediate above the f9 level, with `cas_below` CA certificates between it
/// and the f9 certificate.
fn check_issuer(which: &'static str, cert: &Certificate, cas_below: usize) -> Result<(), AttestError> {
    if is_slot_certificate(cert) || has_yubico_attestation_extension(cert) {
        return Err(path_error(cert, format!("it is a device attestation certificate, which cannot serve as {which}")));
    }
    check_extensions(which, cert)?;
    match basic_constraints(cert)? {
        Some(bc) if bc.ca => {
            if let Some(max) = bc.path_len_constraint {
                if usize::from(max) < cas_below {
                    return Err(path_error(
                        cert,
                        format!("its pathLenConstraint {max} allows fewer than the {cas_below} CA certificate(s) below it"),
                    ));
                }
            }
        }
        Some(_) => return Err(path_error(cert, format!("its basicConstraints say CA:FALSE, so it cannot serve as {which}"))),
        None => return Err(path_error(cert, format!("it has no basicConstraints CA:TRUE, so it cannot serve as {which}"))),
    }
    check_key_cert_sign(cert)
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
    // Exactly two bytes: anything after them would be bytes nobody checked.
    let (pin_policy, touch_policy) = match policy {
        [p, t] => (
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

const HIGH_S: &str = "the ECDSA signature is not in low-S form (s > n/2); keytap writes low-S signatures, so this one was altered";

/// An ECDSA signature (DER) in low-S form; other signatures are returned unchanged.
pub fn low_s(algorithm: KeyAlgorithm, sig: Vec<u8>) -> Vec<u8> {
    match algorithm {
        KeyAlgorithm::P256 => match p256::ecdsa::Signature::from_der(&sig).ok().and_then(|s| s.normalize_s()) {
            Some(n) => n.to_der().as_bytes().to_vec(),
            None => sig,
        },
        KeyAlgorithm::P384 => match p384::ecdsa::Signature::from_der(&sig).ok().and_then(|s| s.normalize_s()) {
            Some(n) => n.to_der().as_bytes().to_vec(),
            None => sig,
        },
        KeyAlgorithm::Ed25519 | KeyAlgorithm::Rsa2048 => sig,
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
        // ECDSA: (r, s) and (r, n - s) both verify; only the low-S form is accepted, so one
        // proof has exactly one encoding (the prover normalises).
        KeyAlgorithm::P256 => {
            let k = p256::ecdsa::VerifyingKey::from_public_key_der(spki).map_err(|e| bad(&e))?;
            let s = p256::ecdsa::Signature::from_der(sig).map_err(|e| bad(&e))?;
            if s.normalize_s().is_some() {
                return Err(AttestError::BadSignature(HIGH_S.into()));
            }
            k.verify(message, &s).map_err(|e| bad(&e))
        }
        KeyAlgorithm::P384 => {
            let k = p384::ecdsa::VerifyingKey::from_public_key_der(spki).map_err(|e| bad(&e))?;
            let s = p384::ecdsa::Signature::from_der(sig).map_err(|e| bad(&e))?;
            if s.normalize_s().is_some() {
                return Err(AttestError::BadSignature(HIGH_S.into()));
            }
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
