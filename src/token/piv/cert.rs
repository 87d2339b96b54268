//! Certificates in PIV slots: reading a slot's public key (and keytap's policy record) from one,
//! and building the self-signed certificate `keytap setup` writes next to a new key.
//!
//! The policy is recorded with Yubico's PIN/touch policy extension (1.3.6.1.4.1.41482.3.8, two
//! bytes: PIN 1 never, 2 once, 3 always; touch 1 never, 2 always, 3 cached), the same encoding
//! YubiKey attestation certificates use, so cards without slot metadata still list it.

use der::{Decode, Encode};
use ssh_key::public::KeyData;

use crate::attest::x509::OID_POLICY;
use crate::token::{KeyAlgorithm, KeyInfo, PinPolicy, TokenError, TokenResult, TouchPolicy};

/// 2.5.4.3 commonName.
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];

fn bad(what: &str, e: impl std::fmt::Display) -> TokenError {
    TokenError::Other(format!("{what}: {e}"))
}

/// Algorithm and SSH public key of a SubjectPublicKeyInfo.
pub fn key_from_spki(spki: &[u8]) -> TokenResult<(KeyAlgorithm, KeyData)> {
    use p256::pkcs8::DecodePublicKey;
    if let Ok(k) = p256::PublicKey::from_public_key_der(spki) {
        return Ok((KeyAlgorithm::P256, ssh_key::public::EcdsaPublicKey::from(p256::ecdsa::VerifyingKey::from(k)).into()));
    }
    if let Ok(k) = p384::PublicKey::from_public_key_der(spki) {
        return Ok((KeyAlgorithm::P384, ssh_key::public::EcdsaPublicKey::from(p384::ecdsa::VerifyingKey::from(k)).into()));
    }
    if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_der(spki) {
        return Ok((KeyAlgorithm::Ed25519, ssh_key::public::Ed25519PublicKey::from(k).into()));
    }
    if let Ok(k) = rsa::RsaPublicKey::from_public_key_der(spki) {
        use rsa::traits::PublicKeyParts;
        if k.size() != 256 {
            return Err(TokenError::Unsupported(format!("RSA-{} keys (keytap uses RSA-2048)", k.size() * 8)));
        }
        let key = ssh_key::public::RsaPublicKey::try_from(k).map_err(|e| bad("RSA key", e))?;
        return Ok((KeyAlgorithm::Rsa2048, key.into()));
    }
    Err(TokenError::Unsupported("a key type other than P-256, P-384, Ed25519 or RSA-2048".into()))
}

/// Public key and recorded policy (if any) of a slot certificate.
#[allow(clippy::type_complexity)]
pub fn key_from_certificate(der: &[u8]) -> TokenResult<(KeyAlgorithm, KeyData, Option<(PinPolicy, TouchPolicy)>)> {
    let cert = x509_cert::Certificate::from_der(der).map_err(|e| bad("certificate", e))?;
    let tbs = &cert.tbs_certificate;
    let spki = tbs.subject_public_key_info.to_der().map_err(|e| bad("certificate key", e))?;
    let (alg, key) = key_from_spki(&spki)?;
    let policy = tbs.extensions.as_ref().and_then(|exts| {
        exts.iter()
            .find(|e| e.extn_id == OID_POLICY)
            .and_then(|e| policy_from_bytes(e.extn_value.as_bytes()))
    });
    Ok((alg, key, policy))
}

fn policy_from_bytes(b: &[u8]) -> Option<(PinPolicy, TouchPolicy)> {
    Some((PinPolicy::from_yubico_byte(*b.first()?)?, TouchPolicy::from_yubico_byte(*b.get(1)?)?))
}

/// A PIV data object is `70 <cert> 71 <info> [FE]`; return the certificate inside, or the
/// input when it is a bare certificate.
pub fn strip_object_wrapper(object: &[u8]) -> Vec<u8> {
    if object.first() == Some(&0x70) {
        if let Some((value, _)) = read_tlv(&object[1..]) {
            return value.to_vec();
        }
    }
    object.to_vec()
}

/// Length-prefixed value after a tag byte: (value, rest).
fn read_tlv(after_tag: &[u8]) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = after_tag.split_first()?;
    let (len, rest) = match first {
        n if n < 0x80 => (n as usize, rest),
        0x81 => (*rest.first()? as usize, &rest[1..]),
        0x82 => (u16::from_be_bytes([*rest.first()?, *rest.get(1)?]) as usize, &rest[2..]),
        _ => return None,
    };
    (rest.len() >= len).then(|| (&rest[..len], &rest[len..]))
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x100 {
        out.extend_from_slice(&[0x81, n as u8]);
    } else {
        out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(content);
    out
}

fn seq(parts: &[&[u8]]) -> Vec<u8> {
    tlv(0x30, &parts.concat())
}

/// DER algorithm identifier of the certificate signature for a key algorithm.
fn signature_algorithm(alg: KeyAlgorithm) -> Vec<u8> {
    match alg {
        // ecdsa-with-SHA256 / SHA384 (no parameters).
        KeyAlgorithm::P256 => seq(&[&tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02])]),
        KeyAlgorithm::P384 => seq(&[&tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03])]),
        KeyAlgorithm::Ed25519 => seq(&[&tlv(0x06, &[0x2b, 0x65, 0x70])]),
        // sha256WithRSAEncryption, NULL parameters.
        KeyAlgorithm::Rsa2048 => {
            seq(&[&tlv(0x06, &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b]), &[0x05, 0x00]])
        }
    }
}

/// UTCTime for a Unix time (valid until 2049, which is all notBefore needs).
fn utc_time(unix: u64) -> Vec<u8> {
    let days = (unix / 86400) as i64;
    let secs = unix % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let s = format!("{:02}{:02}{:02}{:02}{:02}{:02}Z", y % 100, m, d, secs / 3600, secs / 60 % 60, secs % 60);
    tlv(0x17, s.as_bytes())
}

/// Build a self-signed certificate for `key` (SPKI `spki`) whose TBS part `sign` signs on the
/// card (it gets the TBS bytes and returns the token's raw signature).
pub fn self_signed(
    key: &KeyInfo,
    spki: &[u8],
    sign: impl FnOnce(&[u8]) -> TokenResult<Vec<u8>>,
) -> TokenResult<Vec<u8>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut serial = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut serial);
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    let cn = format!("keytap {}/{}", key.serial, key.slot);
    let name = seq(&[&tlv(0x31, &seq(&[&tlv(0x06, OID_CN), &tlv(0x0c, cn.as_bytes())]))]);
    let validity = seq(&[&utc_time(now), &tlv(0x18, b"99991231235959Z")]);
    let policy = [key.pin_policy.yubico_byte(), key.touch_policy.yubico_byte()];
    let extension = seq(&[&tlv(0x06, OID_POLICY.as_bytes()), &tlv(0x04, &policy)]);
    let extensions = tlv(0xa3, &seq(&[&extension]));
    let sig_alg = signature_algorithm(key.algorithm);
    let tbs = seq(&[
        &tlv(0xa0, &tlv(0x02, &[2])),
        &tlv(0x02, &serial),
        &sig_alg,
        &name,
        &validity,
        &name,
        spki,
        &extensions,
    ]);
    let signature = sign(&tbs)?;
    let mut bits = vec![0u8];
    bits.extend_from_slice(&signature);
    let der = seq(&[&tbs, &sig_alg, &tlv(0x03, &bits)]);
    // Parse it back: a malformed certificate must never reach the card.
    x509_cert::Certificate::from_der(&der).map_err(|e| bad("building the certificate", e))?;
    Ok(der)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Slot;

    #[test]
    fn self_signed_certificate_round_trips_key_and_policy() {
        use p256::pkcs8::EncodePublicKey;
        use signature::Signer;
        let sk = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let spki = sk.verifying_key().to_public_key_der().unwrap();
        let (alg, public_key) = key_from_spki(spki.as_bytes()).unwrap();
        assert_eq!(alg, KeyAlgorithm::P256);
        let key = KeyInfo {
            serial: 7,
            slot: Slot(0x9a),
            algorithm: alg,
            pin_policy: PinPolicy::Always,
            touch_policy: TouchPolicy::Cached,
            public_key: public_key.clone(),
            fido: None,
        };
        let der = self_signed(&key, spki.as_bytes(), |tbs| {
            let sig: p256::ecdsa::Signature = sk.sign(tbs);
            Ok(sig.to_der().as_bytes().to_vec())
        })
        .unwrap();
        let (alg2, key2, policy) = key_from_certificate(&der).unwrap();
        assert_eq!((alg2, key2), (KeyAlgorithm::P256, public_key));
        assert_eq!(policy, Some((PinPolicy::Always, TouchPolicy::Cached)));
        // The signature verifies over the TBS part.
        let cert = x509_cert::Certificate::from_der(&der).unwrap();
        let tbs = cert.tbs_certificate.to_der().unwrap();
        let sig = p256::ecdsa::Signature::from_der(cert.signature.raw_bytes()).unwrap();
        use signature::Verifier;
        assert!(sk.verifying_key().verify(&tbs, &sig).is_ok());
        assert!(sk.verifying_key().verify(b"other", &sig).is_err());
    }

    #[test]
    fn utc_time_is_civil() {
        assert_eq!(utc_time(0), tlv(0x17, b"700101000000Z"));
        assert_eq!(utc_time(1_795_000_000), tlv(0x17, b"261118110640Z"));
    }

    #[test]
    fn object_wrapper_is_stripped() {
        let cert = vec![0x30, 0x03, 1, 2, 3];
        let mut object = tlv(0x70, &cert);
        object.extend_from_slice(&[0x71, 0x01, 0x00]);
        assert_eq!(strip_object_wrapper(&object), cert);
        assert_eq!(strip_object_wrapper(&cert), cert);
    }
}
