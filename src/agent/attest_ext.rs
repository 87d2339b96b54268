//! `keytap-attest@keytap.dev`: hand out a slot's PIV attestation (INS 0xF9 certificate and
//! the f9 certificate). Both are public; the challenge signature that makes a proof goes
//! through an ordinary SIGN_REQUEST, so the agent's usual checks and logging apply to it.
//!
//! Request details: `string slot` ("9a") `uint32 serial` (0: the first token with that slot).
//! Response details: `string attestation-certificate-DER` `string f9-certificate-DER`.
//!
//! Local connections only (a remote host has no business reading the token's identity), and
//! every answer is audited with the peer.

use ssh_agent_lib::proto::{Extension, Response};
use ssh_encoding::{Decode, Encode};

use super::{encode, event_record, failure, Agent, Connection};
use crate::token::Slot;

pub const EXT_ATTEST: &str = "keytap-attest@keytap.dev";

impl Agent {
    pub(super) async fn attest_extension(&self, conn: &Connection, ext: &Extension) -> Vec<u8> {
        let result = match conn.local_only("attestation") {
            Ok(()) => self.attest(ext.details.as_ref()).await,
            Err(reason) => Err(reason),
        };
        let mut record = event_record("attest", &conn.peer, "allow", "");
        record.forwarded = conn.forwarded();
        if let Ok((slot, request_serial)) = parse_request(ext.details.as_ref()) {
            record.details.insert("slot".into(), slot.to_string().into());
            record.details.insert("serial".into(), request_serial.into());
        }
        match &result {
            Ok((slot, serial, _)) => {
                record.key = self.tokens().iter().find_map(|t| t.key_in_slot(*slot).filter(|k| k.serial == *serial)).map(|k| crate::audit::KeyRecord {
                    fingerprint: k.fingerprint(),
                    serial: k.serial,
                    slot: k.slot.to_string(),
                });
            }
            Err(reason) => {
                record.decision = "deny".into();
                record.reason = reason.clone();
            }
        }
        if !self.audit(record).await && result.is_ok() {
            return failure();
        }
        match result {
            Ok((slot, serial, attestation)) => {
                tracing::info!(peer = %conn.peer, %slot, serial, "attestation handed out");
                let mut details = Vec::new();
                attestation.slot_certificate_der.encode(&mut details).expect("encoding to a vec");
                attestation.intermediate_der.encode(&mut details).expect("encoding to a vec");
                encode(Response::ExtensionResponse(Extension { name: EXT_ATTEST.into(), details: details.into() }))
            }
            Err(reason) => {
                tracing::warn!(peer = %conn.peer, "attestation refused: {reason}");
                failure()
            }
        }
    }

    async fn attest(&self, details: &[u8]) -> Result<(Slot, u32, crate::token::Attestation), String> {
        if self.lock.is_locked() {
            return Err("the agent is locked (unlock with `ssh-add -X`)".into());
        }
        let (slot, serial) = parse_request(details)?;
        let token = self
            .tokens()
            .into_iter()
            .find(|t| t.keys().iter().any(|k| k.slot == slot && (serial == 0 || k.serial == serial)))
            .ok_or_else(|| format!("no token with a key in slot {slot}{}", if serial == 0 { String::new() } else { format!(" and serial {serial}") }))?;
        let serial = token.key_in_slot(slot).map(|k| k.serial).unwrap_or(serial);
        let attestation = token.run(move |owner| owner.token.attest(slot)).await.and_then(|r| r).map_err(|e| e.to_string())?;
        Ok((slot, serial, attestation))
    }
}

/// Decode a request: the slot and the serial (0: any token).
pub fn parse_request(mut details: &[u8]) -> Result<(Slot, u32), String> {
    let slot_text = String::decode(&mut details).map_err(|e| format!("malformed request: {e}"))?;
    let serial = u32::decode(&mut details).map_err(|e| format!("malformed request: {e}"))?;
    if !details.is_empty() {
        return Err("malformed request: trailing bytes".into());
    }
    Ok((slot_text.parse()?, serial))
}
