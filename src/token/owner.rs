//! One owner thread per token. All card I/O, PIN prompts and touch waits happen here, so the
//! async agent never blocks; it talks to the owner through a [`TokenHandle`].

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::{KeyInfo, Pin, Secret, SignScheme, SkAssertion, SkSignRequest, Slot, Token, TokenError, TokenInfo, TokenResult, TouchPolicy};
use crate::prompt::{PinRequest, Prompter, Terminal};
use crate::text::ensure_safe;

/// How long a touch may be pending before the user is told about it.
const TOUCH_NOTICE_DELAY: Duration = Duration::from_secs(1);

/// Why a signature is wanted, for PIN prompts and touch notices. Both come from a peer (a
/// process name, an SSH user name): prompts and notices show them escaped (`crate::text`).
#[derive(Clone, Debug, Default)]
pub struct SignContext {
    /// "git (pid 4242)".
    pub requester: String,
    /// "sign a commit (sshsig:git)".
    pub purpose: String,
    /// The requester's terminal, where a PIN prompt is drawn when there is no desktop.
    pub terminal: Option<Terminal>,
    /// Set when the requester hangs up: a request still queued is then dropped unrun.
    pub gone: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// The token and everything needed to use it, owned by one thread (or, for one-shot CLI
/// commands without an agent, by the caller).
pub struct Owner {
    pub token: Box<dyn Token>,
    pub prompter: Arc<dyn Prompter>,
    info: Option<TokenInfo>,
    notifier: TouchNotifier,
    /// The last PIN verified here was the factory default (setup offers to change it).
    pub default_pin_in_use: bool,
    /// FIDO: wrong PINs in a row (the device blocks PIN use until re-plugged at 3).
    fido_wrong_pins: u8,
}

/// Stop after this many wrong FIDO PINs in a row: one more would block the key until re-plugged.
const FIDO_WRONG_PINS_STOP: u8 = 2;

impl Owner {
    pub fn new(token: Box<dyn Token>, prompter: Arc<dyn Prompter>) -> Self {
        let notifier = TouchNotifier::new(prompter.clone());
        Owner { token, prompter, info: None, notifier, default_pin_in_use: false, fido_wrong_pins: 0 }
    }

    fn serial(&mut self) -> u32 {
        if self.info.is_none() {
            self.info = self.token.info().ok();
        }
        self.info.as_ref().map(|i| i.serial).unwrap_or(0)
    }

    /// Make sure the PIN is verified, asking for it when needed. Never spends the last retry.
    pub fn ensure_pin(&mut self, retries: u8, context: &SignContext) -> TokenResult<()> {
        let serial = self.serial();
        let mut retries = retries;
        let mut error = None;
        loop {
            if retries <= 1 {
                return Err(TokenError::PinLastRetry);
            }
            let request = PinRequest {
                serial,
                retries,
                reason: format!("{} wants to {}", ensure_safe(&context.requester), ensure_safe(&context.purpose)),
                error: error.take(),
                terminal: context.terminal.clone(),
            };
            let wrong_before = request.error.is_some();
            let pin = match self.prompter.pin(&request) {
                Ok(Some(pin)) => pin,
                // After a wrong PIN, that is what the user must hear about (a retry was spent),
                // not the cancelled or missing second prompt.
                Ok(None) if wrong_before => return Err(TokenError::WrongPinNoOther { retries, then: "PIN entry was cancelled".into() }),
                Err(e) if wrong_before => return Err(TokenError::WrongPinNoOther { retries, then: e.to_string() }),
                Ok(None) => return Err(TokenError::PinUnavailable("PIN entry was cancelled".into())),
                Err(e) => return Err(TokenError::PinUnavailable(e.to_string())),
            };
            match self.token.verify_pin(&pin) {
                Ok(()) => {
                    self.default_pin_in_use = pin.as_str() == crate::token::DEFAULT_PIN;
                    return Ok(());
                }
                Err(TokenError::WrongPin { retries: left }) => {
                    tracing::warn!(serial, retries_left = left, "wrong PIN");
                    retries = left;
                    error = Some(format!("Wrong PIN ({left} tries left)."));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Change the PIN or the PUK, never with its last retry: a wrong `current` would block it
    /// (the same floor as `ensure_pin`). A token that cannot tell its PUK retries is tried.
    pub fn change_secret(&mut self, which: Secret, current: &Pin, new: &Pin) -> TokenResult<()> {
        let left = match which {
            // 0 from a PIV card: the PIN is verified (the counter is full), not blocked.
            Secret::Pin => Some(self.token.pin_retries()?).filter(|n| *n != 0),
            Secret::Puk => self.token.puk_retries()?,
        };
        match (which, left) {
            (Secret::Pin, Some(1)) => Err(TokenError::PinLastRetry),
            (Secret::Puk, Some(1)) => Err(TokenError::PukLastRetry),
            _ => self.token.change_secret(which, current, new),
        }
    }

    /// Sign, asking for the PIN and announcing a pending touch as needed.
    pub fn sign(&mut self, key: &KeyInfo, scheme: SignScheme, data: &[u8], context: &SignContext) -> TokenResult<Vec<u8>> {
        let serial = self.serial();
        let mut pin_asked = false;
        loop {
            let notice = (key.touch_policy != TouchPolicy::Never).then(|| {
                self.notifier.arm(format!("Touch YubiKey {serial} to let {} {}", ensure_safe(&context.requester), ensure_safe(&context.purpose)))
            });
            let result = self.token.sign(key.slot, scheme, data);
            drop(notice);
            match result {
                Err(TokenError::PinRequired { retries }) if !pin_asked => {
                    pin_asked = true;
                    self.ensure_pin(retries, context)?;
                }
                other => return other,
            }
        }
    }
}

impl Owner {
    /// Get a FIDO PIN from the prompter, refusing when the device is at its retry floor or
    /// after two wrong PINs in a row.
    fn fido_pin_prompt(&mut self, context: &SignContext, error: Option<String>) -> TokenResult<Pin> {
        if self.fido_wrong_pins >= FIDO_WRONG_PINS_STOP {
            return Err(TokenError::FidoPinStopped);
        }
        let retries = self.token.pin_retries()?;
        if retries <= 1 {
            return Err(TokenError::FidoPinLastRetry);
        }
        let request = PinRequest {
            serial: 0,
            retries,
            reason: format!("{} wants to {}", ensure_safe(&context.requester), ensure_safe(&context.purpose)),
            error,
            terminal: context.terminal.clone(),
        };
        self.prompter
            .pin(&request)
            .map_err(|e| TokenError::PinUnavailable(e.to_string()))?
            .ok_or_else(|| TokenError::PinUnavailable("PIN entry was cancelled".into()))
    }

    /// Sign with an sk key: the PIN when the key needs verification and the device cannot
    /// verify by itself (or when the device asks for it), a touch notice when the key needs a
    /// touch, and never more than two wrong PINs in a row.
    pub fn sign_sk(&mut self, request: &SkSignRequest, context: &SignContext) -> TokenResult<SkAssertion> {
        let mut pin: Option<Pin> = None;
        if request.uv_required && !self.token.sk_has_uv()? {
            // Asked for each request, as OpenSSH does: verify-required means someone entered it.
            pin = Some(self.fido_pin_prompt(context, None)?);
        }
        loop {
            let notice = request.up.then(|| {
                self.notifier.arm(format!("Touch your security key to let {} {}", context.requester, context.purpose))
            });
            let result = self.token.sk_sign(request, pin.as_ref());
            drop(notice);
            match result {
                Ok(a) => {
                    if pin.is_some() {
                        self.fido_wrong_pins = 0;
                    }
                    return Ok(a);
                }
                Err(TokenError::PinRequired { .. }) if pin.is_none() && !request.probe => {
                    pin = Some(self.fido_pin_prompt(context, None)?);
                }
                Err(TokenError::WrongPin { retries }) => {
                    self.fido_wrong_pins += 1;
                    tracing::warn!(retries_left = retries, in_a_row = self.fido_wrong_pins, "wrong FIDO PIN");
                    pin = Some(self.fido_pin_prompt(context, Some(format!("Wrong PIN ({retries} tries left).")))?);
                }
                other => return other,
            }
        }
    }
}

/// Tells the user about a pending touch if the token has not answered within a second.
///
/// Arming and disarming only write a mutex-guarded slot: no thread is woken per signature. The
/// notice thread polls that slot every 100 ms while signatures are frequent and parks after
/// ten quiet seconds; the first arm after that unparks it.
struct TouchNotifier {
    shared: Arc<NoticeShared>,
    thread: std::thread::Thread,
}

struct NoticeShared {
    /// When the pending touch was armed, and what to say.
    armed: std::sync::Mutex<Option<(Instant, String)>>,
    parked: std::sync::atomic::AtomicBool,
}

const NOTICE_POLL: Duration = Duration::from_millis(100);
const NOTICE_IDLE_PARK: Duration = Duration::from_secs(10);

impl TouchNotifier {
    fn new(prompter: Arc<dyn Prompter>) -> TouchNotifier {
        use std::sync::atomic::Ordering;
        let shared = Arc::new(NoticeShared { armed: std::sync::Mutex::new(None), parked: false.into() });
        let state = shared.clone();
        let handle = std::thread::Builder::new()
            .name("touch-notice".into())
            .spawn(move || {
                let mut last_armed = Instant::now();
                loop {
                    let due = {
                        let mut armed = state.armed.lock().expect("notice lock");
                        match armed.as_ref() {
                            Some((at, _)) => {
                                last_armed = Instant::now();
                                if at.elapsed() >= TOUCH_NOTICE_DELAY {
                                    armed.take().map(|(_, message)| message)
                                } else {
                                    None
                                }
                            }
                            None => None,
                        }
                    };
                    if let Some(message) = due {
                        prompter.notify(&message);
                    }
                    if Arc::strong_count(&state) == 1 {
                        return; // the owner is gone
                    }
                    if last_armed.elapsed() > NOTICE_IDLE_PARK {
                        state.parked.store(true, Ordering::SeqCst);
                        if state.armed.lock().expect("notice lock").is_none() {
                            std::thread::park_timeout(NOTICE_IDLE_PARK);
                        }
                        state.parked.store(false, Ordering::SeqCst);
                        last_armed = Instant::now();
                    } else {
                        std::thread::sleep(NOTICE_POLL);
                    }
                }
            })
            .expect("spawning the touch notice thread");
        TouchNotifier { shared, thread: handle.thread().clone() }
    }

    fn arm(&self, message: String) -> TouchNoticeGuard<'_> {
        *self.shared.armed.lock().expect("notice lock") = Some((Instant::now(), message));
        if self.shared.parked.load(std::sync::atomic::Ordering::SeqCst) {
            self.thread.unpark();
        }
        TouchNoticeGuard { notifier: self }
    }
}

struct TouchNoticeGuard<'a> {
    notifier: &'a TouchNotifier,
}

impl Drop for TouchNoticeGuard<'_> {
    fn drop(&mut self) {
        *self.notifier.shared.armed.lock().expect("notice lock") = None;
    }
}

type Job = Box<dyn FnOnce(&mut Owner) + Send>;

enum Message {
    Run(Job),
    Refresh,
    Release,
}

/// What the agent sees of a token: a cached key list and a queue to its owner thread.
#[derive(Clone)]
pub struct TokenHandle {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Message>,
}

struct Shared {
    keys: RwLock<Arc<Vec<KeyInfo>>>,
    info: RwLock<Option<TokenInfo>>,
    label: String,
    /// Set once the owner's first key read has ended (with keys, or with the token absent).
    read_once: watch::Sender<bool>,
    /// Signature requests queued or running on the owner thread.
    signs_waiting: std::sync::atomic::AtomicUsize,
}

/// Signature requests one token holds at once (queued or running). Each connection has at
/// most one request in flight, so this only stops floods (a forwarded peer queueing many
/// requests ahead of the user's own, whose touch could then approve one of them).
pub const MAX_SIGNS_WAITING: usize = 128;

/// Counts a signature request as waiting until it has run or was dropped unrun.
struct Waiting(Arc<Shared>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.signs_waiting.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Owner thread settings.
#[derive(Clone, Debug)]
pub struct OwnerOptions {
    /// How often an idle owner re-reads the key list (presence, replaced keys).
    pub refresh_every: Duration,
    /// Release the device after this long without use (None: keep it).
    pub idle_release: Option<Duration>,
}

impl Default for OwnerOptions {
    fn default() -> Self {
        OwnerOptions { refresh_every: Duration::from_secs(2), idle_release: None }
    }
}

impl TokenHandle {
    /// Start the owner thread for a token.
    pub fn spawn(label: String, token: Box<dyn Token>, prompter: Arc<dyn Prompter>, options: OwnerOptions) -> TokenHandle {
        let shared = Arc::new(Shared {
            keys: RwLock::new(Arc::new(Vec::new())),
            info: RwLock::new(None),
            label,
            read_once: watch::Sender::new(false),
            signs_waiting: std::sync::atomic::AtomicUsize::new(0),
        });
        let (tx, rx) = mpsc::channel::<Message>();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("token-{}", shared.label))
            .spawn(move || owner_loop(Owner::new(token, prompter), rx, thread_shared, options))
            .expect("spawning a token owner thread");
        let handle = TokenHandle { shared, tx };
        handle.request_refresh();
        handle
    }

    pub fn label(&self) -> &str {
        &self.shared.label
    }

    /// Whether the owner's first key read has ended: until then `keys()` is empty only because
    /// nothing was read yet.
    pub fn is_ready(&self) -> bool {
        *self.shared.read_once.borrow()
    }

    /// Resolves once the owner's first key read has ended.
    pub async fn ready(&self) {
        let mut seen = self.shared.read_once.subscribe();
        // The sender lives in `shared`, which this handle holds: it cannot be dropped meanwhile.
        let _ = seen.wait_for(|read| *read).await;
    }

    /// Keys as last seen by the owner; never waits for the device.
    pub fn keys(&self) -> Arc<Vec<KeyInfo>> {
        self.shared.keys.read().expect("keys lock").clone()
    }

    /// Token facts as last seen; `None` while absent.
    pub fn info(&self) -> Option<TokenInfo> {
        self.shared.info.read().expect("info lock").clone()
    }

    /// Run `f` on the owner thread and wait for its result. A job whose caller stopped
    /// waiting before its turn (a requester gone) is dropped unrun.
    pub async fn run<R, F>(&self, f: F) -> TokenResult<R>
    where
        R: Send + 'static,
        F: FnOnce(&mut Owner) -> R + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |owner| {
            if !reply.is_closed() {
                let _ = reply.send(f(owner));
            }
        });
        self.tx
            .send(Message::Run(job))
            .map_err(|_| TokenError::Other("the token's owner thread has stopped; restart keytap".into()))?;
        answer.await.map_err(|_| TokenError::Other("the token's owner thread failed; see the agent log".into()))
    }

    /// Sign with `key` on the owner thread.
    pub async fn sign(&self, key: KeyInfo, scheme: SignScheme, data: Vec<u8>, context: SignContext) -> TokenResult<Vec<u8>> {
        let gone = context.gone.clone();
        self.run_sign(gone, move |owner| owner.sign(&key, scheme, &data, &context)).await?
    }

    /// Sign with an sk key on the owner thread.
    pub async fn sign_sk(&self, request: SkSignRequest, context: SignContext) -> TokenResult<SkAssertion> {
        let gone = context.gone.clone();
        self.run_sign(gone, move |owner| owner.sign_sk(&request, &context)).await?
    }

    /// Signature requests queued or running on the owner thread now.
    pub fn signs_waiting(&self) -> usize {
        self.shared.signs_waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `run` for a signature: refused when `MAX_SIGNS_WAITING` are already waiting, and
    /// skipped on the owner thread when its requester has gone (`gone` set, or, as for every
    /// job, nobody awaits the answer): no touch, PIN prompt or signature for nobody.
    async fn run_sign<R, F>(&self, gone: Option<Arc<std::sync::atomic::AtomicBool>>, f: F) -> TokenResult<TokenResult<R>>
    where
        R: Send + 'static,
        F: FnOnce(&mut Owner) -> TokenResult<R> + Send + 'static,
    {
        use std::sync::atomic::Ordering;
        let waiting = self.shared.signs_waiting.fetch_add(1, Ordering::SeqCst);
        let guard = Waiting(self.shared.clone());
        if waiting >= MAX_SIGNS_WAITING {
            return Err(TokenError::Busy(waiting));
        }
        self.run(move |owner| {
            if gone.is_some_and(|g| g.load(Ordering::SeqCst)) {
                return Err(TokenError::Other("the client hung up before its turn; nothing was signed".into()));
            }
            let result = f(owner);
            // No longer waiting once the answer is on its way.
            drop(guard);
            result
        })
        .await
    }

    /// Ask the owner to re-read the key list soon.
    pub fn request_refresh(&self) {
        let _ = self.tx.send(Message::Refresh);
    }

    /// Re-read the key list now and wait for it (messages are handled in order).
    pub async fn refresh(&self) -> Arc<Vec<KeyInfo>> {
        let _ = self.tx.send(Message::Refresh);
        let _ = self.run(|_| ()).await;
        self.keys()
    }

    /// Let go of the device so other programs can use it.
    pub fn release(&self) {
        let _ = self.tx.send(Message::Release);
    }

    /// Find the key with this public key.
    pub fn find(&self, public_key: &ssh_key::public::KeyData) -> Option<KeyInfo> {
        self.keys().iter().find(|k| &k.public_key == public_key).cloned()
    }

    /// The slot's key, if listed.
    pub fn key_in_slot(&self, slot: Slot) -> Option<KeyInfo> {
        self.keys().iter().find(|k| k.slot == slot).cloned()
    }
}

fn owner_loop(mut owner: Owner, rx: mpsc::Receiver<Message>, shared: Arc<Shared>, options: OwnerOptions) {
    let mut last_use = Instant::now();
    let mut released = false;
    loop {
        let message = match rx.recv_timeout(options.refresh_every) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => {
                if let Some(idle) = options.idle_release {
                    if !released && last_use.elapsed() >= idle {
                        tracing::info!(token = %shared.label, "idle: releasing the token");
                        owner.token.release();
                        released = true;
                        continue;
                    }
                }
                if released {
                    continue;
                }
                Message::Refresh
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        match message {
            Message::Run(job) => {
                last_use = Instant::now();
                released = false;
                job(&mut owner);
            }
            Message::Refresh => refresh(&mut owner, &shared),
            Message::Release => {
                tracing::info!(token = %shared.label, "releasing the token for other programs");
                owner.token.release();
                owner.info = None;
                released = true;
            }
        }
    }
}

fn refresh(owner: &mut Owner, shared: &Shared) {
    let listed = owner.token.info().and_then(|info| Ok((info, owner.token.keys()?)));
    let (info, keys) = match listed {
        Ok((info, keys)) => (Some(info), keys),
        Err(e) => {
            let had_keys = !shared.keys.read().expect("keys lock").is_empty();
            if had_keys {
                tracing::warn!(token = %shared.label, "token unavailable: {e}");
            }
            (None, Vec::new())
        }
    };
    owner.info = info.clone();
    let changed = **shared.keys.read().expect("keys lock") != keys;
    if changed {
        tracing::info!(token = %shared.label, keys = keys.len(), "token keys changed");
        *shared.keys.write().expect("keys lock") = Arc::new(keys);
    }
    *shared.info.write().expect("info lock") = info;
    shared.read_once.send_if_modified(|read| !std::mem::replace(read, true));
}

/// Wait until every token's first key read has ended, for at most `limit`. Tokens added
/// meanwhile (a YubiKey plugged in while a request waits) are waited for too. Returns the
/// labels of the tokens still unread when the time ran out.
pub async fn wait_first_reads<F>(tokens: F, limit: Duration) -> Vec<String>
where
    F: Fn() -> Vec<TokenHandle>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let pending: Vec<TokenHandle> = tokens().into_iter().filter(|t| !t.is_ready()).collect();
        if pending.is_empty() {
            return Vec::new();
        }
        let all = all_ready(&pending);
        // Re-check the list at least every 100 ms: a token may have been added since.
        let step = (tokio::time::Instant::now() + Duration::from_millis(100)).min(deadline);
        if tokio::time::timeout_at(step, all).await.is_err() && tokio::time::Instant::now() >= deadline {
            return tokens().into_iter().filter(|t| !t.is_ready()).map(|t| t.label().to_string()).collect();
        }
    }
}

/// Resolves when every one of these handles is ready.
async fn all_ready(handles: &[TokenHandle]) {
    for handle in handles {
        handle.ready().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt::PromptError;
    use crate::token::mock::{InitOptions, MockToken};
    use crate::token::{Pin, SignScheme};
    use std::sync::Mutex;
    use zeroize::Zeroizing;

    /// Answers PIN prompts from a script and records what it was shown.
    struct Scripted {
        pins: Mutex<Vec<&'static str>>,
        shown: Mutex<Vec<PinRequest>>,
        notices: Mutex<Vec<String>>,
    }

    impl Scripted {
        fn new(pins: &[&'static str]) -> Arc<Scripted> {
            let mut pins = pins.to_vec();
            pins.reverse();
            Arc::new(Scripted { pins: Mutex::new(pins), shown: Mutex::new(vec![]), notices: Mutex::new(vec![]) })
        }
    }

    impl Prompter for Scripted {
        fn pin(&self, request: &PinRequest) -> Result<Option<Pin>, PromptError> {
            self.shown.lock().unwrap().push(request.clone());
            Ok(self.pins.lock().unwrap().pop().map(|p| Zeroizing::new(p.to_string())))
        }
        fn confirm(&self, _message: &str) -> bool {
            false
        }
        fn notify(&self, message: &str) {
            self.notices.lock().unwrap().push(message.to_string());
        }
    }

    fn owner(prompter: Arc<Scripted>) -> (tempfile::TempDir, Owner, KeyInfo) {
        let dir = tempfile::tempdir().unwrap();
        MockToken::init(dir.path(), &InitOptions { force: false, serial: Some(4242) }).unwrap();
        let mut token = MockToken::open(dir.path()).unwrap();
        let key = token.keys().unwrap().into_iter().find(|k| k.slot == Slot(0x9a)).unwrap();
        (dir, Owner::new(Box::new(token), prompter), key)
    }

    fn context() -> SignContext {
        SignContext { requester: "git (pid 1)".into(), purpose: "sign a git commit or tag".into(), ..Default::default() }
    }

    #[test]
    fn asks_for_the_pin_once_and_shows_who_asks() {
        let prompter = Scripted::new(&["123456"]);
        let (_dir, mut owner, key) = owner(prompter.clone());
        owner.sign(&key, SignScheme::EcdsaSha256, b"data", &context()).unwrap();
        owner.sign(&key, SignScheme::EcdsaSha256, b"more", &context()).unwrap();
        let shown = prompter.shown.lock().unwrap();
        assert_eq!(shown.len(), 1, "PIN policy once: asked only the first time");
        assert_eq!(shown[0].retries, 3);
        assert_eq!(shown[0].reason, "git (pid 1) wants to sign a git commit or tag");
    }

    #[test]
    fn wrong_pin_is_retried_then_the_last_retry_is_never_spent() {
        let prompter = Scripted::new(&["000000", "111111", "123456"]);
        let (dir, mut owner, key) = owner(prompter.clone());
        let err = owner.sign(&key, SignScheme::EcdsaSha256, b"data", &context()).unwrap_err();
        assert!(matches!(err, TokenError::PinLastRetry), "{err}");
        assert!(err.to_string().contains("PUK"), "{err}");
        let shown = prompter.shown.lock().unwrap();
        assert_eq!(shown.len(), 2, "third PIN must not be tried with one retry left");
        assert_eq!(shown[1].error.as_deref(), Some("Wrong PIN (2 tries left)."));
        let mut token = MockToken::open(dir.path()).unwrap();
        assert_eq!(token.pin_retries().unwrap(), 1);
    }

    #[test]
    fn cancelled_pin_entry_fails_cleanly() {
        let prompter = Scripted::new(&[]);
        let (_dir, mut owner, key) = owner(prompter);
        let err = owner.sign(&key, SignScheme::EcdsaSha256, b"data", &context()).unwrap_err();
        assert!(matches!(err, TokenError::PinUnavailable(_)), "{err}");
    }

    #[test]
    fn a_wrong_pin_then_no_other_says_wrong_pin_not_cancelled() {
        let prompter = Scripted::new(&["000000"]);
        let (_dir, mut owner, key) = owner(prompter);
        let err = owner.sign(&key, SignScheme::EcdsaSha256, b"data", &context()).unwrap_err();
        assert!(matches!(err, TokenError::WrongPinNoOther { retries: 2, .. }), "{err}");
        let message = err.to_string();
        assert!(message.starts_with("wrong PIN (2 tries left; one was spent), and no other PIN was given (PIN entry was cancelled)"), "{message}");
    }

    #[test]
    fn a_slow_touch_is_announced_with_requester_and_purpose() {
        let prompter = Scripted::new(&["123456"]);
        let (dir, mut owner, key) = owner(prompter.clone());
        std::fs::write(dir.path().join("touch"), "delay:1600").unwrap();
        owner.sign(&key, SignScheme::EcdsaSha256, b"data", &context()).unwrap();
        let notices = prompter.notices.lock().unwrap();
        assert_eq!(notices.as_slice(), ["Touch YubiKey 4242 to let git (pid 1) sign a git commit or tag"]);
    }

    #[tokio::test]
    async fn handle_signs_on_the_owner_thread_and_lists_from_cache() {
        let prompter = Scripted::new(&["123456"]);
        let (dir, owner, key) = owner(prompter);
        let handle = TokenHandle::spawn("mock".into(), owner.token, owner.prompter, OwnerOptions::default());
        let keys = handle.refresh().await;
        assert_eq!(keys.len(), 4);
        let raw = handle.sign(key.clone(), SignScheme::EcdsaSha256, b"x".to_vec(), context()).await.unwrap();
        assert!(crate::signature::ssh_signature(SignScheme::EcdsaSha256, &raw).is_ok());
        std::fs::write(dir.path().join("unplugged"), "").unwrap();
        assert!(handle.refresh().await.is_empty(), "an unplugged token lists nothing");
        let err = handle.sign(key, SignScheme::EcdsaSha256, b"x".to_vec(), context()).await.unwrap_err();
        assert!(matches!(err, TokenError::NotPresent(_)), "{err}");
    }

    /// A mock token whose first key read waits until the test opens the gate (a slow card).
    struct Gated {
        inner: MockToken,
        gate: Option<std::sync::mpsc::Receiver<()>>,
        signed: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Token for Gated {
        fn info(&mut self) -> TokenResult<TokenInfo> {
            self.inner.info()
        }
        fn keys(&mut self) -> TokenResult<Vec<KeyInfo>> {
            if let Some(gate) = self.gate.take() {
                let _ = gate.recv();
            }
            self.inner.keys()
        }
        fn pin_retries(&mut self) -> TokenResult<u8> {
            self.inner.pin_retries()
        }
        fn verify_pin(&mut self, pin: &Pin) -> TokenResult<()> {
            self.inner.verify_pin(pin)
        }
        fn sign(&mut self, slot: Slot, scheme: SignScheme, message: &[u8]) -> TokenResult<Vec<u8>> {
            self.signed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.sign(slot, scheme, message)
        }
        fn attest(&mut self, slot: Slot) -> TokenResult<crate::token::Attestation> {
            self.inner.attest(slot)
        }
        fn generate(&mut self, request: crate::token::GenerateRequest, force: bool) -> TokenResult<KeyInfo> {
            self.inner.generate(request, force)
        }
    }

    fn gated(dir: &std::path::Path) -> (TokenHandle, std::sync::mpsc::Sender<()>) {
        let (handle, open, _) = gated_counting(dir);
        (handle, open)
    }

    /// `gated`, and how many signatures the token has made.
    fn gated_counting(dir: &std::path::Path) -> (TokenHandle, std::sync::mpsc::Sender<()>, Arc<std::sync::atomic::AtomicUsize>) {
        MockToken::init(dir, &InitOptions { force: false, serial: Some(4243) }).unwrap();
        let (open, gate) = std::sync::mpsc::channel();
        let signed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let token = Gated { inner: MockToken::open(dir).unwrap(), gate: Some(gate), signed: signed.clone() };
        let handle = TokenHandle::spawn("slow".into(), Box::new(token), Scripted::new(&[]), OwnerOptions::default());
        (handle, open, signed)
    }

    #[tokio::test]
    async fn a_queued_request_whose_client_hung_up_is_dropped_unsigned() {
        let dir = tempfile::tempdir().unwrap();
        let (slow, open, signed) = gated_counting(dir.path());
        let key = MockToken::open(dir.path()).unwrap().keys().unwrap().into_iter().find(|k| k.slot == Slot::CARD_AUTHENTICATION).unwrap();
        let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hung_up = SignContext { gone: Some(gone.clone()), ..context() };
        let queued = {
            let (slow, key) = (slow.clone(), key.clone());
            tokio::spawn(async move { slow.sign(key, SignScheme::RsaPkcs1Sha256, b"x".to_vec(), hung_up).await })
        };
        while slow.signs_waiting() < 1 {
            tokio::task::yield_now().await;
        }
        // The agent sets this when the client's socket closes (it still awaits the answer).
        gone.store(true, std::sync::atomic::Ordering::SeqCst);
        open.send(()).unwrap();
        let err = queued.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("hung up before its turn"), "{err}");
        assert_eq!(signed.load(std::sync::atomic::Ordering::SeqCst), 0);
        // A client still there is served as before.
        slow.sign(key, SignScheme::RsaPkcs1Sha256, b"x".to_vec(), context()).await.unwrap();
        assert_eq!(signed.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_flood_of_signature_requests_is_refused_and_abandoned_ones_never_reach_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let (slow, open, signed) = gated_counting(dir.path());
        // 9e needs no PIN and no touch; the owner is stuck in its first key read meanwhile.
        let key = MockToken::open(dir.path()).unwrap().keys().unwrap().into_iter().find(|k| k.slot == Slot::CARD_AUTHENTICATION).unwrap();
        let sign = |slow: &TokenHandle| {
            let (slow, key) = (slow.clone(), key.clone());
            tokio::spawn(async move { slow.sign(key, SignScheme::RsaPkcs1Sha256, b"x".to_vec(), context()).await })
        };
        let queued: Vec<_> = (0..MAX_SIGNS_WAITING).map(|_| sign(&slow)).collect();
        while slow.signs_waiting() < MAX_SIGNS_WAITING {
            tokio::task::yield_now().await;
        }
        let err = sign(&slow).await.unwrap().unwrap_err();
        assert!(matches!(err, TokenError::Busy(MAX_SIGNS_WAITING)), "{err}");
        assert!(err.to_string().contains("already waiting"), "{err}");
        // Their requesters go away: the owner drops the requests instead of signing them.
        for q in &queued {
            q.abort();
        }
        for q in queued {
            assert!(q.await.unwrap_err().is_cancelled());
        }
        // Until the owner is free again they still count (so abandoning and asking again
        // cannot pile up requests); then it drops them at once.
        assert_eq!(slow.signs_waiting(), MAX_SIGNS_WAITING);
        open.send(()).unwrap();
        slow.ready().await;
        while slow.signs_waiting() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let raw = sign(&slow).await.unwrap().unwrap();
        assert!(!raw.is_empty());
        assert_eq!(signed.load(std::sync::atomic::Ordering::SeqCst), 1, "only the request still awaited was signed");
        assert_eq!(slow.signs_waiting(), 0);
    }

    #[tokio::test]
    async fn a_request_waits_for_the_first_key_read_of_every_token_even_one_added_meanwhile() {
        let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (first, open_first) = gated(first_dir.path());
        let tokens = Arc::new(std::sync::Mutex::new(vec![first.clone()]));
        assert!(!first.is_ready() && first.keys().is_empty(), "nothing read yet");
        let listed = tokens.clone();
        let waiting = tokio::spawn(async move {
            let unread = wait_first_reads(|| listed.lock().unwrap().clone(), Duration::from_secs(60)).await;
            let keys: usize = listed.lock().unwrap().iter().map(|t| t.keys().len()).sum();
            (unread, keys)
        });
        // A second token shows up while the request waits; then both cards answer.
        let (second, open_second) = gated(second_dir.path());
        tokens.lock().unwrap().push(second.clone());
        open_first.send(()).unwrap();
        first.ready().await;
        assert!(!second.is_ready());
        open_second.send(()).unwrap();
        let (unread, keys) = waiting.await.unwrap();
        assert!(unread.is_empty(), "{unread:?}");
        assert_eq!(keys, 8, "the waiting request sees both tokens' keys");
    }

    #[tokio::test]
    async fn the_wait_is_bounded_and_names_the_tokens_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let (slow, open) = gated(dir.path());
        let unread = wait_first_reads(|| vec![slow.clone()], Duration::from_millis(300)).await;
        assert_eq!(unread, vec!["slow".to_string()]);
        assert!(slow.keys().is_empty());
        open.send(()).unwrap();
        slow.ready().await;
        assert_eq!(slow.keys().len(), 4);
        assert!(wait_first_reads(|| vec![slow.clone()], Duration::ZERO).await.is_empty());
    }

    /// A FIDO device in software: a PIN with retries and the "3 wrong in a row" block.
    struct FakeFido {
        pin: &'static str,
        retries: u8,
        in_a_row: u8,
        signed: u32,
    }

    impl Token for FakeFido {
        fn info(&mut self) -> TokenResult<TokenInfo> {
            Ok(TokenInfo { serial: 0, model: "fake FIDO".into(), firmware: (0, 0, 0) })
        }
        fn keys(&mut self) -> TokenResult<Vec<KeyInfo>> {
            Ok(Vec::new())
        }
        fn pin_retries(&mut self) -> TokenResult<u8> {
            Ok(self.retries)
        }
        fn verify_pin(&mut self, _pin: &Pin) -> TokenResult<()> {
            unreachable!("FIDO never verifies a PIN on its own")
        }
        fn sign(&mut self, _: Slot, _: SignScheme, _: &[u8]) -> TokenResult<Vec<u8>> {
            unreachable!()
        }
        fn attest(&mut self, _: Slot) -> TokenResult<crate::token::Attestation> {
            unreachable!()
        }
        fn generate(&mut self, _: crate::token::GenerateRequest, _: bool) -> TokenResult<KeyInfo> {
            unreachable!()
        }
        fn sk_sign(&mut self, request: &SkSignRequest, pin: Option<&Pin>) -> TokenResult<SkAssertion> {
            let ok = || SkAssertion { flags: 0x05, counter: 1, signature: vec![], device: "fake".into() };
            match pin {
                None if request.uv_required => Err(TokenError::PinRequired { retries: self.retries }),
                None => Ok(ok()),
                Some(_) if self.in_a_row >= 3 => Err(TokenError::FidoPinAuthBlocked),
                Some(p) if p.as_str() == self.pin => {
                    self.in_a_row = 0;
                    self.retries = 8;
                    self.signed += 1;
                    Ok(ok())
                }
                Some(_) => {
                    self.retries -= 1;
                    self.in_a_row += 1;
                    Err(TokenError::WrongPin { retries: self.retries })
                }
            }
        }
    }

    fn sk_request() -> SkSignRequest {
        SkSignRequest { rp_id: "ssh:".into(), key_handle: vec![1], data: b"x".to_vec(), up: true, uv_required: true, cancel: None, probe: false }
    }

    fn fido_owner(retries: u8, pins: &[&'static str]) -> (Owner, Arc<Scripted>) {
        let prompter = Scripted::new(pins);
        let token = FakeFido { pin: "1234", retries, in_a_row: 0, signed: 0 };
        (Owner::new(Box::new(token), prompter.clone()), prompter)
    }

    #[test]
    fn fido_pin_rules_never_block_the_key() {
        // Right PIN: one prompt, one signature.
        let (mut owner, prompter) = fido_owner(8, &["1234"]);
        owner.sign_sk(&sk_request(), &context()).unwrap();
        assert_eq!(prompter.shown.lock().unwrap()[0].retries, 8);
        // Wrong, then right: the second prompt says why, and the counter resets.
        let (mut owner, prompter) = fido_owner(8, &["0000", "1234"]);
        owner.sign_sk(&sk_request(), &context()).unwrap();
        let shown = prompter.shown.lock().unwrap();
        assert_eq!(shown[1].error.as_deref(), Some("Wrong PIN (7 tries left)."));
        drop(shown);
        // Two wrong in a row: stop, and ask no more (a third would block the key).
        let (mut owner, prompter) = fido_owner(8, &["0000", "0000", "1234"]);
        let err = owner.sign_sk(&sk_request(), &context()).unwrap_err();
        assert!(matches!(err, TokenError::FidoPinStopped), "{err}");
        assert_eq!(prompter.shown.lock().unwrap().len(), 2);
        let err = owner.sign_sk(&sk_request(), &context()).unwrap_err();
        assert!(matches!(err, TokenError::FidoPinStopped), "still stopped: {err}");
        // At the retry floor nothing is asked or spent.
        let (mut owner, prompter) = fido_owner(1, &["1234"]);
        let err = owner.sign_sk(&sk_request(), &context()).unwrap_err();
        assert!(matches!(err, TokenError::FidoPinLastRetry), "{err}");
        assert!(prompter.shown.lock().unwrap().is_empty());
        // With 2 left, one wrong PIN leaves 1: refused before a second try.
        let (mut owner, prompter) = fido_owner(2, &["0000", "1234"]);
        let err = owner.sign_sk(&sk_request(), &context()).unwrap_err();
        assert!(matches!(err, TokenError::FidoPinLastRetry), "{err}");
        assert_eq!(prompter.shown.lock().unwrap().len(), 1);
        // A key without verify-required is signed without any PIN.
        let (mut owner, prompter) = fido_owner(8, &[]);
        owner.sign_sk(&SkSignRequest { uv_required: false, ..sk_request() }, &context()).unwrap();
        assert!(prompter.shown.lock().unwrap().is_empty());
    }
}
