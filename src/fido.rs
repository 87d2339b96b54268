//! FIDO security keys (sk-ecdsa / sk-ed25519): keys whose private half never leaves a FIDO2
//! authenticator. The agent holds only public data and the key handle (the credential ID) of
//! each loaded key, and signs exactly as OpenSSH's sk-usbhid middleware does.
//!
//! - [`ffi`]: the one thin libfido2 wrapper (the only `unsafe` in keytap).
//! - [`device`]: a FIDO device as a [`crate::token::Token`], owned by one thread.
//! - [`store`]: the loaded sk keys, persisted as public data and key handles.
//! - [`command`]: `keytap setup --fido` and `keytap fido load`.

pub mod command;
pub mod device;
pub mod ffi;
pub mod store;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ssh_encoding::Encode;
use ssh_key::private::KeypairData;
use ssh_key::public::KeyData;

/// Key flags (OpenSSH `sk-api.h`), also the authenticatorData flag bits for UP and UV.
pub const FLAG_USER_PRESENCE: u8 = 0x01;
pub const FLAG_USER_VERIFICATION: u8 = 0x04;
pub const FLAG_RESIDENT: u8 = 0x20;

pub const ALG_SK_ECDSA: &str = "sk-ecdsa-sha2-nistp256@openssh.com";
pub const ALG_SK_ED25519: &str = "sk-ssh-ed25519@openssh.com";

/// One loaded sk key: public data and the key handle, never a secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkKey {
    /// The public key as an OpenSSH line (`sk-ssh-ed25519@openssh.com AAAA...`).
    #[serde(with = "public_line")]
    pub public_key: KeyData,
    pub flags: u8,
    #[serde(with = "hex_bytes")]
    pub key_handle: Vec<u8>,
    pub comment: String,
    /// The device that last answered for this key handle, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl SkKey {
    /// An sk private record (agent ADD_IDENTITY, or an openssh-key-v1 file); `None` for any
    /// other key type.
    pub fn from_keypair(keypair: &KeypairData, comment: &str) -> Option<SkKey> {
        let (public_key, flags, key_handle) = match keypair {
            KeypairData::SkEcdsaSha2NistP256(k) => (KeyData::SkEcdsaSha2NistP256(k.public().clone()), k.flags(), k.key_handle()),
            KeypairData::SkEd25519(k) => (KeyData::SkEd25519(k.public().clone()), k.flags(), k.key_handle()),
            _ => return None,
        };
        Some(SkKey { public_key, flags, key_handle: key_handle.to_vec(), comment: comment.to_string(), device: None })
    }

    /// Parse an sk key file as `ssh-keygen -t ed25519-sk` writes it (openssh-key-v1, no
    /// passphrase: it holds no secret).
    pub fn from_private_file(text: &str) -> Result<SkKey, String> {
        let key = ssh_key::PrivateKey::from_openssh(text).map_err(|e| format!("not an OpenSSH private key file: {e}"))?;
        if key.is_encrypted() {
            return Err("the key file is passphrase-protected; remove the passphrase (`ssh-keygen -p`): sk key files hold no secret".into());
        }
        SkKey::from_keypair(key.key_data(), key.comment())
            .ok_or_else(|| format!("{} is not a FIDO (sk) key", key.algorithm()))
    }

    /// The openssh-key-v1 private file for this key (no secret inside, so no passphrase).
    pub fn to_private_file(&self) -> Result<String, String> {
        let keypair = match &self.public_key {
            KeyData::SkEcdsaSha2NistP256(p) => {
                KeypairData::SkEcdsaSha2NistP256(ssh_key::private::SkEcdsaSha2NistP256::new(p.clone(), self.flags, self.key_handle.clone()).map_err(|e| e.to_string())?)
            }
            KeyData::SkEd25519(p) => {
                KeypairData::SkEd25519(ssh_key::private::SkEd25519::new(p.clone(), self.flags, self.key_handle.clone()).map_err(|e| e.to_string())?)
            }
            _ => return Err("not an sk key".into()),
        };
        let key = ssh_key::PrivateKey::new(keypair, self.comment.clone()).map_err(|e| e.to_string())?;
        key.to_openssh(ssh_key::LineEnding::LF).map(|s| s.to_string()).map_err(|e| e.to_string())
    }

    pub fn application(&self) -> &str {
        application(&self.public_key).unwrap_or("")
    }

    pub fn fingerprint(&self) -> String {
        self.public_key.fingerprint(ssh_key::HashAlg::Sha256).to_string()
    }

    pub fn public_line(&self) -> String {
        ssh_key::PublicKey::new(self.public_key.clone(), self.comment.clone()).to_openssh().expect("encoding a public key cannot fail")
    }

    pub fn is_ecdsa(&self) -> bool {
        matches!(self.public_key, KeyData::SkEcdsaSha2NistP256(_))
    }

    pub fn needs_touch(&self) -> bool {
        self.flags & FLAG_USER_PRESENCE != 0
    }

    pub fn needs_verification(&self) -> bool {
        self.flags & FLAG_USER_VERIFICATION != 0
    }

    /// "Websafe" (as OpenSSH's agent): a key whose application is not `ssh:*` was made for the
    /// web; it may sign only SSH userauth and SSHSIG data, never something that could pass as a
    /// web assertion.
    pub fn websafe_allows(&self, purpose: &crate::purpose::Purpose) -> Result<(), String> {
        if self.application().starts_with("ssh:") || !matches!(purpose, crate::purpose::Purpose::Raw) {
            Ok(())
        } else {
            Err(format!(
                "key application {:?} is not ssh:*; such a key signs only SSH logins and SSHSIG data (websafe rule)",
                self.application()
            ))
        }
    }
}

/// The application (rpId) of an sk public key.
pub fn application(key: &KeyData) -> Option<&str> {
    match key {
        KeyData::SkEcdsaSha2NistP256(k) => Some(k.application()),
        KeyData::SkEd25519(k) => Some(k.application()),
        _ => None,
    }
}

/// Is this an sk key type?
pub fn is_sk(key: &KeyData) -> bool {
    application(key).is_some()
}

/// The clientDataHash for signing `data`: always SHA-256(data), as sk-usbhid via libfido2.
pub fn client_data_hash(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// The message the authenticator signed and sshd checks:
/// SHA-256(application) ‖ flags ‖ counter ‖ SHA-256(data).
fn signed_message(application: &str, flags: u8, counter: u32, data: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(69);
    m.extend_from_slice(&Sha256::digest(application.as_bytes()));
    m.push(flags);
    m.extend_from_slice(&counter.to_be_bytes());
    m.extend_from_slice(&Sha256::digest(data));
    m
}

/// Check an assertion against the key before handing it out, so an answer from the wrong
/// device (or a corrupted one) is never passed on as a signature.
pub fn verify_assertion(key: &SkKey, data: &[u8], assertion: &ffi::Assertion) -> Result<(), String> {
    let m = signed_message(key.application(), assertion.flags, assertion.counter, data);
    match &key.public_key {
        KeyData::SkEcdsaSha2NistP256(k) => {
            // ring, as the mock token: RustCrypto's P-256 verification alone was ~40% of the
            // agent's time per sk signature (docs/performance.md).
            let vk = ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, k.ec_point().as_bytes());
            vk.verify(&m, &assertion.signature).map_err(|_| "the device's signature does not verify against this key".to_string())
        }
        KeyData::SkEd25519(k) => {
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&k.public_key().0).map_err(|e| e.to_string())?;
            let sig: [u8; 64] = assertion.signature.as_slice().try_into().map_err(|_| format!("Ed25519 signature of {} bytes", assertion.signature.len()))?;
            vk.verify_strict(&m, &ed25519_dalek::Signature::from_bytes(&sig))
                .map_err(|_| "the device's signature does not verify against this key".to_string())
        }
        _ => Err("not an sk key".into()),
    }
}

/// The SSH signature blob for an assertion (OpenSSH `ssh-sk.c`): for ECDSA
/// `string alg, string(mpint r, mpint s), byte flags, uint32 counter`; for Ed25519
/// `string alg, string sig, byte flags, uint32 counter`. Written here because ssh-key 0.6 puts
/// the ECDSA trailer inside the inner string.
pub fn signature_blob(key: &SkKey, assertion: &ffi::Assertion) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let enc = |e: ssh_encoding::Error| e.to_string();
    if key.is_ecdsa() {
        let sig = p256::ecdsa::Signature::from_der(&assertion.signature).map_err(|e| format!("malformed ECDSA signature: {e}"))?;
        let mut inner = Vec::new();
        for half in [sig.r().to_bytes(), sig.s().to_bytes()] {
            ssh_key::Mpint::from_positive_bytes(&half).map_err(|e| e.to_string())?.encode(&mut inner).map_err(enc)?;
        }
        ALG_SK_ECDSA.encode(&mut out).map_err(enc)?;
        inner.encode(&mut out).map_err(enc)?;
    } else {
        if assertion.signature.len() != 64 {
            return Err(format!("Ed25519 signature of {} bytes", assertion.signature.len()));
        }
        ALG_SK_ED25519.encode(&mut out).map_err(enc)?;
        assertion.signature.encode(&mut out).map_err(enc)?;
    }
    out.push(assertion.flags);
    out.extend_from_slice(&assertion.counter.to_be_bytes());
    Ok(out)
}

mod public_line {
    use serde::{Deserialize, Deserializer, Serializer};
    use ssh_key::public::KeyData;

    pub fn serialize<S: Serializer>(key: &KeyData, s: S) -> Result<S::Ok, S::Error> {
        let line = ssh_key::PublicKey::new(key.clone(), "").to_openssh().map_err(serde::ser::Error::custom)?;
        s.serialize_str(line.trim())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<KeyData, D::Error> {
        let line = String::deserialize(d)?;
        ssh_key::PublicKey::from_openssh(&line).map(|k| k.key_data().clone()).map_err(serde::de::Error::custom)
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_encoding::Encode;

    fn string(out: &mut Vec<u8>, b: &[u8]) {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    }

    /// An openssh-key-v1 file as ssh-keygen writes one for an sk key (PROTOCOL.key: magic,
    /// cipher "none", kdf "none", empty kdf options, one key, the public blob, then the private
    /// section: two equal checkints, the sk record, the comment, padding 1, 2, 3...), built
    /// here byte by byte from the spec, not with keytap's own encoder.
    fn ssh_keygen_style_file(public_blob: &[u8], record: &[u8], comment: &str) -> String {
        let mut private = Vec::new();
        private.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        private.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        private.extend_from_slice(record);
        string(&mut private, comment.as_bytes());
        let mut pad = 1u8;
        while private.len() % 8 != 0 {
            private.push(pad);
            pad += 1;
        }
        let mut file = b"openssh-key-v1\0".to_vec();
        string(&mut file, b"none");
        string(&mut file, b"none");
        string(&mut file, b"");
        file.extend_from_slice(&1u32.to_be_bytes());
        string(&mut file, public_blob);
        string(&mut file, &private);
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&file);
        let mut text = String::from("-----BEGIN OPENSSH PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(70) {
            text.push_str(std::str::from_utf8(chunk).unwrap());
            text.push('\n');
        }
        text.push_str("-----END OPENSSH PRIVATE KEY-----\n");
        text
    }

    #[test]
    fn parses_sk_key_files_as_ssh_keygen_writes_them() {
        let handle: Vec<u8> = (0..156u32).map(|i| (i * 7) as u8).collect();
        // Ed25519-sk: string type, string pk(32), string application | byte flags, string kh, string reserved.
        let pk = [0x42u8; 32];
        let mut public = Vec::new();
        string(&mut public, ALG_SK_ED25519.as_bytes());
        string(&mut public, &pk);
        string(&mut public, b"ssh:");
        let mut record = public.clone();
        record.push(0x01);
        string(&mut record, &handle);
        string(&mut record, b"");
        let key = SkKey::from_private_file(&ssh_keygen_style_file(&public, &record, "me@laptop")).unwrap();
        assert_eq!(key.flags, 0x01);
        assert_eq!(key.key_handle, handle);
        assert_eq!(key.application(), "ssh:");
        assert_eq!(key.comment, "me@laptop");
        assert!(key.needs_touch() && !key.needs_verification());
        let mut blob = Vec::new();
        key.public_key.encode(&mut blob).unwrap();
        assert_eq!(blob, public, "the public blob round-trips byte for byte");

        // ECDSA-sk with verify-required and resident bits and a non-default application.
        let point = p256::SecretKey::from_slice(&[7u8; 32]).unwrap().public_key();
        let sec1 = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&point, false);
        let mut public = Vec::new();
        string(&mut public, ALG_SK_ECDSA.as_bytes());
        string(&mut public, b"nistp256");
        string(&mut public, sec1.as_bytes());
        string(&mut public, b"ssh:work");
        let mut record = public.clone();
        record.push(0x25);
        string(&mut record, &handle[..64]);
        string(&mut record, b"");
        let key = SkKey::from_private_file(&ssh_keygen_style_file(&public, &record, "ssh:work")).unwrap();
        assert_eq!((key.flags, key.application(), key.key_handle.len()), (0x25, "ssh:work", 64));
        assert!(key.needs_touch() && key.needs_verification() && key.is_ecdsa());

        // Our own writer's output reads back the same.
        let again = SkKey::from_private_file(&key.to_private_file().unwrap()).unwrap();
        assert_eq!(again, key);
    }

    #[test]
    fn refuses_software_keys_and_garbage() {
        let soft = ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519).unwrap();
        let text = soft.to_openssh(ssh_key::LineEnding::LF).unwrap();
        assert!(SkKey::from_private_file(&text).unwrap_err().contains("not a FIDO (sk) key"));
        assert!(SkKey::from_private_file("hello").unwrap_err().contains("not an OpenSSH private key"));
        assert!(SkKey::from_keypair(soft.key_data(), "").is_none());
    }

    #[test]
    fn websafe_rule_limits_non_ssh_applications() {
        let pk = ssh_key::public::SkEd25519::new(ssh_key::public::Ed25519PublicKey([1; 32]), "https://example.com");
        let key = SkKey { public_key: KeyData::SkEd25519(pk), flags: 1, key_handle: vec![1], comment: String::new(), device: None };
        let raw = crate::purpose::Purpose::Raw;
        let git = crate::purpose::Purpose::SshSig { namespace: "git".into(), hash: "sha512".into() };
        assert!(key.websafe_allows(&raw).unwrap_err().contains("websafe"));
        assert!(key.websafe_allows(&git).is_ok());
    }

    #[test]
    fn signature_blobs_follow_openssh() {
        // Sign M with a software key standing in for the authenticator, then check that
        // ssh-key (an independent decoder and verifier of sk signatures) accepts the blob.
        use p256::ecdsa::signature::Signer;
        let sk = p256::ecdsa::SigningKey::from_slice(&[9u8; 32]).unwrap();
        let point = sk.verifying_key().to_encoded_point(false);
        let public = ssh_key::public::SkEcdsaSha2NistP256::new(point, "ssh:");
        let key = SkKey { public_key: KeyData::SkEcdsaSha2NistP256(public), flags: 1, key_handle: vec![1], comment: String::new(), device: None };
        let data = b"data to sign";
        let m = signed_message("ssh:", 0x05, 77, data);
        let sig: p256::ecdsa::Signature = sk.sign(&m);
        let assertion = ffi::Assertion { flags: 0x05, counter: 77, signature: sig.to_der().as_bytes().to_vec() };
        verify_assertion(&key, data, &assertion).unwrap();
        let blob = signature_blob(&key, &assertion).unwrap();
        let parsed = ssh_key::Signature::try_from(blob.as_slice()).unwrap();
        signature::Verifier::verify(&key.public_key, data, &parsed).unwrap();
        let bad = ffi::Assertion { flags: 0x01, ..assertion };
        assert!(verify_assertion(&key, data, &bad).is_err(), "flags are covered by the signature");
    }
}
