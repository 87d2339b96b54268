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
use crate::token::owner::{Owner, SignContext, TokenHandle};
use crate::token::{GenerateRequest, KeyAlgorithm, KeyInfo, PinPolicy, Slot, TokenError, TouchPolicy};

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

/// Everything `keytap setup` was asked to do on one token.
pub struct Plan {
    /// The key to create; `None` with --no-key.
    pub generate: Option<GenerateRequest>,
    pub force: bool,
    pub protect_management_key: bool,
    pub change_pin: Option<SecretChange>,
    pub change_puk: Option<SecretChange>,
}

/// What setup did: the new key, whether the management key was replaced (when asked), and
/// lines for the user.
#[derive(Default)]
pub struct Done {
    pub key: Option<KeyInfo>,
    pub protected: Option<bool>,
    pub notes: Vec<String>,
}

/// What the PIN prompt says setup wants to do.
pub fn purpose(plan_key: Option<Slot>, protect: bool, change_pin: bool, change_puk: bool) -> String {
    let mut parts = Vec::new();
    if let Some(slot) = plan_key {
        parts.push(format!("create a key in slot {slot}"));
    }
    if protect {
        parts.push("protect the management key".to_string());
    }
    if change_puk {
        parts.push("change the PUK".to_string());
    }
    if change_pin {
        parts.push("change the PIN".to_string());
    }
    if parts.is_empty() {
        parts.push("check the PIN".to_string());
    }
    parts.join(", ")
}

/// Run a setup plan on a token, in an order that destroys nothing before every precondition
/// holds: the slot is free (or --force), the token has a management key to protect, the PIN
/// is right (from the PIN change's current PIN when there is one: the same question is not
/// asked twice). Then the PUK is changed (a wrong PUK stops here, nothing else changed), the
/// key generated, the management key protected, the PIN changed. A step that fails after
/// something changed says what the token holds now. Runs on the token's owner.
pub fn perform(owner: &mut Owner, plan: Plan, context: &SignContext) -> Result<Done, String> {
    use crate::token::Secret;
    let precondition = |e: TokenError| format!("{e}; nothing on the token was changed");
    if let Some(generate) = &plan.generate {
        if !plan.force && owner.token.keys().map_err(precondition)?.iter().any(|k| k.slot == generate.slot) {
            return Err(precondition(TokenError::SlotOccupied(generate.slot)));
        }
    }
    if plan.protect_management_key && !owner.token.has_management_key() {
        return Err("this token has no management key, so --protect-management-key cannot apply; drop it. Nothing on the token was changed".into());
    }
    // A PUK change alone needs no PIN (and must stay possible while the PIN is at its retry
    // floor); everything else does: the new key's certificate, the protected management key.
    let puk_only = plan.change_puk.is_some() && plan.generate.is_none() && !plan.protect_management_key && plan.change_pin.is_none();
    if !puk_only {
        verify_pin_first(owner, plan.change_pin.as_ref().map(|c| &c.current), context).map_err(precondition)?;
    }

    let mut done = Done::default();
    let mut changed: Vec<String> = Vec::new();
    let failed = |step: &str, e: TokenError, changed: &[String]| {
        if changed.is_empty() {
            format!("{step}: {e}; nothing on the token was changed")
        } else {
            format!("{step}: {e}. Already done, and kept: {}; nothing else was changed", changed.join("; "))
        }
    };
    if let Some(change) = &plan.change_puk {
        owner.change_secret(Secret::Puk, &change.current, &change.new).map_err(|e| failed("changing the PUK", e, &changed))?;
        done.notes.push("PUK changed.".to_string());
        changed.push("the PUK was changed".into());
    }
    if let Some(generate) = plan.generate {
        let key = match owner.token.generate(generate, plan.force) {
            // PIN policy "always": the new key wants the PIN again for its certificate. The slot
            // was free (checked above) or --force was given, so forcing the retry is safe.
            Err(TokenError::PinRequired { retries }) => {
                owner.ensure_pin(retries, context).and_then(|()| owner.token.generate(generate, true))
            }
            other => other,
        }
        .map_err(|e| failed(&format!("creating the key in slot {}", generate.slot), e, &changed))?;
        changed.push(format!("the new key in slot {} ({})", key.slot, key.authorized_key()));
        done.key = Some(key);
    }
    if plan.protect_management_key {
        done.protected = Some(owner.token.protect_management_key().map_err(|e| failed("protecting the management key", e, &changed))?);
        changed.push("the management key was protected".into());
    }
    if let Some(change) = &plan.change_pin {
        owner.change_secret(Secret::Pin, &change.current, &change.new).map_err(|e| failed("changing the PIN", e, &changed))?;
        owner.default_pin_in_use = false;
        done.notes.push("PIN changed.".to_string());
    } else if owner.default_pin_in_use {
        done.notes.push(DEFAULT_PIN_OFFER.to_string());
    }
    Ok(done)
}

/// Verify the PIN before anything changes: with `given` (the current PIN of a PIN change)
/// when there is one, else through the prompter. Never spends the last retry.
fn verify_pin_first(owner: &mut Owner, given: Option<&crate::token::Pin>, context: &SignContext) -> Result<(), TokenError> {
    // 0: the card reports the PIN as verified already (a blocked PIN is an error).
    let retries = owner.token.pin_retries()?;
    match given {
        _ if retries == 0 => Ok(()),
        _ if retries <= 1 => Err(TokenError::PinLastRetry),
        Some(pin) => {
            owner.token.verify_pin(pin)?;
            owner.default_pin_in_use = pin.as_str() == crate::token::DEFAULT_PIN;
            Ok(())
        }
        None => owner.ensure_pin(retries, context),
    }
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
    let context = SignContext {
        requester: requester.to_string(),
        purpose: purpose((!request.no_key).then_some(request.slot), request.protect_management_key, request.change_pin.is_some(), request.change_puk.is_some()),
        // PIN prompts go to the terminal `keytap setup` runs in.
        terminal: requester.terminal.clone(),
        ..Default::default()
    };
    let plan = Plan {
        generate: (!request.no_key).then_some(generate),
        force: request.force,
        protect_management_key: request.protect_management_key,
        change_pin: request.change_pin,
        change_puk: request.change_puk,
    };
    let result = token.run(move |owner| perform(owner, plan, &context)).await;
    match result.map_err(|e| e.to_string()).and_then(|r| r) {
        Ok(Done { key, protected, notes }) => {
            token.refresh().await;
            if let Some(key) = &key {
                tracing::info!(serial = key.serial, slot = %key.slot, algorithm = %key.algorithm, "setup: created a key");
            }
            for note in &notes {
                tracing::info!("setup: {note}");
            }
            SetupAnswer::Created(key.as_ref().map(KeyReport::from), protected, notes)
        }
        Err(e) => {
            token.refresh().await;
            SetupAnswer::Refused(e)
        }
    }
}
