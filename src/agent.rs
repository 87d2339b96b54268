//! The agent: accepts connections, checks who connects, decodes capped frames and answers.
//!
//! Every request is handled on the tokio runtime without blocking; anything that touches a
//! token goes to that token's owner thread (see `token::owner`).

pub mod frame;
pub mod lock;
pub mod setup_ext;
pub mod socket;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use ssh_agent_lib::proto::{Extension, Identity, PublicCredential, Request, Response, SignRequest};
use ssh_encoding::{Decode, Encode};
use ssh_key::public::KeyData;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::peer::PeerInfo;
use crate::purpose::{self, Purpose};
use crate::signature;
use crate::token::owner::{SignContext, TokenHandle};
use crate::token::KeyInfo;
use frame::{FrameError, FrameTimeouts};
use lock::AgentLock;

/// Extension names keytap answers besides OpenSSH's.
pub const EXT_QUERY: &str = "query";
pub const EXT_SESSION_BIND: &str = "session-bind@openssh.com";
pub const EXT_STATUS: &str = "keytap-status@keytap.dev";

/// OpenSSH keeps at most this many session bindings per connection.
const MAX_BINDINGS: usize = 16;

/// Connection limits.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub timeouts: FrameTimeouts,
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            timeouts: FrameTimeouts { idle: Duration::from_secs(300), frame: Duration::from_secs(10) },
            max_connections: 4096,
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
}

/// One `session-bind@openssh.com` record.
#[derive(Clone, Debug)]
struct Binding {
    host_key: KeyData,
    session_id: Vec<u8>,
    forwarded: bool,
}

/// Per-connection state.
struct Connection {
    peer: PeerInfo,
    bindings: Vec<Binding>,
}

impl Connection {
    /// Forwarded: some session-bind on this socket said is_forwarding.
    fn forwarded(&self) -> bool {
        self.bindings.iter().any(|b| b.forwarded)
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
            slot: k.slot.to_string(),
            algorithm: k.algorithm.to_string(),
            pin_policy: k.pin_policy.to_string(),
            touch_policy: k.touch_policy.to_string(),
            fingerprint: k.fingerprint(),
            authorized_key: k.authorized_key(),
        }
    }
}

enum Reply {
    Send(Vec<u8>),
}

fn encode(response: Response) -> Vec<u8> {
    let mut out = Vec::new();
    response.encode(&mut out).expect("encoding a response cannot fail");
    out
}

fn failure() -> Vec<u8> {
    encode(Response::Failure)
}

impl Agent {
    pub fn new(tokens: Vec<TokenHandle>, options: AgentOptions) -> Agent {
        Agent { tokens: std::sync::RwLock::new(tokens), lock: AgentLock::default(), options, uid: nix::unistd::geteuid().as_raw() }
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
        let slots = Arc::new(Semaphore::new(self.options.max_connections));
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
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!("too many connections ({}); closing a new one", self.options.max_connections);
                continue;
            };
            let agent = self.clone();
            tokio::spawn(async move {
                agent.connection(stream).await;
                drop(permit);
            });
        }
    }

    async fn connection(&self, mut stream: UnixStream) {
        let peer = match PeerInfo::from_stream(&stream) {
            Ok(peer) => peer,
            Err(e) => {
                tracing::warn!("cannot read peer credentials: {e}; closing");
                return;
            }
        };
        if peer.uid != self.uid {
            tracing::warn!(peer_uid = peer.uid, pid = ?peer.pid, exe = ?peer.exe, "refused a connection from another user (uid {} is not {})", peer.uid, self.uid);
            return;
        }
        tracing::debug!(peer = %peer, "connected");
        let mut conn = Connection { peer, bindings: Vec::new() };
        loop {
            let body = match frame::read_frame(&mut stream, self.options.timeouts).await {
                Ok(body) => body,
                Err(FrameError::Closed) => return,
                Err(e) => {
                    tracing::info!(peer = %conn.peer, "closing connection: {e}");
                    return;
                }
            };
            let Reply::Send(answer) = self.handle(&mut conn, &body).await;
            if let Err(e) = frame::write_frame(&mut stream, &answer).await {
                tracing::debug!(peer = %conn.peer, "client went away before the answer: {e}");
                return;
            }
        }
    }

    async fn handle(&self, conn: &mut Connection, body: &[u8]) -> Reply {
        let mut reader = body;
        let request = match Request::decode(&mut reader) {
            Ok(request) if reader.is_empty() => request,
            Ok(request) => {
                tracing::warn!(peer = %conn.peer, message = request.message_id(), "trailing bytes after the message; refused");
                return Reply::Send(failure());
            }
            Err(e) => {
                tracing::warn!(peer = %conn.peer, message = body[0], "malformed or unsupported message: {e}");
                return Reply::Send(failure());
            }
        };
        Reply::Send(match request {
            Request::RequestIdentities => self.identities(),
            Request::SignRequest(req) => self.sign(conn, req).await,
            Request::Extension(ext) => self.extension(conn, ext).await,
            Request::Lock(passphrase) => {
                let ok = self.lock.lock(Zeroizing::new(passphrase)).await;
                tracing::info!(peer = %conn.peer, "lock: {}", if ok { "locked" } else { "refused (already locked)" });
                encode(if ok { Response::Success } else { Response::Failure })
            }
            Request::Unlock(passphrase) => {
                let ok = self.lock.unlock(Zeroizing::new(passphrase)).await;
                tracing::info!(peer = %conn.peer, "unlock: {}", if ok { "unlocked" } else { "refused" });
                encode(if ok { Response::Success } else { Response::Failure })
            }
            Request::RemoveAllIdentities => {
                // `ssh-add -D`: keys stay on their tokens; let go of the cards for other programs.
                for token in &self.tokens() {
                    token.release();
                }
                tracing::info!(peer = %conn.peer, "ssh-add -D: keys live on tokens and stay listed; released the tokens for other programs");
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
        })
    }

    fn all_keys(&self) -> Vec<(TokenHandle, KeyInfo)> {
        self.tokens().iter().flat_map(|t| t.keys().iter().map(|k| (t.clone(), k.clone())).collect::<Vec<_>>()).collect()
    }

    fn identities(&self) -> Vec<u8> {
        if self.lock.is_locked() {
            return encode(Response::IdentitiesAnswer(Vec::new()));
        }
        let ids = self
            .all_keys()
            .into_iter()
            .map(|(_, k)| Identity { credential: PublicCredential::Key(k.public_key.clone()), comment: k.comment() })
            .collect();
        encode(Response::IdentitiesAnswer(ids))
    }

    async fn sign(&self, conn: &mut Connection, req: SignRequest) -> Vec<u8> {
        let started = Instant::now();
        if self.lock.is_locked() {
            tracing::warn!(peer = %conn.peer, "sign refused: the agent is locked (unlock with `ssh-add -X`)");
            return failure();
        }
        let key_data = match &req.credential {
            PublicCredential::Key(k) => k.clone(),
            PublicCredential::Cert(c) => c.public_key().clone(),
        };
        let Some((token, key)) = self.all_keys().into_iter().find(|(_, k)| k.public_key == key_data) else {
            tracing::warn!(peer = %conn.peer, key = %key_data.fingerprint(ssh_key::HashAlg::Sha256), "sign refused: no token holds this key");
            return failure();
        };
        let fingerprint = key.fingerprint();
        let scheme = match signature::scheme_for(&key.public_key, req.flags) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(peer = %conn.peer, key = %fingerprint, "sign refused: {e}");
                return failure();
            }
        };
        let purpose = match purpose::classify(&req.data, &key.public_key) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(peer = %conn.peer, key = %fingerprint, "sign refused: {e}");
                return failure();
            }
        };
        if let Err(reason) = check_binding(conn, &purpose, &req.data) {
            tracing::warn!(peer = %conn.peer, key = %fingerprint, "sign refused: {reason}");
            return failure();
        }
        let context = SignContext { requester: conn.peer.to_string(), purpose: purpose.describe() };
        let result = token.sign(key.clone(), scheme, req.data, context).await;
        let result = result.map_err(|e| e.to_string()).and_then(|raw| signature::ssh_signature(scheme, &raw).map_err(|e| e.to_string()));
        let elapsed = started.elapsed();
        match result {
            Ok(sig) => {
                tracing::info!(peer = %conn.peer, chain = %conn.peer.chain(), key = %fingerprint, slot = %key.slot, serial = key.serial, purpose = %purpose.name(), forwarded = conn.forwarded(), ms = elapsed.as_millis() as u64, "signed");
                encode(Response::SignResponse(sig))
            }
            Err(e) => {
                tracing::warn!(peer = %conn.peer, key = %fingerprint, purpose = %purpose.name(), "sign failed: {e}");
                failure()
            }
        }
    }

    async fn extension(&self, conn: &mut Connection, ext: Extension) -> Vec<u8> {
        match ext.name.as_str() {
            EXT_QUERY => {
                let mut details = Vec::new();
                for name in [EXT_QUERY, EXT_SESSION_BIND, EXT_STATUS, setup_ext::EXT_SETUP] {
                    name.encode(&mut details).expect("encoding to a vec");
                }
                encode(Response::ExtensionResponse(Extension { name: EXT_QUERY.into(), details: details.into() }))
            }
            EXT_SESSION_BIND => match session_bind(conn, &ext) {
                Ok(()) => encode(Response::Success),
                Err(reason) => {
                    tracing::warn!(peer = %conn.peer, "session-bind refused: {reason}");
                    failure()
                }
            },
            EXT_STATUS => {
                let report = self.status().await;
                let json = serde_json::to_vec(&report).expect("status serialises");
                let mut details = Vec::new();
                json.encode(&mut details).expect("encoding to a vec");
                encode(Response::ExtensionResponse(Extension { name: EXT_STATUS.into(), details: details.into() }))
            }
            setup_ext::EXT_SETUP => {
                let answer = setup_ext::handle(self.tokens(), ext.details.as_ref(), conn.peer.to_string(), conn.forwarded(), self.lock.is_locked()).await;
                if let setup_ext::SetupAnswer::Refused(reason) = &answer {
                    tracing::warn!(peer = %conn.peer, "setup refused: {reason}");
                }
                encode(Response::ExtensionResponse(Extension { name: setup_ext::EXT_SETUP.into(), details: setup_ext::encode_json(&answer).into() }))
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
        StatusReport { version: env!("CARGO_PKG_VERSION").into(), pid: std::process::id(), locked, tokens }
    }
}

/// Record a session binding as OpenSSH's agent does: verified, at most 16, none after a
/// binding for authentication, and never the same session id for a different host key.
fn session_bind(conn: &mut Connection, ext: &Extension) -> Result<(), String> {
    let mut reader = ext.details.as_ref();
    let bind = ssh_agent_lib::proto::extension::SessionBind::decode(&mut reader).map_err(|e| format!("malformed: {e}"))?;
    if !reader.is_empty() {
        return Err("trailing bytes".into());
    }
    if bind.session_id.is_empty() || bind.session_id.len() > 128 {
        return Err(format!("session id of {} bytes", bind.session_id.len()));
    }
    bind.verify_signature().map_err(|e| format!("host key signature does not verify: {e}"))?;
    for existing in &conn.bindings {
        if !existing.forwarded {
            return Err("connection already bound for authentication".into());
        }
        if existing.session_id == bind.session_id {
            return if existing.host_key == bind.host_key {
                Ok(())
            } else {
                Err("session id already bound to a different host key".into())
            };
        }
    }
    if conn.bindings.len() >= MAX_BINDINGS {
        return Err("too many session bindings".into());
    }
    tracing::debug!(peer = %conn.peer, forwarded = bind.is_forwarding, host_key = %bind.host_key.fingerprint(ssh_key::HashAlg::Sha256), "session bound");
    conn.bindings.push(Binding { host_key: bind.host_key, session_id: bind.session_id, forwarded: bind.is_forwarding });
    Ok(())
}

/// On a connection bound for authentication, a userauth signature must be for that session
/// (and, hostbound, that host key): a signature for another session would be relayed.
fn check_binding(conn: &Connection, purpose: &Purpose, data: &[u8]) -> Result<(), String> {
    let Purpose::SshAuth { host_key, .. } = purpose else { return Ok(()) };
    let Some(last) = conn.bindings.last() else { return Ok(()) };
    if last.forwarded {
        return Ok(());
    }
    let session_id = Vec::<u8>::decode(&mut &data[..]).map_err(|e| e.to_string())?;
    if session_id != last.session_id {
        return Err("userauth request is for a different session than the one bound to this connection".into());
    }
    if let Some(host_key) = host_key {
        if host_key != &last.host_key {
            return Err("hostbound userauth names a different host key than the bound session".into());
        }
    }
    Ok(())
}
