//! SSH server host keys as OpenSSH sends them to an agent: a plain key or a host certificate,
//! and the verification of a signature made with one (the session-bind proof).
//!
//! Every host key type OpenSSH sends is handled: Ed25519, ECDSA P-256/384/521, RSA from 1024
//! up to 16384 bits (`rsa-sha2-256`, `rsa-sha2-512` and SHA-1 `ssh-rsa`, as ssh-agent accepts
//! them), and security-key (`sk-*`) host keys. A certificate's CA signature is checked when
//! the blob is read, as OpenSSH's `sshkey_froms` does; whether the CA is trusted is for the
//! caller (known_hosts `@cert-authority` lines).

use ssh_encoding::{Decode, Encode};
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, HashAlg};

/// OpenSSH refuses RSA keys below this many bits (`SSH_RSA_MINIMUM_MODULUS_SIZE`).
const RSA_MIN_BITS: usize = 1024;
/// OpenSSH's largest RSA key (`SSHBUF_MAX_BIGNUM` * 8).
const RSA_MAX_BITS: usize = 16384;

/// OpenSSH certificate type of a host certificate (`SSH2_CERT_TYPE_HOST`).
pub const CERT_TYPE_HOST: u32 = 2;

/// A host key as sent on the wire: the blob, its plain key, and the certificate if it is one.
/// Two host keys are the same when their blobs are (as OpenSSH's `sshkey_equal` for a
/// certificate compares the whole certificate).
#[derive(Clone, Debug)]
pub struct HostKey {
    blob: Vec<u8>,
    key: KeyData,
    certificate: Option<Box<CertInfo>>,
}

/// What a certificate says (`PROTOCOL.certkeys`). Read here rather than with ssh-key, whose
/// decoder refuses the `valid_before` of a certificate valid "forever", the default of
/// `ssh-keygen -s` for host certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub cert_type: u32,
    /// For display: bytes that are not UTF-8 are replaced.
    pub key_id: String,
    pub principals: Vec<String>,
    pub valid_after: u64,
    pub valid_before: u64,
    /// The CA key that signed it.
    pub signature_key: KeyData,
}

impl CertInfo {
    /// A host certificate valid at `now` (Unix seconds).
    pub fn valid_host_at(&self, now: u64) -> bool {
        self.cert_type == CERT_TYPE_HOST && self.valid_after <= now && now < self.valid_before
    }
}

impl PartialEq for HostKey {
    fn eq(&self, other: &Self) -> bool {
        self.blob == other.blob
    }
}

impl Eq for HostKey {}

impl HostKey {
    /// Read a host key blob: a plain key, or a certificate whose CA signature verifies.
    pub fn from_blob(blob: &[u8]) -> Result<HostKey, String> {
        let name = String::decode(&mut &blob[..]).map_err(|e| format!("host key: {e}"))?;
        if let Some(base) = name.strip_suffix("-cert-v01@openssh.com") {
            // Security-key types keep their `@openssh.com` suffix as plain keys.
            let plain = if base.starts_with("sk-") { format!("{base}@openssh.com") } else { base.to_string() };
            let (key, certificate) = parse_certificate(blob, &plain).map_err(|e| format!("host certificate: {e}"))?;
            return Ok(HostKey { blob: blob.to_vec(), key, certificate: Some(Box::new(certificate)) });
        }
        let mut reader = blob;
        let key = KeyData::decode(&mut reader).map_err(|e| format!("host key: {e}"))?;
        if !reader.is_empty() {
            return Err("host key: trailing bytes".into());
        }
        Ok(HostKey { blob: blob.to_vec(), key, certificate: None })
    }

    /// The plain public key (a certificate's subject key).
    pub fn key(&self) -> &KeyData {
        &self.key
    }

    pub fn certificate(&self) -> Option<&CertInfo> {
        self.certificate.as_deref()
    }

    pub fn blob(&self) -> &[u8] {
        &self.blob
    }

    /// SHA256 fingerprint of the plain key, as OpenSSH prints it for a key or a certificate.
    pub fn fingerprint(&self) -> String {
        self.key.fingerprint(HashAlg::Sha256).to_string()
    }

    /// Verify `signature` (an SSH signature blob) over `message` with this host key.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), String> {
        verify(&self.key, message, signature)
    }
}

/// Read a certificate of the plain key type `plain` and check its CA signature, which covers
/// everything before the signature field.
fn parse_certificate(blob: &[u8], plain: &str) -> Result<(KeyData, CertInfo), String> {
    let malformed = |what: &str| format!("malformed {what}");
    let r = &mut &blob[..];
    let _name = String::decode(r).map_err(|_| malformed("type"))?;
    let _nonce = Vec::<u8>::decode(r).map_err(|_| malformed("nonce"))?;
    // The subject key's fields follow in the plain key's layout: read them as a plain key.
    let mut plain_blob = Vec::new();
    plain.encode(&mut plain_blob).map_err(|_| malformed("type"))?;
    plain_blob.extend_from_slice(r);
    let mut plain_reader = &plain_blob[..];
    let key = KeyData::decode(&mut plain_reader).map_err(|e| format!("malformed subject key: {e}"))?;
    *r = &r[r.len() - plain_reader.len()..];
    let _serial = u64::decode(r).map_err(|_| malformed("serial"))?;
    let cert_type = u32::decode(r).map_err(|_| malformed("certificate type"))?;
    let key_id = Vec::<u8>::decode(r).map_err(|_| malformed("key id"))?;
    let packed = Vec::<u8>::decode(r).map_err(|_| malformed("principals"))?;
    let mut principals = Vec::new();
    let mut p = &packed[..];
    while !p.is_empty() {
        let principal = Vec::<u8>::decode(&mut p).map_err(|_| malformed("principals"))?;
        principals.push(String::from_utf8_lossy(&principal).into_owned());
    }
    let valid_after = u64::decode(r).map_err(|_| malformed("validity"))?;
    let valid_before = u64::decode(r).map_err(|_| malformed("validity"))?;
    for what in ["critical options", "extensions", "reserved"] {
        Vec::<u8>::decode(r).map_err(|_| malformed(what))?;
    }
    let ca_blob = Vec::<u8>::decode(r).map_err(|_| malformed("CA key"))?;
    let signed_len = blob.len() - r.len();
    let signature = Vec::<u8>::decode(r).map_err(|_| malformed("signature"))?;
    if !r.is_empty() {
        return Err("trailing bytes".into());
    }
    let mut ca_reader = &ca_blob[..];
    let signature_key = KeyData::decode(&mut ca_reader).map_err(|e| format!("malformed CA key: {e}"))?;
    if !ca_reader.is_empty() {
        return Err(malformed("CA key"));
    }
    verify(&signature_key, &blob[..signed_len], &signature).map_err(|e| format!("the CA signature does not verify ({e})"))?;
    let key_id = String::from_utf8_lossy(&key_id).into_owned();
    Ok((key, CertInfo { cert_type, key_id, principals, valid_after, valid_before, signature_key }))
}

/// Verify an SSH signature blob (`string algorithm, string signature`, plus flags and counter
/// for security keys) over `message` with `key`. The whole blob must be used.
pub fn verify(key: &KeyData, message: &[u8], signature: &[u8]) -> Result<(), String> {
    let mut reader = signature;
    let algorithm = String::decode(&mut reader).map_err(|e| format!("malformed signature: {e}"))?;
    let mut data = Vec::<u8>::decode(&mut reader).map_err(|e| format!("malformed signature: {e}"))?;
    if let KeyData::Rsa(rsa_key) = key {
        if !reader.is_empty() {
            return Err("malformed signature: trailing bytes".into());
        }
        return verify_rsa(rsa_key, &algorithm, &data, message);
    }
    if matches!(key, KeyData::SkEd25519(_) | KeyData::SkEcdsaSha2NistP256(_)) {
        // ssh-key keeps a security key's flags and counter at the end of the signature data.
        let flags = u8::decode(&mut reader).map_err(|e| format!("malformed signature: {e}"))?;
        let counter = u32::decode(&mut reader).map_err(|e| format!("malformed signature: {e}"))?;
        data.push(flags);
        data.extend(counter.to_be_bytes());
    }
    if !reader.is_empty() {
        return Err("malformed signature: trailing bytes".into());
    }
    let algorithm = Algorithm::new(&algorithm).map_err(|_| format!("unknown signature algorithm {algorithm:?}"))?;
    if algorithm != key.algorithm() {
        return Err(format!("a {} signature for a {} key", algorithm, key.algorithm()));
    }
    let signature = ssh_key::Signature::new(algorithm, data).map_err(|e| format!("malformed signature: {e}"))?;
    signature::Verifier::verify(key, message, &signature).map_err(|_| "the signature does not verify".to_string())
}

/// RSA PKCS#1 v1.5, with keys up to OpenSSH's 16384 bits (the rsa crate stops at 4096 unless
/// told otherwise) and short signatures left-padded as OpenSSH does.
fn verify_rsa(key: &ssh_key::public::RsaPublicKey, algorithm: &str, signature: &[u8], message: &[u8]) -> Result<(), String> {
    use sha2::Digest;
    let n = key.n.as_positive_bytes().ok_or("RSA key: bad modulus")?;
    let e = key.e.as_positive_bytes().ok_or("RSA key: bad exponent")?;
    let public = rsa::RsaPublicKey::new_with_max_size(rsa::BigUint::from_bytes_be(n), rsa::BigUint::from_bytes_be(e), RSA_MAX_BITS)
        .map_err(|e| format!("RSA key: {e}"))?;
    let size = rsa::traits::PublicKeyParts::size(&public);
    if size * 8 < RSA_MIN_BITS {
        return Err(format!("RSA key of {} bits is below OpenSSH's minimum of {RSA_MIN_BITS}", size * 8));
    }
    if signature.len() > size {
        return Err("RSA signature longer than the modulus".into());
    }
    let mut padded = vec![0u8; size - signature.len()];
    padded.extend_from_slice(signature);
    let (scheme, digest) = match algorithm {
        "rsa-sha2-256" => (rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), sha2::Sha256::digest(message).to_vec()),
        "rsa-sha2-512" => (rsa::Pkcs1v15Sign::new::<sha2::Sha512>(), sha2::Sha512::digest(message).to_vec()),
        "ssh-rsa" => (rsa::Pkcs1v15Sign::new::<sha1::Sha1>(), sha1::Sha1::digest(message).to_vec()),
        other => return Err(format!("a {other} signature for an RSA key")),
    };
    public.verify(scheme, &digest, &padded).map_err(|_| "the signature does not verify".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_encoding::Encode;
    use ssh_key::certificate::{Builder, CertType};
    use ssh_key::{Certificate, PrivateKey};

    fn sig_blob(signature: &ssh_key::Signature) -> Vec<u8> {
        let mut out = Vec::new();
        signature.encode(&mut out).unwrap();
        out
    }

    fn plain(key: &PrivateKey) -> HostKey {
        let mut blob = Vec::new();
        key.public_key().key_data().encode(&mut blob).unwrap();
        HostKey::from_blob(&blob).unwrap()
    }

    #[test]
    fn ed25519_and_ecdsa_signatures_verify_and_tampering_does_not() {
        for algorithm in [
            Algorithm::Ed25519,
            Algorithm::Ecdsa { curve: ssh_key::EcdsaCurve::NistP256 },
            Algorithm::Ecdsa { curve: ssh_key::EcdsaCurve::NistP384 },
            Algorithm::Ecdsa { curve: ssh_key::EcdsaCurve::NistP521 },
        ] {
            let key = PrivateKey::random(&mut rand_core::OsRng, algorithm.clone()).unwrap();
            let host = plain(&key);
            let sig = sig_blob(&signature::Signer::sign(&key, b"session id"));
            assert_eq!(host.verify(b"session id", &sig), Ok(()), "{algorithm}");
            assert!(host.verify(b"session iD", &sig).is_err(), "{algorithm}");
            let mut trailing = sig.clone();
            trailing.push(0);
            assert!(host.verify(b"session id", &trailing).is_err(), "{algorithm}");
        }
    }

    #[test]
    fn rsa_signatures_of_every_hash_verify_also_above_4096_bits() {
        use rsa::traits::PublicKeyParts;
        for bits in [2048, 4104] {
            let private = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, bits).unwrap();
            let mut blob = Vec::new();
            "ssh-rsa".encode(&mut blob).unwrap();
            ssh_key::Mpint::from_positive_bytes(&private.e().to_bytes_be()).unwrap().encode(&mut blob).unwrap();
            ssh_key::Mpint::from_positive_bytes(&private.n().to_bytes_be()).unwrap().encode(&mut blob).unwrap();
            let host = HostKey::from_blob(&blob).unwrap();
            use sha2::Digest;
            let cases: [(&str, rsa::Pkcs1v15Sign, Vec<u8>); 3] = [
                ("rsa-sha2-256", rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), sha2::Sha256::digest(b"sid").to_vec()),
                ("rsa-sha2-512", rsa::Pkcs1v15Sign::new::<sha2::Sha512>(), sha2::Sha512::digest(b"sid").to_vec()),
                ("ssh-rsa", rsa::Pkcs1v15Sign::new::<sha1::Sha1>(), sha1::Sha1::digest(b"sid").to_vec()),
            ];
            for (name, scheme, digest) in cases {
                let raw = private.sign(scheme, &digest).unwrap();
                let mut sig = Vec::new();
                name.encode(&mut sig).unwrap();
                raw.encode(&mut sig).unwrap();
                assert_eq!(host.verify(b"sid", &sig), Ok(()), "{bits} {name}");
                assert!(host.verify(b"other", &sig).is_err(), "{bits} {name}");
            }
        }
    }

    #[test]
    fn a_security_key_host_signature_verifies_over_the_authenticator_data() {
        use sha2::Digest;
        let signing = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        let public = ssh_key::public::Ed25519PublicKey(signing.verifying_key().to_bytes());
        let key = KeyData::SkEd25519(ssh_key::public::SkEd25519::new(public, "ssh:"));
        let (flags, counter) = (1u8, 7u32);
        // What the authenticator signs: H(application) || flags || counter || H(message).
        let signed = [sha2::Sha256::digest(b"ssh:").to_vec(), vec![flags], counter.to_be_bytes().to_vec(), sha2::Sha256::digest(b"sid").to_vec()].concat();
        let raw = ed25519_dalek::Signer::sign(&signing, &signed).to_bytes();
        let mut sig = Vec::new();
        "sk-ssh-ed25519@openssh.com".encode(&mut sig).unwrap();
        raw.as_slice().encode(&mut sig).unwrap();
        sig.push(flags);
        counter.encode(&mut sig).unwrap();
        assert_eq!(verify(&key, b"sid", &sig), Ok(()));
        assert!(verify(&key, b"other", &sig).is_err());
        // Without the flags and counter the blob is malformed.
        assert!(verify(&key, b"sid", &sig[..sig.len() - 5]).is_err());
    }

    #[test]
    fn a_signature_of_another_type_is_refused() {
        let ed = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap();
        let p256 = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ecdsa { curve: ssh_key::EcdsaCurve::NistP256 }).unwrap();
        let sig = sig_blob(&signature::Signer::sign(&p256, b"x"));
        assert!(plain(&ed).verify(b"x", &sig).is_err());
        assert!(plain(&ed).verify(b"x", b"").is_err());
    }

    fn host_cert(ca: &PrivateKey, subject: &PrivateKey) -> Certificate {
        let mut b = Builder::new_with_random_nonce(&mut rand_core::OsRng, subject.public_key().key_data().clone(), 0, 4_000_000_000).unwrap();
        b.cert_type(CertType::Host).unwrap().valid_principal("host.example").unwrap();
        b.sign(ca).unwrap()
    }

    #[test]
    fn a_host_certificate_verifies_with_its_subject_key_and_needs_a_good_ca_signature() {
        let ca = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap();
        let host = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ecdsa { curve: ssh_key::EcdsaCurve::NistP256 }).unwrap();
        let cert = host_cert(&ca, &host);
        let blob = cert.to_bytes().unwrap();
        let parsed = HostKey::from_blob(&blob).unwrap();
        assert_eq!(parsed.key(), host.public_key().key_data());
        let info = parsed.certificate().unwrap();
        assert_eq!(&info.signature_key, ca.public_key().key_data());
        assert_eq!((info.principals.as_slice(), info.key_id.as_str()), (&["host.example".to_string()][..], ""));
        assert!(info.valid_host_at(1_000) && !info.valid_host_at(4_000_000_000));
        assert_eq!(parsed.fingerprint(), host.public_key().fingerprint(HashAlg::Sha256).to_string());
        assert_ne!(parsed, plain(&host), "a certificate is not its plain key");
        let sig = sig_blob(&signature::Signer::sign(&host, b"sid"));
        assert_eq!(parsed.verify(b"sid", &sig), Ok(()));

        // One changed byte in the signed part (the key id's last byte) breaks the CA signature.
        let mut tampered = blob.clone();
        let at = blob.windows(b"host.example".len()).position(|w| w == b"host.example").unwrap();
        tampered[at] ^= 1;
        assert!(HostKey::from_blob(&tampered).unwrap_err().contains("CA signature"), "tampered certificate accepted");
        let mut trailing = blob.clone();
        trailing.push(0);
        assert!(HostKey::from_blob(&trailing).is_err());
    }
}
