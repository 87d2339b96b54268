//! The mock token: a software PIV card kept in a state directory, for tests and demos.
//!
//! It behaves like a YubiKey where keytap can observe it: PIN with a retry counter, PIN and
//! touch policies, touch approve/deny/time-out/delay, unplugging, attestation. Its private keys
//! sit on disk in plain text, which is why every file it writes says TEST TOKEN.
//!
//! Control files in the state directory (read at every operation, so tests can script a running
//! agent): `touch` holds `approve`, `deny`, `timeout` or `delay:MS`; `unplugged` exists while
//! the token is "unplugged". `KEYTAP_MOCK_TOUCH` sets the touch mode when `touch` is absent.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use ssh_key::public::KeyData;
use zeroize::Zeroizing;

use super::{
    Attestation, GenerateRequest, Secret, KeyAlgorithm, KeyInfo, Pin, PinPolicy, SignScheme, Slot, Token,
    TokenError, TokenInfo, TokenResult, TouchPolicy,
};

/// Name of the state file inside the state directory.
pub const STATE_FILE: &str = "mock-token.json";
const WARNING_FILE: &str = "THIS-IS-A-TEST-TOKEN.txt";
const WARNING: &str = "TEST TOKEN: keytap's mock token. Its private keys are stored in this \
directory in plain text. Never use them for anything real.";
pub use super::{DEFAULT_PIN, DEFAULT_PUK};
const PIN_TRIES: u8 = 3;
/// How long one touch satisfies a `cached` touch policy (YubiKey: 15 s).
const TOUCH_CACHE: Duration = Duration::from_secs(15);
/// How long a simulated touch waits before timing out in `timeout` mode.
const SIMULATED_TOUCH_TIMEOUT: Duration = Duration::from_millis(1500);

#[derive(Serialize, Deserialize, Clone, Debug)]
struct SlotState {
    algorithm: KeyAlgorithm,
    pin_policy: PinPolicy,
    touch_policy: TouchPolicy,
    /// PKCS#8 PEM of the private key. TEST KEY.
    private_key_pkcs8: String,
    /// Generated "on device" (attestable) or imported (not attestable).
    #[serde(default = "yes")]
    attestable: bool,
}

fn yes() -> bool {
    true
}

fn three() -> u8 {
    PIN_TRIES
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct State {
    #[serde(rename = "WARNING")]
    warning: String,
    serial: u32,
    firmware: (u8, u8, u8),
    pin: String,
    puk: String,
    pin_retries: u8,
    #[serde(default = "three")]
    puk_retries: u8,
    slots: BTreeMap<Slot, SlotState>,
    /// Mock attestation CA (root + f9), PEM; see `attest::mock`.
    #[serde(default)]
    attestation: Option<crate::attest::mock::MockAttestationCa>,
}

/// How the simulated touch sensor answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TouchMode {
    Approve,
    Deny,
    Timeout,
    Delay(Duration),
}

impl std::str::FromStr for TouchMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s {
            "approve" => Ok(TouchMode::Approve),
            "deny" => Ok(TouchMode::Deny),
            "timeout" => Ok(TouchMode::Timeout),
            _ => s
                .strip_prefix("delay:")
                .and_then(|ms| ms.parse::<u64>().ok())
                .map(|ms| TouchMode::Delay(Duration::from_millis(ms)))
                .ok_or_else(|| format!("unknown touch mode {s:?}: use approve, deny, timeout or delay:MS")),
        }
    }
}

/// Options for `keytap mock init`.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    pub force: bool,
    /// Fixed serial (random 8-digit otherwise).
    pub serial: Option<u32>,
}

/// The mock token bound to its state directory.
pub struct MockToken {
    dir: PathBuf,
    /// PIN verified in this "card session" (lost on unplug or release, as on a card).
    pin_verified: bool,
    last_touch: Option<Instant>,
    /// The state file as last read, and its parsed keys; re-read when the file changes.
    cache: Option<Cached>,
}

/// What identifies one version of the state file.
type Stamp = (std::time::SystemTime, u64, u64);

struct Cached {
    stamp: Stamp,
    state: State,
    keys: BTreeMap<Slot, std::sync::Arc<ParsedKey>>,
}

/// A slot's private key, parsed once per state-file version.
enum ParsedKey {
    /// ECDSA keys in ring's form (DER signatures straight out, like a PIV card's).
    Ecdsa(ring::signature::EcdsaKeyPair),
    Ed25519(ed25519_dalek::SigningKey),
    Rsa(rsa::RsaPrivateKey),
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::metadata(path)?;
    Ok((meta.modified()?, meta.len(), meta.ino()))
}

impl MockToken {
    /// Open an existing mock token. Fails with a hint when `keytap mock init` was not run.
    pub fn open(dir: &Path) -> TokenResult<Self> {
        let mut token = MockToken { dir: dir.to_path_buf(), pin_verified: false, last_touch: None, cache: None };
        if !token.state_path().exists() {
            return Err(TokenError::NotPresent(format!(
                "no mock token in {}; create one with `keytap mock init --state-dir {}`",
                dir.display(),
                dir.display()
            )));
        }
        token.load()?;
        Ok(token)
    }

    /// Create a mock token: serial, PIN 123456 (3 tries), PUK, and keys in 9a, 9c, 9d, 9e.
    pub fn init(dir: &Path, options: &InitOptions) -> TokenResult<PathBuf> {
        let state_path = dir.join(STATE_FILE);
        if state_path.exists() && !options.force {
            return Err(TokenError::Other(format!(
                "a mock token already exists in {}; pass --force to replace it (its keys are lost)",
                dir.display()
            )));
        }
        create_private_dir(dir)?;
        let serial = options.serial.unwrap_or_else(|| 10_000_000 + OsRng.next_u32() % 89_999_999);
        let mut slots = BTreeMap::new();
        for (slot, algorithm, pin_policy, touch_policy) in [
            (Slot::AUTHENTICATION, KeyAlgorithm::P256, PinPolicy::Once, TouchPolicy::Cached),
            (Slot::SIGNATURE, KeyAlgorithm::Ed25519, PinPolicy::Always, TouchPolicy::Always),
            (Slot::KEY_MANAGEMENT, KeyAlgorithm::P384, PinPolicy::Once, TouchPolicy::Never),
            (Slot::CARD_AUTHENTICATION, KeyAlgorithm::Rsa2048, PinPolicy::Never, TouchPolicy::Never),
        ] {
            let private_key_pkcs8 = generate_pkcs8(algorithm)?;
            slots.insert(slot, SlotState { algorithm, pin_policy, touch_policy, private_key_pkcs8, attestable: true });
        }
        let firmware = (5, 4, 3);
        let attestation = crate::attest::mock::MockAttestationCa::generate(serial, firmware)
            .map_err(|e| TokenError::Other(format!("creating the mock attestation CA: {e}")))?;
        write_private_file(&dir.join("attestation-root.pem"), attestation.root_pem().as_bytes())?;
        let state = State {
            warning: WARNING.to_string(),
            serial,
            firmware,
            pin: DEFAULT_PIN.to_string(),
            puk: DEFAULT_PUK.to_string(),
            pin_retries: PIN_TRIES,
            puk_retries: PIN_TRIES,
            slots,
            attestation: Some(attestation),
        };
        write_private_file(&dir.join(WARNING_FILE), format!("{WARNING}\n").as_bytes())?;
        save_state(&state_path, &state)?;
        Ok(state_path)
    }

    pub fn state_dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    fn load(&mut self) -> TokenResult<State> {
        let path = self.state_path();
        let current = stamp(&path).map_err(|e| TokenError::NotPresent(format!("cannot read {}: {e}", path.display())))?;
        if let Some(cached) = &self.cache {
            if cached.stamp == current {
                return Ok(cached.state.clone());
            }
        }
        let text = Zeroizing::new(fs::read_to_string(&path).map_err(|e| {
            TokenError::NotPresent(format!("cannot read {}: {e}", path.display()))
        })?);
        let state: State = serde_json::from_str(&text).map_err(|e| {
            TokenError::Other(format!("{} is corrupt ({e}); recreate it with `keytap mock init --force`", path.display()))
        })?;
        self.cache = Some(Cached { stamp: current, state: state.clone(), keys: BTreeMap::new() });
        Ok(state)
    }

    fn save(&mut self, state: &State) -> TokenResult<()> {
        save_state(&self.state_path(), state)?;
        self.cache = None;
        Ok(())
    }

    /// The parsed private key of a slot in the current state.
    fn parsed_key(&mut self, slot: Slot, s: &SlotState) -> TokenResult<std::sync::Arc<ParsedKey>> {
        if let Some(key) = self.cache.as_ref().and_then(|c| c.keys.get(&slot)) {
            return Ok(key.clone());
        }
        let key = std::sync::Arc::new(parse_key(s)?);
        if let Some(cache) = &mut self.cache {
            cache.keys.insert(slot, key.clone());
        }
        Ok(key)
    }

    fn unplugged(&self) -> bool {
        self.dir.join("unplugged").exists()
    }

    /// Load the state, failing like a card that is gone when "unplugged".
    fn present_state(&mut self) -> TokenResult<State> {
        if self.unplugged() {
            self.pin_verified = false;
            self.last_touch = None;
            return Err(TokenError::NotPresent("the mock token is unplugged (`keytap mock plug` plugs it back)".into()));
        }
        self.load()
    }

    fn touch_mode(&self) -> TokenResult<TouchMode> {
        let configured = match fs::read_to_string(self.dir.join("touch")) {
            Ok(text) => Some(text),
            Err(_) => std::env::var("KEYTAP_MOCK_TOUCH").ok(),
        };
        match configured {
            None => Ok(TouchMode::Approve),
            Some(text) if text.trim().is_empty() => Ok(TouchMode::Approve),
            Some(text) => text.parse().map_err(TokenError::Other),
        }
    }

    fn require_touch(&mut self, policy: TouchPolicy) -> TokenResult<()> {
        match policy {
            TouchPolicy::Never => return Ok(()),
            TouchPolicy::Cached if self.last_touch.is_some_and(|t| t.elapsed() < TOUCH_CACHE) => {
                return Ok(())
            }
            _ => {}
        }
        match self.touch_mode()? {
            TouchMode::Approve => {}
            TouchMode::Delay(d) => std::thread::sleep(d),
            TouchMode::Deny => return Err(TokenError::TouchDenied),
            TouchMode::Timeout => {
                std::thread::sleep(SIMULATED_TOUCH_TIMEOUT);
                return Err(TokenError::TouchTimeout);
            }
        }
        self.last_touch = Some(Instant::now());
        Ok(())
    }
}

impl Token for MockToken {
    fn info(&mut self) -> TokenResult<TokenInfo> {
        let state = self.present_state()?;
        Ok(TokenInfo { serial: state.serial, model: "keytap mock token (TEST)".into(), firmware: state.firmware })
    }

    fn keys(&mut self) -> TokenResult<Vec<KeyInfo>> {
        let state = self.present_state()?;
        state
            .slots
            .iter()
            .map(|(slot, s)| {
                Ok(KeyInfo {
                    serial: state.serial,
                    slot: *slot,
                    algorithm: s.algorithm,
                    pin_policy: s.pin_policy,
                    touch_policy: s.touch_policy,
                    public_key: public_key_of(s)?,
                    fido: None,
                })
            })
            .collect()
    }

    fn pin_retries(&mut self) -> TokenResult<u8> {
        Ok(self.present_state()?.pin_retries)
    }

    fn puk_retries(&mut self) -> TokenResult<Option<u8>> {
        Ok(Some(self.present_state()?.puk_retries))
    }

    fn verify_pin(&mut self, pin: &Pin) -> TokenResult<()> {
        let mut state = self.present_state()?;
        if state.pin_retries == 0 {
            return Err(TokenError::PinBlocked);
        }
        let ok = subtle::ConstantTimeEq::ct_eq(pin.as_bytes(), state.pin.as_bytes()).into();
        if ok {
            self.pin_verified = true;
            if state.pin_retries == PIN_TRIES {
                return Ok(());
            }
            state.pin_retries = PIN_TRIES;
            self.save(&state)
        } else {
            state.pin_retries -= 1;
            self.pin_verified = false;
            self.save(&state)?;
            if state.pin_retries == 0 {
                Err(TokenError::PinBlocked)
            } else {
                Err(TokenError::WrongPin { retries: state.pin_retries })
            }
        }
    }

    fn sign(&mut self, slot: Slot, scheme: SignScheme, message: &[u8]) -> TokenResult<Vec<u8>> {
        let state = self.present_state()?;
        let s = state.slots.get(&slot).ok_or(TokenError::NoKey(slot))?.clone();
        match s.pin_policy {
            PinPolicy::Never => {}
            PinPolicy::Once if self.pin_verified => {}
            PinPolicy::Once | PinPolicy::Always => {
                if state.pin_retries == 0 {
                    return Err(TokenError::PinBlocked);
                }
                if !self.pin_verified {
                    return Err(TokenError::PinRequired { retries: state.pin_retries });
                }
            }
        }
        self.require_touch(s.touch_policy)?;
        // PIN policy "always": the verification is used up by this one signature.
        if s.pin_policy == PinPolicy::Always {
            self.pin_verified = false;
        }
        let key = self.parsed_key(slot, &s)?;
        sign_with(&key, s.algorithm, slot, scheme, message)
    }

    fn attest(&mut self, slot: Slot) -> TokenResult<Attestation> {
        let state = self.present_state()?;
        let s = state.slots.get(&slot).ok_or(TokenError::NoKey(slot))?;
        if !s.attestable {
            return Err(TokenError::NotAttestable(format!(
                "the key in slot {slot} was imported, not generated on the token"
            )));
        }
        let ca = state.attestation.as_ref().ok_or_else(|| {
            TokenError::NotAttestable("this mock token has no attestation CA; recreate it with `keytap mock init --force`".into())
        })?;
        let spki = public_key_spki_der(s)?;
        ca.attest(slot, &spki, state.serial, state.firmware, s.pin_policy, s.touch_policy)
            .map_err(|e| TokenError::Other(format!("mock attestation failed: {e}")))
    }

    fn generate(&mut self, request: GenerateRequest, force: bool) -> TokenResult<KeyInfo> {
        let mut state = self.present_state()?;
        if state.slots.contains_key(&request.slot) && !force {
            return Err(TokenError::SlotOccupied(request.slot));
        }
        let s = SlotState {
            algorithm: request.algorithm,
            pin_policy: request.pin_policy,
            touch_policy: request.touch_policy,
            private_key_pkcs8: generate_pkcs8(request.algorithm)?,
            attestable: true,
        };
        let public_key = public_key_of(&s)?;
        state.slots.insert(request.slot, s);
        self.save(&state)?;
        Ok(KeyInfo {
            serial: state.serial,
            slot: request.slot,
            algorithm: request.algorithm,
            pin_policy: request.pin_policy,
            touch_policy: request.touch_policy,
            public_key,
            fido: None,
        })
    }

    fn release(&mut self) {
        self.pin_verified = false;
        self.last_touch = None;
    }

    fn change_secret(&mut self, which: Secret, current: &Pin, new: &Pin) -> TokenResult<()> {
        super::check_new_secret(which, new)?;
        let mut state = self.present_state()?;
        let (stored, retries) = match which {
            Secret::Pin => (&mut state.pin, &mut state.pin_retries),
            Secret::Puk => (&mut state.puk, &mut state.puk_retries),
        };
        if *retries == 0 {
            return Err(if which == Secret::Pin { TokenError::PinBlocked } else { TokenError::PukBlocked });
        }
        let ok: bool = subtle::ConstantTimeEq::ct_eq(current.as_bytes(), stored.as_bytes()).into();
        if ok {
            *stored = new.to_string();
            *retries = PIN_TRIES;
        } else {
            *retries -= 1;
        }
        let left = *retries;
        self.save(&state)?;
        match (ok, which, left) {
            (true, _, _) => Ok(()),
            (false, Secret::Pin, 0) => Err(TokenError::PinBlocked),
            (false, Secret::Pin, retries) => Err(TokenError::WrongPin { retries }),
            (false, Secret::Puk, 0) => Err(TokenError::PukBlocked),
            (false, Secret::Puk, retries) => Err(TokenError::WrongPuk { retries }),
        }
    }
}

impl MockToken {
    /// Mark a slot's key as imported (so it cannot be attested), as a test switch.
    pub fn set_attestable(&mut self, slot: Slot, attestable: bool) -> TokenResult<()> {
        let mut state = self.load()?;
        state.slots.get_mut(&slot).ok_or(TokenError::NoKey(slot))?.attestable = attestable;
        self.save(&state)
    }
}

/// Create a directory readable by its owner only (0700), or check an existing one.
pub fn create_private_dir(dir: &Path) -> TokenResult<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| TokenError::Other(format!("cannot create {}: {e}", dir.display())))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| TokenError::Other(format!("cannot restrict {}: {e}", dir.display())))
}

fn write_private_file(path: &Path, bytes: &[u8]) -> TokenResult<()> {
    // A unique temporary name: two writers (agent and a CLI command) may save at once.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp.{}.{n}", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| TokenError::Other(format!("cannot write {}: {e}", path.display())))
}

fn save_state(path: &Path, state: &State) -> TokenResult<()> {
    let text = Zeroizing::new(serde_json::to_string_pretty(state).expect("state serialises"));
    write_private_file(path, text.as_bytes())
}

fn generate_pkcs8(algorithm: KeyAlgorithm) -> TokenResult<String> {
    use p256::pkcs8::{EncodePrivateKey, LineEnding};
    let pem = match algorithm {
        KeyAlgorithm::P256 => p256::SecretKey::random(&mut OsRng).to_pkcs8_pem(LineEnding::LF),
        KeyAlgorithm::P384 => p384::SecretKey::random(&mut OsRng).to_pkcs8_pem(LineEnding::LF),
        KeyAlgorithm::Ed25519 => ed25519_dalek::SigningKey::generate(&mut OsRng).to_pkcs8_pem(LineEnding::LF),
        KeyAlgorithm::Rsa2048 => rsa::RsaPrivateKey::new(&mut OsRng, 2048)
            .map_err(|e| TokenError::Other(format!("RSA key generation failed: {e}")))?
            .to_pkcs8_pem(LineEnding::LF),
    };
    pem.map(|p| p.to_string()).map_err(|e| TokenError::Other(format!("encoding a key failed: {e}")))
}

fn corrupt(e: impl std::fmt::Display) -> TokenError {
    TokenError::Other(format!("mock key is corrupt ({e}); recreate it with `keytap mock init --force`"))
}

fn public_key_of(s: &SlotState) -> TokenResult<KeyData> {
    use p256::pkcs8::DecodePrivateKey;
    let pem = s.private_key_pkcs8.as_str();
    Ok(match s.algorithm {
        KeyAlgorithm::P256 => {
            let sk = p256::ecdsa::SigningKey::from_pkcs8_pem(pem).map_err(corrupt)?;
            ssh_key::public::EcdsaPublicKey::from(*sk.verifying_key()).into()
        }
        KeyAlgorithm::P384 => {
            let sk = p384::ecdsa::SigningKey::from_pkcs8_pem(pem).map_err(corrupt)?;
            ssh_key::public::EcdsaPublicKey::from(*sk.verifying_key()).into()
        }
        KeyAlgorithm::Ed25519 => {
            let sk = ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(corrupt)?;
            ssh_key::public::Ed25519PublicKey::from(sk.verifying_key()).into()
        }
        KeyAlgorithm::Rsa2048 => {
            let sk = rsa::RsaPrivateKey::from_pkcs8_pem(pem).map_err(corrupt)?;
            ssh_key::public::RsaPublicKey::try_from(sk.to_public_key()).map_err(corrupt)?.into()
        }
    })
}

/// SubjectPublicKeyInfo DER of a slot's public key (what an attestation certificate carries).
fn public_key_spki_der(s: &SlotState) -> TokenResult<Vec<u8>> {
    use p256::pkcs8::{DecodePrivateKey, EncodePublicKey};
    let pem = s.private_key_pkcs8.as_str();
    let der = match s.algorithm {
        KeyAlgorithm::P256 => p256::SecretKey::from_pkcs8_pem(pem).map_err(corrupt)?.public_key().to_public_key_der(),
        KeyAlgorithm::P384 => p384::SecretKey::from_pkcs8_pem(pem).map_err(corrupt)?.public_key().to_public_key_der(),
        KeyAlgorithm::Ed25519 => {
            ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(corrupt)?.verifying_key().to_public_key_der()
        }
        KeyAlgorithm::Rsa2048 => {
            rsa::RsaPrivateKey::from_pkcs8_pem(pem).map_err(corrupt)?.to_public_key().to_public_key_der()
        }
    };
    der.map(|d| d.as_bytes().to_vec()).map_err(corrupt)
}

fn parse_key(s: &SlotState) -> TokenResult<ParsedKey> {
    use p256::pkcs8::DecodePrivateKey;
    let pem = s.private_key_pkcs8.as_str();
    Ok(match s.algorithm {
        KeyAlgorithm::P256 | KeyAlgorithm::P384 => {
            let alg = if s.algorithm == KeyAlgorithm::P256 {
                &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING
            } else {
                &ring::signature::ECDSA_P384_SHA384_ASN1_SIGNING
            };
            let (_, der) = p256::pkcs8::SecretDocument::from_pem(pem).map_err(corrupt)?;
            let rng = ring::rand::SystemRandom::new();
            ParsedKey::Ecdsa(ring::signature::EcdsaKeyPair::from_pkcs8(alg, der.as_bytes(), &rng).map_err(corrupt)?)
        }
        KeyAlgorithm::Ed25519 => ParsedKey::Ed25519(ed25519_dalek::SigningKey::from_pkcs8_pem(pem).map_err(corrupt)?),
        KeyAlgorithm::Rsa2048 => ParsedKey::Rsa(rsa::RsaPrivateKey::from_pkcs8_pem(pem).map_err(corrupt)?),
    })
}

fn sign_with(key: &ParsedKey, alg: KeyAlgorithm, slot: Slot, scheme: SignScheme, message: &[u8]) -> TokenResult<Vec<u8>> {
    use signature::Signer;
    match (key, scheme) {
        (ParsedKey::Ecdsa(sk), SignScheme::EcdsaSha256 | SignScheme::EcdsaSha384)
            if (alg == KeyAlgorithm::P256) == (scheme == SignScheme::EcdsaSha256) =>
        {
            let rng = ring::rand::SystemRandom::new();
            let sig = sk.sign(&rng, message).map_err(|_| TokenError::Other("mock ECDSA signing failed".into()))?;
            Ok(sig.as_ref().to_vec())
        }
        (ParsedKey::Ed25519(sk), SignScheme::Ed25519) => Ok(sk.sign(message).to_bytes().to_vec()),
        (ParsedKey::Rsa(sk), SignScheme::RsaPkcs1Sha256) => {
            let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(sk.clone());
            Ok(signature::SignatureEncoding::to_vec(&signer.sign(message)))
        }
        (ParsedKey::Rsa(sk), SignScheme::RsaPkcs1Sha512) => {
            let signer = rsa::pkcs1v15::SigningKey::<sha2::Sha512>::new(sk.clone());
            Ok(signature::SignatureEncoding::to_vec(&signer.sign(message)))
        }
        _ => Err(TokenError::UnsupportedScheme { slot, alg, scheme }),
    }
}
