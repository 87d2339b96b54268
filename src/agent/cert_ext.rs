//! The `keytap-cert@keytap.dev` extension and the agent's certificate state.
//!
//! Request details: `string op` (`add`, `list`, `remove`), then for `add` `string blob,
//! string name`, for `remove` `string kind` (`blob` or `key-id`) and `string value`. The answer
//! is always an extension response whose details are one string of JSON ([`CertReply`]), so a
//! refusal reaches the user with its reason instead of a bare SSH_AGENT_FAILURE.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use ssh_agent_lib::proto::{Identity, PublicCredential};
use ssh_encoding::{Decode, Encode};
use ssh_key::public::KeyData;

use crate::agent::frame::MAX_FRAME;
use crate::cert::scan::{DirWatch, Skipped};
use crate::cert::{self, CertStore, Entry, Offer, Selector, Source};
use crate::token::KeyInfo;

pub const EXT_CERT: &str = "keytap-cert@keytap.dev";

/// How long a request waits for a directory scan before answering from what the agent has:
/// the scan runs on a blocking thread and its result is used whenever it arrives.
const SCAN_WAIT: Duration = Duration::from_secs(2);

/// Room for identities (or certificate reports) in one answer: the frame limit, less the
/// answer's header and some slack.
const ANSWER_BUDGET: usize = MAX_FRAME - 1024;

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
    /// Certificates left out of `certs` to keep the answer within the frame limit.
    #[serde(default)]
    pub omitted: usize,
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

/// A finished directory scan, waiting to be taken into the store.
type Scan = (Vec<Entry>, Vec<Skipped>);

/// The agent's certificates: the store, the directory it follows, and whether plain keys with a
/// certificate are hidden.
///
/// The directory is read on a blocking thread, never on the event loop: a request waits for
/// that read at most [`SCAN_WAIT`], and otherwise answers from the certificates it has.
pub struct AgentCerts {
    store: Mutex<CertStore>,
    dir: Option<Arc<Mutex<DirWatch>>>,
    /// A scan that finished (possibly after its request stopped waiting).
    scanned: Arc<Mutex<Option<Scan>>>,
    certs_only: bool,
    /// Problems already logged: a bad file is reported once, not at every listing.
    warned: Mutex<std::collections::HashSet<String>>,
}

impl AgentCerts {
    pub fn new(dir: Option<PathBuf>, certs_only: bool) -> AgentCerts {
        AgentCerts {
            store: Mutex::new(CertStore::default()),
            dir: dir.map(|d| Arc::new(Mutex::new(DirWatch::new(d)))),
            scanned: Arc::default(),
            certs_only,
            warned: Mutex::default(),
        }
    }

    fn warn_once(&self, message: String) {
        if self.warned.lock().expect("warned lock").insert(message.clone()) {
            tracing::warn!("{}", crate::text::escape(&message));
        }
    }

    /// Pick up directory changes and forget expired added certificates.
    async fn refresh(&self, now: u64, keys: &[&KeyInfo]) {
        {
            let mut store = self.store.lock().expect("cert store lock");
            for gone in store.prune_expired(now) {
                tracing::info!(key_id = %crate::text::escape(gone.cert.key_id()), name = %gone.name, "certificate expired; no longer offered");
            }
        }
        let Some(dir) = &self.dir else { return };
        let (dir, scanned) = (dir.clone(), self.scanned.clone());
        let scan = tokio::task::spawn_blocking(move || {
            // A scan still running (a slow file system) is not started twice.
            let Ok(mut watch) = dir.try_lock() else { return };
            if let Some(result) = watch.poll(Instant::now()) {
                *scanned.lock().expect("scan slot lock") = Some(result);
            }
        });
        let _ = tokio::time::timeout(SCAN_WAIT, scan).await;
        let Some((entries, skipped)) = self.scanned.lock().expect("scan slot lock").take() else { return };
        for s in skipped {
            self.warn_once(format!("certificate file skipped: {}", s.reason));
        }
        let key_data: Vec<KeyData> = keys.iter().map(|k| k.public_key.clone()).collect();
        for e in &entries {
            if let Err(problem) = cert::check_usable(&e.cert, &e.name, now, &key_data) {
                self.warn_once(format!("certificate file not offered: {problem}"));
            }
        }
        self.store.lock().expect("cert store lock").set_dir_entries(entries);
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

    /// The identities to list at this moment: certificates first, then plain keys, within the
    /// frame limit (certificates that do not fit are left out and logged).
    pub async fn identities(&self, keys: &[&KeyInfo]) -> Vec<Identity> {
        let now = cert::unix_now();
        self.refresh(now, keys).await;
        let store = self.store.lock().expect("cert store lock");
        if store.all().next().is_none() {
            // The common case: no certificates at all.
            return keys.iter().map(|k| Identity { credential: PublicCredential::Key(k.public_key.clone()), comment: k.comment() }).collect();
        }
        let key_data: Vec<KeyData> = keys.iter().map(|k| k.public_key.clone()).collect();
        let offerable = store.offerable(now, &key_data);
        let planned: Vec<(Offer, String)> = cert::plan(&key_data, &offerable, self.certs_only)
            .into_iter()
            .map(|offer| {
                let comment = match &offer {
                    Offer::Cert(e) => crate::text::escape(&e.comment()).into_owned(),
                    Offer::Key(k) => keys.iter().find(|i| &i.public_key == *k).map(|i| i.comment()).unwrap_or_default(),
                };
                (offer, comment)
            })
            .collect();
        let (kept, left_out) = cert::fit(planned, ANSWER_BUDGET);
        for e in left_out {
            self.warn_once(format!(
                "certificate {:?} ({}) not listed: the identities answer would exceed the 256 KiB frame limit; remove certificates with `keytap cert remove` or from the directory",
                e.cert.key_id(),
                e.name
            ));
        }
        kept.into_iter()
            .map(|(offer, comment)| match offer {
                Offer::Cert(e) => Identity { credential: PublicCredential::Cert(Box::new(e.cert.clone())), comment },
                Offer::Key(k) => Identity { credential: PublicCredential::Key(k.clone()), comment },
            })
            .collect()
    }

    /// May this certificate sign now? Only one the agent offers at this moment.
    pub async fn signable(&self, certificate: &ssh_key::Certificate, keys: &[&KeyInfo]) -> Result<(), String> {
        let now = cert::unix_now();
        self.refresh(now, keys).await;
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
    pub async fn handle(&self, details: &[u8], keys: &[&KeyInfo]) -> CertReply {
        let now = cert::unix_now();
        self.refresh(now, keys).await;
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
                        tracing::info!(key_id = %crate::text::escape(e.cert.key_id()), name = %crate::text::escape(&name), valid_before = e.cert.valid_before(), "certificate added");
                        CertReply { certs: vec![report(e, now, &key_data)], ..CertReply::default() }
                    }
                    Err(e) => {
                        tracing::warn!("certificate refused: {}", crate::text::escape(&e.to_string()));
                        CertReply { error: Some(e.to_string()), ..CertReply::default() }
                    }
                }
            }
            CertOp::List => {
                // Within the frame limit: the JSON of each report (the certificate's text and
                // its fields) counted as it goes, with room for the string's escaping.
                let mut certs = Vec::new();
                let mut omitted = 0;
                let mut room = ANSWER_BUDGET / 2;
                for e in store.all() {
                    let r = report(e, now, &key_data);
                    let len = serde_json::to_vec(&r).map(|v| v.len()).unwrap_or(usize::MAX);
                    if len <= room {
                        room -= len;
                        certs.push(r);
                    } else {
                        omitted += 1;
                    }
                }
                CertReply { certs, omitted, ..CertReply::default() }
            }
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

    #[tokio::test]
    async fn malformed_request_gets_an_error_reply_not_a_panic() {
        let certs = AgentCerts::new(None, false);
        let reply = certs.handle(&[0, 0, 0, 9, 1], &[]).await;
        assert!(reply.error.unwrap().contains("malformed"));
    }

    fn token_key() -> (ssh_key::PrivateKey, KeyInfo) {
        let k = ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519).unwrap();
        let info = KeyInfo {
            serial: 1,
            slot: crate::token::Slot(0x9a),
            algorithm: crate::token::KeyAlgorithm::Ed25519,
            pin_policy: crate::token::PinPolicy::Once,
            touch_policy: crate::token::TouchPolicy::Never,
            public_key: k.public_key().key_data().clone(),
            fido: None,
        };
        (k, info)
    }

    /// A certificate just under the size cap (many long principals).
    fn large_cert(ca: &ssh_key::PrivateKey, subject: &KeyData, id: &str) -> ssh_key::Certificate {
        let now = cert::unix_now();
        let mut b = ssh_key::certificate::Builder::new_with_random_nonce(&mut rand_core::OsRng, subject.clone(), now - 60, now + 3600).unwrap();
        b.key_id(id).unwrap().cert_type(ssh_key::certificate::CertType::User).unwrap();
        for i in 0..200 {
            b.valid_principal(format!("{id}-principal-{i:04}-{}", "p".repeat(50))).unwrap();
        }
        b.sign(ca).unwrap()
    }

    fn identities_answer_len(ids: Vec<Identity>) -> usize {
        let mut out = Vec::new();
        ssh_agent_lib::proto::Response::IdentitiesAnswer(ids).encode(&mut out).unwrap();
        out.len()
    }

    #[tokio::test]
    async fn many_large_certificates_still_fit_one_answer() {
        let (_, info) = token_key();
        let keys = [&info];
        let certs = AgentCerts::new(None, false);
        let ca = ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519).unwrap();
        let mut added = 0;
        for i in 0..cert::MAX_ADDED + 2 {
            let c = large_cert(&ca, &info.public_key, &format!("big{i}"));
            let blob = c.to_bytes().unwrap();
            assert!(blob.len() > 12 * 1024 && blob.len() <= cert::MAX_CERT_BYTES, "{}", blob.len());
            let reply = certs.handle(&CertOp::Add { blob, name: format!("big{i}-cert.pub") }.encode(), &keys).await;
            match reply.error {
                None => added += 1,
                Some(e) => assert!(e.contains("already holds 32 added certificates"), "{e}"),
            }
        }
        assert_eq!(added, cert::MAX_ADDED, "the count is capped");
        let ids = certs.identities(&keys).await;
        let listed_certs = ids.iter().filter(|i| matches!(i.credential, PublicCredential::Cert(_))).count();
        assert!(listed_certs > 0 && listed_certs < cert::MAX_ADDED, "{listed_certs}");
        assert!(ids.iter().any(|i| i.credential == PublicCredential::Key(info.public_key.clone())), "the plain key is always listed");
        assert!(identities_answer_len(ids) <= MAX_FRAME);
        // `keytap cert list` stays within the frame too, and says what it left out.
        let reply = certs.handle(&CertOp::List.encode(), &keys).await;
        assert!(reply.omitted > 0 && reply.certs.len() + reply.omitted == cert::MAX_ADDED);
        assert!(encode_reply(&reply).len() < MAX_FRAME);
    }

    #[tokio::test]
    async fn a_fifo_in_the_directory_does_not_hold_up_a_listing() {
        let dir = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&dir.path().join("stuck-cert.pub"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero-cert.pub")).unwrap();
        let (_, info) = token_key();
        let certs = AgentCerts::new(Some(dir.path().to_path_buf()), false);
        let ids = certs.identities(&[&info]).await;
        assert_eq!(ids.len(), 1);
        let warned = certs.warned.lock().unwrap().iter().cloned().collect::<Vec<_>>().join("\n");
        assert!(warned.contains("stuck-cert.pub: is not a regular file"), "{warned}");
        assert!(warned.contains("zero-cert.pub: is a symbolic link"), "{warned}");
    }

    #[test]
    fn reply_round_trips() {
        let reply = CertReply { error: Some("no".into()), removed: 2, ..CertReply::default() };
        assert_eq!(decode_reply(&encode_reply(&reply)), Ok(reply));
    }
}
