//! The one seam for hardware: every token (mock, PIV, later FIDO) implements [`Token`].
//!
//! A `Token` is owned by exactly one thread (see [`owner`]); its methods block, which is fine
//! there and never allowed inside a tokio task.

pub mod mock;
pub mod owner;
pub mod piv;

use std::fmt;

use serde::{Deserialize, Serialize};
use ssh_key::public::KeyData;
use zeroize::Zeroizing;

/// A PIN held only in a zeroizing buffer.
pub type Pin = Zeroizing<String>;

/// A PIV key slot (9a, 9c, 9d, 9e, retired 82-95).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Slot(pub u8);

impl Slot {
    pub const AUTHENTICATION: Slot = Slot(0x9a);
    pub const SIGNATURE: Slot = Slot(0x9c);
    pub const KEY_MANAGEMENT: Slot = Slot(0x9d);
    pub const CARD_AUTHENTICATION: Slot = Slot(0x9e);

    pub fn is_valid(self) -> bool {
        matches!(self.0, 0x9a | 0x9c | 0x9d | 0x9e | 0x82..=0x95)
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}", self.0)
    }
}

impl std::str::FromStr for Slot {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim().trim_start_matches("0x").to_ascii_lowercase();
        let slot = u8::from_str_radix(&t, 16)
            .map(Slot)
            .map_err(|_| format!("invalid slot {s:?}: use 9a, 9c, 9d, 9e or 82-95"))?;
        if slot.is_valid() {
            Ok(slot)
        } else {
            Err(format!("invalid slot {s:?}: use 9a, 9c, 9d, 9e or 82-95"))
        }
    }
}

/// A key as a `--key` option names it: a slot (`9c`), `SERIAL/SLOT` (`12345678/9c`) or a
/// SHA256 fingerprint (`SHA256:...`, the prefix optional). Every command that picks a key parses
/// it here, so they all take the same forms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySelector {
    Slot(Slot),
    SerialSlot(u32, Slot),
    Fingerprint(String),
}

impl std::str::FromStr for KeySelector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s.starts_with("SHA256:") && s.len() > 7 {
            return Ok(KeySelector::Fingerprint(s.to_string()));
        }
        if let Some((serial, slot)) = s.split_once('/') {
            if let (Ok(serial), Ok(slot)) = (serial.parse(), slot.parse()) {
                return Ok(KeySelector::SerialSlot(serial, slot));
            }
        }
        if let Ok(slot) = s.parse() {
            return Ok(KeySelector::Slot(slot));
        }
        // A SHA-256 fingerprint without its prefix: 43 characters of unpadded base64.
        if s.len() == 43 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/') {
            return Ok(KeySelector::Fingerprint(format!("SHA256:{s}")));
        }
        Err(format!("invalid key {s:?}: use a slot (9a, 9c, 9d, 9e or 82-95), SERIAL/SLOT (12345678/9c) or a SHA256: fingerprint"))
    }
}

impl fmt::Display for KeySelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySelector::Slot(slot) => write!(f, "slot {slot}"),
            KeySelector::SerialSlot(serial, slot) => write!(f, "{serial}/{slot}"),
            KeySelector::Fingerprint(fp) => f.write_str(fp),
        }
    }
}

impl KeySelector {
    /// Does it name the key with this fingerprint, found in `location` (serial and slot; `None`
    /// for a key that is not on a keytap token, which only a fingerprint can name)?
    pub fn matches(&self, location: Option<(u32, Slot)>, fingerprint: &str) -> bool {
        match (self, location) {
            (KeySelector::Fingerprint(fp), _) => fp == fingerprint,
            (KeySelector::Slot(slot), Some((_, s))) => s == *slot,
            (KeySelector::SerialSlot(serial, slot), Some(at)) => at == (*serial, *slot),
            (_, None) => false,
        }
    }
}

impl TryFrom<String> for Slot {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Slot> for String {
    fn from(s: Slot) -> String {
        s.to_string()
    }
}

/// Key algorithms a token slot can hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KeyAlgorithm {
    P256,
    P384,
    Ed25519,
    Rsa2048,
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::P256 => "p256",
            KeyAlgorithm::P384 => "p384",
            KeyAlgorithm::Ed25519 => "ed25519",
            KeyAlgorithm::Rsa2048 => "rsa2048",
        })
    }
}

/// When the token wants its PIN for a slot (PIV pin policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PinPolicy {
    Never,
    Once,
    Always,
}

/// When the token wants a touch for a slot (PIV touch policy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TouchPolicy {
    Never,
    Always,
    /// One touch is valid for 15 seconds.
    Cached,
}

/// Yubico's PIN/touch policy extension (1.3.6.1.4.1.41482.3.8) stores each policy as one byte;
/// attestation certificates and keytap's own slot certificates use it.
impl PinPolicy {
    pub fn yubico_byte(self) -> u8 {
        match self {
            PinPolicy::Never => 1,
            PinPolicy::Once => 2,
            PinPolicy::Always => 3,
        }
    }

    pub fn from_yubico_byte(b: u8) -> Option<PinPolicy> {
        [PinPolicy::Never, PinPolicy::Once, PinPolicy::Always].into_iter().find(|p| p.yubico_byte() == b)
    }
}

impl TouchPolicy {
    pub fn yubico_byte(self) -> u8 {
        match self {
            TouchPolicy::Never => 1,
            TouchPolicy::Always => 2,
            TouchPolicy::Cached => 3,
        }
    }

    pub fn from_yubico_byte(b: u8) -> Option<TouchPolicy> {
        [TouchPolicy::Never, TouchPolicy::Always, TouchPolicy::Cached].into_iter().find(|t| t.yubico_byte() == b)
    }
}

impl fmt::Display for PinPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PinPolicy::Never => "never",
            PinPolicy::Once => "once",
            PinPolicy::Always => "always",
        })
    }
}

impl fmt::Display for TouchPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TouchPolicy::Never => "never",
            TouchPolicy::Always => "always",
            TouchPolicy::Cached => "cached",
        })
    }
}

/// One key on a token, as listed.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyInfo {
    pub serial: u32,
    pub slot: Slot,
    pub algorithm: KeyAlgorithm,
    pub pin_policy: PinPolicy,
    pub touch_policy: TouchPolicy,
    pub public_key: KeyData,
    /// Set for an sk key loaded into the agent: its application and key comment. Such a key
    /// has no serial or slot (both are 0), only a fingerprint.
    pub fido: Option<FidoKeyInfo>,
}

/// What list, log and policy show of an sk key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FidoKeyInfo {
    pub application: String,
    pub flags: u8,
    pub comment: String,
}

impl KeyInfo {
    pub fn kind(&self) -> KeyKind {
        if self.fido.is_some() {
            KeyKind::Fido
        } else {
            KeyKind::Piv
        }
    }

    /// Serial and slot of a key on a PIV (or mock) token; `None` for an sk key.
    pub fn location(&self) -> Option<(u32, Slot)> {
        self.fido.is_none().then_some((self.serial, self.slot))
    }

    /// Where the key lives, for humans: `12345678/9a` or `fido ssh:`.
    pub fn place(&self) -> String {
        match &self.fido {
            Some(f) => format!("fido {}", f.application),
            None => format!("{}/{}", self.serial, self.slot),
        }
    }

    /// `SHA256:...` fingerprint of the public key, as `ssh-add -l` prints it.
    pub fn fingerprint(&self) -> String {
        self.public_key.fingerprint(ssh_key::HashAlg::Sha256).to_string()
    }

    /// The `authorized_keys` line for this key.
    pub fn authorized_key(&self) -> String {
        let key = ssh_key::PublicKey::new(self.public_key.clone(), self.comment());
        key.to_openssh().expect("encoding a public key cannot fail")
    }

    /// The comment shown by `ssh-add -l`: where the key lives.
    pub fn comment(&self) -> String {
        match &self.fido {
            Some(f) if !f.comment.is_empty() => f.comment.clone(),
            _ => format!("keytap {}", self.place()),
        }
    }
}

/// What the token is asked to sign with: it hashes (or pads) the message itself, as a card does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignScheme {
    EcdsaSha256,
    EcdsaSha384,
    Ed25519,
    RsaPkcs1Sha256,
    RsaPkcs1Sha512,
}

/// Facts about a token itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    pub serial: u32,
    /// "mock" or "YubiKey 5 NFC" and so on.
    pub model: String,
    /// Firmware version, e.g. (5, 4, 3).
    pub firmware: (u8, u8, u8),
}

/// A slot's attestation: the certificate for the slot key and the f9 certificate that signed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attestation {
    pub slot_certificate_der: Vec<u8>,
    pub intermediate_der: Vec<u8>,
}

/// A fresh key to put in a slot.
#[derive(Clone, Copy, Debug)]
pub struct GenerateRequest {
    pub slot: Slot,
    pub algorithm: KeyAlgorithm,
    pub pin_policy: PinPolicy,
    pub touch_policy: TouchPolicy,
}

/// Errors a token can report. Each carries what the user can do next.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token not present: {0}; plug it in and retry")]
    NotPresent(String),
    #[error("the PC/SC service is not available ({0}); start pcscd (`sudo systemctl start pcscd.socket`) and retry")]
    NoPcsc(String),
    #[error("no key in slot {0}; create one with `keytap setup --slot {0}`")]
    NoKey(Slot),
    #[error("the token needs its PIN ({retries} tries left)")]
    PinRequired { retries: u8 },
    #[error("wrong PIN, {retries} tries left; check the PIN before trying again")]
    WrongPin { retries: u8 },
    #[error("wrong PIN ({retries} tries left; one was spent), and no other PIN was given ({then}); check the PIN (or fix the PIN file) before trying again")]
    WrongPinNoOther { retries: u8, then: String },
    #[error("PIN is blocked; unblock it with the PUK (`ykman piv access unblock-pin`)")]
    PinBlocked,
    #[error("wrong PUK, {retries} tries left; check the PUK before trying again (a blocked PUK cannot be unblocked)")]
    WrongPuk { retries: u8 },
    #[error("the PUK is blocked; the PIV application can only be reset (`ykman piv reset`, which erases its keys)")]
    PukBlocked,
    #[error("{0}")]
    BadNewSecret(String),
    #[error("only one PIN try is left; keytap will not spend it. Unblock or reset the PIN with the PUK (`ykman piv access change-pin` with the right PIN, or `ykman piv access unblock-pin`)")]
    PinLastRetry,
    #[error("only one PUK try is left; keytap will not spend it. Change the PUK with `ykman piv access change-puk` only when sure of the current one (a blocked PUK leaves only a PIV reset)")]
    PukLastRetry,
    #[error("no PIN was given: {0}")]
    PinUnavailable(String),
    #[error("{0} signature requests are already waiting for this token, so this one was refused (a flood of requests, or a token waiting for a touch: touch it or check `keytap status`, then retry)")]
    Busy(usize),
    #[error("touch was not given in time; touch the token when it blinks and retry")]
    TouchTimeout,
    #[error("touch was refused on the token")]
    TouchDenied,
    #[error("slot {slot} holds a {alg} key, which cannot sign {scheme:?}")]
    UnsupportedScheme { slot: Slot, alg: KeyAlgorithm, scheme: SignScheme },
    #[error("slot {0} already holds a key; pass --force to replace it")]
    SlotOccupied(Slot),
    #[error("this key cannot be attested: {0}")]
    NotAttestable(String),
    #[error("not supported by this token: {0}")]
    Unsupported(String),
    #[error("only one FIDO PIN try is left; keytap will not spend it. Re-plug the key and enter the right PIN once with a tool you trust (e.g. `fido2-token -I -w pin DEVICE`), or reset the key's FIDO application (erases its credentials)")]
    FidoPinLastRetry,
    #[error("two wrong FIDO PINs in a row; keytap stops asking (a third would block the key until it is re-plugged). Fix the PIN source (--fido-pin-file) and restart keytap")]
    FidoPinStopped,
    #[error("the security key refuses PINs until it is re-plugged (3 wrong PINs in a row); re-plug it and retry")]
    FidoPinAuthBlocked,
    #[error("the security key does not hold this credential (another device, or the key was reset); plug in the key it was made on")]
    NoCredential,
    #[error("the request was cancelled (the client went away)")]
    Cancelled,
    #[error("token error: {0}")]
    Other(String),
}

/// A FIDO assertion request for an sk key: what OpenSSH's sk-usbhid sends.
#[derive(Clone, Debug)]
pub struct SkSignRequest {
    /// rpId: the key's application.
    pub rp_id: String,
    pub key_handle: Vec<u8>,
    /// The data to sign; clientDataHash = SHA-256(data).
    pub data: Vec<u8>,
    /// Ask for user presence (key flag 0x01).
    pub up: bool,
    /// The key needs user verification (key flag 0x04): built-in UV, else the PIN.
    pub uv_required: bool,
    /// Set by the agent when the client went away: cancel the wait for a touch.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// A silent probe (which device holds this key handle?): never ask for a PIN.
    pub probe: bool,
}

/// What the authenticator returned: authenticatorData flags, signature counter and signature
/// (DER for ES256, 64 bytes for EdDSA).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SkAssertion {
    pub flags: u8,
    pub counter: u32,
    pub signature: Vec<u8>,
    /// The device that answered.
    pub device: String,
}

pub type TokenResult<T> = Result<T, TokenError>;

/// The hardware seam. Kept small on purpose: everything else (PIN prompts, touch notices,
/// policy) lives above it and is shared by every implementation.
pub trait Token: Send {
    /// Serial, model and firmware. Also the presence check: fails with `NotPresent` when unplugged.
    fn info(&mut self) -> TokenResult<TokenInfo>;
    /// Every slot that holds a key.
    fn keys(&mut self) -> TokenResult<Vec<KeyInfo>>;
    /// PIN retries left, without spending one.
    fn pin_retries(&mut self) -> TokenResult<u8>;
    /// PUK retries left without spending one; `None` when the token cannot tell.
    fn puk_retries(&mut self) -> TokenResult<Option<u8>> {
        Ok(None)
    }
    /// Verify the PIN; a wrong PIN spends one retry and reports how many are left.
    fn verify_pin(&mut self, pin: &Pin) -> TokenResult<()>;
    /// Sign `message` (the token hashes or pads it per `scheme`); returns the token's raw form:
    /// DER for ECDSA, 64 bytes for Ed25519, the PKCS#1 v1.5 signature for RSA.
    /// Fails with `PinRequired` when the slot's PIN policy is not yet satisfied.
    fn sign(&mut self, slot: Slot, scheme: SignScheme, message: &[u8]) -> TokenResult<Vec<u8>>;
    /// Attestation certificate for a slot (PIV INS 0xF9) and the f9 certificate.
    fn attest(&mut self, slot: Slot) -> TokenResult<Attestation>;
    /// Generate a key on the token.
    fn generate(&mut self, request: GenerateRequest, force: bool) -> TokenResult<KeyInfo>;
    /// Drop any connection to the device so other programs can use it; the next call reconnects.
    fn release(&mut self) {}
    /// Change the PIN or the PUK. A wrong `current` spends one of its retries.
    fn change_secret(&mut self, which: Secret, _current: &Pin, _new: &Pin) -> TokenResult<()> {
        Err(TokenError::Unsupported(format!("changing the {which} on this token")))
    }
    /// Replace a factory-default management key with a random one stored PIN-protected on the
    /// token (as `ykman piv access change-management-key --generate --protect`). Needs the PIN
    /// verified. `Ok(false)`: the management key was not the default, nothing changed.
    fn protect_management_key(&mut self) -> TokenResult<bool> {
        Err(TokenError::Unsupported("this token has no management key".into()))
    }
    /// Whether [`Token::protect_management_key`] can apply (checked before setup changes
    /// anything).
    fn has_management_key(&self) -> bool {
        false
    }
    /// FIDO: get an assertion for an sk key (with the clientPIN when given). Fails with
    /// `PinRequired` when the device wants the PIN.
    fn sk_sign(&mut self, _request: &SkSignRequest, _pin: Option<&Pin>) -> TokenResult<SkAssertion> {
        Err(TokenError::Unsupported("FIDO credentials on this token".into()))
    }
    /// FIDO: does the device verify users itself (biometrics), so that no PIN is needed for UV?
    fn sk_has_uv(&mut self) -> TokenResult<bool> {
        Ok(false)
    }
}

/// The token's two secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Secret {
    Pin,
    Puk,
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Secret::Pin => "PIN",
            Secret::Puk => "PUK",
        })
    }
}

/// The factory defaults of a YubiKey's PIV application (and of the mock token).
pub const DEFAULT_PIN: &str = "123456";
pub const DEFAULT_PUK: &str = "12345678";

/// PIV PINs and PUKs are 6 to 8 characters.
pub fn check_new_secret(which: Secret, new: &str) -> TokenResult<()> {
    if !(6..=8).contains(&new.len()) || !new.is_ascii() {
        return Err(TokenError::BadNewSecret(format!("a {which} must be 6 to 8 ASCII characters; choose another")));
    }
    if (which == Secret::Pin && new == DEFAULT_PIN) || (which == Secret::Puk && new == DEFAULT_PUK) {
        return Err(TokenError::BadNewSecret(format!("the new {which} is the factory default; choose another")));
    }
    Ok(())
}

/// Which kind of token a command uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenKind {
    /// A software test token kept in a state directory. Not for real keys.
    Mock,
    /// YubiKeys (and other PIV cards) over PC/SC.
    Piv,
}

/// Where a key lives, for matching and display: a PIV/mock slot, or a FIDO credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Piv,
    Fido,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_selectors_parse_and_match() {
        let fp = "SHA256:Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE";
        assert_eq!("9c".parse(), Ok(KeySelector::Slot(Slot::SIGNATURE)));
        assert_eq!(" 12345678/9a ".parse(), Ok(KeySelector::SerialSlot(12345678, Slot::AUTHENTICATION)));
        assert_eq!(fp.parse(), Ok(KeySelector::Fingerprint(fp.into())));
        assert_eq!(fp[7..].parse(), Ok(KeySelector::Fingerprint(fp.into())), "the SHA256: prefix is optional");
        for bad in ["", "9z", "SHA256:", "x/9c", "1/9z", "Zm9v"] {
            let err = bad.parse::<KeySelector>().unwrap_err();
            assert!(err.contains("invalid key") && err.contains("SERIAL/SLOT"), "{bad:?}: {err}");
        }
        let at = Some((12345678, Slot::SIGNATURE));
        assert!(KeySelector::Slot(Slot::SIGNATURE).matches(at, "SHA256:x"));
        assert!(!KeySelector::Slot(Slot::AUTHENTICATION).matches(at, "SHA256:x"));
        assert!(KeySelector::SerialSlot(12345678, Slot::SIGNATURE).matches(at, "SHA256:x"));
        assert!(!KeySelector::SerialSlot(87654321, Slot::SIGNATURE).matches(at, "SHA256:x"));
        assert!(KeySelector::Fingerprint("SHA256:x".into()).matches(None, "SHA256:x"));
        assert!(!KeySelector::Fingerprint("SHA256:x".into()).matches(at, "SHA256:y"));
        assert!(!KeySelector::Slot(Slot::SIGNATURE).matches(None, "SHA256:x"), "a key off keytap's tokens has no slot");
    }

    #[test]
    fn yubico_policy_bytes_round_trip() {
        assert_eq!([PinPolicy::Never, PinPolicy::Once, PinPolicy::Always].map(PinPolicy::yubico_byte), [1, 2, 3]);
        assert_eq!([TouchPolicy::Never, TouchPolicy::Always, TouchPolicy::Cached].map(TouchPolicy::yubico_byte), [1, 2, 3]);
        for b in 1..=3 {
            assert_eq!(PinPolicy::from_yubico_byte(b).map(PinPolicy::yubico_byte), Some(b));
            assert_eq!(TouchPolicy::from_yubico_byte(b).map(TouchPolicy::yubico_byte), Some(b));
        }
        for b in [0, 4, 0xff] {
            assert_eq!(PinPolicy::from_yubico_byte(b), None);
            assert_eq!(TouchPolicy::from_yubico_byte(b), None);
        }
    }
}
