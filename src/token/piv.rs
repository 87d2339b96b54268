//! YubiKey PIV over PC/SC, through the `yubikey` crate.
//!
//! One [`PivToken`] per YubiKey, found by serial. It keeps one long-lived card handle so the
//! card's own PIN cache survives between signatures, and never resets the card when letting go
//! (PC/SC disposition LeaveCard). Key listings are cached and re-read only when the card was
//! reconnected (unplug, replug, pcscd restart, `release()`), so the owner's 2 s refresh costs one
//! reader-status query and no card traffic.

pub mod cert;

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::Digest;
use yubikey::piv::{self, AlgorithmId, SlotAlgorithmId, SlotId};
use yubikey::{Certificate, MgmKey, Serial, YubiKey};

use super::{
    Attestation, GenerateRequest, KeyAlgorithm, KeyInfo, Pin, PinPolicy, SignScheme, Slot, Token, TokenError, TokenInfo,
    TokenResult, TouchPolicy,
};

/// Every PIV slot that can hold a key, in listing order.
pub const KEY_SLOTS: [u8; 24] = [
    0x9a, 0x9c, 0x9d, 0x9e, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8d, 0x8e, 0x8f, 0x90,
    0x91, 0x92, 0x93, 0x94, 0x95,
];

/// PIV object id of the f9 attestation certificate.
const ATTESTATION_OBJECT: u32 = 0x005f_ff01;

/// SHA-256 and SHA-512 DigestInfo prefixes (RFC 8017 §9.2 note 1) for PKCS#1 v1.5 padding.
const DIGEST_INFO_SHA256: [u8; 19] =
    [0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20];
const DIGEST_INFO_SHA512: [u8; 19] =
    [0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40];

/// A live connection: the card handle plus what we learnt when connecting.
struct Connection {
    yk: YubiKey,
    reader: CString,
    /// pcsc-lite's insertion/removal counter for the reader when we connected.
    event_count: u32,
    pcsc: pcsc::Context,
}

/// One YubiKey, addressed by serial.
pub struct PivToken {
    serial: u32,
    conn: Option<Connection>,
    /// Keys read at the last (re)connect; `None` until read.
    keys: Option<Vec<KeyInfo>>,
    info: Option<TokenInfo>,
    claimed: Claimed,
    ever_connected: bool,
}

/// Readers currently held by a [`PivToken`], so the watcher never probes (re-selects) them.
pub type Claimed = Arc<Mutex<HashSet<CString>>>;

fn pcsc_gone(e: &yubikey::Error) -> bool {
    matches!(e, yubikey::Error::PcscError { .. })
}

fn other(what: &str, e: impl std::fmt::Display) -> TokenError {
    TokenError::Other(format!("{what}: {e}"))
}

impl PivToken {
    /// A token for the YubiKey with this serial; connects on first use.
    pub fn new(serial: u32, claimed: Claimed) -> PivToken {
        PivToken { serial, conn: None, keys: None, info: None, claimed, ever_connected: false }
    }

    fn not_present(&self, why: impl std::fmt::Display) -> TokenError {
        TokenError::NotPresent(format!("YubiKey {} ({why})", self.serial))
    }

    /// Connect if needed, and notice a card that went away or was replaced since.
    fn connect(&mut self) -> TokenResult<&mut YubiKey> {
        if let Some(conn) = &self.conn {
            let mut state = [pcsc::ReaderState::new(conn.reader.clone(), pcsc::State::UNAWARE)];
            let alive = match conn.pcsc.get_status_change(Duration::ZERO, &mut state) {
                Ok(()) => {
                    let s = &state[0];
                    s.event_state().contains(pcsc::State::PRESENT) && s.event_count() == conn.event_count
                }
                Err(_) => false,
            };
            if !alive {
                tracing::info!(serial = self.serial, "YubiKey removed or replaced; reconnecting");
                self.drop_connection();
            }
        }
        if self.conn.is_none() {
            // Just found by a probe: a card still being cleaned up after another program may
            // not open at once. Later (refresh every 2 s) one attempt is enough.
            let attempts = if self.ever_connected { 1 } else { 4 };
            let mut opened = YubiKey::open_by_serial(Serial(self.serial));
            for _ in 1..attempts {
                if opened.is_ok() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
                opened = YubiKey::open_by_serial(Serial(self.serial));
            }
            let yk = opened.map_err(|e| match e {
                yubikey::Error::NotFound => self.not_present("not connected"),
                e if pcsc_gone(&e) => self.not_present(format!("PC/SC: {e}; is pcscd running?")),
                e => other(&format!("opening YubiKey {}", self.serial), e),
            })?;
            let reader = CString::new(yk.name().to_string()).map_err(|e| other("reader name", e))?;
            let pcsc = pcsc::Context::establish(pcsc::Scope::User).map_err(|e| self.not_present(format!("PC/SC: {e}")))?;
            let mut state = [pcsc::ReaderState::new(reader.clone(), pcsc::State::UNAWARE)];
            pcsc.get_status_change(Duration::ZERO, &mut state).map_err(|e| self.not_present(format!("PC/SC: {e}")))?;
            let v = yk.version();
            self.info = Some(TokenInfo {
                serial: self.serial,
                model: format!("YubiKey ({})", yk.name()),
                firmware: (v.major, v.minor, v.patch),
            });
            self.claimed.lock().expect("claimed lock").insert(reader.clone());
            // A reconnected card may hold different keys: read them again.
            self.keys = None;
            tracing::info!(serial = self.serial, reader = %yk.name(), "connected");
            self.conn = Some(Connection { yk, reader, event_count: state[0].event_count(), pcsc });
            self.ever_connected = true;
        }
        Ok(&mut self.conn.as_mut().expect("connected").yk)
    }

    /// Let go of the card without resetting it, so its PIN cache stays for other programs too.
    fn drop_connection(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.claimed.lock().expect("claimed lock").remove(&conn.reader);
            if let Err((yk, e)) = conn.yk.disconnect(pcsc::Disposition::LeaveCard) {
                tracing::debug!(serial = self.serial, "disconnect: {e}");
                // The card is gone already; dropping the handle cannot reset anything that matters.
                drop(yk);
            }
        }
        self.keys = None;
    }

    /// Map a card error; a PC/SC failure means the card went away: drop the handle.
    fn card_error(&mut self, what: &str, e: yubikey::Error) -> TokenError {
        if pcsc_gone(&e) {
            self.drop_connection();
            self.not_present(format!("{what}: {e}"))
        } else {
            other(what, e)
        }
    }

    /// Whether the card's metadata for this slot names its public key (YubiKey 5.2.3+), so the
    /// key is listed without a certificate. piv-authenticator answers metadata without it.
    fn metadata_names_key(&mut self, slot: SlotId) -> bool {
        let Ok(yk) = self.connect() else { return false };
        matches!(piv::metadata(yk, slot), Ok(meta) if meta.public.is_some())
    }

    fn read_keys(&mut self) -> TokenResult<Vec<KeyInfo>> {
        let serial = self.serial;
        let yk = self.connect()?;
        let mut keys = Vec::new();
        let mut metadata_works = yk.version().major >= 5;
        for &raw in KEY_SLOTS.iter() {
            let slot_id = SlotId::try_from(raw).map_err(|e| other("slot", e))?;
            let slot = Slot(raw);
            // The card's own word on the policies, when its metadata names them.
            let mut card_policy = None;
            if metadata_works {
                match piv::metadata(yk, slot_id) {
                    Ok(meta) => {
                        card_policy = meta.policy.map(|(p, t)| (pin_policy_from(p), touch_policy_from(t)));
                        if let (SlotAlgorithmId::Asymmetric(alg), Some(public)) = (&meta.algorithm, &meta.public) {
                            let spki = der08::Encode::to_der(public).map_err(|e| other("public key", e))?;
                            let (pin_policy, touch_policy) = card_policy.unwrap_or((PinPolicy::Once, TouchPolicy::Never));
                            match cert::key_from_spki(&spki) {
                                Ok((algorithm, public_key)) => keys.push(KeyInfo {
                                    serial,
                                    slot,
                                    algorithm,
                                    pin_policy,
                                    touch_policy,
                                    public_key,
                                    fido: None,
                                }),
                                Err(e) => tracing::info!(serial, %slot, ?alg, "skipping a key keytap cannot use: {e}"),
                            }
                            continue;
                        }
                        // Metadata without the public key (piv-authenticator, as on a Nitrokey 3,
                        // answers the policy alone or nothing): the certificate names the key.
                        tracing::debug!(serial, %slot, "metadata without a public key; reading the certificate");
                    }
                    Err(yubikey::Error::NotFound) => continue,
                    Err(yubikey::Error::NotSupported) => metadata_works = false,
                    Err(e) if pcsc_gone(&e) => return Err(self.card_error("reading slot metadata", e)),
                    Err(e) => {
                        tracing::debug!(serial, %slot, "metadata: {e}; falling back to the certificate");
                    }
                }
            }
            // Before firmware 5.2.3 (or on cards without full metadata) the certificate names the key.
            match Certificate::read(yk, slot_id) {
                Ok(c) => {
                    let der = der08::Encode::to_der(&c.cert).map_err(|e| other("certificate", e))?;
                    match cert::key_from_certificate(&der) {
                        Ok((algorithm, public_key, policy)) => {
                            let (pin_policy, touch_policy) =
                                card_policy.or(policy).unwrap_or((PinPolicy::Once, TouchPolicy::Never));
                            keys.push(KeyInfo { serial, slot, algorithm, pin_policy, touch_policy, public_key, fido: None });
                        }
                        Err(e) => tracing::info!(serial, %slot, "skipping a certificate keytap cannot use: {e}"),
                    }
                }
                Err(e) if pcsc_gone(&e) => return Err(self.card_error("reading a certificate", e)),
                Err(_) => {}
            }
        }
        Ok(keys)
    }

    fn cached_keys(&mut self) -> TokenResult<&Vec<KeyInfo>> {
        self.connect()?;
        if self.keys.is_none() {
            let keys = self.read_keys()?;
            self.keys = Some(keys);
        }
        Ok(self.keys.as_ref().expect("keys read"))
    }

    fn key(&mut self, slot: Slot) -> TokenResult<KeyInfo> {
        self.cached_keys()?.iter().find(|k| k.slot == slot).cloned().ok_or(TokenError::NoKey(slot))
    }

    /// Authenticate with the management key: the factory default, else a PIN-protected random
    /// one (as `ykman piv access change-management-key --protect` stores it).
    fn authenticate_management(&mut self) -> TokenResult<()> {
        let yk = self.connect()?;
        let default = MgmKey::get_default(yk).map_err(|e| other("management key", e))?;
        match yk.authenticate(&default) {
            Ok(()) => return Ok(()),
            Err(e) if pcsc_gone(&e) => return Err(self.card_error("management key", e)),
            Err(_) => {}
        }
        let yk = self.connect()?;
        match protected_management_key(yk) {
            Ok(key) => yk.authenticate(&key).map_err(|e| other("authenticating with the protected management key", e)),
            Err(yubikey::Error::AuthenticationError) => {
                let retries = self.pin_retries()?;
                Err(TokenError::PinRequired { retries })
            }
            Err(_) => Err(TokenError::Other(
                "the management key is neither the default nor PIN-protected; set it with `ykman piv access change-management-key --protect`".into(),
            )),
        }
    }
}

impl Drop for PivToken {
    fn drop(&mut self) {
        self.drop_connection();
    }
}

/// PIV object holding PIN-protected data (`88 { 89 management key }`), as ykman writes it.
const PRINTED_OBJECT: u32 = 0x005f_c109;

/// The PIN-protected management key. The yubikey crate learns the key's algorithm from GET
/// METADATA for slot 9B and fails on cards that answer it without the algorithm
/// (piv-authenticator, on a Nitrokey 3, answers nothing): then read the object ourselves and
/// take the algorithm from the key's length (24 bytes: this firmware's default algorithm).
fn protected_management_key(yk: &mut YubiKey) -> yubikey::Result<MgmKey> {
    match MgmKey::get_protected(yk) {
        Err(yubikey::Error::ParseError) => {}
        other => return other,
    }
    let object = yk.fetch_object(PRINTED_OBJECT)?;
    let key = tlv_value(&object, 0x88).and_then(|inner| tlv_value(inner, 0x89)).ok_or(yubikey::Error::ParseError)?;
    let algorithm = match key.len() {
        16 => yubikey::MgmAlgorithmId::Aes128,
        32 => yubikey::MgmAlgorithmId::Aes256,
        _ => MgmKey::get_default(yk)?.algorithm_id(),
    };
    MgmKey::from_bytes(key, Some(algorithm))
}

/// The value of the first BER-TLV with this one-byte tag in `data` (a sequence of TLVs).
fn tlv_value(mut data: &[u8], tag: u8) -> Option<&[u8]> {
    while data.len() >= 2 {
        let (len, header) = match data[1] {
            n if n < 0x80 => (n as usize, 2),
            0x81 => (*data.get(2)? as usize, 3),
            0x82 => (u16::from_be_bytes([*data.get(2)?, *data.get(3)?]) as usize, 4),
            _ => return None,
        };
        let value = data.get(header..header + len)?;
        if data[0] == tag {
            return Some(value);
        }
        data = &data[header + len..];
    }
    None
}

fn pin_policy_from(p: yubikey::PinPolicy) -> PinPolicy {
    match p {
        yubikey::PinPolicy::Never => PinPolicy::Never,
        yubikey::PinPolicy::Always => PinPolicy::Always,
        _ => PinPolicy::Once,
    }
}

fn touch_policy_from(t: yubikey::TouchPolicy) -> TouchPolicy {
    match t {
        yubikey::TouchPolicy::Always => TouchPolicy::Always,
        yubikey::TouchPolicy::Cached => TouchPolicy::Cached,
        _ => TouchPolicy::Never,
    }
}

/// PKCS#1 v1.5 signature block (EMSA-PKCS1-v1_5) for a 2048-bit key: the card applies the raw
/// RSA operation to exactly this.
pub fn pkcs1v15_block(scheme: SignScheme, message: &[u8], len: usize) -> Vec<u8> {
    let (prefix, digest): (&[u8], Vec<u8>) = match scheme {
        SignScheme::RsaPkcs1Sha512 => (&DIGEST_INFO_SHA512, sha2::Sha512::digest(message).to_vec()),
        _ => (&DIGEST_INFO_SHA256, sha2::Sha256::digest(message).to_vec()),
    };
    let t_len = prefix.len() + digest.len();
    let mut block = Vec::with_capacity(len);
    block.extend_from_slice(&[0x00, 0x01]);
    block.resize(len - t_len - 1, 0xff);
    block.push(0x00);
    block.extend_from_slice(prefix);
    block.extend_from_slice(&digest);
    block
}

impl Token for PivToken {
    fn info(&mut self) -> TokenResult<TokenInfo> {
        self.connect()?;
        Ok(self.info.clone().expect("set on connect"))
    }

    fn keys(&mut self) -> TokenResult<Vec<KeyInfo>> {
        Ok(self.cached_keys()?.clone())
    }

    fn pin_retries(&mut self) -> TokenResult<u8> {
        // Note: the yubikey crate re-selects the applet to read the counter, which forgets a
        // verified PIN on a YubiKey; only asked when the card has just refused for want of a
        // PIN, or before setup. 0 means the card says the PIN is verified (cards that keep it
        // across SELECT); a blocked PIN is `PinBlocked`.
        let yk = self.connect()?;
        match yk.get_pin_retries() {
            Ok(n) => Ok(n),
            Err(yubikey::Error::PinLocked) => Err(TokenError::PinBlocked),
            Err(e) => Err(self.card_error("reading PIN retries", e)),
        }
    }

    fn puk_retries(&mut self) -> TokenResult<Option<u8>> {
        // GET METADATA (firmware 5.3+) reads the counter without spending a try; older
        // firmware cannot tell.
        use yubikey::piv::{ManagementSlotId, SlotId};
        let yk = self.connect()?;
        Ok(yubikey::piv::metadata(yk, SlotId::Management(ManagementSlotId::Puk)).ok().and_then(|m| m.retries).map(|r| r.remaining_count))
    }

    fn change_secret(&mut self, which: crate::token::Secret, current: &Pin, new: &Pin) -> TokenResult<()> {
        use crate::token::Secret;
        crate::token::check_new_secret(which, new)?;
        let yk = self.connect()?;
        let result = match which {
            Secret::Pin => yk.change_pin(current.as_bytes(), new.as_bytes()),
            Secret::Puk => yk.change_puk(current.as_bytes(), new.as_bytes()),
        };
        match (result, which) {
            (Ok(()), _) => Ok(()),
            (Err(yubikey::Error::WrongPin { tries: 0 }) | Err(yubikey::Error::PinLocked), Secret::Pin) => Err(TokenError::PinBlocked),
            (Err(yubikey::Error::WrongPin { tries }), Secret::Pin) => Err(TokenError::WrongPin { retries: tries }),
            (Err(yubikey::Error::WrongPin { tries: 0 }) | Err(yubikey::Error::PinLocked), Secret::Puk) => Err(TokenError::PukBlocked),
            (Err(yubikey::Error::WrongPin { tries }), Secret::Puk) => Err(TokenError::WrongPuk { retries: tries }),
            (Err(e), _) => Err(self.card_error(&format!("changing the {which}"), e)),
        }
    }

    fn verify_pin(&mut self, pin: &Pin) -> TokenResult<()> {
        let yk = self.connect()?;
        match yk.verify_pin(pin.as_bytes()) {
            Ok(()) => Ok(()),
            Err(yubikey::Error::WrongPin { tries: 0 }) => Err(TokenError::PinBlocked),
            Err(yubikey::Error::WrongPin { tries }) => Err(TokenError::WrongPin { retries: tries }),
            Err(yubikey::Error::PinLocked) => Err(TokenError::PinBlocked),
            Err(e) => Err(self.card_error("verifying the PIN", e)),
        }
    }

    fn sign(&mut self, slot: Slot, scheme: SignScheme, message: &[u8]) -> TokenResult<Vec<u8>> {
        let key = self.key(slot)?;
        let unsupported = || TokenError::UnsupportedScheme { slot, alg: key.algorithm, scheme };
        let (input, alg) = match (key.algorithm, scheme) {
            (KeyAlgorithm::P256, SignScheme::EcdsaSha256) => (sha2::Sha256::digest(message).to_vec(), AlgorithmId::EccP256),
            (KeyAlgorithm::P384, SignScheme::EcdsaSha384) => (sha2::Sha384::digest(message).to_vec(), AlgorithmId::EccP384),
            (KeyAlgorithm::Ed25519, SignScheme::Ed25519) => (message.to_vec(), AlgorithmId::Ed25519),
            (KeyAlgorithm::Rsa2048, SignScheme::RsaPkcs1Sha256 | SignScheme::RsaPkcs1Sha512) => {
                (pkcs1v15_block(scheme, message, 256), AlgorithmId::Rsa2048)
            }
            _ => return Err(unsupported()),
        };
        let slot_id = SlotId::try_from(slot.0).map_err(|e| other("slot", e))?;
        let yk = self.connect()?;
        match piv::sign_data(yk, &input, alg, slot_id) {
            Ok(sig) => Ok(sig.to_vec()),
            Err(yubikey::Error::AuthenticationError) => {
                match self.pin_retries()? {
                    // Verified, yet refused: the slot wants the PIN right before each use (PIN
                    // policy "always", or 9c on some cards). A successful verification reset
                    // the counter, so it is at its maximum: 3 unless configured otherwise.
                    0 => Err(TokenError::PinRequired { retries: 3 }),
                    retries => Err(TokenError::PinRequired { retries }),
                }
            }
            Err(e) if pcsc_gone(&e) => Err(self.card_error("signing", e)),
            // The yubikey crate folds "conditions of use not satisfied" (no touch in time) into
            // a generic error; with a touch policy that is by far the likely cause.
            Err(_) if key.touch_policy != TouchPolicy::Never => Err(TokenError::TouchTimeout),
            Err(e) => Err(other("signing on the card", e)),
        }
    }

    fn attest(&mut self, slot: Slot) -> TokenResult<Attestation> {
        let slot_id = SlotId::try_from(slot.0).map_err(|e| other("slot", e))?;
        self.key(slot)?;
        let yk = self.connect()?;
        let slot_certificate_der = match piv::attest(yk, slot_id) {
            Ok(c) => c.to_vec(),
            Err(yubikey::Error::NotSupported) => {
                return Err(TokenError::NotAttestable(format!(
                    "slot {slot} holds an imported key or the card cannot attest (YubiKey 4.3+ attests keys generated on it)"
                )))
            }
            Err(e) => return Err(self.card_error("attesting", e)),
        };
        let yk = self.connect()?;
        let intermediate_der = yk.fetch_object(ATTESTATION_OBJECT).map_err(|e| other("reading the f9 certificate", e))?;
        Ok(Attestation { slot_certificate_der, intermediate_der: cert::strip_object_wrapper(&intermediate_der) })
    }

    fn generate(&mut self, request: GenerateRequest, force: bool) -> TokenResult<KeyInfo> {
        let slot = request.slot;
        // Also loads the key cache, which the certificate signature below relies on.
        if self.cached_keys()?.iter().any(|k| k.slot == slot) && !force {
            return Err(TokenError::SlotOccupied(slot));
        }
        let version = self.info()?.firmware;
        let alg = match request.algorithm {
            KeyAlgorithm::P256 => AlgorithmId::EccP256,
            KeyAlgorithm::P384 => AlgorithmId::EccP384,
            KeyAlgorithm::Rsa2048 => AlgorithmId::Rsa2048,
            KeyAlgorithm::Ed25519 if version >= (5, 7, 0) => AlgorithmId::Ed25519,
            KeyAlgorithm::Ed25519 => {
                return Err(TokenError::Unsupported(format!(
                    "Ed25519 needs YubiKey firmware 5.7 or later (this one has {}.{}.{}); use --alg p256",
                    version.0, version.1, version.2
                )))
            }
        };
        self.authenticate_management()?;
        let slot_id = SlotId::try_from(slot.0).map_err(|e| other("slot", e))?;
        let pin = match request.pin_policy {
            PinPolicy::Never => yubikey::PinPolicy::Never,
            PinPolicy::Once => yubikey::PinPolicy::Once,
            PinPolicy::Always => yubikey::PinPolicy::Always,
        };
        let touch = match request.touch_policy {
            TouchPolicy::Never => yubikey::TouchPolicy::Never,
            TouchPolicy::Always => yubikey::TouchPolicy::Always,
            TouchPolicy::Cached => yubikey::TouchPolicy::Cached,
        };
        let yk = self.connect()?;
        let spki = match piv::generate(yk, slot_id, alg, pin, touch) {
            Ok(spki) => der08::Encode::to_der(&spki).map_err(|e| other("public key", e))?,
            Err(e) => return Err(self.card_error("generating the key", e)),
        };
        let (algorithm, public_key) = cert::key_from_spki(&spki)?;
        let key = KeyInfo {
            serial: self.serial,
            slot,
            algorithm,
            pin_policy: request.pin_policy,
            touch_policy: request.touch_policy,
            public_key,
            fido: None,
        };
        // A self-signed certificate names the key for cards without metadata (and for other
        // PIV software) and records the policies. Signing it needs the PIN (and a touch).
        let certificate = cert::self_signed(&key, &spki, |tbs| {
            let scheme = match algorithm {
                KeyAlgorithm::P256 => SignScheme::EcdsaSha256,
                KeyAlgorithm::P384 => SignScheme::EcdsaSha384,
                KeyAlgorithm::Ed25519 => SignScheme::Ed25519,
                KeyAlgorithm::Rsa2048 => SignScheme::RsaPkcs1Sha256,
            };
            // The key is new: make it known to `sign` for this one signature.
            let keys = self.keys.get_or_insert_with(Vec::new);
            keys.retain(|k| k.slot != slot);
            keys.push(key.clone());
            self.sign(slot, scheme, tbs)
        });
        match certificate {
            Ok(der) => {
                let c = Certificate::from_bytes(der).map_err(|e| other("certificate", e))?;
                let yk = self.connect()?;
                c.write(yk, slot_id, yubikey::certificate::CertInfo::Uncompressed)
                    .map_err(|e| other("writing the certificate", e))?;
            }
            // PIN policy "always" wants VERIFY right before the signature, which cannot happen
            // here (management key and generation came in between). With slot metadata
            // (firmware 5.2.3+) the key is listed without a certificate.
            Err(TokenError::PinRequired { .. }) if version >= (5, 2, 3) && self.metadata_names_key(slot_id) => {
                tracing::warn!(serial = self.serial, %slot, "key generated; no certificate written (the slot wants the PIN before every use)");
            }
            Err(TokenError::PinRequired { retries }) => {
                tracing::warn!(serial = self.serial, %slot, "key generated, but no certificate written (PIN needed)");
                return Err(TokenError::PinRequired { retries });
            }
            Err(e) => return Err(e),
        }
        self.keys = None;
        Ok(key)
    }

    fn release(&mut self) {
        self.drop_connection();
    }

    fn has_management_key(&self) -> bool {
        true
    }

    fn protect_management_key(&mut self) -> TokenResult<bool> {
        let yk = self.connect()?;
        let default = MgmKey::get_default(yk).map_err(|e| other("management key", e))?;
        if yk.authenticate(&default).is_err() {
            return Ok(false);
        }
        // Random key of the default's algorithm (3DES before firmware 5.7, AES-192 after);
        // from_bytes rejects weak 3DES keys, so draw again in that (unlikely) case.
        let key = loop {
            let mut bytes = zeroize::Zeroizing::new([0u8; 24]);
            rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, bytes.as_mut());
            if let Ok(key) = MgmKey::from_bytes(bytes.as_ref(), Some(default.algorithm_id())) {
                break key;
            }
        };
        let yk = self.connect()?;
        key.set_protected(yk).map_err(|e| other("storing the protected management key", e))?;
        // Prove it: read it back with the PIN and authenticate with it.
        let stored = protected_management_key(yk).map_err(|e| other("reading the protected management key back", e))?;
        yk.authenticate(&stored).map_err(|e| other("authenticating with the new management key", e))?;
        tracing::info!(serial = self.serial, "management key replaced by a random PIN-protected one");
        Ok(true)
    }
}

/// Serials of the YubiKeys connected now. Probes (opens) only readers not in `skip`.
fn probe_readers(skip: &HashSet<CString>) -> TokenResult<Vec<(CString, u32)>> {
    let mut ctx = yubikey::reader::Context::open()
        .map_err(|e| TokenError::NoPcsc(e.to_string()))?;
    let readers = ctx.iter().map_err(|e| TokenError::NotPresent(format!("listing readers failed: {e}")))?;
    let mut found = Vec::new();
    for reader in readers {
        let name = CString::new(reader.name().to_string()).unwrap_or_default();
        if skip.contains(&name) {
            continue;
        }
        // A program that just exited may still hold the card for a moment while pcscd cleans
        // up after it: retry PC/SC errors briefly.
        for attempt in 0..5 {
            match reader.open() {
                Ok(yk) => {
                    found.push((name, yk.serial().0));
                    let _ = yk.disconnect(pcsc::Disposition::LeaveCard);
                    break;
                }
                Err(yubikey::Error::PcscError { inner: Some(pcsc::Error::NoSmartcard | pcsc::Error::RemovedCard) }) => break,
                Err(e) if pcsc_gone(&e) && attempt < 4 => std::thread::sleep(Duration::from_millis(150)),
                Err(_) => break,
            }
        }
    }
    Ok(found)
}

/// One token per YubiKey connected now (possibly none), sharing `claimed` with the watcher.
pub fn open_present(claimed: &Claimed) -> TokenResult<Vec<(u32, Box<dyn Token>)>> {
    let mut serials: Vec<u32> = probe_readers(&HashSet::new())?.into_iter().map(|(_, s)| s).collect();
    serials.sort_unstable();
    serials.dedup();
    Ok(serials.into_iter().map(|s| (s, Box::new(PivToken::new(s, claimed.clone())) as Box<dyn Token>)).collect())
}

/// Open every connected YubiKey (one token per serial); fails when there is none.
pub fn open_all() -> Result<Vec<Box<dyn Token>>, TokenError> {
    let tokens = open_present(&Claimed::default())?;
    if tokens.is_empty() {
        return Err(TokenError::NotPresent("no YubiKey found".into()));
    }
    Ok(tokens.into_iter().map(|(_, t)| t).collect())
}

/// Finds YubiKeys plugged in after the agent started: polls the reader list and calls
/// `on_new(serial, token)` once per serial not seen before. Readers whose card is held by a
/// token are never probed (probing selects the applet, which would forget a verified PIN).
pub fn spawn_watcher<F>(claimed: Claimed, known: Vec<u32>, every: Duration, on_new: F)
where
    F: Fn(u32, Box<dyn Token>) + Send + 'static,
{
    let thread_claimed = claimed;
    std::thread::Builder::new()
        .name("piv-watcher".into())
        .spawn(move || {
            let mut known: HashSet<u32> = known.into_iter().collect();
            // Readers probed, with the insertion counter seen then: probe again only after a change.
            let mut probed: HashMap<CString, u32> = HashMap::new();
            loop {
                // Sleep first: at start the owners are connecting to the cards found already,
                // and a probe now would race them for the card.
                std::thread::sleep(every);
                if let Ok(ctx) = pcsc::Context::establish(pcsc::Scope::User) {
                    if let Ok(names) = ctx.list_readers_owned() {
                        let mut states: Vec<pcsc::ReaderState> =
                            names.iter().map(|n| pcsc::ReaderState::new(n.clone(), pcsc::State::UNAWARE)).collect();
                        if ctx.get_status_change(Duration::ZERO, &mut states).is_ok() {
                            let claimed_now = thread_claimed.lock().expect("claimed lock").clone();
                            let mut skip = claimed_now;
                            let mut want = false;
                            for s in &states {
                                let name = s.name().to_owned();
                                let present = s.event_state().contains(pcsc::State::PRESENT);
                                if !present || probed.get(&name) == Some(&s.event_count()) {
                                    skip.insert(name.clone());
                                } else if !skip.contains(&name) {
                                    want = true;
                                }
                                if !present {
                                    probed.remove(&name);
                                }
                            }
                            if want {
                                if let Ok(found) = probe_readers(&skip) {
                                    for (name, serial) in found {
                                        if let Some(s) = states.iter().find(|s| s.name() == name.as_c_str()) {
                                            probed.insert(name.clone(), s.event_count());
                                        }
                                        if known.insert(serial) {
                                            tracing::info!(serial, "YubiKey plugged in");
                                            on_new(serial, Box::new(PivToken::new(serial, thread_claimed.clone())));
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        })
        .expect("spawning the YubiKey watcher");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tlv_values_are_found_by_tag() {
        let key = [7u8; 24];
        let mut inner = vec![0x89, 24];
        inner.extend_from_slice(&key);
        let mut object = vec![0x80, 1, 0, 0x88, inner.len() as u8];
        object.extend_from_slice(&inner);
        let found = tlv_value(&object, 0x88).and_then(|i| tlv_value(i, 0x89));
        assert_eq!(found, Some(&key[..]));
        assert_eq!(tlv_value(&object, 0x99), None);
        assert_eq!(tlv_value(&[0x88, 5, 1, 2], 0x88), None, "a length past the end");
        let mut long = vec![0x88, 0x81, 200];
        long.extend_from_slice(&[1; 200]);
        assert_eq!(tlv_value(&long, 0x88).map(<[u8]>::len), Some(200));
    }

    #[test]
    fn pkcs1_block_verifies_with_rsa() {
        use rsa::traits::PublicKeyParts;
        let sk = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
        let pk = sk.to_public_key();
        for (scheme, hash) in [(SignScheme::RsaPkcs1Sha256, 256), (SignScheme::RsaPkcs1Sha512, 512)] {
            let block = pkcs1v15_block(scheme, b"hello", 256);
            assert_eq!(block.len(), 256);
            // Raw RSA on the block, as the card does.
            let m = rsa::BigUint::from_bytes_be(&block);
            let s = m.modpow(rsa::traits::PrivateKeyParts::d(&sk), sk.n());
            let mut sig = s.to_bytes_be();
            while sig.len() < pk.size() {
                sig.insert(0, 0);
            }
            let ok = if hash == 256 {
                pk.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &sha2::Sha256::digest(b"hello"), &sig)
            } else {
                pk.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha512>(), &sha2::Sha512::digest(b"hello"), &sig)
            };
            assert!(ok.is_ok(), "{scheme:?}");
            assert!(pk.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &sha2::Sha256::digest(b"other"), &sig).is_err());
        }
    }
}
