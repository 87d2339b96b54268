//! The agent: accepts connections, checks who connects, decodes capped frames and answers.
//!
//! Every connection is served on one single-threaded tokio event loop, and no request blocks
//! it: anything that touches a token goes to that token's owner thread (see `token::owner`);
//! confirmations go to their own thread, one at a time (see `confirm`); file writes,
//! known_hosts and /proc reads go to tokio's blocking threads.

pub mod attest_ext;
pub mod binding;
pub mod cert_ext;
pub mod confirm;
pub mod frame;
pub mod lock;
pub mod reload;
pub mod setup_ext;
pub mod socket;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use ssh_agent_lib::proto::{Extension, PublicCredential, Request, Response, SignRequest};
use ssh_encoding::{Decode, Encode};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use zeroize::Zeroizing;

use crate::audit::{self, AuditLog, KeyRecord, PeerRecord, Record};
use crate::host_key::HostKey;
use crate::fido::store::SkStore;
use crate::fido::SkKey;
use crate::peer::PeerInfo;
use crate::policy::{self, Decision, Policy};
use crate::prompt::Prompter;
use crate::purpose::{self, Purpose};
use crate::signature;
use crate::token::owner::{SignContext, TokenHandle};
use crate::token::{FidoKeyInfo, KeyAlgorithm, KeyInfo, PinPolicy, SkSignRequest, TouchPolicy};
use crate::upstream::{self, UpstreamKey, Upstreams};
use crate::remembered::{self, Approval, Approvals, Program};
use binding::Bindings;
use confirm::Confirmer;
use frame::{FrameError, FrameTimeouts};
use lock::AgentLock;

/// Extension names keytap answers besides OpenSSH's.
pub const EXT_QUERY: &str = "query";
pub const EXT_SESSION_BIND: &str = "session-bind@openssh.com";
pub const EXT_STATUS: &str = "keytap-status@keytap.dev";

/// How long a request waits for tokens whose first key read has not ended (a card just found).
const FIRST_READ_WAIT: Duration = Duration::from_secs(5);

/// SSH_AGENTC_REMOVE_ALL_RSA_IDENTITIES (SSH1), still sent by `ssh-add -D`.
const SSH1_REMOVE_ALL_RSA_IDENTITIES: u8 = 9;

/// Connection limits.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub timeouts: FrameTimeouts,
    /// Connections of one uid served at once; a new one beyond that closes that uid's
    /// longest-idle connection (or is itself closed when none is idle).
    pub max_connections: usize,
    /// Directory of `*-cert.pub` certificates to offer (None: only `keytap cert add`).
    pub cert_dir: Option<std::path::PathBuf>,
    /// Hide a plain key while it has a valid certificate.
    pub certs_only: bool,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            timeouts: FrameTimeouts { idle: Duration::from_secs(300), frame: Duration::from_secs(10) },
            max_connections: 4096,
            cert_dir: None,
            certs_only: false,
        }
    }
}

/// The agent's shared state.
pub struct Agent {
    /// Grows while running: YubiKeys plugged in after start are added (see `token::piv`).
    tokens: std::sync::RwLock<Vec<TokenHandle>>,
    lock: AgentLock,
    options: AgentOptions,
    uid: u32,
    certs: cert_ext::AgentCerts,
    /// Replaced whole on reload; a request keeps the policy it started with.
    policy: std::sync::RwLock<Arc<Policy>>,
    /// Where a reload reads the policy again (None: set by the caller, nothing to re-read).
    policy_source: Option<reload::PolicySource>,
    audit: Option<AuditLog>,
    confirmer: Option<Confirmer>,
    /// For PIN-source resets on reload; confirmations go through `confirmer`.
    prompter: Option<Arc<dyn Prompter>>,
    connections: Registry,
    /// sk keys loaded with ssh-add (None: FIDO is off, and ssh-add is refused as before).
    sk: Option<SkStore>,
    upstreams: Upstreams,
    approvals: Approvals,
}

/// Per-connection state.
struct Connection {
    peer: PeerInfo,
    bindings: Bindings,
    /// This connection's own connections to the upstream agents.
    upstream: upstream::Link,
}

impl Connection {
    /// Forwarded: some session-bind on this socket said is_forwarding, or one failed.
    fn forwarded(&self) -> bool {
        self.bindings.forwarded()
    }

    /// Why a local-only request is refused here: ssh or a forwarded peer is on the other end
    /// (some session-bind was tried on this connection).
    fn local_only(&self, what: &str) -> Result<(), String> {
        if self.bindings.remote() {
            return Err(format!(
                "{what} is refused on a forwarded (or session-bound) agent connection; run it on the machine the agent runs on"
            ));
        }
        Ok(())
    }
}

/// The open connections of each uid, to cap them and close the longest-idle one first.
#[derive(Default)]
struct Registry {
    inner: Mutex<RegistryInner>,
}

#[derive(Default)]
struct RegistryInner {
    next_id: u64,
    open: HashMap<u64, Slot>,
}

struct Slot {
    uid: u32,
    /// Waiting for the next request since then; `None` while a request is being answered.
    idle_since: Option<Instant>,
    close: Arc<Notify>,
}

impl Registry {
    /// Admit a connection of `uid`; at `cap`, close that uid's longest-idle connection first.
    fn admit(&self, uid: u32, cap: usize) -> Option<(u64, Arc<Notify>)> {
        let mut inner = self.inner.lock().expect("registry lock");
        let count = inner.open.values().filter(|s| s.uid == uid).count();
        if count >= cap {
            let oldest = inner
                .open
                .iter()
                .filter_map(|(id, s)| Some((*id, s.idle_since?)).filter(|_| s.uid == uid))
                .min_by_key(|(_, since)| *since)
                .map(|(id, _)| id)?;
            let slot = inner.open.remove(&oldest).expect("listed");
            slot.close.notify_one();
            tracing::info!(uid, "{count} connections open for uid {uid}; closed the longest-idle one");
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let close = Arc::new(Notify::new());
        inner.open.insert(id, Slot { uid, idle_since: Some(Instant::now()), close: close.clone() });
        Some((id, close))
    }

    fn set_idle(&self, id: u64, idle: bool) {
        if let Some(slot) = self.inner.lock().expect("registry lock").open.get_mut(&id) {
            slot.idle_since = idle.then(Instant::now);
        }
    }

    fn remove(&self, id: u64) {
        self.inner.lock().expect("registry lock").open.remove(&id);
    }
}

/// Connections that fit under the open-file limit (a few descriptors stay for files, the
/// token and the listener).
fn connection_cap(configured: usize) -> usize {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => configured.min((soft as usize).saturating_sub(64).max(16)),
        Err(_) => configured,
    }
}

/// What `keytap status` and `keytap list` learn from a running agent.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    pub version: String,
    pub pid: u32,
    pub locked: bool,
    pub tokens: Vec<TokenReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenReport {
    pub label: String,
    pub present: bool,
    pub serial: Option<u32>,
    pub model: Option<String>,
    pub firmware: Option<String>,
    pub keys: Vec<KeyReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KeyReport {
    pub serial: u32,
    pub slot: String,
    pub algorithm: String,
    pub pin_policy: String,
    pub touch_policy: String,
    pub fingerprint: String,
    pub authorized_key: String,
}

impl From<&KeyInfo> for KeyReport {
    fn from(k: &KeyInfo) -> Self {
        KeyReport {
            serial: k.serial,
            slot: if k.fido.is_some() { "fido".into() } else { k.slot.to_string() },
            algorithm: k.algorithm.to_string(),
            pin_policy: k.pin_policy.to_string(),
            touch_policy: k.touch_policy.to_string(),
            fingerprint: k.fingerprint(),
            authorized_key: k.authorized_key(),
        }
    }
}

/// Who signs: a token's key, or an upstream agent's.
enum Signer {
    /// A token's key, or a loaded sk key (no token handle: its device is found when signing).
    Local(Option<TokenHandle>, KeyInfo),
    Upstream(UpstreamKey),
}

impl Signer {
    fn key_record(&self) -> KeyRecord {
        match self {
            Signer::Local(_, key) => KeyRecord {
                fingerprint: key.fingerprint(),
                serial: key.serial,
                slot: if key.fido.is_some() { "fido".into() } else { key.slot.to_string() },
            },
            Signer::Upstream(key) => KeyRecord { fingerprint: key.fingerprint(), serial: 0, slot: "upstream".into() },
        }
    }

    fn policy(&self, policy: &Policy) -> policy::KeyPolicy {
        match self {
            Signer::Local(_, key) => policy.for_key(key),
            Signer::Upstream(key) => policy.for_upstream(&key.fingerprint()),
        }
    }

    /// An upstream's keys are software keys as far as keytap knows: no touch.
    fn touch(&self) -> TouchPolicy {
        match self {
            Signer::Local(_, key) => key.touch_policy,
            Signer::Upstream(_) => TouchPolicy::Never,
        }
    }

    /// For a confirmation prompt; the upstream's comment is escaped (the upstream chose it).
    fn describe(&self, upstreams: &Upstreams) -> String {
        match self {
            Signer::Local(_, key) => format!("{} ({})", key.place(), key.fingerprint()),
            Signer::Upstream(key) => format!(
                "{} \"{}\" from upstream agent {}",
                key.fingerprint(),
                crate::text::escape(&key.identity.comment),
                upstreams.path(key.upstream).display()
            ),
        }
    }
}

/// On a session-bound connection, only the keys whose policy could allow a login to the
/// bound destination, certificates first: ssh offers them in this order, and a server's
/// MaxAuthTries counts every key offered.
async fn for_destination(policy: &Policy, conn: &Connection, ids: Vec<ssh_agent_lib::proto::Identity>, keys: &[&KeyInfo], destination: HostKey) -> Vec<ssh_agent_lib::proto::Identity> {
    let candidates = policy.ssh_auth_hosts();
    let host_names = if candidates.is_empty() {
        Vec::new()
    } else {
        let files = policy.known_hosts.clone();
        tokio::task::spawn_blocking(move || host_names(&destination, &candidates, &files, crate::cert::unix_now())).await.unwrap_or_default()
    };
    keep_for_destination(policy, ids, keys, conn.forwarded(), &host_names)
}

/// The pure part of [`for_destination`]: keys a login to a host known as `host_names` could
/// use, certificates first (otherwise in the order given).
fn keep_for_destination(policy: &Policy, mut ids: Vec<ssh_agent_lib::proto::Identity>, keys: &[&KeyInfo], forwarded: bool, host_names: &[String]) -> Vec<ssh_agent_lib::proto::Identity> {
    ids.retain(|id| {
        let key = upstream::credential_key(&id.credential);
        let key_policy = match keys.iter().find(|k| &k.public_key == key) {
            Some(k) => policy.for_key(k),
            None => policy.for_upstream(&key.fingerprint(ssh_key::HashAlg::Sha256).to_string()),
        };
        policy::could_log_in(&key_policy, forwarded, host_names)
    });
    ids.sort_by_key(|id| !matches!(id.credential, PublicCredential::Cert(_)));
    ids
}

/// Upstream keys after keytap's own, without keys keytap already lists, within the frame cap.
fn append_upstream(ids: &mut Vec<ssh_agent_lib::proto::Identity>, upstream_keys: Vec<UpstreamKey>) {
    let mut room = frame::MAX_FRAME.saturating_sub(5 + ids.iter().map(upstream::encoded_len).sum::<usize>());
    for key in upstream_keys {
        if ids.iter().any(|id| id.credential == key.identity.credential) {
            continue;
        }
        let len = upstream::encoded_len(&key.identity);
        if len > room {
            tracing::warn!("the key list is full; upstream key {} is left out of this answer", key.fingerprint());
            continue;
        }
        room -= len;
        ids.push(key.identity);
    }
}

/// Whether an ADD_IDENTITY body carries an sk key (keytap's own FIDO path takes those).
fn is_sk_add(body: &[u8]) -> bool {
    use ssh_agent_lib::proto::PrivateCredential;
    let credential = match parse_request(body) {
        Ok(Request::AddIdentity(add)) => add.credential,
        Ok(Request::AddIdConstrained(add)) => add.identity.credential,
        _ => return false,
    };
    matches!(credential, PrivateCredential::Key { privkey, .. } if SkKey::from_keypair(&privkey, "").is_some())
}

/// Why a sign request got FAILURE: refused by a rule, or failed on the way.
enum Refusal {
    Denied(String),
    Failed(String),
}

fn event_record(event: &str, peer: &PeerInfo, decision: &str, reason: &str) -> Record {
    Record {
        time: audit::now_rfc3339(),
        event: event.into(),
        peer: PeerRecord::from(peer),
        key: None,
        purpose: None,
        details: serde_json::Map::new(),
        forwarded: false,
        decision: decision.into(),
        reason: reason.into(),
        duration_ms: 0,
        data_sha256: None,
    }
}

/// Audit details of a purpose: user, host, method or namespace.
fn describe_purpose(purpose: &Purpose, host_key: Option<&HostKey>, host_names: &[String], details: &mut serde_json::Map<String, serde_json::Value>) {
    match purpose {
        Purpose::SshAuth { user, method, .. } => {
            details.insert("user".into(), user.clone().into());
            details.insert("method".into(), method.clone().into());
            if let Some(h) = host_key {
                let host = if host_names.is_empty() { h.fingerprint() } else { host_names.join(",") };
                details.insert("host".into(), host.into());
                details.insert("host_key".into(), h.fingerprint().into());
                if let Some(cert) = h.certificate() {
                    details.insert("host_cert_id".into(), cert.key_id.clone().into());
                    details.insert("host_cert_ca".into(), cert.signature_key.fingerprint(ssh_key::HashAlg::Sha256).to_string().into());
                }
            }
        }
        Purpose::SshSig { namespace, hash } => {
            details.insert("namespace".into(), namespace.clone().into());
            details.insert("hash".into(), hash.clone().into());
        }
        Purpose::Jws(info) => {
            details.insert("alg".into(), info.alg.clone().into());
            if let Some(kid) = &info.kid {
                details.insert("kid".into(), kid.clone().into());
            }
            if let Some(repo) = &info.repository {
                details.insert("repository".into(), repo.clone().into());
            }
            if let Some(command) = &info.command {
                // Enough to recognise the step; a long script would swamp the log.
                let short: String = command.chars().take(200).collect();
                details.insert("command".into(), short.into());
            }
        }
        Purpose::Raw => {}
    }
}

fn encode(response: Response) -> Vec<u8> {
    let mut out = Vec::new();
    response.encode(&mut out).expect("encoding a response cannot fail");
    out
}

fn failure() -> Vec<u8> {
    encode(Response::Failure)
}

/// SIGN_RESPONSE (14) carrying a signature blob keytap encoded itself (see `fido::signature_blob`).
fn sign_response(blob: &[u8]) -> Vec<u8> {
    let mut out = vec![14u8];
    blob.encode(&mut out).expect("encoding to a vec");
    out
}

/// An sk key as the rest of the agent sees keys (policy, certificates, list).
fn sk_key_info(sk: &SkKey) -> KeyInfo {
    KeyInfo {
        serial: 0,
        slot: crate::token::Slot(0),
        algorithm: if sk.is_ecdsa() { KeyAlgorithm::P256 } else { KeyAlgorithm::Ed25519 },
        pin_policy: if sk.needs_verification() { PinPolicy::Always } else { PinPolicy::Never },
        touch_policy: if sk.needs_touch() { TouchPolicy::Always } else { TouchPolicy::Never },
        public_key: sk.public_key.clone(),
        fido: Some(FidoKeyInfo { application: sk.application().to_string(), flags: sk.flags, comment: sk.comment.clone() }),
    }
}

impl Agent {
    pub fn new(tokens: Vec<TokenHandle>, options: AgentOptions) -> Agent {
        let certs_options = options.clone();
        Agent {
            tokens: std::sync::RwLock::new(tokens),
            lock: AgentLock::default(),
            options,
            uid: nix::unistd::geteuid().as_raw(),
            policy: std::sync::RwLock::new(Arc::new(Policy::default())),
            policy_source: None,
            audit: None,
            confirmer: None,
            prompter: None,
            connections: Registry::default(),
            sk: None,
            upstreams: Upstreams::new(Vec::new(), upstream::Timeouts::default()),
            approvals: Approvals::default(),
            certs: cert_ext::AgentCerts::new(certs_options.cert_dir, certs_options.certs_only),
        }
    }

    /// Decide every signature against this policy (default: everything, forwarded never silent).
    pub fn with_policy(mut self, policy: Policy) -> Agent {
        self.policy = std::sync::RwLock::new(Arc::new(policy));
        self
    }

    /// Read the policy again from here on reload (SIGHUP, `keytap reload`).
    pub fn with_policy_source(mut self, source: reload::PolicySource) -> Agent {
        self.policy_source = Some(source);
        self
    }

    /// Serve these upstream agents' keys after the tokens' (see `upstream`).
    pub fn with_upstreams(mut self, upstreams: Upstreams) -> Agent {
        self.upstreams = upstreams;
        self
    }

    /// Record every request in this audit log before answering.
    pub fn with_audit(mut self, audit: AuditLog) -> Agent {
        self.audit = Some(audit);
        self
    }

    /// Ask for confirmations through this prompter (none: confirmations are refused), on a
    /// thread of their own.
    pub fn with_prompter(mut self, prompter: Arc<dyn Prompter>) -> Agent {
        self.confirmer = Some(Confirmer::spawn(prompter.clone()));
        self.prompter = Some(prompter);
        self
    }

    /// Serve sk keys loaded with ssh-add, kept in this store, on the FIDO devices among the tokens.
    pub fn with_sk_store(mut self, store: SkStore) -> Agent {
        self.sk = Some(store);
        self
    }

    /// Every key the agent offers: the tokens' keys and the loaded sk keys.
    fn all_keys(&self) -> Vec<KeyInfo> {
        let mut keys: Vec<KeyInfo> = self.tokens().iter().flat_map(|t| t.keys().iter().cloned().collect::<Vec<_>>()).collect();
        if let Some(store) = &self.sk {
            keys.extend(store.keys().iter().map(sk_key_info));
        }
        keys
    }

    /// The FIDO devices (token owners labelled `fido:`).
    fn fido_devices(&self) -> Vec<TokenHandle> {
        self.tokens().into_iter().filter(|t| t.label().starts_with("fido:")).collect()
    }

    /// Append a record; `false` when it could not be written (the request is then refused).
    async fn audit(&self, record: Record) -> bool {
        let Some(log) = self.audit.clone() else { return true };
        match tokio::task::spawn_blocking(move || log.append(&record)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!("{e}; refusing requests until the audit log can be written");
                false
            }
            Err(e) => {
                tracing::error!("audit writer failed: {e}");
                false
            }
        }
    }

    pub fn tokens(&self) -> Vec<TokenHandle> {
        self.tokens.read().expect("tokens lock").clone()
    }

    /// Serve one more token (a YubiKey plugged in after start).
    pub fn add_token(&self, token: TokenHandle) {
        self.tokens.write().expect("tokens lock").push(token);
    }

    /// Serve connections until `shutdown` resolves.
    pub async fn serve(self: Arc<Self>, listener: UnixListener, shutdown: impl std::future::Future<Output = ()>) {
        let cap = connection_cap(self.options.max_connections);
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                _ = &mut shutdown => return,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::error!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // SO_PEERCRED is one cheap syscall: count the connection under its uid at once.
            let credentials = match PeerInfo::credentials(&stream) {
                Ok(credentials) => credentials,
                Err(e) => {
                    tracing::warn!("cannot read peer credentials: {e}; closing");
                    continue;
                }
            };
            let Some((id, close)) = self.connections.admit(credentials.uid, cap) else {
                tracing::warn!(uid = credentials.uid, "{cap} connections of uid {} are busy; closing a new one", credentials.uid);
                continue;
            };
            let agent = self.clone();
            tokio::spawn(async move {
                tokio::select! {
                    biased;
                    _ = close.notified() => tracing::debug!("closed an idle connection to make room"),
                    _ = agent.connection(id, stream, credentials) => {}
                }
                agent.connections.remove(id);
            });
        }
    }

    async fn connection(&self, id: u64, mut stream: UnixStream, credentials: PeerInfo) {
        let fallback = credentials.clone();
        let peer = tokio::task::spawn_blocking(move || credentials.with_process_details()).await.unwrap_or(fallback);
        if peer.uid != self.uid {
            tracing::warn!(peer_uid = peer.uid, pid = ?peer.pid, exe = ?peer.exe, "refused a connection from another user (uid {} is not {})", peer.uid, self.uid);
            self.audit(event_record("refused-peer", &peer, "deny", &format!("uid {} is not the agent's uid {}", peer.uid, self.uid))).await;
            return;
        }
        tracing::debug!(peer = %peer, "connected");
        let mut conn = Connection { peer, bindings: Bindings::default(), upstream: upstream::Link::default() };
        let (reader, mut writer) = stream.split();
        let mut reader = frame::FrameReader::new(reader);
        loop {
            self.connections.set_idle(id, true);
            let next = reader.next(self.options.timeouts).await;
            self.connections.set_idle(id, false);
            let body = match next {
                Ok(body) => body,
                Err(FrameError::Closed) => return,
                Err(e) => {
                    tracing::info!(peer = %conn.peer, "closing connection: {e}");
                    return;
                }
            };
            let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let answer = if body.first() == Some(&13) {
                // A signature may wait behind others or for a touch: a client that hangs up
                // meanwhile cancels it. A request still queued for its token is dropped before
                // it reaches it; a security key's wait is cancelled (CTAPHID CANCEL), so the
                // key stops blinking for nobody.
                let body = Zeroizing::new(body.to_vec());
                let handling = self.handle(&mut conn, &body, cancel.clone());
                tokio::pin!(handling);
                tokio::select! {
                    answer = &mut handling => answer,
                    () = hangup(reader.get_mut()) => {
                        cancel.store(true, std::sync::atomic::Ordering::SeqCst);
                        handling.await
                    }
                }
            } else {
                self.handle(&mut conn, &body, cancel).await
            };
            if let Err(e) = frame::write_frame(&mut writer, &answer).await {
                tracing::debug!(peer = %conn.peer, "client went away before the answer: {e}");
                return;
            }
        }
    }

    /// Answer one request; every path produces an answer (FAILURE at worst).
    async fn handle(&self, conn: &mut Connection, body: &[u8], cancel: Arc<std::sync::atomic::AtomicBool>) -> Vec<u8> {
        // `ssh-add FILE` of a software key goes to an upstream as it came (keytap never keeps
        // private keys); sk keys are keytap's own (see `add_sk`).
        let adding = matches!(body.first(), Some(&upstream::SSH_AGENTC_ADD_IDENTITY | &upstream::SSH_AGENTC_ADD_ID_CONSTRAINED));
        if adding && !self.upstreams.is_empty() && !is_sk_add(body) {
            return self.add_to_upstream(conn, body).await;
        }
        let request = match parse_request(body) {
            Ok(request) => request,
            Err(e) => {
                // `ssh-add -D` follows its request with SSH1's REMOVE_ALL_RSA_IDENTITIES (9), to
                // any agent: ordinary, answered FAILURE as OpenSSH's agent does, not a warning.
                if body == [SSH1_REMOVE_ALL_RSA_IDENTITIES] {
                    tracing::debug!(peer = %conn.peer, "SSH1 remove-all (from ssh-add -D): no SSH1 keys here");
                } else {
                    tracing::warn!(peer = %conn.peer, message = body.first().copied().unwrap_or(0), "{e}; refused");
                }
                return failure();
            }
        };
        if matches!(request, Request::RequestIdentities | Request::SignRequest(_) | Request::Extension(_)) {
            self.first_reads().await;
        }
        match request {
            Request::RequestIdentities => self.identities(conn).await,
            Request::SignRequest(req) => self.sign(conn, req, cancel).await,
            Request::AddIdentity(add) => self.add_sk(conn, add.credential, &[]).await,
            Request::AddIdConstrained(add) => self.add_sk(conn, add.identity.credential, &add.constraints).await,
            Request::RemoveIdentity(remove) if !self.upstreams.is_empty() && !self.is_loaded_sk(&remove.credential) => {
                self.remove_from_upstream(conn, remove.credential, body).await
            }
            Request::RemoveIdentity(remove) => self.remove_sk(conn, remove.credential).await,
            Request::Extension(ext) => self.extension(conn, ext).await,
            Request::Lock(passphrase) => {
                let ok = self.lock.lock(Zeroizing::new(passphrase)).await;
                if ok {
                    // A lock ends every remembered approval.
                    self.approvals.clear();
                }
                tracing::info!(peer = %conn.peer, "lock: {}", if ok { "locked" } else { "refused (already locked)" });
                self.audit(event_record("lock", &conn.peer, if ok { "allow" } else { "deny" }, if ok { "" } else { "already locked" })).await;
                encode(if ok { Response::Success } else { Response::Failure })
            }
            Request::Unlock(passphrase) => {
                let ok = self.lock.unlock(Zeroizing::new(passphrase)).await;
                tracing::info!(peer = %conn.peer, "unlock: {}", if ok { "unlocked" } else { "refused" });
                self.audit(event_record("unlock", &conn.peer, if ok { "allow" } else { "deny" }, if ok { "" } else { "wrong passphrase or not locked" })).await;
                encode(if ok { Response::Success } else { Response::Failure })
            }
            Request::RemoveAllIdentities => {
                // `ssh-add -D`: keys stay on their tokens; let go of the cards for other programs
                // (which also forgets their verified PINs: not for a forwarded peer to do).
                if let Err(reason) = conn.local_only("ssh-add -D") {
                    tracing::warn!(peer = %conn.peer, "{reason}");
                    self.audit(event_record("remove-all", &conn.peer, "deny", &reason)).await;
                    return failure();
                }
                if !self.audit(event_record("remove-all", &conn.peer, "allow", "")).await {
                    return failure();
                }
                // `ssh-add -D`: loaded sk keys are forgotten; keys stay on their tokens; let go
                // of the cards for other programs.
                if let Some(store) = self.sk.clone() {
                    if conn.forwarded() {
                        tracing::warn!(peer = %conn.peer, "ssh-add -D through a forwarded agent: sk keys kept (nothing changes through a forwarded agent)");
                    } else {
                        match tokio::task::spawn_blocking(move || store.remove_all()).await {
                            Ok(Ok(n)) => tracing::info!(peer = %conn.peer, removed = n, "ssh-add -D: removed the loaded sk keys"),
                            Ok(Err(e)) => {
                                tracing::error!("{e}");
                                return failure();
                            }
                            Err(_) => return failure(),
                        }
                    }
                }
                for token in &self.tokens() {
                    token.release();
                }
                tracing::info!(peer = %conn.peer, "ssh-add -D: keys live on tokens and stay listed; released the tokens for other programs");
                if !self.upstreams.is_empty() {
                    return self.remove_all_upstream(conn).await;
                }
                encode(Response::Success)
            }
            other => {
                tracing::warn!(
                    peer = %conn.peer,
                    message = other.message_id(),
                    "refused: keytap keys live on hardware tokens; keys cannot be added to or removed from the agent (use `keytap setup` to create a key on a token)"
                );
                failure()
            }
        }
    }

    /// Let a request that arrives before a token's first key read (the one that started the
    /// agent under socket activation, or one right after a card was plugged in) see its keys.
    async fn first_reads(&self) {
        if self.tokens.read().expect("tokens lock").iter().all(TokenHandle::is_ready) {
            return;
        }
        let unread = crate::token::owner::wait_first_reads(|| self.tokens(), FIRST_READ_WAIT).await;
        if !unread.is_empty() {
            tracing::warn!(tokens = ?unread, "answering without these tokens' keys: their first key read took over {} s", FIRST_READ_WAIT.as_secs());
        }
    }

    /// `ssh-add` of a key: sk records only (public data and key handle); any software private
    /// key is refused, as keytap holds no secrets.
    async fn add_sk(&self, conn: &Connection, credential: ssh_agent_lib::proto::PrivateCredential, constraints: &[ssh_agent_lib::proto::KeyConstraint]) -> Vec<u8> {
        use ssh_agent_lib::proto::{KeyConstraint, PrivateCredential};
        let (keypair, comment) = match &credential {
            PrivateCredential::Key { privkey, comment } => (privkey, comment.clone()),
            PrivateCredential::Cert { .. } => {
                tracing::warn!(peer = %conn.peer, "ssh-add refused: certificates are offered from the cert directory (`keytap cert add`), not added with their key");
                return failure();
            }
        };
        let Some(mut key) = SkKey::from_keypair(keypair, &comment) else {
            tracing::warn!(peer = %conn.peer, "ssh-add refused: a software {} private key; keytap keys live on hardware tokens and keytap never holds private keys (only FIDO sk keys, whose secret stays on the security key, can be added); no upstream agent is configured: start keytap with `--upstream SOCKET` to keep software keys in another agent behind it (docs/upstream.md)", keypair.algorithm().map(|a| a.to_string()).unwrap_or_default());
            return failure();
        };
        let Some(store) = self.sk.clone() else {
            tracing::warn!(peer = %conn.peer, "ssh-add refused: FIDO keys are off (--no-fido, or --token mock without --fido-device); start the agent with FIDO to load sk keys");
            return failure();
        };
        if self.lock.is_locked() {
            tracing::warn!(peer = %conn.peer, "ssh-add refused: the agent is locked (unlock with `ssh-add -X`)");
            return failure();
        }
        if conn.bindings.remote() {
            tracing::warn!(peer = %conn.peer, "ssh-add refused through a forwarded agent: nothing changes the agent's keys remotely");
            return failure();
        }
        for constraint in constraints {
            match constraint {
                KeyConstraint::Extension(ext) if ext.name == "sk-provider@openssh.com" => {
                    // OpenSSH sends `string name, string provider`; the library already took
                    // the provider's length prefix.
                    let provider = String::from_utf8_lossy(ext.details.as_ref()).into_owned();
                    if provider != "internal" {
                        tracing::warn!(peer = %conn.peer, provider, "ssh-add refused: keytap uses its own libfido2 access, not an sk provider library");
                        return failure();
                    }
                }
                other => {
                    tracing::warn!(peer = %conn.peer, "ssh-add refused: constraint {other:?} is not supported for sk keys; use keytap's policy (config.toml) for confirmations");
                    return failure();
                }
            }
        }
        key.device = None;
        let fingerprint = key.fingerprint();
        let application = key.application().to_string();
        match tokio::task::spawn_blocking(move || store.add(key)).await {
            Ok(Ok(())) => {
                tracing::info!(peer = %conn.peer, key = %fingerprint, application, "ssh-add: loaded an sk key");
                self.audit(event_record("add-key", &conn.peer, "allow", &format!("{fingerprint} {application}"))).await;
                encode(Response::Success)
            }
            Ok(Err(e)) => {
                tracing::error!("ssh-add: {e}");
                failure()
            }
            Err(_) => failure(),
        }
    }

    /// `ssh-add -d`: forget a loaded sk key (token keys stay: they live on the token).
    async fn remove_sk(&self, conn: &Connection, credential: PublicCredential) -> Vec<u8> {
        let key = match credential {
            PublicCredential::Key(k) => k,
            PublicCredential::Cert(c) => c.public_key().clone(),
        };
        let Some(store) = self.sk.clone().filter(|s| s.find(&key).is_some()) else {
            tracing::warn!(peer = %conn.peer, "ssh-add -d refused: the key is not a loaded sk key; keytap keys live on hardware tokens and stay there (only sk keys loaded with ssh-add can be removed)");
            return failure();
        };
        if conn.bindings.remote() || self.lock.is_locked() {
            tracing::warn!(peer = %conn.peer, "ssh-add -d refused: through a forwarded agent, or while the agent is locked");
            return failure();
        }
        let fingerprint = key.fingerprint(ssh_key::HashAlg::Sha256).to_string();
        match tokio::task::spawn_blocking(move || store.remove(&key)).await {
            Ok(Ok(true)) => {
                tracing::info!(peer = %conn.peer, key = %fingerprint, "ssh-add -d: removed an sk key");
                self.audit(event_record("remove-key", &conn.peer, "allow", &fingerprint)).await;
                encode(Response::Success)
            }
            _ => failure(),
        }
    }

    async fn identities(&self, conn: &mut Connection) -> Vec<u8> {
        if self.lock.is_locked() {
            return encode(Response::IdentitiesAnswer(Vec::new()));
        }
        let all = self.all_keys();
        let keys: Vec<&KeyInfo> = all.iter().collect();
        let mut ids = self.certs.identities(&keys).await;
        if !self.upstreams.is_empty() {
            let upstream_keys = self.upstreams.identities(&mut conn.upstream).await;
            append_upstream(&mut ids, upstream_keys);
        }
        // Only ssh about to log in binds without is_forwarding; a forwarded socket's other
        // clients (git, ssh-keygen on the remote host) see every key.
        let policy = self.policy.read().expect("policy lock").clone();
        let login = conn.bindings.last().filter(|b| !b.forwarded && policy.list_by_destination());
        if let Some(destination) = login.map(|b| b.host_key.clone()) {
            ids = for_destination(&policy, conn, ids, &keys, destination).await;
        }
        encode(Response::IdentitiesAnswer(ids))
    }

    /// A loaded sk key (ssh-add -d of it is FIDO's, not an upstream's).
    fn is_loaded_sk(&self, credential: &PublicCredential) -> bool {
        self.sk.as_ref().is_some_and(|s| s.find(upstream::credential_key(credential)).is_some())
    }

    async fn sign(&self, conn: &mut Connection, req: SignRequest, cancel: Arc<std::sync::atomic::AtomicBool>) -> Vec<u8> {
        let started = Instant::now();
        let data_sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&req.data));
        let mut record = Record {
            time: audit::now_rfc3339(),
            event: "sign".into(),
            peer: PeerRecord::from(&conn.peer),
            key: None,
            purpose: None,
            details: serde_json::Map::new(),
            forwarded: conn.forwarded(),
            decision: "deny".into(),
            reason: String::new(),
            duration_ms: 0,
            data_sha256: Some(data_sha256),
        };
        let outcome = self.sign_inner(conn, req, &mut record, cancel).await;
        record.duration_ms = started.elapsed().as_millis() as u64;
        let key = record.key.as_ref().map(|k| k.fingerprint.clone()).unwrap_or_else(|| "-".into());
        let purpose = record.purpose.clone().unwrap_or_else(|| "-".into());
        let answer = match outcome {
            Ok(blob) => {
                let remembered = record.details.get("remembered").is_some_and(|v| v == true);
                record.decision = if remembered { "allow (remembered)" } else { "allow" }.into();
                tracing::info!(peer = %conn.peer, chain = %conn.peer.chain(), key = %key, purpose = %purpose, forwarded = record.forwarded, ms = record.duration_ms, "signed");
                sign_response(&blob)
            }
            Err(Refusal::Denied(reason)) => {
                record.decision = "deny".into();
                tracing::warn!(peer = %conn.peer, chain = %conn.peer.chain(), key = %key, purpose = %purpose, "sign refused: {reason}");
                record.reason = reason;
                failure()
            }
            Err(Refusal::Failed(reason)) => {
                record.decision = "error".into();
                tracing::warn!(peer = %conn.peer, key = %key, purpose = %purpose, "sign failed: {reason}");
                record.reason = reason;
                failure()
            }
        };
        if !self.audit(record).await {
            return failure();
        }
        answer
    }

    async fn sign_inner(&self, conn: &mut Connection, req: SignRequest, record: &mut Record, cancel: Arc<std::sync::atomic::AtomicBool>) -> Result<Vec<u8>, Refusal> {
        if self.lock.is_locked() {
            return Err(Refusal::Denied("the agent is locked (unlock with `ssh-add -X`)".into()));
        }
        let key_data = match &req.credential {
            PublicCredential::Key(k) => k.clone(),
            PublicCredential::Cert(c) => {
                // Only a certificate this agent offers right now may sign.
                let all = self.all_keys();
                let keys: Vec<&KeyInfo> = all.iter().collect();
                self.certs.signable(c, &keys).await.map_err(Refusal::Denied)?;
                c.public_key().clone()
            }
        };
        let sk_key = self.sk.as_ref().and_then(|s| s.find(&key_data));
        let signer = match &sk_key {
            Some(sk) => Signer::Local(None, sk_key_info(sk)),
            None => match self.tokens().iter().find_map(|t| t.find(&key_data).map(|k| (t.clone(), k))) {
                Some((token, key)) => Signer::Local(Some(token), key),
                None => match self.upstreams.find_or_ask(&mut conn.upstream, &key_data).await {
                    Some(key) => {
                        record.details.insert("upstream".into(), self.upstreams.path(key.upstream).display().to_string().into());
                        // SHA-1 `ssh-rsa` is refused whoever holds the key.
                        let sha2 = signature::SSH_AGENT_RSA_SHA2_256 | signature::SSH_AGENT_RSA_SHA2_512;
                        if matches!(key.key_data().algorithm(), ssh_key::Algorithm::Rsa { .. }) && req.flags & sha2 == 0 {
                            record.key = Some(Signer::Upstream(key).key_record());
                            return Err(Refusal::Denied(signature::SchemeError::RsaSha1.to_string()));
                        }
                        Signer::Upstream(key)
                    }
                    None => {
                        record.key = Some(KeyRecord { fingerprint: key_data.fingerprint(ssh_key::HashAlg::Sha256).to_string(), serial: 0, slot: "-".into() });
                        return Err(Refusal::Denied("no token or upstream agent holds this key".into()));
                    }
                },
            },
        };
        record.key = Some(signer.key_record());
        let scheme = match (&signer, &sk_key) {
            (Signer::Local(_, key), None) => Some(signature::scheme_for(&key.public_key, req.flags).map_err(|e| Refusal::Denied(e.to_string()))?),
            _ => None,
        };
        let purpose = purpose::classify_credential(&req.data, &req.credential).map_err(|e| Refusal::Denied(e.to_string()))?;
        record.purpose = Some(purpose.name());
        if let Some(sk) = &sk_key {
            record.details.insert("application".into(), sk.application().into());
            sk.websafe_allows(&purpose).map_err(Refusal::Denied)?;
        }
        // The destination of a login: the bound session's verified host key (or, on an unbound
        // local connection, the one a hostbound request names).
        let host_key = conn.bindings.destination(&purpose).map_err(Refusal::Denied)?;
        let policy = self.policy.read().expect("policy lock").clone();
        let key_policy = signer.policy(&policy);
        let host_names = match (&purpose, &host_key) {
            (Purpose::SshAuth { .. }, Some(host_key)) => {
                let candidates: Vec<String> = key_policy
                    .allow
                    .iter()
                    .filter_map(|a| match a {
                        policy::Allow::SshAuthHost(h) => Some(h.clone()),
                        _ => None,
                    })
                    .collect();
                let files = policy.known_hosts.clone();
                let host_key = host_key.clone();
                tokio::task::spawn_blocking(move || host_names(&host_key, &candidates, &files, crate::cert::unix_now()))
                    .await
                    .unwrap_or_default()
            }
            _ => Vec::new(),
        };
        describe_purpose(&purpose, host_key.as_ref(), &host_names, &mut record.details);
        let request = policy::Request {
            purpose: &purpose,
            forwarded: conn.forwarded(),
            host_key: host_key.as_ref().map(HostKey::key),
            host_names: &host_names,
            touch: signer.touch(),
        };
        match policy::decide(&request, &key_policy) {
            Decision::Allow => {}
            Decision::Deny(reason) => return Err(Refusal::Denied(reason)),
            Decision::Confirm => {
                // confirm = "remember:D": one yes per program, key, purpose and destination;
                // a forwarded use is always asked.
                let remember = match key_policy.remember.filter(|_| !conn.forwarded()) {
                    Some(duration) => Some((self.approval(conn, &signer, &purpose, host_key.as_ref()).await, duration)),
                    None => None,
                };
                if remember.as_ref().is_some_and(|(approval, _)| self.approvals.recalls(approval, Instant::now())) {
                    record.details.insert("remembered".into(), true.into());
                } else {
                    // The warning first, and the peer's text (user name, process names) escaped,
                    // so nothing the peer chose can push it out of view.
                    let message = format!(
                        "{}Allow {} ({}) to {} with key {}?",
                        if conn.forwarded() { "FORWARDED agent: " } else { "" },
                        conn.peer,
                        crate::text::escape(&conn.peer.chain()),
                        crate::text::escape(&purpose.describe()),
                        signer.describe(&self.upstreams),
                    );
                    let Some(confirmer) = &self.confirmer else {
                        return Err(Refusal::Denied("confirmation required but no prompter is configured".into()));
                    };
                    let yes = confirmer.ask(message).await.map_err(|e| Refusal::Denied(e.to_string()))?;
                    record.details.insert("confirmed".into(), yes.into());
                    if !yes {
                        return Err(Refusal::Denied("the user did not confirm".into()));
                    }
                    self.still_unlocked("the confirmation")?;
                    if let Some((approval, duration)) = remember {
                        self.approvals.remember(approval, duration, Instant::now());
                    }
                }
            }
        }
        // Name the destination in PIN prompts and touch notices when it is known.
        let what = match record.details.get("host").and_then(|h| h.as_str()) {
            Some(host) => format!("{} on {host}", purpose.describe()),
            None => purpose.describe(),
        };
        let context = SignContext { requester: conn.peer.to_string(), purpose: what, terminal: conn.peer.terminal.clone(), gone: Some(cancel.clone()) };
        if let Some(sk) = sk_key {
            return self.sign_sk(sk, req.data, context, cancel, record).await;
        }
        let (token, key) = match signer {
            Signer::Local(token, key) => (token, key),
            Signer::Upstream(key) => {
                let data = req.data.clone();
                let mut body = Vec::new();
                Request::SignRequest(req).encode(&mut body).map_err(|e| Refusal::Failed(e.to_string()))?;
                let signature = self.upstreams.sign(&mut conn.upstream, &key, &body, &data).await.map_err(|e| Refusal::Failed(e.to_string()))?;
                self.still_unlocked("the upstream agent")?;
                let mut blob = Vec::new();
                signature.encode(&mut blob).map_err(|e| Refusal::Failed(e.to_string()))?;
                return Ok(blob);
            }
        };
        let (Some(token), Some(scheme)) = (token, scheme) else { unreachable!("a token key has a token and a scheme") };
        let raw = token.sign(key.clone(), scheme, req.data, context).await.map_err(|e| Refusal::Failed(e.to_string()))?;
        // A signature that waited for a PIN or a touch is not handed out if the agent was
        // locked in the meantime.
        self.still_unlocked("the token")?;
        let sig = signature::ssh_signature(scheme, &raw).map_err(|e| Refusal::Failed(e.to_string()))?;
        let mut blob = Vec::new();
        sig.encode(&mut blob).map_err(|e| Refusal::Failed(e.to_string()))?;
        Ok(blob)
    }

    /// Sign with an sk key on its device: the remembered one, the only one, or the one a
    /// silent probe finds (as sk-usbhid does; never a touch on the wrong device).
    async fn sign_sk(&self, sk: SkKey, data: Vec<u8>, context: SignContext, cancel: Arc<std::sync::atomic::AtomicBool>, record: &mut Record) -> Result<Vec<u8>, Refusal> {
        let devices = self.fido_devices();
        if devices.is_empty() {
            return Err(Refusal::Failed("no FIDO device is configured or plugged in; plug in the security key (or pass --fido-device) and retry".into()));
        }
        let device = match devices.iter().find(|d| sk.device.as_deref().is_some_and(|p| d.label() == format!("fido:{p}"))) {
            Some(d) => d.clone(),
            None if devices.len() == 1 => devices[0].clone(),
            None => self.probe_sk(&devices, &sk).await.ok_or_else(|| Refusal::Failed("no plugged-in security key holds this key handle; plug in the key it was made on".into()))?,
        };
        let request = SkSignRequest {
            rp_id: sk.application().to_string(),
            key_handle: sk.key_handle.clone(),
            data: data.clone(),
            up: sk.needs_touch(),
            uv_required: sk.needs_verification(),
            cancel: Some(cancel),
            probe: false,
        };
        record.details.insert("device".into(), device.label().trim_start_matches("fido:").into());
        let assertion = device.sign_sk(request, context).await.map_err(|e| Refusal::Failed(e.to_string()))?;
        self.still_unlocked("the security key")?;
        record.details.insert("flags".into(), format!("0x{:02x}", assertion.flags).into());
        record.details.insert("counter".into(), assertion.counter.into());
        let checked = crate::fido::ffi::Assertion { flags: assertion.flags, counter: assertion.counter, signature: assertion.signature };
        crate::fido::verify_assertion(&sk, &data, &checked).map_err(Refusal::Failed)?;
        if let Some(store) = self.sk.clone() {
            let (public_key, path) = (sk.public_key.clone(), assertion.device.clone());
            let _ = tokio::task::spawn_blocking(move || store.set_device(&public_key, &path)).await;
        }
        crate::fido::signature_blob(&sk, &checked).map_err(Refusal::Failed)
    }

    /// Which device holds this key handle: ask each without a touch (up=false).
    async fn probe_sk(&self, devices: &[TokenHandle], sk: &SkKey) -> Option<TokenHandle> {
        for device in devices {
            let request = SkSignRequest {
                rp_id: sk.application().to_string(),
                key_handle: sk.key_handle.clone(),
                data: vec![0; 32],
                up: false,
                uv_required: false,
                cancel: None,
                probe: true,
            };
            match device.sign_sk(request, SignContext::default()).await {
                // A PIN-protected (verify-required) credential answers "PIN required" or "no
                // credentials" without the PIN; only a plain match is taken as proof here.
                Ok(_) => return Some(device.clone()),
                Err(e) => tracing::debug!(device = device.label(), "probe: {e}"),
            }
        }
        None
    }

    /// What a yes to this use covers (reads /proc on a blocking thread).
    async fn approval(&self, conn: &Connection, signer: &Signer, purpose: &Purpose, host_key: Option<&HostKey>) -> Approval {
        let peer = conn.peer.clone();
        let fallback = Program { exe: None, ancestors: Vec::new(), chain: peer.chain() };
        let program = tokio::task::spawn_blocking(move || Program::of(&peer)).await.unwrap_or(fallback);
        let destination = match purpose {
            Purpose::SshAuth { .. } => host_key.map(|h| h.fingerprint()).unwrap_or_default(),
            _ => String::new(),
        };
        Approval { program, key: signer.key_record().fingerprint, purpose: purpose.name(), destination }
    }

    /// Forget every remembered approval (SIGUSR1, `keytap approvals clear`); how many.
    pub fn forget_approvals(&self) -> usize {
        self.approvals.clear()
    }

    /// SIGUSR1, as OpenSSH 10's agent: forget remembered approvals and loaded sk keys, and
    /// release the tokens.
    pub async fn forget_on_signal(&self) {
        let approvals = self.approvals.clear();
        let sk = match self.sk.clone() {
            Some(store) => match tokio::task::spawn_blocking(move || store.remove_all()).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    tracing::error!("SIGUSR1: {e}");
                    0
                }
                Err(_) => 0,
            },
            None => 0,
        };
        for token in self.tokens() {
            token.release();
        }
        tracing::info!("SIGUSR1: forgot {approvals} remembered approvals and {sk} loaded sk keys; released the tokens");
    }

    /// `keytap approvals [clear]`, for the local user only.
    async fn approvals_extension(&self, conn: &Connection, ext: &Extension) -> Vec<u8> {
        let op = String::decode(&mut ext.details.as_ref()).unwrap_or_default();
        let mut reply = remembered::Reply::default();
        if let Err(reason) = conn.local_only("keytap approvals") {
            reply.error = Some(reason);
        } else if self.lock.is_locked() {
            reply.error = Some("the agent is locked; unlock it with `ssh-add -X`".into());
        } else {
            match op.as_str() {
                "list" => reply.approvals = self.approvals.list(Instant::now()),
                "clear" => {
                    reply.cleared = self.approvals.clear();
                    tracing::info!(peer = %conn.peer, "forgot {} remembered approvals", reply.cleared);
                    self.audit(event_record("approvals-clear", &conn.peer, "allow", "")).await;
                }
                other => reply.error = Some(format!("unknown approvals operation {:?}", crate::text::escape(other))),
            }
        }
        let json = serde_json::to_vec(&reply).expect("approvals reply serialises");
        encode(Response::ExtensionResponse(Extension { name: remembered::EXT_APPROVALS.into(), details: json.into() }))
    }

    /// Upstream agents see the client's session-binds, so their own destination constraints
    /// keep working (keytap's binding rules apply to their keys as well).
    async fn pass_on_session_bind(&self, conn: &mut Connection, ext: Extension) {
        if self.upstreams.is_empty() {
            return;
        }
        let mut body = Vec::new();
        if Request::Extension(ext).encode(&mut body).is_ok() {
            self.upstreams.session_bind(&mut conn.upstream, &body).await;
        }
    }

    /// `ssh-add FILE`: keytap holds no software keys; the first upstream agent takes it.
    async fn add_to_upstream(&self, conn: &mut Connection, body: &[u8]) -> Vec<u8> {
        let outcome = if self.lock.is_locked() {
            Err("the agent is locked (unlock with `ssh-add -X`)".to_string())
        } else if let Err(reason) = conn.local_only("adding a key") {
            Err(reason)
        } else {
            self.upstreams.add(&mut conn.upstream, body).await.map_err(|e| e.to_string())
        };
        let mut record = event_record("add-identity", &conn.peer, "allow", "");
        if let Some(path) = (!self.upstreams.is_empty()).then(|| self.upstreams.path(0)) {
            record.details.insert("upstream".into(), path.display().to_string().into());
        }
        if let Err(reason) = &outcome {
            tracing::warn!(peer = %conn.peer, "ssh-add refused: {reason}");
            record.decision = "deny".into();
            record.reason = reason.clone();
        } else {
            tracing::info!(peer = %conn.peer, "ssh-add: key added to upstream agent {}", self.upstreams.path(0).display());
        }
        let written = self.audit(record).await;
        encode(if outcome.is_ok() && written { Response::Success } else { Response::Failure })
    }

    /// `ssh-add -d`: a key an upstream lists is removed there; token keys stay.
    async fn remove_from_upstream(&self, conn: &mut Connection, credential: PublicCredential, body: &[u8]) -> Vec<u8> {
        let key = upstream::credential_key(&credential).clone();
        let outcome = if self.lock.is_locked() {
            Err("the agent is locked (unlock with `ssh-add -X`)".to_string())
        } else if let Err(reason) = conn.local_only("removing a key") {
            Err(reason)
        } else if self.tokens().iter().any(|t| t.find(&key).is_some()) {
            Err("this key lives on a token and cannot be removed from the agent".to_string())
        } else {
            self.upstreams.remove(&mut conn.upstream, &key, body).await.map_err(|e| e.to_string())
        };
        let mut record = event_record("remove-identity", &conn.peer, "allow", "");
        record.key = Some(KeyRecord { fingerprint: key.fingerprint(ssh_key::HashAlg::Sha256).to_string(), serial: 0, slot: "upstream".into() });
        if let Err(reason) = &outcome {
            tracing::warn!(peer = %conn.peer, "ssh-add -d refused: {reason}");
            record.decision = "deny".into();
            record.reason = reason.clone();
        }
        let written = self.audit(record).await;
        encode(if outcome.is_ok() && written { Response::Success } else { Response::Failure })
    }

    /// `ssh-add -D` reaches every upstream agent.
    async fn remove_all_upstream(&self, conn: &mut Connection) -> Vec<u8> {
        let outcome = if self.lock.is_locked() {
            Err("the agent is locked (unlock with `ssh-add -X`)".to_string())
        } else if let Err(reason) = conn.local_only("removing keys") {
            Err(reason)
        } else {
            let errors = self.upstreams.remove_all(&mut conn.upstream).await;
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
            }
        };
        let mut record = event_record("remove-all-upstream", &conn.peer, "allow", "");
        if let Err(reason) = &outcome {
            tracing::warn!(peer = %conn.peer, "ssh-add -D: {reason}");
            record.decision = "deny".into();
            record.reason = reason.clone();
        }
        let written = self.audit(record).await;
        encode(if outcome.is_ok() && written { Response::Success } else { Response::Failure })
    }

    fn still_unlocked(&self, waited_for: &str) -> Result<(), Refusal> {
        if self.lock.is_locked() {
            return Err(Refusal::Denied(format!("the agent was locked while waiting for {waited_for}; the signature is withheld (unlock with `ssh-add -X` and retry)")));
        }
        Ok(())
    }

    async fn extension(&self, conn: &mut Connection, ext: Extension) -> Vec<u8> {
        match ext.name.as_str() {
            EXT_QUERY => {
                let mut details = Vec::new();
                for name in [EXT_QUERY, EXT_SESSION_BIND, EXT_STATUS, attest_ext::EXT_ATTEST, cert_ext::EXT_CERT, setup_ext::EXT_SETUP, reload::EXT_RELOAD, remembered::EXT_APPROVALS] {
                    name.encode(&mut details).expect("encoding to a vec");
                }
                encode(Response::ExtensionResponse(Extension { name: EXT_QUERY.into(), details: details.into() }))
            }
            EXT_SESSION_BIND => match conn.bindings.bind(ext.details.as_ref()) {
                Ok(bound) => {
                    tracing::debug!(peer = %conn.peer, forwarded = bound.forwarded, host_key = %bound.host_key.fingerprint(), certificate = bound.host_key.certificate().is_some(), "session bound");
                    self.pass_on_session_bind(conn, ext).await;
                    encode(Response::Success)
                }
                Err(reason) => {
                    tracing::warn!(peer = %conn.peer, "session-bind refused: {reason}; nothing more is signed on this connection");
                    failure()
                }
            },
            EXT_STATUS => {
                // Pid, serials and firmware are for the local user, not a remote host.
                if let Err(reason) = conn.local_only("keytap status") {
                    tracing::warn!(peer = %conn.peer, "{reason}");
                    self.audit(event_record("status", &conn.peer, "deny", &reason)).await;
                    return failure();
                }
                let report = self.status().await;
                let json = serde_json::to_vec(&report).expect("status serialises");
                let mut details = Vec::new();
                json.encode(&mut details).expect("encoding to a vec");
                encode(Response::ExtensionResponse(Extension { name: EXT_STATUS.into(), details: details.into() }))
            }
            setup_ext::EXT_SETUP => {
                let answer = setup_ext::handle(self.tokens(), ext.details.as_ref(), &conn.peer, conn.bindings.remote(), self.lock.is_locked()).await;
                let mut record = event_record("setup", &conn.peer, "allow", "");
                record.forwarded = conn.forwarded();
                record.details = setup_ext::audit_details(ext.details.as_ref(), &answer);
                match &answer {
                    setup_ext::SetupAnswer::Refused(reason) => {
                        tracing::warn!(peer = %conn.peer, "setup refused: {reason}");
                        record.decision = "deny".into();
                        record.reason = reason.clone();
                    }
                    setup_ext::SetupAnswer::Created(key, ..) => {
                        record.key = key.as_ref().map(|k| KeyRecord { fingerprint: k.fingerprint.clone(), serial: k.serial, slot: k.slot.clone() });
                    }
                }
                // The token has changed already: the answer goes out even if the record could
                // not be written (the audit writer logs that loudly).
                self.audit(record).await;
                encode(Response::ExtensionResponse(Extension { name: setup_ext::EXT_SETUP.into(), details: setup_ext::encode_json(&answer).into() }))
            }
            attest_ext::EXT_ATTEST => self.attest_extension(conn, &ext).await,
            reload::EXT_RELOAD => self.reload_extension(conn).await,
            remembered::EXT_APPROVALS => self.approvals_extension(conn, &ext).await,
            cert_ext::EXT_CERT => {
                let listing = matches!(cert_ext::CertOp::decode(ext.details.as_ref()), Ok(cert_ext::CertOp::List));
                let reply = if self.lock.is_locked() {
                    cert_ext::CertReply { error: Some("the agent is locked; unlock it with `ssh-add -X`".into()), ..Default::default() }
                } else if let (false, Err(reason)) = (listing, conn.local_only("adding or removing certificates")) {
                    // A remote host could add a certificate of its own CA (offered first to local
                    // ssh) or remove the user's.
                    cert_ext::CertReply { error: Some(reason), ..Default::default() }
                } else {
                    let all = self.all_keys();
                    let keys: Vec<&KeyInfo> = all.iter().collect();
                    self.certs.handle(ext.details.as_ref(), &keys).await
                };
                // Changes to what the agent offers are audited; listing is not.
                if !listing {
                    let decision = if reply.error.is_some() { "deny" } else { "allow" };
                    let written = self.audit(event_record("cert", &conn.peer, decision, reply.error.as_deref().unwrap_or(""))).await;
                    if !written {
                        return failure();
                    }
                }
                let details = cert_ext::encode_reply(&reply);
                encode(Response::ExtensionResponse(Extension { name: cert_ext::EXT_CERT.into(), details: details.into() }))
            }
            other => {
                tracing::info!(peer = %conn.peer, extension = other, "unknown extension");
                failure()
            }
        }
    }

    /// Status of the agent and its tokens.
    pub async fn status(&self) -> StatusReport {
        let locked = self.lock.is_locked();
        let tokens = self
            .tokens()
            .iter()
            .map(|t| {
                let info = t.info();
                TokenReport {
                    label: t.label().to_string(),
                    present: info.is_some(),
                    serial: info.as_ref().map(|i| i.serial),
                    model: info.as_ref().map(|i| i.model.clone()),
                    firmware: info.as_ref().map(|i| format!("{}.{}.{}", i.firmware.0, i.firmware.1, i.firmware.2)),
                    keys: if locked { Vec::new() } else { t.keys().iter().map(KeyReport::from).collect() },
                }
            })
            .collect();
        let mut tokens: Vec<TokenReport> = tokens;
        if let Some(store) = &self.sk {
            // The loaded sk keys, on whichever FIDO device holds them.
            let keys = store.keys();
            tokens.push(TokenReport {
                label: "fido-keys".into(),
                present: tokens.iter().any(|t| t.label.starts_with("fido:") && t.present),
                serial: None,
                model: Some(format!("{} sk key(s) loaded with ssh-add", keys.len())),
                firmware: None,
                keys: if locked { Vec::new() } else { keys.iter().map(|k| KeyReport::from(&sk_key_info(k))).collect() },
            });
        }
        StatusReport { version: env!("CARGO_PKG_VERSION").into(), pid: std::process::id(), locked, tokens }
    }
}

/// Resolves when the peer has closed its end (and never while it only sends more requests).
async fn hangup(reader: &mut tokio::net::unix::ReadHalf<'_>) {
    let stream: &UnixStream = reader.as_ref();
    match stream.ready(tokio::io::Interest::READABLE).await {
        Ok(ready) if !ready.is_read_closed() => std::future::pending::<()>().await,
        _ => {}
    }
}

/// The names known_hosts gives a login's destination: those of its plain key, and for a host
/// certificate that is valid now, the names of `@cert-authority` lines for its CA that the
/// certificate's principals cover (as ssh checks a certificate host). Reads files: call it
/// off the event loop.
fn host_names(host: &HostKey, candidates: &[String], files: &[std::path::PathBuf], now: u64) -> Vec<String> {
    let wanted: Vec<&str> = candidates.iter().map(String::as_str).collect();
    let mut names = policy::known_hosts::names_for(host.key(), &wanted, files);
    if let Some(cert) = host.certificate().filter(|c| c.valid_host_at(now)) {
        let principals = &cert.principals;
        let wanted: Vec<&str> = wanted.iter().copied().chain(principals.iter().map(String::as_str)).collect();
        let covered = |name: &String| {
            let host = policy::known_hosts::Destination::parse(name).host;
            principals.is_empty() || principals.iter().any(|p| p.eq_ignore_ascii_case(&host))
        };
        names.extend(policy::known_hosts::cert_authority_names(&cert.signature_key, host.key(), &wanted, files).into_iter().filter(covered));
    }
    names.sort();
    names.dedup();
    names
}

/// Decode one frame body as a request; trailing bytes are an error.
pub fn parse_request(body: &[u8]) -> Result<Request, String> {
    let mut reader = body;
    let request = Request::decode(&mut reader).map_err(|e| format!("malformed or unsupported message: {e}"))?;
    if !reader.is_empty() {
        return Err(format!("trailing bytes after message {}", request.message_id()));
    }
    Ok(request)
}

/// Run untrusted bytes through every decoder a client can reach: framing, request decoding,
/// session-bind parsing and signature checks (with the bindings kept across the input, so a
/// bind followed by a sign request reaches the binding rules), purpose classification, and
/// the bodies of keytap's extensions. Shared by the fuzz target and the corpus replay test;
/// it must never panic.
pub fn exercise_decoders(input: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    let timeouts = FrameTimeouts { idle: Duration::from_secs(1), frame: Duration::from_secs(1) };
    let mut reader = frame::FrameReader::new(input);
    let mut bindings = Bindings::default();
    runtime.block_on(async {
        while let Ok(body) = reader.next(timeouts).await {
            match parse_request(&body) {
                Ok(Request::SignRequest(req)) => {
                    let key = match &req.credential {
                        PublicCredential::Key(k) => k.clone(),
                        PublicCredential::Cert(c) => c.public_key().clone(),
                    };
                    let _ = signature::scheme_for(&key, req.flags);
                    if let Ok(purpose) = purpose::classify_credential(&req.data, &req.credential) {
                        let _ = purpose.name();
                        let _ = purpose.describe();
                        let _ = bindings.destination(&purpose);
                    }
                }
                Ok(Request::Extension(ext)) => {
                    let details = ext.details.as_ref();
                    match ext.name.as_str() {
                        EXT_SESSION_BIND => {
                            let _ = bindings.bind(details);
                        }
                        setup_ext::EXT_SETUP => {
                            let _ = setup_ext::decode_json::<setup_ext::SetupRequest>(details);
                            let _ = setup_ext::audit_details(details, &setup_ext::SetupAnswer::Refused(String::new()));
                        }
                        cert_ext::EXT_CERT => {
                            let _ = cert_ext::CertOp::decode(details);
                        }
                        attest_ext::EXT_ATTEST => {
                            let _ = attest_ext::parse_request(details);
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::certificate::{Builder, CertType};
    use ssh_key::{Algorithm, PrivateKey};

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap()
    }

    fn line(key: &PrivateKey) -> String {
        key.public_key().to_openssh().unwrap()
    }

    fn host_cert(ca: &PrivateKey, host: &PrivateKey, cert_type: CertType, principals: &[&str], valid: (u64, u64)) -> HostKey {
        let mut b = Builder::new_with_random_nonce(&mut rand_core::OsRng, host.public_key().key_data().clone(), valid.0, valid.1).unwrap();
        b.cert_type(cert_type).unwrap();
        if principals.is_empty() {
            b.all_principals_valid().unwrap();
        }
        for p in principals {
            b.valid_principal(*p).unwrap();
        }
        HostKey::from_blob(&b.sign(ca).unwrap().to_bytes().unwrap()).unwrap()
    }

    #[test]
    fn a_certificate_host_is_named_by_cert_authority_lines_its_principals_cover() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, other_ca, host) = (key(), key(), key());
        let file = dir.path().join("known_hosts");
        std::fs::write(&file, format!("@cert-authority *.example,!bad.example {}\nplain.example {}\n", line(&ca), line(&host))).unwrap();
        let files = vec![file.clone()];
        let wanted = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let now = 1_000;
        let cert = host_cert(&ca, &host, CertType::Host, &["web.example", "bad.example"], (0, 2_000));
        // Principals and candidates under the CA line, minus the negated name; plus the plain key's names.
        assert_eq!(host_names(&cert, &wanted(&["other.example"]), &files, now), ["plain.example", "web.example"]);
        // No principals: any name the line matches.
        let any = host_cert(&ca, &host, CertType::Host, &[], (0, 2_000));
        assert_eq!(host_names(&any, &wanted(&["db.example", "bad.example", "x.org"]), &files, now), ["db.example", "plain.example"]);
        // Expired, not yet valid, a user certificate, or another CA: only the plain key's names.
        for cert in [
            host_cert(&ca, &host, CertType::Host, &["web.example"], (0, 500)),
            host_cert(&ca, &host, CertType::Host, &["web.example"], (1_500, 2_000)),
            host_cert(&ca, &host, CertType::User, &["web.example"], (0, 2_000)),
            host_cert(&other_ca, &host, CertType::Host, &["web.example"], (0, 2_000)),
        ] {
            assert_eq!(host_names(&cert, &wanted(&["web.example"]), &files, now), ["plain.example"]);
        }
        // A revoked CA (or host key) names nothing through certificates.
        std::fs::write(&file, format!("@cert-authority *.example {}\n@revoked * {}\n", line(&ca), line(&ca))).unwrap();
        assert!(host_names(&cert, &wanted(&["web.example"]), &files, now).is_empty());
    }

    #[test]
    fn a_destination_list_keeps_keys_that_could_log_in_there_certificates_first() {
        use crate::token::{KeyAlgorithm, PinPolicy, Slot};
        let token_key = |slot: u8, k: &PrivateKey| KeyInfo {
            serial: 1,
            slot: Slot(slot),
            algorithm: KeyAlgorithm::Ed25519,
            pin_policy: PinPolicy::Once,
            touch_policy: crate::token::TouchPolicy::Never,
            public_key: k.public_key().key_data().clone(),
            fido: None,
        };
        let (a, c, d, up, ca) = (key(), key(), key(), key(), key());
        let (ka, kc, kd) = (token_key(0x9a, &a), token_key(0x9c, &c), token_key(0x9d, &d));
        let mut b = Builder::new_with_random_nonce(&mut rand_core::OsRng, a.public_key().key_data().clone(), 0, 4_000_000_000).unwrap();
        b.cert_type(CertType::User).unwrap();
        b.all_principals_valid().unwrap();
        let cert = b.sign(&ca).unwrap();
        let id = |credential: PublicCredential| ssh_agent_lib::proto::Identity { credential, comment: String::new() };
        let plain = |k: &PrivateKey| id(PublicCredential::Key(k.public_key().key_data().clone()));
        let ids = vec![plain(&a), plain(&c), plain(&d), id(PublicCredential::Cert(Box::new(cert))), plain(&up)];
        let policy = Policy::parse(
            "[[key]]\nmatch = \"slot:9c\"\nallow = [\"sshsig:git\"]\n\n[[key]]\nmatch = \"slot:9d\"\nallow = [\"ssh-auth:build.example\"]\nforwarded = false\n\n[[key]]\nmatch = \"kind:upstream\"\nallow = [\"ssh-auth:other.example\"]\n",
        )
        .unwrap();
        let keys = [&ka, &kc, &kd];
        let kinds = |ids: &[ssh_agent_lib::proto::Identity]| ids.iter().map(|i| (matches!(i.credential, PublicCredential::Cert(_)), upstream::credential_key(&i.credential).clone())).collect::<Vec<_>>();
        let key_of = |k: &PrivateKey| k.public_key().key_data().clone();
        // build.example: the certificate first, then 9a; 9d is allowed there; 9c (git only) and
        // the upstream key (other.example only) are not.
        let names = vec!["build.example".to_string()];
        let kept = keep_for_destination(&policy, ids.clone(), &keys, false, &names);
        assert_eq!(kinds(&kept), [(true, key_of(&a)), (false, key_of(&a)), (false, key_of(&d))]);
        // Through a forwarded agent, 9d (forwarded = false) is left out.
        let kept = keep_for_destination(&policy, ids.clone(), &keys, true, &names);
        assert_eq!(kinds(&kept), [(true, key_of(&a)), (false, key_of(&a))]);
        // other.example: the upstream key too.
        let kept = keep_for_destination(&policy, ids, &keys, false, &["other.example".to_string()]);
        assert_eq!(kinds(&kept), [(true, key_of(&a)), (false, key_of(&a)), (false, key_of(&up))]);
    }

    #[test]
    fn the_registry_closes_the_longest_idle_connection_of_the_same_uid() {
        let registry = Registry::default();
        let (first, first_close) = registry.admit(1000, 2).unwrap();
        let (second, _) = registry.admit(1000, 2).unwrap();
        let (_, other_uid) = registry.admit(2000, 2).unwrap();
        // The second is busy answering: only the first can make room.
        registry.set_idle(second, false);
        assert!(registry.admit(1000, 2).is_some());
        assert!(notified_already(&first_close));
        assert!(!notified_already(&other_uid));
        // Now every connection of uid 1000 is busy: a new one is refused.
        registry.set_idle(first, false);
        let all_busy: Vec<u64> = registry.inner.lock().unwrap().open.iter().filter(|(_, s)| s.uid == 1000).map(|(id, _)| *id).collect();
        for id in all_busy {
            registry.set_idle(id, false);
        }
        assert!(registry.admit(1000, 2).is_none());
    }

    /// Whether a notification is stored for the next waiter.
    fn notified_already(notify: &Notify) -> bool {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable()
    }
}
