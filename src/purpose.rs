//! What a sign request is for, read from the data to be signed (pure functions).
//!
//! Layouts: SSH user authentication (RFC 4252 section 7 plus OpenSSH's hostbound method) and
//! SSHSIG (`PROTOCOL.sshsig`), and JWS signing inputs (RFC 7515 section 5.1: a Buildkite
//! pipeline step signature is one). Classification goes by structure, not by what decodes nicely:
//! data that begins like a userauth request (a non-empty session id string, then byte 50) is
//! one, whatever bytes its user name and service hold and however long its session id is, and
//! is refused when the rest is malformed; sshd could accept such data as a login signature, so
//! it is never `Raw`. Data starting with the SSHSIG magic must be well-formed SSHSIG. A JWS signing input is `Jws`;
//! anything else is `Raw`.

use ssh_agent_lib::proto::PublicCredential;
use ssh_encoding::{Decode, Encode};

use crate::host_key::HostKey;

const SSH_MSG_USERAUTH_REQUEST: u8 = 50;
const SSHSIG_MAGIC: &[u8; 6] = b"SSHSIG";

/// The purpose of one signature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Logging in to an SSH server.
    SshAuth {
        /// The user name, for display: bytes that are not UTF-8 are replaced (U+FFFD).
        user: String,
        /// `publickey` or `publickey-hostbound-v00@openssh.com`.
        method: String,
        /// The session the signature is for (sshd checks it; session-bind names it).
        session_id: Vec<u8>,
        /// The server host key (plain or certificate), for the hostbound method.
        host_key: Option<HostKey>,
    },
    /// An SSHSIG signature (git commits, `ssh-keygen -Y sign`) in a namespace.
    SshSig { namespace: String, hash: String },
    /// A JWS signing input `B64URL(header).B64URL(payload)` whose header is JSON with `alg`.
    Jws(JwsInfo),
    /// Anything else, e.g. a chain-of-trust document.
    Raw,
}

/// What the agent records about a JWS: the header's `alg` and `kid`, and for a Buildkite
/// step signature the repository and command it covers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwsInfo {
    pub alg: String,
    pub kid: Option<String>,
    pub repository: Option<String>,
    pub command: Option<String>,
}

/// Why data that looks like a userauth request is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PurposeError {
    #[error("the userauth request names a different public key than the one asked to sign")]
    KeyMismatch,
    #[error("malformed userauth request: {0}")]
    MalformedAuth(&'static str),
    #[error("malformed SSHSIG data: {0}")]
    MalformedSshSig(&'static str),
}

impl Purpose {
    /// The policy name of this purpose: `ssh-auth`, `sshsig:<namespace>` or `raw`.
    pub fn name(&self) -> String {
        match self {
            Purpose::SshAuth { .. } => "ssh-auth".into(),
            Purpose::SshSig { namespace, .. } => format!("sshsig:{namespace}"),
            Purpose::Jws(_) => "jws".into(),
            Purpose::Raw => "raw".into(),
        }
    }

    /// A phrase for prompts: "log in as alice", "sign a git commit".
    pub fn describe(&self) -> String {
        match self {
            Purpose::SshAuth { user, .. } => format!("log in over SSH as {user}"),
            Purpose::SshSig { namespace, .. } if namespace == "git" => "sign a git commit or tag".into(),
            Purpose::SshSig { namespace, .. } => format!("make an SSH signature in namespace {namespace:?}"),
            Purpose::Jws(JwsInfo { repository: Some(repo), .. }) => format!("sign a Buildkite pipeline step for {repo}"),
            Purpose::Jws(info) => format!("make a JWS signature ({})", info.alg),
            Purpose::Raw => "sign raw data".into(),
        }
    }
}

/// Classify the data of a sign request for `key`.
pub fn classify(data: &[u8], key: &ssh_key::public::KeyData) -> Result<Purpose, PurposeError> {
    classify_credential(data, &PublicCredential::Key(key.clone()))
}

/// [`classify`] for a sign request naming a key or a certificate: a userauth request made with
/// a certificate carries the whole certificate blob, which must be the one asked to sign.
pub fn classify_credential(data: &[u8], credential: &PublicCredential) -> Result<Purpose, PurposeError> {
    if data.starts_with(SSHSIG_MAGIC) {
        return parse_sshsig(&data[SSHSIG_MAGIC.len()..]);
    }
    if !shaped_like_userauth(data) {
        return Ok(parse_jws(data).map(Purpose::Jws).unwrap_or(Purpose::Raw));
    }
    let auth = parse_userauth(data)?;
    if !names_same_key(&auth.key, credential) {
        return Err(PurposeError::KeyMismatch);
    }
    Ok(Purpose::SshAuth { user: auth.user, method: auth.method, session_id: auth.session_id, host_key: auth.host_key })
}

/// A non-empty session id string followed by SSH_MSG_USERAUTH_REQUEST: what every signature
/// sshd verifies for a login begins with (OpenSSH's agent takes any non-empty session id).
fn shaped_like_userauth(data: &[u8]) -> bool {
    let Some(len) = data.get(..4).map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize) else { return false };
    len > 0 && data.get(4usize.saturating_add(len)) == Some(&SSH_MSG_USERAUTH_REQUEST)
}

/// A JWS signing input: exactly two base64url parts joined by one dot, the first decoding to
/// a JSON object with a string `alg`. A Buildkite step payload (`{"alg", "values"}`) also
/// yields its repository and command.
fn parse_jws(data: &[u8]) -> Option<JwsInfo> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let text = std::str::from_utf8(data).ok()?;
    let (header, payload) = text.split_once('.')?;
    let b64url = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if header.is_empty() || !b64url(header) || !b64url(payload) {
        return None;
    }
    let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    let alg = header.get("alg")?.as_str()?.to_string();
    let kid = header.get("kid").and_then(|k| k.as_str()).map(str::to_string);
    let body: Option<serde_json::Value> = URL_SAFE_NO_PAD.decode(payload).ok().and_then(|p| serde_json::from_slice(&p).ok());
    let values = body.as_ref().and_then(|b| b.get("values"));
    let field = |name: &str| values.and_then(|v| v.get(name)).and_then(|v| v.as_str()).map(str::to_string);
    Some(JwsInfo { alg, kid, repository: field("repository_url"), command: field("command") })
}

/// Does the userauth key blob name the key asked to sign? The same blob, or a certificate for
/// that plain key: ssh signs a certificate login with the plain key when it has one (always so
/// for `CertificateFile` beside an agent-held key, as gomote does).
fn names_same_key(blob: &[u8], credential: &PublicCredential) -> bool {
    let mut encoded = Vec::new();
    if credential.encode(&mut encoded).is_ok() && encoded == blob {
        return true;
    }
    match credential {
        PublicCredential::Key(k) => HostKey::from_blob(blob).is_ok_and(|c| c.certificate().is_some() && c.key() == k),
        PublicCredential::Cert(_) => false,
    }
}

struct UserAuth {
    session_id: Vec<u8>,
    user: String,
    method: String,
    /// The public key blob as sent: a plain key or a certificate.
    key: Vec<u8>,
    host_key: Option<HostKey>,
}

/// Parse data already known to be shaped like a userauth request, strictly: every field
/// present, a known method, the has-signature flag set, nothing after the last field.
fn parse_userauth(data: &[u8]) -> Result<UserAuth, PurposeError> {
    let bad = PurposeError::MalformedAuth;
    let r = &mut &data[..];
    let session_id = Vec::<u8>::decode(r).map_err(|_| bad("session id"))?;
    let _message = u8::decode(r).map_err(|_| bad("message number"))?;
    let user = Vec::<u8>::decode(r).map_err(|_| bad("user name"))?;
    let _service = Vec::<u8>::decode(r).map_err(|_| bad("service"))?;
    let method = Vec::<u8>::decode(r).map_err(|_| bad("method"))?;
    let hostbound = match method.as_slice() {
        b"publickey" => false,
        b"publickey-hostbound-v00@openssh.com" => true,
        _ => return Err(bad("unknown method")),
    };
    if u8::decode(r).map_err(|_| bad("has-signature flag"))? != 1 {
        return Err(bad("has-signature flag is not set"));
    }
    let _algorithm = Vec::<u8>::decode(r).map_err(|_| bad("algorithm"))?;
    let key = Vec::<u8>::decode(r).map_err(|_| bad("public key"))?;
    let host_key = if hostbound {
        let blob = Vec::<u8>::decode(r).map_err(|_| bad("host key"))?;
        Some(HostKey::from_blob(&blob).map_err(|_| bad("host key"))?)
    } else {
        None
    };
    if !r.is_empty() {
        return Err(bad("trailing bytes"));
    }
    let method = String::from_utf8(method).expect("one of two ASCII names");
    Ok(UserAuth { session_id, user: String::from_utf8_lossy(&user).into_owned(), method, key, host_key })
}

fn parse_sshsig(mut r: &[u8]) -> Result<Purpose, PurposeError> {
    let bad = PurposeError::MalformedSshSig;
    let namespace = String::decode(&mut r).map_err(|_| bad("namespace"))?;
    if namespace.is_empty() {
        return Err(bad("empty namespace"));
    }
    let _reserved = Vec::<u8>::decode(&mut r).map_err(|_| bad("reserved"))?;
    let hash = String::decode(&mut r).map_err(|_| bad("hash algorithm"))?;
    if hash != "sha256" && hash != "sha512" {
        return Err(bad("hash algorithm is not sha256 or sha512"));
    }
    let digest = Vec::<u8>::decode(&mut r).map_err(|_| bad("message hash"))?;
    let expected = if hash == "sha256" { 32 } else { 64 };
    if digest.len() != expected {
        return Err(bad("message hash has the wrong length"));
    }
    if !r.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(Purpose::SshSig { namespace, hash })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_encoding::Encode;
    use ssh_key::public::KeyData;
    use ssh_key::{Algorithm, PrivateKey};

    fn key() -> KeyData {
        PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap().public_key().key_data().clone()
    }

    fn put_str(out: &mut Vec<u8>, s: &[u8]) {
        s.encode(out).unwrap();
    }

    fn blob(key: &KeyData) -> Vec<u8> {
        let mut b = Vec::new();
        key.encode(&mut b).unwrap();
        b
    }

    /// A userauth request with every field chosen by the caller.
    fn userauth_with(session_id: &[u8], user: &[u8], service: &[u8], key: &KeyData, method: &str, host: Option<&[u8]>, has_sig: u8) -> Vec<u8> {
        let mut d = Vec::new();
        put_str(&mut d, session_id);
        d.push(50);
        put_str(&mut d, user);
        put_str(&mut d, service);
        put_str(&mut d, method.as_bytes());
        d.push(has_sig);
        put_str(&mut d, b"ssh-ed25519");
        key.encode_prefixed(&mut d).unwrap();
        if let Some(h) = host {
            put_str(&mut d, h);
        }
        d
    }

    fn userauth(key: &KeyData, method: &str, host: Option<&KeyData>, has_sig: u8) -> Vec<u8> {
        let host = host.map(blob);
        userauth_with(&[7u8; 32], b"alice", b"ssh-connection", key, method, host.as_deref(), has_sig)
    }

    fn sshsig(ns: &str, hash: &str, len: usize) -> Vec<u8> {
        let mut d = b"SSHSIG".to_vec();
        put_str(&mut d, ns.as_bytes());
        put_str(&mut d, b"");
        put_str(&mut d, hash.as_bytes());
        put_str(&mut d, &vec![1u8; len]);
        d
    }

    #[test]
    fn userauth_publickey() {
        let k = key();
        let p = classify(&userauth(&k, "publickey", None, 1), &k).unwrap();
        assert_eq!(p, Purpose::SshAuth { user: "alice".into(), method: "publickey".into(), session_id: vec![7; 32], host_key: None });
        assert_eq!(p.name(), "ssh-auth");
    }

    #[test]
    fn userauth_hostbound_carries_host_key() {
        let (k, h) = (key(), key());
        let p = classify(&userauth(&k, "publickey-hostbound-v00@openssh.com", Some(&h), 1), &k).unwrap();
        assert!(matches!(p, Purpose::SshAuth { host_key: Some(ref hk), .. } if hk.key() == &h && hk.certificate().is_none()));
    }

    #[test]
    fn userauth_hostbound_to_a_certificate_host_carries_the_certificate() {
        use ssh_key::certificate::{Builder, CertType};
        let ca = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap();
        let (k, host) = (key(), key());
        let mut b = Builder::new_with_random_nonce(&mut rand_core::OsRng, host.clone(), 0, 4_000_000_000).unwrap();
        b.cert_type(CertType::Host).unwrap().all_principals_valid().unwrap();
        let cert = b.sign(&ca).unwrap().to_bytes().unwrap();
        let data = userauth_with(&[1; 32], b"bob", b"ssh-connection", &k, "publickey-hostbound-v00@openssh.com", Some(&cert), 1);
        let p = classify(&data, &k).unwrap();
        let Purpose::SshAuth { host_key: Some(hk), .. } = p else { panic!("{p:?}") };
        assert_eq!(hk.key(), &host);
        assert_eq!(hk.blob(), cert.as_slice());
        assert!(hk.certificate().is_some());
    }

    #[test]
    fn any_user_service_and_session_id_length_is_still_a_login() {
        let k = key();
        // (session id, user, service, user as shown)
        type Case<'a> = (&'a [u8], &'a [u8], &'a [u8], &'a str);
        let cases: [Case; 5] = [
            (&[7; 32], b"root:\xff", b"ssh-connection", "root:\u{fffd}"),
            (&[7; 32], b"alice", b"not-ssh-connection", "alice"),
            (&[7; 32], b"", b"", ""),
            (&[9; 200], b"alice", b"ssh-connection", "alice"),
            (&[9; 1], b"alice", b"ssh-connection", "alice"),
        ];
        for (session_id, user, service, shown) in cases {
            let data = userauth_with(session_id, user, service, &k, "publickey", None, 1);
            let p = classify(&data, &k).unwrap();
            assert_eq!(p, Purpose::SshAuth { user: shown.into(), method: "publickey".into(), session_id: session_id.to_vec(), host_key: None });
            assert_eq!(p.name(), "ssh-auth");
        }
    }

    #[test]
    fn shaped_like_a_login_but_malformed_is_refused_never_raw() {
        let k = key();
        let mut garbage_tail = Vec::new();
        put_str(&mut garbage_tail, &[7u8; 32]);
        garbage_tail.push(50);
        garbage_tail.extend_from_slice(b"\xff\xff\xff\xffanything");
        let mut user_only = Vec::new();
        put_str(&mut user_only, &[7u8; 300]);
        user_only.push(50);
        put_str(&mut user_only, b"root");
        let bad_host = userauth_with(&[7; 32], b"a", b"ssh-connection", &k, "publickey-hostbound-v00@openssh.com", Some(b"junk"), 1);
        for data in [garbage_tail, user_only, bad_host] {
            assert!(matches!(classify(&data, &k), Err(PurposeError::MalformedAuth(_))), "{data:?}");
        }
    }

    #[test]
    fn userauth_for_another_key_is_refused() {
        let (k, other) = (key(), key());
        assert_eq!(classify(&userauth(&other, "publickey", None, 1), &k), Err(PurposeError::KeyMismatch));
    }

    #[test]
    fn userauth_with_trailing_bytes_or_bad_fields_is_malformed() {
        let k = key();
        let mut d = userauth(&k, "publickey", None, 1);
        d.push(0);
        assert!(matches!(classify(&d, &k), Err(PurposeError::MalformedAuth(_))));
        assert!(matches!(classify(&userauth(&k, "password", None, 1), &k), Err(PurposeError::MalformedAuth(_))));
        assert!(matches!(classify(&userauth(&k, "publickey", None, 0), &k), Err(PurposeError::MalformedAuth(_))));
        let hb = userauth(&k, "publickey-hostbound-v00@openssh.com", None, 1);
        assert!(matches!(classify(&hb, &k), Err(PurposeError::MalformedAuth(_))));
        let truncated = &userauth(&k, "publickey", None, 1)[..85];
        assert!(matches!(classify(truncated, &k), Err(PurposeError::MalformedAuth(_))));
    }

    #[test]
    fn userauth_with_a_certificate_must_carry_that_certificate() {
        use ssh_key::certificate::{Builder, CertType};
        let (ca, subject) = (PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap(), key());
        let make = || {
            let mut b = Builder::new_with_random_nonce(&mut rand_core::OsRng, subject.clone(), 1, 2).unwrap();
            b.cert_type(CertType::User).unwrap().all_principals_valid().unwrap();
            b.sign(&ca).unwrap()
        };
        let (cert, other_cert) = (make(), make());
        let mut data = Vec::new();
        put_str(&mut data, &[7u8; 32]);
        data.push(50);
        put_str(&mut data, b"alice");
        put_str(&mut data, b"ssh-connection");
        put_str(&mut data, b"publickey");
        data.push(1);
        put_str(&mut data, b"ssh-ed25519-cert-v01@openssh.com");
        put_str(&mut data, &cert.to_bytes().unwrap());
        let cred = PublicCredential::Cert(Box::new(cert));
        assert!(matches!(classify_credential(&data, &cred), Ok(Purpose::SshAuth { .. })));
        // Another certificate for the same key is not what the request names.
        let other = PublicCredential::Cert(Box::new(other_cert));
        assert_eq!(classify_credential(&data, &other), Err(PurposeError::KeyMismatch));
        // ssh signs a certificate login with the plain key (CertificateFile + agent key): fine
        // for that key, refused for any other.
        assert!(matches!(classify(&data, &subject), Ok(Purpose::SshAuth { .. })));
        assert_eq!(classify(&data, &key()), Err(PurposeError::KeyMismatch));
    }

    #[test]
    fn sshsig_namespaces() {
        let k = key();
        assert_eq!(classify(&sshsig("git", "sha512", 64), &k).unwrap().name(), "sshsig:git");
        assert_eq!(classify(&sshsig("file", "sha256", 32), &k).unwrap().name(), "sshsig:file");
        assert!(matches!(classify(&sshsig("git", "md5", 16), &k), Err(PurposeError::MalformedSshSig(_))));
        assert!(matches!(classify(&sshsig("git", "sha256", 64), &k), Err(PurposeError::MalformedSshSig(_))));
        assert!(matches!(classify(&sshsig("", "sha256", 32), &k), Err(PurposeError::MalformedSshSig(_))));
        let mut d = sshsig("git", "sha256", 32);
        d.push(1);
        assert!(matches!(classify(&d, &k), Err(PurposeError::MalformedSshSig(_))));
        assert!(matches!(classify(b"SSHSIG", &k), Err(PurposeError::MalformedSshSig(_))));
    }

    fn jws_input(header: &str, payload: &str) -> Vec<u8> {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload)).into_bytes()
    }

    #[test]
    fn jws_signing_inputs_are_jws() {
        let k = key();
        let step = r#"{"alg":"EdDSA","values":{"command":"./deploy.sh","env":null,"repository_url":"https://example.com/r.git"}}"#;
        let p = classify(&jws_input(r#"{"alg":"EdDSA","kid":"k1"}"#, step), &k).unwrap();
        assert_eq!(
            p,
            Purpose::Jws(JwsInfo {
                alg: "EdDSA".into(),
                kid: Some("k1".into()),
                repository: Some("https://example.com/r.git".into()),
                command: Some("./deploy.sh".into()),
            })
        );
        assert_eq!(p.name(), "jws");
        assert_eq!(p.describe(), "sign a Buildkite pipeline step for https://example.com/r.git");
        // Any JWS: alg is enough, the payload may be anything.
        let other = classify(&jws_input(r#"{"alg":"ES256"}"#, "\x00binary"), &k).unwrap();
        assert_eq!(other, Purpose::Jws(JwsInfo { alg: "ES256".into(), kid: None, repository: None, command: None }));
        assert_eq!(other.describe(), "make a JWS signature (ES256)");
    }

    #[test]
    fn near_jws_inputs_stay_raw() {
        let k = key();
        // No alg, alg not a string, a header that is not JSON, padding, three parts, no dot.
        for data in [
            jws_input(r#"{"typ":"JWT"}"#, "{}"),
            jws_input(r#"{"alg":1}"#, "{}"),
            jws_input("not json", "{}"),
            b"eyJhbGciOiJFZERTQSJ9=.e30".to_vec(),
            [jws_input(r#"{"alg":"EdDSA"}"#, "{}"), b".sig".to_vec()].concat(),
            b"eyJhbGciOiJFZERTQSJ9".to_vec(),
            b".e30".to_vec(),
        ] {
            assert_eq!(classify(&data, &k).unwrap(), Purpose::Raw, "{}", String::from_utf8_lossy(&data));
        }
    }

    #[test]
    fn everything_else_is_raw() {
        let k = key();
        assert_eq!(classify(b"", &k).unwrap(), Purpose::Raw);
        assert_eq!(classify(b"{\"chainOfTrustVersion\": 1}", &k).unwrap(), Purpose::Raw);
        assert_eq!(classify(&[0, 0, 0, 0, 50], &k).unwrap(), Purpose::Raw);
        let mut not_auth = Vec::new();
        put_str(&mut not_auth, &[1u8; 32]);
        not_auth.push(51);
        assert_eq!(classify(&not_auth, &k).unwrap(), Purpose::Raw);
        // A session id length that runs past the data, or no byte after it.
        assert_eq!(classify(&[0, 0, 1, 0, 50, 50], &k).unwrap(), Purpose::Raw);
        assert_eq!(classify(&[0, 0, 0, 1, 7], &k).unwrap(), Purpose::Raw);
        assert_eq!(classify(&[0, 0, 0], &k).unwrap(), Purpose::Raw);
    }
}
