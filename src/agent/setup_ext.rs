//! `keytap-setup@keytap.dev`: `keytap setup` through the running agent, which owns the tokens
//! (a second program opening the card would fight the agent for it and lose its PIN cache).
//!
//! Request details: an SSH string holding [`SetupRequest`] as JSON. Answer: an extension
//! response whose details are an SSH string holding [`SetupAnswer`] as JSON, so a refusal can
//! say what to do next. Refused on forwarded (or session-bound) connections and while the
//! agent is locked: creating (and with `force`, replacing) keys and changing the PIN or PUK
//! are for the user at this machine only. PIN and PUK changes keep the retry floor: a change is
//! not tried with one retry left (see `Owner::change_secret`). The agent audits every request.

use serde::{Deserialize, Serialize};
use ssh_encoding::{Decode, Encode};

use super::KeyReport;
use crate::token::owner::{SignContext, TokenHandle};
use crate::token::{GenerateRequest, KeyAlgorithm, PinPolicy, Slot, TokenError, TouchPolicy};

pub const EXT_SETUP: &str = "keytap-setup@keytap.dev";

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SetupRequest {
    pub serial: Option<u32>,
    pub slot: Slot,
    pub algorithm: KeyAlgorithm,
    pub pin_policy: PinPolicy,
    pub touch_policy: TouchPolicy,
    pub force: bool,
    #[serde(default)]
    pub protect_management_key: bool,
    /// Change the PIN: (current, new). Sent over the uid-checked agent socket, like
    /// `ssh-add -x` sends its passphrase; zeroized on both sides.
    #[serde(default)]
    pub change_pin: Option<SecretChange>,
    #[serde(default)]
    pub change_puk: Option<SecretChange>,
    /// Create no key (only change secrets).
    #[serde(default)]
    pub no_key: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SecretChange {
    pub current: zeroize::Zeroizing<String>,
    pub new: zeroize::Zeroizing<String>,
}

/// What setup tells the user when the token still has the factory PIN.
pub const DEFAULT_PIN_OFFER: &str = "This token still uses the factory default PIN (123456), so anyone holding it can use its keys. \
Change the PIN and PUK now: keytap setup --no-key --change-pin --change-puk";

/// After a key was created (or not): change the PIN and PUK as asked, and offer to when the
/// PIN is still the factory default. Returns lines for the user. Runs on the token's owner.
pub fn finish(owner: &mut crate::token::owner::Owner, change_pin: Option<SecretChange>, change_puk: Option<SecretChange>) -> Result<Vec<String>, TokenError> {
    use crate::token::Secret;
    let mut notes = Vec::new();
    let asked_pin = change_pin.is_some();
    if let Some(change) = change_puk {
        owner.change_secret(Secret::Puk, &change.current, &change.new)?;
        notes.push("PUK changed.".to_string());
    }
    if let Some(change) = change_pin {
        owner.change_secret(Secret::Pin, &change.current, &change.new)?;
        owner.default_pin_in_use = false;
        notes.push("PIN changed.".to_string());
    }
    if !asked_pin && owner.default_pin_in_use {
        notes.push(DEFAULT_PIN_OFFER.to_string());
    }
    Ok(notes)
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum SetupAnswer {
    /// The key (unless `no_key`), whether the management key was replaced (when asked to
    /// protect it), and lines for the user (PIN/PUK changed, default-PIN offer).
    Created(Option<KeyReport>, Option<bool>, Vec<String>),
    Refused(String),
}

pub fn encode_json<T: Serialize>(value: &T) -> Vec<u8> {
    let json = serde_json::to_vec(value).expect("serialises");
    let mut out = Vec::new();
    json.encode(&mut out).expect("encoding to a vec");
    out
}

pub fn decode_json<T: for<'a> Deserialize<'a>>(details: &[u8]) -> Result<T, String> {
    let mut reader = details;
    let json = Vec::<u8>::decode(&mut reader).map_err(|e| e.to_string())?;
    if !reader.is_empty() {
        return Err("trailing bytes".into());
    }
    serde_json::from_slice(&json).map_err(|e| e.to_string())
}

/// What the audit log keeps of a setup request and its answer (never the secrets).
pub fn audit_details(details: &[u8], answer: &SetupAnswer) -> serde_json::Map<String, serde_json::Value> {
    let mut map = serde_json::Map::new();
    if let Ok(request) = decode_json::<SetupRequest>(details) {
        map.insert("slot".into(), request.slot.to_string().into());
        if let Some(serial) = request.serial {
            map.insert("serial".into(), serial.into());
        }
        if !request.no_key {
            map.insert("generate".into(), format!("{} pin={} touch={}", request.algorithm, request.pin_policy, request.touch_policy).into());
            map.insert("force".into(), request.force.into());
        }
        map.insert("change_pin".into(), request.change_pin.is_some().into());
        map.insert("change_puk".into(), request.change_puk.is_some().into());
        map.insert("protect_management_key".into(), request.protect_management_key.into());
    }
    if let SetupAnswer::Created(_, _, notes) = answer {
        map.insert("notes".into(), notes.clone().into());
    }
    map
}

/// Run a setup request against the agent's tokens. `remote`: ssh or a forwarded peer is on
/// the other end of the connection (some session-bind was tried on it).
pub async fn handle(tokens: Vec<TokenHandle>, details: &[u8], requester: &crate::peer::PeerInfo, remote: bool, locked: bool) -> SetupAnswer {
    if remote {
        return SetupAnswer::Refused("keytap setup is refused over a forwarded agent; run it on the machine the token is plugged into".into());
    }
    if locked {
        return SetupAnswer::Refused("the agent is locked; unlock it with `ssh-add -X`".into());
    }
    let request: SetupRequest = match decode_json(details) {
        Ok(r) => r,
        Err(e) => return SetupAnswer::Refused(format!("malformed setup request: {e}")),
    };
    // Fresh presence, not the last 2 s refresh (a token may have just been plugged in).
    for t in &tokens {
        t.refresh().await;
    }
    let present: Vec<TokenHandle> = tokens.into_iter().filter(|t| t.info().is_some()).collect();
    let token = match request.serial {
        Some(serial) => match present.iter().find(|t| t.info().map(|i| i.serial) == Some(serial)) {
            Some(t) => t.clone(),
            None => return SetupAnswer::Refused(format!("no token with serial {serial} is connected; `keytap list` shows them")),
        },
        None if present.len() == 1 => present[0].clone(),
        None if present.is_empty() => {
            return SetupAnswer::Refused("no token is connected to the agent; plug one in and retry".into())
        }
        None => {
            let serials: Vec<String> = present.iter().filter_map(|t| t.info()).map(|i| i.serial.to_string()).collect();
            return SetupAnswer::Refused(format!(
                "{} tokens are connected ({}); choose one with --serial",
                serials.len(),
                serials.join(", ")
            ));
        }
    };
    let generate = GenerateRequest {
        slot: request.slot,
        algorithm: request.algorithm,
        pin_policy: request.pin_policy,
        touch_policy: request.touch_policy,
    };
    // PIN prompts go to the terminal `keytap setup` runs in.
    let context = SignContext {
        requester: requester.to_string(),
        purpose: format!("create a key in slot {}", request.slot),
        terminal: requester.terminal.clone(),
    };
    let force = request.force;
    let protect = request.protect_management_key;
    let (change_pin, change_puk, no_key) = (request.change_pin, request.change_puk, request.no_key);
    let result = token
        .run(move |owner| {
            if no_key {
                if protect {
                    match owner.token.pin_retries()? {
                        0 => {}
                        retries => owner.ensure_pin(retries, &context)?,
                    }
                }
                let protected = if protect { Some(owner.token.protect_management_key()?) } else { None };
                let notes = finish(owner, change_pin, change_puk)?;
                return Ok((None, protected, notes));
            }
            if !force && owner.token.keys()?.iter().any(|k| k.slot == generate.slot) {
                return Err(TokenError::SlotOccupied(generate.slot));
            }
            // The certificate written next to the key is signed by it: ask for the PIN first.
            // 0 retries here means the card reports the PIN verified already.
            match owner.token.pin_retries()? {
                0 => {}
                retries => owner.ensure_pin(retries, &context)?,
            }
            let key = match owner.token.generate(generate, force) {
                // PIN policy "always": the new key wants the PIN again for its certificate.
                // The slot was free (checked above) or force was given, so forcing is safe.
                Err(TokenError::PinRequired { retries }) => {
                    owner.ensure_pin(retries, &context)?;
                    owner.token.generate(generate, true)
                }
                other => other,
            }?;
            let protected = if protect { Some(owner.token.protect_management_key()?) } else { None };
            let notes = finish(owner, change_pin, change_puk)?;
            Ok((Some(key), protected, notes))
        })
        .await;
    match result.and_then(|r| r) {
        Ok((key, protected, notes)) => {
            token.refresh().await;
            if let Some(key) = &key {
                tracing::info!(serial = key.serial, slot = %key.slot, algorithm = %key.algorithm, "setup: created a key");
            }
            for note in &notes {
                tracing::info!("setup: {note}");
            }
            SetupAnswer::Created(key.as_ref().map(KeyReport::from), protected, notes)
        }
        Err(e) => SetupAnswer::Refused(e.to_string()),
    }
}
