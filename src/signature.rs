//! From an SSH sign request to a token's sign scheme, and from the token's raw signature back
//! to an SSH signature.

use ssh_key::public::KeyData;
use ssh_key::{Algorithm, EcdsaCurve, HashAlg, Signature};

use crate::token::SignScheme;

/// Agent sign-request flags (PROTOCOL.agent).
pub const SSH_AGENT_RSA_SHA2_256: u32 = 0x02;
pub const SSH_AGENT_RSA_SHA2_512: u32 = 0x04;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemeError {
    #[error("refusing SHA-1 `ssh-rsa` signature; the client must ask for rsa-sha2-256 or rsa-sha2-512 (OpenSSH 7.2+ does)")]
    RsaSha1,
    #[error("key type {0} is not supported by keytap")]
    UnsupportedKey(String),
    #[error("token returned a malformed signature: {0}")]
    Malformed(String),
}

/// The sign scheme an SSH request asks for, given the key and the request flags.
pub fn scheme_for(key: &KeyData, flags: u32) -> Result<SignScheme, SchemeError> {
    match key.algorithm() {
        Algorithm::Ecdsa { curve: EcdsaCurve::NistP256 } => Ok(SignScheme::EcdsaSha256),
        Algorithm::Ecdsa { curve: EcdsaCurve::NistP384 } => Ok(SignScheme::EcdsaSha384),
        Algorithm::Ed25519 => Ok(SignScheme::Ed25519),
        Algorithm::Rsa { .. } => {
            if flags & SSH_AGENT_RSA_SHA2_512 != 0 {
                Ok(SignScheme::RsaPkcs1Sha512)
            } else if flags & SSH_AGENT_RSA_SHA2_256 != 0 {
                Ok(SignScheme::RsaPkcs1Sha256)
            } else {
                Err(SchemeError::RsaSha1)
            }
        }
        other => Err(SchemeError::UnsupportedKey(other.to_string())),
    }
}

/// Wrap a token's raw signature (DER ECDSA, 64-byte Ed25519, PKCS#1 RSA) as an SSH signature.
pub fn ssh_signature(scheme: SignScheme, raw: &[u8]) -> Result<Signature, SchemeError> {
    let malformed = |e: &dyn std::fmt::Display| SchemeError::Malformed(e.to_string());
    match scheme {
        SignScheme::EcdsaSha256 => {
            let sig = p256::ecdsa::Signature::from_der(raw).map_err(|e| malformed(&e))?;
            Signature::try_from(sig).map_err(|e| malformed(&e))
        }
        SignScheme::EcdsaSha384 => {
            let sig = p384::ecdsa::Signature::from_der(raw).map_err(|e| malformed(&e))?;
            Signature::try_from(sig).map_err(|e| malformed(&e))
        }
        SignScheme::Ed25519 => {
            if raw.len() != 64 {
                return Err(SchemeError::Malformed(format!("Ed25519 signature of {} bytes", raw.len())));
            }
            Signature::new(Algorithm::Ed25519, raw.to_vec()).map_err(|e| malformed(&e))
        }
        SignScheme::RsaPkcs1Sha256 => {
            Signature::new(Algorithm::Rsa { hash: Some(HashAlg::Sha256) }, raw.to_vec()).map_err(|e| malformed(&e))
        }
        SignScheme::RsaPkcs1Sha512 => {
            Signature::new(Algorithm::Rsa { hash: Some(HashAlg::Sha512) }, raw.to_vec()).map_err(|e| malformed(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_without_sha2_flag_is_refused() {
        let key = ssh_key::PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap();
        assert_eq!(scheme_for(key.public_key().key_data(), 0), Ok(SignScheme::Ed25519));
        let rsa_pub = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 1024).unwrap().to_public_key();
        let rsa_key: KeyData = ssh_key::public::RsaPublicKey::try_from(rsa_pub).unwrap().into();
        assert_eq!(scheme_for(&rsa_key, 0), Err(SchemeError::RsaSha1));
        assert_eq!(scheme_for(&rsa_key, SSH_AGENT_RSA_SHA2_256), Ok(SignScheme::RsaPkcs1Sha256));
        assert_eq!(scheme_for(&rsa_key, SSH_AGENT_RSA_SHA2_512 | SSH_AGENT_RSA_SHA2_256), Ok(SignScheme::RsaPkcs1Sha512));
    }

    #[test]
    fn malformed_raw_signatures_are_errors() {
        assert!(ssh_signature(SignScheme::EcdsaSha256, b"\x30\x02garbage").is_err());
        assert!(ssh_signature(SignScheme::Ed25519, &[0u8; 63]).is_err());
    }
}
