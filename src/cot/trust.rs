//! Who may sign a chain-of-trust document: raw Ed25519 keys (Taskcluster's base64 form) and
//! OpenSSH `allowed_signers` entries; and checking a signature against them.

use base64::Engine;
use ed25519_dalek::{Signature as EdSignature, VerifyingKey};
use ssh_key::public::KeyData;
use ssh_key::{HashAlg, PublicKey, SshSig};

/// SSHSIG namespace for chain-of-trust signatures.
pub const NAMESPACE: &str = "chain-of-trust";

/// One `allowed_signers` line keytap understands.
#[derive(Clone, Debug, PartialEq)]
pub struct AllowedSigner {
    pub principals: String,
    pub key: KeyData,
    /// `namespaces="..."`; `None` allows every namespace, as in OpenSSH.
    pub namespaces: Option<Vec<String>>,
}

/// The keys a verifier trusts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrustedKeys {
    pub raw_ed25519: Vec<[u8; 32]>,
    pub signers: Vec<AllowedSigner>,
}

impl TrustedKeys {
    pub fn is_empty(&self) -> bool {
        self.raw_ed25519.is_empty() && self.signers.is_empty()
    }

    /// Add `--trusted-key` values: base64 of the raw 32-byte Ed25519 public key.
    pub fn add_raw_base64(&mut self, b64: &str) -> Result<(), String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| format!("trusted key {b64:?} is not base64 ({e}); pass the base64 of the raw 32-byte Ed25519 key (`keytap cot pubkey`)"))?;
        let raw: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!("trusted key {b64:?} is {} bytes, not 32; pass the base64 of the raw Ed25519 key (`keytap cot pubkey`)", b.len())
        })?;
        VerifyingKey::from_bytes(&raw).map_err(|_| format!("trusted key {b64:?} is not a valid Ed25519 point"))?;
        self.raw_ed25519.push(raw);
        Ok(())
    }

    /// Add the entries of an `allowed_signers` file (principals, options, key type, key).
    pub fn add_allowed_signers(&mut self, text: &str) -> Result<(), String> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let signer = parse_allowed_signer(line).map_err(|e| format!("allowed signers line {}: {e}", n + 1))?;
            if let Some(signer) = signer {
                self.signers.push(signer);
            }
        }
        Ok(())
    }
}

/// Split `s` at every character `is_separator` accepts outside double quotes (quotes are kept).
fn split_unquoted(s: &str, is_separator: impl Fn(char) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars() {
        if c == '"' {
            quoted = !quoted;
        } else if !quoted && is_separator(c) {
            out.push(std::mem::take(&mut cur));
            continue;
        }
        cur.push(c);
    }
    out.push(cur);
    out
}

/// Fields separated by runs of whitespace outside double quotes.
fn fields(line: &str) -> Vec<String> {
    split_unquoted(line, char::is_whitespace).into_iter().filter(|f| !f.is_empty()).collect()
}

/// `Ok(None)` for lines keytap deliberately skips (certificate authorities).
fn parse_allowed_signer(line: &str) -> Result<Option<AllowedSigner>, String> {
    let f = fields(line);
    if f.len() < 3 {
        return Err("expected `principals [options] keytype base64`".into());
    }
    let principals = f[0].clone();
    // Options are present when the second field is not itself a key type.
    let (options, key_at) = if looks_like_key_type(&f[1]) { (None, 1) } else { (Some(f[1].as_str()), 2) };
    let (Some(kind), Some(b64)) = (f.get(key_at), f.get(key_at + 1)) else {
        return Err("expected a key type and base64 key after the options".into());
    };
    let key = PublicKey::from_openssh(&format!("{kind} {b64}")).map_err(|e| format!("bad public key: {e}"))?;
    let mut namespaces = None;
    if let Some(options) = options {
        for opt in split_options(options) {
            let (name, value) = opt.split_once('=').map(|(a, b)| (a, Some(b.trim_matches('"')))).unwrap_or((opt.as_str(), None));
            match name.to_ascii_lowercase().as_str() {
                "cert-authority" => return Ok(None),
                "namespaces" => namespaces = value.map(|v| v.split(',').map(|s| s.trim().to_string()).collect()),
                // Validity windows need a clock policy keytap does not apply yet: refuse rather than ignore.
                "valid-after" | "valid-before" => {
                    return Err(format!("option {name} is not supported by keytap's verifier; verify with `ssh-keygen -Y verify` or drop the option"))
                }
                other => return Err(format!("unknown option {other}")),
            }
        }
    }
    Ok(Some(AllowedSigner { principals, key: key.key_data().clone(), namespaces }))
}

fn looks_like_key_type(s: &str) -> bool {
    s.starts_with("ssh-") || s.starts_with("ecdsa-") || s.starts_with("sk-")
}

/// Comma-separated options; an empty one is kept, so it is refused as unknown.
fn split_options(s: &str) -> Vec<String> {
    split_unquoted(s, |c| c == ',')
}

/// A detached signature over a chain-of-trust document.
#[derive(Clone, Debug)]
pub enum CotSignature {
    /// Taskcluster's `chain-of-trust.json.sig`: the raw 64-byte Ed25519 signature.
    RawEd25519([u8; 64]),
    /// `chain-of-trust.json.sshsig`: an armored SSHSIG in namespace `chain-of-trust`.
    SshSig(SshSig),
}

impl CotSignature {
    pub fn parse(bytes: &[u8]) -> Result<CotSignature, String> {
        if bytes.starts_with(b"-----BEGIN SSH SIGNATURE-----") {
            return SshSig::from_pem(bytes).map(CotSignature::SshSig).map_err(|e| format!("malformed SSH signature: {e}"));
        }
        let raw: [u8; 64] = bytes
            .try_into()
            .map_err(|_| format!("signature file is {} bytes; a raw Ed25519 signature is 64 bytes and an SSHSIG starts with -----BEGIN SSH SIGNATURE-----", bytes.len()))?;
        Ok(CotSignature::RawEd25519(raw))
    }
}

fn raw_key_name(raw: &[u8; 32]) -> String {
    format!("trusted key {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

fn signer_name(s: &AllowedSigner) -> String {
    format!("{} ({})", s.principals, s.key.fingerprint(HashAlg::Sha256))
}

/// Check `signature` over exactly `bytes`; on success say which trusted key made it.
pub fn verify_signature(bytes: &[u8], signature: &CotSignature, trusted: &TrustedKeys) -> Result<String, String> {
    match signature {
        CotSignature::RawEd25519(raw) => {
            let sig = EdSignature::from_bytes(raw);
            let mut candidates: Vec<([u8; 32], String)> = trusted.raw_ed25519.iter().map(|k| (*k, raw_key_name(k))).collect();
            for s in &trusted.signers {
                if let (Some(ed), true) = (s.key.ed25519(), allows_namespace(s)) {
                    candidates.push((ed.0, signer_name(s)));
                }
            }
            if candidates.is_empty() {
                return Err("no trusted Ed25519 key to check a raw .sig against; pass --trusted-key".into());
            }
            for (key, name) in candidates {
                let Ok(vk) = VerifyingKey::from_bytes(&key) else { continue };
                if vk.verify_strict(bytes, &sig).is_ok() {
                    return Ok(name);
                }
            }
            Err("the Ed25519 signature does not verify with any trusted key".into())
        }
        CotSignature::SshSig(sig) => {
            if sig.namespace() != NAMESPACE {
                return Err(format!("the SSH signature is for namespace {:?}, not {NAMESPACE:?}", sig.namespace()));
            }
            let key = sig.public_key();
            let name = trusted
                .signers
                .iter()
                .find(|s| &s.key == key && allows_namespace(s))
                .map(signer_name)
                .or_else(|| key.ed25519().and_then(|ed| trusted.raw_ed25519.iter().find(|k| **k == ed.0)).map(raw_key_name))
                .ok_or_else(|| format!("the SSH signature was made by {}, which is not a trusted signer", key.fingerprint(HashAlg::Sha256)))?;
            PublicKey::from(key.clone())
                .verify(NAMESPACE, bytes, sig)
                .map_err(|e| format!("the SSH signature by {name} does not verify: {e}"))?;
            Ok(name)
        }
    }
}

fn allows_namespace(s: &AllowedSigner) -> bool {
    s.namespaces.as_ref().map_or(true, |ns| ns.iter().any(|n| n == NAMESPACE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::{Algorithm, LineEnding, PrivateKey};

    #[test]
    fn splitting_keeps_quoted_separators() {
        assert_eq!(fields("  a \"b c\"\td  "), ["a", "\"b c\"", "d"]);
        assert_eq!(fields(""), Vec::<String>::new());
        assert_eq!(split_options("cert-authority,namespaces=\"git,cot\""), ["cert-authority", "namespaces=\"git,cot\""]);
        assert_eq!(split_options("a,,b"), ["a", "", "b"]);
    }

    #[test]
    fn allowed_signers_lines() {
        let ed = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap();
        let line = ed.public_key().to_openssh().unwrap();
        let mut t = TrustedKeys::default();
        t.add_allowed_signers(&format!("# comment\n\nworker@ci {line}\nrel@ci namespaces=\"git,chain-of-trust\" {line}\nca@ci cert-authority {line}\n")).unwrap();
        assert_eq!(t.signers.len(), 2);
        assert_eq!(t.signers[1].namespaces.as_deref(), Some(&["git".to_string(), "chain-of-trust".to_string()][..]));
        assert!(t.add_allowed_signers(&format!("x valid-before=20300101 {line}")).unwrap_err().contains("not supported"));
        assert!(t.add_allowed_signers("x ssh-ed25519").unwrap_err().starts_with("allowed signers line 1"));
    }

    #[test]
    fn raw_keys_must_be_32_bytes_of_base64() {
        let mut t = TrustedKeys::default();
        assert!(t.add_raw_base64("not base64!").unwrap_err().contains("not base64"));
        assert!(t.add_raw_base64("AAAA").unwrap_err().contains("3 bytes, not 32"));
    }

    #[test]
    fn sshsig_in_another_namespace_or_by_untrusted_key_is_refused() {
        let ed = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap();
        let other = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap();
        let mut t = TrustedKeys::default();
        t.add_allowed_signers(&format!("w {}", ed.public_key().to_openssh().unwrap())).unwrap();
        let good = SshSig::sign(&ed, NAMESPACE, HashAlg::Sha512, b"doc").unwrap();
        assert!(verify_signature(b"doc", &CotSignature::SshSig(good.clone()), &t).unwrap().starts_with("w (SHA256:"));
        let pem = good.to_pem(LineEnding::LF).unwrap();
        assert!(matches!(CotSignature::parse(pem.as_bytes()), Ok(CotSignature::SshSig(_))));
        assert!(verify_signature(b"doc!", &CotSignature::SshSig(good), &t).unwrap_err().contains("does not verify"));
        let git = SshSig::sign(&ed, "git", HashAlg::Sha512, b"doc").unwrap();
        assert!(verify_signature(b"doc", &CotSignature::SshSig(git), &t).unwrap_err().contains("namespace \"git\""));
        let stranger = SshSig::sign(&other, NAMESPACE, HashAlg::Sha512, b"doc").unwrap();
        assert!(verify_signature(b"doc", &CotSignature::SshSig(stranger), &t).unwrap_err().contains("not a trusted signer"));
        assert!(CotSignature::parse(&[0u8; 63]).unwrap_err().contains("63 bytes"));
    }
}
