//! The `keytap-cert@keytap.dev` extension and the agent's certificate state.
//!
//! Request details: `string op` (`add`, `list`, `remove`), then for `add` `string blob,
//! string name`, for `remove` `string kind` (`blob` or `key-id`) and `string value`. The answer
//! is always an extension response whose details are one string of JSON ([`CertReply`]), so a
//! refusal reaches the user with its reason instead of a bare SSH_AGENT_FAILURE.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use ssh_agent_lib::proto::{Identity, PublicCredential};
use ssh_encoding::{Decode, Encode};
use ssh_key::public::KeyData;

use crate::cert::scan::DirWatch;
use crate::cert::{self, CertStore, Entry, Offer, Selector, Source};
use crate::token::KeyInfo;

pub const EXT_CERT: &str = "keytap-cert@keytap.dev";

/// One certificate as `keytap cert list` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CertReport {
    pub key_id: String,
    pub serial: u64,
    pub principals: Vec<String>,
    pub valid_after: u64,
    pub valid_before: u64,
    /// `valid`, `expired`, `not yet valid`.
    pub status: String,
    /// Whether the agent offers it right now (valid and its key on a token).
    pub offered: bool,
    pub key_fingerprint: String,
    /// `added` or the file it was read from.
    pub source: String,
    /// The certificate in OpenSSH form.
    pub certificate: String,
}

/// The agent's answer to every `keytap-cert@keytap.dev` request.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct CertReply {
    pub error: Option<String>,
    pub certs: Vec<CertReport>,
    pub removed: usize,
    /// Directory certificates that matched a remove: they stay until their file is deleted.
    pub in_directory: Vec<String>,
}

/// A request, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertOp {
    Add { blob: Vec<u8>, name: String },
    List,
    Remove(Selector),
}

impl CertOp {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let put = |out: &mut Vec<u8>, s: &[u8]| s.encode(out).expect("encoding to a vec");
        match self {
            CertOp::Add { blob, name } => {
                put(&mut out, b"add");
                put(&mut out, blob);
                put(&mut out, name.as_bytes());
            }
            CertOp::List => put(&mut out, b"list"),
            CertOp::Remove(Selector::Blob(b)) => {
                put(&mut out, b"remove");
                put(&mut out, b"blob");
                put(&mut out, b);
            }
            CertOp::Remove(Selector::KeyId(id)) => {
                put(&mut out, b"remove");
                put(&mut out, b"key-id");
                put(&mut out, id.as_bytes());
            }
        }
        out
    }

    pub fn decode(mut r: &[u8]) -> Result<CertOp, String> {
        let mut next = |what: &str| Vec::<u8>::decode(&mut r).map_err(|e| format!("malformed {what}: {e}"));
        let op = next("operation")?;
        let decoded = match op.as_slice() {
            b"add" => {
                let blob = next("certificate")?;
                let name = String::from_utf8(next("name")?).map_err(|_| "name is not UTF-8".to_string())?;
                CertOp::Add { blob, name }
            }
            b"list" => CertOp::List,
            b"remove" => {
                let kind = next("selector")?;
                let value = next("selector value")?;
                match kind.as_slice() {
                    b"blob" => CertOp::Remove(Selector::Blob(value)),
                    b"key-id" => CertOp::Remove(Selector::KeyId(String::from_utf8(value).map_err(|_| "key id is not UTF-8".to_string())?)),
                    _ => return Err("unknown selector".into()),
                }
            }
            _ => return Err(format!("unknown operation {:?}", String::from_utf8_lossy(&op))),
        };
        if !r.is_empty() {
            return Err("trailing bytes".into());
        }
        Ok(decoded)
    }
}

/// Encode a reply as extension details.
pub fn encode_reply(reply: &CertReply) -> Vec<u8> {
    let json = serde_json::to_vec(reply).expect("reply serialises");
    let mut out = Vec::new();
    json.encode(&mut out).expect("encoding to a vec");
    out
}

pub fn decode_reply(details: &[u8]) -> Result<CertReply, String> {
    let json = Vec::<u8>::decode(&mut &details[..]).map_err(|e| e.to_string())?;
    serde_json::from_slice(&json).map_err(|e| e.to_string())
}

/// The agent's certificates: the store, the directory it follows, and whether plain keys with a
/// certificate are hidden.
pub struct AgentCerts {
    store: Mutex<CertStore>,
    dir: Option<Mutex<DirWatch>>,
    certs_only: bool,
    /// Directory problems already logged: a bad file is reported once, not at every listing.
    warned: Mutex<std::collections::HashSet<String>>,
}

impl AgentCerts {
    pub fn new(dir: Option<PathBuf>, certs_only: bool) -> AgentCerts {
        AgentCerts { store: Mutex::new(CertStore::default()), dir: dir.map(|d| Mutex::new(DirWatch::new(d))), certs_only, warned: Mutex::default() }
    }

    fn warn_once(&self, message: String) {
        if self.warned.lock().expect("warned lock").insert(message.clone()) {
            tracing::warn!("{message}");
        }
    }

    /// Pick up directory changes and forget expired added certificates.
    fn refresh(&self, now: u64, keys: &[&KeyInfo]) {
        let mut store = self.store.lock().expect("cert store lock");
        for gone in store.prune_expired(now) {
            tracing::info!(key_id = gone.cert.key_id(), name = %gone.name, "certificate expired; no longer offered");
        }
        if let Some(dir) = &self.dir {
            if let Some((entries, skipped)) = dir.lock().expect("cert dir lock").poll(Instant::now()) {
                for s in skipped {
                    self.warn_once(format!("certificate file skipped: {}", s.reason));
                }
                let key_data: Vec<KeyData> = keys.iter().map(|k| k.public_key.clone()).collect();
                for e in &entries {
                    if let Err(problem) = cert::check_usable(&e.cert, &e.name, now, &key_data) {
                        self.warn_once(format!("certificate file not offered: {problem}"));
                    }
                }
                store.set_dir_entries(entries);
            }
        }
    }

    /// Read the certificate directory again at the next use, whatever its modification time,
    /// and report bad files again (reload); the directory, or `None` without one. No file is
    /// read here: the caller may be on the event loop.
    pub fn rescan(&self) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let mut watch = dir.lock().expect("cert dir lock");
        watch.forget();
        self.warned.lock().expect("warned lock").clear();
        Some(watch.path.clone())
    }

    /// The identities to list at this moment: certificates first, then plain keys.
    pub fn identities(&self, keys: &[&KeyInfo]) -> Vec<Identity> {
        let now = cert::unix_now();
        self.refresh(now, keys);
        let store = self.store.lock().expect("cert store lock");
        if store.all().next().is_none() {
            // The common case: no certificates at all.
            return keys.iter().map(|k| Identity { credential: PublicCredential::Key(k.public_key.clone()), comment: k.comment() }).collect();
        }
        let key_data: Vec<KeyData> = keys.iter().map(|k| k.public_key.clone()).collect();
        let offerable = store.offerable(now, &key_data);
        cert::plan(&key_data, &offerable, self.certs_only)
            .into_iter()
            .map(|offer| match offer {
                Offer::Cert(blob) => {
                    let e = offerable.iter().find(|e| e.blob == blob).expect("planned from offerable");
                    Identity { credential: PublicCredential::Cert(Box::new(e.cert.clone())), comment: e.comment() }
                }
                Offer::Key(k) => {
                    let info = keys.iter().find(|i| &i.public_key == k).expect("planned from keys");
                    Identity { credential: PublicCredential::Key(k.clone()), comment: info.comment() }
                }
            })
            .collect()
    }

    /// May this certificate sign now? Only one the agent offers at this moment.
    pub fn signable(&self, certificate: &ssh_key::Certificate, keys: &[&KeyInfo]) -> Result<(), String> {
        let now = cert::unix_now();
        self.refresh(now, keys);
        let key_data: Vec<KeyData> = keys.iter().map(|k| k.public_key.clone()).collect();
        let blob = certificate.to_bytes().map_err(|e| e.to_string())?;
        let store = self.store.lock().expect("cert store lock");
        if store.signable(&blob, now, &key_data).is_some() {
            return Ok(());
        }
        let known = store.all().find(|e| e.blob == blob);
        Err(match known {
            Some(e) => format!("certificate {:?} is {}", e.cert.key_id(), cert::validity(&e.cert, now).as_str()),
            None => format!("certificate {:?} was never given to this agent", certificate.key_id()),
        })
    }

    /// Answer a `keytap-cert@keytap.dev` request.
    pub fn handle(&self, details: &[u8], keys: &[&KeyInfo]) -> CertReply {
        let now = cert::unix_now();
        self.refresh(now, keys);
        let key_data: Vec<KeyData> = keys.iter().map(|k| k.public_key.clone()).collect();
        let op = match CertOp::decode(details) {
            Ok(op) => op,
            Err(e) => return CertReply { error: Some(format!("malformed request: {e}")), ..CertReply::default() },
        };
        let mut store = self.store.lock().expect("cert store lock");
        match op {
            CertOp::Add { blob, name } => {
                let added = cert::from_blob(&blob, &name)
                    .and_then(|c| store.add(Entry::new(c, Source::Added, name.clone()), now, &key_data));
                match added {
                    Ok(_) => {
                        let e = store.all().find(|e| e.blob == blob).expect("just added");
                        tracing::info!(key_id = e.cert.key_id(), name = %name, valid_before = e.cert.valid_before(), "certificate added");
                        CertReply { certs: vec![report(e, now, &key_data)], ..CertReply::default() }
                    }
                    Err(e) => {
                        tracing::warn!("certificate refused: {e}");
                        CertReply { error: Some(e.to_string()), ..CertReply::default() }
                    }
                }
            }
            CertOp::List => CertReply { certs: store.all().map(|e| report(e, now, &key_data)).collect(), ..CertReply::default() },
            CertOp::Remove(selector) => {
                let removed = store.remove(&selector);
                let in_directory = store.dir_matches(&selector).iter().map(|e| e.name.clone()).collect();
                tracing::info!(removed, "certificates removed");
                CertReply { removed, in_directory, ..CertReply::default() }
            }
        }
    }
}

fn report(e: &Entry, now: u64, keys: &[KeyData]) -> CertReport {
    CertReport {
        key_id: e.cert.key_id().into(),
        serial: e.cert.serial(),
        principals: e.cert.valid_principals().to_vec(),
        valid_after: e.cert.valid_after(),
        valid_before: e.cert.valid_before(),
        status: cert::validity(&e.cert, now).as_str().into(),
        offered: cert::validity(&e.cert, now) == cert::Validity::Valid && keys.contains(e.key()),
        key_fingerprint: e.key().fingerprint(ssh_key::HashAlg::Sha256).to_string(),
        source: match &e.source {
            Source::Added => "added".into(),
            Source::Dir(p) => p.display().to_string(),
        },
        certificate: e.cert.to_openssh().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip_and_garbage_is_refused() {
        for op in [
            CertOp::Add { blob: vec![1, 2, 3], name: "x-cert.pub".into() },
            CertOp::List,
            CertOp::Remove(Selector::Blob(vec![9])),
            CertOp::Remove(Selector::KeyId("go_build".into())),
        ] {
            assert_eq!(CertOp::decode(&op.encode()), Ok(op));
        }
        let mut trailing = CertOp::List.encode();
        trailing.push(0);
        assert!(CertOp::decode(&trailing).is_err());
        assert!(CertOp::decode(b"").is_err());
        let mut unknown = Vec::new();
        b"frobnicate".as_slice().encode(&mut unknown).unwrap();
        assert!(CertOp::decode(&unknown).unwrap_err().contains("unknown operation"));
    }

    #[test]
    fn malformed_request_gets_an_error_reply_not_a_panic() {
        let certs = AgentCerts::new(None, false);
        let reply = certs.handle(&[0, 0, 0, 9, 1], &[]);
        assert!(reply.error.unwrap().contains("malformed"));
    }

    #[test]
    fn reply_round_trips() {
        let reply = CertReply { error: Some("no".into()), removed: 2, ..CertReply::default() };
        assert_eq!(decode_reply(&encode_reply(&reply)), Ok(reply));
    }
}
