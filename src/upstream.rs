//! Upstream agents: other ssh-agents (OpenSSH's, gpg-agent, a password manager's) whose keys
//! keytap lists after its own and signs with under its own policy, confirmations and audit.
//!
//! An upstream is untrusted for liveness: every exchange is bounded by a timeout, every answer
//! is capped at keytap's frame limit and parsed defensively, and an upstream that failed is
//! left alone for a short while (its last good key list is served meanwhile) before keytap
//! connects again. All I/O is async on the agent's event loop and never blocks it; a client
//! waits at most one timeout per upstream.
//!
//! Each client connection gets its own upstream connections ([`Link`]), because OpenSSH binds
//! sessions per connection: the client's `session-bind` messages are passed on (and replayed
//! when keytap reconnects) so an upstream's own destination constraints keep working.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ssh_agent_lib::proto::{Identity, PublicCredential};
use ssh_encoding::{Decode, Encode, Reader};
use ssh_key::public::KeyData;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::agent::frame::MAX_FRAME;

/// Agent protocol numbers keytap speaks to an upstream (draft-ietf-sshm-ssh-agent).
pub const SSH_AGENT_FAILURE: u8 = 5;
pub const SSH_AGENT_SUCCESS: u8 = 6;
pub const SSH_AGENTC_REQUEST_IDENTITIES: u8 = 11;
pub const SSH_AGENT_IDENTITIES_ANSWER: u8 = 12;
pub const SSH_AGENTC_SIGN_REQUEST: u8 = 13;
pub const SSH_AGENT_SIGN_RESPONSE: u8 = 14;
pub const SSH_AGENTC_ADD_IDENTITY: u8 = 17;
pub const SSH_AGENTC_REMOVE_IDENTITY: u8 = 18;
pub const SSH_AGENTC_REMOVE_ALL_IDENTITIES: u8 = 19;
pub const SSH_AGENTC_ADD_ID_CONSTRAINED: u8 = 25;

/// How long one exchange (connect, request, answer) may take before the upstream counts as
/// failed; a signature may wait on the upstream's own confirmation, so it gets longer.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub list: Duration,
    pub sign: Duration,
    /// After a failure, keytap does not try that upstream again for this long.
    pub retry_after: Duration,
    /// The last good key list is served this long after it was read.
    pub cache_for: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            // Short: a silent upstream must not hold up keytap's own keys; a slow one is read
            // again in the background (`refresh_in_background`).
            list: Duration::from_millis(80),
            sign: Duration::from_secs(30),
            retry_after: Duration::from_secs(2),
            cache_for: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no upstream agent is configured; start keytap with `--upstream SOCKET` (or `upstream = [...]` in config.toml) to keep software keys in another agent")]
    None,
    #[error("upstream agent {0} failed a moment ago; keytap retries it shortly")]
    Resting(String),
    #[error("upstream agent {0} did not answer in time")]
    Timeout(String),
    #[error("upstream agent {0}: {1}")]
    Io(String, std::io::Error),
    #[error("upstream agent {0} sent a frame of {1} bytes (over the {MAX_FRAME}-byte limit)")]
    TooLarge(String, usize),
    #[error("upstream agent {0} sent a malformed answer: {1}")]
    Malformed(String, String),
    #[error("upstream agent {} is keytap's own socket; name another agent's socket (for example the SSH_AUTH_SOCK of `ssh-agent`)", .0.display())]
    Loop(PathBuf),
    #[error("upstream agent {0} refused")]
    Refused(String),
}

/// One key an upstream lists.
#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamKey {
    /// Index into the configured upstreams.
    pub upstream: usize,
    pub identity: Identity,
}

impl UpstreamKey {
    /// The plain key (a certificate's key for a certificate).
    pub fn key_data(&self) -> &KeyData {
        credential_key(&self.identity.credential)
    }

    pub fn fingerprint(&self) -> String {
        self.key_data().fingerprint(ssh_key::HashAlg::Sha256).to_string()
    }
}

pub fn credential_key(credential: &PublicCredential) -> &KeyData {
    match credential {
        PublicCredential::Key(k) => k,
        PublicCredential::Cert(c) => c.public_key(),
    }
}

/// The configured upstream agents and what keytap last learned from each.
pub struct Upstreams {
    agents: Vec<std::sync::Arc<Upstream>>,
    timeouts: Timeouts,
}

struct Upstream {
    path: PathBuf,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    last_good: Option<(Instant, Vec<Identity>)>,
    resting_until: Option<Instant>,
    /// A background read of the key list is under way (see `refresh_in_background`).
    refreshing: bool,
}

/// A client connection's own connections to the upstreams, and the session-binds to replay.
#[derive(Default)]
pub struct Link {
    streams: Vec<Option<UnixStream>>,
    binds: Vec<Vec<u8>>,
}

/// The upstreams from `--upstream` then config.toml, in that order, without repeats. keytap's
/// own socket is refused: keytap would ask itself.
pub fn configured(flags: &[PathBuf], config: &[PathBuf], own_socket: Option<&Path>) -> Result<Upstreams, UpstreamError> {
    let mut paths: Vec<PathBuf> = Vec::new();
    for path in flags.iter().chain(config) {
        if own_socket.is_some_and(|own| same_file(own, path)) {
            return Err(UpstreamError::Loop(path.clone()));
        }
        if !paths.contains(path) {
            paths.push(path.clone());
        }
    }
    for path in &paths {
        tracing::info!(upstream = %path.display(), "serving an upstream agent's keys after the tokens'");
    }
    Ok(Upstreams::new(paths, Timeouts::default()))
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

impl Upstreams {
    pub fn new(paths: Vec<PathBuf>, timeouts: Timeouts) -> Upstreams {
        Upstreams { agents: paths.into_iter().map(|path| std::sync::Arc::new(Upstream { path, health: Mutex::default() })).collect(), timeouts }
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    pub fn path(&self, upstream: usize) -> &Path {
        &self.agents[upstream].path
    }

    /// Every upstream's keys, in upstream order: asked now, or the last good answer of an
    /// upstream that fails (for `cache_for`).
    pub async fn identities(&self, link: &mut Link) -> Vec<UpstreamKey> {
        // All at once: a silent upstream costs one timeout, not one per upstream.
        if link.streams.len() < self.agents.len() {
            link.streams.resize_with(self.agents.len(), || None);
        }
        let binds = &link.binds;
        let asks = link.streams.iter_mut().enumerate().map(|(i, slot)| self.call_on(slot, binds, i, &[SSH_AGENTC_REQUEST_IDENTITIES], self.timeouts.list)).collect();
        let answers = join_all(asks).await;
        let mut keys = Vec::new();
        for ((i, agent), answer) in self.agents.iter().enumerate().zip(answers) {
            let answer = answer.and_then(|body| parse_identities(&agent.path, &body));
            let identities = match answer {
                Ok(identities) => {
                    agent.health.lock().expect("health lock").last_good = Some((Instant::now(), identities.clone()));
                    identities
                }
                Err(e) => {
                    if matches!(e, UpstreamError::Timeout(_)) {
                        self.refresh_in_background(i);
                    }
                    let health = agent.health.lock().expect("health lock");
                    match &health.last_good {
                        Some((at, identities)) if at.elapsed() < self.timeouts.cache_for => {
                            tracing::debug!("{e}; serving its key list from {} ms ago", at.elapsed().as_millis());
                            identities.clone()
                        }
                        _ => {
                            tracing::debug!("{e}; listing none of its keys");
                            Vec::new()
                        }
                    }
                }
            };
            keys.extend(identities.into_iter().map(|identity| UpstreamKey { upstream: i, identity }));
        }
        keys
    }

    /// An upstream too slow for a listing (`Timeouts::list` is short, so that keytap's own keys
    /// list at once) is asked again on a connection of its own with the longer signing
    /// timeout; its answer becomes the last good list that later listings serve. One at a time.
    fn refresh_in_background(&self, upstream: usize) {
        let agent = self.agents[upstream].clone();
        {
            let mut health = agent.health.lock().expect("health lock");
            if health.refreshing {
                return;
            }
            health.refreshing = true;
        }
        let (name, patience) = (self.name(upstream), self.timeouts.sign);
        tokio::spawn(async move {
            let read = tokio::time::timeout(patience, async {
                let mut stream = UnixStream::connect(&agent.path).await.map_err(|e| UpstreamError::Io(name.clone(), e))?;
                let body = exchange(&mut stream, &name, &[SSH_AGENTC_REQUEST_IDENTITIES]).await?;
                parse_identities(&agent.path, &body)
            })
            .await
            .unwrap_or_else(|_| Err(UpstreamError::Timeout(name.clone())));
            let mut health = agent.health.lock().expect("health lock");
            health.refreshing = false;
            match read {
                Ok(identities) => {
                    tracing::info!("upstream agent {name} answered slowly; its {} key(s) are listed from now on", identities.len());
                    health.last_good = Some((Instant::now(), identities));
                    health.resting_until = None;
                }
                Err(e) => tracing::debug!("{e} (background read of its key list)"),
            }
        });
    }

    /// The upstream key with this plain key, from the last good answers (no I/O).
    pub fn find(&self, key: &KeyData) -> Option<UpstreamKey> {
        self.agents.iter().enumerate().find_map(|(i, agent)| {
            let health = agent.health.lock().expect("health lock");
            let (at, identities) = health.last_good.as_ref()?;
            if at.elapsed() >= self.timeouts.cache_for {
                return None;
            }
            identities.iter().find(|id| credential_key(&id.credential) == key).map(|identity| UpstreamKey { upstream: i, identity: identity.clone() })
        })
    }

    /// As [`find`](Self::find), asking the upstreams when their last answers do not list it.
    pub async fn find_or_ask(&self, link: &mut Link, key: &KeyData) -> Option<UpstreamKey> {
        if let Some(found) = self.find(key) {
            return Some(found);
        }
        self.identities(link).await.into_iter().find(|k| k.key_data() == key)
    }

    /// Pass a SIGN_REQUEST body on to the upstream holding the key; the signature must be
    /// by that key over that data, or it is refused.
    pub async fn sign(&self, link: &mut Link, key: &UpstreamKey, request: &[u8], data: &[u8]) -> Result<ssh_key::Signature, UpstreamError> {
        let name = self.name(key.upstream);
        let body = self.call(link, key.upstream, request, self.timeouts.sign).await?;
        match body.first() {
            Some(&SSH_AGENT_SIGN_RESPONSE) => {}
            Some(&SSH_AGENT_FAILURE) => return Err(UpstreamError::Refused(name)),
            _ => return Err(UpstreamError::Malformed(name, "expected a signature".into())),
        }
        let mut reader = &body[1..];
        let blob = Vec::<u8>::decode(&mut reader).map_err(|e| UpstreamError::Malformed(name.clone(), e.to_string()))?;
        if !reader.is_empty() {
            return Err(UpstreamError::Malformed(name, "trailing bytes after the signature".into()));
        }
        let signature = ssh_key::Signature::decode(&mut blob.as_slice()).map_err(|e| UpstreamError::Malformed(name.clone(), e.to_string()))?;
        check_signature(key.key_data(), data, &signature).map_err(|e| UpstreamError::Malformed(name, e))?;
        Ok(signature)
    }

    /// `ssh-add FILE`: the raw ADD_IDENTITY / ADD_ID_CONSTRAINED body goes to the first upstream.
    pub async fn add(&self, link: &mut Link, request: &[u8]) -> Result<(), UpstreamError> {
        if self.agents.is_empty() {
            return Err(UpstreamError::None);
        }
        self.expect_success(link, 0, request).await?;
        self.forget_list(0);
        Ok(())
    }

    /// `ssh-add -d`: to each upstream that lists the key; Ok when one removed it.
    pub async fn remove(&self, link: &mut Link, key: &KeyData, request: &[u8]) -> Result<(), UpstreamError> {
        let holders: Vec<usize> = self.identities(link).await.into_iter().filter(|k| k.key_data() == key).map(|k| k.upstream).collect();
        let mut last = Err(UpstreamError::None);
        for i in holders {
            let outcome = self.expect_success(link, i, request).await;
            self.forget_list(i);
            if outcome.is_ok() || last.is_err() {
                last = outcome;
            }
        }
        last
    }

    /// `ssh-add -D`: to every upstream; the errors of those that failed.
    pub async fn remove_all(&self, link: &mut Link) -> Vec<UpstreamError> {
        let mut errors = Vec::new();
        for i in 0..self.agents.len() {
            if let Err(e) = self.expect_success(link, i, &[SSH_AGENTC_REMOVE_ALL_IDENTITIES]).await {
                errors.push(e);
            }
            self.forget_list(i);
        }
        errors
    }

    /// Pass a session-bind (the whole EXTENSION request body) on to every upstream, now and
    /// whenever this link reconnects. An upstream that does not know the extension answers
    /// FAILURE, which is fine: keytap applies its own binding rules to every signature.
    pub async fn session_bind(&self, link: &mut Link, request: &[u8]) {
        link.binds.push(request.to_vec());
        for i in 0..self.agents.len() {
            let connected = link.streams.get(i).is_some_and(Option::is_some);
            if connected {
                if let Err(e) = self.call(link, i, request, self.timeouts.list).await {
                    tracing::debug!("{e} (passing on session-bind)");
                }
            }
            // Not connected: the bind is replayed when the link connects.
        }
    }

    fn name(&self, upstream: usize) -> String {
        self.agents[upstream].path.display().to_string()
    }

    /// The next list asks the upstream instead of trusting the last answer.
    fn forget_list(&self, upstream: usize) {
        self.agents[upstream].health.lock().expect("health lock").last_good = None;
    }

    async fn expect_success(&self, link: &mut Link, upstream: usize, request: &[u8]) -> Result<(), UpstreamError> {
        let body = self.call(link, upstream, request, self.timeouts.list.max(Duration::from_secs(2))).await?;
        match body.as_slice() {
            [SSH_AGENT_SUCCESS] => Ok(()),
            [SSH_AGENT_FAILURE] => Err(UpstreamError::Refused(self.name(upstream))),
            _ => Err(UpstreamError::Malformed(self.name(upstream), "expected SUCCESS or FAILURE".into())),
        }
    }

    /// One request and its answer on this link's connection to `upstream`, connecting (and
    /// replaying the link's session-binds) first if needed. Any failure drops the connection
    /// and rests the upstream for `retry_after`.
    async fn call(&self, link: &mut Link, upstream: usize, request: &[u8], timeout: Duration) -> Result<Vec<u8>, UpstreamError> {
        if link.streams.len() < self.agents.len() {
            link.streams.resize_with(self.agents.len(), || None);
        }
        self.call_on(&mut link.streams[upstream], &link.binds, upstream, request, timeout).await
    }

    /// [`call`](Self::call) on one of a link's streams, so several upstreams can be asked at once.
    async fn call_on(&self, slot: &mut Option<UnixStream>, binds: &[Vec<u8>], upstream: usize, request: &[u8], timeout: Duration) -> Result<Vec<u8>, UpstreamError> {
        let agent = &self.agents[upstream];
        let name = self.name(upstream);
        if let Some(until) = agent.health.lock().expect("health lock").resting_until {
            if Instant::now() < until {
                return Err(UpstreamError::Resting(name));
            }
        }
        let outcome = tokio::time::timeout(timeout, async {
            if slot.is_none() {
                let mut stream = UnixStream::connect(&agent.path).await.map_err(|e| UpstreamError::Io(name.clone(), e))?;
                for bind in binds {
                    // The answer does not matter (see `session_bind`); the exchange must complete.
                    exchange(&mut stream, &name, bind).await?;
                }
                *slot = Some(stream);
            }
            let stream = slot.as_mut().expect("connected above");
            exchange(stream, &name, request).await
        })
        .await
        .unwrap_or_else(|_| Err(UpstreamError::Timeout(name.clone())));
        let mut health = agent.health.lock().expect("health lock");
        match &outcome {
            Ok(_) => health.resting_until = None,
            Err(e) => {
                tracing::warn!("{e}; keytap serves its own keys meanwhile and retries in {} ms", self.timeouts.retry_after.as_millis());
                health.resting_until = Some(Instant::now() + self.timeouts.retry_after);
                *slot = None;
            }
        }
        outcome
    }
}

/// Drive every future to its end, concurrently, on the current task; results in order.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future finished")).collect()
}

/// Write one frame and read one back, capped at [`MAX_FRAME`] before anything is allocated.
async fn exchange(stream: &mut UnixStream, name: &str, request: &[u8]) -> Result<Vec<u8>, UpstreamError> {
    let io = |e| UpstreamError::Io(name.to_string(), e);
    let len = u32::try_from(request.len()).map_err(|_| UpstreamError::TooLarge(name.to_string(), request.len()))?;
    stream.write_all(&len.to_be_bytes()).await.map_err(io)?;
    stream.write_all(request).await.map_err(io)?;
    let mut header = [0u8; 4];
    stream.read_exact(&mut header).await.map_err(io)?;
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(UpstreamError::TooLarge(name.to_string(), len));
    }
    if len == 0 {
        return Err(UpstreamError::Malformed(name.to_string(), "empty frame".into()));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).await.map_err(io)?;
    Ok(body)
}

/// An IDENTITIES_ANSWER. Keys keytap cannot read are skipped (not every agent lists only
/// what ssh-key knows); a count or length that overruns the frame makes the answer malformed.
fn parse_identities(path: &Path, body: &[u8]) -> Result<Vec<Identity>, UpstreamError> {
    let bad = |m: String| UpstreamError::Malformed(path.display().to_string(), m);
    if body.first() != Some(&SSH_AGENT_IDENTITIES_ANSWER) {
        return Err(bad("expected an identities answer".into()));
    }
    let mut reader = &body[1..];
    let count = u32::decode(&mut reader).map_err(|e| bad(e.to_string()))? as usize;
    // Each identity takes at least 8 bytes: the count cannot promise more than the frame holds.
    if count > reader.remaining_len() / 8 {
        return Err(bad(format!("{count} identities do not fit in the frame")));
    }
    let mut identities = Vec::with_capacity(count);
    for _ in 0..count {
        let blob = Vec::<u8>::decode(&mut reader).map_err(|e| bad(e.to_string()))?;
        let comment = Vec::<u8>::decode(&mut reader).map_err(|e| bad(e.to_string()))?;
        let Ok(credential) = PublicCredential::decode(&mut blob.as_slice()) else {
            tracing::debug!("upstream {} lists a key keytap cannot read; skipped", path.display());
            continue;
        };
        identities.push(Identity { credential, comment: String::from_utf8_lossy(&comment).into_owned() });
    }
    if !reader.is_empty() {
        return Err(bad("trailing bytes after the identities".into()));
    }
    Ok(identities)
}

/// A signature by `key` over `data`. Algorithms keytap cannot verify (P-521, DSA) are only
/// checked for matching the key's algorithm.
fn check_signature(key: &KeyData, data: &[u8], signature: &ssh_key::Signature) -> Result<(), String> {
    use signature::Verifier;
    let algorithm = key.algorithm();
    let matches_key = match (&algorithm, signature.algorithm()) {
        (ssh_key::Algorithm::Rsa { .. }, ssh_key::Algorithm::Rsa { .. }) => true,
        (a, b) => *a == b,
    };
    if !matches_key {
        return Err(format!("a {} signature for a {} key", signature.algorithm(), algorithm));
    }
    let verifiable = matches!(
        algorithm,
        ssh_key::Algorithm::Ed25519 | ssh_key::Algorithm::Rsa { .. } | ssh_key::Algorithm::SkEd25519 | ssh_key::Algorithm::SkEcdsaSha2NistP256
    ) || matches!(algorithm, ssh_key::Algorithm::Ecdsa { curve } if curve != ssh_key::EcdsaCurve::NistP521);
    if verifiable {
        key.verify(data, signature).map_err(|_| "the signature does not verify with the key".to_string())?;
    }
    Ok(())
}

/// Encode an identity as in an IDENTITIES_ANSWER (for sizing answers).
pub fn encoded_len(identity: &Identity) -> usize {
    let mut out = Vec::new();
    identity.encode(&mut out).map(|_| out.len()).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ssh_key::{Algorithm, PrivateKey};

    fn key() -> PrivateKey {
        PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519).unwrap()
    }

    fn blob_of(k: &PrivateKey) -> Vec<u8> {
        k.public_key().to_bytes().unwrap()
    }

    fn string(b: &[u8]) -> Vec<u8> {
        [(b.len() as u32).to_be_bytes().as_slice(), b].concat()
    }

    fn answer(entries: &[(Vec<u8>, &str)]) -> Vec<u8> {
        let mut body = vec![SSH_AGENT_IDENTITIES_ANSWER];
        body.extend((entries.len() as u32).to_be_bytes());
        for (blob, comment) in entries {
            body.extend(string(blob));
            body.extend(string(comment.as_bytes()));
        }
        body
    }

    #[test]
    fn identities_answers_are_read_defensively() {
        let path = Path::new("test.sock");
        let k = key();
        let blob = blob_of(&k);
        let ids = parse_identities(path, &answer(&[(blob.clone(), "one"), (b"\0\0\0\x07unknown".to_vec(), "two")])).unwrap();
        assert_eq!(ids.len(), 1, "an unreadable key is skipped");
        assert_eq!(ids[0].comment, "one");
        // A count the frame cannot hold, trailing bytes, a wrong message, a truncated entry.
        let mut overlong = answer(&[]);
        overlong[1..5].copy_from_slice(&1_000_000u32.to_be_bytes());
        assert!(matches!(parse_identities(path, &overlong), Err(UpstreamError::Malformed(_, m)) if m.contains("do not fit")));
        let mut trailing = answer(&[(blob.clone(), "one")]);
        trailing.push(0);
        assert!(parse_identities(path, &trailing).is_err());
        assert!(parse_identities(path, &[SSH_AGENT_FAILURE]).is_err());
        let truncated = answer(&[(blob, "one")]);
        assert!(parse_identities(path, &truncated[..truncated.len() - 2]).is_err());
    }

    #[test]
    fn a_signature_must_be_by_the_listed_key_over_the_data() {
        let (k, other) = (key(), key());
        let data = b"session data";
        let good: ssh_key::Signature = signature::Signer::try_sign(&k, data).unwrap();
        assert!(check_signature(k.public_key().key_data(), data, &good).is_ok());
        assert!(check_signature(k.public_key().key_data(), b"other data", &good).is_err());
        assert!(check_signature(other.public_key().key_data(), data, &good).is_err());
    }

    /// A fake upstream that answers every request with `reply` (None: accepts and stays silent).
    fn fake(dir: &Path, name: &str, reply: Option<Vec<u8>>) -> PathBuf {
        fake_after(dir, name, reply, Duration::ZERO)
    }

    /// [`fake`], answering each request only after `delay`.
    fn fake_after(dir: &Path, name: &str, reply: Option<Vec<u8>>, delay: Duration) -> PathBuf {
        let path = dir.join(name);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((mut stream, _)) = listener.accept().await {
                if let Some(reply) = reply.clone() {
                    tokio::spawn(async move {
                        let mut header = [0u8; 4];
                        while stream.read_exact(&mut header).await.is_ok() {
                            let mut body = vec![0u8; u32::from_be_bytes(header) as usize];
                            if stream.read_exact(&mut body).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(delay).await;
                            let _ = stream.write_all(&(reply.len() as u32).to_be_bytes()).await;
                            let _ = stream.write_all(&reply).await;
                        }
                    });
                } else {
                    held.push(stream);
                }
            }
        });
        path
    }

    fn timeouts() -> Timeouts {
        Timeouts { list: Duration::from_millis(200), sign: Duration::from_millis(200), retry_after: Duration::from_secs(60), cache_for: Duration::from_secs(60) }
    }

    #[tokio::test]
    async fn a_silent_upstream_times_out_then_rests_and_others_still_answer() {
        let dir = tempfile::tempdir().unwrap();
        let k = key();
        let good = fake(dir.path(), "good.sock", Some(answer(&[(blob_of(&k), "good")])));
        let silent = fake(dir.path(), "silent.sock", None);
        let upstreams = Upstreams::new(vec![silent, good], timeouts());
        let mut link = Link::default();
        let keys = upstreams.identities(&mut link).await;
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].upstream, 1);
        assert_eq!(upstreams.find(k.public_key().key_data()).map(|f| f.upstream), Some(1));
        // Resting: the silent one is not asked again (no second timeout to wait for).
        assert!(matches!(upstreams.call(&mut link, 0, &[SSH_AGENTC_REQUEST_IDENTITIES], Duration::from_secs(60)).await, Err(UpstreamError::Resting(_))));
        // No upstream takes `ssh-add` when none is configured.
        assert!(matches!(Upstreams::new(Vec::new(), timeouts()).add(&mut link, &[SSH_AGENTC_ADD_IDENTITY]).await, Err(UpstreamError::None)));
    }

    #[tokio::test]
    async fn a_slow_upstream_is_read_in_the_background_and_listed_from_then_on() {
        let dir = tempfile::tempdir().unwrap();
        let k = key();
        let slow = fake_after(dir.path(), "slow.sock", Some(answer(&[(blob_of(&k), "slow")])), Duration::from_millis(300));
        let upstreams = Upstreams::new(vec![slow], Timeouts { list: Duration::from_millis(50), sign: Duration::from_secs(10), ..timeouts() });
        let mut link = Link::default();
        // Too slow for a listing: none of its keys this time...
        assert!(upstreams.identities(&mut link).await.is_empty());
        // ...but the background read fills the last good list, which later listings serve.
        let deadline = Instant::now() + Duration::from_secs(10);
        while upstreams.find(k.public_key().key_data()).is_none() {
            assert!(Instant::now() < deadline, "the background read never finished");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let keys = upstreams.identities(&mut Link::default()).await;
        assert_eq!(keys.iter().map(|k| k.identity.comment.as_str()).collect::<Vec<_>>(), ["slow"]);
    }

    #[tokio::test]
    async fn silent_upstreams_are_waited_for_together() {
        let dir = tempfile::tempdir().unwrap();
        let silent: Vec<PathBuf> = (0..4).map(|i| fake(dir.path(), &format!("s{i}.sock"), None)).collect();
        let upstreams = Upstreams::new(silent, Timeouts { list: Duration::from_secs(3), ..timeouts() });
        let mut link = Link::default();
        // Four silent upstreams, asked one after another, would take 12 s; together, one timeout.
        let listed = tokio::time::timeout(Duration::from_secs(9), upstreams.identities(&mut link)).await;
        assert!(listed.is_ok_and(|keys| keys.is_empty()));
    }

    #[tokio::test]
    async fn the_last_good_list_is_served_while_an_upstream_fails() {
        let dir = tempfile::tempdir().unwrap();
        let k = key();
        let path = fake(dir.path(), "flaky.sock", Some(answer(&[(blob_of(&k), "k")])));
        let upstreams = Upstreams::new(vec![path.clone()], Timeouts { retry_after: Duration::ZERO, ..timeouts() });
        let mut link = Link::default();
        assert_eq!(upstreams.identities(&mut link).await.len(), 1);
        // The upstream goes away: the link's connection fails and the cached list is served.
        std::fs::remove_file(&path).unwrap();
        link = Link::default();
        assert_eq!(upstreams.identities(&mut link).await.len(), 1);
        // Past `cache_for`, nothing.
        let expired = Upstreams::new(vec![path], Timeouts { cache_for: Duration::ZERO, ..timeouts() });
        assert!(expired.identities(&mut link).await.is_empty());
    }

    #[tokio::test]
    async fn an_oversized_or_wrong_answer_is_an_error_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let k = key();
        let huge = fake(dir.path(), "huge.sock", Some(vec![0u8; MAX_FRAME + 1]));
        let wrong = fake(dir.path(), "wrong.sock", Some(vec![SSH_AGENT_SUCCESS]));
        let upstreams = Upstreams::new(vec![huge, wrong], timeouts());
        let mut link = Link::default();
        assert!(matches!(upstreams.call(&mut link, 0, &[SSH_AGENTC_REQUEST_IDENTITIES], Duration::from_secs(5)).await, Err(UpstreamError::TooLarge(_, n)) if n == MAX_FRAME + 1));
        let up = UpstreamKey { upstream: 1, identity: Identity { credential: PublicCredential::Key(k.public_key().key_data().clone()), comment: String::new() } };
        assert!(matches!(upstreams.sign(&mut link, &up, &[SSH_AGENTC_SIGN_REQUEST], b"d").await, Err(UpstreamError::Malformed(..))));
    }

    #[test]
    fn keytap_is_not_its_own_upstream_and_repeats_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("agent.sock");
        std::fs::write(&own, "").unwrap();
        let other = dir.path().join("other.sock");
        assert!(matches!(configured(std::slice::from_ref(&own), &[], Some(&own)), Err(UpstreamError::Loop(_))));
        let ups = configured(std::slice::from_ref(&other), &[other.clone(), dir.path().join("third.sock")], Some(&own)).unwrap();
        assert_eq!(ups.agents.len(), 2);
        assert_eq!(ups.path(0), other);
    }
}
