//! A mock attestation CA (root + f9 key) for the mock token.
//!
//! Shaped like Yubico's: a root, a per-device f9 certificate it signs, and per-slot
//! attestation certificates (`CN=YubiKey PIV Attestation <slot>`, issuer = the f9 subject,
//! 16-byte random serial, the Yubico extensions with the same raw encodings). Like some real
//! chains it exercises the verifier's tolerances: the root says pathlen 0 (as Yubico's old U2F
//! root does) and the f9 certificate has no basicConstraints. Keys are P-256 (fast to make);
//! the verifier also handles Yubico's RSA chains. Every mock token gets its own root, so a
//! second mock token's f9 certificate does not chain to the first token's root.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use der::asn1::{BitString, OctetString, UtcTime};
use der::{Decode, Encode, EncodePem};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};

use super::x509::{OID_ECDSA_SHA256, OID_FIRMWARE, OID_FORM_FACTOR, OID_POLICY, OID_SERIAL};
use crate::token::{Attestation, PinPolicy, Slot, TouchPolicy};

pub const ROOT_SUBJECT: &str = "CN=keytap MOCK Attestation Root (TEST)";
pub const F9_SUBJECT: &str = "CN=keytap MOCK PIV Attestation (TEST)";
/// Yubico form factor byte: 0x03 is a USB-C keychain (no FIPS bit).
pub const FORM_FACTOR: u8 = 0x03;

/// The mock token's attestation CA, kept in its state JSON. TEST KEYS in plain text.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MockAttestationCa {
    /// PKCS#8 PEM of the root key (P-256). TEST KEY.
    root_key_pkcs8: String,
    /// Base64 DER of the self-signed root certificate.
    root_certificate: String,
    /// PKCS#8 PEM of the f9 attestation key (P-256). TEST KEY.
    f9_key_pkcs8: String,
    /// Base64 DER of the f9 certificate (signed by the root).
    f9_certificate: String,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A positive 16-byte random serial, as Yubico's attestation certificates have.
fn random_serial() -> Result<SerialNumber, String> {
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::new(&bytes).map_err(err)
}

fn ecdsa_sha256() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned { oid: OID_ECDSA_SHA256, parameters: None }
}

/// From a day ago (clock skew) to "no well-defined expiration" (RFC 5280 99991231235959Z).
fn long_validity() -> Result<Validity, String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(err)?;
    let start = Duration::from_secs(now.as_secs().saturating_sub(86_400));
    Ok(Validity { not_before: Time::UtcTime(UtcTime::from_unix_duration(start).map_err(err)?), not_after: Time::INFINITY })
}

fn raw_extension(oid: der::asn1::ObjectIdentifier, value: Vec<u8>) -> Result<Extension, String> {
    Ok(Extension { extn_id: oid, critical: false, extn_value: OctetString::new(value).map_err(err)? })
}

fn sign_tbs(tbs: TbsCertificate, key: &p256::ecdsa::SigningKey) -> Result<Certificate, String> {
    use signature::Signer;
    let tbs_der = tbs.to_der().map_err(err)?;
    let sig: p256::ecdsa::Signature = key.sign(&tbs_der);
    Ok(Certificate {
        tbs_certificate: tbs,
        signature_algorithm: ecdsa_sha256(),
        signature: BitString::from_bytes(sig.to_der().as_bytes()).map_err(err)?,
    })
}

fn spki_of(key: &p256::ecdsa::SigningKey) -> Result<SubjectPublicKeyInfoOwned, String> {
    let der = key.verifying_key().to_public_key_der().map_err(err)?;
    SubjectPublicKeyInfoOwned::from_der(der.as_bytes()).map_err(err)
}

fn b64d(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD.decode(text).map_err(err)
}

impl MockAttestationCa {
    /// Make a root and an f9 key/certificate for one mock token.
    pub fn generate(_serial: u32, _firmware: (u8, u8, u8)) -> Result<Self, String> {
        let root_key = p256::ecdsa::SigningKey::random(&mut OsRng);
        let f9_key = p256::ecdsa::SigningKey::random(&mut OsRng);
        let root_name = Name::from_str(ROOT_SUBJECT).map_err(err)?;
        let validity = long_validity()?;
        // pathlen 0 like Yubico's U2F root: the verifier must not enforce it.
        let constraints = BasicConstraints { ca: true, path_len_constraint: Some(0) };
        let root_tbs = TbsCertificate {
            version: Version::V3,
            serial_number: random_serial()?,
            signature: ecdsa_sha256(),
            issuer: root_name.clone(),
            validity,
            subject: root_name.clone(),
            subject_public_key_info: spki_of(&root_key)?,
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions: Some(vec![Extension {
                extn_id: <BasicConstraints as der::oid::AssociatedOid>::OID,
                critical: true,
                extn_value: OctetString::new(constraints.to_der().map_err(err)?).map_err(err)?,
            }]),
        };
        let root = sign_tbs(root_tbs, &root_key)?;
        // No basicConstraints, as on some real f9 certificates.
        let f9_tbs = TbsCertificate {
            version: Version::V3,
            serial_number: random_serial()?,
            signature: ecdsa_sha256(),
            issuer: root_name,
            validity,
            subject: Name::from_str(F9_SUBJECT).map_err(err)?,
            subject_public_key_info: spki_of(&f9_key)?,
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions: None,
        };
        let f9 = sign_tbs(f9_tbs, &root_key)?;
        let b64 = |c: &Certificate| c.to_der().map(|d| base64::engine::general_purpose::STANDARD.encode(d)).map_err(err);
        Ok(MockAttestationCa {
            root_key_pkcs8: root_key.to_pkcs8_pem(LineEnding::LF).map_err(err)?.to_string(),
            root_certificate: b64(&root)?,
            f9_key_pkcs8: f9_key.to_pkcs8_pem(LineEnding::LF).map_err(err)?.to_string(),
            f9_certificate: b64(&f9)?,
        })
    }

    /// DER of the root certificate (what a verifier is configured with).
    pub fn root_der(&self) -> Result<Vec<u8>, String> {
        b64d(&self.root_certificate)
    }

    /// DER of the f9 certificate.
    pub fn f9_der(&self) -> Result<Vec<u8>, String> {
        b64d(&self.f9_certificate)
    }

    /// PEM of the root certificate; empty if the state is corrupt (the verifier then says so).
    pub fn root_pem(&self) -> String {
        self.root_der()
            .ok()
            .and_then(|d| Certificate::from_der(&d).ok())
            .and_then(|c| c.to_pem(LineEnding::LF).ok())
            .unwrap_or_default()
    }

    /// The attestation certificate for a slot key, as a YubiKey answers INS 0xF9.
    pub fn attest(
        &self,
        slot: Slot,
        spki_der: &[u8],
        serial: u32,
        firmware: (u8, u8, u8),
        pin: PinPolicy,
        touch: TouchPolicy,
    ) -> Result<Attestation, String> {
        let f9_der = self.f9_der()?;
        let f9 = Certificate::from_der(&f9_der).map_err(err)?;
        let f9_key = p256::ecdsa::SigningKey::from_pkcs8_pem(&self.f9_key_pkcs8).map_err(err)?;
        let tbs = TbsCertificate {
            version: Version::V3,
            serial_number: random_serial()?,
            signature: ecdsa_sha256(),
            issuer: f9.tbs_certificate.subject.clone(),
            validity: f9.tbs_certificate.validity,
            subject: Name::from_str(&format!("CN=YubiKey PIV Attestation {slot}")).map_err(err)?,
            subject_public_key_info: SubjectPublicKeyInfoOwned::from_der(spki_der).map_err(err)?,
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions: Some(vec![
                raw_extension(OID_FIRMWARE, vec![firmware.0, firmware.1, firmware.2])?,
                raw_extension(OID_SERIAL, serial.to_der().map_err(err)?)?,
                raw_extension(OID_POLICY, vec![pin.yubico_byte(), touch.yubico_byte()])?,
                raw_extension(OID_FORM_FACTOR, vec![FORM_FACTOR])?,
            ]),
        };
        let cert = sign_tbs(tbs, &f9_key)?;
        Ok(Attestation { slot_certificate_der: cert.to_der().map_err(err)?, intermediate_der: f9_der })
    }
}
