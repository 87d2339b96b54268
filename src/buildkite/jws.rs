//! JWS (compact, detached payload), JWK and JWKS for token keys: EdDSA (Ed25519), ES256
//! (P-256) and ES384 (P-384), with raw `r||s` ECDSA signatures as JWS wants them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ssh_key::public::{EcdsaPublicKey, KeyData};
use ssh_key::{Algorithm, Signature};

/// The JWS algorithms keytap signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    EdDsa,
    Es256,
    Es384,
}

impl Alg {
    pub fn name(self) -> &'static str {
        match self {
            Alg::EdDsa => "EdDSA",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
        }
    }

    pub fn from_name(s: &str) -> Option<Alg> {
        match s {
            "EdDSA" => Some(Alg::EdDsa),
            "ES256" => Some(Alg::Es256),
            "ES384" => Some(Alg::Es384),
            _ => None,
        }
    }

    /// Raw signature length.
    fn signature_len(self) -> usize {
        match self {
            Alg::EdDsa | Alg::Es256 => 64,
            Alg::Es384 => 96,
        }
    }
}

/// The algorithm a key signs with; RSA and other keys are refused.
pub fn alg_for(key: &KeyData) -> Result<Alg, String> {
    match key.algorithm() {
        Algorithm::Ed25519 => Ok(Alg::EdDsa),
        Algorithm::Ecdsa { curve: ssh_key::EcdsaCurve::NistP256 } => Ok(Alg::Es256),
        Algorithm::Ecdsa { curve: ssh_key::EcdsaCurve::NistP384 } => Ok(Alg::Es384),
        Algorithm::Rsa { .. } => Err("is an RSA key; keytap signs Buildkite steps with Ed25519 (EdDSA), P-256 (ES256) or P-384 (ES384) keys only: pick one of those with --key".into()),
        other => Err(format!("is a {other} key; keytap signs Buildkite steps with Ed25519, P-256 or P-384 keys only: pick one of those with --key")),
    }
}

/// A public JWK as Buildkite's `--verification-jwks-file` reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// (crv, x, y) of a key.
fn coordinates(key: &KeyData) -> Result<(&'static str, String, Option<String>), String> {
    if let Some(ed) = key.ed25519() {
        return Ok(("Ed25519", b64(&ed.0), None));
    }
    let (crv, size) = match key.ecdsa() {
        Some(EcdsaPublicKey::NistP256(_)) => ("P-256", 32),
        Some(EcdsaPublicKey::NistP384(_)) => ("P-384", 48),
        _ => return Err("is not an Ed25519, P-256 or P-384 key".into()),
    };
    let point = key.ecdsa().expect("checked").as_sec1_bytes();
    if point.len() != 1 + 2 * size || point[0] != 4 {
        return Err("has a compressed or malformed EC point".into());
    }
    Ok((crv, b64(&point[1..1 + size]), Some(b64(&point[1 + size..]))))
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url): the default `kid`.
pub fn thumbprint(key: &KeyData) -> Result<String, String> {
    let (crv, x, y) = coordinates(key)?;
    // The required members in lexicographic order, no whitespace (RFC 7638 section 3).
    let json = match y {
        None => format!(r#"{{"crv":"{crv}","kty":"OKP","x":"{x}"}}"#),
        Some(y) => format!(r#"{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}"#),
    };
    Ok(b64(&Sha256::digest(json.as_bytes())))
}

/// The public JWK of a key, with `alg`, `kid` (the thumbprint unless given) and `use: sig`.
pub fn jwk_for(key: &KeyData, kid: Option<&str>) -> Result<Jwk, String> {
    let alg = alg_for(key)?;
    let (crv, x, y) = coordinates(key)?;
    let kid = match kid {
        Some(k) => k.to_string(),
        None => thumbprint(key)?,
    };
    Ok(Jwk {
        kty: if y.is_some() { "EC".into() } else { "OKP".into() },
        crv: Some(crv.into()),
        x: Some(x),
        y,
        alg: Some(alg.name().into()),
        kid: Some(kid),
        use_: Some("sig".into()),
    })
}

/// The protected header, base64url: `{"alg":...,"kid":...}`.
pub fn header_b64(alg: Alg, kid: &str) -> String {
    let header = serde_json::json!({"alg": alg.name(), "kid": kid});
    b64(serde_json::to_string(&header).expect("serialises").as_bytes())
}

/// The JWS signing input for a detached payload: `B64URL(header).B64URL(payload)`.
pub fn signing_input(header_b64: &str, payload: &[u8]) -> String {
    format!("{header_b64}.{}", b64(payload))
}

/// The compact detached form: `B64URL(header)..B64URL(signature)`.
pub fn detached(header_b64: &str, signature: &[u8]) -> String {
    format!("{header_b64}..{}", b64(signature))
}

/// The raw JWS signature from an agent's SSH signature over the signing input: the 64 Ed25519
/// bytes, or the ECDSA mpints (r, s) as fixed-width `r||s`.
pub fn raw_signature(alg: Alg, sig: &Signature) -> Result<Vec<u8>, String> {
    let raw = match alg {
        Alg::EdDsa if sig.algorithm() == Algorithm::Ed25519 => sig.as_bytes().to_vec(),
        Alg::Es256 => p256::ecdsa::Signature::try_from(sig).map_err(|e| e.to_string())?.to_bytes().to_vec(),
        Alg::Es384 => p384::ecdsa::Signature::try_from(sig).map_err(|e| e.to_string())?.to_bytes().to_vec(),
        Alg::EdDsa => return Err(format!("the agent answered with a {} signature", sig.algorithm())),
    };
    if raw.len() != alg.signature_len() {
        return Err(format!("a {} signature of {} bytes", alg.name(), raw.len()));
    }
    Ok(raw)
}

/// Check a raw signature over `message` with a JWK (ring: fixed-width `r||s` for ECDSA).
pub fn verify_raw(jwk: &Jwk, alg: Alg, message: &[u8], sig: &[u8]) -> Result<(), String> {
    use ring::signature::{UnparsedPublicKey, VerificationAlgorithm, ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ED25519};
    let coord = |c: &Option<String>, name: &str, len: usize| {
        let bytes = URL_SAFE_NO_PAD.decode(c.as_deref().ok_or(format!("the JWK has no {name}"))?).map_err(|_| format!("the JWK's {name} is not base64url"))?;
        if bytes.len() != len {
            return Err(format!("the JWK's {name} is not {len} bytes"));
        }
        Ok(bytes)
    };
    let (algorithm, key): (&'static dyn VerificationAlgorithm, Vec<u8>) = match (alg, jwk.kty.as_str(), jwk.crv.as_deref()) {
        (Alg::EdDsa, "OKP", Some("Ed25519")) => (&ED25519, coord(&jwk.x, "x", 32)?),
        (Alg::Es256, "EC", Some("P-256")) => (&ECDSA_P256_SHA256_FIXED, [vec![4], coord(&jwk.x, "x", 32)?, coord(&jwk.y, "y", 32)?].concat()),
        (Alg::Es384, "EC", Some("P-384")) => (&ECDSA_P384_SHA384_FIXED, [vec![4], coord(&jwk.x, "x", 48)?, coord(&jwk.y, "y", 48)?].concat()),
        _ => return Err(format!("the key (kty {}, crv {}) cannot check an {} signature", jwk.kty, jwk.crv.as_deref().unwrap_or("-"), alg.name())),
    };
    if sig.len() != alg.signature_len() {
        return Err(format!("an {} signature of {} bytes ({} expected{})", alg.name(), sig.len(), alg.signature_len(), if alg == Alg::EdDsa { "" } else { " as raw r||s" }));
    }
    UnparsedPublicKey::new(algorithm, key).verify(message, sig).map_err(|_| "the signature does not verify".to_string())
}

/// Verify a detached compact JWS over `payload` with the JWKS: the key is the one named by
/// the header's `kid` (required), and the header's `alg` must be that key's `alg` and
/// `expected_alg` (the step's `signature.algorithm`, which the payload also carries).
pub fn verify(jwks: &Jwks, value: &str, payload: &[u8], expected_alg: &str) -> Result<(), String> {
    let parts: Vec<&str> = value.split('.').collect();
    let [header, body, sig] = parts.as_slice() else {
        return Err("the signature value is not a compact JWS".into());
    };
    if !body.is_empty() {
        return Err("the signature value carries a payload; Buildkite's are detached (HEADER..SIGNATURE)".into());
    }
    let header_json: serde_json::Value = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("the JWS header is not base64url JSON")?;
    let alg_name = header_json["alg"].as_str().ok_or("the JWS header has no alg")?;
    let kid = header_json["kid"].as_str().ok_or("the JWS header has no kid (agents verifying with a JWKS require one)")?;
    let key = jwks.keys.iter().find(|k| k.kid.as_deref() == Some(kid)).ok_or(format!("no key with kid {kid:?} in the JWKS"))?;
    let key_alg = key.alg.as_deref().ok_or(format!("the JWKS key {kid:?} has no alg"))?;
    if key_alg != alg_name {
        return Err(format!("the JWS header says {alg_name} but the JWKS key {kid:?} is {key_alg}"));
    }
    if expected_alg != alg_name {
        return Err(format!("the step's signature says algorithm {expected_alg} but its JWS header says {alg_name}"));
    }
    let alg = Alg::from_name(alg_name).ok_or(format!("algorithm {alg_name} is not one keytap verifies (EdDSA, ES256, ES384)"))?;
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| "the JWS signature is not base64url".to_string())?;
    verify_raw(key, alg, signing_input(header, payload).as_bytes(), &sig)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7638_thumbprint_example() {
        // The RSA example of RFC 7638 uses an RSA key; check the construction on the EC
        // example from RFC 7517 appendix A.1 against a value computed from the spec's text.
        let x = URL_SAFE_NO_PAD.decode("MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4").unwrap();
        let y = URL_SAFE_NO_PAD.decode("4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM").unwrap();
        let mut point = vec![4u8];
        point.extend(&x);
        point.extend(&y);
        let key = KeyData::Ecdsa(EcdsaPublicKey::from_sec1_bytes(&point).unwrap());
        let canonical = r#"{"crv":"P-256","kty":"EC","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}"#;
        assert_eq!(thumbprint(&key).unwrap(), b64(&Sha256::digest(canonical)));
        let jwk = jwk_for(&key, None).unwrap();
        assert_eq!((jwk.kty.as_str(), jwk.alg.as_deref(), jwk.use_.as_deref()), ("EC", Some("ES256"), Some("sig")));
        assert_eq!(serde_json::to_value(&jwk).unwrap()["use"], "sig");
    }

    #[test]
    fn rsa_keys_are_refused_clearly() {
        let rsa_pub = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 1024).unwrap().to_public_key();
        let key: KeyData = ssh_key::public::RsaPublicKey::try_from(rsa_pub).unwrap().into();
        assert!(alg_for(&key).unwrap_err().contains("RSA key"));
    }
}
